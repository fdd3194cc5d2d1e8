//! Recovery rules, tested on byte vectors (the sans-I/O segment scan) and on segment files
//! written by hand into a temporary directory (the cross-segment rules).
use super::*;
use crate::record::{
    encode_checkpoint, encode_disposition, encode_dsn_done, encode_frame, encode_message, encode_rcpt_state, encode_signature, Extent, FailureDetail,
    RecordKind, SegmentCheckpoint,
};
use crate::segment::encode_header;

const SEED: u32 = 0xC0FF_EE01;
const SIZE: usize = 8192;

/// A segment (header, frames, zeros up to `SIZE`) and the offset of each frame.
fn segment(seq: u32, seed: u32, frames: &[(RecordKind, Vec<u8>)]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = encode_header(0, seq, SIZE as u64, seed);
    let mut offsets = Vec::new();
    for (kind, payload) in frames {
        offsets.push(bytes.len());
        encode_frame(seed, *kind, payload, &mut bytes);
    }
    bytes.resize(SIZE, 0);
    (bytes, offsets)
}

fn header(bytes: &[u8]) -> SegmentHeader {
    decode_header(bytes).unwrap()
}

fn chunks(n: usize) -> Vec<(RecordKind, Vec<u8>)> {
    (0..n).map(|i| (RecordKind::Chunk, format!("body line {i}\r\n").repeat(i + 1).into_bytes())).collect()
}

/// Offsets of the records found, and the non-record events.
fn scan(bytes: &[u8]) -> (Vec<u64>, Vec<ScanEvent<'_>>) {
    let mut records = Vec::new();
    let mut other = Vec::new();
    for e in SegmentScanner::new(bytes, &header(bytes)) {
        match e {
            ScanEvent::Record { offset, .. } => records.push(offset),
            e => other.push(e),
        }
    }
    (records, other)
}

#[test]
fn clean_segment_yields_every_record_and_nothing_else() {
    let (bytes, offsets) = segment(1, SEED, &chunks(5));
    let (records, other) = scan(&bytes);
    assert_eq!(records, offsets.iter().map(|&o| o as u64).collect::<Vec<_>>());
    assert!(other.is_empty());
}

#[test]
fn corruption_in_the_middle_is_skipped_loudly_and_later_records_survive() {
    let (mut bytes, offsets) = segment(1, SEED, &chunks(5));
    bytes[offsets[2] + FRAME_HEADER_LEN + 3] ^= 0x40;
    let (records, other) = scan(&bytes);
    let expect: Vec<u64> = [0, 1, 3, 4].iter().map(|&i| offsets[i] as u64).collect();
    assert_eq!(records, expect);
    let skipped = (offsets[3] - offsets[2]) as u64;
    assert_eq!(other, vec![ScanEvent::Corrupt { offset: offsets[2] as u64, skipped, why: "checksum mismatch" }]);
}

#[test]
fn corrupt_header_magic_in_the_middle_resyncs_too() {
    let (mut bytes, offsets) = segment(1, SEED, &chunks(4));
    bytes[offsets[1]..offsets[1] + 4].copy_from_slice(&[0, 0, 0, 0]);
    let (records, other) = scan(&bytes);
    assert_eq!(records, vec![offsets[0] as u64, offsets[2] as u64, offsets[3] as u64]);
    assert_eq!(other.len(), 1);
    assert!(matches!(other[0], ScanEvent::Corrupt { why: "bad magic", .. }));
}

#[test]
fn torn_tail_stays_quiet() {
    let (mut bytes, offsets) = segment(1, SEED, &chunks(5));
    // A write torn half way through the last frame: the rest is still preallocated zeros.
    let cut = offsets[4] + 20;
    bytes[cut..].fill(0);
    let (records, other) = scan(&bytes);
    assert_eq!(records, offsets[..4].iter().map(|&o| o as u64).collect::<Vec<_>>());
    assert_eq!(other, vec![ScanEvent::Torn { offset: offsets[4] as u64, why: "checksum mismatch" }]);
}

