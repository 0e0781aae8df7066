//! The signed webhook through its handler, and every sample in `events/` parsed with the
//! project's own types (so a sample can never drift from the code).

use aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlRequest;
use chrono::{DateTime, Utc};
use lambda_runtime::{Context, LambdaEvent};
use pgjit::control::webhook::{sign, SecretCache};
use pgjit_tests::isolated_services_with;
use serde_json::{json, Value};

const EVENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../events");

fn sample(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{EVENTS}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_sample_event_parses_with_the_project_types() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(EVENTS).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let value = sample(&name);
        match name.as_str() {
            "approval.json" => {
                let a = pgjit::contract::events::parse_approval(value).unwrap();
                pgjit::access::AccessSet::from_entries(&a.access).unwrap();
            }
            "extension.json" => {
                assert!(pgjit::contract::events::is_extension(&value));
                let e = pgjit::contract::events::parse_extension(value).unwrap();
                assert_eq!((e.request_id.as_str(), e.duration_seconds), ("REQ-1001", 7200));
            }
            "revoke-early.json" => assert_eq!(pgjit::contract::events::parse_revoke(value).unwrap().trigger, pgjit::contract::events::RevokeTrigger::Early),
            "revoke-scheduled.json" => {
                let r = pgjit::contract::events::parse_revoke(value.clone()).unwrap();
                assert_eq!(r.trigger, pgjit::contract::events::RevokeTrigger::Scheduled);
                assert_eq!(value.to_string(), pgjit::aws::schedule::revoke_input(&r.request_id), "exactly what the schedule sends");
            }
            "cleanup.json" | "discovery.json" => {
                let e: aws_lambda_events::event::eventbridge::EventBridgeEvent<Value> = serde_json::from_value(value).unwrap();
                assert_eq!(e.detail_type, "Scheduled Event");
            }
            "webhook-request.json" => {
                let request: LambdaFunctionUrlRequest = serde_json::from_value(value).unwrap();
                let header = |n: &str| request.headers.get(n).and_then(|v| v.to_str().ok());
                let ts: i64 = header("x-pgjit-timestamp").unwrap().parse().unwrap();
                let body = request.body.as_deref().unwrap();
                // Signed with the documented sample secret at its own timestamp.
                pgjit::control::webhook::verify(b"sample-webhook-secret", header("x-pgjit-timestamp"), header("x-pgjit-signature"), body.as_bytes(), DateTime::from_timestamp(ts, 0).unwrap())
                    .unwrap();
                pgjit::contract::events::parse_approval(serde_json::from_str(body).unwrap()).unwrap();
            }
            other => panic!("events/{other} has no parser in this test: add one"),
        }
        seen.push(name);
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
}

fn request(body: &str, timestamp: Option<String>, signature: Option<String>) -> LambdaFunctionUrlRequest {
    let mut headers = json!({"content-type": "application/json"});
    if let Some(t) = timestamp {
        headers["x-pgjit-timestamp"] = json!(t);
    }
    if let Some(s) = signature {
        headers["x-pgjit-signature"] = json!(s);
    }
    // The sample request as the Function URL delivers it, with these headers and body.
    let mut request = sample("webhook-request.json");
    request["headers"] = headers;
    request["body"] = json!(body);
    serde_json::from_value(request).unwrap()
}

