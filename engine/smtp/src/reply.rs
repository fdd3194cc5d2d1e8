//! SMTP replies: a basic code, an RFC 3463 enhanced status and text, formatted on the wire.
//! Every reply the server sends is built here so codes and enhanced codes stay consistent.
//!
//! Client text quoted in a reply goes through [`echo`] (printable ASCII, bounded), and the wire
//! form never carries a control character or a line over [`MAX_REPLY_LINE`] octets whatever a
//! caller put in the text: a reply is a CRLF line of printable text (RFC 5321 4.2, 4.5.3.1.5),
//! and a CR or LF copied from the client would let it forge reply lines.
use std::borrow::Cow;

/// Longest reply line on the wire, CRLF included (RFC 5321 4.5.3.1.5).
pub const MAX_REPLY_LINE: usize = 512;

/// What [`echo`] puts where it cut the client's text.
const CUT_MARK: &str = "...";

/// Client text made safe to quote in a reply: every character outside printable ASCII becomes
/// `?` (control bytes would break the reply line; UTF-8 is only for SMTPUTF8 sessions and not
/// worth a second path), and text over `max` characters is cut, ending in `...`, so a quoted
/// parameter or address can never push the line past [`MAX_REPLY_LINE`].
pub fn echo(text: &str, max: usize) -> String {
    let printable = |c: char| if (' '..='~').contains(&c) { c } else { '?' };
    if text.chars().count() <= max {
        return text.chars().map(printable).collect();
    }
    let keep = max.saturating_sub(CUT_MARK.len());
    let mut out: String = text.chars().take(keep).map(printable).collect();
    out.push_str(CUT_MARK);
    out
}

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code.
    pub code: u16,
    /// Enhanced status code `class.subject.detail`, when one applies.
    pub enhanced: Option<(u8, u16, u16)>,
    /// Text lines (at least one).
    pub lines: Vec<Cow<'static, str>>,
}

impl Reply {
    /// A single-line reply with an enhanced status code.
    pub fn new(code: u16, enhanced: (u8, u16, u16), text: impl Into<Cow<'static, str>>) -> Self {
        Self { code, enhanced: Some(enhanced), lines: vec![text.into()] }
    }

    /// A reply without enhanced code (greeting, EHLO, 354).
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Self {
        Self { code, enhanced: None, lines: vec![text.into()] }
    }

    /// True for 4xx and 5xx.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Append the wire form (CRLF-terminated lines, `-` continuation) to `out`. Last line of
    /// defence for text that did not go through [`echo`]: a control character in a line is sent
    /// as `?` and a line is cut to fit [`MAX_REPLY_LINE`] octets.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let start = out.len();
            out.extend_from_slice(itoa3(self.code).as_bytes());
            out.push(if i == last { b' ' } else { b'-' });
            if let Some((c, s, d)) = self.enhanced {
                out.extend_from_slice(format!("{c}.{s}.{d} ").as_bytes());
            }
            let room = MAX_REPLY_LINE.saturating_sub(out.len() - start + 2);
            push_text(out, line, room);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a string (tests, logs).
    pub fn to_wire(&self) -> String {
        let mut v = Vec::new();
        self.write_to(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// Append at most `room` octets of `text`, cut at a character boundary, control characters as
/// `?`. The common case (short, clean text) is one copy.
fn push_text(out: &mut Vec<u8>, text: &str, room: usize) {
    if text.len() <= room && !text.chars().any(char::is_control) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    let mut used = 0;
    for c in text.chars() {
        let c = if c.is_control() { '?' } else { c };
        if used + c.len_utf8() > room {
            break;
        }
        used += c.len_utf8();
        let mut buf = [0; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
}

fn itoa3(code: u16) -> String {
    format!("{code:03}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_keeps_printable_ascii_and_bounds_the_rest() {
        assert_eq!(echo("BODY=FOO", 64), "BODY=FOO");
        assert_eq!(echo("X\rY\0Z\u{85}\u{2028}é", 64), "X?Y?Z???");
        assert_eq!(echo(&"x".repeat(64), 64), "x".repeat(64), "exactly max is not cut");
        let cut = echo(&"x".repeat(65), 64);
        assert_eq!(cut, format!("{}...", "x".repeat(61)));
        assert_eq!(cut.len(), 64);
        // Multi-byte characters count once and come out as one `?` each.
        assert_eq!(echo(&"é".repeat(100), 10), "???????...");
    }

    #[test]
    fn wire_form_never_carries_control_bytes_or_overlong_lines() {
        // Text that skipped echo(): the wire form still holds one CRLF line per text line.
        let r = Reply { code: 555, enhanced: Some((5, 5, 4)), lines: vec!["a\rb\nc\0d\u{85}e".into(), "x".repeat(600).into()] };
        let w = r.to_wire();
        assert_eq!(w.split("\r\n").next(), Some("555-5.5.4 a?b?c?d?e"));
        let second = w.split("\r\n").nth(1).unwrap();
        assert_eq!(second.len() + 2, MAX_REPLY_LINE, "cut to exactly 512 octets with its CRLF");
        assert_eq!(second, format!("555 5.5.4 {}", "x".repeat(MAX_REPLY_LINE - 12)));
        assert_eq!(w.matches("\r\n").count(), 2);
        assert_eq!(w.bytes().filter(|&b| b == b'\r' || b == b'\n').count(), 4);
        // A cut never splits a UTF-8 character.
        let r = Reply::plain(250, "é".repeat(300));
        let line = r.to_wire();
        assert!(line.len() <= MAX_REPLY_LINE, "{}", line.len());
        assert_eq!(line, format!("250 {}\r\n", "é".repeat(253)));
        // Clean text is sent as it is.
        assert_eq!(Reply::new(250, (2, 0, 0), "Ok").to_wire(), "250 2.0.0 Ok\r\n");
    }
}
