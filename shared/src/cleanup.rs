//! The daily sweep: drops users past retention, revokes overdue grants whose revoke never ran,
//! finishes records abandoned half-way, rotates passwords, and reconciles each database's
//! prefixed roles against the store. Due work is found with index Queries, never a Scan.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::aws::Services;
use crate::events::RevokeTrigger;
use crate::grants;
use crate::integration::Integration;
use crate::postgres::error_chain;
use crate::revocation;
use crate::store::{GrantStatus, StoreError};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// Users dropped because their retention ended.
    pub deleted: Vec<String>,
    /// Active grants past expiry that were revoked here.
    pub revoked_overdue: Vec<String>,
    /// Records found half-way (granting or revoking) and finished or undone.
    pub finished: Vec<String>,
    /// Grants whose password was rotated.
    pub rotated: Vec<String>,
    /// Roles pgjit created with no live record: removed, as `integration/role`.
    pub orphans: Vec<String>,
    /// Objects of orphans and profile roles handed to the holding role or made harmless.
    pub handed_over: Vec<String>,
    /// Profile roles pgjit manages (one per distinct privilege set and database), over every
    /// integration, before this run dropped any.
    pub profile_roles: usize,
    /// Profile roles without members for `profile_retention_days`, dropped, as
    /// `integration/role`.
    pub profiles_dropped: Vec<String>,
    /// The largest ACL among the tables pgjit's profile roles hold privileges on, per
    /// integration: `integration/database: table` and its entries.
    pub largest_acls: Vec<(String, i32)>,
    /// What could not be done this time, to be tried again at the next run.
    pub errors: Vec<String>,
    /// Grant items read from the store to find the due work.
    pub items_read: usize,
    /// Live grant records read to tell orphan roles from live ones (once a run, when some role
    /// pgjit created is past the grace period).
    pub live_records_read: usize,
}

/// How much a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything (the daily run).
    Full,
    /// Only grants past expiry that are still active and records abandoned half-way: the hourly
    /// backstop for revokes whose invocation failed for good.
    Overdue,
}

impl Scope {
    /// The scope a scheduled event asks for: `{"sweep":"overdue"}`, or everything.
    pub fn of(event: &serde_json::Value) -> Scope {
        match event.get("sweep").and_then(serde_json::Value::as_str) {
            Some("overdue") => Scope::Overdue,
            _ => Scope::Full,
        }
    }
}

/// Runs the whole sweep as of `now` (injectable so tests need not wait days).
pub async fn run(svc: &Services, now: DateTime<Utc>) -> Result<CleanupReport, StoreError> {
    run_scope(svc, now, Scope::Full).await
}

/// Runs the sweep, or only its overdue part, as of `now`.
pub async fn run_scope(svc: &Services, now: DateTime<Utc>, scope: Scope) -> Result<CleanupReport, StoreError> {
    let mut report = CleanupReport::default();
    let integrations: BTreeMap<String, Integration> = svc.store.list_integrations().await?.into_iter().map(|i| (i.name.clone(), i)).collect();

    let (due, read) = if scope == Scope::Full { svc.store.due_grants(GrantStatus::Revoked, now).await? } else { (Vec::new(), 0) };
    report.items_read += read;
    for mut record in due {
        let Some(integration) = integrations.get(&record.integration) else {
            report.errors.push(format!("{}: integration {:?} is gone", record.request_id, record.integration));
            continue;
        };
        match grants::delete_user(svc, &mut record, integration, now).await {
            Ok(()) => report.deleted.push(record.request_id.clone()),
            Err(e) => report.errors.push(format!("{}: delete: {}", record.request_id, error_chain(&e))),
        }
    }

    let (due, read) = svc.store.due_grants(GrantStatus::Active, now).await?;
    report.items_read += read;
    for mut record in due {
        if record.expires_at <= now {
            match grants::revoke(svc, &record.request_id, RevokeTrigger::Cleanup, now).await {
                Ok(_) => report.revoked_overdue.push(record.request_id.clone()),
                Err(e) => report.errors.push(format!("{}: revoke: {}", record.request_id, error_chain(&e))),
            }
        } else if let (Scope::Full, Some(integration)) = (scope, integrations.get(&record.integration)) {
            match grants::rotate(svc, &mut record, integration, now).await {
                Ok(()) => report.rotated.push(record.request_id.clone()),
                Err(e) => report.errors.push(format!("{}: rotate: {}", record.request_id, error_chain(&e))),
            }
        }
    }

    for status in [GrantStatus::Granting, GrantStatus::Revoking] {
        let (due, read) = svc.store.due_grants(status, now).await?;
        report.items_read += read;
        for record in due {
            // revoke() undoes an abandoned grant and finishes an abandoned revoke.
            match grants::revoke(svc, &record.request_id, RevokeTrigger::Cleanup, now).await {
                Ok(_) => report.finished.push(record.request_id.clone()),
                Err(e) => report.errors.push(format!("{}: finish {status}: {}", record.request_id, error_chain(&e))),
            }
        }
    }

    // The database users with a live record, read once (only if some role needs it).
    let mut live: Option<HashSet<String>> = None;
    for integration in integrations.values().filter(|_| scope == Scope::Full) {
        if let Err(e) = reconcile(svc, integration, now, &mut live, &mut report).await {
            report.errors.push(format!("integration {}: reconcile: {}", integration.name, error_chain(&*e)));
        }
    }
    tracing::info!(
        deleted = report.deleted.len(),
        revoked_overdue = report.revoked_overdue.len(),
        finished = report.finished.len(),
        rotated = report.rotated.len(),
        orphans = report.orphans.len(),
        profile_roles = report.profile_roles,
        profiles_dropped = report.profiles_dropped.len(),
        errors = report.errors.len(),
        items_read = report.items_read,
        scope = ?scope,
        "cleanup done"
    );
    Ok(report)
}

