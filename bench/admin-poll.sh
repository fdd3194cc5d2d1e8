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
#   MODE=windows RATE_PAIRS=30 bench/admin-poll.sh   # one daemon at full closed-loop load: msg/s
#                                                # in alternating windows without and with polling
#   MODE=interleave PAIRS_I=200 bench/admin-poll.sh  # the same with one poller frozen/thawed in
#                                                # adjacent 2 s blocks (issue 10's figure)
#   MODE=interleave AA=1 PAIRS_I=200 bench/admin-poll.sh  # its noise floor: poller always frozen
#   KEEP=/tmp/run1 MODE=interleave ...            # also keep the raw blocks and counts there
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
  # stopped watchers keep a TERM pending: thaw them so they can exit
  if [ "$POLL_PID" = watchers ]; then kill -CONT $WATCH_PIDS 2>/dev/null || true; fi
  if [ -n "${SEND_PID:-}" ]; then kill -TERM "$SEND_PID" 2>/dev/null || true; fi
  stop_all
  rm -rf "$WORK" ${SPOOL_DIR:+"$SPOOL_DIR"}
}
trap cleanup EXIT

# SPOOL_DIR=DIR puts the spool in a fresh directory of this script's own inside DIR (e.g. a
# tmpfs), removed at the end; nothing else in DIR is touched.
if [ -n "${SPOOL_DIR:-}" ]; then SPOOL_DIR=$(mktemp -d "$SPOOL_DIR/adminpoll-spool.XXXXXX"); fi
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

# poller_ticks: CPU (user + system, clock ticks) the running poller used so far: the two
# watchers' own, or the bash loop's with every ringctl it ran and waited for (cutime, cstime).
poller_ticks() {
  local pid sum=0
  if [ "$POLL_PID" = watchers ]; then
    for pid in $WATCH_PIDS; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
  else
    sum=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$POLL_PID/stat")
  fi
  echo "$sum"
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
  rm -rf "${SPOOL_DIR:-$WORK/spool}" "$WORK/delivery.jsonl" "$WORK/polls" "$WORK/polls.ready"
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
  rm -rf "${SPOOL_DIR:-$WORK/spool}" "$WORK/delivery.jsonl"
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
      local pt=0
      if [ "$mode" = on ]; then
        pt=$(poller_ticks)
        stop_poller
        read -r p f < "$WORK/polls"
        [ "$f" = 0 ] && [ "$p" -gt 0 ] || { echo "window $i: $f of $p polls failed"; cat "$WORK/poller.err"; exit 1; }
        rm -f "$WORK/polls" "$WORK/polls.ready"
      fi
      echo "$mode $(( (t1 - t0) * 1000 / tck / WINDOW_S )) $(( pt * 1000 / tck / WINDOW_S ))" >> "$WORK/cpu"
    done
  done
  wait "$send" || { echo "the sender failed: the offered load was not steady"; exit 1; }
  kill "$sink" 2>/dev/null || true
  stop_all
  python3 - "$WORK/cpu" "$RATE" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
off = [int(v) for m, v, _ in rows if m == "off"]
on = [int(v) for m, v, _ in rows if m == "on"]
pollers = [int(p) for m, _, p in rows if m == "on"]
print("ringpost CPU ms/s without polling: " + " ".join(map(str, off)))
print("ringpost CPU ms/s with polling:    " + " ".join(map(str, on)))
print("the pollers' own CPU ms/s:         " + " ".join(map(str, pollers)))
mo, mn, mp = statistics.median(off), statistics.median(on), statistics.median(pollers)
print(f"at {sys.argv[2]} msg/s: median {mo} ms/s without, {mn} ms/s with polling: "
      f"the daemon spends {(mn - mo) / mo * 100:+.1f} % more CPU while polled")
# What polling takes from a CPU-bound relay: the daemon's extra CPU plus the pollers' own, as
# a share of the machine (every core's 1000 ms/s).
cores = __import__("os").cpu_count()
print(f"polling takes {mn - mo + mp:+.0f} ms/s of the machine's {cores * 1000} ms/s: "
      f"{(mn - mo + mp) / (cores * 1000) * 100:+.2f} %")
PY
}