#[test]
fn corrupt_last_frame_of_a_sealed_segment_is_torn() {
    let (mut bytes, offsets) = segment(1, SEED, &chunks(5));
    bytes[offsets[4] + FRAME_HEADER_LEN] ^= 1;
    let (records, other) = scan(&bytes);
    assert_eq!(records.len(), 4);
    assert_eq!(other, vec![ScanEvent::Torn { offset: offsets[4] as u64, why: "checksum mismatch" }]);
}

#[test]
fn frame_forged_inside_a_body_is_never_resurrected() {
    // A sender embeds a well-formed message frame, 8-byte aligned, in a body chunk. It can only
    // guess the seed: here it uses 0 (the unseeded checksum) and a near miss.
    let forged_msg = MessageRecord { sender: b"evil@x".to_vec(), recipients: vec![b"v@y".to_vec()], ..Default::default() };
    let mut body = Vec::new();
    for guess in [0, SEED ^ 1] {
        encode_frame(guess, RecordKind::Message, &encode_message(&forged_msg), &mut body);
    }
    let mut frames = chunks(1);
    frames.push((RecordKind::Chunk, body));
    frames.extend(chunks(2));
    let (mut bytes, offsets) = segment(1, SEED, &frames);
    // Corruption hits the header of the chunk carrying the forged frames.
    bytes[offsets[1] + 8] ^= 0xff;
    let (records, other) = scan(&bytes);
    assert_eq!(records, vec![offsets[0] as u64, offsets[2] as u64, offsets[3] as u64]);
    let skipped = (offsets[2] - offsets[1]) as u64;
    assert_eq!(other, vec![ScanEvent::Corrupt { offset: offsets[1] as u64, skipped, why: "checksum mismatch" }]);
}

#[test]
fn format_1_segment_never_resyncs() {
    let (mut bytes, offsets) = segment(1, 0, &chunks(5));
    // Rewrite the header as format 1 (unseeded): frames written with seed 0 are its frames.
    let mut h = b"RPSEG001".to_vec();
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&(SIZE as u64).to_le_bytes());
    let crc = crc32c::crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    bytes[..h.len()].copy_from_slice(&h);
    bytes[h.len()..64].fill(0);
    assert!(!header(&bytes).seeded);
    assert_eq!(scan(&bytes).0.len(), 5, "a format-1 segment reads as before");
    bytes[offsets[2] + FRAME_HEADER_LEN] ^= 1;
    let (records, other) = scan(&bytes);
    assert_eq!(records.len(), 2);
    assert_eq!(other, vec![ScanEvent::Torn { offset: offsets[2] as u64, why: "checksum mismatch" }]);
}

#[test]
fn undecodable_record_with_a_good_checksum_is_skipped_as_corruption() {
    let mut frames = chunks(1);
    frames.push((RecordKind::DsnDone, vec![1, 2, 3]));
    frames.extend(chunks(1));
    let (bytes, offsets) = segment(1, SEED, &frames);
    let (records, other) = scan(&bytes);
    assert_eq!(records, vec![offsets[0] as u64, offsets[2] as u64]);
    let skipped = (offsets[2] - offsets[1]) as u64;
    assert_eq!(other, vec![ScanEvent::Corrupt { offset: offsets[1] as u64, skipped, why: "undecodable record" }]);
}

