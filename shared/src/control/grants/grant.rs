//! A grant across PostgreSQL, Secrets Manager or IAM, the scheduler and the store, in an order
//! that can always be undone: each step recorded before the next, and undone in reverse.

use chrono::{DateTime, Duration, Utc};

use crate::access::{login_role_name, AccessSet};
use crate::aws::credentials::{self, CredentialsValue};
use crate::aws::schedule;
use crate::aws::store::{due_key, GrantRecord, GrantStatus, StoreError};
use crate::aws::Services;
use crate::aws::{access_role, iam};
use crate::contract::events::Approval;
use crate::contract::integration::{AccessMode, AccessRoles, Integration};
use crate::control::endpoint;
use crate::engine::postgres::error_chain;
use crate::engine::roles::{self, departure, GrantSpec, LoginMethod};
use crate::secret::SecretString;

use super::{
    active_due, announce, at, audit, check_trust, is_stuck, load_integration, result_of, step_done,
    stuck_after, GrantError, GrantResult, StepError, StepResult,
};

/// Handles an approval: checks it against the integration, records it, and grants. A repeated
/// delivery returns the first result and changes nothing.
pub async fn grant(
    svc: &Services,
    approval: &Approval,
    now: DateTime<Utc>,
) -> Result<GrantResult, GrantError> {
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
        let requester = iam::requester_of(arn)
            .map_err(|m| GrantError::Policy(format!("requester.iam_arn: {m}")))?;
        let account = svc.account_id().await.map_err(|e| GrantError::Step {
            operation: "grant",
            request_id: approval.request_id.clone(),
            step: "account",
            undone: false,
            source: e.into(),
        })?;
        iam::check_account(&requester, &account, &svc.config.trusted_accounts)
            .map_err(|m| GrantError::Policy(format!("requester.iam_arn: {m}")))?;
        if integration.access_mode == AccessMode::Iam {
            if access_role::is_identity_center(&requester) && requester.session.is_none() {
                // The permission set's role itself: an access role trusting it would let every
                // person in the permission set in, not the one the approval names.
                return Err(GrantError::Policy(format!("requester.iam_arn: {arn:?} is an IAM Identity Center permission-set role, not a person's session of it (arn:aws:sts::<account>:assumed-role/AWSReservedSSO_…/<user>): access is granted to one person only")));
            }
            if access_role::wanted(&requester, access_roles(svc, &integration)) {
                access_role::boundary(svc).map_err(|m| GrantError::Policy(m))?;
            } else {
                iam::check_policy_target(&requester, &account, &svc.config.protected_roles)
                    .map_err(|m| GrantError::Policy(format!("requester.iam_arn: {m}")))?;
            }
        }
    } else if integration.access_mode == AccessMode::Iam {
        return Err(GrantError::Policy(format!(
            "integration {:?} uses IAM access: requester.iam_arn is needed",
            integration.name
        )));
    }
    let allowed =
        match crate::control::flows::check_approval(svc, &integration, approval, now).await {
            Ok(allowed) => allowed,
            Err(refused @ GrantError::NotInFlow(_)) => {
                // A delivery again of an approval already granted returns its first result, even if
                // the flows (or the hour) changed since.
                if let Some(existing) = svc.store.get_grant(&approval.request_id).await? {
                    let same = existing.integration == approval.integration
                        && existing.requester.id == approval.requester.id
                        && existing.access == approval.access
                        && existing.duration_seconds == approval.duration_seconds;
                    if same
                        && matches!(
                            existing.status,
                            GrantStatus::Active
                                | GrantStatus::Revoking
                                | GrantStatus::Revoked
                                | GrantStatus::Deleted
                        )
                    {
                        return Ok(result_of(&existing, &integration, true));
                    }
                }
                return Err(refused);
            }
            Err(e) => return Err(e),
        };
    let duration = Duration::seconds(i64::try_from(approval.duration_seconds).unwrap_or(i64::MAX));
    let mut fresh = GrantRecord::granting(
        approval,
        &integration,
        login_role_name(&integration.user_prefix, &approval.requester.id),
        now,
        now + duration,
        now + stuck_after(svc),
    );
    if let Some(allowed) = &allowed {
        fresh.flow = Some(allowed.flow.clone());
        fresh.approvers = allowed.approvers.clone();
        fresh.break_glass = allowed.mode == crate::contract::flow::Mode::BreakGlass;
    }
    // The "requested" entry of a new record is written while the endpoint is resolved.
    let (mut record, requested) = match svc.store.insert_grant(&fresh).await {
        Ok(()) => {
            let entry = audit(&fresh, "requested", now, approval.reason.clone());
            (fresh, Some(entry))
        }
        Err(StoreError::AlreadyExists(_)) => {
            let existing = svc
                .store
                .get_grant(&approval.request_id)
                .await?
                .ok_or_else(|| GrantError::InProgress(approval.request_id.clone()))?;
            if existing.integration != approval.integration
                || existing.requester.id != approval.requester.id
                || existing.access != approval.access
                || existing.duration_seconds != approval.duration_seconds
            {
                return Err(GrantError::Mismatch(approval.request_id.clone()));
            }
            match existing.status {
                GrantStatus::Active
                | GrantStatus::Revoking
                | GrantStatus::Revoked
                | GrantStatus::Deleted => {
                    tracing::info!(request_id = %existing.request_id, integration = %existing.integration, db_user = %existing.db_user, status = %existing.status, "repeated approval: nothing to do");
                    return Ok(result_of(&existing, &integration, true));
                }
                GrantStatus::Granting if !is_stuck(&existing, now) => {
                    return Err(GrantError::InProgress(existing.request_id))
                }
                GrantStatus::Granting | GrantStatus::Failed => {
                    // A crashed or failed earlier run: clear whatever it left, then start again.
                    let mut retry = existing;
                    undo_grant(svc, &integration, &retry, None)
                        .await
                        .map_err(|source| GrantError::Step {
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
                        Err(StoreError::Conflict { .. }) => {
                            return Err(GrantError::InProgress(retry.request_id))
                        }
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
            let steps = crate::control::budget::bounded(grant_steps(
                svc,
                &integration,
                &target,
                &access,
                &mut record,
                now,
            ))
            .await;
            (
                steps.unwrap_or(Err((
                    "deadline",
                    StepError::Other(
                        "the invocation's time ran out before the grant finished".into(),
                    ),
                ))),
                Some(target),
            )
        }
        Err(e) => (Err(("connect", StepError::Endpoint(e))), None),
    };
    match steps {
        Ok(()) => {
            tracing::info!(request_id = %record.request_id, integration = %record.integration, db_user = %record.db_user, expires_at = %record.expires_at, "granted");
            crate::metrics::count("GrantsCreated", 1, &record.integration);
            let result = result_of(&record, &integration, false);
            announce(svc, &record, &result).await;
            if record.break_glass {
                // The alarm on this metric pages whoever watches break-glass use.
                tracing::warn!(request_id = %record.request_id, integration = %record.integration, requester = %record.requester.id, flow = ?record.flow, "break-glass access granted: to be reviewed");
                crate::metrics::count_with_total("BreakGlassUsed", 1, &record.integration);
                let detail = serde_json::json!({"request_id": record.request_id, "integration": record.integration, "requester": record.requester,
                    "flow": record.flow, "reason": record.reason, "access": record.access, "expires_at": record.expires_at});
                super::announce_event(
                    svc,
                    &record,
                    crate::contract::events::BREAK_GLASS_USED,
                    detail,
                )
                .await;
            }
            Ok(result)
        }
        Err((step, source)) => {
            tracing::error!(request_id = %record.request_id, integration = %record.integration, db_user = %record.db_user, step, error = %error_chain(&source), "grant failed; undoing");
            crate::metrics::count("GrantsFailed", 1, &record.integration);
            // The undo gets the time kept in reserve for it.
            let undone = match crate::control::budget::with_reserve(undo_grant(
                svc,
                &integration,
                &record,
                target.as_ref(),
            ))
            .await
            {
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
                let _ = svc
                    .store
                    .append_audit(&audit(
                        &record,
                        "grant_failed",
                        Utc::now(),
                        record.failure.clone(),
                    ))
                    .await;
            } else {
                // Left in `granting` and due now: the next cleanup (or delivery) finishes the undo.
                record.due_at = Some(due_key(now));
                let _ = svc.store.update_grant(&mut record).await;
            }
            Err(GrantError::Step {
                operation: "grant",
                request_id: record.request_id.clone(),
                step,
                undone,
                source,
            })
        }
    }
}

/// What a grant made for the requester to get in.
enum WayIn {
    Secret(String),
    Policy(crate::aws::store::IamPolicyRef),
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
    fp.check("grant:after_connect")
        .await
        .map_err(at::<(), _>("connect"))?;
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
            cloud: matches!(
                integration.kind,
                crate::engine::setup::Flavor::Rds | crate::engine::setup::Flavor::Aurora
            ),
        }),
    };
    let granted = roles::grant::grant(&target.connector, &spec)
        .await
        .map_err(at::<(), _>("database role"))?;
    record.session_audit = granted.audit;
    fp.check("grant:after_role")
        .await
        .map_err(at::<(), _>("database role"))?;
    step_done(record, "grant", "database_role", started);
    record.host = Some(target.connector.endpoint().host.clone());
    record.port = Some(target.connector.endpoint().port);

    // How the requester gets in, and the revoke at expiry, do not depend on each other: both are
    // made at once (the undo removes both, whichever got made).
    let (way_in, revoke_schedule) = tokio::join!(
        open_way_in(svc, integration, target, record, &password),
        schedule_revoke(svc, record)
    );
    match way_in? {
        WayIn::Secret(arn) => record.secret_arn = Some(arn),
        WayIn::Policy(policy) => record.iam_policy = Some(policy),
    }
    record.schedule_name = Some(revoke_schedule?);
    let started = std::time::Instant::now();

    svc.store
        .append_audit(&audit(record, "granted", now, None))
        .await
        .map_err(at::<(), _>("audit"))?;
    fp.check("grant:before_activate")
        .await
        .map_err(at::<(), _>("activate"))?;
    record.status = GrantStatus::Active;
    record.updated_at = Utc::now();
    record.due_at = Some(due_key(active_due(record, integration)));
    svc.store
        .update_grant(record)
        .await
        .map_err(at::<(), _>("activate"))?;
    step_done(record, "grant", "activate", started);
    Ok(())
}

