//! The SMTP client side (`smtp::client`): the reply parser and the transaction machine.
//!
//! Input: one byte choosing the recipient count and the client's options (one of them: send
//! the message as one BDAT chunk with the envelope when offered), then the server's
//! byte stream. Replies are parsed off the stream one at a time; the first configures the
//! capabilities (as an EHLO reply) and the rest drive transactions back to back.
//! Invariants: no panic; a parsed reply uses between 1 and the offered bytes, is the same
//! reply when parsed from exactly those bytes, has a code in 200..=599 and a line of text;
//! every finished transaction yields exactly one result per recipient; a recipient is
//! `Delivered` only by a 2xx reply to the final dot or to `BDAT ... LAST` (the last reply
//! fed); the commands the client writes are CRLF-terminated lines, and a chunk's command
//! announces the size it was given.
use crate::smtp::client::{parse_reply, Capabilities, ClientStep, ClientTransaction, RcptResult};
use crate::smtp::reply::Reply;

/// Harness entry point.
pub fn run(data: &[u8]) {
    let Some((&cfg, stream)) = data.split_first() else { return };
    let rcpts: Vec<String> = (0..1 + (cfg & 3) as usize).map(|i| format!("r{i}@d.test")).collect();
    let mut pos = 0;
    let mut caps: Option<Capabilities> = None;
    let mut tx: Option<(ClientTransaction, Vec<Reply>, bool)> = None;
    while let Ok(Some((reply, used))) = parse_reply(&stream[pos..]) {
        assert!(used > 0 && used <= stream.len() - pos, "used {used} of {}", stream.len() - pos);
        assert_eq!(parse_reply(&stream[pos..pos + used]), Ok(Some((reply.clone(), used))), "reply depends on what follows it");
        assert!((200..600).contains(&reply.code) && !reply.lines.is_empty(), "{reply:?}");
        pos += used;
        let Some(c) = &caps else {
            caps = Some(Capabilities::from_ehlo(&reply));
            continue;
        };
        if tx.is_none() {
            let mut t = ClientTransaction::new(c, "s@b.test", rcpts.clone(), 1234, cfg & 4 != 0, cfg & 8 != 0);
            let chunked = cfg & 16 != 0 && c.chunking && c.pipelining;
            if cfg & 16 != 0 {
                t = t.in_one_chunk(1000);
            }
            match t.start() {
                // Refused before sending anything (the server lacks 8BITMIME or SMTPUTF8):
                // every recipient fails permanently, and nothing was said to the server.
                ClientStep::Done { results, reset } => {
                    assert!(!reset, "nothing sent, nothing to reset");
                    assert_eq!(results.len(), rcpts.len(), "one result per recipient");
                    assert!(results.iter().all(|r| matches!(r, RcptResult::Permanent(_))), "{results:?}");
                    continue;
                }
                step => check_send(step),
            }
            tx = Some((t, Vec::new(), chunked));
        }
        let (t, fed, chunked) = tx.as_mut().expect("just set");
        fed.push(reply.clone());
        match t.on_reply(reply) {
            ClientStep::Done { results, .. } => {
                check_results(&results, rcpts.len(), fed, *chunked);
                tx = None;
            }
            step => check_send(step),
        }
    }
    // The stream ended inside a transaction: the connection is lost. What the server had
    // said decides some recipients, never as delivered (no reply to the whole message came).
    if let Some((t, fed, _)) = &tx {
        let lost = t.on_connection_lost();
        assert_eq!(lost.len(), rcpts.len(), "one entry per recipient");
        for r in lost.iter().flatten() {
            match r {
                RcptResult::Delivered(rep) => panic!("delivered by a lost connection: {rep:?}"),
                RcptResult::Permanent(rep) => assert!(rep.code / 100 == 5 && fed.contains(rep), "{rep:?} not a 5xx the server sent"),
                RcptResult::Transient(rep) => assert!(fed.contains(rep), "{rep:?} not sent by the server"),
            }
        }
    }
}

fn check_send(step: ClientStep) {
    match step {
        ClientStep::Send(bytes) => {
            assert!(bytes.ends_with(b"\r\n"), "command without CRLF: {bytes:?}");
            crate::assert_crlf_only("client command", &bytes);
        }
        ClientStep::SendWithChunk(bytes) => {
            assert!(bytes.ends_with(b"BDAT 1000 LAST\r\n"), "chunk command: {bytes:?}");
            // SIZE=, when the server takes it, is the chunk's exact size.
            let mail = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
            assert!(
                !mail.windows(6).any(|w| w == b" SIZE=") || mail.ends_with(b" SIZE=1000\r") || mail.windows(11).any(|w| w == b" SIZE=1000 "),
                "MAIL: {mail:?}"
            );
            crate::assert_crlf_only("client command", &bytes);
        }
        ClientStep::Read | ClientStep::SendBody => {}
        ClientStep::Done { .. } => unreachable!("Done is handled by the caller"),
    }
}

fn check_results(results: &[RcptResult], n: usize, fed: &[Reply], chunked: bool) {
    assert_eq!(results.len(), n, "one result per recipient");
    let last = fed.last().expect("a transaction finished without a reply");
    for r in results {
        match r {
            RcptResult::Delivered(rep) => {
                assert_eq!(rep.code / 100, 2, "delivered on {rep:?}");
                assert_eq!(rep, last, "delivered by a reply that was not the last one");
                // MAIL, every RCPT, then DATA's 354 and the dot's reply, or the chunk's reply.
                let least = if chunked { n + 2 } else { n + 3 };
                assert!(fed.len() >= least, "delivered after only {} replies", fed.len());
            }
            RcptResult::Permanent(rep) => assert_eq!(rep.code / 100, 5, "permanent on {rep:?}"),
            RcptResult::Transient(_) => {}
        }
    }
}