#[test]
fn a_zeroed_frame_followed_by_frames_is_skipped_in_any_segment() {
    // A power cut can keep a round's later page and lose an earlier one, in the newest segment
    // too: the scan reads past the zeros wherever they are, so every recovery of these bytes
    // gives the same records (the newest segment used to stop there, and a later recovery,
    // with the segment sealed, read on).
    let (mut bytes, offsets) = segment(1, SEED, &chunks(4));
    bytes[offsets[1]..offsets[2]].fill(0);
    let (records, other) = scan(&bytes);
    assert_eq!(records, vec![offsets[0] as u64, offsets[2] as u64, offsets[3] as u64]);
    let skipped = (offsets[2] - offsets[1]) as u64;
    assert_eq!(other, vec![ScanEvent::Corrupt { offset: offsets[1] as u64, skipped, why: "zeroed frame" }]);
    // The clean unused tail after the last frame is the written end, not a gap.
    let (clean, _) = segment(1, SEED, &chunks(4));
    let (records, other) = scan(&clean);
    assert_eq!((records.len(), other.len()), (4, 0));
}

// ---- cross-segment rules, on files ----

/// Builds segment files record by record, tracking where each lands.
struct Spool {
    dir: tempfile::TempDir,
    seq: u32,
    frames: Vec<(RecordKind, Vec<u8>)>,
    at: usize,
}

impl Spool {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap(), seq: 1, frames: Vec::new(), at: SEGMENT_HEADER_LEN as usize }
    }
    fn push(&mut self, kind: RecordKind, payload: Vec<u8>) -> u64 {
        let at = self.at;
        self.at += crate::record::frame_len(payload.len());
        self.frames.push((kind, payload));
        at as u64
    }
    /// A message with `n` recipients and a one-chunk body, in the current segment.
    fn message(&mut self, n: usize) -> MsgRef {
        let body = b"Subject: x\r\n\r\nhi\r\n".to_vec();
        let len = body.len() as u32;
        let chunk = self.push(RecordKind::Chunk, body);
        let extent = Extent { segment: self.seq, offset: chunk + FRAME_HEADER_LEN as u64, len };
        let recipients = (0..n).map(|i| format!("r{i}@x").into_bytes()).collect();
        let m = MessageRecord { sender: b"a@b".to_vec(), recipients, body: vec![extent], ..Default::default() };
        let offset = self.push(RecordKind::Message, encode_message(&m));
        MsgRef { core: 0, segment: self.seq, offset }
    }
    fn state(&mut self, msg: MsgRef, rcpt: u32, attempts: u32) -> RcptState {
        let s = RcptState { msg, rcpt, attempts, next_attempt_ms: 1000 * attempts as u64, last_response: format!("451 try {attempts}") };
        self.push(RecordKind::RcptState, encode_rcpt_state(&s));
        s
    }
    fn finalise(&mut self, msg: MsgRef, rcpt: u32, outcome: Outcome) -> Disposition {
        let failure = (outcome != Outcome::Delivered).then(|| FailureDetail {
            status: "5.1.1".into(),
            remote: Some("mx.x".into()),
            diagnostic: format!("550 no r{rcpt}"),
        });
        let d = Disposition { msg, rcpt, outcome, failure };
        self.push(RecordKind::Disposition, encode_disposition(&d));
        d
    }
    fn dsn_done(&mut self, msg: MsgRef) {
        self.push(RecordKind::DsnDone, encode_dsn_done(&msg));
    }
    /// Write the current segment and start the next one.
    fn seal(&mut self) {
        let core_dir = crate::SpoolShard::core_dir(self.dir.path(), 0);
        std::fs::create_dir_all(&core_dir).unwrap();
        let seed = SEED.wrapping_add(self.seq);
        let (bytes, _) = segment(self.seq, seed, &std::mem::take(&mut self.frames));
        std::fs::write(crate::segment::segment_path(&core_dir, self.seq), bytes).unwrap();
        self.seq += 1;
        self.at = SEGMENT_HEADER_LEN as usize;
    }
    /// Change the bytes of written segment `seq` in place, as a bad disk or a power cut would.
    fn damage(&self, seq: u32, f: impl FnOnce(&mut Vec<u8>)) {
        let path = crate::segment::segment_path(&crate::SpoolShard::core_dir(self.dir.path(), 0), seq);
        let mut bytes = std::fs::read(&path).unwrap();
        f(&mut bytes);
        std::fs::write(&path, bytes).unwrap();
    }
    fn recover(&mut self) -> Recovery {
        if !self.frames.is_empty() {
            self.seal();
        }
        Recovery::scan(&crate::SpoolShard::core_dir(self.dir.path(), 0), 0).unwrap()
    }
}

