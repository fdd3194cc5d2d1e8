//! The delivery agent: one outbound SMTP connection to a destination, reused for as many
//! transactions as its [`WorkSource`] hands it. It drives the sans-I/O client machine, writes
//! bodies straight from the spool's mapped segments, and reports one result per recipient.
//!
//! It knows nothing of queues, retries or the ledger: what a result means is the queue
//! manager's decision ([`crate::outbound::queue`]), and applying it is the shard's.
use crate::account::delivery_log::Peer;
use crate::config::{Config, DeliverySection, TlsMode, TlsPolicy};
use crate::outbound::dns::resolver::Resolver;
use crate::outbound::queue::{Delivery, PathInfo};
use crate::outbound::reply_buf::ReplyBuf;
use crate::outbound::routes::Routes;
use crate::outbound::shaping::site::Site;
use crate::outbound::shaping::{find_headers, Source, POOL_HEADER};
use crate::outbound::tls_policy::{handshake_failed, not_offered, ClientConfigs, TlsFallback};
use crate::smtp::client::{parse_reply, Capabilities, ClientStep, ClientTransaction, RcptResult};
use crate::smtp::data::unstuffed;
use crate::smtp::reply::Reply;
use crate::tls::Transport;
use crate::trace::{TraceTag, Tracer};
use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;
use ringpost_admin_proto::{TraceKind, TraceSide};
use ringpost_spool::record::{FLAG_8BITMIME, FLAG_SMTPUTF8};
use std::net::SocketAddr;
use std::time::Duration;

/// What an agent needs to reach destinations: names, settings, routes, DNS and TLS. One per
/// core, built at start.
pub struct AgentContext {
    /// Our name in EHLO.
    pub hostname: String,
    /// The configuration (delivery settings and TLS policies).
    pub config: Config,
    /// Static routes.
    pub routes: Routes,
    /// This core's resolver and cache (kept across reloads).
    pub resolver: std::rc::Rc<Resolver>,
    /// Outbound TLS client configurations.
    pub client_tls: ClientConfigs,
    /// This core's `ringctl trace` subscribers (the core's own tracer).
    pub tracer: std::rc::Rc<Tracer>,
}

/// Where an agent gets its work and sends its results: the shard implements it over the
/// queue manager. The agent never decides what a result means.
#[allow(async_fn_in_trait)]
pub trait WorkSource {
    /// The next delivery for path `path`, waiting up to `idle`; `None`: close the connection.
    async fn next(&self, path: &str, idle: Duration) -> Option<Delivery>;
    /// Every delivery ready for path `path` now (the connection could not be made).
    fn take_ready(&self, path: &str) -> Vec<Delivery>;
    /// `d` was not sent: the reused connection it was given had been closed by the receiver
    /// before its transaction began. Put it back for a fresh connection, uncounted, once;
    /// `Err(d)`: it came back this way before, report it.
    fn requeue_unsent(&self, path: &str, d: Delivery) -> Result<(), Delivery>;
    /// One result per recipient of `d`, in the order of `d.rcpts`.
    async fn report(&self, path: &str, d: Delivery, results: Vec<RcptResult>, peer: Option<Peer>);
    /// True once shutdown began: finish the current transaction and close.
    fn stopping(&self) -> bool;
}

/// Why a connection could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// TCP or read/write failure (including timeouts).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server sent something that is not SMTP.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server refused the session (greeting or EHLO/HELO).
    #[error("{0}")]
    Refused(String),
    /// No route for the domain.
    #[error("no route to destination")]
    NoRoute,
    /// DNS says where not to go (null MX, no such domain) or cannot say now: this reply applies.
    #[error("{}", .0.to_wire().trim_end())]
    Dns(Reply),
    /// The TLS policy could not be met: `required` but not offered or refused.
    #[error("{0}")]
    TlsUnavailable(String),
    /// The TLS handshake failed (the connection is gone).
    #[error("{0}")]
    TlsHandshake(String),
    /// A reused connection answered the first command of a transaction with end of stream, a
    /// reset or 421: the receiver had closed it (while it idled) and nothing was begun.
    #[error("connection closed by the receiver before the transaction: {0}")]
    ClosedBeforeTransaction(Box<ConnError>),
}

