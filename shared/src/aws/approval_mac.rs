//! Approvals pgjit can verify. Whoever may invoke the grant or revoke function directly writes
//! the whole event (its `source`, `account` and `time` included); the approval bus's policy does
//! not apply to a direct invocation. So an approval, an extension and an early revoke count only
//! with a MAC made by the approvals key, a KMS HMAC_256 key that only the approval senders (the
//! webhook, the principals in `ApprovalSenderArns`) may use to make MACs, and pgjit's functions
//! only to verify them. The key never leaves KMS.
//!
//! The MAC is `detail.mac`, base64 of KMS `GenerateMac` (HMAC_SHA_256) over the message
//!
//! ```text
//! pgjit-approval-mac-v1:<hex SHA-256 of the canonical form>
//! ```
//!
//! where the canonical form is the JSON object `{"detail":…,"detail-type":…,"time":…}` with
//! `detail` as sent less its `mac`, `time` as `YYYY-MM-DDThh:mm:ssZ` in UTC, every object's keys
//! sorted, no white space, and strings escaped as JSON does (`jq -cS`, or Python's
//! `json.dumps(…, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`). The digest keeps
//! the message within KMS's 4,096 bytes whatever the access list's size.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::aws::{AwsError, Services};

/// The approvals key's alias, as `pgjit bootstrap` creates it.
pub const DEFAULT_KEY: &str = crate::contract::config::DEFAULT_APPROVALS_KEY;

/// Where the MAC goes in the event's `detail`.
pub const MAC_FIELD: &str = "mac";

const VERSION: &str = "pgjit-approval-mac-v1";

