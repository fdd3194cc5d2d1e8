#!/usr/bin/env bash
# What watching ringpost costs: blaster send -> ringpost -> blaster sink (as bench/relay.sh),
# alternating runs without and with an operator polling every 100 ms — `ringctl status`,
# `ringctl queue` and a GET /metrics scrape — at least 3 pairs in the same sitting. Prints the
# end-to-end msg/s of each run, the medians, and the cost of polling in % (issue 10: <= 2 %).
#
#   bench/admin-poll.sh                          # 3 pairs of 20000 x 1 KiB, 50 sessions
#   PAIRS=5 N=50000 bench/admin-poll.sh
#   N=500 PAIRS=3 bench/admin-poll.sh            # a smoke run: proves the script, measures nothing
#   POLLER=every PAIRS=15 N=40000 bench/admin-poll.sh   # the poller keeps its connections
#   MODE=cpu RATE=3000 bench/admin-poll.sh       # one daemon at a steady open-loop rate: its CPU
#                                                # per second in windows without and with polling
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
  if [ "$POLL_PID" = watchers ]; then kill -TERM $WATCH_PIDS 2>/dev/null || true
  elif [ -n "$POLL_PID" ]; then kill -TERM "$POLL_PID" 2>/dev/null || true; fi
  stop_all
  rm -rf "$WORK"
}
trap cleanup EXIT

write_config ""
printf '[metrics]\nlisten = "127.0.0.1:%s"\n' "$METRICS_PORT" >> "$WORK/ringpost.toml"

# start_poller: every INTERVAL_MS, `ringctl status` and `ringctl queue` (and with SCRAPE=1 a GET
# /metrics), as a monitoring agent on the same host would (POLL_PID). A bash loop: it forks only
# the ringctl processes themselves, so the poller's own overhead is what ringctl costs. It counts
# its polls and failures and, on SIGTERM, writes "polls failures" to $WORK/polls.
start_poller() {
  RINGCTL=$RINGCTL SOCK=$WORK/admin.sock MPORT=$METRICS_PORT SCRAPE=${SCRAPE:-0} \
    INTERVAL_MS=$INTERVAL_MS OUT=$WORK/polls bash -c '
    polls=0 failures=0 stop=0
    trap "stop=1" TERM
    mkfifo "$OUT.tick"; exec 3<>"$OUT.tick"; rm -f "$OUT.tick"
    : > "$OUT.ready"
    t=${EPOCHREALTIME/./}; next=$((t / 1000))
    while [ $stop = 0 ]; do
      ok=1
      "$RINGCTL" --socket "$SOCK" status > /dev/null 2>&1 || ok=0
      "$RINGCTL" --socket "$SOCK" queue > /dev/null 2>&1 || ok=0
      if [ "$SCRAPE" = 1 ]; then
        exec 4<>/dev/tcp/127.0.0.1/$MPORT && printf "GET /metrics HTTP/1.0\r\n\r\n" >&4 &&
          grep -q ringpost_messages_received_total <&4 || ok=0
        exec 4>&-
      fi
      polls=$((polls + 1)); [ $ok = 1 ] || failures=$((failures + 1))
      next=$((next + INTERVAL_MS)); t=${EPOCHREALTIME/./}; now=$((t / 1000))
      wait_ms=$((next - now))
      # bash runs the TERM trap only once read returns: wait in slices of at most 100 ms.
      while [ $wait_ms -gt 0 ] && [ $stop = 0 ]; do
        slice=$((wait_ms < 100 ? wait_ms : 100))
        printf -v secs "0.%03d" "$slice"
        read -r -t "$secs" -u 3 || true
        wait_ms=$((wait_ms - slice))
      done
    done
    echo "$polls $failures" > "$OUT"' 2>"$WORK/poller.err" &
  POLL_PID=$!
  # Until its TERM trap is in, a stop would kill it before it reports.
  while [ ! -e "$WORK/polls.ready" ]; do sleep 0.02; done
}

