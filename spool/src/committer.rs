//! Group commit with overlapping rounds.
//!
//! A round takes every pending batch, writes it (one io_uring write per segment, in offset
//! order) and makes it durable with one `fdatasync` per segment it wrote. The next round does
//! not wait for that sync: while fewer than `SpoolConfig::rounds_in_flight` rounds are syncing, the
//! committer takes what was appended meanwhile, writes it and issues its own sync. Before, a
//! record appended just after a round took the batch waited for that round's sync and then for
//! its own round, write and sync; now its round starts at once and its sync runs beside the
//! older one (ext4 folds concurrent syncs of one file into the journal commits already running).
//!
//! Why it stays safe:
//! - Writes are issued one round at a time, each after the previous round's writes completed,
//!   so a segment's bytes are still laid down in ticket order.
//! - A sync covers the writes completed before it was issued, so each round's sync covers its
//!   own writes; but results are taken in round order whichever sync finishes first, and a
//!   round settles only after every older one did. A record is acknowledged only when it and
//!   everything appended before it are durable, as with one round at a time.
//! - A failed round fails every ticket appended until then, rounds in flight behind it
//!   included, whatever their own sync says later (their results are ignored), and moves
//!   appends to a fresh segment.
//! - A crash can now leave a younger round on disk behind an older round's torn or missing
//!   bytes. Neither was acknowledged. Recovery stops at zeros in the newest segment and
//!   resynchronises over a bad frame (logging it as corruption), and keeps a message only with
//!   every chunk intact: it may bring back an unacknowledged message whole, as a crash between
//!   the sync and the 250 already could, never part of one.
use super::{Batch, SpoolShard, Ticket};
use crate::error::{Result, SpoolError};
use crate::segment::{segment_path, SEGMENT_HEADER_LEN};
use crate::storage::SegmentFile;
use crate::Durability;
use futures_lite::FutureExt;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

/// Zeros are written ahead of the data in steps of this many bytes (see [`SpoolShard::zero_ahead`]).
pub const ZERO_AHEAD: u64 = 1 << 20;

/// A round's syncs run as their own task, so the syncs of every round in flight progress
/// while the committer waits on the oldest.
type SyncFuture = Pin<Box<dyn Future<Output = Result<()>>>>;

/// A round whose writes were issued and whose sync may be in flight.
struct Round {
    /// Its tickets: `from..=upto`.
    from: Ticket,
    upto: Ticket,
    /// The segments it wrote (counted in `State::writing` until it finishes).
    segments: Vec<u32>,
    /// Its syncs, or the error of its writes.
    sync: SyncFuture,
}

impl SpoolShard {
    /// The group-commit loop. Runs until [`Self::close`] and everything pending is settled.
    pub async fn run_committer(self: Rc<Self>) {
        let this = &self;
        let depth = this.cfg.rounds_in_flight.max(1);
        let mut flight: VecDeque<Round> = VecDeque::with_capacity(depth);
        loop {
            let listener = this.work.listen();
            // Settle, in order, the rounds whose syncs are done.
            if let Some(front) = flight.front_mut() {
                if let Some(result) = futures_lite::future::poll_once(front.sync.as_mut()).await {
                    let round = flight.pop_front().expect("the front round");
                    this.finish_round(round, result);
                    continue;
                }
            }
            if flight.len() < depth {
                if let Some(round) = this.start_round().await {
                    flight.push_back(round);
                    continue;
                }
            }
            let room = flight.len() < depth;
            let Some(front) = flight.front_mut() else {
                if this.with_state(|st| st.closed) {
                    this.with_state(|st| st.stopped = true);
                    this.round_done.notify(usize::MAX);
                    return;
                }
                listener.await;
                continue;
            };
            // Wait for the oldest round's sync, or for new appends while another round may start.
            let result = if room {
                let sync = async { Some(front.sync.as_mut().await) };
                let work = async {
                    listener.await;
                    None
                };
                match sync.or(work).await {
                    Some(result) => result,
                    None => continue,
                }
            } else {
                drop(listener);
                front.sync.as_mut().await
            };
            let round = flight.pop_front().expect("the front round");
            this.finish_round(round, result);
        }
    }

    /// Take every pending batch and issue its writes; the returned round's future makes them
    /// durable. `None` when nothing is pending.
    async fn start_round(self: &Rc<Self>) -> Option<Round> {
        let (batches, from, upto) = self.with_state(|st| {
            if st.pending.is_empty() {
                return None;
            }
            let batches = std::mem::take(&mut st.pending);
            st.pending_bytes = 0;
            // The first ticket not yet in any round: pending holds every ticket after the last
            // round taken, so it follows that round's `upto`, or `settled` with none in flight.
            let from = st.taken + 1;
            st.taken = st.appended;
            st.writing.extend(batches.iter().map(|b| b.seq));
            Some((batches, from, st.appended))
        })?;
        self.round_records.record(upto + 1 - from);
        let segments: Vec<u32> = batches.iter().map(|b| b.seq).collect();
        let sync: SyncFuture = match self.write_batches(batches).await {
            Ok(files) => Box::pin(glommio::spawn_local(self.clone().sync_files(files))),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        };
        Some(Round { from, upto, segments, sync })
    }

