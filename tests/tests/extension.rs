//! Extending an active grant: the expiry moves everywhere it is held, once; refusals and a
//! failure part-way change nothing.

use chrono::{DateTime, Duration, Utc};
use lambda_runtime::{Context, LambdaEvent};
use pgjit::aws::Services;
use pgjit::control::grants::GrantResult;
use pgjit_tests::{approval, env, extension, orders_access, register_integration};
use serde_json::{json, Value};

async fn grant(svc: &Services, event: Value) -> Result<GrantResult, String> {
    pgjit::control::handlers::grant(svc, LambdaEvent::new(pgjit_tests::signed(svc, event).await, Context::default())).await.map_err(|e| e.to_string())
}

/// Where a grant's expiry is held, as each place says it.
#[derive(Debug, PartialEq)]
struct Expiries {
    valid_until: Option<String>,
    schedule: Option<String>,
    secret: Option<String>,
    record: DateTime<Utc>,
}

async fn expiries(svc: &Services, request_id: &str) -> Expiries {
    let record = svc.store.get_grant(request_id).await.unwrap().unwrap();
    let su = env().superuser("postgres").await;
    let valid_until: Option<String> = su
        .query_opt("SELECT to_char(rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') FROM pg_roles WHERE rolname = $1", &[&record.db_user])
        .await
        .unwrap()
        .and_then(|r| r.get(0));
    let schedule = svc
        .scheduler
        .get_schedule()
        .name(pgjit::aws::schedule::schedule_name(request_id))
        .group_name(&svc.config.schedule_group)
        .send()
        .await
        .ok()
        .and_then(|s| s.schedule_expression().map(str::to_owned));
    let secret = match &record.secret_arn {
        Some(arn) => {
            let value: Value = serde_json::from_str(pgjit::aws::credentials::read(svc, arn).await.unwrap().expose()).unwrap();
            value["expires_at"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc).format("%Y-%m-%dT%H:%M:%S").to_string())
        }
        None => None,
    };
    Expiries { valid_until, schedule, secret, record: record.expires_at }
}

/// Every place says `at` (to the second).
fn all_at(e: &Expiries, at: DateTime<Utc>) -> bool {
    let text = at.format("%Y-%m-%dT%H:%M:%S").to_string();
    e.valid_until.as_deref() == Some(text.as_str()) && e.schedule.as_deref() == Some(format!("at({text})").as_str()) && e.secret.as_deref() == Some(text.as_str()) && e.record == at
}

#[tokio::test]
async fn an_extension_moves_the_expiry_everywhere_once() {
    let id: u32 = rand::random();
    let bus = format!("events-{id}");
    let b = bus.clone();
    let svc = pgjit_tests::isolated_services_with(move |n| (n == "PGJIT_EVENT_BUS").then(|| b.clone())).await;
    svc.events.create_event_bus().name(&bus).send().await.unwrap();
    let (sqs, queue) = pgjit_tests::queue_for(&svc, &bus, json!({"source": ["pgjit"], "detail-type": ["Access Extended"]})).await;
    let integration = register_integration(&svc, &format!("ext-{id}"), json!({"max_duration_seconds": 7200, "max_total_duration_seconds": 14_400})).await;
    let request_id = format!("REQ-EXT-{id}");
    let granted = grant(&svc, approval(&request_id, &integration.name, "john@corp.com", orders_access())).await.unwrap();
    let first = svc.store.get_grant(&request_id).await.unwrap().unwrap();
    assert!(all_at(&expiries(&svc, &request_id).await, first.expires_at), "{:?}", expiries(&svc, &request_id).await);

    let before = Utc::now();
    let event = extension(&format!("ev-ext-{id}"), &request_id, "jane@corp.com", 7000);
    let extended = grant(&svc, event.clone()).await.expect("extended");
    assert!(!extended.repeated);
    assert!(extended.expires_at >= before + Duration::seconds(7000) && extended.expires_at <= Utc::now() + Duration::seconds(7000), "{}", extended.expires_at);
    assert_eq!((extended.db_user.as_str(), extended.secret_arn.as_deref()), (granted.db_user.as_str(), granted.secret_arn.as_deref()), "the same user and secret");
    let now_at = expiries(&svc, &request_id).await;
    assert!(all_at(&now_at, extended.expires_at), "every place moved: {now_at:?}");
    // Exactly one revoke schedule remains, at the new time.
    let schedules = svc.scheduler.list_schedules().group_name(&svc.config.schedule_group).send().await.unwrap();
    assert_eq!(schedules.schedules().len(), 1);
    let record = svc.store.get_grant(&request_id).await.unwrap().unwrap();
    assert_eq!(record.extensions.len(), 1);
    assert_eq!((record.extensions[0].approver.as_str(), record.extensions[0].from), ("jane@corp.com", first.expires_at));
    let audit = svc.store.audit_of(&request_id).await.unwrap();
    let entry = audit.iter().find(|e| e.event == "extended").expect("an extended entry");
    assert!(entry.detail.as_deref().is_some_and(|d| d.contains("jane@corp.com") && d.contains("INC-42 still open")), "{:?}", entry.detail);
    let announced = pgjit_tests::received(&sqs, &queue).await;
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert_eq!(announced[0]["detail"]["request_id"], json!(request_id));
    assert_eq!(announced[0]["detail"]["approver"], json!("jane@corp.com"));
    // The user still logs in, with the same password, after the old expiry would have passed in
    // the database (VALID UNTIL moved).
    let (_, password) = {
        let v: Value = serde_json::from_str(pgjit::aws::credentials::read(&svc, granted.secret_arn.as_deref().unwrap()).await.unwrap().expose()).unwrap();
        ((), pgjit::SecretString::new(v["password"].as_str().unwrap()))
    };
    env().login_as(&granted.db_user, &password, "app").await.expect("the same password still works");

    // The same extension delivered again: nothing changes.
    let again = grant(&svc, event).await.expect("repeated");
    assert!(again.repeated && again.expires_at == extended.expires_at);
    let unchanged = svc.store.get_grant(&request_id).await.unwrap().unwrap();
    assert_eq!((unchanged.version, unchanged.extensions.len()), (record.version, 1), "the record was not written again");
    assert!(all_at(&expiries(&svc, &request_id).await, extended.expires_at));

    // Beyond max_total_duration_seconds from the first grant (4 h): refused, nothing moved.
    let refused = grant(&svc, extension(&format!("ev-ext2-{id}"), &request_id, "jane@corp.com", 7200)).await;
    assert!(refused.is_ok(), "7200 s from now is within 4 h of the first grant: {refused:?}");
    let latest = svc.store.get_grant(&request_id).await.unwrap().unwrap();
    // Two and a half hours later, two more hours would end past the first grant + 4 h.
    let later = Utc::now() + Duration::minutes(150);
    let mut third = pgjit::contract::events::parse_extension(extension(&format!("ev-ext3-{id}"), &request_id, "jane@corp.com", 7200)).unwrap();
    third.sent_at = Some(later);
    let too_far = pgjit::control::extension::extend(&svc, &third, later).await.unwrap_err();
    assert!(too_far.to_string().contains("max_total_duration_seconds"), "{too_far}");
    assert!(all_at(&expiries(&svc, &request_id).await, latest.expires_at), "nothing moved");
    pgjit::control::grants::revoke::revoke(&svc, &request_id, pgjit::contract::events::RevokeTrigger::Early, Utc::now()).await.unwrap();
}

