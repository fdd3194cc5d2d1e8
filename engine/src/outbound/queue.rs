//! The queue manager of one core: per *path* (source, site) a ready FIFO, per domain a
//! schedule of deliveries waiting for their next attempt, and the decision of what happens
//! after an attempt.
//!
//! A site is the set of hosts a domain's mail goes to (`shaping/site.rs`); every domain of one
//! provider lands in the same ready queue of a source, under one set of limits. A delivery
//! enters a path when it becomes ready: its domain's site is known (else the caller is asked
//! to resolve it: [`Dispatch::Resolve`]), its pool picks a source (smooth weighted round robin,
//! warm-up caps), and the path's limits decide whether a connection opens. The limits are
//! host-wide ([`crate::outbound::shaping::PathLimits`]); the queues are this core's.
//!
//! It decides and never acts: no I/O, no timers, no spawning. Time is passed in (Unix ms from
//! the shard's [`crate::clock::Clock`]), results are handed to it, and it answers with
//! [`Dispatch`] (what the caller should do about connections) and [`Settlement`] (what became
//! final, what waits). That keeps it testable by driving time (Postfix's qmgr apart from its
//! smtp agents). The shard owns one and touches it only from its own core.
//!
//! A queued delivery is small and fixed (issue 9 item 4: a million queued messages): a shared
//! message handle (whose envelope stays in the spool), one recipient inline, the domain and
//! the last reply as shared strings ([`Interner`]). Deliveries waiting for their next attempt
//! sit in a binary heap keyed by (due time, arrival order), packed to 40 bytes each: O(log n)
//! to schedule or release one, whatever the backlog.
use crate::message::SpooledMessage;
use crate::outbound::idle_bell::IdleBell;
use crate::outbound::intern::{Interner, Name};
use crate::outbound::retry::{RetryDecision, RetryPolicy};
use crate::outbound::shaping::site::Site;
use crate::outbound::shaping::warmup::SAVE_WAIT_MS;
use crate::outbound::shaping::{Chooser, Hold, Offer, PathLimits, Shaping, Source};
use crate::smtp::client::RcptResult;
use crate::smtp::reply::Reply;
use ringpost_spool::{MsgRef, Outcome};
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// How long a domain's site is trusted before it is resolved again. The resolver caches by
/// DNS TTL, so a look-up is a cache hit until the record expires; keeping this short means a
/// domain whose MX set changed moves to its new site within about a second of its DNS TTL
/// (a connection of the old site keeps going only to the old site's hosts).
pub const SITE_TTL_MS: u64 = 1_000;
/// How soon a core looks again at a path whose connection cap is held by other cores.
pub const CAP_POLL_MS: u64 = 50;
/// While paths wait for a connection under the core's cap, a path's connections close after
/// this many deliveries and the path queues for its next turn (a backlogged provider must not
/// keep its connections for hours while a new destination waits).
pub const TURN_DELIVERIES: usize = 100;
/// Slow start: a path with connections opens another only while its ready deliveries
/// outnumber its connections by this factor (each connection, busy or still connecting, takes
/// the next one as soon as it is free). Without it a path opened a connection for every
/// message that arrived while its connections were busy or still connecting, up to its limit:
/// with thousands of paths the host went to tens of thousands of connections and collapsed.
pub const SLOW_START_BACKLOG: usize = 1;
/// Most deliveries one [`QueueManager::release_due`] moves from the schedule to their paths.
/// A backlog coming due at once (a restart with a million queued, the end of a long outage)
/// is released batch by batch, the core's other tasks and I/O running between two batches.
/// `backlog_memory` (100,000 due at once, quiet machine): 98 calls, the longest 1.4–1.8 ms;
/// all in one call took 69–84 ms, with every session of the core frozen (perf/RESULTS.md,
/// tenth session).
pub const RELEASE_BATCH: usize = 1024;

/// Some recipients of one message bound for one domain.
pub struct Delivery {
    /// The message.
    pub msg: Arc<SpooledMessage>,
    /// Recipient indexes.
    pub rcpts: Rcpts,
    /// Attempts made so far.
    pub attempts: u32,
    /// The last transient reply about these recipients (none before the first attempt),
    /// shared with every delivery that got the same one.
    pub last_response: Option<Name>,
    /// The recipients' domain.
    pub domain: Name,
    /// The message's pool (none: `default`).
    pub pool: Option<u16>,
}

/// The recipient indexes of a delivery: one inline (the common case), more on the heap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rcpts {
    /// A single recipient.
    One(u32),
    /// Several (or none).
    Many(Box<[u32]>),
}

impl std::ops::Deref for Rcpts {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        match self {
            Rcpts::One(i) => std::slice::from_ref(i),
            Rcpts::Many(v) => v,
        }
    }
}

impl From<Vec<u32>> for Rcpts {
    fn from(v: Vec<u32>) -> Self {
        match v.as_slice() {
            [i] => Rcpts::One(*i),
            _ => Rcpts::Many(v.into()),
        }
    }
}

impl From<&[u32]> for Rcpts {
    fn from(v: &[u32]) -> Self {
        v.to_vec().into()
    }
}

/// Bits of a [`Scheduled`] key that hold the schedule order among equal due times.
const SEQ_BITS: u32 = 22;
/// The latest due time a key holds (Unix ms; year 2109): later ones are kept as this.
const AT_MAX_MS: u64 = (1 << (64 - SEQ_BITS)) - 1;
/// A [`Scheduled::rcpt`] with this bit set is the key of its recipients in
/// [`QueueManager::parked_rcpts`].
const MANY: u32 = 1 << 31;
/// [`Scheduled::pool`] for the `default` pool.
const NO_POOL: u16 = u16::MAX;

/// A delivery waiting for its next attempt, packed (40 bytes, not the 64 of a [`Delivery`]
/// with a due time and an order: issue 9 item 4, a million queued), ordered so the heap's top
/// is the earliest due (then the earliest scheduled). Due time and order share one word: the
/// order's low 22 bits break ties between equal due times, so two deliveries due in the same
/// millisecond and scheduled four million schedules apart may leave in either order. One
/// recipient is inline; several sit in a side table. Attempts past 65,535 count as 65,535.
struct Scheduled {
    key: u64,
    msg: Arc<SpooledMessage>,
    domain: Name,
    last_response: Option<Name>,
    rcpt: u32,
    attempts: u16,
    pool: u16,
}

