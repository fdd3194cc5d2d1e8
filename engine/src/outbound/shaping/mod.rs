//! Delivering politely (issue 11): egress sources and pools, sites, per-site shaping, adaptive
//! rules and warm-up.
//!
//! A *path* is one (source, site, shape) triple: its own connection count, message and
//! connection rate, suspension and throttle. Paths are host-wide: a site's domains hash to
//! different cores, and every core serving the site shares the path's limits through atomics
//! in [`PathLimits`] (a compare-and-swap per connection or message, no lock), so a limit of 3
//! connections or 200 messages/s holds exactly for the host however the domains spread over
//! cores, and no core is starved by a static split. Each core keeps its own ready queue per
//! path (`outbound/queue.rs`); the queues are core-local, the limits are not.
//!
//! Without `[[shape]]` limits a path behaves as before: `delivery.max_connections_per_destination`
//! connections per core, no rate limit.
pub mod holds;
pub mod pool;
pub mod pool_scan;
pub mod prune;
pub mod rate;
pub mod rules;
pub mod site;
pub mod warmup;

use crate::config::{Config, RateSpec, ShapeConfig};
use rate::{Gcra, SharedLimiter, SharedVerdict};
use site::{Site, SiteMatch};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// An egress source; index 0 is the host's own address (no bind, `server.hostname`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Name (`"host"` for index 0).
    pub name: String,
    /// Local address to bind (none: the kernel's choice).
    pub bind: Option<IpAddr>,
    /// EHLO name (none: `server.hostname`).
    pub ehlo: Option<String>,
}

/// A pool: source indexes and weights.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Name.
    pub name: String,
    /// Source indexes.
    pub members: Vec<usize>,
    /// Their weights.
    pub weights: Vec<u32>,
}

/// The limits a path runs under, resolved from the first matching `[[shape]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeParams {
    /// Index of the matching shape (none matched: `None`).
    pub shape: Option<usize>,
    /// Host-wide connection cap per source for the site; `None`: per-core default.
    pub max_connections: Option<usize>,
    /// Messages per connection.
    pub max_deliveries: usize,
    /// Message rate.
    pub message_rate: Option<RateSpec>,
    /// Connection rate.
    pub connection_rate: Option<RateSpec>,
    /// Idle seconds before QUIT (none: `delivery.idle_timeout_s`).
    pub idle_timeout_s: Option<f64>,
    /// Consult the cluster limiter.
    pub shared: bool,
}

/// Why a path may not send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Suspended (by a rule) until this Unix ms.
    Suspended(u64),
    /// A rate allows the next event at this Unix ms.
    Rate(u64),
    /// The connection cap is reached (by this host's connections on any core).
    Connections,
}

/// One path's host-wide limits and state.
#[derive(Debug)]
pub struct PathLimits {
    /// `source|site` (plus `#shape` when a shape matched).
    pub key: String,
    /// Its limits.
    pub params: ShapeParams,
    connections: AtomicUsize,
    messages: Option<Gcra>,
    opens: Option<Gcra>,
    suspended_until_ms: AtomicU64,
    throttle_until_ms: AtomicU64,
    throttle_factor_bits: AtomicU64,
    /// Why it is suspended or throttled (control plane only: written on a rule match).
    note: Mutex<String>,
    /// Last Unix ms a connection opened or a message left (to the second; `prune.rs`).
    last_used_ms: AtomicU64,
    /// Being pruned: a caller that finds it set takes a fresh entry (`prune.rs`).
    retired: AtomicBool,
    /// Connections of this path idle on any core (they count against `max_connections`).
    idle: AtomicUsize,
    /// Idle connections of this path listen here on every core: a core whose deliveries wait
    /// at the cap while another core's connections idle asks one of them to QUIT.
    idle_quit: event_listener::Event,
    /// When a core last asked (Unix ms): at most one ask per [`IDLE_QUIT_ASK_MS`].
    idle_quit_asked_ms: AtomicU64,
}

/// How often, at most, the cores ask one idle connection of a path to give its place back
/// under the path's `max_connections`: a quit takes a round trip, so asking on every poll
/// would close more idle connections than the waiting core needs.
pub const IDLE_QUIT_ASK_MS: u64 = 200;

