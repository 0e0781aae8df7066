//! The one-shot EventBridge Scheduler schedule that revokes a grant at its expiry.

use aws_sdk_scheduler::types::{DeadLetterConfig, FlexibleTimeWindow, FlexibleTimeWindowMode, RetryPolicy, Target};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::aws::{AwsError, Services};

/// The schedule's name: readable from the request id, unique through a hash of it, within the
/// 64 characters `[0-9A-Za-z_.-]` Scheduler allows.
pub fn schedule_name(request_id: &str) -> String {
    let readable: String = request_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .take(40)
        .collect();
    let hash = hex::encode(&Sha256::digest(request_id.as_bytes())[..6]);
    format!("pgjit-{readable}-{hash}")
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
            .schedule_expression($crate::schedule::at_expression($at))
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

/// Creates the revoke schedule; an existing one of the same name (a repeated run) is kept.
pub async fn create(svc: &Services, request_id: &str, at: DateTime<Utc>) -> Result<String, AwsError> {
    let name = schedule_name(request_id);
    let (target, window) = revoke_target(svc, request_id, "scheduler:CreateSchedule")?;
    let result = revoke_schedule!(svc.scheduler.create_schedule(), svc, &name, request_id, at, target, window).send().await;
    match result {
        Ok(_) => Ok(name),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_conflict_exception()) => Ok(name),
        Err(e) => Err(AwsError::new("scheduler:CreateSchedule", e)),
    }
}

/// Moves the request's one revoke schedule to `at`, in place (UpdateSchedule replaces the whole
/// definition, so it is sent whole): exactly one schedule remains.
pub async fn reschedule(svc: &Services, request_id: &str, at: DateTime<Utc>) -> Result<String, AwsError> {
    let name = schedule_name(request_id);
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
        assert!(n.starts_with("pgjit-REQ-1001-"), "{n}");
        assert_ne!(n, schedule_name("REQ 1001"));
        let long = schedule_name(&"x/".repeat(200));
        assert!(long.len() <= 64 && long.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)), "{long}");
        let at = DateTime::parse_from_rfc3339("2026-11-24T11:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(at_expression(at), "at(2026-11-24T11:00:00)");
        assert_eq!(revoke_input("R\"1"), r#"{"request_id":"R\"1"}"#);
    }
}
