#!/usr/bin/env bash
# Every benchmark, each against its floor in the same run (docs/BENCHMARKS.md records one run):
#   cold start and peak memory of each function binary (release) against a do-nothing Lambda
#   binary, binary sizes, grant vs one pipelined transaction, connect, burst, cleanup scaling and
#   discovery scaling on the local environment (cleanup also over modeled AWS and RDS latency);
#   session audit parsing against decoding; access flows against the grant floor and the front
#   door over modeled AWS latency.
# Usage: scripts/bench.sh [RUNS] [GRANT_RUNS]   (defaults 30 and 200: grant vs floor is a ratio
#   of two medians a few milliseconds apart on a shared machine, so it takes more runs)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
grant_runs=${2:-200}
# pgjit's code is measured as it ships: release profile.
# Two builds: `--bin` limits a build to the binaries it names, so naming the bench binaries next
# to the function packages would leave the function binaries (what cold start measures) unbuilt.
cargo build -q --release -p grant -p revoke -p cleanup -p discovery -p webhook -p audit -p requests
cargo build -q --release -p pgjit-bench --bin hello-lambda --bin bench-db --bin bench-audit
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
# The cold-start driver itself need not be optimised: it only waits on sockets.
cargo build -q -p pgjit-bench --bin cold-start
"$target/debug/cold-start" "$target/release" "$runs"
# Session audit: CPU only (no database, no AWS).
"$target/release/bench-audit" "$runs"
db="$target/release/bench-db"
scripts/localenv.sh run sh -c "'$db' grant $grant_runs && '$db' e2e $runs && '$db' burst && '$db' cleanup && '$db' cleanup-latency && '$db' discovery && '$db' acl && '$db' flows $runs && '$db' front-door 15"