impl PathLimits {
    fn new(key: String, params: ShapeParams) -> Self {
        Self {
            key,
            messages: params.message_rate.map(|r| Gcra::new(r, 1)),
            opens: params.connection_rate.map(|r| Gcra::new(r, 1)),
            params,
            connections: AtomicUsize::new(0),
            suspended_until_ms: AtomicU64::new(0),
            throttle_until_ms: AtomicU64::new(0),
            throttle_factor_bits: AtomicU64::new(1f64.to_bits()),
            note: Mutex::new(String::new()),
            last_used_ms: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            idle: AtomicUsize::new(0),
            idle_quit: event_listener::Event::new(),
            idle_quit_asked_ms: AtomicU64::new(0),
        }
    }

    /// A connection of this path starts (`true`) or stops (`false`) idling, on any core.
    pub fn note_idle(&self, idle: bool) {
        if idle {
            self.idle.fetch_add(1, Ordering::AcqRel);
        } else {
            let _ = self.idle.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Connections of this path idle host-wide.
    pub fn idle_connections(&self) -> usize {
        self.idle.load(Ordering::Acquire)
    }

    /// Deliveries of this path wait at its `max_connections` on a core with no idle
    /// connection of its own: true when one idle elsewhere should be asked to QUIT now (there
    /// is one, the path has a host-wide cap, and nobody asked in the last
    /// [`IDLE_QUIT_ASK_MS`]). The caller then calls [`Self::ask_idle_quit`].
    pub fn should_ask_idle_quit(&self, now_ms: u64) -> bool {
        if self.params.max_connections.is_none() || self.idle_connections() == 0 {
            return false;
        }
        let last = self.idle_quit_asked_ms.load(Ordering::Acquire);
        now_ms >= last.saturating_add(IDLE_QUIT_ASK_MS)
            && self.idle_quit_asked_ms.compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Wake one idle connection of this path, on whichever core it idles: it QUITs.
    pub fn ask_idle_quit(&self) {
        self.idle_quit.notify(1);
    }

    /// Listen for [`Self::ask_idle_quit`] and for a suspension ([`Self::suspend`]): every
    /// idle connection of the path listens, on every core.
    pub fn listen_idle_quit(&self) -> event_listener::EventListener {
        self.idle_quit.listen()
    }

    /// Would the connection rate let a connection open at `now_ms`? Takes nothing (the
    /// host's own limiter is asked, not the cluster's). `Err(t)`: not before Unix ms `t`.
    /// A core checks it before it asks another core's idle connection to give its place
    /// back: a place it could not use would only close a connection for nothing.
    pub fn connection_rate_allows(&self, now_ms: u64) -> Result<(), u64> {
        let Some(g) = &self.opens else { return Ok(()) };
        g.peek(now_ms * 1000).map_err(|t| t.div_ceil(1000))
    }

    /// Note a use at `now_ms`; stored at most once a second, so cores sharing the path mostly
    /// only read the cache line.
    fn touch(&self, now_ms: u64) {
        if now_ms >= self.last_used_ms.load(Ordering::Relaxed) + 1_000 {
            self.last_used_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Suspended until (Unix ms), if it is at `now_ms`.
    pub fn suspended(&self, now_ms: u64) -> Option<u64> {
        let until = self.suspended_until_ms.load(Ordering::Relaxed);
        (until > now_ms).then_some(until)
    }

    fn factor(&self, now_ms: u64) -> f64 {
        if self.throttle_until_ms.load(Ordering::Relaxed) > now_ms {
            f64::from_bits(self.throttle_factor_bits.load(Ordering::Relaxed))
        } else {
            1.0
        }
    }

    fn rate(&self, g: &Option<Gcra>, kind: &str, shared: Option<&dyn SharedLimiter>, now_ms: u64) -> Result<(), Hold> {
        let Some(g) = g else { return Ok(()) };
        let now_us = now_ms * 1000;
        if let (true, Some(s)) = (self.params.shared, shared) {
            let rate = if kind == "msg" { self.params.message_rate } else { self.params.connection_rate };
            match s.acquire(&format!("{kind}:{}", self.key), rate.expect("a limiter has its rate"), now_us) {
                // A rule's throttle slows this host's share too: the local, slowed limiter
                // must also agree (the cluster's token alone would ignore the throttle).
                SharedVerdict::Allow if self.factor(now_ms) >= 1.0 => return Ok(()),
                SharedVerdict::Allow => {}
                SharedVerdict::Deny(t) => return Err(Hold::Rate(t.div_ceil(1000))),
                SharedVerdict::Local => {}
            }
        }
        g.try_acquire(now_us, self.factor(now_ms)).map_err(|t| Hold::Rate(t.div_ceil(1000)))
    }

    /// Take a connection slot (host-wide cap and connection rate); `local` is this core's
    /// count against `local_max` when the shape sets no cap.
    pub fn try_open(&self, now_ms: u64, local: usize, local_max: usize, shared: Option<&dyn SharedLimiter>) -> Result<(), Hold> {
        if let Some(until) = self.suspended(now_ms) {
            return Err(Hold::Suspended(until));
        }
        self.touch(now_ms);
        match self.params.max_connections {
            None if local >= local_max => return Err(Hold::Connections),
            None => {}
            Some(max) => {
                let took = self.connections.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < max).then_some(n + 1));
                if took.is_err() {
                    return Err(Hold::Connections);
                }
            }
        }
        self.rate(&self.opens, "conn", shared, now_ms).inspect_err(|_| self.closed())
    }

    /// A connection of this path ended (or was never made after [`Self::try_open`]).
    pub fn closed(&self) {
        if self.params.max_connections.is_some() {
            let _ = self.connections.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Connections open host-wide (counted only under a shape cap).
    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Take one message's turn under the message rate.
    pub fn try_message(&self, now_ms: u64, shared: Option<&dyn SharedLimiter>) -> Result<(), Hold> {
        if let Some(until) = self.suspended(now_ms) {
            return Err(Hold::Suspended(until));
        }
        self.touch(now_ms);
        self.rate(&self.messages, "msg", shared, now_ms)
    }

    /// Suspend until `until_ms` (a later suspension extends, an earlier one does not shorten).
    /// Every idle connection of the path, on every core, is told to QUIT: a suspended path
    /// takes no mail, and its connections must not stay open meanwhile.
    pub fn suspend(&self, until_ms: u64, why: &str) {
        self.suspended_until_ms.fetch_max(until_ms, Ordering::AcqRel);
        *self.note.lock().unwrap_or_else(|e| e.into_inner()) = why.to_string();
        self.idle_quit.notify(usize::MAX);
    }

    /// Multiply the rates by `factor` until `until_ms`.
    pub fn throttle(&self, factor: f64, until_ms: u64, why: &str) {
        self.throttle_factor_bits.store(factor.to_bits(), Ordering::Relaxed);
        self.throttle_until_ms.store(until_ms, Ordering::Release);
        *self.note.lock().unwrap_or_else(|e| e.into_inner()) = why.to_string();
    }

    /// What `ringctl queue` shows: suspended/throttled, until when and why (none: neither).
    pub fn status(&self, now_ms: u64) -> Option<String> {
        let note = || self.note.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let when = |ms: u64| crate::clock::rfc5322(ms);
        if let Some(until) = self.suspended(now_ms) {
            return Some(format!("{} suspended until {} ({})", self.key, when(until), note()));
        }
        let t = self.throttle_until_ms.load(Ordering::Acquire);
        (t > now_ms).then(|| format!("{} throttled x{} until {} ({})", self.key, self.factor(now_ms), when(t), note()))
    }
}

/// Host-wide shaping: sources, pools, shapes, rules, warm-up and the path registry.
pub struct Shaping {
    /// Sources; index 0 is the host's own address.
    pub sources: Vec<Source>,
    /// Pools.
    pub pools: Vec<Pool>,
    /// The pool named `default`, if configured.
    pub default_pool: Option<usize>,
    shapes: Vec<(SiteMatch, ShapeConfig)>,
    /// Adaptive rules.
    pub rules: rules::Rules,
    /// Warm-up schedules and counters.
    pub warmup: warmup::Warmup,
    /// Suspensions and throttles in force, kept across restarts.
    pub holds: holds::Holds,
    paths: papaya::HashMap<String, Arc<PathLimits>>,
    /// The cluster limiter for `shared = true` limits (set by the cluster integration).
    pub shared_limiter: Option<Arc<dyn SharedLimiter>>,
}

impl std::fmt::Debug for Shaping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shaping({} sources, {} pools, {} shapes)", self.sources.len(), self.pools.len(), self.shapes.len())
    }
}

impl Shaping {
    /// Compile a validated configuration; warm-up counters, suspensions and throttles persist
    /// in `state_dir`.
    pub fn new(cfg: &Config, state_dir: Option<&std::path::Path>) -> Self {
        let mut sources = vec![Source { name: "host".into(), bind: None, ehlo: None }];
        sources.extend(cfg.source.iter().map(|s| Source { name: s.name.clone(), bind: s.bind.parse().ok(), ehlo: s.ehlo.clone() }));
        let index = |n: &str| sources.iter().skip(1).position(|s| s.name == n).map(|i| i + 1);
        let pools: Vec<Pool> = cfg
            .pool
            .iter()
            .map(|p| {
                let (members, weights) = p.sources.iter().filter_map(|(n, w)| Some((index(n)?, *w))).unzip();
                Pool { name: p.name.clone(), members, weights }
            })
            .collect();
        let plans = cfg.warmup.iter().filter_map(|w| Some((index(&w.source)?, warmup::Plan::new(w)))).collect();
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let holds = holds::Holds::load(state_dir.map(|d| d.join("holds.state")), now_ms);
        let file = state_dir.map(|d| d.join("warmup.state"));
        let background = file.is_some();
        let warmup = warmup::Warmup::new(plans, file);
        let warmup = if background { warmup.saving_in_background() } else { warmup };
        Self {
            default_pool: pools.iter().position(|p| p.name == "default"),
            pools,
            shapes: cfg.shape.iter().map(|s| (SiteMatch::parse(&s.site), s.clone())).collect(),
            rules: rules::Rules::new(&cfg.rule),
            warmup,
            holds,
            paths: papaya::HashMap::new(),
            shared_limiter: None,
            sources,
        }
    }

    /// The pool index of a pool name (unknown names: none, i.e. the default).
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name.eq_ignore_ascii_case(name.trim()))
    }

    /// The limits of the first `[[shape]]` matching `site` reached for `domain`.
    pub fn shape_for(&self, domain: &str, site: &Site) -> ShapeParams {
        let found = self.shapes.iter().enumerate().find(|(_, (m, _))| m.matches(domain, site));
        let Some((i, (_, s))) = found else {
            return ShapeParams {
                shape: None,
                max_connections: None,
                max_deliveries: usize::MAX,
                message_rate: None,
                connection_rate: None,
                idle_timeout_s: None,
                shared: false,
            };
        };
        ShapeParams {
            shape: Some(i),
            max_connections: s.max_connections,
            max_deliveries: s.max_deliveries_per_connection.unwrap_or(usize::MAX),
            message_rate: s.max_message_rate.as_deref().and_then(RateSpec::parse),
            connection_rate: s.max_connection_rate.as_deref().and_then(RateSpec::parse),
            idle_timeout_s: s.idle_timeout_s,
            shared: s.shared,
        }
    }

    /// The host-wide limits of path (source `src`, `site`, shape of `domain`), made on first use.
    /// An entry being pruned at this moment is never handed out: the caller waits for the
    /// pruner to either keep it or drop it, then takes what the map holds (see `prune.rs`).
    pub fn path(&self, src: usize, domain: &str, site: &Site) -> Arc<PathLimits> {
        let params = self.shape_for(domain, site);
        let key = match params.shape {
            Some(i) => format!("{}|{}#{i}", self.sources[src].name, site.key),
            None => format!("{}|{}", self.sources[src].name, site.key),
        };
        let paths = self.paths.pin();
        loop {
            let p = match paths.get(&key) {
                Some(p) => p.clone(),
                None => paths.get_or_insert_with(key.clone(), || Arc::new(self.new_path(key.clone(), params.clone()))).clone(),
            };
            // Pairs with the fence in `prune.rs`: either this sees `retired`, or the pruner
            // sees this reference in the count and keeps the entry.
            std::sync::atomic::fence(Ordering::SeqCst);
            if !p.retired.load(Ordering::SeqCst) {
                return p;
            }
            drop(p);
            std::hint::spin_loop();
        }
    }

    /// A new path's limits (a suspension or throttle saved before a restart is applied
    /// here when it is still in force).
    fn new_path(&self, key: String, params: ShapeParams) -> PathLimits {
        let p = PathLimits::new(key, params);
        self.restore_hold(&p);
        p
    }

    /// Every path currently suspended or throttled, with its note.
    pub fn held(&self, now_ms: u64) -> Vec<String> {
        let mut out: Vec<String> = self.paths.pin().values().filter_map(|p| p.status(now_ms)).collect();
        out.sort();
        out
    }

    /// The path limits named `key`, if made.
    pub fn path_by_key(&self, key: &str) -> Option<Arc<PathLimits>> {
        self.paths.pin().get(key).cloned()
    }

    /// The shared limiter as the limit checks take it.
    pub fn shared(&self) -> Option<&dyn SharedLimiter> {
        self.shared_limiter.as_deref()
    }
}

/// The headers that choose a pool, removed before delivery.
pub const POOL_HEADER: &str = "x-ringpost-pool";

/// Find header `name` (lower-case) in the header section of a message given as pieces:
/// its first occurrence's value and the byte range of the whole field (folded lines included)
/// in the concatenation of the pieces. Reads only the header section.
pub fn find_header<'a>(pieces: impl Iterator<Item = &'a [u8]>, name: &str) -> Option<(String, std::ops::Range<usize>)> {
    find_headers(pieces, name).into_iter().next()
}

