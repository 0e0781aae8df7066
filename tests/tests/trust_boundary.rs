//! The trust boundary, attacked: each test performs an attack an approval sender, a requester or a
//! bystander could try, and shows that it fails with a clear message and changes nothing.
//! (The database side, what a departed user leaves behind and which roles may be handed out, is
//! in `engine.rs`; the template's IAM statements in `deployment.rs`.)

use chrono::{Duration, Utc};
use lambda_runtime::{Context, LambdaEvent};
use pgjit::aws::Services;
use pgjit::control::grants::GrantResult;
use pgjit_tests::{approval, env, isolated_services, isolated_services_with, orders_access, register_integration, role_exists, secret_names};
use serde_json::{json, Value};

async fn grant(svc: &Services, event: Value) -> Result<GrantResult, String> {
    pgjit::control::handlers::grant(svc, LambdaEvent::new(pgjit_tests::signed(svc, event).await, Context::default())).await.map_err(|e| e.to_string())
}

/// What pgjit has made for an integration: its roles on the server, credential secrets and
/// revoke schedules in moto.
async fn footprint(svc: &Services, prefix: &str) -> (i64, usize, usize) {
    let su = env().superuser("postgres").await;
    let roles: i64 = su.query_one("SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)", &[&prefix]).await.unwrap().get(0);
    let secrets = secret_names(svc).await.iter().filter(|n| n.starts_with(&svc.config.credentials_prefix)).count();
    let schedules = svc.scheduler.list_schedules().group_name(&svc.config.schedule_group).send().await.unwrap().schedules().len();
    (roles, secrets, schedules)
}

#[tokio::test]
async fn self_approved_stale_and_future_approvals_grant_nothing() {
    let svc = isolated_services().await;
    let integration = register_integration(&svc, "guarded", json!({})).await;
    let before = footprint(&svc, &integration.user_prefix).await;
    let sent = |offset: Duration| (Utc::now() + offset).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut cases = Vec::new();
    // The requester approves its own request (case and spaces do not disguise it).
    let mut event = approval("SELF-1", "guarded", "mallory@corp.com", orders_access());
    event["detail"]["approver"] = json!(" Mallory@Corp.com");
    cases.push((event, "is the requester"));
    // A captured approval replayed two days later.
    let mut event = approval("STALE-1", "guarded", "john@corp.com", orders_access());
    event["time"] = json!(sent(-Duration::days(2)));
    cases.push((event, "older than 3600 s"));
    // One dated ahead to outlive the age limit.
    let mut event = approval("FUTURE-1", "guarded", "john@corp.com", orders_access());
    event["time"] = json!(sent(Duration::hours(3)));
    cases.push((event, "in the future"));
    for (event, why) in cases {
        let request_id = event["detail"]["request_id"].as_str().unwrap().to_owned();
        let err = grant(&svc, event).await.expect_err(why);
        assert!(err.contains(why), "{request_id}: {err}");
        assert!(svc.store.get_grant(&request_id).await.unwrap().is_none(), "{request_id}: no record");
        assert!(svc.store.audit_of(&request_id).await.unwrap().is_empty(), "{request_id}: no audit entry");
    }
    assert_eq!(footprint(&svc, &integration.user_prefix).await, before, "no role, secret or schedule");

    // An integration may allow self-approval explicitly (a break-glass team, say).
    register_integration(&svc, "selfserve", json!({"allow_self_approval": true, "user_prefix": integration.user_prefix})).await;
    let mut event = approval("SELF-2", "selfserve", "mallory@corp.com", orders_access());
    event["detail"]["approver"] = json!("mallory@corp.com");
    let granted = grant(&svc, event).await.expect("allowed explicitly");
    pgjit::control::grants::revoke::revoke(&svc, &granted.request_id, pgjit::contract::events::RevokeTrigger::Early, Utc::now()).await.unwrap();
}

