//! The front door's contract: what a person sends to the `requests` Function URL (one JSON
//! object with an `action`), and who they are. Who they are never comes from the body: it is
//! the identity SigV4 proved, from the URL request's IAM context ([`Caller`]). A body that
//! claims a `requester`, `approver` or `caller` is read, and that claim ignored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::access::AccessEntry;
use crate::contract::events::{check_request_id, field_of, EventError};
use crate::contract::identity::{requester_of, Person, Principal, IDENTITY_CENTER_ROLE_PREFIX};

/// How far ahead a request may ask to start.
pub const MAX_START_AHEAD_DAYS: i64 = 7;

/// Who called, as IAM authenticated them (the Function URL's `requestContext.authorizer.iam`,
/// or STS `GetCallerIdentity` for the CLI in-process).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// `arn:aws:iam::…:user/…` or `arn:aws:sts::…:assumed-role/<role>/<session>`.
    pub arn: String,
    /// IAM's unique id: `AIDA…` for a user, `AROA…:<session>` for a role session.
    pub user_id: String,
    pub account: String,
}

impl Caller {
    /// The caller's id as approvals carry it: an Identity Center session's user name, else
    /// the ARN itself (so the grant function resolves the same person from it).
    pub fn id(&self) -> String {
        match requester_of(&self.arn) {
            Ok(r) => match (&r.principal, &r.session) {
                (Principal::Role(role), Some(session)) if role.starts_with(IDENTITY_CENTER_ROLE_PREFIX) => session.clone(),
                _ => self.arn.clone(),
            },
            Err(_) => self.arn.clone(),
        }
    }

    /// The caller as a person (groups not yet resolved).
    pub fn person(&self) -> Result<Person, String> {
        Person::named(&[&self.arn])
    }

    /// Checks what the IAM context gave: an ARN of a user or a role session in the account
    /// it names.
    pub fn check(&self) -> Result<(), String> {
        let r = requester_of(&self.arn)?;
        if r.account != self.account {
            return Err(format!("the caller's ARN {:?} is not in its account {}", self.arn, self.account));
        }
        if matches!(r.principal, Principal::Role(_)) && r.session.is_none() {
            return Err(format!("{:?} is a role, not a session of one", self.arn));
        }
        if self.user_id.is_empty() || self.user_id.len() > 200 {
            return Err("the caller has no user id".into());
        }
        Ok(())
    }
}

/// What a request is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    /// Waiting for approvals.
    Pending,
    /// Approved: its approval is on the bus (or scheduled for its start).
    Approved,
    Denied,
    Cancelled,
    /// Not approved within `RequestTtlHours`, or no longer allowed at its start.
    Expired,
    /// The grant function made the grant.
    Granted,
    /// The grant function refused or failed it.
    Failed,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Denied => "denied",
            RequestStatus::Cancelled => "cancelled",
            RequestStatus::Expired => "expired",
            RequestStatus::Granted => "granted",
            RequestStatus::Failed => "failed",
        }
    }

    /// Whether nothing more can happen to it through the front door.
    pub fn is_final(self) -> bool {
        !matches!(self, RequestStatus::Pending | RequestStatus::Approved)
    }
}

impl std::fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A new request, as its requester sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRequest {
    /// Makes a retried create the same request (1-64 of letters, digits, `-`, `_`).
    pub client_token: String,
    pub integration: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    pub access: Vec<AccessEntry>,
    pub duration_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<DateTime<Utc>>,
}

/// The entries with `database` where they name none (an empty database: the integration's).
pub fn with_database(entries: &[AccessEntry], database: &str) -> Vec<AccessEntry> {
    entries
        .iter()
        .map(|e| if e.database.is_empty() { AccessEntry { database: database.to_owned(), ..e.clone() } } else { e.clone() })
        .collect()
}

/// Which requests `list` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListFilter {
    /// The caller's own requests.
    Mine,
    /// Pending requests the caller may approve.
    ToApprove,
}

/// One call to the front door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create(NewRequest),
    Approve { request_id: String, client_token: Option<String> },
    Deny { request_id: String, reason: String, client_token: Option<String> },
    Cancel { request_id: String, client_token: Option<String> },
    Get { request_id: String },
    List { filter: ListFilter },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Create(_) => "create",
            Action::Approve { .. } => "approve",
            Action::Deny { .. } => "deny",
            Action::Cancel { .. } => "cancel",
            Action::Get { .. } => "get",
            Action::List { .. } => "list",
        }
    }
}

/// Fields a body may carry to claim an identity: read and ignored (the IAM context decides).
const CLAIMS: [&str; 3] = ["requester", "approver", "caller"];