#[tokio::test]
async fn extensions_of_grants_not_active_or_not_trusted_change_nothing() {
    let svc = pgjit_tests::isolated_services().await;
    let id: u32 = rand::random();
    let integration = register_integration(&svc, &format!("ext-no-{id}"), json!({"max_duration_seconds": 7200})).await;
    let request_id = format!("REQ-EXTNO-{id}");
    grant(&svc, approval(&request_id, &integration.name, "john@corp.com", orders_access())).await.unwrap();
    let before = expiries(&svc, &request_id).await;
    let cases = [
        (extension(&format!("a-{id}"), &request_id, "john@corp.com", 600), "is the requester"),
        (extension(&format!("b-{id}"), &request_id, "jane@corp.com", 7201), "max_duration_seconds"),
        (extension(&format!("c-{id}"), &request_id, "jane@corp.com", 60), "already lasts until"),
        (extension(&format!("d-{id}"), "REQ-NOBODY", "jane@corp.com", 600), "unknown request"),
        ({
            let mut stale = extension(&format!("e-{id}"), &request_id, "jane@corp.com", 600);
            stale["time"] = json!((Utc::now() - Duration::hours(2)).format("%Y-%m-%dT%H:%M:%SZ").to_string());
            stale
        }, "older than"),
    ];
    for (event, says) in cases {
        let e = grant(&svc, event).await.unwrap_err();
        assert!(e.contains(says), "{says}: {e}");
        assert_eq!(expiries(&svc, &request_id).await, before, "{says}: nothing moved");
    }
    // Revoked (and, with no retention, dropped): refused with the reason.
    pgjit::control::grants::revoke::revoke(&svc, &request_id, pgjit::contract::events::RevokeTrigger::Early, Utc::now()).await.unwrap();
    let e = grant(&svc, extension(&format!("f-{id}"), &request_id, "jane@corp.com", 600)).await.unwrap_err();
    assert!(e.contains("is deleted") && e.contains("only an active grant"), "{e}");
    assert!(svc.store.audit_of(&request_id).await.unwrap().iter().all(|e| e.event != "extended"));
}

#[tokio::test]
async fn a_failure_part_way_through_an_extension_leaves_the_old_expiry_everywhere() {
    let svc = pgjit_tests::isolated_services().await;
    let id: u32 = rand::random();
    let integration = register_integration(&svc, &format!("ext-fail-{id}"), json!({"max_duration_seconds": 7200})).await;
    let request_id = format!("REQ-EXTFAIL-{id}");
    grant(&svc, approval(&request_id, &integration.name, "john@corp.com", orders_access())).await.unwrap();
    let before = expiries(&svc, &request_id).await;
    for (n, point) in ["extend:after_role", "extend:after_schedule", "extend:after_secret", "extend:before_record"].into_iter().enumerate() {
        svc.failpoints.set(point);
        let e = grant(&svc, extension(&format!("fail-{n}-{id}"), &request_id, "jane@corp.com", 7000)).await.unwrap_err();
        svc.failpoints.clear();
        assert!(e.contains("extension of request") && e.contains(point), "{point}: {e}");
        assert_eq!(expiries(&svc, &request_id).await, before, "{point}: the old expiry everywhere");
        let record = svc.store.get_grant(&request_id).await.unwrap().unwrap();
        assert!(record.extensions.is_empty(), "{point}");
    }
    // The same extension, once the fault is gone, moves everything.
    let extended = grant(&svc, extension(&format!("fail-0-{id}"), &request_id, "jane@corp.com", 7000)).await.expect("extended after the fault");
    assert!(all_at(&expiries(&svc, &request_id).await, extended.expires_at));
    pgjit::control::grants::revoke::revoke(&svc, &request_id, pgjit::contract::events::RevokeTrigger::Early, Utc::now()).await.unwrap();
}
