//! Faults and races: servers that stop, processes killed between steps, databases that never
//! answer, concurrent deliveries. Each test asserts the outcome: nothing active without a record,
//! no role, secret or schedule left behind, and the work finished by the next run.

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{Duration, Utc};
use lambda_runtime::{Context, LambdaEvent};
use pgjit::aws::Services;
use pgjit::contract::events::RevokeTrigger;
use pgjit::control::grants::{GrantError, GrantResult};
use pgjit::aws::store::GrantStatus;
use pgjit_tests::{approval, env, isolated_services, isolated_services_with, orders_access, overdue_grants, register_integration, role_exists, Proxy};
use serde_json::{json, Value};

async fn grant(svc: &Services, event: Value) -> Result<GrantResult, String> {
    pgjit::control::handlers::grant(svc, LambdaEvent::new(pgjit_tests::signed(svc, event).await, Context::default())).await.map_err(|e| e.to_string())
}

/// Nothing of the request is left anywhere: no role, no secret, no schedule, not active.
async fn nothing_left(svc: &Services, integration: &str, request_id: &str, db_user: &str) {
    let su = env().superuser("postgres").await;
    assert!(!role_exists(&su, db_user).await, "{request_id}: role {db_user} left");
    let secret = pgjit::aws::credentials::secret_name(svc, integration, request_id);
    assert!(svc.secrets.describe_secret().secret_id(&secret).send().await.is_err(), "{request_id}: secret left");
    let schedule = pgjit::aws::schedule::schedule_name(request_id);
    assert!(svc.scheduler.get_schedule().name(&schedule).group_name(&svc.config.schedule_group).send().await.is_err(), "{request_id}: schedule left");
    if let Some(record) = svc.store.get_grant(request_id).await.unwrap() {
        assert_ne!(record.status, GrantStatus::Active, "{request_id}: active without access");
    }
}

fn past_stuck(svc: &Services) -> chrono::DateTime<Utc> {
    Utc::now() + Duration::from_std(svc.config.stuck_after).unwrap() + Duration::seconds(5)
}

#[tokio::test]
async fn postgres_stopped_before_and_during_a_grant() {
    let e = env();
    let svc = isolated_services().await;
    let proxy = Proxy::start(e.port).await;
    register_integration(&svc, "flaky", json!({"port": proxy.port})).await;

    // Stopped before: the grant fails, nothing is made; once back, the same event succeeds.
    proxy.down();
    let err = grant(&svc, approval("PGDOWN-1", "flaky", "pg.down@corp.com", orders_access())).await.unwrap_err();
    assert!(err.contains("database role") || err.contains("connect"), "{err}");
    let record = svc.store.get_grant("PGDOWN-1").await.unwrap().unwrap();
    nothing_left(&svc, "flaky", "PGDOWN-1", &record.db_user).await;
    proxy.up();
    let result = grant(&svc, approval("PGDOWN-1", "flaky", "pg.down@corp.com", orders_access())).await.expect("succeeds once the server is back");
    assert_eq!(result.status, GrantStatus::Active);

    // Stopped during: the connection goes away after the endpoint was resolved.
    svc.failpoints.hook("grant:after_connect", proxy.cutter());
    let err = grant(&svc, approval("PGDOWN-2", "flaky", "pg.down@corp.com", orders_access())).await.unwrap_err();
    assert!(err.contains("database role"), "{err}");
    svc.failpoints.clear();
    let record = svc.store.get_grant("PGDOWN-2").await.unwrap().unwrap();
    nothing_left(&svc, "flaky", "PGDOWN-2", &record.db_user).await;
    proxy.up();
    grant(&svc, approval("PGDOWN-2", "flaky", "pg.down@corp.com", orders_access())).await.expect("succeeds once the server is back");
    pgjit::control::grants::revoke::revoke_all(&svc, "flaky", Utc::now()).await.unwrap();
}

