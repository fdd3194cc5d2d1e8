//! The ledger of one core: every message this core accepted (or recovered) that still has a
//! recipient without a final outcome, and what failed so far.
//!
//! It decides and never acts: no I/O. The owner core records each final outcome here; when the
//! last recipient of a message is final the ledger hands the message back as [`Finished`], with
//! whether a DSN is owed, and forgets it. The caller then makes the DSN durable (if owed) and only
//! then releases the message's spool space.
//!
//! An entry is small and fixed (issue 9 item 4: a million queued messages): the shared message
//! handle and one word of open recipients (a bit set of recipients 0..63), 16 bytes; a larger
//! set, and failures, sit apart only for the messages that have them. Entries are kept per spool
//! segment, sorted by offset and found by binary search on the id inside the handle, as the
//! spool's liveness slots are: messages come in append order, so an entry is pushed at the end.
//! Every insert goes where the binary search puts it, so a segment stays sorted whatever the
//! order of arrival; only the cost depends on it (an insert before the end shifts the rest:
//! recovery hands messages over sorted by `MsgRef`, live admissions are at most one commit
//! round out of order).
//! A hash set of the same entries paid its table's load on top: 22 bytes at 100,000 messages
//! per core, 36 at 500,000 (a table doubles to 2^20 buckets past 458,752 entries), the
//! difference between the unit figure and the daemon's with a million queued.
use crate::account::dsn::FailedRecipient;
use crate::message::SpooledMessage;
use ringpost_spool::MsgRef;
use std::collections::HashMap;
use std::sync::Arc;

/// A message whose recipients are all final.
#[derive(Debug)]
pub struct Finished {
    /// The message.
    pub msg: Arc<SpooledMessage>,
    /// Every recipient that failed (bounced or expired), for the DSN.
    pub failed: Vec<FailedRecipient>,
}

impl Finished {
    /// A DSN is owed: something failed and the sender is not the null sender (RFC 5321 6.1).
    pub fn owes_dsn(&self) -> bool {
        !self.failed.is_empty() && !self.msg.sender().is_empty()
    }
}

/// What recording one final outcome did.
#[derive(Debug)]
pub enum Progress {
    /// Other recipients are still open.
    Open,
    /// That was the last one.
    Finished(Finished),
    /// The message is not in the ledger (a bug, or a report after shutdown began).
    Unknown,
    /// The recipient was already final (a duplicate report; ignored).
    Duplicate,
}

/// [`Entry::open`] with this bit set: the message's open set is in [`Ledger::large`] (it has
/// a recipient past 62). Recipient 63 is never inline, so the bit is free.
const LARGE: u64 = 1 << 63;

/// A live message: 16 bytes (its failures, and an open set past recipient 62, which most
/// messages never have, sit apart). A finished one leaves a tombstone, without its handle, until
/// its segment is compacted: the offsets stay in order for the binary search.
struct Entry {
    /// The message; none for a tombstone.
    msg: Option<Arc<SpooledMessage>>,
    /// Open recipients 0..63 as bits, or [`LARGE`]; a tombstone's message offset.
    open: u64,
}

impl Entry {
    /// Offset of the entry's message record in its segment.
    fn offset(&self) -> u64 {
        self.msg.as_ref().map_or(self.open, |m| m.id.offset)
    }
}

/// The entries of one spool segment, ascending by offset, with tombstones.
#[derive(Default)]
struct Segment {
    entries: Vec<Entry>,
    dead: usize,
}

impl Segment {
    /// Index of the entry of the message at `offset` (live or tombstone).
    fn find(&self, offset: u64) -> Result<usize, usize> {
        // Messages come in append order: past the last entry is the common answer for a new one.
        match self.entries.last() {
            Some(e) if e.offset() < offset => Err(self.entries.len()),
            _ => self.entries.binary_search_by_key(&offset, Entry::offset),
        }
    }

    /// Index of the live entry of the message at `offset`.
    fn live(&self, offset: u64) -> Option<usize> {
        self.find(offset).ok().filter(|&i| self.entries[i].msg.is_some())
    }

