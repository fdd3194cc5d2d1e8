#!/usr/bin/env bash
# Profile ringpost relaying a load with its shipped defaults and render an SVG flamegraph.
#
#   perf/flamegraph.sh                         # blaster (BDAT) -> ringpost -> blaster sink: perf/ringpost-relay.svg
#   LOAD=smtp-source perf/flamegraph.sh        # smtp-source (a connection per message) -> ringpost -> smtp-sink
#   DKIM=rsa perf/flamegraph.sh                # blaster load, ringpost signing with RSA-2048
#   N=100000 SESSIONS=50 OUT=/tmp/x.svg perf/flamegraph.sh
#   FOLDED=/tmp/stacks.txt perf/flamegraph.sh  # also keep the collapsed stacks
#
# The default output name says the workload: ringpost-relay.svg, ringpost-smtp-source.svg,
# ringpost-dkim-rsa.svg. Needs Debian's linux-perf (`perf`), the `postfix` package for
# LOAD=smtp-source, and inferno (`cargo install inferno`). Samples the cpu-clock software event
# (hardware counters are often unavailable in VMs) with DWARF call graphs, since release builds
# omit frame pointers. Also prints ringpost's CPU time per message and its kernel share.
set -euo pipefail
N=${N:-60000}
SESSIONS=${SESSIONS:-50}
LOAD=${LOAD:-blaster}
DKIM=${DKIM:-off}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
case "$LOAD/$DKIM" in
  blaster/off) NAME=relay ;;
  smtp-source/off) NAME=smtp-source ;;
  */rsa) NAME=dkim-rsa ;;
  *) echo "LOAD must be blaster or smtp-source, DKIM off or rsa" >&2; exit 2 ;;
esac
OUT=${OUT:-$ROOT/perf/ringpost-$NAME.svg}
WORK=$(mktemp -d /tmp/flame.XXXXXX)
RP_PORT=3125 SINK_PORT=3126
# shellcheck source=../bench/lib/ringpost.sh
. "$ROOT/bench/lib/ringpost.sh"
trap 'kill -9 ${RP_PID:-} ${SINK:-} 2>/dev/null || true; rm -rf "$WORK"' EXIT
write_config ""
if [ "$DKIM" = rsa ]; then
  for d in blaster.test b.test; do
    printf '[[dkim]]\ndomain = "%s"\nselector = "rsa"\nalgorithm = "rsa-sha256"\nkey_file = "%s"\n' \
      "$d" "$ROOT/bench/benches/keys/rsa2048-test-only.pem" >> "$WORK/ringpost.toml"
  done
fi
if [ "$LOAD" = blaster ]; then
  "$BLASTER" sink --listen 127.0.0.1:$SINK_PORT --exit-after "$N" > "$WORK/sink.txt" 2>/dev/null &
else
  smtp-sink -u postfix -M "$N" 127.0.0.1:$SINK_PORT 2048 &
fi
SINK=$!
start_ringpost
cpu0=$(awk '{print $14, $15}' "/proc/$RP_PID/stat")
perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$RP_PID" -o "$WORK/perf.data" 2>/dev/null &
PERF=$!
sleep 0.5
if [ "$LOAD" = blaster ]; then
  "$BLASTER" send --to 127.0.0.1:$RP_PORT -n "$N" -c "$SESSIONS" --domains 1 -q
else
  smtp-source -s "$SESSIONS" -m "$N" -l 1024 -f a@b.test -t r@example.org 127.0.0.1:$RP_PORT
fi
wait "$SINK" || true
cpu1=$(awk '{print $14, $15}' "/proc/$RP_PID/stat")
kill -INT "$PERF"; wait "$PERF" || true
python3 - "$N" "$(getconf CLK_TCK)" $cpu0 $cpu1 <<'PY'
import sys
n, hz, u0, s0, u1, s1 = int(sys.argv[1]), int(sys.argv[2]), *map(int, sys.argv[3:7])
user, sys_ = (u1 - u0) / hz, (s1 - s0) / hz
print(f"ringpost CPU for {n} messages: {user + sys_:.1f} s = {1e6 * (user + sys_) / n:.0f} us/message, "
      f"{100 * sys_ / max(user + sys_, 1e-9):.0f} % in the kernel")
PY
perf script -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf > "$WORK/folded"
[ -n "${FOLDED:-}" ] && cp "$WORK/folded" "$FOLDED"
inferno-flamegraph --title "ringpost relaying $N x 1 KiB ($LOAD, DKIM $DKIM, fsync on, shipped defaults)" < "$WORK/folded" > "$OUT"
# A short text summary: the heaviest frames by self time.
awk '{n=$NF; $NF=""; split($0, f, ";"); leaf=f[length(f)]; self[leaf]+=n; total+=n} END {for (k in self) printf "%5.1f%% %s\n", 100*self[k]/total, k}' "$WORK/folded" | sort -rn | head -25
echo "flamegraph: $OUT"