#[tokio::test]
async fn the_webhook_forwards_only_well_signed_approvals_to_the_approval_bus() {
    let secret_id = format!("webhook-{}", rand::random::<u32>());
    let bus = format!("approvals-{}", rand::random::<u32>());
    let (id, b) = (secret_id.clone(), bus.clone());
    let svc = isolated_services_with(move |n| match n {
        "PGJIT_WEBHOOK_SECRET_ID" => Some(id.clone()),
        "PGJIT_APPROVAL_BUS" => Some(b.clone()),
        _ => None,
    })
    .await;
    svc.events.create_event_bus().name(&bus).send().await.unwrap();
    let (sqs, queue) = pgjit_tests::queue_for(&svc, &bus, json!({"source": ["pgjit.approvals"], "detail-type": ["Access Request Approved", "Access Extension Approved"]})).await;
    svc.secrets.create_secret().name(&secret_id).secret_string("hook-key-123").send().await.unwrap();
    pgjit_tests::register_integration(&svc, "hooked", json!({"max_duration_seconds": 3600})).await;
    let cache = SecretCache::default();
    let call = |req: LambdaFunctionUrlRequest| {
        let (svc, cache) = (&svc, &cache);
        async move { pgjit::control::handlers::webhook(svc, cache, LambdaEvent::new(req, Context::default())).await.unwrap() }
    };
    let body = json!({"request_id": "HOOK-1", "integration": "hooked", "requester": {"id": "hook.user@corp.com"}, "approver": "jane@corp.com",
        "duration_seconds": 600, "access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["SELECT"]}]})
    .to_string();
    let now = Utc::now().timestamp().to_string();
    let good = sign(b"hook-key-123", &now, body.as_bytes());

    let rejected: Vec<(Option<String>, Option<String>, &str)> = vec![
        (None, Some(good.clone()), "missing X-Pgjit-Timestamp"),
        (Some(now.clone()), None, "missing X-Pgjit-Signature"),
        (Some(now.clone()), Some("sha1=abcd".into()), "malformed X-Pgjit-Signature"),
        (Some("tomorrow".into()), Some(good.clone()), "malformed X-Pgjit-Timestamp"),
        ((Utc::now().timestamp() - 301).to_string().into(), Some(sign(b"hook-key-123", &(Utc::now().timestamp() - 301).to_string(), body.as_bytes())), "window"),
        (Some(now.clone()), Some(sign(b"wrong-key", &now, body.as_bytes())), "does not match"),
    ];
    for (ts, sig, why) in rejected {
        let response = call(request(&body, ts, sig)).await;
        assert_eq!(response.status_code, 401, "{why}");
        assert!(response.body.as_deref().unwrap().contains(why), "{why}: {:?}", response.body);
        assert!(svc.store.get_grant("HOOK-1").await.unwrap().is_none(), "{why}: nothing changed");
    }
    // A body altered after signing.
    let tampered = body.replace("600", "3600");
    assert_eq!(call(request(&tampered, Some(now.clone()), Some(good.clone()))).await.status_code, 401);

    // Signed but bad: 400 with a message that names the problem.
    for (bad, expected) in [("{not json", "not JSON"), (r#"{"request_id":"HOOK-2"}"#, "integration")] {
        let response = call(request(bad, Some(now.clone()), Some(sign(b"hook-key-123", &now, bad.as_bytes())))).await;
        assert_eq!(response.status_code, 400, "{bad}");
        assert!(response.body.as_deref().unwrap().contains(expected), "{:?}", response.body);
    }

    // A body dressed as an EventBridge event: the bus sets the envelope (and its time), not the sender.
    let dressed = json!({"detail-type": "Access Request Approved", "time": "2030-01-01T00:00:00Z", "detail": serde_json::from_str::<Value>(&body).unwrap()}).to_string();
    let response = call(request(&dressed, Some(now.clone()), Some(sign(b"hook-key-123", &now, dressed.as_bytes())))).await;
    assert_eq!(response.status_code, 400, "{:?}", response.body);
    assert!(pgjit_tests::received(&sqs, &queue).await.is_empty(), "nothing forwarded for refused requests");

    // Good: accepted and forwarded, nothing granted by the webhook itself (it holds no such rights).
    let response = call(request(&body, Some(now.clone()), Some(good.clone()))).await;
    assert_eq!(response.status_code, 202, "{:?}", response.body);
    let result: Value = serde_json::from_str(response.body.as_deref().unwrap()).unwrap();
    assert_eq!((result["request_id"].as_str(), result["forwarded"].as_bool()), (Some("HOOK-1"), Some(true)));
    assert!(svc.store.get_grant("HOOK-1").await.unwrap().is_none(), "the webhook grants nothing itself");
    let mut events = pgjit_tests::received(&sqs, &queue).await;
    assert_eq!(events.len(), 1, "{events:?}");
    // AWS's envelope carries the sender's account; moto's leaves it out.
    events[0]["account"] = json!(events[0]["account"].as_str().filter(|a| !a.is_empty()).unwrap_or("123456789012"));
    // The grant function takes it from the bus under the same checks as any approval.
    let granted = pgjit::control::handlers::grant(&svc, LambdaEvent::new(events[0].clone(), Context::default())).await.unwrap();
    assert_eq!(granted.status, pgjit::aws::store::GrantStatus::Active);
    assert!(!granted.repeated);
    // The same request again (a retrying sender): forwarded again, and the grant changes nothing.
    assert_eq!(call(request(&body, Some(now.clone()), Some(good))).await.status_code, 202);
    let mut again = pgjit_tests::received(&sqs, &queue).await;
    again[0]["account"] = json!(again[0]["account"].as_str().filter(|a| !a.is_empty()).unwrap_or("123456789012"));
    let repeated = pgjit::control::handlers::grant(&svc, LambdaEvent::new(again[0].clone(), Context::default())).await.unwrap();
    assert_eq!((repeated.repeated, &repeated.db_user), (true, &granted.db_user));
    // An extension's detail, signed the same way: forwarded as `Access Extension Approved`, and
    // the grant function moves the expiry.
    let extension = json!({"request_id": "HOOK-1", "approver": "jane@corp.com", "duration_seconds": 1800, "reason": "more time"}).to_string();
    let response = call(request(&extension, Some(now.clone()), Some(sign(b"hook-key-123", &now, extension.as_bytes())))).await;
    assert_eq!(response.status_code, 202, "{:?}", response.body);
    let mut forwarded = pgjit_tests::received(&sqs, &queue).await;
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    assert_eq!(forwarded[0]["detail-type"], "Access Extension Approved");
    forwarded[0]["account"] = json!(forwarded[0]["account"].as_str().filter(|a| !a.is_empty()).unwrap_or("123456789012"));
    let extended = pgjit::control::handlers::grant(&svc, LambdaEvent::new(forwarded[0].clone(), Context::default())).await.unwrap();
    assert!(extended.expires_at > granted.expires_at, "{} > {}", extended.expires_at, granted.expires_at);
    // The same signed request replayed within its window: a new event, the same extension.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let response = call(request(&extension, Some(now.clone()), Some(sign(b"hook-key-123", &now, extension.as_bytes())))).await;
    assert_eq!(response.status_code, 202);
    let mut replayed = pgjit_tests::received(&sqs, &queue).await;
    replayed[0]["account"] = json!(replayed[0]["account"].as_str().filter(|a| !a.is_empty()).unwrap_or("123456789012"));
    let again = pgjit::control::handlers::grant(&svc, LambdaEvent::new(replayed[0].clone(), Context::default())).await.unwrap();
    assert!(again.repeated && again.expires_at == extended.expires_at, "a replay extends nothing: {again:?}");
    // A sender may not pick the key itself.
    let keyed = json!({"request_id": "HOOK-1", "approver": "jane@corp.com", "duration_seconds": 1800, "signed_at": 1}).to_string();
    let response = call(request(&keyed, Some(now.clone()), Some(sign(b"hook-key-123", &now, keyed.as_bytes())))).await;
    assert_eq!(response.status_code, 400, "{:?}", response.body);
    pgjit::control::grants::revoke::revoke(&svc, "HOOK-1", pgjit::contract::events::RevokeTrigger::Early, Utc::now()).await.unwrap();
}

#[tokio::test]
async fn the_webhook_never_tells_a_caller_its_internal_errors() {
    let secret_id = format!("webhook-{}", rand::random::<u32>());
    let id = secret_id.clone();
    // The approval bus does not exist: forwarding fails inside.
    let svc = isolated_services_with(move |n| match n {
        "PGJIT_WEBHOOK_SECRET_ID" => Some(id.clone()),
        "PGJIT_APPROVAL_BUS" => Some("no-such-bus-for-pgjit".into()),
        _ => None,
    })
    .await;
    svc.secrets.create_secret().name(&secret_id).secret_string("hook-key-456").send().await.unwrap();
    let cache = SecretCache::default();
    let body = json!({"request_id": "HOOK-9", "integration": "hooked", "requester": {"id": "a@corp.com"}, "approver": "b@corp.com",
        "duration_seconds": 600, "access": [{"database": "app", "privileges": ["CONNECT"]}]})
    .to_string();
    let now = Utc::now().timestamp().to_string();
    let signed = request(&body, Some(now.clone()), Some(sign(b"hook-key-456", &now, body.as_bytes())));
    let response = pgjit::control::handlers::webhook(&svc, &cache, LambdaEvent::new(signed, Context::default())).await.unwrap();
    assert_eq!(response.status_code, 502, "{:?}", response.body);
    let text = response.body.unwrap_or_default();
    for internal in ["PutEvents", "no-such-bus", "failed:", "service error", "127.0.0.1"] {
        assert!(!text.contains(internal), "{internal} leaked: {text}");
    }
    // Without its key the webhook answers 500 and says no more.
    let svc = isolated_services_with(|n| (n == "PGJIT_WEBHOOK_SECRET_ID").then(|| "missing-key".to_owned())).await;
    let signed = request(&body, Some(now.clone()), Some(sign(b"x", &now, body.as_bytes())));
    let response = pgjit::control::handlers::webhook(&svc, &SecretCache::default(), LambdaEvent::new(signed, Context::default())).await.unwrap();
    assert_eq!((response.status_code, response.body.as_deref()), (500, Some(r#"{"error":"internal error"}"#)));
}
