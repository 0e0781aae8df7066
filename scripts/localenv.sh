#!/usr/bin/env bash
# The local environment of real parts that the tests, the demo and CI share:
#   - PostgreSQL "tls":   ssl=on with a CA made here, hostssl only, scram-sha-256, log_statement=all
#   - PostgreSQL "plain": ssl=off, scram-sha-256 (for the ssl-mode tests against a server without TLS)
#   Both of the major PGJIT_PG_MAJOR names (13 to 18; default 15, Debian's), see scripts/pg-server.sh.
#   - moto's standalone server, for the AWS side
# Each PostgreSQL holds a non-superuser admin prepared with `pgjit setup-sql --flavor postgres`,
# a database `app` (schemas sales and hr, tables owned by another role) and a second database `crm`.
#
# Usage: scripts/localenv.sh up     start it; writes .localenv/env (sourceable, KEY=VALUE lines)
#        scripts/localenv.sh down   stop every process it started and remove its files
#        scripts/localenv.sh run CMD...  up, run CMD with the environment exported, down (always)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
state_link="$repo/.localenv"
pg_major=${PGJIT_PG_MAJOR:-15}
pg_bin=/usr/lib/postgresql/15/bin
admin_user=pgjit_admin

log() { printf 'localenv: %s\n' "$*" >&2; }
die() { printf 'localenv: error: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_packages() {
    local missing=()
    [ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15 postgresql-client-15)
    [ -f /usr/lib/postgresql/15/lib/pgaudit.so ] || missing+=(postgresql-15-pgaudit)
    command -v npm >/dev/null || [ "$pg_major" = 15 ] || missing+=(npm)
    command -v psql >/dev/null || missing+=(postgresql-client-15)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v curl >/dev/null || missing+=(curl)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! python3 -c 'import moto.server, flask' 2>/dev/null; then
        log 'installing moto[server]'
        python3 -m pip install -q "moto[server]"
    fi
}

# PostgreSQL refuses to run as root: run it as the `postgres` OS user (created by Debian's package).
pg_os_user() {
    if [ "$(id -u)" != 0 ]; then id -un; return; fi
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    echo postgres
}

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u "$PG_OS_USER" -- "$@"; else "$@"; fi; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

make_certs() {
    local dir=$1
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj '/CN=pgjit local test CA' \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" \
        -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj '/CN=localhost' \
        -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
        -days 30 -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
    rm -f "$dir/server.csr" "$dir/server.ext" "$dir/ca.srl" "$dir/ca.key"
    chmod 600 "$dir/server.key"
}

# start_cluster NAME PORT TLS(on|off)
start_cluster() {
    local name=$1 port=$2 tls=$3 dir="$STATE/$1"
    mkdir -p "$dir/sock"
    chown -R "$PG_OS_USER" "$dir"
    chmod 700 "$dir/sock"
    as_pg "$pg_bin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb $name failed"; }
    local hostline="host    all all 127.0.0.1/32 scram-sha-256"
    if [ "$tls" = on ]; then
        cp "$STATE/certs/server.crt" "$STATE/certs/server.key" "$STATE/certs/ca.crt" "$dir/data/"
        chown "$PG_OS_USER" "$dir/data/server.crt" "$dir/data/server.key" "$dir/data/ca.crt"
        hostline="hostssl all all 127.0.0.1/32 scram-sha-256"
    fi
    printf 'local all all trust\n%s\n' "$hostline" > "$dir/data/pg_hba.conf"
    cat >> "$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/sock'
password_encryption = 'scram-sha-256'
ssl = $tls
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
log_statement = 'all'
log_line_prefix = '%m [%p] %u@%d '
log_connections = on
log_disconnections = on
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    if [ "$tls" = on ] && [ -f "$pg_bin/../lib/pgaudit.so" ]; then
        # Session audit as RDS runs it: pgaudit loaded, RDS's log_line_prefix (the plain server
        # stays without pgaudit, for the tests of a server that cannot audit).
        printf "shared_preload_libraries = 'pgaudit'\nlog_line_prefix = '%%t:%%r:%%u@%%d:[%%p]:'\n" >> "$dir/data/postgresql.conf"
    fi
    as_pg "$pg_bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null \
        || { cat "$dir/server.log" >&2; die "PostgreSQL $name did not start"; }
    chmod 644 "$dir/server.log" 2>/dev/null || true
}

