//! What one queued recipient costs in resident heap, measured: a counting allocator (with
//! glibc's chunk rounding, so the figure is what malloc really hands out) around the state a
//! core keeps for a backlog — the spooled message as the engine builds it from a real record
//! in a mapped segment, the ledger entry, the history's Message-ID index, the retry schedule
//! after a failed first attempt (destination down), and the spool's liveness bookkeeping.
//!
//! Issue 9 item 4: ≤ 200 bytes per queued recipient. `bench/backlog.sh` measures the same on
//! the running daemon (RssAnon growth ÷ recipients); this test makes each piece visible and
//! fails when a change makes the state fat again.
//!
//!   cargo test --release -p ringpost --test backlog_memory -- --nocapture
mod common;

use ringpost_engine::config::Config;
use ringpost_engine::message::SpooledMessage;
use ringpost_engine::outbound::intern::Name;
use ringpost_engine::outbound::queue::{Delivery, QueueManager, Rcpts, RELEASE_BATCH};
use ringpost_engine::outbound::retry::RetryPolicy;
use ringpost_engine::outbound::shaping::site::Site;
use ringpost_engine::outbound::shaping::Shaping;
use ringpost_engine::shard::history::History;
use ringpost_engine::shard::ledger::Ledger;
use ringpost_engine::smtp::client::RcptResult;
use ringpost_engine::smtp::reply::Reply;
use ringpost_spool::liveness::{state_key, Liveness};
use ringpost_spool::record::{encode_frame, encode_message, FRAME_HEADER_LEN};
use ringpost_spool::{Extent, MessageRecord, MsgRef, RecordKind, SegmentMap};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

/// One core's share of `N=200000 bench/backlog.sh` (two cores).
const N: usize = 100_000;
const T0: u64 = 1_800_000_000_000;
const DOMAINS: usize = 10;

/// A segment file holding `N` message records like blaster's (one recipient, a Received
/// trace header, a body with its own Message-ID), and the records' positions.
fn segment() -> (Arc<SegmentMap>, Vec<(MsgRef, MessageRecord)>, tempfile::NamedTempFile) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let mut out = Vec::new();
    let mut records = Vec::with_capacity(N);
    let trace = format!("Received: from blaster ([127.0.0.1]) by ringpost.test with ESMTP id {:0>60}; Thu, 26 Nov 2026 14:00:00 +0000\r\n", 0);
    for i in 0..N {
        let body = format!("Message-ID: <{i}.{T0}@blaster.test>\r\nSubject: backlog\r\n\r\n{}\r\n", "x".repeat(64));
        let body_at = out.len() as u64;
        out.extend_from_slice(body.as_bytes());
        let r = MessageRecord {
            received_ms: T0 + i as u64, // a message a millisecond, as a fed backlog has
            sender: b"bench@blaster.test".to_vec(),
            recipients: vec![format!("user{i}@d{}.test", i % DOMAINS).into_bytes()],
            trace: trace.clone().into_bytes(),
            body: vec![Extent { segment: 1, offset: body_at, len: body.len() as u32 }],
            flags: 0,
            body_hash: None,
        };
        let id = MsgRef { core: 0, segment: 1, offset: out.len() as u64 };
        encode_frame(7, RecordKind::Message, &encode_message(&r), &mut out);
        records.push((id, r));
    }
    assert!(out.len() > FRAME_HEADER_LEN);
    file.write_all(&out).unwrap();
    file.flush().unwrap();
    let map = Arc::new(SegmentMap::map(1, file.path().to_path_buf(), file.as_file()).unwrap());
    (map, records, file)
}

fn queue_manager() -> QueueManager {
    let policy = RetryPolicy { first: Duration::from_secs(120), factor: 2.0, max: Duration::from_secs(120), max_age: Duration::from_secs(5 * 86400) };
    let shaping = Arc::new(Shaping::new(&Config::parse("[server]\n").unwrap(), None));
    let mut q = QueueManager::new(policy, 2, shaping);
    for d in 0..DOMAINS {
        let domain = format!("d{d}.test");
        q.site_resolved(&domain, Site::of_mx(&domain, ["127.0.0.1".to_string()]), T0, true);
    }
    q
}

/// Bytes per recipient that `step` leaves allocated.
fn measure(step: impl FnOnce()) -> f64 {
    let before = common::live();
    step();
    (common::live() - before) as f64 / N as f64
}

