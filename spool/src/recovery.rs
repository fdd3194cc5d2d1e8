//! Start-up recovery of one core's spool: scan every segment, stop at a torn tail, and return
//! every message with recipients that have no final disposition yet.
//!
//! Runs before the core serves anything, with plain blocking reads of the mapped files: there
//! is nothing to overlap it with. A message is recovered only if its record and every body
//! chunk it names were found intact, so a half-written message is never resurrected.
use crate::error::{Result, SpoolError};
use crate::record::{decode_record, scan_frame, FrameScan, MessageRecord, MsgRef, Record, FRAME_HEADER_LEN};
use crate::segment::{decode_header, parse_segment_name, SegmentMap, SEGMENT_HEADER_LEN};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;

/// A message that still has work to do.
#[derive(Debug)]
pub struct RecoveredMessage {
    /// Its identity (and record location).
    pub msg: MsgRef,
    /// Envelope and body extents.
    pub record: MessageRecord,
    /// Indexes of recipients with no final disposition.
    pub pending: Vec<u32>,
}

/// A segment kept by recovery, to be handed to [`crate::SpoolShard::open`].
#[derive(Debug)]
pub struct RecoveredSegment {
    /// Its read-only map.
    pub map: Arc<SegmentMap>,
    /// Segments whose messages it records dispositions for.
    pub disposition_refs: BTreeSet<u32>,
}

/// What recovery found on one core.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Segments kept (all of them; the shard deletes those with nothing live).
    pub segments: Vec<RecoveredSegment>,
    /// Messages to requeue.
    pub messages: Vec<RecoveredMessage>,
    /// Torn or corrupt tails dropped: (segment, offset, reason).
    pub torn: Vec<(u32, u64, &'static str)>,
    /// Message records skipped because a body chunk they name was not intact.
    pub incomplete: usize,
}

impl Recovery {
    /// Scan `core_dir` (created if missing) for core `core`.
    pub fn scan(core_dir: &Path, core: u16) -> Result<Self> {
        std::fs::create_dir_all(core_dir).map_err(|e| SpoolError::from_io(core_dir, e))?;
        let mut seqs: Vec<u32> = std::fs::read_dir(core_dir)
            .map_err(|e| SpoolError::from_io(core_dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_segment_name(e.file_name().to_str()?))
            .collect();
        seqs.sort_unstable();

        let mut out = Recovery::default();
        let mut messages: BTreeMap<MsgRef, MessageRecord> = BTreeMap::new();
        let mut done: HashSet<(MsgRef, u32)> = HashSet::new();
        let mut chunks: HashSet<(u32, u64, u32)> = HashSet::new();
        for seq in seqs {
            let path = crate::segment::segment_path(core_dir, seq);
            let file = std::fs::File::open(&path).map_err(|e| SpoolError::from_io(&path, e))?;
            let map = SegmentMap::map(seq, path.clone(), &file)?;
            if decode_header(map.bytes()) != Some((core, seq)) {
                // A segment whose header never became durable holds no acknowledged record.
                tracing::warn!(target: "spool", "setting aside {}: bad segment header", path.display());
                let _ = std::fs::rename(&path, path.with_extension("bad"));
                continue;
            }
            let mut refs = BTreeSet::new();
            let bytes = map.bytes();
            let mut at = SEGMENT_HEADER_LEN as usize;
            loop {
                match scan_frame(&bytes[at..]) {
                    FrameScan::End => break,
                    FrameScan::Torn(why) => {
                        out.torn.push((seq, at as u64, why));
                        break;
                    }
                    FrameScan::Frame(kind, payload, total) => {
                        match decode_record(kind, payload) {
                            Ok(Record::Chunk(c)) => {
                                chunks.insert((seq, (at + FRAME_HEADER_LEN) as u64, c.len() as u32));
                            }
                            Ok(Record::Message(m)) => {
                                messages.insert(MsgRef { core, segment: seq, offset: at as u64 }, m);
                            }
                            Ok(Record::Disposition(d)) => {
                                done.insert((d.msg, d.rcpt));
                                if d.msg.segment != seq {
                                    refs.insert(d.msg.segment);
                                }
                            }
                            Err(_) => {
                                out.torn.push((seq, at as u64, "undecodable record"));
                                break;
                            }
                        }
                        at += total;
                    }
                }
            }
            out.segments.push(RecoveredSegment { map: Arc::new(map), disposition_refs: refs });
        }
        for (msg, record) in messages {
            if !record.body.iter().all(|e| chunks.contains(&(e.segment, e.offset, e.len))) {
                out.incomplete += 1;
                continue;
            }
            let pending: Vec<u32> =
                (0..record.recipients.len() as u32).filter(|i| !done.contains(&(msg, *i))).collect();
            if !pending.is_empty() {
                out.messages.push(RecoveredMessage { msg, record, pending });
            }
        }
        Ok(out)
    }
}
