//! What one queued recipient costs in resident heap after a restart with a backlog: a real
//! spool on disk (message records with their body chunks in one segment, each recipient's
//! retry state after a failed first attempt in the next, as the daemon leaves them), scanned
//! and opened by the spool crate, then requeued into the ledger, the history and the retry
//! schedule as `runtime/recovery.rs` does. Measured twice: live bytes (counting allocator:
//! state kept) and the process's `RssAnon` growth after `malloc_trim` (what the kernel sees:
//! state kept plus heap pages the scan left fragmented), the figure `bench/backlog.sh` prints
//! after its restart.
//!
//!   cargo test --release -p ringpost --test backlog_recovery -- --nocapture
mod common;

use common::{live, rss_anon, Counting};
use ringpost_engine::account::bounce_class::Classifier;
use ringpost_engine::config::Config;
use ringpost_engine::outbound::queue::Delivery;
use ringpost_engine::outbound::queue::QueueManager;
use ringpost_engine::outbound::retry::RetryPolicy;
use ringpost_engine::outbound::shaping::Shaping;
use ringpost_engine::runtime::recovery::{admit, build_messages, Admitted};
use ringpost_engine::shard::history::History;
use ringpost_engine::shard::ledger::Ledger;
use ringpost_spool::record::{encode_frame, encode_message, encode_rcpt_state, FRAME_HEADER_LEN};
use ringpost_spool::segment::{encode_header, segment_path};
use ringpost_spool::{Durability, Extent, MessageRecord, MsgRef, RcptState, RecordKind, Recovery, SpoolConfig, SpoolShard};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static ALLOC: Counting = Counting;

/// One core's share of `N=200000 bench/backlog.sh` (two cores).
const N: usize = 100_000;
const T0: u64 = 1_800_000_000_000;
const DOMAINS: usize = 10;
const SEED: u32 = 0x5eed;
const REFUSED: &str = "451 4.4.1 connect to 127.0.0.1:2929: Connection refused (os error 111)";

/// Write segment `seq` of core 0 from `frames`, a closure appending frames to a buffer it
/// is handed at the offset the buffer's length says (the header is already in it).
fn write_segment(core_dir: &std::path::Path, seq: u32, mut frames: impl FnMut(&mut Vec<u8>, &mut dyn Write)) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(segment_path(core_dir, seq)).unwrap());
    let mut buf = encode_header(0, seq, 1 << 30, SEED);
    frames(&mut buf, &mut file);
    file.write_all(&buf).unwrap();
    file.flush().unwrap();
}

/// The spool `bench/backlog.sh` leaves on one core: `N` messages like blaster's (one
/// recipient, a Received trace, a body with its Message-ID) in segment 1, and the retry state
/// of each recipient after its failed first attempt in segment 2.
fn spool(root: &std::path::Path) -> Vec<MsgRef> {
    let core_dir = SpoolShard::core_dir(root, 0);
    std::fs::create_dir_all(&core_dir).unwrap();
    let mut ids = Vec::with_capacity(N);
    let trace = format!("Received: from blaster ([127.0.0.1]) by ringpost.test with ESMTP id {:0>60}; Thu, 26 Nov 2026 14:00:00 +0000\r\n", 0);
    let mut written = 0u64;
    write_segment(&core_dir, 1, |buf, file| {
        for i in 0..N {
            let body = format!("Message-ID: <{i}.{T0}@blaster.test>\r\nSubject: backlog\r\n\r\n{}\r\n", "x".repeat(64));
            let chunk_at = written + buf.len() as u64;
            encode_frame(SEED, RecordKind::Chunk, body.as_bytes(), buf);
            let r = MessageRecord {
                received_ms: T0 + i as u64, // a message a millisecond, as a fed backlog has
                sender: b"bench@blaster.test".to_vec(),
                recipients: vec![format!("user{i}@d{}.test", i % DOMAINS).into_bytes()],
                trace: trace.clone().into_bytes(),
                body: vec![Extent { segment: 1, offset: chunk_at + FRAME_HEADER_LEN as u64, len: body.len() as u32 }],
                flags: 0,
                body_hash: None,
            };
            ids.push(MsgRef { core: 0, segment: 1, offset: written + buf.len() as u64 });
            encode_frame(SEED, RecordKind::Message, &encode_message(&r), buf);
            if buf.len() > 1 << 20 {
                file.write_all(buf).unwrap();
                written += buf.len() as u64;
                buf.clear();
            }
        }
    });
    write_segment(&core_dir, 2, |buf, file| {
        for (i, id) in ids.iter().enumerate() {
            let s = RcptState { msg: *id, rcpt: 0, attempts: 1, next_attempt_ms: T0 + 120_000 + i as u64, last_response: REFUSED.into() };
            encode_frame(SEED, RecordKind::RcptState, &encode_rcpt_state(&s), buf);
            if buf.len() > 1 << 20 {
                file.write_all(buf).unwrap();
                buf.clear();
            }
        }
    });
    ids
}

