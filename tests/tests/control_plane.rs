//! The control plane through its handlers, against moto and the real local PostgreSQL.

use chrono::{Duration, Utc};
use lambda_runtime::{Context, LambdaEvent};
use pgjit::aws::store::GrantStatus;
use pgjit::aws::Services;
use pgjit::control::grants::GrantResult;
use pgjit::SecretString;
use pgjit_tests::{
    approval, env, isolated_services, orders_access, register_integration as integration,
    role_exists,
};
use serde_json::{json, Value};

async fn grant(svc: &Services, event: Value) -> Result<GrantResult, String> {
    pgjit::control::handlers::grant(
        svc,
        LambdaEvent::new(pgjit_tests::signed(svc, event).await, Context::default()),
    )
    .await
    .map_err(|e| e.to_string())
}

async fn revoke_with(
    svc: &Services,
    payload: Value,
) -> Result<pgjit::control::grants::RevokeResult, String> {
    pgjit::control::handlers::revoke(
        svc,
        LambdaEvent::new(pgjit_tests::signed(svc, payload).await, Context::default()),
    )
    .await
    .map_err(|e| e.to_string())
}

/// The input the scheduler would deliver to revoke, read back from the stored schedule.
async fn schedule_input(svc: &Services, request_id: &str) -> Option<Value> {
    let name = pgjit::aws::schedule::schedule_name(request_id);
    let out = svc
        .scheduler
        .get_schedule()
        .name(&name)
        .group_name(&svc.config.schedule_group)
        .send()
        .await
        .ok()?;
    let target = out.target()?;
    Some(serde_json::from_str(target.input()?).unwrap())
}

async fn schedule_count(svc: &Services) -> usize {
    let out = svc
        .scheduler
        .list_schedules()
        .group_name(&svc.config.schedule_group)
        .send()
        .await
        .unwrap();
    out.schedules().len()
}

async fn secret_exists(svc: &Services, integration: &str, request_id: &str) -> bool {
    let name = pgjit::aws::credentials::secret_name(svc, integration, request_id);
    svc.secrets
        .describe_secret()
        .secret_id(name)
        .send()
        .await
        .is_ok()
}

async fn credentials(svc: &Services, arn: &str) -> (String, SecretString, Value) {
    let text = pgjit::aws::credentials::read(svc, arn)
        .await
        .expect("credentials secret");
    let v: Value = serde_json::from_str(text.expose()).unwrap();
    let password = SecretString::new(v["password"].as_str().unwrap());
    (v["username"].as_str().unwrap().to_owned(), password, v)
}

#[tokio::test]
async fn full_lifecycle_through_the_handlers() {
    let e = env();
    let svc = isolated_services().await;
    let su = e.superuser("postgres").await;
    let i = integration(&svc, "orders", json!({"user_cleanup_after_days": 2})).await;

    let result = grant(
        &svc,
        approval("REQ-1001", "orders", "john.doe@corp.com", orders_access()),
    )
    .await
    .expect("grant");
    assert_eq!(result.status, GrantStatus::Active);
    assert!(!result.repeated);
    assert!(
        result
            .db_user
            .starts_with(&format!("{}john_doe_", i.user_prefix)),
        "{}",
        result.db_user
    );
    let output = serde_json::to_string(&result).unwrap();
    let arn = result.secret_arn.clone().expect("secret");

    // The requester's credentials, in the RDS format, log in over TLS and read what was approved.
    let (username, password, value) = credentials(&svc, &arn).await;
    assert!(
        !output.contains(password.expose()),
        "the result never carries the password"
    );
    assert_eq!(username, result.db_user);
    assert_eq!(
        (
            value["engine"].as_str(),
            value["port"].as_u64(),
            value["dbname"].as_str()
        ),
        (Some("postgres"), Some(u64::from(e.port)), Some("app"))
    );
    assert!(value["expires_at"].is_string());
    let tags = svc
        .secrets
        .describe_secret()
        .secret_id(&arn)
        .send()
        .await
        .unwrap();
    let tags: Vec<(String, String)> = tags
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
        .collect();
    assert!(
        tags.contains(&("pgjit:request_id".into(), "REQ-1001".into())),
        "{tags:?}"
    );
    assert!(
        tags.contains(&("pgjit:requester".into(), "john.doe@corp.com".into())),
        "{tags:?}"
    );
    let client = e
        .login_as(&username, &password, "app")
        .await
        .expect("login with the secret's credentials");
    client
        .query("SELECT * FROM sales.orders", &[])
        .await
        .expect("allowed");
    assert!(client
        .query("SELECT * FROM hr.salaries", &[])
        .await
        .is_err());

    // The schedule: one-shot at expiry, UTC, deleted after completion, input for revoke.
    let name = pgjit::aws::schedule::schedule_name("REQ-1001");
    let schedule = svc
        .scheduler
        .get_schedule()
        .name(&name)
        .group_name(&svc.config.schedule_group)
        .send()
        .await
        .unwrap();
    assert_eq!(
        schedule.schedule_expression(),
        Some(pgjit::aws::schedule::at_expression(result.expires_at).as_str())
    );
    assert_eq!(schedule.schedule_expression_timezone(), Some("UTC"));
    assert_eq!(
        schedule.action_after_completion().map(|a| a.as_str()),
        Some("DELETE")
    );
    assert_eq!(
        schedule.flexible_time_window().map(|w| w.mode().as_str()),
        Some("OFF")
    );
    let target = schedule.target().unwrap();
    assert_eq!(target.arn(), svc.config.revoke_function_arn);
    assert!(target.dead_letter_config().is_some() && target.retry_policy().is_some());
    let input = schedule_input(&svc, "REQ-1001").await.unwrap();
    assert_eq!(input, json!({"request_id": "REQ-1001"}));

    // The schedule fires at expiry: revoke with its stored input (before expiry the same input
    // changes nothing: trust_boundary's a_scheduled_or_cleanup_revoke_before_expiry_changes_nothing).
    let fired = pgjit::contract::events::parse_revoke(input.clone()).unwrap();
    assert_eq!(
        fired.trigger,
        pgjit::contract::events::RevokeTrigger::Scheduled
    );
    let revoked = pgjit::control::grants::revoke::revoke(
        &svc,
        &fired.request_id,
        fired.trigger,
        result.expires_at,
    )
    .await
    .expect("revoke");
    assert_eq!(revoked.status, GrantStatus::Revoked);
    assert_eq!(revoked.sessions_ended, 1);
    assert!(
        client.query_one("SELECT 1", &[]).await.is_err(),
        "session ended"
    );
    assert!(
        e.login_as(&username, &password, "app").await.is_err(),
        "login refused after revoke"
    );
    assert!(
        !secret_exists(&svc, "orders", "REQ-1001").await,
        "credentials deleted at revoke"
    );
    let record = svc.store.get_grant("REQ-1001").await.unwrap().unwrap();
    assert_eq!(record.status, GrantStatus::Revoked);
    let revoked_at = record.revoked_at.unwrap();
    assert_eq!(record.delete_after, Some(revoked_at + Duration::days(2)));
    assert!(
        role_exists(&su, &username).await,
        "kept NOLOGIN during retention"
    );
    // The scheduler retrying the same input: nothing to do.
    assert!(revoke_with(&svc, input).await.unwrap().repeated);

    // Cleanup before the retention ends keeps the role; after, drops it.
    let report = pgjit::control::cleanup::run(&svc, Utc::now() + Duration::days(1))
        .await
        .unwrap();
    assert!(report.deleted.is_empty(), "{report:?}");
    let report = pgjit::control::cleanup::run(&svc, Utc::now() + Duration::days(3))
        .await
        .unwrap();
    assert_eq!(report.deleted, ["REQ-1001"], "{report:?}");
    assert!(
        !role_exists(&su, &username).await,
        "role gone after retention"
    );
    let record = svc.store.get_grant("REQ-1001").await.unwrap().unwrap();
    assert_eq!(record.status, GrantStatus::Deleted);

    // The audit trail answers who, what, approved by whom, when.
    let audit = svc.store.audit_of("REQ-1001").await.unwrap();
    let events: Vec<&str> = audit.iter().map(|a| a.event.as_str()).collect();
    assert_eq!(events, ["requested", "granted", "revoked", "deleted"]);
    assert!(audit.iter().all(|a| a.approver == "jane@corp.com"
        && a.requester == "john.doe@corp.com"
        && a.db_user == username));
}

