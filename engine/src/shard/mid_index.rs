//! The history's Message-ID index: which live or recently finished messages of this core
//! carried a Message-ID, found by a hash of the id (`ringctl msg <Message-ID>`).
//!
//! Why not a hash map: an entry is written for every message and read only by an operator's
//! look-up, and a map keyed by the 64-bit hash paid its table's load on top of its 16-byte
//! entries: 22 bytes a message at 100,000 per core, 36 at 500,000 (a table doubles to 2^20
//! buckets past 458,752 entries), the largest part left of the daemon's heap per queued
//! recipient with a million queued (issue 9 item 4). Here an entry is 8 bytes, kept per spool
//! segment as the ledger's are: the hash cut to 32 bits and the record's offset.
//!
//! - The newest segment's entries stay in offset order (messages come in append order: an
//!   entry is pushed at the end); a look-up scans them, a removal finds its entry by offset.
//! - A segment other than the newest is complete once messages of another segment come (a
//!   later segment began, or recovery moved on to its next one): its entries are sorted by
//!   (hash, offset) and its spare capacity given back; a look-up or removal is then a binary
//!   search. Only the newest segment and the one being filled are scanned by a look-up.
//! - A removed entry is marked dead in place (the top bit of its offset) and the dead are
//!   dropped once they are half a segment's entries.
//!
//! A 32-bit hash is not a Message-ID: every hit is a candidate the caller checks against the
//! message's real Message-ID, newest first. Several messages may carry one id (a platform
//! sending again): each keeps its own entry, so the newest that matches is found.
use ringpost_spool::MsgRef;
use std::collections::HashMap;

/// Marks a removed entry's offset.
const DEAD: u32 = 1 << 31;

/// One entry: the hash's top 32 bits and the message record's offset (below [`DEAD`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    hash: u32,
    offset: u32,
}

impl Entry {
    fn at(&self) -> u32 {
        self.offset & !DEAD
    }

    fn live(&self) -> bool {
        self.offset & DEAD == 0
    }

    /// The order of a sealed segment.
    fn by_hash(&self) -> (u32, u32) {
        (self.hash, self.at())
    }
}

/// The entries of one spool segment.
#[derive(Debug, Default)]
struct Segment {
    entries: Vec<Entry>,
    /// Sorted by (hash, offset) (a complete segment), else by offset (the newest one).
    sealed: bool,
    dead: usize,
}

impl Segment {
    /// Where the entry (`hash`, `offset`) is or would go; in a segment not yet sorted, where
    /// the entry at `offset` is (one message per offset), whatever its hash.
    fn find(&self, hash: u32, offset: u32) -> Result<usize, usize> {
        if self.sealed {
            return self.entries.binary_search_by_key(&(hash, offset), Entry::by_hash);
        }
        match self.entries.last() {
            Some(e) if e.at() < offset => Err(self.entries.len()),
            _ => self.entries.binary_search_by_key(&offset, Entry::at),
        }
    }

    /// Offsets of live entries with `hash`.
    fn hits(&self, hash: u32) -> impl Iterator<Item = u32> + '_ {
        let range = if self.sealed {
            let from = self.entries.partition_point(|e| e.hash < hash);
            let to = from + self.entries[from..].partition_point(|e| e.hash == hash);
            from..to
        } else {
            0..self.entries.len()
        };
        self.entries[range].iter().filter(move |e| e.hash == hash && e.live()).map(Entry::at)
    }

    /// Sort by (hash, offset) and give back the spare capacity: no entry comes after this but
    /// for a straggler.
    fn seal(&mut self) {
        if !self.sealed {
            self.entries.sort_unstable_by_key(Entry::by_hash);
            self.entries.shrink_to_fit();
            self.sealed = true;
        }
    }

    /// Drop the dead once they are half the entries, and give back spare capacity.
    fn compact(&mut self) {
        if self.dead * 2 > self.entries.len() {
            self.entries.retain(Entry::live);
            self.dead = 0;
            if self.entries.capacity() > 2 * self.entries.len() {
                self.entries.shrink_to_fit();
            }
        }
    }
}

/// Message-ID hashes of one core's messages, by spool segment.
#[derive(Debug, Default)]
pub struct MidIndex {
    segments: HashMap<(u16, u32), Segment>,
    /// The highest segment a message came from.
    newest: Option<(u16, u32)>,
    /// The segment the last message came from.
    current: Option<(u16, u32)>,
    /// Messages whose offset does not fit 31 bits (a segment past 2 GiB), by whole key.
    wide: HashMap<u64, Vec<MsgRef>>,
}

