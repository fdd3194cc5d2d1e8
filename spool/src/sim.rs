//! A simulated disk for deterministic power-loss tests (feature `sim`).
//!
//! [`SimDisk`] performs every operation for real on files under a scratch directory, so the
//! shard's maps and [`crate::Recovery::scan`] run unchanged, and shadows what a power cut would
//! keep: per file, the bytes its last completed `fdatasync` covered; per directory, the names
//! its last directory fsync covered. At a cut, chosen by operation count or called directly,
//! it rebuilds the scratch directory from that durable image: unsynced names vanish (with
//! everything under them), unsynced removals come back, and, when tearing is on, each unsynced
//! write is dropped, kept whole, kept as a prefix, or replaced by garbage, decided by the seed
//! (or, with page tearing, each of its 4 KiB pages is).
//! After the cut every operation fails with EIO until [`SimDisk::revive`]. It also injects
//! EIO at a seeded rate and ENOSPC while the disk is marked full. Single-threaded by design.
use crate::error::Result;
use crate::segment::SegmentMap;
use crate::storage::{IoFuture, SegmentFile, Storage};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// A small deterministic generator (splitmix64): the test's only source of randomness.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        SimRng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `per_mille`/1000.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < per_mille as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

/// What the sim knows of one file: its current bytes, the bytes a cut keeps, and the writes
/// since the last completed `fdatasync`.
#[derive(Debug, Default)]
struct Shadow {
    cur: Vec<u8>,
    synced: Vec<u8>,
    /// (write id, position, length) of each write since the fsyncs that cover it.
    unsynced: Vec<(u64, usize, usize)>,
}

#[derive(Debug)]
struct Sim {
    root: PathBuf,
    rng: SimRng,
    /// Names whose existence is durable (the root itself always is).
    durable: BTreeMap<PathBuf, Kind>,
    shadows: HashMap<PathBuf, Shadow>,
    error_per_mille: u32,
    full: bool,
    torn: bool,
    /// Tear page by page instead of keeping a prefix of each write.
    torn_pages: bool,
    dead: bool,
    ops: u64,
    cut_at: Option<u64>,
    cuts: u64,
    fdatasyncs: u64,
    /// Fail the next this many `fdatasync` calls with EIO.
    fail_syncs: u32,
    /// Completed writes so far: an `fdatasync` covers the writes completed before it was issued.
    writes: u64,
    /// `fdatasync` calls issued and not yet returned, and the most there ever were at once.
    syncs_in_flight: u32,
    max_syncs_in_flight: u32,
    /// While set, each new `fdatasync` parks until released, so a test decides when it finishes.
    hold_syncs: bool,
    /// Ids of the parked `fdatasync` calls, and the next id to give.
    held: Vec<u64>,
    next_held: u64,
}

/// The simulated disk; clones share one state. Use [`SimDisk::storage`] for the shard.
#[derive(Debug, Clone)]
pub struct SimDisk(Rc<RefCell<Sim>>);

