//! The SMTP client side, sans I/O: a reply parser and a transaction state machine that
//! pipelines MAIL/RCPT/DATA when the server offers PIPELINING.
//!
//! When the server offers PIPELINING and CHUNKING (RFC 2920, RFC 3030) and the driver gives
//! the message's exact size ([`ClientTransaction::in_one_chunk`]), the whole transaction is
//! one write: MAIL, every RCPT and `BDAT <n> LAST` followed by the message's octets. That is
//! one round trip per message instead of DATA's two (the envelope and `354`, then the body and
//! its dot), which on a 50 ms path halves how long each message holds a connection.
//!
//! The delivery driver writes what [`ClientTransaction`] asks for and feeds back every reply;
//! at the end it gets one typed result per recipient. No sockets, no timers here.
//!
//! It also refuses, before sending anything, a message the server cannot take as it is: one
//! that needs SMTPUTF8 (RFC 6531 3.2) or 8BITMIME (RFC 6152 3) from a server that does not offer
//! it. We never downgrade: converting an 8-bit body to 7-bit would break its DKIM signatures.
use super::reply::Reply;

/// Longest reply we buffer before calling the server broken.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Errors in what the server sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The bytes are not an SMTP reply.
    #[error("malformed reply line: {0}")]
    Malformed(String),
    /// A reply larger than [`MAX_REPLY_BYTES`].
    #[error("reply too long")]
    TooLong,
}

/// Take one complete (possibly multi-line) reply off the front of `buf`.
/// Returns the reply and the bytes it used, or `None` if more input is needed.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut lines = Vec::new();
    let mut code = 0u16;
    loop {
        let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') else {
            return if buf.len() > MAX_REPLY_BYTES { Err(ReplyError::TooLong) } else { Ok(None) };
        };
        let raw = &buf[pos..pos + nl];
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        pos += nl + 1;
        let text = String::from_utf8_lossy(line);
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) || (line.len() > 3 && !matches!(line[3], b' ' | b'-')) {
            return Err(ReplyError::Malformed(text.into_owned()));
        }
        let c: u16 = text[..3].parse().unwrap();
        if !(200..600).contains(&c) || (code != 0 && c != code) {
            return Err(ReplyError::Malformed(text.into_owned()));
        }
        code = c;
        lines.push(text.get(4..).unwrap_or("").to_string());
        if line.len() == 3 || line[3] == b' ' {
            break;
        }
    }
    let enhanced = lines.first().and_then(|l| parse_enhanced(l, code));
    let lines = lines
        .into_iter()
        .map(|l| match enhanced {
            Some(_) => l.split_once(' ').map(|(_, t)| t.to_string()).unwrap_or_default().into(),
            None => l.into(),
        })
        .collect();
    Ok(Some((Reply { code, enhanced, lines }, pos)))
}

fn parse_enhanced(line: &str, code: u16) -> Option<(u8, u16, u16)> {
    let word = line.split(' ').next()?;
    let mut it = word.split('.');
    let (c, s, d) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    (it.next().is_none() && c as u16 == code / 100).then_some((c, s, d))
}

/// What EHLO told us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 1870 limit, if advertised.
    pub size: Option<u64>,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 3030 (BDAT).
    pub chunking: bool,
}

impl Capabilities {
    /// Read the keywords of a `250` EHLO reply.
    pub fn from_ehlo(r: &Reply) -> Self {
        let mut c = Self::default();
        for l in r.lines.iter().skip(1) {
            let mut words = l.split_ascii_whitespace();
            match words.next().map(|w| w.to_ascii_uppercase()).as_deref() {
                Some("PIPELINING") => c.pipelining = true,
                Some("8BITMIME") => c.eight_bit_mime = true,
                Some("SMTPUTF8") => c.smtputf8 = true,
                Some("STARTTLS") => c.starttls = true,
                Some("CHUNKING") => c.chunking = true,
                Some("SIZE") => c.size = words.next().and_then(|v| v.parse().ok()).filter(|v| *v > 0),
                _ => {}
            }
        }
        c
    }
}

/// A recipient's result in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    /// Accepted by the server (after the final dot).
    Delivered(Reply),
    /// 4xx (or the transaction broke): try again later.
    Transient(Reply),
    /// 5xx: give up and bounce.
    Permanent(Reply),
}

