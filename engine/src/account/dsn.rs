//! Delivery status notifications (RFC 3464), built as a wire-form body ready for the spool.
//!
//! One DSN per message, listing every failed recipient, from the null sender, never for a
//! message whose own sender is null (RFC 5321 6.1). Remote text is flattened to one line so a
//! hostile server cannot inject headers into the report, bounded ([`MAX_REMOTE_TEXT`]) and
//! folded at its spaces (RFC 5322 2.2.3; RFC 3464 2.1.2 lets DSN fields fold like headers).
//! Every line of the DSN, the quoted original headers included, fits [`MAX_LINE`] octets, so
//! any server, ringpost's own included, takes it (RFC 5322 2.1.1, RFC 5321 4.5.3.1.6).
use crate::account::bounce_class::BounceCategory;
use crate::clock::rfc5322;
pub use crate::smtp::data::dot_stuff;

/// Longest line of a DSN, CRLF and stuffing dot excluded (RFC 5322 2.1.1).
pub const MAX_LINE: usize = 998;

/// Folded fields aim at lines this long where the words allow (RFC 5322 2.1.1's SHOULD).
const FOLD_WIDTH: usize = 78;

/// Most octets of remote text (a diagnostic, a remote host name) kept per field: a remote
/// reply may be 64 KiB, and a DSN listing a hundred recipients must stay a small message.
pub const MAX_REMOTE_TEXT: usize = 2000;

/// Longest MIME boundary (RFC 2046 5.1.1).
const MAX_BOUNDARY: usize = 70;

/// What ends text that was cut.
const CUT_MARK: &str = "...";

/// One failed recipient.
#[derive(Debug, Clone)]
pub struct FailedRecipient {
    /// The address.
    pub recipient: String,
    /// RFC 3463 status, e.g. `5.1.1`.
    pub status: String,
    /// Remote host, when one answered.
    pub remote: Option<String>,
    /// The SMTP reply or local reason.
    pub diagnostic: String,
    /// True when the lifetime ran out rather than a permanent refusal.
    pub expired: bool,
    /// Its bounce category (`message-expired` when `expired`).
    pub category: BounceCategory,
}

/// What a DSN needs to know about the original message.
pub struct Original<'a> {
    /// Queue id.
    pub id: &'a str,
    /// Envelope sender (the DSN's recipient).
    pub sender: &'a str,
    /// Reception time (Unix ms).
    pub received_ms: u64,
    /// The original header block in wire form.
    pub headers: &'a [u8],
}

fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// `s` cut to at most `max` octets at a character boundary, ending in `...` when cut.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub(CUT_MARK.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// [`cut`], with the mark appended when it cut.
fn bounded(s: &str, max: usize) -> String {
    let kept = cut(s, max);
    if kept.len() == s.len() {
        kept.to_string()
    } else {
        format!("{kept}{CUT_MARK}")
    }
}

/// Append one unfolded line (our own fields and addresses, which parse_mailbox bounds), cut to
/// [`MAX_LINE`] should it ever be longer.
fn push_line(t: &mut String, line: &str) {
    t.push_str(&bounded(&one_line(line), MAX_LINE));
    t.push_str("\r\n");
}

/// Append `head` (short, ours) and the words of remote `text` as one field: control characters
/// and runs of white space become one space, the text is bounded to [`MAX_REMOTE_TEXT`], and
/// lines are folded before a space once past [`FOLD_WIDTH`], so unfolding gives the flattened
/// text back. A word too long for a line of its own is cut to fit [`MAX_LINE`], with `...`.
fn push_field(t: &mut String, head: &str, text: &str) {
    let flat = one_line(text).split_whitespace().collect::<Vec<_>>().join(" ");
    let flat = bounded(&flat, MAX_REMOTE_TEXT);
    t.push_str(head);
    let mut len = head.len();
    for (i, word) in flat.split(' ').filter(|w| !w.is_empty()).enumerate() {
        if i > 0 && len + 1 + word.len() > FOLD_WIDTH {
            t.push_str("\r\n");
            len = 0;
        }
        let word = bounded(word, MAX_LINE.saturating_sub(len + 1));
        t.push(' ');
        t.push_str(&word);
        len += 1 + word.len();
    }
    t.push_str("\r\n");
}

