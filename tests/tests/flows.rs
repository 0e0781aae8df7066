//! pgjit decides: where an integration has access flows, every approval that reaches the
//! grant function (here: signed events, as the approval bus and the webhook deliver them) must
//! fit one of them. Each refusal is performed and shown to change nothing; people are resolved
//! through the Identity Store (moto's) and owners through the instance's tag (moto's RDS).

use lambda_runtime::{Context, LambdaEvent};
use pgjit::aws::Services;
use pgjit::control::grants::GrantResult;
use pgjit_tests::{approval, extension, moto_rds_instance, orders_access, put_flow, register_integration};
use serde_json::{json, Value};

const ACCOUNT: &str = "123456789012";

async fn grant(svc: &Services, event: Value) -> Result<GrantResult, String> {
    pgjit::control::handlers::grant(svc, LambdaEvent::new(pgjit_tests::signed(svc, event).await, Context::default())).await.map_err(|e| e.to_string())
}

fn read_flow(integration: &str) -> Value {
    json!({"name": "orders-read", "integrations": [integration],
        "requesters": {"groups": ["engineers"]},
        "access": [{"database": "app", "schema": "sales", "table": "*", "privileges": ["SELECT"]}],
        "max_duration_seconds": 3600,
        "approval": {"approvers": {"groups": ["dba"]}, "required": 1, "reason_required": true}})
}

/// John's session of his Identity Center permission set: who the grant's credentials are for.
const JOHN_SESSION: &str = "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Eng_0123456789abcdef/john.doe@corp.com";

fn event(request_id: &str, integration: &str, change: impl FnOnce(&mut Value)) -> Value {
    let mut e = approval(request_id, integration, "john.doe@corp.com", orders_access());
    e["detail"]["requester"]["iam_arn"] = json!(JOHN_SESSION);
    e["detail"]["approver"] = json!("dave@corp.com");
    change(&mut e["detail"]);
    e
}

/// Nothing of the request exists: no record, no audit entry, no login role of the prefix.
async fn nothing_made(svc: &Services, request_id: &str, prefix: &str) {
    assert!(svc.store.get_grant(request_id).await.unwrap().is_none(), "{request_id}: a record was written");
    assert!(svc.store.audit_of(request_id).await.unwrap().is_empty(), "{request_id}: the audit trail changed");
    let su = pgjit_tests::env().superuser("postgres").await;
    let roles: i64 = su.query_one("SELECT count(*) FROM pg_roles WHERE rolname LIKE $1 || '%'", &[&prefix]).await.unwrap().get(0);
    assert_eq!(roles, 0, "{request_id}: a role was made");
}

