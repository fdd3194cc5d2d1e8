//! The spool record codec: sans-I/O encoding and decoding of checksummed, typed records.
//!
//! Frame layout (little endian, 16-byte header, payload padded to 8 bytes):
//!
//! ```text
//! magic u32 "RPR1" | kind u8 | 0 0 0 | payload_len u32 | crc32c u32 | payload | pad
//! ```
//!
//! The checksum covers kind, length and payload, so a torn write (zeros from preallocation or
//! a half-copied payload) never decodes. It is seeded with the segment's secret frame seed (a
//! random `u32` kept in the segment header, see [`crate::segment`]): `crc32c_append(seed, kind
//! ‖ len ‖ payload)`. Body chunks hold bytes a sender chose, so without the seed a sender could
//! embed a well-formed frame in a body, and recovery resynchronising past corruption could land
//! on it and resurrect a forged message. Version-1 segments (`RPSEG001`) have seed 0, which is
//! the unseeded checksum of the original format; recovery never resynchronises inside them.
//!
//! Record kinds and payloads (strings are `u32 len ‖ UTF-8 bytes`, a `MsgRef` is
//! `core u16 ‖ segment u32 ‖ offset u64`):
//!
//! ```text
//! 1 Chunk        body bytes
//! 2 Message      received_ms u64 | flags u32 | sender | n u32 | n × rcpt | trace
//!                | m u32 | m × (segment u32 | offset u64 | len u32) | 0 or 1 ‖ hash [32]
//! 3 Disposition  MsgRef | rcpt u32 | outcome u8                        (format 1, no details)
//!                MsgRef | rcpt u32 | outcome u8 | 1 | status | 0 or 1 ‖ remote | diagnostic
//! 4 RcptState    MsgRef | rcpt u32 | attempts u32 | next_attempt_ms u64 | last_response
//! 5 DsnDone      MsgRef
//! 6 Checkpoint   segment u32 | n u32 | n × offset u64
//! 7 Signature    MsgRef | signature header lines (u32 len ‖ bytes)
//! ```
//!
//! A Signature record holds the `DKIM-Signature` lines of a message whose record has
//! [`FLAG_SIGN_PENDING`]: signing happens after the 250 (an RSA signature costs more than the
//! rest of the transaction), so the lines come in a record of their own, appended once they are
//! made. It is a cache, not a promise: signing is deterministic (the same header block, body
//! hash, `t=` and key give the same bytes), so recovery signs again when it finds none.
//!
//! Text fields are bounded (see the `MAX_*_LEN` constants): encoders truncate at a character
//! boundary, decoders reject longer fields as corrupt. This module must stay free of I/O: it is
//! fuzzed and unit-tested with byte vectors.
use crate::error::{Result, SpoolError};

/// Frame magic: "RPR1".
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"RPR1");
/// Size of a frame header in bytes.
pub const FRAME_HEADER_LEN: usize = 16;
/// Frames start on this alignment.
pub const FRAME_ALIGN: usize = 8;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A piece of a message body in wire form (CRLF, dot-stuffed as received).
    Chunk = 1,
    /// An accepted message: envelope plus the extents of its body.
    Message = 2,
    /// The final outcome of one recipient of a message.
    Disposition = 3,
    /// The retry state of a recipient after a transient failure.
    RcptState = 4,
    /// A message's DSN is durably spooled.
    DsnDone = 5,
    /// Which messages of an older segment are still live; every other message there is final.
    Checkpoint = 6,
    /// The DKIM signature lines of a message, made after its commit.
    Signature = 7,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Chunk),
            2 => Some(Self::Message),
            3 => Some(Self::Disposition),
            4 => Some(Self::RcptState),
            5 => Some(Self::DsnDone),
            6 => Some(Self::Checkpoint),
            7 => Some(Self::Signature),
            _ => None,
        }
    }
}

/// Where a message record lives: its identity across the whole spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgRef {
    /// Core (shard) that accepted and owns the message.
    pub core: u16,
    /// Segment sequence number within that core.
    pub segment: u32,
    /// Byte offset of the message record's frame in the segment.
    pub offset: u64,
}

impl std::fmt::Display for MsgRef {
    /// The queue id shown in `250 ... queued as` and in the delivery log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02X}{:06X}{:010X}", self.core, self.segment, self.offset)
    }
}

/// A run of body bytes inside a segment (the payload of a chunk record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Segment sequence number (same core as the message).
    pub segment: u32,
    /// Byte offset of the first body byte.
    pub offset: u64,
    /// Number of bytes.
    pub len: u32,
}

