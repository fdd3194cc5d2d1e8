//! Byte-vector tests of the server state machine: every hostile-input rule of the core issue.
use super::reply::Reply;
use super::server::{Server, ServerLimits, Step};
use std::rc::Rc;

pub(super) fn limits() -> Rc<ServerLimits> {
    Rc::new(ServerLimits {
        hostname: "mta.test".into(),
        max_message_size: 1000,
        max_recipients: 100,
        hard_error_limit: 20,
        local_domains: vec!["local.test".into()],
        recipient_gate: None,
    })
}

/// What a client script did to the machine, seen as the driver (session.rs) sees it.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// First line of every reply, greeting included.
    pub(super) replies: Vec<String>,
    /// Bodies of messages the machine completed and the driver committed (`Step::Message`).
    pub(super) bodies: Vec<Vec<u8>>,
    /// Body bytes handed to the driver (`Step::Body`) of messages then refused with
    /// `Step::DataRefused`, which tells the driver to discard what it spooled for them.
    pub(super) refused: Vec<Vec<u8>>,
    /// Body bytes handed out that no Message, DataRefused or new DATA ever resolved: the
    /// driver would keep them pinned in the spool.
    pub(super) pending: Vec<u8>,
    pub(super) closed: bool,
}

impl Outcome {
    /// Nothing of a refused message stays spooled: no message was committed, the body bytes
    /// handed out were all discarded by exactly `refusals` DataRefused steps, and none is left
    /// waiting for a verdict.
    pub(super) fn assert_nothing_spooled(&self, refusals: usize) {
        assert!(self.bodies.is_empty(), "committed: {:?}", self.bodies);
        assert_eq!(self.refused.len(), refusals, "messages refused with DataRefused");
        assert!(self.pending.is_empty(), "body bytes left spooled: {:?}", String::from_utf8_lossy(&self.pending));
    }
}

/// Drive a whole client script through the machine, as a driver would, committing messages.
pub(super) fn session(relay: bool, input: &[u8]) -> Outcome {
    session_in_reads(relay, input, input.len().max(1))
}

/// The same, with the client's bytes arriving `read` at a time (a driver's socket reads).
pub(super) fn session_in_reads(relay: bool, input: &[u8], read: usize) -> Outcome {
    session_with(limits(), relay, input, read)
}

/// The same, with other limits.
pub(super) fn session_with(limits: Rc<ServerLimits>, relay: bool, input: &[u8], read: usize) -> Outcome {
    let mut s = Server::new(limits, relay);
    let mut o = Outcome { replies: vec![first_line(&s.greeting())], ..Default::default() };
    let (mut pos, mut avail) = (0, read.min(input.len()));
    loop {
        match s.step(&input[pos..avail]) {
            Step::Need { consumed: 0 } if avail == input.len() => return o,
            Step::Need { consumed: 0 } => avail = (avail + read).min(input.len()),
            Step::Need { consumed } => pos += consumed,
            Step::Reply { consumed, reply } => {
                pos += consumed;
                if reply.code == 354 {
                    // The driver forgets anything of an earlier message when DATA starts.
                    o.pending.clear();
                }
                o.replies.push(first_line(&reply));
            }
            Step::Close { consumed: _, reply } => {
                o.replies.push(first_line(&reply));
                o.closed = true;
                return o;
            }
            Step::Body { consumed, prefix, body: n } => {
                o.pending.extend_from_slice(prefix);
                o.pending.extend_from_slice(&input[pos..pos + n]);
                pos += consumed;
            }
            Step::Message { consumed, prefix, body: n } => {
                o.pending.extend_from_slice(prefix);
                o.pending.extend_from_slice(&input[pos..pos + n]);
                pos += consumed;
                o.bodies.push(std::mem::take(&mut o.pending));
                o.replies.push(first_line(&s.committed("ID")));
            }
            Step::Authenticate { consumed, user, password } => {
                pos += consumed;
                o.replies.push(first_line(&s.auth_result(&user, password == "good")));
            }
            Step::StartTls { consumed: _, reply } => {
                // A driver discards whatever followed STARTTLS in the buffer.
                o.replies.push(first_line(&reply));
                s.tls_started();
                return o;
            }
            Step::DataRefused { consumed, reply } => {
                pos += consumed;
                o.refused.push(std::mem::take(&mut o.pending));
                o.replies.push(first_line(&reply));
            }
        }
    }
}

fn first_line(r: &Reply) -> String {
    r.to_wire().lines().last().unwrap().to_string()
}

