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
    /// Inside the message record's frame in `map`. Only where the trace starts is kept (its
    /// length prefix is just before it, the body's extents just after it); everything else
    /// (reception time, flags, sender, recipients) sits at offsets the record's own length
    /// prefixes give: 16 bytes, so the handle fits a 64-byte malloc chunk (issue 9 item 4).
    Mapped {
        /// The segment holding the message record.
        map: Arc<SegmentMap>,
        /// The trace bytes, from the payload's start.
        trace_at: u32,
        /// The DKIM signature lines made after the commit: where their `u32` length prefix is
        /// in the same segment (inside a Signature record), or 0 for none. Four bytes that the
        /// enum's padding had anyway: the handle stays 40 bytes.
        sig_at: u32,
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
    received_ms: u64,
    flags: u32,
    /// Signature lines in a segment map (map, where their length prefix is), for a record whose
    /// addresses are not UTF-8.
    signature: Option<(Arc<SegmentMap>, u32)>,
}

/// Where the DKIM signature lines made after a message's commit are (see
/// [`ringpost_spool::record::FLAG_SIGN_PENDING`]).
#[derive(Debug, Clone, Copy)]
pub enum SignatureLines<'a> {
    /// None made: none due, or none applied.
    None,
    /// In a Signature record (the extent of the lines): read from the map when in the
    /// message's own segment, copied and held otherwise.
    Spooled(Extent),
    /// Held in memory: the record could not be written.
    Held(&'a [u8]),
}

/// One extent of body bytes and the segment it lies in.
type Piece = (Arc<SegmentMap>, Extent);

/// An accepted, durable message: its id, where its record is, and the maps of its body's
/// segments when they are not only the record's own (40 bytes; with the `Arc`'s counts one
/// 64-byte malloc chunk: issue 9 item 4, a million queued).
#[derive(Debug)]
pub struct SpooledMessage {
    /// Spool identity and queue id.
    pub id: MsgRef,
    envelope: Envelope,
    /// `None`: the body is the record's one extent, in the record's own segment (the common
    /// case, read from the record). Otherwise every piece with its map, behind a thin pointer.
    #[allow(clippy::redundant_allocation)]
    pieces: Option<Box<Box<[Piece]>>>,
}

/// Payload offsets of a message record's fixed fields (`record::encode_message`).
const RECEIVED_AT: usize = 0;
/// Flags, after the reception time.
const FLAGS_AT: usize = 8;
/// The sender's length prefix.
const SENDER_AT: usize = 12;
/// Bytes of one encoded body extent (segment, offset, length).
const EXTENT_LEN: usize = 16;

impl SpooledMessage {
    /// Build from a record and the maps of the segments it and its body lie in (no signature
    /// lines beyond its trace).
    pub fn from_record(id: MsgRef, r: &MessageRecord, map: impl Fn(u32) -> Option<Arc<SegmentMap>>) -> Option<Self> {
        Self::signed(id, r, map, SignatureLines::None)
    }

