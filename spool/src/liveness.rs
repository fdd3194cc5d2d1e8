//! Which messages of each segment are still live, and where the latest records about each live
//! message are: what a segment checkpoint lists and what it must carry forward.
//!
//! Pure bookkeeping, no I/O: the shard updates it on every append and release and asks it what
//! to write when it relocates the records of a segment that is otherwise garbage (see
//! [`crate::record::SegmentCheckpoint`] for why). Memory is one set entry per live message plus
//! one map entry per live recipient that has a retry state or a disposition.
use crate::record::MsgRef;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

/// Which record about a message a location is for: the latest retry state of recipient `r`
/// (`2r`), the disposition of recipient `r` (`2r + 1`), or the DSN marker ([`DSN_DONE_KEY`]).
pub type AboutKey = u64;

/// The key of recipient `rcpt`'s retry state.
pub fn state_key(rcpt: u32) -> AboutKey {
    u64::from(rcpt) << 1
}

/// The key of recipient `rcpt`'s final disposition.
pub fn disposition_key(rcpt: u32) -> AboutKey {
    (u64::from(rcpt) << 1) | 1
}

/// The key of a message's DSN-done marker.
pub const DSN_DONE_KEY: AboutKey = u64::MAX;

/// Where the latest record of one [`AboutKey`] about a message lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AboutLoc {
    /// Which record it is.
    pub key: AboutKey,
    /// Segment holding it.
    pub segment: u32,
    /// Frame offset of the record in that segment.
    pub offset: u64,
}

/// Live messages per segment and the latest about-record locations of each live message.
/// Keyed by segment and offset only: every message here belongs to one core.
#[derive(Debug, Default)]
pub struct Liveness {
    core: u16,
    live: HashMap<u32, BTreeSet<u64>>,
    /// (message segment, message offset, key) -> (holding segment, record offset).
    about: BTreeMap<(u32, u64, AboutKey), (u32, u64)>,
}

impl Liveness {
    /// Empty bookkeeping for the spool of `core`.
    pub fn new(core: u16) -> Self {
        Self { core, ..Self::default() }
    }

    /// A message record was appended (or recovered with work left).
    pub fn add_message(&mut self, msg: MsgRef) {
        self.live.entry(msg.segment).or_default().insert(msg.offset);
    }

    /// Whether `msg` is live (appended or recovered, not yet released).
    pub fn is_live(&self, msg: &MsgRef) -> bool {
        self.live.get(&msg.segment).is_some_and(|s| s.contains(&msg.offset))
    }

    /// `msg` is final and released: forget it and its record locations.
    pub fn release(&mut self, msg: &MsgRef) {
        if let Some(set) = self.live.get_mut(&msg.segment) {
            set.remove(&msg.offset);
            if set.is_empty() {
                self.live.remove(&msg.segment);
            }
        }
        let keys: Vec<_> = self.about.range((msg.segment, msg.offset, 0)..=(msg.segment, msg.offset, u64::MAX)).map(|(k, _)| *k).collect();
        for k in keys {
            self.about.remove(&k);
        }
    }

    /// The latest record `key` about `msg` is at `segment`/`offset`. Ignored for a message that
    /// is not live: records about it need no carrying forward. A disposition supersedes the
    /// recipient's retry state, which is then forgotten.
    pub fn note_about(&mut self, msg: MsgRef, key: AboutKey, segment: u32, offset: u64) {
        if !self.is_live(&msg) {
            return;
        }
        if key != DSN_DONE_KEY && key & 1 == 1 {
            self.about.remove(&(msg.segment, msg.offset, key & !1));
        }
        self.about.insert((msg.segment, msg.offset, key), (segment, offset));
    }

    /// Offsets of the live messages of `segment`, ascending.
    pub fn live_in(&self, segment: u32) -> Vec<u64> {
        self.live.get(&segment).map(|s| s.iter().copied().collect()).unwrap_or_default()
    }

    /// The latest records about live messages of `about` that sit in segment `holder`.
    pub fn about_held_in(&self, about: u32, holder: u32) -> Vec<(MsgRef, AboutLoc)> {
        self.about
            .range((Bound::Included((about, 0, 0)), Bound::Included((about, u64::MAX, u64::MAX))))
            .filter(|(_, (seg, _))| *seg == holder)
            .map(|(&(segment_of_msg, msg_offset, key), &(segment, offset))| {
                (MsgRef { core: self.core, segment: segment_of_msg, offset: msg_offset }, AboutLoc { key, segment, offset })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(segment: u32, offset: u64) -> MsgRef {
        MsgRef { core: 3, segment, offset }
    }

    #[test]
    fn live_sets_follow_appends_and_releases() {
        let mut l = Liveness::new(3);
        l.add_message(m(3, 64));
        l.add_message(m(3, 640));
        l.add_message(m(4, 64));
        assert_eq!(l.live_in(3), vec![64, 640]);
        l.release(&m(3, 64));
        assert_eq!(l.live_in(3), vec![640]);
        assert!(!l.is_live(&m(3, 64)) && l.is_live(&m(4, 64)));
        l.release(&m(3, 640));
        assert!(l.live_in(3).is_empty());
    }

    #[test]
    fn latest_location_wins_and_a_disposition_supersedes_the_state() {
        let mut l = Liveness::new(3);
        let a = m(3, 64);
        l.add_message(a);
        l.note_about(a, state_key(1), 5, 100);
        l.note_about(a, state_key(1), 6, 200);
        l.note_about(a, state_key(0), 6, 300);
        assert_eq!(l.about_held_in(3, 5), vec![]);
        assert_eq!(l.about_held_in(3, 6).len(), 2);
        l.note_about(a, disposition_key(1), 7, 400);
        let held: Vec<AboutKey> = l.about_held_in(3, 6).iter().map(|(_, loc)| loc.key).collect();
        assert_eq!(held, vec![state_key(0)], "recipient 1's state is superseded by its disposition");
        assert_eq!(l.about_held_in(3, 7), vec![(a, AboutLoc { key: disposition_key(1), segment: 7, offset: 400 })]);
    }

    #[test]
    fn records_about_dead_or_other_messages_are_not_carried() {
        let mut l = Liveness::new(3);
        let a = m(3, 64);
        l.note_about(a, state_key(0), 5, 100);
        assert!(l.about_held_in(3, 5).is_empty(), "not live: nothing to carry");
        l.add_message(a);
        l.add_message(m(4, 64));
        l.note_about(a, state_key(0), 5, 100);
        l.note_about(m(4, 64), state_key(0), 5, 200);
        assert_eq!(l.about_held_in(3, 5).len(), 1);
        assert_eq!(l.about_held_in(4, 5).len(), 1);
        l.release(&a);
        assert!(l.about_held_in(3, 5).is_empty());
        assert_eq!(l.about_held_in(4, 5).len(), 1);
    }
}
