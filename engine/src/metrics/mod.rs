//! Prometheus metrics: what each core counts (`local.rs`, recorded on the core's hot path
//! without atomics or locks), how the cores' copies become one exposition (`exposition.rs`,
//! encoded by `prometheus-client`), and the scrape endpoint (`http.rs`, `[metrics] listen`).
//!
//! The endpoint is control plane, like the admin socket: it runs on the admin executor and
//! reaches the cores only by asking over their admin channels (`CoreOp::Metrics`), the same
//! path as `ringctl status`. The stages name only `metrics::local`.
pub mod exposition;
pub mod http;
pub mod local;

/// Bind the endpoint's listener when `[metrics] listen` is set. Bound without SO_REUSEPORT
/// (unlike glommio's own `bind`, made for one listener per core): a second daemon configured
/// with the same address must fail to start, not take half the scrapes.
pub fn bind(config: &crate::config::Config) -> Result<Option<glommio::net::TcpListener>, String> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let Some(addr) = config.metrics.addr() else { return Ok(None) };
    let std_listener = std::net::TcpListener::bind(addr).map_err(|e| format!("metrics.listen {addr}: {e}"))?;
    // SAFETY: the fd is a bound, listening TCP socket whose ownership `into_raw_fd` gave up;
    // this runs on the admin executor, which the listener then belongs to.
    Ok(Some(unsafe { glommio::net::TcpListener::from_raw_fd(std_listener.into_raw_fd()) }))
}
