//! SMTP command parsing: one command line (CRLF already removed) in, a typed command out.
//! Pure and allocation-light; the server state machine decides what a command means now.
use super::address::{parse_mailbox, validate_domain, Address, AddressError};

/// ESMTP `BODY=` values (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    /// `BODY=7BIT` or none.
    #[default]
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// MAIL FROM parameters we understand.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// `SIZE=` (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=`.
    pub body: BodyType,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`.
    Ehlo(String),
    /// `HELO domain`.
    Helo(String),
    /// `MAIL FROM:<path>`; `None` is the null sender `<>`.
    Mail(Option<Address>, MailParams),
    /// `RCPT TO:<path>`.
    Rcpt(Address),
    /// `DATA`.
    Data,
    /// `RSET`.
    Rset,
    /// `NOOP`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY` (answered 252, never verified).
    Vrfy,
    /// `HELP`.
    Help,
    /// `STARTTLS`.
    StartTls,
    /// `AUTH mechanism [initial-response]`.
    Auth(String),
    /// `BDAT chunk-size [LAST]` (RFC 3030): `size` octets of message data follow the line.
    Bdat {
        /// Octets in the chunk.
        size: u64,
        /// `LAST`: the chunk ends the message.
        last: bool,
    },
}

/// Why a command line could not be parsed; each maps to one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Not valid UTF-8: `501 5.5.2`.
    InvalidUtf8,
    /// Unknown verb: `500 5.5.1`.
    Unknown,
    /// Known verb, bad arguments: `501 5.5.4`.
    Syntax(&'static str),
    /// Sender address refused: `501 5.1.7`.
    BadSender(AddressError),
    /// Recipient address refused: `501 5.1.3`.
    BadRecipient(AddressError),
    /// Unsupported MAIL/RCPT parameter: `555 5.5.4`.
    UnknownParam(String),
}

/// Parse one command line.
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::InvalidUtf8)?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim_start_matches(' ')),
        None => (line, ""),
    };
    let no_args = |cmd: Command| if rest.trim().is_empty() { Ok(cmd) } else { Err(CommandError::Syntax("no arguments allowed")) };
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" | "HELO" => {
            let domain = rest.trim_end();
            if domain.is_empty() || domain.contains(' ') {
                return Err(CommandError::Syntax("a domain name is required"));
            }
            validate_domain(domain, true).map_err(|_| CommandError::Syntax("invalid domain name"))?;
            Ok(if verb.eq_ignore_ascii_case("EHLO") { Command::Ehlo(domain.into()) } else { Command::Helo(domain.into()) })
        }
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        "DATA" => no_args(Command::Data),
        "RSET" => no_args(Command::Rset),
        "QUIT" => no_args(Command::Quit),
        "NOOP" => Ok(Command::Noop),
        "VRFY" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => Ok(Command::Auth(rest.trim().to_string())),
        "BDAT" => parse_bdat(rest),
        _ => Err(CommandError::Unknown),
    }
}

/// Split `FROM:<path> params` after the keyword, tolerating one space after the colon.
fn split_path<'a>(rest: &'a str, keyword: &str) -> Result<(&'a str, &'a str), CommandError> {
    let head = rest.get(..keyword.len()).filter(|h| h.eq_ignore_ascii_case(keyword));
    let after = &rest[head.ok_or(CommandError::Syntax("expected FROM:<address> or TO:<address>"))?.len()..];
    let after = after.strip_prefix(' ').unwrap_or(after);
    let inner = after.strip_prefix('<').ok_or(CommandError::Syntax("the address must be in angle brackets"))?;
    let end = inner.find('>').ok_or(CommandError::Syntax("the address must be in angle brackets"))?;
    Ok((&inner[..end], inner[end + 1..].trim()))
}

