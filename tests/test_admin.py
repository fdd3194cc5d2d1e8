"""The admin socket and ringctl against a real daemon and a real receiver.

- suspend holds one destination while another flows; resume drains its backlog;
- bounce fails queued recipients (Bounce events, a DSN to the sender);
- retry makes a waiting recipient try now; msg shows it mid-retry and again after a crash;
- reload changes a route with a session open; a bad config changes nothing;
- drain answers new sessions 421;
- only the owner can connect; bad frames get an error frame, then the connection closes;
  several requests are in flight on one connection;
- a second daemon on the same socket is refused; a stale socket is replaced.
"""
import json
import os
import shutil
import signal
import smtplib
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from conftest import BINARY, RINGCTL, Ringpost, SinkHandler, fnv1a, free_port, wait_for

SLOW_RETRY = "retry_first_s = 0.5\nretry_factor = 1.0\nretry_max_s = 0.5"


def slow_retries(rp: Ringpost, first_s=120):
    """Make the next attempt far away, so a recipient stays deferred during the test."""
    text = rp.config.read_text()
    assert SLOW_RETRY in text
    rp.config.write_text(text.replace(SLOW_RETRY, f"retry_first_s = {first_s}.0\nretry_factor = 1.0\nretry_max_s = {first_s}.0"))


def send(rp, rcpts, sender="sender@src.test", subject="t"):
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=10) as s:
        s.sendmail(sender, rcpts, f"Subject: {subject}\r\n\r\nbody\r\n".encode())


def queue_id_of(rp, recipient):
    for e in rp.events():
        if e["type"] == "Reception" and recipient in e["recipient"].split(","):
            return e["id"]
    raise AssertionError(f"no Reception for {recipient}")


def arrived_for(sink, domain):
    return [m for m in sink.snapshot() if any(r.endswith("@" + domain) for r in m[1])]


def test_suspend_holds_one_destination_while_another_flows_and_resume_drains_it(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, cores=2).start()
    try:
        rc, out, _ = rp.ctl("suspend", "held.test")
        assert rc == 0 and out["Done"]["count"] == 1, out
        for i in range(3):
            send(rp, [f"u{i}@held.test"])
            send(rp, [f"u{i}@flows.test"])
        wait_for(lambda: len(arrived_for(sink, "flows.test")) == 3, "flows.test delivered")
        time.sleep(1.0)
        assert arrived_for(sink, "held.test") == [], "nothing for a suspended destination"
        rc, q, _ = rp.ctl("queue", "--sort", "name")
        held = [d for d in q["Queue"]["destinations"] if d["domain"] == "held.test"]
        assert rc == 0 and len(held) == 1, q
        assert (held[0]["ready"], held[0]["suspended"], held[0]["core"]) == (3, True, fnv1a("held.test") % 2)
        rc, st, _ = rp.ctl("status")
        assert [c["suspended"] for c in st["Status"]["cores"] if c["suspended"]] == [["held.test"]]
        assert sum(c["rcpts_ready"] for c in st["Status"]["cores"]) == 3
        rc, out, _ = rp.ctl("resume", "held.test")
        assert rc == 0
        wait_for(lambda: len(arrived_for(sink, "held.test")) == 3, "the backlog drained after resume")
        rc, st, _ = rp.ctl("status")
        assert sum(c["delivered"] for c in st["Status"]["cores"]) == 6
        assert sum(c["accepted"] for c in st["Status"]["cores"]) == 6
    finally:
        rp.stop()


def test_suspend_all_and_timed_suspension_lifts_by_itself(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, cores=2).start()
    try:
        assert rp.ctl("suspend", "--all")[0] == 0
        send(rp, ["a@one.test", "b@two.test"])
        time.sleep(1.0)
        assert sink.snapshot() == []
        assert rp.ctl("resume", "--all")[0] == 0
        wait_for(lambda: len(sink.snapshot()) == 2, "both delivered after resume --all")
        assert rp.ctl("suspend", "later.test", "--for", "2s")[0] == 0
        send(rp, ["c@later.test"])
        time.sleep(1.0)
        assert arrived_for(sink, "later.test") == []
        wait_for(lambda: arrived_for(sink, "later.test"), "the timed suspension ended by itself", timeout=10)
    finally:
        rp.stop()


