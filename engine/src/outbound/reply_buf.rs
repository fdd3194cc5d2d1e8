//! The bytes an outbound connection has read and not yet parsed as replies.
//!
//! Why not a `Vec` resized before each read: `resize(len + 4096, 0)` writes 4 KiB of zeros
//! for every read, three or four per message, and with 4,000 connections (1,000 sites × 4
//! sources) those 64 cache lines per read are cold each time. Here the storage is zeroed once
//! per connection and reused: a read touches only the bytes the receiver sent.
use crate::smtp::client::MAX_REPLY_BYTES;

/// What a connection starts with; replies are short, so it rarely grows.
const INITIAL: usize = 4096;

/// Read-ahead storage: `bytes[start..end]` is read and unparsed.
#[derive(Debug)]
pub struct ReplyBuf {
    bytes: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for ReplyBuf {
    fn default() -> Self {
        Self { bytes: vec![0; INITIAL], start: 0, end: 0 }
    }
}

impl ReplyBuf {
    /// The bytes read and not yet consumed.
    pub fn unparsed(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// `n` bytes of [`Self::unparsed`] were parsed.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.end - self.start);
        self.start += n;
        if self.start == self.end {
            self.clear();
        }
    }

    /// Forget everything unparsed (after STARTTLS nothing read before the handshake counts).
    pub fn clear(&mut self) {
        (self.start, self.end) = (0, 0);
    }

    /// Room for the next read, after the unparsed bytes: they are moved to the front first
    /// (at most the start of one reply: whatever was whole has been consumed), and the storage
    /// doubles when they fill it. It never grows past what a reply may hold plus one read
    /// ([`MAX_REPLY_BYTES`]: the parser calls a longer reply broken).
    pub fn room(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.bytes.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.end == self.bytes.len() && self.bytes.len() <= MAX_REPLY_BYTES {
            let grown = (self.bytes.len() * 2).min(MAX_REPLY_BYTES + INITIAL);
            self.bytes.resize(grown, 0);
        }
        &mut self.bytes[self.end..]
    }

    /// `n` bytes were read into [`Self::room`].
    pub fn filled(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.bytes.len());
        self.end += n;
    }

    /// The storage's size (for tests: what a connection holds).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::{ReplyBuf, INITIAL};
    use crate::smtp::client::{parse_reply, ReplyError, MAX_REPLY_BYTES};

    /// Feed `input` in reads of at most `step` bytes and parse every reply, as the agent does.
    fn replies(input: &[u8], step: usize) -> Result<Vec<u16>, ReplyError> {
        replies_and_storage(input, step).map(|(codes, _)| codes)
    }

    /// [`replies`] and the storage's size at the end.
    fn replies_and_storage(input: &[u8], step: usize) -> Result<(Vec<u16>, usize), ReplyError> {
        let mut b = ReplyBuf::default();
        let (mut at, mut codes) = (0, Vec::new());
        loop {
            while let Some((r, n)) = parse_reply(b.unparsed())? {
                codes.push(r.code);
                b.consume(n);
            }
            if at == input.len() {
                return Ok((codes, b.capacity()));
            }
            let room = b.room();
            assert!(!room.is_empty(), "no room to read into, {} bytes unparsed", b.unparsed().len());
            let n = room.len().min(step).min(input.len() - at);
            room[..n].copy_from_slice(&input[at..at + n]);
            b.filled(n);
            at += n;
        }
    }

    #[test]
    fn replies_split_anywhere_are_parsed_whole_and_in_order() {
        let wire = b"250-sink.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n250 2.1.0 Ok\r\n354 go\r\n250 2.0.0 stored\r\n";
        for step in 1..=wire.len() {
            assert_eq!(replies(wire, step).unwrap(), [250, 250, 354, 250], "reads of {step}");
        }
    }

    /// A multi-line reply longer than the first storage grows it and arrives whole.
    #[test]
    fn a_long_reply_grows_the_storage_and_stays_whole() {
        let mut wire = b"220 hello\r\n".to_vec();
        for i in 0..400 {
            wire.extend_from_slice(format!("250-line {i} of a long EHLO reply, padded out\r\n").as_bytes());
        }
        wire.extend_from_slice(b"250 end\r\n");
        assert!(wire.len() > 4 * INITIAL);
        assert_eq!(replies(&wire, 1000).unwrap(), [220, 250]);
    }

    /// A reply that never ends is refused once it passes the parser's limit, and the storage
    /// stops growing there.
    #[test]
    fn an_endless_reply_is_refused_with_bounded_storage() {
        let mut b = ReplyBuf::default();
        let line = b"250-padding padding padding padding padding padding padding\r\n";
        let mut refused = false;
        for _ in 0..10 * MAX_REPLY_BYTES / line.len() {
            match parse_reply(b.unparsed()) {
                Err(ReplyError::TooLong) => {
                    refused = true;
                    break;
                }
                Err(e) => panic!("{e}"),
                Ok(_) => {}
            }
            let room = b.room();
            let n = room.len().min(line.len());
            room[..n].copy_from_slice(&line[..n]);
            b.filled(n);
            assert!(b.capacity() <= MAX_REPLY_BYTES + INITIAL, "grew to {}", b.capacity());
        }
        assert!(refused, "never refused");
    }

    /// Short replies cut anywhere by the reads: what is left of one is moved to the front, so
    /// the storage never grows however long the connection lives.
    #[test]
    fn replies_cut_by_reads_of_any_size_keep_the_first_storage() {
        let mut wire = Vec::new();
        for i in 0..6_000 {
            wire.extend_from_slice(format!("250 2.0.0 Ok {}\r\n", "x".repeat(i % 37)).as_bytes());
        }
        for step in (1..=50).chain([999, 4093, 4096, 5000]) {
            assert_eq!(replies_and_storage(&wire, step).unwrap(), (vec![250; 6_000], INITIAL), "reads of {step}");
        }
    }

    /// Short replies, one at a time, never grow the storage: the cursor goes back to the start
    /// whenever everything read was parsed.
    #[test]
    fn short_replies_reuse_the_first_storage() {
        let wire = b"250 2.0.0 Ok\r\n".repeat(10_000);
        assert_eq!(replies_and_storage(&wire, 14).unwrap(), (vec![250; 10_000], INITIAL));
    }
}
