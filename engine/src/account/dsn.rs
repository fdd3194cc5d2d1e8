//! Delivery status notifications (RFC 3464), built as a wire-form body ready for the spool.
//!
//! One DSN per message, listing every failed recipient, from the null sender, never for a
//! message whose own sender is null (RFC 5321 6.1). Remote text is flattened to one line so a
//! hostile server cannot inject headers into the report.
use crate::clock::rfc5322;
pub use crate::smtp::data::dot_stuff;

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

/// Build the DSN body (headers and MIME parts) in wire form: CRLF lines, dot-stuffed.
pub fn build(hostname: &str, now_ms: u64, orig: &Original<'_>, failed: &[FailedRecipient]) -> Vec<u8> {
    let boundary = format!("{}.{}/{}", orig.id, now_ms, hostname);
    let mut t = String::new();
    t.push_str(&format!("From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"));
    t.push_str(&format!("To: <{}>\r\n", one_line(orig.sender)));
    t.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
    t.push_str(&format!("Date: {}\r\n", rfc5322(now_ms)));
    t.push_str(&format!("Message-ID: <{}.{}.dsn@{hostname}>\r\n", orig.id, now_ms));
    t.push_str("Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
    t.push_str(&format!("Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"));
    t.push_str("This is a MIME-encapsulated message.\r\n\r\n");
    t.push_str(&format!("--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"));
    t.push_str(&format!("This is the mail system at host {hostname}.\r\n\r\nYour message could not be delivered to the following recipients:\r\n\r\n"));
    for f in failed {
        t.push_str(&format!("<{}>: {}\r\n", one_line(&f.recipient), one_line(&f.diagnostic)));
    }
    t.push_str(&format!("\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"));
    t.push_str(&format!("Reporting-MTA: dns; {hostname}\r\nX-Ringpost-Queue-ID: {}\r\n", orig.id));
    t.push_str(&format!("Arrival-Date: {}\r\n", rfc5322(orig.received_ms)));
    for f in failed {
        t.push_str(&format!("\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n", one_line(&f.recipient), f.status));
        if let Some(r) = &f.remote {
            t.push_str(&format!("Remote-MTA: dns; {}\r\n", one_line(r)));
        }
        let kind = if f.remote.is_some() { "smtp" } else { "x-local" };
        t.push_str(&format!("Diagnostic-Code: {kind}; {}\r\n", one_line(&f.diagnostic)));
        if f.expired {
            t.push_str(&format!("Will-Retry-Until: {}\r\n", rfc5322(now_ms)));
        }
    }
    t.push_str(&format!("\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"));
    let mut out = dot_stuff(t.as_bytes());
    // The original headers are already in wire form (stuffed as received).
    out.extend_from_slice(orig.headers);
    out.extend_from_slice(dot_stuff(format!("\r\n--{boundary}--\r\n").as_bytes()).as_slice());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_lists_every_failed_recipient_and_is_wire_safe() {
        let failed = vec![
            FailedRecipient { recipient: "a@x.test".into(), status: "5.1.1".into(), remote: Some("127.0.0.1:25".into()), diagnostic: "550 5.1.1 no\r\nInjected: yes".into(), expired: false },
            FailedRecipient { recipient: "b@y.test".into(), status: "4.4.7".into(), remote: None, diagnostic: "lifetime exceeded".into(), expired: true },
        ];
        let orig = Original { id: "ID1", sender: "s@z.test", received_ms: 0, headers: b"Subject: hi\r\n..dot\r\n" };
        let b = build("mta.test", 1000, &orig, &failed);
        let s = String::from_utf8(b).unwrap();
        assert!(s.contains("Final-Recipient: rfc822; a@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"));
        assert!(s.contains("Final-Recipient: rfc822; b@y.test"));
        assert!(s.contains("report-type=delivery-status"));
        assert!(!s.contains("\r\nInjected: yes"), "remote text must not become a header");
        assert!(s.contains("Subject: hi\r\n..dot\r\n"));
        assert!(s.ends_with("--\r\n"));
        assert!(s.lines().all(|l| l.len() < 1000));
    }

    #[test]
    fn stuffing_doubles_leading_dots_only() {
        assert_eq!(dot_stuff(b".a\r\nb.c\r\n.\r\n"), b"..a\r\nb.c\r\n..\r\n");
    }
}
