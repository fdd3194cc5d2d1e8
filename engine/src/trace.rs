//! Live tracing of SMTP conversations (`ringctl trace`): each core's [`Tracer`] hands events
//! of its inbound sessions and outbound connections to the trace clients subscribed to it.
//!
//! Why it is shaped this way: tracing must cost nothing when nobody traces, and never slow a
//! core when somebody does. Every hook first reads [`Tracer::on`], one `Cell<bool>` of its own
//! core, and builds no event while it is false. When it is true, events go to each matching
//! subscriber over a bounded channel with `try_send`: a full channel (a slow trace client)
//! drops the event and counts it, so the core never waits and the memory held is at most
//! [`TRACE_QUEUE`] events per subscriber. Bodies never pass here (only their size), and AUTH
//! credentials are redacted before an event is built ([`redact_command`]).
use futures_channel::mpsc;
use ringpost_admin_proto::{TraceEvent, TraceKind, TraceSide};
use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Events one subscriber's channel holds before the next ones are dropped (and counted).
pub const TRACE_QUEUE: usize = 4096;
/// Longest command or reply text kept in an event.
const TEXT_MAX: usize = 2048;

/// One trace client's subscription, as each core holds it.
#[derive(Clone)]
pub struct Subscription {
    /// Chosen by the admin task; the same on every core.
    pub id: u64,
    /// Only inbound sessions from this address.
    pub client: Option<IpAddr>,
    /// Only outbound conversations with this domain (lowercase).
    pub dest: Option<String>,
    /// Where events go (bounded).
    pub tx: mpsc::Sender<TraceEvent>,
    /// Events dropped because `tx` was full, over every core.
    pub dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// Whether this subscriber wants an inbound session from `ip`.
    fn wants_in(&self, ip: IpAddr) -> bool {
        self.dest.is_none() && self.client.is_none_or(|c| c == ip)
    }

    /// Whether this subscriber wants an outbound conversation with `domain`.
    fn wants_out(&self, domain: &str) -> bool {
        self.client.is_none() && self.dest.as_deref().is_none_or(|d| d == domain)
    }
}

/// Where a traced conversation goes: fixed when it starts.
#[derive(Debug, Clone)]
pub struct TraceTag {
    /// Session or connection number on its core.
    pub conn: u64,
    /// Inbound or outbound.
    pub side: TraceSide,
    /// The peer's address text.
    pub peer: String,
    /// Inbound: the client's IP (for the `--client` filter).
    pub client: Option<IpAddr>,
    /// Outbound: the destination domain (for the `--dest` filter).
    pub domain: Option<String>,
}

/// One core's trace subscribers. Lives on its core (`Rc`); nothing here is shared.
pub struct Tracer {
    core: u32,
    on: Cell<bool>,
    subs: RefCell<Vec<Subscription>>,
    next_conn: Cell<u64>,
}

impl Tracer {
    /// A tracer with nobody subscribed.
    pub fn new(core: usize) -> Self {
        Self { core: core as u32, on: Cell::new(false), subs: RefCell::new(Vec::new()), next_conn: Cell::new(0) }
    }

    /// True while somebody traces: the only thing a hook reads when nobody does.
    #[inline]
    pub fn on(&self) -> bool {
        self.on.get()
    }

    /// A new session or connection number (unique on this core).
    pub fn next_conn(&self) -> u64 {
        let n = self.next_conn.get() + 1;
        self.next_conn.set(n);
        n
    }

    /// Start sending events to `sub`.
    pub fn subscribe(&self, sub: Subscription) {
        self.subs.borrow_mut().push(sub);
        self.on.set(true);
    }

    /// Stop sending events to subscription `id`.
    pub fn unsubscribe(&self, id: u64) {
        let mut subs = self.subs.borrow_mut();
        subs.retain(|s| s.id != id);
        self.on.set(!subs.is_empty());
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.subs.borrow().len()
    }

    /// Send one event of the conversation `tag` to every subscriber that wants it. Never
    /// waits: a full channel counts a drop; a closed one ends that subscription.
    pub fn emit(&self, tag: &TraceTag, kind: TraceKind, text: &[u8]) {
        let wants = |s: &Subscription| match (&tag.client, &tag.domain) {
            (Some(ip), _) => s.wants_in(*ip),
            (None, Some(d)) => s.wants_out(d),
            (None, None) => s.client.is_none() && s.dest.is_none(),
        };
        let mut subs = self.subs.borrow_mut();
        if !subs.iter().any(wants) {
            return;
        }
        let event = TraceEvent {
            unix_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            core: self.core,
            side: tag.side,
            conn: tag.conn,
            peer: tag.peer.clone(),
            domain: tag.domain.clone(),
            kind,
            text: one_text(text),
        };
        subs.retain_mut(|s| {
            if !wants(s) {
                return true;
            }
            match s.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(e) if e.is_full() => {
                    s.dropped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(_) => false,
            }
        });
        self.on.set(!subs.is_empty());
    }
}

