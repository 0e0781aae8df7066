//! The public event contract: approvals (EventBridge or webhook body), early revokes, and the
//! scheduler's revoke input. Parsing errors name the field and never echo secret-looking values.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::access::AccessEntry;

pub const APPROVED: &str = "Access Request Approved";
pub const GRANTED: &str = "Access Granted";
pub const REVOKE_REQUESTED: &str = "Access Revoke Requested";
pub const EXTENSION_APPROVED: &str = "Access Extension Approved";
pub const EXTENDED: &str = "Access Extended";
pub const BREAK_GLASS_USED: &str = "Break Glass Used";
/// The front door's events on `PGJIT_EVENT_BUS` (pgjit's own bus, never the approval bus).
pub const REQUEST_CREATED: &str = "Access Request Created";
pub const REQUEST_DENIED: &str = "Access Request Denied";
pub const REQUEST_CANCELLED: &str = "Access Request Cancelled";
pub const REQUEST_EXPIRED: &str = "Access Request Expired";

/// The `detail` of an extension: more time for an active grant, same user, same privileges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    pub request_id: String,
    pub approver: String,
    /// Everyone who approved, where the grant's flow requires more than one approver (the
    /// `approver` counts too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    pub duration_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The event's `time` (None for a bare `detail`): a stale extension is refused like a stale
    /// approval.
    #[serde(skip)]
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The EventBridge event's `id`, the same on every redelivery (None for a bare `detail`).
    #[serde(skip)]
    pub event_id: Option<String>,
    /// Set by the webhook: the signed request's timestamp. The same signed request sent again
    /// is the same extension, whatever event carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<i64>,
}

impl Extension {
    /// What tells a redelivery of this extension from another one: the event's id, or for a
    /// bare detail its content and time.
    pub fn key(&self) -> String {
        use sha2::Digest;
        if let Some(signed_at) = self.signed_at {
            let text = format!("{}|{}|{}|{:?}|{signed_at}", self.request_id, self.approver, self.duration_seconds, self.reason);
            return format!("signed:{}", hex::encode(&sha2::Sha256::digest(text.as_bytes())[..12]));
        }
        match &self.event_id {
            Some(id) => format!("event:{id}"),
            None => {
                let text = format!("{}|{}|{}|{:?}|{:?}", self.request_id, self.approver, self.duration_seconds, self.reason, self.sent_at);
                format!("detail:{}", hex::encode(&sha2::Sha256::digest(text.as_bytes())[..12]))
            }
        }
    }
}

/// Whether an event (or a bare detail, as the webhook receives it) is an extension rather than
/// an approval: its `detail-type` says so, or a bare detail has an extension's fields and none
/// of an approval's own (integration, requester, access).
pub fn is_extension(event: &Value) -> bool {
    match event.get("detail-type") {
        Some(kind) => kind.as_str() == Some(EXTENSION_APPROVED),
        None => {
            let has = |field: &str| event.get(field).is_some();
            has("request_id") && has("approver") && has("duration_seconds") && !has("integration") && !has("access") && !has("requester")
        }
    }
}

/// An extension: the EventBridge event as the function receives it, or the bare `detail`.
pub fn parse_extension(event: Value) -> Result<Extension, EventError> {
    let sent_at = event_time(&event)?;
    let event_id = event.get("detail-type").and(event.get("id")).and_then(Value::as_str).map(str::to_owned);
    let mut extension: Extension = typed(detail_of(event, EXTENSION_APPROVED)?)?;
    extension.sent_at = sent_at;
    extension.event_id = event_id;
    check_request_id(&extension.request_id)?;
    if extension.approver.trim().is_empty() || extension.approver.len() > 256 {
        return Err(bad("approver", "must be 1-256 characters"));
    }
    if extension.reason.as_ref().is_some_and(|r| r.len() > 2048) {
        return Err(bad("reason", "at most 2048 characters"));
    }
    check_approvers(&extension.approvers)?;
    if extension.duration_seconds == 0 {
        return Err(bad("duration_seconds", "must be positive"));
    }
    Ok(extension)
}

/// A duration as an operator writes it: `7200`, `90s`, `45m`, `2h`, `1d`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration (say 3600, 90m, 2h, 1d or 1h30m)");
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return (seconds > 0).then_some(seconds).ok_or_else(bad);
    }
    let (mut total, mut number) = (0u64, String::new());
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

/// The `time` of an EventBridge event (None for a bare detail).
fn event_time(event: &Value) -> Result<Option<chrono::DateTime<chrono::Utc>>, EventError> {
    match event.get("detail-type").and(event.get("time")) {
        None => Ok(None),
        Some(time) => Ok(Some(
            time.as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
                .ok_or_else(|| bad("time", "must be an RFC 3339 time"))?,
        )),
    }
}