#[tokio::test]
async fn the_same_approval_five_times_grants_once() {
    let e = env();
    let svc = isolated_services().await;
    let su = e.superuser("postgres").await;
    let i = integration(&svc, "orders", json!({})).await;
    let event = approval("REQ-DUP", "orders", "dup.user@corp.com", orders_access());
    let first = grant(&svc, event.clone()).await.unwrap();
    let active = svc.store.grants_in(GrantStatus::Active).await.unwrap();
    assert_eq!(
        active
            .iter()
            .map(|g| g.request_id.as_str())
            .collect::<Vec<_>>(),
        ["REQ-DUP"],
        "listed as active"
    );
    for _ in 0..4 {
        let again = grant(&svc, event.clone()).await.unwrap();
        assert!(again.repeated);
        assert_eq!(
            (
                again.db_user.as_str(),
                again.secret_arn.as_deref(),
                again.expires_at
            ),
            (
                first.db_user.as_str(),
                first.secret_arn.as_deref(),
                first.expires_at
            )
        );
    }
    let roles: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)",
            &[&format!("{}dup_user_", i.user_prefix)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(roles, 1, "one role");
    let secrets = pgjit_tests::secret_names(&svc).await;
    let ours = secrets
        .iter()
        .filter(|n| n.starts_with(&svc.config.credentials_prefix) && n.ends_with("/REQ-DUP"))
        .count();
    assert_eq!(ours, 1, "one secret");
    assert_eq!(schedule_count(&svc).await, 1, "one schedule");
    // The same request id with other access is refused, not merged.
    let other = approval(
        "REQ-DUP",
        "orders",
        "dup.user@corp.com",
        json!([{"database": "app", "schema": "hr", "table": "salaries", "privileges": ["SELECT"]}]),
    );
    let err = grant(&svc, other).await.unwrap_err();
    assert!(err.contains("other details"), "{err}");
    revoke_with(&svc, pgjit_tests::early_revoke("REQ-DUP"))
        .await
        .unwrap();
}

#[tokio::test]
async fn early_revoke_deletes_the_schedule_and_retention_zero_drops_the_user() {
    let e = env();
    let svc = isolated_services().await;
    let su = e.superuser("postgres").await;
    integration(&svc, "orders", json!({"user_cleanup_after_days": 0})).await;
    let result = grant(
        &svc,
        approval("REQ-EARLY", "orders", "early@corp.com", orders_access()),
    )
    .await
    .unwrap();
    assert!(schedule_input(&svc, "REQ-EARLY").await.is_some());
    let revoked = revoke_with(&svc, pgjit_tests::early_revoke("REQ-EARLY"))
        .await
        .unwrap();
    assert_eq!(
        revoked.status,
        GrantStatus::Deleted,
        "retention 0: dropped at revoke"
    );
    assert!(
        schedule_input(&svc, "REQ-EARLY").await.is_none(),
        "schedule deleted"
    );
    assert!(!role_exists(&su, &result.db_user).await);
    assert!(!secret_exists(&svc, "orders", "REQ-EARLY").await);
    let again = revoke_with(&svc, pgjit_tests::early_revoke("REQ-EARLY"))
        .await
        .unwrap();
    assert!(again.repeated);
    let err = revoke_with(&svc, pgjit_tests::early_revoke("REQ-NEVER"))
        .await
        .unwrap_err();
    assert!(err.contains("unknown request"), "{err}");
}

#[tokio::test]
async fn iam_mode_puts_and_removes_the_connect_policy() {
    let e = env();
    let svc = isolated_services().await;
    let su = e.superuser("postgres").await;
    let id: u32 = rand::random();
    let instance = format!("orders-db-{id}");
    let resource_id = pgjit_tests::moto_rds_instance(&svc, &instance).await;
    let user = format!("john-{id}");
    let role = format!("Dev-{id}");
    svc.iam.create_user().user_name(&user).send().await.unwrap();
    svc.iam
        .create_role()
        .role_name(&role)
        .assume_role_policy_document("{}")
        .send()
        .await
        .unwrap();
    // The database is the local one (host override); RDS supplies the resource id.
    integration(&svc, "orders-iam", json!({"kind": "rds", "instance_id": instance, "region": "us-east-1", "access_mode": "iam"})).await;

    for (request_id, arn, kind, principal) in [
        (
            format!("REQ-IAM-U-{id}"),
            format!("arn:aws:iam::123456789012:user/{user}"),
            "user",
            user.clone(),
        ),
        (
            format!("REQ-IAM-R-{id}"),
            format!("arn:aws:sts::123456789012:assumed-role/{role}/john@corp.com"),
            "role",
            role.clone(),
        ),
    ] {
        let mut event = approval(
            &request_id,
            "orders-iam",
            "iam.user@corp.com",
            orders_access(),
        );
        event["detail"]["requester"]["iam_arn"] = json!(arn);
        let result = grant(&svc, event).await.expect("iam grant");
        assert!(result.secret_arn.is_none(), "no secret in IAM mode");
        let member: bool = su
            .query_one(
                "SELECT pg_has_role($1, 'rds_iam', 'MEMBER')",
                &[&result.db_user],
            )
            .await
            .unwrap()
            .get(0);
        assert!(member);
        let policy_name = pgjit::aws::iam::policy_name(&request_id);
        let document = if kind == "user" {
            svc.iam
                .get_user_policy()
                .user_name(&principal)
                .policy_name(&policy_name)
                .send()
                .await
                .unwrap()
                .policy_document
        } else {
            svc.iam
                .get_role_policy()
                .role_name(&principal)
                .policy_name(&policy_name)
                .send()
                .await
                .unwrap()
                .policy_document
        };
        let document: Value = serde_json::from_str(&urlencoding_decode(&document)).unwrap();
        assert_eq!(document["Statement"][0]["Action"], "rds-db:connect");
        assert_eq!(
            document["Statement"][0]["Resource"],
            format!(
                "arn:aws:rds-db:us-east-1:123456789012:dbuser:{resource_id}/{}",
                result.db_user
            )
        );
        // The policy stops working at expiry by itself; an assumed role's policy serves its session only.
        let condition = &document["Statement"][0]["Condition"];
        assert_eq!(
            condition["DateLessThan"]["aws:CurrentTime"],
            result.expires_at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
        );
        if kind == "role" {
            let role_id = svc
                .iam
                .get_role()
                .role_name(&principal)
                .send()
                .await
                .unwrap()
                .role
                .unwrap()
                .role_id;
            assert_eq!(
                condition["StringEquals"]["aws:userid"],
                format!("{role_id}:john@corp.com")
            );
        } else {
            assert!(condition.get("StringEquals").is_none(), "{condition}");
        }
        // An extension moves the policy's expiry condition with the rest.
        let extended = grant(
            &svc,
            pgjit_tests::extension(
                &format!("ext-{request_id}"),
                &request_id,
                "jane@corp.com",
                5000,
            ),
        )
        .await
        .expect("extended");
        assert!(extended.expires_at > result.expires_at);
        let document = if kind == "user" {
            svc.iam
                .get_user_policy()
                .user_name(&principal)
                .policy_name(&policy_name)
                .send()
                .await
                .unwrap()
                .policy_document
        } else {
            svc.iam
                .get_role_policy()
                .role_name(&principal)
                .policy_name(&policy_name)
                .send()
                .await
                .unwrap()
                .policy_document
        };
        let document: Value = serde_json::from_str(&urlencoding_decode(&document)).unwrap();
        assert_eq!(
            document["Statement"][0]["Condition"]["DateLessThan"]["aws:CurrentTime"],
            extended.expires_at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
        );

        revoke_with(&svc, pgjit_tests::early_revoke(&request_id))
            .await
            .unwrap();
        let gone = if kind == "user" {
            svc.iam
                .get_user_policy()
                .user_name(&principal)
                .policy_name(&policy_name)
                .send()
                .await
                .is_err()
        } else {
            svc.iam
                .get_role_policy()
                .role_name(&principal)
                .policy_name(&policy_name)
                .send()
                .await
                .is_err()
        };
        assert!(gone, "{kind} policy removed at revoke");
    }
    // IAM mode without an IAM identity is refused up front.
    let mut event = approval(
        &format!("REQ-IAM-X-{id}"),
        "orders-iam",
        "x@corp.com",
        orders_access(),
    );
    event["detail"]["requester"]
        .as_object_mut()
        .unwrap()
        .remove("iam_arn");
    let err = grant(&svc, event).await.unwrap_err();
    assert!(err.contains("iam_arn"), "{err}");
}

