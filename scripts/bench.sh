#!/usr/bin/env bash
# Every benchmark, each against its floor in the same run (docs/BENCHMARKS.md records one run):
#   cold start and peak memory of each function binary (release) against a do-nothing Lambda
#   binary, binary sizes, grant vs one pipelined transaction, connect, burst, cleanup scaling and
#   discovery scaling on the local environment.
# Usage: scripts/bench.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
cargo build -q --release -p grant -p revoke -p cleanup -p discovery -p webhook -p pgjit-bench --bin hello-lambda
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
# The cold-start driver itself need not be optimised: it only waits on sockets.
cargo build -q -p pgjit-bench --bin cold-start --bin bench-db
"$target/debug/cold-start" "$target/release" "$runs"
scripts/localenv.sh run "$target/debug/bench-db" all "$runs"
