//! `blaster sink`: an SMTP receiver that behaves like real destinations and checks what it gets.
//!
//! It answers a configurable share of RCPTs and messages with 4xx/5xx, refuses a share of
//! connections with `421` at the banner, adds latency per command, caps concurrent connections
//! (counting each excess attempt as a shaping violation), and for every accepted message checks
//! the body digest, records (id, recipient) for duplicate and loss accounting, and measures
//! end-to-end latency from the sender's intended send time. Commands are parsed with the
//! engine's own sans-I/O parser and DATA is framed by its DATA scanner.
use crate::report::{latency_histogram, DomainReport, Percentiles, SinkReport};
use crate::workload::read_stamp;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use ringpost_smtp::command::{parse_command, Command};
use ringpost_smtp::data::DataScanner;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Options of `blaster sink`.
#[derive(Debug, Clone, Default)]
pub struct SinkOpts {
    /// Address to listen on (every core binds it with SO_REUSEPORT).
    pub listen: Vec<SocketAddr>,
    /// Executors.
    pub cores: usize,
    /// Share of RCPTs answered 451.
    pub rcpt_temp: f64,
    /// Share of RCPTs answered 550.
    pub rcpt_perm: f64,
    /// Share of messages answered 451 after DATA.
    pub data_temp: f64,
    /// Share of messages answered 554 after DATA.
    pub data_perm: f64,
    /// Share of connections refused with 421 at the banner.
    pub banner_421: f64,
    /// Added latency before every reply.
    pub delay: Duration,
    /// Concurrent connection cap (excess: 421 and a shaping violation).
    pub max_connections: Option<usize>,
    /// Stop after this many accepted messages.
    pub exit_after: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// File of expected `id rcpt,rcpt` lines (from `blaster send --accepted-log`). Read at the
    /// end of the run (waiting up to 10 s for it to appear), so the sink can start first.
    pub expect: Option<std::path::PathBuf>,
    /// Reply scripts: every RCPT for this domain gets this reply (e.g. `421 4.7.0 [TSS04] ...`),
    /// and its time is recorded in the report.
    pub replies: Vec<(String, String)>,
}

/// Counters shared across cores (relaxed atomics) plus connection tables touched only on
/// connect and disconnect.
#[derive(Default)]
pub struct SinkShared {
    /// Messages accepted.
    pub received: AtomicU64,
    /// Stop now.
    pub stop: Arc<AtomicBool>,
    conns: AtomicUsize,
    peak: AtomicUsize,
    /// Connections accepted so far.
    accepted: AtomicU64,
    violations: AtomicU64,
    per_ip: Mutex<HashMap<IpAddr, (usize, usize)>>,
    per_domain: Mutex<HashMap<String, (usize, usize)>>,
}

#[derive(Default)]
struct CoreStats {
    arrivals: Vec<(String, String)>,
    corrupted: u64,
    unstamped: u64,
    /// Messages accepted after `BDAT ... LAST`.
    by_bdat: u64,
    faults: BTreeMap<String, u64>,
    domains: HashMap<String, (u64, f64, f64)>,
    /// Per source IP: messages, EHLO names, messages per Unix second.
    sources: HashMap<IpAddr, SourceStats>,
    /// Scripted domains: the times their RCPTs came.
    attempts: HashMap<String, Vec<f64>>,
    first: Option<f64>,
    last: f64,
    recipients: u64,
}

#[derive(Default)]
struct SourceStats {
    messages: u64,
    ehlo: std::collections::BTreeSet<String>,
    per_second: BTreeMap<u64, u64>,
}

struct CoreResult {
    stats: CoreStats,
    hist: Histogram<u64>,
}

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// io_uring depth of each sink core. The kernel sizes a ring's poll-cancel hash table from its
/// completion queue (2 × depth; 2^(log2 − 5) buckets, at most 256), and glommio's default (128)
/// gives 8 buckets: with the 4,300 connections of `bench/shaping.sh` (1,000 sites × 4 sources)
/// each cancel walked hundreds of polls, and `io_poll_find` took 13.7 % of the sink's samples
/// against none with 64 connections, making the receiving side, which a real deployment's
/// remote receivers pay, look like the relay's cost. 4,096 gives the full 256 buckets (2,048
/// gave 128: still 2.8 µs of `io_poll_find` per message). ringpost's own cores use the same
/// depth (`engine/src/runtime/mod.rs`).
const SINK_RING_DEPTH: usize = 4096;

