//! The control plane's grant and revoke: PostgreSQL, Secrets Manager, IAM, the scheduler and
//! the store, in an order that can always be undone or finished.
//!
//! Every step is idempotent and every name is derived from the request id (secret, schedule,
//! IAM policy) or stored before the step runs (the database user), so a run that dies anywhere
//! leaves work that a repeated event, the next revoke or cleanup can finish or undo.

//!
//! Here: what grant and revoke share (their results and errors, the audit trail's entries,
//! events, the stuck-run rules, step logging). [`grant`] and [`revoke`] are the two flows.

pub mod grant;
pub mod revoke;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::access::AccessError;
use crate::aws::store::{due_key, AuditEntry, GrantRecord, GrantStatus, StoreError};
use crate::aws::{AwsError, Services};
use crate::contract::events::{Approval, EventError};
use crate::contract::integration::{AccessMode, Integration};
use crate::control::endpoint::EndpointError;
use crate::engine::postgres::error_chain;
use crate::engine::roles::RoleError;
use crate::failpoint::Triggered;

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
    /// The integration has access flows and none allows this approval.
    #[error("refused: {0}; nothing was changed")]
    NotInFlow(crate::contract::flow::Refusal),
    #[error(
        "request {0:?} was approved before with other details; a request id names one request"
    )]
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

impl From<crate::contract::flow::Refusal> for GrantError {
    fn from(refusal: crate::contract::flow::Refusal) -> Self {
        GrantError::NotInFlow(refusal)
    }
}

impl GrantError {
    /// Errors that a later delivery of the same event may not hit (the scheduler retries them).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            GrantError::InProgress(_)
                | GrantError::Step { .. }
                | GrantError::Store(StoreError::Dynamo { .. })
        )
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

pub(crate) fn audit(
    record: &GrantRecord,
    event: &str,
    at: DateTime<Utc>,
    detail: Option<String>,
) -> AuditEntry {
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
        flow: record.flow.clone(),
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

pub(crate) fn result_of(
    record: &GrantRecord,
    integration: &Integration,
    repeated: bool,
) -> GrantResult {
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
    if let (Some(days), AccessMode::Password) =
        (integration.credential_rotation_days, record.access_mode)
    {
        let since = record.rotated_at.unwrap_or(record.created_at);
        due = due.min(since + Duration::days(i64::from(days)));
    }
    due
}

pub(crate) async fn load_integration(
    svc: &Services,
    name: &str,
) -> Result<Integration, GrantError> {
    svc.store
        .get_integration(name)
        .await?
        .ok_or_else(|| GrantError::UnknownIntegration(name.to_owned()))
}

/// Who approved, and when: an approval must come from someone other than the requester (unless
/// the integration allows it) and be fresh (a stale or replayed event grants nothing).
fn check_trust(
    svc: &Services,
    integration: &Integration,
    approval: &Approval,
    now: DateTime<Utc>,
) -> Result<(), GrantError> {
    check_approver(
        svc,
        integration,
        &approval.approver,
        &approval.requester.id,
        approval.sent_at,
        now,
    )
}

/// The checks an approval and an extension share: the approver is not the requester (unless
/// the integration allows it), and the event is fresh (not older than the configured age, not
/// from the future).
pub(crate) fn check_approver(
    svc: &Services,
    integration: &Integration,
    approver: &str,
    requester: &str,
    sent_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), GrantError> {
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
            return Err(GrantError::Policy(format!(
                "the approval event's time {} is in the future",
                sent.to_rfc3339()
            )));
        }
    }
    Ok(())
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
        "access_role_arn": record.iam_policy.as_ref().and_then(|p| p.role_arn.as_deref()),
        "custom_access_details": result.custom_access_details,
    });
    announce_event(svc, record, crate::contract::events::GRANTED, detail).await;
}

/// Puts one of pgjit's own events (never a secret in it) on `PGJIT_EVENT_BUS`. What it reports
/// stands whether or not the event goes out; a failure is logged and counted.
pub(crate) async fn announce_event(
    svc: &Services,
    record: &GrantRecord,
    detail_type: &str,
    detail: serde_json::Value,
) {
    emit(
        svc,
        detail_type,
        detail,
        &record.request_id,
        &record.integration,
    )
    .await;
}

/// [`announce_event`] for any request, granted or not.
pub(crate) async fn emit(
    svc: &Services,
    detail_type: &str,
    detail: serde_json::Value,
    request_id: &str,
    integration: &str,
) {
    let Some(bus) = &svc.config.event_bus else {
        return;
    };
    let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
        .event_bus_name(bus)
        .source(&svc.config.event_source)
        .detail_type(detail_type)
        .detail(detail.to_string())
        .build();
    let failed = match svc.events.put_events().entries(entry).send().await {
        Ok(out) => (out.failed_entry_count() > 0)
            .then(|| format!("{} entry failed", out.failed_entry_count())),
        Err(e) => Some(error_chain(&AwsError::new("events:PutEvents", e))),
    };
    if let Some(why) = failed {
        tracing::warn!(request_id, integration, error = %why, detail_type, "event not sent");
        crate::metrics::count("EventsFailed", 1, integration);
    }
}

fn stuck_after(svc: &Services) -> Duration {
    Duration::from_std(svc.config.stuck_after).unwrap_or(Duration::minutes(15))
}

fn is_stuck(record: &GrantRecord, now: DateTime<Utc>) -> bool {
    record
        .due_at
        .as_deref()
        .is_none_or(|due| due <= due_key(now).as_str())
}

type StepResult = Result<(), (&'static str, StepError)>;

/// One log line per finished step, with who and where, and its duration as a metric.
fn step_done(record: &GrantRecord, operation: &str, step: &str, started: std::time::Instant) {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(request_id = %record.request_id, integration = %record.integration, db_user = %record.db_user, operation, step, duration_ms = ms, "step done");
    crate::metrics::step_duration(&format!("{operation}.{step}"), ms);
}

fn at<T, E: Into<StepError>>(step: &'static str) -> impl FnOnce(E) -> (&'static str, StepError) {
    move |e| (step, e.into())
}