pub(super) fn codes(r: &[String]) -> Vec<&str> {
    r.iter().map(|l| &l[..3]).collect()
}

pub(super) const ENVELOPE: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n";

#[test]
fn pipelined_transaction_with_dot_lines() {
    let mut input = ENVELOPE.to_vec();
    input.extend_from_slice(b"..leading dot\r\n.\r\nQUIT\r\n");
    let Outcome { replies: r, bodies, closed, .. } = session(true, &input);
    assert_eq!(codes(&r), ["220", "250", "250", "250", "354", "250", "221"]);
    assert_eq!(bodies, vec![b"..leading dot\r\n".to_vec()]);
    assert!(closed);
    assert!(r[5].starts_with("250 2.0.0 Ok: queued as ID"));
}

#[test]
fn empty_body_and_null_sender() {
    let Outcome { replies: r, bodies, .. } = session(true, b"EHLO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n.\r\n");
    assert_eq!(codes(&r), ["220", "250", "250", "250", "354", "250"]);
    assert_eq!(bodies, vec![Vec::<u8>::new()]);
}

#[test]
fn smuggled_end_of_data_is_refused_and_no_second_transaction_starts() {
    let mut input = ENVELOPE.to_vec();
    input.extend_from_slice(b"hi\n.\nMAIL FROM:<evil@b.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nspoof\r\n.\r\nNOOP\r\n");
    // Whole, and in small reads so the body streams out through Step::Body before the verdict.
    for read in [input.len(), 7, 1] {
        let o = session_in_reads(true, &input, read);
        o.assert_nothing_spooled(1);
        assert_eq!(codes(&o.replies), ["220", "250", "250", "250", "354", "554", "250"], "read {read}");
        assert!(o.replies[5].starts_with("554 5.5.2"));
    }
    // The same with <LF>.<CRLF> and a bare CR.
    for evil in [&b"hi\n.\r\nMAIL FROM:<e@b.test>\r\n.\r\n"[..], b"hi\r.\r\n.\r\n"] {
        let mut input = ENVELOPE.to_vec();
        input.extend_from_slice(evil);
        for read in [input.len(), 5] {
            let o = session_in_reads(true, &input, read);
            o.assert_nothing_spooled(1);
            assert_eq!(codes(&o.replies).last(), Some(&"554"));
        }
    }
}

#[test]
fn long_command_line_gets_500_and_session_continues() {
    let mut input = b"EHLO c.test\r\nNOOP ".to_vec();
    input.extend(std::iter::repeat_n(b'x', 600));
    input.extend_from_slice(b"\r\nNOOP\r\n");
    let Outcome { replies: r, .. } = session(true, &input);
    assert_eq!(codes(&r), ["220", "250", "500", "250"]);
    assert!(r[2].starts_with("500 5.5.2"));
}

#[test]
fn long_text_line_refuses_the_message() {
    let mut input = ENVELOPE.to_vec();
    input.extend(std::iter::repeat_n(b'a', 1001));
    input.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
    for read in [input.len(), 64] {
        let o = session_in_reads(true, &input, read);
        o.assert_nothing_spooled(1);
        assert_eq!(codes(&o.replies), ["220", "250", "250", "250", "354", "500", "250"], "read {read}");
        assert!(o.replies[5].starts_with("500 5.5.2"));
    }
}

#[test]
fn oversize_data_is_drained_then_552() {
    let mut input = ENVELOPE.to_vec();
    for _ in 0..30 {
        input.extend_from_slice(&[b'z'; 98]);
        input.extend_from_slice(b"\r\n");
    }
    input.extend_from_slice(b".\r\nNOOP\r\n");
    for read in [input.len(), 64, 1] {
        let o = session_in_reads(true, &input, read);
        o.assert_nothing_spooled(1);
        assert_eq!(codes(&o.replies), ["220", "250", "250", "250", "354", "552", "250"], "read {read}");
        assert!(o.replies[5].starts_with("552 5.3.4"));
        // Drained: past the limit (1000 octets) no more body is handed to the spool.
        assert!(o.refused[0].len() <= 1000, "{} body octets spooled for a message over the limit", o.refused[0].len());
    }
}

#[test]
fn declared_size_too_large_is_552_at_mail() {
    let Outcome { replies: r, .. } = session(true, b"EHLO c.test\r\nMAIL FROM:<a@b.test> SIZE=5000\r\nMAIL FROM:<a@b.test> SIZE=10\r\n");
    assert_eq!(codes(&r), ["220", "250", "552", "250"]);
    assert!(r[2].starts_with("552 5.3.4"));
}

