//! Segment files: preallocated, append-only, memory-mapped.
//!
//! A segment is `core-N/seg-SSSSSSSS.spool` under the spool directory: a 64-byte header naming
//! its core and sequence, then frames (see [`crate::record`]) up to the preallocated size. The
//! owning core appends through io_uring (glommio `BufferedFile`); anyone holding an
//! `Arc<SegmentMap>` reads bodies straight from the shared read-only mapping, which is coherent
//! with those writes because both go through the page cache. The mapping outlives the file's
//! deletion for as long as a reader holds it.
use crate::error::{Result, SpoolError};
use crate::record::Extent;
use memmap2::{Mmap, MmapOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Bytes before the first frame.
pub const SEGMENT_HEADER_LEN: u64 = 64;
const SEGMENT_MAGIC: &[u8; 8] = b"RPSEG001";

/// Path of segment `seq` in a core's directory.
pub fn segment_path(core_dir: &Path, seq: u32) -> PathBuf {
    core_dir.join(format!("seg-{seq:08}.spool"))
}

/// Parse a segment file name back into its sequence number.
pub fn parse_segment_name(name: &str) -> Option<u32> {
    name.strip_prefix("seg-")?.strip_suffix(".spool")?.parse().ok()
}

/// The segment header bytes for `core`/`seq`, checksummed.
pub fn encode_header(core: u16, seq: u32, size: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(SEGMENT_HEADER_LEN as usize);
    h.extend_from_slice(SEGMENT_MAGIC);
    h.extend_from_slice(&core.to_le_bytes());
    h.extend_from_slice(&seq.to_le_bytes());
    h.extend_from_slice(&size.to_le_bytes());
    let crc = crc32c::crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h.resize(SEGMENT_HEADER_LEN as usize, 0);
    h
}

/// Check a segment header; returns (core, seq) when it is intact.
pub fn decode_header(h: &[u8]) -> Option<(u16, u32)> {
    if h.len() < SEGMENT_HEADER_LEN as usize || &h[..8] != SEGMENT_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(h[22..26].try_into().ok()?);
    if crc32c::crc32c(&h[..22]) != crc {
        return None;
    }
    Some((u16::from_le_bytes(h[8..10].try_into().ok()?), u32::from_le_bytes(h[10..14].try_into().ok()?)))
}

/// A read-only view of one segment, shareable across cores.
#[derive(Debug)]
pub struct SegmentMap {
    seq: u32,
    path: PathBuf,
    map: Mmap,
}

impl SegmentMap {
    /// Map the whole of an open segment file read-only.
    pub fn map(seq: u32, path: PathBuf, file: &impl AsRawFd) -> Result<Self> {
        // SAFETY: the mapping is read-only and shared. The only writer is the owning core, which
        // appends past every byte a reader is ever handed (readers get extents only after the
        // group commit that wrote them), so no reader observes bytes that are being modified.
        let map = unsafe { MmapOptions::new().map(file.as_raw_fd()) }.map_err(|e| SpoolError::from_io(&path, e))?;
        Ok(Self { seq, path, map })
    }

    /// Segment sequence number.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// File path (it may already be deleted).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The bytes of one extent. Panics if the extent lies outside the mapping: that is a bug,
    /// since extents come only from records this spool wrote or verified.
    pub fn extent(&self, e: &Extent) -> &[u8] {
        assert_eq!(e.segment, self.seq, "extent of another segment");
        &self.map[e.offset as usize..e.offset as usize + e.len as usize]
    }
}