#[tokio::test]
async fn postgres_stopped_when_the_revoke_fires() {
    let e = env();
    let svc = isolated_services().await;
    let proxy = Proxy::start(e.port).await;
    register_integration(&svc, "flaky", json!({"port": proxy.port})).await;
    let result = grant(&svc, approval("PGREV-1", "flaky", "pg.rev@corp.com", orders_access())).await.unwrap();
    proxy.down();
    // The revoke reports failure, so the scheduler retries it and the dead-letter queue catches it.
    let err = pgjit::control::handlers::revoke(&svc, LambdaEvent::new(pgjit_tests::signed(&svc, pgjit_tests::early_revoke("PGREV-1")).await, Context::default())).await.unwrap_err();
    assert!(err.to_string().contains("revoke of request"), "{err}");
    assert_eq!(svc.store.get_grant("PGREV-1").await.unwrap().unwrap().status, GrantStatus::Revoking);
    // The next cleanup, with the server back, completes it.
    proxy.up();
    let report = pgjit::control::cleanup::run(&svc, past_stuck(&svc)).await.unwrap();
    assert_eq!(report.finished, ["PGREV-1"], "{report:?}");
    nothing_left(&svc, "flaky", "PGREV-1", &result.db_user).await;
    assert_eq!(svc.store.get_grant("PGREV-1").await.unwrap().unwrap().status, GrantStatus::Deleted);
}

#[tokio::test]
async fn password_login_is_refused_after_expiry_even_without_a_revoke() {
    let e = env();
    let svc = isolated_services().await;
    register_integration(&svc, "expiring", json!({})).await;
    let mut event = approval("EXPIRE-1", "expiring", "short@corp.com", orders_access());
    event["detail"]["duration_seconds"] = json!(2);
    let result = grant(&svc, event).await.unwrap();
    let creds: Value = serde_json::from_str(pgjit::aws::credentials::read(&svc, result.secret_arn.as_deref().unwrap()).await.unwrap().expose()).unwrap();
    let password = pgjit::SecretString::new(creds["password"].as_str().unwrap());
    e.login_as(&result.db_user, &password, "app").await.expect("valid before expiry");
    tokio::time::sleep(StdDuration::from_millis(3100)).await;
    let err = e.login_as(&result.db_user, &password, "app").await.expect_err("VALID UNTIL passed");
    assert!(pgjit::engine::postgres::error_chain(&err).contains("password authentication failed"));
    pgjit::control::grants::revoke::revoke(&svc, "EXPIRE-1", RevokeTrigger::Early, Utc::now()).await.unwrap();
}

#[tokio::test]
async fn aws_stopped_during_a_grant_leaves_no_access() {
    let e = env();
    let moto: u16 = e.moto_url.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = Proxy::start(moto).await;
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let svc = isolated_services_with(move |n| (n == "PGJIT_TEST_MOTO_URL").then(|| url.clone())).await;
    register_integration(&svc, "cloudless", json!({})).await;
    // AWS goes away right after the role was created.
    svc.failpoints.hook("grant:after_role", proxy.cutter());
    let err = grant(&svc, approval("AWSDOWN-1", "cloudless", "aws.down@corp.com", orders_access())).await.unwrap_err();
    assert!(err.contains("credentials secret"), "{err}");
    svc.failpoints.clear();
    proxy.up();
    let record = svc.store.get_grant("AWSDOWN-1").await.unwrap().unwrap();
    // The database role went at once (undo starts with it); the record could not be updated.
    let su = e.superuser("postgres").await;
    assert!(!role_exists(&su, &record.db_user).await, "no role without a live record");
    assert_eq!(record.status, GrantStatus::Granting);
    // Cleanup after the stuck window finishes the undo and closes the record.
    let report = pgjit::control::cleanup::run(&svc, past_stuck(&svc)).await.unwrap();
    assert_eq!(report.finished, ["AWSDOWN-1"], "{report:?}");
    assert_eq!(svc.store.get_grant("AWSDOWN-1").await.unwrap().unwrap().status, GrantStatus::Failed);
    nothing_left(&svc, "cloudless", "AWSDOWN-1", &record.db_user).await;
    // And the approval, delivered again, works.
    assert_eq!(grant(&svc, approval("AWSDOWN-1", "cloudless", "aws.down@corp.com", orders_access())).await.unwrap().status, GrantStatus::Active);
    pgjit::control::grants::revoke::revoke_all(&svc, "cloudless", Utc::now()).await.unwrap();
}

