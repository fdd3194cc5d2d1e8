//! Which messages of each segment are still live, and where the latest records about each live
//! message are: what a segment checkpoint lists and what it must carry forward.
//!
//! Pure bookkeeping, no I/O: the shard updates it on every append and release and asks it what
//! to write when it relocates the records of a segment that is otherwise garbage (see
//! [`crate::record::SegmentCheckpoint`] for why).
//!
//! Dense per segment (issue 9 item 4: a million queued messages). Message records are appended
//! to a segment in offset order, so a segment's live messages are a `Vec` of 24-byte slots
//! sorted by offset, found by binary search; a slot also holds the location of one record about
//! its message (one recipient's retry state: the whole story of a one-recipient message while it
//! waits). A release leaves a tombstone, and a segment's slots are compacted once half are dead.
//! Further records about a message (other recipients, dispositions, the DSN marker) go to an
//! overflow map. A `BTreeSet` entry per message plus a `BTreeMap` entry per retry state cost
//! ~101 bytes per queued message; a slot costs 24 (31 with the `Vec`'s growth slack).
use crate::record::MsgRef;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
/// Which record about a message a location is for: the latest retry state of recipient `r`
/// (`2r`), the disposition of recipient `r` (`2r + 1`), the DSN marker ([`DSN_DONE_KEY`]) or
/// signature lines kept outside the message's own segment ([`SIGNATURE_KEY`]).
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
/// The key of a message's Signature record when it lies outside the message's own segment
/// (one in its own segment lives as long as the message anyway). Tracked like a retry state,
/// so the segment holding it is kept, or the record carried forward, while the message lives.
/// Never inline: it goes to the overflow map, which only such rare messages use.
pub const SIGNATURE_KEY: AboutKey = u64::MAX - 1;

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

/// A slot's `key` while no record about its message is held inline.
const EMPTY: u32 = u32::MAX;
/// A slot's `key` once its message is released (a tombstone: the offset keeps the order).
const DEAD: u32 = u32::MAX - 1;
/// A slot's `key` for [`DSN_DONE_KEY`].
const DSN_INLINE: u32 = u32::MAX - 2;

/// One message of a segment: its offset and, inline, the location of one record about it.
#[derive(Debug, Clone, Copy)]
struct Slot {
    msg_offset: u64,
    /// Where the inline record is: segment and frame offset (meaningless while `key` is
    /// [`EMPTY`] or [`DEAD`]).
    held_offset: u64,
    held_segment: u32,
    /// The inline record's [`AboutKey`] squeezed to 32 bits, or [`EMPTY`] / [`DEAD`].
    key: u32,
}

/// The inline form of `key`, if it has one.
fn inline_key(key: AboutKey) -> Option<u32> {
    match key {
        DSN_DONE_KEY => Some(DSN_INLINE),
        k if k < u64::from(DSN_INLINE) => Some(k as u32),
        _ => None,
    }
}

/// The [`AboutKey`] of an inline key that holds one.
fn about_key(inline: u32) -> AboutKey {
    if inline == DSN_INLINE {
        DSN_DONE_KEY
    } else {
        u64::from(inline)
    }
}

/// The live messages of one segment, ascending by offset, with tombstones.
#[derive(Debug, Default)]
struct SegmentLive {
    slots: Vec<Slot>,
    dead: usize,
}

impl SegmentLive {
    /// Index of the slot of the message at `offset` (live or tombstone).
    fn find(&self, offset: u64) -> Result<usize, usize> {
        // Appends come in offset order: the last slot is the common answer for a new message.
        match self.slots.last() {
            Some(s) if s.msg_offset < offset => Err(self.slots.len()),
            _ => self.slots.binary_search_by_key(&offset, |s| s.msg_offset),
        }
    }

    /// The live slot of the message at `offset`.
    fn live_mut(&mut self, offset: u64) -> Option<&mut Slot> {
        let i = self.find(offset).ok()?;
        Some(&mut self.slots[i]).filter(|s| s.key != DEAD)
    }

    /// Drop the tombstones once they are half the slots, and give back spare capacity.
    fn compact(&mut self) {
        if self.dead * 2 > self.slots.len() {
            self.slots.retain(|s| s.key != DEAD);
            self.dead = 0;
            if self.slots.capacity() > 2 * self.slots.len() {
                self.slots.shrink_to_fit();
            }
        }
    }