struct Conn {
    stream: Transport,
    /// Replies read and not yet parsed.
    buf: ReplyBuf,
    /// `host[ip]:port` or `ip:port` of the server we talk to.
    remote: String,
    caps: Capabilities,
    /// This connection's SMTP timeouts.
    timeouts: Timeouts,
    /// Where `ringctl trace` events of this conversation go.
    tracer: std::rc::Rc<Tracer>,
    /// This connection's number and destination, for trace events.
    trace: (u64, String),
    /// The EHLO name of its source.
    ehlo: String,
}

impl Conn {
    async fn read_reply(&mut self, timeout: Duration) -> Result<Reply, ConnError> {
        loop {
            match parse_reply(self.buf.unparsed()) {
                Ok(Some((r, n))) => {
                    self.trace(TraceKind::Reply, || r.to_wire().into_bytes());
                    self.buf.consume(n);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => return Err(ConnError::Protocol(e.to_string())),
            }
            self.stream.tcp().set_read_timeout(Some(timeout)).map_err(std::io::Error::from)?;
            let room = self.buf.room();
            if room.is_empty() {
                // Never: the parser refuses a reply before it fills the storage. Not a read
                // of nothing, which would look like the receiver closing.
                return Err(ConnError::Protocol(crate::smtp::client::ReplyError::TooLong.to_string()));
            }
            let n = self.stream.read(room).await?;
            if n == 0 {
                return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.buf.filled(n);
        }
    }

    /// `ringctl trace`: one event of this conversation, built only while somebody traces.
    #[inline]
    fn trace(&self, kind: TraceKind, text: impl FnOnce() -> Vec<u8>) {
        if self.tracer.on() {
            let (conn, domain) = (self.trace.0, Some(self.trace.1.clone()));
            let tag = TraceTag { conn, side: TraceSide::Out, peer: self.remote.clone(), client: None, domain };
            self.tracer.emit(&tag, kind, &text());
        }
    }

    async fn command(&mut self, line: &[u8], timeout: Duration) -> Result<Reply, ConnError> {
        self.trace(TraceKind::Command, || line.to_vec());
        crate::wire_write::write_all_timeout(&mut self.stream, line, self.timeouts.command).await?;
        self.read_reply(timeout).await
    }
}

/// The client's RFC 5321 4.5.3.2 timeouts, from `[delivery]`.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// Greeting and each command's reply.
    command: Duration,
    /// Replies of a pipelined batch that may end in DATA: the batch carries MAIL and RCPT
    /// too, so never less than `command`.
    batch: Duration,
    /// Sending the body and the reply to its final dot.
    data_end: Duration,
}

impl Timeouts {
    fn from_config(d: &DeliverySection) -> Self {
        let command = Duration::from_secs(d.command_timeout_s);
        Self { command, batch: Duration::from_secs(d.data_init_timeout_s).max(command), data_end: Duration::from_secs(d.data_timeout_s) }
    }
}

/// The addresses to try for `domain`, in order: a static route, else DNS MX (RFC 5321 5.1).
/// Each comes with the name TLS verifies (the MX host, a route's `tls_name`, or the address).
async fn targets(ctx: &AgentContext, domain: &str) -> Result<Vec<(Option<String>, SocketAddr)>, ConnError> {
    use crate::outbound::dns::resolver::Destination;
    if let Some((hosts, route)) = ctx.routes.route(domain) {
        return Ok(hosts.iter().map(|a| (route.tls_name.clone(), *a)).collect());
    }
    let port = ctx.config.delivery.mx_port;
    match ctx.resolver.destination(domain).await {
        Destination::Hosts(hosts) => {
            Ok(hosts.into_iter().flat_map(|(h, ips)| ips.into_iter().map(move |ip| (Some(h.clone()), SocketAddr::new(ip, port)))).collect())
        }
        Destination::NullMx => Err(ConnError::Dns(Reply::new(556, (5, 1, 10), format!("{domain} does not accept mail (null MX)")))),
        Destination::NoSuchDomain => Err(ConnError::Dns(Reply::new(550, (5, 1, 2), format!("{domain}: no such domain or no mail host")))),
        Destination::TempFail(e) => Err(ConnError::Dns(Reply::new(451, (4, 4, 3), format!("DNS: {e}")))),
    }
}

fn policy_for(ctx: &AgentContext, domain: &str) -> TlsPolicy {
    let cfg = &ctx.config;
    match ctx.routes.route(domain) {
        Some((_, r)) => cfg.tls_policy(r),
        None => cfg.default_tls_policy(),
    }
}

/// Where a connection of `site` may go: the site's own hosts, never elsewhere. The path's
/// first domain only gives the order (MX preference) and the TLS settings: its MX set or
/// route may have changed since the site was formed, and the other domains that share the
/// path must still go to the site's hosts (a domain whose site changed moves to a new path
/// when it is resolved again).
async fn site_targets(ctx: &AgentContext, site: &Site) -> Result<Vec<(Option<String>, SocketAddr)>, ConnError> {
    let ordered = targets(ctx, &site.domain).await;
    if site.key.starts_with("route:") {
        let fixed: Vec<SocketAddr> = site.hosts.iter().filter_map(|h| h.parse().ok()).collect();
        return match ordered {
            Ok(t) if !t.is_empty() && t.iter().all(|(_, a)| fixed.contains(a)) => Ok(t),
            _ if !fixed.is_empty() => Ok(fixed.into_iter().map(|a| (None, a)).collect()),
            _ => ordered,
        };
    }
    let in_site = |h: &Option<String>| h.as_ref().is_some_and(|h| site.hosts.iter().any(|s| s.eq_ignore_ascii_case(h.trim_end_matches('.'))));
    // The first domain's exchanges that are still the site's, in its MX preference order.
    let mut out: Vec<(Option<String>, SocketAddr)> = match &ordered {
        Ok(t) => t.iter().filter(|(h, _)| in_site(h)).cloned().collect(),
        Err(_) => Vec::new(),
    };
    // Then every other host of the site, by name: the first domain moved (wholly or in part)
    // or stopped resolving, and the site's hosts are still where its other domains' mail goes.
    let port = ctx.config.delivery.mx_port;
    let mut temp = None;
    for h in &site.hosts {
        if out.iter().any(|(o, _)| o.as_deref().is_some_and(|o| o.trim_end_matches('.').eq_ignore_ascii_case(h))) {
            continue;
        }
        match ctx.resolver.addresses(h).await {
            Ok(Some(ips)) => out.extend(ips.into_iter().map(|ip| (Some(h.to_string()), SocketAddr::new(ip, port)))),
            Ok(None) => {}
            Err(e) => temp = Some(e),
        }
    }
    if out.is_empty() {
        // Never another domain's answer for the whole path: a transient failure, tried again.
        let why = temp.unwrap_or_else(|| "no address".into());
        return Err(ConnError::Dns(Reply::new(451, (4, 4, 3), format!("no host of site {} resolved: {why}", site.key))));
    }
    Ok(out)
}

async fn connect(ctx: &AgentContext, site: &Site, source: &Source) -> Result<Conn, ConnError> {
    let domain = site.domain.as_str();
    let timeout = Duration::from_secs(ctx.config.delivery.connect_timeout_s);
    let policy = policy_for(ctx, domain);
    let mut last = ConnError::NoRoute;
    // Every address of every exchange, in order, until one greets us (at least two are tried
    // whenever DNS gives two).
    for (host, addr) in site_targets(ctx, site).await? {
        match greet(ctx, source, domain, host.clone(), addr, (timeout, &policy), true).await {
            Ok(c) => return Ok(c),
            Err(ConnError::TlsHandshake(_)) if handshake_failed(&policy) == TlsFallback::Plaintext => {
                // Opportunistic with fallback: the same host again, without STARTTLS.
                match greet(ctx, source, domain, host, addr, (timeout, &policy), false).await {
                    Ok(c) => return Ok(c),
                    Err(e) => last = e,
                }
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn ehlo(c: &mut Conn) -> Result<(), ConnError> {
    let r = c.command(format!("EHLO {}\r\n", c.ehlo).as_bytes(), c.timeouts.command).await?;
    if r.code == 250 {
        c.caps = Capabilities::from_ehlo(&r);
        return Ok(());
    }
    c.caps = Capabilities::default();
    let r = c.command(format!("HELO {}\r\n", c.ehlo).as_bytes(), c.timeouts.command).await?;
    if r.code != 250 {
        return Err(ConnError::Refused(format!("HELO: {}", r.to_wire().trim_end())));
    }
    Ok(())
}

async fn greet(
    ctx: &AgentContext,
    source: &Source,
    domain: &str,
    host: Option<String>,
    addr: SocketAddr,
    (timeout, policy): (Duration, &TlsPolicy),
    try_tls: bool,
) -> Result<Conn, ConnError> {
    let (stream, bound) = open_stream(source, addr, timeout).await?;
    stream.set_nodelay(true).map_err(std::io::Error::from)?;
    let remote = match &host {
        Some(h) => format!("{h}[{}]:{}", addr.ip(), addr.port()),
        None => addr.to_string(),
    };
    let timeouts = Timeouts::from_config(&ctx.config.delivery);
    let (tracer, trace) = (ctx.tracer.clone(), (ctx.tracer.next_conn(), domain.to_string()));
    let name = source.ehlo.clone().unwrap_or_else(|| ctx.hostname.clone());
    let mut c = Conn {
        stream: Transport::Plain(stream),
        buf: ReplyBuf::default(),
        remote,
        caps: Capabilities::default(),
        timeouts,
        ehlo: name,
        tracer,
        trace,
    };
    c.trace(TraceKind::Open, Vec::new);
    // A bound socket's connect completes in the background: its greeting wait covers it.
    let g = c.read_reply(if bound { timeouts.command + timeout } else { timeouts.command }).await?;
    if g.code != 220 {
        return Err(ConnError::Refused(format!("greeting: {}", g.to_wire().trim_end())));
    }
    ehlo(&mut c).await?;
    if policy.mode == TlsMode::Disabled || !try_tls {
        return Ok(c);
    }
    if !c.caps.starttls {
        return match not_offered(policy) {
            TlsFallback::Plaintext => Ok(c),
            TlsFallback::Defer => Err(ConnError::TlsUnavailable(format!("TLS required but {} does not offer STARTTLS", c.remote))),
        };
    }
    let r = c.command(b"STARTTLS\r\n", timeouts.command).await?;
    if r.code != 220 {
        return match not_offered(policy) {
            TlsFallback::Plaintext => Ok(c),
            TlsFallback::Defer => Err(ConnError::TlsUnavailable(format!("STARTTLS refused: {}", r.to_wire().trim_end()))),
        };
    }
    c.buf.clear();
    let name = host.unwrap_or_else(|| addr.ip().to_string());
    let cfg = ctx.client_tls.for_policy(policy);
    let hs = glommio::timer::timeout(timeouts.command, async { Ok(c.stream.connect(cfg, &name).await) }).await;
    match hs {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ConnError::TlsHandshake(format!("handshake with {}: {e}", c.remote))),
        Err(e) => return Err(ConnError::TlsHandshake(format!("handshake with {}: {e}", c.remote))),
    }
    ehlo(&mut c).await?;
    Ok(c)
}

/// A TCP connection to `addr` from `source`: glommio's own io_uring connect when the source
/// binds nothing; otherwise a socket bound to the source address (glommio's `TcpStream` has
/// no bind), connected without blocking and handed to glommio, whose io_uring reads then wait
/// for the connection to complete (the greeting read). True when bound.
async fn open_stream(source: &Source, addr: SocketAddr, timeout: Duration) -> Result<(TcpStream, bool), ConnError> {
    let Some(bind) = source.bind else {
        return Ok((TcpStream::connect_timeout(addr, timeout).await.map_err(std::io::Error::from)?, false));
    };
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(bind, 0).into())?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(ConnError::Io(e)),
    }
    // SAFETY: the descriptor comes from `into_raw_fd`, so the stream is its only owner.
    Ok((unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) }, true))
}

