//! The Lambda handlers: plain async functions over [`Services`], so tests call them with
//! `LambdaEvent::new` and the binaries only wire them to `lambda_runtime::run`.

use chrono::Utc;
use lambda_runtime::{Error, LambdaEvent};
use serde_json::Value;

use crate::aws::Services;
use crate::control::cleanup::CleanupReport;
use crate::control::discovery::DiscoveryReport;
use crate::control::grants::{GrantResult, RevokeResult};
use crate::engine::postgres::error_chain;

/// Turns an error into the function's failure, with its whole chain of causes in the message
/// (none of pgjit's errors carry a secret).
fn failure<E: std::error::Error + 'static>(e: E) -> Error {
    error_chain(&e).into()
}

/// Approval (EventBridge `Access Request Approved` from the approval bus) → grant; extension
/// (`Access Extension Approved`) → the grant's expiry moved.
///
/// Only a whole event is taken, with its `time`, the approval `source` and pgjit's own account,
/// and only with the MAC of the approvals key ([`crate::aws::approval_mac`]): whoever may invoke the
/// function directly (rather than through the bus, whose policy names the senders) writes the
/// envelope too, but cannot make the MAC.
pub async fn grant(svc: &Services, event: LambdaEvent<Value>) -> Result<GrantResult, Error> {
    let envelope = crate::contract::events::Envelope::of(&event.payload).map_err(failure)?;
    let account = svc.account_id().await.map_err(failure)?;
    envelope.check(&svc.config.approval_source, &account).map_err(failure)?;
    let mut event = event;
    event.payload = crate::aws::approval_mac::verify(svc, event.payload).await.map_err(failure)?;
    if crate::contract::events::is_extension(&event.payload) {
        // An extension is known by what was signed, not by the event's id: whoever may invoke
        // the function could resend a captured one under a new id, to extend again.
        if let Ok(signed) = crate::aws::approval_mac::message(&event.payload) {
            event.payload["id"] = Value::String(signed);
        }
        let extension = crate::contract::events::parse_extension(event.payload).map_err(failure)?;
        let span = tracing::info_span!("extend", request_id = %extension.request_id);
        let _enter = span.enter();
        let started = std::time::Instant::now();
        let deadline = crate::control::budget::deadline_of(event.context.deadline);
        let result = crate::control::budget::within(deadline, crate::control::extension::extend(svc, &extension, Utc::now())).await;
        summary("extend", started, &result, |r| serde_json::json!({"request_id": r.request_id, "status": r.status, "expires_at": r.expires_at, "repeated": r.repeated}));
        return result.map_err(failure);
    }
    let approval = crate::contract::events::parse_approval(event.payload).map_err(failure)?;
    let span = tracing::info_span!("grant", request_id = %approval.request_id, integration = %approval.integration);
    let _enter = span.enter();
    let started = std::time::Instant::now();
    let deadline = crate::control::budget::deadline_of(event.context.deadline);
    let result = crate::control::budget::within(deadline, crate::control::grants::grant::grant(svc, &approval, Utc::now())).await;
    summary("grant", started, &result, |r| serde_json::json!({"request_id": r.request_id, "status": r.status, "db_user": r.db_user, "repeated": r.repeated}));
    result.map_err(failure)
}

/// The scheduler's `{"request_id":…}` or an `Access Revoke Requested` event → revoke. A failure
/// is returned as the function's error, so the scheduler retries and then dead-letters it.
///
/// An early revoke counts only with the approvals key's MAC; the scheduler's bare input carries
/// none (whoever may invoke the function could send it), so it takes away only an expired grant.
pub async fn revoke(svc: &Services, event: LambdaEvent<Value>) -> Result<RevokeResult, Error> {
    let payload = if event.payload.get("detail-type").is_some() { crate::aws::approval_mac::verify(svc, event.payload).await.map_err(failure)? } else { event.payload };
    let request = crate::contract::events::parse_revoke(payload).map_err(failure)?;
    let started = std::time::Instant::now();
    let deadline = crate::control::budget::deadline_of(event.context.deadline);
    let result = crate::control::budget::within(deadline, crate::control::grants::revoke::revoke(svc, &request.request_id, request.trigger, Utc::now())).await;
    summary("revoke", started, &result, |r| {
        serde_json::json!({"request_id": r.request_id, "status": r.status, "db_user": r.db_user, "repeated": r.repeated, "sessions_ended": r.sessions_ended})
    });
    result.map_err(failure)
}