    /// Leave a tombstone for entry `i`; its handle.
    fn bury(&mut self, i: usize) -> Arc<SpooledMessage> {
        let e = &mut self.entries[i];
        let msg = e.msg.take().expect("a live entry");
        e.open = msg.id.offset;
        self.dead += 1;
        msg
    }

    /// Drop the tombstones once they are half the entries, and give back spare capacity.
    fn compact(&mut self) {
        if self.dead * 2 > self.entries.len() {
            self.entries.retain(|e| e.msg.is_some());
            self.dead = 0;
            if self.entries.capacity() > 2 * self.entries.len() {
                self.entries.shrink_to_fit();
            }
        }
    }
}

/// The open recipients of a message, as a bit set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Open {
    /// Recipients 0..64.
    Small(u64),
    /// Any number: bit `i % 64` of word `i / 64`.
    Large(Box<[u64]>),
}

impl Open {
    /// The set of `rcpts`.
    pub fn of(rcpts: &[u32]) -> Self {
        let top = rcpts.iter().copied().max().unwrap_or(0) as usize;
        let mut words = vec![0u64; top / 64 + 1];
        for &i in rcpts {
            words[i as usize / 64] |= 1 << (i % 64);
        }
        match words.as_slice() {
            [w] => Open::Small(*w),
            _ => Open::Large(words.into()),
        }
    }

    fn words(&self) -> &[u64] {
        match self {
            Open::Small(w) => std::slice::from_ref(w),
            Open::Large(w) => w,
        }
    }

