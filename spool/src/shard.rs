//! One core's spool: segment allocation, the append buffer, and group commit.
//!
//! Appends are synchronous and cheap: a record is framed straight into the pending batch and
//! gets its final location at once. The committer task writes every pending batch with one
//! io_uring write per segment and makes the round durable with one `fdatasync`, then wakes
//! every waiter whose ticket the round covers. Nothing here is `Send`: the shard lives and dies
//! on its core. Writes are issued one round at a time and in offset order, so a crash can only
//! tear the tail of a segment, which recovery drops.
//!
//! Liveness: each segment counts references (message records and body chunks) still needed.
//! A sealed segment with no references is deleted, unless it holds dispositions about a
//! segment that still exists: deleting it would resurrect delivered recipients after a crash.
use crate::error::{Result, SpoolError};
use crate::record::{
    encode_disposition, encode_dsn_done, encode_frame, encode_message, encode_rcpt_state, frame_len, Disposition,
    Extent, MessageRecord, MsgRef, RcptState, RecordKind, FRAME_HEADER_LEN,
};
use crate::recovery::RecoveredSegment;
use crate::segment::{derive_frame_seed, encode_header, segment_path, SegmentMap, SEGMENT_HEADER_LEN};
use event_listener::Event;
use glommio::io::{BufferedFile, OpenOptions};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

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
    pub max_pending_bytes: usize,
}

/// A position in the commit order: the record is durable once the round covering it is done.
pub type Ticket = u64;

struct Batch {
    seq: u32,
    start: u64,
    buf: Vec<u8>,
}

struct SegState {
    file: Option<Rc<BufferedFile>>,
    map: Option<Arc<SegmentMap>>,
    refs: u64,
    /// Segments whose messages this segment records dispositions for.
    disposition_refs: BTreeSet<u32>,
}

struct State {
    active: u32,
    tail: u64,
    pending: Vec<Batch>,
    pending_bytes: usize,
    appended: Ticket,
    durable: Ticket,
    failed: Vec<(Ticket, Ticket, String, bool)>,
    segments: BTreeMap<u32, SegState>,
    closed: bool,
}

/// The spool of one core. Create with [`SpoolShard::open`], then spawn [`SpoolShard::run_committer`].
pub struct SpoolShard {
    core: u16,
    core_dir: PathBuf,
    cfg: SpoolConfig,
    state: RefCell<State>,
    work: Event,
    round_done: Event,
    rounds: Cell<u64>,
    /// Random per process: the frame seed of each new segment derives from it.
    frame_key: u64,
}

impl SpoolShard {
    /// Directory of `core` under the spool root.
    pub fn core_dir(root: &std::path::Path, core: u16) -> PathBuf {
        root.join(format!("core-{core}"))
    }

