//! Zeroing ahead on the real file system: a round that writes past what its segment had
//! written extends its write with zeros to the next `ZERO_AHEAD` boundary, so the rounds after
//! it overwrite written blocks and their `fdatasync` needs no journal commit. Checked with
//! `SEEK_HOLE`, which reports a preallocated (unwritten) block with nothing in the page cache
//! as a hole on ext4 and xfs. The spool lives under the target directory, on the same file
//! system as the build, not in a tmpfs.
use ringpost_spool::segment::segment_path;
use ringpost_spool::shard::ZERO_AHEAD;
use ringpost_spool::sim::SimDisk;
use ringpost_spool::{Durability, MessageRecord, Recovery, SpoolConfig, SpoolShard};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The first hole at or after `from` in `path` (the file's size when there is none).
fn first_hole(path: &Path, from: u64) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    let at = unsafe { libc::lseek(f.as_raw_fd(), from as libc::off_t, libc::SEEK_HOLE) };
    assert!(at >= 0, "SEEK_HOLE failed: {}", std::io::Error::last_os_error());
    at as u64
}

#[test]
fn rounds_write_zeros_ahead_to_the_next_boundary() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = tmp.path().to_path_buf();
    let size: u64 = 8 << 20;
    let seg = segment_path(&SpoolShard::core_dir(&root, 0), 1);
    let probe = root.join("probe");
    let ids = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            // Where this file system does not report unwritten blocks as holes, the check
            // below would mean nothing: find out on a file preallocated the same way.
            {
                let f = glommio::io::OpenOptions::new().read(true).write(true).create_new(true).buffered_open(&probe).await.unwrap();
                f.pre_allocate(size, false).await.unwrap();
                f.close().await.unwrap();
            }
            assert_eq!(first_hole(&probe, 0), 0, "this file system does not report preallocated blocks as holes");
            let cfg = SpoolConfig { dir: root.clone(), segment_size: size, durability: Durability::Fsync, pending_bytes_max: 16 << 20 };
            let (shard, _) = SpoolShard::open(0, cfg, Recovery::scan(&SpoolShard::core_dir(&root, 0), 0).unwrap()).unwrap();
            let committer = glommio::spawn_local(shard.clone().run_committer());
            let mut ids = Vec::new();
            let mut message = |body: &[u8]| {
                let (e, tc) = shard.append_chunk(body).unwrap();
                let rec = MessageRecord { sender: b"s@x".to_vec(), recipients: vec![b"r@y".to_vec()], body: vec![e], ..Default::default() };
                let (id, tm) = shard.append_message(&rec).unwrap();
                ids.push(id);
                [tc, tm]
            };
            // One small message: the segment is written (data, then zeros) up to the first boundary.
            let t = message(&[b'a'; 1000]);
            shard.wait_durable_all(&t).await.unwrap();
            assert_eq!(first_hole(&seg, 0), ZERO_AHEAD, "the first round did not write zeros up to the boundary");
            // A round that only overwrites zeros writes no more.
            let t = message(&[b'b'; 1000]);
            shard.wait_durable_all(&t).await.unwrap();
            assert_eq!(first_hole(&seg, 0), ZERO_AHEAD, "a round inside the written part wrote past the next boundary");
            // Crossing the boundary: the data now ends a few KiB past it, and the segment is
            // written up to the next one.
            let t = message(&vec![b'c'; ZERO_AHEAD as usize]);
            shard.wait_durable_all(&t).await.unwrap();
            assert_eq!(first_hole(&seg, 0), 2 * ZERO_AHEAD, "the round crossing a boundary did not write zeros to the next one");
            shard.close();
            committer.await;
            ids
        })
        .unwrap()
        .join()
        .unwrap();
    // The zeros past the records are the written end recovery stops at: every message comes
    // back, nothing is torn or corrupt.
    let rec = Recovery::scan(&SpoolShard::core_dir(tmp.path(), 0), 0).unwrap();
    assert!(rec.torn.is_empty() && rec.corrupt.is_empty(), "torn {:?} corrupt {:?}", rec.torn, rec.corrupt);
    let got: Vec<_> = rec.messages.iter().map(|m| m.msg).collect();
    assert_eq!(got, ids);
}

/// The bytes each round writes, on the simulated disk: the zeros up to a boundary are written
/// once, by the round that first passes the written part, not again by the rounds inside it.
#[test]
fn zeros_are_written_once_per_boundary() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let disk = SimDisk::new(&root, 7);
            let cfg = SpoolConfig { dir: root.join("spool"), segment_size: 4 << 20, durability: Durability::Fsync, pending_bytes_max: 16 << 20 };
            let rec = Recovery::scan(&SpoolShard::core_dir(&cfg.dir, 0), 0).unwrap();
            let (shard, _) = SpoolShard::open_on(disk.storage(), 0, cfg, rec).unwrap();
            let committer = glommio::spawn_local(shard.clone().run_committer());
            let round = |body: Vec<u8>| {
                let shard = shard.clone();
                let disk = disk.clone();
                async move {
                    let before = disk.bytes_written();
                    let (_, t) = shard.append_chunk(&body).unwrap();
                    shard.wait_durable(t).await.unwrap();
                    disk.bytes_written() - before
                }
            };
            // The first round: the segment's header, then its data and zeros to 1 MiB.
            assert_eq!(round(vec![b'a'; 1000]).await, ZERO_AHEAD);
            // Inside the written part: only the record (frame header and padding included).
            let inside = round(vec![b'b'; 1000]).await;
            assert!((1000..1100).contains(&inside), "a round inside the written part wrote {inside} bytes");
            // Past the boundary: the record, then zeros to the next one.
            let crossing = round(vec![b'c'; ZERO_AHEAD as usize]).await;
            assert!(crossing > ZERO_AHEAD && crossing < 2 * ZERO_AHEAD, "the crossing round wrote {crossing} bytes");
            shard.close();
            committer.await;
        })
        .unwrap()
        .join()
        .unwrap();
}