/// IAM may hand documents back URL-encoded.
fn urlencoding_decode(text: &str) -> String {
    if !text.contains('%') {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn a_failure_at_each_step_of_grant_leaves_nothing_behind() {
    let e = env();
    let svc = isolated_services().await;
    let su = e.superuser("postgres").await;
    integration(&svc, "orders", json!({})).await;
    let steps = [
        "grant:after_connect",
        "grant:after_role",
        "grant:after_secret",
        "grant:after_schedule",
        "grant:before_activate",
    ];
    for (i, step) in steps.iter().enumerate() {
        let request_id = format!("REQ-FAIL-{i}");
        svc.failpoints.set(step);
        let err = grant(
            &svc,
            approval(&request_id, "orders", "fail@corp.com", orders_access()),
        )
        .await
        .unwrap_err();
        assert!(
            err.contains(step) && err.contains("undone"),
            "{step}: {err}"
        );
        let record = svc.store.get_grant(&request_id).await.unwrap().unwrap();
        assert_eq!(record.status, GrantStatus::Failed, "{step}");
        assert!(
            record.failure.as_deref().unwrap().contains("failpoint"),
            "{step}"
        );
        assert!(!role_exists(&su, &record.db_user).await, "{step}: no role");
        assert!(
            !secret_exists(&svc, "orders", &request_id).await,
            "{step}: no secret"
        );
        assert!(
            schedule_input(&svc, &request_id).await.is_none(),
            "{step}: no schedule"
        );
        let audit = svc.store.audit_of(&request_id).await.unwrap();
        assert_eq!(audit.last().unwrap().event, "grant_failed", "{step}");

        // The same event, delivered again once the fault is gone, succeeds.
        svc.failpoints.clear();
        let result = grant(
            &svc,
            approval(&request_id, "orders", "fail@corp.com", orders_access()),
        )
        .await
        .expect("retry after the fault");
        assert_eq!(result.status, GrantStatus::Active, "{step}");
        let (user, password, _) = credentials(&svc, result.secret_arn.as_deref().unwrap()).await;
        e.login_as(&user, &password, "app")
            .await
            .expect("works after retry");
        revoke_with(&svc, pgjit_tests::early_revoke(&request_id))
            .await
            .unwrap();
    }
    // A failure while revoking leaves the record for the retry, which finishes it.
    let result = grant(
        &svc,
        approval(
            "REQ-FAIL-REVOKE",
            "orders",
            "fail@corp.com",
            orders_access(),
        ),
    )
    .await
    .unwrap();
    svc.failpoints.set("revoke:after_role");
    let err = revoke_with(&svc, pgjit_tests::early_revoke("REQ-FAIL-REVOKE"))
        .await
        .unwrap_err();
    assert!(err.contains("revoke:after_role"), "{err}");
    assert_eq!(
        svc.store
            .get_grant("REQ-FAIL-REVOKE")
            .await
            .unwrap()
            .unwrap()
            .status,
        GrantStatus::Revoking
    );
    svc.failpoints.clear();
    let done = revoke_with(&svc, pgjit_tests::early_revoke("REQ-FAIL-REVOKE"))
        .await
        .unwrap();
    assert_eq!(done.status, GrantStatus::Deleted);
    assert!(!role_exists(&su, &result.db_user).await);
    assert!(!secret_exists(&svc, "orders", "REQ-FAIL-REVOKE").await);
}

/// Cleanup's items share a few connections per integration, whatever their number: the server
/// never sees more than `cleanup_connections` (2) from one sweep per integration, and every item
/// of every integration is done, overdue revokes first and drops after the retention.
#[tokio::test]
async fn cleanup_works_through_many_items_over_a_few_reused_connections() {
    let svc = isolated_services().await;
    let su = env().superuser("postgres").await;
    let mut granted = Vec::new();
    for name in ["east", "west"] {
        integration(&svc, name, json!({"user_cleanup_after_days": 1})).await;
        granted.extend(pgjit_tests::overdue_grants(&svc, name, &format!("MANY-{name}"), 6).await);
    }
    let report = pgjit::control::cleanup::run_scope(
        &svc,
        Utc::now(),
        pgjit::control::cleanup::Scope::Overdue,
    )
    .await
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.revoked_overdue.len(), granted.len(), "{report:?}");
    assert!(
        (2..=4).contains(&report.connections),
        "two integrations, at most two connections each: {}",
        report.connections
    );
    for (request_id, db_user) in &granted {
        assert_eq!(
            svc.store
                .get_grant(request_id)
                .await
                .unwrap()
                .unwrap()
                .status,
            GrantStatus::Revoked,
            "{request_id}"
        );
        let login: bool = su
            .query_one(
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
                &[db_user],
            )
            .await
            .unwrap()
            .get(0);
        assert!(!login, "{request_id}: revoked");
    }
    let report = pgjit::control::cleanup::run(&svc, Utc::now() + Duration::days(2))
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.deleted.len(), granted.len(), "{report:?}");
    assert!(report.connections <= 4, "{}", report.connections);
    assert_eq!(
        (report.left, report.reconcile_left.len(), report.reconciled),
        (0, 0, 2),
        "{report:?}"
    );
    for (request_id, db_user) in &granted {
        assert_eq!(
            svc.store
                .get_grant(request_id)
                .await
                .unwrap()
                .unwrap()
                .status,
            GrantStatus::Deleted,
            "{request_id}"
        );
        assert!(!role_exists(&su, db_user).await, "{request_id}: dropped");
    }
}

