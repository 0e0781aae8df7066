#!/usr/bin/env bash
# The narrated lifecycle, run by scripts/demo.sh inside the local environment (it needs the
# PGJIT_TEST_* variables that scripts/localenv.sh exports). Every step is a pgjit command, with
# only the standard AWS variables pointing it at moto.
set -euo pipefail
cd "$(dirname "$0")/.."
export AWS_ENDPOINT_URL="$PGJIT_TEST_MOTO_URL" AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
pgjit() { "$target/debug/pgjit" "$@"; }
step() { printf '\n==> %s\n' "$*"; }
as_requester() { # as_requester USER PASSWORD SQL: psql over verified TLS as the temporary user
    PGPASSWORD="$2" psql -X -q -A -t "host=localhost port=$PGJIT_TEST_PG_PORT dbname=app user=$1 sslmode=verify-full sslrootcert=$PGJIT_TEST_PG_CA" -c "$3"
}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

step "bootstrap: DynamoDB tables and the schedule group"
pgjit bootstrap

step "the admin's credentials go into Secrets Manager (RDS format); the integration points at them"
python3 - "$work/integration.json" <<'PY'
import json, os, sys, boto3
sm = boto3.client("secretsmanager", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
sm.create_secret(Name="pgjit/admin/orders-prod", SecretString=json.dumps(
    {"engine": "postgres", "username": os.environ["PGJIT_TEST_ADMIN_USER"], "password": os.environ["PGJIT_TEST_ADMIN_PASSWORD"]}))
json.dump({"name": "orders-prod", "kind": "postgres", "host": "localhost", "port": int(os.environ["PGJIT_TEST_PG_PORT"]),
           "admin": {"auth": "password", "secret_id": "pgjit/admin/orders-prod"},
           "ssl_mode": "verify-full", "ca_bundle": os.environ["PGJIT_TEST_PG_CA"],
           "max_duration_seconds": 14400, "user_cleanup_after_days": 1,
           "grantable_roles": ["reporting"], "enable_audit": True,
           "custom_access_details": "psql with sslmode=verify-full"}, open(sys.argv[1], "w"), indent=2)
PY
pgjit integration put "$work/integration.json"
pgjit integration list

step "doctor: can the (non-superuser) admin do its job, session audit (pgaudit) included?"
pgjit doctor orders-prod

step "discovery: the inventory of the server"
pgjit discover
pgjit inventory orders-prod | grep -E ' (table|view|schema) ' | head -8

step "approval arrives (events/approval.json, stamped now as the bus would): john.doe may read sales for 1 hour"
python3 - events/approval.json "$work/approval.json" <<'PY'
import datetime, json, sys
event = json.load(open(sys.argv[1]))
event["time"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
json.dump(event, open(sys.argv[2], "w"))
PY
pgjit grant --event "$work/approval.json"
step "the same approval delivered again changes nothing"
pgjit grant --event "$work/approval.json"
step "a forged approval: the requester approves itself, and is refused"
python3 - "$work/approval.json" "$work/self.json" <<'PY'
import json, sys
event = json.load(open(sys.argv[1]))
event["detail"].update(request_id="REQ-SELF", approver=event["detail"]["requester"]["id"])
json.dump(event, open(sys.argv[2], "w"))
PY
if pgjit grant --event "$work/self.json"; then echo "self-approval was granted" >&2; exit 1; fi
pgjit grants

step "the requester's credentials (the password stays hidden here)"
pgjit credentials REQ-1001 > "$work/creds.json"
user=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["username"])' "$work/creds.json")
password=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["password"])' "$work/creds.json")
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["password"]="(hidden)"; print(json.dumps(d))' "$work/creds.json"

step "as $user: an allowed query, then a denied one"
echo "SELECT count(*) FROM sales.orders -> $(as_requester "$user" "$password" 'SELECT count(*) FROM sales.orders')"
if as_requester "$user" "$password" 'SELECT * FROM hr.salaries' 2>"$work/denied"; then
    echo "hr.salaries was readable: the grant is too wide" >&2; exit 1
fi
echo "SELECT * FROM hr.salaries -> $(head -1 "$work/denied")"

step "revoke (early, as an 'Access Revoke Requested' event would)"
pgjit revoke REQ-1001
if as_requester "$user" "$password" 'SELECT 1' 2>"$work/refused"; then
    echo "login still works after revoke" >&2; exit 1
