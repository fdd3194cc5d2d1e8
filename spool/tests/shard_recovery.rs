//! The spool end to end on a real file system: group commit, recovery after a torn tail,
//! segment rollover and deletion once every message is final.
use glommio::LocalExecutorBuilder;
use ringpost_spool::record::{MessageRecord, Outcome};
use ringpost_spool::{Disposition, Durability, Recovery, SpoolConfig, SpoolShard};
use std::path::Path;

fn cfg(dir: &Path, segment_size: u64) -> SpoolConfig {
    SpoolConfig { dir: dir.to_path_buf(), segment_size, durability: Durability::Fsync, pending_bytes_max: 1 << 20 }
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
            let (shard, _pinned) = SpoolShard::open(0, cfg(&dir, segment_size), rec).unwrap();
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
            // Every append happened before the committer first ran: one group-commit round.
            assert_eq!(shard.rounds(), 1);
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
    assert!(rec.corrupt.is_empty(), "sealed segments' unused tails are not corruption: {:?}", rec.corrupt);
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
            let (shard, _) = SpoolShard::open(0, cfg(&dir, 16 * 1024), Recovery::default()).unwrap();
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
    assert_eq!(left, 1, "only the active segment may remain");
    let files = std::fs::read_dir(SpoolShard::core_dir(tmp.path(), 0)).unwrap().count();
    assert_eq!(files, 1, "one segment file on disk: the active one");
}