#[tokio::test]
async fn cleanup_revokes_overdue_grants_and_removes_orphans() {
    let e = env();
    let svc = isolated_services().await;
    let su = e.superuser("postgres").await;
    let prefix = format!("t{}_", rand::random::<u32>());
    let i = integration(
        &svc,
        "orders",
        json!({"user_prefix": prefix, "user_cleanup_after_days": 1}),
    )
    .await;
    let result = grant(
        &svc,
        approval("REQ-OVERDUE", "orders", "late@corp.com", orders_access()),
    )
    .await
    .unwrap();

    let orphan = pgjit_tests::orphan_role(&prefix).await;

    // Before expiry: nothing due, the orphan goes.
    let report = pgjit::control::cleanup::run(&svc, Utc::now())
        .await
        .unwrap();
    assert!(report.revoked_overdue.is_empty(), "{report:?}");
    assert_eq!(report.orphans, [format!("orders/{orphan}")], "{report:?}");
    assert!(!role_exists(&su, &orphan).await);
    assert!(
        role_exists(&su, &result.db_user).await,
        "a granted role is not an orphan"
    );

    // The schedule never fired (or its revoke failed for good): the hourly overdue sweep revokes
    // it, and does nothing else (a second orphan waits for the daily run).
    let second = pgjit_tests::orphan_role(&prefix).await;
    let report = pgjit::control::cleanup::run_scope(
        &svc,
        result.expires_at + Duration::minutes(1),
        pgjit::control::cleanup::Scope::Overdue,
    )
    .await
    .unwrap();
    assert_eq!(report.revoked_overdue, ["REQ-OVERDUE"], "{report:?}");
    assert!(
        report.orphans.is_empty() && report.deleted.is_empty(),
        "{report:?}"
    );
    assert!(role_exists(&su, &second).await);
    pgjit::engine::roles::departure::delete(
        &e.admin(),
        "postgres",
        &second,
        &prefix,
        &i.holding_role,
    )
    .await
    .unwrap();
    assert!(report.items_read <= 2, "read only the due work: {report:?}");
    let record = svc.store.get_grant("REQ-OVERDUE").await.unwrap().unwrap();
    assert_eq!(record.status, GrantStatus::Revoked);
    assert_eq!(record.revoke_reason.as_deref(), Some("cleanup"));
    let can_login: bool = su
        .query_one(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&result.db_user],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!can_login);
    assert!(!secret_exists(&svc, &i.name, "REQ-OVERDUE").await);
}

#[tokio::test]
async fn rotation_gives_a_new_password_to_old_grants() {
    let e = env();
    let svc = isolated_services().await;
    integration(
        &svc,
        "orders",
        json!({"credential_rotation_days": 1, "max_duration_seconds": 604800}),
    )
    .await;
    let mut event = approval("REQ-ROTATE", "orders", "rotate@corp.com", orders_access());
    event["detail"]["duration_seconds"] = json!(5 * 86400);
    let result = grant(&svc, event).await.unwrap();
    let (user, old, _) = credentials(&svc, result.secret_arn.as_deref().unwrap()).await;
    let report =
        pgjit::control::cleanup::run(&svc, Utc::now() + Duration::days(1) + Duration::minutes(1))
            .await
            .unwrap();
    assert_eq!(report.rotated, ["REQ-ROTATE"], "{report:?}");
    let (_, new, _) = credentials(&svc, result.secret_arn.as_deref().unwrap()).await;
    assert_ne!(old.expose(), new.expose());
    assert!(
        e.login_as(&user, &old, "app").await.is_err(),
        "the old password is dead"
    );
    e.login_as(&user, &new, "app")
        .await
        .expect("the new password works");
    revoke_with(&svc, pgjit_tests::early_revoke("REQ-ROTATE"))
        .await
        .unwrap();
}

#[tokio::test]
async fn policy_and_input_errors_change_nothing() {
    let e = env();
    let svc = isolated_services().await;
    let su = e.superuser("postgres").await;
    let i = integration(&svc, "orders", json!({"max_duration_seconds": 600})).await;
    let cases = [
        (
            approval("REQ-LONG", "orders", "a@corp.com", orders_access()),
            "max_duration_seconds",
        ),
        (
            approval("REQ-NOINT", "nope", "a@corp.com", orders_access()),
            "unknown integration",
        ),
        (
            approval(
                "REQ-BADPRIV",
                "orders",
                "a@corp.com",
                json!([{"database": "app", "schema": "sales", "privileges": ["SELECT"]}]),
            ),
            "access[0].privileges",
        ),
        (
            approval(
                "REQ-MISSING",
                "orders",
                "a@corp.com",
                json!([{"database": "app", "schema": "sales", "table": "nope", "privileges": ["SELECT"]}]),
            ),
            "does not exist",
        ),
        (
            json!({"detail-type": "Access Request Approved", "source": "pgjit.approvals", "account": "123456789012", "time": Utc::now().to_rfc3339(),
            "detail": {"request_id": "REQ-X"}}),
            "integration",
        ),
        // Invoked directly with a bare detail, or with an envelope that is not the approval bus's.
        (
            approval("REQ-BARE", "orders", "a@corp.com", orders_access())["detail"].clone(),
            "not a bare detail",
        ),
        (
            json!({"detail-type": "Access Request Approved", "source": "pgjit.approvals", "account": "123456789012",
            "detail": approval("REQ-NOTIME", "orders", "a@corp.com", orders_access())["detail"].clone()}),
            "time: missing",
        ),
        (
            {
                let mut e = approval("REQ-SRC", "orders", "a@corp.com", orders_access());
                e["source"] = json!("someone.else");
                e
            },
            "not the approval source",
        ),
        (
            {
                let mut e = approval("REQ-ACCT", "orders", "a@corp.com", orders_access());
                e["account"] = json!("210987654321");
                e
            },
            "not pgjit's account",
        ),
    ];
    for (mut event, expected) in cases {
        if expected != "max_duration_seconds" && event["detail"].get("duration_seconds").is_some() {
            event["detail"]["duration_seconds"] = json!(60);
        }
        let err = grant(&svc, event.clone()).await.unwrap_err();
        assert!(err.contains(expected), "{expected}: {err}");
    }
    assert!(
        svc.store.get_grant("REQ-LONG").await.unwrap().is_none(),
        "refused before any record"
    );
    assert_eq!(schedule_count(&svc).await, 0);
    let left: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)",
            &[&i.user_prefix],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "no role for refused requests");
}

