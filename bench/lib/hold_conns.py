#!/usr/bin/env python3
"""Hold N idle SMTP sessions open against a server and probe fresh sessions meanwhile.

Each held session is greeted, sends EHLO, reads the whole 250 reply, then stays idle. Sources
are spread over 127.0.0.2.. (PER_IP per address), so the server's exact per-IP count is
exercised: one extra connection from the first address must get 421. A probe on 127.0.0.1
measures connect->banner and EHLO->250 on fresh sessions, before and while the N are held.
Prints one line per figure; exits 1 if any held session failed or was cut during the hold.
"""
import argparse, asyncio, json, sys, time


async def read_reply(reader):
    """Read one (possibly multi-line) SMTP reply; return its code."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return int(line[:3])


async def session(host, port, src, held):
    """Open one session up to its EHLO reply; keep it in `held`."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(src, 0))
    if await read_reply(reader) != 220:
        writer.close()
        raise ConnectionError("no 220")
    writer.write(b"EHLO held.test\r\n")
    if await read_reply(reader) != 250:
        writer.close()
        raise ConnectionError("no 250 to EHLO")
    held.append((reader, writer))


async def probe_once(host, port):
    """One fresh session: (connect->220 seconds, EHLO->250 seconds)."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.0.1", 0))
    assert await read_reply(reader) == 220
    t1 = time.perf_counter()
    writer.write(b"EHLO probe.test\r\n")
    assert await read_reply(reader) == 250
    t2 = time.perf_counter()
    writer.write(b"QUIT\r\n")
    await read_reply(reader)
    writer.close()
    return t1 - t0, t2 - t1


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def probe(host, port, n, label):
    banner, ehlo = [], []
    for _ in range(n):
        b, e = await probe_once(host, port)
        banner.append(b)
        ehlo.append(e)
        await asyncio.sleep(0.05)
    ms = lambda x: f"{x * 1000:.2f} ms"
    print(f"probe {label}: EHLO->250 p50 {ms(pct(ehlo, .5))} p99 {ms(pct(ehlo, .99))} max {ms(max(ehlo))};"
          f" connect->220 p50 {ms(pct(banner, .5))} p99 {ms(pct(banner, .99))} (n={n})", flush=True)


def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])


async def per_ip_refusal(host, port, src):
    """A connection over the per-IP limit from `src`: return the server's first line."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(src, 0))
    line = await reader.readline()
    writer.close()
    return line.decode().strip()


async def main(a):
    await probe(a.host, a.port, a.probes, "idle server (0 held)")
    print(f"ringpost RSS before: {rss(a.pid)} KiB", flush=True)
    srcs = [f"127.0.0.{2 + i // a.per_ip}" for i in range(a.n)]
    held, failures, sem = [], [], asyncio.Semaphore(a.parallel)

    async def one(src):
        async with sem:
            try:
                await session(a.host, a.port, src, held)
            except Exception as e:  # noqa: BLE001 - counted and reported
                failures.append(f"{src}: {e!r}")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(s) for s in srcs))
    print(f"held sessions: {len(held)} of {a.n} greeted+EHLO'd in {time.perf_counter() - t0:.1f} s from"
          f" {len(set(srcs))} source addresses; failures {len(failures)} {failures[:3]}", flush=True)
    print(f"over-limit connection from {srcs[0]} (after {a.per_ip} sessions opened from it): {await per_ip_refusal(a.host, a.port, srcs[0])!r}")
    await asyncio.sleep(1)
    print(f"ringpost RSS with {len(held)} held: {rss(a.pid)} KiB; fds {len(__import__('os').listdir(f'/proc/{a.pid}/fd'))}", flush=True)
    await probe(a.host, a.port, a.probes, f"while {len(held)} held")
    await asyncio.sleep(a.hold)
    # Still open? A cut session reads EOF (or a 421) at once; an open one times out.
    cut = 0
    for reader, _ in held:
        try:
            await asyncio.wait_for(reader.read(1), 0.001)
            cut += 1  # EOF or an unsolicited reply (421 timeout): the server ended it
        except asyncio.TimeoutError:
            pass
    print(f"after {a.hold:.0f} s more idle: {len(held) - cut} of {len(held)} held sessions still open", flush=True)
    print(f"ringpost RSS at the end: {rss(a.pid)} KiB", flush=True)
    for _, w in held:
        w.close()
    return 0 if not failures and cut == 0 and len(held) == a.n else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True, help="ringpost's pid, for RSS")
    p.add_argument("-n", type=int, default=10000)
    p.add_argument("--per-ip", type=int, default=50)
    p.add_argument("--parallel", type=int, default=200, help="connections being set up at once")
    p.add_argument("--probes", type=int, default=200)
    p.add_argument("--hold", type=float, default=10)
    sys.exit(asyncio.run(main(p.parse_args())))
