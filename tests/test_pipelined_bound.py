"""Replies to pipelined commands stay bounded (issue 7 item 6): a client that pipelines EHLO
after EHLO and never reads must not make the server hold a reply buffer many times its input
(each 17-byte EHLO line earns a reply of about 150 bytes).

Two guards bound it: the session reads at most 4 KiB of commands at a time (then flushes
before reading again), and it flushes once 16 KiB of replies are pending. Measured as the
daemon's heap (RssAnon) growth over 400 flooding sessions beyond 400 idle ones in the same run:
33.7 KB per session as shipped, 41.8 KB with the 16 KiB flush point removed (the 4 KiB reads
still bound it), 139 KB with the flush point removed and 64 KiB reads. So this test fails when
the property fails, not when only one of the two guards is gone."""
import select
import socket
import time

from conftest import Ringpost, wait_for

SESSIONS = 400


def rss_anon_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon")


def open_sessions(rp, n, payload, first_ip):
    """n clients with a tiny receive buffer (so the server's writes block soon) that send
    `payload` without ever reading; 100 per source address (the per-address limit is 200)."""
    socks = []
    for i in range(n):
        s = socket.socket()
        s.bind((f"127.0.0.{first_ip + i // 100}", 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", rp.port))
        s.setblocking(False)
        socks.append([s, payload])
    deadline = time.time() + 20
    while time.time() < deadline and any(p for _, p in socks):
        _, writable, _ = select.select([], [s for s, p in socks if p], [], 0.5)
        for entry in socks:
            if entry[0] in writable and entry[1]:
                try:
                    entry[1] = entry[1][entry[0].send(entry[1]):]
                except BlockingIOError:
                    pass
    return [s for s, _ in socks]


def settle(pid):
    """Wait until the heap stops moving (the sessions have taken what they will)."""
    last = rss_anon_kib(pid)
    for _ in range(20):
        time.sleep(0.5)
        now = rss_anon_kib(pid)
        if abs(now - last) < 512:
            return now
        last = now
    return last


def test_pipelined_ehlo_flood_does_not_buffer_its_replies(tmp_path, sink):
    rp = Ringpost(tmp_path, sink.port).start()
    pid = rp.proc.pid
    try:
        base = settle(pid)
        idle = open_sessions(rp, SESSIONS, b"", 10)
        idle_kib = settle(pid) - base
        flood = open_sessions(rp, SESSIONS, b"EHLO flood.test\r\n" * 1024, 20)  # 17 KiB each
        flood_kib = settle(pid) - base - idle_kib
    finally:
        rp.stop()
    per_session = flood_kib * 1024 // SESSIONS
    print(f"idle sessions: {idle_kib} KiB; flooding sessions: {flood_kib} KiB more, {per_session} B each")
    assert per_session < 48 * 1024, f"each flooding session holds {per_session} bytes: pipelined replies are not flushed at the bound"
    for s in idle + flood:
        s.close()
