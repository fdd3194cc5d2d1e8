//! Spool recovery (`Recovery::scan`) over a segment file built from the fuzz input.
//!
//! The input is a little program that writes a segment the way the shard does: body chunks,
//! message records naming earlier chunks (or a bogus extent), dispositions and DKIM signature
//! lines for earlier messages, raw bytes (corruption), and finally a cut: everything from a position on is
//! zeroed, as if those writes never reached the disk. Invariants: no panic; every recovered
//! message's extents lie inside the mapped segment and its pending recipients are in range;
//! and, when no raw bytes were written, recovery returns exactly what a simple model says:
//! the messages whose frames and chunks all survived the cut, minus the recipients whose
//! dispositions survived, each with the lines of its latest surviving Signature record.
use crate::spool::record::{encode_disposition, encode_frame, encode_message, encode_signature, frame_len, RecordKind, FRAME_HEADER_LEN};
use crate::spool::segment::{encode_header, segment_path, SEGMENT_HEADER_LEN};
use crate::spool::{Disposition, Extent, MessageRecord, MsgRef, Outcome, Recovery};
use std::collections::BTreeMap;

/// The frame checksum seed of the segments built here (any value; 0 is the unseeded format).
const SEED: u32 = 0x5EED_F022;

/// What the writer put down, for the model.
#[derive(Default)]
struct Written {
    seg: Vec<u8>,
    chunks: Vec<Extent>,
    /// Message frame offset -> (record, frame end).
    messages: BTreeMap<u64, (MessageRecord, usize)>,
    /// (message offset, recipient, frame end).
    dispositions: Vec<(u64, u32, usize)>,
    /// (message offset, signature lines, frame end), in writing order.
    signatures: Vec<(u64, Vec<u8>, usize)>,
    raw: bool,
}

/// Harness entry point.
pub fn run(data: &[u8]) {
    let mut w = Written { seg: encode_header(0, 1, 0, SEED), ..Default::default() };
    let mut it = data.iter().copied();
    while let Some(op) = it.next() {
        let arg = it.next().unwrap_or(0);
        match op % 6 {
            0 => w.chunk(&it.by_ref().take(arg as usize).collect::<Vec<u8>>()),
            1 => w.message(arg, it.next().unwrap_or(0), false),
            2 => w.message(arg, it.next().unwrap_or(0), true),
            3 => w.disposition(arg, it.next().unwrap_or(0)),
            4 => w.signature(arg, it.next().unwrap_or(0)),
            _ => {
                w.raw = true;
                w.seg.extend(it.by_ref().take(arg as usize));
            }
        }
    }
    let cut = data.len().checked_sub(2).map(|i| u16::from_le_bytes([data[i], data[i + 1]]) as usize).unwrap_or(0);
    let cut = SEGMENT_HEADER_LEN as usize + cut % (w.seg.len() + 1 - SEGMENT_HEADER_LEN as usize);
    let full = w.seg.clone();
    w.seg.truncate(cut);
    w.seg.resize(w.seg.len().div_ceil(4096).max(1) * 4096 + 4096, 0);
    let rec = scan(&w.seg);
    check(&w, &rec, &full, cut);
}

impl Written {
    fn frame(&mut self, kind: RecordKind, payload: &[u8]) -> (usize, usize) {
        let start = self.seg.len();
        encode_frame(SEED, kind, payload, &mut self.seg);
        (start, start + frame_len(payload.len()))
    }

    fn chunk(&mut self, body: &[u8]) {
        let (start, _) = self.frame(RecordKind::Chunk, body);
        self.chunks.push(Extent { segment: 1, offset: (start + FRAME_HEADER_LEN) as u64, len: body.len() as u32 });
    }

    /// A message naming the last `n % 4` chunks (or a bogus extent) with `r % 4 + 1` recipients.
    fn message(&mut self, n: u8, r: u8, bogus: bool) {
        let take = (n % 4) as usize;
        let mut body: Vec<Extent> = self.chunks.iter().rev().take(take).rev().copied().collect();
        if bogus {
            body.push(Extent { segment: 1 + (n >> 4) as u32 % 2, offset: self.seg.len() as u64 + 8 * r as u64, len: n as u32 });
        }
        let recipients = (0..=r % 4).map(|i| format!("r{i}@d.test").into_bytes()).collect();
        let m = MessageRecord { received_ms: 1, sender: b"s@b.test".to_vec(), recipients, trace: Vec::new(), body, flags: 0, body_hash: None };
        let (start, end) = self.frame(RecordKind::Message, &encode_message(&m));
        self.messages.insert(start as u64, (m, end));
    }

