//! Extending an active grant: more time for the same user, password and privileges.
//!
//! The expiry lives in five places: the login role's `VALID UNTIL`, the one revoke schedule,
//! an IAM-mode policy's `DateLessThan` condition, the credentials secret's `expires_at`, and the
//! record. They are moved one after the other, the record last (the commit point); a failure
//! on the way moves back what was moved, so every place shows the old expiry or every place
//! the new one.

use chrono::{DateTime, Duration, Utc};

use crate::aws::store::{due_key, ExtensionEntry, GrantRecord, GrantStatus, StoreError};
use crate::aws::Services;
use crate::contract::events::Extension;
use crate::contract::integration::{AccessMode, Integration};
use crate::control::grants::{GrantError, GrantResult, StepError};
use crate::{aws::credentials, aws::schedule, control::endpoint, engine::roles};

/// The most extensions one grant takes (each is kept in its record, which DynamoDB caps at
/// 400 KB).
pub const MAX_EXTENSIONS: usize = 50;

/// The places an extension moves, in the order it moves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    Role,
    Schedule,
    Policy,
    Secret,
}

impl Place {
    fn step(self) -> &'static str {
        match self {
            Place::Role => "valid until",
            Place::Schedule => "revoke schedule",
            Place::Policy => "iam policy",
            Place::Secret => "credentials secret",
        }
    }
}

