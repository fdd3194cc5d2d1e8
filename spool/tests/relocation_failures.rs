//! Segment relocation under failed rounds, from the outside review of commit 23f9b02
//! (branch review2). The first version moved its bookkeeping to the latest *appended* record
//! and could then delete the only durable copy; a failed round now suspends relocation until a
//! restart rebuilds the bookkeeping from the disk. These tests were red on 23f9b02.
//!
//! Each test drives a [`SimDisk`] deterministically (an injected `fdatasync` failure at a
//! chosen round, a power cut at a chosen point) and checks what recovery brings back.
//! Run: `cargo test --release -p ringpost-spool --features sim --test relocation_failures`.
use ringpost_spool::record::{MessageRecord, Outcome};
use ringpost_spool::sim::SimDisk;
use ringpost_spool::{Disposition, Durability, Extent, MsgRef, RcptState, Recovery, SpoolConfig, SpoolShard};

mod sim_common;
use sim_common::{cfg, core_dir, power_cut, run, scratch_dir};

/// Append released filler chunks until one lands in segment `seg` (nothing in them is live).
fn filler_until(shard: &SpoolShard, seg: u32) {
    loop {
        let (e, _) = shard.append_chunk(&[b'f'; 3000]).unwrap();
        shard.release_message(None, &[e]);
        if e.segment >= seg {
            return;
        }
    }
}

async fn spool_message(shard: &SpoolShard, rcpts: usize) -> (MsgRef, Extent) {
    let (e, t1) = shard.append_chunk(b"Subject: slow\r\n\r\nbody\r\n").unwrap();
    let recipients = (0..rcpts).map(|i| format!("r{i}@x.test").into_bytes()).collect();
    let (id, t2) = shard.append_message(&MessageRecord { sender: b"s@x".to_vec(), recipients, body: vec![e], ..Default::default() }).unwrap();
    shard.wait_durable_all(&[t1, t2]).await.unwrap();
    (id, e)
}

/// Finding 1: a relocation round that fails (one `fdatasync` EIO) repoints the liveness
/// bookkeeping at the failed copies. The retried relocation of the same segment then copies
/// nothing (the latest records "are" in the failed segment), writes only the checkpoint, and
/// deletes the segment that held the only durable disposition and retry state. After a power
/// cut the delivered recipient comes back (redelivery) and the retry state is gone.
#[test]
fn a_failed_relocation_round_must_not_lose_the_records_it_was_copying() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (slow, x) = run(move || async move {
        let disk = SimDisk::new(&root, 11);
        let (shard, _) = SpoolShard::open_on(disk.storage(), 0, cfg(&root), Recovery::default()).unwrap();
        let committer = glommio::spawn_local(shard.clone().run_committer()).detach();
        // Y = segment 1: a message with three recipients.
        let (slow, _) = spool_message(&shard, 3).await;
        assert_eq!(slow.segment, 1);
        // X = segment 2: recipient 0 delivered, recipient 1 deferred (attempt 3); both durable.
        filler_until(&shard, 2);
        let d = Disposition { msg: slow, rcpt: 0, outcome: Outcome::Delivered, failure: None };
        let td = shard.append_disposition(&d).unwrap();
        let s = RcptState { msg: slow, rcpt: 1, attempts: 3, next_attempt_ms: 3_000, last_response: "451 later".into() };
        let ts = shard.append_rcpt_state(&s).unwrap();
        shard.wait_durable_all(&[td, ts]).await.expect("the disposition and the retry state are durable");
        let x = 2;
        filler_until(&shard, 3);
        shard.flush().await;
        // The round that opens segment 4 puts X two behind the active segment: the committer
        // relocates X (checkpoint + copies into segment 4) and writes that in the next round,
        // whose fdatasync fails once.
        filler_until(&shard, 4);
        // Something live in segment 4 (a session mid-DATA), so segment 4 is not relocated.
        let (busy, _) = shard.append_chunk(b"live").unwrap();
        assert_eq!(busy.segment, 4);
        while shard.relocations() == 0 {
            futures_lite::future::yield_now().await;
        }
        disk.fail_next_fdatasyncs(1);
        shard.flush().await;
        assert_eq!(shard.failed_rounds(), 1, "the relocation round was meant to fail");
        assert!(shard.map(x).is_some(), "X is kept while its relocation is not durable");
        // The disk is fine again: the next good round retries the relocation of X.
        for _ in 0..3 {
            let (e, _) = shard.append_chunk(b"tick").unwrap();
            shard.release_message(None, &[e]);
            shard.flush().await;
        }
        assert_eq!(shard.relocations(), 1, "relocation is suspended after a failed round");
        assert!(shard.map(x).is_some(), "X is kept: its relocation never became durable");
        // Traffic goes on into segment 6; creating it syncs the directory, so X's removal is
        // durable (on a real file system the journal commits it within seconds anyway).
        filler_until(&shard, 6);
        shard.flush().await;
        assert!(shard.map(4).is_some(), "segment 4 (the failed copies) is still there, not relocated");
        power_cut(&disk, &shard, committer).await;
        (slow, x)
    });
    let rec = Recovery::scan(&core_dir(tmp.path()), 0).unwrap();
    assert!(rec.segments.iter().any(|s| s.map.seq() == x), "X holds the only durable copies");
    let m = rec.messages.iter().find(|m| m.msg == slow).expect("the live message comes back");
    assert_eq!(m.pending, vec![1, 2], "recipient 0's durable Delivered disposition was lost: it would be delivered again");
    let states: Vec<(u32, u32)> = m.states.iter().map(|s| (s.rcpt, s.attempts)).collect();
    assert_eq!(states, vec![(1, 3)], "recipient 1's durable retry state was lost");
}

