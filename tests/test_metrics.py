"""The Prometheus endpoint against a real daemon and a real receiver.

- after a run of messages (some delivered, some bounced 5xx, some deferred 4xx once, and the
  DSNs the bounces cause) every counter equals the count of its delivery-log lines exactly, and
  the accept-to-250 histogram holds exactly one value per message accepted;
- the exposition parses with Python's prometheus_client parsers (classic text and OpenMetrics);
- counters never go down from one scrape to the next;
- nothing listens when `[metrics] listen` is absent; a bad address is a clear config error;
- a scraper that connects and sends nothing (or half a request) does not hold up the next one;
- 404 for other paths, 405 for other methods;
- the Grafana dashboard names only metrics the daemon exports, and rates its counters.
"""
import json
import re
import smtplib
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from conftest import BINARY, ROOT, Ringpost, SinkHandler, free_port, serve_sink, wait_for

DASHBOARD = ROOT / "config" / "grafana-ringpost.json"


def metrics_tail(port):
    return f'[metrics]\nlisten = "127.0.0.1:{port}"\n'


def scrape(port, accept=None, timeout=5):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.headers.get("Content-Type"), r.read().decode()


def samples(text):
    """{(sample name, frozenset(labels)): value} of a classic-text exposition."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(s, name, **labels):
    return s.get((name, frozenset(labels.items())), 0)


def by_label(s, name, label):
    return {dict(k[1])[label]: v for k, v in s.items() if k[0] == name}


def send(rp, rcpts, n):
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=10) as c:
        c.sendmail("sender@src.test", rcpts, f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode())


def listening_ports(pid):
    """TCP ports the process `pid` listens on (its socket inodes matched to /proc/net/tcp*)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    inodes = set()
    for fd in fd_dir.iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


