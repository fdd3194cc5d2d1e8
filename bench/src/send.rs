//! `blaster send`: SMTP injection over many connections spread across cores.
//!
//! Open loop (`--rate`): each core has a schedule of intended send times; connections take the
//! next due message, and latency is measured from the *intended* time, so a slow server shows up
//! as latency instead of silently slowing the load (no coordinated omission). Closed loop: every
//! connection sends back to back. The SMTP transaction is the engine's own sans-I/O client.
use crate::report::{latency_histogram, Percentiles, SendReport};
use crate::workload::{headers, make_body, Body, BodyStyle, SizeDist, Weighted};
use event_listener::Event;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use ringpost_smtp::client::{parse_reply, Capabilities, ClientStep, ClientTransaction, RcptResult};
use ringpost_smtp::reply::Reply;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Options of `blaster send`.
#[derive(Debug, Clone)]
pub struct SendOpts {
    /// Server to inject into.
    pub to: SocketAddr,
    /// Total connections (spread over cores).
    pub connections: usize,
    /// Executors.
    pub cores: usize,
    /// Stop after this many messages.
    pub messages: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Open-loop rate (messages/s); closed loop when `None`.
    pub rate: Option<f64>,
    /// Recipients per message.
    pub rcpts: usize,
    /// Recipient domains.
    pub domains: Weighted<String>,
    /// Message sizes.
    pub sizes: SizeDist,
    /// Body flavour.
    pub style: BodyStyle,
    /// Use PIPELINING when offered.
    pub pipelining: bool,
    /// Use BDAT (CHUNKING) when offered: envelope and message in one write, one round trip.
    pub chunking: bool,
    /// Envelope sender.
    pub from: String,
    /// Print a progress line every second.
    pub progress: bool,
}

/// Live counters shared by all cores (relaxed atomics; read by the progress line).
#[derive(Default)]
pub struct Counters {
    /// Transactions started.
    pub sent: AtomicU64,
    /// Of those, sent with BDAT (the server offered CHUNKING and it was not turned off).
    pub sent_bdat: AtomicU64,
    /// 250 after data.
    pub accepted: AtomicU64,
    /// 4xx.
    pub temp: AtomicU64,
    /// 5xx.
    pub perm: AtomicU64,
    /// Connection/protocol errors.
    pub errors: AtomicU64,
    /// Accepted bytes.
    pub bytes: AtomicU64,
    /// Messages still allowed (closed loop budget, open loop schedule).
    pub budget: AtomicU64,
    /// Stop now.
    pub stop: Arc<AtomicBool>,
}

/// The outcome of a run: the report and the accepted ids (`id rcpt,rcpt` lines).
pub struct SendOutcome {
    /// The report.
    pub report: SendReport,
    /// Accepted message ids with their recipients.
    pub accepted_ids: Vec<String>,
}

struct CoreResult {
    hist: Histogram<u64>,
    accepted_ids: Vec<String>,
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// Run a send; blocks until done.
pub fn run(opts: SendOpts, counters: Arc<Counters>) -> SendOutcome {
    counters.budget.store(opts.messages.unwrap_or(u64::MAX), Ordering::Relaxed);
    let start = Instant::now();
    let progress = opts.progress.then(|| spawn_progress(counters.clone(), start));
    let online = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cores = opts.cores.max(1);
    let mut handles = Vec::new();
    for core in 0..cores {
        let (opts, counters) = (opts.clone(), counters.clone());
        let placement = if cores <= online { Placement::Fixed(core) } else { Placement::Unbound };
        let h = LocalExecutorBuilder::new(placement)
            .name(&format!("send-{core}"))
            .spawn(move || async move { run_core(core, cores, opts, counters, start).await })
            .expect("start executor");
        handles.push(h);
    }
    let mut hist = latency_histogram();
    let mut accepted_ids = Vec::new();
    for h in handles {
        let r = h.join().expect("send core");
        hist.add(&r.hist).expect("same histogram bounds");
        accepted_ids.extend(r.accepted_ids);
    }
    counters.stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let dur = start.elapsed().as_secs_f64();
    let accepted = counters.accepted.load(Ordering::Relaxed);
    let report = SendReport {
        mode: if opts.rate.is_some() { "open-loop".into() } else { "closed-loop".into() },
        target_rate: opts.rate,
        sent: counters.sent.load(Ordering::Relaxed),
        sent_bdat: counters.sent_bdat.load(Ordering::Relaxed),
        accepted,
        temp_failures: counters.temp.load(Ordering::Relaxed),
        perm_failures: counters.perm.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        duration_s: dur,
        msgs_per_s: accepted as f64 / dur,
        mb_per_s: counters.bytes.load(Ordering::Relaxed) as f64 / dur / 1e6,
        accept_latency: Percentiles::of(&hist),
    };
    SendOutcome { report, accepted_ids }
}

fn spawn_progress(c: Arc<Counters>, start: Instant) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last = 0;
        while !c.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
            let acc = c.accepted.load(Ordering::Relaxed);
            eprintln!(
                "[{:6.1}s] sent {} accepted {} temp {} perm {} errors {}  {} msg/s",
                start.elapsed().as_secs_f64(),
                c.sent.load(Ordering::Relaxed),
                acc,
                c.temp.load(Ordering::Relaxed),
                c.perm.load(Ordering::Relaxed),
                c.errors.load(Ordering::Relaxed),
                acc - last
            );
            last = acc;
        }
    })
}

