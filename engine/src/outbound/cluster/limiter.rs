//! One core's limiter: message-rate admission and connection slots for the paths this core
//! owns, shared through Redis when the limit says `shared = true` and Redis answers, per host
//! otherwise. Never stops delivery: a Redis error or timeout switches to the per-host figure
//! (`health.rs` decides when to try again).
use super::client::{ClusterError, RedisConn, Script};
use super::health::{Health, Note};
use super::lease::{batch_size, burst_us, LeaseBook, LocalGcra, SLOW_CALL_MS};
use crate::cluster_config::{ClusterSection, Rate, RedisAddr};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A connection lease lives this long unless renewed; a crashed host's leases die with it.
pub const CONN_LEASE_TTL_MS: u64 = 6_000;
/// Renewal period of a live connection's lease.
const CONN_RENEW_EVERY: Duration = Duration::from_millis(CONN_LEASE_TTL_MS / 3);
/// Wait before asking again for a connection slot that was full.
const CONN_RETRY: Duration = Duration::from_millis(50);
/// The longest single wait for a rate token (then the limit is looked at again).
const MAX_TOKEN_WAIT: Duration = Duration::from_millis(1_000);

/// Process-wide time of the last outage warning (ms since the limiter epoch + 1), so the
/// cores of one host say "Redis is down" once, not once each.
static LAST_WARNING_MS: AtomicU64 = AtomicU64::new(0);

/// This process's name in connection leases: host name, process id and a random nonce drawn
/// once per process. Containers often share a host name pattern and all run as pid 1, so
/// `host:pid` alone can name two processes alike, and their leases would count as one.
pub fn default_host_id(host: &str) -> String {
    static NONCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let nonce = NONCE.get_or_init(rand::random::<u64>);
    format!("{host}:{}:{nonce:016x}", std::process::id())
}

/// Which limit, on which path: `name` is the configured limit's name, `path` the caller's
/// path (today the destination domain; with `[[shape]]`, "source|site").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitKey {
    /// The limit's configured name.
    pub name: String,
    /// The path it applies to.
    pub path: String,
}

impl LimitKey {
    fn redis_key(&self, kind: &str) -> String {
        format!("ringpost:{kind}:{}:{}", self.name, self.path)
    }
}

/// What a path-based sender needs from a limiter: wait for a message token, hold a connection
/// slot. Implemented by [`Limiter`]; the queue side calls it at the narrowest points (before a
/// delivery leaves, before a connection opens).
pub trait PathLimits {
    /// Wait until one message may leave on `key` at `rate`.
    fn admit_message(&self, key: &LimitKey, rate: Rate, shared: bool) -> impl std::future::Future<Output = ()>;
    /// Wait for one of `max` connection slots on `key`; the slot is held until dropped.
    fn open_connection(self: &Rc<Self>, key: &LimitKey, max: u32, shared: bool) -> impl std::future::Future<Output = ConnSlot>;
}

#[derive(Default)]
struct RateState {
    book: LeaseBook,
    local: LocalGcra,
    waiting: u32,
}

/// One core's limiter (state belongs to the core; no locks).
pub struct Limiter {
    redis: Option<RedisAddr>,
    timeout: Duration,
    holder_prefix: String,
    conn: RefCell<Option<RedisConn>>,
    calls: glommio::sync::Semaphore,
    health: RefCell<Health>,
    rates: RefCell<HashMap<LimitKey, RateState>>,
    open: RefCell<HashMap<LimitKey, u32>>,
    next_holder: Cell<u64>,
    epoch: Instant,
    rate_script: Script,
    conn_script: Script,
}

