//! A spooled message as the delivery side sees it: envelope plus zero-copy body pieces.
//!
//! Shared across cores as `Arc<SpooledMessage>`; the body is a list of slices of read-only
//! segment maps, so relaying writes the very bytes that were received, never a copy. The
//! envelope (sender, recipients) and the trace headers are read from the message record in
//! its segment map too, on demand: a queued message keeps only where they are, a few dozen
//! bytes whatever its addresses, so a backlog of a million messages does not hold a million
//! copies of them (issue 9 item 4). A sealed segment's pages may have been dropped; reading
//! faults them back from the page cache or the disk, unchanged.
use ringpost_spool::record::{trace_offset_in_payload, FRAME_HEADER_LEN};
use ringpost_spool::{Extent, MessageRecord, MsgRef, SegmentMap};
use std::sync::Arc;

/// Where the envelope and trace bytes are.
#[derive(Debug)]
enum Envelope {
    /// Inside the message record's frame in `map`; offsets count from the payload's start.
    Mapped {
        /// The segment holding the message record.
        map: Arc<SegmentMap>,
        /// First recipient's length prefix.
        rcpts_at: u32,
        /// Number of recipients.
        rcpts: u32,
        /// The trace bytes.
        trace_at: u32,
        /// Their length.
        trace_len: u32,
    },
    /// Held in memory: messages built without a spool record (tests), or a record whose
    /// addresses are not UTF-8 (kept as the lossy text the engine always used for them).
    Owned(Box<OwnedEnvelope>),
}

#[derive(Debug)]
struct OwnedEnvelope {
    sender: String,
    recipients: Vec<String>,
    trace: Vec<u8>,
}

/// One extent of body bytes and the segment it lies in.
type Piece = (Arc<SegmentMap>, Extent);

/// Where the body is.
#[derive(Debug)]
enum Body {
    /// One extent in the segment of the message record (its map is the envelope's): the
    /// common case, kept without an allocation and without repeating the segment (16 bytes
    /// with the tag, not 24: the message handle fits a 96-byte malloc chunk instead of 112).
    Local {
        /// Offset of the body bytes in the segment.
        offset: u64,
        /// Their length.
        len: u32,
    },
    /// Any other layout; behind one thin pointer, so that the enum stays 16 bytes.
    #[allow(clippy::redundant_allocation)]
    Pieces(Box<Box<[Piece]>>),
}

/// An accepted, durable message.
#[derive(Debug)]
pub struct SpooledMessage {
    /// Spool identity and queue id.
    pub id: MsgRef,
    envelope: Envelope,
    body: Body,
    /// Reception time (Unix ms).
    pub received_ms: u64,
    /// Spool record flags (8BITMIME, SMTPUTF8).
    pub flags: u32,
}

impl SpooledMessage {
    /// Build from a record and the maps of the segments it and its body lie in.
    pub fn from_record(id: MsgRef, r: &MessageRecord, map: impl Fn(u32) -> Option<Arc<SegmentMap>>) -> Option<Self> {
        let own = map(id.segment)?;
        let pieces = r.body.iter().map(|e| Some((map(e.segment)?, *e))).collect::<Option<Vec<_>>>()?;
        let utf8 = |b: &[u8]| std::str::from_utf8(b).is_ok();
        if !utf8(&r.sender) || !r.recipients.iter().all(|x| utf8(x)) {
            let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let (sender, recipients) = (lossy(&r.sender), r.recipients.iter().map(|x| lossy(x)).collect());
            return Some(Self::owned(id, sender, recipients, r.trace.clone(), pieces, r.received_ms, r.flags));
        }
        let body = match pieces.as_slice() {
            [(_, e)] if e.segment == id.segment => Body::Local { offset: e.offset, len: e.len },
            _ => Body::Pieces(Box::new(pieces.into())),
        };
        let envelope = Envelope::Mapped {
            map: own,
            rcpts_at: (8 + 4 + 4 + r.sender.len() + 4) as u32,
            rcpts: r.recipients.len() as u32,
            trace_at: trace_offset_in_payload(r) as u32,
            trace_len: r.trace.len() as u32,
        };
        let msg = Self { id, envelope, body, received_ms: r.received_ms, flags: r.flags };
        // The record codec and these offsets must agree: a mismatch is a bug, found here.
        assert!(msg.sender().as_bytes() == r.sender && msg.trace() == r.trace, "message record layout");
        assert!(msg.recipients().map(str::as_bytes).eq(r.recipients.iter().map(Vec::as_slice)), "message record layout");
        Some(msg)
    }

