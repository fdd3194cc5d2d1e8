//! One core's spool: segment allocation, the append buffer, and group commit.
//!
//! Appends are synchronous and cheap: a record is framed straight into the pending batch and
//! gets its final location at once. The committer task (`committer.rs`) writes every pending
//! batch with one io_uring write per segment and makes the round durable with one `fdatasync`,
//! then wakes every waiter whose ticket the round covers. Nothing here is `Send`: the shard
//! lives and dies on its core. Writes are issued one round at a time and in offset order, so a
//! crash can only tear what the unacknowledged last round wrote: recovery drops a torn tail and
//! reads past a gap the cut left inside it.
//!
//! Liveness: each segment counts references (message records and body chunks) still needed.
//! A sealed segment with no references is deleted, unless it holds dispositions about a
//! segment that still exists: deleting it would resurrect delivered recipients after a crash.
//! Such a segment is relocated instead (see `relocate.rs`): a checkpoint of the other
//! segment's live messages and copies of their latest records go to the active segment, and
//! once those are durable the segment goes. Without that, one message retried for days would
//! pin every segment written after it.
use crate::error::{Result, SpoolError};
use crate::liveness::{disposition_key, state_key, AboutKey, Liveness, DSN_DONE_KEY, SIGNATURE_KEY};
use crate::record::{
    encode_disposition, encode_dsn_done, encode_frame, encode_message, encode_rcpt_state, encode_signature, frame_len, Disposition, Extent,
    MessageRecord, MsgRef, RcptState, RecordKind, FRAME_HEADER_LEN, SIGNATURE_AT,
};
use crate::recovery::{RecoveredMessage, Recovery};
use crate::segment::{derive_frame_seed, encode_header, segment_path, SegmentMap, SEGMENT_HEADER_LEN};
use crate::stats::{FixedHistogram, HistogramSnapshot};
use crate::storage::{create_dir_durable, DiskStorage, SegmentFile, Storage};
use event_listener::Event;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

#[path = "committer.rs"]
mod committer;
#[path = "relocate.rs"]
mod relocate;

/// Upper bounds of the records-per-round histogram (powers of two up to 4096).
pub const ROUND_RECORDS_BOUNDS: [u64; 13] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];
/// Upper bounds (µs) of the fdatasync-time histogram: 50 µs to 1 s.
pub const FSYNC_US_BOUNDS: [u64; 14] = [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000];

/// Whether a commit round ends with `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every acknowledged record is on stable storage (the only mode for production).
    Fsync,
    /// Records reach the page cache only. For benchmarks; a crash loses acknowledged mail.
    None,
}

/// Spool settings for one core.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The spool root; this core uses `dir/core-N/`.
    pub dir: PathBuf,
    /// Preallocated size of each segment file in bytes.
    pub segment_size: u64,
    /// Commit mode.
    pub durability: Durability,
    /// Appenders wait when this many bytes are pending (bounded memory under overload).
    pub pending_bytes_max: usize,
}

/// A position in the commit order: the record is durable once the round covering it is done.
pub type Ticket = u64;

struct Batch {
    seq: u32,
    start: u64,
    buf: Vec<u8>,
}

/// One segment's bookkeeping. An entry lives until its segment is deleted, including a
/// segment whose creation failed (`map` stays `None`): the references taken on it by the
/// records of the failed round are released against this entry, and only then does it go.
struct SegState {
    file: Option<Rc<dyn SegmentFile>>,
    map: Option<Arc<SegmentMap>>,
    refs: u64,
    /// Segments whose messages this segment records dispositions for.
    disposition_refs: BTreeSet<u32>,
    /// What this segment records about other segments was carried forward; it may go once
    /// the round of this ticket is durable.
    relocated: Option<Ticket>,
    /// Relocating it did not pay when the active segment was this one: planned again only
    /// after a rotation, so a backlog of live state is not re-planned on every round.
    unpaid_at: Option<u32>,
    /// Its resident pages were dropped once it went cold (see [`SegmentMap::drop_resident_pages`]).
    pages_dropped: bool,
}

