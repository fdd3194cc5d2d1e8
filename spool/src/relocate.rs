//! Relocation: freeing a segment that only records about other, still existing segments.
//!
//! A sealed segment with no live message or body can still not be deleted while it holds
//! records (dispositions, retry states, DSN markers) about messages of an older segment that
//! exists: recovery would then see those messages without their records. Under steady traffic
//! every segment holds such records about the one before, so one long-retried message would
//! pin everything written after it. Relocating segment X instead writes, for each segment Y it
//! holds records about, a [`SegmentCheckpoint`] of Y's live messages (every other message of Y
//! is final) plus copies of the latest records about Y's live messages that sit in X, all into
//! the active segment. X goes once that round is durable; a crash before leaves X in place.
//!
//! Relocation copies only when it pays: at most a quarter of a segment per segment freed, so
//! copies can never keep the spool rotating by themselves (each rotation frees one segment and
//! writes at most a quarter of one). A segment dense with live state is simply kept.
use super::{SpoolShard, State};
use crate::error::{Result, SpoolError};
use crate::liveness::AboutLoc;
use crate::record::{encode_checkpoint, frame_len, scan_frame, FrameScan, MsgRef, RecordKind, SegmentCheckpoint};
use crate::segment::{decode_header, SegmentMap};
use std::collections::BTreeSet;
use std::sync::Arc;

/// A sealed segment is relocated only this many segments behind the active one: the records
/// in the newest sealed segment usually become moot on their own as deliveries finish.
const RELOCATE_LAG: u32 = 2;

/// For one segment Y the relocated segment holds records about: Y, Y's live offsets and the
/// records about Y's live messages to copy.
type Target = (u32, Vec<u64>, Vec<(MsgRef, AboutLoc)>);

/// What relocating one segment writes.
struct Plan {
    map: Arc<SegmentMap>,
    seed: u32,
    targets: Vec<Target>,
}

impl SpoolShard {
    /// Relocate every segment that is garbage but for its records about other segments, when
    /// it pays. Called by the committer after a good round; a failed append (disk full,
    /// closing) stops it until a later round.
    pub(super) fn relocate_pinned(&self) {
        if self.with_state(|st| st.relocation_suspended) {
            return;
        }
        for x in self.relocation_candidates() {
            let Some(plan) = self.plan(x) else {
                self.with_state(|st| {
                    let active = st.active;
                    if let Some(s) = st.segments.get_mut(&x) {
                        s.unpaid_at = Some(active);
                    }
                });
                continue;
            };
            if let Err(e) = self.relocate(x, plan) {
                tracing::debug!(target: "spool", "relocating segment {x} of core {} deferred: {e}", self.core);
                return;
            }
        }
    }

    /// Sealed, unreferenced, not being written, not already relocated, holding records about a
    /// segment that still exists, and not found unpaying since the last rotation.
    fn relocation_candidates(&self) -> Vec<u32> {
        let st = self.state.borrow();
        let busy: BTreeSet<u32> = st.pending.iter().map(|b| b.seq).chain(st.writing.iter().copied()).collect();
        st.segments
            .iter()
            .filter(|(&seq, s)| {
                seq.saturating_add(RELOCATE_LAG) <= st.active
                    && s.refs == 0
                    && s.relocated.is_none()
                    && s.unpaid_at != Some(st.active)
                    && s.map.is_some()
                    && !busy.contains(&seq)
                    && s.disposition_refs.iter().any(|y| *y != seq && st.segments.contains_key(y))
            })
            .map(|(&seq, _)| seq)
            .collect()
    }

    /// What relocating `x` would write, if that is at most a quarter of a segment.
    fn plan(&self, x: u32) -> Option<Plan> {
        let st = self.state.borrow();
        let s = st.segments.get(&x)?;
        let map = s.map.clone()?;
        let seed = decode_header(map.bytes())?.frame_seed;
        let mut cost = 0usize;
        let mut targets = Vec::new();
        for &y in s.disposition_refs.iter().filter(|y| **y != x && st.segments.contains_key(y)) {
            let live = st.liveness.live_in(y);
            let copies = st.liveness.about_held_in(y, x);
            cost += frame_len(8 + 8 * live.len());
            cost += copies.iter().map(|(_, loc)| frame_at(&map, seed, loc.offset).map_or(0, |(_, p)| frame_len(p.len()))).sum::<usize>();
            targets.push((y, live, copies));
        }
        (cost as u64 <= self.cfg.segment_size / 4).then_some(Plan { map, seed, targets })
    }

    /// Write `plan`'s checkpoints and copies and mark `x` relocated as of their last ticket.
    fn relocate(&self, x: u32, plan: Plan) -> Result<()> {
        let mut last = 0;
        for (y, live, copies) in plan.targets {
            let (seq, _, t) = self.append(RecordKind::Checkpoint, &encode_checkpoint(&SegmentCheckpoint { segment: y, live }))?;
            self.with_state(|st| self.note_segment_ref(st, seq, y));
            last = t;
            for (msg, loc) in copies {
                // A record whose round failed may not read back: it was never durable, so
                // there is nothing to carry (at worst a retry comes sooner than planned).
                let Some((kind, payload)) = frame_at(&plan.map, plan.seed, loc.offset) else { continue };
                let (seq, at, t) = self.append(kind, payload)?;
                self.note_about(msg, loc.key, seq, at);
                last = t;
            }
        }
        match self.state.borrow_mut().segments.get_mut(&x) {
            Some(s) => s.relocated = Some(last),
            None => return Err(SpoolError::Corrupt("relocated segment vanished")),
        }
        self.relocations.set(self.relocations.get() + 1);
        Ok(())
    }

    pub(super) fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.borrow_mut())
    }
}

/// The kind and payload of the valid frame at `offset` of a segment, if there is one.
fn frame_at(map: &SegmentMap, seed: u32, offset: u64) -> Option<(RecordKind, &[u8])> {
    let bytes = map.bytes().get(offset as usize..)?;
    match scan_frame(bytes, seed) {
        FrameScan::Frame(kind, payload, _) => Some((kind, payload)),
        _ => None,
    }
}
