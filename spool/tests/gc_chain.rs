//! One long-lived message must not pin every segment written after it.
//!
//! Under steady traffic each segment holds dispositions about messages of the segment before it
//! (a delivery finishes after the next messages were appended). A segment holding records about
//! a segment that still exists cannot simply be deleted (a restart would redeliver), so without
//! relocation the rule chains down to the segment of one message retried for days, and the
//! spool grows with all traffic of the retry window until the disk is full. These tests run
//! that traffic, then check both halves of the promise: the spool shrinks to a handful of
//! segments, and a restart brings back exactly the live message with its latest state —
//! nothing that was delivered.
use glommio::LocalExecutorBuilder;
use ringpost_spool::record::{MessageRecord, Outcome};
use ringpost_spool::{Disposition, Durability, Extent, MsgRef, RcptState, Recovery, SpoolConfig, SpoolShard};
use std::collections::VecDeque;
use std::path::Path;

const SEGMENT: u64 = 16 * 1024;

fn cfg(dir: &Path) -> SpoolConfig {
    SpoolConfig { dir: dir.to_path_buf(), segment_size: SEGMENT, durability: Durability::Fsync, pending_bytes_max: 1 << 20 }
}

fn run<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(f: impl FnOnce() -> F + Send + 'static) -> T {
    LocalExecutorBuilder::default().spawn(f).unwrap().join().unwrap()
}

async fn spool(shard: &SpoolShard, body: &[u8], rcpts: usize) -> (MsgRef, Extent) {
    let (e, t1) = shard.append_chunk(body).unwrap();
    let recipients = (0..rcpts).map(|i| format!("r{i}@x.test").into_bytes()).collect();
    let (id, t2) = shard.append_message(&MessageRecord { recipients, body: vec![e], ..Default::default() }).unwrap();
    shard.wait_durable_all(&[t1, t2]).await.unwrap();
    (id, e)
}

fn delivered(msg: MsgRef, rcpt: u32) -> Disposition {
    Disposition { msg, rcpt, outcome: Outcome::Delivered, failure: None }
}

fn state(msg: MsgRef, rcpt: u32, attempts: u32) -> RcptState {
    RcptState { msg, rcpt, attempts, next_attempt_ms: 1_000 * attempts as u64, last_response: format!("451 try {attempts}") }
}

/// Steady traffic of `n` one-recipient messages, each delivered and released three messages
/// after it was accepted; every 25 messages the long-lived `slow` message's recipient 1 is
/// deferred again (a retry state per attempt). Returns the last attempt number.
async fn traffic(shard: &SpoolShard, slow: MsgRef, n: usize) -> u32 {
    let mut in_flight = VecDeque::new();
    let mut attempts = 0;
    for i in 0..n {
        in_flight.push_back(spool(shard, &[b'x'; 1000], 1).await);
        if in_flight.len() > 3 {
            let (id, e) = in_flight.pop_front().unwrap();
            shard.append_disposition(&delivered(id, 0)).unwrap();
            shard.release_message(Some(id), &[e]);
        }
        if i % 25 == 0 {
            attempts += 1;
            shard.append_rcpt_state(&state(slow, 1, attempts)).unwrap();
        }
    }
    for (id, e) in in_flight {
        shard.append_disposition(&delivered(id, 0)).unwrap();
        shard.release_message(Some(id), &[e]);
    }
    attempts
}

/// Let the committer relocate and collect: relocation is written by one round and the segment
/// deleted after that round, so flush a few times.
async fn settle(shard: &SpoolShard) {
    for _ in 0..4 {
        shard.append_chunk(b"tick").map(|(e, _)| shard.release_message(None, &[e])).unwrap();
        shard.flush().await;
    }
}

