//! Byte-vector tests of CHUNKING (RFC 3030) in the server state machine: chunks stream out as
//! the same wire-form body DATA produces, a refused chunk's octets are always read and thrown
//! away (never parsed as commands), and a failed or reset transaction leaves nothing spooled.
use super::server::ServerLimits;
use super::server::{Server, Step};
use super::server_tests::{codes, limits, session, session_in_reads, session_with, Outcome, ENVELOPE};
use std::rc::Rc;

/// EHLO, MAIL and one accepted RCPT: a BDAT transaction may start.
const ENVELOPE_BDAT: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\n";

/// `BDAT n[ LAST]` followed by the chunk's octets.
fn chunk(data: &[u8], last: bool) -> Vec<u8> {
    let mut v = format!("BDAT {}{}\r\n", data.len(), if last { " LAST" } else { "" }).into_bytes();
    v.extend_from_slice(data);
    v
}

fn script(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The same script whole, in small reads and one byte at a time: the outcome must not depend
/// on how the client's bytes were split.
fn every_split(input: &[u8]) -> Outcome {
    let whole = session(true, input);
    for read in [7, 1] {
        let o = session_in_reads(true, input, read);
        assert_eq!(o.replies, whole.replies, "read {read}");
        assert_eq!(o.bodies, whole.bodies, "read {read}");
        // What was handed to the spool before a refusal must not depend on the reads either:
        // a chunk refused up front (over the size limit) hands out nothing.
        assert_eq!(o.refused, whole.refused, "read {read}");
        assert_eq!(o.pending, whole.pending, "read {read}");
    }
    whole
}

#[test]
fn binarymime_is_not_offered_or_accepted() {
    let o = session(true, b"EHLO c.test\r\nMAIL FROM:<a@b.test> BODY=BINARYMIME\r\n");
    assert_eq!(codes(&o.replies), ["220", "250", "555"]);
    assert!(o.replies[2].starts_with("555 5.5.4 Unsupported parameter BODY=BINARYMIME"));
    let mut s = Server::new(limits(), true);
    let Step::Reply { reply, .. } = s.step(b"EHLO c.test\r\n") else { panic!() };
    assert!(reply.to_wire().contains("250 CHUNKING\r\n") && !reply.to_wire().contains("BINARYMIME"));
}

#[test]
fn one_last_chunk_is_a_message_stored_as_data_would_store_it() {
    let text: &[u8] = b"Subject: t\r\n\r\n.dot line\r\nend\r\n";
    let o = every_split(&script(&[ENVELOPE_BDAT, &chunk(text, true), b"QUIT\r\n"]));
    assert_eq!(codes(&o.replies), ["220", "250", "250", "250", "250", "221"]);
    assert!(o.replies[4].starts_with("250 2.0.0 Ok: queued as ID"));
    // The same message sent with DATA (dot-stuffed by the client) is stored identically.
    let by_data = session(true, &script(&[ENVELOPE, b"Subject: t\r\n\r\n..dot line\r\nend\r\n.\r\n"]));
    assert_eq!(o.bodies, by_data.bodies);
    assert_eq!(o.bodies, vec![b"Subject: t\r\n\r\n..dot line\r\nend\r\n".to_vec()]);
}

#[test]
fn each_chunk_is_acknowledged_with_its_size_and_the_last_completes_the_message() {
    let input =
        script(&[ENVELOPE_BDAT, &chunk(b"Subject: t\r\n\r\nhel", false), &chunk(b"", false), &chunk(b"lo\r\n.", false), &chunk(b"\r\n", true)]);
    let o = every_split(&input);
    assert_eq!(codes(&o.replies), ["220", "250", "250", "250", "250", "250", "250", "250"]);
    assert_eq!(&o.replies[4..7], ["250 2.0.0 17 octets received", "250 2.0.0 0 octets received", "250 2.0.0 5 octets received"]);
    assert!(o.replies[7].starts_with("250 2.0.0 Ok: queued as"));
    assert_eq!(o.bodies, vec![b"Subject: t\r\n\r\nhello\r\n..\r\n".to_vec()]);
}

#[test]
fn chunk_octets_that_look_like_commands_are_data() {
    let input = script(&[ENVELOPE_BDAT, &chunk(b"QUIT\r\nRSET\r\n.\r\n", true), b"NOOP\r\n"]);
    let o = every_split(&input);
    assert_eq!(codes(&o.replies), ["220", "250", "250", "250", "250", "250"]);
    assert!(!o.closed);
    assert_eq!(o.bodies, vec![b"QUIT\r\nRSET\r\n..\r\n".to_vec()]);
}

#[test]
fn bare_line_ends_are_normalised_and_a_final_crlf_added() {
    // A bare LF before a dot must not reach the next hop as `<LF>.<CRLF>`.
    let o = every_split(&script(&[ENVELOPE_BDAT, &chunk(b"a\n.\r\nb\rc", true)]));
    assert_eq!(o.bodies, vec![b"a\r\n..\r\nb\r\nc\r\n".to_vec()]);
}

#[test]
fn zero_length_last_chunk() {
    // A message of one empty chunk is the empty body, like DATA's `.` alone.
    let o = every_split(&script(&[ENVELOPE_BDAT, b"BDAT 0 LAST\r\nNOOP\r\n"]));
    assert_eq!(codes(&o.replies), ["220", "250", "250", "250", "250", "250"]);
    assert_eq!(o.bodies, vec![Vec::<u8>::new()]);
    // An empty LAST after data still completes it, with the missing line end added.
    let o = every_split(&script(&[ENVELOPE_BDAT, &chunk(b"ab", false), b"BDAT 0 last\r\n"]));
    assert_eq!(o.replies[5], "250 2.0.0 Ok: queued as ID");
    assert_eq!(o.bodies, vec![b"ab\r\n".to_vec()]);
}

#[test]
fn bdat_without_mail_is_503_and_its_octets_are_discarded() {
    for relay in [true, false] {
        let o = session(relay, b"EHLO c.test\r\nBDAT 12 LAST\r\nQUIT\r\nQUIT\r\nNOOP\r\n");
        assert_eq!(codes(&o.replies), ["220", "250", "503", "250"], "the QUITs were chunk data");
        assert!(o.replies[2].starts_with("503 5.5.1"));
        assert!(!o.closed);
        o.assert_nothing_spooled(0);
    }
}

#[test]
fn bdat_after_no_accepted_recipient_is_554_and_its_octets_are_discarded() {
    // Not in relay_networks: the only RCPT is refused.
    let input = script(&[ENVELOPE_BDAT, &chunk(b"QUIT\r\n", false), &chunk(b"RSET\r\n", true), b"NOOP\r\n"]);
    let o = session_in_reads(false, &input, 3);
    assert_eq!(codes(&o.replies), ["220", "250", "250", "554", "554", "554", "250"]);
    assert!(o.replies[3].starts_with("554 5.7.1"));
    assert!(o.replies[4].starts_with("554 5.5.1") && o.replies[5].starts_with("554 5.5.1"));
    o.assert_nothing_spooled(0);
}

#[test]
fn bdat_in_a_helo_session_is_503() {
    let o = session(true, b"HELO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(codes(&o.replies), ["220", "250", "250", "250", "503", "250"]);
    o.assert_nothing_spooled(0);
}

#[test]
fn oversize_chunk_is_read_then_552_and_later_chunks_get_503() {
    // The limit is 1000 octets: the second chunk takes the message over it.
    let first = vec![b'a'; 600];
    let mut second = b"\r\nQUIT\r\n".to_vec();
    second.extend(std::iter::repeat_n(b'b', 592));
    let input = script(&[ENVELOPE_BDAT, &chunk(&first, false), &chunk(&second, false), &chunk(b"QUIT\r\n", true), b"NOOP\r\n"]);
    let o = every_split(&input);
    assert_eq!(codes(&o.replies), ["220", "250", "250", "250", "250", "552", "503", "250"]);
    assert!(o.replies[5].starts_with("552 5.3.4"));
    assert!(o.replies[6].starts_with("503 5.5.1"), "the transaction was reset");
    o.assert_nothing_spooled(1);
    assert_eq!(o.refused[0].len(), 600, "nothing of the chunk over the limit was handed to the spool");
}

#[test]
fn growth_by_normalisation_over_the_limit_is_552_without_spooling_past_it() {
    // 900 raw octets pass the up-front check, but every bare LF becomes CRLF: 1800 octets.
    let input = script(&[ENVELOPE_BDAT, &chunk(&[b'\n'; 900], true), b"NOOP\r\n"]);
    let o = every_split(&input);
    assert_eq!(codes(&o.replies), ["220", "250", "250", "250", "552", "250"]);
    o.assert_nothing_spooled(1);
    assert!(o.refused[0].len() <= 1000, "{} octets spooled for a message over the limit", o.refused[0].len());
}

#[test]
fn long_text_line_fails_the_chunk_with_500() {
    let mut text = vec![b'a'; 1001];
    text.extend_from_slice(b"\r\n");
    let big = Rc::new(ServerLimits { max_message_size: 10_000, ..(*limits()).clone() });
    let o = session_with(big, true, &script(&[ENVELOPE_BDAT, &chunk(&text, false), &chunk(b"x\r\n", true), b"NOOP\r\n"]), 64);
    assert_eq!(codes(&o.replies), ["220", "250", "250", "250", "500", "503", "250"]);
    assert!(o.replies[4].starts_with("500 5.5.2"));
    o.assert_nothing_spooled(1);
}

#[test]
fn data_after_bdat_in_one_transaction_is_503_and_rset_clears_it() {
    let input = script(&[
        ENVELOPE_BDAT,
        &chunk(b"one\r\n", false),
        b"DATA\r\n",
        b"RSET\r\n",
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\ntwo\r\n.\r\n",
    ]);
    let o = every_split(&input);
    assert_eq!(codes(&o.replies), ["220", "250", "250", "250", "250", "503", "250", "250", "250", "354", "250"]);
    assert!(o.replies[5].starts_with("503 5.5.1"));
    assert_eq!(o.refused, vec![b"one\r\n".to_vec()], "RSET discarded the BDAT body");
    assert_eq!(o.bodies, vec![b"two\r\n".to_vec()]);
    assert!(o.pending.is_empty());
}

#[test]
fn data_and_bdat_transactions_follow_each_other_in_one_session() {
    let input = script(&[
        ENVELOPE,
        b"by data\r\n.\r\n",
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\n",
        &chunk(b"by bdat\r\n", true),
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\nagain\r\n.\r\n",
    ]);
    let o = every_split(&input);
    assert_eq!(o.bodies, vec![b"by data\r\n".to_vec(), b"by bdat\r\n".to_vec(), b"again\r\n".to_vec()]);
    assert_eq!(o.replies.iter().filter(|r| r.starts_with("250 2.0.0 Ok: queued")).count(), 3);
}

#[test]
fn rset_or_ehlo_between_chunks_discards_the_body_handed_out() {
    for reset in [&b"RSET\r\n"[..], b"EHLO c.test\r\n"] {
        let input = script(&[ENVELOPE_BDAT, &chunk(b"partial\r\n", false), reset, &chunk(b"QUIT\r\n", true), b"NOOP\r\n"]);
        let o = every_split(&input);
        assert_eq!(codes(&o.replies), ["220", "250", "250", "250", "250", "250", "503", "250"], "{reset:?}");
        o.assert_nothing_spooled(1);
        assert_eq!(o.refused, vec![b"partial\r\n".to_vec()]);
    }
    // A reset before any chunk has nothing to discard: a plain reply.
    let mut s = Server::new(limits(), true);
    for line in [&b"EHLO c.test\r\n"[..], b"MAIL FROM:<a@b.test>\r\n", b"RCPT TO:<x@y.test>\r\n"] {
        assert!(matches!(s.step(line), Step::Reply { .. }));
    }
    assert!(matches!(s.step(b"RSET\r\n"), Step::Reply { reply, .. } if reply.code == 250));
}

#[test]
fn the_last_chunk_waits_for_the_commit_before_anything_else() {
    let mut s = Server::new(limits(), true);
    for line in [&b"EHLO c.test\r\n"[..], b"MAIL FROM:<a@b.test>\r\n", b"RCPT TO:<x@y.test>\r\n"] {
        assert!(matches!(s.step(line), Step::Reply { .. }));
    }
    let input = b"BDAT 3 LAST\r\nhi\nNOOP\r\n";
    assert_eq!(s.step(input), Step::Need { consumed: 13 });
    assert!(s.in_data());
    assert_eq!(s.step(&input[13..]), Step::Body { consumed: 2, prefix: b"", body: 2 });
    assert_eq!(s.step(&input[15..]), Step::Body { consumed: 1, prefix: b"\r", body: 1 });
    assert_eq!(s.step(&input[16..]), Step::Message { consumed: 0, prefix: b"", body: 0 });
    // No reply and no command until the driver says the message is durable.
    assert_eq!(s.step(&input[16..]), Step::Need { consumed: 0 });
    assert_eq!(s.committed("Q1").to_wire(), "250 2.0.0 Ok: queued as Q1\r\n");
    assert!(matches!(s.step(&input[16..]), Step::Reply { consumed: 6, reply } if reply.code == 250));
}

#[test]
fn eight_bit_bdat_body_is_flagged() {
    let mut s = Server::new(limits(), true);
    for line in [&b"EHLO c.test\r\n"[..], b"MAIL FROM:<a@b.test>\r\n", b"RCPT TO:<x@y.test>\r\n"] {
        assert!(matches!(s.step(line), Step::Reply { .. }));
    }
    let input = "BDAT 7 LAST\r\ncaf\u{e9}\r\n".as_bytes();
    let mut pos = 0;
    loop {
        match s.step(&input[pos..]) {
            Step::Need { consumed } | Step::Body { consumed, .. } => pos += consumed,
            Step::Message { .. } => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(s.eight_bit());
}

#[test]
fn bdat_syntax_errors_are_501() {
    let o = session(true, b"EHLO c.test\r\nBDAT\r\nBDAT x LAST\r\nNOOP\r\n");
    assert_eq!(codes(&o.replies), ["220", "250", "501", "501", "250"]);
}