/// Serve path `path` over one connection until its work source has nothing for the idle
/// time, or the connection carried the path's `max_deliveries` messages.
pub async fn run_connection(ctx: &AgentContext, work: &impl WorkSource, path: &str, info: &PathInfo) {
    let idle = Duration::from_secs_f64(info.idle_timeout_s.unwrap_or(ctx.config.delivery.idle_timeout_s));
    let connected = match &info.site.failure {
        Some(reply) => Err(ConnError::Dns(reply.clone())),
        None => connect(ctx, &info.site, &info.source).await,
    };
    match connected {
        Err(e) => {
            // The site is unreachable from this source: everything ready for it fails this attempt.
            for d in work.take_ready(path) {
                let results = d.rcpts.iter().map(|_| local_result(&e)).collect();
                work.report(path, d, results, None).await;
            }
        }
        Ok(mut conn) => {
            let mut carried = 0;
            while !work.stopping() && carried < info.max_deliveries {
                let Some(d) = work.next(path, idle).await else { break };
                let reused = carried > 0;
                carried += 1;
                if !deliver_one(ctx, work, path, &mut conn, d, reused).await {
                    break;
                }
            }
            conn.trace(TraceKind::Command, || b"QUIT".to_vec());
            let _ = crate::wire_write::write_all_timeout(&mut conn.stream, b"QUIT\r\n", Duration::from_secs(5)).await;
            let _ = conn.read_reply(Duration::from_secs(5)).await;
            conn.trace(TraceKind::Close, Vec::new);
        }
    }
}