struct SimFile {
    disk: SimDisk,
    path: PathBuf,
    file: std::fs::File,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl SimDisk {
    /// A disk over the existing directory `root`, whose current contents count as durable.
    pub fn new(root: &Path, seed: u64) -> Self {
        let mut sim = Sim {
            root: root.to_path_buf(),
            rng: SimRng::new(seed),
            durable: BTreeMap::new(),
            shadows: HashMap::new(),
            error_per_mille: 0,
            full: false,
            torn: false,
            torn_pages: false,
            dead: false,
            ops: 0,
            cut_at: None,
            cuts: 0,
            fdatasyncs: 0,
            fail_syncs: 0,
            writes: 0,
            syncs_in_flight: 0,
            max_syncs_in_flight: 0,
            hold_syncs: false,
            held: Vec::new(),
            next_held: 0,
        };
        sim.adopt_tree(root);
        SimDisk(Rc::new(RefCell::new(sim)))
    }

    /// The storage to hand to [`crate::SpoolShard::open_on`].
    pub fn storage(&self) -> Rc<dyn Storage> {
        Rc::new(self.clone())
    }

    /// Fail each data operation with EIO with probability `per_mille`/1000.
    pub fn set_error_rate(&self, per_mille: u32) {
        self.0.borrow_mut().error_per_mille = per_mille;
    }

    /// While full, file creation and writes fail with ENOSPC; clearing it frees space again.
    pub fn set_full(&self, full: bool) {
        self.0.borrow_mut().full = full;
    }

    /// Whether a cut keeps random pieces of unsynced writes (torn writes) or drops them all.
    pub fn set_torn(&self, torn: bool) {
        self.0.borrow_mut().torn = torn;
    }

    /// With tearing on, whether a cut tears each unsynced write page by page (4 KiB pages kept,
    /// dropped or garbled independently) rather than keeping a prefix of it.
    pub fn set_torn_pages(&self, pages: bool) {
        self.0.borrow_mut().torn_pages = pages;
    }

    /// Cut the power when the operation counter reaches `op` (counted from now).
    pub fn cut_after_ops(&self, op: u64) {
        let mut s = self.0.borrow_mut();
        s.cut_at = Some(s.ops + op);
    }

    /// Cut the power now (no-op if it is already cut).
    pub fn cut(&self) {
        self.0.borrow_mut().cut();
    }

    /// True once the power has been cut (and not revived).
    pub fn is_cut(&self) -> bool {
        self.0.borrow().dead
    }

    /// Power comes back: operations work again on what the cut left.
    pub fn revive(&self) {
        let mut s = self.0.borrow_mut();
        s.dead = false;
        s.cut_at = None;
    }

    /// Fail the next `n` `fdatasync` calls with EIO (deterministic, on top of the error rate).
    pub fn fail_next_fdatasyncs(&self, n: u32) {
        self.0.borrow_mut().fail_syncs = n;
    }

    /// Completed `fdatasync` calls so far.
    pub fn fdatasyncs(&self) -> u64 {
        self.0.borrow().fdatasyncs
    }

    /// Writes completed so far.
    pub fn writes(&self) -> u64 {
        self.0.borrow().writes
    }

    /// The most `fdatasync` calls that were ever in flight at once.
    pub fn max_syncs_in_flight(&self) -> u32 {
        self.0.borrow().max_syncs_in_flight
    }

    /// Park every `fdatasync` issued from now on until [`Self::release_all_syncs`].
    pub fn hold_syncs(&self) {
        self.0.borrow_mut().hold_syncs = true;
    }

    /// Parked `fdatasync` calls (issued, covering what they will cover, not yet finished).
    pub fn held_syncs(&self) -> usize {
        self.0.borrow().held.len()
    }

    /// Stop parking: every parked `fdatasync` finishes, and new ones no longer park.
    pub fn release_all_syncs(&self) {
        let mut s = self.0.borrow_mut();
        s.hold_syncs = false;
        s.held.clear();
    }

    /// Power cuts so far.
    pub fn cuts(&self) -> u64 {
        self.0.borrow().cuts
    }

    /// Count one operation; cut the power if it is due. Errors for a dead disk.
    fn begin(&self) -> io::Result<()> {
        let mut s = self.0.borrow_mut();
        s.ops += 1;
        if s.cut_at.is_some_and(|at| s.ops >= at) {
            s.cut();
        }
        if s.dead {
            return Err(eio());
        }
        Ok(())
    }

    /// The injected error for a data operation, if any (`space` ops fail when full).
    fn fault(&self, space: bool) -> Option<io::Error> {
        let mut s = self.0.borrow_mut();
        if space && s.full {
            return Some(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let p = s.error_per_mille;
        s.rng.chance(p).then(eio)
    }
}

impl Sim {
    /// Take everything now under `dir` as durable, with its current bytes.
    fn adopt_tree(&mut self, dir: &Path) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                self.durable.insert(p.clone(), Kind::Dir);
                self.adopt_tree(&p);
            } else {
                let bytes = std::fs::read(&p).unwrap_or_default();
                self.shadows.insert(p.clone(), Shadow { cur: bytes.clone(), synced: bytes, unsynced: Vec::new() });
                self.durable.insert(p, Kind::File);
            }
        }
    }

    fn inside(&self, p: &Path) -> bool {
        p.starts_with(&self.root) && p != self.root
    }

