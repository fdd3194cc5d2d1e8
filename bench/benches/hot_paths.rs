//! Criterion microbenchmarks of ringpost's hot pure code: SMTP command parsing, end-of-data
//! scanning (bytes/s), spool record encoding into the commit batch, and client reply parsing.
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringpost_engine::smtp::client::parse_reply;
use ringpost_engine::smtp::command::parse_command;
use ringpost_engine::smtp::data::DataScanner;
use ringpost_spool::record::{encode_frame, encode_message, Extent, MessageRecord, RecordKind};

fn commands(c: &mut Criterion) {
    let lines: [&[u8]; 4] = [
        b"MAIL FROM:<newsletter-bounces+12345@mailer.example.com> SIZE=10240 BODY=8BITMIME",
        b"RCPT TO:<someone.with.a.long.name@recipient-domain.example.org>",
        b"EHLO client.example.net",
        b"DATA",
    ];
    let mut g = c.benchmark_group("smtp_command_parse");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("mail_rcpt_ehlo_data", |b| {
        b.iter(|| {
            for l in lines {
                black_box(parse_command(black_box(l)).unwrap());
            }
        })
    });
    g.finish();
}

fn body(size: usize) -> Vec<u8> {
    let mut v = b"Subject: bench\r\n\r\n".to_vec();
    let line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghij\r\n";
    while v.len() + line.len() < size {
        v.extend_from_slice(line);
    }
    v.extend_from_slice(b".\r\n");
    v
}

fn end_of_data(c: &mut Criterion) {
    let mut g = c.benchmark_group("end_of_data_scan");
    for size in [1024usize, 64 * 1024, 1024 * 1024] {
        let b = body(size);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &b, |bench, b| {
            bench.iter(|| {
                let mut s = DataScanner::new();
                let f = s.feed(black_box(b));
                assert!(f.done);
                black_box(f)
            })
        });
    }
    g.finish();
}

fn spool_encode(c: &mut Criterion) {
    let msg = MessageRecord {
        received_ms: 1,
        sender: b"newsletter@mailer.example.com".to_vec(),
        recipients: vec![b"someone@recipient.example.org".to_vec()],
        trace: b"Received: from client.example.net ([127.0.0.1])\r\n\tby mta.example (ringpost) with ESMTP;\r\n\tMon, 23 Nov 2026 12:00:00 +0000\r\n"
            .to_vec(),
        body: vec![Extent { segment: 1, offset: 4096, len: 1024 }],
        ..Default::default()
    };
    let chunk = body(1024);
    let mut g = c.benchmark_group("spool_record_encode_append");
    g.throughput(Throughput::Elements(1));
    g.bench_function("chunk_1k_plus_message", |b| {
        let mut batch = Vec::with_capacity(1 << 20);
        b.iter(|| {
            if batch.len() > (1 << 20) - 4096 {
                batch.clear();
            }
            encode_frame(0x5EED, RecordKind::Chunk, black_box(&chunk), &mut batch);
            encode_frame(0x5EED, RecordKind::Message, &encode_message(black_box(&msg)), &mut batch);
        })
    });
    g.finish();
}

fn replies(c: &mut Criterion) {
    let ehlo = b"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n";
    let ok = b"250 2.0.0 Ok: queued as 4FJ3kX2b9Zz1\r\n";
    let mut g = c.benchmark_group("client_reply_parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("single_line", |b| b.iter(|| black_box(parse_reply(black_box(ok)).unwrap())));
    g.bench_function("ehlo_multiline", |b| b.iter(|| black_box(parse_reply(black_box(ehlo)).unwrap())));
    g.finish();
}

fn dkim(c: &mut Criterion) {
    use ringpost_engine::dkim::{load_key, BodyHashStream, DkimAlgorithm, DkimConfig, Signers};
    let mut g = c.benchmark_group("dkim_body_hash");
    for size in [4 * 1024usize, 1024 * 1024] {
        let b = body(size);
        let wire = &b[..b.len() - 3];
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &wire, |bench, wire| {
            bench.iter(|| {
                let mut s = BodyHashStream::new();
                s.write_wire(black_box(wire));
                black_box(s.finish())
            })
        });
    }
    g.finish();
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/keys");
    let header_block = b"From: Sender <news@signer.test>\r\nTo: <r@example.org>\r\nSubject: hello\r\nDate: Mon, 23 Nov 2026 12:00:00 +0000\r\nMessage-ID: <1@signer.test>\r\n";
    let mut g = c.benchmark_group("dkim_sign_with_precomputed_body_hash");
    g.throughput(Throughput::Elements(1));
    for (name, alg, file) in
        [("rsa-sha256", DkimAlgorithm::RsaSha256, "rsa2048-test-only.pem"), ("ed25519-sha256", DkimAlgorithm::Ed25519Sha256, "ed25519-test-only.pem")]
    {
        let path = keys.join(file);
        let key = load_key(alg, &std::fs::read_to_string(&path).unwrap(), &path).unwrap();
        let cfg = DkimConfig { domain: "signer.test".into(), selector: "s".into(), algorithm: alg, key_file: path, headers: None, oversign: None };
        let signers = Signers::from_entries(vec![Signers::entry(&cfg, key)]);
        g.bench_function(name, |b| b.iter(|| black_box(signers.sign(black_box(header_block), &[7u8; 32], 1_795_000_000).unwrap())));
    }
    g.finish();
}

criterion_group!(benches, commands, end_of_data, spool_encode, replies, dkim);
criterion_main!(benches);
