#!/usr/bin/env bash
# Relay throughput under a slowloris attack: measure blaster's closed-loop peak through ringpost
# (PEAK_S s), then relay open-loop at half of it for DURATION s without, then with, 1,000
# slowloris clients (bench/lib/slowloris.py: a third trickle a command line byte by byte, a third
# trickle DATA one byte every few seconds, a third send DATA at 100 B/s, below min_data_rate).
# Prints throughput and accept latency of both runs, whether "with" stays within 10% of
# "without", how many slowloris connections ringpost cut and when, and checks the delivery log.
#
#   bench/slowloris.sh
#   LORIS=1000 DURATION=40 CMD_TIMEOUT=300 DATA_TIMEOUT=180 bench/slowloris.sh   # ringpost's default timeouts
#
# Timeouts: by default shortened to command_timeout_s=20, data_timeout_s=10 so that cuts happen
# within the run (ringpost's defaults are 300 and 180 s); min_data_rate stays at its default 500.
# Per IP: the slowloris clients come 5 per address from 127.0.0.2..201 and blaster from 127.0.0.1;
# max_connections_per_ip is 100 (blaster's SESSIONS=50 fit under it).
set -euo pipefail
LORIS=${LORIS:-1000}
DURATION=${DURATION:-40}
PEAK_S=${PEAK_S:-15}
SESSIONS=${SESSIONS:-50}
SIZE=${SIZE:-1024}
CMD_TIMEOUT=${CMD_TIMEOUT:-20}
DATA_TIMEOUT=${DATA_TIMEOUT:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/slowloris.XXXXXX)
RP_PORT=${RP_PORT:-2727}
SINK_PORT=${SINK_PORT:-2927}
. "$ROOT/bench/lib/ringpost.sh"
trap 'stop_all; [ "${KEEP:-0}" = 1 ] && echo "kept $WORK" || rm -rf "$WORK"' EXIT

raise_fd_limit
echo "machine: $(nproc) cores, $(uname -r); slowloris=$LORIS duration=${DURATION}s sessions=$SESSIONS size=$SIZE;" \
  "command_timeout_s=$CMD_TIMEOUT data_timeout_s=$DATA_TIMEOUT min_data_rate=500 (default)"
write_config "max_connections_per_ip = 100
command_timeout_s = $CMD_TIMEOUT
data_timeout_s = $DATA_TIMEOUT"
start_sink
start_ringpost

echo "peak: $(load_avg)"
PEAK=${PEAK_RATE:-$(measure_peak "$PEAK_S")}
RATE=$((PEAK / 2))
echo "peak (closed loop, ${PEAK_S}s, $SESSIONS sessions): $PEAK msg/s -> open loop at $RATE msg/s"
sleep 3  # let the queue drain the peak run's backlog

# run_load NAME: open-loop blaster at RATE for DURATION; JSON in $WORK/NAME.json.
run_load() {
  echo "$1: start $(load_avg)"
  local c0; c0=$(cpu_s "$RP_PID")
  "$BLASTER" send --to 127.0.0.1:$RP_PORT --rate "$RATE" --duration "${DURATION}s" -c "$SESSIONS" --size "$SIZE" \
    --domains 1 -q --json > "$WORK/$1.json"
  echo "$1: end   $(load_avg); ringpost used $(python3 -c "print(round($(cpu_s "$RP_PID") - $c0, 1))") s CPU over the run"
}

run_load without
sleep 3
# The attack starts LORIS_LEAD s before the load and stops with it.
LORIS_LEAD=${LORIS_LEAD:-5}
python3 "$PY/slowloris.py" --port "$RP_PORT" -n "$LORIS" --duration $((DURATION + LORIS_LEAD + 2)) --out "$WORK/loris.json" \
  > "$WORK/loris.txt" &
LORIS_PID=$!
sleep "$LORIS_LEAD"
echo "with: ringpost RSS $(rss_kib "$RP_PID") KiB, fds $(ls /proc/$RP_PID/fd | wc -l) as the load starts"
run_load with
wait "$LORIS_PID"
cat "$WORK/loris.txt"
python3 - "$WORK" "$RATE" <<'PY'
import json, sys
work, rate = sys.argv[1], int(sys.argv[2])
r = {n: json.load(open(f"{work}/{n}.json")) for n in ("without", "with")}
for n, s in r.items():
    a = s["accept_latency"]
    print(f"{n:8s}: target {rate} msg/s, accepted {s['accepted']} of {s['sent']} in {s['duration_s']:.1f} s = {s['msgs_per_s']:.0f} msg/s;"
          f" temp {s['temp_failures']} perm {s['perm_failures']} errors {s['errors']};"
          f" accept latency p50 {a['p50_us']/1000:.1f} ms p99 {a['p99_us']/1000:.1f} ms")
ratio = r["with"]["msgs_per_s"] / r["without"]["msgs_per_s"]
print(f"with/without throughput: {ratio:.3f} -> {'within' if abs(1 - ratio) <= 0.10 else 'NOT within'} 10%")
PY
python3 "$PY/closed_once.py" "$WORK/delivery.jsonl" --wait 60
