"""`ringctl trace` and `ringctl top` against a real daemon.

- trace shows a session's commands and replies and the delivery's conversation, never the
  body, with AUTH credentials redacted; --client and --dest pick the conversations;
- a trace client that never reads does not slow mail or grow the daemon: events are dropped
  and counted;
- top runs under a pseudo-terminal, shows numbers that change while mail flows, and `q`
  quits and restores the terminal.
"""
import json
import os
import pty
import re
import select
import signal
import smtplib
import socket
import subprocess
import termios
import threading
import time

from conftest import RINGCTL, Ringpost, wait_for


def start_trace(rp, *args, stdout=subprocess.PIPE):
    p = subprocess.Popen([str(RINGCTL), "--socket", str(rp.socket), "--json", "trace", *args], stdout=stdout, stderr=subprocess.PIPE)
    first = p.stdout.readline()  # the empty first frame: every core is subscribed
    assert json.loads(first)["events"] == [], first
    return p


def stop_trace(p):
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    return [e for line in out.splitlines() if line.strip() for e in json.loads(line)["events"]]


def texts(events, side, kind):
    return [e["text"] for e in events if e["side"] == side and e["kind"] == kind]


def send(rp, rcpts, body=b"Subject: secret-subject\r\n\r\nthe secret body line\r\n", source="127.0.0.1"):
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=10, source_address=(source, 0)) as s:
        s.sendmail("sender@src.test", rcpts, body)


def test_trace_shows_commands_and_replies_in_and_out_never_bodies_or_credentials(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, cores=2).start()
    try:
        p = start_trace(rp)
        send(rp, ["a@x.test"])
        with socket.create_connection(("127.0.0.1", rp.port), timeout=10) as s:
            s.recv(1000)
            s.sendall(b"EHLO c.test\r\nAUTH PLAIN AGJvYgBodW50ZXIy\r\nQUIT\r\n")
            while s.recv(1000):
                pass
        wait_for(lambda: sink.snapshot(), "delivered")
        time.sleep(0.5)
        events = stop_trace(p)
    finally:
        rp.stop()
    cmds_in = texts(events, "In", "Command")
    assert cmds_in == ["ehlo [127.0.0.1]", "mail FROM:<sender@src.test> size=49", "rcpt TO:<a@x.test>", "data", "QUIT",
                       "EHLO c.test", "AUTH PLAIN [redacted]", "QUIT"], cmds_in
    replies_in = texts(events, "In", "Reply")
    assert any(r.startswith("220 ") for r in replies_in) and any(r.startswith("354") for r in replies_in)
    assert any(r.startswith("250 2.0.0 Ok: queued as") for r in replies_in), replies_in
    out = [e for e in events if e["side"] == "Out"]
    assert out and all(e["domain"] == "x.test" for e in out)
    assert any("RCPT TO:<a@x.test>" in t for t in texts(events, "Out", "Command")), texts(events, "Out", "Command")
    assert any(t.startswith("250 2.0.0 OK stored") for t in texts(events, "Out", "Reply"))
    assert texts(events, "Out", "Body") and texts(events, "In", "Body")
    kinds_in = [e["kind"] for e in events if e["side"] == "In"]
    assert kinds_in.count("Open") == 2 and kinds_in.count("Close") == 2, kinds_in
    everything = json.dumps(events)
    assert "secret body" not in everything and "secret-subject" not in everything, "never a body"
    assert "AGJvYgBodW50ZXIy" not in everything, "never AUTH credentials"
    assert all(e["unix_ms"] > 1.7e12 and e["peer"] for e in events)