#[tokio::test]
async fn a_run_killed_between_steps_is_finished_by_the_next() {
    let svc = Arc::new(isolated_services().await);
    register_integration(&svc, "killed", json!({})).await;
    let points = ["grant:after_connect", "grant:after_role", "grant:after_secret", "grant:after_schedule", "grant:before_activate"];
    for (i, point) in points.iter().enumerate() {
        let request_id = format!("KILL-{i}");
        let reached = svc.failpoints.halt(point);
        let task = {
            let (svc, event) = (svc.clone(), approval(&request_id, "killed", "killed@corp.com", orders_access()));
            tokio::spawn(async move { grant(&svc, event).await })
        };
        tokio::time::timeout(StdDuration::from_secs(20), reached.notified()).await.unwrap_or_else(|_| panic!("{point} never reached"));
        task.abort(); // the process dies here
        let _ = task.await;
        svc.failpoints.clear();
        let record = svc.store.get_grant(&request_id).await.unwrap().unwrap();
        assert_eq!(record.status, GrantStatus::Granting, "{point}");
        // A redelivery inside the stuck window does not race the (dead) run.
        let err = grant(&svc, approval(&request_id, "killed", "killed@corp.com", orders_access())).await.unwrap_err();
        assert!(err.contains("another run"), "{point}: {err}");
        // Cleanup after the window undoes it.
        let report = pgjit::control::cleanup::run(&svc, past_stuck(&svc)).await.unwrap();
        assert!(report.finished.contains(&request_id), "{point}: {report:?}");
        nothing_left(&svc, "killed", &request_id, &record.db_user).await;
        // The approval delivered again works.
        let result = grant(&svc, approval(&request_id, "killed", "killed@corp.com", orders_access())).await.unwrap();
        assert_eq!(result.status, GrantStatus::Active, "{point}");
    }
    // Killed in the middle of a revoke: the next revoke finishes it.
    for (point, request_id) in [("revoke:after_role", "KILL-0"), ("revoke:after_secret", "KILL-1")] {
        let record = svc.store.get_grant(request_id).await.unwrap().unwrap();
        let reached = svc.failpoints.halt(point);
        let task = {
            let svc = svc.clone();
            tokio::spawn(async move { pgjit::control::grants::revoke::revoke(&svc, request_id, RevokeTrigger::Early, Utc::now()).await })
        };
        tokio::time::timeout(StdDuration::from_secs(20), reached.notified()).await.unwrap_or_else(|_| panic!("{point} never reached"));
        task.abort();
        let _ = task.await;
        svc.failpoints.clear();
        assert_eq!(svc.store.get_grant(request_id).await.unwrap().unwrap().status, GrantStatus::Revoking, "{point}");
        let done = pgjit::control::grants::revoke::revoke(&svc, request_id, RevokeTrigger::Early, Utc::now()).await.unwrap();
        assert_eq!(done.status, GrantStatus::Deleted, "{point}");
        nothing_left(&svc, "killed", request_id, &record.db_user).await;
    }
    let results = pgjit::control::grants::revoke::revoke_all(&svc, "killed", Utc::now()).await.unwrap();
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
}