    /// Frame end of the chunk an extent names; `usize::MAX` when no chunk matches (never intact).
    /// Any chunk of the segment counts, even one written after the message (a bogus extent can
    /// name it by chance), as recovery only asks whether the named chunk is intact.
    fn chunk_end(&self, e: &Extent) -> usize {
        match self.chunks.iter().find(|c| *c == e) {
            Some(c) => c.offset as usize - FRAME_HEADER_LEN + frame_len(c.len as usize),
            None => usize::MAX,
        }
    }

    fn disposition(&mut self, i: u8, rcpt: u8) {
        let Some(&offset) = self.messages.keys().nth(i as usize % self.messages.len().max(1)) else { return };
        let d = Disposition { msg: MsgRef { core: 0, segment: 1, offset }, rcpt: (rcpt % 5) as u32, outcome: Outcome::Delivered, failure: None };
        let (_, end) = self.frame(RecordKind::Disposition, &encode_disposition(&d));
        self.dispositions.push((offset, d.rcpt, end));
    }
}

impl Written {
    /// Signature lines of `len` bytes for the `i`-th message written so far.
    fn signature(&mut self, i: u8, len: u8) {
        let Some(&offset) = self.messages.keys().nth(i as usize % self.messages.len().max(1)) else { return };
        let lines = vec![b'a' + len % 26; len as usize];
        let (_, end) = self.frame(RecordKind::Signature, &encode_signature(&MsgRef { core: 0, segment: 1, offset }, &lines));
        self.signatures.push((offset, lines, end));
    }
}

/// Write the segment where recovery looks for it and scan it.
fn scan(seg: &[u8]) -> Recovery {
    let dir = std::env::temp_dir().join(format!("ringpost-fuzz-recovery-{}", std::process::id()));
    let core_dir = dir.join("core-0");
    std::fs::create_dir_all(&core_dir).expect("temp dir");
    std::fs::write(segment_path(&core_dir, 1), seg).expect("write segment");
    Recovery::scan(&core_dir, 0).expect("recovery of a readable segment")
}

fn check(w: &Written, rec: &Recovery, full: &[u8], cut: usize) {
    let mapped = rec.segments.first().expect("the segment is kept").map.clone();
    for m in &rec.messages {
        assert!(!m.pending.is_empty() && m.pending.iter().all(|&i| (i as usize) < m.record.recipients.len()), "pending {:?}", m.pending);
        for e in m.record.body.iter().chain(&m.signature) {
            assert!(e.segment == 1 && e.offset as usize + e.len as usize <= mapped.bytes().len(), "extent {e:?} outside the segment");
            let _ = mapped.extent(e);
        }
    }
    if w.raw {
        return;
    }
    // The model: a frame survives when the cut zeroed nothing but zeros of it (a crash leaves
    // zeros where writes never landed, and then the checksum still holds). Frames are
    // contiguous, so a frame that starts past the cut loses its magic and is gone.
    let survives = |end: usize| end <= cut || full[cut..end].iter().all(|&b| b == 0);
    let mut want: Vec<(u64, Vec<u32>, Option<Vec<u8>>)> = Vec::new();
    for (&off, (m, end)) in &w.messages {
        let chunk_ok = |e: &Extent| w.chunk_end(e) != usize::MAX && survives(w.chunk_end(e));
        if !survives(*end) || !m.body.iter().all(chunk_ok) {
            continue;
        }
        let done = |i: u32| w.dispositions.iter().any(|&(o, r, e)| o == off && r == i && survives(e));
        let pending: Vec<u32> = (0..m.recipients.len() as u32).filter(|&i| !done(i)).collect();
        let lines = w.signatures.iter().rev().find(|(o, _, e)| *o == off && survives(*e)).map(|(_, l, _)| l.clone());
        if !pending.is_empty() {
            want.push((off, pending, lines));
        }
    }
    let got: Vec<(u64, Vec<u32>, Option<Vec<u8>>)> =
        rec.messages.iter().map(|m| (m.msg.offset, m.pending.clone(), m.signature.map(|e| mapped.extent(&e).to_vec()))).collect();
    assert_eq!(got, want, "recovery differs from the model (cut at {cut})");
}
