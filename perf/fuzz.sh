#!/usr/bin/env bash
# Run every fuzz target for DURATION each and merge what they find into fuzz/corpus/<target>/.
#
#   perf/fuzz.sh 10m                    # every target, 10 minutes each
#   perf/fuzz.sh 90s smtp_server dsn    # only these targets
#   JOBS=2 perf/fuzz.sh 1h              # libFuzzer workers per target
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a C++ compiler for libFuzzer. Works on the
# stable toolchain: `--sanitizer none` needs no -Z flags (coverage comes from the stable
# `-Cpasses=sancov-module` instrumentation; panics abort and are caught as crashes).
#
# After each run the target's corpus is rebuilt with libFuzzer's -merge=1 from the kept corpus
# plus the new inputs, so fuzz/corpus keeps only inputs that add coverage (minimised, small).
# A crash leaves its reproducer in fuzz/artifacts/<target>/ and the script exits non-zero
# after running the remaining targets. The corpus is replayed by `cargo test --workspace`
# (fuzz/harness/tests/replay.rs), so only add a crash reproducer to fuzz/corpus once it passes.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FUZZ=$ROOT/fuzz
DURATION=${1:?usage: perf/fuzz.sh DURATION [TARGET...]   (DURATION like 90s, 10m, 1h)}
shift
JOBS=${JOBS:-1}
MAX_LEN=${MAX_LEN:-8192}
MAX_FILES=${MAX_FILES:-300}

seconds() {
  local d=$1
  case $d in
    *h) echo $(( ${d%h} * 3600 )) ;;
    *m) echo $(( ${d%m} * 60 )) ;;
    *s) echo "${d%s}" ;;
    *[0-9]) echo "$d" ;;
    *) echo "bad duration: $d" >&2; exit 2 ;;
  esac
}
SECS=$(seconds "$DURATION")

if [ $# -gt 0 ]; then TARGETS=("$@"); else
  mapfile -t TARGETS < <(sed -n 's/^name = "\(.*\)"$/\1/p' "$FUZZ/targets/Cargo.toml" | grep -v '^ringpost-fuzz$')
fi

cargo fuzz build --fuzz-dir "$FUZZ/targets" --sanitizer none -O
BIN_DIR=$FUZZ/targets/target/x86_64-unknown-linux-gnu/release
WORK=$(mktemp -d /tmp/ringpost-fuzz.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"  # libFuzzer's -jobs logs (fuzz-N.log) land here
failed=()
for t in "${TARGETS[@]}"; do
  corpus=$FUZZ/corpus/$t
  mkdir -p "$corpus" "$FUZZ/artifacts/$t" "$WORK/$t.new" "$WORK/$t.merged"
  before=$(ls "$corpus" | wc -l)
  echo "== $t: ${SECS}s, corpus $before files"
  if ! "$BIN_DIR/$t" "$WORK/$t.new" "$corpus" -max_total_time="$SECS" -max_len="$MAX_LEN" -timeout=10 \
      -jobs="$JOBS" -workers="$JOBS" -artifact_prefix="$FUZZ/artifacts/$t/" -print_final_stats=1 \
      >"$WORK/$t.log" 2>&1; then
    failed+=("$t")
    grep -E "panicked|SUMMARY|Test unit written|ERROR" "$WORK/$t.log" | head -5 || true
  fi
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb|cov: " "$WORK/$t.log" | tail -3 || true
  # Rebuild the corpus: only inputs that add coverage, from the old corpus and the new finds.
  "$BIN_DIR/$t" -merge=1 -max_len="$MAX_LEN" "$WORK/$t.merged" "$corpus" "$WORK/$t.new" >"$WORK/$t.merge.log" 2>&1 || true
  merged=$(ls "$WORK/$t.merged" | wc -l)
  if [ "$merged" -gt 0 ]; then
    rm -f "$corpus"/*
    # Over the cap, keep the smallest inputs: they are the cheapest to replay in CI.
    (cd "$WORK/$t.merged" && ls -S -r >"$WORK/$t.list" && head -n "$MAX_FILES" "$WORK/$t.list" | xargs -r cp -t "$corpus"/)
    [ "$merged" -le "$MAX_FILES" ] || echo "   merged corpus has $merged files: kept the $MAX_FILES smallest"
  fi
  echo "   corpus $before -> $(ls "$corpus" | wc -l) files"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashes in: ${failed[*]} (reproducers in fuzz/artifacts/<target>/)"
  exit 1
fi
