//! Group-commit latency on the real disk, open loop: how long an appended message (a 1 KiB body
//! chunk and its record) waits until the round covering it is durable, at a fixed offered rate.
//! It isolates the committer from the network and SMTP work that the relay bench
//! (`bench/relay.sh`) mixes in on a 2-core machine.
//!
//! `cargo run --release -p ringpost-spool --example commit_latency -- [RATE] [SECONDS] [DIR]`
//! (defaults: 5000 msg/s, 10 s, `var/bench-spool`). Messages are offered on a 100 µs tick,
//! each as its own task (as a session would), and latency counts from the tick they were due.
use glommio::{timer::sleep, LocalExecutorBuilder};
use hdrhistogram::Histogram;
use ringpost_spool::record::MessageRecord;
use ringpost_spool::{Durability, Recovery, SpoolConfig, SpoolShard};
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let rate: u64 = arg(0, "5000").parse().expect("RATE");
    let seconds: u64 = arg(1, "10").parse().expect("SECONDS");
    let dir = PathBuf::from(arg(2, "var/bench-spool"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("spool dir");
    let dir = std::path::absolute(&dir).expect("absolute dir");
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            let cfg = SpoolConfig { dir: dir.clone(), segment_size: 64 << 20, durability: Durability::Fsync, pending_bytes_max: 16 << 20 };
            let rec = Recovery::scan(&SpoolShard::core_dir(&dir, 0), 0).expect("scan");
            let (shard, _) = SpoolShard::open(0, cfg, rec).expect("open");
            let committer = glommio::spawn_local(shard.clone().run_committer());
            // The first append creates the segment (preallocation, header, directory sync): not
            // what this measures.
            let (e, t) = shard.append_chunk(b"warm-up").expect("warm-up");
            shard.wait_durable(t).await.expect("warm-up durable");
            shard.release_message(None, &[e]);
            let hist = Rc::new(RefCell::new(Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap()));
            let body = vec![b'x'; 1024];
            let start = Instant::now();
            let total = rate * seconds;
            let mut sent = 0u64;
            let mut waiters = Vec::new();
            while sent < total {
                let due_now = ((start.elapsed().as_micros() as u64 * rate) / 1_000_000).min(total);
                while sent < due_now {
                    let due = start + Duration::from_micros(sent * 1_000_000 / rate);
                    let (e, tc) = shard.append_chunk(&body).expect("append chunk");
                    let (sender, recipients) = (b"s@x.example".to_vec(), vec![b"r@y.example".to_vec()]);
                    let m = MessageRecord { sender, recipients, body: vec![e], ..Default::default() };
                    let (id, tm) = shard.append_message(&m).expect("append message");
                    let (shard, hist) = (shard.clone(), hist.clone());
                    waiters.push(glommio::spawn_local(async move {
                        shard.wait_durable_all(&[tc, tm]).await.expect("durable");
                        hist.borrow_mut().record(due.elapsed().as_micros() as u64).unwrap();
                        shard.release_message(Some(id), &[e]);
                    }));
                    sent += 1;
                }
                sleep(Duration::from_micros(100)).await;
            }
            for w in waiters {
                w.await;
            }
            let elapsed = start.elapsed().as_secs_f64();
            let (_, fsync) = shard.round_stats();
            let h = hist.borrow().clone();
            let rounds = shard.rounds();
            println!("rate {rate}/s for {seconds} s, {total} messages in {elapsed:.2} s");
            println!(
                "durable after: p50 {} us, p90 {} us, p99 {} us, max {} us",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.max()
            );
            println!(
                "{rounds} rounds, {:.1} messages per round, fdatasync mean {:.0} us",
                total as f64 / rounds as f64,
                fsync.sum as f64 / fsync.count().max(1) as f64
            );
            shard.close();
            committer.await;
        })
        .unwrap()
        .join()
        .unwrap();
}