#[test]
fn latest_state_wins_across_segments() {
    let mut sp = Spool::new();
    let m = sp.message(2);
    sp.state(m, 0, 1);
    let s1 = sp.state(m, 1, 1);
    sp.seal();
    sp.state(m, 0, 2);
    sp.seal();
    let s0 = sp.state(m, 0, 3);
    let rec = sp.recover();
    assert_eq!(rec.messages.len(), 1);
    assert_eq!(rec.messages[0].pending, vec![0, 1]);
    assert_eq!(rec.messages[0].states, vec![s0, s1]);
    assert!(rec.messages[0].failed.is_empty());
    // Segments 2 and 3 hold records about message of segment 1: they guard its GC.
    let refs: Vec<_> = rec.segments.iter().map(|s| s.disposition_refs.iter().copied().collect::<Vec<_>>()).collect();
    assert_eq!(refs, vec![vec![], vec![1], vec![1]]);
}

#[test]
fn pending_recipients_keep_state_and_failed_ones_keep_their_details() {
    let mut sp = Spool::new();
    let m = sp.message(3);
    sp.state(m, 0, 1);
    let bounced = sp.finalise(m, 0, Outcome::Bounced);
    sp.finalise(m, 1, Outcome::Delivered);
    sp.seal();
    let s2 = sp.state(m, 2, 4);
    let rec = sp.recover();
    let r = &rec.messages[0];
    assert_eq!(r.pending, vec![2]);
    assert_eq!(r.states, vec![s2], "only pending recipients report a state");
    assert_eq!(r.failed, vec![bounced]);
    assert!(rec.owed_dsn.is_empty());
}

#[test]
fn finished_message_with_a_failure_and_no_dsn_marker_owes_a_dsn() {
    let mut sp = Spool::new();
    let owing = sp.message(2);
    let delivered = sp.message(1);
    let covered = sp.message(1);
    sp.finalise(delivered, 0, Outcome::Delivered);
    let failed = [sp.finalise(owing, 0, Outcome::Expired), sp.finalise(owing, 1, Outcome::Bounced)];
    sp.finalise(covered, 0, Outcome::Bounced);
    sp.seal();
    sp.dsn_done(covered);
    let rec = sp.recover();
    assert!(rec.messages.is_empty());
    assert_eq!(rec.owed_dsn.len(), 1);
    let o = &rec.owed_dsn[0];
    assert_eq!(o.msg, owing);
    assert!(o.pending.is_empty() && o.states.is_empty());
    assert_eq!(o.failed, failed);
}

#[test]
fn dsn_marker_without_a_failure_changes_nothing_for_pending_messages() {
    let mut sp = Spool::new();
    let m = sp.message(2);
    let bounced = sp.finalise(m, 0, Outcome::Bounced);
    sp.dsn_done(m);
    let rec = sp.recover();
    assert_eq!(rec.messages.len(), 1, "a pending recipient keeps the message queued");
    assert_eq!(rec.messages[0].failed, vec![bounced]);
}

#[test]
fn corruption_in_a_file_is_counted_and_later_messages_recovered() {
    let mut sp = Spool::new();
    let first = sp.message(1);
    let second = sp.message(1);
    let third = sp.message(1);
    sp.seal();
    sp.damage(1, |bytes| bytes[second.offset as usize + FRAME_HEADER_LEN + 2] ^= 0x10);
    let rec = sp.recover();
    let got: Vec<MsgRef> = rec.messages.iter().map(|m| m.msg).collect();
    assert_eq!(got, vec![first, third]);
    assert!(rec.torn.is_empty());
    let chunk_of_third = third.offset - crate::record::frame_len(18) as u64;
    assert_eq!(rec.corrupt, vec![(1, second.offset, chunk_of_third - second.offset)]);
}

