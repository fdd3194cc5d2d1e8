#!/usr/bin/env bash
# What watching ringpost costs: blaster send -> ringpost -> blaster sink (as bench/relay.sh),
# alternating runs without and with an operator polling every 100 ms — `ringctl status`,
# `ringctl queue` and a GET /metrics scrape — at least 3 pairs in the same sitting. Prints the
# end-to-end msg/s of each run, the medians, and the cost of polling in % (issue 10: <= 2 %).
#
#   bench/admin-poll.sh                          # 3 pairs of 20000 x 1 KiB, 50 sessions
#   PAIRS=5 N=50000 bench/admin-poll.sh
#   N=500 PAIRS=3 bench/admin-poll.sh            # a smoke run: proves the script, measures nothing
#
# ringpost runs with its shipped defaults (bench/lib/ringpost.sh's config, the one relay.sh
# uses) plus `[metrics] listen` in every run, so the runs differ only in the polling. The
# poller is one Python process that runs ringctl and scrapes in a loop, as a monitoring agent
# on the same host would; it counts its polls and fails the run if any poll fails. Runs
# alternate off/on so drift of the machine (page cache, other load) hits both modes alike.
# Needs the release build (ringpost, ringctl, blaster).
set -euo pipefail
N=${N:-20000}
PAIRS=${PAIRS:-3}
SESSIONS=${SESSIONS:-50}
SIZE=${SIZE:-1024}
INTERVAL_MS=${INTERVAL_MS:-100}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/adminpoll.XXXXXX)
RP_PORT=${RP_PORT:-2735}
SINK_PORT=${SINK_PORT:-2935}
METRICS_PORT=${METRICS_PORT:-9435}
RINGCTL=${RINGCTL_BIN:-$ROOT/target/release/ringctl}
# shellcheck source=bench/lib/ringpost.sh
. "$ROOT/bench/lib/ringpost.sh"
[ "$PAIRS" -ge 3 ] || { echo "PAIRS must be at least 3"; exit 2; }
for b in "$BIN" "$BLASTER" "$RINGCTL"; do [ -x "$b" ] || { echo "missing $b: cargo build --release --workspace"; exit 2; }; done

POLL_PID=
cleanup() {
  [ -n "$POLL_PID" ] && kill -TERM "$POLL_PID" 2>/dev/null || true
  stop_all
  rm -rf "$WORK"
}
trap cleanup EXIT

write_config ""
printf '[metrics]\nlisten = "127.0.0.1:%s"\n' "$METRICS_PORT" >> "$WORK/ringpost.toml"

# start_poller: every INTERVAL_MS, ringctl status, ringctl queue and GET /metrics (POLL_PID);
# on SIGTERM it writes "polls failures" to $WORK/polls.
start_poller() {
  python3 - "$RINGCTL" "$WORK/admin.sock" "$METRICS_PORT" "$INTERVAL_MS" "$WORK/polls" 2>"$WORK/poller.err" <<'PY' &
import signal, subprocess, sys, time, urllib.request
ctl, sock, mport, interval, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) / 1000, sys.argv[5]
polls = failures = 0
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
open(out + ".ready", "w").close()
nxt = time.monotonic()
while not stop:
    ok = subprocess.run([ctl, "--socket", sock, "status"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    ok &= subprocess.run([ctl, "--socket", sock, "queue"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
            ok &= r.status == 200 and b"ringpost_messages_received_total" in r.read()
    except OSError:
        ok = False
    polls += 1
    failures += not ok
    nxt += interval
    time.sleep(max(0.0, nxt - time.monotonic()))
open(out, "w").write(f"{polls} {failures}\n")
PY
  POLL_PID=$!
  # Until its SIGTERM handler is in, a stop would kill it before it reports.
  while [ ! -e "$WORK/polls.ready" ]; do sleep 0.02; done
}

stop_poller() {
  kill -TERM "$POLL_PID"
  wait "$POLL_PID" || true
  POLL_PID=
}

# run_one MODE: fresh spool, fresh ringpost, a sink that exits after N messages; prints msg/s.
run_one() {
  local mode=$1 t0 t1 sink
  rm -rf "$WORK/spool" "$WORK/delivery.jsonl" "$WORK/polls" "$WORK/polls.ready"
  start_ringpost
  "$BLASTER" sink --listen 127.0.0.1:$SINK_PORT --exit-after "$N" --json > "$WORK/sink.json" 2>/dev/null &
  sink=$!
  sleep 0.5
  [ "$mode" = on ] && start_poller
  t0=$(date +%s.%N)
  "$BLASTER" send --to 127.0.0.1:$RP_PORT -n "$N" -c "$SESSIONS" --size "$SIZE" --domains 1 -q --json > "$WORK/send.json"
  wait "$sink"
  t1=$(date +%s.%N)
  local polls=""
  if [ "$mode" = on ]; then
    stop_poller
    [ -s "$WORK/polls" ] || { echo "the poller did not report:"; cat "$WORK/poller.err"; exit 1; }
    read -r p f < "$WORK/polls"
    [ "$f" = 0 ] || { echo "polling $mode: $f of $p polls failed"; exit 1; }
    polls=" ($p polls)"
  fi
  stop_all
  python3 -c 'import sys; n, t0, t1 = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]); print(f"{n / (t1 - t0):.0f}")' "$N" "$t0" "$t1" > "$WORK/rate"
  echo "$mode $(cat "$WORK/rate")" >> "$WORK/results"
  printf '%-8s %8s msg/s end to end%s\n' "polling $mode" "$(cat "$WORK/rate")" "$polls"
}

echo "machine: $(nproc) cores, $(uname -r), $(load_avg); N=$N sessions=$SESSIONS size=$SIZE pairs=$PAIRS poll every ${INTERVAL_MS} ms"
: > "$WORK/results"
for i in $(seq "$PAIRS"); do
  echo "pair $i"
  run_one off
  run_one on
done
python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
off = [float(r) for m, r in rows if m == "off"]
on = [float(r) for m, r in rows if m == "on"]
pairs = [(a - b) / a * 100 for a, b in zip(off, on)]
mo, mn = statistics.median(off), statistics.median(on)
print(f"median without polling {mo:.0f} msg/s, with polling {mn:.0f} msg/s: cost {(mo - mn) / mo * 100:+.1f} %")
print("cost per pair: " + ", ".join(f"{c:+.1f} %" for c in pairs))
PY
