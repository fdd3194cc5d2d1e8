//! ringpost's engine: configuration, the SMTP protocol machines, and the per-core runtime.
pub mod config;
pub mod retry;
pub mod smtp;
