//! A corpus of malformed approvals and integrations: each gets a clear error naming the problem,
//! and nothing changes in PostgreSQL, DynamoDB, Secrets Manager, IAM or the scheduler.

use lambda_runtime::{Context, LambdaEvent};
use pgjit_tests::{approval, env, isolated_services, orders_access, register_integration};
use serde_json::{json, Value};

/// Everything the corpus could have changed, as counts.
async fn footprint(svc: &pgjit::aws::Services, prefix: &str) -> (i64, i64, usize, usize, usize, usize) {
    let su = env().superuser("app").await;
    let roles: i64 = su.query_one("SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)", &[&prefix]).await.unwrap().get(0);
    // Every relation, schema and role name in the database: an injection would change one.
    let catalog: i64 = su
        .query_one("SELECT (SELECT count(*) FROM pg_class) + (SELECT count(*) FROM pg_namespace) + (SELECT count(*) FROM pg_roles WHERE NOT starts_with(rolname, 'pgjit_') AND NOT rolname ~ '^[a-z][0-9]+_')", &[])
        .await
        .unwrap()
        .get(0);
    let grants = svc.store.all_grants().await.unwrap().len();
    let secrets = pgjit_tests::secret_names(svc).await.iter().filter(|n| n.starts_with(&svc.config.credentials_prefix)).count();
    let schedules = svc.scheduler.list_schedules().group_name(&svc.config.schedule_group).send().await.unwrap().schedules().len();
    let policies = svc.iam.list_user_policies().user_name("corpus-user").send().await.unwrap().policy_names().len();
    (roles, catalog, grants, secrets, schedules, policies)
}

