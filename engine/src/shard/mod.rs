//! The shard: one core's state, the messages cores exchange, the ledger of live messages and
//! the router that decides which core owns a destination.
pub mod core;
pub mod router;