/// Every occurrence of header `name` (lower-case) in the header section, in order: value and
/// byte range of the whole field, as [`find_header`] gives the first.
pub fn find_headers<'a>(pieces: impl Iterator<Item = &'a [u8]>, name: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let head = header_section(pieces);
    let end = head.len();
    let mut found = Vec::new();
    let mut at = 0;
    while at < end {
        let line_end = head[at..end].windows(2).position(|w| w == b"\r\n").map_or(end, |i| at + i + 2);
        let mut field_end = line_end;
        while field_end < end && matches!(head[field_end], b' ' | b'\t') {
            field_end = head[field_end..end].windows(2).position(|w| w == b"\r\n").map_or(end, |i| field_end + i + 2);
        }
        let field = &head[at..field_end];
        if let Some(colon) = field.iter().position(|&b| b == b':') {
            if field[..colon].eq_ignore_ascii_case(name.as_bytes()) {
                let value = String::from_utf8_lossy(&field[colon + 1..]).split_whitespace().collect::<Vec<_>>().join(" ");
                found.push((value, at..field_end));
            }
        }
        at = field_end;
    }
    found
}

/// The header section of a message given as pieces (up to and including the CRLF before the
/// blank line; at most 64 KiB), copied in small steps so the body is never copied.
fn header_section<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    const MAX: usize = 64 * 1024;
    let mut head = Vec::new();
    for p in pieces {
        for chunk in p.chunks(1024) {
            let from = head.len().saturating_sub(3);
            head.extend_from_slice(chunk);
            if let Some(i) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                head.truncate(from + i + 2);
                return head;
            }
            if head.len() >= MAX {
                return head;
            }
        }
    }
    head
}

