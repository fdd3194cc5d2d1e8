//! ringpost's engine: configuration, the SMTP protocol machines, and the per-core runtime.
pub mod smtp;