fn queue_manager() -> QueueManager {
    let policy = RetryPolicy { first: Duration::from_secs(120), factor: 2.0, max: Duration::from_secs(120), max_age: Duration::from_secs(5 * 86400) };
    QueueManager::new(policy, 2, Arc::new(Shaping::new(&Config::parse("[server]\n").unwrap(), None)))
}

#[test]
fn a_recovered_backlog_stays_compact() {
    let dir = tempfile::tempdir().unwrap();
    let ids = spool(dir.path());
    drop(ids);
    let classifier = Classifier::builtin();
    let (mut ledger, mut history, mut q) = (Ledger::new(), History::new(60_000, 100_000), queue_manager());
    let (live0, rss0) = (live(), rss_anon());
    let cfg = SpoolConfig { dir: dir.path().to_path_buf(), segment_size: 64 << 20, durability: Durability::Fsync, pending_bytes_max: 1 << 20 };
    let scan = std::time::Instant::now();
    let (shard, recovered) = SpoolShard::open(0, cfg, Recovery::scan(&SpoolShard::core_dir(dir.path(), 0), 0).unwrap()).unwrap();
    let scan = scan.elapsed();
    assert_eq!(recovered.len(), N);
    // runtime/recovery.rs's requeue, with this core owning every destination: each group is
    // scheduled as `Core::enqueue_group` does with a recovered group (here every next attempt
    // is still ahead).
    let msgs = build_messages(&recovered, |s| shard.map(s), &Default::default());
    for (m, msg) in recovered.into_iter().zip(msgs) {
        let msg = msg.expect("every segment is there");
        let Admitted::Open(groups) = admit(&mut ledger, &mut history, &classifier, &msg, m) else { panic!("every recipient is open") };
        for g in groups {
            let (domain, last_response) = (q.intern(&g.domain), g.last_response.map(|r| q.intern(&r)));
            q.schedule(
                Delivery { msg: msg.clone(), rcpts: g.rcpts.into(), attempts: g.attempts, last_response, domain, pool: None },
                g.not_before_ms,
            );
        }
    }
    assert_eq!((ledger.len(), q.scheduled_len()), (N, N));
    let kept = (live() - live0) as f64 / N as f64;
    let resident = (rss_anon() - rss0) as f64 / N as f64;
    println!(
        "after recovery of {N} (scan {scan:.2?}): {kept:.0} bytes per queued recipient kept (allocations), {resident:.0} resident (RssAnon growth)"
    );
    assert!(kept <= KEPT_BUDGET, "{kept:.0} bytes per recovered recipient kept, budget {KEPT_BUDGET}");
    assert!(resident <= RESIDENT_BUDGET, "{resident:.0} bytes per recovered recipient resident, budget {RESIDENT_BUDGET}");
}

/// What the recovered state may keep: 180 measured, about the running path's (backlog_memory);
/// 193 with the Message-ID index as a hash map, 245 before the eighth session's 40-byte handle,
/// one-word ledger entries and packed Message-ID index; 378 before the seventh session's. An
/// 8-byte field more in a ledger entry fails it (188), so does the hash-map index (193).
const KEPT_BUDGET: f64 = 184.0;
/// What it may hold resident: 171 measured (182 with the hash-map index, 235 before the eighth
/// session, 375 before the seventh). With each message's handle made as its record was dropped
/// (the requeue before this test) it was 1,001 here and 1,067 on the daemon
/// (`N=200000 bench/backlog.sh`), which fails it; so does an 8-byte field more in a ledger
/// entry (179).
const RESIDENT_BUDGET: f64 = 175.0;
