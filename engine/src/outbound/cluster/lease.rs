//! Token leases, pure (time passed in): how many tokens one Redis call asks for, how long a
//! leased token stays usable, and the per-host GCRA used when the limit is not shared or Redis
//! is down.
//!
//! # Why a lease cannot push the cluster past the limit by more than a few per cent
//!
//! Redis runs GCRA with emission interval `T = 1/R` and burst tolerance `τ = (k − 1)·T`
//! (`gcra.lua`). GCRA's conformance bound: in any interval of length `D` it grants at most
//! `⌊(D + τ)/T⌋ + 1` tokens, whoever asks, however the grants are batched. A host uses a
//! leased token only until `sent + L`, where `sent` is when it *sent* the request (the grant
//! happened after that), so a token used at time `u` was granted in `[u − L, u]`. Tokens used
//! anywhere in the cluster during `[a, a + W]` were therefore granted during `[a − L, a + W]`:
//!
//! ```text
//! used(W) ≤ (W + L + τ)·R + 1  =  R·W + R·(L + τ) + 1
//! ```
//!
//! With `L` = [`LEASE_LIFE_MS`] = 100 ms and `τ ≤` [`BATCH_SPAN_MS`] = 20 ms the excess over
//! `R·W` is at most `0.12·R + 1` tokens per window: at 100/s over 10 s that is 13 of 1,000
//! (1.3 %), within the issue's 5 % for every window `W ≥ 2.4 s + 20/R s`. Unused tokens expire
//! and are never returned, which can only lower the rate. [`excess_bound`] computes the bound;
//! a unit test replays adversarial lease timing against it.
use crate::cluster_config::Rate;

/// How long a leased token may still be used after its request was sent.
pub const LEASE_LIFE_MS: u64 = 100;
/// A Redis call slower than this counts as a failure: its tokens would arrive with less than
/// half of their [`LEASE_LIFE_MS`] left (at 100 ms they expire on arrival), so the path would
/// wait for tokens it can never use. A slow Redis degrades like a down one.
pub const SLOW_CALL_MS: u64 = LEASE_LIFE_MS / 2;
/// A batch never covers more than this much of the rate (so τ stays small).
pub const BATCH_SPAN_MS: u64 = 20;
/// The largest batch one call asks for.
pub const MAX_BATCH: u32 = 64;

/// Tokens one call asks for at `rate`: the tokens of [`BATCH_SPAN_MS`] (adaptive to the rate:
/// 1 at 100/s, 20 at 1,000/s, [`MAX_BATCH`] from 3,200/s), never more than the waiting demand.
pub fn batch_size(rate: Rate, demand: u32) -> u32 {
    let span = (rate.count as u128 * BATCH_SPAN_MS as u128 * 1000 / rate.per.as_micros().max(1)) as u32;
    span.clamp(1, MAX_BATCH).min(demand.max(1))
}

/// GCRA burst tolerance in µs for batches of up to `k`: `(k − 1)·T`, so one batch fits.
pub fn burst_us(rate: Rate) -> u64 {
    (batch_size(rate, MAX_BATCH) as u64 - 1) * rate.interval_us()
}

/// The most tokens the cluster can use in any window of `window_ms` (see the module notes).
pub fn excess_bound(rate: Rate, window_ms: u64) -> u64 {
    let t = rate.interval_us();
    (window_ms * 1000 + LEASE_LIFE_MS * 1000 + burst_us(rate)) / t + 1
}

/// The tokens a core holds for one limit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LeaseBook {
    tokens: u32,
    usable_until_ms: u64,
}