impl MidIndex {
    /// Index message `id` under `key` (a 64-bit hash of its Message-ID).
    pub fn insert(&mut self, key: u64, id: MsgRef) {
        let Some(offset) = narrow(id.offset) else {
            let ids = self.wide.entry(key).or_default();
            if !ids.contains(&id) {
                ids.push(id);
            }
            return;
        };
        let seg_key = (id.core, id.segment);
        if self.newest.is_none_or(|n| seg_key > n) {
            if let Some(seg) = self.newest.and_then(|n| self.segments.get_mut(&n)) {
                seg.seal();
            }
            self.newest = Some(seg_key);
        }
        if self.current != Some(seg_key) {
            // Moving off a segment that is not the newest (recovery going on to its next one
            // after a new message began a later segment): it is complete too.
            if let Some(seg) = self.current.filter(|c| Some(*c) != self.newest).and_then(|c| self.segments.get_mut(&c)) {
                seg.seal();
            }
            self.current = Some(seg_key);
        }
        let seg = self.segments.entry(seg_key).or_default();
        if seg.sealed {
            // A straggler into a complete segment: grow by one, not double.
            seg.entries.reserve_exact(1);
        }
        let hash = top(key);
        let entry = Entry { hash, offset };
        match seg.find(hash, offset) {
            Err(i) => seg.entries.insert(i, entry),
            Ok(i) if !seg.entries[i].live() => {
                seg.entries[i] = entry;
                seg.dead -= 1;
            }
            // Indexed already: the same message admitted twice (one message per offset, and
            // its Message-ID is read from its own body, so the hash is the same).
            Ok(i) => debug_assert_eq!(seg.entries[i].hash, hash, "offset {offset} indexed under another hash"),
        }
    }

    /// Messages indexed under `key`, newest first: candidates, each to be checked against
    /// its real Message-ID (32 bits of hash match by chance about once in four billion).
    pub fn candidates(&self, key: u64) -> Vec<MsgRef> {
        let hash = top(key);
        let mut out: Vec<MsgRef> = self
            .segments
            .iter()
            .flat_map(|(&(core, segment), seg)| seg.hits(hash).map(move |o| MsgRef { core, segment, offset: u64::from(o) }))
            .chain(self.wide.get(&key).into_iter().flatten().copied())
            .collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        out
    }

    /// Forget message `id`'s entry under `key`.
    pub fn remove(&mut self, key: u64, id: MsgRef) {
        let Some(offset) = narrow(id.offset) else {
            if let Some(ids) = self.wide.get_mut(&key) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    self.wide.remove(&key);
                }
            }
            return;
        };
        let seg_key = (id.core, id.segment);
        let Some(seg) = self.segments.get_mut(&seg_key) else { return };
        let Ok(i) = seg.find(top(key), offset) else { return };
        // Unsealed, the offset alone found it: it must also be this key's.
        if !seg.entries[i].live() || seg.entries[i].hash != top(key) {
            return;
        }
        seg.entries[i].offset |= DEAD;
        seg.dead += 1;
        if seg.dead == seg.entries.len() {
            self.segments.remove(&seg_key);
        } else {
            seg.compact();
        }
    }

    /// Live entries (tests).
    #[cfg(test)]
    fn live_entries(&self) -> usize {
        self.segments.values().map(|s| s.entries.len() - s.dead).sum::<usize>() + self.wide.values().map(Vec::len).sum::<usize>()
    }

    /// Segments neither the newest nor the one being filled that are not sorted (tests: none).
    #[cfg(test)]
    fn unsealed_behind(&self) -> usize {
        self.segments.iter().filter(|(k, s)| !s.sealed && Some(**k) != self.newest && Some(**k) != self.current).count()
    }
}

/// The hash's top 32 bits.
fn top(key: u64) -> u32 {
    (key >> 32) as u32
}

/// An offset below [`DEAD`].
fn narrow(offset: u64) -> Option<u32> {
    u32::try_from(offset).ok().filter(|o| o & DEAD == 0)
}

#[cfg(test)]
#[path = "mid_index_tests.rs"]
mod tests;