    /// Open a core's spool for appending. `recovered` are the segments recovery kept, with their
    /// maps; new records go to a fresh segment after the highest sequence seen.
    pub fn open(core: u16, cfg: SpoolConfig, recovered: Vec<RecoveredSegment>) -> Result<Rc<Self>> {
        let core_dir = Self::core_dir(&cfg.dir, core);
        std::fs::create_dir_all(&core_dir).map_err(|e| SpoolError::from_io(&core_dir, e))?;
        let active = recovered.iter().map(|r| r.map.seq() + 1).max().unwrap_or(1);
        let segments = recovered
            .into_iter()
            .map(|r| {
                let state = SegState { file: None, map: Some(r.map), refs: 0, disposition_refs: r.disposition_refs };
                (state.map.as_ref().unwrap().seq(), state)
            })
            .collect();
        Ok(Rc::new(Self {
            core,
            core_dir,
            cfg,
            state: RefCell::new(State {
                active,
                tail: SEGMENT_HEADER_LEN,
                pending: Vec::new(),
                pending_bytes: 0,
                appended: 0,
                durable: 0,
                failed: Vec::new(),
                segments,
                closed: false,
            }),
            work: Event::new(),
            round_done: Event::new(),
            rounds: Cell::new(0),
            frame_key: rand::random(),
        }))
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
        st.segments
            .entry(seq)
            .or_insert_with(|| SegState { file: None, map: None, refs: 0, disposition_refs: BTreeSet::new() });
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
            if self.state.borrow().pending_bytes <= self.cfg.max_pending_bytes {
                return;
            }
            listener.await;
        }
    }

    /// Append body bytes; the returned extent is pinned (counted live) until released.
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
        Ok((MsgRef { core: self.core, segment: seq, offset: at }, ticket))
    }

    /// Append a final disposition. No one waits for it: at-least-once allows a redelivery if
    /// the host crashes before the next round makes it durable.
    pub fn append_disposition(&self, d: &Disposition) -> Result<Ticket> {
        let (seq, _, ticket) = self.append(RecordKind::Disposition, &encode_disposition(d))?;
        if d.msg.segment != seq {
            if let Some(s) = self.state.borrow_mut().segments.get_mut(&seq) {
                s.disposition_refs.insert(d.msg.segment);
            }
        }
        Ok(ticket)
    }

    /// Append a recipient's retry state after a transient failure (the latest in spool order
    /// wins at recovery). Like a disposition, no one waits for it: losing the last one to a
    /// crash only means a retry sooner than planned.
    pub fn append_rcpt_state(&self, s: &RcptState) -> Result<Ticket> {
        self.append_about(s.msg, RecordKind::RcptState, &encode_rcpt_state(s))
    }

    /// Append the marker that `msg`'s DSN is spooled. Append it only once the DSN message is
    /// durable: recovery then knows the DSN is not owed. Losing the marker to a crash means a
    /// second DSN, never none.
    pub fn append_dsn_done(&self, msg: MsgRef) -> Result<Ticket> {
        self.append_about(msg, RecordKind::DsnDone, &encode_dsn_done(&msg))
    }

    /// Append a record about message `msg`, with the garbage-collection guard of
    /// [`Self::append_disposition`]: its segment is kept while `msg`'s segment exists.
    fn append_about(&self, msg: MsgRef, kind: RecordKind, payload: &[u8]) -> Result<Ticket> {
        let (seq, _, ticket) = self.append(kind, payload)?;
        if msg.segment != seq {
            if let Some(s) = self.state.borrow_mut().segments.get_mut(&seq) {
                s.disposition_refs.insert(msg.segment);
            }
        }
        Ok(ticket)
    }

    /// Count one more reference to segment `seq` (used by recovery to re-pin live messages).
    pub fn retain(&self, seq: u32) {
        if let Some(s) = self.state.borrow_mut().segments.get_mut(&seq) {
            s.refs += 1;
        }
    }

    /// Drop the references a finished (or abandoned) message held: its record and its body.
    pub fn release_message(&self, msg: Option<MsgRef>, body: &[Extent]) {
        // Sessions call this at every DATA start and end: with nothing to release there is
        // nothing to collect either, so skip the scan of every segment.
        if msg.is_none() && body.is_empty() {
            return;
        }
        {
            let mut st = self.state.borrow_mut();
            for seq in msg.iter().map(|m| m.segment).chain(body.iter().map(|e| e.segment)) {
                if let Some(s) = st.segments.get_mut(&seq) {
                    s.refs = s.refs.checked_sub(1).expect("segment reference released twice");
                }
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

    /// Delete every sealed, unreferenced segment whose dispositions no longer matter.
    pub fn collect_garbage(&self) {
        loop {
            let victim = {
                let st = self.state.borrow();
                let pending: BTreeSet<u32> = st.pending.iter().map(|b| b.seq).collect();
                st.segments
                    .iter()
                    .find(|(&seq, s)| {
                        seq != st.active
                            && s.refs == 0
                            && s.map.is_some()
                            && !pending.contains(&seq)
                            && s.disposition_refs.iter().all(|r| *r == seq || !st.segments.contains_key(r))
                    })
                    .map(|(&seq, _)| seq)
            };
            let Some(seq) = victim else { return };
            self.state.borrow_mut().segments.remove(&seq);
            let path = segment_path(&self.core_dir, seq);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(target: "spool", "could not delete spool segment {}: {e}", path.display());
            }
        }
    }

    /// Wait until the record with `ticket` is durable (or its round failed).
    pub async fn wait_durable(&self, ticket: Ticket) -> Result<()> {
        loop {
            let listener = self.round_done.listen();
            {
                let st = self.state.borrow();
                if let Some((_, _, reason, disk_full)) = st.failed.iter().find(|(a, b, _, _)| (*a..=*b).contains(&ticket)) {
                    return Err(SpoolError::CommitFailed { reason: reason.clone(), disk_full: *disk_full });
                }
                if st.durable >= ticket {
                    return Ok(());
                }
                if st.closed && st.pending.is_empty() {
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

    /// The group-commit loop. Runs until [`Self::close`] and everything pending is durable.
    pub async fn run_committer(self: Rc<Self>) {
        loop {
            let listener = self.work.listen();
            let (batches, upto, closed) = {
                let mut st = self.state.borrow_mut();
                let batches = std::mem::take(&mut st.pending);
                st.pending_bytes = 0;
                (batches, st.appended, st.closed)
            };
            if batches.is_empty() {
                if closed {
                    self.round_done.notify(usize::MAX);
                    return;
                }
                listener.await;
                continue;
            }
            drop(listener);
            let from = self.state.borrow().durable + 1;
            match self.write_round(batches).await {
                Ok(()) => self.state.borrow_mut().durable = upto,
                Err(e) => self.fail_round(from, e),
            }
            self.rounds.set(self.rounds.get() + 1);
            self.round_done.notify(usize::MAX);
            self.collect_garbage();
        }
    }

    /// A failed round leaves an unknown tail in its segment: fail it and everything queued behind
    /// it, and move appends to a fresh segment so no later record sits behind a hole.
    fn fail_round(&self, from: Ticket, e: SpoolError) {
        let mut st = self.state.borrow_mut();
        let to = st.appended;
        st.pending.clear();
        st.pending_bytes = 0;
        st.durable = to;
        st.failed.push((from, to, e.to_string(), e.is_disk_full()));
        if st.failed.len() > 64 {
            st.failed.remove(0);
        }
        let broken = st.active;
        st.active += 1;
        st.tail = SEGMENT_HEADER_LEN;
        if st.segments.get(&broken).is_some_and(|s| s.map.is_none()) {
            st.segments.remove(&broken);
        }
        drop(st);
        tracing::warn!(target: "spool", "spool commit failed on core {}: {e}", self.core);
    }

    async fn write_round(&self, batches: Vec<Batch>) -> Result<()> {
        let mut touched: Vec<Rc<BufferedFile>> = Vec::new();
        for b in batches {
            let file = self.ensure_segment(b.seq).await?;
            let path = segment_path(&self.core_dir, b.seq);
            write_all_at(&file, b.buf, b.start).await.map_err(|e| SpoolError::from_io(&path, e))?;
            if !touched.iter().any(|f| Rc::ptr_eq(f, &file)) {
                touched.push(file);
            }
        }
        if self.cfg.durability == Durability::Fsync {
            for f in touched {
                f.fdatasync().await.map_err(|e| SpoolError::from_io(&self.core_dir, e.into()))?;
            }
        }
        Ok(())
    }

    /// The open file of segment `seq`, creating and preallocating it on first use.
    async fn ensure_segment(&self, seq: u32) -> Result<Rc<BufferedFile>> {
        if let Some(f) = self.state.borrow().segments.get(&seq).and_then(|s| s.file.clone()) {
            return Ok(f);
        }
        let path = segment_path(&self.core_dir, seq);
        let created = self.create_segment(seq, &path).await;
        let (file, map) = match created {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        let file = Rc::new(file);
        let mut st = self.state.borrow_mut();
        let s = st
            .segments
            .entry(seq)
            .or_insert_with(|| SegState { file: None, map: None, refs: 0, disposition_refs: BTreeSet::new() });
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

    async fn create_segment(&self, seq: u32, path: &std::path::Path) -> Result<(BufferedFile, Arc<SegmentMap>)> {
        let io = |e: glommio::GlommioError<()>| SpoolError::from_io(path, e.into());
        let file = OpenOptions::new().read(true).write(true).create_new(true).buffered_open(path).await.map_err(io)?;
        file.pre_allocate(self.cfg.segment_size, false).await.map_err(io)?;
        write_all_at(&file, encode_header(self.core, seq, self.cfg.segment_size, derive_frame_seed(self.frame_key, seq)), 0)
            .await
            .map_err(|e| SpoolError::from_io(path, e))?;
        if self.cfg.durability == Durability::Fsync {
            file.fdatasync().await.map_err(io)?;
            // The new directory entry must survive a crash too.
            std::fs::File::open(&self.core_dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| SpoolError::from_io(&self.core_dir, e))?;
        }
        let map = Arc::new(SegmentMap::map(seq, path.to_path_buf(), &file)?);
        Ok((file, map))
    }
}

/// Write a whole buffer at `pos`. The buffer moves into the kernel's hands (no copy); a short
/// write into a preallocated segment only happens when the device is out of space, and the
/// round then fails as a whole.
async fn write_all_at(file: &BufferedFile, buf: Vec<u8>, pos: u64) -> std::io::Result<()> {
    let len = buf.len();
    let n = file.write_at(buf, pos).await.map_err(std::io::Error::from)?;
    if n == len {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
    }
}
