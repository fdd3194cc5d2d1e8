//! Time: the [`Clock`] every scheduling decision reads (real in the daemon, manual in tests, so
//! retry, expiry and DSN decisions are tested by driving time instead of sleeping), plus Unix
//! milliseconds and RFC 5322 dates without a date crate.
//!
//! Schedules are kept in Unix milliseconds rather than a monotonic clock because they are
//! persisted in the spool (a recipient's next attempt survives a restart).
use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of the current time, in Unix milliseconds.
pub trait Clock {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Now on a clock that never steps (milliseconds from an arbitrary origin), for what is
    /// not persisted and must not stretch or shrink when the wall clock is set: how long an
    /// outbound connection has idled. A test clock gives its one time for both.
    fn mono_ms(&self) -> u64 {
        self.now_ms()
    }
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        unix_ms()
    }

    fn mono_ms(&self) -> u64 {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
    }
}

/// A clock that moves only when told to: for tests of schedules.
#[derive(Debug, Default)]
pub struct ManualClock(Cell<u64>);

impl ManualClock {
    /// A clock stopped at `ms`.
    pub fn at(ms: u64) -> Self {
        Self(Cell::new(ms))
    }

    /// Move forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.0.set(self.0.get() + d.as_millis() as u64);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.get()
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// An RFC 5322 date-time in UTC, e.g. `Mon, 23 Nov 2026 12:31:13 +0000`.
pub fn rfc5322(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil(days);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WD[days.rem_euclid(7) as usize],
        d,
        MO[m as usize - 1],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_known_dates() {
        assert_eq!(super::rfc5322(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(super::rfc5322(1_795_437_073_000), "Mon, 23 Nov 2026 12:31:13 +0000");
        assert_eq!(super::rfc5322(951_782_400_000), "Tue, 29 Feb 2000 00:00:00 +0000");
    }
}