/// An accepted message's envelope and body location.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageRecord {
    /// Reception time, milliseconds since the Unix epoch.
    pub received_ms: u64,
    /// Reverse-path without angle brackets; empty for the null sender.
    pub sender: Vec<u8>,
    /// Forward-paths without angle brackets.
    pub recipients: Vec<Vec<u8>>,
    /// Header bytes we prepend on relay (the Received line), CRLF-terminated.
    pub trace: Vec<u8>,
    /// The body in wire form, in order.
    pub body: Vec<Extent>,
    /// Flags: see the `FLAG_*` constants.
    pub flags: u32,
    /// DKIM body hash computed while DATA streamed in, when signing is configured.
    pub body_hash: Option<[u8; 32]>,
}

/// The message was received with `BODY=8BITMIME`.
pub const FLAG_8BITMIME: u32 = 1;
/// The message was received with `SMTPUTF8`.
pub const FLAG_SMTPUTF8: u32 = 2;
/// DKIM signing was due when the message was committed: its signature lines are not in the
/// trace but in a later [`RecordKind::Signature`] record (signed again at recovery if absent).
pub const FLAG_SIGN_PENDING: u32 = 4;
/// The reception found that the message cannot carry an `X-Ringpost-Pool` header (neither in
/// its trace nor in its header section): delivery need not look for one to strip. Absent
/// (records of earlier versions included): delivery looks.
pub const FLAG_NO_POOL_HEADER: u32 = 8;

impl MessageRecord {
    /// Total body bytes in wire form.
    pub fn body_len(&self) -> u64 {
        self.body.iter().map(|e| e.len as u64).sum()
    }
}

/// Final outcome of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    /// The destination accepted it (2xx).
    Delivered = 1,
    /// Permanently refused (5xx); a DSN was generated where allowed.
    Bounced = 2,
    /// Retried until `max_age` without success.
    Expired = 3,
}

/// Longest RFC 3463 status kept (`5.1.1`; the longest legal one, `5.999.999`, is 9 bytes).
pub const MAX_STATUS_LEN: usize = 16;
/// Longest remote MTA name kept (a DNS name is at most 255 bytes).
pub const MAX_REMOTE_LEN: usize = 255;
/// Longest diagnostic or last-response text kept: enough for a multi-line SMTP reply's gist.
pub const MAX_RESPONSE_LEN: usize = 1024;
/// Longest signature lines kept: a dual RSA-4096 + Ed25519 signature is about 1.5 KiB, so this
/// leaves room for many keys while a corrupt length cannot make a reader allocate much.
pub const MAX_SIGNATURE_LEN: usize = 64 * 1024;
/// Where a Signature record's lines start in its payload (after the `MsgRef` and the length).
pub const SIGNATURE_AT: usize = 14 + 4;

/// Why a recipient failed for good: what its DSN reports (RFC 3464 per-recipient fields).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FailureDetail {
    /// RFC 3463 status, e.g. `5.1.1` (at most [`MAX_STATUS_LEN`] bytes).
    pub status: String,
    /// The remote MTA that answered, when one did (at most [`MAX_REMOTE_LEN`] bytes).
    pub remote: Option<String>,
    /// The SMTP reply or local reason (at most [`MAX_RESPONSE_LEN`] bytes).
    pub diagnostic: String,
}

/// One recipient's final disposition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disposition {
    /// The message.
    pub msg: MsgRef,
    /// Index into the message's recipient list.
    pub rcpt: u32,
    /// What happened.
    pub outcome: Outcome,
    /// For a failure: what the DSN must say, written in the same record so that a DSN built
    /// after a restart lists it. `None` for deliveries (and for format-1 records).
    pub failure: Option<FailureDetail>,
}

/// A recipient's retry state after a transient failure; the latest one in spool order wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptState {
    /// The message.
    pub msg: MsgRef,
    /// Index into the message's recipient list.
    pub rcpt: u32,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When to try again, milliseconds since the Unix epoch.
    pub next_attempt_ms: u64,
    /// The last transient reply (at most [`MAX_RESPONSE_LEN`] bytes).
    pub last_response: String,
}

/// The live messages of one older segment at the time of writing: every message record of
/// `segment` whose offset is not listed is final (all recipients disposed of, DSN spooled).
///
/// Why: a record about a message (a disposition, a retry state) must outlive the message's
/// segment, or a restart would redeliver. Without a checkpoint that chains: each segment holds
/// dispositions about the one before, so one message retried for days would pin every later
/// segment. A checkpoint (plus copies of the live messages' latest records) stands in for all
/// earlier records about `segment`, so the segments holding those can go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentCheckpoint {
    /// Sequence number of the segment it describes (same core).
    pub segment: u32,
    /// Frame offsets of its message records still live, ascending.
    pub live: Vec<u64>,
}

