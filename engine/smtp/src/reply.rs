//! SMTP replies: a basic code, an RFC 3463 enhanced status and text, formatted on the wire.
//! Every reply the server sends is built here so codes and enhanced codes stay consistent.
use std::borrow::Cow;

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

    /// Append the wire form (CRLF-terminated lines, `-` continuation) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            out.extend_from_slice(itoa3(self.code).as_bytes());
            out.push(if i == last { b' ' } else { b'-' });
            if let Some((c, s, d)) = self.enhanced {
                out.extend_from_slice(format!("{c}.{s}.{d} ").as_bytes());
            }
            out.extend_from_slice(line.as_bytes());
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

fn itoa3(code: u16) -> String {
    format!("{code:03}")
}
