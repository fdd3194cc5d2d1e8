"""End-to-end harness: the real `ringpost` binary between real peers on loopback.

Injection uses Python's smtplib (and raw sockets for hostile input); the receiving side is
aiosmtpd, an SMTP server nobody here wrote. Behaviour of the receiver is chosen per recipient
local part:
  reject-*    -> 550 5.1.1 at RCPT
  tempfail-*  -> 451 4.3.0 at RCPT on the first attempt, 250 afterwards
  defer-*     -> 451 4.2.0 at RCPT, always
Everything it accepts is recorded with its raw bytes (decode_data=False).
"""
import json
import re
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSMTP

ROOT = Path(__file__).resolve().parent.parent
BINARY = Path(os.environ.get("RINGPOST_BIN", ROOT / "target" / "release" / "ringpost"))
RINGCTL = Path(os.environ.get("RINGCTL_BIN", ROOT / "target" / "release" / "ringctl"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fnv1a(domain: str) -> int:
    """The engine's owner_core hash (router.rs), to pick domains owned by different cores."""
    h = 0xCBF29CE484222325
    for b in domain.lower().encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


class SinkHandler:
    def __init__(self):
        self.messages = []  # (mail_from, [rcpts], content bytes)
        self.arrived_at = []  # time.monotonic() of each message's 250, same order as messages
        self.seen_tempfail = set()
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0]
        if local.startswith("reject-"):
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        if local.startswith("defer-"):
            return "451 4.2.0 <%s>: Mailbox busy, try later" % address
        if local.startswith("tempfail-"):
            with self.lock:
                first = address not in self.seen_tempfail
                self.seen_tempfail.add(address)
            if first:
                return "451 4.3.0 <%s>: Temporary lookup failure" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            self.arrived_at.append(time.monotonic())
        return "250 2.0.0 OK stored"

    def snapshot(self):
        with self.lock:
            return list(self.messages)

    def timed_snapshot(self):
        """(arrival time.monotonic(), content) of every message so far, in arrival order."""
        with self.lock:
            return [(t, m[2]) for t, m in zip(self.arrived_at, self.messages)]


@pytest.fixture
def sink():
    yield from serve_sink(SinkHandler())


def serve_sink(handler):
    """Run an aiosmtpd sink with `handler` on a free loopback port (set as `handler.port`)
    for the life of a fixture: `yield from serve_sink(MyHandler())`."""
    handler.port = free_port()
    ctl = Controller(handler, hostname="127.0.0.1", port=handler.port, decode_data=False,
                     data_size_limit=64 * 1024 * 1024, enable_SMTPUTF8=True)
    ctl.start()
    yield handler
    ctl.stop()


class Ringpost:
    """A running ringpost with its own spool, log and config."""

    def __init__(self, workdir: Path, sink_port: int, extra: str = "", cores: int = 2, delivery_extra: str = "",
                 route_all: bool = True, tail: str = "", log_extra: str = "", admin_socket: Path = None):
        self.dir = workdir
        self.port = free_port()
        # Each daemon has its own admin socket (the default path is relative to the cwd).
        self.socket = admin_socket or workdir / "admin.sock"
        self.log = workdir / "delivery.jsonl"
        self.config = workdir / "ringpost.toml"
        self.config.write_text(f"""
[server]
listen = ["127.0.0.1:{self.port}"]
hostname = "mta.test"
relay_networks = ["127.0.0.0/8"]
max_connections_per_ip = 200
{extra}
[spool]
dir = "{workdir / 'spool'}"
durability = "fsync"
segment_size = 8388608
[engine]
cores = {cores}
[log]
delivery_log = "{self.log}"
{log_extra}
[delivery]
retry_first_s = 0.5
retry_factor = 1.0
retry_max_s = 0.5
max_connections_per_destination = 8
{delivery_extra}
[admin]
socket = "{self.socket}"
""" + (f"""[[route]]
domain = "*"
hosts = ["127.0.0.1:{sink_port}"]
""" if route_all else "") + tail)
        self.proc = None
        self.stderr = workdir / "ringpost.stderr"
        # A command the daemon runs under (e.g. `unshare` for a pid namespace of its own).
        self.wrap = []

    def start(self):
        err_at = self.stderr.stat().st_size if self.stderr.exists() else 0
        self.proc = subprocess.Popen(self.wrap + [str(BINARY), "--config", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.stderr, "ab"))
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        self._wait_every_core(err_at, deadline)
                        return self
            except OSError:
                time.sleep(0.05)
            if self.proc.poll() is not None:
                raise RuntimeError("ringpost exited: " + self.stderr.read_text())
        raise RuntimeError("ringpost did not start")

    def _wait_every_core(self, err_at, deadline):
        """Each core binds its listener once its own recovery is done (it says so on stderr just
        before): the first 220 may come while another core is still recovering, and clients
        connecting then would all land on the first. Wait for every core's line."""
        m = re.search(r"^cores = (\d+)", self.config.read_text(), re.M)
        if not m:
            return
        while time.time() < deadline:
            with open(self.stderr, "rb") as f:
                f.seek(err_at)
                if len(re.findall(rb"core \d+: recovery of", f.read())) >= int(m.group(1)):
                    return
            time.sleep(0.02)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            return self.proc.wait(timeout=timeout)
        return self.proc.returncode if self.proc else None

    def ctl(self, *args, user=None, json_out=True):
        """Run ringctl against this daemon: (exit code, parsed JSON or text, stderr)."""
        cmd = [str(RINGCTL), "--socket", str(self.socket)] + (["--json"] if json_out else []) + list(args)
        if user:
            cmd = ["runuser", "-u", user, "--"] + cmd
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        out = p.stdout
        if json_out and out.strip():
            out = json.loads(out)
        return p.returncode, out, p.stderr

    def events(self):
        """The delivery log's complete lines. The daemon may be writing one at this moment: a
        last line without its newline is not read yet (it is whole at the next call)."""
        if not self.log.exists():
            return []
        text = self.log.read_text()
        complete = text[:text.rfind("\n") + 1]
        return [json.loads(l) for l in complete.splitlines() if l.strip()]

    def wait_final(self, n_recipients, timeout=30):
        """Wait until n final events (Delivery/Bounce/Expiration) are logged."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            finals = [e for e in self.events() if e["type"] in ("Delivery", "Bounce", "Expiration")]
            if len(finals) >= n_recipients:
                return finals
            time.sleep(0.1)
        raise AssertionError(f"only {len(finals)} of {n_recipients} final events: {self.events()[-5:]}")


@pytest.fixture
def ringpost(tmp_path, sink):
    instances = []

    def make(extra="", cores=2, delivery_extra=""):
        rp = Ringpost(tmp_path, sink.port, extra, cores, delivery_extra).start()
        instances.append(rp)
        return rp

    yield make
    for rp in instances:
        rp.stop(signal.SIGKILL)


def assert_every_recipient_closed_once(events):
    """Every recipient of every Reception ends in exactly one final event."""
    finals = {}
    for e in events:
        if e["type"] in ("Delivery", "Bounce", "Expiration"):
            key = (e["id"], e["recipient"])
            assert key not in finals, f"two final events for {key}"
            finals[key] = e["type"]
    for e in events:
        if e["type"] == "Reception":
            for r in e["recipient"].split(","):
                assert (e["id"], r) in finals, f"no final event for {e['id']} {r}"
    return finals


def strip_trace(content: bytes) -> bytes:
    """Remove the Received header ringpost prepends (three folded lines)."""
    assert content.startswith(b"Received: from "), content[:80]
    lines = content.split(b"\r\n")
    i = 1
    while lines[i].startswith(b"\t"):
        i += 1
    return b"\r\n".join(lines[i:])


def wait_for(pred, what, timeout=20):
    """Poll `pred` until it returns something truthy (returned), or fail naming `what`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