impl SegState {
    fn new() -> Self {
        SegState { file: None, map: None, refs: 0, disposition_refs: BTreeSet::new(), relocated: None, unpaid_at: None, pages_dropped: false }
    }
}

/// The tickets `from..=` (the map key) of one or more consecutive failed rounds.
struct Failure {
    from: Ticket,
    reason: Rc<str>,
    disk_full: bool,
}

struct State {
    active: u32,
    tail: u64,
    pending: Vec<Batch>,
    pending_bytes: usize,
    /// Segments the round in flight is writing (not deletable, even if unreferenced).
    writing: Vec<u32>,
    appended: Ticket,
    /// Every ticket up to this one belongs to a finished round, durable or failed.
    settled: Ticket,
    /// Failed ticket ranges keyed by their last ticket. Never trimmed (a waiter may ask about
    /// any ticket it holds); consecutive failed rounds merge, so a disk that stays full adds
    /// one entry, not one per round.
    failed: BTreeMap<Ticket, Failure>,
    segments: BTreeMap<u32, SegState>,
    /// Live messages and where the latest records about them are.
    liveness: Liveness,
    /// A round failed: `liveness` may name records that never became durable (the latest
    /// record of a key, or a relocation's copies), so relocating by it could delete the only
    /// durable copy. Relocation stops until a restart rebuilds liveness from the disk.
    relocation_suspended: bool,
    closed: bool,
    /// The committer has returned: no ticket will settle any more.
    stopped: bool,
}

impl State {
    /// The error of `ticket`'s round, if that round failed.
    fn failure(&self, ticket: Ticket) -> Option<SpoolError> {
        let (_, f) = self.failed.range(ticket..).next()?;
        (f.from <= ticket).then(|| SpoolError::CommitFailed { reason: f.reason.to_string(), disk_full: f.disk_full })
    }

    /// Record tickets `from..=to` as failed, merging with the previous failure when adjacent.
    fn record_failure(&mut self, from: Ticket, to: Ticket, reason: String, disk_full: bool) {
        let mut f = Failure { from, reason: reason.into(), disk_full };
        if let Some(last) = self.failed.last_entry() {
            if *last.key() + 1 == from && last.get().disk_full == disk_full {
                f.from = last.get().from;
                f.reason = last.get().reason.clone();
                last.remove();
            }
        }
        self.failed.insert(to, f);
    }
}

/// The spool of one core. Create with [`SpoolShard::open`], then spawn [`SpoolShard::run_committer`].
pub struct SpoolShard {
    core: u16,
    core_dir: PathBuf,
    cfg: SpoolConfig,
    storage: Rc<dyn Storage>,
    state: RefCell<State>,
    work: Event,
    round_done: Event,
    rounds: Cell<u64>,
    /// Segments relocated so far (see `relocate.rs`).
    relocations: Cell<u64>,
    /// Commit rounds that failed so far.
    failed_rounds: Cell<u64>,
    /// Records (appends) made durable per commit round: the group-commit batch size.
    round_records: FixedHistogram,
    /// Time each round's `fdatasync`s took, in microseconds (`Fsync` durability only).
    fsync_us: FixedHistogram,
    /// Random per process: the frame seed of each new segment derives from it.
    frame_key: u64,
}

impl SpoolShard {
    /// Directory of `core` under the spool root.
    pub fn core_dir(root: &std::path::Path, core: u16) -> PathBuf {
        root.join(format!("core-{core}"))
    }

    /// Open a core's spool for appending on the real file system; see [`Self::open_on`].
    pub fn open(core: u16, cfg: SpoolConfig, recovery: Recovery) -> Result<(Rc<Self>, Vec<RecoveredMessage>)> {
        Self::open_on(Rc::new(DiskStorage), core, cfg, recovery)
    }