/// A message due to be sent.
struct Due {
    intended: Instant,
    intended_ns: u128,
}

struct CoreState {
    opts: SendOpts,
    counters: Arc<Counters>,
    bodies: Vec<Body>,
    due: RefCell<VecDeque<Due>>,
    scheduler_done: std::cell::Cell<bool>,
    hist: RefCell<Histogram<u64>>,
    accepted_ids: RefCell<Vec<String>>,
    deadline: Option<Instant>,
    /// Distinguishes this run's ids from every other run's.
    run_id: String,
    /// Signalled when the schedule adds a due message.
    due_added: Event,
}

impl CoreState {
    fn claim(&self) -> bool {
        self.counters.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1)).is_ok()
    }

    fn expired(&self) -> bool {
        self.counters.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Next message: in closed loop, now; in open loop, the next scheduled one once it is due.
    async fn next(&self) -> Option<Due> {
        if self.opts.rate.is_none() {
            return (!self.expired() && self.claim()).then(|| Due { intended: Instant::now(), intended_ns: now_ns() });
        }
        loop {
            let listener = self.due_added.listen();
            if let Some(d) = self.due.borrow_mut().pop_front() {
                return Some(d);
            }
            if self.expired() || (self.counters.budget.load(Ordering::Relaxed) == 0 && self.scheduler_done.get()) {
                return None;
            }
            listener.await;
        }
    }
}

async fn run_core(core: usize, cores: usize, opts: SendOpts, counters: Arc<Counters>, start: Instant) -> CoreResult {
    let mut rng = rand::rngs::StdRng::seed_from_u64(core as u64 * 7919 + 1);
    let bodies = (0..64).map(|i| make_body(opts.sizes.pick(&mut rng), opts.style, i * 1000 + core as u64)).collect();
    let st = Rc::new(CoreState {
        deadline: opts.duration.map(|d| start + d),
        run_id: format!("{:x}", (now_ns() - start.elapsed().as_nanos()) as u64),
        opts: opts.clone(),
        counters,
        bodies,
        due: RefCell::new(VecDeque::new()),
        scheduler_done: std::cell::Cell::new(false),
        hist: RefCell::new(latency_histogram()),
        accepted_ids: RefCell::new(Vec::new()),
        due_added: Event::new(),
    });
    let conns = opts.connections / cores + usize::from(core < opts.connections % cores);
    let scheduler = opts.rate.map(|rate| glommio::spawn_local(schedule(st.clone(), rate / cores as f64, core, start)));
    let tasks: Vec<_> = (0..conns).map(|c| glommio::spawn_local(connection(st.clone(), core, c))).collect();
    for t in tasks {
        t.await;
    }
    if let Some(s) = scheduler {
        s.await;
    }
    let hist = st.hist.borrow().clone();
    let accepted_ids = std::mem::take(&mut *st.accepted_ids.borrow_mut());
    CoreResult { hist, accepted_ids }
}