#[test]
fn a_zeroed_page_in_the_newest_segment_is_read_past() {
    // The only segment is the newest. A power cut lost the page holding the second message's
    // chunk and kept the later ones: the third message comes back now, as it will at every
    // later recovery once the segment is sealed; the second, missing its chunk, does not.
    let mut sp = Spool::new();
    let first = sp.message(1);
    let second = sp.message(1);
    let third = sp.message(1);
    sp.seal();
    let chunk_of_second = second.offset as usize - crate::record::frame_len(18);
    sp.damage(1, |bytes| bytes[chunk_of_second..second.offset as usize].fill(0));
    let rec = sp.recover();
    let got: Vec<MsgRef> = rec.messages.iter().map(|m| m.msg).collect();
    assert_eq!(got, vec![first, third]);
    assert_eq!(rec.corrupt, vec![(1, chunk_of_second as u64, second.offset - chunk_of_second as u64)]);
    assert_eq!(rec.incomplete, 1, "the second message's record names a chunk that is gone");
}

#[test]
fn zeroed_block_in_a_sealed_segment_is_counted_and_later_messages_recovered() {
    let mut sp = Spool::new();
    let first = sp.message(1);
    let second = sp.message(1);
    let third = sp.message(1);
    sp.seal();
    let newest = sp.message(1);
    sp.seal();
    sp.damage(1, |bytes| bytes[second.offset as usize..second.offset as usize + 24].fill(0));
    let rec = sp.recover();
    let got: Vec<MsgRef> = rec.messages.iter().map(|m| m.msg).collect();
    assert_eq!(got, vec![first, third, newest]);
    let chunk_of_third = third.offset - crate::record::frame_len(18) as u64;
    assert_eq!(rec.corrupt, vec![(1, second.offset, chunk_of_third - second.offset)]);
}

#[test]
fn the_latest_checkpoint_says_which_messages_of_its_segment_are_final() {
    let mut sp = Spool::new();
    let (_a, b, c) = (sp.message(1), sp.message(2), sp.message(1));
    // b's recipient 0 was delivered; b and c are live at the first checkpoint, only b at the
    // second. a has no disposition anywhere (it was in a relocated segment): only the
    // checkpoint says it is final, and so is c (and a DSN it owed was spooled before release).
    sp.finalise(c, 0, Outcome::Bounced);
    sp.seal();
    sp.push(RecordKind::Checkpoint, encode_checkpoint(&SegmentCheckpoint { segment: 1, live: vec![b.offset, c.offset] }));
    sp.finalise(b, 0, Outcome::Delivered);
    sp.seal();
    sp.push(RecordKind::Checkpoint, encode_checkpoint(&SegmentCheckpoint { segment: 1, live: vec![b.offset] }));
    let s = sp.state(b, 1, 4);
    let rec = sp.recover();
    assert_eq!(rec.messages.iter().map(|m| m.msg).collect::<Vec<_>>(), vec![b], "a and c are final by the latest checkpoint");
    assert!(rec.owed_dsn.is_empty(), "a released message owes no DSN");
    assert_eq!((rec.messages[0].pending.clone(), rec.messages[0].states.clone()), (vec![1], vec![s]));
    // The records' locations come back so the shard can carry them forward again.
    let keys: Vec<(u64, u32)> = rec.messages[0].about.iter().map(|l| (l.key, l.segment)).collect();
    assert_eq!(keys, vec![(crate::liveness::state_key(1), 3), (crate::liveness::disposition_key(0), 2)]);
    let refs: Vec<_> = rec.segments.iter().map(|s| s.disposition_refs.iter().copied().collect::<Vec<_>>()).collect();
    assert_eq!(refs, vec![vec![], vec![1], vec![1]], "a checkpoint guards its segment's GC like a disposition");
}

