//! The one-shot EventBridge Scheduler schedule that revokes a grant at its expiry.

use aws_sdk_scheduler::types::{DeadLetterConfig, FlexibleTimeWindow, FlexibleTimeWindowMode, RetryPolicy, Target};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::aws::{AwsError, Services};

/// The schedule's name: readable from the request id, unique through 128 bits of its SHA-256
/// (48 bits let two request ids share a schedule: a colliding pair takes seconds to find), within
/// the 64 characters `[0-9A-Za-z_.-]` Scheduler allows.
pub fn schedule_name(request_id: &str) -> String {
    let readable: String = request_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .take(READABLE_CHARS)
        .collect();
    let hash = hex::encode(&Sha256::digest(request_id.as_bytes())[..16]);
    format!("pgjit-{readable}-{hash}")
}

/// The name of a front-door request's start schedule (`start-…`: apart from the revoke
/// schedules, which only the grant and revoke functions may touch).
pub fn start_schedule_name(request_id: &str) -> String {
    schedule_name(request_id).replacen("pgjit-", "start-", 1)
}

/// The input a start schedule hands to the requests function.
pub fn start_input(request_id: &str) -> String {
    serde_json::json!({ "start": request_id }).to_string()
}

/// Creates the one-shot schedule that starts an approved request at `at` (the requests
/// function checks it again then, and sends its approval). An existing one of the name is
/// ours when it starts this very request.
pub async fn create_start(svc: &Services, request_id: &str, at: DateTime<Utc>) -> Result<String, AwsError> {
    let operation = "scheduler:CreateSchedule";
    let name = start_schedule_name(request_id);
    let target = Target::builder()
        .arn(&svc.config.requests_function_arn)
        .role_arn(&svc.config.scheduler_role_arn)
        .input(start_input(request_id))
        // A start that comes an hour late would grant at a time nobody asked for.
        .retry_policy(RetryPolicy::builder().maximum_event_age_in_seconds(3600).maximum_retry_attempts(20).build())
        .build()
        .map_err(|e| AwsError::msg(operation, e.to_string()))?;
    let result = one_shot!(svc.scheduler.create_schedule(), svc, &name, at, target, exact(operation)?, format!("pgjit: start {request_id}")).send().await;
    match result {
        Ok(_) => Ok(name),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_conflict_exception()) => {
            let input = input_of(svc, &name).await?;
            if input.is_some_and(|i| serde_json::from_str::<serde_json::Value>(&i).is_ok_and(|v| v == serde_json::json!({ "start": request_id }))) {
                Ok(name)
            } else {
                Err(AwsError::msg(operation, format!("schedule {name:?} exists and does not start request {request_id:?}")))
            }
        }
        Err(e) => Err(AwsError::new(operation, e)),
    }
}

/// 64 less `pgjit-`, the hyphen and 32 hex digits.
const READABLE_CHARS: usize = 64 - 6 - 1 - 32;

/// The name of a grant's revoke schedule: the one its record holds (grants made before the name
/// grew to 128 bits keep theirs), else the one derived from its request id.
pub fn name_of(recorded: Option<&str>, request_id: &str) -> String {
    recorded.map_or_else(|| schedule_name(request_id), str::to_owned)
}

/// `at(yyyy-mm-ddThh:mm:ss)`, read in UTC.
pub fn at_expression(at: DateTime<Utc>) -> String {
    format!("at({})", at.format("%Y-%m-%dT%H:%M:%S"))
}

/// The input the schedule hands to the revoke function.
pub fn revoke_input(request_id: &str) -> String {
    serde_json::json!({ "request_id": request_id }).to_string()
}

/// The whole definition of a one-shot schedule in pgjit's group, on a CreateSchedule or
/// UpdateSchedule request (two SDK builder types with the same setters and no trait in common).
macro_rules! one_shot {
    ($request:expr, $svc:expr, $name:expr, $at:expr, $target:expr, $window:expr, $description:expr) => {
        $request
            .name($name)
            .group_name(&$svc.config.schedule_group)
            .schedule_expression($crate::aws::schedule::at_expression($at))
            .schedule_expression_timezone("UTC")
            .flexible_time_window($window)
            .target($target)
            .action_after_completion(aws_sdk_scheduler::types::ActionAfterCompletion::Delete)
            .description($description)
    };
}
pub(crate) use one_shot;

/// A request's revoke schedule.
macro_rules! revoke_schedule {
    ($request:expr, $svc:expr, $name:expr, $request_id:expr, $at:expr, $target:expr, $window:expr) => {
        one_shot!($request, $svc, $name, $at, $target, $window, format!("pgjit: revoke {} at expiry", $request_id))
    };
}

/// A schedule that fires when it is due, not within a window.
pub(crate) fn exact(operation: &'static str) -> Result<FlexibleTimeWindow, AwsError> {
    FlexibleTimeWindow::builder().mode(FlexibleTimeWindowMode::Off).build().map_err(|e| AwsError::msg(operation, e.to_string()))
}

