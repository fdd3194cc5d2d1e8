//! The SMTP server state machine (`smtp::server`), driven the way `session.rs` drives it.
//!
//! Input: one configuration byte (relay allowed, STARTTLS and AUTH offered, read size), then
//! the client's bytes, delivered in reads of that size so every split of the stream is
//! reachable. Invariants: no panic; `consumed` never exceeds the bytes offered and body bytes
//! never exceed `consumed`; the session always makes progress (bounded steps); every reply
//! line fits RFC 5321's 512 octets; and every message the machine completes is safe to spool
//! and relay: CRLF-only, no line that is a lone dot (no smuggled end of data), text lines
//! within 1000 octets, at most `max_message_size` octets, with a sender and a recipient.
use crate::smtp::reply::Reply;
use crate::smtp::server::{Server, ServerLimits, Step, MAX_COMMAND_LINE};
use std::rc::Rc;

const MAX_MESSAGE_SIZE: u64 = 2000;
const READ_SIZES: [usize; 16] = [1, 2, 3, 4, 5, 7, 8, 13, 16, 31, 64, 100, 511, 512, 1024, 1 << 20];

/// The driver's state: the stream, how much of it has been "read", how much consumed.
struct Driver<'a> {
    input: &'a [u8],
    read: usize,
    avail: usize,
    pos: usize,
    body: Vec<u8>,
    messages: usize,
}

/// Harness entry point.
pub fn run(data: &[u8]) {
    let Some((&cfg, input)) = data.split_first() else { return };
    let limits = Rc::new(ServerLimits {
        hostname: "mx.fuzz.test".into(),
        max_message_size: MAX_MESSAGE_SIZE,
        max_recipients: 3,
        hard_error_limit: 40,
        local_domains: vec!["local.test".into()],
        // Bit 2: a suppression-style gate refusing recipients whose local part starts with 'x'.
        recipient_gate: (cfg & 4 != 0).then(|| {
            let gate: Rc<dyn crate::smtp::server::RecipientGate> = Rc::new(XGate);
            gate
        }),
    });
    let mut s = Server::new(limits, cfg & 1 != 0);
    if cfg & 2 != 0 {
        s.offer_tls();
    }
    if cfg & 4 != 0 {
        s.offer_auth(cfg & 8 != 0);
    }
    check_reply(&s.greeting());
    let read = READ_SIZES[(cfg >> 4) as usize];
    let mut d = Driver { input, read, avail: read.min(input.len()), pos: 0, body: Vec::new(), messages: 0 };
    let max_steps = 4 * input.len() + 64;
    for _ in 0..max_steps {
        if !d.step(&mut s) {
            return;
        }
    }
    panic!("no progress: {max_steps} steps over {} input bytes", input.len());
}

impl Driver<'_> {
    /// One step of the machine; false when the session is over.
    fn step(&mut self, s: &mut Server) -> bool {
        let window = &self.input[self.pos..self.avail];
        let step = s.step(window);
        let consumed = consumed(&step);
        assert!(consumed <= window.len(), "consumed {consumed} of {} offered bytes: {step:?}", window.len());
        match step {
            Step::Need { consumed: 0 } => return self.read_more(),
            Step::Need { .. } => {}
            Step::Reply { reply, .. } => check_reply(&reply),
            Step::Close { reply, .. } => {
                check_reply(&reply);
                return false;
            }
            Step::Body { prefix, body, .. } => self.take_body(prefix, &window[..body], consumed),
            Step::Message { prefix, body, .. } => {
                self.take_body(prefix, &window[..body], consumed);
                self.message(s);
            }
            Step::StartTls { reply, .. } => {
                check_reply(&reply);
                // The driver throws away what was buffered after STARTTLS (CVE-2011-0411).
                self.pos = self.avail;
                s.tls_started();
                return true;
            }
            Step::Authenticate { user, password, .. } => check_reply(&s.auth_result(&user, password == "good")),
            Step::DataRefused { reply, .. } => {
                check_reply(&reply);
                self.body.clear();
            }
        }
        self.pos += consumed;
        true
    }

    fn read_more(&mut self) -> bool {
        if self.avail == self.input.len() {
            return false;
        }
        self.avail = (self.avail + self.read).min(self.input.len());
        true
    }

    fn take_body(&mut self, prefix: &[u8], body: &[u8], consumed: usize) {
        assert!(body.len() <= consumed, "body {} > consumed {consumed}", body.len());
        assert!(prefix.len() <= 2, "held-back prefix {prefix:?}");
        self.body.extend_from_slice(prefix);
        self.body.extend_from_slice(body);
    }

    /// A completed message: check it is safe to spool, then commit (or fail) as the driver would.
    fn message(&mut self, s: &mut Server) {
        let body = std::mem::take(&mut self.body);
        check_body(&body);
        let tx = s.transaction().expect("a message without a transaction");
        assert!(!tx.recipients.is_empty(), "a message without recipients");
        assert!(tx.recipients.len() <= 3, "{} recipients over the limit", tx.recipients.len());
        self.messages += 1;
        let reply = match self.messages % 3 {
            0 => s.commit_failed(self.messages.is_multiple_of(2)),
            _ => s.committed("0000000000000000AB"),
        };
        check_reply(&reply);
    }
}

fn consumed(step: &Step) -> usize {
    match *step {
        Step::Need { consumed }
        | Step::Reply { consumed, .. }
        | Step::Close { consumed, .. }
        | Step::Body { consumed, .. }
        | Step::Message { consumed, .. }
        | Step::StartTls { consumed, .. }
        | Step::Authenticate { consumed, .. }
        | Step::DataRefused { consumed, .. } => consumed,
    }
}

/// A reply we send must be well-formed and bounded (RFC 5321 4.5.3.1.5: 512 octets a line).
fn check_reply(r: &Reply) {
    assert!((200..600).contains(&r.code), "reply code {}", r.code);
    let wire = r.to_wire();
    crate::assert_crlf_only("reply", wire.as_bytes());
    for line in wire.split_inclusive("\r\n") {
        assert!(line.len() <= MAX_COMMAND_LINE, "reply line of {} octets: {line:?}", line.len());
    }
}

/// A body the machine accepted, in wire form, as it would be spooled and relayed.
fn check_body(b: &[u8]) {
    crate::assert_crlf_only("accepted body", b);
    assert!(b.is_empty() || b.ends_with(b"\r\n"), "accepted body does not end with CRLF");
    let mut unstuffed = 0usize;
    for line in b.split_inclusive(|&c| c == b'\n') {
        assert!(line != b".\r\n", "a lone-dot line inside an accepted body (smuggled end of data)");
        let text = line.strip_prefix(b".").unwrap_or(line);
        assert!(text.len() <= 1000, "text line of {} octets accepted", text.len());
        unstuffed += text.len();
    }
    assert!(unstuffed as u64 <= MAX_MESSAGE_SIZE, "{unstuffed} octets accepted over the {MAX_MESSAGE_SIZE} limit");
}

/// Refuses local parts starting with `x`, as a suppression list would refuse its entries.
#[derive(Debug)]
struct XGate;

impl crate::smtp::server::RecipientGate for XGate {
    fn refuse(&self, rcpt: &crate::smtp::address::Address) -> Option<crate::smtp::reply::Reply> {
        rcpt.raw.starts_with('x').then(|| crate::smtp::reply::Reply::new(550, (5, 1, 1), "suppressed"))
    }
}