/// Run the sink until `exit_after`, `duration` or `shared.stop`; returns the report.
pub fn run(opts: SinkOpts, shared: Arc<SinkShared>) -> SinkReport {
    let online = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cores = opts.cores.max(1);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for core in 0..cores {
        let (opts, shared, ready) = (opts.clone(), shared.clone(), ready_tx.clone());
        let placement = if cores <= online { Placement::Fixed(core) } else { Placement::Unbound };
        handles.push(
            LocalExecutorBuilder::new(placement)
                .name(&format!("sink-{core}"))
                .ring_depth(SINK_RING_DEPTH)
                .spawn(move || async move { run_core(core, opts, shared, ready).await })
                .expect("start executor"),
        );
    }
    for _ in 0..cores {
        let _ = ready_rx.recv();
    }
    eprintln!("blaster sink: listening on {:?}", opts.listen);
    let results: Vec<CoreResult> = handles.into_iter().map(|h| h.join().expect("sink core")).collect();
    merge(results, &opts, &shared)
}

fn merge(results: Vec<CoreResult>, opts: &SinkOpts, shared: &SinkShared) -> SinkReport {
    let mut hist = latency_histogram();
    let mut r = SinkReport::default();
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    let (mut first, mut last) = (f64::MAX, 0f64);
    let mut domains: HashMap<String, (u64, f64, f64)> = HashMap::new();
    for c in results {
        hist.add(&c.hist).expect("same bounds");
        r.corrupted += c.stats.corrupted;
        r.unstamped += c.stats.unstamped;
        r.received_bdat += c.stats.by_bdat;
        r.recipients += c.stats.recipients;
        for (k, v) in c.stats.faults {
            *r.faults.entry(k).or_default() += v;
        }
        for (d, (n, f, l)) in c.stats.domains {
            let e = domains.entry(d).or_insert((0, f64::MAX, 0.0));
            e.0 += n;
            e.1 = e.1.min(f);
            e.2 = e.2.max(l);
        }
        if let Some(f) = c.stats.first {
            first = first.min(f);
            last = last.max(c.stats.last);
        }
        for a in c.stats.arrivals {
            *seen.entry(a).or_default() += 1;
        }
        merge_sources(&mut r, c.stats.sources, c.stats.attempts);
    }
    r.received = shared.received.load(Ordering::Relaxed);
    r.duplicates = seen.values().map(|n| n - 1).sum();
    if let Some(path) = &opts.expect {
        let expect = read_expect(path);
        let mut missing = Vec::new();
        for line in expect.lines() {
            let mut parts = line.split_whitespace();
            let (Some(id), Some(rcpts)) = (parts.next(), parts.next()) else { continue };
            for rcpt in rcpts.split(',') {
                if !seen.contains_key(&(id.to_string(), rcpt.to_string())) {
                    missing.push(format!("{id}:{rcpt}"));
                }
            }
        }
        r.missing = Some(missing.len() as u64);
        r.missing_sample = missing.into_iter().take(20).collect();
    }
    r.shaping_violations = shared.violations.load(Ordering::Relaxed);
    r.peak_connections = shared.peak.load(Ordering::Relaxed);
    r.connections = shared.accepted.load(Ordering::Relaxed);
    r.peak_connections_per_ip = shared.per_ip.lock().unwrap().iter().map(|(ip, (_, p))| (ip.to_string(), *p)).collect();
    let peaks = shared.per_domain.lock().unwrap().clone();
    for (d, (n, f, l)) in domains {
        let span = (l - f).max(1e-3);
        let peak = peaks.get(&d).map(|x| x.1).unwrap_or(0);
        r.domains.insert(d, DomainReport { recipients: n, per_s: n as f64 / span, peak_connections: peak });
    }
    if first < f64::MAX {
        r.duration_s = (last - first).max(1e-3);
        r.msgs_per_s = r.received as f64 / r.duration_s;
    }
    r.end_to_end_latency = Percentiles::of(&hist);
    r
}

/// The accepted-ids file, once its writer has renamed it into place.
fn read_expect(path: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::read_to_string(path) {
            Ok(t) => return t,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                eprintln!("blaster sink: cannot read --expect {}: {e}", path.display());
                return String::new();
            }
        }
    }
}