/// What the driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientStep {
    /// Write these bytes, then read the next reply.
    Send(Vec<u8>),
    /// Read the next reply.
    Read,
    /// Write the message (trace header, body in wire form, then `.\r\n`), then read.
    SendBody,
    /// Write these bytes (MAIL, the RCPTs and `BDAT <n> LAST`), then the message's `n` octets
    /// as the sender meant them (trace header, body with its stuffing dots removed, no end
    /// marker), then read the next reply.
    SendWithChunk(Vec<u8>),
    /// Finished: one result per recipient; `reset` means send RSET before reusing the connection.
    Done {
        /// Per-recipient results in the order given.
        results: Vec<RcptResult>,
        /// The connection must be reset (RSET) before the next transaction.
        reset: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Mail,
    Rcpt(usize),
    Data,
    Dot,
    /// The reply to `BDAT <n> LAST`, sent with the envelope.
    Chunk,
}

/// One MAIL/RCPT/DATA transaction.
#[derive(Debug)]
pub struct ClientTransaction {
    pipelining: bool,
    sender: String,
    rcpts: Vec<String>,
    mail_params: String,
    expect: Expect,
    mail_reply: Option<Reply>,
    rcpt_replies: Vec<Reply>,
    /// Why the server cannot take this message: every recipient fails with it, nothing is sent.
    refusal: Option<Reply>,
    /// Set by [`Self::in_one_chunk`] when the server can take it: the message's exact size,
    /// sent as one `BDAT` chunk with the envelope.
    chunk: Option<u64>,
    chunking: bool,
}

/// What the message needs from the server beyond plain 7-bit SMTP.
struct Needs {
    eight_bit_mime: bool,
    smtputf8: bool,
}

/// RFC 6531 3.2: SMTPUTF8 is needed for a non-ASCII address, or for UTF-8 headers. We only know
/// that the message was submitted with SMTPUTF8 and whether it has 8-bit octets anywhere, so an
/// SMTPUTF8 submission with 8-bit content counts as having UTF-8 headers; one that is all ASCII
/// needs nothing (and then "SHOULD NOT" carry the parameter on).
fn needs(sender: &str, rcpts: &[String], eight_bit: bool, smtputf8: bool) -> (Needs, bool) {
    let utf8_address = !sender.is_ascii() || rcpts.iter().any(|r| !r.is_ascii());
    (Needs { eight_bit_mime: eight_bit, smtputf8: utf8_address || (smtputf8 && eight_bit) }, utf8_address)
}

/// The permanent reply for a message the server cannot take, if it cannot.
fn refusal(caps: &Capabilities, needs: &Needs, utf8_address: bool) -> Option<Reply> {
    const NO_UTF8: &str = "the receiving server does not offer SMTPUTF8 (RFC 6531)";
    if needs.smtputf8 && !caps.smtputf8 {
        return Some(if utf8_address {
            Reply::new(553, (5, 6, 7), format!("Non-ASCII address needs SMTPUTF8, but {NO_UTF8}"))
        } else {
            Reply::new(554, (5, 6, 9), format!("Message with UTF-8 headers needs SMTPUTF8, but {NO_UTF8}"))
        });
    }
    if needs.eight_bit_mime && !caps.eight_bit_mime {
        return Some(Reply::new(
            554,
            (5, 6, 3),
            "8-bit message, but the receiving server does not offer 8BITMIME; it is not converted to 7-bit because that would break its DKIM signatures (RFC 6152)",
        ));
    }
    None
}

impl ClientTransaction {
    /// Prepare a transaction. `eight_bit` says the content has 8-bit octets, `smtputf8` that it
    /// was submitted with SMTPUTF8; they add BODY=8BITMIME / SMTPUTF8 when the message needs
    /// them, and when the server does not offer what the message needs, [`Self::start`] ends
    /// the transaction at once with a permanent failure for every recipient. `size` adds SIZE=.
    pub fn new(caps: &Capabilities, sender: &str, rcpts: Vec<String>, size: u64, eight_bit: bool, smtputf8: bool) -> Self {
        let (needs, utf8_address) = needs(sender, &rcpts, eight_bit, smtputf8);
        let mut mail_params = String::new();
        if caps.size.is_some() {
            mail_params.push_str(&format!(" SIZE={size}"));
        }
        if needs.eight_bit_mime && caps.eight_bit_mime {
            mail_params.push_str(" BODY=8BITMIME");
        }
        if needs.smtputf8 && caps.smtputf8 {
            mail_params.push_str(" SMTPUTF8");
        }
        Self {
            refusal: refusal(caps, &needs, utf8_address),
            pipelining: caps.pipelining,
            sender: sender.to_string(),
            rcpts,
            mail_params,
            expect: Expect::Mail,
            mail_reply: None,
            rcpt_replies: Vec::new(),
            chunk: None,
            chunking: caps.chunking,
        }
    }