/// The credentials secret (password mode) or the IAM policy (IAM mode) for the requester.
async fn open_way_in(
    svc: &Services,
    integration: &Integration,
    target: &endpoint::Resolved,
    record: &GrantRecord,
    password: &SecretString,
) -> Result<WayIn, (&'static str, StepError)> {
    let fp = &svc.failpoints;
    let started = std::time::Instant::now();
    match record.access_mode {
        AccessMode::Password => {
            let name = credentials::secret_name(svc, &integration.name, &record.request_id);
            let first_db = record
                .access
                .first()
                .map(|a| a.database.as_str())
                .unwrap_or(integration.maintenance_database());
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
            let requester = record
                .requester
                .iam_arn
                .as_deref()
                .and_then(|arn| iam::requester_of(arn).ok());
            let readers = credentials::Readers {
                requester: requester.as_ref(),
                functions: &svc.config.function_role_arns,
                others: &svc.config.credential_readers,
            };
            let arn = credentials::store(
                svc,
                &name,
                &value,
                &record.requester.id,
                &record.request_id,
                &readers,
            )
            .await
            .map_err(at::<(), _>("credentials secret"))?;
            fp.check("grant:after_secret")
                .await
                .map_err(at::<(), _>("credentials secret"))?;
            step_done(record, "grant", "credentials_secret", started);
            Ok(WayIn::Secret(arn))
        }
        AccessMode::Iam => {
            let policy = put_connect_policy(svc, integration, target, record)
                .await
                .map_err(|e| ("iam policy", e))?;
            fp.check("grant:after_policy")
                .await
                .map_err(at::<(), _>("iam policy"))?;
            step_done(record, "grant", "iam_policy", started);
            Ok(WayIn::Policy(policy))
        }
    }
}

