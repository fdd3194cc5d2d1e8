"""Issue 11: delivering politely, measured by blaster's sink (real processes on loopback).

- a site's connection cap holds exactly per source (peak == cap, never above);
- a site's message rate holds per source over 20 s (<= 210/s) without starving (>= 150/s);
- a pool {ip2 = 1, ip3 = 3} spreads mail 25/75 over two bound source addresses, each with
  its EHLO name; the X-Ringpost-Pool header picks a pool and is removed before delivery;
- a 421 [TSS04] reply suspends that path for the configured time, other sites flow, and it
  resumes by itself; `ringctl queue` shows what is suspended and why;
- a warm-up cap of 100/day: the 101st message waits (queued, not bounced), also after a restart.
"""
import json
import signal
import smtplib
import socket
import subprocess
import threading
import time

import pytest
from aiosmtpd.controller import Controller

from conftest import ROOT, Ringpost, free_port, wait_for

BLASTER = ROOT / "target" / "release" / "blaster"


class Sink:
    """`blaster sink` on 127.0.0.1 (and 127.0.0.4) at one port; its JSON report on stop."""

    def __init__(self, *args, second_address=False):
        self.port = free_port()
        listen = ["--listen", f"127.0.0.1:{self.port}"]
        if second_address:
            listen += ["--listen", f"127.0.0.4:{self.port}"]
        self.proc = subprocess.Popen([str(BLASTER), "sink", "--cores", "1", "--json", *listen, *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sink did not start")

    def report(self, timeout=120):
        out, err = self.proc.communicate(timeout=timeout)
        return json.loads(out)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.report()


def send(rp, n, domains="10", connections=10):
    r = subprocess.run([str(BLASTER), "send", "--to", f"127.0.0.1:{rp.port}", "--json", "-q", "-n", str(n),
                        "-c", str(connections), "--domains", domains, "--cores", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["accepted"] == n, rep
    return rep


def daemon(tmp_path, sink_port, tail, delivery_extra="", cores=2, route=True):
    routes = f'[[route]]\ndomain = "*"\nhosts = ["127.0.0.1:{sink_port}"]\n' if route else ""
    return Ringpost(tmp_path, sink_port, cores=cores, delivery_extra=delivery_extra, route_all=False,
                    tail=routes + tail).start()


SOURCES = """
[[source]]
name = "ip2"
bind = "127.0.0.2"
ehlo = "mta2.test"
[[source]]
name = "ip3"
bind = "127.0.0.3"
ehlo = "mta3.test"
"""


def test_a_site_connection_cap_holds_per_source_and_is_reached(tmp_path):
    sink = Sink("--exit-after", "5000")
    rp = daemon(tmp_path, sink.port, SOURCES + """
[[pool]]
name = "default"
sources = { ip2 = 1, ip3 = 1 }
[[shape]]
site = "*"
max_connections = 3
""")
    try:
        send(rp, 5000, domains="20", connections=20)
        rep = sink.report()
        assert rep["received"] == 5000
        peaks = rep["peak_connections_per_ip"]
        assert peaks.get("127.0.0.2") == 3 and peaks.get("127.0.0.3") == 3, peaks
    finally:
        rp.stop(signal.SIGKILL)
        sink.proc.kill()


def test_a_site_message_rate_holds_per_source_over_20_seconds(tmp_path):
    sink = Sink("--exit-after", "4400")
    rp = daemon(tmp_path, sink.port, SOURCES + """
[[pool]]
name = "default"
sources = { ip2 = 1 }
[[shape]]
site = "*"
max_message_rate = "200/s"
""")
    try:
        send(rp, 4400, domains="20", connections=20)
        rep = sink.report()
        assert rep["received"] == 4400
        per_s = {int(k): v for k, v in rep["sources"]["127.0.0.2"]["per_second"].items()}
        seconds = sorted(per_s)
        full = [per_s.get(s, 0) for s in range(seconds[0] + 1, seconds[-1])]  # whole seconds only
        assert len(full) >= 20, full
        assert max(full) <= 210, full
        assert sum(full) / len(full) >= 150 and min(full) >= 150, full
    finally:
        rp.stop(signal.SIGKILL)
        sink.proc.kill()


def test_a_pool_spreads_by_weight_over_bound_sources_with_their_ehlo(tmp_path):
    sink = Sink("--exit-after", "2000")
    rp = daemon(tmp_path, sink.port, SOURCES + """
[[pool]]
name = "default"
sources = { ip2 = 1, ip3 = 3 }
""")
    try:
        send(rp, 2000, domains="20", connections=10)
        rep = sink.report()
        src = rep["sources"]
        total = src["127.0.0.2"]["messages"] + src["127.0.0.3"]["messages"]
        assert total == 2000 and "127.0.0.1" not in src, src.keys()
        share2 = 100.0 * src["127.0.0.2"]["messages"] / total
        assert 22.0 <= share2 <= 28.0, share2
        assert src["127.0.0.2"]["ehlo"] == ["mta2.test"] and src["127.0.0.3"]["ehlo"] == ["mta3.test"]
    finally:
        rp.stop(signal.SIGKILL)
        sink.proc.kill()


class Recorder:
    """aiosmtpd handler recording (peer ip, EHLO name, raw content)."""

    def __init__(self):
        self.got = []

    async def handle_DATA(self, server, session, envelope):
        self.got.append((session.peer[0], session.host_name, envelope.content))
        return "250 2.0.0 Ok"


def test_the_auth_pool_or_the_header_picks_a_pool_and_neither_is_sent(tmp_path):
    from conftest import BINARY
    rec = Recorder()
    port = free_port()
    ctl = Controller(rec, hostname="127.0.0.1", port=port, decode_data=False)
    ctl.start()
    h = subprocess.run([str(BINARY), "--hash-password"], input="pw\n", capture_output=True, text=True, check=True).stdout.strip()
    rp = Ringpost(tmp_path, port, route_all=False, tail=f'[[route]]\ndomain = "*"\nhosts = ["127.0.0.1:{port}"]\n' + SOURCES + """
[[pool]]
name = "default"
sources = { ip2 = 1 }
[[pool]]
name = "bulk"
sources = { ip3 = 1 }
""")
    rp.config.write_text(rp.config.read_text().replace(
        "[spool]", f'[auth]\nusers = [{{ name = "app", password_hash = "{h}", pool = "bulk" }}]\n'
                   f'plaintext_listeners = ["127.0.0.1:{rp.port}"]\n[spool]', 1))
    rp.start()
    try:
        with smtplib.SMTP("127.0.0.1", rp.port) as s:
            s.sendmail("a@x.test", ["u@h.test"],
                       b"Subject: one\r\nX-Ringpost-Pool: bulk\r\nx-ringpost-pool: again\r\n\r\nbody X-Ringpost-Pool: stays\r\n")
            s.sendmail("a@x.test", ["u@h.test"], b"Subject: two\r\n\r\nno pool\r\n")
        with smtplib.SMTP("127.0.0.1", rp.port) as s:
            s.login("app", "pw")
            s.sendmail("a@x.test", ["u@h.test"], b"Subject: three\r\nX-Ringpost-Pool: default\r\n\r\nauthed\r\n")
        # BDAT, the header's name split across two chunks: the reception's scan must still see
        # it (or delivery would neither strip it nor use it).
        from test_bdat import BdatClient
        c = BdatClient(rp.port)
        c.ehlo()
        replies = c.send_chunks("a@x.test", ["u@h.test"], [b"Subject: four\r\nX-Ringpo", b"st-Pool: bulk\r\n\r\nbdat body\r\n"])
        assert replies[-1].startswith("250 2.0.0 Ok: queued as"), replies
        c.close()
        wait_for(lambda: len(rec.got) == 4, "all delivered", timeout=15)
        def subject(c):
            return [l for l in c.split(b"\r\n") if l.startswith(b"Subject")][0]
        by_subject = {subject(c): (ip, ehlo, c) for ip, ehlo, c in rec.got}
        ip, ehlo, content = by_subject[b"Subject: one"]
        assert (ip, ehlo) == ("127.0.0.3", "mta3.test")
        assert b"X-Ringpost-Pool: bulk" not in content and b"body X-Ringpost-Pool: stays" in content
        assert b"Subject: one\r\n\r\nbody" in content, content
        assert by_subject[b"Subject: two"][:2] == ("127.0.0.2", "mta2.test"), "no header: the default pool"
        ip, ehlo, content = by_subject[b"Subject: three"]
        assert (ip, ehlo) == ("127.0.0.3", "mta3.test"), "the AUTH user's pool wins over the header"
        assert b"X-Ringpost-Pool" not in content, content
        ip, ehlo, content = by_subject[b"Subject: four"]
        assert (ip, ehlo) == ("127.0.0.3", "mta3.test"), "the header split over BDAT chunks picks its pool"
        assert b"X-Ringpo" not in content and b"Subject: four\r\n\r\nbdat body" in content, content
    finally:
        rp.stop(signal.SIGKILL)
        ctl.stop()


TSS04 = "421 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred due to unexpected volume or user complaints"


def test_tss04_suspends_the_path_for_its_time_others_flow_and_it_resumes(tmp_path):
    sink = Sink("--reply", f"tss.test={TSS04}", "--duration", "14s", second_address=True)
    rp = daemon(tmp_path, sink.port, f"""
[[route]]
domain = "tss.test"
hosts = ["127.0.0.4:{sink.port}"]
[[route]]
domain = "ok.test"
hosts = ["127.0.0.1:{sink.port}"]
[[rule]]
name = "yahoo-tss04"
regex = '\\[TSS04\\]'
action = "suspend"
duration_s = 4
""", route=False)
    try:
        with smtplib.SMTP("127.0.0.1", rp.port) as s:
            s.sendmail("a@x.test", ["u@tss.test"], b"Subject: t\r\n\r\nx\r\n")
        time.sleep(1.0)
        rc, q, _ = rp.ctl("queue")
        held = [h for d in q["Queue"]["destinations"] for h in d["shaping"]]
        assert any("suspended until" in h and "TSS04" in h for h in held), q
        with smtplib.SMTP("127.0.0.1", rp.port) as s:
            for i in range(5):
                s.sendmail("a@x.test", [f"u{i}@ok.test"], b"Subject: o\r\n\r\nx\r\n")
        rep = sink.report(timeout=60)
        assert rep["domains"]["ok.test"]["recipients"] == 5, "another site is not suspended"
        times = rep["scripted_attempts"]["tss.test"]
        gaps = [b - a for a, b in zip(times, times[1:])]
        # retry_first_s is 0.5: without the suspension the sink would see an attempt every ~0.5 s.
        assert len(times) >= 2, times
        assert all(g >= 3.9 for g in gaps), gaps
        assert all(g <= 5.5 for g in gaps), f"resumes by itself when the suspension ends: {gaps}"
    finally:
        rp.stop(signal.SIGKILL)
        sink.proc.kill()


def test_a_warmup_cap_of_100_makes_the_101st_wait_also_after_a_restart(tmp_path):
    # The cap is per UTC day: a run across midnight would move to day 2's 1,000 and release
    # the 20 (CI did that once at 23:59). Start after midnight when it is less than 90 s away.
    to_midnight = 86400 - time.time() % 86400
    if to_midnight < 90:
        time.sleep(to_midnight + 1)
    sink = Sink("--duration", "25s")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    tail = SOURCES + f"""
[[pool]]
name = "default"
sources = {{ ip2 = 1 }}
[[warmup]]
source = "ip2"
start = "{today}"
daily = [100, 1000]
"""
    rp = daemon(tmp_path, sink.port, tail)
    try:
        send(rp, 120, domains="4", connections=4)
        def queued():
            rc, q, _ = rp.ctl("queue")
            return sum(d["waiting"] for d in q["Queue"]["destinations"])
        wait_for(lambda: queued() == 20, "20 wait for tomorrow", timeout=15)
        time.sleep(2)
        assert queued() == 20
        assert not [e for e in rp.events() if e["type"] in ("Bounce", "Expiration")]
        delivered = len([e for e in rp.events() if e["type"] == "Delivery"])
        assert delivered == 100
        rp.stop()
        rp.start()
        wait_for(lambda: queued() == 20, "still waiting after the restart", timeout=15)
        time.sleep(3)
        assert queued() == 20
        rep = sink.report()
        assert rep["received"] == 100, rep["received"]
    finally:
        rp.stop(signal.SIGKILL)
        sink.proc.kill()
