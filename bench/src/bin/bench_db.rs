//! Database and control-plane benchmarks on the local environment, each against its floor in
//! the same run. Run through `scripts/bench.sh` (which starts the environment).
//!
//! Usage: bench-db [grant|e2e|burst|cleanup|discovery|acl|flows|all] [RUNS]
//!        bench-db cleanup-latency [AWS_MS [PG_RTT_MS]]   (defaults 10 and 1)
//!        bench-db flows [RUNS]                            (1,000 flows, 50 groups, vs the grant's floor)
//!        bench-db front-door [RUNS [AWS_MS]]              (approval to active, over modeled AWS latency)

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::stream::{self, StreamExt};
use pgjit::access::{login_role_name, AccessEntry, AccessSet};
use pgjit::engine::postgres::{ident, literal};
use pgjit::engine::roles::{self, GrantSpec, LoginMethod};
use pgjit::SecretString;
use pgjit_tests::{approval, env, isolated_services, isolated_services_with, orders_access, register_integration};
use serde_json::json;

/// The prefix of the grant benchmark's roles.
const PREFIX: &str = "bench_";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The step log lines pgjit writes, kept in memory to read each step's duration.
#[derive(Clone, Default)]
struct StepLog(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for StepLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl StepLog {
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap_or_default()
    }
}

static STEPS: std::sync::OnceLock<StepLog> = std::sync::OnceLock::new();

#[tokio::main]
async fn main() {
    let log = STEPS.get_or_init(StepLog::default).clone();
    tracing_subscriber::fmt().json().with_env_filter("pgjit=info").with_writer(move || log.clone()).init();
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("all");
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(30);
    if matches!(what, "grant" | "all") {
        grant_vs_floor(runs).await;
    }
    if matches!(what, "e2e" | "all") {
        end_to_end(runs).await;
    }
    if matches!(what, "burst" | "all") {
        burst().await;
    }
    if matches!(what, "cleanup" | "all") {
        cleanup_scaling().await;
    }
    if matches!(what, "cleanup-latency" | "all") {
        // Milliseconds an AWS request and a PostgreSQL round trip: bench-db cleanup-latency [AWS [PG]].
        let given = |n: usize, default: f64| args.get(n).filter(|_| what != "all").and_then(|v| v.parse().ok()).unwrap_or(default);
        let (aws, pg) = (given(2, 10.0), given(3, 1.0));
        cleanup_over_latency(Duration::from_secs_f64(aws / 1000.0), Duration::from_secs_f64(pg / 1000.0)).await;
    }
    if matches!(what, "discovery" | "all") {
        discovery_scaling().await;
    }
    if matches!(what, "acl" | "all") {
        acl_growth().await;
    }
    if matches!(what, "flows" | "all") {
        flows_check(runs).await;
    }
    if matches!(what, "front-door" | "all") {
        let aws: f64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10.0);
        front_door(runs, Duration::from_secs_f64(aws / 1000.0)).await;
    }
}