impl Scheduled {
    fn key(&self) -> u64 {
        self.key
    }

    /// When it is due (Unix ms).
    fn at_ms(&self) -> u64 {
        self.key >> SEQ_BITS
    }

    /// Its message.
    fn msg(&self) -> &Arc<SpooledMessage> {
        &self.msg
    }
}

/// Index of a packed delivery's recipients while it waits, when there are several.
#[derive(Default)]
struct ParkedRcpts {
    lists: HashMap<u32, Box<[u32]>>,
    next: u32,
}

impl ParkedRcpts {
    /// Pack `d`, due at `at_ms`, scheduled as number `seq`.
    fn park(&mut self, at_ms: u64, seq: u64, d: Delivery) -> Scheduled {
        let rcpt = match d.rcpts {
            Rcpts::One(i) if i & MANY == 0 => i,
            rcpts => {
                while self.lists.contains_key(&self.next) {
                    self.next = (self.next + 1) & !MANY;
                }
                let k = self.next;
                self.next = (k + 1) & !MANY;
                self.lists.insert(k, rcpts.to_vec().into());
                k | MANY
            }
        };
        let key = (at_ms.min(AT_MAX_MS) << SEQ_BITS) | (seq & ((1 << SEQ_BITS) - 1));
        let attempts = d.attempts.min(u32::from(u16::MAX)) as u16;
        Scheduled { key, msg: d.msg, domain: d.domain, last_response: d.last_response, rcpt, attempts, pool: d.pool.unwrap_or(NO_POOL) }
    }

    /// The delivery `s` holds, out of the schedule.
    fn unpark(&mut self, s: Scheduled) -> Delivery {
        let rcpts = match s.rcpt {
            i if i & MANY == 0 => Rcpts::One(i),
            k => Rcpts::Many(self.lists.remove(&(k & !MANY)).expect("parked recipients")),
        };
        Delivery {
            msg: s.msg,
            rcpts,
            attempts: u32::from(s.attempts),
            last_response: s.last_response,
            domain: s.domain,
            pool: (s.pool != NO_POOL).then_some(s.pool),
        }
    }

    /// A copy of the delivery `s` holds (operator views).
    fn view(&self, s: &Scheduled) -> Delivery {
        let rcpts = match s.rcpt {
            i if i & MANY == 0 => Rcpts::One(i),
            k => Rcpts::Many(self.lists[&(k & !MANY)].clone()),
        };
        let pool = (s.pool != NO_POOL).then_some(s.pool);
        Delivery {
            msg: s.msg.clone(),
            rcpts,
            attempts: u32::from(s.attempts),
            last_response: s.last_response.clone(),
            domain: s.domain.clone(),
            pool,
        }
    }
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// Reversed: [`BinaryHeap`] is a max-heap, and the earliest key must come out first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.key().cmp(&self.key())
    }
}

/// What the caller should do about connections after a queue change.
pub enum Dispatch {
    /// Nothing: no work, or a limit holds.
    Nothing,
    /// Wake an idle connection of the path (ring this bell: the own bell of its newest idle
    /// connection, so the oldest ones are the first to time out or give their slot).
    WakeIdle(Rc<IdleBell>),
    /// Tell one idle connection to QUIT now (ring this bell, the connection's own): its idle
    /// time ran out, a path waits for a connection at the core's cap (the slot goes to the line
    /// when it closes), a suspension or shutdown.
    CloseIdle(Rc<IdleBell>),
    /// The path's `max_connections` is held host-wide and one of its connections idles on
    /// another core: ask one idle connection of the path to QUIT
    /// ([`PathLimits::ask_idle_quit`]), so the waiting deliveries get its place.
    AskIdleQuit(Arc<PathLimits>),
    /// Open a new connection on this path (already counted against its limits).
    Open(Rc<str>),
    /// Find the site of this domain and hand it to [`QueueManager::site_resolved`].
    Resolve(String),
}

/// What a connection gets when it asks for work.
pub enum Pop {
    /// A delivery.
    Ready(Delivery),
    /// Work is there but the path's rate allows the next message at this Unix ms.
    Wait(u64),
    /// Nothing ready: wait idle.
    Empty,
    /// The path is suspended: close.
    Close,
}

/// A recipient whose attempt ended for good.
#[derive(Debug, Clone)]
pub struct Final {
    /// Recipient index.
    pub rcpt: u32,
    /// Delivered, bounced or expired.
    pub outcome: Outcome,
    /// The reply it ended with (for expiry: the last transient reply).
    pub reply: Reply,
}

/// Recipients that wait for another attempt.
#[derive(Debug, Clone)]
pub struct Deferred {
    /// Recipient indexes.
    pub rcpts: Vec<u32>,
    /// Attempts made so far, including this one.
    pub attempts: u32,
    /// When the next attempt is due (Unix ms).
    pub next_attempt_ms: u64,
    /// The transient reply.
    pub reply: Reply,
}

/// The outcome of one attempt for one delivery.
#[derive(Debug, Default)]
pub struct Settlement {
    /// Recipients that are done (delivered, bounced, expired).
    pub finals: Vec<Final>,
    /// Recipients scheduled again, if any.
    pub deferred: Option<Deferred>,
    /// Attempts made, including this one.
    pub attempts: u32,
}

/// What a connection of a path needs to know: where to go, from where, how long to stay.
#[derive(Debug, Clone)]
pub struct PathInfo {
    /// The site.
    pub site: Rc<Site>,
    /// The egress source.
    pub source: Source,
    /// Messages per connection.
    pub max_deliveries: usize,
    /// Idle seconds before QUIT (none: `delivery.idle_timeout_s`).
    pub idle_timeout_s: Option<f64>,
}

/// An idle connection's place in its core's reclaim order ([`QueueManager::idle_begin`]):
/// since when it idles (monotonic ms), then a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdleTicket(u64, u64);

