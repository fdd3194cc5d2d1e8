#!/usr/bin/env python3
"""What polling costs, from one or more interleaved sittings of bench/admin-poll.sh.

    interleave_stats.py BLOCK_S INTERVAL_MS AA BLOCKS COUNTS [BLOCKS COUNTS ...]

BLOCKS has one line per block, `PAIR MODE START_UNIX_S POLLS_SO_FAR`, and a last sentinel
line; COUNTS is the sink's `--count-log` (`UNIX_S TOTAL_DELIVERED`). admin-poll.sh calls it
with its own sitting; `KEEP=` keeps a sitting's two files so that several sittings can be
pooled afterwards (each sitting is one stratum of the bootstrap: blocks are resampled within
their sitting, never across, because the machine's state differs between sittings).

Estimators: the total (sum off vs sum on) and the mean log ratio, which is symmetric in the
two blocks of a pair ((off - on) / off is not: with noisy pairs it leans towards 0). The
interval is a moving-block bootstrap, since neighbouring pairs are correlated (the machine's
state drifts over tens of seconds).
"""
import math
import random
import statistics
import sys


def load(blocks_path, counts_path, block_s):
    """Pairs of one sitting: (rate off, rate on, polls in the off block, polls in the on block)."""
    total_at = {int(sec): int(n) for sec, n in (line.split() for line in open(counts_path))}
    rows = [line.split() for line in open(blocks_path)]
    blocks = {}
    for (i, mode, start, polls), nxt in zip(rows, rows[1:]):
        rate = (total_at[int(start) + block_s] - total_at[int(start)]) / block_s
        blocks[(int(i), mode)] = (rate, int(nxt[3]) - int(polls))
    pairs = sorted({i for i, _ in blocks if (i, "off") in blocks and (i, "on") in blocks})
    return [(blocks[(i, "off")][0], blocks[(i, "on")][0], blocks[(i, "off")][1], blocks[(i, "on")][1]) for i in pairs]


def estimates(sittings):
    """(total cost %, mean log ratio %) over every pair of every sitting."""
    off = sum(p[0] for s in sittings for p in s)
    on = sum(p[1] for s in sittings for p in s)
    logs = [math.log(p[0] / p[1]) * 100 for s in sittings for p in s]
    return (off - on) / off * 100, statistics.mean(logs)


def resample(pairs, rnd, block=5):
    """One moving-block bootstrap resample of a sitting's pairs."""
    out = []
    while len(out) < len(pairs):
        s = rnd.randrange(max(1, len(pairs) - block + 1))
        out += pairs[s:s + block]
    return out[:len(pairs)]


def main():
    block_s, interval_ms, aa = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    files = sys.argv[4:]
    if not files or len(files) % 2:
        sys.exit(__doc__)
    sittings = [load(files[k], files[k + 1], block_s) for k in range(0, len(files), 2)]
    every = [p for s in sittings for p in s]
    if min(min(p[0], p[1]) for p in every) == 0:
        sys.exit("a block with no delivery: the load stopped")
    polls_off, polls_on = [p[2] for p in every], [p[3] for p in every]
    expect = block_s * 1000 // interval_ms
    if aa:
        assert max(polls_on + polls_off) == 0, "AA: the poller ran"
    elif max(polls_off) > 1 or statistics.mean(polls_on) < expect * 3 / 4:
        # A frozen poller must not poll. A thawed one polls every interval unless a reply is
        # slow (polls never stack up): a loaded block can see fewer, but on average the
        # poller must have polled at about the asked rate or the "on" blocks measure less.
        sys.exit(f"polls per block off {min(polls_off)}..{max(polls_off)}, on mean {statistics.mean(polls_on):.1f} (expected {expect})")
    total, mean_log = estimates(sittings)
    rnd = random.Random(1)
    n = 4000
    boots = [estimates([resample(s, rnd) for s in sittings]) for _ in range(n)]
    # the 2.5th, 97.5th and 95th percentiles of the n resamples
    lo, hi, upper = n // 40, n - 1 - n // 40, n * 19 // 20 - 1

    def interval(k):
        v = sorted(b[k] for b in boots)
        return f"95 % block-bootstrap CI {v[lo]:+.2f} .. {v[hi]:+.2f}, one-sided 95 % upper bound {v[upper]:+.2f}"

    logs = [math.log(p[0] / p[1]) * 100 for p in every]
    print(f"{len(every)} pairs of {block_s} s blocks in {len(sittings)} sitting(s); polls per 'on' block "
          f"{min(polls_on)}..{max(polls_on)} (mean {statistics.mean(polls_on):.1f}, asked {expect}), per 'off' block "
          f"{max(polls_off)} at most" + (" (AA: poller frozen in every block)" if aa else ""))
    off, on = [p[0] for p in every], [p[1] for p in every]
    print(f"msg/s: median {statistics.median(off):.0f} without polling ({min(off):.0f}..{max(off):.0f}), "
          f"{statistics.median(on):.0f} with ({min(on):.0f}..{max(on):.0f})")
    print(f"throughput cost, total delivered: {total:+.2f} % ({interval(0)})")
    print(f"throughput cost, mean log ratio:  {mean_log:+.2f} % ({interval(1)}); median {statistics.median(logs):+.2f} %")


if __name__ == "__main__":
    main()
