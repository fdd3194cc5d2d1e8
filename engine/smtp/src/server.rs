//! The SMTP server state machine (RFC 5321 + PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
//! ENHANCEDSTATUSCODES, CHUNKING), sans I/O.
//!
//! The driver hands it the bytes it has buffered; it answers with one [`Step`] at a time:
//! a reply to send, body bytes to spool, or a complete message. It owns the session's protocol
//! state and limits, never a socket, a clock or the spool. Memory is bounded: it never holds
//! more than one command line, and body bytes are only pointed at, never kept.
//!
//! BDAT (RFC 3030) bodies come out in the same wire form as DATA bodies (see [`crate::chunk`]).
//! BINARYMIME is not offered: the spool keeps bodies in DATA's wire form, the delivery agent
//! relays with DATA to a server without CHUNKING, and RFC 3030 3 forbids relaying a BINARYMIME
//! message to a server that cannot take it in BDAT; offering it would mean accepting mail we
//! cannot pass on.
use super::address::Address;
use super::address::AddressError;
use super::auth::{self, AuthState, AuthStep};
use super::chunk::ChunkNormaliser;
use super::command::{parse_command, BodyType, Command, CommandError, MailParams};
use super::data::DataScanner;
use super::reply::{echo, Reply};

/// Longest command line, CRLF included (RFC 5321 4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;

/// Most characters of a client's MAIL/RCPT parameter quoted back in `555` (enough for any
/// keyword and value worth reading; the reply line stays far below 512 octets).
pub const MAX_ECHOED_PARAM: usize = 64;

/// Most characters of an address quoted back (RFC 5321 4.5.3.1.1/2: 64 + 1 + 255).
pub const MAX_ECHOED_ADDRESS: usize = 320;

/// A local verdict on a recipient that passed every protocol and relay check, e.g. a
/// suppression list. A pure lookup: the state machine stays sans-I/O.
pub trait RecipientGate: std::fmt::Debug {
    /// The refusal for `rcpt`, or `None` to accept it.
    fn refuse(&self, rcpt: &Address) -> Option<Reply>;
}

/// Per-listener settings the state machine needs.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Our name in the greeting and EHLO reply.
    pub hostname: String,
    /// Largest message accepted, in unstuffed octets (advertised as SIZE).
    pub max_message_size: u64,
    /// Recipients per transaction; extra ones get `452 4.5.3`.
    pub max_recipients: usize,
    /// Error replies tolerated before the session is closed with `421`.
    pub hard_error_limit: u32,
    /// Domains we accept mail for from anyone (no relay check).
    pub local_domains: Vec<String>,
    /// Refuses recipients for local reasons (suppression); such a refusal does not count
    /// towards `hard_error_limit`: a sender injecting a list is not misbehaving.
    pub recipient_gate: Option<std::rc::Rc<dyn RecipientGate>>,
}

/// The transaction being built by MAIL/RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Reverse path; `None` is the null sender.
    pub sender: Option<Address>,
    /// MAIL parameters.
    pub params: MailParams,
    /// Accepted forward paths.
    pub recipients: Vec<Address>,
}

#[derive(Debug)]
enum Phase {
    Command,
    /// An over-long command line is being discarded up to its CRLF.
    DrainLine,
    Data(DataScanner),
    /// An AUTH exchange waits for a continuation line.
    Auth(AuthState),
    /// Credentials are being verified by the driver.
    AwaitAuth,
    /// A complete message awaits the driver's verdict (spooled or not).
    AwaitCommit,
    /// The octets of a BDAT chunk are being read.
    Bdat(BdatChunk),
}

/// The BDAT chunk being read.
#[derive(Debug)]
struct BdatChunk {
    size: u64,
    remaining: u64,
    last: bool,
    /// Set when the chunk is refused: its octets are read and thrown away (never parsed as
    /// commands), then the refusal is sent.
    refusal: Option<Refusal>,
}

/// Why a BDAT chunk is refused.
#[derive(Debug)]
enum Refusal {
    /// There is no transaction to add it to: an error reply, nothing to discard.
    NoTransaction(Reply),
    /// The message fails (RFC 3030 4.2): the transaction is reset and what was spooled for it
    /// is discarded.
    Message(Reply),
}

