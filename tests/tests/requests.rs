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
async fn call_at(
    svc: &Services,
    caller: &Caller,
    body: Value,
    at: chrono::DateTime<Utc>,
) -> Result<Vec<RequestView>, (u16, String)> {
    let action = parse_action(&body.to_string(), at).map_err(|e| (400, e.to_string()))?;
    // Boxed: the handler's and the grant's futures together outgrow a test thread's stack.
    let reply = Box::pin(handle(svc, caller, action, at))
        .await
        .map_err(|e| (e.status(), e.to_string()))?;
    if let Some(event) = reply.sent {
        Box::pin(pgjit::control::handlers::grant(
            svc,
            LambdaEvent::new(event, Context::default()),
        ))
        .await
        .map_err(|e| (500, e.to_string()))?;
        // As the CLI does: the request read again, now with its grant.
        let request_id = reply.requests[0].request_id.clone();
        let again = Box::pin(handle(
            svc,
            caller,
            pgjit::contract::requests::Action::Get { request_id },
            at,
        ))
        .await
        .map_err(|e| (e.status(), e.to_string()))?;
        return Ok(again.requests);
    }
    Ok(reply.requests)
}

async fn call(
    svc: &Services,
    caller: &Caller,
    body: Value,
) -> Result<Vec<RequestView>, (u16, String)> {
    call_at(svc, caller, body, Utc::now()).await
}

