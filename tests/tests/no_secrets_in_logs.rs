//! A full lifecycle at the most verbose log level (pgjit's, the AWS SDK's and tokio-postgres's),
//! then a search of everything written for any password or key that passed through.
//! Its own test binary: the log capture is process-wide.

use std::io::Write;
use std::sync::{Arc, Mutex};

use chrono::{Duration, Utc};
use lambda_runtime::{Context, LambdaEvent};
use pgjit::control::webhook::SecretCache;
use pgjit_tests::{env, isolated_services_with};
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_reaches_a_log_line_an_error_or_a_record() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the only subscriber in this test binary");

    let e = env();
    let hook_key = format!("hook-key-{}", rand::random::<u64>());
    let hook_id = format!("hook-{}", rand::random::<u32>());
    let id = hook_id.clone();
    let svc = isolated_services_with(move |n| (n == "PGJIT_WEBHOOK_SECRET_ID").then(|| id.clone())).await;
    svc.secrets.create_secret().name(&hook_id).secret_string(&hook_key).send().await.unwrap();
    let integration = pgjit_tests::register_integration(
        &svc,
        "logged",
        json!({"max_duration_seconds": 604800, "credential_rotation_days": 1, "user_cleanup_after_days": 1}),
    )
    .await;
    let admin_secret = match &integration.admin {
        pgjit::contract::integration::AdminAuth::Password { secret_id } => secret_id.clone(),
        other => panic!("{other:?}"),
    };

    let mut outputs = Vec::new();
    // Grant through the signed webhook.
    let body = json!({"request_id": "LOG-1", "integration": "logged", "requester": {"id": "log.user@corp.com"}, "approver": "jane@corp.com",
        "duration_seconds": 432000, "access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["SELECT"]}]})
    .to_string();
    let now = Utc::now().timestamp().to_string();
    let mut request: Value = serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../events/webhook-request.json")).unwrap()).unwrap();
    request["headers"]["x-pgjit-timestamp"] = json!(now);
    request["headers"]["x-pgjit-signature"] = json!(pgjit::control::webhook::sign(hook_key.as_bytes(), &now, body.as_bytes()));
    request["body"] = json!(body);
    let cache = SecretCache::default();
    let response = pgjit::control::handlers::webhook(&svc, &cache, LambdaEvent::new(serde_json::from_value(request.clone()).unwrap(), Context::default())).await.unwrap();
    assert_eq!(response.status_code, 202, "{:?}", response.body);
    outputs.push(response.body.unwrap_or_default());
    // The approval as the bus delivers it to the grant function.
    let event = json!({"version": "0", "id": "ev-log-1", "detail-type": "Access Request Approved", "source": "pgjit.approvals", "account": "123456789012",
        "time": Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(), "region": "us-east-1", "resources": [], "detail": serde_json::from_str::<Value>(&body).unwrap()});
    let granted = pgjit::control::handlers::grant(&svc, LambdaEvent::new(pgjit_tests::signed(&svc, event).await, Context::default())).await.unwrap();
    outputs.push(serde_json::to_string(&granted).unwrap());
    // A wrongly signed one, for the rejection path's logs.
    request["headers"]["x-pgjit-signature"] = json!(pgjit::control::webhook::sign(b"guess", &now, body.as_bytes()));
    let rejected = pgjit::control::handlers::webhook(&svc, &cache, LambdaEvent::new(serde_json::from_value(request).unwrap(), Context::default())).await.unwrap();
    outputs.push(rejected.body.unwrap_or_default());

    let record = svc.store.get_grant("LOG-1").await.unwrap().unwrap();
    let first = pgjit::aws::credentials::read(&svc, record.secret_arn.as_deref().unwrap()).await.unwrap();
    let first: Value = serde_json::from_str(first.expose()).unwrap();
    let first_password = first["password"].as_str().unwrap().to_owned();
    let login = pgjit::SecretString::new(first_password.clone());
    e.login_as(&record.db_user, &login, "app").await.unwrap().query("SELECT 1", &[]).await.unwrap();
    // A failing login is logged too; its error must not quote the password.
    let wrong = pgjit::SecretString::new(format!("{first_password}-wrong"));
    outputs.push(pgjit::engine::postgres::error_chain(&e.login_as(&record.db_user, &wrong, "app").await.unwrap_err()));

    // Rotation, then revoke, then the retention cleanup.
    let report = pgjit::control::cleanup::run(&svc, Utc::now() + Duration::days(1) + Duration::minutes(1)).await.unwrap();
    assert_eq!(report.rotated, ["LOG-1"]);
    let rotated = pgjit::aws::credentials::read(&svc, record.secret_arn.as_deref().unwrap()).await.unwrap();
    let rotated: Value = serde_json::from_str(rotated.expose()).unwrap();
    let rotated_password = rotated["password"].as_str().unwrap().to_owned();
    let revoked = pgjit::control::handlers::revoke(&svc, LambdaEvent::new(pgjit_tests::signed(&svc, pgjit_tests::early_revoke("LOG-1")).await, Context::default())).await.unwrap();
    outputs.push(serde_json::to_string(&revoked).unwrap());
    outputs.push(serde_json::to_string(&pgjit::control::cleanup::run(&svc, Utc::now() + Duration::days(3)).await.unwrap()).unwrap());
    // An error path with the admin's secret in play: a grant whose integration's admin secret is bad.
    svc.secrets.put_secret_value().secret_id(&admin_secret).secret_string(json!({"username": e.admin_user, "password": "nope-wrong"}).to_string()).send().await.unwrap();
    let failed = pgjit::control::grants::grant::grant(&svc, &pgjit::contract::events::parse_approval(serde_json::from_str(&body.replace("LOG-1", "LOG-2")).unwrap()).unwrap(), Utc::now()).await.unwrap_err();
    outputs.push(pgjit::engine::postgres::error_chain(&failed));

    // Everything DynamoDB holds about it.
    for g in svc.store.all_grants().await.unwrap() {
        outputs.push(serde_json::to_string(&g).unwrap());
        for a in svc.store.audit_of(&g.request_id).await.unwrap() {
            outputs.push(serde_json::to_string(&a).unwrap());
        }
    }

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(logs.lines().count() > 100, "the capture saw the run at trace level ({} lines)", logs.lines().count());
    assert!(logs.contains("LOG-1") && logs.contains(&record.db_user), "step lines name the request and the user");
    assert!(logs.contains("aws_smithy") && logs.contains("tokio_postgres"), "the SDK's and the driver's own trace lines were captured");
    // One summary line per invocation, saying what it did.
    for function in ["grant", "revoke"] {
        let line = logs.lines().find(|l| l.contains("invocation summary") && l.contains(&format!("function={function}")) || l.contains("invocation summary") && l.contains(&format!("\"function\":\"{function}\"")));
        let line = line.unwrap_or_else(|| panic!("no summary line for {function}"));
        assert!(line.contains("LOG-1") && line.contains("outcome"), "{line}");
    }
    let everything = format!("{logs}\n{}", outputs.join("\n"));
    for (what, secret) in [
        ("the requester's password", first_password.as_str()),
        ("the rotated password", rotated_password.as_str()),
        ("the admin's password", e.admin_password.expose()),
        ("the webhook key", hook_key.as_str()),
    ] {
        assert!(!everything.contains(secret), "{what} appears in the logs, an error or a record");
    }
}
