#!/usr/bin/env bash
# Soak: blaster relays through ringpost at half of its measured peak for DURATION, while ringpost's
# RSS and spool size are sampled every 10 s; at the end, the delivery log must close every
# recipient of every Reception exactly once (one Delivery, Bounce or Expiration each). Meanwhile
# one message every 20 s goes to down.test, routed to a closed port: those stay queued and are
# retried throughout (retry_first_s 30, retry_max_s 60), as a destination that is down for days
# would be; the spool must stay flat around them (no segment chain pinned by one live message).
# Prints RSS and spool first/last/max, the throughput, and the verdict; exits 1 on a failed verdict.
#
#   bench/soak.sh            # 1 hour
#   bench/soak.sh 3m         # a short run to validate; DURATION takes s, m or h
#   PEAK_RATE=4000 bench/soak.sh 10m   # skip the 15 s peak measurement
set -euo pipefail
DURATION=${1:-1h}
PEAK_S=${PEAK_S:-15}
SESSIONS=${SESSIONS:-50}
SIZE=${SIZE:-1024}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/soak.XXXXXX)
RP_PORT=${RP_PORT:-2728}
SINK_PORT=${SINK_PORT:-2928}
. "$ROOT/bench/lib/ringpost.sh"
trap 'stop_all; [ -n "${SAMPLER_PID:-}" ] && kill "$SAMPLER_PID" 2>/dev/null; [ "${KEEP:-0}" = 1 ] && echo "kept $WORK" || rm -rf "$WORK"' EXIT

case $DURATION in
  *h) SECS=$(( ${DURATION%h} * 3600 ));; *m) SECS=$(( ${DURATION%m} * 60 ));; *s) SECS=${DURATION%s};; *) SECS=$DURATION;;
esac
raise_fd_limit
echo "machine: $(nproc) cores, $(uname -r); soak ${SECS}s sessions=$SESSIONS size=$SIZE; $(load_avg)"
export EXTRA_ROUTES='[[route]]
domain = "down.test"
hosts = ["127.0.0.1:9"]'
export DELIVERY_EXTRA='retry_first_s = 30
retry_max_s = 60'
write_config "max_connections_per_ip = 100"
start_sink
start_ringpost
PEAK=${PEAK_RATE:-$(measure_peak "$PEAK_S")}
RATE=$((PEAK / 2))
echo "peak: $PEAK msg/s -> soak at $RATE msg/s; $(load_avg)"
sleep 3

# RSS every 10 s, from the start of the soak load (a sample: seconds since start, VmRSS, RssAnon,
# RssFile in KiB, spool KiB, spool segment files).
( t0=$(date +%s); while kill -0 "$RP_PID" 2>/dev/null; do
    echo "$(( $(date +%s) - t0 )) $(rss_parts_kib "$RP_PID") $(du -sk "$WORK/spool" | cut -f1) $(ls "$WORK"/spool/core-*/ | grep -c seg)"
    sleep 10; done ) > "$WORK/rss.txt" &
SAMPLER_PID=$!
# The held lane: one message to the down destination every 20 s; each 250 counted.
( while kill -0 "$RP_PID" 2>/dev/null; do
    python3 -c 'import smtplib,sys; s=smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30); s.sendmail("soak@bench.test", ["held@down.test"], b"Subject: held\r\n\r\nheld\r\n"); s.quit(); print("ok")' "$RP_PORT" || true
    sleep 20; done ) > "$WORK/held.txt" 2>/dev/null &
HELD_PID=$!
"$BLASTER" send --to 127.0.0.1:$RP_PORT --rate "$RATE" --duration "${SECS}s" -c "$SESSIONS" --size "$SIZE" \
  --domains 1 -q --json > "$WORK/soak.json"
echo "load end: $(load_avg)"
rc=0
kill "$HELD_PID" 2>/dev/null || true
python3 "$PY/closed_once.py" "$WORK/delivery.jsonl" --wait 120 --open-domain down.test || rc=$?
kill "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=
python3 - "$WORK" <<'PY' || rc=1
import json, os, sys
work = sys.argv[1]
s = json.load(open(f"{work}/soak.json"))
peak = f"{work}/peak.json"  # absent when PEAK_RATE was given
accepted = s["accepted"] + (json.load(open(peak))["accepted"] if os.path.exists(peak) else 0)
import glob
logs = sorted(glob.glob(f"{work}/delivery.jsonl*"))  # with its rotated files
receptions = sum(1 for p in logs for l in open(p) if '"Reception"' in l)
print(f"receptions in the delivery log {receptions}; messages blaster saw answered 250 (peak + soak) {accepted}"
      f" -> {'OK' if receptions >= accepted else 'LOST 250 messages'}")
rss = [tuple(map(int, l.split())) for l in open(f"{work}/rss.txt") if len(l.split()) == 6]
held = sum(1 for l in open(f"{work}/held.txt") if l.strip() == "ok")
events = [json.loads(l) for p in logs for l in open(p) if "down.test" in l]
retries = sum(1 for e in events if e["type"] == "TransientFailure")
print(f"held lane: {held} messages to down.test answered 250; {retries} transient failures logged for them")
a = s["accept_latency"]
print(f"soak load: target {s['target_rate']:.0f} msg/s, accepted {s['accepted']} of {s['sent']} in {s['duration_s']:.0f} s"
      f" = {s['msgs_per_s']:.0f} msg/s; temp {s['temp_failures']} perm {s['perm_failures']} errors {s['errors']};"
      f" accept latency p50 {a['p50_us']/1000:.1f} ms p99 {a['p99_us']/1000:.1f} ms max {a['max_us']/1000:.0f} ms")
for col, name in ((1, "RSS"), (2, "RssAnon (heap)"), (3, "RssFile (mapped spool)")):
    kib = [r[col] for r in rss]
    print(f"ringpost {name} ({len(rss)} samples, every 10 s): first {kib[0]} KiB, last {kib[-1]} KiB,"
          f" max {max(kib)} KiB (at {rss[kib.index(max(kib))][0]} s)")
for col, name in ((4, "spool KiB"), (5, "spool segments")):
    v = [r[col] for r in rss]
    print(f"{name}: first {v[0]}, last {v[-1]}, max {max(v)} (at {rss[v.index(max(v))][0]} s)")
print("series (s:RSS/anon KiB/spool KiB/segments): " + " ".join(f"{t}:{r}/{a}/{sp}/{n}" for t, r, a, _, sp, n in rss))
sys.exit(0 if receptions >= accepted else 1)
PY
[ "$rc" = 0 ] && echo "soak verdict: PASS" || echo "soak verdict: FAIL (delivery log)"
exit "$rc"