#[tokio::test]
async fn discovery_registers_tagged_instances_and_inventories_databases() {
    let e = env();
    let svc = isolated_services().await;
    let su = e.superuser("app").await;
    let id: u32 = rand::random();
    let tagged = format!("tagged-{id}");
    svc.rds
        .create_db_instance()
        .db_instance_identifier(&tagged)
        .engine("postgres")
        .db_instance_class("db.t3.micro")
        .master_username("postgres")
        .master_user_password("not-used-here")
        .allocated_storage(20)
        .tags(
            aws_sdk_rds::types::Tag::builder()
                .key(&svc.config.discovery_tag_key)
                .value(format!("{}missing-admin", svc.config.secret_prefix))
                .build(),
        )
        .send()
        .await
        .unwrap();
    integration(&svc, "local", json!({})).await;
    let table = format!("discovered_{id}");
    su.batch_execute(&format!("CREATE TABLE public.{table} (x int)"))
        .await
        .unwrap();

    // Tagged instances whose tag names no usable admin secret, and one an operator's integration
    // already covers: none is registered, each is reported with why.
    let tag = |value: String| {
        aws_sdk_rds::types::Tag::builder()
            .key(&svc.config.discovery_tag_key)
            .value(value)
            .build()
    };
    let outside = format!("elsewhere/admin-{id}");
    svc.secrets
        .create_secret()
        .name(&outside)
        .secret_string(json!({"username": "u", "password": "p"}).to_string())
        .send()
        .await
        .unwrap();
    let not_rds = format!("{}not-rds-{id}", svc.config.secret_prefix);
    svc.secrets
        .create_secret()
        .name(&not_rds)
        .secret_string("just a password")
        .send()
        .await
        .unwrap();
    let good = format!("{}good-{id}", svc.config.secret_prefix);
    svc.secrets
        .create_secret()
        .name(&good)
        .secret_string(json!({"username": "u", "password": "p"}).to_string())
        .send()
        .await
        .unwrap();
    let (covered, outside_db, not_rds_db, fine) = (
        format!("covered-{id}"),
        format!("outside-{id}"),
        format!("notrds-{id}"),
        format!("fine-{id}"),
    );
    for (instance, secret) in [
        (&covered, &good),
        (&outside_db, &outside),
        (&not_rds_db, &not_rds),
        (&fine, &good),
    ] {
        pgjit_tests::moto_rds_instance(&svc, instance).await;
        let arn = format!("arn:aws:rds:us-east-1:123456789012:db:{instance}");
        svc.rds
            .add_tags_to_resource()
            .resource_name(arn)
            .tags(tag(secret.clone()))
            .send()
            .await
            .unwrap();
    }
    integration(&svc, "operators-own", json!({"kind": "rds", "instance_id": covered, "region": "us-east-1", "enable_audit": true, "audit_required": false})).await;

    let report = pgjit::control::discovery::run(&svc, Utc::now(), |_| {})
        .await
        .unwrap();
    let skipped = |instance: &str| {
        report
            .skipped
            .iter()
            .find(|(n, _)| n == instance)
            .map(|(_, why)| why.clone())
            .unwrap_or_default()
    };
    assert!(skipped(&tagged).contains("missing-admin"), "{report:?}");
    assert!(
        skipped(&covered).contains("already covered by integration \"operators-own\""),
        "{report:?}"
    );
    assert!(
        skipped(&outside_db).contains("not under pgjit's admin secret prefix"),
        "{report:?}"
    );
    assert!(
        skipped(&not_rds_db).contains("not in the RDS JSON format"),
        "{report:?}"
    );
    for instance in [&tagged, &covered, &outside_db, &not_rds_db] {
        assert!(
            svc.store.get_integration(instance).await.unwrap().is_none(),
            "{instance} not registered"
        );
    }
    assert_eq!(report.registered, [fine.clone()], "{report:?}");
    let registered = svc
        .store
        .get_integration(&fine)
        .await
        .unwrap()
        .expect("registered");
    assert_eq!(registered.instance_id.as_deref(), Some(fine.as_str()));
    // The registered instance cannot be read (moto's instance has no server behind it):
    // recorded on it, and the other integration is inventoried all the same.
    assert!(registered.discovery.unwrap().error.is_some());
    let local = report
        .inventoried
        .iter()
        .find(|(n, _)| n == "local")
        .expect("local inventoried");
    assert!(local.1 > 10);
    let items = svc.store.inventory("local").await.unwrap();
    let has = |kind: &str, name: &str| items.iter().any(|i| i.kind == kind && i.name == name);
    assert!(
        has("table", "orders")
            && has("view", "big_orders")
            && has("sequence", "orders_id_seq")
            && has("function", "order_count()")
    );
    assert!(has("schema", "sales") && has("database", "crm") && has("role", "reporting"));
    assert!(has("table", &table));
    let prefix = svc
        .store
        .get_integration("local")
        .await
        .unwrap()
        .unwrap()
        .user_prefix;
    assert!(
        !items
            .iter()
            .any(|i| i.kind == "role" && i.name.starts_with(&prefix)),
        "temporary roles are not inventoried"
    );

    // A dropped table disappears from the inventory at the next run.
    su.batch_execute(&format!("DROP TABLE public.{table}"))
        .await
        .unwrap();
    pgjit::control::discovery::run(&svc, Utc::now(), |_| {})
        .await
        .unwrap();
    let items = svc.store.inventory("local").await.unwrap();
    assert!(!items.iter().any(|i| i.name == table));
    // Discovery never overwrites an integration an operator changed, nor reports it as skipped.
    let again = pgjit::control::discovery::run(&svc, Utc::now(), |_| {})
        .await
        .unwrap();
    assert!(again.registered.is_empty());
    assert!(!again.skipped.iter().any(|(n, _)| *n == fine), "{again:?}");
}

#[tokio::test]
async fn an_access_granted_event_tells_the_requester_without_the_password() {
    let bus = format!("approvals-{}", rand::random::<u32>());
    let b = bus.clone();
    let svc =
        pgjit_tests::isolated_services_with(move |n| (n == "PGJIT_EVENT_BUS").then(|| b.clone()))
            .await;
    integration(&svc, "announced", json!({})).await;
    // The bus, a rule for pgjit's event, and a queue that receives it, as a notifier would have.
    svc.events
        .create_event_bus()
        .name(&bus)
        .send()
        .await
        .unwrap();
    let sqs = aws_sdk_sqs::Client::new(&pgjit_tests::moto_sdk_config().await);
    let queue = sqs
        .create_queue()
        .queue_name(&bus)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap();
    let queue_arn =
        attributes.attributes().unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn].clone();
    svc.events
        .put_rule()
        .name("granted")
        .event_bus_name(&bus)
        .event_pattern(json!({"source": ["pgjit"], "detail-type": ["Access Granted"]}).to_string())
        .send()
        .await
        .unwrap();
    let target = aws_sdk_eventbridge::types::Target::builder()
        .id("queue")
        .arn(&queue_arn)
        .build()
        .unwrap();
    svc.events
        .put_targets()
        .rule("granted")
        .event_bus_name(&bus)
        .targets(target)
        .send()
        .await
        .unwrap();

    let result = grant(
        &svc,
        approval(
            "REQ-ANNOUNCE",
            "announced",
            "told@corp.com",
            orders_access(),
        ),
    )
    .await
    .unwrap();
    let messages = sqs
        .receive_message()
        .queue_url(&queue)
        .max_number_of_messages(10)
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap();
    let bodies: Vec<Value> = messages
        .messages()
        .iter()
        .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
        .collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let event = &bodies[0];
    assert_eq!(event["detail-type"], "Access Granted");
    let detail = &event["detail"];
    assert_eq!(detail["request_id"], "REQ-ANNOUNCE");
    assert_eq!(detail["db_user"], result.db_user.as_str());
    assert_eq!(detail["secret_arn"], result.secret_arn.as_deref().unwrap());
    assert_eq!(detail["databases"], json!(["app"]));
    assert!(detail["custom_access_details"]
        .as_str()
        .unwrap()
        .contains("psql"));
    let (_, password, _) = credentials(&svc, result.secret_arn.as_deref().unwrap()).await;
    assert!(
        !event.to_string().contains(password.expose()),
        "no password in the event"
    );
    revoke_with(&svc, pgjit_tests::early_revoke("REQ-ANNOUNCE"))
        .await
        .unwrap();
}