    /// A message whose envelope is held in memory (no spool record to read it from).
    pub fn owned(
        id: MsgRef,
        sender: String,
        recipients: Vec<String>,
        trace: Vec<u8>,
        body: Vec<(Arc<SegmentMap>, Extent)>,
        received_ms: u64,
        flags: u32,
    ) -> Self {
        let envelope = Envelope::Owned(Box::new(OwnedEnvelope { sender, recipients, trace }));
        Self { id, envelope, body: Body::Pieces(Box::new(body.into())), received_ms, flags }
    }

    /// The message record's payload in its map.
    fn payload(map: &SegmentMap, id: MsgRef) -> &[u8] {
        &map.bytes()[id.offset as usize + FRAME_HEADER_LEN..]
    }

    /// Reverse-path (empty: null sender).
    pub fn sender(&self) -> &str {
        match &self.envelope {
            Envelope::Mapped { map, .. } => text(length_prefixed(&Self::payload(map, self.id)[12..]).0),
            Envelope::Owned(o) => &o.sender,
        }
    }

    /// All forward-paths, in the order of the spool record (a recipient's index).
    pub fn recipients(&self) -> Recipients<'_> {
        match &self.envelope {
            Envelope::Mapped { map, rcpts_at, rcpts, .. } => {
                Recipients { from: Source::Mapped(&Self::payload(map, self.id)[*rcpts_at as usize..]), left: *rcpts as usize }
            }
            Envelope::Owned(o) => Recipients { from: Source::Owned(o.recipients.iter()), left: o.recipients.len() },
        }
    }

    /// Recipient `i`. Panics when there is no such recipient: indexes come from this message.
    pub fn recipient(&self, i: u32) -> &str {
        self.recipients().nth(i as usize).expect("recipient index of this message")
    }

    /// Number of recipients.
    pub fn rcpt_count(&self) -> usize {
        self.recipients().left
    }

    /// Header bytes prepended on relay (Received, DKIM signatures).
    pub fn trace(&self) -> &[u8] {
        match &self.envelope {
            Envelope::Mapped { map, trace_at, trace_len, .. } => {
                let at = *trace_at as usize;
                &Self::payload(map, self.id)[at..at + *trace_len as usize]
            }
            Envelope::Owned(o) => &o.trace,
        }
    }

    /// Body bytes in wire form, piece by piece.
    pub fn body_pieces(&self) -> impl Iterator<Item = &[u8]> {
        let (local, pieces): (Option<&[u8]>, &[Piece]) = match (&self.body, &self.envelope) {
            (Body::Local { .. }, Envelope::Mapped { map, .. }) => (Some(map.extent(&self.local_extent())), &[][..]),
            (Body::Local { .. }, Envelope::Owned(_)) => unreachable!("a local body has a mapped envelope"),
            (Body::Pieces(p), _) => (None, &p[..]),
        };
        local.into_iter().chain(pieces.iter().map(|(m, e)| m.extent(e)))
    }

    /// Total size as relayed (trace plus body).
    pub fn wire_len(&self) -> u64 {
        let body = match &self.body {
            Body::Local { len, .. } => *len as u64,
            Body::Pieces(p) => p.iter().map(|(_, e)| e.len as u64).sum(),
        };
        self.trace().len() as u64 + body
    }

    /// The extents (for releasing spool references).
    pub fn extents(&self) -> Vec<Extent> {
        match &self.body {
            Body::Local { .. } => vec![self.local_extent()],
            Body::Pieces(p) => p.iter().map(|(_, e)| *e).collect(),
        }
    }

    /// The extent of a [`Body::Local`] body (in the message record's segment).
    fn local_extent(&self) -> Extent {
        match self.body {
            Body::Local { offset, len } => Extent { segment: self.id.segment, offset, len },
            Body::Pieces(_) => unreachable!("asked only of a local body"),
        }
    }

    /// The header block of the body (up to the blank line), capped at `max` bytes and cut at
    /// a line end, for DSNs.
    pub fn headers(&self, max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in self.body_pieces() {
            let room = (max + 4).saturating_sub(out.len());
            if room == 0 {
                break;
            }
            out.extend_from_slice(&piece[..piece.len().min(room)]);
        }
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            out.truncate(end + 2);
        } else {
            out.truncate(max.min(out.len()));
            let cut = out.windows(2).rposition(|w| w == b"\r\n").map(|p| p + 2).unwrap_or(0);
            out.truncate(cut);
        }
        out
    }
}