/// Handles an extension: checks it like an approval (a trusted event, fresh, approver not the
/// requester), against the grant (active) and the integration (`max_duration_seconds` from now,
/// `max_total_duration_seconds` from the first grant), then moves the expiry everywhere. The
/// same extension delivered again changes nothing and returns the grant as it is.
pub async fn extend(
    svc: &Services,
    extension: &Extension,
    now: DateTime<Utc>,
) -> Result<GrantResult, GrantError> {
    crate::contract::events::check_request_id(&extension.request_id)?;
    let mut record = svc
        .store
        .get_grant(&extension.request_id)
        .await?
        .ok_or_else(|| GrantError::UnknownRequest(extension.request_id.clone()))?;
    let integration = crate::control::grants::load_integration(svc, &record.integration).await?;
    let key = extension.key();
    if record.extensions.iter().any(|e| e.key == key) {
        tracing::info!(request_id = %record.request_id, db_user = %record.db_user, "repeated extension: nothing to do");
        return Ok(crate::control::grants::result_of(
            &record,
            &integration,
            true,
        ));
    }
    crate::control::grants::check_approver(
        svc,
        &integration,
        &extension.approver,
        &record.requester.id,
        extension.sent_at,
        now,
    )?;
    crate::control::flows::check_extension(svc, &integration, &record, extension, now).await?;
    if record.extensions.len() >= MAX_EXTENSIONS {
        return Err(GrantError::Policy(format!(
            "request {:?} has been extended {MAX_EXTENSIONS} times: ask for a new grant",
            record.request_id
        )));
    }
    if record.status != GrantStatus::Active {
        return Err(GrantError::Policy(format!(
            "request {:?} is {}: only an active grant can be extended",
            record.request_id, record.status
        )));
    }
    let until = new_expiry(&record, &integration, extension.duration_seconds, now)?;
    let from = record.expires_at;

    let target = endpoint::resolve(svc, &integration)
        .await
        .map_err(|e| step_error(&record, "connect", false, e.into()))?;
    let mut moved: Vec<Place> = Vec::new();
    let result = crate::control::budget::bounded(move_everything(
        svc,
        &integration,
        &target,
        &record,
        until,
        &mut moved,
    ))
    .await;
    let outcome = match result {
        Some(Ok(())) => {
            commit(
                svc,
                &integration,
                &mut record,
                extension,
                &key,
                from,
                until,
                now,
            )
            .await
        }
        Some(Err((place, e))) => Err((place.step(), e)),
        None => Err((
            "deadline",
            StepError::Other("the invocation's time ran out before the extension finished".into()),
        )),
    };
    if let Err((step, source)) = outcome {
        // A revoke that came in meanwhile removed the policy and the secret: what the
        // extension wrote after it must not bring them back.
        let now_status = svc
            .store
            .get_grant(&record.request_id)
            .await
            .ok()
            .flatten()
            .map(|r| r.status);
        if now_status.is_some_and(|s| s != GrantStatus::Active) {
            moved.retain(|p| matches!(p, Place::Role | Place::Schedule));
            if let Some(policy) = &record.iam_policy {
                if let Err(e) =
                    crate::aws::access_role::remove_iam_access(svc, policy, &record.request_id)
                        .await
                {
                    tracing::error!(request_id = %record.request_id, error = %crate::engine::postgres::error_chain(&e), "removing the policy re-made by an extension that lost to a revoke failed");
                }
            }
        }
        // Back to the old expiry wherever it was moved; the record was not changed.
        let undone = move_back(svc, &integration, &target, &record, from, &moved).await;
        tracing::error!(request_id = %record.request_id, db_user = %record.db_user, step, undone, error = %crate::engine::postgres::error_chain(&source), "extension failed");
        return Err(step_error(&record, step, undone, source));
    }
    let detail = format!(
        "by {} from {} until {}{}",
        extension.approver,
        from.to_rfc3339(),
        until.to_rfc3339(),
        extension
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    svc.store
        .append_audit(&crate::control::grants::audit(
            &record,
            "extended",
            now,
            Some(detail),
        ))
        .await?;
    tracing::info!(request_id = %record.request_id, integration = %record.integration, db_user = %record.db_user, from = %from, until = %until, "extended");
    crate::metrics::count("GrantsExtended", 1, &record.integration);
    let result = crate::control::grants::result_of(&record, &integration, false);
    let event = serde_json::json!({
        "request_id": record.request_id,
        "integration": record.integration,
        "requester": record.requester,
        "approver": extension.approver,
        "reason": extension.reason,
        "db_user": record.db_user,
        "previous_expires_at": from,
        "expires_at": until,
        "secret_arn": record.secret_arn,
    });
    crate::control::grants::announce_event(svc, &record, crate::contract::events::EXTENDED, event)
        .await;
    Ok(result)
}

/// Now + the duration, within the integration's limits; never earlier than the current expiry
/// (an early revoke shortens a grant, not an extension).
fn new_expiry(
    record: &GrantRecord,
    integration: &Integration,
    duration_seconds: u64,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, GrantError> {
    if duration_seconds > integration.max_duration_seconds {
        return Err(GrantError::Policy(format!(
            "duration_seconds {duration_seconds} is longer than the integration's max_duration_seconds {}",
            integration.max_duration_seconds
        )));
    }
    let until = now + Duration::seconds(i64::try_from(duration_seconds).unwrap_or(i64::MAX));
    if let Some(total) = integration.max_total_duration_seconds {
        let latest =
            record.created_at + Duration::seconds(i64::try_from(total).unwrap_or(i64::MAX));
        if until > latest {
            return Err(GrantError::Policy(format!(
                "the grant would last until {}, past its first grant ({}) plus max_total_duration_seconds {total} ({})",
                until.to_rfc3339(),
                record.created_at.to_rfc3339(),
                latest.to_rfc3339()
            )));
        }
    }
    if until <= record.expires_at {
        return Err(GrantError::Policy(format!(
            "the grant already lasts until {}, later than now + {duration_seconds} s",
            record.expires_at.to_rfc3339()
        )));
    }
    Ok(until)
}

/// Moves the expiry to `until` in PostgreSQL, the schedule, the IAM policy and the secret,
/// noting each place moved in `moved`.
async fn move_everything(
    svc: &Services,
    integration: &Integration,
    target: &endpoint::Resolved,
    record: &GrantRecord,
    until: DateTime<Utc>,
    moved: &mut Vec<Place>,
) -> Result<(), (Place, StepError)> {
    let fp = &svc.failpoints;
    for place in places(record) {
        move_to(svc, integration, target, record, place, until)
            .await
            .map_err(|e| (place, e))?;
        moved.push(place);
        fp.check(match place {
            Place::Role => "extend:after_role",
            Place::Schedule => "extend:after_schedule",
            Place::Policy => "extend:after_policy",
            Place::Secret => "extend:after_secret",
        })
        .await
        .map_err(|e| (place, e.into()))?;
    }
    Ok(())
}

/// The places this grant holds its expiry in, besides its record.
fn places(record: &GrantRecord) -> Vec<Place> {
    let mut places = vec![Place::Role, Place::Schedule];
    match record.access_mode {
        AccessMode::Iam if record.iam_policy.is_some() => places.push(Place::Policy),
        AccessMode::Password if record.secret_arn.is_some() => places.push(Place::Secret),
        _ => {}
    }
    places
}

async fn move_to(
    svc: &Services,
    integration: &Integration,
    target: &endpoint::Resolved,
    record: &GrantRecord,
    place: Place,
    until: DateTime<Utc>,
) -> Result<(), StepError> {
    match place {
        Place::Role => {
            let exists = roles::set_valid_until(
                &target.connector,
                integration.maintenance_database(),
                &record.db_user,
                &integration.user_prefix,
                until,
            )
            .await?;
            if !exists {
                return Err(StepError::Other(format!(
                    "the login role {:?} does not exist",
                    record.db_user
                )));
            }
        }
        Place::Schedule => {
            schedule::reschedule(
                svc,
                &schedule::name_of(record.schedule_name.as_deref(), &record.request_id),
                &record.request_id,
                until,
            )
            .await?;
        }
        Place::Policy => {
            let moved = GrantRecord {
                expires_at: until,
                ..record.clone()
            };
            crate::control::grants::grant::put_connect_policy(svc, integration, target, &moved)
                .await?;
        }
        Place::Secret => {
            let arn = record.secret_arn.as_deref().unwrap_or_default();
            credentials::set_expiry(svc, arn, &record.request_id, until).await?;
        }
    }
    Ok(())
}

/// Puts the old expiry back in every place moved, newest first; returns whether all went back.
async fn move_back(
    svc: &Services,
    integration: &Integration,
    target: &endpoint::Resolved,
    record: &GrantRecord,
    from: DateTime<Utc>,
    moved: &[Place],
) -> bool {
    let mut all = true;
    for place in moved.iter().rev() {
        if let Err(e) = crate::control::budget::with_reserve(move_to(
            svc,
            integration,
            target,
            record,
            *place,
            from,
        ))
        .await
        {
            all = false;
            tracing::error!(request_id = %record.request_id, step = place.step(), error = %crate::engine::postgres::error_chain(&e), "moving the expiry back failed");
        }
    }
    all
}

/// Writes the new expiry to the record (conditional on its version: a revoke racing the
/// extension wins, and the extension is moved back).
#[allow(clippy::too_many_arguments)]
async fn commit(
    svc: &Services,
    integration: &Integration,
    record: &mut GrantRecord,
    extension: &Extension,
    key: &str,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), (&'static str, StepError)> {
    svc.failpoints
        .check("extend:before_record")
        .await
        .map_err(|e| ("record", e.into()))?;
    let mut updated = record.clone();
    updated.expires_at = until;
    updated.updated_at = now;
    updated.due_at = Some(due_key(crate::control::grants::active_due(
        &updated,
        integration,
    )));
    updated.extensions.push(ExtensionEntry {
        key: key.to_owned(),
        approver: extension.approver.clone(),
        reason: extension.reason.clone(),
        at: now,
        from,
        until,
    });
    match svc.store.update_grant(&mut updated).await {
        Ok(()) => {
            *record = updated;
            Ok(())
        }
        Err(StoreError::Conflict { .. }) => Err((
            "record",
            StepError::Other(
                "the grant changed while it was being extended (a revoke?); try again".into(),
            ),
        )),
        Err(e) => Err(("record", e.into())),
    }
}

fn step_error(
    record: &GrantRecord,
    step: &'static str,
    undone: bool,
    source: StepError,
) -> GrantError {
    GrantError::Step {
        operation: "extension",
        request_id: record.request_id.clone(),
        step,
        undone,
        source,
    }
}