#[test]
fn a_queued_recipient_stays_compact() {
    let (map, records, _file) = segment();
    let mut msgs = Vec::with_capacity(N);
    let message = measure(|| {
        for (id, r) in &records {
            msgs.push(Arc::new(SpooledMessage::from_record(*id, r, |_| Some(map.clone())).unwrap()));
        }
    }) - 8.0; // the test's own Vec of handles
    let mut ledger = Ledger::new();
    let ledger_b = measure(|| msgs.iter().for_each(|m| assert!(ledger.admit(m.clone(), &[0], Vec::new()).is_none())));
    let mut history = History::new(60_000, 100_000);
    let history_b = measure(|| msgs.iter().for_each(|m| history.admit(m)));
    let mut q = queue_manager();
    let domains: Vec<Name> = (0..DOMAINS).map(|d| q.intern(&format!("d{d}.test"))).collect();
    let refused = Reply::new(451, (4, 4, 1), "connect to 127.0.0.1:2929: Connection refused (os error 111)");
    let queue_b = measure(|| {
        for (i, m) in msgs.iter().enumerate() {
            let d =
                Delivery { msg: m.clone(), rcpts: Rcpts::One(0), attempts: 0, last_response: None, domain: domains[i % DOMAINS].clone(), pool: None };
            let s = q.settle(T0, d, vec![RcptResult::Transient(refused.clone())], None);
            assert!(s.deferred.is_some() && s.finals.is_empty());
        }
    });
    let mut live = Liveness::new(0);
    let spool_b = measure(|| {
        for (i, (id, _)) in records.iter().enumerate() {
            live.add_message(*id);
            live.note_about(*id, state_key(0), 2, 64 + 80 * i as u64);
        }
    });
    assert_eq!((ledger.len(), q.scheduled_len()), (N, N));
    let total = message + ledger_b + history_b + queue_b + spool_b;
    println!(
        "resident bytes per queued recipient (N={N}): message {message:.0}, ledger {ledger_b:.0}, history {history_b:.0}, \
         schedule {queue_b:.0}, spool liveness {spool_b:.0}; total {total:.0}"
    );
    assert!(total <= BUDGET, "{total:.0} bytes per queued recipient, budget {BUDGET}");

    // The whole backlog comes due at once (a retry wave after an outage, a restart): it leaves
    // a batch at a time, every delivery once, the core free between two calls. Then the same
    // with every domain suspended (a restart keeps an operator's suspensions): its mail waits
    // in the ready queues, and releasing it must not cost more.
    let mut held = queue_manager();
    for (i, m) in msgs.iter().enumerate() {
        let d = Delivery { msg: m.clone(), rcpts: Rcpts::One(0), attempts: 1, last_response: None, domain: domains[i % DOMAINS].clone(), pool: None };
        held.schedule(d, T0);
    }
    for d in 0..DOMAINS {
        drop(held.suspend(Some(&format!("d{d}.test"))));
    }
    for (what, q) in [("", &mut q), (", every domain suspended", &mut held)] {
        let (calls, longest) = release_all(q);
        println!("release of {N} due at once{what}: {calls} calls of at most {RELEASE_BATCH}, the longest {longest:?}");
    }
}

/// Release everything due in a day's time, call by call: the calls and the longest.
fn release_all(q: &mut QueueManager) -> (usize, Duration) {
    let now = T0 + 86_400_000;
    for d in 0..DOMAINS {
        let domain = format!("d{d}.test");
        q.site_resolved(&domain, Site::of_mx(&domain, ["127.0.0.1".to_string()]), now, true);
    }
    let (mut calls, mut longest) = (0, Duration::ZERO);
    while q.next_due_ms().is_some_and(|t| t <= now) {
        let waiting = q.scheduled_len();
        let started = Instant::now();
        drop(q.release_due(now, true));
        longest = longest.max(started.elapsed());
        assert_eq!(waiting - q.scheduled_len(), RELEASE_BATCH.min(waiting), "call {calls}: one batch");
        calls += 1;
    }
    assert_eq!((q.scheduled_len(), calls), (0, N.div_ceil(RELEASE_BATCH)));
    assert_eq!(q.views(now).iter().map(|v| v.ready).sum::<usize>(), N, "every delivery released once");
    (calls, longest)
}

/// The budget this test holds the state to: 172 measured (message 56, ledger 21, history 10,
/// schedule 53, spool liveness 31). 183 with the Message-ID index as a hash map (history 22),
/// 184 with the ledger as a hash set; 237 before the eighth session's 40-byte message handle
/// (fields read from the record in its map), one-word ledger entries and packed Message-ID
/// index; 369 before the seventh session's dense liveness slots, id-keyed ledger and packed
/// schedule entries; 1,159 before issue 9 item 4's work. Issue 9 item 4 asks for ≤ 200. An
/// 8-byte field more in a ledger entry fails it (180), so does the hash-map index (183).
const BUDGET: f64 = 176.0;