/// Where the pool's source is chosen: per core (deterministic smooth weighted round robin).
#[derive(Debug, Default)]
pub struct Chooser {
    state: HashMap<usize, pool::Swrr>,
}

/// What a source says when offered a message (its warm-up cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Taken (and counted).
    Take,
    /// Over the cap; the message waits for this Unix ms.
    Wait(u64),
    /// Over the cap; offer it to another source of the pool (or wait for this Unix ms if
    /// none takes it).
    Overflow(u64),
}

impl Chooser {
    /// A source of pool `pool` (none: the `default` pool, else the host) that takes the
    /// message; `Err(t)`: none does, wait until Unix ms `t`.
    pub fn pick(&mut self, shaping: &Shaping, pool: Option<usize>, offer: impl Fn(usize) -> Offer) -> Result<usize, u64> {
        let Some(p) = pool.or(shaping.default_pool) else {
            return match offer(0) {
                Offer::Take => Ok(0),
                Offer::Wait(t) | Offer::Overflow(t) => Err(t),
            };
        };
        let pool = &shaping.pools[p];
        let swrr = self.state.entry(p).or_default();
        let mut refused: Vec<usize> = Vec::new();
        let mut wait = u64::MAX;
        while let Some(i) = swrr.pick(&pool.weights, |i| !refused.contains(&i)) {
            match offer(pool.members[i]) {
                Offer::Take => return Ok(pool.members[i]),
                Offer::Wait(t) => return Err(t),
                Offer::Overflow(t) => {
                    wait = wait.min(t);
                    refused.push(i);
                }
            }
        }
        Err(wait)
    }
}

#[cfg(test)]
mod tests;