fn bad(field: &str, message: impl Into<String>) -> EventError {
    EventError { field: field.to_owned(), message: message.into() }
}

fn token_ok(token: &str) -> bool {
    (1..=64).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses a body; the first bad field is named. `now` bounds `start_at`.
pub fn parse_action(body: &str, now: DateTime<Utc>) -> Result<Action, EventError> {
    let mut value: Value = serde_json::from_str(body).map_err(|e| bad("(body)", format!("not JSON: {e}")))?;
    let map = value.as_object_mut().ok_or_else(|| bad("(body)", "must be a JSON object"))?;
    for claim in CLAIMS {
        map.remove(claim);
    }
    let action = map.remove("action").and_then(|a| a.as_str().map(str::to_owned)).ok_or_else(|| bad("action", "say create, approve, deny, cancel, get or list"))?;
    let text = |map: &mut serde_json::Map<String, Value>, field: &str| -> Result<Option<String>, EventError> {
        match map.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad(field, "must be a string")),
        }
    };
    let request_id = |map: &mut serde_json::Map<String, Value>| -> Result<String, EventError> {
        let id = text(map, "request_id")?.ok_or_else(|| bad("request_id", "missing"))?;
        check_request_id(&id)?;
        Ok(id)
    };
    let client_token = |map: &mut serde_json::Map<String, Value>| -> Result<Option<String>, EventError> {
        let token = text(map, "client_token")?;
        if token.as_deref().is_some_and(|t| !token_ok(t)) {
            return Err(bad("client_token", "must be 1-64 letters, digits, '-' or '_'"));
        }
        Ok(token)
    };
    let done = |map: &serde_json::Map<String, Value>| match map.keys().next() {
        Some(extra) => Err(bad(extra, format!("unknown field for {action:?}"))),
        None => Ok(()),
    };
    let parsed = match action.as_str() {
        "create" => {
            // An entry without a database is in the integration's (filled in by the front door).
            if let Some(Value::Array(entries)) = map.get_mut("access") {
                for entry in entries.iter_mut().filter_map(Value::as_object_mut) {
                    entry.entry("database").or_insert(Value::String(String::new()));
                }
            }
            let new: NewRequest = serde_path_to_error::deserialize(Value::Object(std::mem::take(map))).map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                bad(&field_of(&path, &message, "(body)"), message)
            })?;
            check_new(&new, now)?;
            return Ok(Action::Create(new));
        }
        "approve" => Action::Approve { request_id: request_id(map)?, client_token: client_token(map)? },
        "deny" => {
            let request_id = request_id(map)?;
            let reason = text(map, "reason")?.filter(|r| !r.trim().is_empty()).ok_or_else(|| bad("reason", "a denial says why"))?;
            if reason.len() > 2048 {
                return Err(bad("reason", "at most 2048 characters"));
            }
            Action::Deny { request_id, reason, client_token: client_token(map)? }
        }
        "cancel" => Action::Cancel { request_id: request_id(map)?, client_token: client_token(map)? },
        "get" => Action::Get { request_id: request_id(map)? },
        "list" => {
            let filter = match text(map, "filter")?.as_deref() {
                None | Some("mine") => ListFilter::Mine,
                Some("to_approve") => ListFilter::ToApprove,
                Some(other) => return Err(bad("filter", format!("{other:?} is not mine or to_approve"))),
            };
            Action::List { filter }
        }
        other => return Err(bad("action", format!("{other:?} is not create, approve, deny, cancel, get or list"))),
    };
    done(map)?;
    Ok(parsed)
}

