//! Session audit end to end: a grant on an audited integration, the temporary user's real
//! sessions on the local server (pgaudit loaded, RDS's log_line_prefix), the server's own log
//! lines delivered as CloudWatch Logs subscription batches to the audit handler and to the
//! `audit` binary under a Runtime API, and what `pgjit sessions` shows.

use std::io::Write;
use std::process::Command;

use base64::Engine;
use lambda_runtime::{Context, LambdaEvent};
use pgjit::aws::Services;
use pgjit::aws::store::sessions::SessionEntry;
use pgjit::engine::roles::grant::SessionAudit;
use pgjit::SecretString;
use pgjit_tests::{approval, env, isolated_services, register_integration};
use serde_json::{json, Value};

fn require_pgaudit() {
    assert!(env().pgaudit, "the local TLS server does not load pgaudit: scripts/localenv.sh installs postgresql-15-pgaudit and loads it on PostgreSQL 15");
}

async fn grant(svc: &Services, event: Value) -> Result<pgjit::control::grants::GrantResult, String> {
    pgjit::control::handlers::grant(svc, LambdaEvent::new(pgjit_tests::signed(svc, event).await, Context::default())).await.map_err(|e| e.to_string())
}

async fn audit(svc: &Services, payload: Value) -> Result<pgjit::control::sessions::attribution::Ingested, String> {
    pgjit::control::handlers::audit(svc, LambdaEvent::new(payload, Context::default())).await.map_err(|e| e.to_string())
}

async fn password_of(svc: &Services, arn: &str) -> SecretString {
    let text = pgjit::aws::credentials::read(svc, arn).await.expect("credentials secret");
    let v: Value = serde_json::from_str(text.expose()).unwrap();
    SecretString::new(v["password"].as_str().unwrap())
}

fn log_len() -> usize {
    std::fs::metadata(&env().log_file).map(|m| m.len() as usize).unwrap_or(0)
}

/// The server log from byte `from` on, once it shows `needle` (the server writes asynchronously).
async fn log_since(from: usize, needle: &str) -> String {
    for _ in 0..100 {
        let bytes = std::fs::read(&env().log_file).expect("server log");
        let text = String::from_utf8_lossy(&bytes[from.min(bytes.len())..]).into_owned();
        if text.contains(needle) {
            return text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the server log never showed {needle:?}");
}

/// A CloudWatch Logs subscription delivery as Lambda receives it: one log event per line (so a
/// statement over several lines spans several events), gzip, base64.
fn subscription(log_group: &str, log: &str) -> Value {
    let events: Vec<Value> = log
        .lines()
        .enumerate()
        .map(|(i, line)| json!({"id": format!("3712{i:020}"), "timestamp": chrono::Utc::now().timestamp_millis(), "message": line}))
        .collect();
    let data = json!({"messageType": "DATA_MESSAGE", "owner": "123456789012", "logGroup": log_group, "logStream": "db.0",
        "subscriptionFilters": ["pgjit-audit"], "logEvents": events});
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data.to_string().as_bytes()).unwrap();
    json!({"awslogs": {"data": base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())}})
}

