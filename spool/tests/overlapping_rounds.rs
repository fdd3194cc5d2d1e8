//! Group commit with overlapping rounds, on the simulated disk with its syncs held: a round
//! writes and syncs while the previous round's sync is in flight, rounds settle in order
//! whichever sync finishes first, and a failed round fails the rounds in flight behind it.
use ringpost_spool::record::MessageRecord;
use ringpost_spool::sim::SimDisk;
use ringpost_spool::{Extent, MsgRef, Recovery, SpoolShard, Ticket};
use std::path::Path;
use std::rc::Rc;

mod sim_common;
use sim_common::{cfg, core_dir, run};

/// A fresh sim disk with the spool open on it and its committer running.
fn open_fresh(root: &Path, disk: &SimDisk) -> (Rc<SpoolShard>, glommio::task::JoinHandle<()>) {
    let rec = Recovery::scan(&core_dir(root), 0).unwrap();
    let (shard, _) = SpoolShard::open_on(disk.storage(), 0, cfg(root), rec).unwrap();
    let committer = glommio::spawn_local(shard.clone().run_committer()).detach();
    (shard, committer)
}

/// Append a one-recipient message with body `body`: its id, body extent and both tickets.
fn message(shard: &SpoolShard, body: &[u8]) -> (MsgRef, Extent, [Ticket; 2]) {
    let (e, tc) = shard.append_chunk(body).unwrap();
    let rec = MessageRecord { sender: b"s@x".to_vec(), recipients: vec![b"r@y".to_vec()], body: vec![e], ..Default::default() };
    let (id, tm) = shard.append_message(&rec).unwrap();
    (id, e, [tc, tm])
}

/// Yield until `n` syncs are parked; false if that does not happen within 200 turns.
async fn until_held(disk: &SimDisk, n: usize) -> bool {
    for _ in 0..200 {
        if disk.held_syncs() == n {
            return true;
        }
        futures_lite::future::yield_now().await;
    }
    false
}

/// Whether waiting for `tickets` has finished after letting the committer run 50 turns.
async fn settled_after_turns(shard: &SpoolShard, tickets: &[Ticket]) -> bool {
    for _ in 0..50 {
        futures_lite::future::yield_now().await;
    }
    futures_lite::future::poll_once(shard.wait_durable_all(tickets)).await.is_some()
}

/// A warm-up message, so segment 1 exists and its creation's syncs are out of the way.
async fn warm_up(shard: &SpoolShard) -> MsgRef {
    let (id, _, t) = message(shard, b"warm-up");
    shard.wait_durable_all(&t).await.unwrap();
    id
}

#[test]
fn a_round_syncs_while_the_previous_sync_is_in_flight_and_settles_after_it() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        let disk = SimDisk::new(tmp.path(), 11);
        let (shard, committer) = open_fresh(tmp.path(), &disk);
        let w = warm_up(&shard).await;
        disk.hold_syncs();
        let (a, _, ta) = message(&shard, &[b'a'; 700]);
        assert!(until_held(&disk, 1).await, "the first round never reached its sync");
        let (b, _, tb) = message(&shard, &[b'b'; 700]);
        assert!(until_held(&disk, 2).await, "the second round did not sync while the first one's sync was in flight");
        assert!(!settled_after_turns(&shard, &ta).await, "a round settled before its sync finished");
        // The younger sync finishes first: its round must wait for the older one.
        disk.release_sync(1);
        assert!(!settled_after_turns(&shard, &tb).await, "a round settled before the round in flight ahead of it");
        assert!(!settled_after_turns(&shard, &ta).await);
        disk.release_sync(0);
        shard.wait_durable_all(&ta).await.expect("the first round is durable");
        shard.wait_durable_all(&tb).await.expect("the second round is durable");
        assert_eq!(shard.rounds(), 3, "warm-up, first and second rounds");
        // What was acknowledged survives a cut: each round's own sync covered its writes.
        disk.cut();
        shard.close();
        committer.await;
        disk.revive();
        let rec = Recovery::scan(&core_dir(tmp.path()), 0).unwrap();
        let ids: Vec<MsgRef> = rec.messages.iter().map(|m| m.msg).collect();
        assert_eq!(ids, vec![w, a, b]);
    });
}

#[test]
fn a_failed_round_fails_the_round_in_flight_behind_it_and_appends_move_on_once() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        let disk = SimDisk::new(tmp.path(), 12);
        let (shard, committer) = open_fresh(tmp.path(), &disk);
        warm_up(&shard).await;
        disk.hold_syncs();
        let (a, ea, ta) = message(&shard, &[b'a'; 700]);
        assert!(until_held(&disk, 1).await);
        let (b, eb, tb) = message(&shard, &[b'b'; 700]);
        assert!(until_held(&disk, 2).await);
        // Appended while both are in flight: pending, failed with them.
        let (c, ec, tc) = message(&shard, &[b'c'; 300]);
        // The older sync fails; the younger one succeeds on its own.
        disk.fail_next_fdatasyncs(1);
        disk.release_sync(0);
        assert!(shard.wait_durable_all(&ta).await.is_err(), "the failed round was acknowledged");
        disk.release_all_syncs();
        assert!(shard.wait_durable_all(&tb).await.is_err(), "a round behind a failed one was acknowledged by its own sync");
        assert!(shard.wait_durable_all(&tc).await.is_err(), "a record pending behind a failed round was acknowledged");
        for _ in 0..50 {
            futures_lite::future::yield_now().await;
        }
        assert_eq!(shard.failed_rounds(), 1, "the round behind the failed one is not a second failure");
        for (id, e) in [(a, ea), (b, eb), (c, ec)] {
            shard.release_message(Some(id), &[e]);
        }
        let (d, ed, td) = message(&shard, b"after");
        shard.wait_durable_all(&td).await.expect("the spool goes on after a failed round");
        assert_eq!((ed.segment, d.segment), (a.segment + 1, a.segment + 1), "appends move to the next segment, once");
        disk.cut();
        shard.close();
        committer.await;
        disk.revive();
        let rec = Recovery::scan(&core_dir(tmp.path()), 0).unwrap();
        assert!(rec.messages.iter().any(|m| m.msg == d), "the message acknowledged after the failure is recovered");
    });
}