# rate_windows: one ringpost under blaster's closed-loop load (as fast as it goes) for the
# whole sitting, alternating WINDOW_S-second windows without and with the poller, in ABBA order
# (off on, on off, ...) so a trend hits both modes alike. The rate of a window is what the sink
# received in the whole seconds inside it, the first second after each switch left out. Each
# pair of adjacent windows gives one cost; the median of the pairs and its 95 % bootstrap
# interval are printed. One daemon, one load, one sitting: no start-up, spool or page-cache
# differences between the two modes, which is what made separate runs vary by ±4 %.
rate_windows() {
  rm -rf "${SPOOL_DIR:-$WORK/spool}" "$WORK/delivery.jsonl"
  local total=$(( (2 * RATE_PAIRS + 1) * WINDOW_S ))
  start_ringpost
  "$BLASTER" sink --listen 127.0.0.1:$SINK_PORT --duration $((total + 10))s --json > "$WORK/sink.json" 2>/dev/null &
  local sink=$!
  sleep 0.5
  "$BLASTER" send --to 127.0.0.1:$RP_PORT --duration ${total}s \
    -c "$SESSIONS" --size "$SIZE" --domains 1 -q --json > "$WORK/send.json" &
  local send=$! i mode order
  sleep "$WINDOW_S" # warm-up window, not counted
  : > "$WORK/windows"
  for i in $(seq "$RATE_PAIRS"); do
    if [ $((i % 2)) = 1 ]; then order="off on"; else order="on off"; fi
    for mode in $order; do
      [ "$mode" = on ] && start_polling
      echo "$i $mode $EPOCHREALTIME" >> "$WORK/windows"
      sleep "$WINDOW_S"
      echo "$i $mode-end $EPOCHREALTIME" >> "$WORK/windows"
      if [ "$mode" = on ]; then
        stop_poller
        read -r p f < "$WORK/polls"
        [ "$f" = 0 ] && [ "$p" -gt 0 ] || { echo "window $i: $f of $p polls failed"; cat "$WORK/poller.err"; exit 1; }
        echo "$i polls $p" >> "$WORK/windows"
        rm -f "$WORK/polls" "$WORK/polls.ready"
      fi
    done
  done
  wait "$send" || { echo "the sender failed"; exit 1; }
  kill -INT "$sink" 2>/dev/null || true
  wait "$sink" || true
  stop_all
  python3 - "$WORK/windows" "$WORK/sink.json" "$INTERVAL_MS" <<'PY'
import json, math, random, statistics, sys
sink = json.load(open(sys.argv[2]))
per_s = {}
for src in sink["sources"].values():
    for sec, n in src["per_second"].items():
        per_s[int(sec)] = per_s.get(int(sec), 0) + n
win, polls = {}, {}
for line in open(sys.argv[1]):
    i, what, v = line.split()
    if what == "polls":
        polls[int(i)] = int(v)
        continue
    mode, edge = (what[:-4], "end") if what.endswith("-end") else (what, "start")
    win.setdefault((int(i), mode), {})[edge] = float(v)
def rate(w):
    # whole seconds inside the window, the first one after the switch left out
    secs = range(math.floor(w["start"]) + 2, math.floor(w["end"]))
    return sum(per_s.get(s, 0) for s in secs) / len(secs)
pairs = sorted({i for i, _ in win})
off = [rate(win[(i, "off")]) for i in pairs]
on = [rate(win[(i, "on")]) for i in pairs]
cost = [(a - b) / a * 100 for a, b in zip(off, on)]
rnd = random.Random(1)
meds = sorted(statistics.median(rnd.choices(cost, k=len(cost))) for _ in range(4000))
print("msg/s without polling: " + " ".join(f"{x:.0f}" for x in off))
print("msg/s with polling:    " + " ".join(f"{x:.0f}" for x in on))
print(f"polls per window (status + queue every {sys.argv[3]} ms): {min(polls.values())}..{max(polls.values())}")
print(f"median {statistics.median(off):.0f} msg/s without, {statistics.median(on):.0f} with; "
      f"throughput cost, median of {len(cost)} pairs: {statistics.median(cost):+.2f} % "
      f"(95 % CI {meds[100]:+.2f} .. {meds[3899]:+.2f}); mean {statistics.mean(cost):+.2f} %")
PY
}