#[tokio::test]
async fn iam_mode_never_writes_on_foreign_identity_center_service_or_protected_roles() {
    let id: u32 = rand::random();
    let protected = format!("pgjit-stack-{id}-");
    let p = protected.clone();
    let svc = isolated_services_with(move |n| (n == "PGJIT_PROTECTED_ROLES").then(|| format!("{p}*,BreakGlass-{id}"))).await;
    let instance = format!("iam-guard-{id}");
    pgjit_tests::moto_rds_instance(&svc, &instance).await;
    let integration = register_integration(&svc, "iam-guarded", json!({"kind": "rds", "instance_id": instance, "region": "us-east-1", "access_mode": "iam"})).await;
    // pgjit's own function role, and a break-glass role, exist in the account.
    let own_role = format!("{protected}GrantFunctionRole-ABC");
    for role in [own_role.clone(), format!("BreakGlass-{id}")] {
        svc.iam.create_role().role_name(&role).assume_role_policy_document("{}").send().await.unwrap();
    }
    let before = footprint(&svc, &integration.user_prefix).await;
    let cases = [
        ("arn:aws:iam::210987654321:user/john".to_owned(), "pgjit's account"),
        (format!("arn:aws:iam::123456789012:role/aws-reserved/sso.amazonaws.com/eu-west-1/AWSReservedSSO_Admin_{id}"), "IAM Identity Center"),
        (format!("arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Admin_{id}/jane@corp.com"), "use password access mode"),
        ("arn:aws:iam::123456789012:role/aws-service-role/rds.amazonaws.com/AWSServiceRoleForRDS".to_owned(), "service-linked"),
        (format!("arn:aws:iam::123456789012:role/{own_role}"), "protected"),
        (format!("arn:aws:sts::123456789012:assumed-role/BreakGlass-{id}/ops"), "protected"),
    ];
    for (i, (arn, why)) in cases.iter().enumerate() {
        let request_id = format!("IAM-ATTACK-{i}");
        let mut event = approval(&request_id, "iam-guarded", "x@corp.com", orders_access());
        event["detail"]["requester"]["iam_arn"] = json!(arn);
        let err = grant(&svc, event).await.expect_err(arn);
        assert!(err.contains(why), "{arn}: {err}");
        assert!(svc.store.get_grant(&request_id).await.unwrap().is_none(), "{arn}: no record");
    }
    for role in [own_role, format!("BreakGlass-{id}")] {
        let policies = svc.iam.list_role_policies().role_name(&role).send().await.unwrap();
        assert!(policies.policy_names().is_empty(), "{role}: no policy written");
    }
    assert_eq!(footprint(&svc, &integration.user_prefix).await, before);

    // Password mode names the requester's principal only for the secret's policy: a foreign
    // account is refused there too, unless trusted.
    register_integration(&svc, "pw-guarded", json!({"user_prefix": integration.user_prefix})).await;
    let mut event = approval("IAM-ATTACK-PW", "pw-guarded", "x@corp.com", orders_access());
    event["detail"]["requester"]["iam_arn"] = json!("arn:aws:iam::210987654321:user/john");
    let err = grant(&svc, event).await.expect_err("foreign account");
    assert!(err.contains("PGJIT_TRUSTED_ACCOUNTS"), "{err}");
}

#[tokio::test]
async fn colliding_request_ids_never_share_a_secret_a_policy_or_a_schedule() {
    let svc = isolated_services().await;
    let integration = register_integration(&svc, "colliding", json!({})).await;
    // `:` is not allowed in a secret name on AWS (moto accepts it); the two ids must stay apart.
    let a = grant(&svc, approval("CHG:2041/a", "colliding", "ann@corp.com", orders_access())).await.expect("CHG:2041/a");
    let b = grant(&svc, approval("CHG_2041_a", "colliding", "bob@corp.com", orders_access())).await.expect("CHG_2041_a");
    let (sa, sb) = (a.secret_arn.clone().unwrap(), b.secret_arn.clone().unwrap());
    assert_ne!(sa, sb);
    for id in ["CHG:2041/a", "CHG_2041_a"] {
        let name = pgjit::aws::credentials::secret_name(&svc, &integration.name, id);
        assert!(name.len() <= 512 && name.bytes().all(|c| c.is_ascii_alphanumeric() || b"/_+=.@-".contains(&c)), "{name} is a valid AWS secret name");
    }
    assert_ne!(pgjit::aws::iam::policy_name("CHG:2041/a"), pgjit::aws::iam::policy_name("CHG_2041_a"));
    assert_ne!(pgjit::aws::schedule::schedule_name("CHG:2041/a"), pgjit::aws::schedule::schedule_name("CHG_2041_a"));
    // Revoking one leaves the other whole.
    pgjit::control::grants::revoke::revoke(&svc, "CHG:2041/a", pgjit::contract::events::RevokeTrigger::Early, Utc::now()).await.unwrap();
    let value = pgjit::aws::credentials::read(&svc, &sb).await.expect("the other secret is still there");
    let value: Value = serde_json::from_str(value.expose()).unwrap();
    let password = pgjit::SecretString::new(value["password"].as_str().unwrap());
    env().login_as(&b.db_user, &password, "app").await.expect("the other grant still works");
    pgjit::control::grants::revoke::revoke(&svc, "CHG_2041_a", pgjit::contract::events::RevokeTrigger::Early, Utc::now()).await.unwrap();
}