async fn one(svc: &Services, caller: &Caller, body: Value) -> RequestView {
    call(svc, caller, body.clone())
        .await
        .unwrap_or_else(|e| panic!("{body}: {e:?}"))
        .remove(0)
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
    body["requester"] =
        json!({"id": "dave@corp.com", "iam_arn": "arn:aws:iam::123456789012:user/dave"});
    let made = one(&svc, &john(), body.clone()).await;
    assert_eq!(
        (
            made.status,
            made.requester.as_str(),
            made.flow.as_str(),
            made.required
        ),
        (
            RequestStatus::Pending,
            "john.doe@corp.com",
            "orders-read",
            1
        )
    );
    // The same create again is the same request; the same token for something else is refused.
    assert_eq!(one(&svc, &john(), body).await.request_id, made.request_id);
    let (status, message) = call(
        &svc,
        &john(),
        create("t1", &name, json!({"duration_seconds": 60})),
    )
    .await
    .unwrap_err();
    assert_eq!(status, 409, "{message}");
    // Awaiting dave's approval, not jane's own list of requests.
    let to_approve = one(
        &svc,
        &dave,
        json!({"action": "list", "filter": "to_approve"}),
    )
    .await;
    assert_eq!(to_approve.request_id, made.request_id);
    assert!(
        call(
            &svc,
            &john(),
            json!({"action": "list", "filter": "to_approve"})
        )
        .await
        .unwrap()
        .is_empty(),
        "never one's own"
    );
    // Approved by dave: the approval goes on the bus and the grant is made from it.
    let approved = one(&svc, &dave, act("approve", &made.request_id)).await;
    assert_eq!(approved.status, RequestStatus::Granted, "{approved:?}");
    let grant = approved.grant.expect("the grant");
    let record = svc
        .store
        .get_grant(&made.request_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            record.flow.as_deref(),
            record.approvers.clone(),
            record.requester.id.as_str()
        ),
        (
            Some("orders-read"),
            vec![sso_caller("Dba", "dave@corp.com").arn],
            "john.doe@corp.com"
        )
    );
    assert_eq!(grant.db_user, record.db_user);
    let mine = call(&svc, &john(), json!({"action": "list", "filter": "mine"}))
        .await
        .unwrap();
    assert_eq!(
        mine.iter()
            .map(|r| (r.request_id.as_str(), r.status))
            .collect::<Vec<_>>(),
        [(made.request_id.as_str(), RequestStatus::Granted)]
    );
    // The audit trail has the request's whole history, in order, once.
    let events: Vec<String> = svc
        .store
        .audit_of(&made.request_id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(
        events,
        [
            "request_created",
            "request_approved",
            "requested",
            "granted"
        ]
    );
    // Another person's request is not readable by a bystander.
    let (status, _) = call(
        &svc,
        &sso_caller("Eng", "eve@corp.com"),
        act("get", &made.request_id),
    )
    .await
    .unwrap_err();
    assert_eq!(status, 403);
    pgjit::control::grants::revoke::revoke(
        &svc,
        &made.request_id,
        pgjit::contract::events::RevokeTrigger::Early,
        Utc::now(),
    )
    .await
    .unwrap();
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
    let (dave, dave_as_sec, jane, eve) = (
        sso_caller("Dba", "dave@corp.com"),
        sso_caller("Sec", "dave@corp.com"),
        sso_caller("Dba", "jane"),
        sso_caller("Eng", "eve@corp.com"),
    );
    let refused = |r: Result<Vec<RequestView>, (u16, String)>, status: u16, needle: &str| {
        let (s, m) = r.expect_err(needle);
        assert!(
            s == status && m.contains(needle),
            "{status} {needle}: got {s} {m}"
        );
    };
    refused(call(&svc, &eve, create("e1", &name, json!({}))).await, 403, "requester \"arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Eng_0123456789abcdef/eve@corp.com\" is not one of its requesters");
    refused(call(&svc, &john(), create("e2", &name, json!({"access": [{"database": "app", "schema": "hr", "table": "salaries", "privileges": ["SELECT"]}]}))).await, 403, "access[0] (database app schema hr table salaries SELECT) is outside its envelope");
    refused(
        call(
            &svc,
            &john(),
            create("e3", &name, json!({"duration_seconds": 3601})),
        )
        .await,
        403,
        "3601 s is longer than its max_duration_seconds 3600",
    );
    refused(call(&svc, &john(), create("e4", &name, json!({"flow": "orders-glass", "access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["DELETE"]}], "duration_seconds": 900, "reason": " "}))).await, 403, "break-glass needs a reason");
    refused(call(&svc, &john(), create("e6", &name, json!({"access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["DELETE"]}], "duration_seconds": 900, "reason": "SEV1"}))).await, 403, "applies only to a request that names it");
    refused(
        call(
            &svc,
            &john(),
            create("e5", "no-such-integration", json!({})),
        )
        .await,
        404,
        "unknown integration",
    );
    for token in ["e1", "e2", "e3", "e4", "e5", "e6"] {
        let id = pgjit::control::requests::request_id_for(&john(), token);
        assert!(
            svc.store.get_request(&id).await.unwrap().is_none(),
            "{token}: nothing stored"
        );
    }

    // Two approvals: the requester cannot give one, a person counts once under two sessions,
    // and someone outside the approvers counts not at all.
    let two = one(&svc, &john(), create("p1", &name, json!({"access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["UPDATE"]}], "duration_seconds": 600}))).await;
    refused(
        call(&svc, &john(), act("approve", &two.request_id)).await,
        403,
        "an approval must come from someone else",
    );
    refused(
        call(
            &svc,
            &sso_caller("Dba", "john.doe@corp.com"),
            act("approve", &two.request_id),
        )
        .await,
        403,
        "an approval must come from someone else",
    );
    refused(
        call(&svc, &eve, act("approve", &two.request_id)).await,
        403,
        "not one of the approvers",
    );
    // A role named like an Identity Center permission set's, made by someone who may make
    // roles, proves nothing: its session "dave@corp.com" is not dave.
    let fake = "AWSReservedSSO_Fake_0123456789abcdef";
    if svc.iam.get_role().role_name(fake).send().await.is_err() {
        let _ = svc
            .iam
            .create_role()
            .role_name(fake)
            .assume_role_policy_document(r#"{"Version":"2012-10-17","Statement":[]}"#)
            .send()
            .await;
    }
    refused(
        call(
            &svc,
            &sso_caller("Fake", "dave@corp.com"),
            act("approve", &two.request_id),
        )
        .await,
        403,
        "not one of the approvers",
    );
    assert_eq!(
        one(&svc, &dave, act("approve", &two.request_id))
            .await
            .approvals
            .len(),
        1
    );
    let again = one(&svc, &dave_as_sec, act("approve", &two.request_id)).await;
    assert_eq!(
        (again.status, again.approvals.len()),
        (RequestStatus::Pending, 1),
        "the same person twice counts once"
    );
    let done = one(&svc, &jane, act("approve", &two.request_id)).await;
    assert_eq!(done.status, RequestStatus::Granted, "{done:?}");
    pgjit::control::grants::revoke::revoke(
        &svc,
        &two.request_id,
        pgjit::contract::events::RevokeTrigger::Early,
        Utc::now(),
    )
    .await
    .unwrap();

    // Denied: no approval after it.
    let denied = one(&svc, &john(), create("d1", &name, json!({}))).await;
    refused(
        call(
            &svc,
            &dave,
            json!({"action": "deny", "request_id": denied.request_id}),
        )
        .await,
        400,
        "reason",
    );
    refused(
        call(
            &svc,
            &eve,
            json!({"action": "deny", "request_id": denied.request_id, "reason": "no"}),
        )
        .await,
        403,
        "not one of the approvers",
    );
    assert_eq!(
        one(
            &svc,
            &dave,
            json!({"action": "deny", "request_id": denied.request_id, "reason": "use the replica"})
        )
        .await
        .status,
        RequestStatus::Denied
    );
    refused(
        call(&svc, &jane, act("approve", &denied.request_id)).await,
        409,
        "is denied",
    );
    // Cancelled: only by the requester, and no approval after it.
    let cancelled = one(&svc, &john(), create("c1", &name, json!({}))).await;
    refused(
        call(&svc, &dave, act("cancel", &cancelled.request_id)).await,
        403,
        "only the requester",
    );
    assert_eq!(
        one(&svc, &john(), act("cancel", &cancelled.request_id))
            .await
            .status,
        RequestStatus::Cancelled
    );
    refused(
        call(&svc, &dave, act("approve", &cancelled.request_id)).await,
        409,
        "is cancelled",
    );
    // Expired: not approved within RequestTtlHours (24).
    let late = one(&svc, &john(), create("x1", &name, json!({}))).await;
    refused(
        call_at(
            &svc,
            &dave,
            act("approve", &late.request_id),
            Utc::now() + Duration::hours(25),
        )
        .await,
        409,
        "is expired",
    );
    for request_id in [&denied.request_id, &cancelled.request_id, &late.request_id] {
        assert!(
            svc.store.get_grant(request_id).await.unwrap().is_none(),
            "{request_id}: no grant"
        );
    }
    let trail: Vec<String> = svc
        .store
        .audit_of(&late.request_id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(trail, ["request_created", "request_expired"]);

    // Break-glass with a reason: granted at once, marked for review.
    let urgent = one(&svc, &john(), create("g1", &name, json!({"flow": "orders-glass", "access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["DELETE"]}], "duration_seconds": 900, "reason": "SEV1"}))).await;
    assert_eq!(urgent.status, RequestStatus::Granted, "{urgent:?}");
    assert!(
        svc.store
            .get_grant(&urgent.request_id)
            .await
            .unwrap()
            .unwrap()
            .break_glass
    );
    pgjit::control::grants::revoke::revoke(
        &svc,
        &urgent.request_id,
        pgjit::contract::events::RevokeTrigger::Early,
        Utc::now(),
    )
    .await
    .unwrap();

    // An integration without flows takes no requests: nobody would decide them.
    let bare = format!("bare-{}", rand::random::<u32>());
    register_integration(&svc, &bare, json!({})).await;
    refused(
        call(&svc, &john(), create("b1", &bare, json!({}))).await,
        403,
        "has no access flows",
    );
}

#[tokio::test]
async fn a_start_is_checked_again_when_it_comes() {
    let (svc, name) = setup(&[read_flow()]).await;
    let dave = sso_caller("Dba", "dave@corp.com");
    let start = Utc::now() + Duration::seconds(90);
    let start_text = start.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let later = one(
        &svc,
        &john(),
        create("s1", &name, json!({"start_at": start_text})),
    )
    .await;
    let approved = one(&svc, &dave, act("approve", &later.request_id)).await;
    assert_eq!(
        approved.status,
        RequestStatus::Approved,
        "waits for its start"
    );
    assert!(
        svc.store
            .get_grant(&later.request_id)
            .await
            .unwrap()
            .is_none(),
        "nothing granted before the start"
    );
    // The one-shot schedule invokes the requests function with the start.
    let schedule = pgjit::aws::schedule::start_schedule_name(&later.request_id);
    let input = pgjit::aws::schedule::input_of(&svc, &schedule)
        .await
        .unwrap()
        .expect("a start schedule");
    let input: Value = serde_json::from_str(&input).unwrap();
    assert_eq!(input, json!({"start": later.request_id}));
    let event = pgjit::control::requests::completion::start(&svc, &later.request_id, start)
        .await
        .unwrap()
        .expect("the approval is sent at the start");
    // Granted from the approval it sent (in-process here: no rule delivers the bus's events).
    pgjit::control::handlers::grant(&svc, LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    let granted = one(&svc, &john(), act("get", &later.request_id)).await;
    assert_eq!(granted.status, RequestStatus::Granted, "{granted:?}");
    let fired = pgjit::control::requests::url::invoke(&svc, input, start)
        .await
        .unwrap();
    assert_eq!(
        fired["sent"],
        json!(false),
        "a start sent once is not sent again"
    );
    pgjit::control::grants::revoke::revoke(
        &svc,
        &later.request_id,
        pgjit::contract::events::RevokeTrigger::Early,
        Utc::now(),
    )
    .await
    .unwrap();

    // Someone who left the group before the start gets nothing.
    let gone = one(
        &svc,
        &john(),
        create("s2", &name, json!({"start_at": start_text})),
    )
    .await;
    one(&svc, &dave, act("approve", &gone.request_id)).await;
    pgjit_tests::leave_group(&svc, "john.doe@corp.com", "engineers").await;
    let fired =
        pgjit::control::requests::url::invoke(&svc, json!({"start": gone.request_id}), start)
            .await
            .unwrap();
    assert_eq!(fired["sent"], json!(false));
    let record = svc
        .store
        .get_request(&gone.request_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, RequestStatus::Expired);
    assert!(
        record
            .failure
            .as_deref()
            .unwrap_or("")
            .contains("not one of its requesters"),
        "{:?}",
        record.failure
    );
    assert!(svc
        .store
        .get_grant(&gone.request_id)
        .await
        .unwrap()
        .is_none());
}

fn url_event(iam: Value, body: String) -> Value {
    json!({"version": "2.0", "routeKey": "$default", "rawPath": "/", "rawQueryString": "", "headers": {"content-type": "application/json"},
        "requestContext": {"accountId": "123456789012", "apiId": "abc", "domainName": "abc.lambda-url.us-east-1.on.aws", "domainPrefix": "abc",
            "http": {"method": "POST", "path": "/", "protocol": "HTTP/1.1", "sourceIp": "203.0.113.9", "userAgent": "pgjit"},
            "requestId": "r1", "routeKey": "$default", "stage": "$default", "time": "05/Dec/2026:10:00:00 +0000", "timeEpoch": 1796464800000_i64,
            "authorizer": iam},
        "body": body, "isBase64Encoded": false})
}

fn iam_context(arn: &str) -> Value {
    json!({"iam": {"accessKey": "AKIA", "accountId": "123456789012", "callerId": "AIDA", "userArn": arn, "userId": "AIDAEXAMPLE"}})
}

/// A call as the CLI makes it: the action's text and the caller's proof for exactly that text.
async fn proved(
    person: &aws_config::SdkConfig,
    action: &Value,
) -> (String, pgjit::aws::caller_proof::Proof) {
    let text = action.to_string();
    let proof =
        pgjit::aws::caller_proof::make(person, "us-east-1", &text, std::time::SystemTime::now())
            .await
            .unwrap();
    (text, proof)
}

#[tokio::test]
async fn the_function_url_takes_the_caller_from_its_proof_never_from_the_body_or_a_forged_context()
{
    let (svc, name) = setup(&[]).await;
    let id: u32 = rand::random();
    let (alice, key, secret) = pgjit_tests::moto_person(&svc, &format!("alice-{id}")).await;
    let (bob, ..) = pgjit_tests::moto_person(&svc, &format!("bob-{id}")).await;
    put_flow(&svc, json!({"name": "orders-read", "integrations": [name], "requesters": {"principals": [alice]},
        "access": [{"database": "app", "schema": "sales", "table": "*", "privileges": ["SELECT"]}], "max_duration_seconds": 3600,
        "approval": {"approvers": {"principals": [bob]}}})).await;
    let as_alice = pgjit_tests::sdk_config_as(&pgjit_tests::env().moto_url, &key, &secret).await;
    let mut action = create("u1", &name, json!({}));
    action["requester"] = json!({"id": "bob", "iam_arn": bob});
    let (text, proof) = proved(&as_alice, &action).await;
    let call = json!({"body": text, "proof": proof}).to_string();
    let out = pgjit::control::requests::url::invoke(
        &svc,
        url_event(iam_context(&alice), call.clone()),
        Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(out["statusCode"], json!(201), "{out}");
    let answer: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        answer["requests"][0]["requester"],
        json!(alice),
        "the proof's caller, not the body's claim"
    );
    assert_eq!(answer["requests"][0]["status"], json!("pending"));
    // A direct invocation that writes the URL's context for bob, with alice's proof: refused.
    let out =
        pgjit::control::requests::url::invoke(&svc, url_event(iam_context(&bob), call), Utc::now())
            .await
            .unwrap();
    assert_eq!(out["statusCode"], json!(403), "{out}");
    // No proof, or no IAM context (a URL not set to AWS_IAM): refused.
    let bare = json!({"body": action.to_string()}).to_string();
    let out = pgjit::control::requests::url::invoke(
        &svc,
        url_event(iam_context(&bob), bare.clone()),
        Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(out["statusCode"], json!(401), "{out}");
    let out = pgjit::control::requests::url::invoke(&svc, url_event(json!(null), bare), Utc::now())
        .await
        .unwrap();
    assert_eq!(out["statusCode"], json!(403), "{out}");
    // A proof older than five minutes: refused.
    let old = pgjit::aws::caller_proof::make(
        &as_alice,
        "us-east-1",
        &text_of(&action),
        std::time::SystemTime::now() - std::time::Duration::from_secs(600),
    )
    .await
    .unwrap();
    let out = pgjit::control::requests::url::invoke(
        &svc,
        url_event(
            iam_context(&alice),
            json!({"body": text_of(&action), "proof": old}).to_string(),
        ),
        Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(out["statusCode"], json!(401), "{out}");
}

fn text_of(action: &Value) -> String {
    action.to_string()
}

/// moto answers GetCallerIdentity for any signature; AWS checks it. A stub STS that checks
/// SigV4 as AWS does (the caller's secret, the signed headers, the body) shows what the proof
/// binds: a proof is refused for any other call's body, for a tampered signature, and for
/// another key.
#[tokio::test]
async fn a_proof_counts_only_for_the_call_it_was_signed_for() {
    let (arn, key, secret) = (
        "arn:aws:iam::123456789012:user/alice".to_owned(),
        "AKIAALICE".to_owned(),
        "alice-secret".to_owned(),
    );
    let sts = checking_sts(key.clone(), secret.clone(), arn.clone()).await;
    let as_alice = pgjit_tests::sdk_config_as(&sts, &key, &secret).await;
    let verifier = pgjit_tests::sdk_config_as(&sts, "AKIAPGJIT", "pgjit-secret").await;
    let body = json!({"action": "approve", "request_id": "REQ-1"}).to_string();
    let proof =
        pgjit::aws::caller_proof::make(&as_alice, "us-east-1", &body, std::time::SystemTime::now())
            .await
            .unwrap();
    let caller =
        pgjit::aws::caller_proof::verify(&verifier, "us-east-1", &proof, &body, Utc::now())
            .await
            .unwrap();
    assert_eq!(caller.arn, arn);
    let other = json!({"action": "approve", "request_id": "REQ-2"}).to_string();
    assert!(
        matches!(
            pgjit::aws::caller_proof::verify(&verifier, "us-east-1", &proof, &other, Utc::now())
                .await,
            Err(pgjit::aws::caller_proof::ProofError::Refused(403))
        ),
        "another body"
    );
    let mut tampered = proof.clone();
    tampered.authorization = tampered.authorization.replace("Signature=", "Signature=0");
    assert!(
        pgjit::aws::caller_proof::verify(&verifier, "us-east-1", &tampered, &body, Utc::now())
            .await
            .is_err(),
        "a tampered signature"
    );
    let as_mallory = pgjit_tests::sdk_config_as(&sts, &key, "not-alices-secret").await;
    let forged = pgjit::aws::caller_proof::make(
        &as_mallory,
        "us-east-1",
        &body,
        std::time::SystemTime::now(),
    )
    .await
    .unwrap();
    assert!(
        pgjit::aws::caller_proof::verify(&verifier, "us-east-1", &forged, &body, Utc::now())
            .await
            .is_err(),
        "alice's key id without her secret"
    );
}

/// A one-route STS: checks the request's SigV4 signature with the one known key, as AWS does,
/// and answers GetCallerIdentity for it; 403 otherwise. Returns its URL.
async fn checking_sts(key: String, secret: String, arn: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (key, secret, arn) = (key.clone(), secret.clone(), arn.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        while buf.len() < end + 4 + length {
                            let n = socket.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        break (head, buf[end + 4..].to_vec());
                    }
                };
                let headers: Vec<(String, String)> = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let get = |name: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let claimed = get("authorization");
                let signed_names: Vec<String> = claimed
                    .split("SignedHeaders=")
                    .nth(1)
                    .and_then(|r| r.split(',').next())
                    .unwrap_or("")
                    .split(';')
                    .map(str::to_owned)
                    .collect();
                let date =
                    chrono::NaiveDateTime::parse_from_str(&get("x-amz-date"), "%Y%m%dT%H%M%SZ")
                        .map(|d| d.and_utc())
                        .unwrap_or_default();
                let creds =
                    aws_credential_types::Credentials::new(&key, &secret, None, None, "stub");
                let identity: aws_smithy_runtime_api::client::identity::Identity = creds.into();
                let params: aws_sigv4::http_request::SigningParams =
                    aws_sigv4::sign::v4::SigningParams::builder()
                        .identity(&identity)
                        .region("us-east-1")
                        .name("sts")
                        .time(std::time::SystemTime::from(date))
                        .settings(aws_sigv4::http_request::SigningSettings::default())
                        .build()
                        .unwrap()
                        .into();
                let to_sign: Vec<(String, String)> = headers
                    .iter()
                    .filter(|(k, _)| signed_names.contains(k) && k != "x-amz-date")
                    .cloned()
                    .collect();
                let uri = format!("http://{}/", get("host"));
                let signable = aws_sigv4::http_request::SignableRequest::new(
                    "POST",
                    &uri,
                    to_sign.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    aws_sigv4::http_request::SignableBody::Bytes(&body),
                )
                .unwrap();
                let (instructions, _) = aws_sigv4::http_request::sign(signable, &params)
                    .unwrap()
                    .into_parts();
                let (added, _) = instructions.into_parts();
                let expected = added
                    .iter()
                    .find(|h| h.name().eq_ignore_ascii_case("authorization"))
                    .map(|h| h.value().to_owned())
                    .unwrap_or_default();
                let good = claimed.contains(&format!("Credential={key}/")) && expected == claimed;
                let (status, text) = if good {
                    ("200 OK", format!("<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>{arn}</Arn><UserId>AIDAALICE</UserId><Account>123456789012</Account></GetCallerIdentityResult></GetCallerIdentityResponse>"))
                } else {
                    ("403 Forbidden", "<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code></Error></ErrorResponse>".to_owned())
                };
                let response = format!("HTTP/1.1 {status}\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}", text.len());
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    url
}

/// A sender that died between claiming a request's approval and PutEvents (or whose PutEvents
/// failed) leaves it claimed: the next approval call sends it, and it is granted once; a
/// cancellation after the claim is refused, since the approval is on its way.
#[tokio::test]
async fn an_approval_claimed_but_not_sent_is_sent_by_the_next_call_and_cannot_be_cancelled() {
    let (svc, name) = setup(&[read_flow()]).await;
    let dave = sso_caller("Dba", "dave@corp.com");
    let made = one(&svc, &john(), create("k1", &name, json!({}))).await;
    // As a sender that died after its claim: approved and claimed, no event id.
    let mut record = svc
        .store
        .get_request(&made.request_id)
        .await
        .unwrap()
        .unwrap();
    record
        .approvals
        .push(pgjit::aws::store::requests::Decision {
            by: "dave@corp.com".into(),
            arn: dave.arn.clone(),
            at: Utc::now(),
            reason: None,
        });
    record.sent_at = Some(Utc::now());
    record.set_status(RequestStatus::Approved, Utc::now());
    svc.store.update_request(&mut record).await.unwrap();
    let (status, message) = call(&svc, &john(), act("cancel", &made.request_id))
        .await
        .unwrap_err();
    assert!(
        status == 409 && message.contains("is approved"),
        "{status} {message}"
    );
    let sent = one(
        &svc,
        &sso_caller("Dba", "jane"),
        act("approve", &made.request_id),
    )
    .await;
    assert_eq!(sent.status, RequestStatus::Granted, "{sent:?}");
    assert!(
        svc.store
            .get_request(&made.request_id)
            .await
            .unwrap()
            .unwrap()
            .event_id
            .is_some(),
        "the bus's id is recorded"
    );
    // Sent: the next call has nothing to send.
    let (status, _) = call(&svc, &dave, act("approve", &made.request_id))
        .await
        .unwrap_err();
    assert_eq!(status, 409);
    pgjit::control::grants::revoke::revoke(
        &svc,
        &made.request_id,
        pgjit::contract::events::RevokeTrigger::Early,
        Utc::now(),
    )
    .await
    .unwrap();
}

/// Approvers learn of every step through the event bus (the template routes these to the
/// notification topic): each event once, with what an approver needs to act on it.
#[tokio::test]
async fn every_step_of_a_request_is_told_on_the_event_bus() {
    let bus = format!("events-{}", rand::random::<u32>());
    let svc = directory_services(Some(bus.clone())).await;
    svc.events
        .create_event_bus()
        .name(&bus)
        .send()
        .await
        .unwrap();
    let name = format!("told-{}", rand::random::<u32>());
    register_integration(&svc, &name, json!({})).await;
    let mut flow = read_flow();
    flow["integrations"] = json!([name]);
    put_flow(&svc, flow).await;
    let kinds = [
        "Access Request Created",
        "Access Request Approved",
        "Access Request Denied",
        "Access Request Cancelled",
        "Access Request Expired",
    ];
    let (sqs, queue) = pgjit_tests::queue_for(&svc, &bus, json!({"detail-type": kinds})).await;
    let dave = sso_caller("Dba", "dave@corp.com");

    let granted = one(&svc, &john(), create("n1", &name, json!({}))).await;
    one(&svc, &dave, act("approve", &granted.request_id)).await;
    let denied = one(&svc, &john(), create("n2", &name, json!({}))).await;
    one(
        &svc,
        &dave,
        json!({"action": "deny", "request_id": denied.request_id, "reason": "use the replica"}),
    )
    .await;
    let cancelled = one(&svc, &john(), create("n3", &name, json!({}))).await;
    one(&svc, &john(), act("cancel", &cancelled.request_id)).await;
    let late = one(&svc, &john(), create("n4", &name, json!({}))).await;
    let (expired, failed) =
        pgjit::control::requests::completion::sweep(&svc, Utc::now() + Duration::hours(25)).await;
    assert_eq!((expired, failed), (1, Vec::<String>::new()));

    let mut events = Vec::new();
    for _ in 0..10 {
        events.extend(pgjit_tests::received(&sqs, &queue).await);
        if events.len() >= 8 {
            break;
        }
    }
    let mut told: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["detail"]["request_id"].as_str().unwrap().to_owned(),
                e["detail-type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    told.sort();
    told.dedup();
    let mut expected = vec![
        (granted.request_id.clone(), kinds[0].to_owned()),
        (granted.request_id.clone(), kinds[1].to_owned()),
        (denied.request_id.clone(), kinds[0].to_owned()),
        (denied.request_id.clone(), kinds[2].to_owned()),
        (cancelled.request_id.clone(), kinds[0].to_owned()),
        (cancelled.request_id.clone(), kinds[3].to_owned()),
        (late.request_id.clone(), kinds[0].to_owned()),
        (late.request_id.clone(), kinds[4].to_owned()),
    ];
    expected.sort();
    assert_eq!(told, expected);
    assert_eq!(events.len(), 8, "each step told once: {events:?}");
    // What an approver acts on: who asks, for what, why, for how long, under which flow, who may approve.
    let created = events
        .iter()
        .find(|e| {
            e["detail-type"] == kinds[0] && e["detail"]["request_id"] == json!(granted.request_id)
        })
        .unwrap();
    let detail = &created["detail"];
    assert_eq!(
        (
            detail["requester"]["id"].as_str(),
            detail["flow"].as_str(),
            detail["reason"].as_str(),
            detail["duration_seconds"].as_u64()
        ),
        (
            Some("john.doe@corp.com"),
            Some("orders-read"),
            Some("INC-42 stuck orders"),
            Some(1800)
        )
    );
    assert_eq!(detail["access"][0]["table"], json!("orders"));
    assert_eq!(detail["approvers"]["groups"], json!(["dba"]));
    let approved = events
        .iter()
        .find(|e| e["detail-type"] == kinds[1])
        .unwrap();
    assert_eq!(approved["detail"]["approvers"], json!([dave.id()]));
    let denial = events
        .iter()
        .find(|e| e["detail-type"] == kinds[2])
        .unwrap();
    assert_eq!(
        (
            denial["detail"]["by"].as_str(),
            denial["detail"]["reason"].as_str()
        ),
        (Some("dave@corp.com"), Some("use the replica"))
    );
    pgjit::control::grants::revoke::revoke(
        &svc,
        &granted.request_id,
        pgjit::contract::events::RevokeTrigger::Early,
        Utc::now(),
    )
    .await
    .unwrap();
}