/// Text of a command or reply: lossy UTF-8, CRLF as `\n`, no trailing line end, at most
/// [`TEXT_MAX`] bytes.
fn one_text(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(TEXT_MAX)];
    let mut s = String::from_utf8_lossy(cut).replace("\r\n", "\n");
    s.truncate(s.trim_end().len());
    if bytes.len() > TEXT_MAX {
        s.push_str(" [...]");
    }
    s
}

/// What a trace may show of a client's command line: `AUTH MECH` keeps its mechanism and
/// hides its initial response; a line sent in answer to a 334 challenge (`in_auth`) is an
/// AUTH continuation (base64 credentials) and is hidden whole.
pub fn redact_command(line: &[u8], in_auth: bool) -> Vec<u8> {
    if in_auth {
        return b"[redacted AUTH continuation]".to_vec();
    }
    let is_auth = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"AUTH") && line.get(4).is_none_or(|b| b.is_ascii_whitespace());
    if !is_auth {
        return line.to_vec();
    }
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_ascii_whitespace();
    let (verb, mech) = (words.next().unwrap_or("AUTH"), words.next());
    match (mech, words.next()) {
        (Some(m), Some(_)) => format!("{verb} {m} [redacted]").into_bytes(),
        (Some(m), None) => format!("{verb} {m}").into_bytes(),
        (None, _) => verb.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag_in(ip: &str) -> TraceTag {
        let ip: IpAddr = ip.parse().unwrap();
        TraceTag { conn: 1, side: TraceSide::In, peer: format!("{ip}:1234"), client: Some(ip), domain: None }
    }

    fn sub(id: u64, client: Option<&str>, dest: Option<&str>, depth: usize) -> (Subscription, mpsc::Receiver<TraceEvent>) {
        let (tx, rx) = mpsc::channel(depth);
        let s = Subscription { id, client: client.map(|c| c.parse().unwrap()), dest: dest.map(String::from), tx, dropped: Default::default() };
        (s, rx)
    }

    #[test]
    fn auth_credentials_never_reach_a_trace() {
        assert_eq!(redact_command(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", false), b"AUTH PLAIN [redacted]");
        assert_eq!(redact_command(b"auth login\r\n", false), b"auth login");
        assert_eq!(redact_command(b"c2VjcmV0\r\n", true), b"[redacted AUTH continuation]");
        assert_eq!(redact_command(b"MAIL FROM:<a@b>\r\n", false), b"MAIL FROM:<a@b>\r\n");
        assert_eq!(redact_command(b"AUTHORIZE x\r\n", false), b"AUTHORIZE x\r\n");
    }

    #[test]
    fn nobody_subscribed_means_off_and_filters_pick_the_side() {
        let t = Tracer::new(0);
        assert!(!t.on());
        let (all, mut rx_all) = sub(1, None, None, 16);
        let (only_ip, mut rx_ip) = sub(2, Some("10.0.0.9"), None, 16);
        let (only_dest, mut rx_dest) = sub(3, None, Some("b.test"), 16);
        for s in [all, only_ip, only_dest] {
            t.subscribe(s);
        }
        assert!(t.on());
        t.emit(&tag_in("10.0.0.9"), TraceKind::Command, b"EHLO x\r\n");
        t.emit(&tag_in("10.0.0.8"), TraceKind::Command, b"EHLO y\r\n");
        let out = TraceTag { conn: 2, side: TraceSide::Out, peer: "mx[1.2.3.4]:25".into(), client: None, domain: Some("b.test".into()) };
        t.emit(&out, TraceKind::Reply, b"250 ok\r\n");
        let drain = |rx: &mut mpsc::Receiver<TraceEvent>| std::iter::from_fn(|| rx.try_recv().ok()).map(|e| e.text).collect::<Vec<_>>();
        assert_eq!(drain(&mut rx_all), ["EHLO x", "EHLO y", "250 ok"]);
        assert_eq!(drain(&mut rx_ip), ["EHLO x"]);
        assert_eq!(drain(&mut rx_dest), ["250 ok"]);
        for id in 1..=3 {
            t.unsubscribe(id);
        }
        assert!(!t.on());
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_a_gone_client_unsubscribes() {
        let t = Tracer::new(0);
        let (s, rx) = sub(1, None, None, 2);
        let dropped = s.dropped.clone();
        t.subscribe(s);
        for _ in 0..10 {
            t.emit(&tag_in("10.0.0.1"), TraceKind::Command, b"NOOP\r\n");
        }
        // A bounded channel holds its depth plus one slot per sender.
        assert_eq!(dropped.load(Ordering::Relaxed), 10 - 3);
        drop(rx);
        t.emit(&tag_in("10.0.0.1"), TraceKind::Command, b"NOOP\r\n");
        assert_eq!(t.subscribers(), 0);
        assert!(!t.on());
    }
}