/// 1,000 flows of one integration, the one that fits last in name order; `groups` per flow.
fn many_flows(n: usize) -> Vec<pgjit::contract::flow::Flow> {
    (0..n)
        .map(|i| {
            let doc = json!({"name": format!("flow-{i:04}"), "integrations": ["orders-prod"],
                "requesters": {"groups": [format!("team-{i}"), format!("team-{i}-oncall")], "principals": [format!("arn:aws:iam::123456789012:role/team-{i}-*")]},
                "access": [{"database": "app", "schema": "sales", "table": "*", "privileges": ["SELECT"]},
                           {"database": "app", "schema": format!("s{i}"), "table": "*", "privileges": ["SELECT", "INSERT"]},
                           {"database": "app", "schema": "*", "function": "report", "privileges": ["EXECUTE"]},
                           {"database": "app", "role": "reporting"}],
                "max_duration_seconds": 7200,
                "hours": {"time_zone": "Europe/Berlin", "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "from": "00:00", "to": "23:59"},
                "approval": {"approvers": {"groups": ["dba", format!("team-{i}-leads")], "owners": true}, "required": 2, "reason_required": true, "ticket_pattern": "INC-[0-9]+"}});
            pgjit::contract::flow::Flow::from_json(&doc.to_string()).unwrap()
        })
        .collect()
}

/// The decision against 1,000 flows for a requester in 50 groups (only the last flow fits: every
/// flow is read), in process, and the flows' parsing as the store's read does it, against the
/// grant's database floor measured in the same run.
async fn flows_check(runs: usize) {
    use pgjit::contract::flow::{decide, Request};
    use pgjit::contract::identity::Person;
    let flows: Vec<std::sync::Arc<pgjit::contract::flow::Flow>> = many_flows(1000).into_iter().map(std::sync::Arc::new).collect();
    let texts: Vec<String> = flows.iter().map(|f| serde_json::to_string(f.as_ref()).unwrap()).collect();
    let refs: Vec<&pgjit::contract::flow::Flow> = flows.iter().map(|f| f.as_ref()).collect();
    let flow_set = pgjit::contract::flow::FlowSet::new(flows.clone());
    let mut requester = Person::named(&["arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Eng_0123456789abcdef/john.doe@corp.com"]).unwrap();
    requester.groups = (950..1000).map(|i| format!("team-{i}")).collect();
    let mut approvers = vec![Person::named(&["jane@corp.com"]).unwrap(), Person::named(&["dave@corp.com"]).unwrap()];
    approvers[0].groups.insert("dba".into());
    approvers[1].groups.insert("team-999-leads".into());
    let access: Vec<AccessEntry> = serde_json::from_value(json!([{"database": "app", "schema": "s999", "table": "orders", "privileges": ["INSERT"]}, {"database": "app", "role": "reporting"}])).unwrap();
    let owners = std::collections::BTreeSet::new();
    let request = Request { integration: "orders-prod", flow: None, requester: &requester, access: &access, duration_seconds: 3600, reason: Some("INC-42"), ticket: Some("INC-42"), at: Utc::now() };
    assert_eq!(decide(&refs, &request, &approvers, &owners).unwrap().flow.name, "flow-0999", "only the last flow fits");
    assert_eq!(flow_set.decide(&request, &approvers, &owners).unwrap().flow.name, "flow-0999", "the index finds it too");

    // The floor: the grant's database part, as `bench-db grant` measures it (one transaction).
    let e = env();
    let admin = e.admin();
    let client = admin.connect("app").await.unwrap();
    let entries: Vec<AccessEntry> = serde_json::from_value(orders_access()).unwrap();
    let set = AccessSet::from_entries(&entries).unwrap();
    let profile = set.databases["app"].profile_role(PREFIX, "app");
    client.batch_execute(&format!("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {l}) THEN CREATE ROLE {p} NOLOGIN; END IF; END $$", l = literal(&profile), p = ident(&profile))).await.unwrap();
    let password = SecretString::random_password();
    let (mut floor, mut decision, mut parse, mut warm) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut indexed, mut indexed_warm, mut index) = (Vec::new(), Vec::new(), Vec::new());
    let mut users = Vec::new();
    for i in 0..runs {
        let user = login_role_name(PREFIX, &format!("flows{i}"));
        let sql = format!(
            "BEGIN; SELECT pg_advisory_xact_lock(1); GRANT SELECT ON TABLE sales.orders TO {p}; GRANT USAGE ON SCHEMA sales TO {p}; \
             GRANT CONNECT ON DATABASE app TO {p}; CREATE ROLE {u} LOGIN PASSWORD {v} VALID UNTIL {t} ROLE {a} IN ROLE {p}; COMMIT",
            p = ident(&profile),
            u = ident(&user),
            v = literal(&postgres_protocol_verifier(&password)),
            t = literal(&(Utc::now() + chrono::Duration::hours(1)).format("%Y-%m-%d %H:%M:%S+00").to_string()),
            a = ident(&e.admin_user),
        );
        let started = Instant::now();
        client.batch_execute(&sql).await.unwrap();
        floor.push(started.elapsed());
        users.push(user);
        let started = Instant::now();
        let chosen = decide(&refs, &request, &approvers, &owners).unwrap();
        decision.push(started.elapsed());
        std::hint::black_box(chosen);
        // Again at once: the flows now in the CPU's caches.
        let started = Instant::now();
        std::hint::black_box(decide(&refs, &request, &approvers, &owners).unwrap());
        warm.push(started.elapsed());
        let started = Instant::now();
        let parsed: Vec<_> = texts.iter().map(|t| pgjit::contract::flow::Flow::from_json(t).unwrap()).collect();
        parse.push(started.elapsed());
        std::hint::black_box(parsed);
        // As pgjit decides: the integration's indexed set (cold: the parse above went between).
        let started = Instant::now();
        std::hint::black_box(flow_set.decide(&request, &approvers, &owners).unwrap());
        indexed.push(started.elapsed());
        let started = Instant::now();
        std::hint::black_box(flow_set.decide(&request, &approvers, &owners).unwrap());
        indexed_warm.push(started.elapsed());
        let started = Instant::now();
        std::hint::black_box(pgjit::contract::flow::FlowSet::new(flows.clone()));
        index.push(started.elapsed());
    }
    for user in users {
        client.batch_execute(&format!("DROP ROLE {}", ident(&user))).await.unwrap();
    }
    let (floor, decision, parse, warm) = (median(floor), median(decision), median(parse), median(warm));
    let (indexed, indexed_warm, index) = (median(indexed), median(indexed_warm), median(index));
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / floor.as_secs_f64();
    println!("access flows: 1000 flows, a requester in 50 groups, 2 approvers ({runs} runs, medians):");
    println!("  the grant's database floor (one transaction)   {:>8.3} ms", ms(floor));
    println!("  pgjit's decision (the integration's indexed set) {:>7.3} ms = {:.2} % of the floor (target: under 2 %)", ms(indexed), pct(indexed));
    println!("  the same again at once (warm caches)            {:>8.3} ms = {:.2} % of the floor", ms(indexed_warm), pct(indexed_warm));
    println!("  the index, made once per change of the flows    {:>8.3} ms = {:.2} % of the floor", ms(index), pct(index));
    println!("  for comparison, every flow read                 {:>8.3} ms = {:.2} % (warm {:.3} ms = {:.2} %)", ms(decision), pct(decision), ms(warm), pct(warm));
    println!("  reading the 1000 flows' documents (parse+check) {:>8.3} ms = {:.2} % of the floor (once per document and environment: the store keeps them parsed)", ms(parse), 100.0 * parse.as_secs_f64() / floor.as_secs_f64());
}