/// An idle connection in [`QueueManager::idle_order`].
struct IdleEntry {
    /// Its path.
    key: Rc<str>,
    /// Its own bell (work for it, or QUIT).
    bell: Rc<IdleBell>,
    /// When its idle time runs out (monotonic ms): then the retry timer tells it to QUIT
    /// ([`QueueManager::expire_idle`]), so an idle episode arms no timer of its own.
    deadline_ms: u64,
}

/// What [`QueueManager::idle_begin`] gives a connection that starts to idle.
pub struct IdleStart {
    /// Its place in the reclaim order.
    pub ticket: IdleTicket,
    /// Another core's ask to QUIT, or a rule's suspension of its path.
    pub asked: event_listener::EventListener,
    /// Its deadline is the earliest the retry timer knows of: wake the timer
    /// (the core's `retry_wake`) so it sleeps no later than that.
    pub wake_timer: bool,
}

struct Path {
    ready: VecDeque<Delivery>,
    connections: usize,
    /// Its connections idling for work on this core, not told to quit nor woken, oldest first
    /// (exactly its tickets in [`QueueManager::idle_order`]).
    idle: Vec<IdleTicket>,
    /// Its idle connections told to QUIT (for the line, a suspension, another core's ask),
    /// not closed yet: they take no more work. Each leaves by its own ticket when it closes
    /// ([`QueueManager::connection_ended`]), so none is counted twice.
    told: Vec<IdleTicket>,
    limits: Arc<PathLimits>,
    site: Rc<Site>,
    source: usize,
    /// The earliest wake-up registered for it.
    wake_at: Option<u64>,
    /// In [`QueueManager::slot_waiters`]: it wants a connection and the core's cap is reached.
    wants_slot: bool,
    /// Deliveries handed out since a connection last opened for it: while other paths wait
    /// for a connection, one past [`TURN_DELIVERIES`] gives its slot away.
    turn: usize,
}

struct SiteEntry {
    site: Rc<Site>,
    expires_ms: u64,
    /// Path keys by source, as met.
    paths: Vec<(usize, Rc<str>)>,
}

/// All queues of one core.
pub struct QueueManager {
    paths: HashMap<Rc<str>, Path>,
    sites: HashMap<Rc<str>, SiteEntry>,
    /// Deliveries whose domain's site is being resolved.
    resolving: HashMap<String, Vec<Delivery>>,
    scheduled: BinaryHeap<Scheduled>,
    /// The recipients of waiting deliveries that have several.
    parked_rcpts: ParkedRcpts,
    /// Paths to dispatch again at a time (a rate, a suspension, a cap held elsewhere).
    wakeups: BTreeMap<(u64, u64), Rc<str>>,
    /// Recipients on a connection, by domain.
    in_flight: HashMap<Name, usize>,
    chooser: Chooser,
    shaping: Arc<Shaping>,
    seq: u64,
    policy: RetryPolicy,
    connections_max: usize,
    /// Domains the operator suspended: their mail waits, no connection takes it.
    suspended: HashSet<String>,
    /// Every destination is suspended.
    all_suspended: bool,
    /// Domains and replies shared by the deliveries that carry them.
    strings: Interner,
    /// Queued recipients per destination, for the operator's views.
    stats: QueueStats,
    /// Outbound connections open on this core, all paths together.
    connections_total: usize,
    /// This core's share of `[delivery] max_connections_total`.
    connections_total_max: usize,
    /// Paths that want a connection while the core is at its cap, first come first served:
    /// each freed connection goes to the first of them, so a thousand destinations take turns
    /// instead of opening a thousand connections each.
    slot_waiters: VecDeque<Rc<str>>,
    /// This core's idle connections, longest idle first, with the bell that makes each QUIT:
    /// when a path waits at the cap, the first of another path gives its slot back.
    idle_order: BTreeMap<IdleTicket, IdleEntry>,
    /// The shortest idle timeout any connection of this core was given (ms): no entry of
    /// `idle_order` idling for less can have run out, which bounds [`Self::expire_idle`]'s walk.
    idle_min_ms: u64,
    /// No idle connection runs out before this (monotonic ms), as far as the retry timer was
    /// told.
    idle_next_ms: Option<u64>,
    /// Connections told to QUIT for the line and not closed yet (at most one per waiting
    /// path), by ticket.
    reclaiming: HashSet<IdleTicket>,
    /// Deliveries put back once after a reused connection turned out dead before the
    /// transaction began ([`QueueManager::requeue_unsent`]): by message and first recipient,
    /// until they are settled. At most one such silent retry per delivery.
    requeued: HashSet<(MsgRef, u32)>,
}

impl QueueManager {
    /// Empty queues with this retry policy, per-core connection limit for paths without a
    /// shaped cap, and the host's shaping.
    pub fn new(policy: RetryPolicy, connections_max: usize, shaping: Arc<Shaping>) -> Self {
        Self {
            paths: HashMap::new(),
            sites: HashMap::new(),
            resolving: HashMap::new(),
            scheduled: BinaryHeap::new(),
            parked_rcpts: ParkedRcpts::default(),
            wakeups: BTreeMap::new(),
            in_flight: HashMap::new(),
            chooser: Chooser::default(),
            shaping,
            seq: 0,
            policy,
            connections_max: connections_max.max(1),
            suspended: HashSet::new(),
            all_suspended: false,
            strings: Interner::default(),
            stats: QueueStats::default(),
            connections_total: 0,
            connections_total_max: usize::MAX,
            slot_waiters: VecDeque::new(),
            idle_order: BTreeMap::new(),
            idle_min_ms: u64::MAX,
            idle_next_ms: None,
            reclaiming: HashSet::new(),
            requeued: HashSet::new(),
        }
    }

    /// The shared copy of a domain or reply text that deliveries carry.
    pub fn intern(&mut self, s: &str) -> Name {
        self.strings.get(s)
    }

    /// New retry policy and connection limit (a reload); deliveries already scheduled keep
    /// their time, connections above a lowered limit finish their work.
    pub fn set_policy(&mut self, policy: RetryPolicy, connections_max: usize) {
        self.policy = policy;
        self.connections_max = connections_max.max(1);
    }

