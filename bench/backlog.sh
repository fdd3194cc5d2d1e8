#!/usr/bin/env bash
# Backlog: queue N messages (default 1,000,000 x 1 KiB, 10 domains) with the destination down,
# then report what a large queue costs and how it comes back:
#   1. RSS (and heap, RssAnon) per queued recipient, spool size, once every message had its
#      first (failed) attempt and sits waiting for its retry;
#   2. SIGKILL and restart with the backlog: time until the daemon greets again and until every
#      core has recovered (its spool scan and requeue, timed by ringpost itself), heap and RSS
#      after recovery;
#   3. the destination comes up: drain rate (first to last Delivery in the delivery log)
#      against the empty-queue relay rate measured right after, same sitting.
# ringpost runs its shipped defaults except the retry timing (first and max retry 120 s, so the
# drain starts within minutes instead of the default 5 min / 67 min backoff).
#
#   bench/backlog.sh              # 1,000,000
#   N=100000 bench/backlog.sh     # a shorter run
set -euo pipefail
N=${N:-1000000}
SESSIONS=${SESSIONS:-50}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/backlog.XXXXXX)
RP_PORT=${RP_PORT:-2729}
SINK_PORT=${SINK_PORT:-2929}
. "$ROOT/bench/lib/ringpost.sh"
trap 'stop_all; [ "${KEEP:-0}" = 1 ] && echo "kept $WORK" || rm -rf "$WORK"' EXIT

# Events of a type across the delivery log and its rotated files.
count() { cat "$WORK"/delivery.jsonl* 2>/dev/null | grep -c "\"$1\"" || true; }
wait_count() { # wait_count TYPE TARGET TIMEOUT_S
  local deadline=$(( $(date +%s) + $3 ))
  while [ "$(count "$1")" -lt "$2" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 5; done
}
kib() { echo "$(rss_parts_kib "$RP_PID") $(du -sk "$WORK/spool" | cut -f1)"; }

raise_fd_limit
export GREET_TIMEOUT_S=${GREET_TIMEOUT_S:-900}
echo "machine: $(nproc) cores, $(uname -r); backlog N=$N; $(load_avg)"
export DELIVERY_EXTRA='retry_first_s = 120
retry_max_s = 120'
write_config ""
start_ringpost
read -r _ anon0 _ _ <<<"$(kib)"
t0=$(date +%s.%N)
"$BLASTER" send --to 127.0.0.1:$RP_PORT -n "$N" -c "$SESSIONS" --size 1024 --domains 10 -q --json > "$WORK/fill.json"
t1=$(date +%s.%N)
accepted=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["accepted"])' "$WORK/fill.json")
echo "filled: $accepted accepted in $(python3 -c "print(round($t1-$t0,1))") s; waiting for every first attempt to fail"
wait_count TransientFailure "$accepted" 600
sleep 5
read -r rss anon file spool <<<"$(kib)"
echo "queued: $(count TransientFailure) recipients deferred; RSS $rss KiB (heap $anon KiB, mapped spool $file KiB); spool $spool KiB"
python3 -c "print(f'resident heap per queued recipient: {($anon - $anon0) * 1024 / $accepted:.0f} bytes (RssAnon growth / recipients)')"

kill -9 "$RP_PID"; wait "$RP_PID" 2>/dev/null || true; RP_PID=
t2=$(date +%s.%N)
start_ringpost
t3=$(date +%s.%N)
# A core serves once its own recovery is done: wait for every core's "recovery of" line.
recovered_all() {
  local cores; cores=$(grep -o '[0-9]* cores serving' "$WORK/ringpost.err" | head -1 | cut -d' ' -f1)
  [ -n "$cores" ] && [ "$(grep -c 'recovery of' "$WORK/ringpost.err" || true)" -ge "$cores" ]
}
deadline=$(( $(date +%s) + GREET_TIMEOUT_S ))
until recovered_all || [ "$(date +%s)" -ge "$deadline" ]; do sleep 0.2; done
t4=$(date +%s.%N)
sleep 2
read -r rss2 anon2 file2 _ <<<"$(kib)"
echo "restart with the backlog: greeting after $(python3 -c "print(round($t3-$t2,2))") s, every core recovered after $(python3 -c "print(round($t4-$t2,2))") s; RSS $rss2 KiB (heap $anon2 KiB, mapped $file2 KiB)"
python3 -c "print(f'resident heap per queued recipient after the restart: {($anon2 - $anon0) * 1024 / $accepted:.0f} bytes')"
grep -i 'recover\|requeue' "$WORK/ringpost.err" | tail -6 || true

start_sink
wait_count Delivery "$accepted" 1800
python3 - "$WORK/delivery.jsonl" "$accepted" <<'PY'
import glob, json, sys
t = [json.loads(l)["time_ms"] for p in glob.glob(sys.argv[1] + "*") for l in open(p) if '"Delivery"' in l]
n = int(sys.argv[2])
span = (max(t) - min(t)) / 1000 if t else 0
print(f"drain: {len(t)} of {n} delivered; first to last {span:.1f} s = {len(t) / span if span else 0:.0f} msg/s")
PY
python3 "$PY/closed_once.py" "$WORK/delivery.jsonl" --wait 10 || true
rate=$(measure_peak 20)
echo "empty-queue relay, same sitting (blaster closed loop 20 s, accepted msg/s): $rate; $(load_avg)"
