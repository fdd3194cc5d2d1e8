//! The DATA scanner: finds `<CRLF>.<CRLF>` and judges the body while it streams through.
//!
//! The body is kept in wire form (dot-stuffed, CRLF) so relaying it is a straight write. The
//! scanner never copies: it tells the caller how much of each input is body. Only
//! `<CRLF>.<CRLF>` ends DATA; a bare CR or LF anywhere is remembered and the message refused
//! afterwards (SMTP smuggling, CVE-2023-51764/5/6), as are text lines over 1000 octets. The
//! unstuffed size is counted so `max_message_size` applies to what the sender meant.

/// Double a leading dot on every line (RFC 5321 4.5.2): plain CRLF text into wire form.
pub fn dot_stuff(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 8);
    let mut line_start = true;
    for &b in text {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    out
}

/// The message as the sender meant it, from its wire form split over `pieces`: the same
/// pieces with every stuffing dot (the first dot of a line) left out, and the total length.
/// It undoes [`dot_stuff`] exactly; this is what a DATA receiver keeps of the same bytes, and
/// what `BDAT` must carry (RFC 3030 2: chunks are not dot-stuffed). Nothing is copied: a
/// piece is cut around each dot, so the body is still written straight from the spool.
/// The spool's wire form has CRLF line ends only (bare CR and LF are refused or normalised on
/// the way in), so a line starts after each LF; lines may straddle pieces.
pub fn unstuffed<'a>(pieces: &[&'a [u8]]) -> (Vec<&'a [u8]>, u64) {
    let mut out = Vec::with_capacity(pieces.len() + 1);
    let mut len = 0u64;
    let mut line_start = true;
    for &p in pieces {
        let mut from = 0;
        // Line starts in this piece: its first byte if the last piece ended a line, then
        // each byte after a LF.
        let starts = line_start.then_some(0).into_iter().chain(memchr::memchr_iter(b'\n', p).map(|i| i + 1));
        for at in starts {
            if p.get(at) == Some(&b'.') {
                out.extend((at > from).then(|| &p[from..at]));
                len += (at - from) as u64;
                from = at + 1;
            }
        }
        if from < p.len() {
            out.push(&p[from..]);
            len += (p.len() - from) as u64;
        }
        line_start = p.last().map_or(line_start, |&b| b == b'\n');
    }
    (out, len)
}

/// Longest text line allowed, CRLF included, stuffing dot excluded (RFC 5321 4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    LineStart,
    Dot,
    DotCr,
    Mid,
    Cr,
}

/// What one call to [`DataScanner::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feed {
    /// Bytes held back by the previous call that turned out to be body: emit them first.
    pub prefix: &'static [u8],
    /// Body bytes at the start of the input (after `prefix`).
    pub body: usize,
    /// Input bytes consumed (body, held-back bytes and the terminator).
    pub consumed: usize,
    /// The terminator was found; bytes after `consumed` belong to the next command.
    pub done: bool,
}

/// Streaming end-of-data detector and body checker.
#[derive(Debug, Clone)]
pub struct DataScanner {
    st: St,
    line_len: usize,
    /// Body bytes as the sender meant them (stuffing dots removed).
    pub unstuffed_len: u64,
    /// A bare CR or LF was seen.
    pub bare_newline: bool,
    /// A text line exceeded [`MAX_TEXT_LINE`].
    pub long_line: bool,
    /// A byte with the high bit set was seen.
    pub eight_bit: bool,
}

impl Default for DataScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl DataScanner {
    /// A scanner positioned at the start of the body (right after `354`).
    pub fn new() -> Self {
        Self { st: St::LineStart, line_len: 0, unstuffed_len: 0, bare_newline: false, long_line: false, eight_bit: false }
    }

    fn end_line(&mut self) {
        if self.line_len > MAX_TEXT_LINE {
            self.long_line = true;
        }
        self.line_len = 0;
    }

    /// Count one unstuffed body byte of the current line.
    fn count(&mut self, n: usize) {
        self.line_len += n;
        self.unstuffed_len += n as u64;
    }

