#!/usr/bin/env bash
# One-command relay benchmark: load -> MTA -> sink for ringpost, then the same workload through
# Postfix relaying to the same kind of sink, in the same run on the same machine, fsync on in
# both. Prints injection rate, end-to-end rate, latency (blaster load), ringpost's peak RSS and
# the ringpost/Postfix ratio.
#
#   bench/relay.sh                                 # blaster send -> MTA -> blaster sink, 20000 x 1 KiB
#   LOAD=smtp-source bench/relay.sh                # Postfix's smtp-source -> MTA -> smtp-sink
#   N=50000 SESSIONS=100 SIZE=4k RCPTS=2 bench/relay.sh
#   DKIM=dual SKIP_POSTFIX=1 bench/relay.sh        # ringpost signing with RSA-2048 + Ed25519 (or DKIM=rsa / ed25519)
#   CHUNKING=both bench/relay.sh                   # blaster -> ringpost twice, BDAT then DATA, same sitting
#   RATE=800 DKIM=rsa SKIP_POSTFIX=1 bench/relay.sh # open loop: blaster sends 800 msg/s on schedule
#
# ringpost runs with its shipped defaults (no benchmark-only knobs): the figures that count are
# the ones users get. blaster sends BDAT when the server offers CHUNKING (ringpost does; the
# Postfix run uses BDAT too when its smtpd offers it); CHUNKING=off makes blaster use DATA.
#
# Needs Debian's `postfix` package (smtp-source, smtp-sink, postfix). Must run as root: it
# writes its own /etc/postfix/main.cf and master.cf (saved and restored) and starts Postfix on
# a loopback port. Prints one line per MTA and the ratio.
set -euo pipefail
N=${N:-20000}
SESSIONS=${SESSIONS:-50}
SIZE=${SIZE:-1024}
RCPTS=${RCPTS:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${RINGPOST_BIN:-$ROOT/target/release/ringpost}
BLASTER=${BLASTER_BIN:-$ROOT/target/release/blaster}
LOAD=${LOAD:-blaster}
DKIM=${DKIM:-off}
SKIP_POSTFIX=${SKIP_POSTFIX:-0}
CHUNKING=${CHUNKING:-on}
KEYS=$ROOT/bench/benches/keys
WORK=$(mktemp -d /tmp/relaybench.XXXXXX)
RP_PORT=${RP_PORT:-2725}
PF_PORT=${PF_PORT:-2825}
SINK_PORT=${SINK_PORT:-2925}
METRICS_PORT=${METRICS_PORT:-2995}
trap 'cleanup' EXIT

cleanup() {
  [ -n "${RP_PID:-}" ] && kill -9 "$RP_PID" 2>/dev/null || true
  postfix stop >/dev/null 2>&1 || true
  if [ -f "$WORK/main.cf.orig" ]; then cp "$WORK/main.cf.orig" /etc/postfix/main.cf
  elif [ -f "$WORK/main.cf.none" ]; then rm -f /etc/postfix/main.cf; fi
  [ -f "$WORK/master.cf.orig" ] && cp "$WORK/master.cf.orig" /etc/postfix/master.cf
  pkill -f "smtp-sink.*:$SINK_PORT" 2>/dev/null || true
  pkill -f "blaster sink --listen 127.0.0.1:$SINK_PORT" 2>/dev/null || true
  rm -rf "$WORK"
}

now() { date +%s.%N; }

# run_one NAME PORT [BLASTER ARGS]: start a sink that exits after N messages (all recipients
# share one domain, so each message travels as one transaction), inject N, time both.
run_one() {
  local name=$1 port=$2 t0 t_inj t_e2e sink
  shift 2
  if [ "$LOAD" = blaster ]; then
    "$BLASTER" sink --listen 127.0.0.1:$SINK_PORT --exit-after "$N" --json > "$WORK/sink-$name.json" 2>/dev/null &
  else
    smtp-sink -u postfix -M "$N" 127.0.0.1:$SINK_PORT 2048 &
  fi
  sink=$!
  sleep 0.5
  t0=$(now)
  if [ "$LOAD" = blaster ]; then
    # One recipient domain per recipient slot, so RCPTS>1 fans out over destinations.
    "$BLASTER" send --to 127.0.0.1:$port -n "$N" -c "$SESSIONS" --size "$SIZE" --rcpts "$RCPTS" --domains 1 -q --json ${RATE:+--rate "$RATE"} "$@" > "$WORK/send-$name.json"
  else
    local rcpt_args=(-t r@example.org)
    [ "$RCPTS" -gt 1 ] && rcpt_args=(-r "$RCPTS" -t r@example.org)
    smtp-source -s "$SESSIONS" -m "$N" -l "$SIZE" -f a@b.test "${rcpt_args[@]}" 127.0.0.1:$port
  fi
  t_inj=$(now)
  wait "$sink"
  t_e2e=$(now)
  python3 - "$name" "$N" "$t0" "$t_inj" "$t_e2e" "$WORK" "$LOAD" <<'PY'
import json, os, sys
name, n, t0, ti, te, work, load = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:6]), sys.argv[6], sys.argv[7]
line = f"{name:9s} injected {n} msgs in {ti-t0:6.2f}s = {n/(ti-t0):7.0f} msg/s; end to end {te-t0:6.2f}s = {n/(te-t0):7.0f} msg/s"
if load == "blaster":
    s = json.load(open(os.path.join(work, f"send-{name}.json")))
    k = json.load(open(os.path.join(work, f"sink-{name}.json")))
    a, e = s["accept_latency"], k["end_to_end_latency"]
    line += f"\n{'':9s} {s['sent_bdat']} of {s['sent']} sent by BDAT; {k.get('received_bdat', 0)} of {k['received']} relayed to the sink by BDAT"
    line += (f"\n{'':9s} accept latency p50 {a['p50_us']/1000:.1f} ms p99 {a['p99_us']/1000:.1f} ms;"
             f" end-to-end p50 {e['p50_us']/1000:.1f} ms p99 {e['p99_us']/1000:.1f} ms;"
             f" duplicates {k['duplicates']} corrupted {k['corrupted']}")