/// A decoded record, borrowing from the segment bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// Body bytes.
    Chunk(&'a [u8]),
    /// A message envelope.
    Message(MessageRecord),
    /// A recipient's final outcome.
    Disposition(Disposition),
    /// A recipient's retry state.
    RcptState(RcptState),
    /// The DSN of this message is durably spooled.
    DsnDone(MsgRef),
    /// Which messages of an older segment are still live.
    Checkpoint(SegmentCheckpoint),
    /// A message's DKIM signature lines.
    Signature(MsgRef, &'a [u8]),
}

/// Bytes a frame with `payload_len` payload bytes occupies, padding included.
pub fn frame_len(payload_len: usize) -> usize {
    (FRAME_HEADER_LEN + payload_len).div_ceil(FRAME_ALIGN) * FRAME_ALIGN
}

/// The frame checksum, seeded with the segment's secret `seed` (0 for format-1 segments,
/// where it equals the original unseeded `crc32c(kind ‖ len) ‖ payload`).
fn checksum(seed: u32, kind: u8, len: u32, payload: &[u8]) -> u32 {
    #[cfg(test)]
    CHECKSUMMED.with(|c| c.set(c.get() + payload.len() as u64));
    crc32c::crc32c_append(head_sum(seed, kind, len), payload)
}

#[cfg(test)]
thread_local! {
    /// Payload bytes checksummed on this thread, by frame checks and range checksums alike
    /// (unit tests only): what recovery's cost tests count, at the primitives, so a direct
    /// check added anywhere is counted too.
    pub(crate) static CHECKSUMMED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The frame checksum's state after the kind and length, before the payload.
pub(crate) fn head_sum(seed: u32, kind: u8, len: u32) -> u32 {
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..5].copy_from_slice(&len.to_le_bytes());
    crc32c::crc32c_append(seed, &head)
}

/// Append one frame (header, payload, padding) to `out`, checksummed with the frame `seed` of
/// the segment it goes to.
pub fn encode_frame(seed: u32, kind: RecordKind, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("record payload over 4 GiB");
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(seed, kind as u8, len, payload).to_le_bytes());
    out.extend_from_slice(payload);
    let pad = frame_len(payload.len()) - FRAME_HEADER_LEN - payload.len();
    out.extend(std::iter::repeat_n(0u8, pad));
}

/// Result of looking at the bytes where the next frame should start.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameScan<'a> {
    /// A valid frame: its kind, payload and total length including padding.
    Frame(RecordKind, &'a [u8], usize),
    /// Zeros where a header would be: the clean end of the written part of a segment.
    End,
    /// Anything else: a torn or corrupted tail. Recovery stops here.
    Torn(&'static str),
}

/// Examine `buf` (the segment from a frame boundary on) for the next frame, checking its
/// checksum against the segment's frame `seed`.
pub fn scan_frame(buf: &[u8], seed: u32) -> FrameScan<'_> {
    if buf.len() < FRAME_HEADER_LEN {
        return if buf.iter().all(|&b| b == 0) { FrameScan::End } else { FrameScan::Torn("short header") };
    }
    let magic = u32::from_le_bytes(buf[0..4].try_into().unwrap());
    if magic == 0 && buf[..FRAME_HEADER_LEN].iter().all(|&b| b == 0) {
        return FrameScan::End;
    }
    if magic != RECORD_MAGIC {
        return FrameScan::Torn("bad magic");
    }
    let head = match frame_head(buf) {
        Ok(h) => h,
        Err(why) => return FrameScan::Torn(why),
    };
    let payload = &buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + head.len as usize];
    if checksum(seed, head.kind as u8, head.len, payload) != head.crc {
        return FrameScan::Torn("checksum mismatch");
    }
    FrameScan::Frame(head.kind, payload, head.total)
}

/// A frame header's fields, checked for everything but the checksum.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameHead {
    /// Record kind.
    pub kind: RecordKind,
    /// Payload length.
    pub len: u32,
    /// The checksum the header claims.
    pub crc: u32,
    /// Header, payload and padding.
    pub total: usize,
}

/// The header at the start of `buf` (at least [`FRAME_HEADER_LEN`] bytes, magic already
/// checked): its kind known, reserved bytes zero, and the frame inside `buf`.
pub(crate) fn frame_head(buf: &[u8]) -> std::result::Result<FrameHead, &'static str> {
    let Some(kind) = RecordKind::from_u8(buf[4]) else { return Err("unknown kind") };
    if buf[5..8] != [0, 0, 0] {
        return Err("reserved header bytes set");
    }
    let len = u32::from_le_bytes(buf[8..12].try_into().unwrap());
    let crc = u32::from_le_bytes(buf[12..16].try_into().unwrap());
    let total = frame_len(len as usize);
    if total > buf.len() {
        return Err("frame runs past the segment");
    }
    Ok(FrameHead { kind, len, crc, total })
}

