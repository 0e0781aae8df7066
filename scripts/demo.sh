#!/usr/bin/env bash
# The whole lifecycle on the local environment, through the pgjit CLI: starts the environment,
# runs scripts/demo-lifecycle.sh against it, and tears everything down again.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p pgjit-cli
exec scripts/localenv.sh run scripts/demo-lifecycle.sh
