//! The shaping sections of the configuration: `[[source]]`, `[[pool]]`, `[[shape]]`,
//! `[[rule]]` and `[[warmup]]` (issue 11). Parsed here, compiled by
//! [`crate::outbound::shaping::Shaping`].
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[[source]]`: a local address outbound connections leave from, with its EHLO name.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name pools refer to.
    pub name: String,
    /// Local IP address connections are bound to.
    pub bind: String,
    /// EHLO name used from it (default: `server.hostname`).
    #[serde(default)]
    pub ehlo: Option<String>,
}

/// `[[pool]]`: sources a message may leave from, with weights.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Name (from the AUTH user's `pool` or the `X-Ringpost-Pool` header; `default` otherwise).
    pub name: String,
    /// Source name → weight (at least 1).
    pub sources: BTreeMap<String, u32>,
}

/// `[[shape]]`: limits of a site, per source. The first entry whose `site` matches wins;
/// absent limits fall back to `[delivery]` (today's per-destination behaviour).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ShapeConfig {
    /// A domain, `"*.mx.example"` (an MX host suffix) or `"*"`.
    pub site: String,
    /// Concurrent connections per source to the site, across the host.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Messages a connection carries before it is closed.
    #[serde(default)]
    pub max_deliveries_per_connection: Option<usize>,
    /// Messages per source to the site: `"N/s"`, `"N/m"`, `"N/h"`.
    #[serde(default)]
    pub max_message_rate: Option<String>,
    /// New connections per source to the site: `"N/s"`, `"N/m"`, `"N/h"`.
    #[serde(default)]
    pub max_connection_rate: Option<String>,
    /// Seconds an idle connection waits for more mail.
    #[serde(default)]
    pub idle_timeout_s: Option<f64>,
    /// These limits are cluster-wide (the `[cluster]` limiter), not per host.
    #[serde(default)]
    pub shared: bool,
}

/// What a `[[rule]]` does to the path whose reply matched.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// No delivery on the (source, site) path for `duration_s`.
    Suspend,
    /// The path's rates times `factor` for `duration_s`.
    Throttle,
    /// The recipient bounces, and so does the rest of its domain's queue.
    Bounce,
    /// The recipient's next attempt is in `duration_s`, whatever the retry schedule says.
    RetryIn,
}

/// `[[rule]]`: an SMTP reply pattern and what it makes the path do.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name shown by `ringctl queue` (default: the regex).
    #[serde(default)]
    pub name: Option<String>,
    /// Regular expression searched in the one-line reply text (code included).
    pub regex: String,
    /// Only for this site (same syntax as `[[shape]] site`); absent: every site.
    #[serde(default)]
    pub site: Option<String>,
    /// What to do.
    pub action: RuleAction,
    /// How long (suspend, throttle, retry_in).
    #[serde(default)]
    pub duration_s: Option<f64>,
    /// Rate multiplier for `throttle` (0 < factor < 1 slows down).
    #[serde(default)]
    pub factor: Option<f64>,
}

/// `scope` of a warm-up cap.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WarmupScope {
    /// One cap for everything the source sends.
    #[default]
    Total,
    /// The cap applies to each site separately.
    PerSite,
}

/// `overflow` of a warm-up cap: what happens to mail over the day's cap.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WarmupOverflow {
    /// It waits for the next day (UTC), queued, not bounced.
    #[default]
    Wait,
    /// It goes out from another source of the pool.
    Pool,
}

/// `[[warmup]]`: a new source's daily volume schedule.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WarmupConfig {
    /// The source.
    pub source: String,
    /// First day (UTC) of the schedule, `YYYY-MM-DD`.
    pub start: String,
    /// Messages allowed on day 1, 2, ...; after the last day there is no cap.
    pub daily: Vec<u64>,
    /// Total or per site.
    #[serde(default)]
    pub scope: WarmupScope,
    /// Wait for the next day or overflow to the pool's other sources.
    #[serde(default)]
    pub overflow: WarmupOverflow,
}

/// A file named by `[delivery] shaping`: `[[shape]]` and `[[rule]]` entries placed after the
/// main configuration's own (so the main file's entries match first).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShapingFile {
    /// Shapes.
    #[serde(default)]
    pub shape: Vec<ShapeConfig>,
    /// Rules.
    #[serde(default)]
    pub rule: Vec<RuleConfig>,
}

/// A rate limit: `count` per `period_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    /// Events per period.
    pub count: u64,
    /// The period in milliseconds.
    pub period_ms: u64,
}

