#!/usr/bin/env bash
# What spinning before parking costs an idle or lightly loaded ringpost: its CPU use, as a
# share of one core, while blaster injects at fixed low rates (open loop, 10 connections,
# 1 KiB, into a blaster sink), for each value of `engine.spin_before_park_us`.
#
#   bench/spin-cost.sh                                  # SPINS="0 100 250" RATES="0 100 1000"
#   SPINS="0 250" RATES="0 500" SECONDS_EACH=20 bench/spin-cost.sh
#
# Rate 0 is no load at all (timers only). Each line: spin, rate, ringpost's CPU (all its
# threads, so it can pass 100 %) as a share of one core over the window, and that CPU per
# message blaster saw accepted. The window spans blaster's run, its start and end included, so
# deliveries still under way when it ends fall partly outside. fsync on, shipped defaults
# otherwise. Keep CORES at or below the CPU count: unpinned cores ignore the spin setting.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/spincost.XXXXXX)
RP_PORT=${RP_PORT:-3145} SINK_PORT=${SINK_PORT:-3146}
SPINS=${SPINS:-0 100 250}; RATES=${RATES:-0 100 1000}; SECS=${SECONDS_EACH:-10}
. "$ROOT/bench/lib/ringpost.sh"
trap 'stop_all; rm -rf "$WORK"' EXIT
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
echo "machine: $(nproc) cores, $(load_avg); ${SECS}s per point"
for spin in $SPINS; do
  for rate in $RATES; do
    rm -rf "$WORK/spool"
    ENGINE_EXTRA="spin_before_park_us = $spin" write_config ""
    start_sink
    start_ringpost
    sleep 1
    t0=$(ticks "$RP_PID"); s0=$(date +%s.%N)
    if [ "$rate" -gt 0 ]; then
      "$BLASTER" send --to 127.0.0.1:$RP_PORT --rate "$rate" --duration "${SECS}s" -c 10 --size 1024 --domains 1 -q --json > "$WORK/send.json"
    else
      sleep "$SECS"
    fi
    t1=$(ticks "$RP_PID"); s1=$(date +%s.%N)
    stop_all
    accepted=0
    [ "$rate" -gt 0 ] && accepted=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["accepted"])' "$WORK/send.json")
    python3 - "$spin" "$rate" "$t0" "$t1" "$s0" "$s1" "$HZ" "$accepted" <<'PY'
import sys
spin, rate, t0, t1, s0, s1, hz, accepted = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:8]), int(sys.argv[8])
cpu = (t1 - t0) / hz
wall = s1 - s0
per = f"{1e6 * cpu / accepted:.0f} us/msg ({accepted} accepted)" if accepted else "-"
print(f"spin_before_park_us={spin:>5} rate={rate:>6}/s  ringpost CPU {100 * cpu / wall:5.1f} % of a core  {per}")
PY
  done
done