/// Approval to active over modeled AWS latency: an approval tool's signed approval through the
/// grant function, against an approval at the front door (its MAC and PutEvents, then the same
/// grant function on what it sent). The difference, in AWS round trips, is what the front door
/// adds between the approver's click and the grant.
async fn front_door(runs: usize, aws: Duration) {
    use pgjit::contract::requests::{Action, Caller, NewRequest};
    println!("the front door over modeled latency ({} ms an AWS request), {runs} runs, medians:", ms(aws));
    let base = isolated_services().await;
    let http = pgjit_tests::latency::delayed_http_client(aws);
    let svc = pgjit::aws::Services::new((*base.config).clone(), pgjit_tests::moto_sdk_config_via(&env().moto_url, http).await);
    register_integration(&base, "orders-prod", json!({})).await;
    let (requester, approver) = ("arn:aws:iam::123456789012:user/bench-requester", "arn:aws:iam::123456789012:user/bench-approver");
    pgjit_tests::put_flow(&base, json!({"name": "orders-read", "integrations": ["orders-prod"], "requesters": {"principals": [requester]},
        "access": [{"database": "app", "schema": "sales", "table": "*", "privileges": ["SELECT"]}], "max_duration_seconds": 3600,
        "approval": {"approvers": {"principals": [approver]}}})).await;
    let caller = |arn: &str| Caller { arn: arn.to_owned(), user_id: format!("AIDA{}", arn.len()), account: "123456789012".into() };
    let (asks, approves) = (caller(requester), caller(approver));
    let (mut tool, mut door, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        // An approval tool's approval, signed before it is sent (not timed: the tool's work).
        let mut event = approval(&format!("TOOL-{i}"), "orders-prod", requester, orders_access());
        event["detail"]["requester"]["iam_arn"] = json!(requester);
        event["detail"]["approver"] = json!(approver);
        let event = pgjit_tests::signed(&base, event).await;
        let started = Instant::now();
        let granted = pgjit::control::handlers::grant(&svc, lambda_runtime::LambdaEvent::new(event, lambda_runtime::Context::default())).await.unwrap();
        tool.push(started.elapsed());
        pgjit::control::grants::revoke::revoke(&base, &granted.request_id, pgjit::contract::events::RevokeTrigger::Early, Utc::now()).await.unwrap();

        // The same at the front door: asked (not timed), then approved and granted.
        let new = NewRequest { client_token: format!("b{i}"), integration: "orders-prod".into(), flow: None, access: serde_json::from_value(orders_access()).unwrap(),
            duration_seconds: 3600, reason: Some("bench".into()), ticket: None, start_at: None };
        let made = Box::pin(pgjit::control::requests::handle(&base, &asks, Action::Create(new), Utc::now())).await.unwrap();
        let request_id = made.requests[0].request_id.clone();
        STEPS.get().map(|l| l.take());
        let (started, wall) = (Instant::now(), Utc::now());
        let reply = Box::pin(pgjit::control::requests::handle(&svc, &approves, Action::Approve { request_id: request_id.clone(), client_token: None }, Utc::now())).await.unwrap();
        let handler = started.elapsed();
        let sent = reply.sent.expect("the approval was sent");
        // On the bus when its log line says so: the rest of the handler runs beside the grant.
        let on_bus = STEPS.get().map(|l| l.take()).unwrap_or_default().lines().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["fields"]["message"] == "approval sent to the approval bus").then(|| v["timestamp"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()))?
        });
        let to_bus = on_bus.map(|t| (t.with_timezone(&Utc) - wall).to_std().unwrap_or_default()).unwrap_or(handler);
        let started = Instant::now();
        Box::pin(pgjit::control::handlers::grant(&svc, lambda_runtime::LambdaEvent::new(sent, lambda_runtime::Context::default()))).await.unwrap();
        door.push(to_bus + started.elapsed());
        whole.push(handler);
        pgjit::control::grants::revoke::revoke(&base, &request_id, pgjit::contract::events::RevokeTrigger::Early, Utc::now()).await.unwrap();
    }
    let (tool, door, whole) = (median(tool), median(door), median(whole));
    println!("  an approval tool's approval to active (the grant function)   {:>8.1} ms", ms(tool));
    println!("  an approval at the front door to active (to the bus + grant)  {:>8.1} ms   (the approve call itself: {:.1} ms)", ms(door), ms(whole));
    println!("  the front door adds {:.1} ms = {:.1} AWS round trips (target: at most 2)", ms(door.saturating_sub(tool)), door.saturating_sub(tool).as_secs_f64() / aws.as_secs_f64());
}