#[tokio::test]
async fn approvals_no_flow_allows_are_refused_and_change_nothing() {
    let svc = pgjit_tests::directory_services(None).await;
    let id: u32 = rand::random();
    let name = format!("flows-{id}");
    let integration = register_integration(&svc, &name, json!({})).await;
    put_flow(&svc, read_flow(&name)).await;
    put_flow(&svc, json!({"name": "orders-pair", "integrations": [name], "requesters": {"users": ["john.doe@corp.com"]},
        "access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["UPDATE"]}], "max_duration_seconds": 600,
        "approval": {"approvers": {"groups": ["dba"], "users": ["jane"]}, "required": 2}})).await;
    put_flow(&svc, json!({"name": "orders-glass", "integrations": [name], "requesters": {"groups": ["engineers"]},
        "access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["DELETE"]}], "max_duration_seconds": 900,
        "approval": {"break_glass": true}})).await;
    let sso = |role: &str, user: &str| format!("arn:aws:sts::{ACCOUNT}:assumed-role/AWSReservedSSO_{role}_0123456789abcdef/{user}");
    let update = json!([{"database": "app", "schema": "sales", "table": "orders", "privileges": ["UPDATE"]}]);
    let delete = json!([{"database": "app", "schema": "sales", "table": "orders", "privileges": ["DELETE"]}]);
    let cases: Vec<(&str, Box<dyn FnOnce(&mut Value)>, &str)> = vec![
        ("outsider", Box::new(|d| { d["requester"] = json!({"id": "eve@corp.com"}); }), "requester \"eve@corp.com\" is not one of its requesters"),
        ("envelope", Box::new(|d| d["access"] = json!([{"database": "app", "schema": "sales", "table": "orders", "privileges": ["INSERT"]}])), "access[0] (database app schema sales table orders INSERT) is outside its envelope"),
        ("too-long", Box::new(|d| d["duration_seconds"] = json!(7200)), "7200 s is longer than its max_duration_seconds 3600"),
        ("no-reason", Box::new(|d| { d.as_object_mut().unwrap().remove("reason"); }), "it requires a reason"),
        ("approver", Box::new(|d| d["approver"] = json!("sam@corp.com")), "\"sam@corp.com\" is not one of its approvers"),
        ("self-sso", Box::new(move |d| d["approver"] = json!(sso("Dba", "john.doe@corp.com"))), "is the requester \"john.doe@corp.com\""),
        // Eligible by name, but the access would go to eve's session: judged as eve.
        ("for-another", Box::new(|d| d["requester"]["iam_arn"] = json!("arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Eng_0123456789abcdef/eve@corp.com")), "is not one of its requesters"),
        ("twice", Box::new({ let u = update.clone(); move |d| { d["access"] = u; d["duration_seconds"] = json!(600); d["approver"] = json!("jane"); d["approvers"] = json!([sso("Dba", "jane")]); } }), "is the same person as \"jane\""),
        ("twice-by-mail", Box::new({ let u = update.clone(); move |d| { d["access"] = u; d["duration_seconds"] = json!(600); d["approver"] = json!("jane"); d["approvers"] = json!(["jane.doe@corp.com"]); } }), "is the same person as \"jane\""),
        ("one-of-two", Box::new(move |d| { d["access"] = update; d["duration_seconds"] = json!(600); d["approver"] = json!("jane"); }), "it requires 2 distinct approver(s) and has 1"),
        ("glass-no-reason", Box::new({ let delete = delete.clone(); move |d| { d["access"] = delete; d["duration_seconds"] = json!(900); d["flow"] = json!("orders-glass"); d.as_object_mut().unwrap().remove("reason"); } }), "break-glass needs a reason"),
        ("glass-unnamed", Box::new(move |d| { d["access"] = delete; d["duration_seconds"] = json!(900); }), "applies only to a request that names it"),
        ("no-such-flow", Box::new(|d| d["flow"] = json!("orders-write")), "flow \"orders-write\": no such flow for this integration"),
    ];
    for (case, change, expected) in cases {
        let request_id = format!("REQ-{id}-{case}");
        let err = grant(&svc, event(&request_id, &name, change)).await.unwrap_err();
        assert!(err.contains(expected) && err.contains("nothing was changed"), "{case}: {err}");
        nothing_made(&svc, &request_id, &integration.user_prefix).await;
    }

    // Within a flow: granted, and the record and the audit trail name it.
    let ok = format!("REQ-{id}-ok");
    grant(&svc, event(&ok, &name, |_| {})).await.unwrap();
    let record = svc.store.get_grant(&ok).await.unwrap().unwrap();
    assert_eq!((record.flow.as_deref(), record.approvers.as_slice(), record.break_glass), (Some("orders-read"), &["dave@corp.com".to_owned()][..], false));
    assert!(svc.store.audit_of(&ok).await.unwrap().iter().all(|e| e.flow.as_deref() == Some("orders-read")));
    // Two distinct people, one named by a session of their Identity Center role.
    let pair = format!("REQ-{id}-pair");
    grant(&svc, event(&pair, &name, |d| { d["access"] = json!([{"database": "app", "schema": "sales", "table": "orders", "privileges": ["UPDATE"]}]); d["duration_seconds"] = json!(600); d["approver"] = json!("jane"); d["approvers"] = json!([sso("Dba", "dave@corp.com")]); })).await.unwrap();
    assert_eq!(svc.store.get_grant(&pair).await.unwrap().unwrap().flow.as_deref(), Some("orders-pair"));
    let finding = pgjit::control::flows::doctor_finding(&svc, &integration).await;
    assert!(finding.ok && finding.detail.contains("orders-glass, orders-pair, orders-read"), "{finding:?}");
    for request_id in [ok, pair] {
        pgjit::control::grants::revoke::revoke(&svc, &request_id, pgjit::contract::events::RevokeTrigger::Early, chrono::Utc::now()).await.unwrap();
    }
}

