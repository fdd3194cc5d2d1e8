//! The shard: one core's state and what it does with it — the messages cores exchange
//! (`inbox`), the ledger of live messages (`ledger`, no I/O), the owner of each destination
//! (`router`), the driver of the outbound side (`dispatch`) and the handling of outcomes
//! (`finals`).
pub mod admin_ops;
pub mod core;
pub mod dispatch;
pub mod finals;
pub mod history;
pub mod inbox;
pub mod ledger;
pub mod mid_index;
pub mod router;