/// What the driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Everything usable was consumed; read more input (after flushing replies).
    Need {
        /// Bytes consumed.
        consumed: usize,
    },
    /// Send this reply.
    Reply {
        /// Bytes consumed.
        consumed: usize,
        /// The reply.
        reply: Reply,
    },
    /// Send this reply and close the connection.
    Close {
        /// Bytes consumed.
        consumed: usize,
        /// The reply.
        reply: Reply,
    },
    /// Body bytes: `prefix` then `input[..body]`, in wire form.
    Body {
        /// Bytes consumed.
        consumed: usize,
        /// Held-back bytes released as body.
        prefix: &'static [u8],
        /// Body bytes at the start of the input.
        body: usize,
    },
    /// The last body bytes, then the message is complete: spool it, then call
    /// [`Server::committed`] or [`Server::commit_failed`].
    Message {
        /// Bytes consumed.
        consumed: usize,
        /// Held-back bytes released as body.
        prefix: &'static [u8],
        /// Body bytes at the start of the input.
        body: usize,
    },
    /// Send this `220`, throw away everything buffered after the STARTTLS line (CVE-2011-0411),
    /// run the TLS handshake, then call [`Server::tls_started`].
    StartTls {
        /// Bytes consumed.
        consumed: usize,
        /// The `220` reply.
        reply: Reply,
    },
    /// Verify these credentials (off the event loop), then call [`Server::auth_result`].
    Authenticate {
        /// Bytes consumed.
        consumed: usize,
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// The message in progress is dropped (refused, or a BDAT transaction reset by RSET or
    /// EHLO): discard what was spooled for it and send the reply.
    DataRefused {
        /// Bytes consumed.
        consumed: usize,
        /// The refusal.
        reply: Reply,
    },
}

/// One SMTP server session.
#[derive(Debug)]
pub struct Server {
    limits: std::rc::Rc<ServerLimits>,
    relay_allowed: bool,
    helo: Option<String>,
    esmtp: bool,
    tx: Option<Transaction>,
    /// The body of a BDAT transaction, once its first chunk came.
    bdat: Option<ChunkNormaliser>,
    phase: Phase,
    errors: u32,
    eight_bit: bool,
    tls_available: bool,
    tls_active: bool,
    /// AUTH is configured; `Some(true)` when it may be used without TLS (trusted listener).
    auth: Option<bool>,
    user: Option<String>,
}

impl Server {
    /// A new session; `relay_allowed` says whether the client is in `relay_networks`.
    pub fn new(limits: std::rc::Rc<ServerLimits>, relay_allowed: bool) -> Self {
        Self {
            limits,
            relay_allowed,
            helo: None,
            esmtp: false,
            tx: None,
            bdat: None,
            phase: Phase::Command,
            errors: 0,
            eight_bit: false,
            tls_available: false,
            tls_active: false,
            auth: None,
            user: None,
        }
    }

    /// Offer SMTP AUTH: under TLS, or also in plaintext on a trusted listener.
    pub fn offer_auth(&mut self, without_tls: bool) {
        self.auth = Some(without_tls);
    }

