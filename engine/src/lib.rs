//! ringpost's engine: configuration, the per-core runtime and the stages a message passes through.
//!
//! # Layout
//!
//! The folders are the stages of a message's path, in order; imports flow one way along it
//! (a stage may use the stages after it, never one before it):
//!
//! 1. **inbound/** — a message enters. `listener.rs` accepts connections within the per-core and
//!    per-address ceilings; `session.rs` drives the sans-I/O SMTP server (`ringpost-smtp`,
//!    re-exported as [`smtp`]) over the socket and streams the body into the spool; the durable
//!    commit answers 250 only after the group-commit round that holds every record the message
//!    needs.
//! 2. **shard/** — the core that accepted it takes it in. `core.rs` is the per-core state (data
//!    only); `ledger.rs` tracks live messages and their open recipients (no I/O); `router.rs`
//!    decides which core owns each destination; `inbox.rs` carries work between cores;
//!    `dispatch.rs` drives the outbound side; `finals.rs` records outcomes, spools DSNs and
//!    releases spool space.
//! 3. **outbound/** — it is delivered. `queue.rs` is the queue manager (no I/O; time passed in:
//!    what is ready, what waits, what expires); `agent.rs` is the delivery agent (one SMTP
//!    conversation with one destination; one result per recipient; knows nothing of queues);
//!    `retry.rs`, `tls_policy.rs`, `routes.rs` and `dns/` serve them.
//! 4. **account/** — it is accounted for: `delivery_log.rs` (one final event per recipient) and
//!    `dsn.rs` (RFC 3464 reports to the sender).
//!
//! The control plane: `admin/` (the socket `ringctl` talks to, reload) and `metrics/` (the
//! Prometheus endpoint) run on an executor of their own and reach a core only by asking over
//! its admin channel (`shard/admin_ops.rs`); the stages name only `metrics::local`, the
//! counters and histograms a core keeps for it.
//!
//! Around them: `runtime/` starts one pinned executor per core, recovers the spool and requeues
//! it (`runtime/recovery.rs`) before serving; `config.rs`, `clock.rs` (real and manual time),
//! `message.rs` (the zero-copy view of a spooled message), `tls.rs`, `wire_write.rs` (every
//! network write, non-blocking and timed out), `durable_file.rs` (a state file replaced whole), `trace.rs` (`ringctl trace` events from
//! sessions and delivery agents) and `dkim.rs` are used by
//! several stages. The spool itself is the `ringpost-spool` crate.
#![warn(missing_docs)]

pub mod account;
pub mod admin;
pub mod clock;
pub mod cluster_config;
pub mod config;
pub mod dkim;
pub mod dkim_key;
pub mod durable_file;
pub mod inbound;
pub mod message;
pub mod metrics;
pub mod outbound;
pub mod runtime;
pub mod shard;
pub use ringpost_smtp as smtp;
pub mod tls;
pub mod trace;
pub mod wire_write;