    /// Open a core's spool on `storage`. `recovery` is what [`Recovery::scan`] found: its
    /// segments are adopted with their maps, and every recovered message's record segment and
    /// body segments are pinned before this returns, so no release or garbage collection can
    /// delete a segment of a message not yet handed out. The returned messages (those with open
    /// recipients, then those that only owe a DSN, with no `pending`) own those pins:
    /// each is released with [`Self::release_message`] once final (or abandoned). New records
    /// go to a fresh segment after the highest sequence seen. Segments nothing pins are
    /// collected at once.
    pub fn open_on(storage: Rc<dyn Storage>, core: u16, cfg: SpoolConfig, recovery: Recovery) -> Result<(Rc<Self>, Vec<RecoveredMessage>)> {
        let core_dir = Self::core_dir(&cfg.dir, core);
        create_dir_durable(&*storage, &core_dir).map_err(|e| SpoolError::from_io(&core_dir, e))?;
        let active = recovery.segments.iter().map(|r| r.map.seq() + 1).max().unwrap_or(1);
        let segments = recovery
            .segments
            .into_iter()
            .map(|r| (r.map.seq(), SegState { map: Some(r.map), disposition_refs: r.disposition_refs, ..SegState::new() }))
            .collect();
        let state = State {
            active,
            tail: SEGMENT_HEADER_LEN,
            pending: Vec::new(),
            pending_bytes: 0,
            writing: Vec::new(),
            appended: 0,
            settled: 0,
            failed: BTreeMap::new(),
            segments,
            liveness: Liveness::new(core),
            relocation_suspended: false,
            closed: false,
            stopped: false,
        };
        let shard = Rc::new(Self {
            core,
            core_dir,
            cfg,
            storage,
            state: RefCell::new(state),
            work: Event::new(),
            round_done: Event::new(),
            rounds: Cell::new(0),
            relocations: Cell::new(0),
            failed_rounds: Cell::new(0),
            round_records: FixedHistogram::new(&ROUND_RECORDS_BOUNDS),
            fsync_us: FixedHistogram::new(&FSYNC_US_BOUNDS),
            frame_key: rand::random(),
        });
        // Messages that still owe a DSN are pinned too: the DSN quotes their headers.
        let messages = shard.pin_recovered(in_spool_order(recovery.messages, recovery.owed_dsn));
        shard.collect_garbage();
        // Recovery read every segment through its map; none of it needs to stay resident.
        for s in shard.state.borrow_mut().segments.values_mut() {
            if let Some(m) = &s.map {
                let _ = m.drop_resident_pages();
            }
        }
        Ok((shard, messages))
    }

    /// Pin the segments of every recovered message; drop (loudly) any that names a segment
    /// recovery did not keep, since it could never be read.
    fn pin_recovered(&self, messages: Vec<RecoveredMessage>) -> Vec<RecoveredMessage> {
        let mut st = self.state.borrow_mut();
        let mut kept = Vec::with_capacity(messages.len());
        for m in messages {
            let mut seqs = m.record.body.iter().map(|e| e.segment).chain([m.msg.segment]);
            if !seqs.all(|seq| st.segments.get(&seq).is_some_and(|s| s.map.is_some())) {
                tracing::error!(target: "spool", "recovered message {} names a missing segment; skipped", m.msg);
                continue;
            }
            for seq in m.record.body.iter().map(|e| e.segment).chain([m.msg.segment]) {
                st.segments.get_mut(&seq).expect("checked above").refs += 1;
            }
            st.liveness.add_message(m.msg);
            for a in &m.about {
                st.liveness.note_about(m.msg, a.key, a.segment, a.offset);
            }
            kept.push(m);
        }
        kept
    }

    /// This shard's core number.
    pub fn core(&self) -> u16 {
        self.core
    }

