#!/usr/bin/env bash
# Crash-cycle endurance run ("never lose a 250'd message"), full size: a backlog of BACKLOG
# messages queued while the destination refuses connections, then CYCLES rounds of
# CLIENTS concurrent injecting clients + SIGKILL of ringpost + restart on the same spool while
# the destination switches between down (refused), slow (delayed, trickled replies) and fast;
# bodies 1 KiB-2 MiB (BIG_SHARE of them 128 KiB-2 MiB, i.e. several 128 KiB spool chunks).
# Then, with the destination fast, waits for the queue to drain and checks that every
# (message, recipient) answered 250 arrived with its exact body (SHA-256); duplicates are
# counted. Then a BIG_QUEUE-message queue is killed, recovered and drained (exactly once).
#
#   bench/crash-cycles.sh                         # 20 cycles, 10000 backlog, 16 clients, 10000 big queue
#   CYCLES=5 BACKLOG=2000 BIG_QUEUE=0 bench/crash-cycles.sh
#
# The harness is tests/crashkit.py (tests/test_crash_cycles.py runs it small in CI). Needs the
# Python peers of tests/requirements.txt. Exit status 1 when anything answered 250 was lost.
# Prints SUMMARY lines for perf/RESULTS.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CYCLES=${CYCLES:-20}
BACKLOG=${BACKLOG:-10000}
CLIENTS=${CLIENTS:-16}
BIG_SHARE=${BIG_SHARE:-0.05}
BIG_QUEUE=${BIG_QUEUE:-10000}
SEED=${SEED:-1}
export RINGPOST_BIN=${RINGPOST_BIN:-$ROOT/target/release/ringpost}
[ -x "$RINGPOST_BIN" ] || { echo "build first: cargo build --release -p ringpost" >&2; exit 2; }
echo "crash-cycles: $(date -u +%Y-%m-%dT%H:%MZ) commit $(git -C "$ROOT" rev-parse --short HEAD) $(nproc) cores;" \
     "binary $RINGPOST_BIN; cycles=$CYCLES backlog=$BACKLOG clients=$CLIENTS big_share=$BIG_SHARE seed=$SEED"
exec python3 "$ROOT/tests/crashkit.py" --cycles "$CYCLES" --backlog "$BACKLOG" --clients "$CLIENTS" \
  --big-share "$BIG_SHARE" --big-queue "$BIG_QUEUE" --seed "$SEED"