    /// Write each batch at its place, in order; returns each segment written, once.
    async fn write_batches(&self, batches: Vec<Batch>) -> Result<Vec<(u32, Rc<dyn SegmentFile>)>> {
        let mut touched: Vec<(u32, Rc<dyn SegmentFile>)> = Vec::new();
        for mut b in batches {
            let file = self.ensure_segment(b.seq).await?;
            let path = segment_path(&self.core_dir, b.seq);
            let written_to = self.zero_ahead(&mut b);
            file.write_at(b.buf, b.start).await.map_err(|e| SpoolError::from_io(&path, e))?;
            self.with_state(|st| {
                if let Some(s) = st.segments.get_mut(&b.seq) {
                    s.written_to = s.written_to.max(written_to);
                }
            });
            if !touched.iter().any(|(seq, _)| *seq == b.seq) {
                touched.push((b.seq, file));
            }
        }
        Ok(touched)
    }

    /// Extend a batch that writes past what its segment had written so far with zeros up to
    /// the next [`ZERO_AHEAD`] boundary; returns where its write ends. The segment's blocks are
    /// preallocated unwritten, and the first write to an unwritten block changes its extent: a
    /// metadata change, so that round's `fdatasync` also waits for a journal commit. Writing the
    /// zeros ahead pays that once per [`ZERO_AHEAD`] bytes instead of on every round (measured
    /// with `examples/commit_latency.rs`). The zeros lie past every appended record and the
    /// next round writes only after this write completed, so they never cover a record.
    fn zero_ahead(&self, b: &mut Batch) -> u64 {
        let end = b.start + b.buf.len() as u64;
        let written_to = self.with_state(|st| st.segments.get(&b.seq).map_or(0, |s| s.written_to));
        if self.cfg.durability != Durability::Fsync || end <= written_to {
            return end;
        }
        let to = end.next_multiple_of(ZERO_AHEAD).min(self.cfg.segment_size);
        b.buf.resize(b.buf.len() + (to - end) as usize, 0);
        to
    }

    /// Make the writes of one round durable (a no-op without `Fsync` durability).
    async fn sync_files(self: Rc<Self>, files: Vec<(u32, Rc<dyn SegmentFile>)>) -> Result<()> {
        if self.cfg.durability != Durability::Fsync {
            return Ok(());
        }
        let started = std::time::Instant::now();
        for (seq, f) in files {
            f.fdatasync().await.map_err(|e| SpoolError::from_io(segment_path(&self.core_dir, seq), e))?;
        }
        self.fsync_us.record(started.elapsed().as_micros() as u64);
        Ok(())
    }

    /// Take the result of the oldest round in flight: settle its tickets, or fail them and
    /// everything after. A round already failed by an older one only leaves the books.
    fn finish_round(&self, round: Round, result: Result<()>) {
        let superseded = self.with_state(|st| {
            for seq in &round.segments {
                let at = st.writing.iter().position(|s| s == seq).expect("a round's segment is counted as being written");
                st.writing.swap_remove(at);
            }
            st.settled >= round.upto
        });
        let ok = match result {
            _ if superseded => false,
            Ok(()) => {
                self.with_state(|st| st.settled = round.upto);
                true
            }
            Err(e) => {
                self.fail_round(round.from, e);
                false
            }
        };
        self.rounds.set(self.rounds.get() + 1);
        self.round_done.notify(usize::MAX);
        // Only after a good round: on a failing disk, relocating would only feed more
        // failing rounds.
        if ok {
            self.relocate_pinned();
            self.drop_cold_pages();
        }
        self.collect_garbage();
    }

    /// A failed round leaves an unknown tail in its segment: fail it and everything appended
    /// behind it (pending, or in a round in flight), and move appends to a fresh segment so no
    /// record written from now on sits behind the hole. Segment entries stay: the failed
    /// records' references are released against them later.
    fn fail_round(&self, from: Ticket, e: SpoolError) {
        self.failed_rounds.set(self.failed_rounds.get() + 1);
        let mut st = self.state.borrow_mut();
        let to = st.appended;
        st.pending.clear();
        st.pending_bytes = 0;
        st.settled = to;
        st.taken = to;
        st.record_failure(from, to, e.to_string(), e.is_disk_full());
        if !st.relocation_suspended {
            st.relocation_suspended = true;
            tracing::warn!(target: "spool", "core {}: segment relocation suspended until restart after a failed commit round", self.core);
        }
        st.active += 1;
        st.tail = SEGMENT_HEADER_LEN;
        drop(st);
        tracing::warn!(target: "spool", "spool commit failed on core {}: {e}", self.core);
    }
}