    /// The configured durability.
    pub fn durability(&self) -> Durability {
        self.cfg.durability
    }

    /// Commit rounds completed so far (each is one fdatasync in `Fsync` mode).
    pub fn rounds(&self) -> u64 {
        self.rounds.get()
    }

    /// Records per commit round and fdatasync time per round (µs), as histograms so far.
    pub fn round_stats(&self) -> (HistogramSnapshot, HistogramSnapshot) {
        (self.round_records.snapshot(), self.fsync_us.snapshot())
    }

    /// Commit rounds that failed so far (write or fdatasync error).
    pub fn failed_rounds(&self) -> u64 {
        self.failed_rounds.get()
    }

    /// Segments relocated so far: their records about older segments carried forward so they
    /// could be deleted.
    pub fn relocations(&self) -> u64 {
        self.relocations.get()
    }

    /// Frame `payload` into the pending batch; returns its segment, frame offset and ticket.
    fn append(&self, kind: RecordKind, payload: &[u8]) -> Result<(u32, u64, Ticket)> {
        let len = frame_len(payload.len());
        let capacity = (self.cfg.segment_size - SEGMENT_HEADER_LEN) as usize;
        if len > capacity {
            return Err(SpoolError::RecordTooLarge { len, capacity });
        }
        let mut st = self.state.borrow_mut();
        if st.closed {
            return Err(SpoolError::Closed);
        }
        if st.tail + len as u64 > self.cfg.segment_size {
            st.active += 1;
            st.tail = SEGMENT_HEADER_LEN;
            drop(st);
            self.collect_garbage();
            st = self.state.borrow_mut();
        }
        let (seq, at) = (st.active, st.tail);
        let seed = derive_frame_seed(self.frame_key, seq);
        st.tail += len as u64;
        st.segments.entry(seq).or_insert_with(SegState::new);
        match st.pending.last_mut() {
            Some(b) if b.seq == seq && b.start + b.buf.len() as u64 == at => encode_frame(seed, kind, payload, &mut b.buf),
            _ => {
                let mut buf = Vec::with_capacity(len.max(64 * 1024));
                encode_frame(seed, kind, payload, &mut buf);
                st.pending.push(Batch { seq, start: at, buf });
            }
        }
        st.pending_bytes += len;
        st.appended += 1;
        let ticket = st.appended;
        drop(st);
        self.work.notify(1);
        Ok((seq, at, ticket))
    }

    /// Wait while the pending batch is over its bound, so a flood of large bodies cannot grow
    /// memory without limit.
    pub async fn wait_for_room(&self) {
        loop {
            let listener = self.round_done.listen();
            if self.state.borrow().pending_bytes <= self.cfg.pending_bytes_max {
                return;
            }
            listener.await;
        }
    }

    /// Append body bytes; the returned extent is pinned (counted live) until released. Keep the
    /// ticket: the message is durable only once this chunk is ([`Self::wait_durable_all`]).
    pub fn append_chunk(&self, data: &[u8]) -> Result<(Extent, Ticket)> {
        let (seq, at, ticket) = self.append(RecordKind::Chunk, data)?;
        self.retain(seq);
        Ok((Extent { segment: seq, offset: at + FRAME_HEADER_LEN as u64, len: data.len() as u32 }, ticket))
    }

    /// Append a message record. The message's own segment is pinned until [`Self::release_message`];
    /// its body extents keep the pins taken by [`Self::append_chunk`].
    pub fn append_message(&self, m: &MessageRecord) -> Result<(MsgRef, Ticket)> {
        let (seq, at, ticket) = self.append(RecordKind::Message, &encode_message(m))?;
        self.retain(seq);
        let msg = MsgRef { core: self.core, segment: seq, offset: at };
        self.state.borrow_mut().liveness.add_message(msg);
        Ok((msg, ticket))
    }