fn local_result(e: &ConnError) -> RcptResult {
    let text = e.to_string();
    match e {
        ConnError::NoRoute => RcptResult::Permanent(Reply::new(554, (5, 4, 4), text)),
        ConnError::Dns(r) if r.code >= 500 => RcptResult::Permanent(r.clone()),
        ConnError::Dns(r) => RcptResult::Transient(r.clone()),
        ConnError::TlsUnavailable(_) | ConnError::TlsHandshake(_) => RcptResult::Transient(Reply::new(451, (4, 7, 5), text)),
        _ => RcptResult::Transient(Reply::new(451, (4, 4, 1), text)),
    }
}

/// The recipients `rcpts` of delivery `d`, as a delivery of their own.
fn part_of(d: &Delivery, rcpts: &[u32]) -> Delivery {
    Delivery {
        msg: d.msg.clone(),
        rcpts: rcpts.into(),
        attempts: d.attempts,
        last_response: d.last_response.clone(),
        domain: d.domain.clone(),
        pool: d.pool,
    }
}

/// Send one message's recipients (in transactions of at most the configured size) and report
/// every result. Returns false when the connection is no longer usable. On a `reused`
/// connection that the receiver had closed before the first transaction began, nothing is
/// reported: the whole delivery goes back once for a fresh connection ([`WorkSource::requeue_unsent`]).
async fn deliver_one(ctx: &AgentContext, work: &impl WorkSource, path: &str, conn: &mut Conn, d: Delivery, reused: bool) -> bool {
    let per_txn = ctx.config.delivery.max_recipients_per_transaction;
    // Messages up to this size go as one BDAT chunk: the domain's route's limit, else
    // `[delivery]`'s (looked up per delivery: a site may hold domains of several routes).
    let bdat_max = ctx.routes.route(&d.domain).and_then(|(_, r)| r.bdat_max_octets).unwrap_or(ctx.config.delivery.bdat_max_octets);
    let mut usable = true;
    for (i, group) in d.rcpts.chunks(per_txn).enumerate() {
        let part = part_of(&d, group);
        let outcome = if usable {
            transaction(conn, &part, reused && i == 0, bdat_max).await
        } else {
            Err((ConnError::Io(std::io::ErrorKind::ConnectionAborted.into()), Vec::new()))
        };
        let outcome = match outcome {
            Err((ConnError::ClosedBeforeTransaction(e), _)) => match work.requeue_unsent(path, part_of(&d, &d.rcpts)) {
                Ok(()) => return false,
                Err(_) => Err((*e, Vec::new())),
            },
            other => other,
        };
        let results = match outcome {
            Ok((results, reset)) => {
                if reset {
                    usable = conn.command(b"RSET\r\n", conn.timeouts.command).await.is_ok_and(|r| r.code == 250);
                }
                results
            }
            Err((e, decided)) => {
                // What the server had said stands (a refused MAIL or RCPT); the rest get the error.
                usable = false;
                let mut decided = decided.into_iter();
                group.iter().map(|_| decided.next().flatten().unwrap_or_else(|| local_result(&e))).collect()
            }
        };
        let peer = Peer { remote: conn.remote.clone(), tls: conn.stream.tls_description() };
        work.report(path, part, results, Some(peer)).await;
    }
    usable
}

