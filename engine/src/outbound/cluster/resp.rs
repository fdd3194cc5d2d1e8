//! The RESP2 wire format, sans I/O: commands to bytes, bytes to replies. The framing itself is
//! the `redis-protocol` crate's (a maintained codec); this file only adapts it to the few
//! shapes the limiter sends and reads.
use redis_protocol::resp2::types::{OwnedFrame, Resp2Frame};

/// A reply from Redis.
pub type Reply = OwnedFrame;

/// A reply the limiter cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RespError {
    /// The bytes are not RESP2.
    #[error("malformed RESP: {0}")]
    Malformed(String),
    /// Redis answered with an error (`-ERR ...`, `-NOSCRIPT ...`).
    #[error("redis error: {0}")]
    Server(String),
    /// A reply of a shape the command never returns.
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

/// Encode one command (an array of bulk strings).
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let frame = OwnedFrame::Array(args.iter().map(|a| OwnedFrame::BulkString(a.to_vec())).collect());
    let mut buf = vec![0u8; frame.encode_len(false)];
    let n = redis_protocol::resp2::encode::encode(&mut buf, &frame, false).expect("buffer sized by encode_len");
    buf.truncate(n);
    buf
}

/// Accumulates bytes read from the socket and yields complete replies.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Append bytes as read.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete reply, None until one has fully arrived.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, RespError> {
        match redis_protocol::resp2::decode::decode(&self.buf) {
            Ok(Some((frame, used))) => {
                self.buf.drain(..used);
                Ok(Some(frame))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(RespError::Malformed(e.to_string())),
        }
    }

    /// Forget buffered bytes (after a timeout the stream is dropped with it).
    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

/// True for Redis's answer to EVALSHA of a script it does not hold.
pub fn is_noscript(e: &RespError) -> bool {
    matches!(e, RespError::Server(m) if m.starts_with("NOSCRIPT"))
}

/// A reply as an error when Redis sent one.
pub fn check(reply: Reply) -> Result<Reply, RespError> {
    match reply {
        OwnedFrame::Error(e) => Err(RespError::Server(e)),
        r => Ok(r),
    }
}

/// An array of integers, as the limiter's scripts return.
pub fn integers(reply: Reply) -> Result<Vec<i64>, RespError> {
    match check(reply)? {
        OwnedFrame::Integer(i) => Ok(vec![i]),
        OwnedFrame::Array(items) => items
            .into_iter()
            .map(|f| match f {
                OwnedFrame::Integer(i) => Ok(i),
                other => Err(RespError::Unexpected(format!("{other:?}"))),
            })
            .collect(),
        other => Err(RespError::Unexpected(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_an_array_of_bulk_strings() {
        assert_eq!(command(&[b"EVALSHA", b"ab", b"1", b"k"]), b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nk\r\n");
    }

    #[test]
    fn replies_arrive_in_pieces_and_errors_are_typed() {
        let mut d = Decoder::default();
        d.feed(b"*2\r\n:3\r");
        assert_eq!(d.next_reply(), Ok(None));
        d.feed(b"\n:0\r\n-NOSCRIPT No matching script\r\n");
        let r = d.next_reply().unwrap().unwrap();
        assert_eq!(integers(r), Ok(vec![3, 0]));
        let e = integers(d.next_reply().unwrap().unwrap()).unwrap_err();
        assert!(is_noscript(&e), "{e:?}");
        assert_eq!(d.next_reply(), Ok(None));
        d.feed(b"?bad\r\n");
        assert!(matches!(d.next_reply(), Err(RespError::Malformed(_))));
    }
}
