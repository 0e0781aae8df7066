#!/usr/bin/env bash
# Starts the local environment, runs the narrated lifecycle demo on it, and tears it down.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p pgjit-tests --bin demo
exec scripts/localenv.sh run cargo run -q -p pgjit-tests --bin demo