# start_polling: the poller POLLER names (exec: a process per poll, the default; every: kept
# connections).
start_polling() {
  case "${POLLER:-exec}" in
    exec) start_poller ;;
    every) start_watchers ;;
    *) echo "POLLER must be exec or every"; exit 2 ;;
  esac
}

# start_watchers: POLLER=every — what a monitoring agent keeping a connection does: two
# long-lived `ringctl --every INTERVAL_MS` processes (status, queue), each over one kept
# connection. On stop their JSON lines are counted as polls.
start_watchers() {
  "$RINGCTL" --socket "$WORK/admin.sock" --json --every "${INTERVAL_MS}ms" status > "$WORK/watch.status" 2>>"$WORK/poller.err" &
  WATCH_PIDS="$!"
  "$RINGCTL" --socket "$WORK/admin.sock" --json --every "${INTERVAL_MS}ms" queue > "$WORK/watch.queue" 2>>"$WORK/poller.err" &
  WATCH_PIDS="$WATCH_PIDS $!"
  POLL_PID=watchers
}

stop_watchers() {
  local pid failures=0
  # shellcheck disable=SC2086
  kill -TERM $WATCH_PIDS
  for pid in $WATCH_PIDS; do wait "$pid" || failures=$((failures + 1)); done
  echo "$(( $(wc -l < "$WORK/watch.status") < $(wc -l < "$WORK/watch.queue") ? $(wc -l < "$WORK/watch.status") : $(wc -l < "$WORK/watch.queue") )) $failures" > "$WORK/polls"
  POLL_PID=
}

stop_poller() {
  if [ "$POLL_PID" = watchers ]; then stop_watchers; return; fi
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
  [ "$mode" = on ] && start_polling
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
  # ringpost's own CPU (user + system, clock ticks) for the whole run: a second measure of the
  # cost, less noisy than the rate because it does not depend on what else ran on the machine.
  local ticks
  ticks=$(awk '{print $14 + $15}' "/proc/$RP_PID/stat")
  stop_all
  python3 -c 'import sys; n, t0, t1 = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]); print(f"{n / (t1 - t0):.0f}")' "$N" "$t0" "$t1" > "$WORK/rate"
  local us_per_msg=$(( ticks * 1000000 / $(getconf CLK_TCK) / N ))
  echo "$mode $(cat "$WORK/rate") $us_per_msg" >> "$WORK/results"
  printf '%-8s %8s msg/s end to end, ringpost %4s us CPU/msg%s\n' "polling $mode" "$(cat "$WORK/rate")" "$us_per_msg" "$polls"
}