    /// Cap the outbound connections this core keeps open, all paths together (a reload may
    /// lower it: connections above it finish their work, none opens until below).
    /// Returns the connections a raised cap opens for paths already waiting.
    pub fn set_total_connections(&mut self, max: usize, now_ms: u64, may_open: bool) -> Vec<Dispatch> {
        self.connections_total_max = max.max(1);
        let mut out = Vec::new();
        while self.connections_total < self.connections_total_max && !self.slot_waiters.is_empty() {
            match self.next_waiter(now_ms, may_open) {
                Dispatch::Nothing => break,
                d => out.push(d),
            }
        }
        out
    }

    /// Outbound connections open on this core.
    pub fn connections_total(&self) -> usize {
        self.connections_total
    }

    /// The host's shaping.
    pub fn shaping(&self) -> &Arc<Shaping> {
        &self.shaping
    }

    /// Queue a delivery as ready now; `may_open` is false while shutting down.
    pub fn enqueue(&mut self, d: Delivery, now_ms: u64, may_open: bool) -> Dispatch {
        let site = match self.sites.get(&*d.domain) {
            Some(e) if e.expires_ms > now_ms => e.site.clone(),
            _ => {
                let first = !self.resolving.contains_key(&*d.domain);
                let domain = d.domain.to_string();
                self.stats.add(&d, Bucket::Ready);
                self.resolving.entry(domain.clone()).or_default().push(d);
                return if first { Dispatch::Resolve(domain) } else { Dispatch::Nothing };
            }
        };
        self.assign(d, site, now_ms, may_open)
    }

    /// Look every domain's site up again before its next delivery: a reload may have changed
    /// routes or TLS settings, and a cached site would keep sending to the old hosts.
    pub fn expire_sites(&mut self) {
        self.sites.values_mut().for_each(|e| e.expires_ms = 0);
    }

    /// The site of `domain` is known: queue what waited for it.
    pub fn site_resolved(&mut self, domain: &str, site: Site, now_ms: u64, may_open: bool) -> Vec<Dispatch> {
        let key: Rc<str> = domain.into();
        let site = Rc::new(site);
        let same = self.sites.get(&key).is_some_and(|e| e.site.key == site.key);
        let e = self.sites.entry(key).or_insert_with(|| SiteEntry { site: site.clone(), expires_ms: 0, paths: Vec::new() });
        if !same {
            *e = SiteEntry { site: site.clone(), expires_ms: 0, paths: Vec::new() };
        }
        // A DNS failure is this attempt's answer only: the next attempt looks again.
        e.expires_ms = if site.failure.is_some() { now_ms } else { now_ms + SITE_TTL_MS };
        let waiting = self.resolving.remove(domain).unwrap_or_default();
        waiting.iter().for_each(|d| self.stats.remove(d, Bucket::Ready));
        waiting.into_iter().map(|d| self.assign(d, site.clone(), now_ms, may_open)).collect()
    }

    /// Give a delivery a source of its pool and put it on that path.
    fn assign(&mut self, d: Delivery, site: Rc<Site>, now_ms: u64, may_open: bool) -> Dispatch {
        let shaping = self.shaping.clone();
        let w = &shaping.warmup;
        let offer = |src: usize| match w.plan(src) {
            None => Offer::Take,
            Some(plan) => match w.try_take(src, &site.key, now_ms) {
                Ok(()) => Offer::Take,
                // A moment's wait for the allowance to reach the disk is not the day's cap:
                // it never sends the message out on another source.
                Err(t) if plan.overflow == crate::config::WarmupOverflow::Pool && t > now_ms + SAVE_WAIT_MS => Offer::Overflow(t),
                Err(t) => Offer::Wait(t),
            },
        };
        let src = match self.chooser.pick(&shaping, d.pool.map(usize::from), offer) {
            Ok(src) => src,
            Err(next_day_ms) => {
                self.schedule(d, next_day_ms);
                return Dispatch::Nothing;
            }
        };
        let key = self.path_key(src, &d.domain, &site);
        self.stats.add(&d, Bucket::Ready);
        // Mail of a suspended domain waits in its path without a dispatch: no connection may
        // take it, and `dispatch` would walk the path's ready queue to learn that (a released
        // backlog of a suspended domain cost the square of its size).
        let held = self.is_suspended(&d.domain);
        self.paths.get_mut(&key).expect("path made").ready.push_back(d);
        if held {
            return Dispatch::Nothing;
        }
        self.dispatch(&key, now_ms, may_open)
    }

    /// The key of path (`src`, site of `domain`), making the path on first use.
    fn path_key(&mut self, src: usize, domain: &str, site: &Rc<Site>) -> Rc<str> {
        let entry = self.sites.get_mut(domain).expect("site known");
        if let Some((_, k)) = entry.paths.iter().find(|(s, _)| *s == src) {
            if self.paths.contains_key(k) {
                return k.clone();
            }
        }
        let limits = self.shaping.path(src, domain, site);
        let key: Rc<str> = limits.key.as_str().into();
        entry.paths.retain(|(s, _)| *s != src);
        entry.paths.push((src, key.clone()));
        self.paths.entry(key.clone()).or_insert_with(|| Path {
            ready: VecDeque::new(),
            connections: 0,
            idle: Vec::new(),
            told: Vec::new(),
            limits,
            site: site.clone(),
            source: src,
            wake_at: None,
            wants_slot: false,
            turn: 0,
        });
        key
    }

    /// Queue a delivery for its next attempt at `at_ms`.
    pub fn schedule(&mut self, d: Delivery, at_ms: u64) {
        self.seq += 1;
        self.stats.add(&d, Bucket::Waiting);
        let s = self.parked_rcpts.park(at_ms, self.seq, d);
        self.scheduled.push(s);
    }

    /// When the earliest scheduled delivery or path wake-up is due (Unix ms).
    pub fn next_due_ms(&self) -> Option<u64> {
        let a = self.scheduled.peek().map(Scheduled::at_ms);
        let b = self.wakeups.keys().next().map(|(t, _)| *t);
        a.into_iter().chain(b).min()
    }