fi
echo "login refused: $(head -1 "$work/refused")"

step "session audit: the server's log (pgaudit, RDS's log_line_prefix) read into the sessions table"
pgjit sessions ingest --integration orders-prod "$PGJIT_TEST_PG_LOG"
pgjit audit --integration orders-prod | head -1

step "cleanup, two days later: the retention (1 day) is over, the role is dropped"
pgjit cleanup --now "$(date -u -d '+2 days' +%Y-%m-%dT%H:%M:%SZ)"
pgjit grants --all

step "nothing left behind"
left=$(psql -X -q -A -t -h "$PGJIT_TEST_PG_SOCKET" -p "$PGJIT_TEST_PG_PORT" -U postgres -d postgres \
    -c "SELECT count(*) FROM pg_roles WHERE rolname = '$user'")
sessions=$(psql -X -q -A -t -h "$PGJIT_TEST_PG_SOCKET" -p "$PGJIT_TEST_PG_PORT" -U postgres -d postgres \
    -c "SELECT count(*) FROM pg_stat_activity WHERE usename = '$user'")
echo "roles named $user: $left, sessions: $sessions"
[ "$left" = 0 ] && [ "$sessions" = 0 ]
step "what $user did, tied to its approval (kept after the role is gone)"
pgjit sessions REQ-1001

step "the front door: pgjit decides. An access flow says who may ask for what, and who approves"
python3 - "$work/keys" <<'PY'
import boto3, os, sys
iam = boto3.client("iam", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
with open(sys.argv[1], "w") as out:
    for who in ("alice", "bob"):
        iam.create_user(UserName=who)
        key = iam.create_access_key(UserName=who)["AccessKey"]
        out.write(f"{who} {key['AccessKeyId']} {key['SecretAccessKey']}\n")
PY
as_person() { # as_person NAME pgjit ARGS...: the command with that person's own AWS credentials
    local who=$1; shift 2
    read -r _ key secret < <(grep "^$who " "$work/keys")
    AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret "$target/debug/pgjit" "$@"
}
cat > "$work/flow.json" <<'JSON'
{"name": "orders-read", "integrations": ["orders-prod"],
 "requesters": {"principals": ["arn:aws:iam::123456789012:user/alice"]},
 "access": [{"database": "app", "schema": "sales", "table": "*", "privileges": ["SELECT"]}],
 "max_duration_seconds": 7200,
 "approval": {"approvers": {"principals": ["arn:aws:iam::123456789012:user/bob"]}, "reason_required": true}}
JSON
pgjit flow put "$work/flow.json"
pgjit doctor orders-prod | grep 'access flows'

step "alice asks, as herself (her own AWS credentials; pgjit request signs with them)"
as_person alice pgjit request --integration orders-prod --database app --table sales.orders --privileges SELECT --for 1h --reason "INC-42 stuck orders" --json > "$work/request.json"
request=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["request_id"])' "$work/request.json")
as_person alice pgjit requests
step "alice cannot approve her own request"
if as_person alice pgjit approve "$request"; then echo "self-approval was accepted" >&2; exit 1; fi

step "bob sees it awaiting his approval, and approves: the approval goes the ordinary way, MAC and all"
as_person bob pgjit requests --to-approve
as_person bob pgjit approve "$request"

step "a request bob denies, and a request outside the flow (DELETE), refused at once"
as_person alice pgjit request --integration orders-prod --database app --table sales.orders --privileges SELECT --for 30m --reason "again" --json > "$work/second.json"
second=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["request_id"])' "$work/second.json")
as_person bob pgjit deny "$second" --reason "use the reporting replica"
if as_person alice pgjit request --integration orders-prod --database app --table sales.orders --privileges DELETE --for 30m --reason "cleanup"; then
    echo "a request outside the flow was taken" >&2; exit 1
fi
step "alice connects with one command, as herself: pgjit connect (verify-full, the password only in psql's environment)"
as_person alice pgjit connect "$request" -- -X -A -t -c 'SELECT current_user, count(*) FROM sales.orders'
step "bob's connection to alice's grant is refused"
if as_person bob pgjit connect "$request"; then echo "someone else connected with alice's grant" >&2; exit 1; fi
pgjit revoke "$request"
echo "demo complete"