#[tokio::test]
async fn a_secret_of_another_request_is_never_overwritten_or_deleted() {
    let svc = isolated_services().await;
    let integration = register_integration(&svc, "owned", json!({})).await;
    // A secret already at the name REQ-TAKEN would use, belonging to another request.
    let name = pgjit::aws::credentials::secret_name(&svc, &integration.name, "REQ-TAKEN");
    let tag = aws_sdk_secretsmanager::types::Tag::builder().key("pgjit:request_id").value("REQ-OTHER").build();
    svc.secrets.create_secret().name(&name).secret_string("someone else's").tags(tag).send().await.unwrap();
    let err = grant(&svc, approval("REQ-TAKEN", "owned", "x@corp.com", orders_access())).await.expect_err("not ours");
    assert!(err.contains("does not belong to this request"), "{err}");
    let kept = pgjit::aws::credentials::read(&svc, &name).await.expect("still there");
    assert_eq!(kept.expose(), "someone else's", "not overwritten");
    let record = svc.store.get_grant("REQ-TAKEN").await.unwrap().unwrap();
    assert_eq!(record.status, pgjit::aws::store::GrantStatus::Failed);
    assert!(!role_exists(&env().superuser("postgres").await, &record.db_user).await, "the grant was undone");
    let err = pgjit::aws::credentials::delete(&svc, &name, "REQ-TAKEN", pgjit::aws::credentials::Foreign::Refuse).await.expect_err("not ours to delete");
    assert!(pgjit::engine::postgres::error_chain(&err).contains("does not belong"), "{err}");
    assert!(pgjit::aws::credentials::read(&svc, &name).await.is_ok(), "not deleted");
}

#[tokio::test]
async fn a_credentials_secret_is_readable_by_the_requester_and_the_readers_only() {
    let reader = "arn:aws:iam::123456789012:role/approval-tool".to_owned();
    let r = reader.clone();
    let svc = isolated_services_with(move |n| match n {
        "PGJIT_CREDENTIAL_READERS" => Some(r.clone()),
        "PGJIT_CREDENTIALS_KMS_KEY_ID" => Some("alias/pgjit-credentials".into()),
        _ => None,
    })
    .await;
    register_integration(&svc, "private", json!({})).await;
    let mut event = approval("REQ-PRIVATE", "private", "john@corp.com", orders_access());
    event["detail"]["requester"]["iam_arn"] = json!("arn:aws:iam::123456789012:user/dev/john");
    let granted = grant(&svc, event).await.unwrap();
    let arn = granted.secret_arn.unwrap();
    let policy = svc.secrets.get_resource_policy().secret_id(&arn).send().await.unwrap().resource_policy.expect("a resource policy");
    let policy: Value = serde_json::from_str(&policy).unwrap();
    let deny = policy["Statement"].as_array().unwrap().iter().find(|s| s["Effect"] == "Deny").expect("a Deny for everyone else");
    assert_eq!(deny["Principal"], "*");
    assert_eq!(deny["Action"], "secretsmanager:GetSecretValue");
    assert_eq!(deny["Condition"]["ArnNotLike"]["aws:PrincipalArn"], json!(["arn:aws:iam::123456789012:user/dev/john", reader]));
    let allow = policy["Statement"].as_array().unwrap().iter().find(|s| s["Effect"] == "Allow").expect("the requester may read");
    assert_eq!(allow["Condition"]["ArnLike"]["aws:PrincipalArn"], json!(["arn:aws:iam::123456789012:user/dev/john"]));
    let described = svc.secrets.describe_secret().secret_id(&arn).send().await.unwrap();
    assert_eq!(described.kms_key_id(), Some("alias/pgjit-credentials"), "encrypted with the configured key");
    pgjit::control::grants::revoke::revoke(&svc, "REQ-PRIVATE", pgjit::contract::events::RevokeTrigger::Early, Utc::now()).await.unwrap();
}

