#!/usr/bin/env bash
# What a connection per message costs ringpost, counted rather than sampled: smtp-source ->
# ringpost (shipped defaults, fsync on) -> smtp-sink, with perf attached to ringpost only.
#
#   N=10000 perf/conn-syscalls.sh               # rate, CPU per message, syscalls and io_uring submissions per message
#   MODE=uring N=5000 perf/conn-syscalls.sh     # io_uring submissions per message by opcode
#   MODE=strace N=5000 perf/conn-syscalls.sh    # strace -c -f (slow: counts only)
#   CORES=1 perf/conn-syscalls.sh               # [engine] cores (the same variable as bench/lib/ringpost.sh)
#
# Needs Debian's linux-perf and postfix (smtp-source, smtp-sink). Run under the benchmark lock.
set -euo pipefail
N=${N:-20000}; SESSIONS=${SESSIONS:-50}; MODE=${MODE:-stat}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/meas.XXXXXX)
RP_PORT=${RP_PORT:-3135} SINK_PORT=${SINK_PORT:-3136}
. "$ROOT/bench/lib/ringpost.sh"
trap 'kill -9 ${RP_PID:-} ${SINK:-} 2>/dev/null || true; rm -rf "$WORK"' EXIT
write_config "${EXTRA:-}"
smtp-sink -u postfix -M "$N" 127.0.0.1:$SINK_PORT 2048 &
SINK=$!
start_ringpost
cpu0=$(awk '{print $14, $15}' "/proc/$RP_PID/stat")
case $MODE in
  stat) perf stat -e 'raw_syscalls:sys_enter,syscalls:sys_enter_sendmsg,syscalls:sys_enter_recvfrom,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_fcntl,syscalls:sys_enter_membarrier,syscalls:sys_enter_shutdown,syscalls:sys_enter_accept,syscalls:sys_enter_accept4,syscalls:sys_enter_getpeername,syscalls:sys_enter_setsockopt,syscalls:sys_enter_close,io_uring:io_uring_submit_req,context-switches' -p "$RP_PID" -o "$WORK/stat.txt" & ;;
  uring) perf record -e io_uring:io_uring_submit_req -p "$RP_PID" -o "$WORK/perf.data" 2>/dev/null & ;;
  strace) strace -c -f -p "$RP_PID" -o "$WORK/strace.txt" & ;;
esac
PERF=$!
sleep 0.5
segs() { awk '/^Tcp:/ {if (h) print $12; h=1}' /proc/net/snmp; }
seg0=$(segs)
t0=$(date +%s.%N)
smtp-source -s "$SESSIONS" -m "$N" -l 1024 -f a@b.test -t r@example.org 127.0.0.1:$RP_PORT
t1=$(date +%s.%N)
wait "$SINK" || true
t2=$(date +%s.%N)
cpu1=$(awk '{print $14, $15}' "/proc/$RP_PID/stat")
seg1=$(segs)
kill -INT "$PERF"; wait "$PERF" || true
python3 - "$N" "$(getconf CLK_TCK)" $cpu0 $cpu1 $t0 $t1 $t2 <<'PY'
import sys
n, hz, u0, s0, u1, s1 = int(sys.argv[1]), int(sys.argv[2]), *map(int, sys.argv[3:7])
t0,t1,t2 = map(float, sys.argv[7:10])
user, sys_ = (u1 - u0) / hz, (s1 - s0) / hz
print(f"injection {n/(t1-t0):.0f} msg/s, end to end {n/(t2-t0):.0f} msg/s; ringpost CPU {user + sys_:.1f} s = {1e6 * (user + sys_) / n:.0f} us/message, {100 * sys_ / max(user + sys_, 1e-9):.0f} % kernel")
PY
echo "TCP segments sent on the host (both ends, loopback): $(awk -v a="$seg0" -v b="$seg1" -v n="$N" 'BEGIN {printf "%.2f", (b - a) / n}')/msg"
case $MODE in
  stat) awk -v n=$N '/^ *[0-9,]+ +[a-z_:-]+/ {gsub(",","",$1); printf "%8.2f/msg %s\n", $1/n, $2}' "$WORK/stat.txt" ;;
  uring) perf script -i "$WORK/perf.data" 2>/dev/null | grep -o 'opcode [A-Z_]*' | sort | uniq -c | awk -v n=$N '{printf "%8.2f/msg %s\n", $1/n, $3}' ;;
  strace) head -30 "$WORK/strace.txt" ;;
esac