/// `k` commit rounds that each carry one tiny released chunk; the time they took.
async fn idle_rounds(shard: &SpoolShard, k: u32) -> std::time::Duration {
    let t = std::time::Instant::now();
    for _ in 0..k {
        let (e, _) = shard.append_chunk(b"t").unwrap();
        shard.release_message(None, &[e]);
        shard.flush().await;
    }
    t.elapsed()
}

/// Finding 2: a relocation candidate that does not pay (its copies exceed a quarter of a
/// segment) is planned again after every good round, forever: each time the committer walks
/// every live message's record locations for each segment it refers to, allocates the live
/// lists and re-reads and re-checksums every frame it would copy, on the reactor. A backlog of
/// deferred recipients (the destination-down case of bench/backlog.sh) makes every fresh
/// segment of retry states such a candidate, so every round — every 250, every disposition —
/// pays for the whole backlog. Measured as the cost of a small round before and after the
/// backlog's retry states exist (same live messages, nothing relocated in between).
#[test]
fn a_candidate_that_does_not_pay_is_not_replanned_on_every_round() {
    const N: usize = 60_000;
    let tmp = scratch_dir().unwrap();
    let root = tmp.path().to_path_buf();
    let (before, after, relocated) = run(move || async move {
        let cfg = SpoolConfig { dir: root.join("spool"), segment_size: 1 << 20, durability: Durability::None, pending_bytes_max: 1 << 30 };
        let (shard, _) = SpoolShard::open(0, cfg, Recovery::default()).unwrap();
        let committer = glommio::spawn_local(shard.clone().run_committer()).detach();
        let mut ids = Vec::with_capacity(N);
        for i in 0..N {
            let record = MessageRecord { sender: b"s@x".to_vec(), recipients: vec![format!("r{i}@down.test").into_bytes()], ..Default::default() };
            ids.push(shard.append_message(&record).unwrap().0);
        }
        shard.flush().await;
        let before = idle_rounds(&shard, 40).await;
        // The destination is down: every recipient gets a retry state (one retry cycle).
        let response = format!("451 4.4.1 {}", "connection refused ".repeat(15));
        for id in &ids {
            let s = RcptState { msg: *id, rcpt: 0, attempts: 1, next_attempt_ms: 60_000, last_response: response.clone() };
            shard.append_rcpt_state(&s).unwrap();
        }
        let (probe, _) = shard.append_chunk(b"probe").unwrap();
        shard.release_message(None, &[probe]);
        let active = probe.segment;
        filler_until(&shard, active + 2);
        shard.flush().await;
        shard.flush().await;
        let relocated = shard.relocations();
        let after = idle_rounds(&shard, 40).await;
        assert_eq!(shard.relocations(), relocated, "nothing pays: nothing is relocated while measuring");
        shard.close();
        committer.await;
        (before, after, relocated)
    });
    eprintln!("40 small rounds: {before:?} before the retry states, {after:?} after ({relocated} segments relocated)");
    assert!(
        after < before * 10 + std::time::Duration::from_millis(40),
        "40 small rounds took {after:?} with a backlog of retry states vs {before:?} without: every round re-plans every candidate"
    );
}