/// True when the first reply of a transaction (or the failure to get one) says the receiver
/// had closed the connection before the transaction began: end of stream, a reset, a broken
/// pipe, or a 421 that says only that the channel closes (RFC 5321 3.8): no enhanced status,
/// or 4.4.x / 4.3.2 (an idle timeout, a shutdown). A 421 with a policy status (4.7.x: Yahoo's
/// TSS04, Gmail's 4.7.28) is an answer about the sender: it is reported, so the `[[rule]]`s
/// see it (suspend, throttle) instead of a fresh connection asking again at once. A timeout
/// is not a close either: the receiver may have taken the command.
fn closed_before_transaction(first: Result<&Reply, &ConnError>) -> bool {
    use std::io::ErrorKind as K;
    match first {
        Ok(r) => r.code == 421 && matches!(r.enhanced, None | Some((4, 4, _)) | Some((4, 3, 2))),
        Err(ConnError::Io(e)) => matches!(e.kind(), K::UnexpectedEof | K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted),
        Err(_) => false,
    }
}

/// How long to look for replies the server sent before a write to it failed: a server that
/// refuses MAIL (`421 4.7.0`, `554 5.7.1`) often closes at once, and a write of a whole chunk
/// then fails while its reply sits unread. What it said is the answer, not the write error.
const READ_AFTER_WRITE_ERROR: Duration = Duration::from_secs(2);