struct Core {
    opts: SinkOpts,
    shared: Arc<SinkShared>,
    stats: RefCell<CoreStats>,
    hist: RefCell<Histogram<u64>>,
    rng: RefCell<rand::rngs::StdRng>,
}

impl Core {
    fn roll(&self, share: f64) -> bool {
        share > 0.0 && self.rng.borrow_mut().gen_bool(share.min(1.0))
    }

    fn fault(&self, name: &str) {
        *self.stats.borrow_mut().faults.entry(name.to_string()).or_default() += 1;
    }

    fn done(&self, started: Instant) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
            || self.opts.exit_after.is_some_and(|n| self.shared.received.load(Ordering::Relaxed) >= n)
            || self.opts.duration.is_some_and(|d| started.elapsed() >= d)
    }
}

async fn run_core(core: usize, opts: SinkOpts, shared: Arc<SinkShared>, ready: std::sync::mpsc::Sender<()>) -> CoreResult {
    let c = Rc::new(Core {
        opts: opts.clone(),
        shared,
        stats: RefCell::new(CoreStats::default()),
        hist: RefCell::new(latency_histogram()),
        rng: RefCell::new(rand::rngs::StdRng::seed_from_u64(core as u64 + 17)),
    });
    let listeners: Vec<TcpListener> = opts.listen.iter().map(|a| TcpListener::bind(a).expect("bind sink")).collect();
    let _ = ready.send(());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for l in listeners {
        tasks.push(glommio::spawn_local(accept_loop(c.clone(), l, started)));
    }
    for t in tasks {
        t.await;
    }
    // Let sessions that are mid-transaction finish briefly.
    glommio::timer::sleep(Duration::from_millis(100)).await;
    let stats = std::mem::take(&mut *c.stats.borrow_mut());
    let hist = c.hist.borrow().clone();
    CoreResult { stats, hist }
}

async fn accept_loop(c: Rc<Core>, l: TcpListener, started: Instant) {
    loop {
        let got = futures_lite::future::or(async { Some(l.accept().await) }, async {
            while !c.done(started) {
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            None
        })
        .await;
        let Some(Ok(stream)) = got else {
            if got.is_none() {
                return;
            }
            continue;
        };
        let c2 = c.clone();
        glommio::spawn_local(async move { session(c2, stream).await }).detach();
    }
}

/// Connection bookkeeping: counted on open, released on drop.
struct Slot {
    shared: Arc<SinkShared>,
    ip: IpAddr,
    domains: HashSet<String>,
}

impl Slot {
    /// Count a connection in, or None when `max` are already open. The check and the count
    /// are one atomic step: the sink's cores accept at once, and a look then an add let two
    /// of them past the cap together (a peak of 6 under a cap of 5).
    fn open(shared: &Arc<SinkShared>, ip: IpAddr, max: Option<usize>) -> Option<Self> {
        let max = max.unwrap_or(usize::MAX);
        let n = shared.conns.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < max).then_some(n + 1)).ok()? + 1;
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        shared.peak.fetch_max(n, Ordering::Relaxed);
        let mut m = shared.per_ip.lock().unwrap();
        let e = m.entry(ip).or_default();
        e.0 += 1;
        e.1 = e.1.max(e.0);
        Some(Self { shared: shared.clone(), ip, domains: HashSet::new() })
    }

    fn serving(&mut self, domain: &str) {
        if self.domains.insert(domain.to_string()) {
            let mut m = self.shared.per_domain.lock().unwrap();
            let e = m.entry(domain.to_string()).or_default();
            e.0 += 1;
            e.1 = e.1.max(e.0);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.conns.fetch_sub(1, Ordering::Relaxed);
        if let Some(e) = self.shared.per_ip.lock().unwrap().get_mut(&self.ip) {
            e.0 -= 1;
        }
        let mut m = self.shared.per_domain.lock().unwrap();
        for d in &self.domains {
            if let Some(e) = m.get_mut(d) {
                e.0 -= 1;
            }
        }
    }
}

