//! Start-up recovery of one core's spool: scan every segment and return every message with
//! work left — recipients with no final disposition yet (with their latest retry state and the
//! failures already known), or all recipients final with a DSN still owed.
//!
//! Runs before the core serves anything, with plain blocking reads of the mapped files: there
//! is nothing to overlap it with. A message is recovered only if its record and every body
//! chunk it names were found intact, so a half-written message is never resurrected.
//!
//! Bad frames: a bad frame with no valid frame after it in its segment is a torn tail (what a
//! crash or a failed commit round leaves) and is reported quietly in [`Recovery::torn`]. A bad
//! frame followed by valid frames is a gap: corruption, or a power cut that kept a later page of
//! the round being written and lost an earlier one. The scan resynchronises on the next valid
//! frame, logs an error and counts it in [`Recovery::corrupt`], and never drops a later valid
//! record.
//! Zeros where a frame should start are the written end of a segment, unless a valid frame
//! follows: then they are skipped like a bad frame, in every segment, the newest included. A
//! power cut can keep any subset of a round's pages, so the newest segment can hold a zeroed
//! page with frames of the same round after it. Stopping there while the segment is the
//! newest, and reading on once a later segment makes it sealed, made two recoveries disagree
//! about the same bytes (the power-loss simulator, tearing page by page, lost an acknowledged
//! message at seed 739 of 20,000). Reading on in every segment gives one answer.
//! Resynchronising is safe because frame checksums are seeded with the segment's secret seed
//! (see [`crate::record`]): bytes a sender put in a body cannot pass for a frame. Format-1
//! segments have no seed, so their scan still stops at the first bad frame.
//!
//! Reading cost: after the first all-zero header (the written end) or a bad frame, the scan
//! reads on to the segment's end looking for a valid frame. Measured with
//! `cargo run --release -p ringpost-spool --example scan_cost` (bytes in RAM, 2-core VM at load
//! average ~17, so noisy): 1.5–5.6 µs per record for a 4 KiB chunk + message + retry-state mix,
//! and 54–106 ms to rule out valid frames after a torn frame at the start of a 64 MiB segment.
//! A candidate frame (the magic and a plausible header at an 8-byte boundary) is checked with
//! [`RangeCrc`] at a bounded cost whatever length it claims, because body bytes can hold any
//! number of them. The first candidate of a segment costs one pass over the rest of it (about
//! 6 ms per 64 MiB, and 4 bytes of memory per KiB while the scan runs); each costs about a
//! microsecond after that. Stress figure (`scan_cost`): a bad region of 4 MiB full of fake
//! headers (four times the largest chunk the server writes; a torn commit round can be up to
//! `spool.pending_bytes_max`, 16 MiB by default) costs 307 ms in a 64 MiB segment, where
//! checksumming each claim directly was quadratic.
use crate::crc_range::RangeCrc;
use crate::error::{Result, SpoolError};
use crate::liveness::{disposition_key, state_key, AboutKey, AboutLoc, DSN_DONE_KEY, SIGNATURE_KEY};
use crate::record::{
    decode_record, frame_head, head_sum, scan_frame, Disposition, Extent, FrameScan, MessageRecord, MsgRef, Outcome, RcptState, Record, FRAME_ALIGN,
    FRAME_HEADER_LEN, RECORD_MAGIC, SIGNATURE_AT,
};
use crate::segment::{decode_header, parse_segment_name, SegmentHeader, SegmentMap, SEGMENT_HEADER_LEN};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// A message that still has work to do.
#[derive(Debug)]
pub struct RecoveredMessage {
    /// Its identity (and record location).
    pub msg: MsgRef,
    /// Envelope and body extents.
    pub record: MessageRecord,
    /// Indexes of recipients with no final disposition, ascending.
    pub pending: Vec<u32>,
    /// The latest retry state (in spool order) of each pending recipient that has one,
    /// ascending by recipient index. A pending recipient without one has never failed.
    pub states: Vec<RcptState>,
    /// The final dispositions of recipients that failed (bounced or expired), ascending by
    /// recipient index, with their DSN details when the record carries them.
    pub failed: Vec<Disposition>,
    /// Where the latest records about it (retry states, dispositions, DSN marker) are: the
    /// shard carries them forward when it checkpoints this message's segment.
    pub about: Vec<AboutLoc>,
    /// Where its DKIM signature lines are (the latest Signature record about it), for a message
    /// whose record has `FLAG_SIGN_PENDING`. One in another segment is in `about` too, so
    /// that segment is kept. `None`: never stored (a crash came first); the caller signs again.
    pub signature: Option<Extent>,
}