/// The `detail` of an approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub request_id: String,
    pub integration: String,
    pub requester: Requester,
    pub approver: String,
    pub duration_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub access: Vec<AccessEntry>,
    /// Everyone who approved (the `approver` counts too): what a flow's `required` counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// The access flow the request was made under, if it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// A ticket reference, for flows with a `ticket_pattern`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// The event's `time` when it came through EventBridge (None for a bare `detail`): an
    /// approval older than the configured age is refused, so a replay cannot grant again.
    #[serde(skip)]
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What started a revoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevokeTrigger {
    /// The one-shot schedule at expiry.
    Scheduled,
    /// An `Access Revoke Requested` event or an operator.
    Early,
    /// Cleanup found it overdue or abandoned.
    Cleanup,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeRequest {
    pub request_id: String,
    pub trigger: RevokeTrigger,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad event: {field}: {message}")]
pub struct EventError {
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> EventError {
    EventError { field: field.to_owned(), message: message.into() }
}

/// Longest request id accepted: it names a secret, a schedule and an IAM policy.
pub const MAX_REQUEST_ID: usize = 128;

pub fn check_request_id(id: &str) -> Result<(), EventError> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID {
        return Err(bad("request_id", format!("must be 1-{MAX_REQUEST_ID} characters")));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:@/+=".contains(&b)) {
        return Err(bad("request_id", "may hold letters, digits and - _ . : @ / + = only"));
    }
    Ok(())
}

fn detail_of(event: Value, expected_type: &str) -> Result<Value, EventError> {
    match event {
        Value::Object(mut map) if map.contains_key("detail-type") => {
            let kind = map.get("detail-type").and_then(Value::as_str).unwrap_or_default().to_owned();
            if kind != expected_type {
                return Err(bad("detail-type", format!("{kind:?} is not {expected_type:?}")));
            }
            map.remove("detail").ok_or_else(|| bad("detail", "missing"))
        }
        Value::Object(map) => Ok(Value::Object(map)),
        _ => Err(bad("(event)", "must be a JSON object")),
    }
}

/// The field a serde error is about: its path, or for a missing or unknown field at the top,
/// the name serde quotes in its message.
pub fn field_of(path: &str, message: &str, top: &str) -> String {
    let quoted = || {
        let (_, rest) = message.split_once('`')?;
        let (name, _) = rest.split_once('`')?;
        // An empty key names nothing a person could find: report the document instead.
        (!name.is_empty()).then(|| name.to_owned())
    };
    // serde's path ends at an unknown field itself, but at the parent of a missing one.
    if path == "." || message.starts_with("missing field") {
        if let Some(name) = quoted().filter(|_| message.starts_with("missing field") || message.starts_with("unknown field")) {
            return if path == "." { name } else { format!("{path}.{name}") };
        }
    }
    if path == "." || path.is_empty() { top.to_owned() } else { path.to_owned() }
}

fn typed<T: for<'de> Deserialize<'de>>(value: Value) -> Result<T, EventError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        bad(&field_of(&path, &message, "detail"), message)
    })
}

/// The EventBridge envelope of an approval, as the grant function must receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub source: String,
    pub account: String,
    pub time: chrono::DateTime<chrono::Utc>,
}

impl Envelope {
    /// The envelope's fields; an event without one (a bare `detail`) is refused.
    pub fn of(event: &Value) -> Result<Envelope, EventError> {
        if !event.is_object() {
            return Err(bad("(event)", "must be a JSON object"));
        }
        if event.get("detail-type").is_none() {
            return Err(bad("detail-type", "the grant function takes EventBridge events from the approval bus, not a bare detail"));
        }
        let text = |field: &str| {
            event.get(field).and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_owned).ok_or_else(|| bad(field, "missing from the event"))
        };
        let time = text("time")?;
        let time = chrono::DateTime::parse_from_rfc3339(&time).map_err(|_| bad("time", "must be an RFC 3339 time"))?.with_timezone(&chrono::Utc);
        Ok(Envelope { source: text("source")?, account: text("account")?, time })
    }

    /// The approval source and pgjit's own account, or a refusal that names the field.
    pub fn check(&self, approval_source: &str, own_account: &str) -> Result<(), EventError> {
        if self.source != approval_source {
            return Err(bad("source", format!("{:?} is not the approval source {approval_source:?}", self.source)));
        }
        if self.account != own_account {
            return Err(bad("account", format!("{} is not pgjit's account", self.account)));
        }
        Ok(())
    }
}