#[tokio::test]
async fn malformed_approvals_are_refused_and_change_nothing() {
    let svc = isolated_services().await;
    svc.iam.create_user().user_name("corpus-user").send().await.ok();
    // Every role the corpus names is listed, so each is refused for what it is, not for being unlisted.
    let listed = ["pg_read_all_settings", "pg_execute_server_program", "postgres", "pgjit_admin", "reporting", "nope", "reporting\"; ALTER ROLE pgjit_admin SUPERUSER; --", "unlisted_role"];
    let integration = register_integration(&svc, "corpus", json!({"max_duration_seconds": 3600, "grantable_roles": listed[..listed.len() - 1]})).await;
    let before = footprint(&svc, &integration.user_prefix).await;

    let base = approval("BAD-1", "corpus", "corpus@corp.com", orders_access());
    let with = |path: &[&str], value: Value| {
        let mut v = base.clone();
        let mut cursor = &mut v;
        for p in &path[..path.len() - 1] {
            cursor = &mut cursor[*p];
        }
        cursor[path[path.len() - 1]] = value;
        v
    };
    let without = |field: &str| {
        let mut v = base.clone();
        v["detail"].as_object_mut().unwrap().remove(field);
        v
    };
    let entry = |e: Value| with(&["detail", "access"], json!([e]));
    let long = "x".repeat(64);
    let huge = "y".repeat(1 << 20);
    let corpus: Vec<(Value, &str)> = vec![
        (json!(null), "must be a JSON object"),
        (json!("approve everything"), "must be a JSON object"),
        (json!([base.clone()]), "must be a JSON object"),
        (with(&["detail-type"], json!("Access Request Denied")), "detail-type"),
        (without("request_id"), "request_id"),
        (without("integration"), "integration"),
        (without("requester"), "requester"),
        (without("approver"), "approver"),
        (without("duration_seconds"), "duration_seconds"),
        (without("access"), "access"),
        (with(&["detail", "request_id"], json!(42)), "request_id"),
        (with(&["detail", "request_id"], json!("")), "request_id"),
        (with(&["detail", "request_id"], json!("REQ 1; DROP")), "request_id"),
        (with(&["detail", "request_id"], json!(huge.clone())), "request_id"),
        (with(&["detail", "integration"], json!("nope")), "unknown integration"),
        (with(&["detail", "integration"], json!(huge.clone())), "integration"),
        (with(&["detail", "requester"], json!("corpus@corp.com")), "requester"),
        (with(&["detail", "requester", "id"], json!("")), "requester.id"),
        (with(&["detail", "approver"], json!(huge.clone())), "approver"),
        (with(&["detail", "reason"], json!(huge)), "reason"),
        (with(&["detail", "duration_seconds"], json!(-60)), "duration_seconds"),
        (with(&["detail", "duration_seconds"], json!(0)), "duration_seconds"),
        (with(&["detail", "duration_seconds"], json!("3600")), "duration_seconds"),
        (with(&["detail", "duration_seconds"], json!(1.5)), "duration_seconds"),
        (with(&["detail", "duration_seconds"], json!(86400)), "max_duration_seconds"),
        (with(&["detail", "duration_seconds"], json!(u64::MAX)), "max_duration_seconds"),
        (with(&["detail", "access"], json!([])), "at least one entry"),
        (with(&["detail", "access"], json!("all")), "access"),
        (with(&["detail", "access"], json!((0..101).map(|_| orders_access()[0].clone()).collect::<Vec<_>>())), "at most 100"),
        (entry(json!({"schema": "sales", "privileges": ["USAGE"]})), "database"),
        (entry(json!({"database": long.clone(), "privileges": ["CONNECT"]})), "64 bytes"),
        (entry(json!({"database": "app", "schema": long.clone(), "privileges": ["USAGE"]})), "64 bytes"),
        (entry(json!({"database": "app", "schema": "sales", "table": long.clone(), "privileges": ["SELECT"]})), "64 bytes"),
        (entry(json!({"database": "app", "role": long}), ), "64 bytes"),
        (entry(json!({"database": "app", "schema": "sales", "table": "orders", "privileges": ["SELECT", "DROP"]})), "\"DROP\" does not apply"),
        (entry(json!({"database": "app", "schema": "sales", "table": "orders", "privileges": ["EXECUTE"]})), "does not apply to a table"),
        (entry(json!({"database": "app", "schema": "sales", "privileges": ["SELECT"]})), "does not apply to a schema"),
        (entry(json!({"database": "app", "privileges": ["USAGE"]})), "does not apply to a database"),
        (entry(json!({"database": "app", "schema": "sales", "sequence": "orders_id_seq", "privileges": ["DELETE"]})), "does not apply to a sequence"),
        (entry(json!({"database": "app", "schema": "sales", "function": "order_count", "privileges": ["SELECT"]})), "does not apply to a function"),
        (entry(json!({"database": "app", "schema": "sales", "table": "orders"})), "at least one privilege"),
        (entry(json!({"database": "app", "schema": "sales", "table": "orders", "privileges": "SELECT"})), "privileges"),
        (entry(json!({"database": "app", "role": "pg_read_all_settings"})), "privileged_grantable_roles"),
        (entry(json!({"database": "app", "role": "pg_execute_server_program"})), "predefined role"),
        (entry(json!({"database": "app", "role": "unlisted_role"})), "not in the integration's grantable_roles"),
        (entry(json!({"database": "app", "role": "postgres"})), "SUPERUSER"),
        (entry(json!({"database": "app", "role": "pgjit_admin"})), "never handed out"),
        (entry(json!({"database": "app", "role": "reporting", "privileges": ["SELECT"]})), "takes no privileges"),
        (entry(json!({"database": "app", "schema": "sales", "table": "orders", "sequence": "s", "privileges": ["SELECT"]})), "only one of"),
        (entry(json!({"database": "app", "schema": "sales", "tabel": "orders", "privileges": ["SELECT"]})), "tabel"),
        (entry(json!({"database": "nope", "privileges": ["CONNECT"]})), "database \"nope\" does not exist"),
        (entry(json!({"database": "app", "schema": "nope", "privileges": ["USAGE"]})), "does not exist"),
        (entry(json!({"database": "app", "role": "nope"})), "does not exist"),
        // Injection attempts: names, never SQL.
        (entry(json!({"database": "app", "schema": "sales", "table": "orders; DROP TABLE sales.orders; --", "privileges": ["SELECT"]})), "does not exist"),
        (entry(json!({"database": "app", "schema": "sales\"; DROP SCHEMA hr CASCADE; --", "privileges": ["USAGE"]})), "does not exist"),
        (entry(json!({"database": "app", "schema": "sales", "table": "orders' OR '1'='1", "privileges": ["SELECT"]})), "does not exist"),
        (entry(json!({"database": "app", "schema": "sales", "table": "orders/**/", "privileges": ["SELECT"]})), "does not exist"),
        (entry(json!({"database": "app", "schema": "sales", "table": "orders\\", "privileges": ["SELECT"]})), "does not exist"),
        (entry(json!({"database": "app", "schema": "sales", "table": "orders\u{0}", "privileges": ["SELECT"]})), "NUL"),
        (entry(json!({"database": "app", "schema": "sаles", "table": "orders", "privileges": ["SELECT"]})), "does not exist"),
        (entry(json!({"database": "app", "schema": "sales", "table": "ordеrs", "privileges": ["SELECT"]})), "does not exist"),
        (entry(json!({"database": "app", "role": "reporting\"; ALTER ROLE pgjit_admin SUPERUSER; --"})), "does not exist"),
        (entry(json!({"database": "app", "schema": "sales", "function": "order_count(); DROP TABLE sales.orders; --", "privileges": ["EXECUTE"]})), "does not exist"),
        (entry(json!({"database": "app", "schema": "sales", "function": "order_count", "arguments": ["int); DROP TABLE sales.orders; --"], "privileges": ["EXECUTE"]})), "is not a type name"),
        (entry(json!({"database": "app", "schema": "sales", "function": "order_count", "arguments": ["no_such_type"], "privileges": ["EXECUTE"]})), "does not exist"),
    ];
    let mut tried = 0;
    for (i, (event, expected)) in corpus.iter().enumerate() {
        // A request id of its own per case: the same id with other details is refused as such.
        let mut event = event.clone();
        if event.pointer("/detail/request_id") == Some(&json!("BAD-1")) {
            event["detail"]["request_id"] = json!(format!("BAD-{i}"));
        }
        let err = pgjit::control::handlers::grant(&svc, LambdaEvent::new(pgjit_tests::signed(&svc, event).await, Context::default())).await.expect_err(expected).to_string();
        assert!(err.contains(expected), "expected {expected:?} in: {}", &err[..err.len().min(300)]);
        tried += 1;
    }
    assert!(tried >= 60, "{tried} bad approvals tried");
    let after = footprint(&svc, &integration.user_prefix).await;
    // Records of requests refused after they were recorded are `failed`, never active; a refused
    // request leaves no role, no secret, no schedule and no policy.
    assert_eq!((after.0, after.1, after.3, after.4, after.5), (before.0, before.1, before.3, before.4, before.5), "footprint changed");
    for g in svc.store.all_grants().await.unwrap() {
        assert_ne!(g.status, pgjit::aws::store::GrantStatus::Active);
    }
}

