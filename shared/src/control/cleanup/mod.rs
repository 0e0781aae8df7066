//! The daily sweep: drops users past retention, revokes overdue grants whose revoke never ran,
//! finishes records abandoned half-way, rotates passwords, and reconciles each database's
//! prefixed roles against the store. Due work is found with index Queries, never a Scan.
//!
//! Thousands of due items fit one invocation: each integration's server is resolved once and
//! its items share a few connections ([`crate::engine::pool`]), several items and integrations go at
//! once within [`Config::cleanup_concurrency`](crate::contract::config::Config), and the sweep stops
//! starting items before the invocation's deadline, so every item is either done or untouched;
//! what is left is reported and taken by a continuation (`continuation`).

mod continuation;
mod reconcile;
mod sweep;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::aws::store::{GrantStatus, StoreError};
use crate::aws::Services;
use crate::contract::integration::Integration;

pub use continuation::{
    continuation_of, continue_later, schedule_name as continuation_schedule_name, MAX_CONTINUATIONS,
};
pub use sweep::{Task, ITEM_ALLOWANCE};

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
    /// Access roles (IAM mode) whose grant is no longer live, deleted.
    pub access_roles_removed: Vec<String>,
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
    /// Due items this run did not start because the invocation's time was running out: still
    /// due and untouched, for the continuation or the next run.
    pub left: usize,
    /// Integrations whose reconciliation was not started (or not finished) for lack of time.
    pub reconcile_left: Vec<String>,
    /// Integrations reconciled by this run.
    pub reconciled: usize,
    /// Connections opened to the servers (a few per integration, reused item after item).
    pub connections: usize,
    /// The continuation scheduled to take what was left (`name at time`), if one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continuation: Option<String>,
}

impl CleanupReport {
    /// Whether work was left for lack of time.
    pub fn unfinished(&self) -> bool {
        self.left > 0 || !self.reconcile_left.is_empty()
    }

    /// Items this run finished (whatever their kind).
    pub fn done(&self) -> usize {
        self.deleted.len()
            + self.revoked_overdue.len()
            + self.finished.len()
            + self.rotated.len()
            + self.orphans.len()
            + self.access_roles_removed.len()
    }
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

    /// The word an event uses for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Full => "full",
            Scope::Overdue => "overdue",
        }
    }
}

/// Runs the whole sweep as of `now` (injectable so tests need not wait days).
pub async fn run(svc: &Services, now: DateTime<Utc>) -> Result<CleanupReport, StoreError> {
    run_scope(svc, now, Scope::Full).await
}

/// Runs the sweep, or only its overdue part, as of `now`.
pub async fn run_scope(
    svc: &Services,
    now: DateTime<Utc>,
    scope: Scope,
) -> Result<CleanupReport, StoreError> {
    let mut report = CleanupReport::default();
    let integrations: BTreeMap<String, Integration> = svc
        .store
        .list_integrations()
        .await?
        .into_iter()
        .map(|i| (i.name.clone(), i))
        .collect();
    let tasks = due_tasks(svc, now, scope, &mut report).await?;
    let lanes = sweep::Lanes::new(&integrations, tasks, &mut report);
    lanes.run(svc, now, &mut report).await;
    if scope == Scope::Full {
        reconcile::all(svc, &lanes, now, &mut report).await;
        reconcile::access_roles(svc, now, &mut report).await;
    }
    report.connections = lanes.connections();
    tracing::info!(
        deleted = report.deleted.len(),
        revoked_overdue = report.revoked_overdue.len(),
        finished = report.finished.len(),
        rotated = report.rotated.len(),
        orphans = report.orphans.len(),
        access_roles_removed = report.access_roles_removed.len(),
        profile_roles = report.profile_roles,
        profiles_dropped = report.profiles_dropped.len(),
        errors = report.errors.len(),
        items_read = report.items_read,
        left = report.left,
        reconcile_left = report.reconcile_left.len(),
        connections = report.connections,
        scope = ?scope,
        "cleanup done"
    );
    Ok(report)
}

/// The due work, in the order that matters when time runs short: access that is still open
/// (overdue grants, records abandoned half-way) first, then rotations, then drops.
async fn due_tasks(
    svc: &Services,
    now: DateTime<Utc>,
    scope: Scope,
    report: &mut CleanupReport,
) -> Result<Vec<Task>, StoreError> {
    let mut tasks = Vec::new();
    for status in [GrantStatus::Granting, GrantStatus::Revoking] {
        let (due, read) = svc.store.due_grants(status, now).await?;
        report.items_read += read;
        tasks.extend(due.into_iter().map(Task::Finish));
    }
    let (due, read) = svc.store.due_grants(GrantStatus::Active, now).await?;
    report.items_read += read;
    let (overdue, rotations): (Vec<_>, Vec<_>) = due.into_iter().partition(|r| r.expires_at <= now);
    tasks.extend(overdue.into_iter().map(Task::Overdue));
    if scope == Scope::Full {
        tasks.extend(rotations.into_iter().map(Task::Rotate));
        let (due, read) = svc.store.due_grants(GrantStatus::Revoked, now).await?;
        report.items_read += read;
        tasks.extend(due.into_iter().map(Task::Delete));
    }
    Ok(tasks)
}
