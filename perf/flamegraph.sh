#!/usr/bin/env bash
# Profile ringpost relaying a blaster load and render an SVG flamegraph.
#
#   perf/flamegraph.sh                 # writes perf/ringpost-relay.svg
#   N=100000 SESSIONS=50 perf/flamegraph.sh
#   FOLDED=/tmp/stacks.txt perf/flamegraph.sh   # also keep the collapsed stacks
#
# Needs Debian's linux-perf (`perf`) and inferno (`cargo install inferno`). Samples the
# cpu-clock software event (hardware counters are often unavailable in VMs) with DWARF call
# graphs, since release builds omit frame pointers.
set -euo pipefail
N=${N:-60000}
SESSIONS=${SESSIONS:-50}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/ringpost
BLASTER=$ROOT/target/release/blaster
OUT=${OUT:-$ROOT/perf/ringpost-relay.svg}
WORK=$(mktemp -d /tmp/flame.XXXXXX)
trap 'kill -9 ${RP:-} ${SINK:-} 2>/dev/null || true; rm -rf "$WORK"' EXIT
cat > "$WORK/rp.toml" <<TOML
[server]
listen = ["127.0.0.1:3125"]
max_connections_per_ip = 1000
[spool]
dir = "$WORK/spool"
[log]
delivery_log = "$WORK/delivery.jsonl"
[[route]]
domain = "*"
hosts = ["127.0.0.1:3126"]
TOML
"$BLASTER" sink --listen 127.0.0.1:3126 --exit-after "$N" > "$WORK/sink.txt" 2>/dev/null &
SINK=$!
"$BIN" --config "$WORK/rp.toml" 2>/dev/null &
RP=$!
sleep 1
perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$RP" -o "$WORK/perf.data" 2>/dev/null &
PERF=$!
sleep 0.5
"$BLASTER" send --to 127.0.0.1:3125 -n "$N" -c "$SESSIONS" -q
wait "$SINK" || true
kill -INT "$PERF"; wait "$PERF" || true
perf script -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf > "$WORK/folded"
[ -n "${FOLDED:-}" ] && cp "$WORK/folded" "$FOLDED"
inferno-flamegraph --title "ringpost relaying $N x 1 KiB (blaster, fsync on)" < "$WORK/folded" > "$OUT"
# A short text summary: the heaviest frames by self time.
awk '{n=$NF; $NF=""; split($0, f, ";"); leaf=f[length(f)]; self[leaf]+=n; total+=n} END {for (k in self) printf "%5.1f%% %s\n", 100*self[k]/total, k}' "$WORK/folded" | sort -rn | head -25
echo "flamegraph: $OUT"
