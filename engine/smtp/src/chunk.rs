//! The BDAT body normaliser (RFC 3030): turns the raw octets of BDAT chunks into the wire form
//! the spool keeps for every message (the form a DATA body arrives in), so relaying stays a
//! straight write of stored bytes whichever way a message came in.
//!
//! BDAT data is not dot-stuffed and has no end marker; its length is given up front, so no
//! byte inside it can end the message early and a bare CR or LF is no smuggling risk here.
//! But the stored body may be sent on with DATA (to a server without CHUNKING, or when larger
//! than `bdat_max_octets`; a BDAT relay cuts the stuffing dots out again with
//! [`crate::data::unstuffed`]), so it must be: dot-stuffed (a dot that starts
//! a line gets a second one), CRLF-only (a bare LF becomes CRLF, a bare CR becomes CRLF; what
//! line ends a client puts in its message is its business, but a bare LF must not reach the
//! next hop as a possible `<LF>.<CRLF>` terminator), and ended by CRLF (a missing final line
//! end is added; RFC 6376 3.4 canonicalisation adds it too, so DKIM hashes do not change).
//!
//! Like [`crate::data::DataScanner`] it never copies: each call names bytes to insert
//! (a `&'static` prefix) and how many input bytes follow verbatim, and it counts the octets
//! the sender meant (stuffing dots excluded, inserted line ends included) so
//! `max_message_size` and the 1000-octet text line limit apply as they do to DATA.
use super::data::MAX_TEXT_LINE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// At the start of a line (also the start of the body).
    LineStart,
    /// Inside a line.
    Mid,
    /// Right after a CR: a LF completes the line end, anything else makes it a bare CR.
    Cr,
}

/// One piece of normalised body: `prefix`, then the first `body` bytes of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Bytes to insert before the input's bytes.
    pub prefix: &'static [u8],
    /// Input bytes that follow verbatim (at least one when the input was not empty).
    pub body: usize,
}

/// Streaming normaliser over all the chunks of one BDAT message.
#[derive(Debug, Clone)]
pub struct ChunkNormaliser {
    st: St,
    line_len: usize,
    /// Body octets as the sender meant them, after normalisation (stuffing dots excluded).
    pub unstuffed_len: u64,
    /// A text line exceeded [`MAX_TEXT_LINE`].
    pub long_line: bool,
    /// A byte with the high bit set was seen.
    pub eight_bit: bool,
}

impl Default for ChunkNormaliser {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkNormaliser {
    /// A normaliser at the start of a message.
    pub fn new() -> Self {
        Self { st: St::LineStart, line_len: 0, unstuffed_len: 0, long_line: false, eight_bit: false }
    }

    /// What must go before byte `b` in the current state (empty when nothing).
    fn insertion(&self, b: u8) -> &'static [u8] {
        match (self.st, b) {
            (St::Cr, b'\n') => b"",
            (St::Cr, b'.') => b"\n.",
            (St::Cr, _) => b"\n",
            (St::LineStart, b'.') => b".",
            (_, b'\n') => b"\r",
            _ => b"",
        }
    }

    /// Count the octets `bytes` (inserted or from the input) as the sender meant them.
    fn take(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.eight_bit |= b >= 0x80;
            self.line_len += 1;
            self.unstuffed_len += 1;
            self.st = match b {
                b'\r' => St::Cr,
                b'\n' => {
                    if self.line_len > MAX_TEXT_LINE {
                        self.long_line = true;
                    }
                    self.line_len = 0;
                    St::LineStart
                }
                _ => St::Mid,
            };
        }
    }

    /// The next piece of `input` (which must not be empty): what to insert before it and how
    /// many of its bytes follow unchanged, up to the next byte that needs an insertion.
    pub fn next(&mut self, input: &[u8]) -> Piece {
        let prefix = self.insertion(input[0]);
        // A stuffing dot is wire form only: count the inserted line end, not the dot.
        self.take(prefix.strip_suffix(b".").unwrap_or(prefix));
        self.take(&input[..1]);
        let mut n = 1;
        while n < input.len() && self.insertion(input[n]).is_empty() {
            self.take(&input[n..n + 1]);
            n += 1;
        }
        Piece { prefix, body: n }
    }

    /// The message ended: what to append so the body ends with CRLF (nothing for an empty
    /// body or one that already does).
    pub fn finish(&mut self) -> &'static [u8] {
        let suffix: &'static [u8] = match self.st {
            St::LineStart => b"",
            St::Cr => b"\n",
            St::Mid => b"\r\n",
        };
        self.take(suffix);
        suffix
    }
}