#[test]
fn commands_out_of_order_get_503() {
    let Outcome { replies: r, .. } =
        session(true, b"MAIL FROM:<a@b.test>\r\nEHLO c.test\r\nRCPT TO:<x@y.test>\r\nDATA\r\nMAIL FROM:<a@b.test>\r\nDATA\r\n");
    assert_eq!(codes(&r), ["220", "503", "250", "503", "503", "250", "503"]);
    assert!(r.iter().filter(|l| l.starts_with("503")).all(|l| l.starts_with("503 5.5.1")));
}

#[test]
fn unknown_malformed_and_invalid_utf8() {
    let Outcome { replies: r, .. } = session(
        true,
        b"EHLO c.test\r\nXYZZY\r\nMAIL FROM:<bad..addr@b.test>\r\nMAIL FROM:<\xc3\x28@b.test>\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<no-domain>\r\nNOOP\r\n",
    );
    assert_eq!(codes(&r), ["220", "250", "500", "501", "501", "250", "501", "250"]);
    assert!(r[2].starts_with("500 5.5.1"));
    assert!(r[3].starts_with("501 5.1.7"));
    assert!(r[4].starts_with("501 5.5.2"));
    assert!(r[6].starts_with("501 5.1.3"));
}

#[test]
fn recipients_over_the_limit_get_452_each() {
    let mut input = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n".to_vec();
    for i in 0..103 {
        input.extend_from_slice(format!("RCPT TO:<r{i}@y.test>\r\n").as_bytes());
    }
    let Outcome { replies: r, .. } = session(true, &input);
    assert_eq!(r.iter().filter(|l| l.starts_with("250 2.1.5")).count(), 100);
    assert_eq!(r.iter().filter(|l| l.starts_with("452 4.5.3")).count(), 3);
}

