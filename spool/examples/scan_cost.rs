//! How long recovery's segment scan takes: per record on a full 64 MiB segment, and the worst
//! case of a torn tail (a bad frame right after the header, then zeros to the end, all of which
//! are searched for a valid frame). Prints timings; bytes are in RAM, so page-cache misses of a
//! real recovery come on top.
use ringpost_spool::record::{encode_frame, encode_message, encode_rcpt_state, Extent, MessageRecord, MsgRef, RcptState, RecordKind};
use ringpost_spool::segment::{decode_header, encode_header};
use ringpost_spool::SegmentScanner;
use std::time::Instant;
fn main() {
    let size = 64usize << 20;
    let seed = 0x1234_5678;
    // Torn frame right after the header, zeros to the end: the worst case of a torn tail.
    let mut torn = encode_header(0, 1, size as u64, seed);
    encode_frame(seed, RecordKind::Chunk, b"hello", &mut torn);
    torn[70] ^= 1;
    torn.resize(size, 0);
    let h = decode_header(&torn).unwrap();
    let t = Instant::now();
    let n = SegmentScanner::new(&torn, &h).count();
    println!("torn at start of 64 MiB (in RAM): {n} events in {:?}", t.elapsed());
    // A full segment of typical records: 4 KiB chunk + message + 1 state.
    let mut full = encode_header(0, 1, size as u64, seed);
    let body = vec![b'x'; 4096];
    let m = MessageRecord {
        sender: b"a@b.example".to_vec(),
        recipients: vec![b"r@x.example".to_vec(); 2],
        trace: vec![b't'; 120],
        body: vec![Extent { segment: 1, offset: 64, len: 4096 }],
        ..Default::default()
    };
    let s = RcptState {
        msg: MsgRef { core: 0, segment: 1, offset: 64 },
        rcpt: 0,
        attempts: 2,
        next_attempt_ms: 1,
        last_response: "451 4.7.1 try later".into(),
    };
    let mut recs = 0;
    while full.len() + 8192 < size {
        encode_frame(seed, RecordKind::Chunk, &body, &mut full);
        encode_frame(seed, RecordKind::Message, &encode_message(&m), &mut full);
        encode_frame(seed, RecordKind::RcptState, &encode_rcpt_state(&s), &mut full);
        recs += 3;
    }
    full.resize(size, 0);
    let t = Instant::now();
    let n = SegmentScanner::new(&full, &h).count();
    let e = t.elapsed();
    println!("full 64 MiB: {n} records ({recs} written) in {e:?}, {:?}/record", e / n as u32);
    // Same, corrupt frame in the middle.
    full[size / 2 / 8 * 8..][..8].fill(0xee);
    let t = Instant::now();
    let n = SegmentScanner::new(&full, &h).count();
    println!("full with mid corruption: {n} events in {:?}", t.elapsed());
    // A stress case: a damaged 4 MiB chunk (four times the largest the server writes; a torn
    // round can be as large) whose body is a fake frame header every 16 bytes, each claiming a
    // payload to near the segment's end: the resync checks all 262,144 of them.
    let mut fake = encode_header(0, 1, size as u64, seed);
    let at = fake.len();
    let mut body = Vec::with_capacity(4 << 20);
    while body.len() < 4 << 20 {
        let claimed = (size - (at + 16 + body.len()) - 16 - 64) as u32;
        body.extend_from_slice(b"RPR1");
        body.extend_from_slice(&[RecordKind::Chunk as u8, 0, 0, 0]);
        body.extend_from_slice(&claimed.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
    }
    encode_frame(seed, RecordKind::Chunk, &body, &mut fake);
    fake.resize(size, 0);
    fake[at + 12] ^= 0xff;
    let t = Instant::now();
    let mut scanner = SegmentScanner::new(&fake, &h);
    let n = scanner.by_ref().count();
    println!(
        "damaged 4 MiB chunk of fake headers in 64 MiB: {n} events in {:?}, {} MB checksummed",
        t.elapsed(),
        scanner.resync_checksummed() / 1_000_000
    );
}