#[derive(Debug, thiserror::Error)]
pub enum MacError {
    #[error("the {0} carries no MAC of the approvals key (detail.mac): only an approval sender can make one (README: \"Approvals pgjit can verify\"); nothing was changed")]
    Missing(String),
    #[error("the {kind} cannot be verified: {reason}; nothing was changed")]
    Malformed { kind: String, reason: String },
    #[error("the {0}'s MAC does not match it: it was not made for this {0} with the approvals key; nothing was changed")]
    Invalid(String),
    #[error(transparent)]
    Kms(#[from] AwsError),
}

/// What the event is, for messages: approval, extension, early revoke.
fn kind_of(event: &Value) -> String {
    match event.get("detail-type").and_then(Value::as_str) {
        Some(crate::contract::events::EXTENSION_APPROVED) => "extension".into(),
        Some(crate::contract::events::REVOKE_REQUESTED) => "early revoke".into(),
        _ => "approval".into(),
    }
}

/// The message the MAC is made over (see the module's doc). Pure: no I/O.
pub fn message(event: &Value) -> Result<String, String> {
    let detail_type = event.get("detail-type").and_then(Value::as_str).ok_or("the event has no detail-type")?;
    let time = event.get("time").and_then(Value::as_str).ok_or("the event has no time")?;
    let time = DateTime::parse_from_rfc3339(time).map_err(|_| "the event's time is not an RFC 3339 time")?.with_timezone(&Utc);
    let mut detail = event.get("detail").filter(|d| d.is_object()).cloned().ok_or("the event has no detail object")?;
    if let Some(map) = detail.as_object_mut() {
        map.remove(MAC_FIELD);
    }
    let whole = serde_json::json!({"detail": detail, "detail-type": detail_type, "time": time.format("%Y-%m-%dT%H:%M:%SZ").to_string()});
    let mut canonical = String::new();
    write_canonical(&whole, &mut canonical);
    Ok(format!("{VERSION}:{}", hex::encode(Sha256::digest(canonical.as_bytes()))))
}

/// JSON with every object's keys sorted and no white space, whatever order the map keeps.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// An approval sender's event: `detail` as `detail_type` at `now` (to the second, as the bus
/// keeps it), with the approvals key's MAC; the envelope a delivery adds (source, account) is
/// not part of it.
pub async fn signed_event(svc: &Services, detail: Value, detail_type: &str, now: DateTime<Utc>) -> Result<Value, MacError> {
    let time = DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut event = serde_json::json!({"detail-type": detail_type, "time": time, "detail": detail});
    sign(svc, &mut event).await?;
    Ok(event)
}

/// Puts a [`signed_event`] on the approval bus, with the time its MAC covers; returns the
/// event's id.
pub async fn put_on_bus(svc: &Services, event: &Value) -> Result<String, AwsError> {
    let time = event.get("time").and_then(Value::as_str).and_then(|t| DateTime::parse_from_rfc3339(t).ok()).ok_or_else(|| AwsError::msg("events:PutEvents", "the event has no time"))?;
    let detail_type = event.get("detail-type").and_then(Value::as_str).unwrap_or_default();
    let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
        .event_bus_name(&svc.config.approval_bus)
        .source(&svc.config.approval_source)
        .detail_type(detail_type)
        .time(aws_smithy_types::DateTime::from_secs(time.timestamp()))
        .detail(event["detail"].to_string())
        .build();
    let out = svc.events.put_events().entries(entry).send().await.map_err(|e| AwsError::new("events:PutEvents", e))?;
    let first = out.entries().first();
    match first.and_then(|e| e.event_id()) {
        Some(id) if out.failed_entry_count() == 0 => Ok(id.to_owned()),
        _ => Err(AwsError::msg("events:PutEvents", format!("the entry was refused: {:?}", first.and_then(|e| e.error_message())))),
    }
}

/// Adds `detail.mac` to the event (GenerateMac with the approvals key): what an approval sender
/// does. Replaces a MAC already there.
pub async fn sign(svc: &Services, event: &mut Value) -> Result<(), MacError> {
    let kind = kind_of(event);
    let message = message(event).map_err(|reason| MacError::Malformed { kind, reason })?;
    let out = svc
        .kms
        .generate_mac()
        .key_id(&svc.config.approvals_key_id)
        .mac_algorithm(aws_sdk_kms::types::MacAlgorithmSpec::HmacSha256)
        .message(aws_smithy_types::Blob::new(message.into_bytes()))
        .send()
        .await
        .map_err(|e| AwsError::new("kms:GenerateMac", e))?;
    let mac = out.mac().ok_or_else(|| AwsError::msg("kms:GenerateMac", "no MAC in the answer"))?;
    event["detail"][MAC_FIELD] = Value::String(base64::engine::general_purpose::STANDARD.encode(mac.as_ref()));
    Ok(())
}

/// Checks the event's MAC with the approvals key (VerifyMac) and returns the event without it,
/// ready to parse. A missing, malformed or wrong MAC is refused before anything is read or made.
pub async fn verify(svc: &Services, mut event: Value) -> Result<Value, MacError> {
    let kind = kind_of(&event);
    let mac = match event.get("detail").and_then(|d| d.get(MAC_FIELD)) {
        None | Some(Value::Null) => return Err(MacError::Missing(kind)),
        Some(Value::String(text)) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()
            .filter(|m| m.len() == 32)
            .ok_or_else(|| MacError::Malformed { kind: kind.clone(), reason: "detail.mac is not the base64 of a 32-byte HMAC-SHA-256".into() })?,
        Some(_) => return Err(MacError::Malformed { kind, reason: "detail.mac must be a string".into() }),
    };
    let message = message(&event).map_err(|reason| MacError::Malformed { kind: kind.clone(), reason })?;
    let result = svc
        .kms
        .verify_mac()
        .key_id(&svc.config.approvals_key_id)
        .mac_algorithm(aws_sdk_kms::types::MacAlgorithmSpec::HmacSha256)
        .message(aws_smithy_types::Blob::new(message.into_bytes()))
        .mac(aws_smithy_types::Blob::new(mac))
        .send()
        .await;
    match result {
        Ok(out) if out.mac_valid() => {}
        Ok(_) => return Err(MacError::Invalid(kind)),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_kms_invalid_mac_exception()) => return Err(MacError::Invalid(kind)),
        Err(e) => return Err(AwsError::new("kms:VerifyMac", e).into()),
    }
    if let Some(detail) = event.get_mut("detail").and_then(Value::as_object_mut) {
        detail.remove(MAC_FIELD);
    }
    Ok(event)
}