/// 2,000 grants drawn from 40 distinct privilege sets on one table, each revoked and dropped
/// after use: the table's ACL holds one entry per privilege set (not per grant), and once the
/// profile roles are unused past their retention cleanup's drop takes it back to where it was.
async fn acl_growth() {
    const GRANTS: usize = 2000;
    const SETS: usize = 40;
    let e = env();
    let admin = e.admin();
    let su = e.superuser("app").await;
    let prefix = format!("acl{}_", rand::random::<u16>());
    // Created by its owner, so the owner's default privileges give the admin its grant option.
    su.batch_execute("SET ROLE app_owner; CREATE TABLE IF NOT EXISTS sales.acl_bench (id int); RESET ROLE").await.unwrap();
    let acl = || async {
        let su = env().superuser("app").await;
        let row = su.query_one("SELECT coalesce(cardinality(relacl), 0) FROM pg_class WHERE oid = 'sales.acl_bench'::regclass", &[]).await.unwrap();
        row.get::<_, i32>(0)
    };
    let before = acl().await;
    // 40 distinct non-empty subsets of the table privileges.
    let privileges = ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"];
    let sets: Vec<AccessSet> = (1..=SETS)
        .map(|mask| {
            let chosen: Vec<&str> = privileges.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, p)| *p).collect();
            let entries: Vec<AccessEntry> =
                serde_json::from_value(json!([{"database": "app", "schema": "sales", "table": "acl_bench", "privileges": chosen}])).unwrap();
            AccessSet::from_entries(&entries).unwrap()
        })
        .collect();
    let password = SecretString::random_password();
    let started = Instant::now();
    let mut largest = before;
    for n in 0..GRANTS {
        let user = login_role_name(&prefix, &format!("user{n}@corp.com"));
        let spec = GrantSpec {
            username: &user,
            access: &sets[n % SETS],
            login: LoginMethod::Password(&password),
            valid_until: Utc::now() + chrono::Duration::hours(1),
            prefix: &prefix,
            grantable_roles: &[],
            privileged_roles: &[],
            audit: None,
        };
        roles::grant::grant(&admin, &spec).await.unwrap();
        pgjit::engine::roles::departure::delete(&admin, "postgres", &user, &prefix, pgjit::contract::integration::DEFAULT_HOLDING_ROLE).await.unwrap();
        if n % 200 == 199 {
            largest = largest.max(acl().await);
        }
    }
    let elapsed = started.elapsed();
    let after_grants = acl().await;
    // Unused past the retention: what cleanup does to each profile role.
    let client = admin.connect("postgres").await.unwrap();
    let profiles: Vec<_> = pgjit::engine::roles::departure::managed_roles(&client, &prefix).await.unwrap().into_iter().filter(|r| r.profile && r.members == 0).collect();
    for profile in &profiles {
        pgjit::engine::roles::departure::drop_profile(&admin, "postgres", &profile.name, pgjit::contract::integration::DEFAULT_HOLDING_ROLE).await.unwrap();
    }
    let after_retention = acl().await;
    println!("ACL growth: {GRANTS} grants from {SETS} privilege sets on one table, each revoked and dropped ({:.1} s)", elapsed.as_secs_f64());
    println!("  ACL entries before: {before}; largest during the grants: {largest}; after: {after_grants} (at most {before} + {SETS} expected): {}",
        if after_grants <= before + SETS as i32 && largest <= before + SETS as i32 { "met" } else { "NOT met" });
    println!("  profile roles: {}; after their retention cleanup drops them: ACL {after_retention} entries ({})", profiles.len(),
        if after_retention == before { "back to where it was" } else { "NOT back" });
    su.batch_execute("DROP TABLE sales.acl_bench").await.unwrap();
}

/// pgjit's grant (database part) against one pipelined transaction of the same final effect,
/// both on an open connection; connect (TCP + TLS + SCRAM) on its own; and both again on a new
/// connection each, as a function does. The runs interleave, so drift hits all alike.
async fn grant_vs_floor(runs: usize) {
    let e = env();
    let admin = e.admin();
    let entries: Vec<AccessEntry> = serde_json::from_value(orders_access()).unwrap();
    let access = AccessSet::from_entries(&entries).unwrap();
    let prefix = PREFIX;
    let password = SecretString::random_password();
    fn grant_spec<'a>(user: &'a str, access: &'a AccessSet, password: &'a SecretString) -> GrantSpec<'a> {
        GrantSpec { username: user, access, login: LoginMethod::Password(password), valid_until: Utc::now() + chrono::Duration::hours(1), prefix: PREFIX, grantable_roles: &[], privileged_roles: &[], audit: None }
    }
    // The floor: the same final SQL effect, one transaction, one round trip.
    let floor_sql = |user: &str| {
        format!(
            "BEGIN; SELECT pg_advisory_xact_lock(1); GRANT SELECT ON TABLE sales.orders TO {p}; GRANT USAGE ON SCHEMA sales TO {p}; \
             GRANT CONNECT ON DATABASE app TO {p}; CREATE ROLE {u} LOGIN PASSWORD {v} VALID UNTIL {t} ROLE {a} IN ROLE {p}; COMMIT",
            p = ident(&access.databases["app"].profile_role(prefix, "app")),
            u = ident(user),
            v = literal(&postgres_protocol_verifier(&password)),
            t = literal(&(Utc::now() + chrono::Duration::hours(1)).format("%Y-%m-%d %H:%M:%S+00").to_string()),
            a = ident(&e.admin_user),
        )
    };
    // Warm-up: the profile role exists from here on, as it does for every grant but the first.
    let first = login_role_name(prefix, "warmup");
    roles::grant::grant(&admin, &grant_spec(&first, &access, &password)).await.unwrap();
    pgjit::engine::roles::departure::delete(&admin, "postgres", &first, prefix, pgjit::contract::integration::DEFAULT_HOLDING_ROLE).await.unwrap();

    let floor_client = admin.connect("app").await.unwrap();
    let pgjit_clients = vec![admin.connect("app").await.unwrap()];
    let (mut connect, mut floor, mut pgjit, mut floor_new, mut pgjit_new) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut users = Vec::new();
    for i in 0..runs {
        let user = login_role_name(prefix, &format!("floor{i}"));
        let sql = floor_sql(&user);
        let started = Instant::now();
        floor_client.batch_execute(&sql).await.unwrap();
        floor.push(started.elapsed());
        users.push(user);

        let user = login_role_name(prefix, &format!("pgjit{i}"));
        let started = Instant::now();
        roles::grant::grant_on(&pgjit_clients, &e.admin_user, &grant_spec(&user, &access, &password)).await.unwrap();
        pgjit.push(started.elapsed());
        users.push(user);

        let started = Instant::now();
        drop(admin.connect("app").await.unwrap());
        connect.push(started.elapsed());

        let user = login_role_name(prefix, &format!("floornew{i}"));
        let sql = floor_sql(&user);
        let started = Instant::now();
        admin.connect("app").await.unwrap().batch_execute(&sql).await.unwrap();
        floor_new.push(started.elapsed());
        users.push(user);

        let user = login_role_name(prefix, &format!("pgjitnew{i}"));
        let started = Instant::now();
        roles::grant::grant(&admin, &grant_spec(&user, &access, &password)).await.unwrap();
        pgjit_new.push(started.elapsed());
        users.push(user);
    }
    for u in &users {
        pgjit::engine::roles::departure::delete(&admin, "postgres", u, prefix, pgjit::contract::integration::DEFAULT_HOLDING_ROLE).await.unwrap();
    }
    // The SCRAM verifier pgjit computes per grant (PBKDF2, 4096 rounds), which the floor skips,
    // against postgres-protocol's, which pgjit used before.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let started = Instant::now();
        std::hint::black_box(pgjit::engine::scram::verifier(&password));
        ours.push(started.elapsed());
        let started = Instant::now();
        std::hint::black_box(postgres_protocol_verifier(&password));
        theirs.push(started.elapsed());
    }
    let (v, v_before) = (ms(median(ours)), ms(median(theirs)));
    // Each pgjit run against the floor run next to it: the machine's drift cancels out.
    let paired = |ours: &[Duration], floor: &[Duration]| {
        let mut r: Vec<f64> = ours.iter().zip(floor).map(|(o, f)| o.as_secs_f64() / f.as_secs_f64()).collect();
        r.sort_by(f64::total_cmp);
        format!("paired: median {:.2} x, p25-p75 {:.2}-{:.2}", r[r.len() / 2], r[r.len() / 4], r[r.len() * 3 / 4])
    };
    let (open, new) = (paired(&pgjit, &floor), paired(&pgjit_new, &floor_new));
    let (c, f, p, fnew, pnew) = (ms(median(connect)), ms(median(floor)), ms(median(pgjit)), ms(median(floor_new)), ms(median(pgjit_new)));
    println!("grant, database part ({runs} runs each, interleaved, medians):");
    println!("  connect (TCP + TLS + SCRAM)                    {c:>8.2} ms");
    println!("  on an open connection:");
    println!("    floor: one pipelined transaction             {f:>8.2} ms");
    println!("    pgjit roles::grant_on                        {p:>8.2} ms  = {:.2} x floor ({open})", p / f);
    println!("  on a new connection each (as a function runs):");
    println!("    floor: connect, then the transaction         {fnew:>8.2} ms");
    println!("    pgjit roles::grant (connects itself)         {pnew:>8.2} ms  = {:.2} x floor ({new})", pnew / fnew);
    println!("  the SCRAM verifier pgjit computes per grant    {v:>8.2} ms (postgres-protocol's: {v_before:.2} ms)");
}