N_OK, N_REJECT, N_TEMPFAIL = 6, 3, 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One daemon, one run: N_OK delivered, N_REJECT bounced (550 at RCPT), N_TEMPFAIL deferred
    once (451) then delivered, and a DSN for each bounce (delivered to the sink). Waits until
    the delivery log is complete and still."""
    workdir = tmp_path_factory.mktemp("metrics")
    for handler in serve_sink(SinkHandler()):
        mport = free_port()
        rp = Ringpost(workdir, handler.port, cores=2, tail=metrics_tail(mport)).start()
        rp.mport = mport
        try:
            first = scrape(mport)[1]
            n = 0
            for i in range(N_OK):
                send(rp, [f"ok-{i}@a.test"], n := n + 1)
            for i in range(N_REJECT):
                send(rp, [f"reject-{i}@b.test"], n := n + 1)
            for i in range(N_TEMPFAIL):
                send(rp, [f"tempfail-{i}@c.test"], n := n + 1)
            total_finals = N_OK + N_REJECT + N_TEMPFAIL + N_REJECT  # + one DSN per bounce
            rp.wait_final(total_finals)
            still = [None]

            def quiet():
                now = len(rp.events())
                if now == still[0]:
                    return True
                still[0] = now
                time.sleep(0.5)
                return False
            wait_for(quiet, "the delivery log to stop growing")
            rp.first_scrape = first
            yield rp
        finally:
            rp.stop()


def test_counters_equal_the_delivery_log_exactly(run):
    ctype, text = scrape(run.mport)
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    s = samples(text)
    events = run.events()
    kinds = Counter(e["type"] for e in events)
    smtp = [e for e in events if e["type"] == "Reception" and "remote" in e]
    dsns = [e for e in events if e["type"] == "Reception" and "remote" not in e]
    assert (len(smtp), len(dsns)) == (N_OK + N_REJECT + N_TEMPFAIL, N_REJECT), "the scenario ran as planned"
    assert kinds["TransientFailure"] == N_TEMPFAIL and kinds["Bounce"] == N_REJECT

    assert value(s, "ringpost_messages_received_total") == len(smtp)
    assert value(s, "ringpost_dsns_generated_total") == len(dsns)
    assert value(s, "ringpost_recipients_delivered_total") == kinds["Delivery"]
    assert value(s, "ringpost_recipients_expired_total") == kinds["Expiration"]
    for kind, name in (("Bounce", "ringpost_recipients_bounced_total"), ("TransientFailure", "ringpost_recipients_deferred_total")):
        from_log = Counter(e.get("category", "none") for e in events if e["type"] == kind)
        assert by_label(s, name, "category") == dict(from_log), name

    # Histograms: one accept-to-250 value per message answered 250; one batch-size and one
    # fsync value per commit round (durability fsync, no failed round).
    assert value(s, "ringpost_accept_to_250_seconds_count") == len(smtp)
    assert value(s, "ringpost_accept_to_250_seconds_bucket", le="+Inf") == len(smtp)
    rounds = value(s, "ringpost_commit_rounds_total")
    assert rounds > 0
    assert value(s, "ringpost_commit_round_records_count") == rounds
    assert value(s, "ringpost_fsync_duration_seconds_count") == rounds
    # Every record lands in some round: at least one per message (records, chunks, states).
    assert value(s, "ringpost_commit_round_records_sum") >= len(smtp) + len(dsns)

    # Gauges per core: the queues are empty, no SMTP session is open, the spool's bytes are
    # its segments at the configured size. Everything is routed: no DNS at all.
    for core in ("0", "1"):
        for state in ("ready", "waiting", "in_flight"):
            assert value(s, "ringpost_queue_recipients", core=core, state=state) == 0
        assert ("ringpost_connections", frozenset({"core": core, "direction": "in"}.items())) in s
        assert value(s, "ringpost_connections", core=core, direction="in") == 0
        assert ("ringpost_connections", frozenset({"core": core, "direction": "out"}.items())) in s
        segs = value(s, "ringpost_spool_segments", core=core)
        assert segs >= 1 and value(s, "ringpost_spool_bytes", core=core) == segs * 8388608
    assert value(s, "ringpost_dns_queries_total") == 0 and value(s, "ringpost_dns_cache_hits_total") == 0
    assert value(s, "ringpost_cores") == 2

    fams = families(text)
    for name, typ in (("ringpost_messages_received", "counter"), ("ringpost_accept_to_250_seconds", "histogram"),
                      ("ringpost_queue_recipients", "gauge"), ("ringpost_fsync_duration_seconds", "histogram")):
        assert fams[name].type == typ, name


def test_openmetrics_on_request_and_counters_never_go_down(run):
    ctype, om = scrape(run.mport, accept="application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    assert ctype.startswith("application/openmetrics-text; version=1.0.0")
    om_fams = {f.name: f for f in parse_openmetrics(om)}
    assert om_fams["ringpost_recipients_delivered"].type == "counter"
    assert om_fams["ringpost_accept_to_250_seconds"].type == "histogram"

    # Three scrapes: before the run, after it, and once more at once. A counter that reset on
    # reading (or on anything) would show as a drop between the last two.
    before = samples(run.first_scrape)
    mid = samples(scrape(run.mport)[1])
    after = samples(scrape(run.mport)[1])
    monotonic = [k for k in after if k[0].endswith(("_total", "_count", "_sum", "_bucket"))]
    assert len(monotonic) > 20
    for k in monotonic:
        assert before.get(k, 0) <= mid[k] <= after[k], k
    assert value(mid, "ringpost_messages_received_total") == N_OK + N_REJECT + N_TEMPFAIL


def test_other_paths_get_404_and_other_methods_405(run):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{run.mport}/", timeout=5)
    assert e.value.code == 404
    req = urllib.request.Request(f"http://127.0.0.1:{run.mport}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 405 and e.value.headers["Allow"] == "GET"
    with socket.create_connection(("127.0.0.1", run.mport), timeout=5) as c:
        c.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n")
        assert c.recv(100).startswith(b"HTTP/1.1 431 ")


def test_a_stalled_scraper_does_not_stall_the_next(run):
    # One connects and sends nothing, one sends half a request; each waits for a read
    # deadline of 5 s. The next scrape must not wait for either.
    silent = socket.create_connection(("127.0.0.1", run.mport), timeout=10)
    half = socket.create_connection(("127.0.0.1", run.mport), timeout=10)
    half.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    try:
        t0 = time.monotonic()
        for _ in range(3):
            _, text = scrape(run.mport, timeout=5)
            assert "ringpost_messages_received_total" in text
        assert time.monotonic() - t0 < 2.0, "a scrape waited for a stalled one"
        # The stalled ones are dropped at the read deadline, unanswered.
        silent.settimeout(10)
        t1 = time.monotonic()
        assert silent.recv(100) == b""
        assert 3.0 < time.monotonic() - t0 and time.monotonic() - t1 < 8.0
    finally:
        silent.close()
        half.close()


def test_the_largest_destinations_have_their_own_queue_gauge_and_the_rest_add_up_as_other(tmp_path, sink):
    mport = free_port()
    rp = Ringpost(tmp_path, sink.port, cores=2, tail=metrics_tail(mport) + "destinations_top = 2\n").start()
    try:
        assert rp.ctl("suspend", "--all")[0] == 0
        n = 0
        for domain, count in (("a.test", 3), ("b.test", 2), ("c.test", 1)):
            for i in range(count):
                send(rp, [f"ok-{i}@{domain}"], n := n + 1)

        def depth():
            s = samples(scrape(mport)[1])
            return s if sum(v for k, v in s.items() if k[0] == "ringpost_queue_recipients") == 6 else None
        s = wait_for(depth, "six recipients queued")
        shown = {dict(k[1])["destination"]: v for k, v in s.items()
                 if k[0] == "ringpost_destination_recipients" and dict(k[1])["state"] == "ready"}
        assert shown == {"a.test": 3, "b.test": 2, "other": 1}
        assert rp.ctl("resume", "--all")[0] == 0
        rp.wait_final(6)

        def drained():
            s = samples(scrape(mport)[1])
            d = {k: v for k, v in s.items() if k[0] == "ringpost_destination_recipients"}
            return d if {dict(k[1])["destination"] for k in d} == {"other"} else None
        d = wait_for(drained, "the destination gauges to empty")
        assert sorted(d.values()) == [0, 0, 0]
    finally:
        rp.stop()


def test_off_unless_configured_and_a_bad_address_is_refused(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, cores=1).start()
    try:
        assert listening_ports(rp.proc.pid) == {rp.port}, "only SMTP listens without [metrics]"
    finally:
        rp.stop()
    mport = free_port()
    (tmp_path / "on").mkdir()
    on = Ringpost(tmp_path / "on", sink.port, cores=1, tail=metrics_tail(mport)).start()
    try:
        assert listening_ports(on.proc.pid) == {on.port, mport}
        # A second daemon cannot take the same metrics port: it says which key and why.
        (tmp_path / "dup").mkdir()
        dup = Ringpost(tmp_path / "dup", sink.port, cores=1, tail=metrics_tail(mport))
        p = subprocess.run([str(BINARY), "--config", str(dup.config)], capture_output=True, text=True, timeout=30)
        assert p.returncode != 0 and f"metrics.listen 127.0.0.1:{mport}" in p.stderr, p.stderr
    finally:
        on.stop()
    (tmp_path / "bad").mkdir()
    bad = Ringpost(tmp_path / "bad", sink.port, cores=1, tail='[metrics]\nlisten = "localhost"\n')
    p = subprocess.run([str(BINARY), "--config", str(bad.config)], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "metrics.listen" in p.stderr and "not an IP address and port" in p.stderr, p.stderr


def dashboard_exprs(dash):
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))
    walk(dash["panels"])
    return exprs


def test_the_dashboard_names_only_exported_metrics(run):
    dash = json.loads(DASHBOARD.read_text())
    exported = {k[0] for k in samples(scrape(run.mport)[1])}
    exprs = dashboard_exprs(dash)
    assert len(exprs) >= 12
    named = set()
    for e in exprs:
        names = set(re.findall(r"\bringpost_[a-z0-9_]+", e))
        assert names, f"panel expression names no ringpost metric: {e}"
        missing = names - exported
        assert not missing, f"dashboard names metrics the daemon does not export: {missing} in {e}"
        for n in names:
            if n.endswith(("_total", "_bucket", "_sum", "_count")):
                assert re.search(r"(rate|increase)\(\s*" + n, e), f"counter {n} not rated in {e}"
        named |= names
    # Every family the daemon exports has a panel.
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported}
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in named}
    assert base - shown <= {"ringpost_cores"}, base - shown
    ds = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert ds and ds[0]["query"] == "prometheus"
    for e in dash["panels"]:
        if e.get("targets"):
            assert e["datasource"]["uid"] == "${" + ds[0]["name"] + "}"