impl RateSpec {
    /// Parse `"N/s"`, `"N/m"` or `"N/h"` (N at least 1).
    pub fn parse(s: &str) -> Option<Self> {
        let (n, unit) = s.trim().split_once('/')?;
        let count: u64 = n.trim().parse().ok().filter(|n| *n > 0)?;
        let period_ms = match unit.trim() {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return None,
        };
        Some(Self { count, period_ms })
    }
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (proleptic Gregorian).
pub fn days_from_date(s: &str) -> Option<i64> {
    let mut it = s.trim().splitn(3, '-');
    let (y, m, d): (i64, i64, i64) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

impl super::Config {
    /// Append the `[[shape]]` and `[[rule]]` entries of `delivery.shaping`, if set.
    pub(super) fn include_shaping_file(&mut self) -> Result<(), super::ConfigError> {
        let Some(path) = &self.delivery.shaping else { return Ok(()) };
        let text = std::fs::read_to_string(path).map_err(|source| super::ConfigError::Read { path: path.clone(), source })?;
        let f: ShapingFile =
            toml::from_str(&text).map_err(|e| super::ConfigError::Invalid { key: "delivery.shaping", why: format!("{}: {e}", path.display()) })?;
        self.shape.extend(f.shape);
        self.rule.extend(f.rule);
        Ok(())
    }

    /// Sources name real addresses, pools name sources, rates and regexes parse.
    pub(super) fn validate_shaping(&self) -> Result<(), super::ConfigError> {
        let bad = |key: &'static str, why: String| Err(super::ConfigError::Invalid { key, why });
        for s in &self.source {
            if s.bind.parse::<std::net::IpAddr>().is_err() {
                return bad("source.bind", format!("source {:?}: {:?} is not an IP address", s.name, s.bind));
            }
        }
        let known = |n: &str| self.source.iter().any(|s| s.name == n);
        // A queued delivery keeps its pool as a u16 index with u16::MAX meaning `default`.
        if self.pool.len() >= usize::from(u16::MAX) {
            return bad("pool", format!("{} pools: at most {} are supported", self.pool.len(), u16::MAX - 1));
        }
        for p in &self.pool {
            if p.sources.is_empty() || p.sources.values().any(|w| *w == 0) {
                return bad("pool.sources", format!("pool {:?} needs sources with weights of at least 1", p.name));
            }
            if let Some(n) = p.sources.keys().find(|n| !known(n)) {
                return bad("pool.sources", format!("pool {:?}: no [[source]] named {n:?}", p.name));
            }
        }
        for s in &self.shape {
            for r in [&s.max_message_rate, &s.max_connection_rate].into_iter().flatten() {
                if RateSpec::parse(r).is_none() {
                    return bad("shape.max_message_rate", format!("site {:?}: {r:?} is not N/s, N/m or N/h", s.site));
                }
            }
            if s.max_connections == Some(0) || s.max_deliveries_per_connection == Some(0) {
                return bad("shape.max_connections", format!("site {:?}: limits must be at least 1", s.site));
            }
        }
        for r in &self.rule {
            if let Err(e) = regex::Regex::new(&r.regex) {
                return bad("rule.regex", format!("{:?}: {e}", r.regex));
            }
            let needs = matches!(r.action, RuleAction::Suspend | RuleAction::Throttle | RuleAction::RetryIn);
            if needs && r.duration_s.is_none_or(|d| d <= 0.0) {
                return bad("rule.duration_s", format!("rule {:?} needs duration_s > 0", r.regex));
            }
            if r.action == RuleAction::Throttle && r.factor.is_none_or(|f| f <= 0.0) {
                return bad("rule.factor", format!("rule {:?}: throttle needs factor > 0", r.regex));
            }
        }
        for w in &self.warmup {
            if !known(&w.source) {
                return bad("warmup.source", format!("no [[source]] named {:?}", w.source));
            }
            if days_from_date(&w.start).is_none() || w.daily.is_empty() {
                return bad("warmup.start", format!("warm-up of {:?}: start must be YYYY-MM-DD and daily non-empty", w.source));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_dates_parse() {
        assert_eq!(RateSpec::parse("200/s"), Some(RateSpec { count: 200, period_ms: 1000 }));
        assert_eq!(RateSpec::parse("5/m").unwrap().period_ms, 60_000);
        assert_eq!(RateSpec::parse("0/s"), None);
        assert_eq!(RateSpec::parse("3/d"), None);
        assert_eq!(days_from_date("1970-01-01"), Some(0));
        assert_eq!(days_from_date("2026-12-01"), Some(20_788));
        assert_eq!(days_from_date("2000-03-01"), Some(11_017));
    }

    #[test]
    fn the_shipped_defaults_load_after_the_configs_own_entries() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/shaping-defaults.toml");
        let c = super::super::Config::parse(&format!("[server]\n[delivery]\nshaping = \"{path}\"\n[[shape]]\nsite = \"*\"\nmax_connections = 2\n"))
            .unwrap();
        assert_eq!(c.shape[0].max_connections, Some(2), "the config's own entry first");
        assert!(c.shape.iter().any(|s| s.site == "*.yahoodns.net"));
        let names: Vec<_> = c.rule.iter().filter_map(|r| r.name.as_deref()).collect();
        assert_eq!(names, ["yahoo-tss04", "microsoft-s3150-s775", "gmail-4.7.28"]);
        assert_eq!(c.rule[0].action, RuleAction::Suspend);
    }
}