    /// Build from a record, the maps of its segments and the DKIM signature lines made for it
    /// after its commit. `None` when a segment is not mapped.
    pub fn signed(id: MsgRef, r: &MessageRecord, map: impl Fn(u32) -> Option<Arc<SegmentMap>>, sig: SignatureLines<'_>) -> Option<Self> {
        let own = map(id.segment)?;
        let pieces = r.body.iter().map(|e| Some((map(e.segment)?, *e))).collect::<Option<Vec<_>>>()?;
        // Lines in the message's own segment are read from its map when needed; lines in
        // another segment (the record went to the next one) are copied and held.
        let far;
        let (sig_at, held): (u32, &[u8]) = match sig {
            SignatureLines::None => (0, &[]),
            SignatureLines::Spooled(e) if e.len == 0 => (0, &[]),
            SignatureLines::Spooled(e) if e.segment == id.segment && e.offset >= 4 && e.offset - 4 <= u64::from(u32::MAX) => {
                ((e.offset - 4) as u32, &[])
            }
            SignatureLines::Spooled(e) => {
                far = map(e.segment)?;
                (0, far.extent(&e))
            }
            SignatureLines::Held(lines) => (0, lines),
        };
        let utf8 = |b: &[u8]| std::str::from_utf8(b).is_ok();
        if !held.is_empty() || !utf8(&r.sender) || !r.recipients.iter().all(|x| utf8(x)) {
            let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let (sender, recipients) = (lossy(&r.sender), r.recipients.iter().map(|x| lossy(x)).collect());
            let mut trace = r.trace.clone();
            trace.extend_from_slice(held);
            let mut msg = Self::owned(id, sender, recipients, trace, pieces, r.received_ms, r.flags);
            if let Envelope::Owned(o) = &mut msg.envelope {
                o.signature = (sig_at != 0).then_some((own, sig_at));
            }
            return Some(msg);
        }
        let pieces = match pieces.as_slice() {
            [(_, e)] if e.segment == id.segment => None,
            _ => Some(Box::new(pieces.into())),
        };
        let envelope = Envelope::Mapped { map: own, trace_at: trace_offset_in_payload(r) as u32, sig_at };
        let msg = Self { id, envelope, pieces };
        // The record codec and these offsets must agree: a mismatch is a bug, found here.
        assert!(msg.sender().as_bytes() == r.sender && msg.trace() == r.trace, "message record layout");
        if let SignatureLines::Spooled(e) = sig {
            assert!(e.len == 0 || msg.signature().len() == e.len as usize, "signature record layout");
        }
        assert!(msg.recipients().map(str::as_bytes).eq(r.recipients.iter().map(Vec::as_slice)), "message record layout");
        assert!((msg.received_ms(), msg.flags(), msg.extents()) == (r.received_ms, r.flags, r.body.clone()), "message record layout");
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
        let envelope = Envelope::Owned(Box::new(OwnedEnvelope { sender, recipients, trace, received_ms, flags, signature: None }));
        Self { id, envelope, pieces: Some(Box::new(body.into())) }
    }

    /// The message record's payload in its map.
    fn payload(map: &SegmentMap, id: MsgRef) -> &[u8] {
        &map.bytes()[id.offset as usize + FRAME_HEADER_LEN..]
    }

    /// Reception time (Unix ms).
    pub fn received_ms(&self) -> u64 {
        match &self.envelope {
            Envelope::Mapped { map, .. } => u64_at(Self::payload(map, self.id), RECEIVED_AT),
            Envelope::Owned(o) => o.received_ms,
        }
    }

    /// Spool record flags (8BITMIME, SMTPUTF8).
    pub fn flags(&self) -> u32 {
        match &self.envelope {
            Envelope::Mapped { map, .. } => u32_at(Self::payload(map, self.id), FLAGS_AT),
            Envelope::Owned(o) => o.flags,
        }
    }

    /// False when the reception found that no `X-Ringpost-Pool` field can be in the headers
    /// ([`ringpost_spool::record::FLAG_NO_POOL_HEADER`]): delivery and queueing skip their
    /// scans. Records written before the flag existed, and DSNs, say true: they are scanned.
    pub fn may_carry_pool_header(&self) -> bool {
        self.flags() & ringpost_spool::record::FLAG_NO_POOL_HEADER == 0
    }

    /// Reverse-path (empty: null sender).
    pub fn sender(&self) -> &str {
        match &self.envelope {
            Envelope::Mapped { map, .. } => text(length_prefixed(&Self::payload(map, self.id)[SENDER_AT..]).0),
            Envelope::Owned(o) => &o.sender,
        }
    }

    /// All forward-paths, in the order of the spool record (a recipient's index).
    pub fn recipients(&self) -> Recipients<'_> {
        match &self.envelope {
            Envelope::Mapped { map, .. } => {
                let p = Self::payload(map, self.id);
                let count_at = SENDER_AT + 4 + u32_at(p, SENDER_AT) as usize;
                Recipients { from: Source::Mapped(&p[count_at + 4..]), left: u32_at(p, count_at) as usize }
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
            Envelope::Mapped { map, trace_at, .. } => {
                let (p, at) = (Self::payload(map, self.id), *trace_at as usize);
                &p[at..at + u32_at(p, at - 4) as usize]
            }
            Envelope::Owned(o) => &o.trace,
        }
    }

