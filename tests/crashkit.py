"""Crash-cycle harness: real ringpost processes killed with SIGKILL under load, restarted on the
same spool, between concurrent injecting clients and a receiving sink that switches between
down (connection refused), slow (delayed, trickled replies) and fast.

What it proves: every message answered 250 arrives at the sink with its exact bytes (SHA-256 of
the body after ringpost's Received header is stripped), once per recipient at least. Duplicates
are counted and reported; messages that were not answered 250 may or may not arrive.

Used by tests/test_crash_cycles.py (small, bounded) and bench/crash-cycles.sh (full size):
    python3 tests/crashkit.py --cycles 20 --backlog 10000 --clients 16
"""
import argparse
import asyncio
import base64
import hashlib
import json
import os
import random
import re
import signal
import smtplib
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import Ringpost, free_port  # noqa: E402

DOMAINS = [f"d{i}.test" for i in range(8)]
QUEUED_AS = re.compile(rb"queued as (\S+)")
TEST_ID = re.compile(rb"\r\nX-Test-Id: (\S+)\r\n")
FINAL = ("Delivery", "Bounce", "Expiration")


# --------------------------------------------------------------------------------------------
# Sink: an asyncio SMTP receiver in its own thread, switchable at runtime.
# --------------------------------------------------------------------------------------------

@dataclass
class Arrival:
    """One message (one SMTP transaction) the sink answered 250 to."""
    test_id: str
    rcpts: list
    sha256: str
    size: int
    mode: str


def strip_received(content: bytes) -> bytes:
    """Remove the Received header ringpost prepends (first line plus folded lines)."""
    if not content.startswith(b"Received: "):
        return content
    i = content.index(b"\r\n")
    while content[i + 2:i + 3] in (b"\t", b" "):
        i = content.index(b"\r\n", i + 2)
    return content[i + 2:]


