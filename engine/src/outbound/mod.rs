//! Outbound: the queue manager decides what is delivered when; the delivery agent speaks SMTP
//! to one destination; retry and TLS policy, static routes and DNS serve them.
pub mod agent;
pub mod cluster;
pub mod dns;
pub mod idle_bell;
pub mod intern;
pub mod queue;
pub mod reply_buf;
pub mod retry;
pub mod routes;
pub mod shaping;
pub mod tls_policy;