#[tokio::test]
async fn a_database_that_never_answers_does_not_hang() {
    let (port, _server) = pgjit_tests::silent_server().await;
    let mut endpoint = pgjit::engine::postgres::Endpoint::new("localhost", port, pgjit::engine::postgres::SslMode::VerifyFull);
    endpoint.ca_bundle = Some(env().ca_file.clone());
    endpoint.timeouts.connect = StdDuration::from_secs(1);
    let connector = pgjit::engine::postgres::Connector::new(endpoint, pgjit::engine::postgres::Credentials::Password(env().admin_login()));
    let started = Instant::now();
    let err = connector.connect("postgres").await.unwrap_err();
    assert!(matches!(err, pgjit::engine::postgres::ConnectError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < StdDuration::from_secs(5), "gave up after the connect timeout");

    // A statement that runs too long is cancelled by the server's statement_timeout.
    let mut endpoint = env().endpoint();
    endpoint.timeouts.statement = StdDuration::from_secs(1);
    let client = pgjit::engine::postgres::Connector::new(endpoint, pgjit::engine::postgres::Credentials::Password(env().admin_login())).connect("postgres").await.unwrap();
    let err = client.query("SELECT pg_sleep(10)", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED));

    // Through the handler: the grant fails within the configured connect timeout.
    let svc = isolated_services_with(|n| (n == "PGJIT_CONNECT_TIMEOUT_SECONDS").then(|| "2".to_owned())).await;
    register_integration(&svc, "silent", json!({"port": port})).await;
    let started = Instant::now();
    let err = grant(&svc, approval("SILENT-1", "silent", "silent@corp.com", orders_access())).await.unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    assert!(started.elapsed() < StdDuration::from_secs(15), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_hundred_concurrent_grants_all_succeed() {
    let svc = Arc::new(isolated_services().await);
    register_integration(&svc, "busy", json!({})).await;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move { grant(&svc, approval(&format!("BURST-{i}"), "busy", &format!("burst{i}@corp.com"), orders_access())).await })
        })
        .collect();
    let mut users = Vec::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, GrantStatus::Active);
        users.push(r.db_user);
    }
    users.sort();
    users.dedup();
    assert_eq!(users.len(), 100);
    let results = pgjit::control::grants::revoke::revoke_all(&svc, "busy", Utc::now()).await.unwrap();
    assert_eq!(results.len(), 100);
    assert!(results.iter().all(|(_, r)| r.is_ok()));
    let su = env().superuser("postgres").await;
    for u in &users {
        assert!(!role_exists(&su, u).await);
    }
}