    /// Whether recipient `i` is open.
    pub fn contains(&self, i: u32) -> bool {
        self.words().get(i as usize / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Close recipient `i`; false when it was not open.
    fn remove(&mut self, i: u32) -> bool {
        let words = match self {
            Open::Small(w) => std::slice::from_mut(w),
            Open::Large(w) => &mut w[..],
        };
        let Some(w) = words.get_mut(i as usize / 64) else { return false };
        let was = *w & (1 << (i % 64)) != 0;
        *w &= !(1 << (i % 64));
        was
    }

    /// No recipient is open.
    pub fn is_empty(&self) -> bool {
        self.words().iter().all(|w| *w == 0)
    }

    /// The open recipients, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words().iter().enumerate().flat_map(|(k, &w)| (0..64usize).filter(move |b| w & (1u64 << b) != 0).map(move |b| (k * 64 + b) as u32))
    }
}

/// Live messages of one core.
#[derive(Default)]
pub struct Ledger {
    /// Entries by spool segment (core, sequence).
    segments: HashMap<(u16, u32), Segment>,
    /// The segment the latest message came from: the segments before it take no new messages
    /// (but for a few committed in the same round and admitted late).
    newest: Option<(u16, u32)>,
    /// Live messages.
    len: usize,
    /// The open sets of live messages with a recipient past 62.
    large: HashMap<MsgRef, Open>,
    /// Failures so far of live messages that have some.
    failed: HashMap<MsgRef, Vec<FailedRecipient>>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Track `msg` with its `open` recipients and the failures already known (recovered from the
    /// spool). A message with nothing open is finished at once (recovery found it owing a DSN).
    pub fn admit(&mut self, msg: Arc<SpooledMessage>, open: &[u32], failed: Vec<FailedRecipient>) -> Option<Finished> {
        if open.is_empty() {
            return Some(Finished { msg, failed });
        }
        if !failed.is_empty() {
            self.failed.insert(msg.id, failed);
        }
        let open = match Open::of(open) {
            Open::Small(w) if w & LARGE == 0 => w,
            set => {
                self.large.insert(msg.id, set);
                LARGE
            }
        };
        let (id, key) = (msg.id, (msg.id.core, msg.id.segment));
        let sealed = self.seal_before(key);
        let seg = self.segments.entry(key).or_default();
        if sealed {
            // A straggler into a segment given back its slack: grow by one, not double.
            seg.entries.reserve_exact(1);
        }
        let entry = Entry { msg: Some(msg), open };
        match seg.find(id.offset) {
            Err(i) => seg.entries.insert(i, entry),
            Ok(i) if seg.entries[i].msg.is_none() => {
                seg.entries[i] = entry;
                seg.dead -= 1;
            }
            Ok(_) => panic!("message {id} admitted twice"),
        }
        self.len += 1;
        None
    }

    /// Note that a message of segment `key` comes; whether that segment is one before the
    /// newest. When a later segment begins, the one before it is complete: its entries'
    /// doubling slack (up to half their `Vec`) is given back, so a sealed segment costs 16 bytes
    /// an entry.
    fn seal_before(&mut self, key: (u16, u32)) -> bool {
        match self.newest {
            Some(newest) if key <= newest => key < newest,
            previous => {
                if let Some(seg) = previous.and_then(|p| self.segments.get_mut(&p)) {
                    seg.entries.shrink_to_fit();
                }
                self.newest = Some(key);
                false
            }
        }
    }

    /// Record that recipient `rcpt` of `msg` is final, with its failure if it failed.
    pub fn record(&mut self, msg: MsgRef, rcpt: u32, failure: Option<FailedRecipient>) -> Progress {
        let key = (msg.core, msg.segment);
        let Some((seg, i)) = self.segments.get_mut(&key).and_then(|s| s.live(msg.offset).map(|i| (s, i))) else { return Progress::Unknown };
        let (removed, empty) = match &mut seg.entries[i].open {
            &mut LARGE => {
                let set = self.large.get_mut(&msg).expect("a large open set");
                (set.remove(rcpt), set.is_empty())
            }
            w => {
                let bit = if rcpt < 63 { 1 << rcpt } else { 0 };
                let was = *w & bit != 0;
                *w &= !bit;
                (was, *w == 0)
            }
        };
        if !removed {
            return Progress::Duplicate;
        }
        if let Some(f) = failure {
            self.failed.entry(msg).or_default().push(f);
        }
        if !empty {
            return Progress::Open;
        }
        let handle = seg.bury(i);
        if seg.dead == seg.entries.len() {
            self.segments.remove(&key);
        } else {
            seg.compact();
        }
        self.len -= 1;
        self.large.remove(&msg);
        let failed = self.failed.remove(&msg).unwrap_or_default();
        Progress::Finished(Finished { msg: handle, failed })
    }

    /// The live entry of `msg`.
    fn get(&self, msg: MsgRef) -> Option<&Entry> {
        let seg = self.segments.get(&(msg.core, msg.segment))?;
        seg.live(msg.offset).map(|i| &seg.entries[i])
    }

    /// The open set of a live entry.
    fn open_of(&self, id: MsgRef, e: &Entry) -> Open {
        match e.open {
            LARGE => self.large[&id].clone(),
            w => Open::Small(w),
        }
    }

    /// Whether recipient `rcpt` of `msg` is live and not yet final.
    pub fn is_open(&self, msg: MsgRef, rcpt: u32) -> bool {
        self.get(msg).is_some_and(|e| match e.open {
            LARGE => self.large[&msg].contains(rcpt),
            w => rcpt < 63 && w & (1 << rcpt) != 0,
        })
    }

    /// A live message, its open recipients and its failures so far (for `ringctl msg`).
    pub fn lookup(&self, msg: MsgRef) -> Option<(&Arc<SpooledMessage>, Open, &[FailedRecipient])> {
        let failed = self.failed.get(&msg).map_or(&[][..], Vec::as_slice);
        self.get(msg).map(|e| (e.msg.as_ref().expect("a live entry"), self.open_of(msg, e), failed))
    }

    /// Messages still live.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no message is live.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(sender: &str, rcpts: usize) -> Arc<SpooledMessage> {
        Arc::new(SpooledMessage::owned(
            MsgRef { core: 0, segment: 1, offset: 64 },
            sender.into(),
            (0..rcpts).map(|i| format!("r{i}@b.test")).collect(),
            Vec::new(),
            Vec::new(),
            0,
            0,
        ))
    }

    fn failure(i: u32) -> FailedRecipient {
        FailedRecipient {
            recipient: format!("r{i}@b.test"),
            status: "5.1.1".into(),
            remote: None,
            diagnostic: "550 no".into(),
            expired: false,
            category: crate::account::bounce_class::BounceCategory::BadMailbox,
        }
    }