    /// No idle connection's time runs out before this (monotonic ms, [`Clock::mono_ms`]);
    /// the retry timer then calls [`Self::expire_idle`]. None: nothing idles.
    ///
    /// [`Clock::mono_ms`]: crate::clock::Clock::mono_ms
    pub fn next_idle_ms(&self) -> Option<u64> {
        self.idle_next_ms
    }

    /// Move deliveries due at `now_ms` to their paths, at most [`RELEASE_BATCH`], and look
    /// again at paths whose wake-up is due; one dispatch each. While more are due,
    /// [`Self::next_due_ms`] stays at or before `now_ms`: the caller lets the core's other
    /// work run, then calls again.
    pub fn release_due(&mut self, now_ms: u64, may_open: bool) -> Vec<Dispatch> {
        let mut out = Vec::new();
        let mut released = 0;
        while released < RELEASE_BATCH && self.scheduled.peek().is_some_and(|s| s.at_ms() <= now_ms) {
            released += 1;
            let d = self.parked_rcpts.unpark(self.scheduled.pop().expect("peeked"));
            self.stats.remove(&d, Bucket::Waiting);
            out.push(self.enqueue(d, now_ms, may_open));
        }
        let later = self.wakeups.split_off(&(now_ms + 1, 0));
        let woken = std::mem::replace(&mut self.wakeups, later);
        for key in woken.into_values() {
            if let Some(p) = self.paths.get_mut(&key) {
                p.wake_at = None;
                out.push(self.dispatch(&key, now_ms, may_open));
            }
        }
        out
    }

    fn wake_path_at(&mut self, key: &Rc<str>, at_ms: u64) {
        let Some(p) = self.paths.get_mut(key) else { return };
        if p.wake_at.is_none_or(|w| at_ms < w) {
            p.wake_at = Some(at_ms);
            self.seq += 1;
            self.wakeups.insert((at_ms, self.seq), key.clone());
        }
    }

    /// Wake an idle connection or open one, within the path's limits.
    fn dispatch(&mut self, key: &Rc<str>, now_ms: u64, may_open: bool) -> Dispatch {
        let shaping = self.shaping.clone();
        let Some(p) = self.paths.get_mut(key) else { return Dispatch::Nothing };
        let held = self.all_suspended || (!self.suspended.is_empty() && p.ready.iter().all(|d| self.suspended.contains(&*d.domain)));
        if p.ready.is_empty() || held {
            return Dispatch::Nothing;
        }
        if let Some(until) = p.limits.suspended(now_ms) {
            self.wake_path_at(key, until);
            return Dispatch::Nothing;
        }
        if let Some(newest) = p.idle.pop() {
            // Woken, it idles no more: it leaves the reclaim order now, so nothing in this
            // pass tells it to QUIT for another path.
            let e = self.idle_order.remove(&newest).expect("a path's idle tickets are in the order");
            p.limits.note_idle(false);
            return Dispatch::WakeIdle(e.bell);
        }
        // A connection told to quit takes no more work: it is not one at work for slow start.
        if !may_open || p.ready.len() <= p.connections.saturating_sub(p.told.len()) * SLOW_START_BACKLOG {
            return Dispatch::Nothing;
        }
        if self.connections_total >= self.connections_total_max {
            // At the core's cap nothing opens, whatever the path's own limit says (another
            // core may free a place of the site between two looks: a try here would open past
            // the cap). At its own limit a slot of the core's would not help it: it does not
            // queue for one (nor has an idle connection of another path closed for it).
            let own_limit = match p.limits.params.max_connections {
                Some(max) => p.limits.open_connections() >= max,
                None => p.connections >= self.connections_max,
            };
            if own_limit {
                if p.connections == 0 {
                    self.wake_path_at(key, now_ms + CAP_POLL_MS);
                }
                return Dispatch::Nothing;
            }
            if !p.wants_slot {
                p.wants_slot = true;
                self.slot_waiters.push_back(key.clone());
            }
            return self.reclaim_idle(key);
        }
        match p.limits.try_open(now_ms, p.connections, self.connections_max, shaping.shared()) {
            Ok(()) => {
                p.connections += 1;
                p.turn = 0;
                self.connections_total += 1;
                Dispatch::Open(key.clone())
            }
            Err(Hold::Rate(t) | Hold::Suspended(t)) => {
                self.wake_path_at(key, t);
                Dispatch::Nothing
            }
            Err(Hold::Connections) => {
                // No connection of its own idles here (it would have been woken): when one
                // idles on another core, it is asked to give its place back, but only when the
                // connection rate would let this core open in its place (re-checked by
                // `try_open` when the place is free).
                let may_ask = p.limits.connection_rate_allows(now_ms).is_ok();
                let ask = (may_ask && p.limits.should_ask_idle_quit(now_ms)).then(|| Dispatch::AskIdleQuit(p.limits.clone()));
                if p.connections == 0 {
                    self.wake_path_at(key, now_ms + CAP_POLL_MS);
                }
                ask.unwrap_or(Dispatch::Nothing)
            }
        }
    }

    /// Path `waiting` waits at the core's cap: unless enough connections are already quitting
    /// for the line, the longest-idle connection of another path is told to QUIT (idle
    /// connections keep their slot for `idle_timeout_s` only while nobody needs it).
    fn reclaim_idle(&mut self, waiting: &str) -> Dispatch {
        if self.reclaiming.len() >= self.slot_waiters.len() {
            return Dispatch::Nothing;
        }
        let Some(ticket) = self.idle_order.iter().find(|(_, e)| &*e.key != waiting).map(|(t, _)| *t) else { return Dispatch::Nothing };
        self.reclaiming.insert(ticket);
        Dispatch::CloseIdle(self.tell_quit(ticket))
    }