def test_bounce_a_destination_gives_bounce_events_and_a_dsn(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, cores=2)
    slow_retries(rp)
    rp.start()
    try:
        send(rp, ["defer-1@gone.test", "defer-2@gone.test", "ok@fine.test"], sender="owner@src.test")
        wait_for(lambda: len([e for e in rp.events() if e["type"] == "TransientFailure"]) == 2, "first attempt deferred")
        rc, out, _ = rp.ctl("bounce", "gone.test", "--reason", "domain retired")
        assert rc == 0 and out["Done"]["count"] == 2, out
        finals = rp.wait_final(3)
        bounces = sorted(e["recipient"] for e in finals if e["type"] == "Bounce")
        assert bounces == ["defer-1@gone.test", "defer-2@gone.test"]
        assert all("domain retired" in e["response"] for e in finals if e["type"] == "Bounce")
        dsn = wait_for(lambda: [m for m in sink.snapshot() if m[0] in ("", "<>") and "owner@src.test" in m[1]], "a DSN to the sender")
        body = dsn[0][2]
        assert b"defer-1@gone.test" in body and b"defer-2@gone.test" in body and b"domain retired" in body
        rc, q, _ = rp.ctl("queue")
        assert [d for d in q["Queue"]["destinations"] if d["domain"] == "gone.test" and d["waiting"]] == []
    finally:
        rp.stop()


def test_bounce_one_message_leaves_the_others(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, cores=2)
    slow_retries(rp)
    rp.start()
    try:
        send(rp, ["defer-a@slow.test"], sender="s1@src.test")
        send(rp, ["defer-b@slow.test"], sender="s2@src.test")
        wait_for(lambda: len([e for e in rp.events() if e["type"] == "TransientFailure"]) == 2, "both deferred")
        victim = queue_id_of(rp, "defer-a@slow.test")
        rc, out, _ = rp.ctl("bounce", "--msg", victim)
        assert rc == 0 and out["Done"]["count"] == 1, out
        wait_for(lambda: [m for m in sink.snapshot() if m[0] in ("", "<>") and "s1@src.test" in m[1]], "the DSN for the bounced message")
        assert rp.ctl("msg", queue_id_of(rp, "defer-b@slow.test"))[1]["Msg"]["recipients"][0]["state"] == "Deferred"
        rc, m, _ = rp.ctl("msg", victim)
        assert rc == 0 and m["Msg"]["finished"] is True, "the bounced message is finished, answered from the history"
        assert m["Msg"]["recipients"][0]["state"] == "Bounced", m
    finally:
        rp.stop()


