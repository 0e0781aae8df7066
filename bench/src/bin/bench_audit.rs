//! Session audit throughput: parsing and attributing a 1 MB (decompressed) CloudWatch Logs
//! subscription batch, against the floor of decoding it (base64, gzip, JSON) and splitting its
//! messages into lines, in one run. Target (#12): at least half the floor's throughput.
//!
//! Usage: bench-audit [RUNS]   (no database or AWS: the grant lookups are a prepared map, as the
//! function holds them after its one lookup per user and batch)

use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use base64::Engine;
use pgjit::contract::integration::Integration;
use pgjit::audit::server_log::Records;
use serde_json::json;

/// About 1 MB of RDS-format log text: sessions of managed users (connections, pgaudit lines
/// with relation lines, statements over several lines, quotes and commas, disconnections)
/// between lines of other users and background processes. One statement in `secret_every`
/// carries a secret to redact (a dblink connection string, or a role's new password).
fn log_lines(secret_every: u32) -> (Vec<String>, usize) {
    let mut lines = Vec::new();
    let mut bytes = 0;
    let mut session = 0u32;
    let mut statement = 0u32;
    while bytes < 1_000_000 {
        session += 1;
        let user = format!("pgjit_user{}_1a2b3c4d", session % 7);
        let pid = 10_000 + session;
        let p = |t: &str| format!("2026-11-25 08:{:02}:{:02} UTC:10.0.{}.{}({}):{user}@app:[{pid}]:{t}", session % 60, session % 60, session % 250, session % 200, 40_000 + session);
        lines.push(p("LOG:  connection authorized: user=x database=app application_name=psql SSL enabled (protocol=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384, bits=256)"));
        for s in 1..=20u32 {
            statement += 1;
            if statement % secret_every == 0 {
                if statement % 2 == 0 {
                    lines.push(p(&format!("LOG:  AUDIT: SESSION,{s},1,READ,SELECT,,,\"SELECT dblink_connect('host=db{s} user=bob password=hunter{s} dbname=x')\",<not logged>")));
                } else {
                    lines.push(p(&format!("LOG:  AUDIT: SESSION,{s},1,ROLE,ALTER ROLE,,,ALTER ROLE {user} PASSWORD <REDACTED>,<not logged>")));
                }
            } else {
                match s % 5 {
                    0 => {
                        for table in ["sales.orders", "sales.customers"] {
                            lines.push(p(&format!("LOG:  AUDIT: SESSION,{s},1,READ,SELECT,TABLE,{table},\"SELECT o.customer, o.total, c.name")));
                            lines.push("\tFROM sales.orders o".into());
                            lines.push("\tJOIN sales.customers c ON c.name = o.customer".into());
                            lines.push("\tWHERE o.total > 100 AND c.name <> 'x, \"\"y\"\"'\",<not logged>".into());
                        }
                    }
                    1 => lines.push(p(&format!("LOG:  AUDIT: SESSION,{s},1,WRITE,INSERT,TABLE,sales.orders,\"INSERT INTO sales.orders (customer, total) VALUES ('acme, inc', {s})\",<not logged>"))),
                    2 => lines.push(p(&format!("LOG:  AUDIT: SESSION,{s},1,WRITE,UPDATE,TABLE,sales.orders,UPDATE sales.orders SET total = total + 1 WHERE id = {s},<not logged>"))),
                    3 => lines.push(p(&format!("LOG:  AUDIT: SESSION,{s},1,READ,SELECT,TABLE,sales.orders,SELECT id FROM sales.orders WHERE customer = 'acme' AND total > {s},<not logged>"))),
                    _ => lines.push(p(&format!("LOG:  AUDIT: SESSION,{s},1,DDL,CREATE TABLE,TABLE,sales.scratch_{s},CREATE TABLE sales.scratch_{s} (id int),<not logged>"))),
                }
            }
            lines.push(format!("2026-11-25 08:00:00 UTC:10.1.1.1(5000):app_service@app:[{}]:LOG:  duration: 0.{s} ms", 20_000 + s));
        }
        lines.push(p("LOG:  disconnection: session time: 0:00:01.234 user=x database=app host=10.0.0.1 port=40000"));
        lines.push("2026-11-25 08:00:00 UTC::@:[99]:LOG:  checkpoint complete: wrote 12 buffers (0.1%)".into());
        bytes = lines.iter().map(|l| l.len() + 1).sum();
    }
    (lines, bytes)
}

