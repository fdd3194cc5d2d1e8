//! The spool end to end on a real file system: group commit, recovery after a torn tail,
//! segment rollover and deletion once every message is final.
use glommio::LocalExecutorBuilder;
use ringpost_spool::record::{MessageRecord, Outcome};
use ringpost_spool::{Disposition, Durability, Recovery, SpoolConfig, SpoolShard};
use std::path::Path;

fn cfg(dir: &Path, segment_size: u64) -> SpoolConfig {
    SpoolConfig { dir: dir.to_path_buf(), segment_size, durability: Durability::Fsync, max_pending_bytes: 1 << 20 }
}

fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    LocalExecutorBuilder::default().spawn(move || async move { f() }).unwrap().join().unwrap()
}

/// Append `n` messages of two recipients each, committed; return their bodies.
fn write_messages(dir: &Path, n: usize, segment_size: u64) -> Vec<Vec<u8>> {
    let dir = dir.to_path_buf();
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            let rec = Recovery::scan(&SpoolShard::core_dir(&dir, 0), 0).unwrap();
            let shard = SpoolShard::open(0, cfg(&dir, segment_size), rec.segments).unwrap();
            let committer = glommio::spawn_local(shard.clone().run_committer());
            let mut bodies = Vec::new();
            let mut last = 0;
            for i in 0..n {
                let body = format!("Subject: {i}\r\n\r\nbody {i}\r\n").repeat(1 + i % 7).into_bytes();
                let (extent, _) = shard.append_chunk(&body).unwrap();
                let m = MessageRecord {
                    sender: b"a@b".to_vec(),
                    recipients: vec![format!("r{i}@x").into_bytes(), format!("s{i}@y").into_bytes()],
                    body: vec![extent],
                    ..Default::default()
                };
                let (msg, t) = shard.append_message(&m).unwrap();
                last = t;
                // The first recipient of every even message is already final.
                if i % 2 == 0 {
                    shard.append_disposition(&Disposition { msg, rcpt: 0, outcome: Outcome::Delivered, failure: None }).unwrap();
                }
                bodies.push(body);
            }
            shard.wait_durable(last).await.unwrap();
            assert!(shard.rounds() >= 1);
            shard.close();
            committer.await;
            bodies
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn recovery_returns_every_committed_message_with_its_pending_recipients() {
    let tmp = tempfile::tempdir().unwrap();
    let bodies = write_messages(tmp.path(), 200, 16 * 1024);
    let dir = tmp.path().to_path_buf();
    let rec = run(move || Recovery::scan(&SpoolShard::core_dir(&dir, 0), 0).unwrap());
    assert!(rec.segments.len() > 1, "16 KiB segments must have rolled over");
    assert!(rec.torn.is_empty());
    assert_eq!(rec.messages.len(), 200);
    for (i, m) in rec.messages.iter().enumerate() {
        let expect: Vec<u32> = if i % 2 == 0 { vec![1] } else { vec![0, 1] };
        assert_eq!(m.pending, expect);
        let seg = rec.segments.iter().find(|s| s.map.seq() == m.record.body[0].segment).unwrap();
        assert_eq!(seg.map.extent(&m.record.body[0]), &bodies[i][..]);
    }
}

#[test]
fn torn_tail_is_dropped_and_earlier_records_survive() {
    let tmp = tempfile::tempdir().unwrap();
    write_messages(tmp.path(), 10, 1 << 20);
    let seg = SpoolShard::core_dir(tmp.path(), 0).join("seg-00000001.spool");
    // Tear the last record: zero everything from inside the final frame onwards.
    let full = {
        let dir = tmp.path().to_path_buf();
        run(move || Recovery::scan(&SpoolShard::core_dir(&dir, 0), 0).unwrap())
    };
    let last = full.messages.last().unwrap().msg.offset as usize;
    let mut bytes = std::fs::read(&seg).unwrap();
    for b in &mut bytes[last + 20..last + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&seg, &bytes).unwrap();
    let dir = tmp.path().to_path_buf();
    let rec = run(move || Recovery::scan(&SpoolShard::core_dir(&dir, 0), 0).unwrap());
    assert_eq!(rec.torn.len(), 1, "the torn tail is reported");
    assert_eq!(rec.messages.len(), 9, "only the torn message is lost, never an earlier one");
}

#[test]
fn segments_are_deleted_once_every_message_is_final() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let left = LocalExecutorBuilder::default()
        .spawn(move || async move {
            let shard = SpoolShard::open(0, cfg(&dir, 16 * 1024), Vec::new()).unwrap();
            let committer = glommio::spawn_local(shard.clone().run_committer());
            let mut live = Vec::new();
            let mut last = 0;
            for _ in 0..100 {
                let (e, _) = shard.append_chunk(&[b'x'; 1000]).unwrap();
                let m = MessageRecord { recipients: vec![b"r@x".to_vec()], body: vec![e], ..Default::default() };
                let (msg, t) = shard.append_message(&m).unwrap();
                live.push((msg, e));
                last = t;
            }
            shard.wait_durable(last).await.unwrap();
            let before = shard.segment_count();
            assert!(before >= 6);
            for (msg, e) in live {
                let t = shard.append_disposition(&Disposition { msg, rcpt: 0, outcome: Outcome::Delivered, failure: None }).unwrap();
                shard.release_message(Some(msg), &[e]);
                last = t;
            }
            shard.wait_durable(last).await.unwrap();
            shard.collect_garbage();
            shard.close();
            committer.await;
            shard.segment_count()
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(left <= 1, "only the active segment may remain, found {left}");
    let files = std::fs::read_dir(SpoolShard::core_dir(tmp.path(), 0)).unwrap().count();
    assert!(files <= 1);
}
