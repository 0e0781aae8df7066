//! The front door: requests made and approved by identities AWS proved (Identity Center
//! sessions here, as the Function URL's IAM context names them), decided by the access flows;
//! every refusal performed, and a complete request granted through the ordinary approval path.

use chrono::{Duration, Utc};
use lambda_runtime::{Context, LambdaEvent};
use pgjit::aws::Services;
use pgjit::contract::requests::{parse_action, Caller, RequestStatus};
use pgjit::control::requests::{handle, RequestView};
use pgjit_tests::{directory_services, put_flow, register_integration, sso_caller};
use serde_json::{json, Value};

fn john() -> Caller {
    sso_caller("Eng", "john.doe@corp.com")
}

/// Calls the front door as `caller` with `body`, at `at`; the request(s) or the refusal's
/// status and message. A complete request's approval is granted in-process, as the bus's rule
/// would deliver it.
async fn call_at(svc: &Services, caller: &Caller, body: Value, at: chrono::DateTime<Utc>) -> Result<Vec<RequestView>, (u16, String)> {
    let action = parse_action(&body.to_string(), at).map_err(|e| (400, e.to_string()))?;
    // Boxed: the handler's and the grant's futures together outgrow a test thread's stack.
    let reply = Box::pin(handle(svc, caller, action, at)).await.map_err(|e| (e.status(), e.to_string()))?;
    if let Some(event) = reply.sent {
        Box::pin(pgjit::control::handlers::grant(svc, LambdaEvent::new(event, Context::default()))).await.map_err(|e| (500, e.to_string()))?;
        // As the CLI does: the request read again, now with its grant.
        let request_id = reply.requests[0].request_id.clone();
        let again = Box::pin(handle(svc, caller, pgjit::contract::requests::Action::Get { request_id }, at)).await.map_err(|e| (e.status(), e.to_string()))?;
        return Ok(again.requests);
    }
    Ok(reply.requests)
}

async fn call(svc: &Services, caller: &Caller, body: Value) -> Result<Vec<RequestView>, (u16, String)> {
    call_at(svc, caller, body, Utc::now()).await
}

async fn one(svc: &Services, caller: &Caller, body: Value) -> RequestView {
    call(svc, caller, body.clone()).await.unwrap_or_else(|e| panic!("{body}: {e:?}")).remove(0)
}

