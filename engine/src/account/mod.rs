//! Accounting: the delivery log (one final event per recipient) and delivery status
//! notifications to senders.
pub mod bounce_class;
pub mod delivery_log;
pub mod dsn;
pub mod suppression;