/// Puts the requester's `rds-db:connect` policy for the record's user, expiring at the record's
/// `expires_at` (a grant, or an extension moving that expiry).
pub(crate) async fn put_connect_policy(
    svc: &Services,
    integration: &Integration,
    target: &endpoint::Resolved,
    record: &GrantRecord,
) -> Result<crate::aws::store::IamPolicyRef, StepError> {
    let arn = record.requester.iam_arn.clone().unwrap_or_default();
    let requester = iam::requester_of(&arn).map_err(StepError::Other)?;
    let resource_id = target
        .rds
        .as_ref()
        .and_then(|r| r.resource_id.clone())
        .ok_or(StepError::Other(
            "RDS reported no resource id for the instance or cluster".into(),
        ))?;
    let region = integration
        .region
        .clone()
        .or_else(|| svc.region())
        .ok_or(StepError::Other("no region".into()))?;
    let account = svc.account_id().await?;
    let policy_name = iam::policy_name(&record.request_id);
    if access_role::wanted(&requester, access_roles(svc, integration)) {
        // The role is the requester's alone (its trust says so): no session condition inside.
        let resource = iam::dbuser_arn(
            &requester.partition,
            &region,
            &account,
            &resource_id,
            &record.db_user,
        );
        let document = iam::policy_document(&resource, record.expires_at, None);
        return Ok(access_role::ensure(
            svc,
            &requester,
            &record.request_id,
            record.expires_at,
            &policy_name,
            &document,
        )
        .await?);
    }
    // Checked before anything was made; checked again where the policy is written.
    iam::check_policy_target(&requester, &account, &svc.config.protected_roles)
        .map_err(StepError::Other)?;
    let session = match (&requester.principal, &requester.session) {
        (iam::Principal::Role(role), Some(session)) => {
            Some(format!("{}:{session}", iam::role_id(svc, role).await?))
        }
        _ => None,
    };
    let resource = iam::dbuser_arn(
        &requester.partition,
        &region,
        &account,
        &resource_id,
        &record.db_user,
    );
    let document = iam::policy_document(&resource, record.expires_at, session.as_deref());
    Ok(iam::put_policy(svc, &requester.principal, &policy_name, &document).await?)
}