su_psql() { # su_psql CLUSTER DB [psql args...]: as the superuser over the cluster's unix socket
    local c=$1 db=$2; shift 2
    psql -X -q -v ON_ERROR_STOP=1 -h "$STATE/$c/sock" -p "$(cat "$STATE/$c/port")" -U postgres -d "$db" "$@"
}

seed_cluster() {
    local c=$1
    su_psql "$c" postgres <<'EOF'
CREATE ROLE app_owner NOLOGIN;
CREATE ROLE reporting NOLOGIN;
CREATE ROLE auditors NOLOGIN;
-- Stand-in for the role RDS and Aurora ship for IAM authentication, so IAM mode runs here.
CREATE ROLE rds_iam NOLOGIN;
CREATE DATABASE app OWNER app_owner;
CREATE DATABASE crm OWNER app_owner;
EOF
    su_psql "$c" app <<'EOF'
SET ROLE app_owner;
CREATE SCHEMA sales;
CREATE SCHEMA hr;
CREATE TABLE sales.orders (id bigserial PRIMARY KEY, customer text NOT NULL, total numeric(12,2) NOT NULL);
CREATE TABLE sales.customers (id bigserial PRIMARY KEY, name text NOT NULL);
CREATE TABLE hr.salaries (employee text PRIMARY KEY, amount numeric(12,2) NOT NULL);
CREATE VIEW sales.big_orders AS SELECT * FROM sales.orders WHERE total > 100;
CREATE FUNCTION sales.order_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM sales.orders';
-- names that must be handled as data, never as SQL
CREATE SCHEMA "we.ird ""schema""";
CREATE TABLE "we.ird ""schema""".";DROP TABLE x;--" (id int);
CREATE TABLE "we.ird ""schema"""."Ünïcødé tàble" (id int);
INSERT INTO sales.orders (customer, total) VALUES ('acme', 250), ('globex', 40);
INSERT INTO sales.customers (name) VALUES ('acme'), ('globex');
INSERT INTO hr.salaries VALUES ('alice', 100000);
RESET ROLE;
GRANT USAGE ON SCHEMA sales TO reporting;
GRANT SELECT ON sales.orders TO reporting;
EOF
    su_psql "$c" crm <<'EOF'
SET ROLE app_owner;
CREATE SCHEMA accounts;
CREATE TABLE accounts.contacts (id bigserial PRIMARY KEY, email text NOT NULL);
INSERT INTO accounts.contacts (email) VALUES ('a@example.com');
RESET ROLE;
EOF
    # The admin pgjit logs in as: prepared with exactly what `pgjit setup-sql` generates,
    # run by the superuser in every database pgjit manages.
    local db
    for db in postgres app crm; do
        "$PGJIT_BIN" setup-sql --flavor postgres --admin-user "$admin_user" --grantable-role reporting | su_psql "$c" "$db"
    done
    # The local stand-in for rds_iam must be grantable by the admin (on RDS, rds_superuser has it).
    su_psql "$c" postgres -c "GRANT rds_iam TO $admin_user WITH ADMIN OPTION"
    # The password is set apart from setup-sql, which never carries a secret.
    # (not in the statement log: the tests check that no password ever appears there)
    su_psql "$c" postgres -c "SET log_statement = 'none'" -c "ALTER ROLE $admin_user PASSWORD '$ADMIN_PASSWORD'"
}

start_moto() {
    local port=$1
    (cd "$STATE" && exec python3 -m moto.server -H 127.0.0.1 -p "$port" >"$STATE/moto.log" 2>&1) &
    echo $! > "$STATE/moto.pid"
    local i
    for i in $(seq 1 100); do
        curl -fsS -o /dev/null "http://127.0.0.1:$port/moto-api/" 2>/dev/null && return 0
        sleep 0.2
    done
    cat "$STATE/moto.log" >&2
    die "moto did not start"
}

build_cli() {
    log 'building the pgjit CLI and the audit function'
    (cd "$repo" && cargo build -q -p pgjit-cli -p audit) || die 'cargo build -p pgjit-cli -p audit failed'
    PGJIT_BIN="$(cd "$repo" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/pgjit"
}