fn parse_mail(rest: &str) -> Result<Command, CommandError> {
    let (path, params) = split_path(rest, "FROM:")?;
    let mut p = MailParams::default();
    for param in params.split(' ').filter(|s| !s.is_empty()) {
        let (k, v) = param.split_once('=').unwrap_or((param, ""));
        match k.to_ascii_uppercase().as_str() {
            "SIZE" => p.size = Some(v.parse().map_err(|_| CommandError::Syntax("SIZE needs a number"))?),
            "BODY" => {
                p.body = match v.to_ascii_uppercase().as_str() {
                    "7BIT" => BodyType::SevenBit,
                    "8BITMIME" => BodyType::EightBitMime,
                    _ => return Err(CommandError::UnknownParam(param.into())),
                }
            }
            "SMTPUTF8" if v.is_empty() => p.smtputf8 = true,
            _ => return Err(CommandError::UnknownParam(param.into())),
        }
    }
    if path.is_empty() {
        return Ok(Command::Mail(None, p));
    }
    let a = parse_mailbox(path, p.smtputf8).map_err(CommandError::BadSender)?;
    Ok(Command::Mail(Some(a), p))
}

/// `BDAT` SP chunk-size [SP "LAST"] (RFC 3030 2): anything else is a syntax error, and then
/// nobody knows how many octets follow, so the caller cannot skip them.
fn parse_bdat(rest: &str) -> Result<Command, CommandError> {
    let mut words = rest.split(' ');
    let size = words.next().filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()));
    let size = size.and_then(|w| w.parse().ok()).ok_or(CommandError::Syntax("BDAT needs a chunk size"))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax("BDAT takes a chunk size and LAST only")),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax("BDAT takes a chunk size and LAST only"));
    }
    Ok(Command::Bdat { size, last })
}

fn parse_rcpt(rest: &str) -> Result<Command, CommandError> {
    let (path, params) = split_path(rest, "TO:")?;
    if let Some(p) = params.split(' ').find(|s| !s.is_empty()) {
        return Err(CommandError::UnknownParam(p.into()));
    }
    // `<postmaster>` without a domain must be accepted (RFC 5321 4.5.1); route it locally later.
    let a = parse_mailbox(path, true).map_err(CommandError::BadRecipient)?;
    Ok(Command::Rcpt(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_everyday_commands() {
        assert_eq!(parse_command(b"EHLO client.example"), Ok(Command::Ehlo("client.example".into())));
        assert_eq!(parse_command(b"helo [127.0.0.1]"), Ok(Command::Helo("[127.0.0.1]".into())));
        assert_eq!(parse_command(b"DATA"), Ok(Command::Data));
        assert_eq!(parse_command(b"quit"), Ok(Command::Quit));
        match parse_command(b"MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME").unwrap() {
            Command::Mail(Some(a), p) => {
                assert_eq!(a.raw, "a@b.example");
                assert_eq!(p.size, Some(1000));
                assert_eq!(p.body, BodyType::EightBitMime);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_command(b"MAIL FROM:<>"), Ok(Command::Mail(None, MailParams::default())));
        assert!(matches!(parse_command(b"RCPT TO: <x@y.example>"), Ok(Command::Rcpt(_))));
        assert_eq!(parse_command(b"BDAT 1000"), Ok(Command::Bdat { size: 1000, last: false }));
        assert_eq!(parse_command(b"bdat 0 last"), Ok(Command::Bdat { size: 0, last: true }));
    }

    #[test]
    fn bdat_needs_exactly_a_size_and_an_optional_last() {
        for bad in [&b"BDAT"[..], b"BDAT -1", b"BDAT +5", b"BDAT 1x", b"BDAT 5 FIRST", b"BDAT 5 LAST x", b"BDAT 99999999999999999999999"] {
            assert!(matches!(parse_command(bad), Err(CommandError::Syntax(_))), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn classifies_bad_lines() {
        assert_eq!(parse_command(b"FOO bar"), Err(CommandError::Unknown));
        assert_eq!(parse_command(b"MAIL FROM:<\xff@x>"), Err(CommandError::InvalidUtf8));
        assert!(matches!(parse_command(b"MAIL FROM:a@b"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse_command(b"MAIL FROM:<a..b@x.org>"), Err(CommandError::BadSender(_))));
        assert!(matches!(parse_command(b"RCPT TO:<nodomain>"), Err(CommandError::BadRecipient(_))));
        assert!(matches!(parse_command(b"MAIL FROM:<a@b.org> XYZ=1"), Err(CommandError::UnknownParam(_))));
        assert!(matches!(parse_command(b"EHLO"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse_command(b"DATA now"), Err(CommandError::Syntax(_))));
    }
}