#[test]
fn one_long_retried_message_does_not_pin_every_later_segment_and_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (slow, attempts, count) = run(move || async move {
        let (shard, _) = SpoolShard::open(0, cfg(&dir), Recovery::default()).unwrap();
        let committer = glommio::spawn_local(shard.clone().run_committer());
        // Two recipients: the first is delivered at once, the second is retried for days.
        let (slow, _) = spool(&shard, b"Subject: slow\r\n\r\nx\r\n", 2).await;
        shard.append_disposition(&delivered(slow, 0)).unwrap();
        let attempts = traffic(&shard, slow, 400).await;
        settle(&shard).await;
        let count = shard.segment_count();
        shard.close();
        committer.await;
        (slow, attempts, count)
    });
    // ~1.1 KiB per message in 16 KiB segments: 400 messages span ~28 segments. Kept: the live
    // message's segment, the two newest sealed ones (not yet worth relocating), the active one,
    // and the one holding the latest checkpoint and retry state if it is not among those.
    assert!(count <= 5, "{count} segments kept for one live message: the disposition chain pins them");
    let rec = Recovery::scan(&SpoolShard::core_dir(tmp.path(), 0), 0).unwrap();
    let back: Vec<MsgRef> = rec.messages.iter().map(|m| m.msg).collect();
    assert_eq!(back, vec![slow], "exactly the live message comes back, no delivered one");
    let m = &rec.messages[0];
    assert_eq!(m.pending, vec![1], "recipient 0 was delivered: its disposition must survive relocation");
    assert_eq!(m.states.iter().map(|s| (s.rcpt, s.attempts)).collect::<Vec<_>>(), vec![(1, attempts)], "the latest retry state is carried");
    assert!(rec.owed_dsn.is_empty() && rec.corrupt.is_empty() && rec.incomplete == 0);
}

#[test]
fn relocation_goes_on_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (slow, attempts, count) = run(move || async move {
        let (shard, _) = SpoolShard::open(0, cfg(&dir), Recovery::default()).unwrap();
        let committer = glommio::spawn_local(shard.clone().run_committer());
        let (slow, _) = spool(&shard, b"Subject: slow\r\n\r\nx\r\n", 2).await;
        shard.append_disposition(&delivered(slow, 0)).unwrap();
        let first = traffic(&shard, slow, 150).await;
        shard.flush().await;
        shard.close();
        committer.await;
        drop(shard);
        // Restart: the recovered message carries its record locations, so relocation can go on.
        let rec = Recovery::scan(&SpoolShard::core_dir(&dir, 0), 0).unwrap();
        let (shard, recovered) = SpoolShard::open(0, cfg(&dir), rec).unwrap();
        assert_eq!(recovered.len(), 1);
        let committer = glommio::spawn_local(shard.clone().run_committer());
        let more = traffic(&shard, slow, 300).await;
        settle(&shard).await;
        let count = shard.segment_count();
        shard.close();
        committer.await;
        (slow, first.max(more), count)
    });
    assert!(count <= 5, "{count} segments kept after a restart");
    let rec = Recovery::scan(&SpoolShard::core_dir(tmp.path(), 0), 0).unwrap();
    assert_eq!(rec.messages.iter().map(|m| m.msg).collect::<Vec<_>>(), vec![slow]);
    assert_eq!(rec.messages[0].pending, vec![1]);
    assert_eq!(rec.messages[0].states[0].attempts, attempts);
}

#[test]
fn relocation_stops_when_traffic_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (before, after) = run(move || async move {
        let (shard, _) = SpoolShard::open(0, cfg(&dir), Recovery::default()).unwrap();
        let committer = glommio::spawn_local(shard.clone().run_committer());
        let (slow, _) = spool(&shard, b"Subject: slow\r\n\r\nx\r\n", 2).await;
        traffic(&shard, slow, 300).await;
        settle(&shard).await;
        let before = shard.rounds();
        glommio::timer::sleep(std::time::Duration::from_millis(200)).await;
        let after = shard.rounds();
        shard.close();
        committer.await;
        (before, after)
    });
    assert_eq!(before, after, "the committer kept writing rounds with no traffic: relocation feeds itself");
}