    fn live(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(|s| s.key != DEAD)
    }
}

/// Live messages per segment and the latest about-record locations of each live message.
/// Keyed by segment and offset only: every message here belongs to one core.
#[derive(Debug, Default)]
pub struct Liveness {
    core: u16,
    live: HashMap<u32, SegmentLive>,
    /// Records about live messages beyond each slot's inline one:
    /// (message segment, message offset, key) -> (holding segment, record offset).
    overflow: BTreeMap<(u32, u64, AboutKey), (u32, u64)>,
}

impl Liveness {
    /// Empty bookkeeping for the spool of `core`.
    pub fn new(core: u16) -> Self {
        Self { core, ..Self::default() }
    }

    /// A message record was appended (or recovered with work left).
    pub fn add_message(&mut self, msg: MsgRef) {
        let seg = self.live.entry(msg.segment).or_default();
        let slot = Slot { msg_offset: msg.offset, held_offset: 0, held_segment: 0, key: EMPTY };
        match seg.find(msg.offset) {
            Err(i) => seg.slots.insert(i, slot),
            Ok(i) if seg.slots[i].key == DEAD => {
                seg.slots[i] = slot;
                seg.dead -= 1;
            }
            Ok(_) => {}
        }
    }

    /// Whether `msg` is live (appended or recovered, not yet released).
    pub fn is_live(&self, msg: &MsgRef) -> bool {
        self.live.get(&msg.segment).and_then(|s| s.find(msg.offset).ok().map(|i| s.slots[i].key != DEAD)).unwrap_or(false)
    }

    /// `msg` is final and released: forget it and its record locations.
    pub fn release(&mut self, msg: &MsgRef) {
        if let Some(seg) = self.live.get_mut(&msg.segment) {
            if let Some(slot) = seg.live_mut(msg.offset) {
                slot.key = DEAD;
                seg.dead += 1;
                if seg.dead == seg.slots.len() {
                    self.live.remove(&msg.segment);
                } else {
                    seg.compact();
                }
            }
        }
        let keys: Vec<_> = self.overflow.range((msg.segment, msg.offset, 0)..=(msg.segment, msg.offset, u64::MAX)).map(|(k, _)| *k).collect();
        for k in keys {
            self.overflow.remove(&k);
        }
    }

    /// The latest record `key` about `msg` is at `segment`/`offset`. Ignored for a message that
    /// is not live: records about it need no carrying forward. A disposition supersedes the
    /// recipient's retry state, which is then forgotten.
    pub fn note_about(&mut self, msg: MsgRef, key: AboutKey, segment: u32, offset: u64) {
        let Some(slot) = self.live.get_mut(&msg.segment).and_then(|s| s.live_mut(msg.offset)) else { return };
        if key != DSN_DONE_KEY && key & 1 == 1 {
            let state = key & !1;
            if inline_key(state) == Some(slot.key) {
                slot.key = EMPTY;
            }
            self.overflow.remove(&(msg.segment, msg.offset, state));
        }
        let inline = inline_key(key);
        let in_overflow = self.overflow.contains_key(&(msg.segment, msg.offset, key));
        if inline.is_some_and(|k| slot.key == k || (slot.key == EMPTY && !in_overflow)) {
            *slot = Slot { held_offset: offset, held_segment: segment, key: inline.expect("checked"), ..*slot };
        } else {
            self.overflow.insert((msg.segment, msg.offset, key), (segment, offset));
        }
    }

    /// Offsets of the live messages of `segment`, ascending.
    pub fn live_in(&self, segment: u32) -> Vec<u64> {
        self.live.get(&segment).map(|s| s.live().map(|s| s.msg_offset).collect()).unwrap_or_default()
    }

