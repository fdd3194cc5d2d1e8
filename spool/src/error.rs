//! Typed spool errors: what went wrong, and on which file.
use std::path::PathBuf;

/// Everything the spool can fail with. `DiskFull` is kept apart because the SMTP layer turns it
/// into `452 4.3.1` rather than a generic temporary failure.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The file system has no room for a new segment or record.
    #[error("spool disk full at {path}")]
    DiskFull {
        /// The segment that could not grow.
        path: PathBuf,
    },
    /// Any other I/O failure, with the file it happened on.
    #[error("spool I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A record is larger than a segment can hold.
    #[error("record of {len} bytes exceeds the segment capacity {capacity}")]
    RecordTooLarge {
        /// Encoded length of the record.
        len: usize,
        /// Usable bytes per segment.
        capacity: usize,
    },
    /// A record failed to decode (bad magic, checksum or layout).
    #[error("corrupt record: {0}")]
    Corrupt(&'static str),
    /// The group-commit round carrying this record failed; it is not durable.
    #[error("group commit failed: {reason}")]
    CommitFailed {
        /// The round's error.
        reason: String,
        /// The round failed because the disk is full.
        disk_full: bool,
    },
    /// The spool is shutting down.
    #[error("spool is closed")]
    Closed,
}

impl SpoolError {
    /// Classify an `io::Error` on `path`, singling out ENOSPC/EDQUOT as a full disk.
    pub fn from_io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        // glommio's enhanced errors keep the kind but not the errno, so look at both.
        let full = matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
            || matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded);
        if full {
            SpoolError::DiskFull { path: path.into() }
        } else {
            SpoolError::Io { path: path.into(), source }
        }
    }

    /// True when the SMTP layer should answer `452 4.3.1` (insufficient system storage).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, SpoolError::DiskFull { .. } | SpoolError::CommitFailed { disk_full: true, .. })
    }
}

/// Shorthand for spool results.
pub type Result<T> = std::result::Result<T, SpoolError>;
