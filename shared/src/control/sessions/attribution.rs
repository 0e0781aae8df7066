//! Attribution: which kept records of a delivery are whose, tied to their request, redacted, cut
//! to size and flagged when something about them is not what pgaudit writes. No I/O: the
//! benchmark measures this with the parsing.

use std::borrow::Cow;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::contract::integration::Integration;
use crate::audit::pgaudit::AuditLine;
use crate::audit::server_log::Record;
use crate::aws::store::sessions::{EntryKind, SessionEntry}; 

/// The longest statement kept, in bytes; longer ones are cut and say so.
pub const MAX_STATEMENT_BYTES: usize = 4096;

/// What one batch (or file) gave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ingested {
    /// The integration whose log it was (none: a log group of no integration, ignored).
    pub integration: Option<String>,
    pub records: usize,
    /// Entries written: statements, connections and disconnections of managed users.
    pub written: usize,
    pub statements: usize,
    /// Records of a managed user (the integration's prefix) with no grant of this integration.
    pub unattributed: usize,
    /// Lines that were neither a record nor the continuation of one.
    pub unparsed: usize,
    /// Managed users' `AUDIT:` lines that are not pgaudit's shape (not pgaudit's).
    pub malformed: usize,
    /// Managed users' statements whose record was cut (its rest in another delivery): kept, as
    /// far as they go, flagged [`CUT`].
    pub cut: usize,
}

/// Why a statement entry is flagged: its record went on beyond its delivery.
pub const CUT: &str = "cut: the record goes on beyond this log delivery (a statement longer than a delivery, or split at its edge); its first part is kept";

/// Why a statement entry is flagged: nothing shows its session was this user's. A line can be
/// forged into a stderr log by anyone who reaches the port (a startup packet whose user or
/// database name holds a newline and a whole record); a real statement follows its session's
/// `connection authorized` line, in its delivery or one before.
pub const NO_CONNECTION: &str = "no \"connection authorized\" line of this user for this server process: possibly forged into the log";

/// The longest merged `object` list kept, in bytes: one entry stays far below DynamoDB's 400 KB.
const MAX_OBJECT_LIST_BYTES: usize = 16 * 1024;

/// How long entries are kept: `keep` from the time of their record (never later than `now`),
/// so the same record delivered again gets the same expiry, and so the same entry.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub now: DateTime<Utc>,
    pub keep: chrono::Duration,
}

impl Retention {
    fn expires_at(&self, at: DateTime<Utc>) -> i64 {
        (at.min(self.now) + self.keep).timestamp()
    }
}