print(line)
with open("/tmp/relaybench.last", "a") as f:
    f.write(f"{name} {n/(ti-t0):.0f} {n/(te-t0):.0f}\n")
PY
}

rm -f /tmp/relaybench.last
echo "machine: $(nproc) cores, $(uname -r); load=$LOAD N=$N sessions=$SESSIONS size=$SIZE rcpts=$RCPTS; fsync on in both"

# --- ringpost ---
cat > "$WORK/ringpost.toml" <<TOML
[server]
listen = ["127.0.0.1:$RP_PORT"]
hostname = "bench.test"
relay_networks = ["127.0.0.0/8"]
[spool]
dir = "$WORK/spool"
durability = "fsync"
[engine]
cores = ${CORES:-\"all\"}
[log]
delivery_log = "$WORK/delivery.jsonl"
[delivery]
max_connections_per_destination = 32
[admin]
socket = "$WORK/admin.sock"
[metrics]
listen = "127.0.0.1:$METRICS_PORT"
[[route]]
domain = "*"
hosts = ["127.0.0.1:$SINK_PORT"]
TOML
# blaster's From is blaster@blaster.test, smtp-source's a@b.test: sign both domains.
for d in blaster.test b.test; do
  if [ "$DKIM" = rsa ] || [ "$DKIM" = dual ]; then
    printf '[[dkim]]\ndomain = "%s"\nselector = "rsa"\nalgorithm = "rsa-sha256"\nkey_file = "%s"\n' "$d" "$KEYS/rsa2048-test-only.pem" >> "$WORK/ringpost.toml"
  fi
  if [ "$DKIM" = ed25519 ] || [ "$DKIM" = dual ]; then
    printf '[[dkim]]\ndomain = "%s"\nselector = "ed"\nalgorithm = "ed25519-sha256"\nkey_file = "%s"\n' "$d" "$KEYS/ed25519-test-only.pem" >> "$WORK/ringpost.toml"
  fi
done
# commit_rounds NAME: the spool's commit rounds of the run from ringpost's metrics endpoint:
# how many, records per round, and the fdatasync time per round (mean; median and p99 as the
# histogram bucket that holds them).
commit_rounds() {
  python3 - "$1" "$METRICS_PORT" <<'PY'
import re, sys, urllib.request
name, port = sys.argv[1], sys.argv[2]
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
def series(metric):
    buckets = [(float(m.group(1)), float(m.group(2))) for m in re.finditer(metric + r'_bucket\{le="([^"]+)"\} (\S+)', text.replace('"+Inf"', '"inf"'))]
    total = float(re.search(metric + r"_sum (\S+)", text).group(1))
    count = float(re.search(metric + r"_count (\S+)", text).group(1))
    return buckets, total, count
def quantile(buckets, count, q):
    return next((le for le, c in buckets if c >= q * count), float("inf"))
b, total, count = series("ringpost_fsync_duration_seconds")
if count:
    print(f"{name:9s} {count:.0f} commit rounds; fdatasync mean {total / count * 1e6:.0f} us,"
          f" p50 <= {quantile(b, count, 0.5) * 1e6:.0f} us, p99 <= {quantile(b, count, 0.99) * 1e6:.0f} us")
PY
}

# run_ringpost NAME [BLASTER ARGS]: a fresh ringpost (empty spool), one run_one against it.
run_ringpost() {
  local name=$1
  shift
  rm -rf "$WORK/spool"
  "$BIN" --config "$WORK/ringpost.toml" 2>"$WORK/ringpost.err" &
  RP_PID=$!
  sleep 0.5
  run_one "$name" "$RP_PORT" "$@"
  [ "$DKIM" != off ] && echo "$name  (DKIM signing: $DKIM)"
  RSS=$(awk '/VmHWM/ {print $2}' /proc/$RP_PID/status)
  echo "$name  peak RSS ${RSS} KiB"
  commit_rounds "$name"
  kill -TERM "$RP_PID"; wait "$RP_PID" || true; RP_PID=
}
case "$CHUNKING" in
  on) run_ringpost ringpost ;;
  off) run_ringpost ringpost --no-chunking ;;
  both) run_ringpost ringpost; run_ringpost rp-data --no-chunking ;;
  *) echo "CHUNKING must be on, off or both"; exit 2 ;;
