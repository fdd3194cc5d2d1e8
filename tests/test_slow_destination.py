"""A peer that stops reading must cost one connection, never a core.

1. A destination that answers 354 to DATA and then never reads again (and never closes) while a
   20 MB message is written to it: fresh sessions on every core still get their EHLO reply
   within a second, and mail for other destinations (also the ones the stalled core owns) keeps
   arriving. Run once with the stalled domain owned by core 0 and once by core 1.
2. A client that pipelines commands and never reads our replies is cut by `[server]
   write_timeout_s` instead of holding its session forever.
"""
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time

import pytest

from conftest import Ringpost, fnv1a

BIG = 20 * 1024 * 1024


def domain_owned_by(core: int, prefix: str) -> str:
    for i in range(1000):
        d = f"{prefix}{i}.test"
        if fnv1a(d) % 2 == core:
            return d
    raise AssertionError("no domain for core %d" % core)


class StallingDestination:
    """Speaks SMTP up to `354` after DATA, then never reads again and never closes.

    Its receive buffer is small so our sender's socket fills after a few hundred KiB."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.in_data = threading.Event()
        self.stop = threading.Event()
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.sendall(b"220 stall.test ESMTP\r\n")
        buf = b""
        while True:
            while b"\r\n" not in buf:
                data = c.recv(4096)
                if not data:
                    return
                buf += data
            line, buf = buf.split(b"\r\n", 1)
            verb = line[:4].upper()
            if verb == b"DATA":
                c.sendall(b"354 go ahead\r\n")
                self.in_data.set()
                self.stop.wait()  # never read again
                return
            c.sendall({b"EHLO": b"250 stall.test\r\n", b"QUIT": b"221 bye\r\n"}.get(verb, b"250 ok\r\n"))

    def close(self):
        self.stop.set()
        self.listener.close()
        for c in self.conns:
            c.close()


def ehlo_then_send(port, rcpt, results, i):
    """One fresh session: time from connect to the EHLO reply, then one small message."""
    t0 = time.monotonic()
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
            code, _ = s.ehlo("client.test")
            assert code == 250
            results[i] = time.monotonic() - t0
            s.sendmail("a@b.test", [rcpt], b"Subject: flow %d\r\n\r\nstill flowing\r\n" % i)
    except (OSError, smtplib.SMTPException, AssertionError) as e:
        results.setdefault(i, float("inf"))
        results[f"err{i}"] = repr(e)


@pytest.mark.parametrize("stall_core", [0, 1])
def test_stalled_destination_does_not_freeze_its_core(tmp_path, sink, stall_core):
    dest = StallingDestination()
    stalled = domain_owned_by(stall_core, "stall")
    flows = [domain_owned_by(0, "flow"), domain_owned_by(1, "flow")]
    rp = Ringpost(tmp_path, sink.port, cores=2,
                  tail=f'[[route]]\ndomain = "{stalled}"\nhosts = ["127.0.0.1:{dest.port}"]\n').start()
    try:
        body = b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * (BIG // 80)
        with smtplib.SMTP("127.0.0.1", rp.port, timeout=60) as s:
            s.ehlo("client.test")
            assert s.sendmail("a@b.test", [f"big@{stalled}"], body) == {}
        assert dest.in_data.wait(20), "the stalled destination never got DATA"
        time.sleep(1.0)  # let the body fill both socket buffers: the sender is now stuck

        results = {}
        threads = [threading.Thread(target=ehlo_then_send, args=(rp.port, f"u{i}@{flows[i % 2]}", results, i))
                   for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        times = [results[i] for i in range(40)]
        slow = [round(t, 2) for t in times if t >= 1.0]
        errors = [v for k, v in results.items() if str(k).startswith("err")]
        assert not slow and not errors, f"{len(slow)} of 40 EHLO replies took >= 1 s: {slow}; {errors[:3]}"

        deadline = time.time() + 20
        while time.time() < deadline and len(sink.snapshot()) < 40:
            time.sleep(0.1)
        got = sorted(r for m in sink.snapshot() for r in m[1])
        assert got == sorted(f"u{i}@{flows[i % 2]}" for i in range(40)), "mail to other destinations keeps flowing"
        # The sink has every message; their Delivery lines reach the log with the core's next
        # flush of its delivery-log buffer (every ~50 ms, later on a loaded machine): wait for
        # the 40 (a frozen core would never write them).
        rp.wait_final(40, timeout=10)
        events = rp.events()
        cores_in = {e["core"] for e in events if e["type"] == "Reception" and e["recipient"].startswith("u")}
        assert cores_in == {0, 1}, f"fresh sessions must have landed on both cores, got {cores_in}"
        same_core = [e for e in events if e["type"] == "Delivery" and e["recipient"].endswith("@" + flows[stall_core])]
        assert len(same_core) == 20 and {e["core"] for e in same_core} == {stall_core}
        assert not [e for e in events if e["recipient"] == f"big@{stalled}" and e["type"] != "Reception"], \
            "the stalled delivery is still in progress (no result yet)"
    finally:
        rp.stop(signal.SIGKILL)
        dest.close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out",
                    "cert.pem", "-days", "2", "-subj", "/CN=mta.test"], check=True, capture_output=True, cwd=d)
    return d


def connect_without_reading(rp, tls):
    """A client session (optionally after STARTTLS) with a small receive buffer."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    s.connect(("127.0.0.1", rp.port))
    f = s.makefile("rb")
    assert f.readline().startswith(b"220")
    if tls:
        s.sendall(b"EHLO client.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        s.sendall(b"STARTTLS\r\n")
        assert f.readline().startswith(b"220")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s)
    return s


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_client_that_stops_reading_replies_is_cut_by_write_timeout(tmp_path, sink, cert, tls):
    tail = f'[tls]\ncert_file = "{cert / "cert.pem"}"\nkey_file = "{cert / "key.pem"}"\n'
    rp = Ringpost(tmp_path, sink.port, extra="write_timeout_s = 1", tail=tail).start()
    try:
        s = connect_without_reading(rp, tls)
        s.setblocking(False)
        # Pipeline NOOPs and never read: our receive buffer and ringpost's send buffer fill, then
        # ringpost's reply write cannot progress.
        sent = 0
        deadline = time.time() + 10
        stuck_since = None
        while time.time() < deadline:
            try:
                sent += s.send(b"NOOP\r\n" * 1000)
                stuck_since = None
            except (BlockingIOError, ssl.SSLWantWriteError):
                stuck_since = stuck_since or time.time()
                if time.time() - stuck_since > 0.5:
                    break
                time.sleep(0.01)
        assert stuck_since is not None, "the server kept reading: its replies never filled up"
        assert sent > 100_000
        time.sleep(3.0)  # > write_timeout_s (twice under TLS: reply, then close_notify)
        # Drain: a cut session ends in EOF or a reset; a live one keeps answering NOOPs.
        s.setblocking(True)
        s.settimeout(2.0)
        cut = False
        try:
            while True:
                data = s.recv(1 << 20)
                if not data:
                    cut = True
                    break
        except (socket.timeout, ssl.SSLWantReadError):
            cut = False
        except (ConnectionResetError, ssl.SSLError):  # reset, or a TLS stream cut short
            cut = True
        assert cut, "a client that stopped reading our replies still holds its session"
        s.close()
        # The server is fine for everyone else.
        with smtplib.SMTP("127.0.0.1", rp.port, timeout=5) as c:
            assert c.ehlo("client.test")[0] == 250
    finally:
        rp.stop(signal.SIGKILL)