/// Secrets Manager deletes asynchronously, and AWS refuses to create a name whose deletion is
/// still running. A retried grant after an undo finds its own secret scheduled for deletion: it is
/// restored and reused; another request's is never touched.
#[tokio::test]
async fn a_secret_name_still_being_deleted_is_restored_for_its_own_request_only() {
    let svc = isolated_services().await;
    let i = integration(&svc, "deleting", json!({})).await;
    let name = pgjit::aws::credentials::secret_name(&svc, &i.name, "REQ-DELETING");
    let password = SecretString::random_password();
    let value = pgjit::aws::credentials::CredentialsValue {
        engine: "postgres",
        host: "db",
        port: 5432,
        dbname: "app",
        username: "u",
        password: &password,
        expires_at: Utc::now(),
    };
    let nobody = pgjit::aws::credentials::Readers {
        requester: None,
        functions: &[],
        others: &[],
    };
    pgjit::aws::credentials::store(&svc, &name, &value, "a@corp.com", "REQ-DELETING", &nobody)
        .await
        .unwrap();
    svc.secrets
        .delete_secret()
        .secret_id(&name)
        .recovery_window_in_days(7)
        .send()
        .await
        .unwrap();
    // moto lets the name be created again; AWS refuses while the deletion runs, with this error.
    let scheduled = || {
        pgjit_tests::AwsFault {
        target: "secretsmanager.CreateSecret",
        times: 1.into(),
        status: 400,
        body: json!({"__type": "InvalidRequestException",
            "Message": "You can't create this secret because a secret with this name is already scheduled for deletion."}).to_string(),
    }
    };
    let svc = pgjit_tests::with_aws_fault(svc, scheduled());
    let again = SecretString::random_password();
    let value = pgjit::aws::credentials::CredentialsValue {
        password: &again,
        ..value
    };
    pgjit::aws::credentials::store(&svc, &name, &value, "a@corp.com", "REQ-DELETING", &nobody)
        .await
        .expect("restored and reused");
    let stored: Value = serde_json::from_str(
        pgjit::aws::credentials::read(&svc, &name)
            .await
            .unwrap()
            .expose(),
    )
    .unwrap();
    assert_eq!(stored["password"], again.expose(), "the new value");
    let described = svc
        .secrets
        .describe_secret()
        .secret_id(&name)
        .send()
        .await
        .unwrap();
    assert!(
        described.deleted_date().is_none(),
        "no longer scheduled for deletion"
    );

    // Someone else's name being deleted is not ours to restore.
    let other = pgjit::aws::credentials::secret_name(&svc, &i.name, "REQ-OTHERS");
    let tag = aws_sdk_secretsmanager::types::Tag::builder()
        .key("pgjit:request_id")
        .value("REQ-SOMEONE")
        .build();
    svc.secrets
        .create_secret()
        .name(&other)
        .secret_string("theirs")
        .tags(tag)
        .send()
        .await
        .unwrap();
    svc.secrets
        .delete_secret()
        .secret_id(&other)
        .recovery_window_in_days(7)
        .send()
        .await
        .unwrap();
    let svc = pgjit_tests::with_aws_fault(svc, scheduled());
    let err =
        pgjit::aws::credentials::store(&svc, &other, &value, "a@corp.com", "REQ-OTHERS", &nobody)
            .await
            .expect_err("not ours");
    assert!(
        pgjit::engine::postgres::error_chain(&err).contains("does not belong"),
        "{}",
        pgjit::engine::postgres::error_chain(&err)
    );
    assert!(
        svc.secrets
            .describe_secret()
            .secret_id(&other)
            .send()
            .await
            .unwrap()
            .deleted_date()
            .is_some(),
        "left as it was"
    );
}

/// An integration in another region than pgjit's: its RDS calls go to its own region.
#[tokio::test]
async fn an_integrations_rds_calls_go_to_its_own_region() {
    let svc = isolated_services().await;
    let id: u32 = rand::random();
    let instance = format!("far-db-{id}");
    let far = aws_sdk_rds::Client::from_conf(
        aws_sdk_rds::config::Builder::from(&svc.sdk_config)
            .region(aws_sdk_rds::config::Region::new("eu-west-1"))
            .build(),
    );
    let resource_id = pgjit_tests::moto_rds_instance_with(&far, &instance).await;
    let far_away = integration(
        &svc,
        "far",
        json!({"kind": "rds", "instance_id": instance, "region": "eu-west-1"}),
    )
    .await;
    let found = pgjit::aws::rds::describe(&svc, &far_away)
        .await
        .expect("found in eu-west-1")
        .expect("an instance");
    assert_eq!(found.resource_id.as_deref(), Some(resource_id.as_str()));
    let here = integration(
        &svc,
        "here",
        json!({"kind": "rds", "instance_id": instance, "region": "us-east-1"}),
    )
    .await;
    assert!(
        pgjit::aws::rds::describe(&svc, &here).await.is_err(),
        "not in us-east-1"
    );
}

