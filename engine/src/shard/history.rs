//! What `ringctl msg` answers beyond the ledger, on the core that owns a message: its
//! `Message-ID` (so an injecting platform can ask by the id it generated), each recipient's
//! final outcome as it comes (attempts, last reply, bounce category), and finished messages
//! for `[admin] history` after their last recipient is final.
//!
//! A queued message costs the history nothing but its Message-ID index entry, 8 bytes and the
//! slack of its segment's entries: a hash of the id and the message's offset, kept per spool
//! segment (`mid_index.rs`; no copy of the id, which is read again from the mapped body when
//! needed), and outcomes only once a recipient is final. A backlog of a
//! million messages therefore holds no million id strings (issue 9 item 4).
//!
//! Why here and bounded: the ledger forgets a message when it is finished (its spool space is
//! released), so a platform asking "what happened to X" a minute later would get nothing. A
//! finished entry is a few hundred bytes (envelope, one short line per recipient, no body);
//! entries leave by age (`[admin] history`) and, past `[admin] history_max` per core, oldest
//! first, so memory stays bounded whatever the rate. Data only, no I/O: time is passed in.
use crate::message::SpooledMessage;
use crate::shard::mid_index::MidIndex;
use ringpost_admin_proto::RcptState;
use ringpost_spool::MsgRef;
use std::collections::{HashMap, VecDeque};

/// Longest reply text kept per recipient.
const RESPONSE_MAX: usize = 200;
/// Most header bytes searched for the Message-ID.
const HEADER_SCAN_MAX: usize = 64 * 1024;

/// One recipient's final outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalNote {
    /// Recipient index.
    pub rcpt: u32,
    /// Delivered, bounced or expired.
    pub state: RcptState,
    /// Attempts it took.
    pub attempts: u32,
    /// The last reply (cut to [`RESPONSE_MAX`]).
    pub response: Box<str>,
    /// Bounce category of a failure.
    pub category: Option<&'static str>,
}

/// A finished message as the history keeps it.
#[derive(Debug, Clone)]
pub struct DoneMsg {
    /// The Message-ID, without brackets.
    pub message_id: Option<Box<str>>,
    /// Envelope sender.
    pub sender: Box<str>,
    /// Recipients in envelope order.
    pub recipients: Box<[Box<str>]>,
    /// Size as relayed.
    pub size: u64,
    /// Reception time, Unix ms.
    pub received_ms: u64,
    /// When its last recipient became final, Unix ms.
    pub finished_ms: u64,
    /// Every recipient's outcome.
    pub finals: Vec<FinalNote>,
}

/// Message-IDs and outcomes of one core's messages, live and recently finished.
#[derive(Debug)]
pub struct History {
    keep_ms: u64,
    max: usize,
    /// Final outcomes of live messages that have some.
    live: HashMap<MsgRef, Vec<FinalNote>>,
    done: HashMap<MsgRef, DoneMsg>,
    /// Finish order, for eviction by age and by count.
    order: VecDeque<(u64, MsgRef)>,
    /// Message-ID hash ([`mid_key`]) → the messages that carried it (live or finished).
    /// A hit is checked against the message's real Message-ID before it is believed.
    by_mid: MidIndex,
}

impl History {
    /// Keep finished messages `keep_ms`, at most `max` of them.
    pub fn new(keep_ms: u64, max: usize) -> Self {
        Self { keep_ms, max, live: HashMap::new(), done: HashMap::new(), order: VecDeque::new(), by_mid: MidIndex::default() }
    }

    /// Change the bounds (a reload); the next eviction applies them.
    pub fn set_bounds(&mut self, keep_ms: u64, max: usize) {
        (self.keep_ms, self.max) = (keep_ms, max);
    }

    /// A message this core now owns (accepted or recovered): index its Message-ID.
    pub fn admit(&mut self, msg: &SpooledMessage) {
        self.admit_parsed(msg, message_id(msg).as_deref());
    }

    /// [`History::admit`] with the Message-ID already read from the header block.
    pub fn admit_parsed(&mut self, msg: &SpooledMessage, message_id: Option<&str>) {
        if let Some(m) = message_id {
            self.by_mid.insert(mid_key(m), msg.id);
        }
    }

    /// A recipient of a live message is final (the caller saw the ledger take it).
    pub fn record(&mut self, msg: MsgRef, mut note: FinalNote) {
        cut(&mut note.response);
        self.live.entry(msg).or_default().push(note);
    }

