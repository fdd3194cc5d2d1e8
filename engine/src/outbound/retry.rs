//! The retry schedule: exponential backoff capped at a maximum, until the message's age
//! reaches `max_age`. Pure: the caller passes the time, so tests use an injected clock.
use std::time::Duration;

/// Backoff parameters.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Wait before the first retry.
    pub first: Duration,
    /// Growth factor per attempt.
    pub factor: f64,
    /// Longest wait.
    pub max: Duration,
    /// Lifetime of a message in the queue.
    pub max_age: Duration,
}

impl RetryPolicy {
    /// The policy of `[delivery]`.
    pub fn from_config(d: &crate::config::DeliverySection) -> Self {
        Self {
            first: Duration::from_secs_f64(d.retry_first_s),
            factor: d.retry_factor,
            max: Duration::from_secs_f64(d.retry_max_s),
            max_age: Duration::from_secs_f64(d.max_age_s),
        }
    }
}

/// What to do after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again this long from now.
    RetryIn(Duration),
    /// The message is too old: expire it (final, DSN).
    Expire,
}

impl RetryPolicy {
    /// Delay after `failures` failed attempts (1 = the first failure).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = self.factor.powi(failures.saturating_sub(1).min(64) as i32);
        let secs = (self.first.as_secs_f64() * exp).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs)
    }

    /// Decide after a transient failure, for a message queued `age` ago.
    /// A retry that would start after the lifetime ends is not scheduled: it expires now,
    /// unless the lifetime ends before the retry, in which case one last try happens at the end.
    pub fn decide(&self, failures: u32, age: Duration) -> RetryDecision {
        if age >= self.max_age {
            return RetryDecision::Expire;
        }
        let d = self.delay(failures);
        RetryDecision::RetryIn(d.min(self.max_age - age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy { first: Duration::from_secs(300), factor: 2.0, max: Duration::from_secs(4000), max_age: Duration::from_secs(5 * 86400) }
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let p = policy();
        let d: Vec<u64> = (1..=6).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(d, [300, 600, 1200, 2400, 4000, 4000]);
    }

    #[test]
    fn schedule_over_an_injected_clock_ends_in_expiry_at_max_age() {
        let p = policy();
        let mut now = Duration::ZERO;
        let mut failures = 0;
        loop {
            failures += 1;
            match p.decide(failures, now) {
                RetryDecision::RetryIn(d) => {
                    assert!(d > Duration::ZERO);
                    now += d;
                }
                RetryDecision::Expire => break,
            }
        }
        assert_eq!(now, p.max_age, "the last attempt happens exactly at max_age");
        // 300+600+1200+2400 = 4500 s, then 4000 s steps up to 432000 s.
        assert_eq!(failures as u64, 4 + (432_000 - 4_500u64).div_ceil(4000) + 1);
    }

    #[test]
    fn an_old_message_expires_at_once() {
        assert_eq!(policy().decide(1, Duration::from_secs(5 * 86400)), RetryDecision::Expire);
    }
}
