//! The control plane's grant and revoke: PostgreSQL, Secrets Manager, IAM, the scheduler and
//! the store, in an order that can always be undone or finished.
//!
//! Every step is idempotent and every name is derived from the request id (secret, schedule,
//! IAM policy) or stored before the step runs (the database user), so a run that dies anywhere
//! leaves work that a repeated event, the next revoke or cleanup can finish or undo.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::access::{login_role_name, AccessError, AccessSet};
use crate::aws::{AwsError, Services};
use crate::aws::credentials::{self, CredentialsValue};
use crate::control::endpoint::{self, EndpointError};
use crate::contract::events::{Approval, EventError, RevokeTrigger};
use crate::failpoint::Triggered;
use crate::aws::iam;
use crate::contract::integration::{AccessMode, Integration};
use crate::engine::postgres::error_chain;
use crate::engine::roles::revocation;
use crate::engine::roles::{self, departure, GrantSpec, LoginMethod, RoleError};
use crate::aws::schedule;
use crate::secret::SecretString;
use crate::aws::store::{due_key, AuditEntry, GrantRecord, GrantStatus, StoreError};

/// What a grant produced, as the function returns it (never the password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantResult {
    pub request_id: String,
    pub status: GrantStatus,
    pub db_user: String,
    pub expires_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_access_details: Option<String>,
    /// The approval had been handled before: this delivery changed nothing.
    pub repeated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevokeResult {
    pub request_id: String,
    pub status: GrantStatus,
    pub db_user: String,
    /// Nothing was left to do (already revoked, deleted or failed).
    pub repeated: bool,
    pub sessions_ended: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(transparent)]
    Event(#[from] EventError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("unknown integration {0:?}")]
    UnknownIntegration(String),
    #[error("unknown request {0:?}")]
    UnknownRequest(String),
    #[error("refused by the integration's policy: {0}")]
    Policy(String),
    #[error("request {0:?} was approved before with other details; a request id names one request")]
    Mismatch(String),
    #[error("request {0:?} is being worked on by another run; try again later")]
    InProgress(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{operation} of request {request_id:?} failed at step {step}{}", if *.undone { "; everything done before was undone and the grant is marked failed" } else { "" })]
    Step {
        operation: &'static str,
        request_id: String,
        step: &'static str,
        /// Whether the steps done before were undone (grant) or the work is left for a retry.
        undone: bool,
        #[source]
        source: StepError,
    },
}

impl GrantError {
    /// Errors that a later delivery of the same event may not hit (the scheduler retries them).
    pub fn is_retryable(&self) -> bool {
        matches!(self, GrantError::InProgress(_) | GrantError::Step { .. } | GrantError::Store(StoreError::Dynamo { .. }))
    }
}

/// Why one step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Role(#[from] RoleError),
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Failpoint(#[from] Triggered),
    #[error("{0}")]
    Other(String),
}

pub(crate) fn audit(record: &GrantRecord, event: &str, at: DateTime<Utc>, detail: Option<String>) -> AuditEntry {
    AuditEntry {
        request_id: record.request_id.clone(),
        // Within one millisecond, the lifecycle's order decides.
        at_event: format!("{}#{}#{event}", due_key(at), lifecycle_rank(event)),
        at,
        event: event.to_owned(),
        integration: record.integration.clone(),
        requester: record.requester.id.clone(),
        approver: record.approver.clone(),
        db_user: record.db_user.clone(),
        access: record.access.clone(),
        detail,
    }
}

fn lifecycle_rank(event: &str) -> u8 {
    match event {
        "requested" => 0,
        "grant_failed" => 1,
        "granted" => 2,
        "rotated" => 3,
        "revoked" => 4,
        "deleted" => 5,
        "extended" => 3,
        _ => 9,
    }
}

pub(crate) fn result_of(record: &GrantRecord, integration: &Integration, repeated: bool) -> GrantResult {
    GrantResult {
        request_id: record.request_id.clone(),
        status: record.status,
        db_user: record.db_user.clone(),
        expires_at: record.expires_at,
        secret_arn: record.secret_arn.clone(),
        host: record.host.clone(),
        port: record.port,
        custom_access_details: integration.custom_access_details.clone(),
        repeated,
    }
}

/// When cleanup must next look at an active grant: its expiry, or its password's rotation.
pub fn active_due(record: &GrantRecord, integration: &Integration) -> DateTime<Utc> {
    let mut due = record.expires_at;
    if let (Some(days), AccessMode::Password) = (integration.credential_rotation_days, record.access_mode) {
        let since = record.rotated_at.unwrap_or(record.created_at);
        due = due.min(since + Duration::days(i64::from(days)));
    }
    due
}

pub(crate) async fn load_integration(svc: &Services, name: &str) -> Result<Integration, GrantError> {
    svc.store.get_integration(name).await?.ok_or_else(|| GrantError::UnknownIntegration(name.to_owned()))
}

/// Who approved, and when: an approval must come from someone other than the requester (unless
/// the integration allows it) and be fresh (a stale or replayed event grants nothing).
fn check_trust(svc: &Services, integration: &Integration, approval: &Approval, now: DateTime<Utc>) -> Result<(), GrantError> {
    check_approver(svc, integration, &approval.approver, &approval.requester.id, approval.sent_at, now)
}

/// The checks an approval and an extension share: the approver is not the requester (unless
/// the integration allows it), and the event is fresh (not older than the configured age, not
/// from the future).
pub(crate) fn check_approver(svc: &Services, integration: &Integration, approver: &str, requester: &str, sent_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<(), GrantError> {
    let same = |a: &str, b: &str| a.trim().eq_ignore_ascii_case(b.trim());
    if same(approver, requester) && !integration.allow_self_approval {
        return Err(GrantError::Policy(format!(
            "approver {approver:?} is the requester: an approval must come from someone else (integration {:?} does not set allow_self_approval)",
            integration.name
        )));
    }
    if let Some(sent) = sent_at {
        let max_age = Duration::from_std(svc.config.approval_max_age).unwrap_or(Duration::hours(1));
        if now - sent > max_age {
            return Err(GrantError::Policy(format!(
                "the approval event was sent at {} and is older than {} s (PGJIT_APPROVAL_MAX_AGE_SECONDS): a stale or replayed approval grants nothing",
                sent.to_rfc3339(),
                max_age.num_seconds()
            )));
        }
        if sent - now > Duration::minutes(5) {
            return Err(GrantError::Policy(format!("the approval event's time {} is in the future", sent.to_rfc3339())));
        }
    }
    Ok(())
}

/// Handles an approval: checks it against the integration, records it, and grants. A repeated
/// delivery returns the first result and changes nothing.
pub async fn grant(svc: &Services, approval: &Approval, now: DateTime<Utc>) -> Result<GrantResult, GrantError> {
    let integration = load_integration(svc, &approval.integration).await?;
    check_trust(svc, &integration, approval, now)?;
    let access = AccessSet::from_entries(&approval.access)?;
    if approval.duration_seconds > integration.max_duration_seconds {
        return Err(GrantError::Policy(format!(
            "duration_seconds {} is longer than the integration's max_duration_seconds {}",
            approval.duration_seconds, integration.max_duration_seconds
        )));
    }
    if let Some(arn) = approval.requester.iam_arn.as_deref() {
        let requester = iam::requester_of(arn).map_err(|m| GrantError::Policy(format!("requester.iam_arn: {m}")))?;
        let account = svc.account_id().await.map_err(|e| GrantError::Step {
            operation: "grant",
            request_id: approval.request_id.clone(),
            step: "account",
            undone: false,
            source: e.into(),
        })?;
        iam::check_account(&requester, &account, &svc.config.trusted_accounts).map_err(|m| GrantError::Policy(format!("requester.iam_arn: {m}")))?;
        if integration.access_mode == AccessMode::Iam {
            iam::check_policy_target(&requester, &account, &svc.config.protected_roles).map_err(|m| GrantError::Policy(format!("requester.iam_arn: {m}")))?;
        }
    } else if integration.access_mode == AccessMode::Iam {
        return Err(GrantError::Policy(format!("integration {:?} uses IAM access: requester.iam_arn is needed", integration.name)));
    }
    let duration = Duration::seconds(i64::try_from(approval.duration_seconds).unwrap_or(i64::MAX));
    let fresh = GrantRecord::granting(
        approval,
        &integration,
        login_role_name(&integration.user_prefix, &approval.requester.id),
        now,
        now + duration,
        now + stuck_after(svc),
    );
    // The "requested" entry of a new record is written while the endpoint is resolved.
    let (mut record, requested) = match svc.store.insert_grant(&fresh).await {
        Ok(()) => {
            let entry = audit(&fresh, "requested", now, approval.reason.clone());
            (fresh, Some(entry))
        }
        Err(StoreError::AlreadyExists(_)) => {
            let existing = svc.store.get_grant(&approval.request_id).await?.ok_or_else(|| GrantError::InProgress(approval.request_id.clone()))?;
            if existing.integration != approval.integration
                || existing.requester.id != approval.requester.id
                || existing.access != approval.access
                || existing.duration_seconds != approval.duration_seconds
            {
                return Err(GrantError::Mismatch(approval.request_id.clone()));
            }
            match existing.status {
                GrantStatus::Active | GrantStatus::Revoking | GrantStatus::Revoked | GrantStatus::Deleted => {
                    tracing::info!(request_id = %existing.request_id, integration = %existing.integration, db_user = %existing.db_user, status = %existing.status, "repeated approval: nothing to do");
                    return Ok(result_of(&existing, &integration, true));
                }
                GrantStatus::Granting if !is_stuck(&existing, now) => return Err(GrantError::InProgress(existing.request_id)),
                GrantStatus::Granting | GrantStatus::Failed => {
                    // A crashed or failed earlier run: clear whatever it left, then start again.
                    let mut retry = existing;
                    undo_grant(svc, &integration, &retry, None).await.map_err(|source| GrantError::Step {
                        operation: "grant",
                        request_id: retry.request_id.clone(),
                        step: "undo of the earlier attempt",
                        undone: false,
                        source,
                    })?;
                    retry.status = GrantStatus::Granting;
                    retry.updated_at = now;
                    retry.expires_at = now + duration;
                    retry.due_at = Some(due_key(now + stuck_after(svc)));
                    retry.failure = None;
                    retry.secret_arn = None;
                    retry.iam_policy = None;
                    retry.schedule_name = None;
                    match svc.store.update_grant(&mut retry).await {
                        Ok(()) => (retry, None),
                        Err(StoreError::Conflict { .. }) => return Err(GrantError::InProgress(retry.request_id)),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(e) => return Err(e.into()),
    };

    // Resolved once: the undo reuses the admin's connection details, so it can still remove the
    // role when AWS (and with it the admin secret) became unreachable half-way.
    let started = std::time::Instant::now();
    let log_requested = async {
        match &requested {
            Some(entry) => svc.store.append_audit(entry).await,
            None => Ok(()),
        }
    };
    let (logged, resolved) = tokio::join!(log_requested, endpoint::resolve(svc, &integration));
    logged?;
    let (steps, target) = match resolved {
        Ok(target) => {
            step_done(&record, "grant", "endpoint", started);
            let steps = crate::control::budget::bounded(grant_steps(svc, &integration, &target, &access, &mut record, now)).await;
            (steps.unwrap_or(Err(("deadline", StepError::Other("the invocation's time ran out before the grant finished".into())))), Some(target))
        }
        Err(e) => (Err(("connect", StepError::Endpoint(e))), None),
    };
    match steps {
        Ok(()) => {
            tracing::info!(request_id = %record.request_id, integration = %record.integration, db_user = %record.db_user, expires_at = %record.expires_at, "granted");
            crate::metrics::count("GrantsCreated", 1, &record.integration);
            let result = result_of(&record, &integration, false);
            announce(svc, &record, &result).await;
            Ok(result)
        }
        Err((step, source)) => {
            tracing::error!(request_id = %record.request_id, integration = %record.integration, db_user = %record.db_user, step, error = %error_chain(&source), "grant failed; undoing");
            crate::metrics::count("GrantsFailed", 1, &record.integration);
            // The undo gets the time kept in reserve for it.
            let undone = match crate::control::budget::with_reserve(undo_grant(svc, &integration, &record, target.as_ref())).await {
                Ok(()) => true,
                Err(undo) => {
                    tracing::error!(request_id = %record.request_id, db_user = %record.db_user, error = %error_chain(&undo), "undo failed; cleanup will finish it");
                    false
                }
            };
            if undone {
                record.status = GrantStatus::Failed;
                record.due_at = None;
                record.failure = Some(format!("{step}: {}", error_chain(&source)));
                record.updated_at = Utc::now();
                // Best effort: a lost race here means another run took over the record.
                if let Err(e) = svc.store.update_grant(&mut record).await {
                    tracing::warn!(request_id = %record.request_id, error = %error_chain(&e), "could not mark the grant failed");
                }
                let _ = svc.store.append_audit(&audit(&record, "grant_failed", Utc::now(), record.failure.clone())).await;
            } else {
                // Left in `granting` and due now: the next cleanup (or delivery) finishes the undo.
                record.due_at = Some(due_key(now));
                let _ = svc.store.update_grant(&mut record).await;
            }
            Err(GrantError::Step { operation: "grant", request_id: record.request_id.clone(), step, undone, source })
        }
    }
}

/// Emits `Access Granted` (no password in it: username, endpoint, expiry, secret ARN and the
/// integration's access details) so approval tools can tell the requester. The grant stands
/// whether or not the event goes out; a failure is logged and counted.
async fn announce(svc: &Services, record: &GrantRecord, result: &GrantResult) {
    let detail = serde_json::json!({
        "request_id": result.request_id,
        "integration": record.integration,
        "requester": record.requester,
        "approver": record.approver,
        "db_user": result.db_user,
        "access_mode": record.access_mode,
        "host": result.host,
        "port": result.port,
        "databases": record.access.iter().map(|a| a.database.as_str()).collect::<std::collections::BTreeSet<_>>(),
        "expires_at": result.expires_at,
        "secret_arn": result.secret_arn,
        "custom_access_details": result.custom_access_details,
    });
    announce_event(svc, record, crate::contract::events::GRANTED, detail).await;
}

/// Puts one of pgjit's own events (never a secret in it) on `PGJIT_EVENT_BUS`. What it reports
/// stands whether or not the event goes out; a failure is logged and counted.
pub(crate) async fn announce_event(svc: &Services, record: &GrantRecord, detail_type: &str, detail: serde_json::Value) {
    let Some(bus) = &svc.config.event_bus else { return };
    let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
        .event_bus_name(bus)
        .source(&svc.config.event_source)
        .detail_type(detail_type)
        .detail(detail.to_string())
        .build();
    let failed = match svc.events.put_events().entries(entry).send().await {
        Ok(out) => (out.failed_entry_count() > 0).then(|| format!("{} entry failed", out.failed_entry_count())),
        Err(e) => Some(error_chain(&AwsError::new("events:PutEvents", e))),
    };
    if let Some(why) = failed {
        tracing::warn!(request_id = %record.request_id, integration = %record.integration, db_user = %record.db_user, error = %why, detail_type, "event not sent");
        crate::metrics::count("EventsFailed", 1, &record.integration);
    }
}

fn stuck_after(svc: &Services) -> Duration {
    Duration::from_std(svc.config.stuck_after).unwrap_or(Duration::minutes(15))
}

fn is_stuck(record: &GrantRecord, now: DateTime<Utc>) -> bool {
    record.due_at.as_deref().is_none_or(|due| due <= due_key(now).as_str())
}

type StepResult = Result<(), (&'static str, StepError)>;

/// What a grant made for the requester to get in.
enum WayIn {
    Secret(String),
    Policy(crate::aws::store::IamPolicyRef),
}

/// One log line per finished step, with who and where, and its duration as a metric.
fn step_done(record: &GrantRecord, operation: &str, step: &str, started: std::time::Instant) {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(request_id = %record.request_id, integration = %record.integration, db_user = %record.db_user, operation, step, duration_ms = ms, "step done");
    crate::metrics::step_duration(&format!("{operation}.{step}"), ms);
}

fn at<T, E: Into<StepError>>(step: &'static str) -> impl FnOnce(E) -> (&'static str, StepError) {
    move |e| (step, e.into())
}

async fn grant_steps(
    svc: &Services,
    integration: &Integration,
    target: &endpoint::Resolved,
    access: &AccessSet,
    record: &mut GrantRecord,
    now: DateTime<Utc>,
) -> StepResult {
    let fp = &svc.failpoints;
    fp.check("grant:after_connect").await.map_err(at::<(), _>("connect"))?;
    let started = std::time::Instant::now();
    let password = SecretString::random_password();
    let login = match record.access_mode {
        AccessMode::Password => LoginMethod::Password(&password),
        AccessMode::Iam => LoginMethod::Iam,
    };
    let audit_classes = integration.audit_setting();
    let spec = GrantSpec {
        username: &record.db_user,
        access,
        login,
        valid_until: record.expires_at,
        prefix: &integration.user_prefix,
        grantable_roles: &integration.grantable_roles,
        privileged_roles: &integration.privileged_grantable_roles,
        audit: audit_classes.as_deref().map(|classes| roles::AuditRequest {
            classes,
            required: integration.audit_required,
            cloud: matches!(integration.kind, crate::engine::setup::Flavor::Rds | crate::engine::setup::Flavor::Aurora),
        }),
    };
    let granted = roles::grant::grant(&target.connector, &spec).await.map_err(at::<(), _>("database role"))?;
    record.session_audit = granted.audit;
    fp.check("grant:after_role").await.map_err(at::<(), _>("database role"))?;
    step_done(record, "grant", "database_role", started);
    record.host = Some(target.connector.endpoint().host.clone());
    record.port = Some(target.connector.endpoint().port);

    // How the requester gets in, and the revoke at expiry, do not depend on each other: both are
    // made at once (the undo removes both, whichever got made).
    let (way_in, revoke_schedule) = tokio::join!(open_way_in(svc, integration, target, record, &password), schedule_revoke(svc, record));
    match way_in? {
        WayIn::Secret(arn) => record.secret_arn = Some(arn),
        WayIn::Policy(policy) => record.iam_policy = Some(policy),
    }
    record.schedule_name = Some(revoke_schedule?);
    let started = std::time::Instant::now();

    svc.store.append_audit(&audit(record, "granted", now, None)).await.map_err(at::<(), _>("audit"))?;
    fp.check("grant:before_activate").await.map_err(at::<(), _>("activate"))?;
    record.status = GrantStatus::Active;
    record.updated_at = Utc::now();
    record.due_at = Some(due_key(active_due(record, integration)));
    svc.store.update_grant(record).await.map_err(at::<(), _>("activate"))?;
    step_done(record, "grant", "activate", started);
    Ok(())
}

/// The credentials secret (password mode) or the IAM policy (IAM mode) for the requester.
async fn open_way_in(svc: &Services, integration: &Integration, target: &endpoint::Resolved, record: &GrantRecord, password: &SecretString) -> Result<WayIn, (&'static str, StepError)> {
    let fp = &svc.failpoints;
    let started = std::time::Instant::now();
    match record.access_mode {
        AccessMode::Password => {
            let name = credentials::secret_name(svc, &integration.name, &record.request_id);
            let first_db = record.access.first().map(|a| a.database.as_str()).unwrap_or(integration.maintenance_database());
            let endpoint = target.connector.endpoint();
            let value = CredentialsValue {
                engine: "postgres",
                host: &endpoint.host,
                port: endpoint.port,
                dbname: first_db,
                username: &record.db_user,
                password,
                expires_at: record.expires_at,
            };
            let requester = record.requester.iam_arn.as_deref().and_then(|arn| iam::requester_of(arn).ok());
            let readers = credentials::Readers { requester: requester.as_ref(), functions: &svc.config.function_role_arns, others: &svc.config.credential_readers };
            let arn = credentials::store(svc, &name, &value, &record.requester.id, &record.request_id, &readers).await.map_err(at::<(), _>("credentials secret"))?;
            fp.check("grant:after_secret").await.map_err(at::<(), _>("credentials secret"))?;
            step_done(record, "grant", "credentials_secret", started);
            Ok(WayIn::Secret(arn))
        }
        AccessMode::Iam => {
            let policy = put_connect_policy(svc, integration, target, record).await.map_err(|e| ("iam policy", e))?;
            fp.check("grant:after_policy").await.map_err(at::<(), _>("iam policy"))?;
            step_done(record, "grant", "iam_policy", started);
            Ok(WayIn::Policy(policy))
        }
    }
}

/// Puts the requester's `rds-db:connect` policy for the record's user, expiring at the record's
/// `expires_at` (a grant, or an extension moving that expiry).
pub(crate) async fn put_connect_policy(svc: &Services, integration: &Integration, target: &endpoint::Resolved, record: &GrantRecord) -> Result<crate::aws::store::IamPolicyRef, StepError> {
    let arn = record.requester.iam_arn.clone().unwrap_or_default();
    let requester = iam::requester_of(&arn).map_err(StepError::Other)?;
    let resource_id = target.rds.as_ref().and_then(|r| r.resource_id.clone()).ok_or(StepError::Other("RDS reported no resource id for the instance or cluster".into()))?;
    let region = integration.region.clone().or_else(|| svc.region()).ok_or(StepError::Other("no region".into()))?;
    let account = svc.account_id().await?;
    // Checked before anything was made; checked again where the policy is written.
    iam::check_policy_target(&requester, &account, &svc.config.protected_roles).map_err(StepError::Other)?;
    let session = match (&requester.principal, &requester.session) {
        (iam::Principal::Role(role), Some(session)) => Some(format!("{}:{session}", iam::role_id(svc, role).await?)),
        _ => None,
    };
    let resource = iam::dbuser_arn(&requester.partition, &region, &account, &resource_id, &record.db_user);
    let document = iam::policy_document(&resource, record.expires_at, session.as_deref());
    Ok(iam::put_policy(svc, &requester.principal, &iam::policy_name(&record.request_id), &document).await?)
}

/// The one-shot schedule that revokes the grant at expiry.
async fn schedule_revoke(svc: &Services, record: &GrantRecord) -> Result<String, (&'static str, StepError)> {
    let started = std::time::Instant::now();
    let name = schedule::create(svc, &record.request_id, record.expires_at).await.map_err(at::<(), _>("revoke schedule"))?;
    svc.failpoints.check("grant:after_schedule").await.map_err(at::<(), _>("revoke schedule"))?;
    step_done(record, "grant", "revoke_schedule", started);
    Ok(name)
}

/// Removes everything a grant may have made, whatever step it reached. Every part is a no-op
/// when there is nothing to remove, and every part is tried even when an earlier one failed (the
/// database role first: with AWS down, the access itself must still go); the first error is
/// returned so the record stays due for another try.
async fn undo_grant(svc: &Services, integration: &Integration, record: &GrantRecord, target: Option<&endpoint::Resolved>) -> Result<(), StepError> {
    let mut first_error: Option<StepError> = None;
    let mut keep = |result: Result<(), StepError>| {
        if let Err(e) = result {
            tracing::warn!(request_id = %record.request_id, db_user = %record.db_user, error = %error_chain(&e), "undo step failed");
            first_error.get_or_insert(e);
        }
    };
    let role = async {
        let resolved;
        let target = match target {
            Some(t) => t,
            None => {
                resolved = endpoint::resolve(svc, integration).await?;
                &resolved
            }
        };
        departure::delete(&target.connector, integration.maintenance_database(), &record.db_user, &integration.user_prefix, &integration.holding_role).await?;
        Ok::<(), StepError>(())
    };
    keep(role.await);
    // The name is derived, not necessarily made by this request: only its own schedule goes.
    keep(schedule::delete_own(svc, &schedule::name_of(record.schedule_name.as_deref(), &record.request_id), &record.request_id).await.map_err(StepError::from));
    if record.access_mode == AccessMode::Iam {
        if let Some(Ok(principal)) = record.requester.iam_arn.as_deref().map(iam::principal_of) {
            let (kind, name) = match principal {
                iam::Principal::User(n) => ("user", n),
                iam::Principal::Role(n) => ("role", n),
            };
            let policy = crate::aws::store::IamPolicyRef { principal_kind: kind.into(), principal_name: name, policy_name: iam::policy_name(&record.request_id) };
            keep(iam::delete_policy(svc, &policy).await.map_err(StepError::from));
        }
    }
    // A secret of that name that is not this request's was never made by it: nothing to undo.
    let name = credentials::secret_name(svc, &integration.name, &record.request_id);
    keep(credentials::delete(svc, &name, &record.request_id, credentials::Foreign::Skip).await.map_err(StepError::from));
    first_error.map_or(Ok(()), Err)
}

/// Takes a grant's access away: at expiry (the schedule), early (an event or an operator), or
/// when cleanup finds it overdue. Safe to repeat; a failure leaves the record `revoking` so the
/// scheduler's retry, the next event or cleanup finishes it.
pub async fn revoke(svc: &Services, request_id: &str, trigger: RevokeTrigger, now: DateTime<Utc>) -> Result<RevokeResult, GrantError> {
    revoke_with(svc, request_id, None, None, trigger, now).await
}

/// [`revoke`], for cleanup: `known` is the record as its due query read it (used as it is when
/// active: the state change to `revoking` is conditional on its version, so a stale copy only
/// costs a read), and `server` the integration's server with connections shared across items.
pub async fn revoke_with(
    svc: &Services,
    request_id: &str,
    known: Option<GrantRecord>,
    server: Option<&endpoint::Server>,
    trigger: RevokeTrigger,
    now: DateTime<Utc>,
) -> Result<RevokeResult, GrantError> {
    crate::contract::events::check_request_id(request_id)?;
    let mut known = known.filter(|r| r.status == GrantStatus::Active && r.request_id == request_id);
    for _ in 0..5 {
        let mut record = match known.take() {
            Some(record) => record,
            None => svc.store.get_grant(request_id).await?.ok_or_else(|| GrantError::UnknownRequest(request_id.to_owned()))?,
        };
        let done = |r: &GrantRecord| RevokeResult { request_id: r.request_id.clone(), status: r.status, db_user: r.db_user.clone(), repeated: true, sessions_ended: 0 };
        match record.status {
            GrantStatus::Revoked | GrantStatus::Deleted | GrantStatus::Failed => return Ok(done(&record)),
            GrantStatus::Granting if !is_stuck(&record, now) => return Err(GrantError::InProgress(record.request_id)),
            GrantStatus::Granting => {
                // An abandoned grant: undo it rather than revoke what never finished.
                let integration = load_integration(svc, &record.integration).await?;
                undo_grant(svc, &integration, &record, None).await.map_err(|source| GrantError::Step {
                    operation: "revoke",
                    request_id: record.request_id.clone(),
                    step: "undo of an abandoned grant",
                    undone: false,
                    source,
                })?;
                record.status = GrantStatus::Failed;
                record.due_at = None;
                record.failure = Some("abandoned while granting; undone".into());
                record.updated_at = now;
                match svc.store.update_grant(&mut record).await {
                    Ok(()) => return Ok(done(&record)),
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            // Only an early revoke takes an unexpired grant away. The schedule's input (which
            // whoever may invoke the function can send) and cleanup's due copy stand for "it has
            // expired": read again after an extension, they are not due any more. The schedule
            // fires at the expiry's whole second, perhaps a little before this clock says so:
            // it is due within SCHEDULE_SLACK (after an extension the schedule was moved; the
            // one that fires then is the new one).
            GrantStatus::Active if trigger == RevokeTrigger::Scheduled && record.expires_at > now + SCHEDULE_SLACK => {
                tracing::info!(request_id = %record.request_id, db_user = %record.db_user, expires_at = %record.expires_at, "a scheduled revoke before the expiry: the schedule was moved, nothing to do");
                return Ok(RevokeResult { request_id: record.request_id.clone(), status: record.status, db_user: record.db_user.clone(), repeated: true, sessions_ended: 0 });
            }
            GrantStatus::Active if trigger == RevokeTrigger::Cleanup && record.expires_at > now => {
                tracing::info!(request_id = %record.request_id, db_user = %record.db_user, expires_at = %record.expires_at, trigger = ?trigger, "not expired: nothing to revoke yet");
                return Ok(RevokeResult { request_id: record.request_id.clone(), status: record.status, db_user: record.db_user.clone(), repeated: true, sessions_ended: 0 });
            }
            GrantStatus::Active => {
                record.status = GrantStatus::Revoking;
                record.revoke_reason = Some(format!("{trigger:?}").to_lowercase());
                record.updated_at = now;
                record.due_at = Some(due_key(now + stuck_after(svc)));
                match svc.store.update_grant(&mut record).await {
                    Ok(()) => {}
                    // Someone else moved it first (another revoke), or the copy was stale: look again.
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            GrantStatus::Revoking => {}
        }
        // Out of time: the record stays `revoking`, and the retry (or the hourly sweep) finishes it.
        let shared = server.filter(|s| s.integration.name == record.integration);
        let integration = if shared.is_none() { Some(load_integration(svc, &record.integration).await?) } else { None };
        let steps = crate::control::budget::bounded(async {
            let opened;
            let server = match (shared, integration) {
                (Some(server), _) => server,
                (None, integration) => {
                    let integration = integration.ok_or(("connect", StepError::Other("no integration".into())))?;
                    opened = endpoint::Server::open(svc, integration, 1).await.map_err(at::<(), _>("connect"))?;
                    &opened
                }
            };
            revoke_steps(svc, server, &mut record, trigger, now).await
        })
        .await;
        let steps = steps.unwrap_or(Err(("deadline", StepError::Other("the invocation's time ran out before the revoke finished".into()))));
        return match steps {
            Ok(sessions_ended) => {
                tracing::info!(request_id = %record.request_id, integration = %record.integration, db_user = %record.db_user, status = %record.status, sessions_ended, "revoked");
                crate::metrics::count("GrantsRevoked", 1, &record.integration);
                Ok(RevokeResult { request_id: record.request_id.clone(), status: record.status, db_user: record.db_user.clone(), repeated: false, sessions_ended })
            }
            Err((step, source)) => {
                if step == "deadline" {
                    // Cut short: due again now, so the next sweep (a cleanup's continuation, a
                    // minute later) finishes it rather than the one after the stuck window.
                    crate::control::budget::with_reserve(due_again(svc, &record.request_id, now)).await;
                }
                tracing::error!(request_id = %record.request_id, integration = %record.integration, db_user = %record.db_user, step, error = %error_chain(&source), "revoke failed; it will be retried");
                crate::metrics::count("RevokesFailed", 1, &record.integration);
                Err(GrantError::Step { operation: "revoke", request_id: record.request_id.clone(), step, undone: false, source })
            }
        };
    }
    Err(GrantError::InProgress(request_id.to_owned()))
}

/// How much before the recorded expiry the schedule's revoke is honoured: the schedule names the
/// expiry's whole second, and Scheduler's and Lambda's clocks may differ a little. Whoever may
/// invoke the revoke function can end a grant this much early, no more.
const SCHEDULE_SLACK: Duration = Duration::seconds(60);

/// Makes a revoke that was cut short due at once (best effort: the hourly sweep is the backstop).
async fn due_again(svc: &Services, request_id: &str, now: DateTime<Utc>) {
    if let Ok(Some(mut record)) = svc.store.get_grant(request_id).await {
        if record.status == GrantStatus::Revoking {
            record.due_at = Some(due_key(now));
            if let Err(e) = svc.store.update_grant(&mut record).await {
                tracing::warn!(request_id, error = %error_chain(&e), "could not make the cut-short revoke due again; the hourly sweep will");
            }
        }
    }
}

async fn revoke_steps(svc: &Services, server: &endpoint::Server, record: &mut GrantRecord, trigger: RevokeTrigger, now: DateTime<Utc>) -> Result<i64, (&'static str, StepError)> {
    let fp = &svc.failpoints;
    let integration = &server.integration;
    let started = std::time::Instant::now();
    let db = integration.maintenance_database();
    let client = server.pool.get().await.map_err(|e| ("connect", StepError::Role(e.into())))?;
    let revoked =
        revocation::revoke_over(&client, server.pool.connector(), db, &record.db_user, &integration.user_prefix).await.map_err(at::<(), _>("database role"))?;
    client.release();
    fp.check("revoke:after_role").await.map_err(at::<(), _>("database role"))?;
    step_done(record, "revoke", "database_role", started);
    let started = std::time::Instant::now();
    if let Some(policy) = &record.iam_policy {
        iam::delete_policy(svc, policy).await.map_err(at::<(), _>("iam policy"))?;
    }
    if record.access_mode == AccessMode::Password {
        let name = credentials::secret_name(svc, &integration.name, &record.request_id);
        let deleted = match &record.secret_arn {
            // The ARN its grant recorded, of the request's own name: deleted without a read.
            Some(arn) if credentials::is_arn_of(arn, &name) => credentials::delete_recorded(svc, arn).await,
            recorded => credentials::delete(svc, recorded.as_deref().unwrap_or(&name), &record.request_id, credentials::Foreign::Refuse).await,
        };
        deleted.map_err(at::<(), _>("credentials secret"))?;
    }
    fp.check("revoke:after_secret").await.map_err(at::<(), _>("credentials secret"))?;
    step_done(record, "revoke", "credentials", started);
    // A fired schedule deletes itself; an early revoke removes the one still waiting.
    if trigger != RevokeTrigger::Scheduled {
        schedule::delete(svc, &schedule::name_of(record.schedule_name.as_deref(), &record.request_id)).await.map_err(at::<(), _>("revoke schedule"))?;
    }
    record.revoked_at = Some(now);
    let delete_after = now + Duration::days(i64::from(integration.user_cleanup_after_days));
    record.delete_after = Some(delete_after);
    let detail = match (&record.revoke_reason, handed_over_detail(&revoked.disarmed)) {
        (Some(reason), Some(disarmed)) => Some(format!("{reason}; {disarmed}")),
        (reason, disarmed) => reason.clone().or(disarmed),
    };
    // The access is gone: the trail says so now, whatever becomes of the drop that may follow.
    svc.store.append_audit(&audit(record, "revoked", now, detail)).await.map_err(at::<(), _>("audit"))?;
    if integration.user_cleanup_after_days == 0 {
        let started = std::time::Instant::now();
        let deleted = drop_user(server, &record.db_user).await.map_err(at::<(), _>("delete role"))?;
        step_done(record, "revoke", "delete_role", started);
        record.status = GrantStatus::Deleted;
        record.deleted_at = Some(now);
        record.due_at = None;
        svc.store.append_audit(&audit(record, "deleted", now, handed_over_detail(&deleted.handed_over))).await.map_err(at::<(), _>("audit"))?;
    } else {
        record.status = GrantStatus::Revoked;
        record.due_at = Some(due_key(delete_after));
    }
    record.updated_at = Utc::now();
    match svc.store.update_grant(record).await {
        Ok(()) => Ok(revoked.sessions_ended),
        // A concurrent revoke finished first: the work is done either way.
        Err(StoreError::Conflict { .. }) => Ok(revoked.sessions_ended),
        Err(e) => Err(("record", e.into())),
    }
}

/// Drops a login role for good over one of the server's pooled connections.
async fn drop_user(server: &endpoint::Server, db_user: &str) -> Result<departure::Deleted, RoleError> {
    let integration = &server.integration;
    let client = server.pool.get().await?;
    let deleted =
        departure::delete_over(&client, server.pool.connector(), integration.maintenance_database(), db_user, &integration.user_prefix, &integration.holding_role).await?;
    client.release();
    Ok(deleted)
}

/// The audit trail's account of what a departed user left behind: names, never contents.
fn handed_over_detail(changes: &[String]) -> Option<String> {
    (!changes.is_empty()).then(|| format!("objects the user owned: {}", changes.join("; ")))
}

/// Drops a revoked user whose retention is over.
pub async fn delete_user(svc: &Services, record: &mut GrantRecord, server: &endpoint::Server, now: DateTime<Utc>) -> Result<(), StepError> {
    let deleted = drop_user(server, &record.db_user).await?;
    record.status = GrantStatus::Deleted;
    record.deleted_at = Some(now);
    record.due_at = None;
    record.updated_at = now;
    svc.store.update_grant(record).await?;
    svc.store.append_audit(&audit(record, "deleted", now, handed_over_detail(&deleted.handed_over))).await?;
    crate::metrics::count("UsersDeleted", 1, &record.integration);
    Ok(())
}

/// Gives an active password grant a new password, in the database and in its secret.
pub async fn rotate(svc: &Services, record: &mut GrantRecord, server: &endpoint::Server, now: DateTime<Utc>) -> Result<(), StepError> {
    let integration = &server.integration;
    let connector = server.pool.connector();
    let password = SecretString::random_password();
    let db = integration.maintenance_database();
    let client = server.pool.get().await.map_err(RoleError::from)?;
    let changed = roles::set_password(&client, connector.user(), db, &record.db_user, &integration.user_prefix, &password).await?;
    client.release();
    if !changed {
        return Err(StepError::Other(format!("role {:?} is gone", record.db_user)));
    }
    let name = record.secret_arn.clone().unwrap_or_else(|| credentials::secret_name(svc, &integration.name, &record.request_id));
    let host = record.host.clone().unwrap_or_else(|| connector.endpoint().host.clone());
    let value = CredentialsValue {
        engine: "postgres",
        host: &host,
        port: record.port.unwrap_or(connector.endpoint().port),
        dbname: record.access.first().map(|a| a.database.as_str()).unwrap_or(db),
        username: &record.db_user,
        password: &password,
        expires_at: record.expires_at,
    };
    credentials::rotate(svc, &name, &value, &record.request_id).await?;
    record.rotated_at = Some(now);
    record.updated_at = now;
    record.due_at = Some(due_key(active_due(record, integration)));
    svc.store.update_grant(record).await?;
    svc.store.append_audit(&audit(record, "rotated", now, None)).await?;
    Ok(())
}

/// Break glass: revokes every grant of one integration that still gives or may give access
/// (active, revoking, and granting ones that were abandoned), early. Returns each request id
/// with its outcome; one failure does not stop the others.
pub async fn revoke_all(svc: &Services, integration: &str, now: DateTime<Utc>) -> Result<Vec<(String, Result<RevokeResult, String>)>, GrantError> {
    load_integration(svc, integration).await?;
    let mut out = Vec::new();
    for status in [GrantStatus::Active, GrantStatus::Revoking, GrantStatus::Granting] {
        for record in svc.store.grants_in(status).await?.into_iter().filter(|r| r.integration == integration) {
            let result = revoke(svc, &record.request_id, RevokeTrigger::Early, now).await.map_err(|e| error_chain(&e));
            tracing::warn!(request_id = %record.request_id, integration, db_user = %record.db_user, ok = result.is_ok(), "break-glass revoke");
            out.push((record.request_id, result));
        }
    }
    Ok(out)
}