/// Normalise a whole message given as `chunks` (tests and tools): the bytes the spool gets.
pub fn normalise(chunks: &[&[u8]]) -> (Vec<u8>, ChunkNormaliser) {
    let mut n = ChunkNormaliser::new();
    let mut out = Vec::new();
    for chunk in chunks {
        let mut rest = *chunk;
        while !rest.is_empty() {
            let p = n.next(rest);
            out.extend_from_slice(p.prefix);
            out.extend_from_slice(&rest[..p.body]);
            rest = &rest[p.body..];
        }
    }
    out.extend_from_slice(n.finish());
    (out, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::DataScanner;

    /// The wire form must be what a DATA body of the same text looks like: the DATA scanner
    /// takes it (with the terminator) as exactly that body, without a flag.
    fn assert_data_clean(wire: &[u8]) {
        let mut with_end = wire.to_vec();
        with_end.extend_from_slice(b".\r\n");
        let mut s = DataScanner::new();
        let f = s.feed(&with_end);
        assert!(f.done && f.consumed == with_end.len(), "{:?} ends early or not at all", String::from_utf8_lossy(wire));
        assert_eq!(f.body, wire.len());
        assert!(!s.bare_newline, "{:?}", String::from_utf8_lossy(wire));
    }

    #[test]
    fn plain_crlf_text_passes_unchanged_in_one_piece() {
        let text = b"Subject: x\r\n\r\nhello\r\n";
        let mut n = ChunkNormaliser::new();
        assert_eq!(n.next(text), Piece { prefix: b"", body: text.len() });
        assert_eq!(n.finish(), b"");
        assert_eq!(n.unstuffed_len, text.len() as u64);
    }

    #[test]
    fn dots_at_line_start_are_stuffed_and_not_counted() {
        let (w, n) = normalise(&[b".first\r\n.\r\nmid.dle\r\n..two\r\n"]);
        assert_eq!(w, b"..first\r\n..\r\nmid.dle\r\n...two\r\n");
        assert_eq!(n.unstuffed_len, 27, "the sender's octets: stuffing dots are not counted");
        assert_data_clean(&w);
    }

    #[test]
    fn bare_line_ends_become_crlf_and_a_final_crlf_is_added() {
        let cases: [(&[u8], &[u8]); 8] = [
            (b"a\nb\n", b"a\r\nb\r\n"),
            (b"a\rb", b"a\r\nb\r\n"),
            (b"a\n.\r\n", b"a\r\n..\r\n"),
            (b"a\r.\rQUIT\r\n", b"a\r\n..\r\nQUIT\r\n"),
            (b"\n\n", b"\r\n\r\n"),
            (b"\r\r\n", b"\r\n\r\n"),
            (b"no end", b"no end\r\n"),
            (b"", b""),
        ];
        for (raw, want) in cases {
            let (w, n) = normalise(&[raw]);
            assert_eq!(w, want, "{:?}", String::from_utf8_lossy(raw));
            assert_eq!(
                n.unstuffed_len,
                want.len() as u64 - want.windows(3).filter(|w| w == b"\n..").count() as u64 - u64::from(want.starts_with(b".."))
            );
            assert_data_clean(&w);
        }
    }

    #[test]
    fn chunk_boundaries_change_nothing() {
        let raw: &[u8] = b".a\r\n.\rb\nc\r\r\n..d\ne\r";
        let (whole, _) = normalise(&[raw]);
        assert_eq!(whole, b"..a\r\n..\r\nb\r\nc\r\n\r\n...d\r\ne\r\n");
        for cut1 in 0..=raw.len() {
            for cut2 in cut1..=raw.len() {
                let (w, _) = normalise(&[&raw[..cut1], &raw[cut1..cut2], &raw[cut2..]]);
                assert_eq!(w, whole, "cuts {cut1},{cut2}");
            }
        }
    }

    #[test]
    fn long_lines_and_eight_bit_are_noticed() {
        let mut ok = vec![b'a'; 998];
        ok.extend_from_slice(b"\r\n");
        assert!(!normalise(&[&ok]).1.long_line, "998 + CRLF = 1000 octets is allowed");
        // A bare LF becomes CRLF: 999 + LF is 1001 octets once normalised.
        let mut long = vec![b'a'; 999];
        long.push(b'\n');
        assert!(normalise(&[&long]).1.long_line);
        // A last line without its line end counts the CRLF added for it.
        assert!(normalise(&[&[b'a'; 999]]).1.long_line);
        assert!(normalise(&["caf\u{e9}".as_bytes()]).1.eight_bit);
        assert!(!normalise(&[b"cafe"]).1.eight_bit);
    }
}
