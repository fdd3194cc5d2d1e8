//! Group commit, one round at a time.
//!
//! A round takes every pending batch, writes it (one io_uring write per segment, in offset
//! order) and makes it durable with one `fdatasync` per segment it wrote, then wakes every
//! waiter. Records appended meanwhile wait for the next round, which starts when this one is
//! settled.
//!
//! Why not overlap rounds (write and sync round N+1 while round N's sync runs): it was built
//! and measured in the fourteenth session (perf/RESULTS.md). Rounds syncing one file share its
//! writeback-error state, so an older round's sync could return Ok after a younger one consumed
//! the EIO and the older round's pages were lost; each round in flight would need its own file
//! description. It also raised the accept latency in the relay bench on this disk. (Its other
//! hazard, two recoveries disagreeing about frames after a gap, is gone: recovery now reads
//! past zeros in every segment.) `tests/one_round_at_a_time.rs` and the simulator's count of
//! syncs in flight guard it.
use super::{Batch, SpoolShard, Ticket};
use crate::error::{Result, SpoolError};
use crate::segment::{segment_path, SEGMENT_HEADER_LEN};
use crate::storage::SegmentFile;
use crate::Durability;
use std::rc::Rc;

impl SpoolShard {
    /// The group-commit loop. Runs until [`Self::close`] and everything pending is settled.
    pub async fn run_committer(self: Rc<Self>) {
        loop {
            let listener = self.work.listen();
            let Some((batches, from, upto)) = self.take_pending() else {
                if self.with_state(|st| st.closed) {
                    self.with_state(|st| st.stopped = true);
                    self.round_done.notify(usize::MAX);
                    return;
                }
                listener.await;
                continue;
            };
            drop(listener);
            self.round_records.record(upto + 1 - from);
            let result = match self.write_batches(batches).await {
                Ok(files) => self.sync_files(files).await,
                Err(e) => Err(e),
            };
            self.finish_round(from, upto, result);
        }
    }

    /// Take every pending batch for a round: the batches and the round's tickets `from..=upto`.
    /// `None` when nothing is pending.
    fn take_pending(&self) -> Option<(Vec<Batch>, Ticket, Ticket)> {
        self.with_state(|st| {
            if st.pending.is_empty() {
                return None;
            }
            let batches = std::mem::take(&mut st.pending);
            st.pending_bytes = 0;
            st.writing = batches.iter().map(|b| b.seq).collect();
            Some((batches, st.settled + 1, st.appended))
        })
    }

    /// Write each batch at its place, in order; returns each segment written, once.
    async fn write_batches(&self, batches: Vec<Batch>) -> Result<Vec<(u32, Rc<dyn SegmentFile>)>> {
        let mut touched: Vec<(u32, Rc<dyn SegmentFile>)> = Vec::new();
        for b in batches {
            let file = self.ensure_segment(b.seq).await?;
            let path = segment_path(&self.core_dir, b.seq);
            file.write_at(b.buf, b.start).await.map_err(|e| SpoolError::from_io(&path, e))?;
            if !touched.iter().any(|(seq, _)| *seq == b.seq) {
                touched.push((b.seq, file));
            }
        }
        Ok(touched)
    }

    /// Make the writes of one round durable (a no-op without `Fsync` durability).
    async fn sync_files(&self, files: Vec<(u32, Rc<dyn SegmentFile>)>) -> Result<()> {
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

    /// Settle the round's tickets `from..=upto`, or fail them and everything appended since.
    fn finish_round(&self, from: Ticket, upto: Ticket, result: Result<()>) {
        let ok = match result {
            Ok(()) => {
                self.with_state(|st| st.settled = upto);
                true
            }
            Err(e) => {
                self.fail_round(from, e);
                false
            }
        };
        self.with_state(|st| st.writing.clear());
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
    /// behind it, and move appends to a fresh segment so no later record sits behind the hole. Segment entries stay: the failed
    /// records' references are released against them later.
    fn fail_round(&self, from: Ticket, e: SpoolError) {
        self.failed_rounds.set(self.failed_rounds.get() + 1);
        let mut st = self.state.borrow_mut();
        let to = st.appended;
        st.pending.clear();
        st.pending_bytes = 0;
        st.settled = to;
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