fn check_new(new: &NewRequest, now: DateTime<Utc>) -> Result<(), EventError> {
    if !token_ok(&new.client_token) {
        return Err(bad("client_token", "must be 1-64 letters, digits, '-' or '_'"));
    }
    if new.integration.is_empty() || new.integration.len() > 64 {
        return Err(bad("integration", "must be 1-64 characters"));
    }
    if new.flow.as_ref().is_some_and(|f| f.is_empty() || f.len() > 64) {
        return Err(bad("flow", "must be 1-64 characters"));
    }
    if new.access.is_empty() || new.access.len() > 100 {
        return Err(bad("access", "1-100 entries"));
    }
    // Checked as the front door will fill it in: an empty database is the integration's.
    let filled = with_database(&new.access, "postgres");
    crate::access::AccessSet::from_entries(&filled).map_err(|e| bad(&format!("access[{}].{}", e.index, e.field), e.message))?;
    if new.duration_seconds == 0 {
        return Err(bad("duration_seconds", "must be positive"));
    }
    if new.reason.as_ref().is_some_and(|r| r.len() > 2048) {
        return Err(bad("reason", "at most 2048 characters"));
    }
    if new.ticket.as_ref().is_some_and(|t| t.trim().is_empty() || t.len() > 128) {
        return Err(bad("ticket", "must be 1-128 characters"));
    }
    if let Some(start) = new.start_at {
        if start > now + chrono::Duration::days(MAX_START_AHEAD_DAYS) {
            return Err(bad("start_at", format!("at most {MAX_START_AHEAD_DAYS} days ahead")));
        }
        if start < now - chrono::Duration::minutes(5) {
            return Err(bad("start_at", "is in the past"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z").unwrap().with_timezone(&Utc)
    }

    fn create() -> Value {
        json!({"action": "create", "client_token": "t-1", "integration": "orders-prod",
            "access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["SELECT"]}],
            "duration_seconds": 3600, "reason": "INC-42"})
    }

    #[test]
    fn a_claimed_identity_is_ignored() {
        let mut body = create();
        body["requester"] = json!({"id": "jane@corp.com"});
        body["approver"] = json!("boss");
        let Action::Create(new) = parse_action(&body.to_string(), now()).unwrap() else { panic!("create") };
        assert_eq!(new.integration, "orders-prod");
        let approve = json!({"action": "approve", "request_id": "REQ-1", "caller": {"arn": "arn:aws:iam::123456789012:user/boss"}});
        assert_eq!(parse_action(&approve.to_string(), now()).unwrap(), Action::Approve { request_id: "REQ-1".into(), client_token: None });
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let cases: Vec<(Value, &str)> = vec![
            (json!([1]), "(body)"),
            (json!({"action": "grant"}), "action"),
            (json!({}), "action"),
            (json!({"action": "approve"}), "request_id"),
            (json!({"action": "approve", "request_id": "a b"}), "request_id"),
            (json!({"action": "approve", "request_id": "R", "client_token": "x y"}), "client_token"),
            (json!({"action": "deny", "request_id": "R"}), "reason"),
            (json!({"action": "cancel", "request_id": "R", "extra": 1}), "extra"),
            (json!({"action": "list", "filter": "all"}), "filter"),
        ];
        for (body, field) in cases {
            assert_eq!(parse_action(&body.to_string(), now()).unwrap_err().field, field, "{body}");
        }
        for (change, field) in [
            (json!({"client_token": ""}), "client_token"),
            (json!({"duration_seconds": 0}), "duration_seconds"),
            (json!({"access": []}), "access"),
            (json!({"access": [{"database": "app", "schema": "s", "table": "t", "privileges": ["FLY"]}]}), "access[0].privileges"),
            (json!({"start_at": "2026-12-09T10:00:00Z"}), "start_at"),
            (json!({"start_at": "2026-11-30T10:00:00Z"}), "start_at"),
            (json!({"colour": "red"}), "colour"),
        ] {
            let mut body = create();
            for (k, v) in change.as_object().unwrap() {
                body[k] = v.clone();
            }
            assert_eq!(parse_action(&body.to_string(), now()).unwrap_err().field, field, "{change}");
        }
        // No database: the integration's, filled in later.
        let mut bare = create();
        bare["access"] = json!([{"schema": "sales", "table": "orders", "privileges": ["SELECT"]}]);
        let Action::Create(new) = parse_action(&bare.to_string(), now()).unwrap() else { panic!("create") };
        assert_eq!(with_database(&new.access, "app")[0].database, "app");
        let mut ahead = create();
        ahead["start_at"] = json!("2026-12-07T10:00:00Z");
        assert!(parse_action(&ahead.to_string(), now()).is_ok());
    }

    #[test]
    fn callers_are_users_or_sessions_of_their_account() {
        let sso = Caller { arn: "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Eng_0123456789abcdef/jane@corp.com".into(), user_id: "AROAEXAMPLE:jane@corp.com".into(), account: "123456789012".into() };
        assert_eq!((sso.check(), sso.id()), (Ok(()), "jane@corp.com".to_owned()));
        let user = Caller { arn: "arn:aws:iam::123456789012:user/john".into(), user_id: "AIDAEXAMPLE".into(), account: "123456789012".into() };
        assert_eq!(user.id(), user.arn);
        assert!(Caller { account: "210987654321".into(), ..user.clone() }.check().is_err());
        assert!(Caller { arn: "arn:aws:iam::123456789012:role/admin".into(), ..user }.check().is_err());
    }
}
