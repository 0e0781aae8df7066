//! The due items, worked through concurrently: one lane per integration, its server resolved
//! once and a few connections reused for its items ([`Config::cleanup_connections`]), every
//! lane at once, and at most [`Config::cleanup_concurrency`] items in flight over all of them.
//! An item starts only while the invocation has time for it ([`Pace`]), so a sweep cut short
//! leaves each item done or untouched. A lane has at most its share of the slots, so one server
//! that never answers holds that share while its connections time out, not the whole sweep.
//!
//! [`Config::cleanup_connections`]: crate::contract::config::Config
//! [`Config::cleanup_concurrency`]: crate::contract::config::Config

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use tokio::sync::{OnceCell, Semaphore};

use super::CleanupReport;
use crate::aws::Services;
use crate::control::endpoint::Server;
use crate::contract::events::RevokeTrigger;
use crate::control::grants;
use crate::contract::integration::Integration;
use crate::engine::postgres::error_chain;
use crate::aws::store::GrantRecord;

/// The least time an item is given: one is started only while at least this much (or twice
/// the slowest item so far, if more) is left before the invocation's work must end. Ending a
/// role's sessions alone may wait 5 s.
pub const ITEM_ALLOWANCE: Duration = Duration::from_secs(10);

/// After this many connection attempts failed in a row, a lane's server is taken to be out of
/// reach: its other items are left for the next run rather than each waiting for its own
/// connect time-out.
const CONNECT_FAILURES_IN_A_ROW: usize = 3;

/// One piece of due work.
#[derive(Debug, Clone)]
pub enum Task {
    /// A record abandoned in `granting` (undone) or `revoking` (finished).
    Finish(GrantRecord),
    /// An active grant past its expiry whose revoke never ran.
    Overdue(GrantRecord),
    /// An active password grant whose password is due for rotation.
    Rotate(GrantRecord),
    /// A revoked user whose retention is over.
    Delete(GrantRecord),
}

impl Task {
    fn record(&self) -> &GrantRecord {
        match self {
            Task::Finish(r) | Task::Overdue(r) | Task::Rotate(r) | Task::Delete(r) => r,
        }
    }

    /// Does the work and writes the outcome into the report.
    async fn run(self, svc: &Services, server: &Server, now: DateTime<Utc>, report: &Mutex<CleanupReport>) {
        let id = self.record().request_id.clone();
        if let Err(e) = svc.failpoints.check("cleanup:item").await {
            if let Ok(mut report) = report.lock() {
                report.errors.push(format!("{id}: {e}"));
            }
            return;
        }
        let (list, failure): (ReportList, Option<String>) = match self {
            Task::Finish(r) => {
                let status = r.status;
                let result = grants::revoke::revoke_with(svc, &r.request_id, None, Some(server), RevokeTrigger::Cleanup, now).await;
                (|r| &mut r.finished, result.err().map(|e| format!("{id}: finish {status}: {}", error_chain(&e))))
            }
            Task::Overdue(r) => {
                let result = grants::revoke::revoke_with(svc, &id, Some(r), Some(server), RevokeTrigger::Cleanup, now).await;
                (|r| &mut r.revoked_overdue, result.err().map(|e| format!("{id}: revoke: {}", error_chain(&e))))
            }
            Task::Rotate(mut r) => {
                let result = grants::revoke::rotate(svc, &mut r, server, now).await;
                (|r| &mut r.rotated, result.err().map(|e| format!("{id}: rotate: {}", error_chain(&e))))
            }
            Task::Delete(mut r) => {
                let result = grants::revoke::delete_user(svc, &mut r, server, now).await;
                (|r| &mut r.deleted, result.err().map(|e| format!("{id}: delete: {}", error_chain(&e))))
            }
        };
        if let Ok(mut report) = report.lock() {
            match failure {
                Some(failure) => report.errors.push(failure),
                None => list(&mut report).push(id),
            }
        }
    }
}

/// The list of the report a finished item goes to.
type ReportList = fn(&mut CleanupReport) -> &mut Vec<String>;

/// One integration's due items and its server, resolved when first needed.
pub(super) struct Lane<'a> {
    pub integration: &'a Integration,
    tasks: Mutex<VecDeque<Task>>,
    server: OnceCell<Result<Server, String>>,
}

impl Lane<'_> {
    fn next(&self) -> Option<Task> {
        self.tasks.lock().ok()?.pop_front()
    }

    fn len(&self) -> usize {
        self.tasks.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// The integration's server: resolved once (one read of the admin secret) for every item.
    pub async fn server(&self, svc: &Services) -> Result<&Server, &str> {
        let connections = svc.config.cleanup_connections;
        let server = self
            .server
            .get_or_init(|| async { Server::open(svc, self.integration.clone(), connections).await.map_err(|e| error_chain(&e)) })
            .await;
        server.as_ref().map_err(String::as_str)
    }

    /// Takes every item still queued (the lane gave up), for the report.
    fn drain(&self) -> usize {
        self.tasks.lock().map(|mut t| t.drain(..).count()).unwrap_or(0)
    }
}

