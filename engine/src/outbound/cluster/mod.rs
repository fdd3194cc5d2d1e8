//! Cluster-wide limits (issue 11 item 8): with `[cluster] redis = "redis://..."`, rate and
//! connection limits marked `shared = true` hold across every ringpost host that uses the same
//! Redis; without Redis, or while it is down, they hold per host.
//!
//! - `crate::cluster_config` — `[cluster]` and its limits, rates, the Redis address (a shared
//!   module, since `config.rs` holds it).
//! - `gcra.lua`, `conn_lease.lua` — the atomic scripts: GCRA granting small batches of message
//!   tokens; a sorted set of expiring connection leases.
//! - `lease.rs` — pure lease math (batch size, lease lifetime, the rate bound it keeps) and
//!   the per-host GCRA.
//! - `health.rs` — pure degrade state machine: when to use Redis, when to try again, what to log.
//! - `resp.rs` — sans-I/O RESP (the `redis-protocol` codec); `client.rs` — the thin driver over
//!   glommio's TcpStream, timeouts on every call, EVALSHA with EVAL fallback.
//! - `limiter.rs` — one core's limiter: `PathLimits::admit_message` / `open_connection`.
//! - `hook.rs` — the host-wide synchronous face (`ClusterHook::acquire`) for branch `shape`'s
//!   `SharedLimiter` hook.
pub mod client;
pub mod health;
pub mod hook;
pub mod lease;
pub mod limiter;
pub mod resp;