/// postgres-protocol's verifier: the floor's, computed outside its timing (pgjit's grant computes
/// its own inside).
fn postgres_protocol_verifier(password: &SecretString) -> String {
    postgres_protocol::password::scram_sha_256(password.expose().as_bytes())
}

/// CPU seconds used so far: by the whole machine (every core), by moto's server process and by
/// this process (pgjit). What the machine used beyond the two is PostgreSQL's, near enough.
#[derive(Clone, Copy)]
struct Cpu {
    machine: f64,
    moto: f64,
    pgjit: f64,
}

impl Cpu {
    fn now() -> Cpu {
        // A floor read as zero would be a false figure: no moto process, no measurement.
        let pid = std::fs::read_to_string(state_file("moto.pid")).expect("moto's pid in the environment's state directory");
        // /proc/stat's first line: user nice system idle iowait irq softirq steal (clock ticks).
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| t.lines().next().map(|l| l.split_whitespace().skip(1).filter_map(|v| v.parse::<f64>().ok()).collect::<Vec<_>>()))
            .map(|v| v.iter().take(8).sum::<f64>() - v.get(3).copied().unwrap_or(0.0) - v.get(4).copied().unwrap_or(0.0))
            .unwrap_or(0.0);
        Cpu { machine: machine / 100.0, moto: process_cpu(pid.trim()), pgjit: process_cpu("self") }
    }

    fn since(self, start: Cpu) -> Cpu {
        Cpu { machine: self.machine - start.machine, moto: self.moto - start.moto, pgjit: self.pgjit - start.pgjit }
    }

    /// "machine 1.6 of 2 cores busy: moto 0.8, pgjit 0.2, PostgreSQL and the rest 0.6"
    fn describe(self, elapsed: Duration) -> String {
        let s = elapsed.as_secs_f64();
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        format!(
            "machine {:.2} of {cores} cores busy: moto {:.2}, pgjit {:.2}, PostgreSQL and the rest {:.2}",
            self.machine / s,
            self.moto / s,
            self.pgjit / s,
            (self.machine - self.moto - self.pgjit) / s
        )
    }
}

/// A process's CPU seconds (user and system) from /proc/PID/stat.
fn process_cpu(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // The fields after the parenthesised command: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    fields.get(11..13).map(|t| t.iter().filter_map(|v| v.parse::<f64>().ok()).sum::<f64>()).unwrap_or(0.0) / 100.0
}

/// A file of the local environment's state directory (moto's log and pid).
fn state_file(name: &str) -> String {
    format!("{}/{name}", std::env::var("PGJIT_TEST_STATE").unwrap_or_default())
}

/// Lines written to the environment's moto log so far (one per AWS request).
fn moto_requests() -> usize {
    std::fs::read_to_string(state_file("moto.log")).map(|t| t.lines().filter(|l| l.contains("\" 200 ") || l.contains("\" 4")).count()).unwrap_or(0)
}

/// Statements PostgreSQL logged so far (log_statement=all), and connections authorized.
fn postgres_log_counts() -> (usize, usize) {
    let log = env().server_log();
    (log.lines().filter(|l| l.contains("LOG:  statement:") || l.contains("LOG:  execute")).count(), log.lines().filter(|l| l.contains("connection authorized")).count())
}