/// Who gets an access role in this integration: its own setting, else the stack's.
pub(crate) fn access_roles(svc: &Services, integration: &Integration) -> AccessRoles {
    integration.access_roles.unwrap_or(svc.config.access_roles)
}

/// The one-shot schedule that revokes the grant at expiry.
async fn schedule_revoke(
    svc: &Services,
    record: &GrantRecord,
) -> Result<String, (&'static str, StepError)> {
    let started = std::time::Instant::now();
    let name = schedule::create(svc, &record.request_id, record.expires_at)
        .await
        .map_err(at::<(), _>("revoke schedule"))?;
    svc.failpoints
        .check("grant:after_schedule")
        .await
        .map_err(at::<(), _>("revoke schedule"))?;
    step_done(record, "grant", "revoke_schedule", started);
    Ok(name)
}

/// Removes everything a grant may have made, whatever step it reached. Every part is a no-op
/// when there is nothing to remove, and every part is tried even when an earlier one failed (the
/// database role first: with AWS down, the access itself must still go); the first error is
/// returned so the record stays due for another try.
pub(super) async fn undo_grant(
    svc: &Services,
    integration: &Integration,
    record: &GrantRecord,
    target: Option<&endpoint::Resolved>,
) -> Result<(), StepError> {
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
        departure::delete(
            &target.connector,
            integration.maintenance_database(),
            &record.db_user,
            &integration.user_prefix,
            &integration.holding_role,
        )
        .await?;
        Ok::<(), StepError>(())
    };
    keep(role.await);
    // The name is derived, not necessarily made by this request: only its own schedule goes.
    keep(
        schedule::delete_own(
            svc,
            &schedule::name_of(record.schedule_name.as_deref(), &record.request_id),
            &record.request_id,
        )
        .await
        .map_err(StepError::from),
    );
    if record.access_mode == AccessMode::Iam {
        if let Some(Ok(requester)) = record.requester.iam_arn.as_deref().map(iam::requester_of) {
            let (kind, name) = if access_role::wanted(&requester, access_roles(svc, integration)) {
                (
                    access_role::KIND,
                    access_role::role_name(&record.request_id),
                )
            } else {
                match requester.principal {
                    iam::Principal::User(n) => ("user", n),
                    iam::Principal::Role(n) => ("role", n),
                }
            };
            let policy = crate::aws::store::IamPolicyRef {
                principal_kind: kind.into(),
                principal_name: name,
                policy_name: iam::policy_name(&record.request_id),
                role_arn: None,
            };
            keep(
                access_role::remove_iam_access(svc, &policy, &record.request_id)
                    .await
                    .map_err(StepError::from),
            );
        }
    }
    // A secret of that name that is not this request's was never made by it: nothing to undo.
    let name = credentials::secret_name(svc, &integration.name, &record.request_id);
    keep(
        credentials::delete(svc, &name, &record.request_id, credentials::Foreign::Skip)
            .await
            .map_err(StepError::from),
    );
    first_error.map_or(Ok(()), Err)
}