/// An approval: the EventBridge event as the function receives it, or the bare `detail` (webhook).
pub fn parse_approval(event: Value) -> Result<Approval, EventError> {
    let sent_at = event_time(&event)?;
    let mut approval: Approval = typed(detail_of(event, APPROVED)?)?;
    approval.sent_at = sent_at;
    check_request_id(&approval.request_id)?;
    for (field, text, max) in [
        ("integration", approval.integration.as_str(), 64),
        ("requester.id", approval.requester.id.as_str(), 256),
        ("approver", approval.approver.as_str(), 256),
    ] {
        if text.trim().is_empty() || text.len() > max {
            return Err(bad(field, format!("must be 1-{max} characters")));
        }
    }
    if approval.reason.as_ref().is_some_and(|r| r.len() > 2048) {
        return Err(bad("reason", "at most 2048 characters"));
    }
    if approval.duration_seconds == 0 {
        return Err(bad("duration_seconds", "must be positive"));
    }
    if approval.access.len() > 100 {
        return Err(bad("access", "at most 100 entries"));
    }
    check_approvers(&approval.approvers)?;
    if approval.flow.as_ref().is_some_and(|f| f.is_empty() || f.len() > 64) {
        return Err(bad("flow", "must be 1-64 characters"));
    }
    if approval.ticket.as_ref().is_some_and(|t| t.trim().is_empty() || t.len() > 128) {
        return Err(bad("ticket", "must be 1-128 characters"));
    }
    Ok(approval)
}

impl Approval {
    /// Everyone who approved: the `approver` and the `approvers`, each once.
    pub fn all_approvers(&self) -> Vec<&str> {
        all_approvers(&self.approver, &self.approvers)
    }
}

impl Extension {
    /// Everyone who approved: the `approver` and the `approvers`, each once.
    pub fn all_approvers(&self) -> Vec<&str> {
        all_approvers(&self.approver, &self.approvers)
    }
}

fn all_approvers<'a>(approver: &'a str, approvers: &'a [String]) -> Vec<&'a str> {
    let mut all = vec![approver];
    for a in approvers {
        if !all.contains(&a.as_str()) {
            all.push(a);
        }
    }
    all
}

/// Most approvers one event names.
pub const MAX_APPROVERS: usize = 20;

fn check_approvers(approvers: &[String]) -> Result<(), EventError> {
    if approvers.len() > MAX_APPROVERS {
        return Err(bad("approvers", format!("at most {MAX_APPROVERS}")));
    }
    match approvers.iter().position(|a| a.trim().is_empty() || a.len() > 256) {
        Some(i) => Err(bad(&format!("approvers[{i}]"), "must be 1-256 characters")),
        None => Ok(()),
    }
}