/// Finding 3 (a gap in gc_chain.rs): gc_chain's "recipient 0 was delivered: its disposition must
/// survive relocation" never exercises the copy of a disposition, because that disposition is
/// appended right after the message and lands in the message's own (live, kept) segment. With
/// dispositions left out of the copies gc_chain stays green. This test puts a durable
/// Delivered disposition and a failure (Bounced, with the detail a DSN quotes) in a segment
/// that gets relocated and deleted, and checks both come back from the copies.
#[test]
fn dispositions_held_in_a_relocated_segment_survive_its_deletion() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (slow, x) = run(move || async move {
        let disk = SimDisk::new(&root, 12);
        let (shard, _) = SpoolShard::open_on(disk.storage(), 0, cfg(&root), Recovery::default()).unwrap();
        let committer = glommio::spawn_local(shard.clone().run_committer()).detach();
        let (slow, _) = spool_message(&shard, 3).await;
        filler_until(&shard, 2);
        let delivered = Disposition { msg: slow, rcpt: 0, outcome: Outcome::Delivered, failure: None };
        let detail =
            ringpost_spool::FailureDetail { status: "5.1.1".into(), remote: Some("mx.x.test".into()), diagnostic: "550 no such user".into() };
        let bounced = Disposition { msg: slow, rcpt: 2, outcome: Outcome::Bounced, failure: Some(detail) };
        let t0 = shard.append_disposition(&delivered).unwrap();
        let t2 = shard.append_disposition(&bounced).unwrap();
        shard.wait_durable_all(&[t0, t2]).await.unwrap();
        let x = 2;
        for seg in 3..=6 {
            filler_until(&shard, seg);
            shard.flush().await;
        }
        shard.flush().await;
        assert!(shard.relocations() >= 1 && shard.map(x).is_none(), "X must have been relocated and deleted");
        power_cut(&disk, &shard, committer).await;
        (slow, x)
    });
    let rec = Recovery::scan(&core_dir(tmp.path()), 0).unwrap();
    assert!(!rec.segments.iter().any(|s| s.map.seq() == x));
    let m = rec.messages.iter().find(|m| m.msg == slow).expect("the live message comes back");
    assert_eq!(m.pending, vec![1], "a durable disposition held in the relocated segment was lost");
    assert_eq!(m.failed.len(), 1);
    let f = m.failed[0].failure.as_ref().expect("the DSN detail is carried");
    assert_eq!((m.failed[0].rcpt, f.diagnostic.as_str()), (2, "550 no such user"));
}

/// Finding 1, second path (same root cause: the liveness bookkeeping follows the latest
/// *appended* record, not the latest *durable* one): a record about a live message that is
/// appended again in a round that fails — here a duplicate final report, which
/// `Core::record_final` appends before the ledger says `Duplicate` — hides the durable original
/// from the next relocation of the segment holding it. That segment is deleted with the only
/// durable copy, and after a cut the delivered recipient is pending again. Before 23f9b02 the
/// segment was kept while the message's segment existed.
#[test]
fn a_record_repeated_in_a_failed_round_must_not_hide_the_durable_one_from_relocation() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (slow, x) = run(move || async move {
        let disk = SimDisk::new(&root, 13);
        let (shard, _) = SpoolShard::open_on(disk.storage(), 0, cfg(&root), Recovery::default()).unwrap();
        let committer = glommio::spawn_local(shard.clone().run_committer()).detach();
        let (slow, _) = spool_message(&shard, 3).await;
        filler_until(&shard, 2);
        let d = Disposition { msg: slow, rcpt: 0, outcome: Outcome::Delivered, failure: None };
        let td = shard.append_disposition(&d).unwrap();
        shard.wait_durable(td).await.expect("the disposition is durable");
        let x = 2;
        filler_until(&shard, 3);
        // Something live in segment 3 (a session mid-DATA), so segment 3 is never relocated.
        let (busy, tb) = shard.append_chunk(b"live").unwrap();
        assert_eq!(busy.segment, 3);
        shard.wait_durable(tb).await.unwrap();
        // The same final report again, in a round whose fdatasync fails.
        disk.fail_next_fdatasyncs(1);
        let again = shard.append_disposition(&d).unwrap();
        assert!(shard.wait_durable(again).await.is_err(), "the duplicate's round was meant to fail");
        // Traffic goes on: X is relocated (after a good round) and deleted; creating the next
        // segments syncs the directory.
        for seg in 4..=6 {
            filler_until(&shard, seg);
            shard.flush().await;
        }
        shard.flush().await;
        assert!(shard.map(x).is_some(), "X is kept: relocation is suspended after the failed round");
        power_cut(&disk, &shard, committer).await;
        (slow, x)
    });
    let rec = Recovery::scan(&core_dir(tmp.path()), 0).unwrap();
    assert!(rec.segments.iter().any(|s| s.map.seq() == x), "X holds the only durable disposition");
    let m = rec.messages.iter().find(|m| m.msg == slow).expect("the live message comes back");
    assert_eq!(m.pending, vec![1, 2], "recipient 0's durable Delivered disposition was lost: it would be delivered again");
}
