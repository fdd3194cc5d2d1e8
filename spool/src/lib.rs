//! ringpost's spool: per-core, append-only, memory-mapped segment files of checksummed records,
//! made durable by group commit.
//!
//! This crate owns the on-disk format and its durability rules. It knows nothing of SMTP: a
//! message is an envelope plus body extents. Every piece of state here belongs to one core
//! (one [`SpoolShard`] per executor); other cores reach message bodies only through the
//! read-only [`SegmentMap`] they were handed, never through the shard itself.
#![warn(missing_docs)]

pub mod crc_range;
pub mod error;
pub mod liveness;
pub mod record;
pub mod recovery;
pub mod segment;
pub mod shard;
#[cfg(feature = "sim")]
pub mod sim;
pub mod stats;
pub mod storage;

pub use error::SpoolError;
pub use record::{Disposition, Extent, FailureDetail, MessageRecord, MsgRef, Outcome, RcptState, Record, RecordKind, SegmentCheckpoint};
pub use recovery::{RecoveredMessage, RecoveredSegment, Recovery, ScanEvent, SegmentScanner};
pub use segment::SegmentMap;
pub use shard::{Durability, SpoolConfig, SpoolShard, Ticket};
pub use stats::{FixedHistogram, HistogramSnapshot};
pub use storage::{DiskStorage, SegmentFile, Storage};
