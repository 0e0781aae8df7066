#!/usr/bin/env bash
# Runs every test: unit tests, and the integration tests against one shared local environment
# (PostgreSQL with TLS and scram, PostgreSQL without TLS, moto), which is always torn down.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/localenv.sh run cargo test --workspace --locked "$@"