    /// The idle connection with `ticket` is told to QUIT: it leaves the reclaim order and the
    /// host-wide idle count, and joins its path's `told` until it closes. Returns its bell.
    fn tell_quit(&mut self, ticket: IdleTicket) -> Rc<IdleBell> {
        let e = self.idle_order.remove(&ticket).expect("only tickets in the order are told");
        let p = self.paths.get_mut(&e.key).expect("an idle connection's path stays");
        p.idle.retain(|t| *t != ticket);
        p.told.push(ticket);
        p.limits.note_idle(false);
        e.bell
    }

    /// Tell every idle connection whose idle time ran out at `now_ms` (monotonic ms, the clock
    /// of [`Self::idle_begin`]) to QUIT, and note when the next one can run out. Walks the
    /// oldest first, and only those idle for at least the shortest timeout given (with one
    /// timeout for all, exactly those that ran out; each shorter timeout a shape sets makes
    /// the walk cover every connection idle longer than it). The retry timer calls it after
    /// [`Self::release_due`], so mail due in the same tick reuses a connection about to expire.
    pub fn expire_idle(&mut self, now_ms: u64) -> Vec<Dispatch> {
        if self.idle_next_ms.is_none_or(|t| t > now_ms) {
            return Vec::new();
        }
        let mut next: Option<u64> = None;
        let mut expired = Vec::new();
        for (t, e) in &self.idle_order {
            let earliest = t.0.saturating_add(self.idle_min_ms);
            if earliest > now_ms {
                next = Some(next.map_or(earliest, |n| n.min(earliest)));
                break;
            }
            if e.deadline_ms <= now_ms {
                expired.push(*t);
            } else {
                next = Some(next.map_or(e.deadline_ms, |n| n.min(e.deadline_ms)));
            }
        }
        self.idle_next_ms = next;
        expired.into_iter().map(|t| Dispatch::CloseIdle(self.tell_quit(t))).collect()
    }

    /// Tell every idle connection of this core (`None`) or of the paths of `domain`'s site to
    /// QUIT: an operator's suspension or shutdown. Returns the events to notify.
    pub fn quit_idle(&mut self, domain: Option<&str>) -> Vec<Dispatch> {
        // The domain's site as last resolved: its paths are those of every source.
        let site = domain.map(|d| self.sites.get(d).map(|e| e.site.key.clone()));
        let of_site = |k: &Rc<str>| match &site {
            None => true,
            Some(site) => site.as_ref().is_some_and(|s| self.paths.get(k).is_some_and(|p| p.site.key == *s)),
        };
        let tickets: Vec<IdleTicket> = self.idle_order.iter().filter(|(_, e)| of_site(&e.key)).map(|(t, _)| *t).collect();
        tickets.into_iter().map(|t| Dispatch::CloseIdle(self.tell_quit(t))).collect()
    }

    /// Where and how a connection of path `key` goes.
    pub fn path_info(&self, key: &str) -> Option<PathInfo> {
        let p = self.paths.get(key)?;
        let params = &p.limits.params;
        Some(PathInfo {
            site: p.site.clone(),
            source: self.shaping.sources[p.source].clone(),
            max_deliveries: params.max_deliveries,
            idle_timeout_s: params.idle_timeout_s,
        })
    }

    /// The key of the path the host source uses for `domain`'s site, if made (tests, admin).
    pub fn path_key_of(&self, domain: &str) -> Option<Rc<str>> {
        self.sites.get(domain)?.paths.iter().find(|(s, _)| *s == 0).map(|(_, k)| k.clone())
    }

    /// The site and host-wide limits of path `key`.
    pub fn path_limits(&self, key: &str) -> Option<(Rc<Site>, Arc<PathLimits>)> {
        self.paths.get(key).map(|p| (p.site.clone(), p.limits.clone()))
    }

    /// Next ready delivery for a connection of path `key`.
    pub fn pop(&mut self, key: &str, now_ms: u64) -> Pop {
        let Some(p) = self.paths.get_mut(key) else { return Pop::Close };
        if self.all_suspended || p.limits.suspended(now_ms).is_some() {
            return Pop::Close;
        }
        let at = if self.suspended.is_empty() {
            (!p.ready.is_empty()).then_some(0)
        } else {
            p.ready.iter().position(|d| !self.suspended.contains(&*d.domain))
        };
        // A connection with nothing to do, or past its turn, gives its slot to a waiting path
        // instead of idling or keeping it.
        let others_wait = self.slot_waiters.len() > usize::from(p.wants_slot);
        let Some(at) = at else {
            return if p.ready.is_empty() && !others_wait { Pop::Empty } else { Pop::Close };
        };
        if others_wait && p.turn >= TURN_DELIVERIES {
            return Pop::Close;
        }
        match p.limits.try_message(now_ms, self.shaping.shared()) {
            Ok(()) => {}
            Err(Hold::Rate(t)) => return Pop::Wait(t),
            Err(_) => return Pop::Close,
        }
        let d = p.ready.remove(at).expect("position found");
        p.turn += 1;
        if p.ready.is_empty() && p.wants_slot {
            // Its own connection took the last one: it no longer needs a slot, and a stale
            // place in line would have an idle connection of another path closed for nothing.
            p.wants_slot = false;
            self.slot_waiters.retain(|w| &**w != key);
        }
        self.stats.remove(&d, Bucket::Ready);
        *self.in_flight.entry(d.domain.clone()).or_default() += d.rcpts.len();
        Pop::Ready(d)
    }

    /// Every ready delivery of path `key` (its connection attempt failed).
    pub fn take_ready(&mut self, key: &str) -> Vec<Delivery> {
        let Some(p) = self.paths.get_mut(key) else { return Vec::new() };
        let taken: Vec<Delivery> = p.ready.drain(..).collect();
        for d in &taken {
            self.stats.remove(d, Bucket::Ready);
            *self.in_flight.entry(d.domain.clone()).or_default() += d.rcpts.len();
        }
        taken
    }