fn create(token: &str, integration: &str, extra: Value) -> Value {
    let mut body = json!({"action": "create", "client_token": token, "integration": integration,
        "access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["SELECT"]}],
        "duration_seconds": 1800, "reason": "INC-42 stuck orders"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn act(action: &str, request_id: &str) -> Value {
    json!({"action": action, "request_id": request_id})
}

async fn setup(flows: &[Value]) -> (Services, String) {
    let svc = directory_services(None).await;
    let name = format!("front-{}", rand::random::<u32>());
    register_integration(&svc, &name, json!({})).await;
    for flow in flows {
        let mut flow = flow.clone();
        flow["integrations"] = json!([name]);
        put_flow(&svc, flow).await;
    }
    (svc, name)
}

fn read_flow() -> Value {
    json!({"name": "orders-read", "requesters": {"groups": ["engineers"]},
        "access": [{"database": "app", "schema": "sales", "table": "*", "privileges": ["SELECT"]}], "max_duration_seconds": 3600,
        "approval": {"approvers": {"groups": ["dba"]}, "reason_required": true}})
}

#[tokio::test]
async fn a_request_approved_by_someone_else_is_granted_through_the_approval_path() {
    let (svc, name) = setup(&[read_flow()]).await;
    let dave = sso_caller("Dba", "dave@corp.com");
    // A body that claims another requester is read as the caller's own request.
    let mut body = create("t1", &name, json!({}));
    body["requester"] = json!({"id": "dave@corp.com", "iam_arn": "arn:aws:iam::123456789012:user/dave"});
    let made = one(&svc, &john(), body.clone()).await;
    assert_eq!((made.status, made.requester.as_str(), made.flow.as_str(), made.required), (RequestStatus::Pending, "john.doe@corp.com", "orders-read", 1));
    // The same create again is the same request; the same token for something else is refused.
    assert_eq!(one(&svc, &john(), body).await.request_id, made.request_id);
    let (status, message) = call(&svc, &john(), create("t1", &name, json!({"duration_seconds": 60}))).await.unwrap_err();
    assert_eq!(status, 409, "{message}");
    // Awaiting dave's approval, not jane's own list of requests.
    let to_approve = one(&svc, &dave, json!({"action": "list", "filter": "to_approve"})).await;
    assert_eq!(to_approve.request_id, made.request_id);
    assert!(call(&svc, &john(), json!({"action": "list", "filter": "to_approve"})).await.unwrap().is_empty(), "never one's own");
    // Approved by dave: the approval goes on the bus and the grant is made from it.
    let approved = one(&svc, &dave, act("approve", &made.request_id)).await;
    assert_eq!(approved.status, RequestStatus::Granted, "{approved:?}");
    let grant = approved.grant.expect("the grant");
    let record = svc.store.get_grant(&made.request_id).await.unwrap().unwrap();
    assert_eq!((record.flow.as_deref(), record.approvers.clone(), record.requester.id.as_str()), (Some("orders-read"), vec!["dave@corp.com".to_owned()], "john.doe@corp.com"));
    assert_eq!(grant.db_user, record.db_user);
    let mine = call(&svc, &john(), json!({"action": "list", "filter": "mine"})).await.unwrap();
    assert_eq!(mine.iter().map(|r| (r.request_id.as_str(), r.status)).collect::<Vec<_>>(), [(made.request_id.as_str(), RequestStatus::Granted)]);
    // The audit trail has the request's whole history, in order, once.
    let events: Vec<String> = svc.store.audit_of(&made.request_id).await.unwrap().into_iter().map(|e| e.event).collect();
    assert_eq!(events, ["request_created", "request_approved", "requested", "granted"]);
    // Another person's request is not readable by a bystander.
    let (status, _) = call(&svc, &sso_caller("Eng", "eve@corp.com"), act("get", &made.request_id)).await.unwrap_err();
    assert_eq!(status, 403);
    pgjit::control::grants::revoke::revoke(&svc, &made.request_id, pgjit::contract::events::RevokeTrigger::Early, Utc::now()).await.unwrap();
}

#[tokio::test]
async fn every_refusal_at_the_front_door_changes_nothing() {
    let pair = json!({"name": "orders-pair", "requesters": {"users": ["john.doe@corp.com"]},
        "access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["UPDATE"]}], "max_duration_seconds": 600,
        "approval": {"approvers": {"groups": ["dba"]}, "required": 2}});
    let glass = json!({"name": "orders-glass", "requesters": {"groups": ["engineers"]},
        "access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["DELETE"]}], "max_duration_seconds": 900,
        "approval": {"break_glass": true}});
    let (svc, name) = setup(&[read_flow(), pair, glass]).await;
    let (dave, dave_as_sec, jane, eve) = (sso_caller("Dba", "dave@corp.com"), sso_caller("Sec", "dave@corp.com"), sso_caller("Dba", "jane"), sso_caller("Eng", "eve@corp.com"));
    let refused = |r: Result<Vec<RequestView>, (u16, String)>, status: u16, needle: &str| {
        let (s, m) = r.expect_err(needle);
        assert!(s == status && m.contains(needle), "{status} {needle}: got {s} {m}");
    };
    refused(call(&svc, &eve, create("e1", &name, json!({}))).await, 403, "requester \"arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Eng_0123456789abcdef/eve@corp.com\" is not one of its requesters");
    refused(call(&svc, &john(), create("e2", &name, json!({"access": [{"database": "app", "schema": "hr", "table": "salaries", "privileges": ["SELECT"]}]}))).await, 403, "access[0] (database app schema hr table salaries SELECT) is outside its envelope");
    refused(call(&svc, &john(), create("e3", &name, json!({"duration_seconds": 3601}))).await, 403, "3601 s is longer than its max_duration_seconds 3600");
    refused(call(&svc, &john(), create("e4", &name, json!({"access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["DELETE"]}], "duration_seconds": 900, "reason": " "}))).await, 403, "break-glass needs a reason");
    refused(call(&svc, &john(), create("e5", "no-such-integration", json!({}))).await, 404, "unknown integration");
    for token in ["e1", "e2", "e3", "e4", "e5"] {
        let id = pgjit::control::requests::request_id_for(&john(), token);
        assert!(svc.store.get_request(&id).await.unwrap().is_none(), "{token}: nothing stored");
    }

    // Two approvals: the requester cannot give one, a person counts once under two sessions,
    // and someone outside the approvers counts not at all.
    let two = one(&svc, &john(), create("p1", &name, json!({"access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["UPDATE"]}], "duration_seconds": 600}))).await;
    refused(call(&svc, &john(), act("approve", &two.request_id)).await, 403, "an approval must come from someone else");
    refused(call(&svc, &sso_caller("Dba", "john.doe@corp.com"), act("approve", &two.request_id)).await, 403, "an approval must come from someone else");
    refused(call(&svc, &eve, act("approve", &two.request_id)).await, 403, "not one of the approvers");
    assert_eq!(one(&svc, &dave, act("approve", &two.request_id)).await.approvals.len(), 1);
    let again = one(&svc, &dave_as_sec, act("approve", &two.request_id)).await;
    assert_eq!((again.status, again.approvals.len()), (RequestStatus::Pending, 1), "the same person twice counts once");
    let done = one(&svc, &jane, act("approve", &two.request_id)).await;
    assert_eq!(done.status, RequestStatus::Granted, "{done:?}");
    pgjit::control::grants::revoke::revoke(&svc, &two.request_id, pgjit::contract::events::RevokeTrigger::Early, Utc::now()).await.unwrap();

    // Denied: no approval after it.
    let denied = one(&svc, &john(), create("d1", &name, json!({}))).await;
    refused(call(&svc, &dave, json!({"action": "deny", "request_id": denied.request_id})).await, 400, "reason");
    refused(call(&svc, &eve, json!({"action": "deny", "request_id": denied.request_id, "reason": "no"})).await, 403, "not one of the approvers");
    assert_eq!(one(&svc, &dave, json!({"action": "deny", "request_id": denied.request_id, "reason": "use the replica"})).await.status, RequestStatus::Denied);
    refused(call(&svc, &jane, act("approve", &denied.request_id)).await, 409, "is denied");
    // Cancelled: only by the requester, and no approval after it.
    let cancelled = one(&svc, &john(), create("c1", &name, json!({}))).await;
    refused(call(&svc, &dave, act("cancel", &cancelled.request_id)).await, 403, "only the requester");
    assert_eq!(one(&svc, &john(), act("cancel", &cancelled.request_id)).await.status, RequestStatus::Cancelled);
    refused(call(&svc, &dave, act("approve", &cancelled.request_id)).await, 409, "is cancelled");
    // Expired: not approved within RequestTtlHours (24).
    let late = one(&svc, &john(), create("x1", &name, json!({}))).await;
    refused(call_at(&svc, &dave, act("approve", &late.request_id), Utc::now() + Duration::hours(25)).await, 409, "is expired");
    for request_id in [&denied.request_id, &cancelled.request_id, &late.request_id] {
        assert!(svc.store.get_grant(request_id).await.unwrap().is_none(), "{request_id}: no grant");
    }
    let trail: Vec<String> = svc.store.audit_of(&late.request_id).await.unwrap().into_iter().map(|e| e.event).collect();
    assert_eq!(trail, ["request_created", "request_expired"]);

    // Break-glass with a reason: granted at once, marked for review.
    let urgent = one(&svc, &john(), create("g1", &name, json!({"access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["DELETE"]}], "duration_seconds": 900, "reason": "SEV1"}))).await;
    assert_eq!(urgent.status, RequestStatus::Granted, "{urgent:?}");
    assert!(svc.store.get_grant(&urgent.request_id).await.unwrap().unwrap().break_glass);
    pgjit::control::grants::revoke::revoke(&svc, &urgent.request_id, pgjit::contract::events::RevokeTrigger::Early, Utc::now()).await.unwrap();

    // An integration without flows takes no requests: nobody would decide them.
    let bare = format!("bare-{}", rand::random::<u32>());
    register_integration(&svc, &bare, json!({})).await;
    refused(call(&svc, &john(), create("b1", &bare, json!({}))).await, 403, "has no access flows");
}

#[tokio::test]
async fn a_start_is_checked_again_when_it_comes() {
    let (svc, name) = setup(&[read_flow()]).await;
    let dave = sso_caller("Dba", "dave@corp.com");
    let start = Utc::now() + Duration::seconds(90);
    let start_text = start.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let later = one(&svc, &john(), create("s1", &name, json!({"start_at": start_text}))).await;
    let approved = one(&svc, &dave, act("approve", &later.request_id)).await;
    assert_eq!(approved.status, RequestStatus::Approved, "waits for its start");
    assert!(svc.store.get_grant(&later.request_id).await.unwrap().is_none(), "nothing granted before the start");
    // The one-shot schedule invokes the requests function with the start.
    let schedule = pgjit::aws::schedule::start_schedule_name(&later.request_id);
    let input = pgjit::aws::schedule::input_of(&svc, &schedule).await.unwrap().expect("a start schedule");
    let input: Value = serde_json::from_str(&input).unwrap();
    assert_eq!(input, json!({"start": later.request_id}));
    let event = pgjit::control::requests::completion::start(&svc, &later.request_id, start).await.unwrap().expect("the approval is sent at the start");
    // Granted from the approval it sent (in-process here: no rule delivers the bus's events).
    pgjit::control::handlers::grant(&svc, LambdaEvent::new(event, Context::default())).await.unwrap();
    let granted = one(&svc, &john(), act("get", &later.request_id)).await;
    assert_eq!(granted.status, RequestStatus::Granted, "{granted:?}");
    let fired = pgjit::control::requests::url::invoke(&svc, input, start).await.unwrap();
    assert_eq!(fired["sent"], json!(false), "a start sent once is not sent again");
    pgjit::control::grants::revoke::revoke(&svc, &later.request_id, pgjit::contract::events::RevokeTrigger::Early, Utc::now()).await.unwrap();

    // Someone who left the group before the start gets nothing.
    let gone = one(&svc, &john(), create("s2", &name, json!({"start_at": start_text}))).await;
    one(&svc, &dave, act("approve", &gone.request_id)).await;
    pgjit_tests::leave_group(&svc, "john.doe@corp.com", "engineers").await;
    let fired = pgjit::control::requests::url::invoke(&svc, json!({"start": gone.request_id}), start).await.unwrap();
    assert_eq!(fired["sent"], json!(false));
    let record = svc.store.get_request(&gone.request_id).await.unwrap().unwrap();
    assert_eq!(record.status, RequestStatus::Expired);
    assert!(record.failure.as_deref().unwrap_or("").contains("not one of its requesters"), "{:?}", record.failure);
    assert!(svc.store.get_grant(&gone.request_id).await.unwrap().is_none());
}

#[tokio::test]
async fn the_function_url_takes_the_caller_from_iam_never_from_the_body() {
    let (svc, name) = setup(&[read_flow()]).await;
    let url_event = |iam: Value, body: Value| -> Value {
        json!({"version": "2.0", "routeKey": "$default", "rawPath": "/", "rawQueryString": "", "headers": {"content-type": "application/json"},
            "requestContext": {"accountId": "123456789012", "apiId": "abc", "domainName": "abc.lambda-url.us-east-1.on.aws", "domainPrefix": "abc",
                "http": {"method": "POST", "path": "/", "protocol": "HTTP/1.1", "sourceIp": "203.0.113.9", "userAgent": "pgjit"},
                "requestId": "r1", "routeKey": "$default", "stage": "$default", "time": "05/Dec/2026:10:00:00 +0000", "timeEpoch": 1796464800000_i64,
                "authorizer": iam},
            "body": body.to_string(), "isBase64Encoded": false})
    };
    let jane = json!({"iam": {"accessKey": "ASIA", "accountId": "123456789012", "callerId": "AROADBA:jane",
        "userArn": "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Eng_0123456789abcdef/john.doe@corp.com", "userId": "AROAENG:john.doe@corp.com"}});
    let mut body = create("u1", &name, json!({}));
    body["requester"] = json!({"id": "jane"});
    let out = pgjit::control::requests::url::invoke(&svc, url_event(jane, body.clone()), Utc::now()).await.unwrap();
    assert_eq!(out["statusCode"], json!(201), "{out}");
    let answer: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    assert_eq!(answer["requests"][0]["requester"], json!("john.doe@corp.com"), "IAM's caller, not the body's claim");
    assert_eq!(answer["requests"][0]["status"], json!("pending"));
    // No IAM context (a URL not set to AWS_IAM): refused.
    let out = pgjit::control::requests::url::invoke(&svc, url_event(json!(null), body), Utc::now()).await.unwrap();
    assert_eq!(out["statusCode"], json!(403), "{out}");
}