# interleave: one ringpost under blaster's closed-loop load for the whole sitting, and one
# poller (two `ringctl --every` processes, status and queue; POLLER=every only) that runs for
# the whole sitting too but is frozen (SIGSTOP) in the "off" blocks and thawed (SIGCONT) in the
# "on" ones. Blocks last BLOCK_S whole wall-clock seconds and come in ABBA
# order, so each pair is two adjacent blocks. Why: this VM's fsync latency moves full-load
# throughput in steps of ±25 % that last tens of seconds; 6 s windows with a poller started and
# stopped each time could only bound the cost to about ±5 %. Adjacent 2 s blocks share the
# machine's state, toggling costs nothing, and a sitting holds hundreds of pairs. The rate of a
# block is what the sink received in its seconds (the sink's --count-log: its total at every
# whole wall-clock second). AA=1 keeps the poller frozen in every block: the method's noise floor,
# which must come out near 0.
interleave() {
  rm -rf "${SPOOL_DIR:-$WORK/spool}" "$WORK/delivery.jsonl"
  # The sender gets far more time than the blocks need and is stopped after the last block:
  # blocks measured after the load ended would measure the queue draining instead.
  local total=$(( (2 * PAIRS_I * BLOCK_S) * 2 + 60 ))
  start_ringpost
  "$BLASTER" sink --listen 127.0.0.1:$SINK_PORT --count-log "$WORK/counts" > /dev/null 2>&1 &
  local sink=$!
  SINK_PID=$sink
  sleep 0.5
  "$BLASTER" send --to 127.0.0.1:$RP_PORT --duration ${total}s \
    -c "$SESSIONS" --size "$SIZE" --domains 1 -q --json > "$WORK/send.json" &
  local send=$! i mode order pids now start
  SEND_PID=$send
  start_polling
  if [ "$POLL_PID" = watchers ]; then
    pids=$WATCH_PIDS
    # frozen only once both have answered: a process stopped before it opened its output or
    # connected would hold nothing the blocks could count
    for _ in $(seq 100); do
      [ -s "$WORK/watch.status" ] && [ -s "$WORK/watch.queue" ] && break
      sleep 0.05
    done
  else pids=$POLL_PID; fi
  # shellcheck disable=SC2086
  kill -STOP $pids
  sleep 2 # warm-up, not counted
  : > "$WORK/blocks"
  for i in $(seq "$PAIRS_I"); do
    if [ $((i % 2)) = 1 ]; then order="off on"; else order="on off"; fi
    for mode in $order; do
      # start each block on a whole second, so it owns whole sink seconds
      now=${EPOCHREALTIME/./}; start=$(( now / 1000000 + 1 ))
      sleep "0.$(printf '%06d' $(( (start * 1000000 - now) % 1000000 )))"
      echo "$i $mode $start $(polls_so_far)" >> "$WORK/blocks"
      # shellcheck disable=SC2086
      if [ "$mode" = on ] && [ "${AA:-0}" != 1 ]; then kill -CONT $pids; fi
      sleep $((BLOCK_S - 1)).9
      # shellcheck disable=SC2086
      [ "$mode" = on ] && kill -STOP $pids
    done
  done
  echo "end - 0 $(polls_so_far)" >> "$WORK/blocks"
  kill -0 "$send" 2>/dev/null || { echo "the sender ended before the last block: the load was not steady"; exit 1; }
  kill -TERM "$send"
  # shellcheck disable=SC2086
  kill -CONT $pids
  stop_poller
  read -r p f < "$WORK/polls"
  [ "$f" = 0 ] || { echo "$f of $p polls failed"; cat "$WORK/poller.err"; exit 1; }
  wait "$send" || { echo "the sender failed"; exit 1; }
  SEND_PID=
  # The counts come from the sink's count log (a line per whole second, written by a thread of
  # its own), so the sink's final report is not needed: a long run twice left its executors
  # parked for good after the load stopped, which matches a bug of the published glommio 0.9.0
  # (an executor preempted before it ran anything parked, runnable tasks and all), fixed in
  # vendor/glommio since.
  sleep 1.5
  kill -TERM "$sink" 2>/dev/null || true
  timeout 10 tail --pid="$sink" -f /dev/null || kill -9 "$sink" 2>/dev/null || true
  wait "$sink" 2>/dev/null || true
  stop_all
  # keep the raw data (block edges and poll counts, the sink's counts) for a second look
  if [ -n "${KEEP:-}" ]; then cp "$WORK/blocks" "$KEEP.blocks"; cp "$WORK/counts" "$KEEP.counts"; fi
  # several sittings kept with KEEP= can be pooled: bench/lib/interleave_stats.py BLOCK_S INTERVAL_MS AA B1 C1 B2 C2 ...
  python3 "$ROOT/bench/lib/interleave_stats.py" "$BLOCK_S" "$INTERVAL_MS" "${AA:-0}" "$WORK/blocks" "$WORK/counts"
}

# polls_so_far: replies the poller has produced so far (the fewer of the status and queue
# watchers' JSON lines).
polls_so_far() {
  if [ "$POLL_PID" = watchers ]; then
    local a b
    a=$(wc -l < "$WORK/watch.status"); b=$(wc -l < "$WORK/watch.queue")
    echo $((a < b ? a : b))
  else echo 0; fi
}

if [ "${MODE:-rate}" = interleave ]; then
  PAIRS_I=${PAIRS_I:-200}
  BLOCK_S=${BLOCK_S:-2}
  POLLER=${POLLER:-every}
  # a frozen process-per-poll loop cannot be counted per block, and SIGSTOP does not reach a
  # ringctl it already started
  [ "$POLLER" = every ] || { echo "MODE=interleave needs POLLER=every"; exit 2; }
  echo "machine: $(nproc) cores, $(uname -r), $(load_avg); closed loop, $SESSIONS sessions, $PAIRS_I ABBA pairs of ${BLOCK_S} s blocks, poll every ${INTERVAL_MS} ms, poller $POLLER"
  interleave
  exit 0
fi

if [ "${MODE:-rate}" = windows ]; then
  RATE_PAIRS=${RATE_PAIRS:-30}
  WINDOW_S=${WINDOW_S:-6}
  echo "machine: $(nproc) cores, $(uname -r), $(load_avg); closed loop, $SESSIONS sessions, $RATE_PAIRS pairs of ${WINDOW_S} s windows, poll every ${INTERVAL_MS} ms, poller ${POLLER:-exec}"
  rate_windows
  exit 0
fi

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
