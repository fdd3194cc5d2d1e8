#!/usr/bin/env bash
# Shaping cost: relay throughput with 1,000 sites and 4 egress sources under the shipped
# shaping defaults (config/shaping-defaults.toml), against the single-route figure (one
# static route for every domain, no sources, no shaping), alternating, same sitting.
#
# The 1,000 sites are 1,000 domains (d0.test .. d999.test, blaster's --domains 1000), each
# with a static route to its own loopback address (127.1.x.y), all served by one blaster sink
# listening on 0.0.0.0; the 4 sources bind 127.0.0.2 .. 127.0.0.5 in a pool of equal weights.
# The single-route run sends the same workload (the same 1,000 domains) to one route.
#
#   bench/shaping.sh                  # N=20000 x 1 KiB, 2 rounds of each
#   N=2000 ROUNDS=1 bench/shaping.sh  # a tiny run to check it works
#   N=200000 MODES="single shaped" bench/shaping.sh   # long enough for connections to be reused
#   SITES_DELIVERY="max_connections_total = 500" ...  # [delivery] lines for the sites/shaped runs
#   PERF_STAT=1 ...                   # count syscalls, switches, io_uring submissions per message
#   PERF=10 ...                       # perf record -g the daemon for 10 s from 5 s into each run
#                                     # (reports in $PERF_DIR, default /tmp, as perf-MODE-ROUND.data)
#
# At the end: each mode against single, round by round, their median and the ratio of mean
# rates. Besides the rates, each run prints what a message cost: the daemon's CPU (user + system from
# /proc/PID/stat, whole run), the sink's CPU (the same host's receiving side, which shares the
# two cores here and which remote receivers would pay in a real deployment) and the
# connections the sink accepted and the TCP segments sent (all TCP in the network namespace:
# injection, delivery, handshakes, pure ACKs), each divided by the messages.
set -euo pipefail
N=${N:-20000}
ROUNDS=${ROUNDS:-2}
SESSIONS=${SESSIONS:-50}
SITES=${SITES:-1000}
MODES=${MODES:-single sites shaped}
# PERF_STAT=1: count these events in the daemon from the load's start to the sink's last
# message (perf stat), printed per message: counts, unlike rates, do not move with the machine.
PERF_STAT_EVENTS=${PERF_STAT_EVENTS:-task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_sendmsg,syscalls:sys_enter_recvfrom,syscalls:sys_enter_membarrier,io_uring:io_uring_submit_req,irq:softirq_entry}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/shapingbench.XXXXXX)
RP_PORT=${RP_PORT:-2731}
SINK_PORT=${SINK_PORT:-2931}
. "$ROOT/bench/lib/ringpost.sh"
trap 'stop_all; rm -rf "$WORK"' EXIT