#[tokio::test]
async fn cleanup_never_drops_a_role_pgjit_did_not_create() {
    let e = env();
    let svc = isolated_services_with(|n| (n == "PGJIT_RECONCILE_GRACE_SECONDS").then(|| "3600".into())).await;
    let integration = register_integration(&svc, "dba-land", json!({})).await;
    let prefix = integration.user_prefix.clone();
    let su = e.superuser("postgres").await;
    // A DBA's roles that happen to carry the prefix, one even shaped like a login role of pgjit's.
    let (readonly, lookalike) = (format!("{prefix}readonly"), format!("{prefix}dba_abcd1234"));
    su.batch_execute(&format!("CREATE ROLE {readonly} NOLOGIN; CREATE ROLE {lookalike} LOGIN")).await.unwrap();
    // pgjit's own orphan, made just now: within the grace period (the store's index may lag).
    let orphan = pgjit_tests::orphan_role(&prefix).await;

    let report = pgjit::control::cleanup::run(&svc, Utc::now()).await.unwrap();
    assert!(report.orphans.is_empty() && report.errors.is_empty(), "{report:?}");
    assert!(role_exists(&su, &orphan).await, "too young to be an orphan");
    // Past the grace period pgjit's orphan goes; the DBA's roles stay, whatever their names.
    let report = pgjit::control::cleanup::run(&svc, Utc::now() + Duration::hours(2)).await.unwrap();
    assert_eq!(report.orphans, [format!("dba-land/{orphan}")], "{report:?}");
    assert!(!role_exists(&su, &orphan).await);
    for dba in [&readonly, &lookalike] {
        assert!(role_exists(&su, dba).await, "{dba} was never pgjit's");
    }
    su.batch_execute(&format!("DROP ROLE {readonly}; DROP ROLE {lookalike}")).await.unwrap();
}

/// The policy a secret gets, evaluated as IAM would for each caller that matters: the
/// requester's own session reads; another session of the same role (another user of one
/// Identity Center permission set) does not; pgjit's grant function (an extension rewrites
/// `expires_at`) and the configured reader do; a bystander does not.
#[tokio::test]
async fn a_credentials_secret_is_read_by_the_requesters_session_and_pgjits_own_role_only() {
    use pgjit_tests::policy::{evaluate, Caller, Decision};
    let grant_role = "arn:aws:iam::123456789012:role/pgjit-GrantFunctionRole-ABC";
    let reader = "arn:aws:iam::123456789012:role/approval-tool";
    let svc = isolated_services_with(move |n| match n {
        "PGJIT_FUNCTION_ROLE_ARNS" => Some(grant_role.into()),
        "PGJIT_CREDENTIAL_READERS" => Some(reader.into()),
        _ => None,
    })
    .await;
    register_integration(&svc, "sessions", json!({})).await;
    let sso = "AWSReservedSSO_Dev_0123456789abcdef";
    let mut event = approval("REQ-SESSION", "sessions", "jroe@corp.com", orders_access());
    event["detail"]["requester"]["iam_arn"] = json!(format!("arn:aws:sts::123456789012:assumed-role/{sso}/jane@corp.com"));
    let granted = grant(&svc, event).await.unwrap();
    let arn = granted.secret_arn.clone().unwrap();
    let policy = svc.secrets.get_resource_policy().secret_id(&arn).send().await.unwrap().resource_policy.expect("a resource policy");
    let sso_path = format!("aws-reserved/sso.amazonaws.com/eu-west-1/{sso}");
    let read = "secretsmanager:GetSecretValue";
    let cases = [
        (Caller::session("123456789012", &sso_path, "AROASSODEV", "jane@corp.com"), Decision::Allowed, "the requester's session"),
        (Caller::session("123456789012", &sso_path, "AROASSODEV", "mallory@corp.com"), Decision::Denied, "another session of the requester's role"),
        (Caller::session("123456789012", &sso_path, "AROASSODEV", "jane@corp.com.evil"), Decision::Denied, "a session name that starts like the requester's"),
        (Caller::session("123456789012", "pgjit-GrantFunctionRole-ABC", "AROAGRANT", "pgjit-grant"), Decision::Allowed, "the grant function (extension)"),
        (Caller::session("123456789012", "approval-tool", "AROATOOL", "x"), Decision::Allowed, "the configured reader"),
        (Caller::session("123456789012", "pgjit-RevokeFunctionRole-XYZ", "AROAREV", "pgjit-revoke"), Decision::Denied, "a pgjit role that never reads it"),
        (Caller::user("123456789012", "mallory", "AIDAMALLORY"), Decision::Denied, "a bystander"),
    ];
    for (caller, expected, who) in &cases {
        assert_eq!(evaluate(&policy, caller, read), *expected, "{who}: {policy}");
    }
    // The extension that reads the secret with the grant function's role goes through.
    let extended = pgjit::control::handlers::grant(&svc, LambdaEvent::new(pgjit_tests::signed(&svc, pgjit_tests::extension("EXT-SESSION", "REQ-SESSION", "lead@corp.com", 7000)).await, Context::default())).await;
    assert!(extended.is_ok(), "{extended:?}");
    pgjit::control::grants::revoke::revoke(&svc, "REQ-SESSION", pgjit::contract::events::RevokeTrigger::Early, Utc::now()).await.unwrap();
}

