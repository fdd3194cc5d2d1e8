//! Helpers shared by the spool tests that run on the simulated disk (`power_loss`,
//! `relocation_failures`, `one_round_at_a_time`): their spool config, paths, executor, scratch
//! directory, a freshly opened spool, a power cut and a one-recipient message record.
// Each test crate includes this module and may leave a helper unused.
#![allow(dead_code)]
use glommio::LocalExecutorBuilder;
use ringpost_spool::record::MessageRecord;
use ringpost_spool::sim::SimDisk;
use ringpost_spool::{Durability, Extent, Recovery, SpoolConfig, SpoolShard};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Small segments, so a few messages already rotate, relocate and collect.
pub const SEGMENT: u64 = 16 * 1024;

/// The spool under `root`, fsync on.
pub fn cfg(root: &Path) -> SpoolConfig {
    SpoolConfig { dir: root.join("spool"), segment_size: SEGMENT, durability: Durability::Fsync, pending_bytes_max: 1 << 20 }
}

/// Core 0's directory of the spool under `root`.
pub fn core_dir(root: &Path) -> PathBuf {
    SpoolShard::core_dir(&root.join("spool"), 0)
}

/// Run `f` on a fresh glommio executor and return its result.
pub fn run<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(f: impl FnOnce() -> F + Send + 'static) -> T {
    LocalExecutorBuilder::default().spawn(f).unwrap().join().unwrap()
}

/// A scratch directory in memory (/dev/shm) when there is one: the sim never needs the real
/// disk's durability, and thousands of seeds create and delete files.
pub fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
}

/// A fresh sim disk with the spool open on it and its committer running.
pub fn open_fresh(root: &Path, disk: &SimDisk) -> (Rc<SpoolShard>, glommio::task::JoinHandle<()>) {
    let rec = Recovery::scan(&core_dir(root), 0).unwrap();
    let (shard, _) = SpoolShard::open_on(disk.storage(), 0, cfg(root), rec).unwrap();
    let committer = glommio::spawn_local(shard.clone().run_committer()).detach();
    (shard, committer)
}

/// Cut the power under a running spool, let its committer finish (every round in flight fails),
/// and bring the power back: the disk now holds what a restart would find.
pub async fn power_cut(disk: &SimDisk, shard: &SpoolShard, committer: impl std::future::Future) {
    disk.cut();
    shard.close();
    committer.await;
    disk.revive();
}

/// A message record with one recipient and `body`.
pub fn one_rcpt(body: Vec<Extent>) -> MessageRecord {
    MessageRecord { sender: b"s@x".to_vec(), recipients: vec![b"r@y".to_vec()], body, ..Default::default() }
}