/// The MIME boundary: unique per DSN (queue id, time), of boundary characters only and at most
/// 70 of them whatever the host name (RFC 2046 5.1.1).
fn boundary(id: &str, now_ms: u64, hostname: &str) -> String {
    let bchar = |c: &char| c.is_ascii_alphanumeric() || "'()+_,-./:=?".contains(*c);
    format!("{id}.{now_ms}/{hostname}").chars().filter(bchar).take(MAX_BOUNDARY).collect()
}

/// The original header block, already in wire form (stuffed as received), quoted line by line:
/// every line ends in CRLF, a stray CR inside a line becomes a space, and a line over
/// [`MAX_LINE`] octets (not counting its stuffing dot) is cut with `...`. Anything our own
/// server accepted passes unchanged.
fn quote_headers(headers: &[u8], out: &mut Vec<u8>) {
    for line in headers.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let max = MAX_LINE + usize::from(line.first() == Some(&b'.'));
        let start = out.len();
        if line.len() <= max {
            out.extend_from_slice(line);
        } else {
            let mut end = max - CUT_MARK.len();
            // Keep a UTF-8 character whole: never cut before a continuation byte.
            while end > 0 && line[end] & 0xC0 == 0x80 {
                end -= 1;
            }
            out.extend_from_slice(&line[..end]);
            out.extend_from_slice(CUT_MARK.as_bytes());
        }
        out[start..].iter_mut().filter(|b| **b == b'\r').for_each(|b| *b = b' ');
        if &out[start..] == b"." {
            // A lone dot would end the DSN's DATA; in wire form it can only mean "." stuffed.
            out.push(b'.');
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Build the DSN body (headers and MIME parts) in wire form: CRLF lines, dot-stuffed.
pub fn build(hostname: &str, now_ms: u64, orig: &Original<'_>, failed: &[FailedRecipient]) -> Vec<u8> {
    let boundary = boundary(orig.id, now_ms, hostname);
    let mut t = String::new();
    t.push_str(&format!("From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"));
    push_line(&mut t, &format!("To: <{}>", orig.sender));
    t.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
    t.push_str(&format!("Date: {}\r\n", rfc5322(now_ms)));
    t.push_str(&format!("Message-ID: <{}.{}.dsn@{hostname}>\r\n", orig.id, now_ms));
    t.push_str("Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
    t.push_str(&format!("Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"));
    t.push_str("This is a MIME-encapsulated message.\r\n\r\n");
    t.push_str(&format!("--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"));
    t.push_str(&format!(
        "This is the mail system at host {hostname}.\r\n\r\nYour message could not be delivered to the following recipients:\r\n\r\n"
    ));
    for f in failed {
        push_field(&mut t, &format!("<{}>:", bounded(&one_line(&f.recipient), MAX_LINE / 2)), &f.diagnostic);
    }
    t.push_str(&format!("\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"));
    t.push_str(&format!("Reporting-MTA: dns; {hostname}\r\nX-Ringpost-Queue-ID: {}\r\n", orig.id));
    t.push_str(&format!("Arrival-Date: {}\r\n", rfc5322(orig.received_ms)));
    for f in failed {
        push_recipient_fields(&mut t, f, now_ms);
    }
    t.push_str(&format!("\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"));
    let mut out = dot_stuff(t.as_bytes());
    quote_headers(orig.headers, &mut out);
    out.extend_from_slice(dot_stuff(format!("\r\n--{boundary}--\r\n").as_bytes()).as_slice());
    out
}

/// The per-recipient fields of the delivery-status part (RFC 3464 2.3).
fn push_recipient_fields(t: &mut String, f: &FailedRecipient, now_ms: u64) {
    t.push_str("\r\n");
    push_line(t, &format!("Final-Recipient: rfc822; {}", f.recipient));
    t.push_str("Action: failed\r\n");
    push_line(t, &format!("Status: {}", f.status));
    if let Some(r) = &f.remote {
        push_field(t, "Remote-MTA: dns;", r);
    }
    let kind = if f.remote.is_some() { "smtp" } else { "x-local" };
    push_field(t, &format!("Diagnostic-Code: {kind};"), &f.diagnostic);
    // An extension field (RFC 3464 2.4): the category senders act on, e.g. to suppress.
    push_line(t, &format!("X-Ringpost-Bounce-Category: {}", f.category.as_str()));
    if f.expired {
        t.push_str(&format!("Will-Retry-Until: {}\r\n", rfc5322(now_ms)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_lists_every_failed_recipient_and_is_wire_safe() {
        let failed = vec![
            FailedRecipient {
                recipient: "a@x.test".into(),
                status: "5.1.1".into(),
                remote: Some("127.0.0.1:25".into()),
                diagnostic: "550 5.1.1 no\r\nInjected: yes".into(),
                expired: false,
                category: BounceCategory::BadMailbox,
            },
            FailedRecipient {
                recipient: "b@y.test".into(),
                status: "4.4.7".into(),
                remote: None,
                diagnostic: "lifetime exceeded".into(),
                expired: true,
                category: BounceCategory::MessageExpired,
            },
        ];
        let orig = Original { id: "ID1", sender: "s@z.test", received_ms: 0, headers: b"Subject: hi\r\n..dot\r\n" };
        let b = build("mta.test", 1000, &orig, &failed);
        let s = String::from_utf8(b).unwrap();
        assert!(s.contains("Final-Recipient: rfc822; a@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"));
        assert!(s.contains("Final-Recipient: rfc822; b@y.test"));
        assert!(s.contains("X-Ringpost-Bounce-Category: bad-mailbox\r\n") && s.contains("X-Ringpost-Bounce-Category: message-expired\r\n"));
        assert!(s.contains("report-type=delivery-status"));
        assert!(!s.contains("\r\nInjected: yes"), "remote text must not become a header");
        assert!(s.contains("Subject: hi\r\n..dot\r\n"));
        assert!(s.ends_with("--\r\n"));
        assert!(s.lines().all(|l| l.len() < 1000));
    }

    fn failed(diagnostic: String, remote: Option<String>) -> FailedRecipient {
        FailedRecipient {
            recipient: "r@x.test".into(),
            status: "5.1.1".into(),
            remote,
            diagnostic,
            expired: false,
            category: BounceCategory::BadMailbox,
        }
    }

    fn dsn(headers: &[u8], failed: &[FailedRecipient]) -> Vec<u8> {
        let orig = Original { id: "ID1", sender: "s@z.test", received_ms: 0, headers };
        let b = build("mta.test", 1000, &orig, failed);
        assert_wire_lines_fit(&b);
        b
    }

    /// CRLF-only, and every line within MAX_LINE octets once its stuffing dot is removed.
    fn assert_wire_lines_fit(b: &[u8]) {
        for line in b.split_inclusive(|&c| c == b'\n') {
            let line = line.strip_suffix(b"\r\n").expect("a line without CRLF");
            assert!(!line.contains(&b'\r'), "bare CR");
            assert_ne!(line, b".", "lone dot");
            let text = line.strip_prefix(b".").unwrap_or(line);
            assert!(text.len() <= MAX_LINE, "line of {} octets: {:?}", text.len(), String::from_utf8_lossy(&text[..60]));
        }
    }

    /// The lines of `field` in `s`, its continuation lines included.
    fn field_lines<'a>(s: &'a str, field: &str) -> Vec<&'a str> {
        let at = s.find(field).unwrap_or_else(|| panic!("{field} missing"));
        let mut lines = s[at..].split("\r\n");
        let first = lines.next().unwrap();
        std::iter::once(first).chain(lines.take_while(|l| l.starts_with(' '))).collect()
    }

    #[test]
    fn an_unbreakable_remote_diagnostic_is_cut_to_fit_a_line() {
        // The fuzzer's input: a 1200-octet remote reply without a space in it.
        let diag = format!("550 {}", "x".repeat(1200));
        let s = String::from_utf8(dsn(b"Subject: hi\r\n", &[failed(diag, Some("mx.x.test".into()))])).unwrap();
        let code = field_lines(&s, "Diagnostic-Code:");
        assert_eq!(code.len(), 2, "{code:?}");
        assert_eq!(code[0], "Diagnostic-Code: smtp; 550");
        assert_eq!(code[1], format!(" {}...", "x".repeat(MAX_LINE - 4)));
        assert_eq!(code[1].len(), MAX_LINE);
        let text = field_lines(&s, "<r@x.test>:");
        assert_eq!(text, ["<r@x.test>: 550", code[1]]);
        assert_eq!(s.matches("Diagnostic-Code:").count(), 1);
    }

    #[test]
    fn a_long_remote_diagnostic_is_folded_at_its_spaces_and_unfolds_to_the_flattened_text() {
        // Multi-line remote reply as dispatch flattens it, with odd white space and a C1 control.
        let words: Vec<String> = (0..150).map(|i| format!("w{i:03}")).collect();
        let diag = format!("550-5.1.1 {}\t\r\n550 5.1.1  end\u{85}here", words.join(" "));
        let s = String::from_utf8(dsn(b"", &[failed(diag, Some("mx.x.test".into()))])).unwrap();
        let code = field_lines(&s, "Diagnostic-Code:");
        assert!(code.len() > 1, "folded: {code:?}");
        assert!(code.iter().all(|l| l.len() <= FOLD_WIDTH), "{code:?}");
        let unfolded = code.concat();
        assert_eq!(unfolded, format!("Diagnostic-Code: smtp; 550-5.1.1 {} 550 5.1.1 end here", words.join(" ")));
        assert_eq!(s.matches("\r\nDiagnostic-Code:").count(), 1);
        assert!(!s.contains('\u{85}'));
    }

    #[test]
    fn remote_text_is_bounded() {
        // A 64 KiB remote reply and a 3000-octet remote host name.
        let diag = "550 ".to_string() + &"abcdefg ".repeat(8 * 1024);
        let remote = "h".repeat(3000);
        let s = String::from_utf8(dsn(b"", &[failed(diag, Some(remote))])).unwrap();
        let unfolded = field_lines(&s, "Diagnostic-Code:").concat();
        assert_eq!(unfolded.len(), "Diagnostic-Code: smtp; ".len() + MAX_REMOTE_TEXT);
        assert!(unfolded.ends_with(" abcdefg a..."), "{}", &unfolded[unfolded.len() - 20..]);
        let mta = field_lines(&s, "Remote-MTA:");
        // The first word stays on the field's line, cut so the line is exactly MAX_LINE.
        assert_eq!(mta, [format!("Remote-MTA: dns; {}...", "h".repeat(MAX_LINE - 20))]);
        assert!(s.len() < 4 * MAX_REMOTE_TEXT + 3000, "DSN of {} octets", s.len());
    }

    #[test]
    fn quoted_original_headers_fit_lines_too() {
        let long = format!("X-Long: {}", "y".repeat(1500));
        let stuffed = format!(".{}", "z".repeat(MAX_LINE)); // 998 octets once unstuffed: fits
        let utf8 = format!("X-Utf8: {}", "é".repeat(600));
        let headers = format!("Subject: a\rb\r\n{long}\r\n{stuffed}\r\n{utf8}\r\n.\r\nX-Last: no CRLF");
        let b = dsn(headers.as_bytes(), &[failed("550 no".into(), None)]);
        let s = String::from_utf8(b).expect("a cut keeps UTF-8 whole");
        let quoted = s.split("text/rfc822-headers\r\n\r\n").nth(1).unwrap();
        let lines: Vec<&str> = quoted.split("\r\n").collect();
        assert_eq!(lines[0], "Subject: a b");
        assert_eq!(lines[1], format!("X-Long: {}...", "y".repeat(MAX_LINE - 8 - 3)));
        assert_eq!(lines[2], stuffed, "a line that fits is kept as it is");
        assert!(lines[3].ends_with("é...") && lines[3].len() <= MAX_LINE, "{}", lines[3].len());
        assert_eq!(lines[4], "..", "a lone dot stays stuffed");
        assert_eq!(lines[5], "X-Last: no CRLF");
        assert_eq!(lines[6], "");
        assert!(lines[7].starts_with("--") && lines[7].ends_with("--"));
    }

    #[test]
    fn the_boundary_fits_rfc_2046_whatever_the_host_name() {
        let host = format!("{}.example", "relay-".repeat(20));
        let orig = Original { id: "0000000000000000AB", sender: "s@z.test", received_ms: 0, headers: b"Subject: x\r\n" };
        let s = String::from_utf8(build(&host, 1_800_000_000_000, &orig, &[failed("550 no".into(), None)])).unwrap();
        let b = s.split("boundary=\"").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(b.len(), MAX_BOUNDARY);
        assert!(b.starts_with("0000000000000000AB.1800000000000/relay-"));
        assert_eq!(s.matches(&format!("\r\n--{b}\r\n")).count(), 3);
        assert!(s.ends_with(&format!("\r\n--{b}--\r\n")));
    }

    #[test]
    fn stuffing_doubles_leading_dots_only() {
        assert_eq!(dot_stuff(b".a\r\nb.c\r\n.\r\n"), b"..a\r\nb.c\r\n..\r\n");
    }
}