/// What two request ids whose schedule names collide would do: request B's name already holds
/// a schedule that revokes request A. B's grant must not take it as its own (an early revoke of
/// B would delete A's only revoke), and its undo must not delete it either.
#[tokio::test]
async fn a_schedule_that_revokes_another_request_is_never_taken_or_deleted() {
    let svc = isolated_services().await;
    let integration = register_integration(&svc, "sharing", json!({})).await;
    let name = pgjit::aws::schedule::schedule_name("SHARE-B");
    assert_eq!(name.len() - name.rfind('-').unwrap() - 1, 32, "128 bits of the request id's hash: {name}");
    let at = Utc::now() + Duration::hours(1);
    let target = aws_sdk_scheduler::types::Target::builder()
        .arn(&svc.config.revoke_function_arn)
        .role_arn(&svc.config.scheduler_role_arn)
        .input(pgjit::aws::schedule::revoke_input("SHARE-A"))
        .build()
        .unwrap();
    svc.scheduler
        .create_schedule()
        .name(&name)
        .group_name(&svc.config.schedule_group)
        .schedule_expression(pgjit::aws::schedule::at_expression(at))
        .flexible_time_window(aws_sdk_scheduler::types::FlexibleTimeWindow::builder().mode(aws_sdk_scheduler::types::FlexibleTimeWindowMode::Off).build().unwrap())
        .target(target)
        .send()
        .await
        .unwrap();
    let before = footprint(&svc, &integration.user_prefix).await;
    let err = grant(&svc, approval("SHARE-B", "sharing", "bob@corp.com", orders_access())).await.expect_err("a shared schedule");
    assert!(err.contains("does not revoke request \"SHARE-B\""), "{err}");
    let (_, secrets, schedules) = footprint(&svc, &integration.user_prefix).await;
    assert_eq!((secrets, schedules), (before.1, before.2), "no secret left, and A's schedule kept");
    let record = svc.store.get_grant("SHARE-B").await.unwrap().unwrap();
    assert!(!role_exists(&env().superuser("postgres").await, &record.db_user).await, "no login role left");
    let kept = svc.scheduler.get_schedule().name(&name).group_name(&svc.config.schedule_group).send().await.expect("A's schedule is still there");
    assert_eq!(kept.target().and_then(|t| t.input()), Some(pgjit::aws::schedule::revoke_input("SHARE-A").as_str()));
    assert_eq!(svc.store.get_grant("SHARE-B").await.unwrap().unwrap().status, pgjit::aws::store::GrantStatus::Failed);
}