/// The session entries of `records`: those of users with the integration's prefix, each tied
/// to its request (`requests`: db user → request id); a managed user's record without a request
/// is counted as unattributed. Each user has its own request (a grant has one db user), so a
/// session is known by its user and server process. No I/O: the benchmark measures this with
/// the parsing.
pub fn attribute(records: Vec<Record<'_>>, integration: &Integration, requests: &HashMap<String, String>, retention: Retention) -> (Vec<SessionEntry>, Ingested) {
    let mut ingested = Ingested { integration: Some(integration.name.clone()), records: records.len(), ..Ingested::default() };
    let mut entries: Vec<SessionEntry> = Vec::with_capacity(records.len());
    // What this delivery showed of each session, by (user, pid).
    let mut sessions: HashMap<(&str, Option<u32>), SessionSeen> = HashMap::new();
    // The request of the last record's user, and the last record time's key: a session's
    // records come in runs, and many in one millisecond, so most lookups end here.
    let mut last_user: Option<(&str, Option<&String>)> = None;
    let mut time_key = TimeKey::default();
    for record in &records {
        let Some(user) = record.fields.user else { continue };
        if !crate::access::is_login_role_name(user, &integration.user_prefix) {
            continue;
        }
        if record.severity == "CONTEXT" {
            // A session can write `LOG:  AUDIT: …` itself with RAISE LOG; the server then adds
            // the context "… at RAISE", which pgaudit's own lines never have.
            if record.message.contains(" at RAISE") {
                if let Some(last) = entries.last_mut().filter(|e| e.kind == EntryKind::Statement && e.session == record.fields.pid) {
                    last.suspect = Some("raised by the session itself (RAISE), not written by pgaudit".into());
                }
            }
            continue;
        }
        let Some(mut what) = Kept::of(record.severity, &record.message) else {
            if record.severity == "LOG" && record.message.starts_with("AUDIT: ") {
                // pgaudit's prefix with a body that is not its shape (cut, or not pgaudit's).
                ingested.malformed += 1;
            }
            continue;
        };
        let request_id = match last_user {
            Some((last, request_id)) if last == user => request_id,
            _ => last_user.insert((user, requests.get(user))).1,
        };
        let (Some(request_id), Some(at)) = (request_id, record.fields.time.or(record.event_time)) else {
            ingested.unattributed += 1;
            continue;
        };
        let seen = sessions.entry((user, record.fields.pid)).or_default();
        if matches!(what, Kept::Connected(_)) {
            seen.connected = true;
        }
        if let Kept::Statement(line) | Kept::Cut(line) = &mut what {
            // Once per line: the statement is compared and stored redacted.
            line.statement = crate::audit::redaction::redact_cow(std::mem::take(&mut line.statement));
        }
        let cut = matches!(what, Kept::Cut(_));
        if cut {
            ingested.cut += 1;
            ingested.statements += 1;
        }
        if let Kept::Statement(line) = &what {
            // pgaudit.log_relation writes a line per table of one statement: one entry.
            if let Some(previous) = entries.last_mut().filter(|p| p.is_statement(request_id, record.fields.pid, line)) {
                if previous.class.as_deref() == Some(&*line.class) && previous.command.as_deref() == Some(&*line.command) && previous.statement_bytes.is_none()
                    && previous.statement.as_deref() == Some(&*line.statement)
                {
                    merge_object(previous, &line.object_type, &line.object_name);
                    continue;
                }
                // Two lines claim one statement of this session with different contents: keep
                // both, and say so (one of them was not written by pgaudit).
                previous.suspect.get_or_insert_with(|| "another line claims the same statement id with other contents".into());
            }
            ingested.statements += 1;
        }
        let mut entry = entry_of(&record.fields, record.origin, at, time_key.of(at), request_id, what, retention.expires_at(at));
        if entry.kind == EntryKind::Statement {
            let ids = (entry.statement_id, entry.substatement_id);
            if seen.last_ids.replace(ids) == Some(ids) {
                entry.suspect = Some("another line claims the same statement id with other contents".into());
            }
            if cut {
                entry.suspect.get_or_insert_with(|| CUT.into());
            }
            if !seen.connected {
                // Cleared by the caller when an earlier delivery held the connection.
                entry.suspect.get_or_insert_with(|| NO_CONNECTION.into());
            }
        }
        entries.push(entry);
    }
    ingested.written = entries.len();
    (entries, ingested)
}

/// What one delivery showed of a session.
#[derive(Default)]
struct SessionSeen {
    /// Whether its `connection authorized` line was in it.
    connected: bool,
    /// The ids of its last statement line.
    last_ids: Option<(Option<u64>, Option<u64>)>,
}

/// A record time and its key ([`crate::aws::store::push_time_key`]), kept while records share it.
#[derive(Default)]
struct TimeKey {
    at: Option<DateTime<Utc>>,
    key: String,
}

impl TimeKey {
    fn of(&mut self, at: DateTime<Utc>) -> &str {
        if self.at != Some(at) {
            self.key.clear();
            crate::aws::store::push_time_key(&mut self.key, at);
            self.at = Some(at);
        }
        &self.key
    }
}