    /// Append a final disposition. No one waits for it: at-least-once allows a redelivery if
    /// the host crashes before the next round makes it durable.
    pub fn append_disposition(&self, d: &Disposition) -> Result<Ticket> {
        self.append_about(d.msg, disposition_key(d.rcpt), RecordKind::Disposition, &encode_disposition(d))
    }

    /// Append a recipient's retry state after a transient failure (the latest in spool order
    /// wins at recovery). Like a disposition, no one waits for it: losing the last one to a
    /// crash only means a retry sooner than planned.
    pub fn append_rcpt_state(&self, s: &RcptState) -> Result<Ticket> {
        self.append_about(s.msg, state_key(s.rcpt), RecordKind::RcptState, &encode_rcpt_state(s))
    }

    /// Append the marker that `msg`'s DSN is spooled. Append it only once the DSN message is
    /// durable: recovery then knows the DSN is not owed. Losing the marker to a crash means a
    /// second DSN, never none.
    pub fn append_dsn_done(&self, msg: MsgRef) -> Result<Ticket> {
        self.append_about(msg, DSN_DONE_KEY, RecordKind::DsnDone, &encode_dsn_done(&msg))
    }

    /// Append `msg`'s DKIM signature lines; returns where the lines lie once written, and the
    /// ticket of the round that writes them (read them only after it settles: until then the
    /// map shows zeros). In the message's own segment it lives as long as the message; in a
    /// later one it is tracked like a retry state ([`SIGNATURE_KEY`]): that segment is kept, or
    /// the record carried forward, while the message lives. Recovery signs again when it is gone.
    pub fn append_signature(&self, msg: MsgRef, lines: &[u8]) -> Result<(Extent, Ticket)> {
        let (seq, at, ticket) = self.append(RecordKind::Signature, &encode_signature(&msg, lines))?;
        if seq != msg.segment {
            self.note_about(msg, SIGNATURE_KEY, seq, at);
        }
        Ok((Extent { segment: seq, offset: at + (FRAME_HEADER_LEN + SIGNATURE_AT) as u64, len: lines.len() as u32 }, ticket))
    }

    /// Append a record about message `msg` (a disposition, a retry state, a DSN marker). Its
    /// segment is kept while `msg`'s segment exists: deleting it first would resurrect what it
    /// records after a crash.
    fn append_about(&self, msg: MsgRef, key: AboutKey, kind: RecordKind, payload: &[u8]) -> Result<Ticket> {
        let (seq, at, ticket) = self.append(kind, payload)?;
        self.note_about(msg, key, seq, at);
        Ok(ticket)
    }

    /// Record that segment `seq` holds, at `at`, the latest record `key` about `msg`.
    fn note_about(&self, msg: MsgRef, key: AboutKey, seq: u32, at: u64) {
        let mut st = self.state.borrow_mut();
        st.liveness.note_about(msg, key, seq, at);
        self.note_segment_ref(&mut st, seq, msg.segment);
    }

    /// Segment `holder` now holds a record about segment `about`.
    fn note_segment_ref(&self, st: &mut State, holder: u32, about: u32) {
        if about != holder {
            if let Some(s) = st.segments.get_mut(&holder) {
                s.disposition_refs.insert(about);
            }
        }
    }

    /// Count one more reference to segment `seq`, which was just appended to.
    fn retain(&self, seq: u32) {
        self.state.borrow_mut().segments.get_mut(&seq).expect("appended to a segment without an entry").refs += 1;
    }

    /// Drop the references a finished (or abandoned) message held: its record and its body.
    /// Each reference must have been taken by an append or by [`Self::open_on`], exactly once.
    pub fn release_message(&self, msg: Option<MsgRef>, body: &[Extent]) {
        // Sessions call this at every DATA start and end: with nothing to release there is
        // nothing to collect either, so skip the scan of every segment.
        if msg.is_none() && body.is_empty() {
            return;
        }
        {
            let mut st = self.state.borrow_mut();
            if let Some(m) = &msg {
                st.liveness.release(m);
            }
            for seq in msg.iter().map(|m| m.segment).chain(body.iter().map(|e| e.segment)) {
                let s = st.segments.get_mut(&seq).expect("released a reference to an unknown segment");
                s.refs = s.refs.checked_sub(1).expect("segment reference released twice");
            }
        }
        self.collect_garbage();
    }