/// The scheduler's `{"request_id"}` input can be sent by whoever may invoke the revoke function,
/// and cleanup may hold a copy read before an extension: neither takes an unexpired grant away.
#[tokio::test]
async fn a_scheduled_or_cleanup_revoke_before_expiry_changes_nothing() {
    let svc = isolated_services().await;
    register_integration(&svc, "early-bird", json!({})).await;
    let granted = grant(&svc, approval("NOT-YET-1", "early-bird", "john@corp.com", orders_access())).await.unwrap();
    // A forged scheduler input, straight to the function.
    let result = pgjit::control::handlers::revoke(&svc, LambdaEvent::new(json!({"request_id": "NOT-YET-1"}), Context::default())).await.unwrap();
    assert_eq!((result.status, result.repeated), (pgjit::aws::store::GrantStatus::Active, true));
    // Cleanup read the record when it was due; then an extension moved it (and its version).
    let mut stale = svc.store.get_grant("NOT-YET-1").await.unwrap().unwrap();
    stale.expires_at = Utc::now() - Duration::minutes(1);
    let extension = pgjit_tests::extension("EXT-NOT-YET", "NOT-YET-1", "lead@corp.com", 7000);
    pgjit::control::handlers::grant(&svc, LambdaEvent::new(pgjit_tests::signed(&svc, extension).await, Context::default())).await.expect("extended");
    let result = pgjit::control::grants::revoke::revoke_with(&svc, "NOT-YET-1", Some(stale), None, pgjit::contract::events::RevokeTrigger::Cleanup, Utc::now()).await.unwrap();
    assert_eq!(result.status, pgjit::aws::store::GrantStatus::Active);
    let record = svc.store.get_grant("NOT-YET-1").await.unwrap().unwrap();
    assert_eq!(record.status, pgjit::aws::store::GrantStatus::Active, "still active");
    let value = pgjit::aws::credentials::read(&svc, granted.secret_arn.as_deref().unwrap()).await.expect("the secret is still there");
    let value: Value = serde_json::from_str(value.expose()).unwrap();
    env().login_as(&granted.db_user, &pgjit::SecretString::new(value["password"].as_str().unwrap()), "app").await.expect("the login still works");
    // The schedule fires at the expiry's whole second, here a little before this clock's
    // expiry: the same input revokes (had it been refused, the one-shot schedule would be gone).
    let fired_at = record.expires_at - Duration::milliseconds(999);
    let result = pgjit::control::grants::revoke::revoke(&svc, "NOT-YET-1", pgjit::contract::events::RevokeTrigger::Scheduled, fired_at).await.unwrap();
    assert!(!result.repeated && result.status != pgjit::aws::store::GrantStatus::Active, "{result:?}");
}