def test_retry_tries_now_and_msg_shows_the_state_mid_retry_and_after_a_crash(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, cores=2)
    slow_retries(rp)
    rp.start()
    try:
        send(rp, ["tempfail-x@later.test", "ok@now.test"])
        wait_for(lambda: any(e["type"] == "TransientFailure" for e in rp.events()), "first attempt deferred")
        qid = queue_id_of(rp, "tempfail-x@later.test")
        wait_for(lambda: rp.ctl("msg", qid)[1]["Msg"]["recipients"][1]["state"] == "Delivered", "ok@now.test delivered")
        rc, m, _ = rp.ctl("msg", qid)
        assert rc == 0
        r = m["Msg"]["recipients"]
        assert [x["recipient"] for x in r] == ["tempfail-x@later.test", "ok@now.test"]
        assert (r[0]["state"], r[0]["attempts"]) == ("Deferred", 1)
        assert r[0]["next_attempt_unix_ms"] > time.time() * 1000 + 60_000
        assert r[0]["last_response"].startswith("451 4.3.0")
        assert m["Msg"]["sender"] == "sender@src.test"

        # A crash: the stale socket is replaced, the message is recovered with its schedule.
        rp.stop(signal.SIGKILL)
        assert rp.socket.exists(), "SIGKILL leaves the socket file behind"
        rp.start()
        rc, m, _ = rp.ctl("msg", qid)
        assert rc == 0, m
        r = m["Msg"]["recipients"]
        assert (r[0]["state"], r[0]["attempts"]) == ("Deferred", 1), r
        assert r[0]["last_response"].startswith("451 4.3.0"), r
        assert r[1]["state"] == "Delivered"

        before = time.time()
        rc, out, _ = rp.ctl("retry", "later.test")
        assert rc == 0 and out["Done"]["count"] == 1, out
        wait_for(lambda: arrived_for(sink, "later.test"), "delivered at once after retry", timeout=10)
        assert time.time() - before < 10, "well before the 120 s retry"
        m = wait_for(lambda: (lambda r: r[0] == 0 and r[1]["Msg"]["finished"] and r[1])(rp.ctl("msg", qid)), "finished, in the history")
        assert [x["state"] for x in m["Msg"]["recipients"]] == ["Delivered", "Delivered"], m
    finally:
        rp.stop()


def start_second_sink():
    handler = SinkHandler()
    handler.port = free_port()
    ctl = Controller(handler, hostname="127.0.0.1", port=handler.port, decode_data=False)
    ctl.start()
    return handler, ctl


def test_reload_changes_a_route_with_a_session_open_and_a_bad_config_changes_nothing(tmp_path, sink):
    other, other_ctl = start_second_sink()
    route = lambda port: f'[[route]]\ndomain = "moved.test"\nhosts = ["127.0.0.1:{port}"]\n'
    rp = Ringpost(tmp_path, sink.port, cores=2, tail=route(sink.port)).start()
    try:
        send(rp, ["a@moved.test"])
        wait_for(lambda: arrived_for(sink, "moved.test"), "first message to the first sink")
        session = smtplib.SMTP("127.0.0.1", rp.port, timeout=10)
        session.ehlo("open.test")
        good = rp.config.read_text().replace(route(sink.port), route(other.port))
        rp.config.write_text(good)
        rc, out, _ = rp.ctl("reload")
        assert rc == 0, out
        assert out["Reload"]["applied"] == ["route"] and out["Reload"]["needs_restart"] == []
        session.sendmail("s@src.test", ["b@moved.test"], b"Subject: after\r\n\r\nx\r\n")
        session.quit()
        wait_for(lambda: arrived_for(other, "moved.test"), "the session opened before the reload used the new route")
        assert len(arrived_for(sink, "moved.test")) == 1

        bad = good.replace("max_connections_per_ip = 200", "max_connections_per_ip = 200\nmax_recipients = 5")
        rp.config.write_text(bad + route(sink.port).replace("moved.test", "x.test"))
        rc, out, err = rp.ctl("reload")
        assert rc == 1 and out["Error"]["kind"] == "Refused", out
        assert "server.max_recipients" in out["Error"]["message"]
        send(rp, ["c@moved.test"])
        wait_for(lambda: len(arrived_for(other, "moved.test")) == 2, "the route in force is unchanged")

        rp.config.write_text(good.replace(f'listen = ["127.0.0.1:{rp.port}"]', f'listen = ["127.0.0.1:{free_port()}"]'))
        rc, out, _ = rp.ctl("reload")
        assert rc == 0 and out["Reload"]["needs_restart"] == ["server.listen"], out
        send(rp, ["d@moved.test"])
        wait_for(lambda: len(arrived_for(other, "moved.test")) == 3, "still listening where it started")
    finally:
        rp.stop()
        other_ctl.stop()


