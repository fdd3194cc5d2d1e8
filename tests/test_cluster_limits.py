"""Cluster-wide limits (issue 11 item 8): two ringpost processes share limits through one real
redis-server (Debian's package; started here on a free loopback port, no files, no service).

The sink is a small asyncio SMTP receiver written for these tests: it timestamps every
accepted message and tracks how many connections are open at once, which is what the limits
promise about."""
import asyncio
import shutil
import signal
import smtplib
import subprocess
import threading
import time

import pytest

from conftest import Ringpost, free_port, wait_for

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


class TimingSink:
    """SMTP receiver on loopback: `times` of accepted messages, `peak` concurrent connections."""

    def __init__(self, data_delay=0.0):
        self.port = free_port()
        self.data_delay = data_delay
        self.times = []
        self.open = 0
        self.peak = 0
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._session, "127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_forever()

    async def _session(self, reader, writer):
        with self.lock:
            self.open += 1
            self.peak = max(self.peak, self.open)
        try:
            writer.write(b"220 sink.test ESMTP\r\n")
            while True:
                line = await reader.readline()
                if not line:
                    break
                verb = line[:4].upper()
                if verb == b"DATA":
                    writer.write(b"354 go\r\n")
                    await writer.drain()
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    if self.data_delay:
                        await asyncio.sleep(self.data_delay)
                    with self.lock:
                        self.times.append(time.monotonic())
                    writer.write(b"250 2.0.0 stored\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    break
                elif verb in (b"EHLO", b"HELO"):
                    writer.write(b"250 sink.test\r\n")
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            with self.lock:
                self.open -= 1
            writer.close()

    def count_between(self, t0, t1):
        with self.lock:
            return sum(1 for t in self.times if t0 <= t < t1)

    def stop(self):
        async def shutdown():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def redis():
    port = free_port()
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL)
    # PING/+PONG, not a bare connect: a connect to a port nobody listens on yet can
    # self-connect (source port = destination port), which a bare connect takes for redis.
    wait_for(lambda: proc.poll() is not None or _pongs(port), "redis-server to answer PING")
    assert proc.poll() is None, f"redis-server exited at start-up (port {port} taken?)"
    proc.port = port
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _pongs(port):
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(7) == b"+PONG\r\n"
    except OSError:
        return False


def cluster_tail(redis_port, limit):
    return f"""[cluster]
redis = "redis://127.0.0.1:{redis_port}"
[[shape]]
site = "*"
{limit}
"""


def start_pair(tmp_path, sink, tail, wrap=()):
    hosts = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        rp = Ringpost(d, sink.port, tail=tail)
        rp.wrap = list(wrap)
        hosts.append(rp.start())
    return hosts


def inject(rp, n, threads=4):
    """Send n one-recipient messages to rp over `threads` connections."""
    def worker(count):
        with smtplib.SMTP("127.0.0.1", rp.port, timeout=60) as s:
            for i in range(count):
                s.sendmail("s@src.test", [f"r{i}@dest.test"], b"Subject: t\r\n\r\nbody\r\n")
    ts = [threading.Thread(target=worker, args=(n // threads,)) for _ in range(threads)]
    for t in ts:
        t.start()
    return ts


def test_two_hosts_share_one_rate_and_keep_delivering_per_host_when_redis_dies(tmp_path, redis):
    sink = TimingSink()
    hosts = start_pair(tmp_path, sink, cluster_tail(redis.port, 'max_message_rate = "100/s"\nshared = true'))
    try:
        injectors = [t for rp in hosts for t in inject(rp, 1600)]
        wait_for(lambda: sink.times, "first delivery")
        t0 = sink.times[0]
        time.sleep(max(0.0, t0 + 12 - time.monotonic()))
        shared = sink.count_between(t0 + 1, t0 + 11) / 10
        redis.kill()
        redis.wait()
        t_kill = time.monotonic()
        time.sleep(7)
        alone = sink.count_between(t_kill + 1.5, t_kill + 6.5) / 5
        with sink.lock:
            after = [t for t in sink.times if t >= t_kill]
        gaps = [b - a for a, b in zip([t_kill] + after, after)]
        print(f"shared limit 100/s over 10 s: {shared:.1f}/s; Redis killed, two hosts: {alone:.1f}/s")
        assert 80 <= shared <= 105, f"combined rate with one shared 100/s limit: {shared}/s"
        assert 150 <= alone <= 210, f"after Redis died each host keeps its own 100/s: {alone}/s combined"
        assert max(gaps) < 1.0, f"delivery stalled {max(gaps):.2f} s after Redis died"
        for rp in hosts:
            err = rp.stderr.read_text()
            assert err.count("shared limits are enforced per host") == 1, err[-2000:]
        for t in injectors:
            t.join(60)
    finally:
        for rp in hosts:
            rp.stop(signal.SIGKILL)
        sink.stop()


# Each host in a pid namespace of its own: both run as pid 1 with the same host name, as two
# containers would, and their connection leases must still count as two.
PIDNS = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL"]


@pytest.mark.parametrize("shared,peak,pidns", [("true", 2, False), ("false", 4, False), ("true", 2, True)])
def test_a_shared_connection_limit_holds_across_hosts(tmp_path, redis, shared, peak, pidns):
    # max_connections = 2: per host (not shared) the sink sees 2 from each host, 4 in all;
    # shared through Redis it never sees more than 2 in all.
    sink = TimingSink(data_delay=0.02)
    hosts = start_pair(tmp_path, sink, cluster_tail(redis.port, f"max_connections = 2\nshared = {shared}"),
                       wrap=PIDNS if pidns else [])
    try:
        injectors = [t for rp in hosts for t in inject(rp, 400)]
        for t in injectors:
            t.join(60)
        wait_for(lambda: len(sink.times) >= 800, "800 deliveries", timeout=90)
        print(f"peak concurrent connections at the sink: {sink.peak}")
        assert sink.peak == peak, f"max_connections = 2, shared = {shared}: sink peak {sink.peak}"
    finally:
        for rp in hosts:
            rp.stop(signal.SIGKILL)
        sink.stop()