#[test]
fn the_latest_signature_of_a_message_is_found_in_any_segment_and_one_outside_its_own_keeps_it() {
    let mut sp = Spool::new();
    let (a, b, c) = (sp.message(1), sp.message(1), sp.message(1));
    let first = sp.push(RecordKind::Signature, encode_signature(&a, b"DKIM-Signature: old\r\n"));
    let of_b = sp.push(RecordKind::Signature, encode_signature(&b, b""));
    sp.seal();
    let latest = sp.push(RecordKind::Signature, encode_signature(&a, b"DKIM-Signature: new\r\n"));
    let rec = sp.recover();
    let found: Vec<(MsgRef, Option<Extent>)> = rec.messages.iter().map(|m| (m.msg, m.signature)).collect();
    let at = |seg: u32, frame: u64, len: u32| Some(Extent { segment: seg, offset: frame + (FRAME_HEADER_LEN + SIGNATURE_AT) as u64, len });
    assert_ne!(first, latest);
    assert_eq!(found, vec![(a, at(2, latest, 21)), (b, at(1, of_b, 0)), (c, None)], "spool order: the later segment's lines win");
    // The lines are where the extent says.
    let map = &rec.segments[1].map;
    assert_eq!(map.extent(&rec.messages[0].signature.unwrap()), b"DKIM-Signature: new\r\n");
    // One in the message's own segment needs nothing; one in a later segment is an
    // about-record: that segment refers to the message's, so it is kept (or relocated).
    let refs: Vec<Vec<u32>> = rec.segments.iter().map(|s| s.disposition_refs.iter().copied().collect()).collect();
    assert_eq!(refs, vec![vec![], vec![1]]);
    let about: Vec<(u64, u32, u64)> = rec.messages[0].about.iter().map(|l| (l.key, l.segment, l.offset)).collect();
    assert_eq!(about, vec![(crate::liveness::SIGNATURE_KEY, 2, latest)]);
    assert!(rec.messages[1].about.is_empty(), "b's lines are in its own segment");
}

/// Append a frame header with the magic, `kind`, a `claimed` payload length and a checksum
/// `crc` (as bytes a sender put in a body would carry).
fn fake_header(out: &mut Vec<u8>, kind: u8, claimed: u32, crc: u32) {
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&claimed.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
}