/// A segment kept by recovery, to be handed to [`crate::SpoolShard::open`].
#[derive(Debug)]
pub struct RecoveredSegment {
    /// Its read-only map.
    pub map: Arc<SegmentMap>,
    /// Segments whose messages it records dispositions, retry states or DSN markers for.
    pub disposition_refs: BTreeSet<u32>,
}

/// What recovery found on one core.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Segments kept (all of them; the shard deletes those with nothing live).
    pub segments: Vec<RecoveredSegment>,
    /// Messages to requeue: at least one recipient pending.
    pub messages: Vec<RecoveredMessage>,
    /// Messages whose recipients are all final, at least one failed, and whose DSN-done marker
    /// is absent: they still owe a DSN (`pending` and `states` are empty). Whether the sender
    /// is null, so that no DSN is due after all, is the caller's call.
    pub owed_dsn: Vec<RecoveredMessage>,
    /// Torn tails dropped: (segment, offset, reason).
    pub torn: Vec<(u32, u64, &'static str)>,
    /// Corruption skipped inside segments: (segment, offset, bytes skipped).
    pub corrupt: Vec<(u32, u64, u64)>,
    /// Message records skipped because a body chunk they name was not intact.
    pub incomplete: usize,
}

/// One finding of a segment scan.
#[derive(Debug, PartialEq, Eq)]
pub enum ScanEvent<'a> {
    /// A valid record whose frame starts at `offset`.
    Record {
        /// Frame offset in the segment.
        offset: u64,
        /// The decoded record.
        record: Record<'a>,
    },
    /// A bad frame with valid frames after it: `skipped` bytes from `offset` were passed over.
    Corrupt {
        /// Offset of the bad frame.
        offset: u64,
        /// Bytes up to the next valid frame.
        skipped: u64,
        /// What was wrong with the bad frame.
        why: &'static str,
    },
    /// A torn tail: no valid frame follows `offset`. Always the last event.
    Torn {
        /// Offset of the bad frame.
        offset: u64,
        /// What was wrong with it.
        why: &'static str,
    },
}

/// Sans-I/O scan of one segment's bytes (header included), yielding [`ScanEvent`]s in order.
pub struct SegmentScanner<'a> {
    bytes: &'a [u8],
    seed: u32,
    resync: bool,
    at: usize,
    done: bool,
    /// Range checksums for resynchronising, built at the first candidate frame.
    ranges: Option<RangeCrc<'a>>,
    /// Bytes checksummed while resynchronising (see [`Self::resync_checksummed`]).
    resync_checksummed: u64,
    /// Check candidates directly (unit tests' reference).
    #[cfg(test)]
    direct_resync: bool,
}

impl<'a> SegmentScanner<'a> {
    /// Scan `bytes`, a whole segment whose intact header is `header`.
    pub fn new(bytes: &'a [u8], header: &SegmentHeader) -> Self {
        let at = (SEGMENT_HEADER_LEN as usize).min(bytes.len());
        Self {
            bytes,
            seed: header.frame_seed,
            resync: header.seeded,
            at,
            done: false,
            ranges: None,
            resync_checksummed: 0,
            #[cfg(test)]
            direct_resync: false,
        }
    }

