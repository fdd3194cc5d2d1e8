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
set -euo pipefail
N=${N:-20000}
ROUNDS=${ROUNDS:-2}
SESSIONS=${SESSIONS:-50}
SITES=${SITES:-1000}
MODES=${MODES:-single sites shaped}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/shapingbench.XXXXXX)
RP_PORT=${RP_PORT:-2731}
SINK_PORT=${SINK_PORT:-2931}
. "$ROOT/bench/lib/ringpost.sh"
trap 'stop_all; rm -rf "$WORK"' EXIT

# config MODE: single (one route), sites (1,000 routes, 4 sources, no shaping limits or rules)
# or shaped (the same plus the shipped shaping defaults). sites vs single is what 1,000
# destinations cost any MTA (a connection per site and source); shaped vs sites is what
# shaping itself costs.
config() {
  rm -rf "$WORK/spool" "$WORK"/delivery.jsonl*
  local routes="" extra_delivery="" sources=""
  if [ "$1" != single ]; then
    [ "$1" = shaped ] && extra_delivery="shaping = \"$ROOT/config/shaping-defaults.toml\""
    extra_delivery+=$'\n'"${SITES_DELIVERY:-}"
    for i in 2 3 4 5; do sources+="[[source]]
name = \"ip$i\"
bind = \"127.0.0.$i\"
ehlo = \"mta$i.bench.test\"
"; done
    sources+='[[pool]]
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
  local t0 t1
  t0=$(date +%s.%N)
  "$BLASTER" send --to 127.0.0.1:$RP_PORT -n "$N" -c "$SESSIONS" --domains "$SITES" -q --json > "$WORK/send.json"
  wait "$SINK_PID" || true
  t1=$(date +%s.%N)
  SINK_PID=
  stop_all
  python3 - "$1" "$t0" "$t1" "$N" "$WORK/send.json" "$WORK/sink.json" <<'PY'
import json, sys
mode, t0, t1, n = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
send, sink = json.load(open(sys.argv[5])), json.load(open(sys.argv[6]))
srcs = ", ".join(f"{ip} {s['messages']}" for ip, s in sorted(sink["sources"].items()))
print(f"{mode:7s} injected {send['msgs_per_s']:8.0f}/s  end-to-end {n / (t1 - t0):8.0f}/s  "
      f"received {sink['received']}  peak conns {sink['peak_connections']}  sources: {srcs}")
PY
}

raise_fd_limit
echo "machine: $(nproc) cores, $(uname -r); N=$N x 1 KiB, $SITES domains, $ROUNDS rounds; $(load_avg)"
for ((r = 1; r <= ROUNDS; r++)); do
  for mode in $MODES; do run "$mode"; done
done