/// The recipients of a message, read where they are.
pub struct Recipients<'a> {
    from: Source<'a>,
    left: usize,
}

enum Source<'a> {
    /// Length-prefixed entries in the record.
    Mapped(&'a [u8]),
    Owned(std::slice::Iter<'a, String>),
}

impl<'a> Iterator for Recipients<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        match &mut self.from {
            Source::Mapped(rest) => {
                let (r, after) = length_prefixed(rest);
                *rest = after;
                Some(text(r))
            }
            Source::Owned(it) => it.next().map(String::as_str),
        }
    }

    /// Skips `n` entries by their length prefixes alone (no UTF-8 check of what is skipped):
    /// [`SpooledMessage::recipient`] is one pointer hop per skipped recipient.
    fn nth(&mut self, n: usize) -> Option<&'a str> {
        if n >= self.left {
            self.left = 0;
            return None;
        }
        match &mut self.from {
            Source::Mapped(rest) => {
                for _ in 0..n {
                    *rest = length_prefixed(rest).1;
                }
            }
            Source::Owned(it) => {
                if n > 0 {
                    it.nth(n - 1);
                }
            }
        }
        self.left -= n;
        self.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Recipients<'_> {}

/// One `u32`-length-prefixed field of a record payload, and what follows it.
fn length_prefixed(b: &[u8]) -> (&[u8], &[u8]) {
    let n = u32::from_le_bytes(b[..4].try_into().expect("four bytes")) as usize;
    (&b[4..4 + n], &b[4 + n..])
}

/// Envelope text checked to be UTF-8 when the message was built.
fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).expect("envelope checked to be UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixed(entries: &[&[u8]]) -> Vec<u8> {
        entries.iter().flat_map(|e| (e.len() as u32).to_le_bytes().into_iter().chain(e.iter().copied())).collect()
    }

    #[test]
    fn nth_hops_over_recipients_without_reading_them() {
        // Entry 1 is not UTF-8: reading it would panic, so nth(2) shows it was hopped over
        // (the default nth calls next, which decodes every skipped entry: O(i) work per lookup,
        // O(n²) over a message's recipients).
        let bytes = prefixed(&[b"a@x.test", b"\xff\xfe", b"c@x.test", b"d@x.test"]);
        let mut it = Recipients { from: Source::Mapped(&bytes), left: 4 };
        assert_eq!(it.nth(2), Some("c@x.test"));
        assert_eq!((it.next(), it.next()), (Some("d@x.test"), None));
    }

    #[test]
    fn nth_agrees_with_walking_for_mapped_and_owned_recipients() {
        let names = ["a@x.test", "bb@y.test", "ccc@z.test"];
        let bytes = prefixed(&names.map(str::as_bytes));
        let owned: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        for n in 0..5 {
            let want = names.get(n).copied();
            let mut m = Recipients { from: Source::Mapped(&bytes), left: 3 };
            let mut o = Recipients { from: Source::Owned(owned.iter()), left: 3 };
            assert_eq!((m.nth(n), o.nth(n)), (want, want), "nth({n})");
            let rest: Vec<_> = names.iter().skip(n + 1).copied().collect();
            assert_eq!((m.len(), o.len()), (rest.len(), rest.len()), "left after nth({n})");
            assert_eq!((m.collect::<Vec<_>>(), o.collect::<Vec<_>>()), (rest.clone(), rest), "after nth({n})");
        }
    }

    #[test]
    fn a_message_handle_is_small() {
        // Issue 9 item 4: with the Arc's counts, 88 bytes: one 96-byte malloc chunk.
        assert_eq!(std::mem::size_of::<Body>(), 16);
        assert_eq!(std::mem::size_of::<SpooledMessage>(), 72);
    }
}
