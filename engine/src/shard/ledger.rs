//! The ledger of one core: every message this core accepted (or recovered) that still has a
//! recipient without a final outcome, and what failed so far.
//!
//! It decides and never acts: no I/O. The owner core records each final outcome here; when the
//! last recipient of a message is final the ledger hands the message back as [`Finished`], with
//! whether a DSN is owed, and forgets it. The caller then makes the DSN durable (if owed) and only
//! then releases the message's spool space.
use crate::account::dsn::FailedRecipient;
use crate::message::SpooledMessage;
use ringpost_spool::MsgRef;
use std::collections::{BTreeSet, HashMap};
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
        !self.failed.is_empty() && !self.msg.sender.is_empty()
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

struct Entry {
    msg: Arc<SpooledMessage>,
    open: BTreeSet<u32>,
    failed: Vec<FailedRecipient>,
}

/// Live messages of one core.
#[derive(Default)]
pub struct Ledger {
    live: HashMap<MsgRef, Entry>,
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
        let entry = Entry { msg: msg.clone(), open: open.iter().copied().collect(), failed };
        let previous = self.live.insert(msg.id, entry);
        assert!(previous.is_none(), "message {} admitted twice", msg.id);
        None
    }

    /// Record that recipient `rcpt` of `msg` is final, with its failure if it failed.
    pub fn record(&mut self, msg: MsgRef, rcpt: u32, failure: Option<FailedRecipient>) -> Progress {
        let Some(entry) = self.live.get_mut(&msg) else { return Progress::Unknown };
        if !entry.open.remove(&rcpt) {
            return Progress::Duplicate;
        }
        entry.failed.extend(failure);
        if !entry.open.is_empty() {
            return Progress::Open;
        }
        let Entry { msg, failed, .. } = self.live.remove(&msg).expect("entry just seen");
        Progress::Finished(Finished { msg, failed })
    }

    /// A live message, its open recipients and its failures so far (for `ringctl msg`).
    pub fn lookup(&self, msg: MsgRef) -> Option<(&Arc<SpooledMessage>, &BTreeSet<u32>, &[FailedRecipient])> {
        self.live.get(&msg).map(|e| (&e.msg, &e.open, e.failed.as_slice()))
    }

    /// Messages still live.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// True when no message is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(sender: &str, rcpts: usize) -> Arc<SpooledMessage> {
        Arc::new(SpooledMessage {
            id: MsgRef { core: 0, segment: 1, offset: 64 },
            sender: sender.into(),
            recipients: (0..rcpts).map(|i| format!("r{i}@b.test")).collect(),
            trace: crate::message::Trace::Owned(Vec::new()),
            body: Vec::new(),
            received_ms: 0,
            flags: 0,
        })
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
