//! Whether to use Redis, pure (time passed in): a failed call switches a core's shared limits to
//! per-host enforcement, retries come back with exponential backoff, a success switches back.
//! What to log is returned, not logged, so the rule "one warning per outage, and a reminder
//! at most every [`REMIND_EVERY_MS`]" is testable.

/// First wait before trying Redis again after a failure.
pub const BACKOFF_MIN_MS: u64 = 100;
/// Longest wait between tries while Redis stays down.
pub const BACKOFF_MAX_MS: u64 = 5_000;
/// While down, at most one reminder warning per this period.
pub const REMIND_EVERY_MS: u64 = 60_000;

/// What the caller should log after a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Redis just became unreachable: warn once, limits are per host now.
    WentDown,
    /// Still down after [`REMIND_EVERY_MS`]: one reminder.
    StillDown {
        /// Since when, in ms.
        down_for_ms: u64,
    },
    /// Redis answers again: shared limits are back.
    CameBack {
        /// How long it was down, in ms.
        down_for_ms: u64,
    },
}

/// One core's view of Redis.
#[derive(Debug, Clone, Default)]
pub struct Health {
    down: Option<Down>,
}

#[derive(Debug, Clone)]
struct Down {
    since_ms: u64,
    next_try_ms: u64,
    backoff_ms: u64,
    warned_ms: u64,
}

impl Health {
    /// True while shared limits are enforced through Redis (no failure since the last success).
    pub fn is_shared(&self) -> bool {
        self.down.is_none()
    }

    /// Whether to call Redis now: always when up; when down, once the backoff has passed.
    pub fn may_try(&self, now_ms: u64) -> bool {
        self.down.as_ref().is_none_or(|d| now_ms >= d.next_try_ms)
    }

    /// A call failed (error, timeout, refused connection).
    pub fn failed(&mut self, now_ms: u64) -> Option<Note> {
        match &mut self.down {
            None => {
                self.down = Some(Down { since_ms: now_ms, next_try_ms: now_ms + BACKOFF_MIN_MS, backoff_ms: BACKOFF_MIN_MS, warned_ms: now_ms });
                Some(Note::WentDown)
            }
            Some(d) => {
                d.backoff_ms = (d.backoff_ms * 2).min(BACKOFF_MAX_MS);
                d.next_try_ms = now_ms + d.backoff_ms;
                if now_ms >= d.warned_ms + REMIND_EVERY_MS {
                    d.warned_ms = now_ms;
                    return Some(Note::StillDown { down_for_ms: now_ms - d.since_ms });
                }
                None
            }
        }
    }

    /// A call succeeded.
    pub fn succeeded(&mut self, now_ms: u64) -> Option<Note> {
        self.down.take().map(|d| Note::CameBack { down_for_ms: now_ms - d.since_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_outage_backoff_and_recovery() {
        let mut h = Health::default();
        assert!(h.is_shared() && h.may_try(0));
        assert_eq!(h.failed(1_000), Some(Note::WentDown));
        assert!(!h.is_shared());
        assert!(!h.may_try(1_099) && h.may_try(1_100));
        let mut now = 1_100;
        let mut waits = Vec::new();
        for _ in 0..8 {
            assert_eq!(h.failed(now), None, "no second warning within a minute");
            let next = (now..).find(|&t| h.may_try(t)).unwrap();
            waits.push(next - now);
            now = next;
        }
        assert_eq!(waits, [200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000]);
        assert_eq!(h.failed(61_000), Some(Note::StillDown { down_for_ms: 60_000 }));
        assert_eq!(h.failed(62_000), None);
        assert_eq!(h.succeeded(70_000), Some(Note::CameBack { down_for_ms: 69_000 }));
        assert!(h.is_shared() && h.may_try(70_000));
        assert_eq!(h.succeeded(70_001), None);
        assert_eq!(h.failed(80_000), Some(Note::WentDown), "a new outage warns again");
    }
}
