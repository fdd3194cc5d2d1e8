//! The committer runs one round at a time: a round writes only after the round before it is
//! durable (or failed). Overlapping rounds were tried and taken out (see `src/committer.rs`):
//! rounds syncing one file share its writeback-error state, so an older round could be
//! acknowledged after a younger one consumed the EIO. Checked on the simulated disk with its
//! syncs held.
use ringpost_spool::sim::SimDisk;
use ringpost_spool::{Extent, MsgRef, Recovery, SpoolShard, Ticket};

mod sim_common;
use sim_common::{core_dir, one_rcpt, open_fresh, power_cut, run};

/// Append a one-recipient message with body `body`: its id, body extent and both tickets.
fn message(shard: &SpoolShard, body: &[u8]) -> (MsgRef, Extent, [Ticket; 2]) {
    let (e, tc) = shard.append_chunk(body).unwrap();
    let (id, tm) = shard.append_message(&one_rcpt(vec![e])).unwrap();
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

/// Let the committer run 200 turns.
async fn turns() {
    for _ in 0..200 {
        futures_lite::future::yield_now().await;
    }
}

/// A warm-up message, so segment 1 exists and its creation's syncs are out of the way.
async fn warm_up(shard: &SpoolShard) -> MsgRef {
    let (id, _, t) = message(shard, b"warm-up");
    shard.wait_durable_all(&t).await.unwrap();
    id
}

#[test]
fn the_next_round_writes_only_after_the_round_in_flight_is_durable() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        let disk = SimDisk::new(tmp.path(), 11);
        let (shard, committer) = open_fresh(tmp.path(), &disk);
        let w = warm_up(&shard).await;
        disk.hold_syncs();
        let (a, _, ta) = message(&shard, &[b'a'; 700]);
        assert!(until_held(&disk, 1).await, "the first round never reached its sync");
        let writes = disk.writes();
        let (b, _, tb) = message(&shard, &[b'b'; 700]);
        turns().await;
        assert_eq!(disk.writes(), writes, "the next round wrote while the round before it was syncing");
        assert_eq!(disk.held_syncs(), 1, "the next round synced while the round before it was syncing");
        assert!(futures_lite::future::poll_once(shard.wait_durable_all(&ta)).await.is_none(), "a round settled before its sync finished");
        disk.release_all_syncs();
        shard.wait_durable_all(&ta).await.expect("the first round is durable");
        shard.wait_durable_all(&tb).await.expect("the second round is durable");
        assert_eq!(shard.rounds(), 3, "warm-up, first and second rounds");
        assert_eq!(disk.max_syncs_in_flight(), 1);
        power_cut(&disk, &shard, committer).await;
        let rec = Recovery::scan(&core_dir(tmp.path()), 0).unwrap();
        let ids: Vec<MsgRef> = rec.messages.iter().map(|m| m.msg).collect();
        assert_eq!(ids, vec![w, a, b]);
    });
}

#[test]
fn a_failed_round_fails_what_was_appended_during_its_sync_and_appends_move_on_once() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        let disk = SimDisk::new(tmp.path(), 12);
        let (shard, committer) = open_fresh(tmp.path(), &disk);
        warm_up(&shard).await;
        disk.hold_syncs();
        let (a, ea, ta) = message(&shard, &[b'a'; 700]);
        assert!(until_held(&disk, 1).await);
        // Appended while the round syncs: pending, failed with it.
        let (b, eb, tb) = message(&shard, &[b'b'; 700]);
        disk.fail_next_fdatasyncs(1);
        disk.release_all_syncs();
        assert!(shard.wait_durable_all(&ta).await.is_err(), "the failed round was acknowledged");
        assert!(shard.wait_durable_all(&tb).await.is_err(), "a record pending behind a failed round was acknowledged");
        turns().await;
        assert_eq!(shard.failed_rounds(), 1, "one failed sync is one failed round");
        for (id, e) in [(a, ea), (b, eb)] {
            shard.release_message(Some(id), &[e]);
        }
        let (d, ed, td) = message(&shard, b"after");
        shard.wait_durable_all(&td).await.expect("the spool goes on after a failed round");
        assert_eq!((ed.segment, d.segment), (a.segment + 1, a.segment + 1), "appends move to the next segment, once");
        power_cut(&disk, &shard, committer).await;
        let rec = Recovery::scan(&core_dir(tmp.path()), 0).unwrap();
        assert!(rec.messages.iter().any(|m| m.msg == d), "the message acknowledged after the failure is recovered");
    });
}

#[test]
fn a_power_cut_ends_a_held_sync() {
    run(|| async {
        let tmp = tempfile::tempdir().unwrap();
        let disk = SimDisk::new(tmp.path(), 13);
        let (shard, committer) = open_fresh(tmp.path(), &disk);
        warm_up(&shard).await;
        disk.hold_syncs();
        let (_, _, t) = message(&shard, b"held");
        assert!(until_held(&disk, 1).await);
        disk.cut();
        assert!(shard.wait_durable_all(&t).await.is_err(), "a sync cut by the power acknowledged its round");
        shard.close();
        committer.await;
    });
}
