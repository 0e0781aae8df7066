#!/usr/bin/env bash
# Runs every test: unit tests, and the integration tests against one shared local environment
# (PostgreSQL with TLS and scram, PostgreSQL without TLS, moto), which is always torn down.
# Ends with one line that totals every test binary: `tests: N passed, N failed`.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
scripts/localenv.sh run cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