/// Write `pieces` (a command batch, perhaps with a BDAT chunk after it) and read the first
/// reply within `read_timeout`; `first` of a transaction on a reused connection: an answer
/// that says the receiver had closed it becomes [`ConnError::ClosedBeforeTransaction`].
/// With the reply comes the write's error when the write failed and a reply was there anyway.
async fn send_and_read(
    conn: &mut Conn,
    pieces: &[&[u8]],
    (write_timeout, read_timeout): (Duration, Duration),
    first: bool,
) -> Result<(Reply, Option<std::io::Error>), ConnError> {
    conn.trace(TraceKind::Command, || pieces[0].to_vec());
    if pieces.len() > 1 {
        let n: usize = pieces[1..].iter().map(|p| p.len()).sum();
        conn.trace(TraceKind::Body, || format!("(the BDAT chunk: {n} octets, not shown)").into_bytes());
    }
    let sent = crate::wire_write::write_all_vectored(&mut conn.stream, pieces, write_timeout).await;
    let got = match sent {
        Ok(()) => conn.read_reply(read_timeout).await.map(|r| (r, None)),
        Err(e) => after_write_error(conn, e).await,
    };
    if first && closed_before_transaction(got.as_ref().map(|(r, _)| r)) {
        let why = match got {
            Ok((r, _)) => ConnError::Refused(r.to_wire().trim_end().to_string()),
            Err(e) => e,
        };
        return Err(ConnError::ClosedBeforeTransaction(Box::new(why)));
    }
    got
}

/// A write failed: the reply the server had sent before (`READ_AFTER_WRITE_ERROR`), with the
/// write's error; the write's error when there is none.
async fn after_write_error(conn: &mut Conn, e: std::io::Error) -> Result<(Reply, Option<std::io::Error>), ConnError> {
    match conn.read_reply(READ_AFTER_WRITE_ERROR).await {
        Ok(r) => Ok((r, Some(e))),
        Err(_) => Err(ConnError::Io(e)),
    }
}

/// How a transaction ended: its results (and whether RSET is due), or the error that broke
/// the connection with the results the server had already decided ([`ClientTransaction::on_connection_lost`]).
type TxnOutcome = Result<(Vec<RcptResult>, bool), (ConnError, Vec<Option<RcptResult>>)>;

