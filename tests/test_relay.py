"""Relay path end to end: smtplib -> ringpost -> aiosmtpd."""
import smtplib
import time

from conftest import assert_every_recipient_closed_once, fnv1a, strip_trace


def smtplib_wire(body: bytes) -> bytes:
    """What smtplib transmits for a bytes `body`: as is, plus a final CRLF if missing."""
    return body if body.endswith(b"\r\n") else body + b"\r\n"


def send(rp, sender, rcpts, body, **kw):
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=60) as s:
        s.ehlo("client.test")
        return s.sendmail(sender, rcpts, body, **kw)


def test_bodies_arrive_byte_identical(ringpost, sink):
    rp = ringpost()
    bodies = {
        "eightbit": "Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße aus Köln — ✓\r\n".encode(),
        "dots": b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmid.dle\r\n. \r\n",
        "onebyte": b"x",
        "big": b"Subject: big\r\n\r\n" + (b"0123456789abcdef" * 4 + b"\r\n") * (10 * 1024 * 1024 // 66),
        "stuffedfirst": b".first line is a dot line\r\nSubject: x\r\n\r\nbody\r\n",
    }
    for name, body in bodies.items():
        opts = ["BODY=8BITMIME"] if name == "eightbit" else []
        assert send(rp, "a@b.test", [f"{name}@example.org"], body, mail_options=opts) == {}
    rp.wait_final(len(bodies))
    got = {m[1][0].split("@")[0]: m[2] for m in sink.snapshot()}
    for name, body in bodies.items():
        assert strip_trace(got[name]) == smtplib_wire(body), name
    assert len(got["big"]) > 10 * 1024 * 1024 - 100
    assert_every_recipient_closed_once(rp.events())


def test_multi_recipient_message_split_across_cores_arrives_once_each(ringpost, sink):
    rp = ringpost(cores=2)
    domains = {}
    for i in range(100):
        d = f"dom{i}.test"
        domains.setdefault(fnv1a(d) % 2, []).extend([d] if len(domains.get(fnv1a(d) % 2, [])) < 3 else [])
    rcpts = [f"user{j}@{d}" for core in (0, 1) for j, d in enumerate(domains[core])]
    rcpts += [f"second@{domains[0][0]}", f"second@{domains[1][0]}"]
    assert send(rp, "a@b.test", rcpts, b"Subject: fanout\r\n\r\nhello\r\n") == {}
    finals = rp.wait_final(len(rcpts))
    received = [r for m in sink.snapshot() for r in m[1]]
    assert sorted(received) == sorted(rcpts), "each recipient exactly once"
    cores = {e["core"] for e in finals}
    assert cores == {0, 1}, f"deliveries must come from both owning cores, got {cores}"
    for e in finals:
        assert e["core"] == fnv1a(e["recipient"].split("@")[1]) % 2
    assert_every_recipient_closed_once(rp.events())


def test_temporary_failure_is_retried_then_delivered(ringpost, sink):
    rp = ringpost()
    assert send(rp, "a@b.test", ["tempfail-1@example.org"], b"Subject: retry\r\n\r\nagain\r\n") == {}
    finals = rp.wait_final(1)
    ev = [e for e in rp.events() if e["recipient"] == "tempfail-1@example.org" and e["type"] != "Reception"]
    kinds = [e["type"] for e in ev]
    assert kinds == ["TransientFailure", "Delivery"], kinds
    assert ev[0]["response"].startswith("451 4.3.0")
    assert finals[0]["attempts"] == 2
    assert len(sink.snapshot()) == 1


def test_permanent_failure_sends_one_dsn_listing_failed_recipients(ringpost, sink):
    rp = ringpost()
    rcpts = ["reject-1@example.org", "reject-2@other.test", "fine@example.org"]
    # Warm-up: an empty message to the good recipient is accepted and delivered before the
    # bouncing one is sent.
    assert send(rp, "sender@b.test", rcpts[2:], b"") == {}
    rp.wait_final(1)
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        s.ehlo("client.test")
        s.sendmail("sender@b.test", rcpts, b"Subject: will bounce\r\nMessage-ID: <m1@b.test>\r\n\r\nbody\r\n")
    deadline = time.time() + 20
    dsns = []
    while time.time() < deadline and not dsns:
        dsns = [m for m in sink.snapshot() if m[0] == "<>" or m[0] == ""]
        time.sleep(0.1)
    assert len(dsns) == 1, f"exactly one DSN, got {len(dsns)}"
    frm, to, content = dsns[0]
    assert to == ["sender@b.test"]
    text = content.decode()
    assert "multipart/report; report-type=delivery-status" in text
    assert "Final-Recipient: rfc822; reject-1@example.org" in text
    assert "Final-Recipient: rfc822; reject-2@other.test" in text
    assert "fine@example.org" not in text.split("text/rfc822-headers")[0]
    assert "Status: 5.1.1" in text and "Action: failed" in text
    assert "Message-ID: <m1@b.test>" in text
    time.sleep(1)
    assert len([m for m in sink.snapshot() if m[0] in ("<>", "")]) == 1


def test_no_dsn_for_null_sender(ringpost, sink):
    rp = ringpost()
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        s.ehlo("client.test")
        s.sendmail("<>", ["reject-9@example.org"], b"Subject: bounce of a bounce\r\n\r\nx\r\n")
    finals = rp.wait_final(1)
    assert finals[0]["type"] == "Bounce"
    time.sleep(1.5)
    assert sink.snapshot() == [], "a message from <> never gets a DSN"
    assert_every_recipient_closed_once(rp.events())


def test_sigterm_exits_zero_and_restart_delivers_nothing_twice(ringpost, sink):
    rp = ringpost()
    for i in range(20):
        send(rp, "a@b.test", [f"u{i}@example.org"], b"Subject: s\r\n\r\nx\r\n")
    rp.wait_final(20)
    assert rp.stop() == 0
    rp.start()
    time.sleep(1.5)
    assert len(sink.snapshot()) == 20, "delivered messages are final: nothing is redelivered"
    assert_every_recipient_closed_once(rp.events())


def test_retries_until_max_age_then_expiration_and_dsn(ringpost, sink):
    rp = ringpost(delivery_extra="max_age_s = 2.0")
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        s.ehlo("client.test")
        s.sendmail("owner@b.test", ["defer-1@example.org", "ok@example.org"], b"Subject: expires\r\n\r\nx\r\n")
    finals = rp.wait_final(3, timeout=20)  # both recipients, then the DSN's own delivery
    kinds = {e["recipient"]: e["type"] for e in finals}
    assert kinds == {"defer-1@example.org": "Expiration", "ok@example.org": "Delivery", "owner@b.test": "Delivery"}
    transient = [e for e in rp.events() if e["type"] == "TransientFailure"]
    assert len(transient) >= 2, "retried on the backoff schedule before expiring"
    deadline = time.time() + 10
    dsns = []
    while time.time() < deadline and not dsns:
        dsns = [m for m in sink.snapshot() if m[0] in ("<>", "")]
        time.sleep(0.1)
    assert len(dsns) == 1
    text = dsns[0][2].decode()
    assert "Final-Recipient: rfc822; defer-1@example.org" in text and "Status: 4.4.7" in text
    assert "ok@example.org" not in text.split("text/rfc822-headers")[0]
    assert_every_recipient_closed_once(rp.events())