def test_a_domain_sharing_a_site_keeps_the_site_hosts_when_the_paths_first_domain_moves(tmp_path, sink):
    """Two domains routed to one host share a site (one path). A reload moves the domain that
    formed the path elsewhere; the other domain's mail, on a new connection of that path, must
    still go to the site's host, not follow the first domain (red when a path connected by its
    first domain's route: b.test's mail reached the second sink)."""
    other, other_ctl = start_second_sink()
    route = lambda d, port: f'[[route]]\ndomain = "{d}"\nhosts = ["127.0.0.1:{port}"]\n'
    tail = route("a.test", sink.port) + route("b.test", sink.port)
    # One core (one path for both domains) and a long idle time: the first connection is
    # still open at the reload, closes as stale, and the path opens a new one for b.test.
    rp = Ringpost(tmp_path, sink.port, cores=1, tail=tail, delivery_extra="idle_timeout_s = 30").start()
    try:
        send(rp, ["x@a.test"])
        wait_for(lambda: arrived_for(sink, "a.test"), "a.test to the first sink")
        rp.config.write_text(rp.config.read_text().replace(route("a.test", sink.port), route("a.test", other.port)))
        rc, out, _ = rp.ctl("reload")
        assert rc == 0 and out["Reload"]["applied"] == ["route"], out
        send(rp, ["y@b.test"])
        send(rp, ["z@a.test"])
        wait_for(lambda: arrived_for(sink, "b.test") or arrived_for(other, "b.test"), "b.test delivered")
        wait_for(lambda: arrived_for(other, "a.test"), "a.test follows its new route")
        assert len(arrived_for(sink, "b.test")) == 1 and arrived_for(other, "b.test") == []
        assert len(arrived_for(sink, "a.test")) == 1, "only the message sent before the reload"
    finally:
        rp.stop()
        other_ctl.stop()


def test_sighup_reloads_the_config(tmp_path, sink):
    other, other_ctl = start_second_sink()
    rp = Ringpost(tmp_path, sink.port, cores=1).start()
    try:
        rp.config.write_text(rp.config.read_text().replace(f"127.0.0.1:{sink.port}", f"127.0.0.1:{other.port}"))
        rp.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: reloaded" in rp.stderr.read_text(), "the reload logged")
        send(rp, ["a@any.test"])
        wait_for(lambda: arrived_for(other, "any.test"), "delivered on the reloaded route")
    finally:
        rp.stop()
        other_ctl.stop()


def test_drain_refuses_new_sessions_and_keeps_delivering(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, cores=2)
    slow_retries(rp, first_s=1)
    rp.start()
    try:
        send(rp, ["tempfail-d@drain.test"])
        assert rp.ctl("drain")[0] == 0
        for _ in range(4):  # every core refuses
            with socket.create_connection(("127.0.0.1", rp.port), timeout=5) as s:
                assert s.recv(100).startswith(b"421 4.3.2"), "new sessions are refused"
        assert rp.ctl("status")[1]["Status"]["draining"] is True
        wait_for(lambda: arrived_for(sink, "drain.test"), "queued mail is still delivered", timeout=15)
        assert rp.ctl("drain", "--off")[0] == 0
        send(rp, ["b@drain.test"])
    finally:
        rp.stop()


def test_only_the_owner_may_connect(tmp_path, sink):
    # The socket's directory is world-searchable, so only the socket's own mode keeps others out.
    d = Path(tempfile.mkdtemp(prefix="rp-admin-"))
    d.chmod(0o755)
    sock = d / "admin.sock"
    rp = Ringpost(tmp_path, sink.port, cores=1, admin_socket=sock).start()
    try:
        assert (sock.stat().st_mode & 0o777) == 0o600
        rc, out, err = rp.ctl("status", user="nobody")
        assert rc == 3 and "Permission denied" in err, (rc, out, err)
        assert rp.ctl("status")[0] == 0, "the owner connects"
        sock.chmod(0o666)  # what the mode protects: opened up, nobody gets in
        assert rp.ctl("status", user="nobody")[0] == 0
    finally:
        rp.stop()
        shutil.rmtree(d, ignore_errors=True)
    assert not sock.exists(), "the socket is removed at shutdown"


