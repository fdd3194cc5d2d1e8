"""The suppression list end to end: a bad-mailbox bounce suppresses the recipient (refused at
RCPT with 550 5.1.1 and the reason, durably: after a restart too), a quota bounce does not;
accept-and-bounce mode bounces a suppressed recipient at once without sending to it."""
import json
import smtplib

import pytest

from conftest import Ringpost, SinkHandler, serve_sink, wait_for


class RefusingHandler(SinkHandler):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("gone-"):
            return "550 5.1.1 The email account that you tried to reach does not exist"
        if address.startswith("denied-"):
            # Postfix's access-map refusal: a policy, not a mailbox that does not exist.
            return "554 5.7.1 <%s>: Recipient address rejected: Access denied" % address
        if address.startswith("full-"):
            return "552 5.2.2 The email account that you tried to reach is over quota"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


@pytest.fixture
def refusing_sink():
    yield from serve_sink(RefusingHandler())


def rcpt_reply(rp, rcpt):
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as s:
        s.ehlo("client.test")
        s.mail("sender@b.test")
        return s.rcpt(rcpt)


def bounced(rp, rcpt):
    return [e for e in rp.events() if e["type"] == "Bounce" and e["recipient"] == rcpt]


def test_a_bad_mailbox_bounce_suppresses_the_recipient_durably(tmp_path, refusing_sink):
    rp = Ringpost(tmp_path, refusing_sink.port).start()
    try:
        with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as s:
            s.sendmail("sender@b.test", ["gone-1@x.test", "full-1@x.test", "denied-1@x.test"], b"Subject: s\r\n\r\nx\r\n")
        wait_for(lambda: bounced(rp, "gone-1@x.test") and bounced(rp, "full-1@x.test") and bounced(rp, "denied-1@x.test"), "three bounces")
        assert [e["category"] for e in bounced(rp, "denied-1@x.test")] == ["policy-related"]
        journal = tmp_path / "spool" / "suppression.jsonl"
        wait_for(lambda: journal.exists() and "gone-1@x.test" in journal.read_text(), "the journal entry")
        code, text = rcpt_reply(rp, "GONE-1@x.test")
        assert code == 550 and text.startswith(b"5.1.1 <GONE-1@x.test>: recipient suppressed (bad-mailbox since "), text
        assert rcpt_reply(rp, "full-1@x.test")[0] == 250, "a full mailbox is not suppressed"
        assert rcpt_reply(rp, "denied-1@x.test")[0] == 250, "a policy refusal is not suppressed"
    finally:
        rp.stop()
    lines = [json.loads(l) for l in journal.read_text().splitlines()]
    assert [(l["op"], l["addr"], l["category"]) for l in lines] == [("add", "gone-1@x.test", "bad-mailbox")]
    assert "does not exist" in lines[0]["reason"]
    rp.start()
    try:
        assert rcpt_reply(rp, "gone-1@x.test")[0] == 550, "the suppression survives a restart"
    finally:
        rp.stop()


def test_accept_and_bounce_never_sends_to_a_suppressed_recipient(tmp_path, refusing_sink):
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "suppression.jsonl").write_text(
        json.dumps({"op": "add", "addr": "old@x.test", "category": "inactive-mailbox", "time_s": 1_700_000_000}) + "\n")
    rp = Ringpost(tmp_path, refusing_sink.port, tail='[suppression]\nmode = "accept-and-bounce"\n').start()
    try:
        assert rcpt_reply(rp, "old@x.test")[0] == 250, "accepted in this mode"
        with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as s:
            s.sendmail("sender@b.test", ["old@x.test", "fine@x.test"], b"Subject: s\r\n\r\nx\r\n")
        dsn = wait_for(lambda: [m for m in refusing_sink.snapshot() if m[0] in ("<>", "")], "the DSN")
        wait_for(lambda: [e for e in rp.events() if e["type"] == "Delivery" and e["recipient"] == "fine@x.test"], "the other recipient's delivery")
    finally:
        rp.stop()
    b = bounced(rp, "old@x.test")
    assert len(b) == 1 and b[0]["category"] == "inactive-mailbox" and "suppressed" in b[0]["response"]
    sent_to = [r for m in refusing_sink.snapshot() if m[0] not in ("<>", "") for r in m[1]]
    assert sent_to == ["fine@x.test"], "the suppressed recipient must never reach the destination"
    assert b"X-Ringpost-Bounce-Category: inactive-mailbox" in dsn[0][2]


def test_disabled_list_refuses_nothing(tmp_path, refusing_sink):
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "suppression.jsonl").write_text(json.dumps({"op": "add", "addr": "old@x.test", "category": "bad-mailbox"}) + "\n")
    rp = Ringpost(tmp_path, refusing_sink.port, tail="[suppression]\nenabled = false\n").start()
    try:
        assert rcpt_reply(rp, "old@x.test")[0] == 250
    finally:
        rp.stop()


class DataRefusingHandler(SinkHandler):
    """Yahoo's way: every RCPT accepted, then the whole DATA refused with a text that names
    the one address that does not exist."""

    async def handle_DATA(self, server, session, envelope):
        gone = [r for r in envelope.rcpt_tos if r.startswith("gone-")]
        if gone:
            return "554 delivery error: dd This user doesn't have a x.test account (%s) [0]" % gone[0]
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def data_refusing_sink():
    yield from serve_sink(DataRefusingHandler())


def test_a_reply_to_the_whole_transaction_suppresses_only_the_address_it_names(tmp_path, data_refusing_sink):
    rp = Ringpost(tmp_path, data_refusing_sink.port).start()
    journal = tmp_path / "spool" / "suppression.jsonl"
    try:
        with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as s:
            s.sendmail("sender@b.test", ["gone-2@x.test", "fine-2@x.test"], b"Subject: s\r\n\r\nx\r\n")
        wait_for(lambda: bounced(rp, "gone-2@x.test") and bounced(rp, "fine-2@x.test"), "both bounces")
        assert [e["category"] for e in bounced(rp, "fine-2@x.test")] == ["bad-mailbox"], "the reply's class is the same"
        wait_for(lambda: journal.exists() and "gone-2@x.test" in journal.read_text(), "the journal entry")
        assert rcpt_reply(rp, "gone-2@x.test")[0] == 550
        assert rcpt_reply(rp, "fine-2@x.test")[0] == 250, "a co-recipient is not suppressed"
    finally:
        rp.stop()
    lines = [json.loads(l) for l in journal.read_text().splitlines()]
    assert [(l["op"], l["addr"]) for l in lines] == [("add", "gone-2@x.test")]