/// Before PostgreSQL 16 a temporary user can act as its profile role: a SECURITY DEFINER
/// function made that way is owned by a role that outlives the user. After revoke and cleanup,
/// a bystander must not read the table through it (from 16, SET ROLE to the profile is refused).
#[tokio::test]
async fn a_function_made_as_the_profile_role_does_not_outlive_the_grant() {
    let svc = isolated_services().await;
    register_integration(&svc, "profiled", json!({})).await;
    let access = json!([
        {"database": "app", "schema": "sales", "privileges": ["USAGE", "CREATE"]},
        {"database": "app", "schema": "sales", "table": "orders", "privileges": ["SELECT"]}
    ]);
    let granted = grant(&svc, approval("PROFILE-OWN-1", "profiled", "maker@corp.com", access)).await.unwrap();
    let su = env().superuser("app").await;
    let version: i32 = su.query_one("SELECT current_setting('server_version_num')::int", &[]).await.unwrap().get(0);
    let profile: String = su
        .query_one("SELECT r.rolname::text FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid WHERE m.member = $1::text::regrole", &[&granted.db_user])
        .await
        .unwrap()
        .get(0);
    let value = pgjit::aws::credentials::read(&svc, granted.secret_arn.as_deref().unwrap()).await.unwrap();
    let value: Value = serde_json::from_str(value.expose()).unwrap();
    let user = env().login_as(&granted.db_user, &pgjit::SecretString::new(value["password"].as_str().unwrap()), "app").await.unwrap();
    let tag = &granted.db_user[granted.db_user.len() - 8..];
    let planted = user
        .batch_execute(&format!(
            "SET ROLE {}; CREATE FUNCTION sales.count_{tag}() RETURNS bigint LANGUAGE sql SECURITY DEFINER AS 'SELECT count(*) FROM sales.orders'; \
             GRANT EXECUTE ON FUNCTION sales.count_{tag}() TO PUBLIC; RESET ROLE",
            pgjit::engine::postgres::ident(&profile)
        ))
        .await;
    drop(user);
    if version >= 160000 {
        assert!(planted.is_err(), "from 16 the user cannot act as its profile role");
        pgjit::control::grants::revoke::revoke(&svc, "PROFILE-OWN-1", pgjit::contract::events::RevokeTrigger::Early, Utc::now()).await.unwrap();
        return;
    }
    planted.expect("before 16 the user can act as its profile role");
    let revoked = pgjit::control::grants::revoke::revoke(&svc, "PROFILE-OWN-1", pgjit::contract::events::RevokeTrigger::Early, Utc::now()).await.unwrap();
    assert_eq!(revoked.status, pgjit::aws::store::GrantStatus::Deleted);
    // Cleanup hands what the profile role owns to the holding role; a hand-over that loses a
    // race with another test's on the same schema is reported and done by the next run.
    let owner_of = || async { su.query_one(&format!("SELECT pg_get_userbyid(proowner)::text FROM pg_proc WHERE oid = 'sales.count_{tag}()'::regprocedure"), &[]).await.unwrap().get::<_, String>(0) };
    for attempt in 1..=3 {
        let report = pgjit::control::cleanup::run(&svc, Utc::now() + Duration::days(1)).await.unwrap();
        if owner_of().await != profile {
            break;
        }
        assert!(attempt < 3, "cleanup never handed the function over: {:?}", report.errors);
    }

    let bystander = format!("bystander_{tag}");
    let password = pgjit::SecretString::random_password();
    su.batch_execute("SET log_statement = 'none'").await.unwrap();
    su.batch_execute(&format!("CREATE ROLE {bystander} LOGIN PASSWORD {}; GRANT USAGE ON SCHEMA sales TO {bystander}", pgjit::engine::postgres::literal(password.expose())))
        .await
        .unwrap();
    su.batch_execute("RESET log_statement").await.unwrap();
    let other = env().login_as(&bystander, &password, "app").await.unwrap();
    let err = other.query(&format!("SELECT sales.count_{tag}()"), &[]).await.expect_err("the bystander reads nothing through it");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    let row = su.query_one(&format!("SELECT prosecdef, pg_get_userbyid(proowner)::text FROM pg_proc WHERE oid = 'sales.count_{tag}()'::regprocedure"), &[]).await.unwrap();
    assert!(!row.get::<_, bool>(0), "no longer SECURITY DEFINER");
    assert_eq!(row.get::<_, String>(1), "pgjit_holding", "the holding role's, no longer the shared profile role's");
    su.batch_execute(&format!("DROP FUNCTION sales.count_{tag}(); REVOKE USAGE ON SCHEMA sales FROM {bystander}; DROP ROLE {bystander}")).await.unwrap();
}

