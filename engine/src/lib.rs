//! ringpost's engine: configuration, the SMTP protocol machines, and the per-core runtime.
pub mod clock;
pub mod config;
pub mod delivery_log;
pub mod dsn;
pub mod message;
pub mod retry;
pub mod router;
pub mod smtp;