    /// The latest records about live messages of `about` that sit in segment `holder`,
    /// ascending by message offset and key.
    pub fn about_held_in(&self, about: u32, holder: u32) -> Vec<(MsgRef, AboutLoc)> {
        let msg = |offset| MsgRef { core: self.core, segment: about, offset };
        let inline = self.live.get(&about).into_iter().flat_map(|s| s.live()).filter(|s| s.key != EMPTY && s.held_segment == holder);
        let mut out: Vec<_> =
            inline.map(|s| (msg(s.msg_offset), AboutLoc { key: about_key(s.key), segment: holder, offset: s.held_offset })).collect();
        let extra = self
            .overflow
            .range((Bound::Included((about, 0, 0)), Bound::Included((about, u64::MAX, u64::MAX))))
            .filter(|(_, (seg, _))| *seg == holder)
            .map(|(&(_, msg_offset, key), &(segment, offset))| (msg(msg_offset), AboutLoc { key, segment, offset }));
        out.extend(extra);
        out.sort_unstable_by_key(|(m, loc)| (m.offset, loc.key));
        out
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

    #[test]
    fn tombstones_compact_and_order_holds_whatever_the_append_order() {
        let mut l = Liveness::new(3);
        for off in [640, 64, 320, 960] {
            l.add_message(m(3, off));
        }
        assert_eq!(l.live_in(3), vec![64, 320, 640, 960]);
        for off in (1..=100).map(|i| 960 + 64 * i) {
            l.add_message(m(3, off));
            l.note_about(m(3, off), state_key(0), 4, off * 2);
        }
        for off in (1..=90).map(|i| 960 + 64 * i) {
            l.release(&m(3, off));
        }
        assert!(l.live.get(&3).is_some_and(|s| s.slots.len() < 30), "tombstones are dropped once half the slots are dead");
        let kept: Vec<u64> = (91..=100).map(|i| 960 + 64 * i).collect();
        assert_eq!(l.about_held_in(3, 4).iter().map(|(msg, _)| msg.offset).collect::<Vec<_>>(), kept);
        assert_eq!(l.live_in(3)[..4], [64, 320, 640, 960]);
        assert!(!l.is_live(&m(3, 1024)) && l.is_live(&m(3, 960 + 64 * 95)));
        l.release(&m(3, 64));
        l.add_message(m(3, 64));
        assert!(l.is_live(&m(3, 64)), "a released slot can come back (recovery re-adds)");
    }

    /// A slot revived after its release must count as live again: with the dead count left
    /// one too high, releasing the others would drop the segment's entry while the revived
    /// message still lives, and a relocation's checkpoint would leave it out.
    #[test]
    fn a_revived_slot_keeps_its_segment_entry_when_the_others_go() {
        let mut l = Liveness::new(3);
        // Two slots: compaction (more than half dead) would otherwise recount first.
        l.add_message(m(3, 64));
        l.add_message(m(3, 128));
        l.release(&m(3, 128));
        l.add_message(m(3, 128));
        l.release(&m(3, 64));
        assert!(l.is_live(&m(3, 128)));
        assert_eq!(l.live_in(3), vec![128]);
    }

    #[test]
    fn several_records_about_one_message_all_carry() {
        let mut l = Liveness::new(3);
        let a = m(3, 64);
        l.add_message(a);
        l.note_about(a, state_key(0), 5, 100);
        l.note_about(a, state_key(1), 5, 200);
        l.note_about(a, disposition_key(2), 5, 300);
        l.note_about(a, DSN_DONE_KEY, 5, 400);
        l.note_about(a, state_key(1), 5, 250);
        let held: Vec<(AboutKey, u64)> = l.about_held_in(3, 5).iter().map(|(_, loc)| (loc.key, loc.offset)).collect();
        assert_eq!(held, vec![(state_key(0), 100), (state_key(1), 250), (disposition_key(2), 300), (DSN_DONE_KEY, 400)]);
        l.note_about(a, disposition_key(0), 6, 500);
        l.note_about(a, disposition_key(1), 6, 600);
        assert_eq!(l.about_held_in(3, 5).iter().map(|(_, loc)| loc.key).collect::<Vec<_>>(), vec![disposition_key(2), DSN_DONE_KEY]);
        assert_eq!(l.about_held_in(3, 6).iter().map(|(_, loc)| loc.key).collect::<Vec<_>>(), vec![disposition_key(0), disposition_key(1)]);
        l.release(&a);
        assert!(l.about_held_in(3, 5).is_empty() && l.about_held_in(3, 6).is_empty() && l.overflow.is_empty());
    }
}