    fn auth_usable(&self) -> bool {
        self.auth.is_some_and(|plain_ok| plain_ok || self.tls_active)
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The driver's verdict on [`Step::Authenticate`]. Success lets the session relay.
    pub fn auth_result(&mut self, user: &str, ok: bool) -> Reply {
        self.phase = Phase::Command;
        if ok {
            self.user = Some(user.to_string());
            self.relay_allowed = true;
            Reply::new(235, (2, 7, 0), "Authentication successful")
        } else {
            self.errors += 1;
            Reply::new(535, (5, 7, 8), "Authentication credentials invalid")
        }
    }

    /// Offer STARTTLS (a server certificate is configured).
    pub fn offer_tls(&mut self) {
        self.tls_available = true;
    }

    /// The handshake after STARTTLS succeeded: the session starts over (RFC 3207 4.2): the
    /// client must say EHLO again, and nothing from before TLS carries over.
    pub fn tls_started(&mut self) {
        self.tls_active = true;
        self.helo = None;
        self.esmtp = false;
        self.tx = None;
        self.bdat = None;
        self.phase = Phase::Command;
    }

    /// True once TLS is active.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// The `220` greeting.
    pub fn greeting(&self) -> Reply {
        Reply::plain(220, format!("{} ESMTP ringpost", self.limits.hostname))
    }

    /// The HELO/EHLO name the client gave, once it has.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// True while the client is sending DATA or a BDAT chunk (the driver uses the data-block
    /// timeout then).
    pub fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Data(_) | Phase::Bdat(_))
    }

    /// The transaction of the message just completed (after [`Step::Message`]).
    pub fn transaction(&self) -> Option<&Transaction> {
        self.tx.as_ref()
    }

    /// Whether the completed message carried 8-bit bytes.
    pub fn eight_bit(&self) -> bool {
        self.eight_bit
    }

    /// The message was spooled durably: reply `250` and start over.
    pub fn committed(&mut self, queue_id: &str) -> Reply {
        self.finish_transaction();
        Reply::new(250, (2, 0, 0), format!("Ok: queued as {queue_id}"))
    }

    /// The spool could not take the message: `452 4.3.1` for a full disk, `451 4.3.0` otherwise.
    pub fn commit_failed(&mut self, disk_full: bool) -> Reply {
        self.finish_transaction();
        if disk_full {
            Reply::new(452, (4, 3, 1), "Insufficient system storage, try again later")
        } else {
            Reply::new(451, (4, 3, 0), "Local error in processing, try again later")
        }
    }

    /// The session is being shut down by the server (idle or trickle timeout, shutdown).
    pub fn timeout_reply(&self) -> Reply {
        Reply::new(421, (4, 4, 2), format!("{} Error: timeout exceeded, closing connection", self.limits.hostname))
    }

    fn finish_transaction(&mut self) {
        self.tx = None;
        self.bdat = None;
        self.phase = Phase::Command;
        self.eight_bit = false;
    }

    /// Advance over buffered `input`.
    pub fn step(&mut self, input: &[u8]) -> Step {
        match &mut self.phase {
            Phase::Data(_) if input.is_empty() => Step::Need { consumed: 0 },
            Phase::Data(scanner) => {
                let f = scanner.feed(input);
                let over = scanner.unstuffed_len > self.limits.max_message_size;
                let (prefix, body) = if over { (&b""[..], 0) } else { (f.prefix, f.body) };
                if !f.done {
                    return Step::Body { consumed: f.consumed, prefix, body };
                }
                let s = std::mem::take(scanner);
                self.eight_bit = s.eight_bit;
                let refuse = |reply| Step::DataRefused { consumed: f.consumed, reply };
                if s.bare_newline {
                    self.finish_transaction();
                    self.errors += 1;
                    return refuse(Reply::new(554, (5, 5, 2), "Message refused: bare CR or LF in message data"));
                }
                if s.long_line {
                    self.finish_transaction();
                    return refuse(Reply::new(500, (5, 5, 2), "Message refused: line longer than 1000 octets"));
                }
                if over {
                    self.finish_transaction();
                    return refuse(Reply::new(552, (5, 3, 4), "Message exceeds fixed maximum message size"));
                }
                self.phase = Phase::AwaitCommit;
                Step::Message { consumed: f.consumed, prefix, body }
            }
            Phase::AwaitCommit | Phase::AwaitAuth => Step::Need { consumed: 0 },
            Phase::Bdat(_) => self.bdat_step(input),
            Phase::Auth(_) => {
                let Some(lf) = input.iter().take(MAX_COMMAND_LINE * 2).position(|&b| b == b'\n') else {
                    if input.len() >= MAX_COMMAND_LINE * 2 {
                        self.phase = Phase::DrainLine;
                        return Step::Need { consumed: input.len() };
                    }
                    return Step::Need { consumed: 0 };
                };
                let line = String::from_utf8_lossy(&input[..lf]).trim_end_matches('\r').to_string();
                let Phase::Auth(st) = std::mem::replace(&mut self.phase, Phase::Command) else { unreachable!() };
                self.auth_step(lf + 1, auth::next(st, &line))
            }
            Phase::DrainLine => match input.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.phase = Phase::Command;
                    self.error_reply(i + 1, Reply::new(500, (5, 5, 2), "Line too long"))
                }
                None => Step::Need { consumed: input.len() },
            },
            Phase::Command => {
                let Some(lf) = input.iter().take(MAX_COMMAND_LINE).position(|&b| b == b'\n') else {
                    if input.len() >= MAX_COMMAND_LINE {
                        self.phase = Phase::DrainLine;
                        return Step::Need { consumed: MAX_COMMAND_LINE };
                    }
                    return Step::Need { consumed: 0 };
                };
                if lf == 0 || input[lf - 1] != b'\r' {
                    return self.error_reply(lf + 1, Reply::new(500, (5, 5, 2), "Command lines must end with CRLF"));
                }
                self.command(lf + 1, &input[..lf - 1])
            }
        }
    }

    fn error_reply(&mut self, consumed: usize, reply: Reply) -> Step {
        self.errors += 1;
        if self.errors > self.limits.hard_error_limit {
            return Step::Close { consumed, reply: Reply::new(421, (4, 7, 0), format!("{} Error: too many errors", self.limits.hostname)) };
        }
        Step::Reply { consumed, reply }
    }

    fn command(&mut self, consumed: usize, line: &[u8]) -> Step {
        let cmd = match parse_command(line) {
            Ok(c) => c,
            Err(e) => return self.error_reply(consumed, command_error_reply(e)),
        };
        let reply = |reply| Step::Reply { consumed, reply };
        match cmd {
            Command::Ehlo(name) => {
                self.helo = Some(name);
                self.esmtp = true;
                self.reset_transaction(consumed, self.ehlo_reply())
            }
            Command::Helo(name) => {
                self.helo = Some(name);
                self.esmtp = false;
                self.reset_transaction(consumed, Reply::plain(250, self.limits.hostname.clone()))
            }
            Command::Mail(sender, params) => self.mail(consumed, sender, params),
            Command::Rcpt(to) => self.rcpt(consumed, to),
            Command::Data => match &self.tx {
                None => self.error_reply(consumed, Reply::new(503, (5, 5, 1), "Error: need MAIL command")),
                // RFC 3030 2: DATA after BDAT in one transaction is 503; the client must RSET.
                Some(_) if self.bdat.is_some() => self.error_reply(consumed, Reply::new(503, (5, 5, 1), "Error: DATA after BDAT, send RSET")),
                Some(tx) if tx.recipients.is_empty() => self.error_reply(consumed, Reply::new(503, (5, 5, 1), "Error: need RCPT command")),
                Some(_) => {
                    self.phase = Phase::Data(DataScanner::new());
                    reply(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"))
                }
            },
            Command::Rset => self.reset_transaction(consumed, Reply::new(250, (2, 0, 0), "Ok")),
            Command::Bdat { size, last } => self.bdat(consumed, size, last),
            Command::Noop => reply(Reply::new(250, (2, 0, 0), "Ok")),
            Command::Quit => Step::Close { consumed, reply: Reply::new(221, (2, 0, 0), "Bye") },
            Command::Vrfy => reply(Reply::new(252, (2, 5, 0), "Cannot VRFY user, but will accept message")),
            Command::Help => reply(Reply::new(214, (2, 0, 0), "See RFC 5321")),
            Command::StartTls if self.tls_available && !self.tls_active => {
                if self.tx.is_some() {
                    return self.error_reply(consumed, Reply::new(503, (5, 5, 1), "Error: STARTTLS inside a mail transaction"));
                }
                Step::StartTls { consumed, reply: Reply::new(220, (2, 0, 0), "Ready to start TLS") }
            }
            Command::StartTls if self.tls_active => self.error_reply(consumed, Reply::new(503, (5, 5, 1), "Error: TLS already active")),
            Command::Auth(args) => {
                if self.auth.is_none() {
                    return self.error_reply(consumed, Reply::new(502, (5, 5, 1), "Error: authentication not enabled"));
                }
                if !self.auth_usable() {
                    return self.error_reply(consumed, Reply::new(538, (5, 7, 11), "Encryption required for requested authentication mechanism"));
                }
                if self.helo.is_none() || !self.esmtp {
                    return self.error_reply(consumed, Reply::new(503, (5, 5, 1), "Error: send EHLO first"));
                }
                if self.user.is_some() || self.tx.is_some() {
                    return self.error_reply(consumed, Reply::new(503, (5, 5, 1), "Error: already authenticated or in a transaction"));
                }
                self.auth_step(consumed, auth::start(&args))
            }
            Command::StartTls => self.error_reply(consumed, Reply::new(502, (5, 5, 1), "Error: command not implemented")),
        }
    }

    fn auth_step(&mut self, consumed: usize, step: AuthStep) -> Step {
        match step {
            AuthStep::Challenge(text, st) => {
                self.phase = Phase::Auth(st);
                Step::Reply { consumed, reply: Reply::plain(334, text) }
            }
            AuthStep::Credentials(user, password) => {
                self.phase = Phase::AwaitAuth;
                Step::Authenticate { consumed, user, password }
            }
            AuthStep::Fail(code, enh, text) => self.error_reply(consumed, Reply::new(code, enh, text)),
        }
    }

    fn ehlo_reply(&self) -> Reply {
        let l = &self.limits;
        let mut lines: Vec<std::borrow::Cow<'static, str>> = vec![
            l.hostname.clone().into(),
            "PIPELINING".into(),
            format!("SIZE {}", l.max_message_size).into(),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
        ];
        if self.tls_available && !self.tls_active {
            lines.push("STARTTLS".into());
        }
        if self.auth_usable() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        Reply { code: 250, enhanced: None, lines }
    }

    /// End the transaction (RSET, EHLO, HELO). Body bytes of a BDAT transaction were already
    /// handed to the driver: it must discard them, so the reply comes as [`Step::DataRefused`].
    fn reset_transaction(&mut self, consumed: usize, reply: Reply) -> Step {
        self.tx = None;
        match self.bdat.take() {
            Some(_) => Step::DataRefused { consumed, reply },
            None => Step::Reply { consumed, reply },
        }
    }

    /// `BDAT size [LAST]`: start reading the chunk. Whatever is wrong with it, its octets are
    /// read (and then thrown away) before the reply: they are data, never commands.
    fn bdat(&mut self, consumed: usize, size: u64, last: bool) -> Step {
        let refuse = |code, text| Some(Refusal::NoTransaction(Reply::new(code, (5, 5, 1), text)));
        let refusal = match &self.tx {
            _ if !self.esmtp => refuse(503, "Error: send EHLO first"),
            None => refuse(503, "Error: need MAIL command"),
            // RFC 3030 2: no valid recipients may be answered 554.
            Some(tx) if tx.recipients.is_empty() => refuse(554, "Error: no valid recipients"),
            Some(_) => {
                let body = self.bdat.get_or_insert_with(ChunkNormaliser::new);
                // Normalising only adds octets: a chunk that takes the raw total over the
                // limit takes the message over it. Nothing of it is spooled.
                let over = body.unstuffed_len.saturating_add(size) > self.limits.max_message_size;
                over.then(too_big)
            }
        };
        self.phase = Phase::Bdat(BdatChunk { size, remaining: size, last, refusal });
        Step::Need { consumed }
    }

    /// Inside a BDAT chunk: hand out its octets as wire-form body (or drop them when the chunk
    /// is refused); once all are read, answer it.
    fn bdat_step(&mut self, input: &[u8]) -> Step {
        let Phase::Bdat(chunk) = &mut self.phase else { unreachable!("bdat_step outside a chunk") };
        if chunk.remaining == 0 {
            return self.bdat_chunk_done();
        }
        if input.is_empty() {
            return Step::Need { consumed: 0 };
        }
        let take = usize::try_from(chunk.remaining).unwrap_or(usize::MAX).min(input.len());
        if chunk.refusal.is_some() {
            chunk.remaining -= take as u64;
            return Step::Need { consumed: take };
        }
        let body = self.bdat.as_mut().expect("a BDAT chunk without its transaction body");
        let piece = body.next(&input[..take]);
        chunk.remaining -= piece.body as u64;
        if body.unstuffed_len > self.limits.max_message_size {
            chunk.refusal = Some(too_big());
        } else if body.long_line {
            chunk.refusal = Some(long_line());
        }
        if chunk.refusal.is_some() {
            // The message is refused: this piece is not spooled either.
            return Step::Need { consumed: piece.body };
        }
        Step::Body { consumed: piece.body, prefix: piece.prefix, body: piece.body }
    }

    /// Every octet of the chunk was read: refuse it, acknowledge it, or complete the message.
    fn bdat_chunk_done(&mut self) -> Step {
        let Phase::Bdat(chunk) = std::mem::replace(&mut self.phase, Phase::Command) else { unreachable!("no chunk") };
        match chunk.refusal {
            Some(Refusal::NoTransaction(reply)) => return self.error_reply(0, reply),
            Some(Refusal::Message(reply)) => {
                self.finish_transaction();
                return Step::DataRefused { consumed: 0, reply };
            }
            None if !chunk.last => {
                return Step::Reply { consumed: 0, reply: Reply::new(250, (2, 0, 0), format!("{} octets received", chunk.size)) };
            }
            None => {}
        }
        let mut body = self.bdat.take().expect("a BDAT chunk without its transaction body");
        let suffix = body.finish();
        let refusal = if body.unstuffed_len > self.limits.max_message_size { Some(too_big()) } else { body.long_line.then(long_line) };
        if let Some(Refusal::Message(reply)) = refusal {
            self.finish_transaction();
            return Step::DataRefused { consumed: 0, reply };
        }
        self.eight_bit = body.eight_bit;
        self.phase = Phase::AwaitCommit;
        Step::Message { consumed: 0, prefix: suffix, body: 0 }
    }

    fn mail(&mut self, consumed: usize, sender: Option<Address>, params: MailParams) -> Step {
        if self.helo.is_none() {
            return self.error_reply(consumed, Reply::new(503, (5, 5, 1), "Error: send HELO/EHLO first"));
        }
        if self.tx.is_some() {
            return self.error_reply(consumed, Reply::new(503, (5, 5, 1), "Error: nested MAIL command"));
        }
        if !self.esmtp && (params.size.is_some() || params.smtputf8 || params.body != BodyType::SevenBit) {
            return self.error_reply(consumed, Reply::new(555, (5, 5, 4), "MAIL parameters need EHLO"));
        }
        if params.size.is_some_and(|s| s > self.limits.max_message_size) {
            return self.error_reply(consumed, Reply::new(552, (5, 3, 4), "Message size exceeds fixed limit"));
        }
        self.tx = Some(Transaction { sender, params, recipients: Vec::new() });
        Step::Reply { consumed, reply: Reply::new(250, (2, 1, 0), "Ok") }
    }

    fn rcpt(&mut self, consumed: usize, to: Address) -> Step {
        let Some(tx) = &self.tx else {
            return self.error_reply(consumed, Reply::new(503, (5, 5, 1), "Error: need MAIL command"));
        };
        if tx.recipients.len() >= self.limits.max_recipients {
            return Step::Reply { consumed, reply: Reply::new(452, (4, 5, 3), "Error: too many recipients") };
        }
        if !tx.params.smtputf8 && !to.raw.is_ascii() {
            return self.error_reply(consumed, Reply::new(553, (5, 6, 7), "Non-ASCII address needs SMTPUTF8"));
        }
        let local = self.limits.local_domains.iter().any(|d| d.eq_ignore_ascii_case(to.domain()));
        if !self.relay_allowed && !local {
            return self.error_reply(consumed, Reply::new(554, (5, 7, 1), format!("<{}>: Relay access denied", echo(&to.raw, MAX_ECHOED_ADDRESS))));
        }
        if let Some(reply) = self.limits.recipient_gate.as_ref().and_then(|g| g.refuse(&to)) {
            return Step::Reply { consumed, reply };
        }
        self.tx.as_mut().unwrap().recipients.push(to);
        Step::Reply { consumed, reply: Reply::new(250, (2, 1, 5), "Ok") }
    }
}