    /// The scanner with the direct check of every candidate that the range checksums replaced
    /// (unit tests only: the reference the differential test compares against).
    #[cfg(test)]
    pub(crate) fn with_direct_resync(mut self) -> Self {
        self.direct_resync = true;
        self
    }

    /// Bytes checksummed so far while looking for a valid frame after a bad one: at most the
    /// rest of the segment once, plus `2 * crc_range::STRIDE` per candidate frame, whatever
    /// lengths the candidates claim (`scan_cost` prints it; the unit test counts at the
    /// checksum primitives instead).
    pub fn resync_checksummed(&self) -> u64 {
        self.resync_checksummed
    }

    /// The first offset after `from` where a valid frame starts, if any. Every 8-byte boundary
    /// that starts with the magic and a plausible header is a candidate; its checksum comes
    /// from [`RangeCrc`], so a candidate claiming a long payload costs no more than a short one
    /// (body bytes can hold any number of candidates: see the module doc of `crc_range`).
    fn next_valid_frame(&mut self, from: usize) -> Option<usize> {
        let bytes = self.bytes;
        let magic = RECORD_MAGIC.to_le_bytes();
        for p in (from..bytes.len().saturating_sub(FRAME_HEADER_LEN - 1)).step_by(FRAME_ALIGN) {
            if bytes[p..p + 4] != magic {
                continue;
            }
            let Ok(head) = frame_head(&bytes[p..]) else { continue };
            #[cfg(test)]
            if self.direct_resync {
                if matches!(scan_frame(&bytes[p..], self.seed), FrameScan::Frame(..)) {
                    return Some(p);
                }
                continue;
            }
            let ranges = self.ranges.get_or_insert_with(|| {
                let r = RangeCrc::new(bytes, from);
                self.resync_checksummed += r.built_over() as u64;
                r
            });
            let payload = p + FRAME_HEADER_LEN;
            let (sum, cost) = ranges.append(head_sum(self.seed, head.kind as u8, head.len), payload, payload + head.len as usize);
            self.resync_checksummed += cost as u64;
            if sum == head.crc {
                return Some(p);
            }
        }
        None
    }

    /// A bad frame at the current offset: corruption if a valid frame follows, else torn.
    fn bad_frame(&mut self, why: &'static str, skip_at_least: usize) -> ScanEvent<'a> {
        let offset = self.at as u64;
        let next = if self.resync { self.next_valid_frame(self.at + skip_at_least) } else { None };
        match next {
            Some(p) => {
                self.at = p;
                ScanEvent::Corrupt { offset, skipped: (p as u64) - offset, why }
            }
            None => {
                self.done = true;
                ScanEvent::Torn { offset, why }
            }
        }
    }
}

impl<'a> Iterator for SegmentScanner<'a> {
    type Item = ScanEvent<'a>;

    fn next(&mut self) -> Option<ScanEvent<'a>> {
        if self.done {
            return None;
        }
        match scan_frame(&self.bytes[self.at..], self.seed) {
            FrameScan::End => {
                let next = if self.resync { self.next_valid_frame(self.at + FRAME_ALIGN) } else { None };
                let Some(p) = next else {
                    self.done = true;
                    return None;
                };
                let offset = self.at as u64;
                self.at = p;
                Some(ScanEvent::Corrupt { offset, skipped: p as u64 - offset, why: "zeroed frame" })
            }
            FrameScan::Torn(why) => Some(self.bad_frame(why, FRAME_ALIGN)),
            FrameScan::Frame(kind, payload, total) => match decode_record(kind, payload) {
                Ok(record) => {
                    let offset = self.at as u64;
                    self.at += total;
                    Some(ScanEvent::Record { offset, record })
                }
                // A frame with a valid checksum: its length is trustworthy, skip at least it.
                Err(_) => Some(self.bad_frame("undecodable record", total)),
            },
        }
    }
}