    /// A one-recipient message of `segment` at `offset`.
    fn message_at(segment: u32, offset: u64) -> Arc<SpooledMessage> {
        Arc::new(SpooledMessage::owned(MsgRef { core: 0, segment, offset }, "s@a.test".into(), vec!["r@b.test".into()], Vec::new(), Vec::new(), 0, 0))
    }

    #[test]
    fn many_messages_of_one_segment_out_of_order_survive_tombstones_and_compaction() {
        // Ten messages of segment 1, admitted out of order (commit rounds), one straggler
        // after segment 2 began; some finish, one comes back at a buried offset, compaction
        // runs: every live one must still be found, open and finishable.
        let mut l = Ledger::new();
        let ms: Vec<_> = (0..10u64).map(|i| message_at(1, 64 + 100 * i)).collect();
        for i in [2, 0, 1, 3, 5, 4, 6, 8, 7] {
            assert!(l.admit(ms[i].clone(), &[0], Vec::new()).is_none());
        }
        let next = message_at(2, 64);
        l.admit(next.clone(), &[0], Vec::new());
        l.admit(ms[9].clone(), &[0], Vec::new());
        assert_eq!(l.len(), 11);
        for i in [1, 4] {
            assert!(matches!(l.record(ms[i].id, 0, None), Progress::Finished(_)));
        }
        assert!(matches!(l.record(ms[4].id, 0, None), Progress::Unknown), "a tombstone is not live");
        assert!(!l.is_open(ms[4].id, 0) && l.lookup(ms[4].id).is_none());
        // A message at a buried offset (recovery re-admitting what an earlier run left open).
        l.admit(ms[4].clone(), &[0], Vec::new());
        assert!(l.is_open(ms[4].id, 0), "the tombstone's place is live again");
        // Finish six of segment 1: its tombstones pass half, so it is compacted.
        for i in [0, 2, 4, 6, 8, 9] {
            assert!(matches!(l.record(ms[i].id, 0, None), Progress::Finished(_)), "message {i} finishes");
        }
        assert_eq!(l.len(), 4, "3, 5 and 7 of segment 1, and segment 2's");
        for i in [3, 5, 7] {
            assert!(l.is_open(ms[i].id, 0), "message {i} survives the compaction");
            assert_eq!(l.lookup(ms[i].id).map(|(m, ..)| m.id), Some(ms[i].id));
        }
        for i in [0, 1, 2, 4, 6, 8, 9] {
            assert!(!l.is_open(ms[i].id, 0), "message {i} is finished");
        }
        for i in [7, 3, 5] {
            assert!(matches!(l.record(ms[i].id, 0, None), Progress::Finished(_)));
        }
        assert!(matches!(l.record(next.id, 0, None), Progress::Finished(_)));
        assert!(l.is_empty() && l.segments.is_empty(), "nothing left");
    }

    #[test]
    fn finishes_on_the_last_recipient_and_owes_a_dsn_for_failures() {
        let mut l = Ledger::new();
        let m = message("s@a.test", 3);
        assert!(l.admit(m.clone(), &[0, 1, 2], Vec::new()).is_none());
        assert!(matches!(l.record(m.id, 1, Some(failure(1))), Progress::Open));
        assert!(matches!(l.record(m.id, 0, None), Progress::Open));
        let Progress::Finished(f) = l.record(m.id, 2, None) else { panic!("last recipient finishes") };
        assert_eq!(f.failed.len(), 1);
        assert!(f.owes_dsn());
        assert!(l.is_empty());
        assert!(matches!(l.record(m.id, 2, None), Progress::Unknown));
    }

    #[test]
    fn an_entry_is_small_and_its_open_set_exact() {
        // The per-message entry: handle and inline bit set; failures sit apart (issue 9 item 4).
        assert_eq!(std::mem::size_of::<Entry>(), 16);
        assert_eq!(std::mem::size_of::<Open>(), 16);
        let mut big = Open::of(&[0, 63, 64, 200]);
        assert!(matches!(big, Open::Large(_)));
        assert_eq!(big.iter().collect::<Vec<_>>(), [0, 63, 64, 200]);
        assert!(!big.remove(1) && !big.remove(9999), "never open");
        for i in [64, 0, 200] {
            assert!(big.remove(i));
            assert!(!big.is_empty());
        }
        assert!(big.remove(63) && big.is_empty());
        let small = Open::of(&[2, 5]);
        assert_eq!((small.contains(2), small.contains(3), small.iter().collect::<Vec<_>>()), (true, false, vec![2, 5]));
    }

