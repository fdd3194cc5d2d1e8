//! Byte-vector tests of the server state machine: every hostile-input rule of the core issue.
use super::reply::Reply;
use super::server::{Server, ServerLimits, Step};
use std::rc::Rc;

fn limits() -> Rc<ServerLimits> {
    Rc::new(ServerLimits {
        hostname: "mta.test".into(),
        max_message_size: 1000,
        max_recipients: 100,
        hard_error_limit: 20,
        local_domains: vec!["local.test".into()],
    })
}

/// What a client script did to the machine, seen as the driver (session.rs) sees it.
#[derive(Debug, Default)]
struct Outcome {
    /// First line of every reply, greeting included.
    replies: Vec<String>,
    /// Bodies of messages the machine completed and the driver committed (`Step::Message`).
    bodies: Vec<Vec<u8>>,
    /// Body bytes handed to the driver (`Step::Body`) of messages then refused with
    /// `Step::DataRefused`, which tells the driver to discard what it spooled for them.
    refused: Vec<Vec<u8>>,
    /// Body bytes handed out that no Message, DataRefused or new DATA ever resolved: the
    /// driver would keep them pinned in the spool.
    pending: Vec<u8>,
    closed: bool,
}

impl Outcome {
    /// Nothing of a refused message stays spooled: no message was committed, the body bytes
    /// handed out were all discarded by exactly `refusals` DataRefused steps, and none is left
    /// waiting for a verdict.
    fn assert_nothing_spooled(&self, refusals: usize) {
        assert!(self.bodies.is_empty(), "committed: {:?}", self.bodies);
        assert_eq!(self.refused.len(), refusals, "messages refused with DataRefused");
        assert!(self.pending.is_empty(), "body bytes left spooled: {:?}", String::from_utf8_lossy(&self.pending));
    }
}

/// Drive a whole client script through the machine, as a driver would, committing messages.
fn session(relay: bool, input: &[u8]) -> Outcome {
    session_in_reads(relay, input, input.len().max(1))
}

/// The same, with the client's bytes arriving `read` at a time (a driver's socket reads).
fn session_in_reads(relay: bool, input: &[u8], read: usize) -> Outcome {
    let mut s = Server::new(limits(), relay);
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

fn codes(r: &[String]) -> Vec<&str> {
    r.iter().map(|l| &l[..3]).collect()
}

const ENVELOPE: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n";

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
    let Outcome { replies: r, .. } = session(true, b"MAIL FROM:<a@b.test>\r\nEHLO c.test\r\nRCPT TO:<x@y.test>\r\nDATA\r\nMAIL FROM:<a@b.test>\r\nDATA\r\n");
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
    for ext in ["250-PIPELINING", "250-SIZE 1000", "250-8BITMIME", "250-SMTPUTF8", "250 ENHANCEDSTATUSCODES"] {
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
