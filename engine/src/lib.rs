//! ringpost's engine: configuration, the SMTP protocol machines, and the per-core runtime.
pub mod clock;
pub mod config;
pub mod core;
pub mod deliver;
pub mod dkim;
pub mod dns;
pub mod delivery_log;
pub mod dsn;
pub mod message;
pub mod queue;
pub mod retry;
pub mod router;
pub mod runtime;
pub mod session;
pub use ringpost_smtp as smtp;
pub mod tls;
pub mod tls_policy;