/// Recovered messages are pinned by `open` itself: releasing one message of a sealed recovered
/// segment and collecting garbage must not delete the segment another recovered message needs.
#[test]
fn open_pins_every_recovered_message_before_anything_is_released() {
    let tmp = tempfile::tempdir().unwrap();
    let bodies = write_messages(tmp.path(), 3, 1 << 20);
    let dir = tmp.path().to_path_buf();
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            let rec = Recovery::scan(&SpoolShard::core_dir(&dir, 0), 0).unwrap();
            assert_eq!(rec.messages.len(), 3);
            assert!(rec.messages.iter().all(|m| m.msg.segment == 1 && m.record.body[0].segment == 1));
            let (shard, pinned) = SpoolShard::open(0, cfg(&dir, 1 << 20), rec).unwrap();
            assert_eq!(pinned.len(), 3);
            // Release the first message as a finished delivery would, then collect.
            shard.release_message(Some(pinned[0].msg), &pinned[0].record.body);
            shard.collect_garbage();
            let seg = SpoolShard::core_dir(&dir, 0).join("seg-00000001.spool");
            assert!(seg.exists(), "segment 1 deleted while two recovered messages still need it");
            let map = shard.map(1).expect("segment 1 no longer mapped");
            assert_eq!(map.extent(&pinned[1].record.body[0]), &bodies[1][..]);
            // Once the last pin goes, so does the segment: the pins are the only thing keeping it.
            for m in &pinned[1..] {
                shard.release_message(Some(m.msg), &m.record.body);
            }
            assert!(!seg.exists(), "segment 1 kept after every message was released");
            assert!(shard.map(1).is_none());
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn retry_state_and_dsn_markers_survive_restart_and_guard_gc() {
    use ringpost_spool::{FailureDetail, RcptState};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (live, done) = LocalExecutorBuilder::default()
        .spawn(move || async move {
            let (shard, _) = SpoolShard::open(0, cfg(&dir, 16 * 1024), Recovery::default()).unwrap();
            let committer = glommio::spawn_local(shard.clone().run_committer());
            let mut msgs = Vec::new();
            for _ in 0..2 {
                let (e, _) = shard.append_chunk(b"Subject: s\r\n\r\nx\r\n").unwrap();
                let m = MessageRecord { recipients: vec![b"r@x".to_vec(), b"s@y".to_vec()], body: vec![e], ..Default::default() };
                msgs.push(shard.append_message(&m).unwrap().0);
            }
            let (live, done) = (msgs[0], msgs[1]);
            let mut last = 0;
            // Several segments of filler, each released at once (so deletable), with the
            // records about both messages spread over them.
            // The latest state is followed by filler too, so its segment is sealed and unpinned.
            for round in 0..4u32 {
                let state = RcptState {
                    msg: live,
                    rcpt: 1,
                    attempts: round + 1,
                    next_attempt_ms: 5000 + round as u64,
                    last_response: format!("451 round {round}"),
                };
                shard.append_rcpt_state(&state).unwrap();
                for _ in 0..20 {
                    let (e, t) = shard.append_chunk(&[b'f'; 1000]).unwrap();
                    shard.release_message(None, &[e]);
                    last = t;
                }
            }
            let failure = Some(FailureDetail { status: "5.1.1".into(), remote: None, diagnostic: "550 no".into() });
            shard.append_disposition(&Disposition { msg: live, rcpt: 0, outcome: Outcome::Bounced, failure: failure.clone() }).unwrap();
            shard.append_disposition(&Disposition { msg: done, rcpt: 0, outcome: Outcome::Bounced, failure }).unwrap();
            shard.append_disposition(&Disposition { msg: done, rcpt: 1, outcome: Outcome::Delivered, failure: None }).unwrap();
            last = last.max(shard.append_dsn_done(done).unwrap());
            shard.wait_durable(last).await.unwrap();
            shard.collect_garbage();
            // The messages' own segment, the three sealed segments holding retry states 1..3 (guarded
            // while the message's segment exists) and the active one; the pure-filler ones are gone.
            assert_eq!(shard.segment_count(), 5, "segments with records about live messages are kept");
            shard.close();
            committer.await;
            (live, done)
        })
        .unwrap()
        .join()
        .unwrap();
    let dir = tmp.path().to_path_buf();
    let rec = run(move || Recovery::scan(&SpoolShard::core_dir(&dir, 0), 0).unwrap());
    assert!(rec.torn.is_empty() && rec.corrupt.is_empty());
    assert_eq!(rec.messages.len(), 1);
    let m = &rec.messages[0];
    assert_eq!(m.msg, live);
    assert_eq!(m.pending, vec![1]);
    assert_eq!(m.states.len(), 1);
    assert_eq!((m.states[0].attempts, m.states[0].last_response.as_str()), (4, "451 round 3"));
    assert_eq!(m.failed.len(), 1);
    assert_eq!(m.failed[0].failure.as_ref().unwrap().status, "5.1.1");
    assert!(rec.owed_dsn.is_empty(), "{done} has its DSN marker");
}

/// A Signature record that lands outside its message's segment (a rotation came between the
/// commit and the signature) is tracked like a retry state: the segment holding it is kept at
/// every restart while the message lives, so its lines can be read back and nothing signs
/// twice. Untracked, that segment (sealed, unreferenced) went at the first open, and the
/// message, whose lines could no longer be read, was dropped with it.
#[test]
fn a_signature_in_a_later_segment_keeps_that_segment_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let lines = b"DKIM-Signature: v=1; a=rsa-sha256; b=xyz\r\n".to_vec();
    let want = lines.clone();
    let live = LocalExecutorBuilder::default()
        .spawn(move || async move {
            let (shard, _) = SpoolShard::open(0, cfg(&dir, 16 * 1024), Recovery::default()).unwrap();
            let committer = glommio::spawn_local(shard.clone().run_committer());
            let (e, _) = shard.append_chunk(b"Subject: s\r\n\r\nx\r\n").unwrap();
            let m = MessageRecord { recipients: vec![b"r@x".to_vec()], body: vec![e], ..Default::default() };
            let live = shard.append_message(&m).unwrap().0;
            let filler = |n: usize| {
                let mut last = 0;
                for _ in 0..n {
                    let (e, t) = shard.append_chunk(&[b'f'; 1000]).unwrap();
                    shard.release_message(None, &[e]);
                    last = t;
                }
                last
            };
            filler(20);
            let (at, _) = shard.append_signature(live, &lines).unwrap();
            assert_ne!(at.segment, live.segment, "the filler moved the appends on");
            let last = filler(40);
            shard.wait_durable(last).await.unwrap();
            shard.collect_garbage();
            assert!(shard.map(at.segment).is_some(), "kept while running");
            shard.close();
            committer.await;
            live
        })
        .unwrap()
        .join()
        .unwrap();
    for restart in 0..3 {
        let dir = tmp.path().to_path_buf();
        let want = want.clone();
        LocalExecutorBuilder::default()
            .spawn(move || async move {
                let rec = Recovery::scan(&SpoolShard::core_dir(&dir, 0), 0).unwrap();
                let (shard, pinned) = SpoolShard::open(0, cfg(&dir, 16 * 1024), rec).unwrap();
                let relocations_before = shard.relocations();
                assert_eq!(pinned.iter().map(|m| m.msg).collect::<Vec<_>>(), vec![live], "restart {restart}");
                // Where it was written, or where a relocation carried it.
                let found = pinned[0].signature.unwrap_or_else(|| panic!("restart {restart}: the lines were not found"));
                let map = shard.map(found.segment).unwrap_or_else(|| panic!("restart {restart}: the segment holding the lines was deleted"));
                assert_eq!(map.extent(&found), want);
                drop(map);
                // Traffic after the restart: segments roll, the old ones are relocated and
                // deleted. The lines must be carried along (the restart re-noted them).
                let committer = glommio::spawn_local(shard.clone().run_committer());
                let mut last = 0;
                for _ in 0..60 {
                    let (e, t) = shard.append_chunk(&[b'g'; 1000]).unwrap();
                    shard.release_message(None, &[e]);
                    last = t;
                }
                shard.wait_durable(last).await.unwrap();
                shard.flush().await;
                shard.collect_garbage();
                assert!(shard.relocations() > relocations_before, "restart {restart}: no relocation ran, the test shows nothing");
                shard.close();
                committer.await;
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