/// Login roles pgjit created (its marker and name shape) that no live record explains (a crash
/// between creating the role and writing the record, or a record lost) are revoked and dropped,
/// once they are older than the grace period (the db-user index is eventually consistent, so a
/// brand-new grant's record may not show there yet). Profile roles that own objects (a user
/// could act as its profile role before PostgreSQL 16) hand them to the holding role.
async fn reconcile(
    svc: &Services,
    integration: &Integration,
    now: DateTime<Utc>,
    live: &mut Option<HashSet<String>>,
    report: &mut CleanupReport,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let target = crate::endpoint::resolve(svc, integration).await?;
    let db = integration.maintenance_database();
    let client = target.connector.connect(db).await?;
    let managed = revocation::managed_roles(&client, &integration.user_prefix).await?;
    let grace = chrono::Duration::from_std(svc.config.reconcile_grace).unwrap_or(chrono::Duration::hours(1));
    let retention = chrono::Duration::days(i64::from(integration.profile_retention_days));
    for role in managed {
        if role.profile {
            report.profile_roles += 1;
            profile(integration, &target, &client, &role, now, retention, report).await;
            continue;
        }
        if role.created + grace > now {
            continue;
        }
        // Any integration's record counts: two integrations may share one server and prefix.
        let live = match live {
            Some(live) => live,
            None => live.insert(live_users(svc, report).await?),
        };
        if live.contains(&role.name) {
            continue;
        }
        tracing::warn!(integration = %integration.name, db_user = %role.name, "orphan role: no live grant record; removing it");
        match revocation::delete(&target.connector, db, &role.name, &integration.user_prefix, &integration.holding_role).await {
            Ok(deleted) => {
                report.orphans.push(format!("{}/{}", integration.name, role.name));
                report.handed_over.extend(deleted.handed_over.into_iter().map(|c| format!("{}/{}: {c}", integration.name, role.name)));
            }
            Err(e) => report.errors.push(format!("integration {}: orphan {}: {}", integration.name, role.name, error_chain(&e))),
        }
    }
    // How large pgjit's profile roles make the ACLs, database by database.
    let profile_prefix = format!("{}p_", integration.user_prefix);
    for database in crate::catalog::databases(&client).await? {
        let c = if database == db { None } else { Some(target.connector.connect(&database).await?) };
        if let Some((table, entries)) = crate::catalog::largest_acl(c.as_ref().unwrap_or(&client), &profile_prefix).await? {
            report.largest_acls.push((format!("{}/{database}: {table}", integration.name), entries));
        }
    }
    Ok(())
}

/// Every database user with a live record (granting, active, revoking, revoked: not yet
/// deleted or failed), from the `status-due` index in one pass per state rather than one query
/// per role.
async fn live_users(svc: &Services, report: &mut CleanupReport) -> Result<HashSet<String>, StoreError> {
    let mut users = HashSet::new();
    for status in [GrantStatus::Granting, GrantStatus::Active, GrantStatus::Revoking, GrantStatus::Revoked] {
        let records = svc.store.grants_in(status).await?;
        report.live_records_read += records.len();
        users.extend(records.into_iter().map(|r| r.db_user));
    }
    Ok(users)
}

/// A profile role: what it owns while in use goes to the holding role (a user could act as it
/// before PostgreSQL 16); without members it is marked with the time, and dropped once that
/// lasts `profile_retention_days`; with members again, the mark goes.
async fn profile(
    integration: &Integration,
    target: &crate::endpoint::Resolved,
    client: &tokio_postgres::Client,
    role: &revocation::ManagedRole,
    now: DateTime<Utc>,
    retention: chrono::Duration,
    report: &mut CleanupReport,
) {
    let db = integration.maintenance_database();
    let name = format!("{}/{}", integration.name, role.name);
    let result = match (role.members, role.unused_since) {
        (0, Some(since)) if since + retention <= now => match revocation::drop_profile(&target.connector, db, &role.name, &integration.holding_role).await {
            Ok(Some(handed_over)) => {
                report.handed_over.extend(handed_over.into_iter().map(|c| format!("{name}: {c}")));
                report.profiles_dropped.push(name.clone());
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        },
        (0, Some(_)) => Ok(()),
        (0, None) => revocation::mark_unused(client, db, role, Some(now)).await,
        (_, Some(_)) => revocation::mark_unused(client, db, role, None).await,
        (_, None) if role.owns_objects => revocation::hand_over(&target.connector, db, &role.name, &integration.holding_role)
            .await
            .map(|changes| report.handed_over.extend(changes.into_iter().map(|c| format!("{name}: {c}")))),
        (_, None) => Ok(()),
    };
    if let Err(e) = result {
        report.errors.push(format!("integration {}: profile {}: {}", integration.name, role.name, error_chain(&e)));
    }
}