async fn transaction(conn: &mut Conn, d: &Delivery, reused: bool, bdat_max: u64) -> TxnOutcome {
    let m = &d.msg;
    let all: Vec<&str> = m.recipients().collect();
    let rcpts = d.rcpts.iter().map(|&i| all[i as usize].to_string()).collect();
    // The pool header is ours: every occurrence is left out of what is sent (skipped, not
    // copied). The reception flags the messages that cannot have one: no scan for those.
    let (strip, trace_strip): (Vec<_>, Vec<_>) = if !m.may_carry_pool_header() {
        (Vec::new(), Vec::new())
    } else {
        (
            find_headers(m.body_pieces(), POOL_HEADER).into_iter().map(|(_, r)| r).collect(),
            find_headers(std::iter::once(m.trace()), POOL_HEADER).into_iter().map(|(_, r)| r).collect(),
        )
    };
    let size = m.wire_len() - strip.iter().chain(&trace_strip).map(|r| r.len() as u64).sum::<u64>();
    // The message in wire form, straight from the spool: trace, signature lines, body.
    let mut wire: Vec<&[u8]> = Vec::with_capacity(m.body_pieces().count() + 3);
    wire.extend(skip_ranges(std::iter::once(m.trace()), &trace_strip));
    wire.extend(Some(m.signature()).filter(|s| !s.is_empty()));
    wire.extend(skip_ranges(m.body_pieces(), &strip));
    let mut t = ClientTransaction::new(&conn.caps, m.sender(), rcpts, size, m.flags() & FLAG_8BITMIME != 0, m.flags() & FLAG_SMTPUTF8 != 0);
    // One BDAT chunk with the envelope when the server can take it (the client machine
    // decides from its capabilities): the same bytes without their stuffing dots.
    let chunk = if conn.caps.chunking && conn.caps.pipelining && size <= bdat_max {
        let (octets, n) = unstuffed(&wire);
        t = t.in_one_chunk(n);
        octets
    } else {
        Vec::new()
    };
    match drive(conn, &mut t, wire, &chunk, reused).await {
        Ok(done) => Ok(done),
        Err(e @ ConnError::ClosedBeforeTransaction(_)) => Err((e, Vec::new())),
        Err(e) => Err((e, t.on_connection_lost())),
    }
}

/// Play transaction `t` on the connection: `wire` is the message for DATA, `chunk` the same
/// without stuffing dots for BDAT.
///
/// After a failed write, the replies the server had already sent are still read (briefly),
/// since a refusal is the answer; but the message was not sent whole, so nothing is delivered:
/// the transaction ends with the write's error, keeping only what the server refused.
async fn drive(
    conn: &mut Conn,
    t: &mut ClientTransaction,
    mut wire: Vec<&[u8]>,
    chunk: &[&[u8]],
    reused: bool,
) -> Result<(Vec<RcptResult>, bool), ConnError> {
    let tm = conn.timeouts;
    let mut step = t.start();
    let mut first = reused;
    let mut write_failed: Option<std::io::Error> = None;
    loop {
        step = match step {
            ClientStep::Send(bytes) => {
                let (r, failed) = send_and_read(conn, &[&bytes], (tm.command, tm.batch), std::mem::take(&mut first)).await?;
                write_failed = write_failed.or(failed);
                t.on_reply(r)
            }
            ClientStep::SendWithChunk(head) => {
                let pieces: Vec<&[u8]> = std::iter::once(&head[..]).chain(chunk.iter().copied()).collect();
                // The first reply may wait for the whole message to be judged.
                let (r, failed) = send_and_read(conn, &pieces, (tm.data_end, tm.data_end.max(tm.batch)), std::mem::take(&mut first)).await?;
                write_failed = write_failed.or(failed);
                t.on_reply(r)
            }
            ClientStep::Read => {
                let r = match &write_failed {
                    // Only replies already on their way: the server is not reading.
                    Some(e) => conn.read_reply(READ_AFTER_WRITE_ERROR).await.map_err(|_| ConnError::Io(e.kind().into()))?,
                    None => conn.read_reply(if t.awaits_end_of_message() { tm.data_end.max(tm.command) } else { tm.command }).await?,
                };
                t.on_reply(r)
            }
            ClientStep::SendBody => {
                let octets: usize = wire.iter().map(|p| p.len()).sum();
                conn.trace(TraceKind::Body, || format!("(message body, {octets} octets, not shown)").into_bytes());
                wire.push(b".\r\n");
                let r = match crate::wire_write::write_all_vectored(&mut conn.stream, &wire, tm.data_end).await {
                    Ok(()) => conn.read_reply(tm.data_end).await?,
                    Err(e) => {
                        let (r, failed) = after_write_error(conn, e).await?;
                        write_failed = failed;
                        r
                    }
                };
                t.on_reply(r)
            }
            ClientStep::Done { results, reset } => {
                let Some(e) = write_failed else { return Ok((results, reset)) };
                // A server that accepted what it never got whole is not believed.
                let lost = ConnError::Io(e);
                let results = results.into_iter().map(|r| if matches!(r, RcptResult::Delivered(_)) { local_result(&lost) } else { r }).collect();
                return Ok((results, true));
            }
        };
    }
}