    /// Scan `input`. Bytes that might start the terminator (`.` or `.\r` at a line start) at
    /// the very end of the input are consumed but held back until the next call decides.
    pub fn feed(&mut self, input: &[u8]) -> Feed {
        let prefix: &'static [u8] = match self.st {
            St::Dot => b".",
            St::DotCr => b".\r",
            _ => b"",
        };
        // Positions are in the virtual stream `prefix ++ input`; `cand` is where a possible
        // terminator line (a dot at line start) begins.
        let mut cand = if prefix.is_empty() { None } else { Some(0) };
        for (i, &b) in input.iter().enumerate() {
            let v = prefix.len() + i;
            self.eight_bit |= b >= 0x80;
            self.st = match (self.st, b) {
                (St::DotCr, b'\n') => {
                    let body_v = cand.expect("terminator without a candidate start");
                    self.st = St::LineStart;
                    return Feed {
                        prefix: if body_v >= prefix.len() { prefix } else { b"" },
                        body: body_v.saturating_sub(prefix.len()),
                        consumed: i + 1,
                        done: true,
                    };
                }
                (St::LineStart, b'.') => {
                    cand = Some(v);
                    St::Dot
                }
                (St::Dot, b'\r') => St::DotCr,
                (St::Dot | St::DotCr, _) => {
                    // Not the terminator: the dot was stuffing; a CR after it was bare.
                    cand = None;
                    if self.st == St::DotCr {
                        self.bare_newline = true;
                        self.count(1);
                    }
                    self.count(1);
                    self.after_byte(b)
                }
                (St::Cr, b'\n') => {
                    self.count(1);
                    self.end_line();
                    St::LineStart
                }
                (St::Cr, _) => {
                    self.bare_newline = true;
                    self.count(1);
                    self.after_byte(b)
                }
                (_, _) => {
                    self.count(1);
                    self.after_byte(b)
                }
            };
        }
        let body_v = cand.unwrap_or(prefix.len() + input.len());
        Feed {
            prefix: if body_v >= prefix.len() { prefix } else { b"" },
            body: body_v.saturating_sub(prefix.len()),
            consumed: input.len(),
            done: false,
        }
    }

    /// State after an ordinary body byte `b` (already counted).
    fn after_byte(&mut self, b: u8) -> St {
        match b {
            b'\r' => St::Cr,
            b'\n' => {
                // LF without CR before it. It ends the line for the length count, but it is not
                // a line end SMTP knows: a dot after it is no terminator (`<LF>.<CRLF>` was the
                // CVE-2023-51764 smuggling sequence).
                self.bare_newline = true;
                self.end_line();
                St::Mid
            }
            _ => St::Mid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `chunks` one after another; return (body bytes emitted, consumed total, done).
    fn run(chunks: &[&[u8]]) -> (Vec<u8>, usize, bool, DataScanner) {
        let mut s = DataScanner::new();
        let mut body = Vec::new();
        let mut consumed = 0;
        for c in chunks {
            let f = s.feed(c);
            body.extend_from_slice(f.prefix);
            body.extend_from_slice(&c[..f.body]);
            consumed += f.consumed;
            if f.done {
                return (body, consumed, true, s);
            }
        }
        (body, consumed, false, s)
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf_and_keeps_wire_form() {
        let (b, n, done, s) = run(&[b"Subject: x\r\n\r\n..stuffed\r\nend\r\n.\r\nQUIT\r\n"]);
        assert!(done);
        assert_eq!(b, b"Subject: x\r\n\r\n..stuffed\r\nend\r\n");
        assert_eq!(n, b"Subject: x\r\n\r\n..stuffed\r\nend\r\n.\r\n".len());
        assert!(!s.bare_newline && !s.long_line);
        assert_eq!(s.unstuffed_len, b.len() as u64 - 1, "one stuffing dot removed from the count");
    }

    /// The pieces joined, after [`unstuffed`], checking the length it gives.
    fn unstuff_joined(pieces: &[&[u8]]) -> Vec<u8> {
        let (out, len) = unstuffed(pieces);
        assert!(out.iter().all(|p| !p.is_empty()), "no empty piece is written");
        let joined = out.concat();
        assert_eq!(joined.len() as u64, len);
        joined
    }

    #[test]
    fn unstuffing_removes_exactly_the_first_dot_of_each_line_across_pieces() {
        let wire: &[u8] = b"..a\r\nb.c\r\n..\r\n...x\r\n\r\n.y\r\n";
        assert_eq!(unstuff_joined(&[wire]), b".a\r\nb.c\r\n.\r\n..x\r\n\r\ny\r\n");
        // Every way of cutting it in two or three gives the same bytes (a line start at a
        // piece's first byte, a CR and its LF apart, a stuffing dot alone in a piece).
        for i in 0..=wire.len() {
            for j in i..=wire.len() {
                assert_eq!(unstuff_joined(&[&wire[..i], &wire[i..j], &wire[j..]]), unstuff_joined(&[wire]), "cut at {i} and {j}");
            }
        }
        assert_eq!(unstuff_joined(&[]), b"");
        assert_eq!(unstuff_joined(&[b"", b"."]), b"", "a dot at the very start, after an empty piece");
    }

    #[test]
    fn unstuffing_undoes_stuffing() {
        // A small generator (xorshift) over an alphabet rich in dots and line ends.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut text = Vec::new();
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                text.extend_from_slice([&b"."[..], b"\r\n", b"a", b".\r\n", b"\r\n."][(x % 5) as usize]);
            }
            let wire = dot_stuff(&text);
            let cut = (x as usize >> 8) % (wire.len() + 1);
            assert_eq!(unstuff_joined(&[&wire[..cut], &wire[cut..]]), text, "{:?}", String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn empty_body_and_stuffed_first_line() {
        let (b, n, done, s) = run(&[b".\r\n"]);
        assert!(done && b.is_empty() && n == 3 && s.unstuffed_len == 0);
        let (b, _, done, s) = run(&[b"..\r\n.\r\n"]);
        assert!(done);
        assert_eq!(b, b"..\r\n");
        assert_eq!(s.unstuffed_len, 3);
    }

    #[test]
    fn terminator_split_across_every_boundary() {
        let msg: &[u8] = b"a\r\n.b\r\n.\r\n";
        for cut1 in 0..msg.len() {
            for cut2 in cut1..msg.len() {
                let (b, n, done, _) = run(&[&msg[..cut1], &msg[cut1..cut2], &msg[cut2..]]);
                assert!(done, "cuts {cut1},{cut2}");
                assert_eq!(n, msg.len());
                assert_eq!(b, b"a\r\n.b\r\n", "cuts {cut1},{cut2}");
            }
        }
    }

    #[test]
    fn smuggling_sequences_never_end_data_and_are_flagged() {
        for evil in [&b"x\n.\nMAIL FROM:<a@b>\r\n"[..], b"x\n.\r\nRCPT\r\n", b"x\r\n.\nDATA\r\n", b"x\r.\rQUIT\r\n", b"x\r\n.\r\r\n"] {
            let (_, _, done, s) = run(&[evil]);
            assert!(!done, "{evil:?} must not end DATA");
            assert!(s.bare_newline, "{evil:?} must be flagged");
        }
        // The real terminator after smuggled bytes still ends it, with the flag kept.
        let (_, _, done, s) = run(&[b"x\n.\nMAIL\r\n.\r\n"]);
        assert!(done && s.bare_newline);
    }

    #[test]
    fn line_length_limit_counts_unstuffed_octets_with_crlf() {
        let mut ok = vec![b'.'];
        ok.extend(std::iter::repeat_n(b'a', 998));
        ok.extend_from_slice(b"\r\n.\r\n");
        let (_, _, done, s) = run(&[&ok]);
        assert!(done && !s.long_line, "998 + CRLF = 1000 octets is allowed");
        let mut long = vec![b'a'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        let (_, _, _, s) = run(&[&long]);
        assert!(s.long_line);
    }

    #[test]
    fn eight_bit_is_noticed() {
        let (_, _, _, s) = run(&["caf\u{e9}\r\n.\r\n".as_bytes()]);
        assert!(s.eight_bit && !s.bare_newline);
    }
}
