//! Reconciliation: each integration's prefixed roles against the store. Login roles no live
//! record explains are removed; profile roles without members are marked and, after their
//! retention, dropped; the largest ACL among the tables pgjit grants on is reported.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::OnceCell;

use super::sweep::{Lane, Lanes};
use super::CleanupReport;
use crate::aws::store::{GrantStatus, StoreError};
use crate::aws::Services;
use crate::control::endpoint::Server;
use crate::engine::postgres::error_chain;
use crate::engine::roles::departure;
use crate::engine::roles::RoleError;

/// The least time left for an integration's reconciliation to start: a catalog read, a few
/// role changes and one statement per database.
const RECONCILE_ALLOWANCE: Duration = Duration::from_secs(30);

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Reconciles every integration, several at once (each on its own server's connections), each
/// within the invocation's time; one integration's failure is reported and does not stop the
/// others.
pub(super) async fn all(
    svc: &Services,
    lanes: &Lanes<'_>,
    now: DateTime<Utc>,
    report: &mut CleanupReport,
) {
    // The database users with a live record, read once (only if some role needs it).
    let live = OnceCell::new();
    let runs = lanes.lanes.iter().map(|lane| {
        let live = &live;
        async move {
            let mut part = CleanupReport::default();
            if !lanes.pace.has(RECONCILE_ALLOWANCE) {
                part.reconcile_left.push(lane.integration.name.clone());
                return part;
            }
            match crate::control::budget::bounded(one(svc, lane, lanes, now, live, &mut part)).await
            {
                Some(Ok(())) if part.reconcile_left.is_empty() => part.reconciled = 1,
                Some(Ok(())) => {}
                Some(Err(e)) => part.errors.push(format!(
                    "integration {}: reconcile: {}",
                    lane.integration.name,
                    error_chain(&*e)
                )),
                None => part.reconcile_left.push(lane.integration.name.clone()),
            }
            part
        }
    });
    // At most as many integrations at once as cleanup has items in flight.
    let parts: Vec<CleanupReport> = futures_util::stream::iter(runs)
        .buffer_unordered(svc.config.cleanup_concurrency)
        .collect()
        .await;
    for part in parts {
        report.orphans.extend(part.orphans);
        report.handed_over.extend(part.handed_over);
        report.profile_roles += part.profile_roles;
        report.profiles_dropped.extend(part.profiles_dropped);
        report.largest_acls.extend(part.largest_acls);
        report.errors.extend(part.errors);
        report.reconcile_left.extend(part.reconcile_left);
        report.reconciled += part.reconciled;
    }
    report.live_records_read += live.get().map_or(0, |(_, read)| *read);
}

/// Login roles pgjit created (its marker and name shape) that no live record explains (a crash
/// between creating the role and writing the record, or a record lost) are revoked and dropped,
/// once they are older than the grace period (the db-user index is eventually consistent, so a
/// brand-new grant's record may not show there yet). Profile roles that own objects (a user
/// could act as its profile role before PostgreSQL 16) hand them to the holding role.
async fn one(
    svc: &Services,
    lane: &Lane<'_>,
    lanes: &Lanes<'_>,
    now: DateTime<Utc>,
    live: &OnceCell<(HashSet<String>, usize)>,
    report: &mut CleanupReport,
) -> Result<(), Failure> {
    let integration = lane.integration;
    let server = lane
        .server(svc)
        .await
        .map_err(|e| Failure::from(e.to_owned()))?;
    let db = integration.maintenance_database();
    let (managed, databases) = {
        let client = server.pool.get().await?;
        let managed = departure::managed_roles(&client, &integration.user_prefix).await?;
        let databases = crate::engine::catalog::databases(&client).await?;
        client.release();
        (managed, databases)
    };
    let grace = chrono::Duration::from_std(svc.config.reconcile_grace)
        .unwrap_or(chrono::Duration::hours(1));
    let retention = chrono::Duration::days(i64::from(integration.profile_retention_days));
    for role in managed {
        if role.profile {
            report.profile_roles += 1;
            profile(server, &role, now, retention, report).await;
            continue;
        }
        if role.created + grace > now {
            continue;
        }
        // Any integration's record counts: two integrations may share one server and prefix.
        let (live, _) = live.get_or_try_init(|| live_users(svc)).await?;
        if live.contains(&role.name) {
            continue;
        }
        if !lanes.pace.may_start() {
            report.reconcile_left.push(integration.name.clone());
            return Ok(());
        }
        tracing::warn!(integration = %integration.name, db_user = %role.name, "orphan role: no live grant record; removing it");
        let deleted = async {
            let client = server.pool.get().await?;
            let deleted = departure::delete_over(
                &client,
                server.pool.connector(),
                db,
                &role.name,
                &integration.user_prefix,
                &integration.holding_role,
            )
            .await?;
            client.release();
            Ok::<_, RoleError>(deleted)
        };
        match deleted.await {
            Ok(deleted) => {
                report
                    .orphans
                    .push(format!("{}/{}", integration.name, role.name));
                report.handed_over.extend(
                    deleted
                        .handed_over
                        .into_iter()
                        .map(|c| format!("{}/{}: {c}", integration.name, role.name)),
                );
            }
            Err(e) => report.errors.push(format!(
                "integration {}: orphan {}: {}",
                integration.name,
                role.name,
                error_chain(&e)
            )),
        }
    }
    // How large pgjit's profile roles make the ACLs, database by database.
    let profile_prefix = format!("{}p_", integration.user_prefix);
    for database in databases {
        let largest = if database == db {
            let client = server.pool.get().await?;
            let largest = crate::engine::catalog::largest_acl(&client, &profile_prefix).await?;
            client.release();
            largest
        } else {
            crate::engine::catalog::largest_acl(
                &server.pool.connector().connect(&database).await?,
                &profile_prefix,
            )
            .await?
        };
        if let Some((table, entries)) = largest {
            report
                .largest_acls
                .push((format!("{}/{database}: {table}", integration.name), entries));
        }
    }
    Ok(())
}

/// Every database user with a live record (granting, active, revoking, revoked: not yet
/// deleted or failed), from the `status-due` index in one pass per state rather than one query
/// per role; and how many records were read.
async fn live_users(svc: &Services) -> Result<(HashSet<String>, usize), StoreError> {
    let mut users = HashSet::new();
    let mut read = 0;
    for status in [
        GrantStatus::Granting,
        GrantStatus::Active,
        GrantStatus::Revoking,
        GrantStatus::Revoked,
    ] {
        let records = svc.store.grants_in(status).await?;
        read += records.len();
        users.extend(records.into_iter().map(|r| r.db_user));
    }
    Ok((users, read))
}

/// A profile role: what it owns goes to the holding role (a user could act as it before
/// PostgreSQL 16); without members it is marked with the time, and dropped once that
/// lasts `profile_retention_days`; with members again, the mark goes.
async fn profile(
    server: &Server,
    role: &departure::ManagedRole,
    now: DateTime<Utc>,
    retention: chrono::Duration,
    report: &mut CleanupReport,
) {
    let integration = &server.integration;
    let (connector, db) = (server.pool.connector(), integration.maintenance_database());
    let name = format!("{}/{}", integration.name, role.name);
    let mark = |since| async move {
        let client = server.pool.get().await?;
        departure::mark_unused(&client, db, role, since).await?;
        client.release();
        Ok::<(), RoleError>(())
    };
    let dropping = role.members == 0
        && role
            .unused_since
            .is_some_and(|since| since + retention <= now);
    // What it owns goes now, whether or not anyone holds it (the drop hands it over itself):
    // kept by an unused profile, it would stay armed until the profile is dropped.
    if role.owns_objects && !dropping {
        match departure::hand_over(connector, db, &role.name, &integration.holding_role).await {
            Ok(changes) => report
                .handed_over
                .extend(changes.into_iter().map(|c| format!("{name}: {c}"))),
            Err(e) => report.errors.push(format!(
                "integration {}: profile {}: {}",
                integration.name,
                role.name,
                error_chain(&e)
            )),
        }
    }
    let result = match (role.members, role.unused_since) {
        (0, Some(_)) if dropping => {
            match departure::drop_profile(connector, db, &role.name, &integration.holding_role)
                .await
            {
                Ok(Some(handed_over)) => {
                    report
                        .handed_over
                        .extend(handed_over.into_iter().map(|c| format!("{name}: {c}")));
                    report.profiles_dropped.push(name.clone());
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            }
        }
        (0, Some(_)) => Ok(()),
        (0, None) => mark(Some(now)).await,
        (_, Some(_)) => mark(None).await,
        (_, None) => Ok(()),
    };
    if let Err(e) = result {
        report.errors.push(format!(
            "integration {}: profile {}: {}",
            integration.name,
            role.name,
            error_chain(&e)
        ));
    }
}

/// Access roles (IAM mode) against the store: a role under pgjit's path whose grant is not live
/// (revoked, deleted, failed, or no record at all) is deleted with its policies, once it is
/// older than the reconcile grace (a grant in flight makes its role before its record says so).
/// The revoke deletes a grant's role; this finds those a crash or a failed delete left behind.
pub(super) async fn access_roles(svc: &Services, now: DateTime<Utc>, report: &mut CleanupReport) {
    use crate::aws::access_role;
    if svc.config.access_role_boundary_arn.is_none() {
        return;
    }
    let listed = match access_role::list(svc).await {
        Ok(listed) => listed,
        Err(e) => {
            report
                .errors
                .push(format!("access roles: {}", error_chain(&e)));
            return;
        }
    };
    let grace = chrono::Duration::from_std(svc.config.reconcile_grace)
        .unwrap_or(chrono::Duration::hours(1));
    for role in listed {
        if role.created.is_none_or(|created| now - created < grace) {
            continue;
        }
        let Some(request_id) = role.request_id else {
            // Not made by a grant (pgjit always tags): not pgjit's to delete.
            continue;
        };
        let live = match svc.store.get_grant(&request_id).await {
            Ok(Some(record)) => matches!(
                record.status,
                GrantStatus::Granting | GrantStatus::Active | GrantStatus::Revoking
            ),
            Ok(None) => false,
            Err(e) => {
                report
                    .errors
                    .push(format!("access role {}: {}", role.name, error_chain(&e)));
                continue;
            }
        };
        if live {
            continue;
        }
        match access_role::delete(svc, &role.name, &request_id).await {
            Ok(()) => report.access_roles_removed.push(role.name),
            Err(e) => report
                .errors
                .push(format!("access role {}: {}", role.name, error_chain(&e))),
        }
    }
}