    /// The message is finished: keep it for the history window.
    pub fn finish(&mut self, msg: &SpooledMessage, now_ms: u64) {
        let finals = self.live.remove(&msg.id).unwrap_or_default();
        let message_id = message_id(msg).map(String::into_boxed_str);
        if self.max == 0 || self.keep_ms == 0 {
            self.forget_mid(message_id.as_deref(), msg.id);
            return;
        }
        let done = DoneMsg {
            message_id,
            sender: msg.sender().into(),
            recipients: msg.recipients().map(Box::from).collect(),
            size: msg.wire_len(),
            received_ms: msg.received_ms(),
            finished_ms: now_ms,
            finals,
        };
        self.done.insert(msg.id, done);
        self.order.push_back((now_ms, msg.id));
        self.evict(now_ms);
    }

    /// Drop finished messages older than the window, and the oldest past the count bound.
    pub fn evict(&mut self, now_ms: u64) {
        while let Some(&(at, id)) = self.order.front() {
            if self.order.len() <= self.max && at + self.keep_ms > now_ms {
                break;
            }
            self.order.pop_front();
            if let Some(d) = self.done.remove(&id) {
                self.forget_mid(d.message_id.as_deref(), id);
            }
        }
    }

    fn forget_mid(&mut self, mid: Option<&str>, id: MsgRef) {
        if let Some(m) = mid {
            self.by_mid.remove(mid_key(m), id);
        }
    }

    /// The newest message that carried this Message-ID (brackets optional), live or
    /// finished. `live_mid` reads a live message's Message-ID (from the ledger's message): the
    /// index keeps only a hash, so a hit is believed only when the real id matches.
    pub fn find(&self, message_id: &str, live_mid: impl Fn(MsgRef) -> Option<String>) -> Option<MsgRef> {
        let wanted = strip(message_id);
        self.by_mid.candidates(mid_key(wanted)).into_iter().find(|&id| {
            let real = match self.done.get(&id) {
                Some(d) => d.message_id.as_deref().map(String::from),
                None => live_mid(id),
            };
            real.as_deref() == Some(wanted)
        })
    }

    /// The outcomes of a live message's final recipients so far.
    pub fn finals(&self, msg: MsgRef) -> &[FinalNote] {
        self.live.get(&msg).map_or(&[], Vec::as_slice)
    }

    /// A finished message still in the window.
    pub fn done(&self, msg: MsgRef) -> Option<&DoneMsg> {
        self.done.get(&msg)
    }

    /// Finished messages kept now.
    pub fn done_len(&self) -> usize {
        self.done.len()
    }
}

fn cut(s: &mut Box<str>) {
    if s.len() > RESPONSE_MAX {
        let end = (0..=RESPONSE_MAX).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        *s = s[..end].into();
    }
}

/// The index key of a Message-ID (without brackets): a 64-bit hash (in memory only).
fn mid_key(mid: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    mid.hash(&mut h);
    h.finish()
}

/// A Message-ID without its angle brackets and surrounding space.
pub fn strip(id: &str) -> &str {
    id.trim().trim_start_matches('<').trim_end_matches('>').trim()
}

/// The `Message-ID` header of a spooled message, read from its mapped body (no copy when the
/// header block is in the first piece, as it is unless the headers are huge).
pub fn message_id(msg: &SpooledMessage) -> Option<String> {
    let first = msg.body_pieces().next().unwrap_or(&[]);
    if first.windows(4).any(|w| w == b"\r\n\r\n") || first.len() >= HEADER_SCAN_MAX {
        return find_message_id(&first[..first.len().min(HEADER_SCAN_MAX)]);
    }
    find_message_id(&msg.headers(HEADER_SCAN_MAX))
}

/// The Message-ID field in a header block (`headers` may run on into the body: the search
/// stops at the blank line). Folded values are unfolded.
pub fn find_message_id(headers: &[u8]) -> Option<String> {
    let mut lines = headers.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)).peekable();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            return None;
        }
        const NAME: &[u8] = b"message-id:";
        if line.len() < NAME.len() || !line[..NAME.len()].eq_ignore_ascii_case(NAME) {
            continue;
        }
        let mut value = String::from_utf8_lossy(&line[NAME.len()..]).into_owned();
        while let Some(next) = lines.next_if(|l| l.first().is_some_and(|b| *b == b' ' || *b == b'\t')) {
            value.push_str(&String::from_utf8_lossy(next));
        }
        let v = strip(&value);
        return (!v.is_empty() && v.len() <= 998).then(|| v.to_string());
    }
    None
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