    /// Send the message as one `BDAT <octets> LAST` chunk in the same write as MAIL and RCPT
    /// when the server offers both CHUNKING and PIPELINING; otherwise (and for a message
    /// refused before sending) nothing changes and DATA is used. `octets` is the exact size
    /// the driver will write after the envelope: the message as the sender meant it, stuffing
    /// dots removed. The envelope's SIZE= becomes that exact size too.
    pub fn in_one_chunk(mut self, octets: u64) -> Self {
        if self.chunking && self.pipelining {
            self.chunk = Some(octets);
            if let Some(at) = self.mail_params.find(" SIZE=") {
                let end = self.mail_params[at + 1..].find(' ').map_or(self.mail_params.len(), |e| at + 1 + e);
                self.mail_params.replace_range(at..end, &format!(" SIZE={octets}"));
            }
        }
        self
    }

    /// True while the reply awaited may come only after the server has taken the whole
    /// message, so RFC 5321 4.5.3.2.6's longer wait applies: the final dot's reply, and every
    /// reply of a transaction sent as one chunk (a pipelining server may hold its MAIL and
    /// RCPT replies until it has read, and judged, the chunk that followed them).
    pub fn awaits_end_of_message(&self) -> bool {
        matches!(self.expect, Expect::Dot | Expect::Chunk) || self.chunk.is_some()
    }

    /// The connection broke before the transaction finished: the result of each recipient
    /// that what the server already said decides, in order (`None`: undecided, the driver
    /// reports its error). MAIL refused decides every recipient with its reply (a `421 4.7.0`
    /// or `554 5.7.1` before a close is the server's answer, not a network failure); a
    /// refused RCPT decides its recipient. An accepted recipient is never decided here: only
    /// the reply to the whole message delivers.
    pub fn on_connection_lost(&self) -> Vec<Option<RcptResult>> {
        match &self.mail_reply {
            Some(m) if m.code / 100 != 2 => self.rcpts.iter().map(|_| Some(classify(m, false))).collect(),
            _ => (0..self.rcpts.len()).map(|i| self.rcpt_replies.get(i).filter(|r| r.code / 100 != 2).map(|r| classify(r, false))).collect(),
        }
    }

    fn mail_cmd(&self) -> String {
        format!("MAIL FROM:<{}>{}\r\n", self.sender, self.mail_params)
    }

    fn rcpt_cmd(&self, i: usize) -> String {
        format!("RCPT TO:<{}>\r\n", self.rcpts[i])
    }

    /// The first bytes to send: MAIL alone, or the whole pipelined envelope. Or, for a
    /// message this server cannot take, `Done` at once: nothing was sent, so no RSET is due and
    /// the connection stays ready for the next message.
    pub fn start(&mut self) -> ClientStep {
        if let Some(r) = self.refusal.take() {
            return ClientStep::Done { results: self.rcpts.iter().map(|_| RcptResult::Permanent(r.clone())).collect(), reset: false };
        }
        let mut out = self.mail_cmd();
        if self.pipelining {
            for i in 0..self.rcpts.len() {
                out.push_str(&self.rcpt_cmd(i));
            }
            if let Some(n) = self.chunk {
                // RFC 3030 4.2: BDAT may be pipelined after MAIL and RCPT; a server that
                // refuses the envelope still reads the n octets and answers the BDAT.
                out.push_str(&format!("BDAT {n} LAST\r\n"));
                return ClientStep::SendWithChunk(out.into_bytes());
            }
            out.push_str("DATA\r\n");
        }
        ClientStep::Send(out.into_bytes())
    }

    fn any_accepted(&self) -> bool {
        self.rcpt_replies.iter().any(|r| r.code / 100 == 2)
    }