/// Everything the scan learnt about messages, across segments, in spool order.
#[derive(Default)]
struct Collector {
    messages: BTreeMap<MsgRef, MessageRecord>,
    finals: HashMap<(MsgRef, u32), Disposition>,
    states: HashMap<(MsgRef, u32), RcptState>,
    dsn_done: HashSet<MsgRef>,
    chunks: HashSet<(u32, u64, u32)>,
    /// The latest checkpoint of each segment: offsets of the messages live when it was written.
    checkpoints: HashMap<u32, HashSet<u64>>,
    /// Where the latest record of each key about each message is.
    locations: HashMap<(MsgRef, AboutKey), (u32, u64)>,
    /// Where the latest signature lines of each message are. One outside the message's own
    /// segment is an about-record too ([`SIGNATURE_KEY`]): it keeps its segment.
    signatures: HashMap<MsgRef, Extent>,
}

impl Collector {
    /// Take in one record found at `offset` of segment `seq`; records about messages of other
    /// segments are noted in `refs` (they keep those segments' garbage collection honest).
    fn absorb(&mut self, core: u16, seq: u32, offset: u64, record: Record<'_>, refs: &mut BTreeSet<u32>) {
        let (about, key) = match record {
            Record::Chunk(c) => {
                self.chunks.insert((seq, offset + FRAME_HEADER_LEN as u64, c.len() as u32));
                return;
            }
            Record::Message(m) => {
                self.messages.insert(MsgRef { core, segment: seq, offset }, m);
                return;
            }
            Record::Signature(msg, lines) => {
                let at = offset + (FRAME_HEADER_LEN + SIGNATURE_AT) as u64;
                self.signatures.insert(msg, Extent { segment: seq, offset: at, len: lines.len() as u32 });
                if msg.segment == seq {
                    return;
                }
                (msg, SIGNATURE_KEY)
            }
            Record::Checkpoint(c) => {
                if c.segment != seq {
                    refs.insert(c.segment);
                }
                self.checkpoints.insert(c.segment, c.live.into_iter().collect());
                return;
            }
            Record::Disposition(d) => {
                let about = (d.msg, disposition_key(d.rcpt));
                self.finals.insert((d.msg, d.rcpt), d);
                about
            }
            Record::RcptState(s) => {
                let about = (s.msg, state_key(s.rcpt));
                self.states.insert((s.msg, s.rcpt), s);
                about
            }
            Record::DsnDone(msg) => {
                self.dsn_done.insert(msg);
                (msg, DSN_DONE_KEY)
            }
        };
        self.locations.insert((about, key), (seq, offset));
        if about.segment != seq {
            refs.insert(about.segment);
        }
    }

    /// Whether a checkpoint of `msg`'s segment, written after it, says it is final.
    fn final_by_checkpoint(&self, msg: &MsgRef) -> bool {
        self.checkpoints.get(&msg.segment).is_some_and(|live| !live.contains(&msg.offset))
    }

    /// The locations of the latest records about `msg` that still matter: the retry states of
    /// `pending` recipients, every disposition, the DSN marker.
    fn about_locations(&self, msg: MsgRef, n: u32, pending: &[u32]) -> Vec<AboutLoc> {
        let keys = pending.iter().map(|r| state_key(*r)).chain((0..n).map(disposition_key)).chain([DSN_DONE_KEY, SIGNATURE_KEY]);
        keys.filter_map(|key| self.locations.get(&(msg, key)).map(|&(segment, offset)| AboutLoc { key, segment, offset })).collect()
    }