/// Decode a frame's payload into a typed record.
pub fn decode_record(kind: RecordKind, payload: &[u8]) -> Result<Record<'_>> {
    match kind {
        RecordKind::Chunk => Ok(Record::Chunk(payload)),
        RecordKind::Message => decode_message(payload).map(Record::Message),
        RecordKind::Disposition => decode_disposition(payload).map(Record::Disposition),
        RecordKind::RcptState => decode_rcpt_state(payload).map(Record::RcptState),
        RecordKind::DsnDone => decode_dsn_done(payload).map(Record::DsnDone),
        RecordKind::Checkpoint => decode_checkpoint(payload).map(Record::Checkpoint),
        RecordKind::Signature => decode_signature(payload).map(|(m, s)| Record::Signature(m, s)),
    }
}

/// Encode a message record's payload.
pub fn encode_message(m: &MessageRecord) -> Vec<u8> {
    let mut p = Vec::with_capacity(64 + m.sender.len() + m.trace.len() + m.recipients.len() * 32);
    p.extend_from_slice(&m.received_ms.to_le_bytes());
    p.extend_from_slice(&m.flags.to_le_bytes());
    put_bytes(&mut p, &m.sender);
    p.extend_from_slice(&(m.recipients.len() as u32).to_le_bytes());
    for r in &m.recipients {
        put_bytes(&mut p, r);
    }
    put_bytes(&mut p, &m.trace);
    p.extend_from_slice(&(m.body.len() as u32).to_le_bytes());
    for e in &m.body {
        p.extend_from_slice(&e.segment.to_le_bytes());
        p.extend_from_slice(&e.offset.to_le_bytes());
        p.extend_from_slice(&e.len.to_le_bytes());
    }
    match &m.body_hash {
        Some(h) => {
            p.push(1);
            p.extend_from_slice(h);
        }
        None => p.push(0),
    }
    p
}

/// Where `m`'s trace bytes sit inside its encoded payload (offset from the payload's start):
/// readers can then take them from the segment map instead of keeping a copy.
pub fn trace_offset_in_payload(m: &MessageRecord) -> usize {
    let rcpts: usize = m.recipients.iter().map(|r| 4 + r.len()).sum();
    8 + 4 + (4 + m.sender.len()) + 4 + rcpts + 4
}

/// Encode a disposition record's payload. Failure texts longer than their bound are truncated.
pub fn encode_disposition(d: &Disposition) -> Vec<u8> {
    let mut p = Vec::with_capacity(19);
    put_msgref(&mut p, &d.msg);
    p.extend_from_slice(&d.rcpt.to_le_bytes());
    p.push(d.outcome as u8);
    if let Some(f) = &d.failure {
        p.push(1);
        put_text(&mut p, &f.status, MAX_STATUS_LEN);
        match &f.remote {
            Some(r) => {
                p.push(1);
                put_text(&mut p, r, MAX_REMOTE_LEN);
            }
            None => p.push(0),
        }
        put_text(&mut p, &f.diagnostic, MAX_RESPONSE_LEN);
    }
    p
}

/// Encode a recipient-state record's payload. A longer `last_response` is truncated.
pub fn encode_rcpt_state(s: &RcptState) -> Vec<u8> {
    let mut p = Vec::with_capacity(34 + s.last_response.len().min(MAX_RESPONSE_LEN));
    put_msgref(&mut p, &s.msg);
    p.extend_from_slice(&s.rcpt.to_le_bytes());
    p.extend_from_slice(&s.attempts.to_le_bytes());
    p.extend_from_slice(&s.next_attempt_ms.to_le_bytes());
    put_text(&mut p, &s.last_response, MAX_RESPONSE_LEN);
    p
}

/// Encode a DSN-done record's payload.
pub fn encode_dsn_done(msg: &MsgRef) -> Vec<u8> {
    let mut p = Vec::with_capacity(14);
    put_msgref(&mut p, msg);
    p
}

/// Encode a signature record's payload. Lines over [`MAX_SIGNATURE_LEN`] are a caller bug:
/// the signer never makes them (checked before appending).
pub fn encode_signature(msg: &MsgRef, lines: &[u8]) -> Vec<u8> {
    assert!(lines.len() <= MAX_SIGNATURE_LEN, "signature lines over their bound");
    let mut p = Vec::with_capacity(SIGNATURE_AT + lines.len());
    put_msgref(&mut p, msg);
    put_bytes(&mut p, lines);
    p
}

/// Encode a segment checkpoint's payload.
pub fn encode_checkpoint(c: &SegmentCheckpoint) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + c.live.len() * 8);
    p.extend_from_slice(&c.segment.to_le_bytes());
    p.extend_from_slice(&(c.live.len() as u32).to_le_bytes());
    for off in &c.live {
        p.extend_from_slice(&off.to_le_bytes());
    }
    p
}

fn put_msgref(p: &mut Vec<u8>, m: &MsgRef) {
    p.extend_from_slice(&m.core.to_le_bytes());
    p.extend_from_slice(&m.segment.to_le_bytes());
    p.extend_from_slice(&m.offset.to_le_bytes());
}

fn put_bytes(p: &mut Vec<u8>, b: &[u8]) {
    p.extend_from_slice(&(b.len() as u32).to_le_bytes());
    p.extend_from_slice(b);
}

