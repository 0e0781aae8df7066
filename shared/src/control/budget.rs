//! The time an invocation may take, from Lambda's deadline: work stops early enough that what
//! was done can still be undone (grant) or left for a retry (revoke) before Lambda kills the
//! function, and every database timeout fits inside it (connect < lock < statement < what is left).
//!
//! The budget lives in a task-local, set once by the handler, so the engine need not carry it
//! through every call; outside a handler (the CLI, tests) there is none and the configured
//! timeouts apply unchanged.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::engine::postgres::Timeouts;

/// Time kept back at the end of an invocation for the undo of a grant and the last record write.
pub const RESERVE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
struct Budget {
    /// Work (the steps) must end by then.
    work_until: Instant,
    /// Lambda's own deadline, less a second for the response.
    hard_until: Instant,
}

tokio::task_local! {
    static BUDGET: Budget;
}

/// Runs `work` within the time left before `deadline` (Lambda's, as an instant).
pub async fn within<F: Future>(deadline: Option<Instant>, work: F) -> F::Output {
    match deadline {
        None => Box::pin(work).await,
        Some(deadline) => {
            let hard_until = deadline.checked_sub(Duration::from_secs(1)).unwrap_or(deadline);
            let work_until = hard_until.checked_sub(RESERVE).unwrap_or(hard_until);
            // Boxed: the handlers' futures are large, and nesting them inline overflows the stack.
            BUDGET.scope(Budget { work_until, hard_until }, Box::pin(work)).await
        }
    }
}

/// Runs `undo` with the reserve too: it starts when the work ran out of time.
pub async fn with_reserve<F: Future>(undo: F) -> F::Output {
    match BUDGET.try_with(|b| *b) {
        Ok(b) => BUDGET.scope(Budget { work_until: b.hard_until, hard_until: b.hard_until }, Box::pin(undo)).await,
        Err(_) => Box::pin(undo).await,
    }
}

/// What is left for work, if an invocation set a budget.
pub fn remaining() -> Option<Duration> {
    BUDGET.try_with(|b| b.work_until.saturating_duration_since(Instant::now())).ok()
}

/// Lambda's deadline from the invocation context (milliseconds since the epoch), as an instant.
pub fn deadline_of(context_deadline_ms: u64) -> Option<Instant> {
    if context_deadline_ms == 0 {
        return None;
    }
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).ok()?;
    Some(Instant::now() + Duration::from_millis(context_deadline_ms.saturating_sub(now_ms)))
}

/// The configured timeouts, shortened to fit what is left: the statement gets at most half of
/// it, the lock at most half of the statement's, the connection at most a quarter of what is left.
pub fn cap(configured: Timeouts) -> Timeouts {
    let Some(left) = remaining() else { return configured };
    let floor = Duration::from_millis(100);
    let statement = configured.statement.min(left / 2).max(floor);
    Timeouts { statement, lock: configured.lock.min(statement / 2).max(floor), connect: configured.connect.min(left / 4).max(floor) }
}

/// Runs `work` until the budget's work time is up; None when it ran out first.
pub async fn bounded<F: Future>(work: F) -> Option<F::Output> {
    match remaining() {
        None => Some(Box::pin(work).await),
        Some(left) => tokio::time::timeout(left, Box::pin(work)).await.ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn timeouts_fit_inside_what_is_left() {
        let configured = Timeouts { connect: Duration::from_secs(10), statement: Duration::from_secs(30), lock: Duration::from_secs(10) };
        assert_eq!(cap(configured), configured, "no budget outside an invocation");
        let deadline = Instant::now() + Duration::from_secs(26);
        within(Some(deadline), async {
            let left = remaining().unwrap();
            assert!(left <= Duration::from_secs(20) && left > Duration::from_secs(19), "{left:?}");
            let t = cap(configured);
            assert!(t.connect < t.statement && t.lock < t.statement && t.statement < left, "{t:?}");
            assert!(bounded(tokio::time::sleep(Duration::from_millis(1))).await.is_some());
            with_reserve(async { assert!(remaining().unwrap() > left) }).await;
        })
        .await;
        within(Some(Instant::now() + Duration::from_secs(6)), async {
            assert!(bounded(tokio::time::sleep(Duration::from_secs(5))).await.is_none(), "the work stops when its time is up");
        })
        .await;
    }
}