/// The schedule's target and window: the revoke function with the request's input, retried for
/// a day, then the dead-letter queue.
fn revoke_target(svc: &Services, request_id: &str, operation: &'static str) -> Result<(Target, FlexibleTimeWindow), AwsError> {
    let config = &svc.config;
    let mut target = Target::builder()
        .arn(&config.revoke_function_arn)
        .role_arn(&config.scheduler_role_arn)
        .input(revoke_input(request_id))
        // Revoke must not give up quickly: retry for a day, then the dead-letter queue.
        .retry_policy(RetryPolicy::builder().maximum_event_age_in_seconds(86_400).maximum_retry_attempts(185).build());
    if let Some(dlq) = &config.revoke_dlq_arn {
        target = target.dead_letter_config(DeadLetterConfig::builder().arn(dlq).build());
    }
    let target = target.build().map_err(|e| AwsError::msg(operation, e.to_string()))?;
    Ok((target, exact(operation)?))
}

/// Creates the revoke schedule. An existing one of the same name is kept only when it revokes
/// this very request (a repeated run); one that revokes another request is never taken as ours,
/// since an early revoke of this request would then delete the other grant's only revoke.
pub async fn create(svc: &Services, request_id: &str, at: DateTime<Utc>) -> Result<String, AwsError> {
    let name = schedule_name(request_id);
    let (target, window) = revoke_target(svc, request_id, "scheduler:CreateSchedule")?;
    let result = revoke_schedule!(svc.scheduler.create_schedule(), svc, &name, request_id, at, target, window).send().await;
    match result {
        Ok(_) => Ok(name),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_conflict_exception()) => {
            if input_of(svc, &name).await?.is_some_and(|i| revokes(&i, request_id)) {
                Ok(name)
            } else {
                Err(AwsError::msg(
                    "scheduler:CreateSchedule",
                    format!("schedule {name:?} exists and does not revoke request {request_id:?}; pgjit leaves it alone and makes no grant that shares it"),
                ))
            }
        }
        Err(e) => Err(AwsError::new("scheduler:CreateSchedule", e)),
    }
}

/// Whether a schedule's input revokes `request_id` (compared as JSON, not as text).
fn revokes(input: &str, request_id: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(input).is_ok_and(|v| v == serde_json::json!({ "request_id": request_id }))
}

/// Moves the request's one revoke schedule (`name`, see [`name_of`]) to `at`, in place
/// (UpdateSchedule replaces the whole definition, so it is sent whole): exactly one schedule
/// remains.
pub async fn reschedule(svc: &Services, name: &str, request_id: &str, at: DateTime<Utc>) -> Result<String, AwsError> {
    let name = name.to_owned();
    let (target, window) = revoke_target(svc, request_id, "scheduler:UpdateSchedule")?;
    revoke_schedule!(svc.scheduler.update_schedule(), svc, &name, request_id, at, target, window)
        .send()
        .await
        .map_err(|e| AwsError::new("scheduler:UpdateSchedule", e))?;
    Ok(name)
}

/// Deletes the schedule; one that is gone already (fired, or deleted before) is success.
pub async fn delete(svc: &Services, name: &str) -> Result<(), AwsError> {
    match svc.scheduler.delete_schedule().name(name).group_name(&svc.config.schedule_group).send().await {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => Ok(()),
        Err(e) => Err(AwsError::new("scheduler:DeleteSchedule", e)),
    }
}

/// Deletes the schedule of that name only if it revokes `request_id`: an undo derives the name
/// without having made the schedule, and one that revokes another request is not its to delete.
pub async fn delete_own(svc: &Services, name: &str, request_id: &str) -> Result<(), AwsError> {
    match input_of(svc, name).await? {
        Some(input) if revokes(&input, request_id) => delete(svc, name).await,
        _ => Ok(()),
    }
}

/// The input a schedule of pgjit's group hands its target; None when there is no such schedule
/// (or it has no input).
pub async fn input_of(svc: &Services, name: &str) -> Result<Option<String>, AwsError> {
    match svc.scheduler.get_schedule().name(name).group_name(&svc.config.schedule_group).send().await {
        Ok(existing) => Ok(existing.target().and_then(|t| t.input()).map(str::to_owned)),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => Ok(None),
        Err(e) => Err(AwsError::new("scheduler:GetSchedule", e)),
    }
}

/// Creates the schedule group if it is missing (bootstrap).
pub async fn ensure_group(svc: &Services) -> Result<bool, AwsError> {
    match svc.scheduler.create_schedule_group().name(&svc.config.schedule_group).send().await {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_conflict_exception()) => Ok(false),
        Err(e) => Err(AwsError::new("scheduler:CreateScheduleGroup", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_expressions() {
        let n = schedule_name("REQ-1001");
        assert!(n.starts_with("pgjit-REQ-1001-") && n.len() == 6 + 8 + 1 + 32, "{n}");
        assert_eq!(name_of(Some("pgjit-old-a1b2c3d4e5f6"), "REQ-1001"), "pgjit-old-a1b2c3d4e5f6");
        assert_eq!(name_of(None, "REQ-1001"), n);
        assert!(revokes(r#"{ "request_id" : "REQ-1001" }"#, "REQ-1001"));
        assert!(!revokes(r#"{"request_id":"REQ-1002"}"#, "REQ-1001") && !revokes("not json", "REQ-1001"));
        assert_ne!(n, schedule_name("REQ 1001"));
        let long = schedule_name(&"x/".repeat(200));
        assert!(long.len() <= 64 && long.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)), "{long}");
        let at = DateTime::parse_from_rfc3339("2026-11-24T11:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(at_expression(at), "at(2026-11-24T11:00:00)");
        assert_eq!(revoke_input("R\"1"), r#"{"request_id":"R\"1"}"#);
    }
}
