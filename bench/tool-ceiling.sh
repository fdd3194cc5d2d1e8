#!/usr/bin/env bash
# The load tools' own ceiling, no MTA in between: blaster send -> blaster sink, then Postfix's
# smtp-source -> smtp-sink on the same workload in the same run. blaster must be far faster than
# anything it measures.
#
#   bench/tool-ceiling.sh                # N=50000 messages of 1 KiB over 50 sessions
set -euo pipefail
N=${N:-50000}
SESSIONS=${SESSIONS:-50}
SIZE=${SIZE:-1024}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BLASTER=${BLASTER_BIN:-$ROOT/target/release/blaster}
PORT=${PORT:-3025}
now() { date +%s.%N; }
rate() { python3 -c "import sys; print(f'{int(sys.argv[1])/(float(sys.argv[3])-float(sys.argv[2])):.0f}')" "$N" "$1" "$2"; }

echo "machine: $(nproc) cores, $(uname -r); N=$N sessions=$SESSIONS size=$SIZE"
"$BLASTER" sink --listen 127.0.0.1:$PORT --exit-after "$N" --json > /tmp/ceiling-sink.json 2>/dev/null &
SINK=$!; sleep 0.5
t0=$(now)
"$BLASTER" send --to 127.0.0.1:$PORT -n "$N" -c "$SESSIONS" --size "$SIZE" -q --json > /tmp/ceiling-send.json
wait $SINK; t1=$(now)
B=$(rate "$t0" "$t1")
echo "blaster send -> blaster sink: $B msg/s"

# smtp-source waits for every reply, so its exit is the end; smtp-sink -M would quit under
# sessions still saying QUIT.
smtp-sink -u postfix 127.0.0.1:$PORT 2048 &
SINK=$!; sleep 0.5
t0=$(now)
smtp-source -s "$SESSIONS" -m "$N" -l "$SIZE" -f a@b.test -t r@example.org 127.0.0.1:$PORT
t1=$(now)
kill $SINK
P=$(rate "$t0" "$t1")
echo "smtp-source -> smtp-sink:     $P msg/s"
python3 -c "import sys; print(f'ratio blaster/postfix tools: {int(sys.argv[1])/int(sys.argv[2]):.1f}x')" "$B" "$P"