def frame(payload: bytes, req_id: int, version: int = 1) -> bytes:
    return struct.pack(">IBI", 5 + len(payload), version, req_id) + payload


def read_frame(s):
    buf = b""
    while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError(buf)
        buf += chunk
    n = struct.unpack(">I", buf[:4])[0]
    version, req_id = struct.unpack(">BI", buf[4:9])
    return version, req_id, buf[9:4 + n], buf[4 + n:]


def varint(b: bytes, i: int):
    v, shift = 0, 0
    while True:
        v |= (b[i] & 0x7F) << shift
        i += 1
        if b[i - 1] < 0x80:
            return v, i
        shift += 7


ERROR_KINDS = ["Malformed", "Oversized", "UnknownVersion", "NotFound", "Refused", "Timeout", "Unavailable"]


def error_of(payload: bytes):
    """Decode a postcard Reply::Error(ErrorReply { kind, message }) by hand."""
    variant, i = varint(payload, 0)
    assert variant == 0, f"not an error reply: {payload[:40]!r}"
    kind, i = varint(payload, i)
    n, i = varint(payload, i)
    return ERROR_KINDS[kind], payload[i:i + n].decode()


@pytest.mark.parametrize("bad,kind,req_id", [
    (frame(b"\xc8", 9), "Malformed", 9),                # no such request variant
    (struct.pack(">I", 1 << 31) + b"xxxx", "Oversized", 0),  # refused from the length alone
    (frame(b"\x00", 42, version=7), "UnknownVersion", 42),
    (struct.pack(">I", 2) + b"\x01\x00", "Malformed", 0),   # shorter than a header
])
def test_bad_frames_get_an_error_frame_then_the_connection_closes(tmp_path, sink, bad, kind, req_id):
    rp = Ringpost(tmp_path, sink.port, cores=1).start()
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(rp.socket))
            s.sendall(bad)
            version, got_id, payload, rest = read_frame(s)
            assert (version, got_id) == (1, req_id)
            got_kind, message = error_of(payload)
            assert got_kind == kind, message
            assert rest == b"" and s.recv(10) == b"", "the connection is closed after the error"
        assert rp.ctl("status")[0] == 0, "the daemon serves on"
    finally:
        rp.stop()


def test_several_requests_in_flight_on_one_connection(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, cores=2).start()
    try:
        status, queue_50_by_name, reload_ = b"\x00", b"\x01\x32\x04", b"\x08"
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(rp.socket))
            s.sendall(frame(status, 1) + frame(queue_50_by_name, 2) + frame(status, 3) + frame(reload_, 4))
            buf = b""
            replies = {}
            while len(replies) < 4:
                chunk = s.recv(65536)
                assert chunk, "closed before every reply came"
                buf += chunk
                while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                    n = struct.unpack(">I", buf[:4])[0]
                    req_id = struct.unpack(">I", buf[5:9])[0]
                    replies[req_id] = varint(buf[9:4 + n], 0)[0]
                    buf = buf[4 + n:]
        assert replies == {1: 1, 2: 2, 3: 1, 4: 5}, "Status, Queue, Status, Reload replies, each with its request's id"
    finally:
        rp.stop()


def test_a_second_daemon_on_the_same_socket_is_refused(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, cores=1).start()
    try:
        second = tmp_path / "second"
        second.mkdir()
        cfg = rp.config.read_text().replace(str(tmp_path / "spool"), str(second / "spool")).replace(f"127.0.0.1:{rp.port}", f"127.0.0.1:{free_port()}")
        (second / "rp.toml").write_text(cfg)
        p = subprocess.run([str(BINARY), "--config", str(second / "rp.toml")], capture_output=True, text=True, timeout=30)
        assert p.returncode == 1, p
        assert "another ringpost is running and holds it" in p.stderr and str(rp.socket) in p.stderr
        assert rp.ctl("status")[0] == 0, "the first daemon keeps its socket"
    finally:
        rp.stop()