class SwitchableSink:
    """SMTP sink with three modes: fast, slow (greeting and replies delayed, the final reply
    trickled a byte at a time), down (listener closed, open connections aborted: refused).

    `drop_prefix` + `drop_count` make the sink answer 250 for the first `drop_count` messages
    whose test id starts with the prefix without recording them: a deliberately lossy receiver
    used to show the checks can fail."""

    def __init__(self, mode="fast", slow_delay=0.15):
        self.port = free_port()
        self.mode = mode
        self.slow_delay = slow_delay
        self.arrivals = []
        self.lock = threading.Lock()
        self.drop_prefix = ""
        self.drop_count = 0
        self.dropped = []
        self.connections = 0
        self._server = None
        self._transports = set()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="sink")
        self._thread.start()
        self._call(self._apply(mode))

    def _call(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def set_mode(self, mode):
        assert mode in ("fast", "slow", "down"), mode
        self._call(self._apply(mode))

    async def _apply(self, mode):
        self.mode = mode
        if mode == "down":
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            for t in list(self._transports):
                t.abort()
        elif self._server is None:
            for _ in range(100):
                try:
                    self._server = await asyncio.start_server(self._session, "127.0.0.1", self.port,
                                                              limit=64 * 1024 * 1024, reuse_address=True)
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"sink cannot listen on {self.port} again")

    def close(self):
        self.set_mode("down")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def snapshot(self):
        with self.lock:
            return list(self.arrivals)

    def count(self):
        with self.lock:
            return len(self.arrivals)

    async def _reply(self, w, text: bytes, final=False):
        if self.mode == "slow":
            await asyncio.sleep(self.slow_delay * random.random())
            if final:  # trickle the reply that ends a transaction, a byte at a time
                for b in text[:-1]:
                    w.write(bytes([b]))
                    await w.drain()
                    await asyncio.sleep(0.01)
                text = text[-1:]
        w.write(text)
        await w.drain()

    async def _session(self, r, w):
        self._transports.add(w.transport)
        self.connections += 1
        try:
            if self.mode == "slow":
                await asyncio.sleep(self.slow_delay * 2)
            await self._reply(w, b"220 sink.test ESMTP\r\n")
            await self._commands(r, w)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._transports.discard(w.transport)
            w.transport.abort()

    async def _commands(self, r, w):
        rcpts = []
        while True:
            line = await r.readuntil(b"\r\n")
            verb = line[:4].upper()
            if verb == b"EHLO":
                await self._reply(w, b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 67108864\r\n250 ENHANCEDSTATUSCODES\r\n")
            elif verb == b"HELO":
                await self._reply(w, b"250 sink.test\r\n")
            elif verb == b"MAIL":
                rcpts = []
                await self._reply(w, b"250 2.1.0 Ok\r\n")
            elif verb == b"RCPT":
                addr = line.split(b"<", 1)[1].split(b">", 1)[0].decode()
                rcpts.append(addr)
                await self._reply(w, b"250 2.1.5 Ok\r\n")
            elif verb == b"DATA":
                await self._reply(w, b"354 go ahead\r\n")
                data = await r.readuntil(b"\r\n.\r\n")
                self._record(data, rcpts)
                await self._reply(w, b"250 2.0.0 Ok: stored\r\n", final=True)
                rcpts = []
            elif verb == b"RSET":
                rcpts = []
                await self._reply(w, b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                await self._reply(w, b"221 2.0.0 Bye\r\n")
                return
            else:
                await self._reply(w, b"250 2.0.0 Ok\r\n")

    def _record(self, data: bytes, rcpts):
        body = data[:-3]  # keep the last line's CRLF, drop ".\r\n"
        if body.startswith(b".."):
            body = body[1:]
        body = body.replace(b"\r\n..", b"\r\n.")
        content = strip_received(body)
        m = TEST_ID.search(b"\r\n" + content)
        tid = m.group(1).decode() if m else "?"
        a = Arrival(tid, list(rcpts), hashlib.sha256(content).hexdigest(), len(content), self.mode)
        with self.lock:
            if self.drop_count and self.drop_prefix and tid.startswith(self.drop_prefix):
                self.drop_count -= 1
                self.dropped.append(a)
                return
            self.arrivals.append(a)


# --------------------------------------------------------------------------------------------
# Messages and injection.
# --------------------------------------------------------------------------------------------

def make_message(tid: str, size: int, rng: random.Random) -> bytes:
    """A message of about `size` octets: headers, base64 lines, and a few lines that start with
    a dot (so dot-stuffing is exercised) at random places. CRLF line ends only."""
    head = (f"From: <a@src.test>\r\nTo: <r@dst.test>\r\nSubject: crash cycle {tid}\r\n"
            f"Message-ID: <{tid}@crash.test>\r\nX-Test-Id: {tid}\r\n\r\n").encode()
    n = max(1, (size - len(head)) * 3 // 4)
    lines = base64.encodebytes(rng.randbytes(n)).split(b"\n")[:-1]
    for _ in range(1 + len(lines) // 500):
        lines.insert(rng.randrange(len(lines) + 1), b"." * rng.randint(1, 3) + b"dot line")
    return head + b"\r\n".join(lines) + b"\r\n"


def pick_size(rng: random.Random, big_share: float) -> int:
    """1-16 KiB mostly; `big_share` of messages 128 KiB-2 MiB (several 128 KiB spool chunks)."""
    if rng.random() < big_share:
        return int(2 ** rng.uniform(17, 21))
    return int(2 ** rng.uniform(10, 14))


@dataclass
class Sent:
    """What a client knows about one message it tried to send."""
    test_id: str
    rcpts: list
    sha256: str
    size: int
    status: str  # "250", "rejected" (a non-250 final reply), "unknown" (connection lost)
    queue_id: str = ""
    reply: str = ""


class Injector:
    """Concurrent SMTP clients (smtplib, one thread each) that send until stopped; every outcome
    is recorded with the message's id, recipients and body hash."""

    def __init__(self, clients: int, seed: int, big_share: float):
        self.clients = clients
        self.seed = seed
        self.big_share = big_share
        self.sent = []
        self.lock = threading.Lock()
        self.big_in_flight = 0
        self.n250 = 0
        self.seq = 0
        self._stop = threading.Event()
        self._threads = []
        self._limit = None

    def _next_id(self, tag):
        with self.lock:
            self.seq += 1
            return f"{tag}-{self.seq}"

    def acked(self):
        with self.lock:
            return [s for s in self.sent if s.status == "250"]

    def count(self):
        """Messages answered 250 so far."""
        return self.n250

    def start(self, port: int, tag: str, limit=None):
        """Start the clients; with `limit`, they stop after that many 250s in total."""
        self._stop.clear()
        self._limit = None if limit is None else self.count() + limit
        self._threads = [threading.Thread(target=self._client, args=(port, f"{tag}c{i}", i), daemon=True)
                         for i in range(self.clients)]
        for t in self._threads:
            t.start()

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(60)
            assert not t.is_alive(), "an injecting client did not stop"

    def wait_done(self, timeout):
        deadline = time.time() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.time()))
        return not any(t.is_alive() for t in self._threads)

    def _client(self, port, tag, idx):
        rng = random.Random(f"{self.seed}-{tag}")
        while not self._stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
                    s.ehlo("client.test")
                    while not self._stop.is_set():
                        if self._limit is not None and self.count() >= self._limit:
                            self._stop.set()
                            return
                        self._send_one(s, tag, rng)
            except (OSError, smtplib.SMTPException):
                if not self._stop.is_set():
                    time.sleep(0.05)

    def _send_one(self, s, tag, rng):
        tid = self._next_id(tag)
        size = pick_size(rng, self.big_share)
        body = make_message(tid, size, rng)
        rcpts = [f"u{rng.randrange(1000)}@{d}" for d in rng.sample(DOMAINS, rng.choice((1, 1, 1, 2, 3)))]
        rec = Sent(tid, rcpts, hashlib.sha256(body).hexdigest(), len(body), "unknown")
        big = size >= 128 * 1024
        with self.lock:
            self.sent.append(rec)
            self.big_in_flight += big
        try:
            code, msg = s.mail("a@src.test")
            if code != 250:
                raise smtplib.SMTPResponseException(code, msg)
            for r in rcpts:
                code, msg = s.rcpt(r)
                if code != 250:
                    s.rset()
                    rec.status, rec.reply = "rejected", f"RCPT {code} {msg!r}"
                    return
            code, msg = s.data(body)
            if code == 250:
                m = QUEUED_AS.search(msg)
                rec.queue_id = m.group(1).decode() if m else ""
                rec.status = "250"
                with self.lock:
                    self.n250 += 1
            else:
                rec.status, rec.reply = "rejected", f"DATA {code} {msg!r}"
        except smtplib.SMTPResponseException as e:
            rec.status, rec.reply = "rejected", f"{e.smtp_code} {e.smtp_error!r}"
            if e.smtp_code in (421,) or e.smtp_code < 400:
                raise smtplib.SMTPServerDisconnected("closing") from e
        finally:
            with self.lock:
                self.big_in_flight -= big


# --------------------------------------------------------------------------------------------
# The daemon across lifetimes, and the delivery log split by lifetime.
# --------------------------------------------------------------------------------------------

class Daemon:
    """ringpost on one spool across restarts; remembers where each lifetime's log starts."""

    def __init__(self, workdir: Path, sink_port: int, cores=2):
        self.rp = Ringpost(workdir, sink_port, cores=cores)
        text = self.rp.config.read_text()
        # Retries every 0.5-2 s: quick enough that a drain after the sink comes back is fast,
        # slow enough that a 10k backlog against a refusing sink does not flood the log.
        fixed = text.replace("retry_factor = 1.0", "retry_factor = 2.0").replace("retry_max_s = 0.5", "retry_max_s = 2.0")
        assert fixed != text, "conftest's [delivery] retry settings changed; update crashkit"
        self.rp.config.write_text(fixed)
        self.lifetimes = []  # log offset at each start
        self.exit_codes = []
        self._tail = (0, set())  # log offset read so far, final (queue id, recipient) pairs

    @property
    def port(self):
        return self.rp.port

    def start(self):
        self.lifetimes.append(self.rp.log.stat().st_size if self.rp.log.exists() else 0)
        err_at = self.rp.stderr.stat().st_size if self.rp.stderr.exists() else 0
        t0 = time.time()
        self.rp.start()
        self._err_at = err_at
        return time.time() - t0

    def stderr_since_start(self):
        with open(self.rp.stderr, "rb") as f:
            f.seek(self._err_at)
            return f.read().decode(errors="replace")

    def kill(self):
        self.rp.proc.send_signal(signal.SIGKILL)
        self.exit_codes.append(self.rp.proc.wait(30))

    def stop(self):
        code = self.rp.stop(signal.SIGTERM, timeout=60)
        self.exit_codes.append(code)
        return code

    def closed_pairs(self):
        """(queue id, recipient) pairs with a final event in the log so far (read incrementally)."""
        at, closed = self._tail
        if not self.rp.log.exists():
            return closed
        with open(self.rp.log, "rb") as f:
            f.seek(at)
            data = f.read()
        end = data.rfind(b"\n") + 1
        for line in data[:end].split(b"\n"):
            if line and any(k.encode() in line for k in FINAL):
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if e["type"] in FINAL:
                    closed.add((e["id"], e["recipient"]))
        self._tail = (at + end, closed)
        return closed

    def final_events(self):
        """Final events, each tagged with the lifetime that wrote it. A line cut by SIGKILL (a
        write torn by the kill) is counted, not parsed."""
        data = self.rp.log.read_bytes() if self.rp.log.exists() else b""
        bounds = self.lifetimes[1:] + [len(data)]
        out, torn, pos, life = [], 0, 0, 0
        for line in data.split(b"\n"):
            end = pos + len(line) + 1
            while life < len(bounds) - 1 and pos >= bounds[life]:
                life += 1
            pos = end
            if not line or not any(k.encode() in line for k in FINAL):
                continue
            try:
                e = json.loads(line)
            except ValueError:
                torn += 1
                continue
            if e["type"] in FINAL:
                out.append((life, e))
        return out, torn


# --------------------------------------------------------------------------------------------
# The scenario and its verdict.
# --------------------------------------------------------------------------------------------

@dataclass
class Verdict:
    accepted: int = 0
    rejected: int = 0
    unknown: int = 0
    expected: int = 0           # (message, recipient) pairs answered 250
    delivered: int = 0          # distinct (message, recipient) pairs that arrived intact
    lost: list = field(default_factory=list)
    corrupt: list = field(default_factory=list)
    duplicates: int = 0
    duplicate_examples: list = field(default_factory=list)
    unacked_delivered: int = 0
    rejected_delivered: list = field(default_factory=list)
    strangers: list = field(default_factory=list)
    double_final_in_lifetime: list = field(default_factory=list)
    log_gaps: int = 0           # 250'd recipients with no final event in any lifetime's log
    torn_log_lines: int = 0

    def ok(self):
        return not (self.lost or self.corrupt or self.strangers or self.double_final_in_lifetime)

    def summary(self):
        return (f"accepted={self.accepted} expected_rcpts={self.expected} delivered={self.delivered} "
                f"lost={len(self.lost)} corrupt={len(self.corrupt)} duplicates={self.duplicates} "
                f"unacked_delivered={self.unacked_delivered} rejected={self.rejected} unknown={self.unknown} "
                f"double_final_in_lifetime={len(self.double_final_in_lifetime)} log_gaps={self.log_gaps}")


def judge(sent, arrivals, finals=(), torn=0) -> Verdict:
    """Compare what was answered 250 with what arrived and with the delivery log."""
    v = Verdict(torn_log_lines=torn)
    by_id = {s.test_id: s for s in sent}
    v.accepted = sum(s.status == "250" for s in sent)
    v.rejected = sum(s.status == "rejected" for s in sent)
    v.unknown = sum(s.status == "unknown" for s in sent)
    got = Counter()
    for a in arrivals:
        s = by_id.get(a.test_id)
        if s is None:
            v.strangers.append(a)
            continue
        for r in a.rcpts:
            if r not in s.rcpts:
                v.strangers.append(a)
                continue
            if a.sha256 != s.sha256:
                v.corrupt.append((a.test_id, r, a.size, s.size))
                continue
            got[(a.test_id, r)] += 1
    for (tid, r), n in got.items():
        s = by_id[tid]
        if n > 1:
            v.duplicates += n - 1
            if len(v.duplicate_examples) < 20:
                v.duplicate_examples.append((tid, r, n, s.queue_id))
        if s.status == "rejected":
            v.rejected_delivered.append((tid, r, s.reply))
        elif s.status != "250":
            v.unacked_delivered += 1
    for s in sent:
        if s.status == "250":
            for r in s.rcpts:
                v.expected += 1
                if got[(s.test_id, r)]:
                    v.delivered += 1
                else:
                    v.lost.append((s.test_id, r, s.queue_id, s.size))
    per_life = Counter((life, e["id"], e["recipient"]) for life, e in finals)
    v.double_final_in_lifetime = [k for k, n in per_life.items() if n > 1]
    closed = {(e["id"], e["recipient"]) for _, e in finals}
    v.log_gaps = sum(1 for s in sent if s.status == "250" for r in s.rcpts if (s.queue_id, r) not in closed)
    return v


def wait_for(pred, timeout, what, step=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_arrived(inj: Injector, sink: SwitchableSink, timeout: float, daemon=None):
    """Poll until every 250'd (message, recipient) has arrived at the sink, or has a final event
    in the delivery log (then ringpost is done with it: if it is not at the sink, it is lost, and
    waiting longer will not bring it), then until the sink is quiet (no arrival for 1.5 s:
    retries of messages never answered 250 have landed too). True when all arrived."""
    want = {(s.test_id, r): s.queue_id for s in inj.acked() for r in s.rcpts}

    def missing():
        have = {(a.test_id, r) for a in sink.snapshot() for r in a.rcpts}
        return {k: q for k, q in want.items() if k not in have}
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = missing()
        if not m:
            break
        if daemon is not None:
            closed = daemon.closed_pairs()
            if all((q, k[1]) in closed for k, q in m.items()):
                break
        time.sleep(0.2)
    last, quiet_since = -1, time.time()
    while time.time() < deadline:
        n = sink.count()
        if n != last:
            last, quiet_since = n, time.time()
        elif time.time() - quiet_since >= 1.5:
            break
        time.sleep(0.1)
    return not missing()


@dataclass
class Plan:
    cycles: int = 4
    backlog: int = 500
    clients: int = 8
    cycle_s: tuple = (0.6, 2.0)
    big_share: float = 0.08
    seed: int = 1
    drain_timeout: float = 120.0
    cores: int = 2
    modes: tuple = ("down", "slow", "fast")  # cycle c runs modes[c] then modes[c + 1] (cyclic)
    sink_drop: tuple = ("", 0)  # (test id prefix, how many): a lossy sink, for the self-test


def run_cycles(workdir: Path, plan: Plan, log=print, between=None):
    """Backlog with the sink down, then `plan.cycles` rounds of load + SIGKILL + restart while the
    sink switches modes, then a drain with the sink fast. `between(daemon, cycle)` runs between
    a kill and the restart (used to sabotage the spool in the self-test)."""
    rng = random.Random(plan.seed)
    t0 = time.time()
    sink = SwitchableSink("down")
    sink.drop_prefix, sink.drop_count = plan.sink_drop
    daemon = Daemon(workdir, sink.port, plan.cores)
    inj = Injector(plan.clients, plan.seed, plan.big_share)
    try:
        daemon.start()
        if plan.backlog:
            inj.start(daemon.port, "b", limit=plan.backlog)
            assert inj.wait_done(max(120, plan.backlog / 20)), "backlog injection did not finish"
            inj.stop()
            log(f"backlog: {inj.count()} messages queued with the sink down ({time.time() - t0:.1f}s)")
        modes = plan.modes
        for c in range(plan.cycles):
            first, second = modes[c % len(modes)], modes[(c + 1) % len(modes)]
            sink.set_mode(first)
            inj.start(daemon.port, f"k{c}")
            span = rng.uniform(*plan.cycle_s)
            time.sleep(span / 2)
            sink.set_mode(second)
            time.sleep(span / 2)
            # Kill while a multi-chunk body is in flight when the load allows it (bounded wait).
            big_wait = time.time() + 3
            while plan.big_share and inj.big_in_flight == 0 and time.time() < big_wait:
                time.sleep(0.005)
            big = inj.big_in_flight
            daemon.kill()
            inj.stop()
            if between:
                between(daemon, c)
            restart = daemon.start()
            log(f"cycle {c + 1}/{plan.cycles}: sink {first}->{second}, killed after {span:.2f}s "
                f"(big bodies in flight: {big}), accepted so far {inj.count()}, arrived {sink.count()}, "
                f"restart {restart:.2f}s; {daemon.stderr_since_start().strip().splitlines()[-3:]}")
        sink.set_mode("fast")
        complete = wait_arrived(inj, sink, plan.drain_timeout, daemon)
        code = daemon.stop()
        finals, torn = daemon.final_events()
        v = judge(inj.sent, sink.snapshot(), finals, torn)
        v.wall_s = time.time() - t0
        v.exit_code = code
        v.complete = complete
        v.sink_dropped = list(sink.dropped)
        return v, inj, sink, daemon
    finally:
        _teardown(inj, daemon, sink)


REQUEUED = re.compile(r"core (\d+): requeued (\d+) messages")


def run_big_queue(workdir: Path, messages: int, clients=8, seed=2, big_share=0.0, drain_timeout=300.0,
                  log=print, between=None):
    """Queue `messages` with the sink down (nothing can be delivered), SIGKILL once every client
    has its reply, restart on the same spool with the sink fast, and drain. Returns the verdict
    and figures: what recovery requeued per core, restart and drain times, log events per
    lifetime."""
    t0 = time.time()
    sink = SwitchableSink("down")
    daemon = Daemon(workdir, sink.port)
    inj = Injector(clients, seed, big_share)
    try:
        daemon.start()
        inj.start(daemon.port, "q", limit=messages)
        assert inj.wait_done(max(120, messages / 20)), "injection did not finish"
        inj.stop()
        t_inj = time.time() - t0
        daemon.kill()
        if between:
            between(daemon, 0)
        sink.set_mode("fast")
        restart = daemon.start()
        t1 = time.time()
        complete = wait_arrived(inj, sink, drain_timeout, daemon)
        t_drain = time.time() - t1
        code = daemon.stop()
        # Read after the stop: each core reports its own recovery, in its own time.
        requeued = {int(c): int(n) for c, n in REQUEUED.findall(daemon.stderr_since_start())}
        finals, torn = daemon.final_events()
        v = judge(inj.sent, sink.snapshot(), finals, torn)
        v.exit_code, v.complete, v.wall_s = code, complete, time.time() - t0
        v.requeued, v.restart_s, v.inject_s, v.drain_s = requeued, restart, t_inj, t_drain
        v.finals = finals
        log(f"big queue: {v.accepted} queued in {t_inj:.1f}s, requeued {requeued}, restart {restart:.2f}s, "
            f"drained in {t_drain:.1f}s")
        return v, inj, sink, daemon
    finally:
        _teardown(inj, daemon, sink)


def report(v: Verdict, log=print, cycles=0):
    log(v.summary())
    for tid, r, n, qid in v.duplicate_examples:
        log(f"  duplicate: {tid} to {r} arrived {n}x (queue id {qid})")
    for x in v.lost[:20]:
        log(f"  LOST: {x}")
    for x in v.corrupt[:20]:
        log(f"  CORRUPT: {x}")
    for x in v.rejected_delivered[:20]:
        log(f"  delivered although refused: {x}")
    for x in v.double_final_in_lifetime[:20]:
        log(f"  two final events in one lifetime: {x}")
    log(f"SUMMARY cycles={cycles} accepted={v.accepted} delivered={v.delivered}/{v.expected} "
        f"lost={len(v.lost)} duplicates={v.duplicates} wall_s={getattr(v, 'wall_s', 0):.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--backlog", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--big-share", type=float, default=0.05)
    ap.add_argument("--cycle-min", type=float, default=1.0)
    ap.add_argument("--cycle-max", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--drain-timeout", type=float, default=900)
    ap.add_argument("--big-queue", type=int, default=0,
                    help="then also: queue this many with the sink down, SIGKILL, recover, drain")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    import shutil
    import tempfile
    say = lambda m: print(m, flush=True)  # noqa: E731
    failed = False
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="crash-cycles-"))
    workdir.mkdir(parents=True, exist_ok=True)
    plan = Plan(a.cycles, a.backlog, a.clients, (a.cycle_min, a.cycle_max), a.big_share, a.seed, a.drain_timeout)
    v, inj, _, _ = run_cycles(workdir, plan, log=say)
    big = sum(s.size >= 128 * 1024 for s in inj.acked())
    say(f"multi-chunk bodies (>=128 KiB) answered 250: {big}; log: gaps={v.log_gaps} torn_lines={v.torn_log_lines}")
    report(v, log=say, cycles=a.cycles)
    if not v.complete or not v.ok() or v.exit_code != 0:
        say(f"FAIL crash cycles (complete={v.complete} exit={v.exit_code}); workdir kept: {workdir}")
        failed = True
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if a.big_queue:
        workdir = Path(tempfile.mkdtemp(prefix="crash-bigqueue-"))
        v, *_ = run_big_queue(workdir, a.big_queue, a.clients, a.seed, 0.002, a.drain_timeout, log=say)
        say(v.summary())
        say(f"SUMMARY big_queue={v.accepted} requeued={sum(v.requeued.values())} restart_s={v.restart_s:.2f} "
            f"drain_s={v.drain_s:.1f} delivered={v.delivered}/{v.expected} lost={len(v.lost)} "
            f"duplicates={v.duplicates} wall_s={v.wall_s:.1f}")
        if not v.complete or not v.ok() or v.exit_code != 0 or v.duplicates:
            say(f"FAIL big queue (complete={v.complete} exit={v.exit_code}); workdir kept: {workdir}")
            failed = True
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()


def _teardown(inj, daemon, sink):
    """Stop the injectors (their own verdict is not the test's), kill the daemon, close the sink."""
    try:
        inj.stop()
    except AssertionError:
        pass
    daemon.rp.stop(signal.SIGKILL)
    sink.close()
