//! `[cluster]` (a shared module: `config.rs` holds it, `outbound/cluster/` enforces it): where
//! the limits marked `shared = true` on a `[[shape]]` are kept across hosts.
//!
//! ```toml
//! [cluster]
//! redis = "redis://127.0.0.1:6379"   # absent: every limit is per host
//! timeout_ms = 200                   # every Redis call, connect included
//! [[shape]]
//! site = "*"
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
    /// This host's name in connection leases (default: hostname, process id and a random
    /// nonce per process), unique per host.
    pub host_id: Option<String>,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self { redis: None, timeout_ms: default_timeout_ms(), host_id: None }
    }
}

fn default_timeout_ms() -> u64 {
    200
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
        Ok(())
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