    /// The DKIM signature lines made after the commit, sent between the trace and the body
    /// (empty when there are none, or when they are held in the trace).
    pub fn signature(&self) -> &[u8] {
        let (map, at) = match &self.envelope {
            Envelope::Mapped { map, sig_at, .. } if *sig_at != 0 => (map, *sig_at as usize),
            Envelope::Owned(o) => match &o.signature {
                Some((map, at)) => (map, *at as usize),
                None => return &[],
            },
            Envelope::Mapped { .. } => return &[],
        };
        let b = map.bytes();
        &b[at + 4..at + 4 + u32_at(b, at) as usize]
    }

    /// Body bytes in wire form, piece by piece.
    pub fn body_pieces(&self) -> impl Iterator<Item = &[u8]> {
        let (local, pieces): (Option<&[u8]>, &[Piece]) = match (&self.pieces, &self.envelope) {
            (None, Envelope::Mapped { map, .. }) => (Some(map.extent(&self.local_extent())), &[][..]),
            (None, Envelope::Owned(_)) => unreachable!("a local body has a mapped envelope"),
            (Some(p), _) => (None, &p[..]),
        };
        local.into_iter().chain(pieces.iter().map(|(m, e)| m.extent(e)))
    }

    /// Total size as relayed (trace, signature lines and body).
    pub fn wire_len(&self) -> u64 {
        let body = match &self.pieces {
            None => self.local_extent().len as u64,
            Some(p) => p.iter().map(|(_, e)| e.len as u64).sum(),
        };
        (self.trace().len() + self.signature().len()) as u64 + body
    }

    /// The extents (for releasing spool references).
    pub fn extents(&self) -> Vec<Extent> {
        match &self.pieces {
            None => vec![self.local_extent()],
            Some(p) => p.iter().map(|(_, e)| *e).collect(),
        }
    }

    /// The one body extent of a message without pieces: the record's first extent, just after
    /// the trace and the extent count. Its segment is the record's own (checked when built).
    fn local_extent(&self) -> Extent {
        let Envelope::Mapped { map, trace_at, .. } = &self.envelope else { unreachable!("asked only of a mapped record") };
        let p = Self::payload(map, self.id);
        let trace_at = *trace_at as usize;
        let at = trace_at + u32_at(p, trace_at - 4) as usize + 4;
        let e = &p[at..at + EXTENT_LEN];
        Extent { segment: u32_at(e, 0), offset: u64_at(e, 4), len: u32_at(e, 12) }
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

/// The little-endian `u32` at `at` in a record payload.
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("four bytes"))
}

