//! What a sweep cut short by the invocation's deadline leaves is taken by a continuation: a
//! one-shot EventBridge Scheduler schedule in pgjit's group that invokes the cleanup function
//! again a minute later, with the same scope and the chain's count. There is one schedule name
//! per scope, so sweeps stopping at the same time make one continuation, not several; a chain
//! ends after [`MAX_CONTINUATIONS`], and a run that got nothing done makes none (the next
//! scheduled run tries again).

use aws_sdk_scheduler::types::{RetryPolicy, Target};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{CleanupReport, Scope};
use crate::aws::{AwsError, Services};
use crate::aws::schedule::{exact, one_shot};

/// The longest chain of continuations after one scheduled run: 24 invocations of 15 minutes,
/// six hours of sweeping.
pub const MAX_CONTINUATIONS: u32 = 24;

/// How long after a run its continuation starts.
const DELAY_SECONDS: i64 = 60;

/// The continuation's schedule name for a scope: within Scheduler's 64 characters of
/// `[0-9A-Za-z_.-]`, and never a revoke schedule's (those start with `pgjit-`).
pub fn schedule_name(scope: Scope) -> String {
    format!("cleanup-continuation-{}", scope.as_str())
}

/// How many continuations came before the run an event starts: `"continuation"`, absent for a
/// scheduled run. Anything but a whole number up to [`MAX_CONTINUATIONS`] is refused.
pub fn continuation_of(event: &Value) -> Result<u32, String> {
    match event.get("continuation") {
        None | Some(Value::Null) => Ok(0),
        Some(value) => value
            .as_u64()
            .filter(|n| *n <= u64::from(MAX_CONTINUATIONS))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("continuation: expected a whole number from 0 to {MAX_CONTINUATIONS}, got {value}")),
    }
}

/// Schedules the continuation of a run that left work for lack of time, invoking
/// `function_arn` (the cleanup function's own, from the invocation). Returns `name at time`, or
/// None when none is due: nothing was left, the run got nothing done, the chain is at its end,
/// or there is no function to invoke (the CLI).
pub async fn continue_later(
    svc: &Services,
    function_arn: &str,
    scope: Scope,
    continuation: u32,
    report: &CleanupReport,
    now: DateTime<Utc>,
) -> Result<Option<String>, AwsError> {
    if !report.unfinished() || function_arn.is_empty() {
        return Ok(None);
    }
    if report.done() == 0 && report.reconciled == 0 {
        tracing::warn!(left = report.left, "cleanup got nothing done before its time ran out; no continuation, the next scheduled run tries again");
        return Ok(None);
    }
    if continuation >= MAX_CONTINUATIONS {
        tracing::warn!(left = report.left, continuation, "cleanup's continuations reached their limit; the next scheduled run takes what is left");
        return Ok(None);
    }
    let name = schedule_name(scope);
    let at = now + chrono::Duration::seconds(DELAY_SECONDS);
    let input = |count: u32| serde_json::json!({ "sweep": scope.as_str(), "continuation": count }).to_string();
    let target = |operation, input: String| {
        Target::builder()
            .arn(function_arn)
            .role_arn(&svc.config.scheduler_role_arn)
            .input(input)
            // A continuation that cannot be delivered within the hour is left to the next run.
            .retry_policy(RetryPolicy::builder().maximum_event_age_in_seconds(3600).maximum_retry_attempts(2).build())
            .build()
            .map_err(|e| AwsError::msg(operation, e.to_string()))
    };
    let description = format!("pgjit: cleanup continuation {} ({} items left)", continuation + 1, report.left);
    let created = one_shot!(
        svc.scheduler.create_schedule(),
        svc,
        &name,
        at,
        target("scheduler:CreateSchedule", input(continuation + 1))?,
        exact("scheduler:CreateSchedule")?,
        &description
    )
    .send()
    .await;
    match created {
        Ok(_) => {}
        // One is waiting already (another run's): it is moved to this run's time, and keeps the
        // larger count, so a run that starts a chain anew (the hourly one) never resets it.
        Err(e) if e.as_service_error().is_some_and(|s| s.is_conflict_exception()) => {
            let waiting = crate::aws::schedule::input_of(svc, &name).await?;
            let counted = waiting.and_then(|i| serde_json::from_str::<Value>(&i).ok()).and_then(|v| continuation_of(&v).ok());
            let count = counted.unwrap_or(0).max(continuation + 1);
            if count > MAX_CONTINUATIONS {
                return Ok(None);
            }
            one_shot!(
                svc.scheduler.update_schedule(),
                svc,
                &name,
                at,
                target("scheduler:UpdateSchedule", input(count))?,
                exact("scheduler:UpdateSchedule")?,
                &description
            )
            .send()
            .await
            .map_err(|e| AwsError::new("scheduler:UpdateSchedule", e))?;
        }
        Err(e) => return Err(AwsError::new("scheduler:CreateSchedule", e)),
    }
    let scheduled = format!("{name} at {}", at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    tracing::info!(schedule = %scheduled, left = report.left, reconcile_left = report.reconcile_left.len(), "cleanup continues later");
    Ok(Some(scheduled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_counts_are_checked() {
        assert_eq!(continuation_of(&serde_json::json!({})), Ok(0));
        assert_eq!(continuation_of(&serde_json::json!({"sweep": "overdue", "continuation": 3})), Ok(3));
        for bad in [serde_json::json!(-1), serde_json::json!(25), serde_json::json!("2"), serde_json::json!(1.5)] {
            let err = continuation_of(&serde_json::json!({ "continuation": bad })).unwrap_err();
            assert!(err.starts_with("continuation: expected a whole number from 0 to 24"), "{err}");
        }
        for scope in [Scope::Full, Scope::Overdue] {
            let name = schedule_name(scope);
            assert!(name.len() <= 64 && !name.starts_with("pgjit-") && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)), "{name}");
        }
    }
}