up() {
    if [ -f "$state_link/state" ]; then die "already up ($state_link exists); run 'scripts/localenv.sh down' first"; fi
    # Whatever fails part-way, nothing that was started is left running.
    trap 'status=$?; if [ $status -ne 0 ]; then down; fi' EXIT
    ensure_packages
    pg_bin=$("$repo/scripts/pg-server.sh" "$pg_major") || die "no PostgreSQL $pg_major"
    log "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') from $pg_bin"
    build_cli
    PG_OS_USER=$(pg_os_user)
    STATE=$(mktemp -d /tmp/pgjit-localenv.XXXXXX)
    chmod 755 "$STATE"
    mkdir -p "$state_link"
    echo "$STATE" > "$state_link/state"
    echo "$PG_OS_USER" > "$STATE/pg_os_user"
    echo "$pg_bin" > "$STATE/pg_bin"
    mkdir -p "$STATE/certs"
    make_certs "$STATE/certs"
    ADMIN_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
    local tls_port plain_port moto_port
    tls_port=$(free_port); echo "$tls_port" > /dev/null
    mkdir -p "$STATE/tls" "$STATE/plain"
    echo "$tls_port" > "$STATE/tls/port"
    log "starting PostgreSQL (TLS) on 127.0.0.1:$tls_port"
    start_cluster tls "$tls_port" on
    plain_port=$(free_port)
    echo "$plain_port" > "$STATE/plain/port"
    log "starting PostgreSQL (no TLS) on 127.0.0.1:$plain_port"
    start_cluster plain "$plain_port" off
    seed_cluster tls
    seed_cluster plain
    moto_port=$(free_port)
    log "starting moto on 127.0.0.1:$moto_port"
    start_moto "$moto_port"
    cat > "$state_link/env" <<EOF
PGJIT_TEST_STATE=$STATE
PGJIT_TEST_PG_MAJOR=$pg_major
PGJIT_TEST_PG_AUDIT=$(grep -q "^shared_preload_libraries = 'pgaudit'" "$STATE/tls/data/postgresql.conf" && echo on || echo off)
PGJIT_TEST_PG_HOST=127.0.0.1
PGJIT_TEST_PG_PORT=$tls_port
PGJIT_TEST_PG_PLAIN_PORT=$plain_port
PGJIT_TEST_PG_CA=$STATE/certs/ca.crt
PGJIT_TEST_PG_LOG=$STATE/tls/server.log
PGJIT_TEST_PG_PLAIN_LOG=$STATE/plain/server.log
PGJIT_TEST_PG_SOCKET=$STATE/tls/sock
PGJIT_TEST_PG_PLAIN_SOCKET=$STATE/plain/sock
PGJIT_TEST_ADMIN_USER=$admin_user
PGJIT_TEST_ADMIN_PASSWORD=$ADMIN_PASSWORD
PGJIT_TEST_MOTO_URL=http://127.0.0.1:$moto_port
PGJIT_TEST_CLI=$PGJIT_BIN
PGJIT_TEST_AUDIT_BIN=$(dirname "$PGJIT_BIN")/audit
EOF
    trap - EXIT
    log "up; environment in $state_link/env"
}

down() {
    [ -f "$state_link/state" ] || return 0
    local STATE; STATE=$(cat "$state_link/state")
    if [ -d "$STATE" ]; then
        PG_OS_USER=$(cat "$STATE/pg_os_user" 2>/dev/null || pg_os_user)
        pg_bin=$(cat "$STATE/pg_bin" 2>/dev/null || echo "$pg_bin")
        local c
        for c in tls plain; do
            if [ -f "$STATE/$c/data/postmaster.pid" ]; then
                as_pg "$pg_bin/pg_ctl" -D "$STATE/$c/data" -m immediate -w stop >/dev/null 2>&1 || true
            fi
        done
        if [ -f "$STATE/moto.pid" ]; then
            local pid; pid=$(cat "$STATE/moto.pid")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        # Nothing that was started from the state directory may outlive it.
        for _ in $(seq 1 50); do pgrep -f "$STATE" >/dev/null || break; sleep 0.1; done
        pkill -9 -f "$STATE" 2>/dev/null || true
        rm -rf "$STATE"
    fi
    rm -rf "$state_link"
    log 'down'
}

run() {
    up
    trap 'down' EXIT
    trap 'exit 130' INT TERM
    set -a; . "$state_link/env"; set +a
    "$@"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    run) shift; [ $# -gt 0 ] || die 'run needs a command'; run "$@" ;;
    *) die "usage: $0 up|down|run CMD..." ;;
esac
