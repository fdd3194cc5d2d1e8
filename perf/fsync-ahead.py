#!/usr/bin/env python3
"""What an fdatasync costs into fallocated space against space already overwritten with zeros.

Usage: python3 perf/fsync-ahead.py [DIR] (default: the current directory; use the spool's
file system). Appends 3,000 records of 4 KiB to a 64 MiB fallocated file with an fdatasync
after each, three ways: straight into the fallocated (unwritten) extents, and with zeros
written 1 MiB or 4 MiB ahead of the records, as a spool change tried in the twelfth and
fourteenth sessions did (not kept: perf/RESULTS.md says why). Prints p50/p99/p99.9/mean per
way, twice, alternating.
"""
import os
import sys
import time

SIZE = 64 << 20
RECORD = 4096
N = 3000


def run(path, step):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.posix_fallocate(fd, 0, SIZE)
        os.fsync(fd)
        buf = b"x" * RECORD
        zeroed = 0
        lat = []
        for i in range(N):
            t = time.perf_counter()
            end = (i + 1) * RECORD
            if step and end > zeroed:
                os.pwrite(fd, b"\0" * step, zeroed)
                zeroed += step
            os.pwrite(fd, buf, i * RECORD)
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    s = sorted(lat)
    way = f"zeros {step >> 10} KiB ahead" if step else "fallocated"
    print(f"{way:>22}: p50 {s[N // 2] * 1e6:5.0f} us  p99 {s[N * 99 // 100] * 1e6:6.0f} us  "
          f"p99.9 {s[N * 999 // 1000] * 1e6:6.0f} us  mean {sum(lat) / N * 1e6:5.0f} us")


def main():
    path = os.path.join(sys.argv[1] if len(sys.argv) > 1 else ".", "fsync-ahead.tmp")
    for _ in range(2):
        for step in (0, 1 << 20, 4 << 20):
            run(path, step)


if __name__ == "__main__":
    main()