async fn session(c: Rc<Core>, mut s: TcpStream) {
    let ip = s.peer_addr().map(|a| a.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let _ = s.set_nodelay(true);
    let Some(mut slot) = Slot::open(&c.shared, ip, c.opts.max_connections) else {
        c.shared.violations.fetch_add(1, Ordering::Relaxed);
        let _ = s.write_all(b"421 4.7.0 Too many connections (shaping violation)\r\n").await;
        return;
    };
    if c.roll(c.opts.banner_421) {
        c.fault("banner_421");
        let _ = s.write_all(b"421 4.7.0 Try again later\r\n").await;
        return;
    }
    let _ = serve(&c, &mut s, &mut slot).await;
}

/// Add one core's per-source and scripted-domain figures to the report.
fn merge_sources(r: &mut SinkReport, sources: HashMap<IpAddr, SourceStats>, attempts: HashMap<String, Vec<f64>>) {
    for (ip, s) in sources {
        let e = r.sources.entry(ip.to_string()).or_default();
        e.messages += s.messages;
        e.ehlo.extend(s.ehlo);
        for (sec, n) in s.per_second {
            *e.per_second.entry(sec).or_default() += n;
        }
    }
    for (d, mut t) in attempts {
        let e = r.scripted_attempts.entry(d).or_default();
        e.append(&mut t);
        e.sort_by(f64::total_cmp);
    }
}

async fn serve(c: &Core, s: &mut TcpStream, slot: &mut Slot) -> std::io::Result<()> {
    let mut out = b"220 sink.blaster ESMTP\r\n".to_vec();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut start, mut end) = (0usize, 0usize);
    let mut rcpts: Vec<String> = Vec::new();
    let mut data: Option<(DataScanner, Vec<u8>)> = None;
    // BDAT (RFC 3030): bytes still to take for the current chunk, whether it is the last,
    // whether it is being discarded, and the message so far.
    let mut bdat: Option<(usize, bool, bool)> = None;
    let mut chunks: Vec<u8> = Vec::new();
    loop {
        // Process everything buffered, then flush replies and read.
        loop {
            if let Some((left, last, discard)) = bdat {
                let take = left.min(end - start);
                if !discard {
                    chunks.extend_from_slice(&buf[start..start + take]);
                }
                start += take;
                if take < left {
                    bdat = Some((left - take, last, discard));
                    break;
                }
                bdat = None;
                if discard {
                    out.extend_from_slice(b"503 5.5.1 No valid recipients\r\n");
                } else if last {
                    if !c.opts.delay.is_zero() {
                        glommio::timer::sleep(c.opts.delay).await;
                    }
                    let msg = std::mem::take(&mut chunks);
                    out.extend_from_slice(end_of_message(c, slot.ip, &msg, &rcpts, false).as_bytes());
                    rcpts.clear();
                } else {
                    out.extend_from_slice(b"250 2.0.0 Chunk received\r\n");
                }
                continue;
            }
            if let Some((scanner, msg)) = data.as_mut() {
                let f = scanner.feed(&buf[start..end]);
                msg.extend_from_slice(f.prefix);
                msg.extend_from_slice(&buf[start..start + f.body]);
                start += f.consumed;
                if !f.done {
                    break;
                }
                let (_, msg) = data.take().unwrap();
                if !c.opts.delay.is_zero() {
                    glommio::timer::sleep(c.opts.delay).await;
                }
                out.extend_from_slice(end_of_message(c, slot.ip, &msg, &rcpts, true).as_bytes());
                rcpts.clear();
                continue;
            }
            let Some(lf) = buf[start..end].iter().position(|&b| b == b'\n') else { break };
            let line = &buf[start..start + lf];
            let line = line.strip_suffix(b"\r").unwrap_or(line).to_vec();
            start += lf + 1;
            if !c.opts.delay.is_zero() {
                glommio::timer::sleep(c.opts.delay).await;
            }
            if let Some((size, last)) = parse_bdat(&line) {
                bdat = Some((size, last, rcpts.is_empty()));
                continue;
            }
            let reply: String = match parse_command(&line) {
                Ok(Command::Ehlo(name)) => {
                    c.stats.borrow_mut().sources.entry(slot.ip).or_default().ehlo.insert(name.to_string());
                    "250-sink.blaster\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-SIZE 104857600\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n".into()
                }
                Ok(Command::Helo(_)) => "250 sink.blaster\r\n".into(),
                Ok(Command::Mail(..)) => {
                    rcpts.clear();
                    chunks.clear();
                    "250 2.1.0 Ok\r\n".into()
                }
                Ok(Command::Rcpt(a)) => {
                    let domain = a.domain().to_ascii_lowercase();
                    if let Some((_, reply)) = c.opts.replies.iter().find(|(d, _)| *d == domain) {
                        c.stats.borrow_mut().attempts.entry(domain).or_default().push(now_s());
                        format!("{reply}\r\n")
                    } else if c.roll(c.opts.rcpt_temp) {
                        c.fault("rcpt_451");
                        "451 4.3.0 Temporary failure (injected)\r\n".into()
                    } else if c.roll(c.opts.rcpt_perm / (1.0 - c.opts.rcpt_temp).max(1e-9)) {
                        c.fault("rcpt_550");
                        "550 5.1.1 User unknown (injected)\r\n".into()
                    } else {
                        slot.serving(&a.domain().to_ascii_lowercase());
                        rcpts.push(a.raw.clone());
                        "250 2.1.5 Ok\r\n".into()
                    }
                }
                Ok(Command::Data) if rcpts.is_empty() => "554 5.5.1 No valid recipients\r\n".into(),
                Ok(Command::Data) => {
                    data = Some((DataScanner::new(), Vec::with_capacity(4096)));
                    "354 End data with <CR><LF>.<CR><LF>\r\n".into()
                }
                Ok(Command::Rset) => {
                    rcpts.clear();
                    "250 2.0.0 Ok\r\n".into()
                }
                Ok(Command::Quit) => {
                    out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                    s.write_all(&out).await?;
                    return Ok(());
                }
                Ok(Command::Noop) => "250 2.0.0 Ok\r\n".into(),
                Ok(_) => "502 5.5.1 Not implemented\r\n".into(),
                Err(_) => "500 5.5.2 Syntax error\r\n".into(),
            };
            out.extend_from_slice(reply.as_bytes());
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        if start == end {
            (start, end) = (0, 0);
        } else if end == buf.len() {
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
        }
        let n = s.read(&mut buf[end..]).await?;
        if n == 0 {
            return Ok(());
        }
        end += n;
    }
}

/// `BDAT <size> [LAST]` → (size, last).
fn parse_bdat(line: &[u8]) -> Option<(usize, bool)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.split_ascii_whitespace();
    if !words.next()?.eq_ignore_ascii_case("BDAT") {
        return None;
    }
    let size = words.next()?.parse().ok()?;
    Some((size, words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"))))
}

/// A complete message: `stuffed` when it came by DATA (dot-stuffed wire form), not by BDAT.
fn end_of_message(c: &Core, ip: IpAddr, msg: &[u8], rcpts: &[String], stuffed: bool) -> &'static str {
    if c.roll(c.opts.data_temp) {
        c.fault("data_451");
        return "451 4.3.0 Temporary failure after data (injected)\r\n";
    }
    if c.roll(c.opts.data_perm / (1.0 - c.opts.data_temp).max(1e-9)) {
        c.fault("data_554");
        return "554 5.6.0 Message refused (injected)\r\n";
    }
    let now = now_s();
    let mut st = c.stats.borrow_mut();
    st.by_bdat += u64::from(!stuffed);
    let src = st.sources.entry(ip).or_default();
    src.messages += 1;
    *src.per_second.entry(now as u64).or_default() += 1;
    st.first.get_or_insert(now);
    st.last = now;
    st.recipients += rcpts.len() as u64;
    for r in rcpts {
        let d = r.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
        let e = st.domains.entry(d).or_insert((0, now, now));
        e.0 += 1;
        e.2 = now;
    }
    let stamp = if stuffed { read_stamp(msg) } else { crate::workload::read_stamp_plain(msg) };
    match stamp {
        Some(stamp) => {
            if !stamp.intact {
                st.corrupted += 1;
            }
            let lat_us = ((now * 1e9) as u128).saturating_sub(stamp.sent_ns) / 1000;
            c.hist.borrow_mut().record((lat_us as u64).max(1)).ok();
            for r in rcpts {
                st.arrivals.push((stamp.id.clone(), r.clone()));
            }
        }
        None => st.unstamped += 1,
    }
    drop(st);
    c.shared.received.fetch_add(1, Ordering::Relaxed);
    "250 2.0.0 Ok: stored\r\n"
}