#[tokio::test]
async fn owners_come_from_the_instance_tag_else_the_integration_owners() {
    let svc = pgjit_tests::directory_services(None).await;
    let id: u32 = rand::random();
    let instance = format!("owned-{id}");
    moto_rds_instance(&svc, &instance).await;
    let tagged = format!("tagged-{id}");
    let untagged = format!("untagged-{id}");
    register_integration(&svc, &tagged, json!({"kind": "rds", "instance_id": instance, "region": "us-east-1", "resource_owner_tag": "owner-group", "integration_owners": ["sam@corp.com"]})).await;
    register_integration(&svc, &untagged, json!({"integration_owners": ["sam@corp.com"]})).await;
    let arn = format!("arn:aws:rds:us-east-1:{ACCOUNT}:db:{instance}");
    svc.rds.add_tags_to_resource().resource_name(&arn).tags(aws_sdk_rds::types::Tag::builder().key("owner-group").value("orders-team").build()).send().await.expect("tag the instance");
    for integration in [&tagged, &untagged] {
        let mut flow = read_flow(integration);
        flow["name"] = json!(format!("owned-by-{integration}"));
        flow["approval"] = json!({"approvers": {"owners": true}});
        put_flow(&svc, flow).await;
    }
    // The tag names the owners' group: olga (in orders-team) approves, the integration owner does not.
    let by_sam = format!("REQ-{id}-sam");
    let err = grant(&svc, event(&by_sam, &tagged, |d| d["approver"] = json!("sam@corp.com"))).await.unwrap_err();
    assert!(err.contains("\"sam@corp.com\" is not one of its approvers"), "{err}");
    let by_olga = format!("REQ-{id}-olga");
    grant(&svc, event(&by_olga, &tagged, |d| d["approver"] = json!("olga@corp.com"))).await.unwrap();
    // Without a tag, the integration owners approve.
    let err = grant(&svc, event(&format!("REQ-{id}-olga2"), &untagged, |d| d["approver"] = json!("olga@corp.com"))).await.unwrap_err();
    assert!(err.contains("not one of its approvers"), "{err}");
    let by_owner = format!("REQ-{id}-owner");
    grant(&svc, event(&by_owner, &untagged, |d| d["approver"] = json!("sam@corp.com"))).await.unwrap();
    for request_id in [by_olga, by_owner] {
        pgjit::control::grants::revoke::revoke(&svc, &request_id, pgjit::contract::events::RevokeTrigger::Early, chrono::Utc::now()).await.unwrap();
    }
}