/// The pieces of a body without the bytes in `skip` (offsets into their concatenation; the
/// ranges in order and apart, as [`find_headers`] gives them).
fn skip_ranges<'a>(pieces: impl Iterator<Item = &'a [u8]>, skip: &[std::ops::Range<usize>]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    for p in pieces {
        let (start, end) = (at, at + p.len());
        at = end;
        // Keep the parts of [start, end) between the skipped ranges that overlap it.
        let mut keep_from = start;
        for r in skip.iter().filter(|r| r.start < end && r.end > start) {
            if r.start > keep_from {
                out.push(&p[keep_from - start..r.start - start]);
            }
            keep_from = keep_from.max(r.end.min(end));
        }
        if keep_from < end {
            out.push(&p[keep_from - start..]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{closed_before_transaction, skip_ranges, ConnError};
    use crate::smtp::reply::Reply;
    use std::io::ErrorKind as K;

    /// What says a reused connection was closed by the receiver before the transaction began
    /// (the delivery then goes back uncounted): end of stream, reset, broken pipe, a 421 that
    /// only closes; a policy 421 is an answer the rules must see.
    #[test]
    fn a_closed_connection_is_told_apart_from_a_refusal_or_a_slow_receiver() {
        let io = |k: K| Err(ConnError::Io(k.into()));
        let closing =
            [Ok(Reply::new(421, (4, 4, 2), "timeout exceeded")), Ok(Reply::new(421, (4, 3, 2), "shutting down")), Ok(Reply::plain(421, "closing"))];
        for closed in [io(K::UnexpectedEof), io(K::ConnectionReset), io(K::BrokenPipe)].into_iter().chain(closing) {
            assert!(closed_before_transaction(closed.as_ref()), "{closed:?}");
        }
        let open = [
            io(K::TimedOut),
            Ok(Reply::new(451, (4, 3, 0), "later")),
            Ok(Reply::new(250, (2, 1, 0), "ok")),
            Err(ConnError::Protocol("x".into())),
            Ok(Reply::new(421, (4, 7, 0), "[TSS04] Messages from 127.0.0.2 temporarily deferred")),
            Ok(Reply::new(421, (4, 7, 28), "unusual rate of unsolicited mail")),
        ];
        for answered in open {
            assert!(!closed_before_transaction(answered.as_ref()), "{answered:?}");
        }
    }
    use crate::outbound::shaping::{find_headers, POOL_HEADER};

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // one range to skip, not a range of ranges
    fn skipped_ranges_are_cut_out_across_pieces() {
        let pieces: [&[u8]; 3] = [b"abc", b"defg", b"hi"];
        let cut = |r: &[std::ops::Range<usize>]| skip_ranges(pieces.iter().copied(), r).concat();
        assert_eq!(cut(&[2..5]), b"abfghi");
        assert_eq!(cut(&[0..3]), b"defghi");
        assert_eq!(cut(&[3..7]), b"abchi");
        assert_eq!(cut(&[8..9]), b"abcdefgh");
        assert_eq!(cut(&[]), b"abcdefghi");
        assert_eq!(cut(&[1..2, 4..5, 6..8]), b"acdfi");
        assert_eq!(cut(&[0..1, 2..9]), b"b");
    }

    /// Every X-Ringpost-Pool field goes, whatever its case or folding, wherever the pieces
    /// split it; nothing else does, and the body's own lines that look alike stay.
    #[test]
    fn every_pool_header_is_left_out_of_what_is_sent() {
        let msg: [&[u8]; 4] = [
            b"X-Ringpost-Pool: bulk\r\nFrom: a@b\r\nx-ringpost-pool: o",
            b"ther\r\n\tfolded\r\nSubject: s\r\nX-RINGPOST-POOL:",
            b"third\r\nTo: c@d\r\n\r\nX-Ringpost-Pool: in the body\r\n",
            b"end\r\n",
        ];
        let found = find_headers(msg.iter().copied(), POOL_HEADER);
        let values: Vec<&str> = found.iter().map(|(v, _)| v.as_str()).collect();
        assert_eq!(values, ["bulk", "other folded", "third"]);
        let ranges: Vec<_> = found.into_iter().map(|(_, r)| r).collect();
        let sent = skip_ranges(msg.iter().copied(), &ranges).concat();
        assert_eq!(sent, b"From: a@b\r\nSubject: s\r\nTo: c@d\r\n\r\nX-Ringpost-Pool: in the body\r\nend\r\n");
    }
}