    /// A delivery popped for a reused connection of path `key` comes back unsent: the
    /// receiver had closed that connection (EOF, reset or 421 before any reply of the
    /// transaction), most likely while it idled. That is no attempt: the first time, the
    /// delivery goes back to the front of the path's ready queue, uncounted, and a fresh
    /// connection takes it (Postfix does the same with a dead cached connection).
    /// `Err(d)`: it came back this way once already: the caller reports it as an attempt.
    /// `Ok`: the path's other idle connections, told to QUIT (returned to notify): each has
    /// idled at least as long as the one found dead, so the receiver has most likely dropped
    /// them too, and the next one woken would spend the delivery's one silent retry and turn
    /// it into a counted deferral. With them gone, the path opens a fresh connection.
    pub fn requeue_unsent(&mut self, key: &str, d: Delivery) -> Result<Vec<Dispatch>, Delivery> {
        let id = (d.msg.id, d.rcpts.first().copied().unwrap_or(0));
        if !self.paths.contains_key(key) || !self.requeued.insert(id) {
            return Err(d);
        }
        self.land(&d);
        self.stats.add(&d, Bucket::Ready);
        let p = self.paths.get_mut(key).expect("just found");
        p.ready.push_front(d);
        let stale = p.idle.clone();
        Ok(stale.into_iter().map(|t| Dispatch::CloseIdle(self.tell_quit(t))).collect())
    }

    /// Delivery `d` is off its connection: its recipients are no longer in flight.
    fn land(&mut self, d: &Delivery) {
        if let Some(n) = self.in_flight.get_mut(&*d.domain) {
            *n = n.saturating_sub(d.rcpts.len());
            if *n == 0 {
                self.in_flight.remove(&*d.domain);
            }
        }
    }

    /// A connection of path `key` waits idle for work, idle since `since_ms` (monotonic ms,
    /// [`crate::clock::Clock::mono_ms`]: a wall-clock step must not stretch or cut an idle
    /// connection's time), until `since_ms + idle_ms` at most; `own` is its own bell, rung when work comes ([`Dispatch::WakeIdle`]) or it
    /// must QUIT ([`Dispatch::CloseIdle`]: its idle time ran out, its slot is wanted, a
    /// suspension, shutdown). None: no such path. `since_ms` is now, except for a connection
    /// woken for a delivery that another connection took first: it idles on from when it
    /// first began, so it keeps its deadline and its place among the path's idle connections
    /// (the newest is woken first, the oldest times out or is reclaimed first).
    pub fn idle_begin(&mut self, key: &str, since_ms: u64, own: Rc<IdleBell>, idle_ms: u64) -> Option<IdleStart> {
        let (k, p) = self.paths.get_key_value(key)?;
        let k = k.clone();
        // Listen before counting itself idle: a core that sees the count and asks must find
        // this listener there.
        let asked = p.limits.listen_idle_quit();
        p.limits.note_idle(true);
        self.seq += 1;
        let ticket = IdleTicket(since_ms, self.seq);
        let deadline_ms = since_ms.saturating_add(idle_ms);
        self.idle_order.insert(ticket, IdleEntry { key: k, bell: own, deadline_ms });
        let idle = &mut self.paths.get_mut(key).expect("just found").idle;
        let at = idle.partition_point(|t| *t < ticket);
        idle.insert(at, ticket);
        self.idle_min_ms = self.idle_min_ms.min(idle_ms);
        let wake_timer = self.idle_next_ms.is_none_or(|t| deadline_ms < t);
        if wake_timer {
            self.idle_next_ms = Some(deadline_ms);
        }
        Some(IdleStart { ticket, asked, wake_timer })
    }

    /// The idle connection with `ticket` woke: work for it, told to QUIT by this core (its idle
    /// time ran out, its slot is wanted, a suspension, shutdown), or `asked` (another core's
    /// ask, a rule's suspension of its path: it QUITs). True: it must close now; its ticket
    /// stays told until [`Self::connection_ended`].
    pub fn idle_end(&mut self, key: &str, ticket: IdleTicket, asked: bool) -> bool {
        if asked && self.idle_order.contains_key(&ticket) {
            self.tell_quit(ticket);
        }
        let Some(p) = self.paths.get_mut(key) else { return true };
        if p.told.contains(&ticket) {
            return true;
        }
        if self.idle_order.remove(&ticket).is_some() {
            p.idle.retain(|t| *t != ticket);
            p.limits.note_idle(false);
        }
        false
    }

    /// A connection of path `key`, never told to QUIT, ended; open another if work is still
    /// ready.
    pub fn connection_closed(&mut self, key: &str, now_ms: u64, may_open: bool) -> Dispatch {
        self.connection_ended(key, None, now_ms, may_open)
    }

    /// A connection of path `key` ended; `told` is its ticket when it was told to QUIT while
    /// idle ([`Self::idle_end`] said so). Opens another if work is still ready.
    pub fn connection_ended(&mut self, key: &str, told: Option<IdleTicket>, now_ms: u64, may_open: bool) -> Dispatch {
        let Some(k) = self.paths.get_key_value(key).map(|(k, _)| k.clone()) else { return Dispatch::Nothing };
        let p = self.paths.get_mut(key).expect("just found");
        p.connections = p.connections.saturating_sub(1);
        self.connections_total = self.connections_total.saturating_sub(1);
        p.limits.closed();
        if let Some(t) = told {
            p.told.retain(|x| *x != t);
            self.reclaiming.remove(&t);
        }
        if p.ready.is_empty() {
            if p.connections == 0 && !p.wants_slot {
                self.paths.remove(key);
            }
            return self.next_waiter(now_ms, may_open);
        }
        if self.slot_waiters.is_empty() {
            return self.dispatch(&k, now_ms, may_open);
        }
        // Others wait for a connection: this path goes to the back of the line (also when it
        // was in line already, asking for a further connection of its own).
        if p.wants_slot {
            self.slot_waiters.retain(|w| *w != k);
        }
        p.wants_slot = true;
        self.slot_waiters.push_back(k);
        self.next_waiter(now_ms, may_open)
    }

    /// A connection is free under the core's cap: the first waiting path that can use it.
    fn next_waiter(&mut self, now_ms: u64, may_open: bool) -> Dispatch {
        while let Some(key) = self.slot_waiters.pop_front() {
            let Some(p) = self.paths.get_mut(&key) else { continue };
            p.wants_slot = false;
            if p.ready.is_empty() && p.connections == 0 {
                self.paths.remove(&key);
                continue;
            }
            match self.dispatch(&key, now_ms, may_open) {
                Dispatch::Nothing => {}
                d => return d,
            }
            if self.connections_total >= self.connections_total_max {
                break;
            }
        }
        Dispatch::Nothing
    }