/// Grant and revoke through the handlers on moto and PostgreSQL: medians, the share of each
/// step (from the step log lines), and the requests each grant makes to AWS and PostgreSQL.
async fn end_to_end(runs: usize) {
    let svc = isolated_services().await;
    register_integration(&svc, "e2e", json!({})).await;
    let mut grant_times: Vec<Duration> = Vec::new();
    let mut revoke_times = Vec::new();
    let (mut aws, mut statements) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let event = pgjit::contract::events::parse_approval(approval(&format!("E2E-{i}"), "e2e", "e2e@corp.com", orders_access())).unwrap();
        let (aws0, (pg0, _)) = (moto_requests(), postgres_log_counts());
        let started = Instant::now();
        let granted = pgjit::control::grants::grant::grant(&svc, &event, Utc::now()).await.unwrap();
        grant_times.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await; // let the logs reach their files
        aws.push(moto_requests() - aws0);
        statements.push(postgres_log_counts().0 - pg0);
        let started = Instant::now();
        // As the schedule fires it: at the expiry (before it, a scheduled revoke changes nothing).
        pgjit::control::grants::revoke::revoke(&svc, &format!("E2E-{i}"), pgjit::contract::events::RevokeTrigger::Scheduled, granted.expires_at).await.unwrap();
        revoke_times.push(started.elapsed());
    }
    aws.sort();
    statements.sort();
    // Each step's share of the grant, from the "step done" lines.
    let mut steps: std::collections::BTreeMap<String, Vec<f64>> = std::collections::BTreeMap::new();
    for line in STEPS.get().map(|l| l.take()).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let f = &v["fields"];
        if f["message"] == "step done" {
            let name = format!("{}.{}", f["operation"].as_str().unwrap_or(""), f["step"].as_str().unwrap_or(""));
            steps.entry(name).or_default().push(f["duration_ms"].as_f64().unwrap_or(0.0));
        }
    }
    println!("end to end through the handlers ({runs} runs, medians; moto and PostgreSQL on this machine):");
    println!("  grant  {:>8.2} ms   AWS requests per grant: {}   PostgreSQL statements per grant: {}", ms(median(grant_times.clone())), aws[aws.len() / 2], statements[statements.len() / 2]);
    println!("  revoke {:>8.2} ms   (retention 0: the role is dropped too)", ms(median(revoke_times)));
    let grant_ms = ms(median(grant_times.clone()));
    for (step, mut v) in steps {
        v.sort_by(|a, b| a.total_cmp(b));
        let m = v[v.len() / 2];
        let share = if step.starts_with("grant.") { format!("{:>5.1}% of the grant", 100.0 * m / grant_ms) } else { String::new() };
        println!("    {step:<28} {m:>8.2} ms  {share}");
    }
}

/// Concurrent grants through the handler: grants per second at 10, 50 and 100 at once.
async fn burst() {
    println!("burst: concurrent grants through the grant handler (moto + PostgreSQL, 2 cores):");
    for n in [1usize, 10, 50, 100] {
        let svc = Arc::new(isolated_services().await);
        register_integration(&svc, "burst", json!({})).await;
        let started = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    let event = approval(&format!("B{n}-{i}"), "burst", &format!("b{i}@corp.com"), orders_access());
                    pgjit::control::grants::grant::grant(&svc, &pgjit::contract::events::parse_approval(event).unwrap(), Utc::now()).await
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                ok += 1;
            }
        }
        let elapsed = started.elapsed();
        println!("  {n:>3} at once: {ok}/{n} succeeded in {:>8.1} ms = {:>6.1} grants/s", ms(elapsed), ok as f64 / elapsed.as_secs_f64());
        pgjit::control::grants::revoke::revoke_all(&svc, "burst", Utc::now()).await.unwrap();
    }
}

/// Cleanup at scale. Each store holds `total` grant records, `due` of them due: half active
/// grants past expiry whose revoke never ran (with their credentials secret), half revoked users
/// past retention, each with a real login role made by pgjit's grant, spread over `integrations`
/// integrations on the local server. Today's sweep (the one before concurrency: each item one
/// after the other, resolving the admin secret and connecting for itself) and pgjit's sweep run
/// on stores seeded alike, in one run.
async fn cleanup_scaling() {
    println!("cleanup: due items among N records over {SWEEP_INTEGRATIONS} integrations (real roles; moto and PostgreSQL on this machine):");
    let (svc, now) = seed_sweep(10_000, 1_000, json!({})).await;
    let sequential = measure_sequential_sweep(&svc, now).await;
    let mut per_item = Duration::ZERO;
    for (total, due) in [(1_000usize, 100usize), (10_000, 100), (10_000, 1_000)] {
        let (svc, now) = seed_sweep(total, due, json!({})).await;
        let elapsed = measure_pgjit_sweep(&svc, now, total, due).await;
        if due == 1_000 {
            per_item = elapsed / 1_000;
            println!("  1000 due: today's sweep / pgjit's = {:.2} x (target: at least 4 x)", sequential.as_secs_f64() / elapsed.as_secs_f64());
        }
    }
    println!(
        "  10000 due items, extrapolated: {:.0} s at {:.1} ms an item (one invocation: 900 s, items start until 16 s before)",
        (per_item * 10_000).as_secs_f64(),
        ms(per_item)
    );
}