    /// The read-only map of segment `seq`, once it exists on disk.
    pub fn map(&self, seq: u32) -> Option<Arc<SegmentMap>> {
        self.state.borrow().segments.get(&seq).and_then(|s| s.map.clone())
    }

    /// Number of segments currently on disk or being written.
    pub fn segment_count(&self) -> usize {
        self.state.borrow().segments.len()
    }

    /// Delete every sealed, unreferenced segment whose dispositions no longer matter. A
    /// segment whose creation failed has no file: its entry goes once its last reference does.
    pub fn collect_garbage(&self) {
        let mut failed = BTreeSet::new();
        while let Some((seq, has_file)) = self.garbage_victim(&failed) {
            if has_file {
                let path = segment_path(&self.core_dir, seq);
                if let Err(e) = self.storage.remove_file(&path) {
                    // Keep the entry while the file is still there: the segments that record
                    // dispositions about it must outlive it, or a restart would redeliver.
                    tracing::error!(target: "spool", "could not delete spool segment {}: {e}", path.display());
                    failed.insert(seq);
                    continue;
                }
            }
            self.state.borrow_mut().segments.remove(&seq);
        }
    }

    fn garbage_victim(&self, skip: &BTreeSet<u32>) -> Option<(u32, bool)> {
        let st = self.state.borrow();
        let busy: BTreeSet<u32> = st.pending.iter().map(|b| b.seq).chain(st.writing.iter().copied()).collect();
        st.segments
            .iter()
            .find(|(&seq, s)| {
                seq < st.active
                    && !skip.contains(&seq)
                    && s.refs == 0
                    && !busy.contains(&seq)
                    && (s.disposition_refs.iter().all(|r| *r == seq || !st.segments.contains_key(r))
                        || s.relocated.is_some_and(|t| st.settled >= t && st.failure(t).is_none()))
            })
            .map(|(&seq, s)| (seq, s.map.is_some()))
    }

    /// Wait until every record appended so far has settled (durable or failed).
    pub async fn flush(&self) {
        let upto = self.state.borrow().appended;
        loop {
            let listener = self.round_done.listen();
            if self.with_state(|st| st.settled >= upto || st.stopped) {
                return;
            }
            listener.await;
        }
    }

    /// Wait until the record with `ticket` is durable; see [`Self::wait_durable_all`].
    pub async fn wait_durable(&self, ticket: Ticket) -> Result<()> {
        self.wait_durable_all(&[ticket]).await
    }

    /// Wait until every record in `tickets` is durable: a message's record and all its body
    /// chunks. Fails if any of their rounds failed, even when a later round succeeded, and
    /// waits for a round still in flight at shutdown to give its real result.
    pub async fn wait_durable_all(&self, tickets: &[Ticket]) -> Result<()> {
        let last = tickets.iter().copied().max().unwrap_or(0);
        loop {
            let listener = self.round_done.listen();
            {
                let st = self.state.borrow();
                if let Some(e) = tickets.iter().find_map(|t| st.failure(*t)) {
                    return Err(e);
                }
                if st.settled >= last {
                    return Ok(());
                }
                if st.stopped {
                    return Err(SpoolError::Closed);
                }
            }
            listener.await;
        }
    }

    /// Stop accepting appends; the committer flushes what is pending and returns.
    pub fn close(&self) {
        self.state.borrow_mut().closed = true;
        self.work.notify(usize::MAX);
    }

