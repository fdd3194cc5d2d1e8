"""Bounce classification end to end: each failure's category is in the delivery log and in the
DSN, from the shipped rules or from `[delivery] bounce_rules`; a bad rules file stops the start
with its reason."""
import smtplib
import subprocess
import time

import pytest

from conftest import BINARY, Ringpost, SinkHandler, serve_sink, wait_for

REPLIES = {
    "gone": "550 5.1.1 The email account that you tried to reach does not exist",
    "full": "552 5.2.2 The email account that you tried to reach is over quota",
    "spam": "550 5.7.1 Our system has detected that this message is likely unsolicited mail",
    "nope": "554 5.7.1 Relay access denied",
}


class ClassHandler(SinkHandler):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        kind = address.split("-")[0]
        if kind in REPLIES:
            return REPLIES[kind]
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


@pytest.fixture
def class_sink():
    yield from serve_sink(ClassHandler())


def bounce_once(rp, sink, rcpts):
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as s:
        s.sendmail("sender@b.test", rcpts, b"Subject: classify\r\n\r\nbody\r\n")
    dsn = wait_for(lambda: [m for m in sink.snapshot() if m[0] in ("<>", "")], "the DSN")
    finals = [e for e in rp.wait_final(len(rcpts)) if e["recipient"] in rcpts]
    assert len(finals) == len(rcpts), finals
    return {e["recipient"]: e.get("category") for e in finals}, dsn[0][2].decode()


def test_categories_reach_the_log_and_the_dsn(tmp_path, class_sink):
    rp = Ringpost(tmp_path, class_sink.port).start()
    try:
        got, dsn = bounce_once(rp, class_sink, [f"{k}-1@x.test" for k in REPLIES] + ["ok-1@x.test"])
    finally:
        rp.stop()
    assert got == {"gone-1@x.test": "bad-mailbox", "full-1@x.test": "quota", "spam-1@x.test": "spam-related",
                   "nope-1@x.test": "relay-denied", "ok-1@x.test": None}
    for rcpt, category in got.items():
        if category:
            block = dsn.split(f"Final-Recipient: rfc822; {rcpt}")[1].split("\r\n\r\n")[0] + "\r\n"
            assert f"\r\nX-Ringpost-Bounce-Category: {category}\r\n" in block, block


def test_a_rules_file_replaces_the_shipped_rules(tmp_path, class_sink):
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\ncategory = "content-related"\npattern = "over quota"\n')
    rp = Ringpost(tmp_path, class_sink.port, delivery_extra=f'bounce_rules = "{rules}"').start()
    try:
        got, _ = bounce_once(rp, class_sink, ["full-2@x.test", "gone-2@x.test"])
    finally:
        rp.stop()
    # Its own rule wins; what it does not cover falls back to the status class (5.1.1).
    assert got == {"full-2@x.test": "content-related", "gone-2@x.test": "bad-mailbox"}


def test_a_bad_rules_file_stops_the_start_with_its_reason(tmp_path, class_sink):
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\ncategory = "quota"\npattern = "(unclosed"\n')
    rp = Ringpost(tmp_path, class_sink.port, delivery_extra=f'bounce_rules = "{rules}"')
    proc = subprocess.run([str(BINARY), "--config", str(rp.config)], capture_output=True, timeout=30)
    assert proc.returncode != 0
    assert b"bounce rule 1: bad pattern" in proc.stderr, proc.stderr