    /// A directory fsync: the names now in `dir` become durable, and so do removals.
    fn sync_dir(&mut self, dir: &Path) {
        if !(dir.starts_with(&self.root)) {
            return;
        }
        let gone: Vec<PathBuf> = self.durable.keys().filter(|p| p.parent() == Some(dir) && !p.exists()).cloned().collect();
        for p in gone {
            self.durable.remove(&p);
            self.shadows.remove(&p);
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let kind = if p.is_dir() { Kind::Dir } else { Kind::File };
            if kind == Kind::File && !self.shadows.contains_key(&p) {
                // A file made behind the sim's back (recovery renames): its bytes count as synced.
                let bytes = std::fs::read(&p).unwrap_or_default();
                self.shadows.insert(p.clone(), Shadow { cur: bytes.clone(), synced: bytes, unsynced: Vec::new() });
            }
            self.durable.insert(p, kind);
        }
    }

    /// What a cut leaves of one file: its synced bytes plus, when tearing, seeded pieces of
    /// the unsynced writes.
    fn image(&mut self, p: &Path) -> Vec<u8> {
        let Some(sh) = self.shadows.get(p) else { return Vec::new() };
        let mut img = sh.synced.clone();
        if !self.torn {
            return img;
        }
        let (cur, writes) = (sh.cur.clone(), sh.unsynced.clone());
        if self.torn_pages {
            // Page by page: each 4 KiB page of each unsynced write is kept, dropped or
            // replaced by garbage on its own, as a device that writes pages back in any order
            // may leave them.
            for (_, pos, len) in writes {
                let mut at = pos;
                while at < pos + len {
                    let end = ((at / 4096) + 1) * 4096;
                    let end = end.min(pos + len);
                    let r = self.rng.below(10);
                    if r >= 4 {
                        if img.len() < cur.len() {
                            img.resize(cur.len(), 0);
                        }
                        let garbage = r == 9;
                        for i in at..end.min(img.len()) {
                            img[i] = if garbage { self.rng.next_u64() as u8 } else { cur[i] };
                        }
                    }
                    at = end;
                }
            }
            return img;
        }
        for (_, pos, len) in writes {
            let keep = match self.rng.below(20) {
                0..=7 => 0,
                8..=12 => len,
                _ => self.rng.below(len as u64 + 1) as usize,
            };
            if keep == 0 {
                continue;
            }
            if img.len() < cur.len() {
                img.resize(cur.len(), 0);
            }
            let garbage = self.rng.chance(300);
            for i in pos..(pos + keep).min(img.len()) {
                img[i] = if garbage { self.rng.next_u64() as u8 } else { cur[i] };
            }
        }
        img
    }

