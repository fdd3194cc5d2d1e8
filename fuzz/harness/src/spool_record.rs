//! The spool's frame scanner and record decoder (`record::scan_frame`, `decode_record`).
//!
//! The input is the bytes of a segment from a frame boundary on: scanned frame by frame as
//! recovery does. Because a random frame rarely has a valid CRC, the first input byte may
//! instead ask the harness to frame the rest itself (valid checksum), so the decoders behind
//! the checksum are reached too. Invariants: no panic; a frame is 8-aligned, within the
//! buffer and at least header-long; a decoded record re-encodes to exactly its payload
//! (the codec is canonical, so nothing decoded is silently altered) and its frame header
//! re-encodes identically.
use crate::spool::record::{
    decode_record, encode_checkpoint, encode_disposition, encode_dsn_done, encode_frame, encode_message, encode_rcpt_state, encode_signature,
    scan_frame, FrameScan, RecordKind, FRAME_ALIGN, FRAME_HEADER_LEN,
};
use crate::spool::Record;

/// The frame checksum seed of the segments built here (any value; 0 is the unseeded format).
const SEED: u32 = 0x5EED_F022;

/// Harness entry point.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let framed;
    let buf = match mode % 8 {
        1..=7 => {
            let kinds = [
                RecordKind::Chunk,
                RecordKind::Message,
                RecordKind::Disposition,
                RecordKind::RcptState,
                RecordKind::DsnDone,
                RecordKind::Checkpoint,
                RecordKind::Signature,
            ];
            let kind = kinds[(mode % 8 - 1) as usize];
            let mut v = Vec::new();
            encode_frame(SEED, kind, rest, &mut v);
            framed = v;
            &framed[..]
        }
        _ => rest,
    };
    scan_all(buf);
}

fn scan_all(buf: &[u8]) {
    let mut at = 0;
    while at < buf.len() {
        match scan_frame(&buf[at..], SEED) {
            FrameScan::End | FrameScan::Torn(_) => return,
            FrameScan::Frame(kind, payload, total) => {
                assert!(total % FRAME_ALIGN == 0 && total >= FRAME_HEADER_LEN + payload.len(), "frame total {total}");
                assert!(total <= buf.len() - at, "frame runs past the buffer");
                check_record(kind, payload, &buf[at..at + FRAME_HEADER_LEN + payload.len()]);
                at += total;
            }
        }
    }
}

fn check_record(kind: RecordKind, payload: &[u8], frame: &[u8]) {
    let mut again = Vec::new();
    encode_frame(SEED, kind, payload, &mut again);
    assert_eq!(&again[..frame.len()], frame, "frame header does not re-encode identically");
    match decode_record(kind, payload) {
        Ok(Record::Chunk(c)) => assert_eq!(c, payload),
        Ok(Record::Message(m)) => assert_eq!(encode_message(&m), payload, "message record is not canonical"),
        Ok(Record::Disposition(d)) => assert_eq!(encode_disposition(&d), payload, "disposition is not canonical"),
        Ok(Record::RcptState(r)) => assert_eq!(encode_rcpt_state(&r), payload, "retry state is not canonical"),
        Ok(Record::DsnDone(m)) => assert_eq!(encode_dsn_done(&m), payload, "DSN marker is not canonical"),
        Ok(Record::Checkpoint(c)) => assert_eq!(encode_checkpoint(&c), payload, "checkpoint is not canonical"),
        Ok(Record::Signature(m, lines)) => assert_eq!(encode_signature(&m, lines), payload, "signature record is not canonical"),
        Err(_) => {}
    }
}
