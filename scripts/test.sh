#!/usr/bin/env bash
# Runs every test: unit tests, and the integration tests against one shared local environment
# (PostgreSQL with TLS and scram, PostgreSQL without TLS, moto), which is always torn down;
# then the engine, lifecycle and trust-boundary tests again against every other PostgreSQL major
# the clouds run (PGJIT_PG_MATRIX, default "13 14 16 17 18"; empty skips them), each in an
# environment of its own. Prints the count per major, and ends with one line that totals every
# test binary of every run: `tests: N passed, N failed`.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log" "$log".*' EXIT
count() { awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
               END { printf "%d passed, %d failed", p, f }' "$@"; }

status=0
scripts/localenv.sh run cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log.15"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
summary="PostgreSQL 15 (every test): $(count "$log.15")"
for major in ${PGJIT_PG_MATRIX-13 14 16 17 18}; do
    printf '\n==> PostgreSQL %s: engine, lifecycle and trust-boundary tests\n' "$major"
    PGJIT_PG_MAJOR=$major scripts/localenv.sh run \
        cargo test --locked --no-fail-fast -p pgjit-tests --test engine --test control_plane --test trust_boundary 2>&1 | tee "$log.$major"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    summary="$summary"$'\n'"PostgreSQL $major: $(count "$log.$major")"
done
printf '\nper PostgreSQL major:\n%s\n' "$summary"
printf 'tests: %s\n' "$(count "$log".*)"
exit "$status"