/// Whoever may invoke the grant or revoke function directly writes the whole event, envelope
/// included. Without the approvals key's MAC over exactly that event it grants, extends and
/// revokes nothing: no MAC, a MAC of another approval, of another key, or not a MAC at all.
#[tokio::test]
async fn a_forged_approval_extension_or_early_revoke_changes_nothing() {
    let svc = isolated_services().await;
    let integration = register_integration(&svc, "forged", json!({})).await;
    let direct = |event: Value| {
        let svc = &svc;
        async move { pgjit::control::handlers::grant(svc, LambdaEvent::new(event, Context::default())).await.map_err(|e| e.to_string()) }
    };
    let before = footprint(&svc, &integration.user_prefix).await;
    let mut cases = vec![(approval("FORGED-1", "forged", "mallory@corp.com", orders_access()), "carries no MAC of the approvals key")];
    // Signed for SELECT, sent asking for DELETE too.
    let mut widened = pgjit_tests::signed(&svc, approval("FORGED-2", "forged", "mallory@corp.com", orders_access())).await;
    widened["detail"]["access"][0]["privileges"] = json!(["SELECT", "DELETE"]);
    cases.push((widened, "does not match it"));
    // Signed for another request, or another requester, and replayed under this one.
    let mut moved = pgjit_tests::signed(&svc, approval("FORGED-3", "forged", "ann@corp.com", orders_access())).await;
    moved["detail"]["requester"]["id"] = json!("mallory@corp.com");
    cases.push((moved, "does not match it"));
    // Made with another HMAC key (the attacker's own, or another stack's).
    let elsewhere = isolated_services().await;
    cases.push((pgjit_tests::signed(&elsewhere, approval("FORGED-4", "forged", "mallory@corp.com", orders_access())).await, "does not match it"));
    // A captured approval re-dated to look fresh.
    let mut redated = pgjit_tests::signed(&svc, approval("FORGED-5", "forged", "mallory@corp.com", orders_access())).await;
    redated["time"] = json!((Utc::now() + Duration::seconds(30)).format("%Y-%m-%dT%H:%M:%SZ").to_string());
    cases.push((redated, "does not match it"));
    let mut garbage = approval("FORGED-6", "forged", "mallory@corp.com", orders_access());
    garbage["detail"]["mac"] = json!("bm90IGEgbWFj");
    cases.push((garbage, "not the base64 of a 32-byte HMAC-SHA-256"));
    for (event, why) in cases {
        let request_id = event["detail"]["request_id"].as_str().unwrap().to_owned();
        let err = direct(event).await.expect_err(&request_id);
        assert!(err.contains(why) && err.contains("nothing was changed"), "{request_id}: {err}");
        assert!(svc.store.get_grant(&request_id).await.unwrap().is_none(), "{request_id}: no record");
        assert!(svc.store.audit_of(&request_id).await.unwrap().is_empty(), "{request_id}: no audit entry");
    }
    assert_eq!(footprint(&svc, &integration.user_prefix).await, before, "no role, secret or schedule");

    // A real approval grants; a forged extension and a forged early revoke of it change nothing.
    let granted = grant(&svc, approval("REAL-1", "forged", "john@corp.com", orders_access())).await.unwrap();
    let err = direct(pgjit_tests::extension("EXT-FORGED", "REAL-1", "mallory@corp.com", 7000)).await.expect_err("forged extension");
    assert!(err.contains("the extension carries no MAC"), "{err}");
    let err = pgjit::control::handlers::revoke(&svc, LambdaEvent::new(pgjit_tests::early_revoke("REAL-1"), Context::default())).await.expect_err("forged early revoke").to_string();
    assert!(err.contains("the early revoke carries no MAC"), "{err}");
    // A signed early revoke of another request, pointed at this one.
    let mut pointed = pgjit_tests::signed(&svc, pgjit_tests::early_revoke("SOME-OTHER")).await;
    pointed["detail"]["request_id"] = json!("REAL-1");
    let err = pgjit::control::handlers::revoke(&svc, LambdaEvent::new(pointed, Context::default())).await.expect_err("moved revoke").to_string();
    assert!(err.contains("does not match it"), "{err}");
    let record = svc.store.get_grant("REAL-1").await.unwrap().unwrap();
    assert_eq!((record.status, record.expires_at), (pgjit::aws::store::GrantStatus::Active, granted.expires_at), "untouched");
    // A real signed extension, applied; then captured and sent again under a new event id (to
    // extend once more): the same signed content is the same extension.
    let signed_extension = pgjit_tests::signed(&svc, pgjit_tests::extension("EXT-REAL", "REAL-1", "lead@corp.com", 7000)).await;
    let extended = direct(signed_extension.clone()).await.expect("a signed extension");
    let mut replayed = signed_extension;
    replayed["id"] = json!("ev-replayed-under-a-new-id");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let again = direct(replayed).await.expect("the replay is a repeat");
    assert_eq!(svc.store.get_grant("REAL-1").await.unwrap().unwrap().expires_at, extended.expires_at, "extended once: {again:?}");
    // The MAC-carrying early revoke does revoke.
    let revoked = pgjit::control::handlers::revoke(&svc, LambdaEvent::new(pgjit_tests::signed(&svc, pgjit_tests::early_revoke("REAL-1")).await, Context::default())).await.unwrap();
    assert_ne!(revoked.status, pgjit::aws::store::GrantStatus::Active);
}
