#!/usr/bin/env bash
# The relay benchmark with DKIM off, Ed25519, RSA-2048 and dual signing, one after another in
# one run (same machine, same load): what signing costs end to end.
#
#   bench/dkim-relay.sh            # N=20000 x 1 KiB, blaster load
set -euo pipefail
cd "$(dirname "$0")/.."
for mode in off ed25519 rsa dual; do
  echo "== DKIM=$mode"
  DKIM=$mode SKIP_POSTFIX=1 bench/relay.sh | grep -v '^machine' || true
done