/// Write `s` cut to at most `max` bytes, at a character boundary so it stays UTF-8.
fn put_text(p: &mut Vec<u8>, s: &str, max: usize) {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_bytes(p, &s.as_bytes()[..end]);
}

/// A bounds-checked reader over a payload.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(SpoolError::Corrupt("payload shorter than its fields"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn text(&mut self, max: usize) -> Result<String> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(SpoolError::Corrupt("text field over its bound"));
        }
        let b = self.take(n)?;
        std::str::from_utf8(b).map(str::to_owned).map_err(|_| SpoolError::Corrupt("text field not UTF-8"))
    }
    fn msgref(&mut self) -> Result<MsgRef> {
        Ok(MsgRef { core: self.u16()?, segment: self.u32()?, offset: self.u64()? })
    }
    fn finish(&self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(SpoolError::Corrupt("trailing bytes in payload"))
        }
    }
}

fn decode_message(payload: &[u8]) -> Result<MessageRecord> {
    let mut c = Cursor(payload);
    let received_ms = c.u64()?;
    let flags = c.u32()?;
    let sender = c.bytes()?;
    let n = c.u32()? as usize;
    if n > payload.len() / 4 {
        return Err(SpoolError::Corrupt("recipient count exceeds payload"));
    }
    let recipients = (0..n).map(|_| c.bytes()).collect::<Result<Vec<_>>>()?;
    let trace = c.bytes()?;
    let n = c.u32()? as usize;
    if n > payload.len() / 16 {
        return Err(SpoolError::Corrupt("extent count exceeds payload"));
    }
    let body = (0..n).map(|_| Ok(Extent { segment: c.u32()?, offset: c.u64()?, len: c.u32()? })).collect::<Result<Vec<_>>>()?;
    let body_hash = match c.u8()? {
        0 => None,
        1 => Some(c.take(32)?.try_into().unwrap()),
        _ => return Err(SpoolError::Corrupt("bad body-hash tag")),
    };
    c.finish()?;
    Ok(MessageRecord { received_ms, sender, recipients, trace, body, flags, body_hash })
}

fn decode_disposition(payload: &[u8]) -> Result<Disposition> {
    let mut c = Cursor(payload);
    let msg = c.msgref()?;
    let rcpt = c.u32()?;
    let outcome = match c.u8()? {
        1 => Outcome::Delivered,
        2 => Outcome::Bounced,
        3 => Outcome::Expired,
        _ => return Err(SpoolError::Corrupt("bad outcome")),
    };
    // Format 1 ends here; format 2 adds a tagged failure detail.
    let failure = if c.0.is_empty() { None } else { Some(decode_failure(&mut c)?) };
    c.finish()?;
    Ok(Disposition { msg, rcpt, outcome, failure })
}

fn decode_failure(c: &mut Cursor<'_>) -> Result<FailureDetail> {
    if c.u8()? != 1 {
        return Err(SpoolError::Corrupt("bad failure-detail tag"));
    }
    let status = c.text(MAX_STATUS_LEN)?;
    let remote = match c.u8()? {
        0 => None,
        1 => Some(c.text(MAX_REMOTE_LEN)?),
        _ => return Err(SpoolError::Corrupt("bad remote tag")),
    };
    let diagnostic = c.text(MAX_RESPONSE_LEN)?;
    Ok(FailureDetail { status, remote, diagnostic })
}

fn decode_rcpt_state(payload: &[u8]) -> Result<RcptState> {
    let mut c = Cursor(payload);
    let s = RcptState { msg: c.msgref()?, rcpt: c.u32()?, attempts: c.u32()?, next_attempt_ms: c.u64()?, last_response: c.text(MAX_RESPONSE_LEN)? };
    c.finish()?;
    Ok(s)
}

fn decode_dsn_done(payload: &[u8]) -> Result<MsgRef> {
    let mut c = Cursor(payload);
    let msg = c.msgref()?;
    c.finish()?;
    Ok(msg)
}

fn decode_signature(payload: &[u8]) -> Result<(MsgRef, &[u8])> {
    let mut c = Cursor(payload);
    let msg = c.msgref()?;
    let n = c.u32()? as usize;
    if n > MAX_SIGNATURE_LEN {
        return Err(SpoolError::Corrupt("signature over its bound"));
    }
    let lines = c.take(n)?;
    c.finish()?;
    Ok((msg, lines))
}

