//! Address and command-line parsers (`smtp::address`, `smtp::command`).
//!
//! Invariants: no panic; an accepted path obeys the RFC 5321 limits the parser promises (local
//! part 1..=64 octets, domain 1..=255 and itself valid, ASCII unless SMTPUTF8) and is a suffix of
//! its input (only a source route may be dropped); a parsed MAIL/RCPT names an address that
//! occurs in the command line.
use crate::smtp::address::{parse_mailbox, validate_domain};
use crate::smtp::command::{parse_command, Command};

/// Harness entry point.
pub fn run(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        for utf8 in [false, true] {
            if let Ok(a) = parse_mailbox(s, utf8) {
                check_address(s, &a.raw, a.local(), a.domain(), utf8);
            }
        }
    }
    match parse_command(data) {
        Ok(Command::Mail(Some(a), _)) | Ok(Command::Rcpt(a)) => {
            let line = String::from_utf8_lossy(data);
            assert!(line.contains(&a.raw), "address {:?} not in the command line {line:?}", a.raw);
        }
        _ => {}
    }
}

fn check_address(input: &str, raw: &str, local: &str, domain: &str, utf8: bool) {
    assert!(!local.is_empty() && local.len() <= 64, "local part length {}", local.len());
    assert!(!domain.is_empty() && domain.len() <= 255, "domain length {}", domain.len());
    assert_eq!(format!("{local}@{domain}"), raw);
    assert!(input.ends_with(raw), "{raw:?} is not a suffix of {input:?}");
    assert!(utf8 || raw.is_ascii(), "non-ASCII address accepted without SMTPUTF8: {raw:?}");
    assert!(validate_domain(domain, utf8).is_ok(), "accepted domain fails validation: {domain:?}");
    // The address is echoed in replies and written into headers and the spool.
    assert!(!raw.contains(['\r', '\n', '\0']), "line break or NUL in {raw:?}");
    assert!(!domain.contains(['<', '>', ' ', '"']), "unsafe character in domain {domain:?}");
}