/// Open loop: put messages on the due queue at their intended times.
async fn schedule(st: Rc<CoreState>, rate: f64, core: usize, start: Instant) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let epoch_ns = now_ns() - start.elapsed().as_nanos();
    let mut k: u64 = 0;
    let offset = interval.mul_f64(core as f64 / st.opts.cores.max(1) as f64);
    loop {
        let intended = start + offset + interval.mul_f64(k as f64);
        if st.expired() || !st.claim() {
            st.scheduler_done.set(true);
            st.due_added.notify(usize::MAX);
            return;
        }
        let now = Instant::now();
        if intended > now {
            glommio::timer::sleep(intended - now).await;
        }
        st.due.borrow_mut().push_back(Due { intended, intended_ns: epoch_ns + (intended - start).as_nanos() });
        st.due_added.notify(1);
        k += 1;
    }
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    caps: Capabilities,
}

impl Conn {
    async fn reply(&mut self) -> std::io::Result<Reply> {
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((r, n))) => {
                    self.buf.drain(..n);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
            }
            let len = self.buf.len();
            self.buf.resize(len + 4096, 0);
            let n = self.stream.read(&mut self.buf[len..]).await?;
            self.buf.truncate(len + n);
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

async fn open(st: &CoreState) -> std::io::Result<Option<Conn>> {
    let stream = TcpStream::connect(st.opts.to).await?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut c = Conn { stream, buf: Vec::with_capacity(8192), caps: Capabilities::default() };
    if c.reply().await?.code != 220 {
        return Ok(None);
    }
    c.stream.write_all(b"EHLO blaster.test\r\n").await?;
    let r = c.reply().await?;
    if r.code != 250 {
        return Ok(None);
    }
    c.caps = Capabilities::from_ehlo(&r);
    if !st.opts.pipelining {
        c.caps.pipelining = false;
    }
    if !st.opts.chunking || !c.caps.pipelining {
        c.caps.chunking = false;
    }
    Ok(Some(c))
}

async fn connection(st: Rc<CoreState>, core: usize, conn_no: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(((core as u64) << 32) | conn_no as u64);
    let mut seq: u64 = 0;
    let mut pending: Option<Due> = None;
    'outer: loop {
        let mut conn = match open(&st).await {
            Ok(Some(c)) => c,
            Ok(None) | Err(_) => {
                st.counters.errors.fetch_add(1, Ordering::Relaxed);
                if st.expired() {
                    return;
                }
                glommio::timer::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        loop {
            let due = match pending.take() {
                Some(d) => d,
                None => match st.next().await {
                    Some(d) => d,
                    None => break 'outer conn_quit(&mut conn).await,
                },
            };
            seq += 1;
            let id = format!("{}-{core}-{conn_no}-{seq}", st.run_id);
            match transaction(&st, &mut conn, &mut rng, &id, &due).await {
                Ok(true) => {}
                Ok(false) => {
                    // The server wants the connection closed (421): reconnect.
                    continue 'outer;
                }
                Err(_) => {
                    st.counters.errors.fetch_add(1, Ordering::Relaxed);
                    continue 'outer;
                }
            }
        }
    }
}

async fn conn_quit(conn: &mut Conn) {
    let _ = conn.stream.write_all(b"QUIT\r\n").await;
    let _ = conn.reply().await;
}

/// One message. Ok(false): the connection is unusable afterwards.
async fn transaction(st: &CoreState, conn: &mut Conn, rng: &mut impl Rng, id: &str, due: &Due) -> std::io::Result<bool> {
    let o = &st.opts;
    let rcpts: Vec<String> = (0..o.rcpts).map(|i| format!("u{}x{i}@{}", rng.gen_range(0..1000), o.domains.pick(rng))).collect();
    let body = &st.bodies[rng.gen_range(0..st.bodies.len())];
    let head = headers(id, due.intended_ns, body.digest, &o.from, &rcpts[0], o.style.eight_bit);
    st.counters.sent.fetch_add(1, Ordering::Relaxed);
    if conn.caps.chunking {
        st.counters.sent_bdat.fetch_add(1, Ordering::Relaxed);
        return bdat_transaction(st, conn, &rcpts, &head, body, id, due).await;
    }
    let mut msg = head;
    msg.extend_from_slice(&body.wire);
    msg.extend_from_slice(b".\r\n");
    let mut t = ClientTransaction::new(&conn.caps, &o.from, rcpts.clone(), msg.len() as u64, o.style.eight_bit, false);
    let mut step = t.start();
    let mut closed = false;
    let results = loop {
        step = match step {
            ClientStep::Send(bytes) => {
                conn.stream.write_all(&bytes).await?;
                let r = conn.reply().await?;
                closed |= r.code == 421;
                t.on_reply(r)
            }
            ClientStep::Read => {
                let r = conn.reply().await?;
                closed |= r.code == 421;
                t.on_reply(r)
            }
            ClientStep::SendWithChunk(_) => unreachable!("never asked for: chunks go through bdat_transaction"),
            ClientStep::SendBody => {
                conn.stream.write_all(&msg).await?;
                let r = conn.reply().await?;
                closed |= r.code == 421;
                t.on_reply(r)
            }
            ClientStep::Done { results, reset } => {
                if reset && !closed {
                    conn.stream.write_all(b"RSET\r\n").await?;
                    conn.reply().await?;
                }
                break results;
            }
        };
    };
    record(st, id, due, &rcpts, &results, msg.len());
    Ok(!closed)
}

/// MAIL, RCPTs and `BDAT n LAST` with the whole message in one write (RFC 3030 with RFC 2920):
/// one round trip per message.
async fn bdat_transaction(st: &CoreState, conn: &mut Conn, rcpts: &[String], head: &[u8], body: &Body, id: &str, due: &Due) -> std::io::Result<bool> {
    let size = head.len() + body.plain.len();
    let mut out = format!("MAIL FROM:<{}>{}\r\n", st.opts.from, if st.opts.style.eight_bit { " BODY=8BITMIME" } else { "" }).into_bytes();
    for r in rcpts {
        out.extend_from_slice(format!("RCPT TO:<{r}>\r\n").as_bytes());
    }
    out.extend_from_slice(format!("BDAT {size} LAST\r\n").as_bytes());
    out.extend_from_slice(head);
    out.extend_from_slice(&body.plain);
    conn.stream.write_all(&out).await?;
    let mail = conn.reply().await?;
    let mut rcpt_replies = Vec::with_capacity(rcpts.len());
    for _ in rcpts {
        rcpt_replies.push(conn.reply().await?);
    }
    let last = conn.reply().await?;
    let closed = [&mail, &last].iter().any(|r| r.code == 421) || rcpt_replies.iter().any(|r| r.code == 421);
    let results: Vec<RcptResult> = rcpt_replies
        .into_iter()
        .map(|r| {
            let verdict = if mail.code / 100 != 2 {
                &mail
            } else if r.code / 100 != 2 {
                &r
            } else {
                &last
            };
            match verdict.code / 100 {
                2 => RcptResult::Delivered(verdict.clone()),
                5 => RcptResult::Permanent(verdict.clone()),
                _ => RcptResult::Transient(verdict.clone()),
            }
        })
        .collect();
    record(st, id, due, rcpts, &results, size);
    Ok(!closed)
}

/// Count a finished transaction and its latency.
fn record(st: &CoreState, id: &str, due: &Due, rcpts: &[String], results: &[RcptResult], bytes: usize) {
    let latency_us = due.intended.elapsed().as_micros() as u64;
    let accepted: Vec<&str> = rcpts.iter().zip(results).filter(|(_, r)| matches!(r, RcptResult::Delivered(_))).map(|(a, _)| a.as_str()).collect();
    let c = &st.counters;
    if !accepted.is_empty() {
        c.accepted.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        st.hist.borrow_mut().record(latency_us.max(1)).ok();
        st.accepted_ids.borrow_mut().push(format!("{id} {}", accepted.join(",")));
    } else if results.iter().any(|r| matches!(r, RcptResult::Transient(_))) {
        c.temp.fetch_add(1, Ordering::Relaxed);
    } else {
        c.perm.fetch_add(1, Ordering::Relaxed);
    }
}