impl LeaseBook {
    /// Use one leased token, if one is left and still usable at `now_ms`.
    pub fn take(&mut self, now_ms: u64) -> bool {
        if now_ms >= self.usable_until_ms {
            self.tokens = 0;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// No usable token is left at `now_ms` (the book is as good as a new one).
    pub fn is_spent(&self, now_ms: u64) -> bool {
        self.tokens == 0 || now_ms >= self.usable_until_ms
    }

    /// Record `granted` tokens from a request sent at `sent_ms` (not when the reply came).
    pub fn fill(&mut self, granted: u32, sent_ms: u64) {
        self.tokens = granted;
        self.usable_until_ms = sent_ms + LEASE_LIFE_MS;
    }
}

/// Per-host GCRA (one token at a time, no burst): the limit when it is not shared or Redis is
/// unreachable.
#[derive(Debug, Default, Clone)]
pub struct LocalGcra {
    tat_us: u64,
}

impl LocalGcra {
    /// No token is owed at `now_us`: a fresh limiter would behave the same.
    pub fn is_full(&self, now_us: u64) -> bool {
        self.tat_us <= now_us
    }

    /// Take a token at `now_us`, or say how long until one is free.
    pub fn take(&mut self, rate: Rate, now_us: u64) -> Result<(), u64> {
        let tat = self.tat_us.max(now_us);
        if tat > now_us {
            return Err(tat - now_us);
        }
        self.tat_us = tat + rate.interval_us();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn per_s(n: u64) -> Rate {
        Rate { count: n, per: Duration::from_secs(1) }
    }

    /// `gcra.lua` in Rust (same arithmetic), to replay grants without Redis.
    fn redis_gcra(tat: &mut u64, rate: Rate, now: u64, want: u32) -> u32 {
        let (t, tau) = (rate.interval_us(), burst_us(rate));
        let cur = (*tat).max(now);
        let room = (now + tau).saturating_sub(cur) / t + u64::from(now + tau >= cur);
        let g = (want as u64).min(room) as u32;
        *tat = cur + g as u64 * t;
        g
    }

    #[test]
    fn batches_follow_the_rate() {
        assert_eq!(batch_size(per_s(100), 64), 2);
        assert_eq!(batch_size(per_s(10), 64), 1);
        assert_eq!(batch_size(per_s(1000), 64), 20);
        assert_eq!(batch_size(per_s(100_000), 64), MAX_BATCH);
        assert_eq!(batch_size(per_s(1000), 3), 3);
        assert_eq!(burst_us(per_s(1000)), 19_000);
    }

    #[test]
    fn a_lease_expires_from_when_it_was_asked_for() {
        let mut b = LeaseBook::default();
        b.fill(2, 1_000);
        assert!(b.take(1_050));
        assert!(!b.take(1_100), "usable until sent + LEASE_LIFE_MS only");
        b.fill(1, 2_000);
        assert!(b.take(2_000));
        assert!(!b.take(2_001));
    }

    /// Three hosts lease as greedily as possible, each using every token at the last moment its
    /// lease allows (the worst case for bursts); every 10 s window stays within the bound, and
    /// the bound is within 5 % of R·W.
    #[test]
    fn greedy_hosts_stay_within_the_bound() {
        for r in [100, 1_000, 5_000] {
            let rate = per_s(r);
            let mut tat = 0u64;
            let mut uses: Vec<u64> = Vec::new();
            for step in 0..30_000u64 {
                let now_ms = step;
                for _host in 0..3 {
                    let g = redis_gcra(&mut tat, rate, now_ms * 1000, MAX_BATCH);
                    let use_at = now_ms + LEASE_LIFE_MS - 1;
                    uses.extend(std::iter::repeat_n(use_at, g as usize));
                }
            }
            uses.sort_unstable();
            let bound = excess_bound(rate, 10_000);
            assert!(bound as f64 <= r as f64 * 10.0 * 1.05, "bound {bound} for {r}/s");
            let worst = (0..uses.len()).map(|i| uses[i..].partition_point(|&u| u < uses[i] + 10_000)).max().unwrap();
            assert!(worst as u64 <= bound, "{worst} tokens used in 10 s at {r}/s, bound {bound}");
            assert!(worst as f64 >= r as f64 * 10.0 * 0.99, "the replay must saturate the limit: {worst}");
        }
    }

    #[test]
    fn the_local_limit_spaces_tokens() {
        let mut g = LocalGcra::default();
        let rate = per_s(100);
        assert_eq!(g.take(rate, 1_000_000), Ok(()));
        assert_eq!(g.take(rate, 1_004_000), Err(6_000));
        assert_eq!(g.take(rate, 1_010_000), Ok(()));
    }
}
