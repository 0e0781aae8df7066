//! Taking a grant away (at expiry, early, by cleanup or by an operator), deleting its user after
//! the retention, rotating its password, and revoking everything of an integration.

use chrono::{DateTime, Duration, Utc};

use crate::aws::credentials::{self, CredentialsValue};
use crate::aws::schedule;
use crate::aws::store::{due_key, GrantRecord, GrantStatus, StoreError};
use crate::aws::Services;
use crate::contract::events::RevokeTrigger;
use crate::contract::integration::AccessMode;
use crate::control::endpoint;
use crate::engine::postgres::error_chain;
use crate::engine::roles::revocation;
use crate::engine::roles::{self, departure, RoleError};
use crate::secret::SecretString;

use super::grant::undo_grant;
use super::{
    active_due, at, audit, is_stuck, load_integration, step_done, stuck_after, GrantError,
    RevokeResult, StepError,
};

/// Takes a grant's access away: at expiry (the schedule), early (an event or an operator), or
/// when cleanup finds it overdue. Safe to repeat; a failure leaves the record `revoking` so the
/// scheduler's retry, the next event or cleanup finishes it.
pub async fn revoke(
    svc: &Services,
    request_id: &str,
    trigger: RevokeTrigger,
    now: DateTime<Utc>,
) -> Result<RevokeResult, GrantError> {
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
            None => svc
                .store
                .get_grant(request_id)
                .await?
                .ok_or_else(|| GrantError::UnknownRequest(request_id.to_owned()))?,
        };
        let done = |r: &GrantRecord| RevokeResult {
            request_id: r.request_id.clone(),
            status: r.status,
            db_user: r.db_user.clone(),
            repeated: true,
            sessions_ended: 0,
        };
        match record.status {
            GrantStatus::Revoked | GrantStatus::Deleted | GrantStatus::Failed => {
                return Ok(done(&record))
            }
            GrantStatus::Granting if !is_stuck(&record, now) => {
                return Err(GrantError::InProgress(record.request_id))
            }
            GrantStatus::Granting => {
                // An abandoned grant: undo it rather than revoke what never finished.
                let integration = load_integration(svc, &record.integration).await?;
                undo_grant(svc, &integration, &record, None)
                    .await
                    .map_err(|source| GrantError::Step {
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
            GrantStatus::Active
                if trigger == RevokeTrigger::Scheduled
                    && record.expires_at > now + SCHEDULE_SLACK =>
            {
                tracing::info!(request_id = %record.request_id, db_user = %record.db_user, expires_at = %record.expires_at, "a scheduled revoke before the expiry: the schedule was moved, nothing to do");
                return Ok(RevokeResult {
                    request_id: record.request_id.clone(),
                    status: record.status,
                    db_user: record.db_user.clone(),
                    repeated: true,
                    sessions_ended: 0,
                });
            }
            GrantStatus::Active if trigger == RevokeTrigger::Cleanup && record.expires_at > now => {
                tracing::info!(request_id = %record.request_id, db_user = %record.db_user, expires_at = %record.expires_at, trigger = ?trigger, "not expired: nothing to revoke yet");
                return Ok(RevokeResult {
                    request_id: record.request_id.clone(),
                    status: record.status,
                    db_user: record.db_user.clone(),
                    repeated: true,
                    sessions_ended: 0,
                });
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
        let integration = if shared.is_none() {
            Some(load_integration(svc, &record.integration).await?)
        } else {
            None
        };
        let steps = crate::control::budget::bounded(async {
            let opened;
            let server = match (shared, integration) {
                (Some(server), _) => server,
                (None, integration) => {
                    let integration = integration
                        .ok_or(("connect", StepError::Other("no integration".into())))?;
                    opened = endpoint::Server::open(svc, integration, 1)
                        .await
                        .map_err(at::<(), _>("connect"))?;
                    &opened
                }
            };
            revoke_steps(svc, server, &mut record, trigger, now).await
        })
        .await;
        let steps = steps.unwrap_or(Err((
            "deadline",
            StepError::Other("the invocation's time ran out before the revoke finished".into()),
        )));
        return match steps {
            Ok(sessions_ended) => {
                tracing::info!(request_id = %record.request_id, integration = %record.integration, db_user = %record.db_user, status = %record.status, sessions_ended, "revoked");
                crate::metrics::count("GrantsRevoked", 1, &record.integration);
                Ok(RevokeResult {
                    request_id: record.request_id.clone(),
                    status: record.status,
                    db_user: record.db_user.clone(),
                    repeated: false,
                    sessions_ended,
                })
            }
            Err((step, source)) => {
                if step == "deadline" {
                    // Cut short: due again now, so the next sweep (a cleanup's continuation, a
                    // minute later) finishes it rather than the one after the stuck window.
                    crate::control::budget::with_reserve(due_again(svc, &record.request_id, now))
                        .await;
                }
                tracing::error!(request_id = %record.request_id, integration = %record.integration, db_user = %record.db_user, step, error = %error_chain(&source), "revoke failed; it will be retried");
                crate::metrics::count("RevokesFailed", 1, &record.integration);
                Err(GrantError::Step {
                    operation: "revoke",
                    request_id: record.request_id.clone(),
                    step,
                    undone: false,
                    source,
                })
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

async fn revoke_steps(
    svc: &Services,
    server: &endpoint::Server,
    record: &mut GrantRecord,
    trigger: RevokeTrigger,
    now: DateTime<Utc>,
) -> Result<i64, (&'static str, StepError)> {
    let fp = &svc.failpoints;
    let integration = &server.integration;
    let started = std::time::Instant::now();
    let db = integration.maintenance_database();
    let client = server
        .pool
        .get()
        .await
        .map_err(|e| ("connect", StepError::Role(e.into())))?;
    let revoked = revocation::revoke_over(
        &client,
        server.pool.connector(),
        db,
        &record.db_user,
        &integration.user_prefix,
    )
    .await
    .map_err(at::<(), _>("database role"))?;
    client.release();
    fp.check("revoke:after_role")
        .await
        .map_err(at::<(), _>("database role"))?;
    step_done(record, "revoke", "database_role", started);
    let started = std::time::Instant::now();
    if let Some(policy) = &record.iam_policy {
        crate::aws::access_role::remove_iam_access(svc, policy, &record.request_id)
            .await
            .map_err(at::<(), _>("iam policy"))?;
    }
    if record.access_mode == AccessMode::Password {
        let name = credentials::secret_name(svc, &integration.name, &record.request_id);
        let deleted = match &record.secret_arn {
            // The ARN its grant recorded, of the request's own name: deleted without a read.
            Some(arn) if credentials::is_arn_of(arn, &name) => {
                credentials::delete_recorded(svc, arn).await
            }
            recorded => {
                credentials::delete(
                    svc,
                    recorded.as_deref().unwrap_or(&name),
                    &record.request_id,
                    credentials::Foreign::Refuse,
                )
                .await
            }
        };
        deleted.map_err(at::<(), _>("credentials secret"))?;
    }
    fp.check("revoke:after_secret")
        .await
        .map_err(at::<(), _>("credentials secret"))?;
    step_done(record, "revoke", "credentials", started);
    // A fired schedule deletes itself; an early revoke removes the one still waiting.
    if trigger != RevokeTrigger::Scheduled {
        schedule::delete(
            svc,
            &schedule::name_of(record.schedule_name.as_deref(), &record.request_id),
        )
        .await
        .map_err(at::<(), _>("revoke schedule"))?;
    }
    record.revoked_at = Some(now);
    let delete_after = now + Duration::days(i64::from(integration.user_cleanup_after_days));
    record.delete_after = Some(delete_after);
    let detail = match (&record.revoke_reason, handed_over_detail(&revoked.disarmed)) {
        (Some(reason), Some(disarmed)) => Some(format!("{reason}; {disarmed}")),
        (reason, disarmed) => reason.clone().or(disarmed),
    };
    // The access is gone: the trail says so now, whatever becomes of the drop that may follow.
    svc.store
        .append_audit(&audit(record, "revoked", now, detail))
        .await
        .map_err(at::<(), _>("audit"))?;
    if integration.user_cleanup_after_days == 0 {
        let started = std::time::Instant::now();
        let deleted = drop_user(server, &record.db_user)
            .await
            .map_err(at::<(), _>("delete role"))?;
        step_done(record, "revoke", "delete_role", started);
        record.status = GrantStatus::Deleted;
        record.deleted_at = Some(now);
        record.due_at = None;
        svc.store
            .append_audit(&audit(
                record,
                "deleted",
                now,
                handed_over_detail(&deleted.handed_over),
            ))
            .await
            .map_err(at::<(), _>("audit"))?;
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
async fn drop_user(
    server: &endpoint::Server,
    db_user: &str,
) -> Result<departure::Deleted, RoleError> {
    let integration = &server.integration;
    let client = server.pool.get().await?;
    let deleted = departure::delete_over(
        &client,
        server.pool.connector(),
        integration.maintenance_database(),
        db_user,
        &integration.user_prefix,
        &integration.holding_role,
    )
    .await?;
    client.release();
    Ok(deleted)
}

/// The audit trail's account of what a departed user left behind: names, never contents.
fn handed_over_detail(changes: &[String]) -> Option<String> {
    (!changes.is_empty()).then(|| format!("objects the user owned: {}", changes.join("; ")))
}

/// Drops a revoked user whose retention is over.
pub async fn delete_user(
    svc: &Services,
    record: &mut GrantRecord,
    server: &endpoint::Server,
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    let deleted = drop_user(server, &record.db_user).await?;
    record.status = GrantStatus::Deleted;
    record.deleted_at = Some(now);
    record.due_at = None;
    record.updated_at = now;
    svc.store.update_grant(record).await?;
    svc.store
        .append_audit(&audit(
            record,
            "deleted",
            now,
            handed_over_detail(&deleted.handed_over),
        ))
        .await?;
    crate::metrics::count("UsersDeleted", 1, &record.integration);
    Ok(())
}

/// Gives an active password grant a new password, in the database and in its secret.
pub async fn rotate(
    svc: &Services,
    record: &mut GrantRecord,
    server: &endpoint::Server,
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    let integration = &server.integration;
    let connector = server.pool.connector();
    let password = SecretString::random_password();
    let db = integration.maintenance_database();
    let client = server.pool.get().await.map_err(RoleError::from)?;
    let changed = roles::set_password(
        &client,
        connector.user(),
        db,
        &record.db_user,
        &integration.user_prefix,
        &password,
    )
    .await?;
    client.release();
    if !changed {
        return Err(StepError::Other(format!(
            "role {:?} is gone",
            record.db_user
        )));
    }
    let name = record
        .secret_arn
        .clone()
        .unwrap_or_else(|| credentials::secret_name(svc, &integration.name, &record.request_id));
    let host = record
        .host
        .clone()
        .unwrap_or_else(|| connector.endpoint().host.clone());
    let value = CredentialsValue {
        engine: "postgres",
        host: &host,
        port: record.port.unwrap_or(connector.endpoint().port),
        dbname: record
            .access
            .first()
            .map(|a| a.database.as_str())
            .unwrap_or(db),
        username: &record.db_user,
        password: &password,
        expires_at: record.expires_at,
    };
    credentials::rotate(svc, &name, &value, &record.request_id).await?;
    record.rotated_at = Some(now);
    record.updated_at = now;
    record.due_at = Some(due_key(active_due(record, integration)));
    svc.store.update_grant(record).await?;
    svc.store
        .append_audit(&audit(record, "rotated", now, None))
        .await?;
    Ok(())
}

/// Break glass: revokes every grant of one integration that still gives or may give access
/// (active, revoking, and granting ones that were abandoned), early. Returns each request id
/// with its outcome; one failure does not stop the others.
pub async fn revoke_all(
    svc: &Services,
    integration: &str,
    now: DateTime<Utc>,
) -> Result<Vec<(String, Result<RevokeResult, String>)>, GrantError> {
    load_integration(svc, integration).await?;
    let mut out = Vec::new();
    for status in [
        GrantStatus::Active,
        GrantStatus::Revoking,
        GrantStatus::Granting,
    ] {
        for record in svc
            .store
            .grants_in(status)
            .await?
            .into_iter()
            .filter(|r| r.integration == integration)
        {
            let result = revoke(svc, &record.request_id, RevokeTrigger::Early, now)
                .await
                .map_err(|e| error_chain(&e));
            tracing::warn!(request_id = %record.request_id, integration, db_user = %record.db_user, ok = result.is_ok(), "break-glass revoke");
            out.push((record.request_id, result));
        }
    }
    Ok(out)
}
