//! Segment files: preallocated, append-only, memory-mapped.
//!
//! A segment is `core-N/seg-SSSSSSSS.spool` under the spool directory: a 64-byte header naming
//! its core and sequence, then frames (see [`crate::record`]) up to the preallocated size.
//!
//! Header (little endian, zero-padded to 64 bytes):
//!
//! ```text
//! format 2: "RPSEG002" | core u16 | seq u32 | size u64 | frame_seed u32 | crc32c u32 (of bytes 0..26)
//! format 1: "RPSEG001" | core u16 | seq u32 | size u64 | crc32c u32 (of bytes 0..22)
//! ```
//!
//! `frame_seed` is random per segment and seeds every frame checksum in it, so bytes a sender
//! chose (a body chunk) can never pass for a frame. New segments are always format 2; format 1
//! is still read (seed 0) so a spool written before the change is not lost. The
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
const SEGMENT_MAGIC: &[u8; 8] = b"RPSEG002";
const SEGMENT_MAGIC_V1: &[u8; 8] = b"RPSEG001";

/// What an intact segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The core that owns the segment.
    pub core: u16,
    /// Its sequence number.
    pub seq: u32,
    /// Seed of every frame checksum in the segment (0 in format 1).
    pub frame_seed: u32,
    /// True for format 2: frames cannot be forged, so recovery may resynchronise past a
    /// corrupt frame. Format-1 segments stop at the first bad frame, as they always did.
    pub seeded: bool,
}

/// Path of segment `seq` in a core's directory.
pub fn segment_path(core_dir: &Path, seq: u32) -> PathBuf {
    core_dir.join(format!("seg-{seq:08}.spool"))
}

/// Parse a segment file name back into its sequence number.
pub fn parse_segment_name(name: &str) -> Option<u32> {
    name.strip_prefix("seg-")?.strip_suffix(".spool")?.parse().ok()
}

/// The frame seed of segment `seq` for a shard whose random key is `key`: unpredictable to
/// anyone who does not know the key (which never leaves the process; the seed itself is stored
/// in the segment header for recovery). SplitMix64's finaliser, upper half.
pub fn derive_frame_seed(key: u64, seq: u32) -> u32 {
    let mut z = key.wrapping_add((seq as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 32) as u32
}

/// The (format 2) segment header bytes for `core`/`seq`, checksummed. `frame_seed` must be
/// the seed every frame of the segment is encoded with.
pub fn encode_header(core: u16, seq: u32, size: u64, frame_seed: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(SEGMENT_HEADER_LEN as usize);
    h.extend_from_slice(SEGMENT_MAGIC);
    h.extend_from_slice(&core.to_le_bytes());
    h.extend_from_slice(&seq.to_le_bytes());
    h.extend_from_slice(&size.to_le_bytes());
    h.extend_from_slice(&frame_seed.to_le_bytes());
    let crc = crc32c::crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h.resize(SEGMENT_HEADER_LEN as usize, 0);
    h
}

/// Check a segment header (format 2 or 1); returns what it says when it is intact.
pub fn decode_header(h: &[u8]) -> Option<SegmentHeader> {
    if h.len() < SEGMENT_HEADER_LEN as usize {
        return None;
    }
    let seeded = match &h[..8] {
        m if m == SEGMENT_MAGIC => true,
        m if m == SEGMENT_MAGIC_V1 => false,
        _ => return None,
    };
    let crc_at = if seeded { 26 } else { 22 };
    let crc = u32::from_le_bytes(h[crc_at..crc_at + 4].try_into().ok()?);
    if crc32c::crc32c(&h[..crc_at]) != crc {
        return None;
    }
    let frame_seed = if seeded { u32::from_le_bytes(h[22..26].try_into().ok()?) } else { 0 };
    Some(SegmentHeader {
        core: u16::from_le_bytes(h[8..10].try_into().ok()?),
        seq: u32::from_le_bytes(h[10..14].try_into().ok()?),
        frame_seed,
        seeded,
    })
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

    /// Drop this process's page-table entries for the whole mapping, so a sealed segment's
    /// pages stop counting in its RSS. The data stays in the page cache (and on disk): the next
    /// read of a live extent faults it back in, unchanged. Without this, every page a delivery
    /// touched stays resident until the segment is deleted, and a segment kept for one live
    /// message keeps up to its full size resident.
    pub fn drop_resident_pages(&self) -> std::io::Result<()> {
        // SAFETY: MADV_DONTNEED is destructive only for private or anonymous mappings, whose
        // contents it resets. This is a shared, read-only mapping of a file: after the call
        // every page reads back the file's bytes, which the spool never rewrites below its
        // append point, so slices handed out (and read concurrently by other cores) see the
        // same bytes before and after.
        unsafe { self.map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_with_its_seed() {
        let h = encode_header(3, 42, 1 << 20, 0xDEAD_BEEF);
        assert_eq!(h.len(), SEGMENT_HEADER_LEN as usize);
        let d = decode_header(&h).unwrap();
        assert_eq!(d, SegmentHeader { core: 3, seq: 42, frame_seed: 0xDEAD_BEEF, seeded: true });
    }

    #[test]
    fn any_flipped_header_bit_is_rejected() {
        let h = encode_header(3, 42, 1 << 20, 7);
        for i in 0..30 {
            for bit in 0..8 {
                let mut c = h.clone();
                c[i] ^= 1 << bit;
                assert_eq!(decode_header(&c), None, "flip at byte {i} bit {bit} accepted");
            }
        }
    }

    #[test]
    fn format_1_header_is_read_unseeded() {
        let mut h = Vec::new();
        h.extend_from_slice(b"RPSEG001");
        h.extend_from_slice(&5u16.to_le_bytes());
        h.extend_from_slice(&9u32.to_le_bytes());
        h.extend_from_slice(&(1u64 << 20).to_le_bytes());
        let crc = crc32c::crc32c(&h);
        h.extend_from_slice(&crc.to_le_bytes());
        h.resize(64, 0);
        assert_eq!(decode_header(&h), Some(SegmentHeader { core: 5, seq: 9, frame_seed: 0, seeded: false }));
    }

    #[test]
    fn frame_seeds_differ_per_segment_and_key() {
        let a: std::collections::HashSet<u32> = (0..1000).map(|s| derive_frame_seed(1, s)).collect();
        assert_eq!(a.len(), 1000);
        assert_ne!(derive_frame_seed(1, 5), derive_frame_seed(2, 5));
    }

    fn rss_file_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status.lines().find(|l| l.starts_with("RssFile:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap()
    }

    #[test]
    fn dropping_resident_pages_frees_rss_and_keeps_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let data: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let map = SegmentMap::map(1, path.clone(), &file).unwrap();
        let sum = |m: &SegmentMap| m.bytes().iter().step_by(4096).map(|b| *b as u64).sum::<u64>();
        let expected = sum(&map);
        let touched = rss_file_kib();
        map.drop_resident_pages().unwrap();
        let dropped = rss_file_kib();
        assert!(touched >= dropped + 60 * 1024, "RssFile {touched} KiB -> {dropped} KiB: the 64 MiB mapping stayed resident");
        assert_eq!(sum(&map), expected, "the bytes read back unchanged");
        assert_eq!(map.bytes()[..1000], data[..1000]);
    }
}