fn payload(lines: &[String]) -> serde_json::Value {
    let events: Vec<_> = lines.iter().enumerate().map(|(i, m)| json!({"id": format!("{i:056}"), "timestamp": 1_764_057_600_000i64 + i as i64, "message": m})).collect();
    let data = json!({"messageType": "DATA_MESSAGE", "owner": "123456789012", "logGroup": "/aws/rds/instance/orders/postgresql", "logStream": "orders.0",
        "subscriptionFilters": ["pgjit"], "logEvents": events});
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data.to_string().as_bytes()).unwrap();
    json!({"awslogs": {"data": base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())}})
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(30);
    // A typical mix (one statement in 50 carries a secret) and a secret-heavy one (one in 3).
    let typical = measure(runs, 50);
    let heavy = measure(runs, 3);
    println!("  target: pgjit at least half the floor's throughput on the typical mix: {}", if typical >= 0.5 { "met" } else { "NOT met" });
    let _ = heavy;
}

/// Runs the floor and pgjit's path alternately on one batch; prints and returns the ratio.
fn measure(runs: usize, secret_every: u32) -> f64 {
    let (lines, bytes) = log_lines(secret_every);
    let payload = payload(&lines);
    let integration = Integration::from_json(
        r#"{"name":"orders","kind":"rds","region":"us-east-1","instance_id":"orders","admin":{"auth":"password","secret_id":"pgjit/a"},"max_duration_seconds":3600,"enable_audit":true}"#,
    )
    .unwrap();
    let requests: HashMap<String, String> = (0..7).map(|i| (format!("pgjit_user{i}_1a2b3c4d"), format!("REQ-{i}"))).collect();
    let prefix = integration.line_prefix().unwrap();
    let (mut floor, mut full) = (Vec::new(), Vec::new());
    let mut checks = (0, 0);
    for _ in 0..runs {
        // Floor: decode the delivery and split every message into lines.
        let t = Instant::now();
        let batch = pgjit::control::sessions::decode_subscription(&payload).unwrap();
        let split: usize = batch.log_events.iter().map(|e| e.message.split('\n').count()).sum();
        floor.push(t.elapsed().as_secs_f64());
        assert_eq!(split, lines.len());
        // pgjit, as the audit function does it: decode, join lines into records by
        // log_line_prefix (keeping the managed users'), parse pgaudit's CSV, redact, attribute,
        // and build the entries.
        let t = Instant::now();
        let batch = pgjit::control::sessions::decode_subscription(&payload).unwrap();
        let mut records = Records::of_users_with_prefix(&prefix, &integration.user_prefix);
        for event in &batch.log_events {
            records.push_event(&event.id, None, &event.message);
        }
        let unparsed = records.unparsed;
        let (entries, ingested) = pgjit::control::sessions::attribution::attribute(records.records, &integration, &requests, pgjit::control::sessions::attribution::Retention { now: chrono::Utc::now(), keep: chrono::Duration::zero() });
        full.push(t.elapsed().as_secs_f64());
        checks = (entries.len(), ingested.statements);
        assert_eq!(unparsed, 0);
        assert!(entries.iter().all(|e| !e.statement.as_deref().unwrap_or("").contains("password=hunter")), "redacted");
    }
    let (f, p) = (median(floor), median(full));
    let mb = bytes as f64 / 1e6;
    println!(
        "session audit batch, one statement in {secret_every} with a secret: {:.2} MB of log text, {} lines, {} entries ({} statements), {runs} runs",
        mb,
        lines.len(),
        checks.0,
        checks.1
    );
    println!("  floor (decode + split into lines): median {:.2} ms, {:.0} MB/s", f * 1e3, mb / f);
    println!("  pgjit (decode + parse + redact + attribute): median {:.2} ms, {:.0} MB/s", p * 1e3, mb / p);
    println!("  throughput ratio pgjit/floor: {:.2}", f / p);
    f / p
}