/// A BDAT message over `max_message_size` (RFC 1870, as for DATA).
fn too_big() -> Refusal {
    Refusal::Message(Reply::new(552, (5, 3, 4), "Message exceeds fixed maximum message size"))
}

/// A BDAT message with a text line over 1000 octets (as for DATA: it could not be relayed).
fn long_line() -> Refusal {
    Refusal::Message(Reply::new(500, (5, 5, 2), "Message refused: line longer than 1000 octets"))
}

/// The reply to a line that did not parse. Only [`CommandError::UnknownParam`] quotes the
/// client, through [`echo`]; unknown verbs, AUTH mechanisms and HELO names are never echoed.
fn command_error_reply(e: CommandError) -> Reply {
    match e {
        CommandError::InvalidUtf8 => Reply::new(501, (5, 5, 2), "Invalid UTF-8 in command"),
        CommandError::Unknown => Reply::new(500, (5, 5, 1), "Error: command not recognized"),
        CommandError::Syntax(why) => Reply::new(501, (5, 5, 4), format!("Syntax error: {why}")),
        CommandError::BadSender(AddressError::NeedsSmtpUtf8) | CommandError::BadRecipient(AddressError::NeedsSmtpUtf8) => {
            Reply::new(553, (5, 6, 7), "Non-ASCII address needs SMTPUTF8")
        }
        CommandError::BadSender(_) => Reply::new(501, (5, 1, 7), "Bad sender address syntax"),
        CommandError::BadRecipient(_) => Reply::new(501, (5, 1, 3), "Bad recipient address syntax"),
        CommandError::UnknownParam(p) => Reply::new(555, (5, 5, 4), format!("Unsupported parameter {}", echo(&p, MAX_ECHOED_PARAM))),
    }
}
