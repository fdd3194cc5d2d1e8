//! What `ringctl msg` by Message-ID costs the accept path: finding the Message-ID in a header
//! block, and the per-core history's bookkeeping (index, final notes, eviction) per message.
//! `cargo bench -p blaster --bench history`.
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringpost_admin_proto::RcptState;
use ringpost_engine::message::SpooledMessage;
use ringpost_engine::shard::history::{find_message_id, FinalNote, History};
use ringpost_spool::MsgRef;

/// A newsletter-like header block (about 370 bytes) and a 20 KB body.
fn header_and_body() -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"From: Shop <orders@shop.example>\r\nTo: <customer@example.org>\r\nSubject: Your order 12345 has shipped\r\n");
    h.extend_from_slice(b"Date: Thu, 26 Nov 2026 11:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n");
    h.extend_from_slice(
        b"X-Campaign: c-991\r\nList-Unsubscribe: <https://shop.example/u/abc>\r\nMessage-ID: <20261126110000.12345@shop.example>\r\n\r\n",
    );
    h.extend(std::iter::repeat_n(b'x', 20_000));
    h
}

fn message(offset: u64) -> SpooledMessage {
    SpooledMessage::owned(
        MsgRef { core: 0, segment: 1, offset },
        "orders@shop.example".into(),
        vec!["r0@example.org".into(), "r1@example.org".into()],
        Vec::new(),
        Vec::new(),
        5,
        0,
    )
}

fn delivered(rcpt: u32) -> FinalNote {
    FinalNote { rcpt, state: RcptState::Delivered, attempts: 1, response: "250 2.0.0 ok".into(), category: None }
}

fn history(c: &mut Criterion) {
    let block = header_and_body();
    let mut g = c.benchmark_group("history");
    g.throughput(Throughput::Elements(1));
    g.bench_function("find_message_id", |b| b.iter(|| black_box(find_message_id(black_box(&block)))));
    // A full history (100,000 finished messages kept), so every finish also evicts one.
    const BATCH: u64 = 10_000;
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("admit_two_finals_finish_evict", |b| {
        b.iter_batched(
            || {
                let mut h = History::new(3_600_000, 100_000);
                for i in 0..100_000u64 {
                    let m = message(i);
                    h.admit_parsed(&m, Some(&format!("{i}.warm@shop.example")));
                    h.finish(&m, 0);
                }
                let fresh: Vec<(SpooledMessage, Box<str>)> =
                    (0..BATCH).map(|i| (message(1_000_000 + i), format!("{i}@shop.example").into())).collect();
                (h, fresh)
            },
            |(mut h, fresh)| {
                for (m, mid) in fresh {
                    h.admit_parsed(&m, Some(&mid));
                    h.record(m.id, delivered(0));
                    h.record(m.id, delivered(1));
                    h.finish(&m, 1);
                }
                h
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, history);
criterion_main!(benches);