#[tokio::test]
async fn the_same_approval_ten_times_at_once_grants_once() {
    let svc = Arc::new(isolated_services().await);
    let i = register_integration(&svc, "dup", json!({})).await;
    let event = approval("SAME-1", "dup", "same@corp.com", orders_access());
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (svc, event) = (svc.clone(), event.clone());
            tokio::spawn(async move { pgjit::control::grants::grant::grant(&svc, &pgjit::contract::events::parse_approval(event).unwrap(), Utc::now()).await })
        })
        .collect();
    let mut first = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) if !r.repeated => first += 1,
            Ok(_) | Err(GrantError::InProgress(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(first, 1, "exactly one delivery did the work");
    let su = env().superuser("postgres").await;
    let roles: i64 = su.query_one("SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)", &[&i.user_prefix]).await.unwrap().get(0);
    let profiles = su.query_one("SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)", &[&format!("{}p_", i.user_prefix)]).await.unwrap().get::<_, i64>(0);
    assert_eq!(roles - profiles, 1, "one login role");
    let secrets = pgjit_tests::secret_names(&svc).await;
    assert_eq!(secrets.iter().filter(|n| n.starts_with(&svc.config.credentials_prefix) && n.ends_with("/SAME-1")).count(), 1, "one secret");
    let schedules = svc.scheduler.list_schedules().group_name(&svc.config.schedule_group).send().await.unwrap();
    assert_eq!(schedules.schedules().len(), 1, "one schedule");
    pgjit::control::grants::revoke::revoke_all(&svc, "dup", Utc::now()).await.unwrap();
}

/// Revokes until it succeeds, as the scheduler and EventBridge retry a failed invocation.
async fn revoke_until_done(svc: &Services, request_id: &str) -> pgjit::control::grants::RevokeResult {
    for _ in 0..100 {
        match pgjit::control::grants::revoke::revoke(svc, request_id, RevokeTrigger::Early, Utc::now()).await {
            Ok(r) => return r,
            Err(GrantError::InProgress(_)) | Err(GrantError::UnknownRequest(_)) => tokio::time::sleep(StdDuration::from_millis(50)).await,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("{request_id}: revoke never went through");
}

#[tokio::test]
async fn revoke_racing_its_grant_and_two_revokes_racing_leave_nothing() {
    let svc = Arc::new(isolated_services().await);
    register_integration(&svc, "racy", json!({})).await;
    for round in 0..6 {
        let request_id = format!("RACE-{round}");
        let grant_task = {
            let (svc, event) = (svc.clone(), approval(&request_id, "racy", "racer@corp.com", orders_access()));
            tokio::spawn(async move { grant(&svc, event).await })
        };
        let revoke_task = {
            let (svc, id) = (svc.clone(), request_id.clone());
            tokio::spawn(async move { revoke_until_done(&svc, &id).await })
        };
        let granted = grant_task.await.unwrap();
        let revoked = revoke_task.await.unwrap();
        // The revoke may have come first (nothing to do yet); the next delivery of the
        // revoke, as the caller retries, then takes the access away.
        let last = revoke_until_done(&svc, &request_id).await;
        assert!(matches!(last.status, GrantStatus::Deleted | GrantStatus::Failed), "{round}: {last:?} after {granted:?} / {revoked:?}");
        let record = svc.store.get_grant(&request_id).await.unwrap().unwrap();
        nothing_left(&svc, "racy", &request_id, &record.db_user).await;
    }
    // Two revokes of one grant at the same time.
    for round in 0..6 {
        let request_id = format!("TWICE-{round}");
        let result = grant(&svc, approval(&request_id, "racy", "twice@corp.com", orders_access())).await.unwrap();
        let a = {
            let (svc, id) = (svc.clone(), request_id.clone());
            tokio::spawn(async move { revoke_until_done(&svc, &id).await })
        };
        let b = {
            let (svc, id) = (svc.clone(), request_id.clone());
            tokio::spawn(async move { revoke_until_done(&svc, &id).await })
        };
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        assert!(!(a.repeated && b.repeated), "one of them did the work");
        assert_eq!(svc.store.get_grant(&request_id).await.unwrap().unwrap().status, GrantStatus::Deleted);
        nothing_left(&svc, "racy", &request_id, &result.db_user).await;
    }
}

/// Lambda kills a function at its deadline, undo or not. A grant that runs out of its time (here
/// a database that hangs after the role is made) stops before the deadline with time kept back
/// for the undo, undoes, and says why; a revoke that runs out stays `revoking` for the retry.
#[tokio::test]
async fn a_grant_stops_and_undoes_before_the_invocations_deadline() {
    let svc = isolated_services().await;
    register_integration(&svc, "timed", json!({})).await;
    let with_deadline = |event: Value, seconds: u64| {
        let mut context = Context::default();
        context.deadline = u64::try_from(Utc::now().timestamp_millis()).unwrap() + seconds * 1000;
        LambdaEvent::new(event, context)
    };
    let _held = svc.failpoints.halt("grant:after_role");
    let started = Instant::now();
    let err = pgjit::control::handlers::grant(&svc, with_deadline(pgjit_tests::signed(&svc, approval("TIMED-1", "timed", "slow@corp.com", orders_access())).await, 9)).await.unwrap_err().to_string();
    let took = started.elapsed();
    assert!(err.contains("time ran out") && err.contains("undone"), "{err}");
    assert!(took < StdDuration::from_secs(8), "stopped before the deadline: {took:?}");
    assert!(took >= StdDuration::from_secs(2), "used its work time: {took:?}");
    svc.failpoints.clear();
    let record = svc.store.get_grant("TIMED-1").await.unwrap().unwrap();
    assert_eq!(record.status, GrantStatus::Failed);
    nothing_left(&svc, "timed", "TIMED-1", &record.db_user).await;

    // A revoke out of time is left for its retry, which finishes it.
    let granted = grant(&svc, approval("TIMED-2", "timed", "slow@corp.com", orders_access())).await.unwrap();
    let _held = svc.failpoints.halt("revoke:after_role");
    let err = pgjit::control::handlers::revoke(&svc, with_deadline(pgjit_tests::signed(&svc, pgjit_tests::early_revoke("TIMED-2")).await, 8)).await.unwrap_err().to_string();
    assert!(err.contains("time ran out"), "{err}");
    svc.failpoints.clear();
    let record = svc.store.get_grant("TIMED-2").await.unwrap().unwrap();
    assert_eq!(record.status, GrantStatus::Revoking);
    // Due again at once: the next sweep (a cleanup's continuation) takes it, not only the one
    // after the stuck window.
    assert!(record.due_at.as_deref() <= Some(pgjit::aws::store::due_key(Utc::now()).as_str()), "{:?}", record.due_at);
    let done = pgjit::control::handlers::revoke(&svc, with_deadline(pgjit_tests::signed(&svc, pgjit_tests::early_revoke("TIMED-2")).await, 60)).await.unwrap();
    assert_eq!(done.status, GrantStatus::Deleted);
    nothing_left(&svc, "timed", "TIMED-2", &granted.db_user).await;
}

/// A sweep with more due work than its invocation has time for stops starting items before the
/// deadline: each item is done or untouched (none left `revoking`), what is left is counted and a
/// continuation is scheduled with the same scope and the next count (never a smaller one), which
/// finishes the work.
#[tokio::test]
async fn a_sweep_cut_short_by_its_deadline_leaves_each_item_done_or_untouched_and_continues() {
    let svc = isolated_services_with(|name| (name == "PGJIT_CLEANUP_CONCURRENCY").then(|| "2".into())).await;
    register_integration(&svc, "swept", json!({})).await;
    let granted = overdue_grants(&svc, "swept", "SWEPT", 26).await;
    // Each item takes a second: two at a time, about six start in the three seconds before the
    // time left falls under the item allowance (10 s) of a 19-second invocation (6 s kept back).
    svc.failpoints.delay("cleanup:item", StdDuration::from_secs(1));
    let function_arn = "arn:aws:lambda:us-east-1:123456789012:function:pgjit-cleanup";
    let invocation = |payload: Value, seconds: u64| {
        let mut context = Context::default();
        context.deadline = u64::try_from(Utc::now().timestamp_millis()).unwrap() + seconds * 1000;
        context.invoked_function_arn = function_arn.into();
        LambdaEvent::new(payload, context)
    };
    let started = Instant::now();
    let report = pgjit::control::handlers::cleanup(&svc, invocation(json!({"sweep": "overdue"}), 19)).await.unwrap();
    let took = started.elapsed();
    assert!(took < StdDuration::from_secs(13), "stopped well before the deadline: {took:?}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let done = report.revoked_overdue.len();
    assert!(done >= 2 && report.left >= 12, "some done, some left: {done} done, {} left", report.left);
    assert_eq!(done + report.left, granted.len(), "every item done or counted as left");
    // Done means revoked everywhere; untouched means still active, with its role able to log in.
    let su = env().superuser("postgres").await;
    let mut untouched = 0;
    for (request_id, db_user) in &granted {
        let record = svc.store.get_grant(request_id).await.unwrap().unwrap();
        match record.status {
            GrantStatus::Deleted => assert!(!role_exists(&su, db_user).await, "{request_id}: role left"),
            GrantStatus::Active => {
                untouched += 1;
                let login: bool = su.query_one("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", &[db_user]).await.unwrap().get(0);
                assert!(login, "{request_id}: untouched, so its role is as granted");
            }
            other => panic!("{request_id}: {other} is neither done nor untouched"),
        }
    }
    assert_eq!(untouched, report.left);
    // The continuation: one schedule, a minute later, invoking this function with the same scope.
    let name = pgjit::control::cleanup::continuation_schedule_name(pgjit::control::cleanup::Scope::Overdue);
    assert!(report.continuation.as_deref().is_some_and(|c| c.starts_with(&name)), "{:?}", report.continuation);
    let schedule = svc.scheduler.get_schedule().name(&name).group_name(&svc.config.schedule_group).send().await.expect("continuation schedule");
    let target = schedule.target().expect("target");
    assert_eq!(target.arn(), function_arn);
    assert_eq!(target.role_arn(), svc.config.scheduler_role_arn);
    let input: Value = serde_json::from_str(target.input().unwrap_or_default()).unwrap();
    assert_eq!(input, json!({"sweep": "overdue", "continuation": 1}));
    let at = schedule.schedule_expression().unwrap_or_default().to_owned();

    // A second run cut short moves the one continuation (ConflictException, then an update).
    let report = pgjit::control::handlers::cleanup(&svc, invocation(input.clone(), 19)).await.unwrap();
    assert!(report.left > 0 && !report.revoked_overdue.is_empty(), "{report:?}");
    let schedule = svc.scheduler.get_schedule().name(&name).group_name(&svc.config.schedule_group).send().await.expect("continuation schedule");
    let input: Value = serde_json::from_str(schedule.target().and_then(|t| t.input()).unwrap_or_default()).unwrap();
    assert_eq!(input, json!({"sweep": "overdue", "continuation": 2}));
    assert!(schedule.schedule_expression().unwrap_or_default() >= at.as_str());
    // A run that starts a chain anew (the hourly one, count 0) moves it but keeps the count.
    let report = pgjit::control::handlers::cleanup(&svc, invocation(json!({"sweep": "overdue"}), 19)).await.unwrap();
    assert!(report.left > 0 && report.continuation.is_some(), "{report:?}");
    let schedule = svc.scheduler.get_schedule().name(&name).group_name(&svc.config.schedule_group).send().await.expect("continuation schedule");
    let kept: Value = serde_json::from_str(schedule.target().and_then(|t| t.input()).unwrap_or_default()).unwrap();
    assert_eq!(kept, input, "the larger count stays");

    // A count out of range is refused and changes nothing.
    let err = pgjit::control::handlers::cleanup(&svc, invocation(json!({"continuation": "many"}), 60)).await.unwrap_err().to_string();
    assert!(err.contains("continuation: expected a whole number"), "{err}");

    // The continuation, with time enough, finishes the work and schedules nothing more.
    svc.failpoints.clear();
    let report = pgjit::control::handlers::cleanup(&svc, invocation(input, 120)).await.unwrap();
    assert_eq!((report.left, report.continuation.as_deref()), (0, None), "{report:?}");
    for (request_id, db_user) in &granted {
        nothing_left(&svc, "swept", request_id, db_user).await;
    }
}

/// One server that accepts connections and never answers must not hold the sweep's slots:
/// the other integration's overdue items are revoked while the hung one's first connection is
/// still waiting for its time-out.
#[tokio::test]
async fn one_hung_integration_does_not_delay_another_integrations_items() {
    let (port, _server) = pgjit_tests::silent_server().await;
    let svc = isolated_services_with(|n| match n {
        "PGJIT_CONNECT_TIMEOUT_SECONDS" => Some("5".into()),
        "PGJIT_CLEANUP_CONCURRENCY" => Some("4".into()),
        "PGJIT_CLEANUP_CONNECTIONS" => Some("1".into()),
        _ => None,
    })
    .await;
    // "a-hung" sorts first, so its lane's workers start first.
    let hung = register_integration(&svc, "a-hung", json!({})).await;
    register_integration(&svc, "b-healthy", json!({"user_prefix": hung.user_prefix})).await;
    let stuck = overdue_grants(&svc, "a-hung", "HUNG", 6).await;
    let healthy = overdue_grants(&svc, "b-healthy", "HEALTHY", 3).await;
    let mut unreachable = hung.clone();
    unreachable.port = Some(port);
    svc.store.put_integration(&unreachable).await.unwrap();

    let started = Instant::now();
    // The sweep and a watch over the healthy records, side by side in this task.
    let sweep = pgjit::control::cleanup::run_scope(&svc, Utc::now(), pgjit::control::cleanup::Scope::Overdue);
    let watch = async {
        loop {
            let mut revoked = 0;
            for (id, _) in &healthy {
                if svc.store.get_grant(id).await.unwrap().is_some_and(|r| r.status != GrantStatus::Active && r.status != GrantStatus::Revoking) {
                    revoked += 1;
                }
            }
            if revoked == healthy.len() || started.elapsed() > StdDuration::from_secs(60) {
                return (revoked, started.elapsed());
            }
            tokio::time::sleep(StdDuration::from_millis(100)).await;
        }
    };
    let (report, (revoked, healthy_done)) = tokio::join!(sweep, watch);
    assert_eq!(revoked, healthy.len(), "the healthy integration's items were revoked");
    assert!(healthy_done < StdDuration::from_secs(4), "the healthy items waited for the hung server: {healthy_done:?}");
    let report = report.unwrap();
    assert_eq!(report.revoked_overdue.len(), healthy.len(), "{report:?}");
    assert!(report.errors.iter().any(|e| e.contains("HUNG") || e.contains("a-hung")), "the hung integration's failure is reported: {:?}", report.errors);

    // Back in reach, its items are revoked.
    svc.store.put_integration(&hung).await.unwrap();
    for (id, db_user) in &stuck {
        pgjit::control::grants::revoke::revoke(&svc, id, RevokeTrigger::Early, Utc::now()).await.unwrap();
        nothing_left(&svc, "a-hung", id, db_user).await;
    }
}
