"""Delivery through DNS MX resolution against a real DNS server on loopback (dnslib)."""
import smtplib
import socket
import time

import pytest
from aiosmtpd.controller import Controller

from conftest import Ringpost, SinkHandler, assert_every_recipient_closed_once, free_port
from dnsserver import LoopbackDNS


def udp_port():
    """A port free for both UDP and TCP on 127.0.0.1 (the DNS server listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
        try:
            with socket.socket() as t:
                t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free for UDP and TCP")


@pytest.fixture
def world(tmp_path):
    """Two SMTP receivers on 127.0.0.2 and 127.0.0.3 (same port), a DNS server, and ringpost
    without static routes, resolving everything through that DNS server."""
    mx_port = free_port()
    sinks, ctls = {}, []
    for ip in ("127.0.0.2", "127.0.0.3"):
        h = SinkHandler()
        c = Controller(h, hostname=ip, port=mx_port, decode_data=False)
        c.start()
        sinks[ip], _ = h, ctls.append(c)
    dns = LoopbackDNS(udp_port())
    z = dns.resolver.zone
    z[("owner.test.", "MX")] = [(300, 10, "mx1.test.")]
    z[("mx1.test.", "A")] = [(300, "127.0.0.2")]
    z[("mx2.test.", "A")] = [(300, "127.0.0.3")]
    z[("dead.test.", "A")] = [(300, "127.0.0.4")]
    rp = Ringpost(tmp_path, 0, route_all=False,
                  delivery_extra=f"mx_port = {mx_port}\nidle_timeout_s = 0.05",
                  tail=f'[dns]\nnameservers = ["127.0.0.1:{dns.port}"]\ntimeout_ms = 500\nattempts = 1\n')
    rp.start()
    yield rp, dns, sinks
    rp.stop()
    dns.stop()
    for c in ctls:
        c.stop()


def send(rp, rcpt, sender="s@owner.test"):
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        s.ehlo("client.test")
        s.sendmail(sender, [rcpt], f"Subject: to {rcpt}\r\n\r\nhi\r\n".encode())


def got(sinks, ip, rcpt):
    return [m for m in sinks[ip].snapshot() if rcpt in m[1]]


def final_for(rp, rcpt, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for e in rp.events():
            if e["recipient"] == rcpt and e["type"] in ("Delivery", "Bounce", "Expiration"):
                return e
        time.sleep(0.05)
    raise AssertionError(f"no final event for {rcpt}: {rp.events()[-4:]}")


def test_mx_preference_order_and_fallback_to_the_next_mx(world):
    rp, dns, sinks = world
    z = dns.resolver.zone
    z[("order.test.", "MX")] = [(300, 20, "mx2.test."), (300, 10, "mx1.test.")]
    send(rp, "a@order.test")
    e = final_for(rp, "a@order.test")
    assert e["type"] == "Delivery" and e["remote"].startswith("mx1.test[127.0.0.2]")
    z[("fallback.test.", "MX")] = [(300, 10, "dead.test."), (300, 20, "mx2.test.")]
    send(rp, "b@fallback.test")
    e = final_for(rp, "b@fallback.test")
    assert e["type"] == "Delivery" and e["remote"].startswith("mx2.test[127.0.0.3]"), e
    assert got(sinks, "127.0.0.3", "b@fallback.test")


def test_equal_preferences_are_shuffled(world):
    rp, dns, sinks = world
    dns.resolver.zone[("equal.test.", "MX")] = [(300, 10, "mx1.test."), (300, 10, "mx2.test.")]
    for i in range(16):
        send(rp, f"u{i}@equal.test")
        final_for(rp, f"u{i}@equal.test")
        time.sleep(0.1)  # let the idle connection close so the next one plans afresh
    a = sum(len(got(sinks, "127.0.0.2", f"u{i}@equal.test")) for i in range(16))
    b = sum(len(got(sinks, "127.0.0.3", f"u{i}@equal.test")) for i in range(16))
    assert a + b == 16 and a > 0 and b > 0, (a, b)


def test_implicit_mx_uses_the_domains_own_address(world):
    rp, dns, sinks = world
    dns.resolver.zone[("implicit.test.", "A")] = [(300, "127.0.0.3")]
    send(rp, "c@implicit.test")
    assert final_for(rp, "c@implicit.test")["type"] == "Delivery"
    assert got(sinks, "127.0.0.3", "c@implicit.test")


def test_null_mx_bounces_with_5_1_10_and_a_dsn(world):
    rp, dns, sinks = world
    dns.resolver.zone[("nullmx.test.", "MX")] = [(300, 0, ".")]
    send(rp, "d@nullmx.test")
    e = final_for(rp, "d@nullmx.test")
    assert e["type"] == "Bounce" and e["response"].startswith("556 5.1.10"), e
    deadline = time.time() + 10
    while time.time() < deadline and not got(sinks, "127.0.0.2", "s@owner.test"):
        time.sleep(0.05)
    dsn = got(sinks, "127.0.0.2", "s@owner.test")
    assert dsn and b"Status: 5.1.10" in dsn[0][2]


def test_nxdomain_bounces(world):
    rp, dns, sinks = world
    send(rp, "e@does-not-exist.test")
    e = final_for(rp, "e@does-not-exist.test")
    assert e["type"] == "Bounce" and e["response"].startswith("550 5.1.2"), e


def test_servfail_is_a_temporary_failure_then_retried(world):
    rp, dns, sinks = world
    dns.resolver.zone[("flaky.test.", "MX")] = [(300, 10, "mx1.test.")]
    dns.resolver.servfail["flaky.test."] = 1
    send(rp, "f@flaky.test")
    e = final_for(rp, "f@flaky.test")
    assert e["type"] == "Delivery" and e["attempts"] == 2
    transient = [x for x in rp.events() if x["recipient"] == "f@flaky.test" and x["type"] == "TransientFailure"]
    assert transient and transient[0]["response"].startswith("451 4.4.3")


def test_truncated_udp_answer_is_retried_over_tcp(world):
    rp, dns, sinks = world
    dns.resolver.zone[("tc.test.", "MX")] = [(300, 10, "mx2.test.")]
    dns.resolver.truncate.add("tc.test.")
    send(rp, "g@tc.test")
    assert final_for(rp, "g@tc.test")["type"] == "Delivery"
    protos = [p for (n, q, p) in dns.resolver.log if n == "tc.test."]
    assert "udp" in protos and "tcp" in protos, protos


def test_cache_honours_ttl(world):
    rp, dns, sinks = world
    z = dns.resolver.zone
    z[("ttl.test.", "MX")] = [(1, 10, "mx1.test.")]
    send(rp, "h1@ttl.test")
    final_for(rp, "h1@ttl.test")
    queries = lambda: len([1 for (n, q, p) in dns.resolver.log if n == "ttl.test." and q == "MX"])
    n1 = queries()
    # Within the TTL the answer comes from the cache (per core; a message lands on one core).
    for i in range(3):
        send(rp, f"h{i + 2}@ttl.test")
        final_for(rp, f"h{i + 2}@ttl.test")
    assert queries() <= n1 + 1, "cached within TTL (at most one more core may ask)"
    z[("ttl.test.", "MX")] = [(1, 10, "mx2.test.")]
    time.sleep(1.5)
    send(rp, "h9@ttl.test")
    e = final_for(rp, "h9@ttl.test")
    assert e["remote"].startswith("mx2.test"), "after the TTL the new answer is used"
    assert_every_recipient_closed_once(rp.events())
