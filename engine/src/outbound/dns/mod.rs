//! DNS for delivery: a per-core stub resolver on the core's own event loop, and MX planning.
//!
//! `wire` turns questions into bytes and answers into our own small types (hickory-proto does
//! the wire format); `mx` decides, purely, what an MX answer means for delivery (order, shuffling
//! of equal preferences, null MX, implicit MX); `resolver` does the I/O (UDP with TCP fallback,
//! timeouts, retries); `cache` is its per-core bounded TTL cache with negative caching (RFC 2308)
//! and LRU eviction.
pub mod cache;
pub mod mx;
pub mod resolver;
pub mod wire;