def test_trace_filters_by_client_and_by_destination(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, cores=2).start()
    try:
        by_client = start_trace(rp, "--client", "127.0.0.2")
        by_dest = start_trace(rp, "--dest", "Pick.TEST")
        send(rp, ["a@other.test"], source="127.0.0.1")
        send(rp, ["b@pick.test"], source="127.0.0.2")
        wait_for(lambda: len(sink.snapshot()) == 2, "both delivered")
        time.sleep(0.5)
        ev_client, ev_dest = stop_trace(by_client), stop_trace(by_dest)
    finally:
        rp.stop()
    assert ev_client and {e["side"] for e in ev_client} == {"In"}
    assert {e["peer"].split(":")[0] for e in ev_client} == {"127.0.0.2"}
    assert ev_dest and {(e["side"], e["domain"]) for e in ev_dest} == {("Out", "pick.test")}


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def flood(rp, n, threads=4):
    def worker(k):
        with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as s:
            for i in range(k, n, threads):
                s.sendmail("sender@src.test", [f"r{i}-{j}@x{i % 4}.test" for j in range(3)], b"Subject: f\r\n\r\nflood\r\n")
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def test_a_trace_client_that_never_reads_does_not_slow_mail_and_costs_bounded_memory(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, cores=2).start()
    try:
        flood(rp, 100)  # warm up: connections, buffers, spool segments
        wait_for(lambda: len(sink.snapshot()) == 100, "warm-up delivered", timeout=60)
        start = time.time()
        flood(rp, 300)
        baseline_s = time.time() - start
        wait_for(lambda: len(sink.snapshot()) == 400, "baseline delivered", timeout=60)
        rss_before = rss_kib(rp.proc.pid)

        stuck = start_trace(rp)  # from here on nobody reads its output: the pipe fills, ringctl blocks
        start = time.time()
        flood(rp, 300)
        stuck_s = time.time() - start
        wait_for(lambda: len(sink.snapshot()) == 700, "delivered with a stuck trace client", timeout=60)
        rss_after = rss_kib(rp.proc.pid)
        rc, st, _ = rp.ctl("status")
        assert rc == 0 and sum(c["delivered"] for c in st["Status"]["cores"]) == 2100

        # Now read: the stream goes on and reports what it dropped.
        reader = threading.Thread(target=lambda: stuck.stdout.read())
        chunks = []
        reader = threading.Thread(target=lambda: chunks.append(stuck.stdout.read()))
        reader.start()
        flood(rp, 4, threads=1)
        time.sleep(1.0)
        stuck.send_signal(signal.SIGINT)
        reader.join(timeout=20)
        stuck.wait(timeout=10)
    finally:
        rp.stop()
    dropped = max(json.loads(l)["dropped_total"] for l in chunks[0].splitlines() if l.strip())
    print(f"baseline {baseline_s:.2f}s, with a stuck trace client {stuck_s:.2f}s, dropped {dropped}, "
          f"rss {rss_before} -> {rss_after} KiB")
    assert dropped > 0, "a trace client that cannot keep up loses events, counted"
    assert stuck_s < baseline_s * 2 + 1.0, (baseline_s, stuck_s)
    assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after)


def read_pty(fd, seconds):
    out = b""
    deadline = time.time() + seconds
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                out += os.read(fd, 65536)
            except OSError:
                break
    return out


def test_top_runs_under_a_pty_shows_changing_numbers_and_q_restores_the_terminal(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port, cores=2).start()
    # Held, so flow.test stays queued and is listed in every frame (mail that is delivered at
    # once may be between frames).
    assert rp.ctl("suspend", "flow.test")[0] == 0
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    try:
        p = subprocess.Popen([str(RINGCTL), "--socket", str(rp.socket), "top", "--interval", "500ms"],
                             stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        stop = threading.Event()

        def mail():
            i = 0
            while not stop.is_set():
                send(rp, [f"t{i}@flow.test"])
                i += 1
                time.sleep(0.02)
        t = threading.Thread(target=mail)
        t.start()
        screen = read_pty(master, 4.0)
        stop.set()
        t.join()
        os.write(master, b"q")
        p.wait(timeout=5)
        rest = read_pty(master, 0.5)
    finally:
        rp.stop()
    text = screen.decode(errors="replace")
    assert p.returncode == 0
    assert text.startswith("\x1b[?1049h"), repr(text[:40])
    assert (rest or screen).decode(errors="replace").endswith("\x1b[?25h\x1b[?1049l"), "the terminal is restored"
    rates = [float(x) for x in re.findall(r"rates /s\s+in ([0-9.]+) msg", text)]
    totals = [int(x) for x in re.findall(r"totals: accepted (\d+)", text)]
    assert len(totals) >= 5, text[-2000:]
    assert totals == sorted(totals) and totals[-1] > totals[0], totals
    assert max(rates) > 0, rates
    assert "flow.test" in text, "top destinations listed"
    after = termios.tcgetattr(slave)
    assert after[3] == before[3], "local modes (echo, canonical) restored"