def test_default_relative_paths_live_under_the_working_directory(tmp_path, sink):
    """The shipped defaults (var/spool, var/log, var/run/ringpost.sock) are relative to the
    daemon's working directory; mail is spooled durably there and ringctl finds the socket."""
    port = free_port()
    (tmp_path / "rp.toml").write_text(f"""
[server]
listen = ["127.0.0.1:{port}"]
[spool]
segment_size = 8388608
[engine]
cores = 2
[[route]]
domain = "*"
hosts = ["127.0.0.1:{sink.port}"]
""")
    err = open(tmp_path / "stderr", "wb")
    proc = subprocess.Popen([str(BINARY), "--config", "rp.toml"], cwd=tmp_path, stderr=err)
    try:
        wait_for(lambda: (tmp_path / "var/run/ringpost.sock").exists(), "the default socket")
        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(listening, "listening")
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            for i in range(4):
                s.sendmail("a@src.test", [f"r{i}@dst.test"], b"Subject: x\r\n\r\nx\r\n")
        wait_for(lambda: len(sink.snapshot()) == 4, "delivered")
        p = subprocess.run([str(RINGCTL), "--json", "status"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        assert sum(c["accepted"] for c in json.loads(p.stdout)["Status"]["cores"]) == 4
        assert "failed" not in (tmp_path / "stderr").read_text(), (tmp_path / "stderr").read_text()
        assert list((tmp_path / "var/spool").glob("core-*/*")), "segments under the working directory"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert not (tmp_path / "var/run/ringpost.sock").exists()


def test_every_polls_over_one_connection_until_its_count_or_a_signal(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, cores=2).start()
    try:
        base = [str(RINGCTL), "--socket", str(rp.socket), "--json"]
        p = subprocess.Popen(base + ["--every", "100ms", "status"], stdout=subprocess.PIPE, text=True)
        first = json.loads(p.stdout.readline())["Status"]
        # While it polls, the daemon holds exactly one admin connection for it, the same one
        # (same socket inode) across several polls.
        conns = lambda: subprocess.run(["ss", "-xH", "state", "connected", "src", str(rp.socket)], capture_output=True, text=True).stdout.split()
        before = conns()
        for _ in range(4):
            p.stdout.readline()
        assert len(before) > 0 and conns() == before and sum(str(rp.socket) in w for w in before) == 1, before
        send(rp, ["a@every.test"])
        accepted = lambda st: sum(c["accepted"] for c in st["cores"])
        deadline = time.time() + 10
        while accepted(json.loads(p.stdout.readline())["Status"]) != accepted(first) + 1:
            assert time.time() < deadline, "a later poll sees the new message"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=5) == 0, "Ctrl-C or TERM ends it cleanly"
        rc = subprocess.run(base + ["--every", "50ms", "--count", "3", "queue"], capture_output=True, text=True, timeout=10)
        lines = rc.stdout.splitlines()
        assert rc.returncode == 0 and len(lines) == 3 and all("Queue" in json.loads(l) for l in lines), rc.stdout
        for cmd in (["bounce", "x.test"], ["trace"], ["top"]):
            bad = subprocess.run(base + ["--every", "1s"] + cmd, capture_output=True, text=True, timeout=10)
            assert bad.returncode == 2 and "--every" in bad.stderr, f"{cmd}: only status, queue and msg are repeated"
        for bad_arg in (["--every", "0ms"], ["--every", "1s", "--count", "0"]):
            assert subprocess.run(base + bad_arg + ["status"], capture_output=True, timeout=10).returncode == 2, bad_arg
    finally:
        rp.stop()