impl Limiter {
    /// A core's limiter for `cfg` (`host` names this host in connection leases unless
    /// `cluster.host_id` does).
    pub fn new(cfg: &ClusterSection, host: &str, core: usize) -> Rc<Self> {
        let host_id = cfg.host_id.clone().unwrap_or_else(|| default_host_id(host));
        Rc::new(Self {
            redis: cfg.redis.as_deref().and_then(RedisAddr::parse),
            timeout: Duration::from_millis(cfg.timeout_ms),
            holder_prefix: format!("{host_id}/{core}"),
            conn: RefCell::new(None),
            calls: glommio::sync::Semaphore::new(1),
            health: RefCell::new(Health::default()),
            rates: RefCell::new(HashMap::new()),
            open: RefCell::new(HashMap::new()),
            next_holder: Cell::new(0),
            epoch: Instant::now(),
            rate_script: Script::new(include_str!("gcra.lua")),
            conn_script: Script::new(include_str!("conn_lease.lua")),
        })
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn now_ms(&self) -> u64 {
        self.now_us() / 1000
    }

    /// True while shared limits go through Redis (for `ringctl` and tests).
    pub fn is_shared(&self) -> bool {
        self.redis.is_some() && self.health.borrow().is_shared()
    }

    /// True when a Redis call would be made now (configured; up, or down past its backoff).
    /// While Redis is down (or slow) the hook answers `Local` and calls only to probe.
    pub(super) fn may_call(&self) -> bool {
        self.redis.is_some() && self.health.borrow().may_try(self.now_ms())
    }

    /// Lease up to `want` tokens of `rate` for `key` from Redis: Some(granted) (0: none left
    /// now), None when Redis did not answer.
    pub(super) async fn lease_tokens(&self, key: &LimitKey, rate: Rate, want: u32) -> Option<u32> {
        let (interval, tau, want) = (rate.interval_us().to_string(), burst_us(rate).to_string(), want.to_string());
        let args: [&[u8]; 3] = [interval.as_bytes(), tau.as_bytes(), want.as_bytes()];
        let r = self.redis_run(&self.rate_script, &key.redis_key("rate"), &args).await?;
        Some(r.first().copied().unwrap_or(0).max(0) as u32)
    }

    /// Run a script on the core's Redis connection (connecting first when needed), one call at
    /// a time; None when Redis is down and its backoff has not passed. Errors switch to per-host
    /// limits (logged once), a success after an outage switches back (logged).
    async fn redis_run(&self, script: &Script, key: &str, args: &[&[u8]]) -> Option<Vec<i64>> {
        let addr = self.redis.as_ref()?;
        let _turn = self.calls.acquire_permit(1).await.ok()?;
        if !self.health.borrow().may_try(self.now_ms()) {
            return None;
        }
        let started = Instant::now();
        let result = self.call_on_conn(addr, script, key, args).await;
        let took_ms = started.elapsed().as_millis() as u64;
        let now = self.now_ms();
        // A slow answer is used (its tokens were counted) but switches to per-host limits
        // like a failure: the next calls would only lease tokens that expire on arrival.
        let slow = (result.is_ok() && took_ms > SLOW_CALL_MS).then_some(ClusterError::Slow(took_ms));
        let note = match (&result, &slow) {
            (Ok(_), None) => self.health.borrow_mut().succeeded(now),
            (Ok(_), Some(_)) => self.health.borrow_mut().failed(now),
            (Err(_), _) => {
                self.conn.borrow_mut().take();
                self.health.borrow_mut().failed(now)
            }
        };
        self.log(note, slow.as_ref().or(result.as_ref().err()), addr);
        result.ok()
    }

    async fn call_on_conn(&self, addr: &RedisAddr, script: &Script, key: &str, args: &[&[u8]]) -> Result<Vec<i64>, ClusterError> {
        let held = self.conn.borrow_mut().take();
        let mut conn = match held {
            Some(c) => c,
            None => RedisConn::connect(addr, self.timeout).await?,
        };
        let out = conn.run(script, &[key.as_bytes()], args).await?;
        *self.conn.borrow_mut() = Some(conn);
        Ok(out)
    }

    fn log(&self, note: Option<Note>, err: Option<&ClusterError>, addr: &RedisAddr) {
        let why = err.map(|e| e.to_string()).unwrap_or_default();
        match note {
            Some(Note::WentDown) | Some(Note::StillDown { .. }) if self.first_warning() => {
                tracing::warn!("redis {} unusable ({why}): shared limits are enforced per host until it answers in time", addr.addr)
            }
            Some(Note::CameBack { down_for_ms }) => {
                LAST_WARNING_MS.store(0, Ordering::Relaxed);
                tracing::info!("redis {} answers again after {down_for_ms} ms: shared limits are cluster-wide again", addr.addr)
            }
            _ => tracing::debug!("redis {}: {why}", addr.addr),
        }
    }

    /// One warning per host per outage: a core that fails while another core's warning is
    /// less than a reminder period old stays quiet.
    fn first_warning(&self) -> bool {
        let wall_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64);
        let last = LAST_WARNING_MS.load(Ordering::Relaxed);
        if last != 0 && wall_ms < last + super::health::REMIND_EVERY_MS {
            return false;
        }
        LAST_WARNING_MS.compare_exchange(last, wall_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

impl Limiter {
    /// Take one message token for `key`: from this core's lease, else a new lease from Redis
    /// (a batch sized by the rate and the waiting demand), else — Redis down or the limit not
    /// shared — the per-host GCRA. Ok(()) or how long to wait before asking again.
    async fn try_message(&self, key: &LimitKey, rate: Rate, shared: bool) -> Result<(), Duration> {
        let use_redis = shared && self.redis.is_some() && self.health.borrow().may_try(self.now_ms());
        if use_redis {
            if self.rate_state(key, |s| s.book.take(self.now_ms())) {
                return Ok(());
            }
            let want = batch_size(rate, self.rate_state(key, |s| s.waiting));
            let sent_ms = self.now_ms();
            let (interval, tau, want_s) = (rate.interval_us().to_string(), burst_us(rate).to_string(), want.to_string());
            let args: [&[u8]; 3] = [interval.as_bytes(), tau.as_bytes(), want_s.as_bytes()];
            // Another task of this core may have leased while this one waited for its turn.
            if self.rate_state(key, |s| s.book.take(self.now_ms())) {
                return Ok(());
            }
            match self.redis_run(&self.rate_script, &key.redis_key("rate"), &args).await.as_deref() {
                Some(&[granted, _]) if granted > 0 => {
                    let taken = self.rate_state(key, |s| {
                        s.book.fill(granted as u32, sent_ms);
                        s.book.take(self.now_ms())
                    });
                    return if taken { Ok(()) } else { Err(Duration::ZERO) };
                }
                Some(&[_, retry_ms]) => return Err(Duration::from_millis(retry_ms.max(1) as u64)),
                _ => {}
            }
            if self.health.borrow().is_shared() {
                return Err(Duration::from_millis(1));
            }
        }
        let now = self.now_us();
        self.rate_state(key, |s| s.local.take(rate, now)).map_err(Duration::from_micros)
    }

    fn rate_state<T>(&self, key: &LimitKey, f: impl FnOnce(&mut RateState) -> T) -> T {
        let mut rates = self.rates.borrow_mut();
        if !rates.contains_key(key) {
            rates.insert(key.clone(), RateState::default());
        }
        f(rates.get_mut(key).expect("inserted above"))
    }
}

impl PathLimits for Limiter {
    async fn admit_message(&self, key: &LimitKey, rate: Rate, shared: bool) {
        self.rate_state(key, |s| s.waiting += 1);
        loop {
            match self.try_message(key, rate, shared).await {
                Ok(()) => break,
                Err(wait) if wait.is_zero() => {}
                Err(wait) => glommio::timer::sleep(wait.min(MAX_TOKEN_WAIT)).await,
            }
        }
        self.rate_state(key, |s| s.waiting -= 1);
    }

    async fn open_connection(self: &Rc<Self>, key: &LimitKey, max: u32, shared: bool) -> ConnSlot {
        loop {
            // Counted before the Redis call: tasks of this core that wait for Redis at the same
            // time must not all see the same free slot.
            if self.reserve_slot(key, max) {
                match self.try_connection(key, max, shared).await {
                    Some(leased) => return ConnSlot::new(self.clone(), key.clone(), max, leased),
                    None => self.release_slot(key),
                }
            }
            glommio::timer::sleep(CONN_RETRY).await;
        }
    }
}

impl Limiter {
    /// Count one more connection on `key` on this core if fewer than `max` are open.
    fn reserve_slot(&self, key: &LimitKey, max: u32) -> bool {
        let mut open = self.open.borrow_mut();
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// One connection of `key` on this core ended; a key with none left is forgotten.
    fn release_slot(&self, key: &LimitKey) {
        let mut open = self.open.borrow_mut();
        if let Some(n) = open.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                open.remove(key);
            }
        }
    }

    /// Forget the rate state of limits nobody waits on, with no leased token left and no
    /// per-host token owed (a fresh state would behave the same); returns (rates, open) left.
    pub fn prune(&self) -> (usize, usize) {
        let (now_ms, now_us) = (self.now_ms(), self.now_us());
        let mut rates = self.rates.borrow_mut();
        rates.retain(|_, s| s.waiting > 0 || !s.book.is_spent(now_ms) || !s.local.is_full(now_us));
        let keep = rates.len() * 2;
        rates.shrink_to(keep);
        (rates.len(), self.open.borrow().len())
    }

    /// Some(holder) for a Redis lease, Some(None) for a per-host slot (not shared, or Redis
    /// down), None when the shared limit is full.
    async fn try_connection(&self, key: &LimitKey, max: u32, shared: bool) -> Option<Option<String>> {
        if !shared || self.redis.is_none() {
            return Some(None);
        }
        let n = self.next_holder.get();
        self.next_holder.set(n + 1);
        let holder = format!("{}/{n}", self.holder_prefix);
        match self.lease_connection(key, &holder, max).await {
            Some(true) => Some(Some(holder)),
            Some(false) => None,
            None => Some(None),
        }
    }

    /// Take or renew `holder`'s lease: Some(held), None when Redis did not answer.
    async fn lease_connection(&self, key: &LimitKey, holder: &str, max: u32) -> Option<bool> {
        let (max, ttl) = (max.to_string(), CONN_LEASE_TTL_MS.to_string());
        let args: [&[u8]; 3] = [holder.as_bytes(), max.as_bytes(), ttl.as_bytes()];
        self.redis_run(&self.conn_script, &key.redis_key("conn"), &args).await.map(|r| r.first() == Some(&1))
    }

    async fn release_connection(&self, key: &LimitKey, holder: &str) {
        let Some(addr) = &self.redis else { return };
        let Ok(_turn) = self.calls.acquire_permit(1).await else { return };
        if !self.health.borrow().may_try(self.now_ms()) {
            return;
        }
        let mut conn = match self.conn.borrow_mut().take() {
            Some(c) => c,
            None => return,
        };
        let zkey = key.redis_key("conn");
        if conn.call(&[b"ZREM", zkey.as_bytes(), holder.as_bytes()]).await.is_ok() {
            *self.conn.borrow_mut() = Some(conn);
        } else {
            tracing::debug!("redis {}: cannot release lease {holder}; it expires by itself", addr.addr);
        }
    }
}

/// A held connection slot: counted on this core, and when shared, a Redis lease renewed in the
/// background while the slot lives and removed when it is dropped (a crash leaves it to expire).
pub struct ConnSlot {
    limiter: Rc<Limiter>,
    key: LimitKey,
    holder: Option<String>,
    alive: Rc<Cell<bool>>,
}

impl ConnSlot {
    fn new(limiter: Rc<Limiter>, key: LimitKey, max: u32, holder: Option<String>) -> Self {
        let alive = Rc::new(Cell::new(true));
        if let Some(h) = &holder {
            let (l, k, h, a) = (limiter.clone(), key.clone(), h.clone(), alive.clone());
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(CONN_RENEW_EVERY).await;
                    if !a.get() {
                        break;
                    }
                    if l.lease_connection(&k, &h, max).await == Some(false) {
                        tracing::debug!("connection lease {h} was lost (expired while Redis was away, limit full)");
                    }
                }
            })
            .detach();
        }
        Self { limiter, key, holder, alive }
    }

    /// True when the slot is a Redis lease (shared), false for a per-host slot.
    pub fn is_shared(&self) -> bool {
        self.holder.is_some()
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.alive.set(false);
        self.limiter.release_slot(&self.key);
        if let Some(h) = self.holder.take() {
            let (l, k) = (self.limiter.clone(), self.key.clone());
            glommio::spawn_local(async move { l.release_connection(&k, &h).await }).detach();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_host_id_carries_a_nonce_drawn_once_per_process() {
        let a = default_host_id("mta");
        assert_eq!(a, default_host_id("mta"), "one per process: every core names the host alike");
        let parts: Vec<&str> = a.split(':').collect();
        assert_eq!(parts[..2], ["mta", std::process::id().to_string().as_str()]);
        assert!(parts[2].len() == 16 && u64::from_str_radix(parts[2], 16).is_ok(), "{a}");
    }

    /// Per-host limits (no Redis): every key's state goes once it is back to neutral, every
    /// connection count once its last slot is dropped.
    #[test]
    fn neutral_rate_states_and_closed_slots_are_forgotten() {
        let left = glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let l = Limiter::new(&ClusterSection::default(), "h", 0);
                let key = |i: u32| LimitKey { name: "shape".into(), path: format!("p{i}") };
                let rate = Rate { count: 2, per: Duration::from_secs(1) };
                for i in 0..50 {
                    l.admit_message(&key(i), rate, false).await;
                }
                let mut slots = Vec::new();
                for i in 0..30 {
                    slots.push(l.open_connection(&key(i), 2, false).await);
                }
                let busy = l.prune();
                drop(slots.drain(10..).collect::<Vec<ConnSlot>>());
                let after_close = l.prune();
                glommio::timer::sleep(Duration::from_millis(600)).await;
                let last = l.prune();
                drop(slots);
                (busy, after_close, last)
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(left.0, (50, 30), "each rate owes its next token for 500 ms; 30 slots open");
        assert_eq!(left.1, (50, 10), "20 slots closed");
        assert_eq!(left.2, (0, 10), "the rates are neutral again");
    }
}