/// The records session audit keeps: connections, pgaudit lines, disconnections, and the errors
/// that end a session (a login refused after revoke, a session ended by it).
enum Kept<'a> {
    Connected(&'a str),
    Disconnected(&'a str),
    Ended(&'a str),
    Statement(AuditLine<'a>),
    /// A statement whose record ends inside its text ([`AuditLine::parse_cut`]).
    Cut(AuditLine<'a>),
}

impl<'a> Kept<'a> {
    fn of(severity: &str, message: &'a str) -> Option<Kept<'a>> {
        if severity == "FATAL" {
            return Some(Kept::Ended(message));
        }
        if severity != "LOG" {
            return None;
        }
        if let Some(rest) = message.strip_prefix("connection authorized: ") {
            return Some(Kept::Connected(rest));
        }
        if let Some(rest) = message.strip_prefix("disconnection: ") {
            return Some(Kept::Disconnected(rest));
        }
        AuditLine::parse(message).map(Kept::Statement).or_else(|| AuditLine::parse_cut(message).map(Kept::Cut))
    }
}

impl SessionEntry {
    /// Whether this entry is the statement that `line` of `record` is a further line of.
    fn is_statement(&self, request_id: &str, pid: Option<u32>, line: &AuditLine<'_>) -> bool {
        self.kind == EntryKind::Statement
            && self.request_id == request_id
            && self.statement_id == Some(line.statement_id)
            && self.substatement_id == Some(line.substatement_id)
            && self.session == pid
    }
}

fn merge_object(into: &mut SessionEntry, object_type: &str, object: &str) {
    if object.is_empty() {
        return;
    }
    match &mut into.object {
        // A statement over very many relations: the list stops, and says so, before the entry
        // would outgrow DynamoDB's item size.
        Some(existing) if existing.len() + object.len() + 2 > MAX_OBJECT_LIST_BYTES => {
            if !existing.ends_with(", …") {
                existing.push_str(", …");
            }
        }
        Some(existing) if !existing.split(", ").any(|o| o == object) => {
            existing.push_str(", ");
            existing.push_str(object);
        }
        Some(_) => {}
        None => into.object = Some(object.to_owned()),
    }
    if into.object_type.is_none() && !object_type.is_empty() {
        into.object_type = Some(known(Cow::Borrowed(object_type), crate::audit::pgaudit::OBJECT_TYPES));
    }
}

/// The entry a managed user's kept record makes (its prefix's fields are moved into it; a
/// statement comes already redacted).
fn entry_of(fields: &crate::audit::server_log::PrefixFields<'_>, (event, index): (&str, u32), at: DateTime<Utc>, time_key: &str, request_id: &str, what: Kept<'_>, expires_at: i64) -> SessionEntry {
    let mut at_origin = String::with_capacity(time_key.len() + event.len() + 12);
    at_origin.push_str(time_key);
    at_origin.push('#');
    at_origin.push_str(event);
    at_origin.push('#');
    let _ = std::fmt::Write::write_fmt(&mut at_origin, format_args!("{index}"));
    let mut entry = SessionEntry {
        request_id: request_id.to_owned(),
        at_origin,
        at,
        kind: EntryKind::Statement,
        db_user: fields.user.unwrap_or_default().to_owned(),
        database: fields.database.map(str::to_owned),
        client: fields.client.map(str::to_owned),
        session: fields.pid,
        class: None,
        command: None,
        object_type: None,
        object: None,
        statement: None,
        statement_bytes: None,
        statement_id: None,
        substatement_id: None,
        suspect: None,
        detail: None,
        expires_at,
    };
    match what {
        Kept::Connected(rest) => {
            entry.kind = EntryKind::Connected;
            entry.detail = Some(cut(crate::audit::redaction::redact(rest), 512).0);
        }
        Kept::Disconnected(rest) => {
            entry.kind = EntryKind::Disconnected;
            entry.detail = rest.split(" user=").next().map(|s| s.to_owned());
        }
        Kept::Ended(message) => {
            entry.kind = EntryKind::Disconnected;
            entry.detail = Some(cut(crate::audit::redaction::redact(message), 512).0);
        }
        Kept::Statement(line) | Kept::Cut(line) => {
            let redacted_len = line.statement.len();
            let (statement, truncated) = cut(line.statement, MAX_STATEMENT_BYTES);
            entry.statement_bytes = truncated.then_some(redacted_len);
            entry.statement = Some(statement);
            entry.class = Some(known(line.class, crate::audit::pgaudit::CLASS_NAMES));
            entry.command = Some(known(line.command, crate::audit::pgaudit::COMMON_COMMANDS));
            entry.object_type = Some(known(line.object_type, crate::audit::pgaudit::OBJECT_TYPES)).filter(|s| !s.is_empty());
            entry.object = Some(line.object_name.into_owned()).filter(|s| !s.is_empty());
            entry.statement_id = Some(line.statement_id);
            entry.substatement_id = Some(line.substatement_id);
        }
    }
    entry
}

/// `text` as one of the `names` pgaudit writes again and again (no copy), or as itself.
fn known(text: Cow<'_, str>, names: &[&'static str]) -> Cow<'static, str> {
    match names.iter().find(|n| **n == text) {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(text.into_owned()),
    }
}

/// `text` cut to at most `max` bytes on a character boundary, and whether it was cut.
fn cut(text: Cow<'_, str>, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text.into_owned(), false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_owned(), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::server_log::Records;

    #[test]
    fn lines_a_session_forges_are_flagged_and_hide_nothing() {
        let integration = Integration::from_json(r#"{"name":"a","kind":"rds","region":"us-east-1","instance_id":"db","admin":{"auth":"password","secret_id":"pgjit/a"},"max_duration_seconds":3600}"#).unwrap();
        let user = "pgjit_mallory_b1c2d3e4";
        let p = |pid: u32, rest: &str| format!("2026-11-25 08:00:00 UTC:10.0.0.1(5000):{user}@app:[{pid}]:{rest}\n");
        let log = [
            p(5, "LOG:  AUDIT: SESSION,1,1,FUNCTION,DO,,,\"DO $$BEGIN RAISE LOG 'AUDIT: SESSION,2,1,READ,SELECT,,,SELECT 1,<not logged>'; END$$\",<not logged>"),
            p(5, "LOG:  AUDIT: SESSION,2,1,READ,SELECT,,,SELECT 1,<not logged>"),
            p(5, "CONTEXT:  PL/pgSQL function inline_code_block line 1 at RAISE"),
            p(5, "LOG:  AUDIT: SESSION,2,1,DDL,DROP TABLE,,,DROP TABLE payroll,<not logged>"),
            // Another connection's failed login whose database name carries a whole record.
            format!("2026-11-25 08:00:01 UTC:10.0.0.2(5001):{user}@app:[5]:LOG:  AUDIT: SESSION,9,1,DDL,DROP TABLE,,,DROP TABLE t,:[77]:FATAL:  password authentication failed for user \"{user}\"\n"),
        ]
        .concat();
        let prefix = integration.line_prefix().unwrap();
        let mut records = Records::of_users_with_prefix(&prefix, &integration.user_prefix);
        records.push_event("e", None, &log);
        let requests: HashMap<String, String> = [(user.to_owned(), "REQ-1".to_owned())].into();
        let (entries, ingested) = attribute(records.records, &integration, &requests, Retention { now: Utc::now(), keep: chrono::Duration::zero() });
        let shown: Vec<(Option<&str>, Option<&str>)> = entries.iter().map(|e| (e.statement.as_deref(), e.suspect.as_deref())).collect();
        assert_eq!(entries.len(), 3, "{shown:#?}");
        assert!(entries[1].suspect.as_deref().is_some_and(|s| s.contains("RAISE")), "{shown:#?}");
        assert_eq!(entries[2].statement.as_deref(), Some("DROP TABLE payroll"), "the real statement is kept: {shown:#?}");
        assert!(entries[2].suspect.is_some());
        // The forged FATAL line is no statement (its tail is not pgaudit's shape): counted.
        assert!(entries.iter().all(|e| e.statement.as_deref() != Some("DROP TABLE t")));
        assert_eq!(ingested.malformed, 1);
    }

    #[test]
    fn a_statement_over_very_many_relations_stays_within_an_item() {
        let integration = Integration::from_json(r#"{"name":"a","kind":"rds","region":"us-east-1","instance_id":"db","admin":{"auth":"password","secret_id":"pgjit/a"},"max_duration_seconds":3600}"#).unwrap();
        let user = "pgjit_wide_b1c2d3e4";
        let mut log = format!("2026-11-25 08:00:00 UTC:10.0.0.1(5000):{user}@app:[5]:LOG:  connection authorized: user={user} database=app\n");
        for i in 0..5000 {
            log.push_str(&format!("2026-11-25 08:00:00 UTC:10.0.0.1(5000):{user}@app:[5]:LOG:  AUDIT: SESSION,1,1,READ,SELECT,TABLE,public.a_rather_long_table_name_{i:05},SELECT * FROM v,<not logged>\n"));
        }
        let prefix = integration.line_prefix().unwrap();
        let mut records = Records::of_users_with_prefix(&prefix, &integration.user_prefix);
        records.push_event("e", None, &log);
        let requests: HashMap<String, String> = [(user.to_owned(), "REQ-1".to_owned())].into();
        let (entries, _) = attribute(records.records, &integration, &requests, Retention { now: Utc::now(), keep: chrono::Duration::zero() });
        let statement = entries.iter().find(|e| e.kind == EntryKind::Statement).unwrap();
        let objects = statement.object.as_deref().unwrap();
        assert!(objects.len() <= MAX_OBJECT_LIST_BYTES + 8 && objects.ends_with(", …"), "{}", objects.len());
        assert!(serde_json::to_string(statement).unwrap().len() < 64 * 1024, "far below DynamoDB's 400 KB");
    }

    #[test]
    fn statements_are_cut_on_a_character_boundary() {
        let (text, cut_) = cut("é".repeat(3000).into(), MAX_STATEMENT_BYTES);
        assert!(cut_ && text.len() <= MAX_STATEMENT_BYTES && text.len() >= MAX_STATEMENT_BYTES - 1);
        assert_eq!(cut("short".into(), 10), ("short".to_owned(), false));
    }
}