    /// The power cut: rebuild the scratch directory from the durable image.
    fn cut(&mut self) {
        if self.dead {
            return;
        }
        self.dead = true;
        self.cuts += 1;
        let entries: Vec<(PathBuf, Kind)> = self.durable.iter().map(|(p, k)| (p.clone(), *k)).collect();
        let mut survivors = BTreeMap::new();
        let mut images = HashMap::new();
        for (p, k) in entries {
            let parent_ok = p.parent().is_some_and(|d| d == self.root || survivors.get(d) == Some(&Kind::Dir));
            if !parent_ok {
                continue;
            }
            if k == Kind::File {
                let img = self.image(&p);
                images.insert(p.clone(), img);
            }
            survivors.insert(p, k);
        }
        for e in std::fs::read_dir(&self.root).expect("sim root").flatten() {
            let p = e.path();
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
        self.shadows.clear();
        for (p, k) in &survivors {
            match k {
                Kind::Dir => std::fs::create_dir(p).expect("sim: recreate dir"),
                Kind::File => {
                    let img = images.remove(p).unwrap_or_default();
                    std::fs::write(p, &img).expect("sim: rewrite file");
                    self.shadows.insert(p.clone(), Shadow { cur: img.clone(), synced: img, unsynced: Vec::new() });
                }
            }
        }
        self.durable = survivors;
    }
}

impl SegmentFile for SimFile {
    fn write_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            futures_lite::future::yield_now().await;
            self.disk.begin()?;
            let (pos, len) = (pos as usize, buf.len());
            let (res, applied) = match self.disk.fault(true) {
                // A failed write may still have put some of its bytes in the page cache.
                Some(e) => (Err(e), self.disk.0.borrow_mut().rng.below(len as u64 + 1) as usize),
                None => (Ok(()), len),
            };
            self.file.write_all_at(&buf[..applied], pos as u64)?;
            let mut s = self.disk.0.borrow_mut();
            s.writes += 1;
            let id = s.writes;
            let sh = s.shadows.entry(self.path.clone()).or_default();
            if sh.cur.len() < pos + applied {
                sh.cur.resize(pos + applied, 0);
            }
            sh.cur[pos..pos + applied].copy_from_slice(&buf[..applied]);
            sh.unsynced.push((id, pos, applied));
            res
        })
    }

    /// Covers the writes completed when it is issued, not those that complete while it is in
    /// flight (what a real disk promises), and takes a seeded number of scheduler turns, so
    /// appends land before, during and after it; while syncs are held
    /// ([`SimDisk::hold_syncs`]) it also waits to be released.
    fn fdatasync(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            self.disk.begin()?;
            let (upto, turns, held) = {
                let mut s = self.disk.0.borrow_mut();
                s.syncs_in_flight += 1;
                s.max_syncs_in_flight = s.max_syncs_in_flight.max(s.syncs_in_flight);
                let held = s.hold_syncs.then(|| {
                    s.next_held += 1;
                    let id = s.next_held;
                    s.held.push(id);
                    id
                });
                (s.writes, 1 + s.rng.below(3), held)
            };
            for _ in 0..turns {
                futures_lite::future::yield_now().await;
            }
            // A cut ends the wait too (the sync then fails like any operation on a dead disk),
            // so a test that never releases its syncs fails instead of hanging.
            while held.is_some_and(|id| {
                let s = self.disk.0.borrow();
                s.held.contains(&id) && !s.dead
            }) {
                futures_lite::future::yield_now().await;
            }
            self.disk.0.borrow_mut().syncs_in_flight -= 1;
            self.disk.begin()?;
            if let Some(e) = self.disk.fault(false) {
                return Err(e);
            }
            let mut s = self.disk.0.borrow_mut();
            if s.fail_syncs > 0 {
                s.fail_syncs -= 1;
                return Err(eio());
            }
            s.fdatasyncs += 1;
            let sh = s.shadows.entry(self.path.clone()).or_default();
            if sh.synced.len() < sh.cur.len() {
                sh.synced.resize(sh.cur.len(), 0);
            }
            let Shadow { cur, synced, unsynced } = sh;
            unsynced.retain(|&(id, pos, len)| {
                if id > upto {
                    return true;
                }
                synced[pos..pos + len].copy_from_slice(&cur[pos..pos + len]);
                false
            });
            Ok(())
        })
    }

    fn map(&self, seq: u32, path: &Path) -> Result<SegmentMap> {
        SegmentMap::map(seq, path.to_path_buf(), &self.file)
    }
}

impl Storage for SimDisk {
    fn create_file<'a>(&'a self, path: &'a Path, size: u64) -> IoFuture<'a, Rc<dyn SegmentFile>> {
        Box::pin(async move {
            futures_lite::future::yield_now().await;
            self.begin()?;
            if let Some(e) = self.fault(true) {
                return Err(e);
            }
            let file = std::fs::File::options().read(true).write(true).create_new(true).open(path)?;
            file.set_len(size)?;
            // The preallocation is durable only with the file's first fdatasync.
            let sh = Shadow { cur: vec![0; size as usize], synced: Vec::new(), unsynced: Vec::new() };
            self.0.borrow_mut().shadows.insert(path.to_path_buf(), sh);
            Ok(Rc::new(SimFile { disk: self.clone(), path: path.to_path_buf(), file }) as Rc<dyn SegmentFile>)
        })
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.begin()?;
        match std::fs::create_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
            r => r,
        }
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.begin()?;
        if let Some(e) = self.fault(false) {
            return Err(e);
        }
        self.0.borrow_mut().sync_dir(path);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.begin()?;
        let inside = self.0.borrow().inside(path);
        debug_assert!(inside, "sim: removing a file outside the simulated disk");
        // The shadow stays: until the directory is synced, a cut brings the file back.
        std::fs::remove_file(path)
    }
}
