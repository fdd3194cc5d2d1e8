//! The frame codec: sans-I/O, bytes in, frames out (and back). Nothing here reads or writes a
//! socket, so the daemon, `ringctl` and the fuzz target all drive the same code.
//!
//! ```text
//! offset  size  field
//! 0       4     length of what follows (version + id + payload), big-endian, 5..=MAX_FRAME_BYTES
//! 4       1     protocol version (PROTOCOL_VERSION)
//! 5       4     request id, big-endian (chosen by the client; a reply carries its request's id)
//! 9       ...   payload: a Request (client to daemon) or a Reply (daemon to client), postcard
//! ```
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The one protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;
/// Bytes of version and request id after the length prefix.
pub const HEADER_BYTES: usize = 5;
/// Largest frame (after the length prefix) either side accepts: a request is a few hundred
/// bytes; the largest reply (a queue listing at its limit) stays well under this.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// Why bytes are not a frame. Each error says what id to answer with (0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix says fewer bytes than a header.
    #[error("frame length {len} is shorter than its {HEADER_BYTES}-byte header")]
    TooShort {
        /// The announced length.
        len: usize,
    },
    /// The length prefix is over the limit (the bytes are not read).
    #[error("frame of {len} bytes is over the limit of {max}")]
    Oversized {
        /// The announced (or encoded) length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A version this build does not speak.
    #[error("protocol version {version} is not supported (this build speaks {PROTOCOL_VERSION})")]
    UnknownVersion {
        /// The version sent.
        version: u8,
        /// The request id sent.
        id: u32,
    },
    /// The payload does not decode as the expected type.
    #[error("malformed payload: {why}")]
    Malformed {
        /// The request id sent.
        id: u32,
        /// The decoder's complaint.
        why: String,
    },
}

impl FrameError {
    /// The request id an error frame should carry (0 when the frame never got that far).
    pub fn id(&self) -> u32 {
        match self {
            FrameError::UnknownVersion { id, .. } | FrameError::Malformed { id, .. } => *id,
            FrameError::TooShort { .. } | FrameError::Oversized { .. } => 0,
        }
    }
}

/// One frame cut out of a buffer, payload not yet decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame<'a> {
    /// The request id.
    pub id: u32,
    /// The postcard payload.
    pub payload: &'a [u8],
}

/// Cut the first frame out of `buf`: `Ok(None)` until a whole frame is there, then the frame
/// and the bytes it used. The length is checked as soon as its 4 bytes are in, so an oversized
/// frame is refused before its body is read.
pub fn split_frame(buf: &[u8]) -> Result<Option<(RawFrame<'_>, usize)>, FrameError> {
    let Some(prefix) = buf.get(..LENGTH_BYTES) else { return Ok(None) };
    let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
    if len < HEADER_BYTES {
        return Err(FrameError::TooShort { len });
    }
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::Oversized { len, max: MAX_FRAME_BYTES });
    }
    let Some(frame) = buf.get(LENGTH_BYTES..LENGTH_BYTES + len) else { return Ok(None) };
    let id = u32::from_be_bytes(frame[1..5].try_into().expect("4 bytes"));
    if frame[0] != PROTOCOL_VERSION {
        return Err(FrameError::UnknownVersion { version: frame[0], id });
    }
    Ok(Some((RawFrame { id, payload: &frame[HEADER_BYTES..] }, LENGTH_BYTES + len)))
}

/// Cut and decode the first frame of `buf` as a `T` (a `Request` or a `Reply`). Trailing bytes
/// inside the frame make it malformed: a frame holds exactly one value.
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(u32, T, usize)>, FrameError> {
    let Some((frame, used)) = split_frame(buf)? else { return Ok(None) };
    let (value, rest) = postcard::take_from_bytes::<T>(frame.payload).map_err(|e| FrameError::Malformed { id: frame.id, why: e.to_string() })?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed { id: frame.id, why: format!("{} bytes after the payload", rest.len()) });
    }
    Ok(Some((frame.id, value, used)))
}

/// Encode `value` as one frame with request id `id`.
pub fn encode<T: Serialize>(id: u32, value: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; LENGTH_BYTES];
    out.push(PROTOCOL_VERSION);
    out.extend_from_slice(&id.to_be_bytes());
    let out = postcard::to_extend(value, out).map_err(|e| FrameError::Malformed { id, why: e.to_string() })?;
    let len = out.len() - LENGTH_BYTES;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::Oversized { len, max: MAX_FRAME_BYTES });
    }
    let mut out = out;
    out[..LENGTH_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// A frame with any version and raw payload: for tests that speak a version this build does
/// not, or send bytes that are not a payload.
pub fn raw_frame(version: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = ((HEADER_BYTES + payload.len()) as u32).to_be_bytes().to_vec();
    out.push(version);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}