/// [`cleanup_scaling`]'s 10,000 records with 1,000 due once more, over modeled latency: every AWS
/// request answered `aws` later and every PostgreSQL round trip `pg_rtt` longer, as from a Lambda
/// function to AWS's endpoints and an RDS instance in another availability zone. Waiting only:
/// moto still does its work on this machine's CPU, one request at a time.
async fn cleanup_over_latency(aws: Duration, pg_rtt: Duration) {
    println!(
        "cleanup over modeled latency ({} ms an AWS request, {} ms a PostgreSQL round trip), 10000 records, 1000 due, {SWEEP_INTEGRATIONS} integrations:",
        ms(aws),
        ms(pg_rtt)
    );
    let link = pgjit_tests::Proxy::with_latency(env().port, pg_rtt / 2).await;
    let http = pgjit_tests::latency::delayed_http_client(aws);
    let far = json!({"port": link.port});
    let slowed = |svc: pgjit::aws::Services| {
        let http = http.clone();
        async move { pgjit::aws::Services::new((*svc.config).clone(), pgjit_tests::moto_sdk_config_via(&env().moto_url, http).await) }
    };
    let (svc, now) = seed_sweep(10_000, 1_000, far.clone()).await;
    let sequential = measure_sequential_sweep(&slowed(svc).await, now).await;
    let (svc, now) = seed_sweep(10_000, 1_000, far).await;
    let elapsed = measure_pgjit_sweep(&slowed(svc).await, now, 10_000, 1_000).await;
    println!("  1000 due: today's sweep / pgjit's = {:.2} x", sequential.as_secs_f64() / elapsed.as_secs_f64());
    println!(
        "  10000 due items, extrapolated: today's sweep {:.0} s, pgjit's {:.0} s (one invocation: 900 s)",
        (sequential * 10).as_secs_f64(),
        (elapsed * 10).as_secs_f64()
    );
}

const SWEEP_INTEGRATIONS: usize = 4;

/// Today's sequential sweep over a store of 10,000 records with 1,000 due; prints and returns its time.
async fn measure_sequential_sweep(svc: &pgjit::aws::Services, now: chrono::DateTime<Utc>) -> Duration {
    let (requests, cpu, started) = (moto_requests(), Cpu::now(), Instant::now());
    let done = sequential_sweep(svc, now).await;
    let elapsed = started.elapsed();
    let (requests, cpu) = (moto_requests() - requests, Cpu::now().since(cpu));
    println!(
        "  today's sequential sweep: 10000 records, 1000 due: {done} done in {:>8.1} ms = {:.1} ms an item, {:.1} AWS requests an item, {}",
        ms(elapsed),
        ms(elapsed) / 1000.0,
        requests as f64 / 1000.0,
        cpu.describe(elapsed)
    );
    elapsed
}

/// pgjit's sweep (`cleanup::run`) over a store of `total` records with `due` due; prints and
/// returns its time.
async fn measure_pgjit_sweep(svc: &pgjit::aws::Services, now: chrono::DateTime<Utc>, total: usize, due: usize) -> Duration {
    let (requests, cpu, started) = (moto_requests(), Cpu::now(), Instant::now());
    let report = pgjit::control::cleanup::run(svc, now).await.unwrap();
    let elapsed = started.elapsed();
    let (requests, cpu) = (moto_requests() - requests, Cpu::now().since(cpu));
    let done = report.done();
    assert_eq!((done, report.left, report.errors.len()), (due, 0, 0), "{:?}", report.errors);
    println!(
        "  pgjit's sweep: {total:>6} records, {due:>5} due: {done} done, {} items read ({:.2} x due), {} connections, {:>8.1} ms = {:.1} ms an item, {:.1} AWS requests an item, {}",
        report.items_read,
        report.items_read as f64 / due as f64,
        report.connections,
        ms(elapsed),
        ms(elapsed) / due as f64,
        requests as f64 / due as f64,
        cpu.describe(elapsed)
    );
    elapsed
}