/// The little-endian `u64` at `at` in a record payload.
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("eight bytes"))
}

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

    /// Records of every shape the codec allows, written to real segment files and mapped:
    /// each accessor must give what the record decoded to. `from_record` asserts the envelope
    /// fields itself; this adds the body (pieces, wire length, the local extent's bytes) and
    /// exercises the walk over the length prefixes with empty fields, 0, 1 and 2 extents, an
    /// extent in another segment, 63/64 recipients and an address that is not UTF-8.
    #[test]
    fn every_record_shape_reads_back_from_its_mapped_segment() {
        use ringpost_spool::record::{encode_frame, encode_message, RecordKind};
        use std::io::Write;
        let body_a = b"Subject: a\r\n\r\nfirst body\r\n".to_vec();
        let body_b = b"second piece\r\n".to_vec();
        // Segment 2 holds one body piece only; segment 1 holds bodies and records.
        let mut seg2 = vec![0u8; 64];
        seg2.extend_from_slice(&body_b);
        let mut seg1 = vec![0u8; 64];
        let a = Extent { segment: 1, offset: seg1.len() as u64, len: body_a.len() as u32 };
        seg1.extend_from_slice(&body_a);
        let b = Extent { segment: 2, offset: 64, len: body_b.len() as u32 };
        let rcpts = |n: usize| (0..n).map(|i| format!("r{i}@d.test").into_bytes()).collect::<Vec<_>>();
        let rec = |sender: &[u8], recipients: Vec<Vec<u8>>, trace: &[u8], body: Vec<Extent>, t: u64, flags: u32| MessageRecord {
            received_ms: t,
            sender: sender.to_vec(),
            recipients,
            trace: trace.to_vec(),
            body,
            flags,
            body_hash: None,
        };
        let records = vec![
            rec(b"s@x.test", rcpts(1), b"Received: x\r\n", vec![a], 1_800_000_000_123, 3),
            rec(b"", rcpts(1), b"", vec![a], 7, 0),
            rec(b"s@x.test", rcpts(63), b"T\r\n", vec![a, b], u64::MAX, u32::MAX),
            rec(b"s@x.test", rcpts(64), b"T\r\n", vec![b], 1, 1),
            rec(b"s@x.test", rcpts(2), b"T\r\n", vec![], 2, 2),
            rec(b"\xffs@x.test", vec![b"\xfe@d.test".to_vec()], b"T\r\n", vec![a], 3, 0),
        ];
        let mut ids = Vec::new();
        for r in &records {
            ids.push(MsgRef { core: 0, segment: 1, offset: seg1.len() as u64 });
            encode_frame(7, RecordKind::Message, &encode_message(r), &mut seg1);
        }
        let files: Vec<tempfile::NamedTempFile> = [&seg1, &seg2]
            .iter()
            .map(|bytes| {
                let mut f = tempfile::NamedTempFile::new().unwrap();
                f.write_all(bytes).unwrap();
                f.flush().unwrap();
                f
            })
            .collect();
        let maps: Vec<Arc<SegmentMap>> =
            files.iter().enumerate().map(|(i, f)| Arc::new(SegmentMap::map(i as u32 + 1, f.path().to_path_buf(), f.as_file()).unwrap())).collect();
        let map_of = |seq: u32| maps.get(seq as usize - 1).cloned();
        for (id, r) in ids.iter().zip(&records) {
            let m = SpooledMessage::from_record(*id, r, map_of).expect("every segment is mapped");
            let want: Vec<u8> = r.body.iter().flat_map(|e| if e.segment == 1 { body_a.clone() } else { body_b.clone() }).collect();
            assert_eq!(m.body_pieces().flatten().copied().collect::<Vec<u8>>(), want, "body of {r:?}");
            assert_eq!(m.wire_len(), (r.trace.len() + want.len()) as u64);
            assert_eq!(m.rcpt_count(), r.recipients.len());
            let last = r.recipients.len() as u32 - 1;
            assert_eq!(m.recipient(last), String::from_utf8_lossy(&r.recipients[last as usize]));
            assert_eq!((m.received_ms(), m.flags(), m.extents()), (r.received_ms, r.flags, r.body.clone()));
        }
        assert!(SpooledMessage::from_record(MsgRef { core: 0, segment: 3, offset: 64 }, &records[0], map_of).is_none(), "a missing segment");
    }

    /// The signature lines made after the commit are sent between the trace and the body: read
    /// from the Signature record when it is in the message's own segment, copied from another
    /// segment, or held when no record was written. The handle stays 40 bytes with them.
    #[test]
    fn signature_lines_come_from_the_own_segment_another_segment_or_memory() {
        use ringpost_spool::record::{encode_frame, encode_message, encode_signature, RecordKind, SIGNATURE_AT};
        use std::io::Write;
        let body = b"From: a@s.test\r\n\r\nbody\r\n".to_vec();
        let mut seg1 = vec![0u8; 64];
        let extent = Extent { segment: 1, offset: 64, len: body.len() as u32 };
        seg1.extend_from_slice(&body);
        let record = MessageRecord {
            received_ms: 5,
            sender: b"a@s.test".to_vec(),
            recipients: vec![b"r@d.test".to_vec()],
            trace: b"Received: x\r\n".to_vec(),
            body: vec![extent],
            ..Default::default()
        };
        let id = MsgRef { core: 0, segment: 1, offset: seg1.len() as u64 };
        encode_frame(7, RecordKind::Message, &encode_message(&record), &mut seg1);
        let near = b"DKIM-Signature: near\r\n";
        let at_near = seg1.len() as u64 + (FRAME_HEADER_LEN + SIGNATURE_AT) as u64;
        encode_frame(7, RecordKind::Signature, &encode_signature(&id, near), &mut seg1);
        let far = b"DKIM-Signature: far\r\n";
        let mut seg2 = vec![0u8; 64];
        let at_far = seg2.len() as u64 + (FRAME_HEADER_LEN + SIGNATURE_AT) as u64;
        encode_frame(7, RecordKind::Signature, &encode_signature(&id, far), &mut seg2);
        let files: Vec<tempfile::NamedTempFile> = [&seg1, &seg2]
            .iter()
            .map(|bytes| {
                let mut f = tempfile::NamedTempFile::new().unwrap();
                f.write_all(bytes).unwrap();
                f
            })
            .collect();
        let maps: Vec<Arc<SegmentMap>> =
            files.iter().enumerate().map(|(i, f)| Arc::new(SegmentMap::map(i as u32 + 1, f.path().to_path_buf(), f.as_file()).unwrap())).collect();
        let map_of = |seq: u32| maps.get(seq as usize - 1).cloned();
        let wire =
            |m: &SpooledMessage| [m.trace(), m.signature()].concat().into_iter().chain(m.body_pieces().flatten().copied()).collect::<Vec<u8>>();
        let want = |lines: &[u8]| [&record.trace[..], lines, &body[..]].concat();
        let cases: [(SignatureLines, &[u8]); 5] = [
            (SignatureLines::Spooled(Extent { segment: 1, offset: at_near, len: near.len() as u32 }), near),
            (SignatureLines::Spooled(Extent { segment: 2, offset: at_far, len: far.len() as u32 }), far),
            (SignatureLines::Held(b"DKIM-Signature: held\r\n"), b"DKIM-Signature: held\r\n"),
            (SignatureLines::Spooled(Extent { segment: 1, offset: at_near, len: 0 }), b""),
            (SignatureLines::None, b""),
        ];
        for (sig, lines) in cases {
            let m = SpooledMessage::signed(id, &record, map_of, sig).expect("mapped");
            assert_eq!(wire(&m), want(lines), "{sig:?}");
            assert_eq!(m.wire_len(), want(lines).len() as u64, "{sig:?}");
            assert_eq!((m.sender(), m.recipient(0)), ("a@s.test", "r@d.test"));
        }
        // Only the own segment's lines are read in place; the others are copied.
        let m = SpooledMessage::signed(id, &record, map_of, cases[0].0).unwrap();
        assert!(matches!(m.envelope, Envelope::Mapped { sig_at, .. } if sig_at as u64 == at_near - 4));
        assert!(std::ptr::eq(m.signature().as_ptr(), maps[0].bytes()[at_near as usize..].as_ptr()), "read from the map, not copied");
        assert_eq!(std::mem::size_of::<SpooledMessage>(), 40, "the lines' place fits the handle");
        // A record whose addresses are not UTF-8 has an owned envelope, which still reads its
        // lines from the map.
        let odd = MessageRecord { sender: b"\xffa@s.test".to_vec(), ..record.clone() };
        let mut seg3 = seg1.clone();
        let odd_id = MsgRef { core: 0, segment: 1, offset: seg3.len() as u64 };
        encode_frame(7, RecordKind::Message, &encode_message(&odd), &mut seg3);
        let odd_at = seg3.len() as u64 + (FRAME_HEADER_LEN + SIGNATURE_AT) as u64;
        encode_frame(7, RecordKind::Signature, &encode_signature(&odd_id, near), &mut seg3);
        let mut f3 = tempfile::NamedTempFile::new().unwrap();
        f3.write_all(&seg3).unwrap();
        let map3 = Arc::new(SegmentMap::map(1, f3.path().to_path_buf(), f3.as_file()).unwrap());
        let sig = SignatureLines::Spooled(Extent { segment: 1, offset: odd_at, len: near.len() as u32 });
        let m = SpooledMessage::signed(odd_id, &odd, |_| Some(map3.clone()), sig).unwrap();
        assert!(matches!(m.envelope, Envelope::Owned(_)));
        assert_eq!((m.trace(), m.signature()), (&record.trace[..], &near[..]));
        let gone = SignatureLines::Spooled(Extent { segment: 3, offset: 64, len: 4 });
        assert!(SpooledMessage::signed(id, &record, map_of, gone).is_none(), "lines in a segment that is not mapped");
    }

    #[test]
    fn a_message_handle_is_small() {
        // Issue 9 item 4: with the Arc's counts, 56 bytes: one 64-byte malloc chunk.
        assert_eq!(std::mem::size_of::<Envelope>(), 16);
        assert_eq!(std::mem::size_of::<SpooledMessage>(), 40);
    }
}