esac

# --- Postfix ---
if [ "$SKIP_POSTFIX" != 1 ] && command -v postfix >/dev/null; then
  if [ -f /etc/postfix/main.cf ]; then cp /etc/postfix/main.cf "$WORK/main.cf.orig"; else touch "$WORK/main.cf.none"; fi
  cp /etc/postfix/master.cf "$WORK/master.cf.orig"
  cat > /etc/postfix/main.cf <<CF
compatibility_level = 3.6
myhostname = bench.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
relayhost = [127.0.0.1]:$SINK_PORT
smtpd_relay_restrictions = permit_mynetworks, reject
default_destination_concurrency_limit = 50
smtp_destination_concurrency_limit = 50
default_process_limit = 200
maillog_file = /var/log/postfix-bench.log
smtpd_client_connection_count_limit = 0
smtp_dns_support_level = disabled
CF
  sed "s/^smtp      inet  n       -       y       -       -       smtpd/127.0.0.1:$PF_PORT inet n - n - - smtpd/" "$WORK/master.cf.orig" > /etc/postfix/master.cf
  postfix check >/dev/null 2>&1 || true
  # An interrupted earlier run may have left mail in Postfix's queue: it would pollute this one.
  postsuper -d ALL >/dev/null 2>&1 || true
  postfix start >/dev/null 2>&1 || { echo "postfix failed to start; see /var/log/postfix-bench.log"; exit 1; }
  sleep 1
  if [ "$CHUNKING" = off ]; then run_one postfix "$PF_PORT" --no-chunking; else run_one postfix "$PF_PORT"; fi
  postfix stop >/dev/null 2>&1 || true
  python3 - <<'PY'
rows = {l.split()[0]: list(map(float, l.split()[1:])) for l in open("/tmp/relaybench.last")}
p = rows["postfix"]
for name in ("ringpost", "rp-data"):
    if name in rows:
        r = rows[name]
        print(f"ratio {name}/postfix: injection {r[0]/p[0]:.1f}x, end to end {r[1]/p[1]:.1f}x")
PY
fi