#[test]
fn malformed_integrations_are_refused_with_the_field_named() {
    let good = json!({"name": "x", "kind": "postgres", "host": "db", "admin": {"auth": "password", "secret_id": "pgjit/a"}, "max_duration_seconds": 60, "ca_bundle": "system"});
    pgjit::contract::integration::Integration::from_json(&good.to_string()).expect("the good one is good");
    let cases: Vec<(&str, Value, &str)> = vec![
        ("name", json!(""), "name"),
        ("name", json!("a".repeat(65)), "name"),
        ("name", json!("x; DROP"), "name"),
        ("kind", json!("oracle"), "kind"),
        ("host", json!(""), "host"),
        ("host", json!("db host"), "host"),
        ("port", json!(-1), "port"),
        ("port", json!(0), "port"),
        ("database", json!("d".repeat(64)), "database"),
        ("admin", json!({"auth": "password"}), "admin.secret_id"),
        ("admin", json!("secret"), "admin"),
        ("ssl_mode", json!("strict"), "ssl_mode"),
        ("ca_bundle", json!(""), "ca_bundle"),
        // verify-full (the default) with no roots named: never the public roots by default.
        ("ca_bundle", json!(null), "ca_bundle"),
        ("access_mode", json!("iam"), "access_mode"),
        ("access_mode", json!("token"), "access_mode"),
        ("max_duration_seconds", json!(0), "max_duration_seconds"),
        ("max_duration_seconds", json!(99_999_999), "max_duration_seconds"),
        ("user_cleanup_after_days", json!(-1), "user_cleanup_after_days"),
        ("credential_rotation_days", json!(0), "credential_rotation_days"),
        ("user_prefix", json!("Pg"), "user_prefix"),
        ("user_prefix", json!("a\"b"), "user_prefix"),
        ("grantable_roles", json!(["ok", "x".repeat(64)]), "grantable_roles[1]"),
        ("grantable_roles", json!("reporting"), "grantable_roles"),
        ("instance_id", json!("db-1"), "instance_id"),
        ("cluster_id", json!("c-1"), "cluster_id"),
        ("region", json!("EU WEST"), "region"),
        ("resource_owner_tag", json!("team"), "resource_owner_tag"),
        ("surprise", json!(true), "surprise"),
    ];
    for (field, value, named) in cases {
        let mut doc = good.clone();
        doc[field] = value;
        let err = pgjit::contract::integration::Integration::from_json(&doc.to_string()).expect_err(field);
        assert_eq!(err.field, named, "{field}: {err}");
    }
    for missing in ["name", "kind", "admin", "max_duration_seconds"] {
        let mut doc = good.clone();
        doc.as_object_mut().unwrap().remove(missing);
        assert_eq!(pgjit::contract::integration::Integration::from_json(&doc.to_string()).unwrap_err().field, missing);
    }
    assert!(pgjit::contract::integration::Integration::from_json("{").is_err());
}
