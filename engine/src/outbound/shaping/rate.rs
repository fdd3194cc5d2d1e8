//! Rate limits as GCRA (the generic cell rate algorithm, a token bucket kept as one number:
//! the theoretical arrival time of the next event). One atomic per limit, so every core that
//! serves a path shares the same limit exactly, with a compare-and-swap and no lock.
//!
//! Time is passed in (microseconds), so the limiter is tested by driving time.
use crate::config::RateSpec;
use std::sync::atomic::{AtomicU64, Ordering};

/// A GCRA limiter: `burst` events at once, then one per emission interval.
#[derive(Debug)]
pub struct Gcra {
    /// Theoretical arrival time of the next event (µs).
    tat_us: AtomicU64,
    interval_us: u64,
    /// How far ahead of now the TAT may run (burst − 1 intervals).
    tolerance_us: u64,
}

impl Gcra {
    /// `rate` with a burst of `burst` events (at least 1).
    pub fn new(rate: RateSpec, burst: u64) -> Self {
        let interval_us = (rate.period_ms * 1000 / rate.count).max(1);
        Self { tat_us: AtomicU64::new(0), interval_us, tolerance_us: interval_us * burst.saturating_sub(1) }
    }

    /// Take one event at `now_us` with the rate multiplied by `factor` (a throttle; 1.0 none).
    /// `Err(t)`: not before `t` µs.
    pub fn try_acquire(&self, now_us: u64, factor: f64) -> Result<(), u64> {
        let interval = if factor > 0.0 && factor != 1.0 { ((self.interval_us as f64) / factor).ceil() as u64 } else { self.interval_us };
        let mut tat = self.tat_us.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now_us);
            if base > now_us + self.tolerance_us {
                return Err(base - self.tolerance_us);
            }
            match self.tat_us.compare_exchange_weak(tat, base + interval, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(cur) => tat = cur,
            }
        }
    }
}

impl Gcra {
    /// True when the bucket is full at `now_us` (no event is owed): a limiter made afresh
    /// would behave exactly the same, so it may be dropped.
    pub fn is_full(&self, now_us: u64) -> bool {
        self.tat_us.load(Ordering::Acquire) <= now_us
    }

    /// Would [`Self::try_acquire`] allow one event at `now_us`? Takes nothing. `Err(t)`: not
    /// before `t` µs.
    pub fn peek(&self, now_us: u64) -> Result<(), u64> {
        let base = self.tat_us.load(Ordering::Acquire).max(now_us);
        if base > now_us + self.tolerance_us {
            return Err(base - self.tolerance_us);
        }
        Ok(())
    }
}

/// What the cluster-wide limiter (`[cluster]`, item 8) answers about a `shared = true` limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedVerdict {
    /// Go ahead (the cluster counted it).
    Allow,
    /// Not before this Unix time in µs.
    Deny(u64),
    /// No answer (no cluster, or it is down): use the host's own limit.
    Local,
}

/// The hook a cluster-wide limiter implements. A path whose shape says `shared = true`
/// consults it before its own GCRA; `Local` falls back to the host limit, so a cluster
/// outage degrades to per-host limits and never stops delivery.
pub trait SharedLimiter: Send + Sync {
    /// One event of limit `key` (`"msg:<path>"` or `"conn:<path>"`) at `now_us` under `rate`.
    fn acquire(&self, key: &str, rate: RateSpec, now_us: u64) -> SharedVerdict;

    /// Forget the state of limits idle at `now_us` (the caller's clock); returns how many
    /// entries are left. Called about once a minute.
    fn prune(&self, _now_us: u64) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(count: u64, period_ms: u64) -> RateSpec {
        RateSpec { count, period_ms }
    }

    #[test]
    fn a_rate_spaces_events_by_its_interval() {
        let g = Gcra::new(r(200, 1000), 1);
        assert_eq!(g.try_acquire(1_000_000, 1.0), Ok(()));
        assert_eq!(g.try_acquire(1_000_000, 1.0), Err(1_005_000), "the next one 5 ms later");
        assert_eq!(g.try_acquire(1_004_999, 1.0), Err(1_005_000));
        assert_eq!(g.try_acquire(1_005_000, 1.0), Ok(()));
        // Over a simulated 20 s of constant demand, exactly 200/s pass.
        let g = Gcra::new(r(200, 1000), 1);
        let passed = (0..20_000_000u64).step_by(100).filter(|t| g.try_acquire(*t, 1.0).is_ok()).count();
        assert_eq!(passed, 4000);
    }

    #[test]
    fn a_burst_passes_at_once_then_the_rate_holds() {
        let g = Gcra::new(r(10, 1000), 3);
        assert!((0..3).all(|_| g.try_acquire(0, 1.0).is_ok()));
        assert_eq!(g.try_acquire(0, 1.0), Err(100_000));
    }

    #[test]
    fn a_throttle_factor_stretches_the_interval() {
        let g = Gcra::new(r(100, 1000), 1);
        assert_eq!(g.try_acquire(0, 0.5), Ok(()));
        assert_eq!(g.try_acquire(0, 0.5), Err(20_000), "half the rate: 20 ms apart");
    }

    #[test]
    fn cores_sharing_one_limiter_never_exceed_it() {
        let g = std::sync::Arc::new(Gcra::new(r(1000, 1000), 1));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..1_000_000u64).step_by(10).filter(|t| g.try_acquire(*t, 1.0).is_ok()).count())
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(total <= 1001, "one second of 1000/s across 4 threads: {total}");
    }
}