fn decode_checkpoint(payload: &[u8]) -> Result<SegmentCheckpoint> {
    let mut c = Cursor(payload);
    let segment = c.u32()?;
    let n = c.u32()? as usize;
    if n > payload.len() / 8 {
        return Err(SpoolError::Corrupt("checkpoint count exceeds payload"));
    }
    let live = (0..n).map(|_| c.u64()).collect::<Result<Vec<_>>>()?;
    if live.windows(2).any(|w| w[0] >= w[1]) {
        return Err(SpoolError::Corrupt("checkpoint offsets not ascending"));
    }
    c.finish()?;
    Ok(SegmentCheckpoint { segment, live })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: u32 = 0x5EED_1234;

    fn sample() -> MessageRecord {
        MessageRecord {
            received_ms: 1_700_000_000_123,
            sender: b"alice@example.com".to_vec(),
            recipients: vec![b"bob@example.org".to_vec(), b"carol@example.net".to_vec()],
            trace: b"Received: from x\r\n".to_vec(),
            body: vec![Extent { segment: 3, offset: 4096, len: 77 }, Extent { segment: 4, offset: 64, len: 5 }],
            flags: FLAG_8BITMIME,
            body_hash: Some([7u8; 32]),
        }
    }

    #[test]
    fn message_round_trips() {
        let m = sample();
        let mut buf = Vec::new();
        encode_frame(SEED, RecordKind::Message, &encode_message(&m), &mut buf);
        assert_eq!(buf.len() % FRAME_ALIGN, 0);
        let FrameScan::Frame(kind, payload, total) = scan_frame(&buf, SEED) else { panic!("no frame") };
        assert_eq!(total, buf.len());
        assert_eq!(decode_record(kind, payload).unwrap(), Record::Message(m));
    }

    #[test]
    fn trace_offset_points_at_the_trace_bytes() {
        let m = sample();
        let p = encode_message(&m);
        let at = trace_offset_in_payload(&m);
        assert_eq!(&p[at..at + m.trace.len()], &m.trace[..]);
        assert_eq!(u32::from_le_bytes(p[at - 4..at].try_into().unwrap()) as usize, m.trace.len());
    }

    #[test]
    fn null_sender_and_no_hash_round_trip() {
        let m = MessageRecord { recipients: vec![b"x@y".to_vec()], ..Default::default() };
        let p = encode_message(&m);
        assert_eq!(decode_message(&p).unwrap(), m);
    }

    #[test]
    fn disposition_and_chunk_round_trip() {
        let d = Disposition { msg: MsgRef { core: 1, segment: 9, offset: 640 }, rcpt: 3, outcome: Outcome::Expired, failure: None };
        let mut buf = Vec::new();
        encode_frame(SEED, RecordKind::Disposition, &encode_disposition(&d), &mut buf);
        encode_frame(SEED, RecordKind::Chunk, b"Subject: hi\r\n\r\n..dot\r\n", &mut buf);
        let FrameScan::Frame(k, p, n) = scan_frame(&buf, SEED) else { panic!() };
        assert_eq!(decode_record(k, p).unwrap(), Record::Disposition(d.clone()));
        let FrameScan::Frame(k, p, m) = scan_frame(&buf[n..], SEED) else { panic!() };
        assert_eq!(decode_record(k, p).unwrap(), Record::Chunk(b"Subject: hi\r\n\r\n..dot\r\n"));
        assert_eq!(scan_frame(&buf[n + m..], SEED), FrameScan::End);
    }

    #[test]
    fn zeros_are_a_clean_end() {
        assert_eq!(scan_frame(&[0u8; 64], SEED), FrameScan::End);
        assert_eq!(scan_frame(&[0u8; 3], SEED), FrameScan::End);
    }

    #[test]
    fn every_torn_prefix_is_detected() {
        let mut buf = Vec::new();
        encode_frame(SEED, RecordKind::Message, &encode_message(&sample()), &mut buf);
        // A write torn at any point leaves zeros (preallocated space) after the written prefix.
        for cut in 1..buf.len() {
            let mut torn = buf[..cut].to_vec();
            torn.resize(buf.len() + 32, 0);
            match scan_frame(&torn, SEED) {
                FrameScan::Torn(_) => {}
                FrameScan::End => assert!(buf[..cut].iter().all(|&b| b == 0)),
                FrameScan::Frame(..) => panic!("torn frame cut at {cut} decoded as valid"),
            }
        }
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode_frame(SEED, RecordKind::Chunk, b"hello world, a body line\r\n", &mut buf);
        let payload_end = FRAME_HEADER_LEN + 26;
        for i in 0..payload_end {
            for bit in 0..8 {
                let mut c = buf.clone();
                c[i] ^= 1 << bit;
                assert!(!matches!(scan_frame(&c, SEED), FrameScan::Frame(..)), "flip at byte {i} bit {bit} undetected");
            }
        }
    }

    #[test]
    fn truncated_payload_fields_are_corrupt_not_panics() {
        let p = encode_message(&sample());
        for cut in 0..p.len() {
            assert!(decode_message(&p[..cut]).is_err());
        }
        assert!(decode_disposition(&[1, 2, 3]).is_err());
        let all = [
            (RecordKind::Disposition, encode_disposition(&failed())),
            (RecordKind::RcptState, encode_rcpt_state(&state())),
            (RecordKind::DsnDone, encode_dsn_done(&state().msg)),
            (RecordKind::Checkpoint, encode_checkpoint(&SegmentCheckpoint { segment: 9, live: vec![64, 128] })),
            (RecordKind::Signature, encode_signature(&state().msg, b"DKIM-Signature: v=1\r\n")),
        ];
        for (kind, p) in all {
            assert!(decode_record(kind, &p).is_ok(), "{kind:?} must decode whole");
            for cut in 0..p.len() {
                // A cut disposition right after its outcome byte is the valid format-1 form.
                if kind == RecordKind::Disposition && cut == 19 {
                    continue;
                }
                assert!(decode_record(kind, &p[..cut]).is_err(), "{kind:?} cut at {cut} decoded");
            }
            let mut long = p.clone();
            long.push(0);
            assert!(decode_record(kind, &long).is_err(), "{kind:?} with a trailing byte decoded");
        }
    }

    fn failed() -> Disposition {
        Disposition {
            msg: MsgRef { core: 2, segment: 7, offset: 4160 },
            rcpt: 1,
            outcome: Outcome::Bounced,
            failure: Some(FailureDetail {
                status: "5.1.1".into(),
                remote: Some("mx.example.org".into()),
                diagnostic: "550 5.1.1 <bob@example.org>: no such user".into(),
            }),
        }
    }

    fn state() -> RcptState {
        RcptState {
            msg: MsgRef { core: 2, segment: 7, offset: 4160 },
            rcpt: 0,
            attempts: 3,
            next_attempt_ms: 1_700_000_900_000,
            last_response: "451 4.7.1 greylisted, try again later".into(),
        }
    }

    fn round_trip(kind: RecordKind, payload: &[u8]) -> Record<'static> {
        let mut buf = Vec::new();
        encode_frame(SEED, kind, payload, &mut buf);
        let FrameScan::Frame(k, p, n) = scan_frame(&buf, SEED) else { panic!("no frame") };
        assert_eq!((k, n), (kind, buf.len()));
        match decode_record(k, p).unwrap() {
            Record::Chunk(_) | Record::Message(_) => panic!("unexpected kind"),
            Record::Disposition(d) => Record::Disposition(d),
            Record::RcptState(s) => Record::RcptState(s),
            Record::DsnDone(m) => Record::DsnDone(m),
            Record::Checkpoint(c) => Record::Checkpoint(c),
            Record::Signature(..) => panic!("borrows the frame: see the signature tests"),
        }
    }

    #[test]
    fn signature_round_trips_with_its_lines_at_the_documented_offset() {
        let msg = MsgRef { core: 1, segment: 0x0102_0304, offset: 0x0A0B_0C0D_0E0F };
        let lines = b"DKIM-Signature: v=1; a=ed25519-sha256; d=example.com;\r\n\tb=abc\r\n";
        let p = encode_signature(&msg, lines);
        let mut want = vec![1, 0, 4, 3, 2, 1, 0x0F, 0x0E, 0x0D, 0x0C, 0x0B, 0x0A, 0, 0];
        want.extend_from_slice(&(lines.len() as u32).to_le_bytes());
        want.extend_from_slice(lines);
        assert_eq!(p, want);
        assert_eq!(&p[SIGNATURE_AT..], lines);
        let mut buf = Vec::new();
        encode_frame(SEED, RecordKind::Signature, &p, &mut buf);
        let FrameScan::Frame(k, payload, _) = scan_frame(&buf, SEED) else { panic!("no frame") };
        assert_eq!(decode_record(k, payload).unwrap(), Record::Signature(msg, lines));
        // Empty lines are a valid record: signing was tried and nothing applied.
        assert_eq!(decode_record(k, &encode_signature(&msg, b"")).unwrap(), Record::Signature(msg, b""));
    }

    #[test]
    fn a_signature_length_over_its_bound_is_corrupt_before_any_read() {
        let mut p = encode_signature(&state().msg, b"x");
        p[14..18].copy_from_slice(&((MAX_SIGNATURE_LEN + 1) as u32).to_le_bytes());
        assert!(matches!(decode_record(RecordKind::Signature, &p), Err(SpoolError::Corrupt("signature over its bound"))));
        let at_bound = encode_signature(&state().msg, &vec![b'a'; MAX_SIGNATURE_LEN]);
        assert!(decode_record(RecordKind::Signature, &at_bound).is_ok());
    }

    #[test]
    fn checkpoint_round_trips_and_rejects_bad_lists() {
        let c = SegmentCheckpoint { segment: 41, live: vec![64, 4160, 70_000] };
        assert_eq!(round_trip(RecordKind::Checkpoint, &encode_checkpoint(&c)), Record::Checkpoint(c.clone()));
        let empty = SegmentCheckpoint { segment: 3, live: vec![] };
        assert_eq!(round_trip(RecordKind::Checkpoint, &encode_checkpoint(&empty)), Record::Checkpoint(empty));
        let unsorted = SegmentCheckpoint { segment: 41, live: vec![4160, 64] };
        assert!(decode_record(RecordKind::Checkpoint, &encode_checkpoint(&unsorted)).is_err());
        let mut huge = encode_checkpoint(&c);
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_record(RecordKind::Checkpoint, &huge).is_err(), "a count beyond the payload must not allocate");
    }

    #[test]
    fn failure_details_round_trip() {
        let d = failed();
        assert_eq!(round_trip(RecordKind::Disposition, &encode_disposition(&d)), Record::Disposition(d.clone()));
        let no_remote = Disposition { failure: Some(FailureDetail { remote: None, ..d.failure.clone().unwrap() }), ..d };
        assert_eq!(round_trip(RecordKind::Disposition, &encode_disposition(&no_remote)), Record::Disposition(no_remote));
    }

    #[test]
    fn format_1_disposition_still_decodes() {
        // The 19-byte layout written before failure details existed.
        let mut p = Vec::new();
        p.extend_from_slice(&2u16.to_le_bytes());
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(&4160u64.to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        p.push(Outcome::Delivered as u8);
        let d = Disposition { msg: MsgRef { core: 2, segment: 7, offset: 4160 }, rcpt: 1, outcome: Outcome::Delivered, failure: None };
        assert_eq!(decode_disposition(&p).unwrap(), d);
        assert_eq!(encode_disposition(&d), p);
    }

    #[test]
    fn rcpt_state_and_dsn_done_round_trip() {
        let s = state();
        assert_eq!(round_trip(RecordKind::RcptState, &encode_rcpt_state(&s)), Record::RcptState(s.clone()));
        assert_eq!(round_trip(RecordKind::DsnDone, &encode_dsn_done(&s.msg)), Record::DsnDone(s.msg));
    }

    #[test]
    fn long_texts_are_truncated_on_a_char_boundary_and_bounded_on_read() {
        // 'é' is two bytes: 1023 bytes of 'a' then 'é' would cross the 1024-byte bound.
        let long = format!("{}é{}", "a".repeat(MAX_RESPONSE_LEN - 1), "b".repeat(100));
        let s = RcptState { last_response: long, ..state() };
        let Record::RcptState(back) = round_trip(RecordKind::RcptState, &encode_rcpt_state(&s)) else { panic!() };
        assert_eq!(back.last_response, "a".repeat(MAX_RESPONSE_LEN - 1));
        // A record claiming a longer text is corrupt, whatever its checksum says.
        let mut p = encode_rcpt_state(&state());
        p.truncate(30); // msg 14 + rcpt 4 + attempts 4 + next_attempt_ms 8: the text follows.
        let mut exact = p.clone();
        exact.extend_from_slice(&(MAX_RESPONSE_LEN as u32).to_le_bytes());
        exact.extend(std::iter::repeat_n(b'x', MAX_RESPONSE_LEN));
        assert_eq!(decode_rcpt_state(&exact).unwrap().last_response.len(), MAX_RESPONSE_LEN);
        p.extend_from_slice(&((MAX_RESPONSE_LEN + 1) as u32).to_le_bytes());
        p.extend(std::iter::repeat_n(b'x', MAX_RESPONSE_LEN + 1));
        assert!(matches!(decode_rcpt_state(&p), Err(SpoolError::Corrupt("text field over its bound"))));
        let mut p = encode_rcpt_state(&state());
        let n = p.len();
        p[n - 1] = 0xff;
        assert!(decode_rcpt_state(&p).is_err(), "non-UTF-8 text must be corrupt");
    }

    #[test]
    fn frame_from_another_seed_is_rejected() {
        let mut buf = Vec::new();
        encode_frame(SEED, RecordKind::DsnDone, &encode_dsn_done(&state().msg), &mut buf);
        assert!(matches!(scan_frame(&buf, SEED), FrameScan::Frame(..)));
        assert_eq!(scan_frame(&buf, SEED ^ 1), FrameScan::Torn("checksum mismatch"));
        assert_eq!(scan_frame(&buf, 0), FrameScan::Torn("checksum mismatch"));
    }

    #[test]
    fn seed_0_is_the_format_1_checksum() {
        let payload = b"abc";
        let mut buf = Vec::new();
        encode_frame(0, RecordKind::Chunk, payload, &mut buf);
        let old = crc32c::crc32c_append(crc32c::crc32c(&[1, 3, 0, 0, 0]), payload);
        assert_eq!(buf[12..16], old.to_le_bytes());
    }

    #[test]
    fn msgref_displays_as_fixed_width_queue_id() {
        let r = MsgRef { core: 1, segment: 2, offset: 0x40 };
        assert_eq!(r.to_string(), "010000020000000040");
    }
}