    #[test]
    fn recipient_63_and_beyond_live_apart_and_leave_with_the_message() {
        // Inline word: recipients 0..62; bit 63 marks a set kept in the side table.
        let mut l = Ledger::new();
        let (inline, apart) = (message("s@a.test", 64), message("t@a.test", 64));
        let apart = Arc::new(SpooledMessage::owned(
            MsgRef { core: 0, segment: 2, offset: 64 },
            apart.sender().into(),
            apart.recipients().map(String::from).collect(),
            Vec::new(),
            Vec::new(),
            0,
            0,
        ));
        l.admit(inline.clone(), &[0, 62], Vec::new());
        l.admit(apart.clone(), &[5, 63], Vec::new());
        assert_eq!(l.large.len(), 1, "only the set with recipient 63 sits apart");
        assert!(l.is_open(inline.id, 62) && !l.is_open(inline.id, 63) && !l.is_open(inline.id, 200));
        assert!(l.is_open(apart.id, 63) && l.is_open(apart.id, 5) && !l.is_open(apart.id, 62));
        assert_eq!(l.lookup(apart.id).unwrap().1.iter().collect::<Vec<_>>(), [5, 63]);
        assert!(matches!(l.record(inline.id, 63, None), Progress::Duplicate), "never open");
        assert!(matches!(l.record(apart.id, 63, None), Progress::Open));
        assert!(matches!(l.record(apart.id, 63, None), Progress::Duplicate));
        assert!(matches!(l.record(inline.id, 62, None), Progress::Open));
        assert!(matches!(l.record(apart.id, 5, None), Progress::Finished(_)));
        assert!(matches!(l.record(inline.id, 0, None), Progress::Finished(_)));
        assert!(l.is_empty() && l.large.is_empty(), "nothing kept once finished");
    }

    #[test]
    fn duplicate_reports_count_once() {
        let mut l = Ledger::new();
        let m = message("s@a.test", 2);
        l.admit(m.clone(), &[0, 1], Vec::new());
        assert!(matches!(l.record(m.id, 0, None), Progress::Open));
        assert!(matches!(l.record(m.id, 0, None), Progress::Duplicate), "a second report must not finish the message");
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn no_dsn_for_the_null_sender_or_when_all_delivered() {
        let mut l = Ledger::new();
        let m = message("", 1);
        l.admit(m.clone(), &[0], Vec::new());
        let Progress::Finished(f) = l.record(m.id, 0, Some(failure(0))) else { panic!() };
        assert!(!f.owes_dsn(), "never a DSN to <>");
        let m = message("s@a.test", 1);
        l.admit(m.clone(), &[0], Vec::new());
        let Progress::Finished(f) = l.record(m.id, 0, None) else { panic!() };
        assert!(!f.owes_dsn());
    }

    #[test]
    fn recovered_failures_are_kept_for_the_dsn() {
        let mut l = Ledger::new();
        let m = message("s@a.test", 3);
        assert!(l.admit(m.clone(), &[2], vec![failure(0), failure(1)]).is_none());
        let Progress::Finished(f) = l.record(m.id, 2, Some(failure(2))) else { panic!() };
        let who: Vec<&str> = f.failed.iter().map(|x| x.recipient.as_str()).collect();
        assert_eq!(who, ["r0@b.test", "r1@b.test", "r2@b.test"]);
    }

    #[test]
    fn a_recovered_message_with_nothing_open_is_finished_at_once() {
        let mut l = Ledger::new();
        let m = message("s@a.test", 1);
        let f = l.admit(m, &[], vec![failure(0)]).expect("finished");
        assert!(f.owes_dsn());
        assert!(l.is_empty());
    }
}