/// Each distinct privilege set leaves a profile role with ACL entries on what it covers: one
/// without members is marked, and dropped once that lasts `profile_retention_days`; one in use
/// again keeps going; a role pgjit did not create is never touched.
#[tokio::test]
async fn unused_profile_roles_are_dropped_after_their_retention() {
    let svc = isolated_services().await;
    let e = env();
    let su = e.superuser("app").await;
    let id: u32 = rand::random();
    let name = format!("profiles-{id}");
    let i = integration(
        &svc,
        &name,
        json!({"user_cleanup_after_days": 0, "profile_retention_days": 2}),
    )
    .await;
    // A DBA's role that looks like a profile role, without pgjit's marker.
    let lookalike = format!("{}p_0123456789abcdef", i.user_prefix);
    su.batch_execute(&format!(
        "CREATE ROLE \"{lookalike}\" NOLOGIN; GRANT SELECT ON sales.orders TO \"{lookalike}\""
    ))
    .await
    .unwrap();
    let acl_of_orders = || async {
        let su = env().superuser("app").await;
        let row = su
            .query_one(
                "SELECT relacl::text[] FROM pg_class WHERE oid = 'sales.orders'::regclass",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, Vec<String>>(0)
    };
    let comment_of = |role: String| async move {
        let su = env().superuser("postgres").await;
        su.query_opt(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
    };

    grant(
        &svc,
        approval(
            &format!("REQ-PA-{id}"),
            &name,
            "a@corp.com",
            orders_access(),
        ),
    )
    .await
    .unwrap();
    let profile = {
        let client = e.admin().connect("postgres").await.unwrap();
        let managed = pgjit::engine::roles::departure::managed_roles(&client, &i.user_prefix)
            .await
            .unwrap();
        managed
            .into_iter()
            .find(|r| r.profile)
            .expect("a profile role")
            .name
    };
    assert!(acl_of_orders()
        .await
        .iter()
        .any(|a| a.starts_with(&format!("{profile}="))));
    revoke_with(&svc, pgjit_tests::early_revoke(&format!("REQ-PA-{id}")))
        .await
        .unwrap();

    // No members: marked, kept.
    let now = Utc::now();
    let report = pgjit::control::cleanup::run(&svc, now).await.unwrap();
    assert_eq!(
        (report.profile_roles, report.profiles_dropped.len()),
        (1, 0),
        "{report:?}"
    );
    assert!(
        report
            .largest_acls
            .iter()
            .any(|(table, n)| table.contains("sales.orders") && *n >= 2),
        "{:?}",
        report.largest_acls
    );
    assert!(
        comment_of(profile.clone())
            .await
            .unwrap()
            .contains("unused since"),
        "marked"
    );

    // In use again within the retention: cleanup finds a member, takes the mark away, and the
    // role stays.
    grant(
        &svc,
        approval(
            &format!("REQ-PB-{id}"),
            &name,
            "b@corp.com",
            orders_access(),
        ),
    )
    .await
    .unwrap();
    let report = pgjit::control::cleanup::run(&svc, now + Duration::minutes(30))
        .await
        .unwrap();
    assert!(report.profiles_dropped.is_empty(), "{report:?}");
    assert!(
        !comment_of(profile.clone())
            .await
            .unwrap()
            .contains("unused since"),
        "in use: the mark is gone"
    );
    revoke_with(&svc, pgjit_tests::early_revoke(&format!("REQ-PB-{id}")))
        .await
        .unwrap();

    // Empty again: marked then, dropped only once the retention has passed since.
    let report = pgjit::control::cleanup::run(&svc, now + Duration::days(1))
        .await
        .unwrap();
    assert!(report.profiles_dropped.is_empty());
    let report = pgjit::control::cleanup::run(&svc, now + Duration::days(2))
        .await
        .unwrap();
    assert!(
        report.profiles_dropped.is_empty(),
        "one day is within the two-day retention"
    );
    let report = pgjit::control::cleanup::run(&svc, now + Duration::days(3) + Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(
        report.profiles_dropped,
        vec![format!("{name}/{profile}")],
        "{report:?}"
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        comment_of(profile.clone()).await.is_none(),
        "the profile role is gone"
    );
    let acl = acl_of_orders().await;
    assert!(
        !acl.iter().any(|a| a.starts_with(&format!("{profile}="))),
        "its ACL entry went with it: {acl:?}"
    );
    // The lookalike is the DBA's: untouched.
    assert!(acl.iter().any(|a| a.starts_with(&format!("{lookalike}="))));
    assert!(role_exists(&su, &lookalike).await);
    // A later grant of the same privileges makes the profile role anew.
    grant(
        &svc,
        approval(
            &format!("REQ-PC-{id}"),
            &name,
            "c@corp.com",
            orders_access(),
        ),
    )
    .await
    .expect("granted with a new profile role");
    revoke_with(&svc, pgjit_tests::early_revoke(&format!("REQ-PC-{id}")))
        .await
        .unwrap();
    su.batch_execute(&format!(
        "REVOKE ALL ON sales.orders FROM \"{lookalike}\"; DROP ROLE \"{lookalike}\""
    ))
    .await
    .unwrap();
}

/// An IAM Identity Center user in IAM mode gets an access role of their own: under pgjit's path,
/// made with the stack's boundary, assumable by their own session only and only until expiry;
/// an extension moves both expiries, revoke deletes it, a role of its name that pgjit did not
/// make is refused and left alone, and cleanup deletes one a crash left behind. moto evaluates
/// no trust policy or boundary: each is read back and evaluated for every caller that matters.
#[tokio::test]
async fn an_identity_center_user_gets_an_access_role_only_their_session_can_assume() {
    use pgjit::aws::access_role;
    use pgjit_tests::policy::{evaluate_trust, Caller, Decision};
    let _ = env();
    let id: u32 = rand::random();
    let boundary_svc = isolated_services().await;
    let boundary = boundary_svc.iam.create_policy().policy_name(format!("pgjit-boundary-{id}"))
        .policy_document(json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "rds-db:connect", "Resource": "*"}]}).to_string())
        .send().await.unwrap().policy.unwrap().arn.unwrap();
    let b = boundary.clone();
    let svc = pgjit_tests::isolated_services_with(move |n| {
        (n == "PGJIT_ACCESS_ROLE_BOUNDARY_ARN").then(|| b.clone())
    })
    .await;
    let instance = format!("orders-sso-{id}");
    let resource_id = pgjit_tests::moto_rds_instance(&svc, &instance).await;
    let set = format!("AWSReservedSSO_Dev_{id:08x}");
    let path = "/aws-reserved/sso.amazonaws.com/eu-west-1/";
    let sso_role = svc
        .iam
        .create_role()
        .path(path)
        .role_name(&set)
        .assume_role_policy_document("{}")
        .send()
        .await
        .unwrap()
        .role
        .unwrap();
    integration(&svc, "orders-sso", json!({"kind": "rds", "instance_id": instance, "region": "us-east-1", "access_mode": "iam"})).await;

    let request_id = format!("REQ-SSO-{id}");
    let mut event = approval(&request_id, "orders-sso", "john@corp.com", orders_access());
    event["detail"]["requester"]["iam_arn"] = json!(format!(
        "arn:aws:sts::123456789012:assumed-role/{set}/john@corp.com"
    ));
    let result = grant(&svc, event)
        .await
        .expect("granted through an access role");
    let record = svc.store.get_grant(&request_id).await.unwrap().unwrap();
    let policy = record.iam_policy.clone().expect("the policy's place");
    let name = access_role::role_name(&request_id);
    assert_eq!(
        (
            policy.principal_kind.as_str(),
            policy.principal_name.as_str()
        ),
        (access_role::KIND, name.as_str())
    );
    assert_eq!(
        policy.role_arn.as_deref(),
        Some(format!("arn:aws:iam::123456789012:role/pgjit/access/{name}").as_str())
    );
    // Nothing was written on the Identity Center role (AWS would refuse it anyway).
    assert!(svc
        .iam
        .list_role_policies()
        .role_name(&set)
        .send()
        .await
        .unwrap()
        .policy_names()
        .is_empty());

    let role = svc
        .iam
        .get_role()
        .role_name(&name)
        .send()
        .await
        .unwrap()
        .role
        .unwrap();
    assert_eq!(role.path(), access_role::PATH);
    assert_eq!(
        role.permissions_boundary()
            .and_then(|p| p.permissions_boundary_arn()),
        Some(boundary.as_str())
    );
    assert!(role
        .tags()
        .iter()
        .any(|t| t.key() == access_role::REQUEST_TAG && t.value() == request_id));
    assert!((3600..=43_200).contains(&role.max_session_duration().unwrap_or(0)));
    let trust = urlencoding_decode(role.assume_role_policy_document().unwrap());
    // Statement by statement: one Allow of sts:AssumeRole, to the one session, until expiry.
    let doc: Value = serde_json::from_str(&trust).unwrap();
    assert_eq!(doc["Statement"].as_array().unwrap().len(), 1);
    let s = &doc["Statement"][0];
    assert_eq!(
        (s["Effect"].as_str(), s["Action"].as_str()),
        (Some("Allow"), Some("sts:AssumeRole"))
    );
    let expiry = result.expires_at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    assert_eq!(
        s["Condition"]["DateLessThan"]["aws:CurrentTime"],
        json!(expiry)
    );
    let set_path = format!("aws-reserved/sso.amazonaws.com/eu-west-1/{set}");
    let john = Caller::session(
        "123456789012",
        &set_path,
        sso_role.role_id(),
        "john@corp.com",
    );
    let jane_same_set = Caller::session(
        "123456789012",
        &set_path,
        sso_role.role_id(),
        "jane@corp.com",
    );
    let john_elsewhere = Caller::session("123456789012", "Other", "AROAOTHER", "john@corp.com");
    let bystander = Caller::user("123456789012", "eve", "AIDAEVE");
    assert_eq!(evaluate_trust(&trust, &john), Decision::Allowed, "{trust}");
    for other in [&jane_same_set, &john_elsewhere, &bystander] {
        assert_eq!(
            evaluate_trust(&trust, other),
            Decision::Denied,
            "{other:?} under {trust}"
        );
    }
    assert_eq!(
        evaluate_trust(
            &trust,
            &john.clone().at(result.expires_at + Duration::seconds(1))
        ),
        Decision::Denied,
        "not after expiry"
    );
    // A permission set deleted and made again under the same name has another role id.
    let recreated = Caller::session("123456789012", &set_path, "AROARECREATED", "john@corp.com");
    assert_eq!(evaluate_trust(&trust, &recreated), Decision::Denied);
    // The inline policy: rds-db:connect on the one database user, until expiry; within the boundary.
    let inline = svc
        .iam
        .get_role_policy()
        .role_name(&name)
        .policy_name(&policy.policy_name)
        .send()
        .await
        .unwrap()
        .policy_document;
    let inline: Value = serde_json::from_str(&urlencoding_decode(&inline)).unwrap();
    assert_eq!(inline["Statement"][0]["Action"], "rds-db:connect");
    assert_eq!(
        inline["Statement"][0]["Resource"],
        json!(format!(
            "arn:aws:rds-db:us-east-1:123456789012:dbuser:{resource_id}/{}",
            result.db_user
        ))
    );
    assert_eq!(
        inline["Statement"][0]["Condition"]["DateLessThan"]["aws:CurrentTime"],
        json!(expiry)
    );

    // An extension moves the trust's and the policy's expiry.
    let extended = grant(
        &svc,
        pgjit_tests::extension(
            &format!("ext-{request_id}"),
            &request_id,
            "jane@corp.com",
            5000,
        ),
    )
    .await
    .expect("extended");
    let later = extended.expires_at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let role = svc
        .iam
        .get_role()
        .role_name(&name)
        .send()
        .await
        .unwrap()
        .role
        .unwrap();
    let trust = urlencoding_decode(role.assume_role_policy_document().unwrap());
    assert!(
        trust.contains(&later) && !trust.contains(&expiry),
        "{trust}"
    );
    let inline = svc
        .iam
        .get_role_policy()
        .role_name(&name)
        .policy_name(&policy.policy_name)
        .send()
        .await
        .unwrap()
        .policy_document;
    assert!(urlencoding_decode(&inline).contains(&later));

    // Revoke deletes the role with its policy; a second revoke is harmless.
    revoke_with(&svc, pgjit_tests::early_revoke(&request_id))
        .await
        .expect("revoked");
    let gone = svc
        .iam
        .get_role()
        .role_name(&name)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        gone.as_service_error()
            .and_then(|e| aws_sdk_iam::error::ProvideErrorMetadata::code(e)),
        Some("NoSuchEntity")
    );
    revoke_with(&svc, pgjit_tests::early_revoke(&request_id))
        .await
        .expect("again");

    // A role of the next request's access role name made by someone else (another path, no
    // tag): the grant is refused, nothing is left, and that role is untouched.
    let forged_id = format!("REQ-SSO-FORGED-{id}");
    let forged = access_role::role_name(&forged_id);
    svc.iam
        .create_role()
        .path("/team/")
        .role_name(&forged)
        .assume_role_policy_document("{\"Version\":\"2012-10-17\",\"Statement\":[]}")
        .send()
        .await
        .unwrap();
    let mut event = approval(&forged_id, "orders-sso", "john@corp.com", orders_access());
    event["detail"]["requester"]["iam_arn"] = json!(format!(
        "arn:aws:sts::123456789012:assumed-role/{set}/john@corp.com"
    ));
    let err = grant(&svc, event).await.unwrap_err();
    assert!(err.contains("is not this request's access role"), "{err}");
    let untouched = svc
        .iam
        .get_role()
        .role_name(&forged)
        .send()
        .await
        .unwrap()
        .role
        .unwrap();
    assert_eq!(untouched.path(), "/team/");
    assert!(
        urlencoding_decode(untouched.assume_role_policy_document().unwrap())
            .contains("\"Statement\":[]")
    );
    assert!(svc
        .iam
        .list_role_policies()
        .role_name(&forged)
        .send()
        .await
        .unwrap()
        .policy_names()
        .is_empty());
    assert_ne!(
        svc.store
            .get_grant(&forged_id)
            .await
            .unwrap()
            .map(|r| r.status),
        Some(GrantStatus::Active)
    );

    // One a crash left behind (no live record) is deleted by cleanup once past the grace.
    let ghost_id = format!("REQ-SSO-GHOST-{id}");
    let requester = pgjit::contract::identity::requester_of(&format!(
        "arn:aws:sts::123456789012:assumed-role/{set}/john@corp.com"
    ))
    .unwrap();
    access_role::ensure(&svc, &requester, &ghost_id, Utc::now() + Duration::hours(1), "pgjit-ghost", &json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "rds-db:connect", "Resource": "*"}]}).to_string()).await.unwrap();
    let report = pgjit::control::cleanup::run(&svc, Utc::now() + Duration::hours(2))
        .await
        .unwrap();
    assert!(
        report
            .access_roles_removed
            .contains(&access_role::role_name(&ghost_id)),
        "{report:?}"
    );
    assert!(
        !report.access_roles_removed.contains(&forged),
        "never a role pgjit did not make"
    );
    assert!(svc
        .iam
        .get_role()
        .role_name(&access_role::role_name(&ghost_id))
        .send()
        .await
        .is_err());
    svc.iam
        .delete_role()
        .role_name(&forged)
        .send()
        .await
        .unwrap();
}