    /// Feed the next reply.
    pub fn on_reply(&mut self, r: Reply) -> ClientStep {
        match self.expect {
            Expect::Mail => {
                let ok = r.code / 100 == 2;
                self.mail_reply = Some(r);
                if self.pipelining {
                    self.expect = Expect::Rcpt(0);
                    ClientStep::Read
                } else if ok {
                    self.expect = Expect::Rcpt(0);
                    ClientStep::Send(self.rcpt_cmd(0).into_bytes())
                } else {
                    self.finish_failed(true)
                }
            }
            Expect::Rcpt(i) => {
                self.rcpt_replies.push(r);
                let next = i + 1;
                if next < self.rcpts.len() {
                    self.expect = Expect::Rcpt(next);
                    return if self.pipelining { ClientStep::Read } else { ClientStep::Send(self.rcpt_cmd(next).into_bytes()) };
                }
                if self.chunk.is_some() {
                    self.expect = Expect::Chunk;
                    return ClientStep::Read;
                }
                self.expect = Expect::Data;
                if self.pipelining {
                    ClientStep::Read
                } else if self.any_accepted() {
                    ClientStep::Send(b"DATA\r\n".to_vec())
                } else {
                    self.finish_failed(true)
                }
            }
            Expect::Data => {
                let mail_ok = self.mail_reply.as_ref().is_some_and(|m| m.code / 100 == 2);
                if r.code == 354 && mail_ok && self.any_accepted() {
                    self.expect = Expect::Dot;
                    ClientStep::SendBody
                } else if r.code == 354 {
                    // Pipelined DATA accepted although no recipient was: end it empty and discard.
                    self.expect = Expect::Dot;
                    self.rcpt_replies.iter_mut().filter(|x| x.code / 100 == 2).for_each(|x| *x = r.clone());
                    ClientStep::Send(b".\r\n".to_vec())
                } else {
                    if mail_ok && self.any_accepted() {
                        // DATA refused: every accepted recipient takes DATA's verdict.
                        for x in self.rcpt_replies.iter_mut().filter(|x| x.code / 100 == 2) {
                            *x = r.clone();
                        }
                    }
                    self.finish_failed(true)
                }
            }
            Expect::Dot => self.finish_with_message_reply(&r),
            Expect::Chunk => {
                let mail_ok = self.mail_reply.as_ref().is_some_and(|m| m.code / 100 == 2);
                if mail_ok && self.any_accepted() {
                    self.finish_with_message_reply(&r)
                } else {
                    // Nothing was accepted, so the chunk was read and refused (RFC 3030 2:
                    // 503/554); the results come from MAIL and RCPT, and RSET clears the
                    // server's state whatever it answered.
                    self.finish_failed(true)
                }
            }
        }
    }

    /// The reply to the whole message (its final dot or last chunk) decides for every
    /// recipient the server had accepted; the others keep their RCPT reply.
    fn finish_with_message_reply(&self, r: &Reply) -> ClientStep {
        let results = self.rcpt_replies.iter().map(|rr| if rr.code / 100 == 2 { classify(r, true) } else { classify(rr, false) }).collect();
        ClientStep::Done { results, reset: r.code / 100 != 2 }
    }

    /// No body was sent: derive results from MAIL/RCPT/DATA replies.
    fn finish_failed(&mut self, reset: bool) -> ClientStep {
        let mail = self.mail_reply.clone().expect("finish after MAIL reply");
        let results = (0..self.rcpts.len())
            .map(|i| {
                if mail.code / 100 != 2 {
                    return classify(&mail, false);
                }
                match self.rcpt_replies.get(i) {
                    Some(r) if r.code / 100 != 2 => classify(r, false),
                    // Accepted, but the transaction never completed: try again later.
                    Some(r) => RcptResult::Transient(r.clone()),
                    None => RcptResult::Transient(mail.clone()),
                }
            })
            .collect();
        ClientStep::Done { results, reset }
    }
}

