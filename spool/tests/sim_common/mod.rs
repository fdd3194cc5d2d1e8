//! Helpers shared by the spool tests that run on the simulated disk (`power_loss`,
//! `relocation_failures`): their spool config, paths, executor and scratch directory.
// Each test crate includes this module and may leave a helper unused.
#![allow(dead_code)]
use glommio::LocalExecutorBuilder;
use ringpost_spool::{Durability, SpoolConfig, SpoolShard};
use std::path::{Path, PathBuf};

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
