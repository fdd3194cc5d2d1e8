//! The host-wide, synchronous face of the cluster limiter, for callers that cannot await: the
//! shaping paths (branch `shape`) ask `SharedLimiter::acquire(key, rate, now_us)` from inside
//! the queue manager. A leased token is taken with atomics; an empty or expired lease starts
//! one refill on the calling core (a glommio task through that core's [`Limiter`]) and answers
//! "not before a moment from now"; while Redis is down (or its backoff runs) it answers
//! `Local`, so the caller applies its per-host limit. The lease bound of `lease.rs` holds
//! unchanged: tokens expire [`LEASE_LIFE_MS`] after their request was sent.
use super::lease::{batch_size, LEASE_LIFE_MS, MAX_BATCH};
use super::limiter::{LimitKey, Limiter};
use crate::cluster_config::{ClusterSection, Rate};
use std::cell::OnceCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// The answer to one `acquire`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead: a cluster token was used.
    Allow,
    /// Not before this time (µs, the caller's clock): a refill is under way or the limit is
    /// spent cluster-wide.
    Deny(u64),
    /// Redis is not answering: apply the per-host limit.
    Local,
}

/// How long after a refill starts the caller is asked to look again (a round trip is ~70-110 µs).
const REFILL_WAIT_US: u64 = 1_000;

#[derive(Default)]
struct HostLease {
    tokens: AtomicU32,
    usable_until_us: AtomicU64,
    refilling: AtomicBool,
    /// When Redis said the limit is spent: not before this (µs).
    retry_at_us: AtomicU64,
}

impl HostLease {
    fn take(&self, now_us: u64) -> bool {
        if now_us >= self.usable_until_us.load(Ordering::Acquire) {
            return false;
        }
        self.tokens.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
    }
}

thread_local! {
    /// This core's limiter (its Redis connection and health), made on first use.
    static CORE: OnceCell<Rc<Limiter>> = const { OnceCell::new() };
}

/// One per host; `Send + Sync`, shared by every core.
pub struct ClusterHook {
    cfg: ClusterSection,
    host: String,
    leases: papaya::HashMap<String, Arc<HostLease>>,
}

impl ClusterHook {
    /// The hook for `[cluster]` (`host` names this host in Redis leases).
    pub fn new(cfg: &ClusterSection, host: &str) -> Self {
        Self { cfg: cfg.clone(), host: host.to_string(), leases: papaya::HashMap::new() }
    }

    /// One event of limit `key` at `now_us` (µs, the caller's clock) under `rate`. Must run on
    /// a glommio executor (a refill is a task of the calling core).
    pub fn acquire(&self, key: &str, rate: Rate, now_us: u64) -> Verdict {
        let lease = self.leases.pin().get_or_insert_with(key.to_string(), Arc::default).clone();
        if lease.take(now_us) {
            return Verdict::Allow;
        }
        let core = CORE.with(|c| c.get_or_init(|| Limiter::new(&self.cfg, &self.host, 0)).clone());
        if !core.may_call() {
            return Verdict::Local;
        }
        let retry_at = lease.retry_at_us.load(Ordering::Relaxed);
        if retry_at > now_us {
            return Verdict::Deny(retry_at);
        }
        if !lease.refilling.swap(true, Ordering::AcqRel) {
            let key = LimitKey { name: "shape".into(), path: key.to_string() };
            glommio::spawn_local(refill(core, lease, key, rate, now_us)).detach();
        }
        Verdict::Deny(now_us + REFILL_WAIT_US)
    }
}

/// Lease a batch for `lease`; the tokens expire `LEASE_LIFE_MS` after `sent_us`.
async fn refill(core: Rc<Limiter>, lease: Arc<HostLease>, key: LimitKey, rate: Rate, sent_us: u64) {
    match core.lease_tokens(&key, rate, batch_size(rate, MAX_BATCH)).await {
        Some(0) => lease.retry_at_us.store(sent_us + rate.interval_us().min(REFILL_WAIT_US * 10), Ordering::Relaxed),
        Some(n) => {
            lease.usable_until_us.store(sent_us + LEASE_LIFE_MS * 1000, Ordering::Release);
            lease.tokens.store(n, Ordering::Release);
        }
        None => {}
    }
    lease.refilling.store(false, Ordering::Release);
}

/// Shaping's hook: a `shared = true` rate of a path asks the cluster first.
impl crate::outbound::shaping::rate::SharedLimiter for ClusterHook {
    fn acquire(&self, key: &str, r: crate::config::RateSpec, now_us: u64) -> crate::outbound::shaping::rate::SharedVerdict {
        use crate::outbound::shaping::rate::SharedVerdict;
        let rate = Rate { count: r.count, per: std::time::Duration::from_millis(r.period_ms) };
        match ClusterHook::acquire(self, key, rate, now_us) {
            Verdict::Allow => SharedVerdict::Allow,
            Verdict::Deny(t) => SharedVerdict::Deny(t),
            Verdict::Local => SharedVerdict::Local,
        }
    }
}