/// Runs a function binary under a minimal Lambda Runtime API that serves `events` in turn;
/// returns what it posted for each (`response` or `error`, and the body), and everything it
/// wrote (its CloudWatch log).
async fn run_under_runtime_api(binary: &str, envs: &[(String, String)], events: Vec<Value>) -> (Vec<(String, Value)>, String) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut child = tokio::process::Command::new(binary)
        .env_clear()
        .envs(envs.iter().cloned())
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
        .env("AWS_LAMBDA_FUNCTION_NAME", "audit")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "test")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the audit binary");
    let total = events.len();
    // Each connection is served on its own task: the runtime's client may open a second one
    // (to post a response) while the first is still open, and a server that reads one
    // connection at a time would wait on the first forever.
    let pending = std::sync::Arc::new(std::sync::Mutex::new(events.into_iter().enumerate()));
    let results = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = std::sync::Arc::new(tokio::sync::Notify::new());
    let accept = {
        let (pending, results, done) = (pending.clone(), results.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (pending, results, done) = (pending.clone(), results.clone(), done.clone());
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    // One connection carries many requests (keep-alive).
                    loop {
                        let mut request_line = String::new();
                        if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut length = 0usize;
                        loop {
                            let mut header = String::new();
                            if stream.read_line(&mut header).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if header.trim().is_empty() {
                                break;
                            }
                            if let Some((name, value)) = header.split_once(':') {
                                if name.eq_ignore_ascii_case("content-length") {
                                    length = value.trim().parse().unwrap_or(0);
                                }
                            }
                        }
                        let mut body = vec![0; length];
                        if stream.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
                        if path.ends_with("/invocation/next") {
                            let next = pending.lock().unwrap().next();
                            let Some((i, event)) = next else {
                                // Nothing more to serve: hold the function until it is killed.
                                futures_util::future::pending::<()>().await;
                                unreachable!()
                            };
                            let body = event.to_string();
                            let deadline = chrono::Utc::now().timestamp_millis() + 60_000;
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: req-{i}\r\nLambda-Runtime-Deadline-Ms: {deadline}\r\n\
                                 Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:123456789012:function:audit\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            );
                            if stream.get_mut().write_all(head.as_bytes()).await.is_err() || stream.get_mut().write_all(body.as_bytes()).await.is_err() {
                                return;
                            }
                        } else {
                            let kind = if path.ends_with("/error") { "error" } else { "response" };
                            let count = {
                                let mut results = results.lock().unwrap();
                                results.push((kind.to_owned(), serde_json::from_slice(&body).unwrap_or(Value::Null)));
                                results.len()
                            };
                            let _ = stream.get_mut().write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n").await;
                            if count == total {
                                done.notify_one();
                            }
                        }
                    }
                });
            }
        })
    };
    if total > 0 {
        tokio::time::timeout(std::time::Duration::from_secs(120), done.notified()).await.expect("the audit binary answered every event");
    }
    accept.abort();
    let results: Vec<(String, Value)> = std::mem::take(&mut *results.lock().unwrap());
    let _ = child.start_kill();
    let output = child.wait_with_output().await.expect("the audit binary's output");
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (results, log)
}

