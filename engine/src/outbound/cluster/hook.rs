//! The host-wide, synchronous face of the cluster limiter, for callers that cannot await: the
//! shaping paths (branch `shape`) ask `SharedLimiter::acquire(key, rate, now_us)` from inside
//! the queue manager. A leased token is taken with atomics; an empty or expired lease starts
//! one refill on the calling core (a glommio task through that core's [`Limiter`]) and answers
//! "not before a moment from now"; while Redis is down or slow (a call over
//! [`super::lease::SLOW_CALL_MS`]) it answers `Local`, so the caller applies its per-host
//! limit, and probes Redis in the background when the backoff allows. The lease bound of `lease.rs` holds
//! unchanged: tokens expire [`LEASE_LIFE_MS`] after their request was sent.
use super::lease::{batch_size, LEASE_LIFE_MS, MAX_BATCH};
use super::limiter::{LimitKey, Limiter};
use crate::cluster_config::{ClusterSection, Rate};
use crate::outbound::shaping::prune::PRUNE_IDLE_MS;
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
    /// Nothing in it outlives `now_us` by [`PRUNE_IDLE_MS`]: no refill under way, its tokens
    /// expired and no "limit spent" answer still in force, for long enough.
    fn is_idle(&self, now_us: u64) -> bool {
        let idle_us = PRUNE_IDLE_MS * 1000;
        !self.refilling.load(Ordering::Acquire)
            && self.usable_until_us.load(Ordering::Acquire).saturating_add(idle_us) <= now_us
            && self.retry_at_us.load(Ordering::Acquire).saturating_add(idle_us) <= now_us
    }

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
        let up = core.is_shared();
        if up {
            let retry_at = lease.retry_at_us.load(Ordering::Relaxed);
            if retry_at > now_us {
                return Verdict::Deny(retry_at);
            }
        }
        // Up: lease more. Down or slow: the per-host limit now, and a probe in the background
        // once the backoff allows (its success makes Redis count again).
        if core.may_call() && !lease.refilling.swap(true, Ordering::AcqRel) {
            let key = LimitKey { name: "shape".into(), path: key.to_string() };
            glommio::spawn_local(refill(core, lease, key, rate, now_us)).detach();
        }
        if up {
            Verdict::Deny(now_us + REFILL_WAIT_US)
        } else {
            Verdict::Local
        }
    }
}

impl ClusterHook {
    /// Forget idle leases; returns how many are left. A lease taken by a caller at this very
    /// moment and then pruned only loses its leased tokens (they were counted by Redis, so
    /// the cluster's bound holds; the next call leases anew into the map's fresh entry).
    pub fn prune(&self, now_us: u64) -> usize {
        let leases = self.leases.pin();
        let idle: Vec<String> = leases.iter().filter(|(_, l)| l.is_idle(now_us)).map(|(k, _)| k.clone()).collect();
        for key in idle {
            leases.remove_if(&key, |_, l| l.is_idle(now_us)).ok();
        }
        leases.len()
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

    fn prune(&self, now_us: u64) -> usize {
        ClusterHook::prune(self, now_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    /// A fake Redis on loopback: every command is answered "2 tokens granted" after
    /// `delay_ms` (switchable while it runs).
    fn fake_redis(delay_ms: Arc<AtomicU64>) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let (Ok(mut s), delay) = (stream, delay_ms.clone()) else { return };
                std::thread::spawn(move || {
                    let mut dec = super::super::resp::Decoder::default();
                    let mut buf = [0u8; 4096];
                    loop {
                        while let Ok(Some(_)) = dec.next_reply() {
                            std::thread::sleep(Duration::from_millis(delay.load(Ordering::Relaxed)));
                            if s.write_all(b"*2\r\n:2\r\n:0\r\n").is_err() {
                                return;
                            }
                        }
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => dec.feed(&buf[..n]),
                        }
                    }
                });
            }
        });
        port
    }

    /// Redis answers every call, but in 120 ms: its tokens would expire on arrival. The
    /// hook must switch to the per-host limit (`Local`) instead of making the path wait, and
    /// use Redis again once it is fast. Then its idle lease is pruned.
    #[test]
    fn a_slow_redis_degrades_to_per_host_limits_and_counts_again_once_fast() {
        let delay = Arc::new(AtomicU64::new(120));
        let port = fake_redis(delay.clone());
        let (slow, fast, kept, pruned) = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let cfg = ClusterSection { redis: Some(format!("redis://127.0.0.1:{port}")), timeout_ms: 1_000, host_id: None };
                let hook = ClusterHook::new(&cfg, "h");
                let rate = Rate { count: 100, per: Duration::from_secs(1) };
                let epoch = Instant::now();
                let now = || epoch.elapsed().as_micros() as u64 + 1;
                let run = |until: Duration| {
                    let hook = &hook;
                    async move {
                        let mut out = Vec::new();
                        while epoch.elapsed() < until {
                            out.push(hook.acquire("p", rate, now()));
                            glommio::timer::sleep(Duration::from_millis(5)).await;
                        }
                        out
                    }
                };
                let slow = run(Duration::from_millis(1_500)).await;
                delay.store(0, Ordering::Relaxed);
                let fast = run(Duration::from_millis(8_000)).await;
                (slow, fast, hook.prune(now()), hook.prune(now() + PRUNE_IDLE_MS * 1000 + 1_000_000))
            })
            .unwrap()
            .join()
            .unwrap();
        let count = |v: &[Verdict], what: fn(&Verdict) -> bool| v.iter().filter(|x| what(x)).count();
        let local = count(&slow, |v| *v == Verdict::Local);
        assert!(local * 10 >= slow.len() * 7, "slow Redis: per-host limits, not waiting ({local} of {} Local)", slow.len());
        assert_eq!(count(&slow, |v| *v == Verdict::Allow), 0, "its tokens expire on arrival");
        let tail = &fast[fast.len() / 2..];
        assert_eq!(count(tail, |v| *v == Verdict::Local), 0, "fast again: Redis counts again");
        assert!(count(tail, |v| *v == Verdict::Allow) * 4 >= tail.len(), "leased tokens are used");
        assert_eq!((kept, pruned), (1, 0), "the lease stays while in use, goes once idle");
    }
}
