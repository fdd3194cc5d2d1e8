#!/usr/bin/env bash
# 10,000 concurrent idle inbound sessions against ringpost (each greeted, EHLO answered, held),
# while a probe on a fresh source address measures that new sessions still get EHLO answered
# promptly. Prints probe EHLO latency p50/p99 before and with the 10k, ringpost's RSS before and
# with them, and the 421 an over-the-limit connection gets.
#
#   bench/connections-10k.sh                 # N=10000, 50 per source address over 127.0.0.2..201
#   N=2000 PER_IP=50 HOLD=30 bench/connections-10k.sh
#
# Per-IP limit: max_connections_per_ip stays at PER_IP (default 50, ringpost's default) and the
# held sessions come from exactly PER_IP per address, so the 10k sit at the exact limit of every
# address. max_connections_per_core is raised to N (SO_REUSEPORT spreads unevenly over cores).
set -euo pipefail
N=${N:-10000}
PER_IP=${PER_IP:-50}
HOLD=${HOLD:-10}
PROBES=${PROBES:-200}
RP_PER_IP=${RP_PER_IP:-$PER_IP}  # ringpost's limit; RP_PER_IP=49 must make exactly one session per address fail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/conn10k.XXXXXX)
RP_PORT=${RP_PORT:-2726}
SINK_PORT=${SINK_PORT:-2926}
. "$ROOT/bench/lib/ringpost.sh"
trap 'stop_all; [ "${KEEP:-0}" = 1 ] && echo "kept $WORK" || rm -rf "$WORK"' EXIT

raise_fd_limit
echo "machine: $(nproc) cores, $(uname -r); fd limit $(ulimit -n); N=$N per_ip=$PER_IP; $(load_avg)"
write_config "max_connections_per_core = $N
max_connections_per_ip = $RP_PER_IP"
start_ringpost
rc=0
python3 "$PY/hold_conns.py" --port "$RP_PORT" --pid "$RP_PID" -n "$N" --per-ip "$PER_IP" --hold "$HOLD" --probes "$PROBES" || rc=$?
echo "after: $(load_avg)"
[ "$rc" = 0 ] && echo "verdict: PASS (all $N held to the end, probe answered)" || echo "verdict: FAIL (see above)"
exit "$rc"