# config MODE: single (one route), sites1 (1,000 routes, the host's own address, no shaping),
# sites (1,000 routes, 4 sources, no shaping limits or rules)
# or shaped (the same plus the shipped shaping defaults). sites vs single is what 1,000
# destinations cost any MTA (a connection per site and source); shaped vs sites is what
# shaping itself costs.
config() {
  rm -rf "$WORK/spool" "$WORK"/delivery.jsonl*
  local routes="" extra_delivery="" sources=""
  if [ "$1" != single ]; then
    [ "$1" = shaped ] && extra_delivery="shaping = \"$ROOT/config/shaping-defaults.toml\""
    extra_delivery+=$'\n'"${SITES_DELIVERY:-}"
    [ "$1" = sites1 ] || for i in 2 3 4 5; do sources+="[[source]]
name = \"ip$i\"
bind = \"127.0.0.$i\"
ehlo = \"mta$i.bench.test\"
"; done
    [ "$1" = sites1 ] || sources+='[[pool]]
name = "default"
sources = { ip2 = 1, ip3 = 1, ip4 = 1, ip5 = 1 }
'
    for ((i = 0; i < SITES; i++)); do routes+="[[route]]
domain = \"d$i.test\"
hosts = [\"127.1.$((i / 250)).$((i % 250 + 1)):$SINK_PORT\"]
"; done
  fi
  # bench/lib's config (relay.sh's shipped defaults) with the sources and routes added.
  DELIVERY_EXTRA="$extra_delivery" EXTRA_ROUTES="$sources$routes" write_config ""
}

# run MODE: inject N messages over the 1,000 domains; the end-to-end rate is N over the time
# from the first injection to the sink's N-th message.
run() {
  config "$1"
  "$BLASTER" sink --listen 0.0.0.0:$SINK_PORT --exit-after "$N" --json > "$WORK/sink.json" 2>/dev/null &
  SINK_PID=$!
  sleep 0.3
  start_ringpost
  local t0 t1 cpu0 cpu1 sink0 sink1 segs0 segs1 dack0 dack1 perf_pid=
  cpu0=$(cpu_ticks "$RP_PID")
  sink0=$(cpu_ticks "$SINK_PID")
  if [ -n "${PERF:-}" ]; then
    (sleep 5; exec perf record -q -g -p "$RP_PID" -o "${PERF_DIR:-/tmp}/perf-$1-$ROUND.data" -- sleep "$PERF") > /dev/null 2>&1 &
    perf_pid=$!
  fi
  if [ -n "${PERF_STAT:-}" ]; then
    perf stat -x, -o "$WORK/perfstat" -e "$PERF_STAT_EVENTS" -p "$RP_PID" > /dev/null 2>&1 &
    perf_pid=$!
  fi
  segs0=$(tcp_segments)
  dack0=$(delayed_acks)
  t0=$(date +%s.%N)
  "$BLASTER" send --to 127.0.0.1:$RP_PORT -n "$N" -c "$SESSIONS" --domains "$SITES" -q --json > "$WORK/send.json"
  # The sink's CPU just before it exits after the N-th message: what the same host's
  # receiving side cost, which a real deployment's remote receivers would not. Polled, so up
  # to 10 ms of it may go uncounted and 10 ms be added to the end time.
  sink1=$sink0
  while kill -0 "$SINK_PID" 2>/dev/null && sink1=$(cpu_ticks "$SINK_PID" 2>/dev/null || echo "$sink1"); do sleep 0.01; done
  wait "$SINK_PID" || true
  t1=$(date +%s.%N)
  segs1=$(tcp_segments)
  dack1=$(delayed_acks)
  cpu1=$(cpu_ticks "$RP_PID")
  if [ -n "${PERF_STAT:-}" ]; then
    kill -INT "$perf_pid" 2>/dev/null || true
  fi
  [ -n "$perf_pid" ] && { wait "$perf_pid" || true; }
  if [ -n "${PERF_STAT:-}" ]; then
    awk -F, -v n="$N" -v mode="$1" '/^[0-9]/ {printf "%-7s %10.3f/msg %s\n", mode, $1 / n, $3}' "$WORK/perfstat"
  fi
  SINK_PID=
  stop_all
  python3 - "$1" "$t0" "$t1" "$N" "$WORK/send.json" "$WORK/sink.json" "$((cpu1 - cpu0))" "$(getconf CLK_TCK)" "$((sink1 - sink0))" "$WORK/rates" "$ROUND" "$((segs1 - segs0))" "$((dack1 - dack0))" <<'PY'
import json, sys
mode, t0, t1, n = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
send, sink = json.load(open(sys.argv[5])), json.load(open(sys.argv[6]))
cpu_s = int(sys.argv[7]) / int(sys.argv[8])
sink_s = int(sys.argv[9]) / int(sys.argv[8])
srcs = ", ".join(f"{ip} {s['messages']}" for ip, s in sorted(sink["sources"].items()))
with open(sys.argv[10], "a") as f:
    f.write(f"{sys.argv[11]} {mode} {n / (t1 - t0):.1f}\n")
print(f"{mode:7s} injected {send['msgs_per_s']:8.0f}/s  end-to-end {n / (t1 - t0):8.0f}/s  "
      f"received {sink['received']}  daemon CPU {cpu_s * 1e6 / n:6.1f} us/msg  sink CPU {sink_s * 1e6 / n:6.1f} us/msg  "
      f"conns/msg {sink['connections'] / max(sink['received'], 1):.4f} ({sink['connections']})  "
      f"tcp segments/msg {int(sys.argv[12]) / n:.2f} (delayed ACKs {int(sys.argv[13]) / n:.2f})  "
      f"peak conns {sink['peak_connections']}  sources: {srcs}")
PY
}

# cpu_ticks PID: user+system clock ticks the process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# tcp_segments: TCP segments sent so far in this network namespace (/proc/net/snmp OutSegs:
# all its TCP, not only the benchmark's; on loopback each is also received once). Injection,
# delivery, connection setup, pure ACKs: all of it.
tcp_segments() { awk '$1 == "Tcp:" && $12 ~ /^[0-9]+$/ {print $12}' /proc/net/snmp; }

# delayed_acks: ACKs this host has sent on its delayed-ACK timer so far (TcpExtDelayedACKs):
# pure ACK segments for data nothing answered within the timer.
delayed_acks() { awk '$1 == "TcpExt:" { if (!h) { for (i = 2; i <= NF; i++) if ($i == "DelayedACKs") c = i; h = 1 } else print $c }' /proc/net/netstat; }

raise_fd_limit
echo "machine: $(nproc) cores, $(uname -r); N=$N x 1 KiB, $SITES domains, $ROUNDS rounds; $(load_avg)"
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
  for mode in $MODES; do run "$mode"; done
  echo "  after round $ROUND: $(load_avg)"
done
# Each mode against single, round by round (runs next to each other share the machine's
# mood, which moves rates by tens of per cent between minutes here), and the median of those
# ratios next to the ratio of mean rates.
[ -s "$WORK/rates" ] || exit 0
python3 - "$WORK/rates" <<'PY'
import statistics, sys
by_round = {}
for line in open(sys.argv[1]):
    rnd, mode, rate = line.split()
    by_round.setdefault(rnd, {})[mode] = float(rate)
rounds = list(by_round.values())
for mode in sorted({m for r in rounds for m in r} - {"single"}):
    pairs = [(r["single"], r[mode]) for r in rounds if "single" in r and mode in r]
    if not pairs:
        continue
    ratios = [b / a - 1 for a, b in pairs]
    mean_ratio = statistics.mean(b for _, b in pairs) / statistics.mean(a for a, _ in pairs) - 1
    print(f"{mode} vs single, {len(pairs)} rounds: " + " / ".join(f"{x:+.1%}" for x in ratios)
          + f"; median {statistics.median(ratios):+.1%}, mean rates {mean_ratio:+.1%}")
PY