    /// Ready deliveries of `domain` and open connections of the paths holding them.
    pub fn depth(&self, domain: &str) -> (usize, usize) {
        let mut out = (0, 0);
        for p in self.paths.values() {
            let n = p.ready.iter().filter(|d| &*d.domain == domain).count();
            if n > 0 || self.sites.get(domain).is_some_and(|e| e.site.key == p.site.key) {
                out = (out.0 + n, out.1 + p.connections);
            }
        }
        out
    }

    /// Deliveries waiting for a later attempt.
    pub fn scheduled_len(&self) -> usize {
        self.scheduled.len()
    }

    /// Decide what one attempt's results mean: finals for delivered and bounced recipients;
    /// transient failures either wait (scheduled here; after `retry_in` when a rule says so)
    /// or, past the lifetime, expire.
    pub fn settle(&mut self, now_ms: u64, d: Delivery, results: Vec<RcptResult>, retry_in: Option<Duration>) -> Settlement {
        let attempts = d.attempts + 1;
        self.land(&d);
        if !self.requeued.is_empty() {
            // Its one silent retry is spent (a part of it reports the first recipient).
            self.requeued.remove(&(d.msg.id, d.rcpts.first().copied().unwrap_or(0)));
        }
        let mut out = Settlement { attempts, ..Default::default() };
        let mut retry = Vec::new();
        let mut last_transient = None;
        assert_eq!(d.rcpts.len(), results.len(), "one result per recipient");
        for (&rcpt, result) in d.rcpts.iter().zip(results) {
            match result {
                RcptResult::Delivered(reply) => out.finals.push(Final { rcpt, outcome: Outcome::Delivered, reply }),
                RcptResult::Permanent(reply) => out.finals.push(Final { rcpt, outcome: Outcome::Bounced, reply }),
                RcptResult::Transient(reply) => {
                    retry.push(rcpt);
                    last_transient = Some(reply);
                }
            }
        }
        let Some(reply) = last_transient else { return out };
        let age = Duration::from_millis(now_ms.saturating_sub(d.msg.received_ms()));
        let decision = match (self.policy.decide(attempts, age), retry_in) {
            (RetryDecision::RetryIn(_), Some(after)) => RetryDecision::RetryIn(after),
            (decision, _) => decision,
        };
        match decision {
            RetryDecision::RetryIn(after) => {
                let next_attempt_ms = now_ms + after.as_millis() as u64;
                let last_response = Some(self.strings.get(&reply.to_wire().trim_end().replace("\r\n", " ")));
                let again = Delivery { msg: d.msg, rcpts: retry.as_slice().into(), attempts, last_response, domain: d.domain, pool: d.pool };
                out.deferred = Some(Deferred { rcpts: retry, attempts, next_attempt_ms, reply });
                self.schedule(again, next_attempt_ms);
            }
            RetryDecision::Expire => {
                out.finals.extend(retry.into_iter().map(|rcpt| Final { rcpt, outcome: Outcome::Expired, reply: reply.clone() }));
            }
        }
        out
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;

#[path = "queue_admin.rs"]
mod admin;
#[path = "queue_stats.rs"]
mod stats;

#[path = "queue_prune.rs"]
mod prune;
pub use admin::{DestView, Place, QueuedRcpt};
use stats::{Bucket, QueueStats};

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn a_queued_delivery_is_small() {
        // Handle, inline recipient, shared domain and reply, attempts, pool (issue 9 item 4).
        assert_eq!(std::mem::size_of::<Rcpts>(), 16);
        assert_eq!(std::mem::size_of::<Delivery>(), 48);
        assert_eq!(std::mem::size_of::<Scheduled>(), 40);
        assert_eq!(Rcpts::from(vec![7]), Rcpts::One(7));
        assert_eq!(&*Rcpts::from(vec![1, 2]), &[1, 2]);
    }

    #[test]
    fn a_packed_delivery_comes_back_whole_in_order() {
        let mut strings = Interner::default();
        let (reply, domain) = (strings.get("451 later"), strings.get("a.test"));
        let msg =
            Arc::new(SpooledMessage::owned(ringpost_spool::MsgRef { core: 0, segment: 1, offset: 64 }, String::new(), vec![], vec![], vec![], 0, 0));
        let d =
            |rcpts: Rcpts, pool| Delivery { msg: msg.clone(), rcpts, attempts: 3, last_response: Some(reply.clone()), domain: domain.clone(), pool };
        let mut parked = ParkedRcpts::default();
        let (a, b) =
            (parked.park(1_800_000_000_123, 7, d(Rcpts::One(5), None)), parked.park(1_800_000_000_123, 8, d(Rcpts::Many([1, 4].into()), Some(2))));
        let c = parked.park(1_800_000_000_122, 9, d(Rcpts::One(0), Some(0)));
        assert_eq!((a.at_ms(), c.at_ms()), (1_800_000_000_123, 1_800_000_000_122));
        assert!(c.key() < a.key() && a.key() < b.key());
        assert_eq!(parked.park(u64::MAX, 1, d(Rcpts::One(1), None)).at_ms(), AT_MAX_MS, "a far-future due time stays far in the future");
        let view = parked.view(&b);
        assert_eq!((&*view.rcpts, view.pool, view.attempts, view.last_response.as_deref()), (&[1, 4][..], Some(2), 3, Some("451 later")));
        let (a, b, c) = (parked.unpark(a), parked.unpark(b), parked.unpark(c));
        assert_eq!((a.rcpts, a.pool, &*a.domain), (Rcpts::One(5), None, "a.test"));
        assert_eq!((b.rcpts, b.pool, c.pool), (Rcpts::Many([1, 4].into()), Some(2), Some(0)));
        assert!(parked.lists.is_empty(), "the side table keeps nothing once unpacked");
    }
}