#[test]
fn relay_is_denied_outside_relay_networks_except_local_domains() {
    let Outcome { replies: r, .. } = session(false, b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nRCPT TO:<x@local.test>\r\n");
    assert_eq!(codes(&r), ["220", "250", "250", "554", "250"]);
    assert!(r[3].starts_with("554 5.7.1"));
}

#[test]
fn error_limit_closes_with_421() {
    let input = b"BOGUS\r\n".repeat(25);
    let Outcome { replies: r, closed, .. } = session(true, &input);
    assert!(closed);
    assert!(r.last().unwrap().starts_with("421 4.7.0"));
    assert_eq!(r.iter().filter(|l| l.starts_with("500")).count(), 20);
}

#[test]
fn bare_lf_command_is_refused_without_desync() {
    let Outcome { replies: r, .. } = session(true, b"EHLO c.test\nNOOP\r\n");
    assert_eq!(codes(&r), ["220", "500", "250"]);
}

#[test]
fn ehlo_advertises_the_extensions() {
    let s = Server::new(limits(), true);
    let mut s = s;
    let Step::Reply { reply, .. } = s.step(b"EHLO c.test\r\n") else { panic!() };
    let w = reply.to_wire();
    for ext in ["250-PIPELINING", "250-SIZE 1000", "250-8BITMIME", "250-SMTPUTF8", "250-ENHANCEDSTATUSCODES", "250 CHUNKING"] {
        assert!(w.contains(ext), "{w}");
    }
}

#[test]
fn body_streams_in_pieces_without_buffering() {
    let mut s = Server::new(limits(), true);
    let mut pos = 0;
    let input = [ENVELOPE, b"part one\r\n"].concat();
    let mut seen = 0;
    while pos < input.len() {
        match s.step(&input[pos..]) {
            Step::Reply { consumed, .. } => pos += consumed,
            Step::Body { consumed, body, .. } => {
                seen += body;
                pos += consumed;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, b"part one\r\n".len(), "body bytes are handed out as they arrive");
    assert!(s.in_data());
}

#[test]
fn starttls_is_offered_only_when_configured_and_resets_the_session() {
    let mut s = Server::new(limits(), true);
    let Step::Reply { reply, .. } = s.step(b"EHLO c.test\r\n") else { panic!() };
    assert!(!reply.to_wire().contains("STARTTLS"));
    assert!(matches!(s.step(b"STARTTLS\r\n"), Step::Reply { reply, .. } if reply.code == 502));
    let mut s = Server::new(limits(), true);
    s.offer_tls();
    let Step::Reply { reply, .. } = s.step(b"EHLO c.test\r\n") else { panic!() };
    assert!(reply.to_wire().contains("250 STARTTLS"));
    // Injected plaintext after STARTTLS is not for the machine: the driver drops the buffer.
    let Step::StartTls { consumed, reply } = s.step(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n") else { panic!() };
    assert_eq!((consumed, reply.code), (10, 220));
    s.tls_started();
    assert!(s.tls_active());
    assert!(matches!(s.step(b"MAIL FROM:<a@b.test>\r\n"), Step::Reply { reply, .. } if reply.code == 503), "EHLO is required again");
    let Step::Reply { reply, .. } = s.step(b"EHLO c.test\r\n") else { panic!() };
    assert!(!reply.to_wire().contains("STARTTLS"), "not offered twice");
    assert!(matches!(s.step(b"STARTTLS\r\n"), Step::Reply { reply, .. } if reply.code == 503));
}

#[test]
fn auth_needs_tls_unless_the_listener_is_trusted_and_unlocks_relaying() {
    use base64::Engine;
    let b = |x: &[u8]| base64::engine::general_purpose::STANDARD.encode(x);
    // Not configured.
    let Outcome { replies: r, .. } = session(false, b"EHLO c.test\r\nAUTH PLAIN x\r\n");
    assert!(r[2].starts_with("502 5.5.1"));
    // Configured, no TLS, untrusted listener: 538, and not advertised.
    let mut s = Server::new(limits(), false);
    s.offer_auth(false);
    let Step::Reply { reply, .. } = s.step(b"EHLO c.test\r\n") else { panic!() };
    assert!(!reply.to_wire().contains("AUTH"));
    assert!(matches!(s.step(b"AUTH PLAIN x\r\n"), Step::Reply { reply, .. } if reply.code == 538));
    // Trusted listener: advertised; wrong then right password; then relaying is allowed.
    let mut s = Server::new(limits(), false);
    s.offer_auth(true);
    let Step::Reply { reply, .. } = s.step(b"EHLO c.test\r\n") else { panic!() };
    assert!(reply.to_wire().contains("250 AUTH PLAIN LOGIN"));
    let bad = format!("AUTH PLAIN {}\r\n", b(b"\0app\0bad"));
    let Step::Authenticate { user, password, .. } = s.step(bad.as_bytes()) else { panic!() };
    assert!(s.auth_result(&user, password == "good").to_wire().starts_with("535 5.7.8"));
    let Step::Reply { reply, .. } = s.step(b"AUTH LOGIN\r\n") else { panic!() };
    assert_eq!(reply.to_wire(), "334 VXNlcm5hbWU6\r\n");
    let Step::Reply { .. } = s.step(format!("{}\r\n", b(b"app")).as_bytes()) else { panic!() };
    let Step::Authenticate { user, password, .. } = s.step(format!("{}\r\n", b(b"good")).as_bytes()) else { panic!() };
    assert!(s.auth_result(&user, password == "good").to_wire().starts_with("235 2.7.0"));
    assert_eq!(s.user(), Some("app"));
    s.step(b"MAIL FROM:<a@b.test>\r\n");
    assert!(matches!(s.step(b"RCPT TO:<x@y.test>\r\n"), Step::Reply { reply, .. } if reply.code == 250), "authenticated clients relay");
}

/// The wire bytes of the reply to `line`, on a fresh session (AUTH offered) after `setup` lines.
fn wire_reply_after(relay: bool, setup: &[&[u8]], line: &[u8]) -> String {
    let mut s = Server::new(limits(), relay);
    s.offer_auth(true);
    for l in setup {
        assert!(matches!(s.step(l), Step::Reply { reply, .. } if reply.code == 250), "setup {:?}", String::from_utf8_lossy(l));
    }
    let (Step::Reply { consumed, reply } | Step::Close { consumed, reply }) = s.step(line) else { panic!("no reply") };
    assert_eq!(consumed, line.len());
    let wire = reply.to_wire();
    assert_wire_safe(&wire);
    wire
}

/// A reply on the wire: CRLF lines of printable ASCII, each within 512 octets.
fn assert_wire_safe(wire: &str) {
    assert!(wire.ends_with("\r\n"), "{wire:?}");
    for line in wire.split_inclusive("\r\n") {
        assert!(line.len() <= 512, "reply line of {} octets", line.len());
        let text = &line.as_bytes()[..line.len() - 2];
        assert!(text.iter().all(|b| (0x20..0x7f).contains(b)), "non-printable byte in reply line {line:?}");
    }
}

const EHLO: &[u8] = b"EHLO c.test\r\n";
const MAIL: &[u8] = b"MAIL FROM:<a@b.test>\r\n";

#[test]
fn unsupported_parameter_is_echoed_without_control_bytes() {
    // The fuzzer's finding: a bare CR inside a MAIL parameter went out inside the 555 line.
    let w = wire_reply_after(true, &[EHLO], b"MAIL FROM:<a@b.test> X\rY\0Z\x7f\x1b[2J\r\n");
    assert_eq!(w, "555 5.5.4 Unsupported parameter X?Y?Z??[2J\r\n");
    // A bad BODY= value and a C1 control or any other UTF-8 in the value.
    let w = wire_reply_after(true, &[EHLO], "MAIL FROM:<a@b.test> BODY=8BIT\u{85}MIME\r\n".as_bytes());
    assert_eq!(w, "555 5.5.4 Unsupported parameter BODY=8BIT?MIME\r\n");
    let w = wire_reply_after(true, &[EHLO], "MAIL FROM:<a@b.test> BODY=ü\r\n".as_bytes());
    assert_eq!(w, "555 5.5.4 Unsupported parameter BODY=?\r\n");
    // RCPT parameters take the same path.
    let w = wire_reply_after(true, &[EHLO, MAIL], b"RCPT TO:<x@y.test> NOTIFY=\rNEVER\r\n");
    assert_eq!(w, "555 5.5.4 Unsupported parameter NOTIFY=?NEVER\r\n");
}

#[test]
fn unsupported_parameter_echo_is_bounded() {
    // The fuzzer's second finding: a 480-octet parameter made a 514-octet 555 line.
    let mut line = b"MAIL FROM:<a@b.test> ".to_vec();
    line.extend(std::iter::repeat_n(b'X', 480));
    line.extend_from_slice(b"\r\n");
    let w = wire_reply_after(true, &[EHLO], &line);
    assert_eq!(w, format!("555 5.5.4 Unsupported parameter {}...\r\n", "X".repeat(61)));
    // Exactly the cap is echoed whole.
    let w = wire_reply_after(true, &[EHLO], format!("MAIL FROM:<a@b.test> {}\r\n", "Y".repeat(64)).as_bytes());
    assert_eq!(w, format!("555 5.5.4 Unsupported parameter {}\r\n", "Y".repeat(64)));
    // The longest command line the machine takes, all parameter, multi-byte characters.
    let mut line = "RCPT TO:<x@y.test> ".as_bytes().to_vec();
    while line.len() + 2 + 2 <= super::server::MAX_COMMAND_LINE {
        line.extend_from_slice("é".as_bytes());
    }
    line.extend_from_slice(b"\r\n");
    let w = wire_reply_after(true, &[EHLO, MAIL], &line);
    assert_eq!(w, format!("555 5.5.4 Unsupported parameter {}...\r\n", "?".repeat(61)));
}

#[test]
fn relay_denied_echoes_the_address_as_printable_ascii() {
    let w = wire_reply_after(false, &[EHLO, MAIL], b"RCPT TO:<x@y.test>\r\n");
    assert_eq!(w, "554 5.7.1 <x@y.test>: Relay access denied\r\n");
    // An SMTPUTF8 address is quoted with `?` for each non-ASCII character.
    let utf8_mail: &[u8] = b"MAIL FROM:<a@b.test> SMTPUTF8\r\n";
    let w = wire_reply_after(false, &[EHLO, utf8_mail], "RCPT TO:<jörg@bücher.test>\r\n".as_bytes());
    assert_eq!(w, "554 5.7.1 <j?rg@b?cher.test>: Relay access denied\r\n");
    // The longest address there is (64 + 1 + 255 octets) is quoted whole and fits the line.
    let label = "d".repeat(63);
    let address = format!("{}@{label}.{label}.{label}.{}", "ö".repeat(32), "e".repeat(63));
    assert_eq!(address.len(), 64 + 1 + 255);
    let w = wire_reply_after(false, &[EHLO, utf8_mail], format!("RCPT TO:<{address}>\r\n").as_bytes());
    assert_eq!(w, format!("554 5.7.1 <{}{}>: Relay access denied\r\n", "?".repeat(32), &address[64..]));
    // Control characters and invisible format characters never make it into an address.
    for bad in ["RCPT TO:<x\u{85}@y.test>\r\n", "RCPT TO:<x@y\u{202e}.test>\r\n", "RCPT TO:<\"x\ry\"@y.test>\r\n"] {
        let w = wire_reply_after(false, &[EHLO, utf8_mail], bad.as_bytes());
        assert_eq!(w, "501 5.1.3 Bad recipient address syntax\r\n", "{bad:?}");
    }
}

#[test]
fn unknown_commands_auth_mechanisms_and_helo_names_are_never_echoed() {
    let w = wire_reply_after(true, &[EHLO], b"X\rY\0Z\x1b[2J\r\n");
    assert_eq!(w, "500 5.5.1 Error: command not recognized\r\n");
    let w = wire_reply_after(true, &[EHLO], b"AUTH X\rY\0-\x01\r\n");
    assert_eq!(w, "504 5.5.4 Unrecognized authentication type\r\n");
    let w = wire_reply_after(true, &[EHLO], format!("AUTH {}\r\n", "M".repeat(490)).as_bytes());
    assert_eq!(w, "504 5.5.4 Unrecognized authentication type\r\n");
    // A HELO name with a control byte (C0 or C1), or one of 400 octets, is refused unquoted...
    for bad in [&b"EHLO c\r.test\r\n"[..], b"HELO c\x01.test\r\n", "EHLO c\u{85}.test\r\n".as_bytes(), "EHLO c\u{2028}.test\r\n".as_bytes()] {
        let w = wire_reply_after(true, &[], bad);
        assert_eq!(w, "501 5.5.4 Syntax error: invalid domain name\r\n", "{:?}", String::from_utf8_lossy(bad));
    }
    let w = wire_reply_after(true, &[], format!("EHLO {}\r\n", "a".repeat(400)).as_bytes());
    assert_eq!(w, "501 5.5.4 Syntax error: invalid domain name\r\n");
    // ... and a good one is answered with our name, not the client's.
    assert_eq!(wire_reply_after(true, &[], b"HELO client.test\r\n"), "250 mta.test\r\n");
    // Bad addresses are refused without quoting them.
    let w = wire_reply_after(true, &[EHLO], b"MAIL FROM:<a\rb@x.test>\r\n");
    assert_eq!(w, "501 5.1.7 Bad sender address syntax\r\n");
}

/// Refuses every recipient at `gone.test`, as a suppression list would.
#[derive(Debug)]
struct GoneGate;

impl super::server::RecipientGate for GoneGate {
    fn refuse(&self, rcpt: &super::address::Address) -> Option<Reply> {
        (rcpt.domain() == "gone.test").then(|| Reply::new(550, (5, 1, 1), format!("<{}>: suppressed (bad-mailbox)", rcpt.raw)))
    }
}

#[test]
fn a_gated_recipient_is_refused_alone_and_never_counts_as_an_error() {
    let limits = Rc::new(ServerLimits { hard_error_limit: 2, recipient_gate: Some(Rc::new(GoneGate)), ..(*limits()).clone() });
    let mut s = Server::new(limits, true);
    let mut input = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n".to_vec();
    for i in 0..5 {
        input.extend_from_slice(format!("RCPT TO:<u{i}@gone.test>\r\n").as_bytes());
    }
    input.extend_from_slice(b"RCPT TO:<ok@y.test>\r\nDATA\r\nhi\r\n.\r\n");
    let mut replies = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        match s.step(&input[pos..]) {
            Step::Reply { consumed, reply } => {
                pos += consumed;
                replies.push(first_line(&reply));
            }
            Step::Message { consumed, .. } => {
                pos += consumed;
                replies.push(first_line(&s.committed("ID")));
            }
            Step::Need { consumed } | Step::Body { consumed, .. } => pos += consumed,
            other => panic!("unexpected {other:?}"),
        }
    }
    let refused: Vec<&String> = replies.iter().filter(|r| r.starts_with("550")).collect();
    assert_eq!(refused.len(), 5, "{replies:?}");
    assert_eq!(refused[0], "550 5.1.1 <u0@gone.test>: suppressed (bad-mailbox)");
    assert_eq!(s.transaction().map(|t| t.recipients.len()), None, "the transaction completed");
    assert!(replies.last().unwrap().starts_with("250"), "five refusals under a hard error limit of 2 kept the session: {replies:?}");
    assert_eq!(codes(&replies).iter().filter(|c| **c == "250").count(), 4, "EHLO, MAIL, the good RCPT, the message");
}
