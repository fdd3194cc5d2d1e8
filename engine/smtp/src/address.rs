//! RFC 5321 path syntax: `<local@domain>` with length limits, as a pure function.
//!
//! Accepts dot-atoms and quoted local parts, domain names and address literals. UTF-8 in the
//! address is accepted only when the transaction declared SMTPUTF8 (RFC 6531).

/// Why an address was refused; becomes `501 5.1.7`/`5.1.3` or `553 5.1.x` at the protocol edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressError {
    /// Not `<...>` or bad characters.
    Syntax,
    /// Local part over 64 octets.
    LocalTooLong,
    /// Domain over 255 octets or a label over 63.
    DomainTooLong,
    /// Non-ASCII without SMTPUTF8.
    NeedsSmtpUtf8,
}

/// A parsed path: `local@domain` (the angle brackets removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The whole address as received, without brackets.
    pub raw: String,
    /// Byte offset of the `@`.
    at: usize,
}

impl Address {
    /// The local part.
    pub fn local(&self) -> &str {
        &self.raw[..self.at]
    }
    /// The domain, as received.
    pub fn domain(&self) -> &str {
        &self.raw[self.at + 1..]
    }
}

/// A non-ASCII character an SMTPUTF8 address may hold (RFC 6531 UTF8-non-ascii), less the
/// ones no mailbox needs and that would travel on into replies, logs and Received headers:
/// C1 controls (U+0085 NEL is a line break to some parsers), Unicode line, paragraph and other
/// separators, and the invisible bidirectional and zero-width format characters that make a
/// name display as another.
fn is_utf8_text(c: char) -> bool {
    !c.is_ascii()
        && !c.is_control()
        && !c.is_whitespace()
        && !matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

fn is_atext(c: char, utf8: bool) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || (utf8 && is_utf8_text(c))
}

/// Parse the inside of a path (after `<`, before `>`), with optional source route `@a,@b:`.
pub fn parse_mailbox(s: &str, smtputf8: bool) -> Result<Address, AddressError> {
    if !smtputf8 && !s.is_ascii() {
        return Err(AddressError::NeedsSmtpUtf8);
    }
    // RFC 5321 4.1.2: a source route is accepted and ignored.
    let s = match s.strip_prefix('@') {
        Some(_) => s.split_once(':').map(|(_, rest)| rest).ok_or(AddressError::Syntax)?,
        None => s,
    };
    let at = s.rfind('@').ok_or(AddressError::Syntax)?;
    let (local, domain) = (&s[..at], &s[at + 1..]);
    if local.is_empty() || domain.is_empty() {
        return Err(AddressError::Syntax);
    }
    if local.len() > 64 {
        return Err(AddressError::LocalTooLong);
    }
    if domain.len() > 255 {
        return Err(AddressError::DomainTooLong);
    }
    if let Some(q) = local.strip_prefix('"') {
        let inner = q.strip_suffix('"').ok_or(AddressError::Syntax)?;
        let mut esc = false;
        for c in inner.chars() {
            match (esc, c) {
                (true, ' '..='~') => esc = false,
                (true, _) => return Err(AddressError::Syntax),
                (false, '\\') => esc = true,
                (false, '"') => return Err(AddressError::Syntax),
                (false, c) if (c == ' ' || c.is_ascii_graphic()) || (smtputf8 && is_utf8_text(c)) => {}
                _ => return Err(AddressError::Syntax),
            }
        }
        if esc {
            return Err(AddressError::Syntax);
        }
    } else if local.split('.').any(|atom| atom.is_empty() || !atom.chars().all(|c| is_atext(c, smtputf8))) {
        return Err(AddressError::Syntax);
    }
    validate_domain(domain, smtputf8)?;
    Ok(Address { raw: s.to_string(), at })
}

/// A domain name (letters, digits, hyphens; labels ≤ 63) or an address literal `[...]`.
pub fn validate_domain(d: &str, smtputf8: bool) -> Result<(), AddressError> {
    if let Some(lit) = d.strip_prefix('[') {
        let inner = lit.strip_suffix(']').ok_or(AddressError::Syntax)?;
        let ok = match inner.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => inner.parse::<std::net::Ipv4Addr>().is_ok(),
        };
        return if ok { Ok(()) } else { Err(AddressError::Syntax) };
    }
    let d = d.strip_suffix('.').unwrap_or(d);
    for label in d.split('.') {
        if label.is_empty() {
            return Err(AddressError::Syntax);
        }
        if label.len() > 63 {
            return Err(AddressError::DomainTooLong);
        }
        let good = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || (smtputf8 && is_utf8_text(c));
        if !label.chars().all(good) || label.starts_with('-') || label.ends_with('-') {
            return Err(AddressError::Syntax);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_quoted_addresses() {
        let a = parse_mailbox("bob.smith+tag@Example.ORG", false).unwrap();
        assert_eq!((a.local(), a.domain()), ("bob.smith+tag", "Example.ORG"));
        assert!(parse_mailbox("\"john doe\"@example.com", false).is_ok());
        assert!(parse_mailbox("x@[127.0.0.1]", false).is_ok());
        assert!(parse_mailbox("x@[IPv6:::1]", false).is_ok());
        assert_eq!(parse_mailbox("@relay.example:user@example.com", false).unwrap().raw, "user@example.com");
    }

    #[test]
    fn refuses_malformed_addresses() {
        for bad in [
            "",
            "noat",
            "@example.com",
            "user@",
            "a..b@x.org",
            ".a@x.org",
            "a@-x.org",
            "a@x..org",
            "a b@x.org",
            "a@x.org>",
            "\"unterminated@x.org",
            "a@[1.2.3]",
        ] {
            assert!(parse_mailbox(bad, false).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn enforces_length_limits_and_utf8_rule() {
        let long_local = format!("{}@x.org", "a".repeat(65));
        assert_eq!(parse_mailbox(&long_local, false), Err(AddressError::LocalTooLong));
        let long_label = format!("a@{}.org", "b".repeat(64));
        assert_eq!(parse_mailbox(&long_label, false), Err(AddressError::DomainTooLong));
        assert_eq!(parse_mailbox("jörg@example.de", false), Err(AddressError::NeedsSmtpUtf8));
        assert!(parse_mailbox("jörg@exämple.de", true).is_ok());
    }

    #[test]
    fn utf8_addresses_refuse_controls_separators_and_invisible_characters() {
        for bad in [
            "a\u{85}b@x.org",
            "a@x\u{85}y.org",
            "\"a\u{85}\"@x.org",
            "a\u{2028}@x.org",
            "a@x\u{2029}.org",
            "a\u{a0}b@x.org",
            "a@\u{202e}gro.x",
            "a\u{200b}@x.org",
            "a@x\u{feff}.org",
            "a\u{9f}@x.org",
        ] {
            assert_eq!(parse_mailbox(bad, true), Err(AddressError::Syntax), "{bad:?} must be refused");
        }
        assert_eq!(validate_domain("c\u{85}.test", true), Err(AddressError::Syntax));
        assert_eq!(validate_domain("bücher.test", true), Ok(()));
        assert!(parse_mailbox("\"jörg müller\"@bücher.test", true).is_ok());
    }
}
