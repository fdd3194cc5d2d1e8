# Shared by bench/connections-10k.sh, bench/slowloris.sh and bench/soak.sh (sourced, not run):
# write a ringpost config, start it and wait for its banner, read its RSS, measure blaster's peak.
# Callers set ROOT, WORK, RP_PORT, SINK_PORT before sourcing.
BIN=${RINGPOST_BIN:-$ROOT/target/release/ringpost}
BLASTER=${BLASTER_BIN:-$ROOT/target/release/blaster}
PY=$ROOT/bench/lib

# raise_fd_limit: soft nofile limit up to the hard one (10k held sessions need ~10k fds per side).
raise_fd_limit() {
  ulimit -n "$(ulimit -Hn)"
}

# write_config EXTRA_SERVER_LINES: the relay.sh config, with extra [server] lines. EXTRA_ROUTES
# (optional) goes before the catch-all route, DELIVERY_EXTRA into [delivery], ENGINE_EXTRA into
# [engine].
write_config() {
  cat > "$WORK/ringpost.toml" <<TOML
[server]
listen = ["127.0.0.1:$RP_PORT"]
hostname = "bench.test"
relay_networks = ["127.0.0.0/8"]
$1
[spool]
dir = "${SPOOL_DIR:-$WORK/spool}"
durability = "fsync"
[engine]
cores = ${CORES:-\"all\"}
${ENGINE_EXTRA:-}
[log]
delivery_log = "$WORK/delivery.jsonl"
[delivery]
max_connections_per_destination = 32
${DELIVERY_EXTRA:-}
[admin]
socket = "$WORK/admin.sock"
${EXTRA_ROUTES:-}
[[route]]
domain = "*"
hosts = ["127.0.0.1:$SINK_PORT"]
TOML
}

# start_ringpost: start it in the background (RP_PID) and wait until it greets (GREET_TIMEOUT_S,
# default 20: a restart with a large backlog recovers before it serves).
start_ringpost() {
  "$BIN" --config "$WORK/ringpost.toml" 2>"$WORK/ringpost.err" &
  RP_PID=$!
  python3 - "$RP_PORT" "${GREET_TIMEOUT_S:-20}" <<'PY' || { echo "ringpost did not greet:"; cat "$WORK/ringpost.err"; exit 1; }
import socket, sys, time
deadline = time.time() + float(sys.argv[2])
while time.time() < deadline:
    try:
        with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1) as s:
            if s.recv(100).startswith(b"220"):
                sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
PY
}

# rss_kib PID: resident set in KiB.
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# cpu_s PID: user+system CPU seconds the process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$1/stat"; }

# rss_parts_kib PID: "VmRSS RssAnon RssFile" in KiB (file pages are mostly mapped spool segments).
rss_parts_kib() { awk '/^VmRSS/ {r=$2} /^RssAnon/ {a=$2} /^RssFile/ {f=$2} END {print r, a, f}' "/proc/$1/status"; }

# load_avg: the 1-minute load average and the machine's core count.
load_avg() { echo "load $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"; }

# measure_peak SECONDS: closed-loop blaster for that long; prints the accepted msg/s.
measure_peak() {
  "$BLASTER" send --to 127.0.0.1:$RP_PORT --duration "${1}s" -c "${SESSIONS:-50}" --size "${SIZE:-1024}" \
    --domains 1 -q --json > "$WORK/peak.json"
  python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["msgs_per_s"]))' "$WORK/peak.json"
}

# start_sink: a blaster sink on SINK_PORT that runs until killed (SINK_PID).
start_sink() {
  "$BLASTER" sink --listen 127.0.0.1:$SINK_PORT --report "$WORK/sink.json" > /dev/null 2>&1 &
  SINK_PID=$!
  disown "$SINK_PID"  # it is SIGKILLed at the end if SIGTERM is slow: no "Killed" job notice
  sleep 0.5
}

# stop_all: SIGTERM ringpost (then KILL) and the sink, by their pids.
stop_all() {
  if [ -n "${RP_PID:-}" ]; then kill -TERM "$RP_PID" 2>/dev/null || true; sleep 1; kill -9 "$RP_PID" 2>/dev/null || true; fi
  if [ -n "${SINK_PID:-}" ]; then kill -TERM "$SINK_PID" 2>/dev/null || true; sleep 0.3; kill -9 "$SINK_PID" 2>/dev/null || true; fi
  RP_PID= SINK_PID=
}