/// Creates the approvals key (HMAC_256, for MACs) and its alias if the alias names no key yet
/// (`pgjit bootstrap`, locally; the template makes it in AWS). Returns whether it was created.
pub async fn ensure_key(svc: &Services) -> Result<bool, AwsError> {
    let alias = svc.config.approvals_key_id.clone();
    if !alias.starts_with("alias/") {
        return Ok(false);
    }
    match svc.kms.describe_key().key_id(&alias).send().await {
        Ok(_) => return Ok(false),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found_exception()) => {}
        Err(e) => return Err(AwsError::new("kms:DescribeKey", e)),
    }
    let key = svc
        .kms
        .create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::Hmac256)
        .key_usage(aws_sdk_kms::types::KeyUsageType::GenerateVerifyMac)
        .description("pgjit approvals: MACs that make an approval valid")
        .send()
        .await
        .map_err(|e| AwsError::new("kms:CreateKey", e))?;
    let key_id = key.key_metadata().map(|m| m.key_id().to_owned()).ok_or_else(|| AwsError::msg("kms:CreateKey", "no key in the answer"))?;
    match svc.kms.create_alias().alias_name(&alias).target_key_id(&key_id).send().await {
        Ok(_) => Ok(true),
        // Another run made it meanwhile: that key serves.
        Err(e) if e.as_service_error().is_some_and(|s| s.is_already_exists_exception()) => Ok(false),
        Err(e) => Err(AwsError::new("kms:CreateAlias", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_message_is_the_digest_of_a_canonical_form_anyone_can_rebuild() {
        let event = json!({"detail-type": "Access Request Approved", "time": "2026-11-24T10:00:00.000+00:00", "source": "x", "account": "1",
            "detail": {"request_id": "R1", "integration": "orders", "requester": {"id": "j\u{e9}@corp.com"}, "approver": "jane", "duration_seconds": 3600,
                "access": [{"schema": "sales", "database": "app", "privileges": ["SELECT"]}], "mac": "ignored"}});
        // What `jq -cS` (or Python's sort_keys) writes, then SHA-256 in hex.
        let canonical = r#"{"detail":{"access":[{"database":"app","privileges":["SELECT"],"schema":"sales"}],"approver":"jane","duration_seconds":3600,"integration":"orders","request_id":"R1","requester":{"id":"jé@corp.com"}},"detail-type":"Access Request Approved","time":"2026-11-24T10:00:00Z"}"#;
        assert_eq!(message(&event).unwrap(), format!("pgjit-approval-mac-v1:{}", hex::encode(Sha256::digest(canonical.as_bytes()))));
        // Every field the approval carries is covered; the envelope's source and account are not.
        let mut other = event.clone();
        other["detail"]["access"][0]["privileges"] = json!(["SELECT", "DELETE"]);
        assert_ne!(message(&other).unwrap(), message(&event).unwrap());
        let mut other = event.clone();
        other["time"] = json!("2026-11-24T10:00:01Z");
        assert_ne!(message(&other).unwrap(), message(&event).unwrap());
        let mut other = event.clone();
        other["detail-type"] = json!("Access Extension Approved");
        assert_ne!(message(&other).unwrap(), message(&event).unwrap());
        for bad in [json!({"time": "2026-11-24T10:00:00Z", "detail": {}}), json!({"detail-type": "x", "detail": {}}), json!({"detail-type": "x", "time": "yesterday", "detail": {}})] {
            assert!(message(&bad).is_err(), "{bad}");
        }
    }
}