# cpu_windows: one ringpost under a steady open-loop load (RATE msg/s, about half of this
# machine's peak), alternating WINDOW_S-second windows without and with the poller; ringpost's
# CPU (user + system) is sampled at each window's edges. The load is the same in both kinds of
# window, so the difference in ringpost's CPU per second is what answering the polls costs the
# daemon, with far less noise than comparing throughput between separate runs.
cpu_windows() {
  rm -rf "$WORK/spool" "$WORK/delivery.jsonl"
  start_ringpost
  "$BLASTER" sink --listen 127.0.0.1:$SINK_PORT -q > /dev/null 2>&1 &
  local sink=$!
  sleep 0.5
  "$BLASTER" send --to 127.0.0.1:$RP_PORT --rate "$RATE" --duration $(( (2 * CPU_PAIRS + 2) * WINDOW_S ))s \
    -c "$SESSIONS" --size "$SIZE" --domains 1 -q --json > "$WORK/steady.json" &
  local send=$! tck i t0 t1 mode
  tck=$(getconf CLK_TCK)
  sleep "$WINDOW_S" # warm-up window, not counted
  : > "$WORK/cpu"
  for i in $(seq "$CPU_PAIRS"); do
    for mode in off on; do
      [ "$mode" = on ] && start_polling
      t0=$(awk '{print $14 + $15}' "/proc/$RP_PID/stat")
      sleep "$WINDOW_S"
      t1=$(awk '{print $14 + $15}' "/proc/$RP_PID/stat")
      if [ "$mode" = on ]; then
        stop_poller
        read -r p f < "$WORK/polls"
        [ "$f" = 0 ] && [ "$p" -gt 0 ] || { echo "window $i: $f of $p polls failed"; cat "$WORK/poller.err"; exit 1; }
        rm -f "$WORK/polls" "$WORK/polls.ready"
      fi
      echo "$mode $(( (t1 - t0) * 1000 / tck / WINDOW_S ))" >> "$WORK/cpu"
    done
  done
  wait "$send" || { echo "the sender failed: the offered load was not steady"; exit 1; }
  kill "$sink" 2>/dev/null || true
  stop_all
  python3 - "$WORK/cpu" "$RATE" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
off = [int(v) for m, v in rows if m == "off"]
on = [int(v) for m, v in rows if m == "on"]
print("ringpost CPU ms/s without polling: " + " ".join(map(str, off)))
print("ringpost CPU ms/s with polling:    " + " ".join(map(str, on)))
mo, mn = statistics.median(off), statistics.median(on)
print(f"at {sys.argv[2]} msg/s: median {mo} ms/s without, {mn} ms/s with polling: "
      f"the daemon spends {(mn - mo) / mo * 100:+.1f} % more CPU while polled")
PY
}

if [ "${MODE:-rate}" = cpu ]; then
  RATE=${RATE:-3000}
  CPU_PAIRS=${CPU_PAIRS:-6}
  WINDOW_S=${WINDOW_S:-10}
  echo "machine: $(nproc) cores, $(uname -r), $(load_avg); open loop $RATE msg/s, $CPU_PAIRS pairs of ${WINDOW_S} s windows, poll every ${INTERVAL_MS} ms, poller ${POLLER:-exec}"
  cpu_windows
  exit 0
fi

echo "machine: $(nproc) cores, $(uname -r), $(load_avg); N=$N sessions=$SESSIONS size=$SIZE pairs=$PAIRS poll every ${INTERVAL_MS} ms, poller ${POLLER:-exec}"
: > "$WORK/results"
for i in $(seq "$PAIRS"); do
  echo "pair $i"
  run_one off
  run_one on
done
python3 - "$WORK/results" <<'PY'
import random, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
off = [(float(r), float(c)) for m, r, c in rows if m == "off"]
on = [(float(r), float(c)) for m, r, c in rows if m == "on"]
rate_cost = [(a[0] - b[0]) / a[0] * 100 for a, b in zip(off, on)]
cpu_cost = [(b[1] - a[1]) / a[1] * 100 for a, b in zip(off, on)]
def ci(xs):
    # 95 % bootstrap interval of the median: how far the noise of this sitting lets us see.
    rnd = random.Random(1)
    meds = sorted(statistics.median(rnd.choices(xs, k=len(xs))) for _ in range(2000))
    return meds[50], meds[1949]
mo, mn = statistics.median(r for r, _ in off), statistics.median(r for r, _ in on)
print(f"median without polling {mo:.0f} msg/s, with polling {mn:.0f} msg/s")
lo, hi = ci(rate_cost)
print(f"throughput cost, median of pairs: {statistics.median(rate_cost):+.1f} % (95 % CI {lo:+.1f} .. {hi:+.1f})")
lo, hi = ci(cpu_cost)
print(f"ringpost CPU per message, median of pairs: {statistics.median(cpu_cost):+.1f} % (95 % CI {lo:+.1f} .. {hi:+.1f})")
print("throughput cost per pair: " + ", ".join(f"{c:+.1f}" for c in rate_cost))
print("CPU/msg cost per pair:    " + ", ".join(f"{c:+.1f}" for c in cpu_cost))
PY