    /// Sort every intact message into `out.messages` or `out.owed_dsn` (or drop it: done).
    fn finish(mut self, out: &mut Recovery) {
        for (msg, record) in std::mem::take(&mut self.messages) {
            if self.final_by_checkpoint(&msg) {
                continue;
            }
            if !record.body.iter().all(|e| self.chunks.contains(&(e.segment, e.offset, e.len))) {
                out.incomplete += 1;
                continue;
            }
            let n = record.recipients.len() as u32;
            let pending: Vec<u32> = (0..n).filter(|i| !self.finals.contains_key(&(msg, *i))).collect();
            let states = pending.iter().filter_map(|i| self.states.remove(&(msg, *i))).collect();
            let failed: Vec<Disposition> = (0..n).filter_map(|i| self.finals.remove(&(msg, i))).filter(|d| d.outcome != Outcome::Delivered).collect();
            let owes_dsn = pending.is_empty() && !failed.is_empty() && !self.dsn_done.contains(&msg);
            let about = self.about_locations(msg, n, &pending);
            let signature = self.signatures.remove(&msg);
            let m = RecoveredMessage { msg, record, pending, states, failed, about, signature };
            if !m.pending.is_empty() {
                out.messages.push(m);
            } else if owes_dsn {
                out.owed_dsn.push(m);
            }
        }
    }
}

impl Recovery {
    /// Scan `core_dir` (created if missing) for core `core`.
    pub fn scan(core_dir: &Path, core: u16) -> Result<Self> {
        let mut out = Recovery::default();
        let mut found = Collector::default();
        let seqs = list_segments(core_dir)?;
        for seq in seqs {
            let Some((map, header)) = open_segment(core_dir, core, seq)? else { continue };
            let refs = out.scan_segment(&map, &header, core, &mut found);
            out.segments.push(RecoveredSegment { map: Arc::new(map), disposition_refs: refs });
        }
        found.finish(&mut out);
        Ok(out)
    }

    /// Feed one segment's records to `found`, noting torn tails and corruption; returns the
    /// other segments its records are about.
    fn scan_segment(&mut self, map: &SegmentMap, header: &SegmentHeader, core: u16, found: &mut Collector) -> BTreeSet<u32> {
        let seq = header.seq;
        let mut refs = BTreeSet::new();
        for event in SegmentScanner::new(map.bytes(), header) {
            match event {
                ScanEvent::Record { offset, record } => found.absorb(core, seq, offset, record, &mut refs),
                ScanEvent::Corrupt { offset, skipped, why } => {
                    tracing::error!(
                        target: "spool",
                        "unreadable spool data in {}: {why} at offset {offset}; skipped {skipped} bytes to the next valid record \
                         (a power cut can leave such a gap in the segment being written; anywhere else it is corruption)",
                        map.path().display()
                    );
                    self.corrupt.push((seq, offset, skipped));
                }
                ScanEvent::Torn { offset, why } => self.torn.push((seq, offset, why)),
            }
        }
        refs
    }
}

/// Sequence numbers of the segment files in `core_dir` (created if missing), ascending.
fn list_segments(core_dir: &Path) -> Result<Vec<u32>> {
    std::fs::create_dir_all(core_dir).map_err(|e| SpoolError::from_io(core_dir, e))?;
    let mut seqs: Vec<u32> = std::fs::read_dir(core_dir)
        .map_err(|e| SpoolError::from_io(core_dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| parse_segment_name(e.file_name().to_str()?))
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// Map segment `seq`; a segment whose header is not intact (or names another core or
/// sequence) is renamed `.bad` and skipped: its header never became durable, so it holds no
/// acknowledged record.
fn open_segment(core_dir: &Path, core: u16, seq: u32) -> Result<Option<(SegmentMap, SegmentHeader)>> {
    let path = crate::segment::segment_path(core_dir, seq);
    let file = std::fs::File::open(&path).map_err(|e| SpoolError::from_io(&path, e))?;
    let map = SegmentMap::map(seq, path.clone(), &file)?;
    match decode_header(map.bytes()) {
        Some(h) if h.core == core && h.seq == seq => Ok(Some((map, h))),
        _ => {
            tracing::warn!(target: "spool", "setting aside {}: bad segment header", path.display());
            let _ = std::fs::rename(&path, path.with_extension("bad"));
            Ok(None)
        }
    }
}

#[cfg(test)]
#[path = "recovery_tests.rs"]
mod tests;