    /// Sealed segments two behind the active one are cold (their deliveries are mostly done):
    /// stop counting their pages in RSS. A segment kept for a few live messages would
    /// otherwise stay resident at full size; the live extents fault back in when read.
    fn drop_cold_pages(&self) {
        let mut st = self.state.borrow_mut();
        let active = st.active;
        for (seq, s) in st.segments.iter_mut().filter(|(seq, s)| **seq + 2 <= active && !s.pages_dropped) {
            s.pages_dropped = true;
            if let Some(Err(e)) = s.map.as_ref().map(|m| m.drop_resident_pages()) {
                tracing::debug!(target: "spool", "segment {seq}: madvise(DONTNEED) failed: {e}");
            }
        }
    }

    /// The open file of segment `seq`, creating and preallocating it on first use.
    async fn ensure_segment(&self, seq: u32) -> Result<Rc<dyn SegmentFile>> {
        if let Some(f) = self.state.borrow().segments.get(&seq).and_then(|s| s.file.clone()) {
            return Ok(f);
        }
        let path = segment_path(&self.core_dir, seq);
        let (file, map) = match self.create_segment(seq, &path).await {
            Ok(v) => v,
            Err(e) => {
                let _ = self.storage.remove_file(&path);
                return Err(e);
            }
        };
        let mut st = self.state.borrow_mut();
        let s = st.segments.entry(seq).or_insert_with(SegState::new);
        s.file = Some(file.clone());
        s.map = Some(map);
        // Only the active segment keeps its write handle; older ones are sealed.
        let active = st.active;
        for (&other, s) in st.segments.iter_mut() {
            if other < seq && other != active {
                s.file = None;
            }
        }
        Ok(file)
    }

    async fn create_segment(&self, seq: u32, path: &std::path::Path) -> Result<(Rc<dyn SegmentFile>, Arc<SegmentMap>)> {
        let io = |e: std::io::Error| SpoolError::from_io(path, e);
        let file = self.storage.create_file(path, self.cfg.segment_size).await.map_err(io)?;
        file.write_at(encode_header(self.core, seq, self.cfg.segment_size, derive_frame_seed(self.frame_key, seq)), 0).await.map_err(io)?;
        if self.cfg.durability == Durability::Fsync {
            file.fdatasync().await.map_err(io)?;
            // The new directory entry must survive a crash too.
            self.storage.sync_dir_async(&self.core_dir).await.map_err(|e| SpoolError::from_io(&self.core_dir, e))?;
        }
        let map = Arc::new(file.map(seq, path)?);
        Ok((file, map))
    }
}

/// The recovered messages with work left and those that only owe a DSN, merged in spool order
/// (segment, then offset), so each segment's liveness slots are appended at its end instead of
/// inserted in the middle: an O(n) shift each, quadratic after a crash during a mass bounce.
fn in_spool_order(mut messages: Vec<RecoveredMessage>, owed_dsn: Vec<RecoveredMessage>) -> Vec<RecoveredMessage> {
    messages.extend(owed_dsn);
    messages.sort_unstable_by_key(|m| m.msg);
    messages
}

#[cfg(test)]
mod order_tests {
    use super::*;

    fn rec(segment: u32, offset: u64) -> RecoveredMessage {
        let msg = MsgRef { core: 0, segment, offset };
        RecoveredMessage { msg, record: MessageRecord::default(), pending: vec![], states: vec![], failed: vec![], about: vec![], signature: None }
    }

    #[test]
    fn owed_dsns_are_merged_into_spool_order() {
        let queued = vec![rec(1, 64), rec(1, 512), rec(2, 64)];
        let owed = vec![rec(1, 128), rec(2, 32), rec(3, 64)];
        let got: Vec<(u32, u64)> = in_spool_order(queued, owed).iter().map(|m| (m.msg.segment, m.msg.offset)).collect();
        assert_eq!(got, vec![(1, 64), (1, 128), (1, 512), (2, 32), (2, 64), (3, 64)]);
    }
}
