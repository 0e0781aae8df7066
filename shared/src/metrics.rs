//! CloudWatch Embedded Metric Format: one JSON line on stdout per data point, which Lambda's log
//! pipeline turns into metrics. Written only inside Lambda, so the CLI's output stays clean.

use std::sync::OnceLock;

fn in_lambda() -> bool {
    static IN_LAMBDA: OnceLock<bool> = OnceLock::new();
    *IN_LAMBDA.get_or_init(|| std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some())
}

/// The EMF line for one value of `name` for an integration.
pub fn emf_line(name: &str, value: f64, unit: &str, integration: &str, timestamp_ms: i64) -> String {
    serde_json::json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": "pgjit",
                "Dimensions": [["Integration"]],
                "Metrics": [{"Name": name, "Unit": unit}]
            }]
        },
        "Integration": integration,
        name: value
    })
    .to_string()
}

/// [`count`], and the same value without the integration, for an alarm over every integration.
pub fn count_with_total(name: &str, value: u64, integration: &str) {
    if in_lambda() {
        let line = serde_json::json!({
            "_aws": {
                "Timestamp": chrono::Utc::now().timestamp_millis(),
                "CloudWatchMetrics": [{"Namespace": "pgjit", "Dimensions": [["Integration"], []], "Metrics": [{"Name": name, "Unit": "Count"}]}]
            },
            "Integration": integration,
            name: value as f64
        });
        println!("{line}");
    }
}

/// How long one step of a grant or revoke took, in milliseconds, per step name.
pub fn step_duration(step: &str, milliseconds: f64) {
    if in_lambda() {
        let line = serde_json::json!({
            "_aws": {
                "Timestamp": chrono::Utc::now().timestamp_millis(),
                "CloudWatchMetrics": [{"Namespace": "pgjit", "Dimensions": [["Step"]], "Metrics": [{"Name": "StepDuration", "Unit": "Milliseconds"}]}]
            },
            "Step": step,
            "StepDuration": milliseconds
        });
        println!("{line}");
    }
}

pub fn count(name: &str, value: u64, integration: &str) {
    if in_lambda() {
        println!("{}", emf_line(name, value as f64, "Count", integration, chrono::Utc::now().timestamp_millis()));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn emf_names_the_metric_and_dimension() {
        let line: serde_json::Value = serde_json::from_str(&super::emf_line("GrantsCreated", 1.0, "Count", "orders", 5)).unwrap();
        assert_eq!(line["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"], "GrantsCreated");
        assert_eq!(line["GrantsCreated"], 1.0);
        assert_eq!(line["Integration"], "orders");
    }
}