/// Every integration's lane.
pub(super) struct Lanes<'a> {
    pub lanes: Vec<Lane<'a>>,
    pub pace: Pace,
}

impl<'a> Lanes<'a> {
    /// A lane per integration, each with its due items in the order given; items of an
    /// integration that no longer exists are reported and left.
    pub fn new(integrations: &'a BTreeMap<String, Integration>, tasks: Vec<Task>, report: &mut CleanupReport) -> Lanes<'a> {
        let mut queues: BTreeMap<&str, VecDeque<Task>> = integrations.keys().map(|name| (name.as_str(), VecDeque::new())).collect();
        for task in tasks {
            let record = task.record();
            match queues.get_mut(record.integration.as_str()) {
                Some(queue) => queue.push_back(task),
                None => report.errors.push(format!("{}: integration {:?} is gone", record.request_id, record.integration)),
            }
        }
        let lanes = queues
            .into_iter()
            .filter_map(|(name, queue)| {
                let integration = integrations.get(name)?;
                Some(Lane { integration, tasks: Mutex::new(queue), server: OnceCell::new() })
            })
            .collect();
        Lanes { lanes, pace: Pace::default() }
    }

    /// Works through every lane's items; stops starting new ones when the time is running out.
    pub async fn run(&self, svc: &Services, now: DateTime<Utc>, report: &mut CleanupReport) {
        let concurrency = svc.config.cleanup_concurrency;
        let gate = Semaphore::new(concurrency);
        let pace = &self.pace;
        let shared = Mutex::new(std::mem::take(report));
        // A lane gets at most its share of the slots (never fewer than its connections): its
        // workers wait for its own server, so a server that hangs holds that share and no more,
        // and the other lanes' items go on.
        let busy = self.lanes.iter().filter(|lane| lane.len() > 0).count().max(1);
        let share = (concurrency / busy).max(svc.config.cleanup_connections).min(concurrency);
        let workers = self.lanes.iter().flat_map(|lane| {
            let (gate, shared) = (&gate, &shared);
            (0..share.min(lane.len())).map(move |_| work(svc, lane, gate, pace, shared, now))
        });
        join_all(workers).await;
        *report = shared.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        report.left += self.lanes.iter().map(Lane::len).sum::<usize>();
    }

    /// Connections opened to the servers so far.
    pub fn connections(&self) -> usize {
        self.lanes.iter().filter_map(|lane| lane.server.get()?.as_ref().ok()).map(|server| server.pool.opened()).sum()
    }
}

/// One worker of a lane: takes the lane's next item while the invocation has time for it.
async fn work(svc: &Services, lane: &Lane<'_>, gate: &Semaphore, pace: &Pace, report: &Mutex<CleanupReport>, now: DateTime<Utc>) {
    loop {
        let Ok(_slot) = gate.acquire().await else { return };
        if !pace.may_start() {
            return;
        }
        let Some(task) = lane.next() else { return };
        let name = &lane.integration.name;
        let server = match lane.server(svc).await {
            Ok(server) => server,
            Err(e) => {
                let left = 1 + lane.drain();
                if let Ok(mut report) = report.lock() {
                    report.errors.push(format!("integration {name}: {e}; {left} due item(s) left for the next run"));
                }
                return;
            }
        };
        let started = Instant::now();
        let id = task.record().request_id.clone();
        // Started with time to spare; should it overrun anyway, the sweep still ends before
        // Lambda's deadline, with its report and its continuation.
        if crate::control::budget::bounded(task.run(svc, server, now, report)).await.is_none() {
            if let Ok(mut report) = report.lock() {
                report.errors.push(format!("{id}: the invocation's time ran out; left for the next run"));
            }
        }
        pace.took(started.elapsed());
        if server.pool.connect_failures_in_a_row() >= CONNECT_FAILURES_IN_A_ROW {
            let left = lane.drain();
            if left > 0 {
                if let Ok(mut report) = report.lock() {
                    report.errors.push(format!(
                        "integration {name}: {CONNECT_FAILURES_IN_A_ROW} connection attempts failed in a row; {left} due item(s) left for the next run"
                    ));
                }
            }
            return;
        }
    }
}

/// Whether there is time to start one more item: what is left of the invocation's work time
/// against [`ITEM_ALLOWANCE`], or twice the slowest item so far. Outside an invocation (the
/// CLI) there is no limit.
#[derive(Default)]
pub(super) struct Pace {
    slowest: Mutex<Duration>,
}

impl Pace {
    pub fn may_start(&self) -> bool {
        self.has(ITEM_ALLOWANCE)
    }

    /// Whether at least `allowance` (or twice the slowest item, if more) is left.
    pub fn has(&self, allowance: Duration) -> bool {
        let slowest = self.slowest.lock().map(|s| *s).unwrap_or_default();
        crate::control::budget::remaining().is_none_or(|left| left > allowance.max(slowest * 2))
    }

    fn took(&self, elapsed: Duration) {
        if let Ok(mut slowest) = self.slowest.lock() {
            *slowest = (*slowest).max(elapsed);
        }
    }
}
