//! `[cluster]` (a shared module: `config.rs` holds it, `outbound/cluster/` enforces it): where
//! the shared limits live, and (until `[[shape]]` carries `shared = true` itself) the
//! per-destination limits enforced through them.
//!
//! ```toml
//! [cluster]
//! redis = "redis://127.0.0.1:6379"   # absent: every limit is per host
//! timeout_ms = 200                   # every Redis call, connect included
//! [[cluster.limit]]
//! name = "all"
//! site = "*"                         # a destination domain, or "*"
//! max_message_rate = "100/s"         # N/s, N/m, N/h
//! max_connections = 3
//! shared = true                      # enforced across hosts through Redis
//! ```
use serde::Deserialize;
use std::time::Duration;

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `redis://host:port[/db]`; None: every limit is per host.
    pub redis: Option<String>,
    /// Bound on every Redis call (connect, script, lease renewal), in ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// This host's name in connection leases (default: hostname and process id), unique per host.
    pub host_id: Option<String>,
    /// Per-destination limits, first match wins.
    #[serde(default)]
    pub limit: Vec<LimitConfig>,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self { redis: None, timeout_ms: default_timeout_ms(), host_id: None, limit: Vec::new() }
    }
}

fn default_timeout_ms() -> u64 {
    200
}

/// One `[[cluster.limit]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// The limit's name: part of its Redis keys, so every host must use the same one.
    pub name: String,
    /// A destination domain (exact, case-insensitive) or `*`.
    pub site: String,
    /// Most messages per period, `N/s`, `N/m` or `N/h`.
    pub max_message_rate: Option<String>,
    /// Most concurrent connections.
    pub max_connections: Option<u32>,
    /// Enforced across every host through Redis (per host when Redis is absent or down).
    #[serde(default)]
    pub shared: bool,
}

/// A message rate: `count` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Messages allowed per period.
    pub count: u64,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// Parse `N/s`, `N/m` or `N/h` (N ≥ 1).
    pub fn parse(s: &str) -> Option<Rate> {
        let (n, unit) = s.trim().split_once('/')?;
        let count: u64 = n.trim().parse().ok().filter(|&c| c > 0)?;
        let secs = match unit.trim() {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return None,
        };
        Some(Rate { count, per: Duration::from_secs(secs) })
    }

    /// The emission interval: time per token, in µs (at least 1).
    pub fn interval_us(&self) -> u64 {
        (self.per.as_micros() as u64 / self.count).max(1)
    }
}

/// Where Redis listens, parsed from `redis://host:port[/db]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisAddr {
    /// `host:port`.
    pub addr: String,
    /// Database number (SELECT), 0 by default.
    pub db: u32,
}

impl RedisAddr {
    /// Parse a `redis://` URL; the port defaults to 6379.
    pub fn parse(url: &str) -> Option<RedisAddr> {
        let rest = url.strip_prefix("redis://")?;
        let (host, db) = match rest.split_once('/') {
            Some((h, "")) => (h, 0),
            Some((h, d)) => (h, d.parse().ok()?),
            None => (rest, 0),
        };
        if host.is_empty() || host.contains('@') {
            return None;
        }
        let addr = if host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) { host.to_string() } else { format!("{host}:6379") };
        Some(RedisAddr { addr, db })
    }
}

impl ClusterSection {
    /// Check every value; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(url) = &self.redis {
            if RedisAddr::parse(url).is_none() {
                return Err(("cluster.redis", format!("`{url}` is not redis://host:port[/db]")));
            }
        }
        if self.timeout_ms == 0 {
            return Err(("cluster.timeout_ms", "must be at least 1".into()));
        }
        for (i, l) in self.limit.iter().enumerate() {
            if let Some(r) = &l.max_message_rate {
                if Rate::parse(r).is_none() {
                    return Err(("cluster.limit.max_message_rate", format!("limit {i}: `{r}` is not N/s, N/m or N/h")));
                }
            }
            if l.max_connections == Some(0) {
                return Err(("cluster.limit.max_connections", format!("limit {i}: must be at least 1")));
            }
            if l.name.is_empty() || l.name.contains(char::is_whitespace) {
                return Err(("cluster.limit.name", format!("limit {i}: must be one word")));
            }
        }
        Ok(())
    }

    /// The first limit whose site matches `domain`.
    pub fn limit_for(&self, domain: &str) -> Option<&LimitConfig> {
        self.limit.iter().find(|l| l.site == "*" || l.site.eq_ignore_ascii_case(domain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_urls_parse() {
        assert_eq!(Rate::parse("100/s").unwrap().interval_us(), 10_000);
        assert_eq!(Rate::parse("60/m").unwrap().interval_us(), 1_000_000);
        assert_eq!(Rate::parse("0/s"), None);
        assert_eq!(Rate::parse("5/d"), None);
        assert_eq!(RedisAddr::parse("redis://127.0.0.1:7000/2"), Some(RedisAddr { addr: "127.0.0.1:7000".into(), db: 2 }));
        assert_eq!(RedisAddr::parse("redis://cache").unwrap().addr, "cache:6379");
        assert_eq!(RedisAddr::parse("http://x"), None);
    }
}
