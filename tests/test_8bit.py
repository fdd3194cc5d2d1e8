"""8BITMIME / SMTPUTF8 towards a server that offers neither (RFC 6152 3, RFC 6531 3.2).

ringpost never downgrades (that would break DKIM): an 8-bit message bounces with 5.6.3, a
non-ASCII address with 5.6.7, without a byte of the transaction reaching the server, and the
same connection then carries the next message.
"""
import smtplib
import time

import pytest
from aiosmtpd.controller import Controller

from conftest import Ringpost, SinkHandler, free_port, strip_trace, wait_for


class PlainSinkHandler(SinkHandler):
    """The conftest sink, minus 8BITMIME and SMTPUTF8 in its EHLO; counts sessions and MAILs."""

    def __init__(self):
        super().__init__()
        self.ehlos = 0
        self.mails = []

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        with self.lock:
            self.ehlos += 1
        return [r for r in responses if r[4:] not in ("8BITMIME", "SMTPUTF8")]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        with self.lock:
            self.mails.append((address, list(mail_options)))
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"


@pytest.fixture
def plain_sink():
    handler = PlainSinkHandler()
    port = free_port()
    ctl = Controller(handler, hostname="127.0.0.1", port=port, decode_data=False)
    ctl.start()
    handler.port = port
    yield handler
    ctl.stop()


@pytest.fixture
def rp(tmp_path, plain_sink):
    # One core: every message for example.org goes over the same outbound connection.
    r = Ringpost(tmp_path, plain_sink.port, cores=1).start()
    yield r
    r.stop()


def send(rp, rcpt, body, opts=()):
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as s:
        s.ehlo("client.test")
        assert s.sendmail("s@b.test", [rcpt], body, mail_options=list(opts)) == {}


def final(rp, rcpt):
    return wait_for(lambda: [e for e in rp.events() if e["type"] in ("Delivery", "Bounce") and e["recipient"] == rcpt],
                    f"a final event for {rcpt}")


def test_8bit_and_utf8_mail_bounce_and_the_connection_carries_on(rp, plain_sink):
    eight = b"Subject: cafe\r\nContent-Type: text/plain; charset=utf-8\r\n\r\ncaf\xc3\xa9\r\n"
    send(rp, "eight@example.org", eight, ["BODY=8BITMIME"])
    [bounce] = final(rp, "eight@example.org")
    assert bounce["type"] == "Bounce"
    assert bounce["response"].startswith("554 5.6.3 8-bit message, but the receiving server does not offer 8BITMIME"), bounce
    # Within the 2 s idle time: the same connection takes the next messages.
    seven = b"Subject: plain\r\n\r\nplain ascii\r\n"
    send(rp, "seven@example.org", seven, ["BODY=8BITMIME"])  # declared 8-bit, in fact 7-bit: goes
    [ok] = final(rp, "seven@example.org")
    assert ok["type"] == "Delivery", ok
    send(rp, "jos\u00e9@example.org", b"Subject: hi\r\n\r\nhi\r\n", ["SMTPUTF8"])
    [bounce] = final(rp, "jos\u00e9@example.org")
    assert bounce["type"] == "Bounce"
    assert bounce["response"].startswith("553 5.6.7 Non-ASCII address needs SMTPUTF8"), bounce

    def dsns():
        return [m for m in plain_sink.snapshot() if m[0] in ("", "<>")]
    wait_for(lambda: len(dsns()) >= 2, "two DSNs")
    time.sleep(0.5)
    assert len(dsns()) == 2
    statuses = sorted(l for m in dsns() for l in m[2].decode().splitlines() if l.startswith("Status:"))
    assert statuses == ["Status: 5.6.3", "Status: 5.6.7"]
    delivered = [m for m in plain_sink.snapshot() if m[0] == "s@b.test"]
    assert [(m[1], strip_trace(m[2])) for m in delivered] == [(["seven@example.org"], seven)]
    # Nothing of the refused transactions reached the server, and nothing carried BODY=8BITMIME.
    [(_, opts)] = [m for m in plain_sink.mails if m[0] == "s@b.test"]
    assert [o for o in opts if not o.startswith("SIZE=")] == [], opts
    # One session for everything: the refusals left it usable, and the DSNs to b.test share
    # it, since both domains route to the same host (one site, one path; one core).
    time.sleep(0.5)
    assert plain_sink.ehlos == 1, plain_sink.ehlos
