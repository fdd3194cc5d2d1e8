//! The DSN builder (`dsn::build`): it parses nothing, but it copies remote-controlled text
//! (recipient addresses, remote replies, the remote host) into a message we spool and send.
//!
//! Input: NUL-separated fields: the sender, then (recipient, diagnostic, remote) triples. Invariants: no panic; the part we generate is CRLF-only,
//! dot-stuffed (no lone-dot line), every line within RFC 5322's 998 octets, and remote text
//! cannot add lines: exactly one `Final-Recipient:` and one `Diagnostic-Code:` line per
//! failed recipient.
use crate::engine_dsn::{build, FailedRecipient, Original};

/// Harness entry point.
pub fn run(data: &[u8]) {
    // Addresses reach the DSN only after parse_mailbox, which bounds them (64 + 1 + 255 octets);
    // remote text (diagnostic, remote host) is not bounded by anything before the builder.
    let addr = |f: String| {
        f.chars()
            .scan(0, |n, c| {
                *n += c.len_utf8();
                (*n <= 320).then_some(c)
            })
            .collect::<String>()
    };
    let mut fields = data.split(|&b| b == 0).map(|f| String::from_utf8_lossy(f).into_owned());
    let sender = addr(fields.next().unwrap_or_default());
    let rest: Vec<String> = fields.collect();
    let failed: Vec<FailedRecipient> = rest
        .chunks(3)
        .map(|c| FailedRecipient {
            recipient: addr(c[0].clone()),
            status: "5.1.1".into(),
            diagnostic: c.get(1).cloned().unwrap_or_default(),
            remote: c.get(2).cloned(),
            expired: c.len() == 2,
            category: ringpost_engine::account::bounce_class::BounceCategory::BadMailbox,
        })
        .collect();
    // The original headers come from the spool in wire form; the builder copies them as they are.
    let marker = "\u{1}ORIGINAL-HEADERS\u{1}";
    let orig = Original { id: "0000000000000000AB", sender: &sender, received_ms: 1_700_000_000_000, headers: marker.as_bytes() };
    let out = build("mx.fuzz.test", 1_800_000_000_000, &orig, &failed);
    let at = find(&out, marker.as_bytes()).expect("original headers missing from the DSN");
    let ours = [&out[..at], &out[at + marker.len()..]].concat();
    check_generated(&ours, failed.len());
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn check_generated(b: &[u8], failed: usize) {
    crate::assert_crlf_only("DSN", b);
    let mut final_recipient = 0;
    let mut diagnostic = 0;
    for line in b.split(|&c| c == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(line != b".", "lone-dot line in a DSN");
        assert!(line.len() <= 998, "DSN line of {} octets", line.len());
        final_recipient += line.starts_with(b"Final-Recipient:") as usize;
        diagnostic += line.starts_with(b"Diagnostic-Code:") as usize;
    }
    assert_eq!(final_recipient, failed, "Final-Recipient lines");
    assert_eq!(diagnostic, failed, "Diagnostic-Code lines");
}