#[test]
fn resync_past_a_body_full_of_fake_frame_headers_costs_linear_checksumming() {
    // A sender controls body bytes: a chunk can hold a plausible frame header at every 16
    // bytes, each claiming a payload that runs almost to the segment's end. When that chunk's
    // own frame is damaged (a torn round, or a lost page inside it), the resync looks at each
    // of them. Checksummed directly that was candidates x claimed length (here 8,192 x ~1.9
    // MiB, 16.6 GB); with range checksums it is one pass plus a bounded cost per candidate.
    // Counted at the checksum primitives, so any direct check of a candidate counts.
    const BIG: usize = 2 << 20;
    let mut bytes = encode_header(0, 1, BIG as u64, SEED);
    encode_frame(SEED, RecordKind::Chunk, b"first\r\n", &mut bytes);
    let fake_at = bytes.len();
    let candidates = 8192;
    let mut body = Vec::with_capacity(candidates * 16);
    for i in 0..candidates {
        let at = fake_at + FRAME_HEADER_LEN + i * 16; // where this candidate lands
        let claimed = (BIG - at - FRAME_HEADER_LEN - 64) as u32;
        fake_header(&mut body, RecordKind::Chunk as u8, claimed, i as u32); // a wrong checksum
    }
    encode_frame(SEED, RecordKind::Chunk, &body, &mut bytes);
    let last_at = bytes.len();
    // A long valid frame after the gap, spanning many range strides: the resync must find it.
    encode_frame(SEED, RecordKind::Chunk, &vec![b'x'; 300_000], &mut bytes);
    bytes.resize(BIG, 0);
    bytes[fake_at + 12] ^= 0xff; // the fake-laden chunk's own checksum is damaged

    let h = header(&bytes);
    let before = crate::record::CHECKSUMMED.with(|c| c.get());
    let events: Vec<_> = SegmentScanner::new(&bytes, &h)
        .map(|e| match e {
            ScanEvent::Record { offset, .. } => (offset, "record"),
            ScanEvent::Corrupt { offset, why, .. } => (offset, why),
            ScanEvent::Torn { offset, .. } => (offset, "torn"),
        })
        .collect();
    let checksummed = crate::record::CHECKSUMMED.with(|c| c.get()) - before;
    let first_at = SEGMENT_HEADER_LEN;
    assert_eq!(events, vec![(first_at, "record"), (fake_at as u64, "checksum mismatch"), (last_at as u64, "record")]);
    // One pass over the rest of the segment, two partial strides per candidate, and the real
    // frames checked directly (the one found by the resync twice).
    let bound = (BIG + candidates * 2 * crate::crc_range::STRIDE + 3 * 300_000 + body.len()) as u64;
    assert!(checksummed <= bound, "checksummed {checksummed} bytes for {candidates} fake headers (bound {bound})");
    assert!(checksummed >= (BIG - fake_at - body.len()) as u64, "the resync must have looked at the candidates");
}

#[test]
fn the_resync_finds_what_a_direct_check_of_every_candidate_finds() {
    // Differential: segments of mixed frames (some carrying fake headers, some real frames of
    // many strides) damaged at one to three random places (flipped bytes, zeroed runs), in a
    // segment of a size that is no multiple of the range stride. The scanner's events must be
    // exactly those of the direct check it replaced, gaps, resyncs and the final torn tail
    // included.
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let size = 200_000 + 8 * 37;
    let mut resyncs = 0;
    for round in 0..300 {
        let mut bytes = encode_header(0, 1, size as u64, SEED);
        while bytes.len() < size - 20_000 {
            let payload: Vec<u8> = match next(3) {
                0 => vec![b'a' + next(26) as u8; 1 + next(9_000)],
                1 => {
                    // fake headers claiming various lengths
                    let mut b = Vec::new();
                    for _ in 0..1 + next(40) {
                        fake_header(&mut b, 1 + next(7) as u8, next(size) as u32, next(1 << 30) as u32);
                    }
                    b
                }
                _ => {
                    // a real frame inside a body (as if its bytes were spooled by a sender)
                    let mut b = vec![0u8; 8 * next(4)];
                    encode_frame(SEED, RecordKind::Chunk, &vec![b'r'; next(3_000)], &mut b);
                    b
                }
            };
            encode_frame(SEED, RecordKind::Chunk, &payload, &mut bytes);
        }
        bytes.resize(size, 0);
        for _ in 0..1 + next(3) {
            let at = SEGMENT_HEADER_LEN as usize + next(size - SEGMENT_HEADER_LEN as usize - 64);
            if next(2) == 0 {
                bytes[at] ^= 1 << next(8);
            } else {
                bytes[at..at + 1 + next(5_000).min(size - at - 1)].fill(0);
            }
        }
        let h = header(&bytes);
        let ours: Vec<_> = SegmentScanner::new(&bytes, &h).collect();
        let direct: Vec<_> = SegmentScanner::new(&bytes, &h).with_direct_resync().collect();
        assert_eq!(ours, direct, "round {round}");
        resyncs += ours.iter().filter(|e| matches!(e, ScanEvent::Corrupt { .. })).count();
    }
    assert!(resyncs > 100, "only {resyncs} resyncs in 300 damaged segments: the test is not exercising them");
}