fn classify(r: &Reply, final_dot: bool) -> RcptResult {
    match r.code / 100 {
        2 if final_dot => RcptResult::Delivered(r.clone()),
        5 => RcptResult::Permanent(r.clone()),
        _ => RcptResult::Transient(r.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(s: &str) -> Reply {
        parse_reply(s.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn parses_single_and_multi_line_replies() {
        let (r, n) = parse_reply(b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 100\r\nrest").unwrap().unwrap();
        assert_eq!((r.code, n, r.lines.len()), (250, 43, 3));
        let caps = Capabilities::from_ehlo(&r);
        assert!(caps.pipelining && caps.size == Some(100));
        let r = reply("550 5.1.1 No such user\r\n");
        assert_eq!((r.code, r.enhanced), (550, Some((5, 1, 1))));
        assert_eq!(r.lines[0], "No such user");
        assert_eq!(parse_reply(b"250-partial\r\n250 ").unwrap(), None);
        assert!(parse_reply(b"hello\r\n").is_err());
        assert!(parse_reply(b"250-a\r\n251 b\r\n").is_err());
        assert_eq!(parse_reply(&vec![b'2'; MAX_REPLY_BYTES + 1]), Err(ReplyError::TooLong));
    }

    #[test]
    fn pipelined_transaction_with_mixed_recipients() {
        let caps = Capabilities { pipelining: true, ..Default::default() };
        let mut t = ClientTransaction::new(&caps, "a@b", vec!["x@y".into(), "bad@y".into(), "later@y".into()], 10, false, false);
        assert_eq!(t.start(), ClientStep::Send(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nRCPT TO:<bad@y>\r\nRCPT TO:<later@y>\r\nDATA\r\n".to_vec()));
        assert_eq!(t.on_reply(reply("250 ok\r\n")), ClientStep::Read);
        assert_eq!(t.on_reply(reply("250 ok\r\n")), ClientStep::Read);
        assert_eq!(t.on_reply(reply("550 5.1.1 no\r\n")), ClientStep::Read);
        assert_eq!(t.on_reply(reply("451 4.3.0 later\r\n")), ClientStep::Read);
        assert_eq!(t.on_reply(reply("354 go\r\n")), ClientStep::SendBody);
        let ClientStep::Done { results, reset } = t.on_reply(reply("250 2.0.0 queued\r\n")) else { panic!() };
        assert!(!reset);
        assert!(matches!(results[0], RcptResult::Delivered(_)));
        assert!(matches!(results[1], RcptResult::Permanent(_)));
        assert!(matches!(results[2], RcptResult::Transient(_)));
    }

    #[test]
    fn without_pipelining_commands_go_one_by_one_and_stop_early() {
        let mut t = ClientTransaction::new(&Capabilities::default(), "", vec!["x@y".into()], 10, false, false);
        assert_eq!(t.start(), ClientStep::Send(b"MAIL FROM:<>\r\n".to_vec()));
        assert_eq!(t.on_reply(reply("250 ok\r\n")), ClientStep::Send(b"RCPT TO:<x@y>\r\n".to_vec()));
        let ClientStep::Done { results, reset } = t.on_reply(reply("550 5.1.1 unknown\r\n")) else { panic!() };
        assert!(reset && matches!(results[0], RcptResult::Permanent(_)));
    }

    #[test]
    fn mail_refusal_and_data_temp_failure_apply_to_everyone() {
        let caps = Capabilities { pipelining: true, ..Default::default() };
        let mut t = ClientTransaction::new(&caps, "a@b", vec!["x@y".into()], 1, false, false);
        t.start();
        t.on_reply(reply("421 4.7.0 busy\r\n"));
        t.on_reply(reply("503 5.5.1 need mail\r\n"));
        let ClientStep::Done { results, .. } = t.on_reply(reply("503 5.5.1 need mail\r\n")) else { panic!() };
        assert!(matches!(results[0], RcptResult::Transient(_)), "a 4xx MAIL makes it transient: {results:?}");
        let mut t = ClientTransaction::new(&caps, "a@b", vec!["x@y".into()], 1, false, false);
        t.start();
        t.on_reply(reply("250 ok\r\n"));
        t.on_reply(reply("250 ok\r\n"));
        t.on_reply(reply("354 go\r\n"));
        let ClientStep::Done { results, reset } = t.on_reply(reply("452 4.3.1 full\r\n")) else { panic!() };
        assert!(reset && matches!(results[0], RcptResult::Transient(_)));
    }

    const CHUNKING: Capabilities =
        Capabilities { pipelining: true, chunking: true, eight_bit_mime: false, smtputf8: false, size: Some(5000), starttls: false };

    #[test]
    fn with_chunking_and_pipelining_the_whole_transaction_is_one_write() {
        let mut t =
            ClientTransaction::new(&CHUNKING, "a@b", vec!["x@y".into(), "bad@y".into(), "later@y".into()], 1012, false, false).in_one_chunk(1000);
        assert_eq!(
            t.start(),
            ClientStep::SendWithChunk(
                b"MAIL FROM:<a@b> SIZE=1000\r\nRCPT TO:<x@y>\r\nRCPT TO:<bad@y>\r\nRCPT TO:<later@y>\r\nBDAT 1000 LAST\r\n".to_vec()
            ),
            "SIZE= is the exact size the chunk announces"
        );
        for r in ["250 ok\r\n", "250 ok\r\n", "550 5.1.1 no\r\n", "451 4.3.0 later\r\n"] {
            assert_eq!(t.on_reply(reply(r)), ClientStep::Read);
        }
        let ClientStep::Done { results, reset } = t.on_reply(reply("250 2.0.0 queued\r\n")) else { panic!() };
        assert!(!reset);
        assert!(matches!(&results[0], RcptResult::Delivered(r) if r.to_wire() == "250 2.0.0 queued\r\n"), "{results:?}");
        assert!(matches!(&results[1], RcptResult::Permanent(r) if r.code == 550), "{results:?}");
        assert!(matches!(&results[2], RcptResult::Transient(r) if r.code == 451), "{results:?}");
    }

    #[test]
    fn a_chunk_goes_only_to_a_server_offering_both_chunking_and_pipelining() {
        for caps in [Capabilities { chunking: false, ..CHUNKING }, Capabilities { pipelining: false, ..CHUNKING }] {
            let mut t = ClientTransaction::new(&caps, "a@b", vec!["x@y".into()], 12, false, false).in_one_chunk(10);
            let want: &[u8] = if caps.pipelining { b"MAIL FROM:<a@b> SIZE=12\r\nRCPT TO:<x@y>\r\nDATA\r\n" } else { b"MAIL FROM:<a@b> SIZE=12\r\n" };
            assert_eq!(t.start(), ClientStep::Send(want.to_vec()), "{caps:?}");
        }
        // A message the server cannot take is refused before anything is sent, chunk or not.
        let mut t = ClientTransaction::new(&CHUNKING, "a@b", vec!["x@y".into()], 12, true, false).in_one_chunk(10);
        assert!(matches!(t.start(), ClientStep::Done { reset: false, .. }));
    }

    /// A chunked transaction to `rcpts` played against `replies` (MAIL, each RCPT, the chunk):
    /// every reply but the last asks for the next one; the last ends it.
    fn chunked(rcpts: &[&str], replies: &[&str]) -> (Vec<RcptResult>, bool) {
        let mut t = ClientTransaction::new(&CHUNKING, "a@b", rcpts.iter().map(|r| r.to_string()).collect(), 1, false, false).in_one_chunk(1);
        assert!(matches!(t.start(), ClientStep::SendWithChunk(_)));
        let (last, before) = replies.split_last().expect("at least one reply");
        for r in before {
            assert_eq!(t.on_reply(reply(r)), ClientStep::Read, "{r}");
        }
        let ClientStep::Done { results, reset } = t.on_reply(reply(last)) else { panic!("not done after {last}") };
        (results, reset)
    }

    #[test]
    fn a_refused_chunk_fails_the_accepted_recipients_with_its_reply_and_resets() {
        for (last, transient) in [("452 4.3.1 full\r\n", true), ("552 5.3.4 too big\r\n", false)] {
            let (results, reset) = chunked(&["x@y", "no@y"], &["250 ok\r\n", "250 ok\r\n", "550 5.1.1 no\r\n", last]);
            assert!(reset, "{last}");
            assert_eq!(matches!(&results[0], RcptResult::Transient(r) if r.to_wire() == last), transient, "{results:?}");
            assert_eq!(matches!(&results[0], RcptResult::Permanent(r) if r.to_wire() == last), !transient, "{results:?}");
            assert!(matches!(&results[1], RcptResult::Permanent(r) if r.code == 550), "{results:?}");
        }
    }

    #[test]
    fn a_chunk_after_a_refused_envelope_decides_nothing() {
        // Every RCPT refused: the server reads the chunk and refuses it; RCPT's replies stand.
        let (results, reset) = chunked(&["x@y"], &["250 ok\r\n", "550 5.1.1 no\r\n", "554 5.5.1 no valid recipients\r\n"]);
        assert!(reset && matches!(&results[0], RcptResult::Permanent(r) if r.code == 550), "{results:?}");
        // MAIL refused for now: RCPT and BDAT get 503; the recipient is tried again later.
        let (results, reset) = chunked(&["x@y"], &["451 4.7.1 later\r\n", "503 5.5.1 need MAIL\r\n", "503 5.5.1 need MAIL\r\n"]);
        assert!(reset && matches!(&results[0], RcptResult::Transient(r) if r.code == 451), "{results:?}");
        // A server that answers 250 to the chunk of a transaction with no recipient delivers nothing.
        let (results, _) = chunked(&["x@y"], &["250 ok\r\n", "550 5.1.1 no\r\n", "250 2.0.0 ok\r\n"]);
        assert!(matches!(&results[0], RcptResult::Permanent(_)), "{results:?}");
    }

    #[test]
    fn every_reply_of_a_chunked_transaction_gets_the_end_of_message_wait() {
        let mut t = ClientTransaction::new(&CHUNKING, "a@b", vec!["x@y".into()], 1, false, false).in_one_chunk(1);
        t.start();
        assert!(t.awaits_end_of_message(), "MAIL's reply may wait for the chunk's");
        t.on_reply(reply("250 ok\r\n"));
        assert!(t.awaits_end_of_message());
        let caps = Capabilities { pipelining: true, ..Default::default() };
        let mut t = ClientTransaction::new(&caps, "a@b", vec!["x@y".into()], 1, false, false);
        t.start();
        assert!(!t.awaits_end_of_message(), "DATA's envelope replies come before any body");
        t.on_reply(reply("250 ok\r\n"));
        t.on_reply(reply("250 ok\r\n"));
        assert_eq!(t.on_reply(reply("354 go\r\n")), ClientStep::SendBody);
        assert!(t.awaits_end_of_message());
    }

    #[test]
    fn a_lost_connection_keeps_what_the_server_had_decided() {
        let rcpts = || vec!["x@y".to_string(), "no@y".to_string(), "z@y".to_string()];
        let mut t = ClientTransaction::new(&CHUNKING, "a@b", rcpts(), 1, false, false).in_one_chunk(1);
        t.start();
        assert_eq!(t.on_connection_lost(), vec![None, None, None], "nothing said yet");
        t.on_reply(reply("250 ok\r\n"));
        t.on_reply(reply("250 ok\r\n"));
        t.on_reply(reply("550 5.1.1 no\r\n"));
        let lost = t.on_connection_lost();
        assert!(lost[0].is_none() && lost[2].is_none(), "accepted or unanswered: undecided: {lost:?}");
        assert!(matches!(&lost[1], Some(RcptResult::Permanent(r)) if r.code == 550), "{lost:?}");
        // MAIL refused, then the server closed: everyone gets MAIL's reply, 4xx or 5xx.
        for (mail, permanent) in [("421 4.7.0 [TSS04] deferred\r\n", false), ("554 5.7.1 blocked\r\n", true)] {
            let mut t = ClientTransaction::new(&CHUNKING, "a@b", rcpts(), 1, false, false).in_one_chunk(1);
            t.start();
            t.on_reply(reply(mail));
            for r in t.on_connection_lost() {
                match r {
                    Some(RcptResult::Permanent(r)) if permanent => assert_eq!(r.to_wire(), mail),
                    Some(RcptResult::Transient(r)) if !permanent => assert_eq!(r.to_wire(), mail),
                    other => panic!("{mail}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn mail_parameters_follow_capabilities() {
        let caps = Capabilities { pipelining: false, eight_bit_mime: true, smtputf8: true, size: Some(1000), starttls: false, chunking: false };
        let mut t = ClientTransaction::new(&caps, "a@b", vec!["x@y".into()], 42, true, true);
        assert_eq!(t.start(), ClientStep::Send(b"MAIL FROM:<a@b> SIZE=42 BODY=8BITMIME SMTPUTF8\r\n".to_vec()));
    }

    fn refused_with(t: &mut ClientTransaction, n: usize, wire: &str) {
        let ClientStep::Done { results, reset } = t.start() else { panic!("expected an immediate refusal") };
        assert!(!reset, "nothing was sent, so no RSET is due");
        assert_eq!(results.len(), n);
        for r in results {
            let RcptResult::Permanent(r) = r else { panic!("expected a permanent failure: {r:?}") };
            assert_eq!(r.to_wire(), wire);
        }
    }

    /// Plays a whole pipelined transaction and checks it ends delivered.
    fn delivers(t: &mut ClientTransaction, first: &[u8]) {
        assert_eq!(t.start(), ClientStep::Send(first.to_vec()));
        assert_eq!(t.on_reply(reply("250 ok\r\n")), ClientStep::Read);
        assert_eq!(t.on_reply(reply("250 ok\r\n")), ClientStep::Read);
        assert_eq!(t.on_reply(reply("354 go\r\n")), ClientStep::SendBody);
        let ClientStep::Done { results, reset } = t.on_reply(reply("250 2.0.0 queued\r\n")) else { panic!() };
        assert!(!reset && matches!(results[..], [RcptResult::Delivered(_)]), "{results:?}");
    }

    const UTF8_RCPT: &str = "jos\u{e9}@exampl\u{e9}.test";

    #[test]
    fn eight_bit_message_to_a_server_without_8bitmime_bounces_without_sending() {
        let caps = Capabilities { pipelining: true, size: Some(1000), ..Default::default() };
        let mut t = ClientTransaction::new(&caps, "a@b", vec!["x@y".into(), "z@y".into()], 42, true, false);
        refused_with(&mut t, 2, "554 5.6.3 8-bit message, but the receiving server does not offer 8BITMIME; it is not converted to 7-bit because that would break its DKIM signatures (RFC 6152)\r\n");
    }

    #[test]
    fn eight_bit_message_to_an_8bitmime_server_says_body_8bitmime() {
        let caps = Capabilities { pipelining: true, eight_bit_mime: true, ..Default::default() };
        let mut t = ClientTransaction::new(&caps, "a@b", vec!["x@y".into()], 42, true, false);
        delivers(&mut t, b"MAIL FROM:<a@b> BODY=8BITMIME\r\nRCPT TO:<x@y>\r\nDATA\r\n");
    }

    #[test]
    fn utf8_message_to_a_server_without_smtputf8_bounces_without_sending() {
        // A non-ASCII address: 553 5.6.7, even though the server has 8BITMIME.
        let caps = Capabilities { pipelining: true, eight_bit_mime: true, ..Default::default() };
        let mut t = ClientTransaction::new(&caps, "a@b", vec!["x@y".into(), UTF8_RCPT.into()], 42, true, true);
        refused_with(&mut t, 2, "553 5.6.7 Non-ASCII address needs SMTPUTF8, but the receiving server does not offer SMTPUTF8 (RFC 6531)\r\n");
        let mut t = ClientTransaction::new(&caps, "jos\u{e9}@b", vec!["x@y".into()], 42, false, true);
        refused_with(&mut t, 1, "553 5.6.7 Non-ASCII address needs SMTPUTF8, but the receiving server does not offer SMTPUTF8 (RFC 6531)\r\n");
        // ASCII addresses, but an SMTPUTF8 submission with 8-bit content: UTF-8 headers.
        let mut t = ClientTransaction::new(&caps, "a@b", vec!["x@y".into()], 42, true, true);
        refused_with(
            &mut t,
            1,
            "554 5.6.9 Message with UTF-8 headers needs SMTPUTF8, but the receiving server does not offer SMTPUTF8 (RFC 6531)\r\n",
        );
    }

    #[test]
    fn utf8_message_to_an_smtputf8_server_says_smtputf8() {
        let caps = Capabilities { pipelining: true, eight_bit_mime: true, smtputf8: true, ..Default::default() };
        let mut t = ClientTransaction::new(&caps, "a@b", vec![UTF8_RCPT.into()], 42, true, true);
        delivers(&mut t, "MAIL FROM:<a@b> BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<jos\u{e9}@exampl\u{e9}.test>\r\nDATA\r\n".as_bytes());
        // A non-ASCII address alone (7-bit content) still needs SMTPUTF8, but not 8BITMIME.
        let mut t = ClientTransaction::new(&caps, "a@b", vec![UTF8_RCPT.into()], 42, false, true);
        delivers(&mut t, "MAIL FROM:<a@b> SMTPUTF8\r\nRCPT TO:<jos\u{e9}@exampl\u{e9}.test>\r\nDATA\r\n".as_bytes());
    }

    #[test]
    fn seven_bit_ascii_message_goes_to_a_plain_server_without_parameters() {
        let plain = Capabilities { pipelining: true, ..Default::default() };
        let mut t = ClientTransaction::new(&plain, "a@b", vec!["x@y".into()], 42, false, false);
        delivers(&mut t, b"MAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nDATA\r\n");
        // Submitted with SMTPUTF8 but all ASCII: nothing needs it (RFC 6531 3.2), so it goes.
        let mut t = ClientTransaction::new(&plain, "a@b", vec!["x@y".into()], 42, false, true);
        delivers(&mut t, b"MAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nDATA\r\n");
        let full = Capabilities { pipelining: true, eight_bit_mime: true, smtputf8: true, ..Default::default() };
        let mut t = ClientTransaction::new(&full, "a@b", vec!["x@y".into()], 42, false, true);
        delivers(&mut t, b"MAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nDATA\r\n");
    }
}