/// A revoke: the scheduler's `{"request_id":…}`, or an `Access Revoke Requested` event.
pub fn parse_revoke(event: Value) -> Result<RevokeRequest, EventError> {
    #[derive(Deserialize)]
    struct Detail {
        request_id: String,
    }
    let early = event.get("detail-type").is_some();
    let detail: Detail = typed(detail_of(event, REVOKE_REQUESTED)?)?;
    check_request_id(&detail.request_id)?;
    Ok(RevokeRequest { request_id: detail.request_id, trigger: if early { RevokeTrigger::Early } else { RevokeTrigger::Scheduled } })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_arn: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_as_operators_write_them() {
        for (text, seconds) in [("7200", 7200), ("90s", 90), ("45m", 2700), ("2h", 7200), ("1d", 86_400), ("1h30m", 5400)] {
            assert_eq!(parse_duration(text), Ok(seconds), "{text}");
        }
        for bad in ["", "0", "2x", "h", "1h30", "-5m", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn extensions_are_told_from_approvals_and_keyed_by_their_event() {
        let event = json!({"version": "0", "id": "ev-1", "detail-type": EXTENSION_APPROVED, "source": "pgjit.approvals", "account": "123456789012",
            "time": "2026-11-24T10:45:00Z", "detail": {"request_id": "REQ-1", "approver": "jane", "duration_seconds": 60}});
        assert!(is_extension(&event));
        let extension = parse_extension(event.clone()).unwrap();
        assert_eq!((extension.key(), extension.sent_at.map(|t| t.to_rfc3339())), ("event:ev-1".to_owned(), Some("2026-11-24T10:45:00+00:00".to_owned())));
        // The webhook's bare detail: no integration, no access.
        assert!(is_extension(&json!({"request_id": "REQ-1", "approver": "jane", "duration_seconds": 60})));
        assert!(!is_extension(&json!({"request_id": "REQ-1", "integration": "x", "access": []})));
        for (detail, field) in [
            (json!({"request_id": "REQ-1", "approver": "", "duration_seconds": 60}), "approver"),
            (json!({"request_id": "REQ-1", "approver": "jane", "duration_seconds": 0}), "duration_seconds"),
            (json!({"request_id": "REQ 1", "approver": "jane", "duration_seconds": 60}), "request_id"),
            (json!({"request_id": "REQ-1", "approver": "jane", "duration_seconds": 60, "access": []}), "access"),
        ] {
            let e = parse_extension(detail).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    fn approval() -> Value {
        json!({"version":"0","id":"e1","detail-type":"Access Request Approved","source":"pgjit.approvals",
            "account":"123456789012","time":"2026-11-24T10:00:00Z","region":"us-east-1","resources":[],
            "detail":{"request_id":"REQ-1001","integration":"orders-prod",
                "requester":{"id":"john.doe@corp.com","iam_arn":"arn:aws:iam::123456789012:user/john"},
                "approver":"jane@corp.com","duration_seconds":3600,"reason":"INC-42",
                "access":[{"database":"app","schema":"sales","table":"orders","privileges":["SELECT"]}]}})
    }

    #[test]
    fn approvals_from_eventbridge_and_webhook() {
        let a = parse_approval(approval()).unwrap();
        assert_eq!(a.request_id, "REQ-1001");
        assert_eq!(a.sent_at.map(|t| t.to_rfc3339()), Some("2026-11-24T10:00:00+00:00".to_owned()));
        let bare = parse_approval(approval()["detail"].clone()).unwrap();
        assert_eq!(bare.sent_at, None);
        assert_eq!(Approval { sent_at: None, ..a }, bare);
    }

    #[test]
    fn bad_approvals_name_the_field() {
        let cases: Vec<(Box<dyn Fn(&mut Value)>, &str)> = vec![
            (Box::new(|v| v["detail-type"] = json!("Something Else")), "detail-type"),
            (Box::new(|v| { v.as_object_mut().unwrap().remove("detail"); }), "detail"),
            (Box::new(|v| { v["detail"].as_object_mut().unwrap().remove("request_id"); }), "request_id"),
            (Box::new(|v| v["detail"]["duration_seconds"] = json!("3600")), "duration_seconds"),
            (Box::new(|v| v["detail"]["duration_seconds"] = json!(-1)), "duration_seconds"),
            (Box::new(|v| v["detail"]["duration_seconds"] = json!(0)), "duration_seconds"),
            (Box::new(|v| v["detail"]["request_id"] = json!("a b")), "request_id"),
            (Box::new(|v| v["detail"]["request_id"] = json!("x".repeat(129))), "request_id"),
            (Box::new(|v| v["detail"]["requester"]["id"] = json!("")), "requester.id"),
            (Box::new(|v| v["detail"]["access"][0]["tabel"] = json!("x")), "access[0]"),
            (Box::new(|v| v["detail"]["access"] = json!("all")), "access"),
            (Box::new(|v| v["detail"]["integration"] = json!(42)), "integration"),
            (Box::new(|v| v["time"] = json!("yesterday")), "time"),
        ];
        for (change, field) in cases {
            let mut v = approval();
            change(&mut v);
            let err = parse_approval(v).unwrap_err();
            assert!(err.field.starts_with(field), "{field}: {err}");
        }
        assert!(parse_approval(json!([1, 2])).is_err());
    }

    #[test]
    fn the_grant_function_takes_whole_events_from_the_approval_source_and_account() {
        let envelope = Envelope::of(&approval()).unwrap();
        assert_eq!(envelope.check("pgjit.approvals", "123456789012"), Ok(()));
        assert_eq!(envelope.check("pgjit.approvals", "210987654321").unwrap_err().field, "account");
        assert_eq!(envelope.check("other.tool", "123456789012").unwrap_err().field, "source");
        assert_eq!(Envelope::of(&approval()["detail"]).unwrap_err().field, "detail-type");
        for field in ["time", "source", "account"] {
            let mut event = approval();
            event.as_object_mut().unwrap().remove(field);
            assert_eq!(Envelope::of(&event).unwrap_err().field, field);
        }
    }

    #[test]
    fn revokes_from_the_scheduler_and_from_events() {
        assert_eq!(parse_revoke(json!({"request_id":"R1"})).unwrap().trigger, RevokeTrigger::Scheduled);
        let early = json!({"detail-type":"Access Revoke Requested","detail":{"request_id":"R1"}});
        assert_eq!(parse_revoke(early).unwrap().trigger, RevokeTrigger::Early);
        assert!(parse_revoke(json!({"detail-type":"Access Request Approved","detail":{"request_id":"R1"}})).is_err());
        assert!(parse_revoke(json!({"request_id":""})).is_err());
    }
}