/// A store as [`cleanup_scaling`] describes, and the time the sweep runs as of.
/// `integration` holds settings of the integrations' own (another port, say).
async fn seed_sweep(total: usize, due: usize, integration: serde_json::Value) -> (pgjit::aws::Services, chrono::DateTime<Utc>) {
    // The sweep's settings may be tried from the environment (PGJIT_CLEANUP_CONCURRENCY, ..._CONNECTIONS).
    let svc = isolated_services_with(|name| name.starts_with("PGJIT_CLEANUP_").then(|| std::env::var(name).ok()).flatten()).await;
    let now = Utc::now();
    let mut registered = Vec::new();
    let mut settings = json!({"user_cleanup_after_days": 0});
    for (k, v) in integration.as_object().into_iter().flatten() {
        settings[k] = v.clone();
    }
    for n in 0..SWEEP_INTEGRATIONS {
        registered.push(register_integration(&svc, &format!("sweep{n}"), settings.clone()).await);
    }
    let access: Vec<AccessEntry> = serde_json::from_value(orders_access()).unwrap();
    let access = AccessSet::from_entries(&access).unwrap();
    let admin = env().admin();
    let password = SecretString::random_password();
    let approved = pgjit::contract::events::parse_approval(approval("SWEEP", "sweep0", "sweep@corp.com", orders_access())).unwrap();
    let template = pgjit::aws::store::GrantRecord::granting(&approved, &registered[0], String::new(), now, now, now);
    let svc_ref = &svc;
    let (registered, access, admin, password, template) = (&registered, &access, &admin, &password, &template);
    stream::iter(0..total)
        .map(|i| async move {
            let integration = &registered[i % registered.len()];
            let mut r = template.clone();
            r.request_id = format!("SWEEP-{i}");
            r.integration = integration.name.clone();
            r.status = pgjit::aws::store::GrantStatus::Active;
            if i < due {
                let user = login_role_name(&integration.user_prefix, &format!("sweep{i}@corp.com"));
                let spec = GrantSpec {
                    username: &user,
                    access,
                    login: LoginMethod::Password(password),
                    valid_until: now + chrono::Duration::hours(1),
                    prefix: &integration.user_prefix,
                    grantable_roles: &[],
                    privileged_roles: &[],
                    audit: None,
                };
                roles::grant::grant(admin, &spec).await.unwrap();
                r.db_user = user;
                if i % 2 == 0 {
                    // Active past expiry, its revoke never ran: the secret is still there.
                    r.expires_at = now - chrono::Duration::minutes(1);
                    r.due_at = Some(pgjit::aws::store::due_key(r.expires_at));
                    let name = pgjit::aws::credentials::secret_name(svc_ref, &integration.name, &r.request_id);
                    let value = pgjit::aws::credentials::CredentialsValue {
                        engine: "postgres",
                        host: "localhost",
                        port: 5432,
                        dbname: "app",
                        username: &r.db_user,
                        password,
                        expires_at: r.expires_at,
                    };
                    let readers = pgjit::aws::credentials::Readers { requester: None, functions: &[], others: &[] };
                    r.secret_arn = Some(pgjit::aws::credentials::store(svc_ref, &name, &value, "sweep@corp.com", &r.request_id, &readers).await.unwrap());
                } else {
                    // Revoked, retention over.
                    r.status = pgjit::aws::store::GrantStatus::Revoked;
                    r.revoked_at = Some(now - chrono::Duration::days(2));
                    r.delete_after = Some(now - chrono::Duration::minutes(1));
                    r.due_at = r.delete_after.map(pgjit::aws::store::due_key);
                }
            } else {
                r.db_user = format!("{}sweep_{i:08}", integration.user_prefix);
                r.expires_at = now + chrono::Duration::days(1);
                r.due_at = Some(pgjit::aws::store::due_key(r.expires_at));
            }
            svc_ref.store.insert_grant(&r).await.unwrap();
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    (svc, now)
}

/// The sweep's due work as it ran before concurrency: item after item, each resolving the
/// integration's server (a read of the admin secret) and opening its own connection. Returns
/// how many items it did.
async fn sequential_sweep(svc: &pgjit::aws::Services, now: chrono::DateTime<Utc>) -> usize {
    let integrations: std::collections::HashMap<String, pgjit::contract::integration::Integration> =
        svc.store.list_integrations().await.unwrap().into_iter().map(|i| (i.name.clone(), i)).collect();
    let mut done = 0;
    let (due, _) = svc.store.due_grants(pgjit::aws::store::GrantStatus::Revoked, now).await.unwrap();
    for mut record in due {
        let server = pgjit::control::endpoint::Server::open(svc, integrations[&record.integration].clone(), 1).await.unwrap();
        pgjit::control::grants::revoke::delete_user(svc, &mut record, &server, now).await.unwrap();
        done += 1;
    }
    let (due, _) = svc.store.due_grants(pgjit::aws::store::GrantStatus::Active, now).await.unwrap();
    for record in due.into_iter().filter(|r| r.expires_at <= now) {
        pgjit::control::grants::revoke::revoke(svc, &record.request_id, pgjit::contract::events::RevokeTrigger::Cleanup, now).await.unwrap();
        done += 1;
    }
    done
}

/// Discovery of a database with 10,000 tables in 100 schemas: the catalog read against one
/// catalog query, and the statements it takes.
async fn discovery_scaling() {
    let e = env();
    let su = e.superuser("postgres").await;
    let exists = su.query_opt("SELECT 1 FROM pg_database WHERE datname = 'bench_wide'", &[]).await.unwrap().is_some();
    if !exists {
        su.batch_execute("CREATE DATABASE bench_wide OWNER app_owner").await.unwrap();
        let wide = e.superuser("bench_wide").await;
        let mut sql = String::from("SET ROLE app_owner;");
        for s in 0..100 {
            sql.push_str(&format!("CREATE SCHEMA s{s};"));
            for t in 0..100 {
                sql.push_str(&format!("CREATE TABLE s{s}.t{t} (id int);"));
            }
        }
        sql.push_str("RESET ROLE;");
        wide.batch_execute(&sql).await.unwrap();
    }
    // The admin's set-up, as in every database pgjit manages (safe to repeat).
    let setup = pgjit::engine::setup::setup_sql(pgjit::engine::setup::Flavor::Postgres, &e.admin_user, pgjit::contract::integration::DEFAULT_HOLDING_ROLE, &Default::default()).unwrap();
    e.superuser("bench_wide").await.batch_execute(&setup).await.unwrap();
    let admin = e.admin();
    let client = admin.connect("bench_wide").await.unwrap();
    let mut read = Vec::new();
    let mut single = Vec::new();
    let mut objects = 0;
    for _ in 0..10 {
        let started = Instant::now();
        let cat = pgjit::engine::catalog::read_database(&client).await.unwrap();
        read.push(started.elapsed());
        objects = cat.relations.len() + cat.schemas.len();
        let started = Instant::now();
        client.query("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r'", &[]).await.unwrap();
        single.push(started.elapsed());
    }
    let (r, s) = (ms(median(read)), ms(median(single)));
    println!("discovery: database with 100 schemas x 100 tables ({objects} schemas and relations):");
    println!("  single catalog query (all tables)     {s:>8.2} ms");
    println!("  pgjit catalog read (5 statements)     {r:>8.2} ms = {:.2} x the single query", r / s);
}
