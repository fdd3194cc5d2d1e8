"""A site's hosts are tried in MX preference order, also when a connection of the site finds
them by name (the domain that formed the site stopped resolving): the preferred exchange first,
not the one whose name sorts first (issue 11's known limits)."""
import asyncio
import smtplib
import threading
import time

from aiosmtpd.controller import Controller

from conftest import Ringpost, SinkHandler, free_port
from dnsserver import LoopbackDNS
from test_dns import final_for, udp_port


class SlowFor(SinkHandler):
    """Holds the DATA of mail for one domain for `delay` seconds (keeps its connection busy)."""

    def __init__(self, domain, delay, started):
        super().__init__()
        self.domain, self.delay, self.started = domain, delay, started

    async def handle_DATA(self, server, session, envelope):
        if any(r.endswith("@" + self.domain) for r in envelope.rcpt_tos):
            self.started.set()
            await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


def test_hosts_found_by_name_keep_the_mx_preference(tmp_path):
    mx_port = free_port()
    ctls = []
    started = threading.Event()
    for ip in ("127.0.0.2", "127.0.0.3"):
        c = Controller(SlowFor("p.test", 3.0, started), hostname=ip, port=mx_port, decode_data=False)
        c.start()
        ctls.append(c)
    dns = LoopbackDNS(udp_port())
    z = dns.resolver.zone
    # Preference: mx2 (127.0.0.3) first; by name mx1 (127.0.0.2) sorts first.
    for d in ("p.test.", "q.test."):
        z[(d, "MX")] = [(1, 10, "mx2.test."), (1, 20, "mx1.test.")]
    z[("mx1.test.", "A")] = [(300, "127.0.0.2")]
    z[("mx2.test.", "A")] = [(300, "127.0.0.3")]
    # One core: p.test and q.test share one queue manager, so q.test's mail joins the path
    # p.test formed (whose connections take p.test's answer for the order).
    rp = Ringpost(tmp_path, 0, route_all=False, cores=1, delivery_extra=f"mx_port = {mx_port}",
                  tail=f'[dns]\nnameservers = ["127.0.0.1:{dns.port}"]\ntimeout_ms = 500\nattempts = 1\n').start()
    try:
        with smtplib.SMTP("127.0.0.1", rp.port) as s:
            s.sendmail("s@x.test", ["u@p.test"], b"Subject: p\r\n\r\nhi\r\n")
        # While p.test's delivery is held at the sink, p.test stops resolving (its MX TTL is
        # 1 s); q.test's mail then needs a second connection of the same site. (Only once the
        # delivery is held: before, p.test's own first look-up could meet the failure.)
        assert started.wait(10), "p.test's delivery reached the sink"
        dns.resolver.servfail["p.test."] = 1000
        time.sleep(1.5)
        with smtplib.SMTP("127.0.0.1", rp.port) as s:
            s.sendmail("s@x.test", ["v@q.test"], b"Subject: q\r\n\r\nhi\r\n")
        e = final_for(rp, "v@q.test")
        assert e["type"] == "Delivery", e
        assert e["remote"].startswith("mx2.test[127.0.0.3]"), f"the preferred exchange first: {e['remote']}"
        assert final_for(rp, "u@p.test")["remote"].startswith("mx2.test[127.0.0.3]")
    finally:
        rp.stop()
        dns.stop()
        for c in ctls:
            c.stop()