#[tokio::test]
async fn break_glass_is_granted_at_once_alarmed_and_reviewed_by_someone_else() {
    let id: u32 = rand::random();
    let bus = format!("events-{id}");
    let svc = pgjit_tests::directory_services(Some(bus.clone())).await;
    let name = format!("glass-{id}");
    register_integration(&svc, &name, json!({})).await;
    put_flow(&svc, json!({"name": "glass", "integrations": [name], "requesters": {"groups": ["engineers"]},
        "access": [{"database": "app", "schema": "sales", "table": "*", "privileges": ["ALL"]}], "max_duration_seconds": 900,
        "approval": {"break_glass": true}})).await;
    svc.events.create_event_bus().name(&bus).send().await.unwrap();
    let (sqs, queue) = pgjit_tests::queue_for(&svc, &bus, json!({"detail-type": ["Break Glass Used"]})).await;
    let request_id = format!("REQ-{id}-glass");
    grant(&svc, event(&request_id, &name, |d| { d["duration_seconds"] = json!(900); d["flow"] = json!("glass"); d["approver"] = json!("pagerduty"); d["reason"] = json!("SEV1: orders table corrupt"); })).await.unwrap();
    let record = svc.store.get_grant(&request_id).await.unwrap().unwrap();
    assert!(record.break_glass && record.reviewed_by.is_none());
    let events = pgjit_tests::received(&sqs, &queue).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0]["detail"]["request_id"].as_str(), events[0]["detail"]["reason"].as_str()), (Some(request_id.as_str()), Some("SEV1: orders table corrupt")));
    // Not extended: break-glass is asked for again, and reviewed again.
    let err = grant(&svc, extension(&format!("ev-{id}-glass"), &request_id, "dave@corp.com", 600)).await.unwrap_err();
    assert!(err.contains("a break-glass grant is not extended"), "{err}");
    // The requester cannot review their own break-glass use; someone else can, once.
    let me = JOHN_SESSION.to_owned();
    let err = pgjit::control::flows::review(&svc, &request_id, &me, None, chrono::Utc::now()).await.unwrap_err().to_string();
    assert!(err.contains("is the requester"), "{err}");
    let reviewer = format!("arn:aws:sts::{ACCOUNT}:assumed-role/AWSReservedSSO_Sec_0123456789abcdef/dave@corp.com");
    let reviewed = pgjit::control::flows::review(&svc, &request_id, &reviewer, Some("justified".into()), chrono::Utc::now()).await.unwrap();
    assert_eq!(reviewed.reviewed_by.as_deref(), Some(reviewer.as_str()));
    let again = pgjit::control::flows::review(&svc, &request_id, "someone@corp.com", None, chrono::Utc::now()).await.unwrap();
    assert_eq!(again.reviewed_by.as_deref(), Some(reviewer.as_str()), "the first review stands");
    let audit = svc.store.audit_of(&request_id).await.unwrap();
    assert_eq!(audit.iter().filter(|e| e.event == "reviewed").count(), 1);
    pgjit::control::grants::revoke::revoke(&svc, &request_id, pgjit::contract::events::RevokeTrigger::Early, chrono::Utc::now()).await.unwrap();
    // A grant that was not break-glass has nothing to review.
    assert!(pgjit::control::flows::review(&svc, "REQ-nothing", &reviewer, None, chrono::Utc::now()).await.is_err());
}

#[tokio::test]
async fn extensions_stay_within_the_grants_flow_and_hours_are_kept() {
    let svc = pgjit_tests::directory_services(None).await;
    let id: u32 = rand::random();
    let name = format!("ext-{id}");
    let integration = register_integration(&svc, &name, json!({})).await;
    // Granted before the integration had flows: once it has some, no extension.
    let before = format!("REQ-{id}-before");
    grant(&svc, event(&before, &name, |_| {})).await.unwrap();
    let finding = pgjit::control::flows::doctor_finding(&svc, &integration).await;
    assert!(finding.warning && finding.detail.contains("trusts its approval tool"), "{finding:?}");
    put_flow(&svc, read_flow(&name)).await;
    let err = grant(&svc, extension(&format!("ev-{id}-1"), &before, "dave@corp.com", 600)).await.unwrap_err();
    assert!(err.contains("made before the integration had access flows"), "{err}");

    let within = format!("REQ-{id}-within");
    grant(&svc, event(&within, &name, |_| {})).await.unwrap();
    let err = grant(&svc, extension(&format!("ev-{id}-2"), &within, "dave@corp.com", 7200)).await.unwrap_err();
    assert!(err.contains("longer than its max_duration_seconds 3600"), "{err}");
    let err = grant(&svc, extension(&format!("ev-{id}-3"), &within, "sam@corp.com", 600)).await.unwrap_err();
    assert!(err.contains("not one of its approvers"), "{err}");
    grant(&svc, extension(&format!("ev-{id}-4"), &within, "dave@corp.com", 3600)).await.unwrap();

    // Outside the flow's hours nothing is granted: a window that closed an hour ago.
    let now = chrono::Utc::now();
    let mut after_hours = read_flow(&name);
    after_hours["hours"] = json!({"time_zone": "UTC", "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        "from": (now + chrono::Duration::hours(1)).format("%H:%M").to_string(), "to": (now + chrono::Duration::hours(2)).format("%H:%M").to_string()});
    put_flow(&svc, after_hours).await;
    let late = format!("REQ-{id}-late");
    let err = grant(&svc, event(&late, &name, |_| {})).await.unwrap_err();
    assert!(err.contains("it applies only"), "{err}");
    nothing_made(&svc, &late, &format!("{}zz", integration.user_prefix)).await;
    for request_id in [before, within] {
        pgjit::control::grants::revoke::revoke(&svc, &request_id, pgjit::contract::events::RevokeTrigger::Early, chrono::Utc::now()).await.unwrap();
    }
}
