//! Whether a message being received can carry an `X-Ringpost-Pool` header, decided once while
//! its bytes stream in.
//!
//! Delivery strips that header and [`super::find_headers`] finds it, but finding it means
//! copying and parsing the header section on every attempt and again when the message is
//! queued. Almost no message has one: the reception records [`FLAG_NO_POOL_HEADER`] when the
//! name cannot occur, and delivery then skips both scans. The answer is conservative: "may
//! carry" is any case-insensitive occurrence of the name in the first [`SCAN_LIMIT`] bytes,
//! up to the blank line, which covers every field `find_headers` could match (its header
//! section ends at the blank line or after 64 KiB plus at most one 1 KiB step).
//!
//! [`FLAG_NO_POOL_HEADER`]: ringpost_spool::record::FLAG_NO_POOL_HEADER
use super::POOL_HEADER;

/// Bytes scanned at most: more than `find_headers` ever reads.
pub const SCAN_LIMIT: usize = 66 * 1024;

/// A streaming scan of the start of one message's body (its header section).
#[derive(Debug, Default)]
pub struct PoolHeaderScan {
    /// Bytes taken so far (at most [`SCAN_LIMIT`]).
    seen: usize,
    /// The last bytes taken, so a name or blank line split across two feeds is still found.
    tail: Vec<u8>,
    /// The name occurred.
    maybe: bool,
    /// The blank line or the limit was reached: nothing later matters.
    done: bool,
}

impl PoolHeaderScan {
    /// A scan of a new message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Take the next bytes of the body, in order.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.done || bytes.is_empty() {
            return;
        }
        let take = &bytes[..bytes.len().min(SCAN_LIMIT - self.seen)];
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(take);
        self.seen += take.len();
        let end = window.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
        let region = &window[..end.unwrap_or(window.len())];
        if region.windows(POOL_HEADER.len()).any(|w| w.eq_ignore_ascii_case(POOL_HEADER.as_bytes())) {
            self.maybe = true;
            self.done = true;
            return;
        }
        if end.is_some() || self.seen >= SCAN_LIMIT {
            self.done = true;
            return;
        }
        let keep = window.len().min(POOL_HEADER.len() - 1);
        window.drain(..window.len() - keep);
        self.tail = window;
    }

    /// Whether the message may carry the header: false only when the whole message was fed
    /// (or its header section ended) without the name occurring.
    pub fn may_carry(&self) -> bool {
        self.maybe
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::shaping::find_headers;

    fn scan(pieces: &[&[u8]]) -> bool {
        let mut s = PoolHeaderScan::new();
        pieces.iter().for_each(|p| s.feed(p));
        s.may_carry()
    }

    #[test]
    fn a_message_without_the_header_is_cleared() {
        assert!(!scan(&[b"Subject: hi\r\nFrom: a@b.test\r\n\r\nbody\r\n"]));
        assert!(!scan(&[b""]), "an empty body");
        assert!(!scan(&[b"no header section at all"]));
    }

    #[test]
    fn the_name_in_any_case_or_split_across_feeds_is_found() {
        assert!(scan(&[b"Subject: hi\r\nX-Ringpost-Pool: bulk\r\n\r\nbody\r\n"]));
        assert!(scan(&[b"x-ringpost-POOL:bulk\r\n\r\n"]));
        let msg = b"Subject: hi\r\nX-Ringpost-Pool: bulk\r\n\r\nbody\r\n";
        for cut in 0..msg.len() {
            assert!(scan(&[&msg[..cut], &msg[cut..]]), "split at {cut}");
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = msg.chunks(1).collect();
        assert!(scan(&bytes));
    }

    #[test]
    fn the_name_after_the_blank_line_is_body_and_ignored() {
        let msg = b"Subject: hi\r\n\r\nX-Ringpost-Pool: bulk\r\n";
        for cut in 0..msg.len() {
            assert!(!scan(&[&msg[..cut], &msg[cut..]]), "split at {cut}");
        }
    }

    #[test]
    fn a_folded_or_oddly_spaced_field_counts_as_maybe() {
        assert!(scan(&[b"X-Ringpost-Pool :bulk\r\n\r\n"]), "conservative: find_headers would not match it");
        assert!(scan(&[b"Subject: x\r\n\tX-Ringpost-Pool\r\n\r\n"]));
    }

    #[test]
    fn the_limit_covers_everything_find_headers_reads() {
        // A header section longer than find_headers' cap. In 1,000-byte pieces find_headers
        // reads 66,000 bytes (it stops after the piece that passes 64 KiB), so a field ending
        // at 65,990 is found: the scan must see it whatever the pieces.
        let mut msg = Vec::new();
        let field = b"X-Ringpost-Pool: bulk\r\n";
        while msg.len() + 60 + field.len() < 65_990 {
            msg.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        msg.resize(65_990 - field.len() - 2, b'a');
        msg.extend_from_slice(b"\r\n");
        msg.extend_from_slice(field);
        msg.extend_from_slice(b"\r\nbody\r\n");
        let pieces: Vec<&[u8]> = msg.chunks(1000).collect();
        assert_eq!(find_headers(pieces.iter().copied(), POOL_HEADER).len(), 1, "find_headers reads this far");
        for piece in [1, 1000, 4096, 65536, msg.len()] {
            let pieces: Vec<&[u8]> = msg.chunks(piece).collect();
            assert!(scan(&pieces), "pieces of {piece}");
        }
        // find_headers' farthest read: a first piece of 65,535 bytes stays under its 64 KiB cap,
        // so it takes one more 1 KiB step of the next piece: 66,559 bytes. A field ending there
        // is found, and so must the scan find it.
        let mut far = vec![b'a'; 65_535 - 2];
        far.extend_from_slice(b"\r\n");
        far.extend_from_slice(b"X-Filler: ");
        far.resize(66_559 - field.len() - 2, b'b');
        far.extend_from_slice(b"\r\n");
        far.extend_from_slice(field);
        far.extend_from_slice(b"\r\nbody\r\n");
        let pieces = [&far[..65_535], &far[65_535..]];
        assert_eq!(find_headers(pieces.iter().copied(), POOL_HEADER).len(), 1, "find_headers reads 66,559 bytes");
        assert!(scan(&pieces));
        // Past the limit, nothing is looked at: a field there is never found by find_headers.
        let mut long = vec![b'a'; SCAN_LIMIT];
        long.extend_from_slice(b"\r\nX-Ringpost-Pool: late\r\n\r\n");
        assert!(!scan(&[&long]));
        assert!(find_headers(std::iter::once(&long[..]), POOL_HEADER).is_empty());
    }

    #[test]
    fn agrees_with_find_headers_wherever_that_finds_the_header() {
        // Every message find_headers finds a pool header in must be "may carry".
        let cases: [&[u8]; 5] = [
            b"X-Ringpost-Pool: a\r\n\r\n",
            b"Subject: s\r\nx-ringpost-pool:\r\n b\r\n\r\nbody",
            b"A: 1\r\nB: 2\r\nX-RINGPOST-POOL: c\r\n",
            b"X-Ringpost-Pool: a\r\nX-Ringpost-Pool: b\r\n\r\n",
            b"Subject: s\r\n\r\nX-Ringpost-Pool: body-only\r\n",
        ];
        for c in cases {
            let found = !find_headers(std::iter::once(c), POOL_HEADER).is_empty();
            assert!(!found || scan(&[c]), "{:?}", String::from_utf8_lossy(c));
        }
    }
}
