//! A spooled message as the delivery side sees it: envelope plus zero-copy body pieces.
//!
//! Shared across cores as `Arc<SpooledMessage>`; the body is a list of slices of read-only
//! segment maps, so relaying writes the very bytes that were received, never a copy.
use ringpost_spool::record::{trace_offset_in_payload, FRAME_HEADER_LEN};
use ringpost_spool::{Extent, MessageRecord, MsgRef, SegmentMap};
use std::sync::Arc;

/// The trace header bytes of a message. Read from the message record in the segment map, like
/// the body: a queued message keeps no copy of its Received header and DKIM signatures
/// (several hundred bytes each, times every message of a backlog).
#[derive(Debug)]
pub enum Trace {
    /// Inside the message record's frame.
    Mapped(Arc<SegmentMap>, Extent),
    /// Held in memory (messages built without a spool record, in tests).
    Owned(Vec<u8>),
}

impl Trace {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Trace::Mapped(m, e) => m.extent(e),
            Trace::Owned(v) => v,
        }
    }
}

/// An accepted, durable message.
#[derive(Debug)]
pub struct SpooledMessage {
    /// Spool identity and queue id.
    pub id: MsgRef,
    /// Reverse-path (empty: null sender).
    pub sender: String,
    /// All forward-paths, indexed as in the spool record.
    pub recipients: Vec<String>,
    /// Header bytes prepended on relay (Received, DKIM signatures).
    pub trace: Trace,
    /// Body in wire form, in order.
    pub body: Vec<(Arc<SegmentMap>, Extent)>,
    /// Reception time (Unix ms).
    pub received_ms: u64,
    /// Spool record flags (8BITMIME, SMTPUTF8).
    pub flags: u32,
}

impl SpooledMessage {
    /// Build from a record and the maps of the segments its body lies in.
    pub fn from_record(id: MsgRef, r: &MessageRecord, map: impl Fn(u32) -> Option<Arc<SegmentMap>>) -> Option<Self> {
        let body = r.body.iter().map(|e| Some((map(e.segment)?, *e))).collect::<Option<Vec<_>>>()?;
        let at = id.offset + (FRAME_HEADER_LEN + trace_offset_in_payload(r)) as u64;
        let trace = Trace::Mapped(map(id.segment)?, Extent { segment: id.segment, offset: at, len: r.trace.len() as u32 });
        Some(Self {
            id,
            sender: String::from_utf8_lossy(&r.sender).into_owned(),
            recipients: r.recipients.iter().map(|x| String::from_utf8_lossy(x).into_owned()).collect(),
            trace,
            body,
            received_ms: r.received_ms,
            flags: r.flags,
        })
    }

    /// Body bytes in wire form, piece by piece.
    pub fn body_pieces(&self) -> impl Iterator<Item = &[u8]> {
        self.body.iter().map(|(m, e)| m.extent(e))
    }

    /// Total size as relayed (trace plus body).
    pub fn wire_len(&self) -> u64 {
        self.trace.bytes().len() as u64 + self.body.iter().map(|(_, e)| e.len as u64).sum::<u64>()
    }

    /// The extents (for releasing spool references).
    pub fn extents(&self) -> Vec<Extent> {
        self.body.iter().map(|(_, e)| *e).collect()
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