/// The variables that point a process at moto and at this test's tables.
fn moto_vars(svc: &Services) -> Vec<(String, String)> {
    let c = &svc.config;
    [
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("AWS_ENDPOINT_URL", env().moto_url.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("PGJIT_GRANTS_TABLE", c.grants_table.clone()),
        ("PGJIT_INTEGRATIONS_TABLE", c.integrations_table.clone()),
        ("PGJIT_INVENTORY_TABLE", c.inventory_table.clone()),
        ("PGJIT_AUDIT_TABLE", c.audit_table.clone()),
        ("PGJIT_SESSIONS_TABLE", c.sessions_table.clone()),
        ("PGJIT_SCHEDULE_GROUP", c.schedule_group.clone()),
        ("PGJIT_SECRET_PREFIX", c.secret_prefix.clone()),
        ("PGJIT_CREDENTIALS_PREFIX", c.credentials_prefix.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn cli(svc: &Services, args: &[&str]) -> std::process::Output {
    Command::new(&env().cli).args(args).env_clear().envs(moto_vars(svc)).stdin(std::process::Stdio::null()).output().expect("run pgjit")
}

#[tokio::test]
async fn every_statement_of_a_temporary_user_is_kept_once_attributed_and_redacted() {
    require_pgaudit();
    let svc = isolated_services().await;
    let id: u32 = rand::random();
    let instance = format!("audited-{id}");
    pgjit_tests::moto_rds_instance(&svc, &instance).await;
    // Kept a day after revoke (NOLOGIN), so a later login attempt is refused as such.
    let integration = register_integration(&svc, &format!("audited-{id}"), json!({"kind": "rds", "instance_id": instance, "region": "us-east-1", "enable_audit": true, "user_cleanup_after_days": 1})).await;
    let request_id = format!("REQ-AUDIT-{id}");
    let access = json!([
        {"database": "app", "schema": "sales", "table": "orders", "privileges": ["SELECT"]},
        {"database": "app", "schema": "sales", "table": "customers", "privileges": ["SELECT"]},
        {"database": "app", "privileges": ["TEMPORARY"]}
    ]);
    let granted = grant(&svc, approval(&request_id, &integration.name, "john@corp.com", access)).await.expect("granted");
    let record = svc.store.get_grant(&request_id).await.unwrap().unwrap();
    assert_eq!(record.session_audit, Some(SessionAudit::On { classes: "read, write, ddl, role, function, misc".into() }));
    let password = password_of(&svc, granted.secret_arn.as_deref().unwrap()).await;

    // What the requester does: reads, a statement over several lines, DDL, a write with quotes
    // and commas (to a table of its own: the shared tables stay as the other tests expect), a
    // new password of its own; and an attempt to switch its audit off.
    let from = log_len();
    let new_password = format!("new-Secret-{id}");
    let conninfo_secret = format!("hunter-{id}");
    let user = env().login_as(&granted.db_user, &password, "app").await.expect("the temporary user logs in");
    user.batch_execute("SELECT customer, total FROM sales.orders WHERE total > 0").await.unwrap();
    user.batch_execute("SELECT customer,\n       total\n  FROM sales.orders\n WHERE customer = 'acme'").await.unwrap();
    user.batch_execute(&format!("CREATE TEMP TABLE scratch_{id} (id int, note text)")).await.unwrap();
    user.batch_execute(&format!("INSERT INTO scratch_{id} (id, note) VALUES (1, 'audit, \"quoted\" co')")).await.unwrap();
    user.batch_execute("SELECT o.total, c.name FROM sales.orders o JOIN sales.customers c ON c.name = o.customer").await.unwrap();
    user.batch_execute(&format!("SELECT 'host=db1 user=bob password={conninfo_secret}' AS conninfo")).await.unwrap();
    user.batch_execute(&format!("ALTER ROLE {} PASSWORD '{new_password}'", granted.db_user)).await.unwrap();
    for off in ["SET pgaudit.log = 'none'", &format!("ALTER ROLE {} SET pgaudit.log = 'none'", granted.db_user)] {
        let e = user.batch_execute(off).await.expect_err("the user cannot switch its audit off");
        assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{off}: {e}");
    }
    user.batch_execute("SELECT 'still audited'").await.unwrap();
    drop(user);
    let log = log_since(from, &format!("user={} database=app host=", granted.db_user)).await;
    // A line of a user with the integration's prefix but no grant, and one of another user.
    let stray = format!(
        "2026-11-25 08:00:00 UTC:10.0.0.9(5555):{}nobody_abcd1234@app:[1]:LOG:  AUDIT: SESSION,1,1,READ,SELECT,,,SELECT 1,<not logged>\n\
         2026-11-25 08:00:00 UTC:10.0.0.9(5556):app_owner@app:[2]:LOG:  AUDIT: SESSION,1,1,READ,SELECT,,,SELECT 2,<not logged>\n",
        integration.user_prefix
    );
    let batch = subscription(&format!("/aws/rds/instance/{instance}/postgresql"), &format!("{log}{stray}"));
    let delivered_log = log.clone();

    let first = audit(&svc, batch.clone()).await.expect("the batch is ingested");
    assert_eq!(first.integration.as_deref(), Some(integration.name.as_str()));
    assert_eq!(first.unattributed, 1, "the prefixed user without a grant: {first:?}");
    let entries = svc.store.session_entries(&request_id).await.unwrap();
    let statements: Vec<&SessionEntry> = entries.iter().filter(|e| e.kind == pgjit::aws::store::sessions::EntryKind::Statement).collect();
    assert_eq!(first.statements, statements.len());
    let shown = |e: &SessionEntry| format!("{} {} {}", e.class.as_deref().unwrap_or(""), e.command.as_deref().unwrap_or(""), e.statement.as_deref().unwrap_or(""));
    let texts: Vec<String> = statements.iter().map(|e| shown(e)).collect();
    let position = |needle: &str| texts.iter().position(|t| t.contains(needle)).unwrap_or_else(|| panic!("{needle:?} not in {texts:#?}"));
    // In the order they ran, each with its class and command.
    let order = [
        position("READ SELECT SELECT customer, total FROM sales.orders WHERE total > 0"),
        position("READ SELECT SELECT customer,\n       total\n  FROM sales.orders\n WHERE customer = 'acme'"),
        position(&format!("DDL CREATE TABLE CREATE TEMP TABLE scratch_{id}")),
        position(&format!("WRITE INSERT INSERT INTO scratch_{id} (id, note) VALUES (1, 'audit, \"quoted\" co')")),
        position("READ SELECT SELECT o.total, c.name FROM sales.orders o JOIN sales.customers c"),
        position("READ SELECT SELECT 'host=db1 user=bob password=[redacted]' AS conninfo"),
        position("ROLE ALTER ROLE"),
        position("SELECT 'still audited'"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {order:?} in {texts:#?}");
    assert!(entries.windows(2).all(|w| w[0].at <= w[1].at), "time order");
    let insert = statements[order[3]];
    assert_eq!((insert.request_id.as_str(), insert.database.as_deref(), insert.db_user.as_str()), (request_id.as_str(), Some("app"), granted.db_user.as_str()));
    assert_eq!(insert.object_type.as_deref(), Some("TABLE"));
    assert!(insert.object.as_deref().is_some_and(|o| o.ends_with(&format!(".scratch_{id}"))), "{:?}", insert.object);
    // A statement over two tables is one entry naming both (pgaudit writes a line for each).
    let join = statements[order[4]];
    let mut objects: Vec<&str> = join.object.as_deref().unwrap_or("").split(", ").collect();
    objects.sort();
    assert_eq!(objects, ["sales.customers", "sales.orders"]);
    assert!(insert.client.as_deref().is_some_and(|c| c.starts_with("127.0.0.1(")), "{:?}", insert.client);
    assert!(insert.expires_at > chrono::Utc::now().timestamp() + 364 * 86_400, "kept for the retention");
    // Its session: connected, then the statements, then disconnected.
    let sessions = pgjit::control::sessions::view::sessions_of(&entries);
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    assert!(sessions[0].connected_at.is_some() && sessions[0].disconnected_at.is_some());
    assert_eq!(sessions[0].statements.len(), statements.len());
    // No secret anywhere in what was stored.
    let stored = serde_json::to_string(&entries).unwrap();
    for secret in [password.expose(), new_password.as_str(), conninfo_secret.as_str()] {
        assert!(!stored.contains(secret), "a secret was stored");
    }

    // Delivered again (CloudWatch Logs delivers at least once): nothing is written twice.
    let again = audit(&svc, batch.clone()).await.expect("the same batch again");
    assert_eq!(again.written, first.written);
    assert_eq!(svc.store.session_entries(&request_id).await.unwrap(), entries, "the same entries, once");

    // The `audit` binary, as Lambda runs it: the same batch twice, and a malformed one.
    let (answers, function_log) = run_under_runtime_api(&env().audit_bin, &moto_vars(&svc), vec![batch.clone(), batch.clone(), json!({"awslogs": {"data": "not base64!"}})]).await;
    assert_eq!(answers[0].0, "response", "{answers:?}");
    assert_eq!(answers[0].1["statements"], json!(first.statements));
    assert_eq!(answers[1].1["written"], json!(first.written));
    assert_eq!(answers[2].0, "error");
    assert!(answers[2].1["errorMessage"].as_str().unwrap_or("").contains("not base64"), "{:?}", answers[2].1);
    assert_eq!(svc.store.session_entries(&request_id).await.unwrap(), entries, "still the same entries, once");
    assert!(function_log.contains("invocation summary"), "the function logged: {function_log}");
    // Its metrics, as CloudWatch's embedded metric format.
    assert!(function_log.contains("\"AuditedStatements\"") && function_log.contains("\"UnattributedAuditLines\""), "EMF metrics: {function_log}");
    assert!(function_log.contains("\"AuditLinesNotRead\""), "the alarmed metric of lines not read in full: {function_log}");
    for secret in [password.expose(), new_password.as_str(), conninfo_secret.as_str()] {
        assert!(!function_log.contains(secret), "a secret in the function's log");
    }

    // A malformed batch through the handler: a clear error, nothing written.
    let e = audit(&svc, json!({"awslogs": {"data": base64::engine::general_purpose::STANDARD.encode(b"not gzip")}})).await.unwrap_err();
    assert!(e.contains("not a CloudWatch Logs subscription batch") && e.contains("gzip"), "{e}");
    assert_eq!(svc.store.session_entries(&request_id).await.unwrap(), entries);

    // What an auditor reads: the grant, the session, each statement; no secret.
    let out = cli(&svc, &["sessions", &request_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [request_id.as_str(), "john@corp.com", "approved by jane@corp.com: INC-42 stuck orders", "session audit: read, write", "from 127.0.0.1(", "WRITE INSERT", "DDL CREATE TABLE", "password=[redacted]"] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    for secret in [password.expose(), new_password.as_str(), conninfo_secret.as_str()] {
        assert!(!text.contains(secret), "a secret in the CLI output");
    }
    let out = cli(&svc, &["sessions", &request_id, "--json"]);
    let shown: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(shown["grant"]["request_id"], json!(request_id));
    assert_eq!(shown["sessions"][0]["statements"].as_array().map(Vec::len), Some(statements.len()));
    let out = cli(&svc, &["audit", "--integration", &integration.name]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("{} audited statements", statements.len())), "{text}");

    // A self-hosted server's log file, read with the same parser: written once however often.
    let file = std::env::temp_dir().join(format!("pgjit-audit-{id}.log"));
    std::fs::write(&file, &log).unwrap();
    let self_hosted = register_integration(&svc, &format!("selfhosted-{id}"), json!({"enable_audit": true, "user_prefix": integration.user_prefix})).await;
    // (the same user's lines, tied to a grant of another integration: not this one's)
    let out = cli(&svc, &["sessions", "ingest", "--integration", &self_hosted.name, file.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ingested: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ingested["written"], json!(0), "lines of another integration's grant are not this integration's: {ingested}");
    assert!(ingested["unattributed"].as_u64().unwrap() > 0);
    let out = cli(&svc, &["sessions", "ingest", "--integration", &integration.name, file.to_str().unwrap(), "--json"]);
    let ingested: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ingested["statements"], json!(statements.len()), "{ingested}");
    let out = cli(&svc, &["sessions", "ingest", "--integration", &integration.name, file.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let after = svc.store.session_entries(&request_id).await.unwrap();
    assert_eq!(after.iter().filter(|e| e.kind == pgjit::aws::store::sessions::EntryKind::Statement).count(), 2 * statements.len(), "the file's entries once, beside the subscription's");
    let _ = std::fs::remove_file(&file);

    // After revoke, a login attempt shows in its session as refused.
    pgjit::control::grants::revoke::revoke(&svc, &request_id, pgjit::contract::events::RevokeTrigger::Early, chrono::Utc::now()).await.expect("revoked");
    let from = log_len();
    // (with the password the user gave itself during the grant)
    assert!(env().login_as(&granted.db_user, &SecretString::new(new_password.clone()), "app").await.is_err(), "no login after revoke");
    let log = log_since(from, "is not permitted to log in").await;
    audit(&svc, subscription(&format!("/aws/rds/instance/{instance}/postgresql"), &log)).await.unwrap();
    let after = svc.store.session_entries(&request_id).await.unwrap();
    let sessions = pgjit::control::sessions::view::sessions_of(&after);
    let refused = sessions.iter().find(|s| s.details.iter().any(|d| d.contains("is not permitted to log in"))).expect("the refused login is recorded");
    assert!(refused.disconnected_at.is_some() && refused.statements.is_empty(), "{refused:?}");

    // A forged delivery (whoever may invoke the audit function sends one): the same log event
    // ids, with a statement rewritten. What was written stays as it was; a forgery can only add
    // beside it, never replace it.
    let before = svc.store.session_entries(&request_id).await.unwrap();
    let forged_log = delivered_log.replace("WHERE total > 0", "WHERE total > 1000000");
    assert_ne!(forged_log, delivered_log);
    audit(&svc, subscription(&format!("/aws/rds/instance/{instance}/postgresql"), &forged_log)).await.expect("the forged batch");
    let after = svc.store.session_entries(&request_id).await.unwrap();
    for entry in &before {
        assert!(after.contains(entry), "kept as written: {entry:?}");
    }
    assert!(after.iter().any(|e| e.statement.as_deref().is_some_and(|t| t.contains("WHERE total > 1000000"))), "the forgery sits beside it");
    assert!(after.iter().any(|e| e.statement.as_deref().is_some_and(|t| t.contains("WHERE total > 0"))), "the real statement is still there");
}

#[tokio::test]
async fn a_server_that_cannot_audit_refuses_the_grant_unless_audit_is_optional() {
    let svc = isolated_services().await;
    let id: u32 = rand::random();
    let e = env();
    // The plain server does not load pgaudit.
    let plain = json!({"port": e.plain_port, "ssl_mode": "disable", "ca_bundle": null, "enable_audit": true});
    let required = register_integration(&svc, &format!("noaudit-{id}"), plain.clone()).await;
    let request_id = format!("REQ-NOAUDIT-{id}");
    let refused = grant(&svc, approval(&request_id, &required.name, "john@corp.com", pgjit_tests::orders_access())).await.unwrap_err();
    assert!(refused.contains("session audit is required") && refused.contains("pgaudit is not loaded") && refused.contains("shared_preload_libraries"), "{refused}");
    let record = svc.store.get_grant(&request_id).await.unwrap().unwrap();
    assert_eq!(record.status, pgjit::aws::store::GrantStatus::Failed);
    let su = e.superuser_plain("postgres").await;
    assert!(!pgjit_tests::role_exists(&su, &record.db_user).await, "nothing was created");

    let mut optional_doc = plain;
    optional_doc["audit_required"] = json!(false);
    let optional = register_integration(&svc, &format!("optionalaudit-{id}"), optional_doc).await;
    let request_id = format!("REQ-OPTAUDIT-{id}");
    grant(&svc, approval(&request_id, &optional.name, "john@corp.com", pgjit_tests::orders_access())).await.expect("granted without audit");
    let record = svc.store.get_grant(&request_id).await.unwrap().unwrap();
    match &record.session_audit {
        Some(SessionAudit::Off { reason }) => assert!(reason.contains("pgaudit is not loaded"), "{reason}"),
        other => panic!("the record says audit is off: {other:?}"),
    }
    let _ = pgjit::control::grants::revoke::revoke(&svc, &request_id, pgjit::contract::events::RevokeTrigger::Early, chrono::Utc::now()).await;

    // doctor names what is missing, and what is in place on the server that audits.
    let target = pgjit::control::endpoint::resolve(&svc, &required).await.unwrap();
    let findings = pgjit::engine::doctor::doctor(&target.connector, &required.doctor_scope(), &["postgres".into()]).await.unwrap();
    let audit: Vec<_> = findings.iter().filter(|f| f.capability == "session audit").collect();
    assert!(audit.iter().any(|f| !f.ok && !f.warning && f.detail.contains("pgaudit is not loaded")), "{audit:?}");
    if e.pgaudit {
        let audited = register_integration(&svc, &format!("doctor-audit-{id}"), json!({"enable_audit": true})).await;
        let target = pgjit::control::endpoint::resolve(&svc, &audited).await.unwrap();
        let findings = pgjit::engine::doctor::doctor(&target.connector, &audited.doctor_scope(), &["postgres".into()]).await.unwrap();
        let audit: Vec<_> = findings.iter().filter(|f| f.capability == "session audit").collect();
        assert!(audit.iter().any(|f| f.ok), "{audit:?}");
        assert!(audit.iter().any(|f| f.warning && f.detail.contains("CREATE EXTENSION pgaudit")), "{audit:?}");
    }
}

#[tokio::test]
async fn doctor_says_whether_an_rds_instance_exports_its_postgresql_log() {
    let svc = isolated_services().await;
    let id: u32 = rand::random();
    let instance = format!("exports-{id}");
    pgjit_tests::moto_rds_instance(&svc, &instance).await;
    let integration = register_integration(&svc, &format!("exports-{id}"), json!({"kind": "rds", "instance_id": instance, "region": "us-east-1", "enable_audit": true})).await;
    let finding = pgjit::control::sessions::log_export_finding(&svc, &integration).await.expect("a finding for rds");
    assert!(!finding.ok && finding.detail.contains("EnableLogTypes postgresql") && finding.detail.contains(&format!("/aws/rds/instance/{instance}/postgresql")), "{finding:?}");
    svc.rds
        .modify_db_instance()
        .db_instance_identifier(&instance)
        .cloudwatch_logs_export_configuration(aws_sdk_rds::types::CloudwatchLogsExportConfiguration::builder().enable_log_types("postgresql").build())
        .send()
        .await
        .unwrap();
    let finding = pgjit::control::sessions::log_export_finding(&svc, &integration).await.unwrap();
    assert!(finding.ok, "{finding:?}");
}

/// What the log can carry that is not a whole, real record, through the audit handler:
/// - a session whose `connection authorized` came in an earlier delivery: its statements are
///   its own (not flagged);
/// - a record forged into the log by a startup packet whose database name holds a newline and a
///   whole line in the user's name (anyone who reaches the port can send one): kept, flagged,
///   never taken as the user's plain statement;
/// - a statement whose record is cut at the delivery's edge: its first part is kept, flagged,
///   with its class, command and object, and counted.
#[tokio::test]
async fn forged_and_cut_records_are_kept_flagged_never_trusted_or_dropped() {
    let svc = isolated_services().await;
    let id: u32 = rand::random();
    let instance = format!("forged-{id}");
    pgjit_tests::moto_rds_instance(&svc, &instance).await;
    let integration = register_integration(&svc, &format!("forged-{id}"), json!({"kind": "rds", "instance_id": instance, "region": "us-east-1", "enable_audit": true, "audit_required": false})).await;
    let request_id = format!("REQ-FORGED-{id}");
    let granted = grant(&svc, approval(&request_id, &integration.name, "john@corp.com", pgjit_tests::orders_access())).await.expect("granted");
    let user = &granted.db_user;
    let group = format!("/aws/rds/instance/{instance}/postgresql");
    let line = |pid: u32, rest: &str| format!("2026-12-01 08:00:00 UTC:10.0.0.1(5000):{user}@app:[{pid}]:{rest}");
    // Delivery 1: the session logs in.
    let first = line(42, &format!("LOG:  connection authorized: user={user} database=app SSL enabled"));
    audit(&svc, subscription(&group, &first)).await.expect("delivery 1");
    // Delivery 2: its statement; the forged startup packet's lines (the attacker's own failed
    // login, whose database name carried "\n<a whole record>\n"); and a statement cut at the end.
    let forged = [
        "2026-12-01 08:00:01 UTC:203.0.113.9(6000):postgres@x".to_owned(),
        line(999, "LOG:  AUDIT: SESSION,1,1,WRITE,DELETE,TABLE,public.pay,DELETE FROM pay,<not logged>"),
        "@app:[31337]:FATAL:  no pg_hba.conf entry for host".to_owned(),
    ]
    .join("\n");
    let second = [
        line(42, "LOG:  AUDIT: SESSION,1,1,READ,SELECT,TABLE,sales.orders,SELECT * FROM sales.orders,<not logged>"),
        forged,
        line(42, "LOG:  AUDIT: SESSION,2,1,WRITE,UPDATE,TABLE,sales.orders,\"UPDATE sales.orders SET total = 0"),
        "\tWHERE customer IN ('a',".to_owned(),
    ]
    .join("\n");
    let ingested = audit(&svc, subscription(&group, &second)).await.expect("delivery 2");
    assert_eq!(ingested.cut, 1, "{ingested:?}");
    let entries = svc.store.session_entries(&request_id).await.unwrap();
    let statement = |text: &str| entries.iter().find(|e| e.statement.as_deref().is_some_and(|s| s.starts_with(text))).unwrap_or_else(|| panic!("{text:?} in {entries:#?}"));
    assert_eq!(statement("SELECT * FROM sales.orders").suspect, None, "connected in the delivery before: its own statement");
    let forgery = statement("DELETE FROM pay");
    assert_eq!(forgery.suspect.as_deref(), Some(pgjit::control::sessions::attribution::NO_CONNECTION), "{forgery:?}");
    let cut = statement("UPDATE sales.orders SET total = 0");
    assert_eq!(cut.suspect.as_deref(), Some(pgjit::control::sessions::attribution::CUT));
    assert_eq!((cut.class.as_deref(), cut.command.as_deref(), cut.object.as_deref()), (Some("WRITE"), Some("UPDATE"), Some("sales.orders")));
    assert!(cut.statement.as_deref().unwrap().contains("WHERE customer IN ('a',"), "the part the delivery had: {cut:?}");
    // `pgjit sessions` shows the flags with the entries.
    let out = cli(&svc, &["sessions", &request_id]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("possibly forged") && text.contains("cut:"), "{text}");
    pgjit::control::grants::revoke::revoke(&svc, &request_id, pgjit::contract::events::RevokeTrigger::Early, chrono::Utc::now()).await.unwrap();
}