/// The daily sweep, or the hourly overdue one (`{"sweep":"overdue"}`), or the continuation of
/// one cut short (`"continuation": n`). The time is always the real one, whatever the event says.
pub async fn cleanup(svc: &Services, event: LambdaEvent<Value>) -> Result<CleanupReport, Error> {
    let started = std::time::Instant::now();
    let scope = crate::control::cleanup::Scope::of(&event.payload);
    let continuation = crate::control::cleanup::continuation_of(&event.payload).map_err(Error::from)?;
    let deadline = crate::control::budget::deadline_of(event.context.deadline);
    let mut result = crate::control::budget::within(deadline, crate::control::cleanup::run_scope(svc, Utc::now(), scope)).await;
    if let Ok(report) = &mut result {
        // In the time kept back at the end: one Scheduler call.
        match crate::control::cleanup::continue_later(svc, &event.context.invoked_function_arn, scope, continuation, report, Utc::now()).await {
            Ok(scheduled) => report.continuation = scheduled,
            Err(e) => report.errors.push(format!("continuation: {}", crate::engine::postgres::error_chain(&e))),
        }
    }
    summary("cleanup", started, &result, |r| {
        serde_json::json!({"scope": format!("{scope:?}").to_lowercase(), "continuation": continuation, "deleted": r.deleted.len(), "revoked_overdue": r.revoked_overdue.len(),
            "finished": r.finished.len(), "rotated": r.rotated.len(), "orphans": r.orphans.len(), "profile_roles": r.profile_roles, "profiles_dropped": r.profiles_dropped.len(),
            "largest_acl": r.largest_acls.iter().map(|(_, n)| *n).max(), "errors": r.errors.len(), "items_read": r.items_read,
            "left": r.left, "reconcile_left": r.reconcile_left.len(), "connections": r.connections, "continues": r.continuation})
    });
    result.map_err(failure)
}

/// The periodic discovery.
pub async fn discovery(svc: &Services, _event: LambdaEvent<Value>) -> Result<DiscoveryReport, Error> {
    let started = std::time::Instant::now();
    let result = crate::control::discovery::run(svc, Utc::now(), |_| {}).await;
    summary("discovery", started, &result, |r| serde_json::to_value(r).unwrap_or_default());
    result.map_err(failure)
}

/// A CloudWatch Logs subscription delivery of an RDS or Aurora `postgresql` log group →
/// session audit entries. A malformed delivery fails (and writes nothing); a log group of no
/// integration, or a control message, succeeds with nothing written.
pub async fn audit(svc: &Services, event: LambdaEvent<Value>) -> Result<crate::control::sessions::attribution::Ingested, Error> {
    let started = std::time::Instant::now();
    let deadline = crate::control::budget::deadline_of(event.context.deadline);
    let result = crate::control::budget::within(deadline, crate::control::sessions::ingest_subscription(&svc.store, svc.region().as_deref(), svc.config.session_retention_days, &event.payload, Utc::now())).await;
    summary("audit", started, &result, |r| serde_json::to_value(r).unwrap_or_default());
    result.map_err(failure)
}

/// One JSON line per invocation with its outcome: what an operator reads first in CloudWatch,
/// and what metric filters count. `details` says what was done (never a secret).
fn summary<T, E: std::error::Error + 'static>(function: &str, started: std::time::Instant, result: &Result<T, E>, details: impl FnOnce(&T) -> Value) {
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(value) => tracing::info!(summary = true, function, outcome = "ok", duration_ms, details = %details(value), "invocation summary"),
        Err(e) => tracing::error!(summary = true, function, outcome = "error", duration_ms, error = %error_chain(e), "invocation summary"),
    }
}

/// A signed webhook request to the Function URL → grant (401 for any signature fault).
pub async fn webhook(
    svc: &Services,
    secrets: &crate::control::webhook::SecretCache,
    event: LambdaEvent<aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlRequest>,
) -> Result<aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlResponse, Error> {
    Ok(crate::control::webhook::handle(svc, secrets, event.payload, Utc::now()).await)
}

/// The front door (`requests`): a SigV4-signed call to its Function URL, or a start schedule's
/// `{"start": REQUEST_ID}`.
pub async fn requests(svc: &Services, event: LambdaEvent<Value>) -> Result<Value, Error> {
    // Boxed: the front door's future nests the grant path's types deep enough to pass the
    // compiler's layout depth in the binary's own future.
    Box::pin(crate::control::requests::url::invoke(svc, event.payload, Utc::now())).await.map_err(failure)
}

/// JSON logs for CloudWatch: one line per event, level from `RUST_LOG` (default info).
pub fn init_tracing() {
    lambda_runtime::tracing::init_default_subscriber();
}
