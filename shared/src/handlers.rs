//! The Lambda handlers: plain async functions over [`Services`], so tests call them with
//! `LambdaEvent::new` and the binaries only wire them to `lambda_runtime::run`.

use chrono::Utc;
use lambda_runtime::{Error, LambdaEvent};
use serde_json::Value;

use crate::aws::Services;
use crate::cleanup::CleanupReport;
use crate::discovery::DiscoveryReport;
use crate::grants::{GrantResult, RevokeResult};
use crate::postgres::error_chain;

/// Turns an error into the function's failure, with its whole chain of causes in the message
/// (none of pgjit's errors carry a secret).
fn failure<E: std::error::Error + 'static>(e: E) -> Error {
    error_chain(&e).into()
}

/// Approval (EventBridge `Access Request Approved` from the approval bus) → grant.
///
/// Only a whole event is taken, with its `time`, the approval `source` and pgjit's own account:
/// whoever may invoke the function directly (rather than through the bus, whose policy names the
/// senders) cannot skip the freshness check with a bare `detail` or an event without a time.
pub async fn grant(svc: &Services, event: LambdaEvent<Value>) -> Result<GrantResult, Error> {
    let envelope = crate::events::Envelope::of(&event.payload).map_err(failure)?;
    let account = svc.account_id().await.map_err(failure)?;
    envelope.check(&svc.config.approval_source, &account).map_err(failure)?;
    let approval = crate::events::parse_approval(event.payload).map_err(failure)?;
    let span = tracing::info_span!("grant", request_id = %approval.request_id, integration = %approval.integration);
    let _enter = span.enter();
    crate::grants::grant(svc, &approval, Utc::now()).await.map_err(failure)
}

/// The scheduler's `{"request_id":…}` or an `Access Revoke Requested` event → revoke. A failure
/// is returned as the function's error, so the scheduler retries and then dead-letters it.
pub async fn revoke(svc: &Services, event: LambdaEvent<Value>) -> Result<RevokeResult, Error> {
    let request = crate::events::parse_revoke(event.payload).map_err(failure)?;
    crate::grants::revoke(svc, &request.request_id, request.trigger, Utc::now()).await.map_err(failure)
}

/// The daily sweep. The event's content is not read: the time is always the real one.
pub async fn cleanup(svc: &Services, _event: LambdaEvent<Value>) -> Result<CleanupReport, Error> {
    crate::cleanup::run(svc, Utc::now()).await.map_err(failure)
}

/// The periodic discovery.
pub async fn discovery(svc: &Services, _event: LambdaEvent<Value>) -> Result<DiscoveryReport, Error> {
    crate::discovery::run(svc, Utc::now(), |_| {}).await.map_err(failure)
}

/// A signed webhook request to the Function URL → grant (401 for any signature fault).
pub async fn webhook(
    svc: &Services,
    secrets: &crate::webhook::SecretCache,
    event: LambdaEvent<aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlRequest>,
) -> Result<aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlResponse, Error> {
    Ok(crate::webhook::handle(svc, secrets, event.payload, Utc::now()).await)
}

/// JSON logs for CloudWatch: one line per event, level from `RUST_LOG` (default info).
pub fn init_tracing() {
    lambda_runtime::tracing::init_default_subscriber();
}
