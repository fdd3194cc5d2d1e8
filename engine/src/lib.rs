//! ringpost's engine: configuration, the per-core runtime and the stages a message passes through.
pub mod account;
pub mod clock;
pub mod config;
pub mod dkim;
pub mod inbound;
pub mod message;
pub mod outbound;
pub mod runtime;
pub mod shard;
pub use ringpost_smtp as smtp;
pub mod tls;
pub mod wire_write;
