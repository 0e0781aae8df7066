//! Session audit: what a temporary user did, from the server's own log, tied to its grant.
//!
//! The `audit` function receives CloudWatch Logs subscription batches of an RDS or Aurora
//! `postgresql` log group (`pgjit sessions ingest` reads a self-hosted server's log file the
//! same way). Lines are joined into records by the integration's `log_line_prefix`
//! ([`crate::audit::server_log`]); the records of users pgjit manages (connections, pgaudit's `AUDIT:`
//! lines, disconnections) are matched to their grant through the store's `db-user` index, their
//! statements redacted ([`crate::audit::redaction`]) and cut at 4 KiB, and written to the sessions table
//! with a time to live. Keys come from where each record was in the log, so a batch delivered
//! twice is written once.

use std::borrow::Cow;
use std::collections::HashMap;

use aws_lambda_events::event::cloudwatch_logs::LogData;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::contract::integration::Integration;
use crate::audit::pgaudit::AuditLine;
use crate::audit::server_log::{Record, Records};
use crate::aws::store::sessions::{EntryKind, SessionEntry}; use crate::aws::store::{Store, StoreError};

/// The longest statement kept, in bytes; longer ones are cut and say so.
pub const MAX_STATEMENT_BYTES: usize = 4096;

/// The largest decompressed subscription batch accepted (CloudWatch Logs sends at most about
/// 1 MB; anything far larger is not a subscription batch).
const MAX_BATCH_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SessionsError {
    #[error("not a CloudWatch Logs subscription batch: {0}")]
    Malformed(String),
    #[error("integration {integration:?} has a log_line_prefix pgjit cannot read")]
    Prefix {
        integration: String,
        #[source]
        source: crate::audit::server_log::PrefixError,
    },
    #[error("session audit store")]
    Store(#[from] StoreError),
    #[error("log group {log_group} belongs to more than one integration ({}); nothing was written: remove all but one", integrations.join(", "))]
    AmbiguousLogGroup { log_group: String, integrations: Vec<String> },
}

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

/// Decodes a subscription delivery: `{"awslogs":{"data":"<base64 of gzip of LogData JSON>"}}`.
pub fn decode_subscription(payload: &serde_json::Value) -> Result<LogData, SessionsError> {
    use base64::Engine;
    use std::io::Read;
    let malformed = |m: String| SessionsError::Malformed(m);
    let data = payload
        .get("awslogs")
        .and_then(|a| a.get("data"))
        .and_then(|d| d.as_str())
        .ok_or_else(|| malformed("no awslogs.data string".into()))?;
    let compressed = base64::engine::general_purpose::STANDARD.decode(data).map_err(|e| malformed(format!("awslogs.data is not base64: {e}")))?;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .take(MAX_BATCH_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(|e| malformed(format!("awslogs.data is not gzip: {e}")))?;
    if json.len() as u64 > MAX_BATCH_BYTES {
        return Err(malformed(format!("awslogs.data decompresses to more than {MAX_BATCH_BYTES} bytes")));
    }
    serde_json::from_slice(&json).map_err(|e| malformed(format!("awslogs.data is not a log batch: {e}")))
}

/// The integration whose RDS or Aurora log group this is: `/aws/rds/instance/<id>/postgresql`
/// for an `rds` integration's instance, `/aws/rds/cluster/<id>/postgresql` for an `aurora`
/// integration's cluster.
/// A subscription delivers the log groups of the function's own region: an integration in
/// another region (the same instance id can exist in two) is not the one.
pub fn integration_of_log_group<'i>(integrations: &'i [Integration], log_group: &str, region: Option<&str>) -> Result<Option<&'i Integration>, SessionsError> {
    let Some((level, id)) = log_group.strip_prefix("/aws/rds/").and_then(|r| r.strip_suffix("/postgresql")).and_then(|r| r.split_once('/')) else {
        return Ok(None);
    };
    let in_region = |i: &&Integration| match (i.region.as_deref(), region) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => true,
    };
    let matching: Vec<&Integration> = integrations
        .iter()
        .filter(in_region)
        .filter(|i| match (level, i.kind) {
            ("instance", crate::engine::setup::Flavor::Rds) => i.instance_id.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(id)),
            ("cluster", crate::engine::setup::Flavor::Aurora) => i.cluster_id.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(id)),
            _ => false,
        })
        .collect();
    match matching[..] {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        // Whichever sorted first would take every line, with its own prefix and audit settings:
        // a weaker twin could make the real integration's audited lines unattributed.
        _ => Err(SessionsError::AmbiguousLogGroup { log_group: log_group.to_owned(), integrations: matching.iter().map(|i| i.name.clone()).collect() }),
    }
}

/// For `doctor`: whether an RDS or Aurora integration's instance (or cluster) exports its
/// `postgresql` log to CloudWatch Logs, where the audit function's subscription reads it.
/// `None` for other kinds (self-hosted logs are read with `pgjit sessions ingest`).
pub async fn log_export_finding(svc: &crate::aws::Services, integration: &Integration) -> Option<crate::engine::setup::Finding> {
    use crate::engine::setup::Finding;
    if !matches!(integration.kind, crate::engine::setup::Flavor::Rds | crate::engine::setup::Flavor::Aurora) {
        return None;
    }
    let (level, id) = match (&integration.instance_id, &integration.cluster_id) {
        (Some(id), _) => ("instance", id),
        (None, Some(id)) => ("cluster", id),
        (None, None) => return None,
    };
    Some(match crate::aws::rds::describe(svc, integration).await {
        Ok(Some(target)) if target.log_exports.iter().any(|l| l == "postgresql") => {
            Finding::check("session audit log export", true, format!("the postgresql log goes to /aws/rds/{level}/{id}/postgresql; subscribe the audit function to it"))
        }
        Ok(Some(_)) => Finding::check(
            "session audit log export",
            false,
            format!("the {level} does not export its postgresql log to CloudWatch Logs: enable the export (CloudwatchLogsExportConfiguration EnableLogTypes postgresql), then subscribe the audit function to /aws/rds/{level}/{id}/postgresql"),
        ),
        Ok(None) => return None,
        Err(e) => Finding::check("session audit log export", false, format!("could not read the {level}: {}", crate::engine::postgres::error_chain(&e))),
    })
}

/// Ingests one subscription delivery. A control message (CloudWatch checking the destination)
/// or a log group of no integration writes nothing; a malformed delivery is an error and
/// writes nothing.
pub async fn ingest_subscription(store: &Store, region: Option<&str>, retention_days: u32, payload: &serde_json::Value, now: DateTime<Utc>) -> Result<Ingested, SessionsError> {
    let batch = decode_subscription(payload)?;
    if batch.message_type == "CONTROL_MESSAGE" {
        return Ok(Ingested::default());
    }
    if batch.message_type != "DATA_MESSAGE" {
        return Err(SessionsError::Malformed(format!("messageType {:?}", batch.message_type)));
    }
    let integrations = store.list_integrations().await?;
    let found = integration_of_log_group(&integrations, &batch.log_group, region).inspect_err(|e| {
        if let SessionsError::AmbiguousLogGroup { integrations, .. } = e {
            integrations.iter().for_each(|name| crate::metrics::count_with_total("AuditLogGroupAmbiguous", 1, name));
        }
    })?;
    let Some(integration) = found else {
        tracing::warn!(log_group = %batch.log_group, "log group of no rds or aurora integration; ignored");
        return Ok(Ingested { records: batch.log_events.len(), ..Ingested::default() });
    };
    let prefix = line_prefix(integration)?;
    let mut records = Records::of_users_with_prefix(&prefix, &integration.user_prefix);
    for event in &batch.log_events {
        records.push_event(&event.id, DateTime::from_timestamp_millis(event.timestamp), &event.message);
    }
    ingest_records(store, integration, records.records, records.unparsed, retention_days, now).await
}

fn line_prefix(integration: &Integration) -> Result<crate::audit::server_log::LinePrefix, SessionsError> {
    integration.line_prefix().map_err(|source| SessionsError::Prefix { integration: integration.name.clone(), source })
}

/// Ingests a server log file of `integration` (`pgjit sessions ingest`). A record's key comes
/// from its own text, so the same file (or a longer copy of it) is written once.
pub async fn ingest_file(store: &Store, integration: &Integration, text: &str, retention_days: u32, now: DateTime<Utc>) -> Result<Ingested, SessionsError> {
    let prefix = line_prefix(integration)?;
    // Each line is an event of its own, named by its line number (so records of one second
    // keep the file's order) and a digest of its text (so another file's line is another key).
    let names: Vec<String> = text
        .split('\n')
        .enumerate()
        .map(|(number, line)| {
            use sha2::Digest;
            format!("f{number:010}-{}", hex::encode(&sha2::Sha256::digest(line.as_bytes())[..8]))
        })
        .collect();
    let mut records = Records::of_users_with_prefix(&prefix, &integration.user_prefix);
    for (line, name) in text.split('\n').zip(&names) {
        records.push_event(name, None, line);
    }
    ingest_records(store, integration, records.records, records.unparsed, retention_days, now).await
}

/// Matches records to grants and writes their entries.
async fn ingest_records(store: &Store, integration: &Integration, records: Vec<Record<'_>>, unparsed: usize, retention_days: u32, now: DateTime<Utc>) -> Result<Ingested, SessionsError> {
    let retention = Retention { now, keep: chrono::Duration::days(i64::from(retention_days)) };
    // Each managed user's grant, looked up once per batch (all at once).
    let users: std::collections::BTreeSet<&str> =
        records.iter().filter_map(|r| r.fields.user).filter(|u| crate::access::is_login_role_name(u, &integration.user_prefix)).collect();
    // A few lookups at a time: a batch full of made-up names must not throttle the table.
    use futures_util::stream::{StreamExt, TryStreamExt};
    let lookups: Vec<(String, Option<String>)> = futures_util::stream::iter(users.iter().map(|user| async move {
        let grant = store.grants_of_user(user).await?.into_iter().filter(|g| g.integration == integration.name).max_by_key(|g| g.created_at);
        Ok::<_, StoreError>((user.to_string(), grant.map(|g| g.request_id)))
    }))
    .buffer_unordered(8)
    .try_collect()
    .await?;
    let requests: HashMap<String, String> = lookups.into_iter().filter_map(|(user, request)| Some((user, request?))).collect();
    let (mut entries, mut ingested) = attribute(records, integration, &requests, retention);
    ingested.unparsed = unparsed;
    connected_before(store, &mut entries).await?;
    store.put_session_entries(&entries).await?;
    crate::metrics::count("AuditedStatements", ingested.statements as u64, &integration.name);
    crate::metrics::count("UnattributedAuditLines", ingested.unattributed as u64, &integration.name);
    // Lines session audit could not read in full: each one may hide a statement. Alarmed.
    crate::metrics::count_with_total("AuditLinesNotRead", (ingested.malformed + ingested.cut + ingested.unparsed) as u64, &integration.name);
    if ingested.malformed + ingested.cut + ingested.unparsed > 0 {
        tracing::warn!(integration = %integration.name, malformed = ingested.malformed, cut = ingested.cut, unparsed = ingested.unparsed, "log lines session audit could not read in full");
    }
    if ingested.unattributed > 0 {
        tracing::warn!(integration = %integration.name, unattributed = ingested.unattributed, "log lines of managed users with no grant of this integration");
    }
    Ok(ingested)
}

/// Clears [`NO_CONNECTION`] from statements whose session's connection an earlier delivery
/// held (a `connected` entry of the same request and server process is stored): one read per
/// request with such statements.
async fn connected_before(store: &Store, entries: &mut [SessionEntry]) -> Result<(), StoreError> {
    let unproven: std::collections::BTreeSet<String> =
        entries.iter().filter(|e| e.suspect.as_deref() == Some(NO_CONNECTION)).map(|e| e.request_id.clone()).collect();
    for request_id in unproven {
        let sessions = store.connected_sessions(&request_id).await?;
        for entry in entries.iter_mut().filter(|e| e.request_id == request_id && e.suspect.as_deref() == Some(NO_CONNECTION)) {
            if sessions.contains(&(entry.db_user.clone(), entry.session)) {
                entry.suspect = None;
            }
        }
    }
    Ok(())
}

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
/// is counted as unattributed. No I/O: the benchmark measures this with the parsing.
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
        let mut entry = entry_of(&record.fields, record.origin, time_key.of(at), request_id, what, retention.expires_at(at));
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
    fn of(&mut self, at: DateTime<Utc>) -> (DateTime<Utc>, &str) {
        if self.at != Some(at) {
            self.key.clear();
            crate::aws::store::push_time_key(&mut self.key, at);
            self.at = Some(at);
        }
        (at, &self.key)
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
fn entry_of(fields: &crate::audit::server_log::PrefixFields<'_>, (event, index): (&str, u32), (at, time_key): (DateTime<Utc>, &str), request_id: &str, what: Kept<'_>, expires_at: i64) -> SessionEntry {
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

/// One session of a temporary user, as `pgjit sessions` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    pub session: Option<u32>,
    pub database: Option<String>,
    pub client: Option<String>,
    pub connected_at: Option<DateTime<Utc>>,
    pub disconnected_at: Option<DateTime<Utc>>,
    /// The server's account of the connection (application name, TLS) and of its length.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    pub statements: Vec<SessionEntry>,
}

/// A request's entries (in time order) as sessions: a connection opens one, the statements of
/// its server process follow, its disconnection closes it. Entries whose connection is not
/// recorded (the log began later) open a session of their own.
pub fn sessions_of(entries: &[SessionEntry]) -> Vec<Session> {
    let mut sessions: Vec<Session> = Vec::new();
    // The open session of each server process, by index.
    let mut open: HashMap<Option<u32>, usize> = HashMap::new();
    for entry in entries {
        let key = entry.session;
        let index = match (entry.kind, open.get(&key)) {
            (EntryKind::Connected, _) | (_, None) => {
                sessions.push(Session {
                    session: entry.session,
                    database: entry.database.clone(),
                    client: entry.client.clone(),
                    connected_at: None,
                    disconnected_at: None,
                    details: Vec::new(),
                    statements: Vec::new(),
                });
                open.insert(key, sessions.len() - 1);
                sessions.len() - 1
            }
            (_, Some(i)) => *i,
        };
        let session = &mut sessions[index];
        match entry.kind {
            EntryKind::Connected => session.connected_at = Some(entry.at),
            EntryKind::Disconnected => {
                session.disconnected_at = Some(entry.at);
                open.remove(&key);
            }
            _ => session.statements.push(entry.clone()),
        }
        session.details.extend(entry.detail.clone());
    }
    sessions
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

    #[test]
    fn log_groups_map_to_their_integration_only() {
        let rds = Integration::from_json(r#"{"name":"a","kind":"rds","region":"us-east-1","instance_id":"orders-db","admin":{"auth":"password","secret_id":"pgjit/a"},"max_duration_seconds":3600}"#).unwrap();
        let aurora = Integration::from_json(r#"{"name":"b","kind":"aurora","region":"us-east-1","cluster_id":"crm","admin":{"auth":"password","secret_id":"pgjit/b"},"max_duration_seconds":3600}"#).unwrap();
        let all = [rds, aurora];
        let here = Some("us-east-1");
        let of = |all: &[Integration], group: &str, region: Option<&str>| integration_of_log_group(all, group, region).unwrap().map(|i| i.name.clone());
        assert_eq!(of(&all, "/aws/rds/instance/orders-db/postgresql", here).as_deref(), Some("a"));
        assert_eq!(of(&all, "/aws/rds/cluster/crm/postgresql", here).as_deref(), Some("b"));
        for other in ["/aws/rds/cluster/orders-db/postgresql", "/aws/rds/instance/crm/postgresql", "/aws/rds/instance/orders-db/upgrade", "/aws/lambda/x", ""] {
            assert!(of(&all, other, here).is_none(), "{other}");
        }
        // The same instance id in another region is another instance.
        assert!(of(&all, "/aws/rds/instance/orders-db/postgresql", Some("eu-west-1")).is_none());
        // A twin of the same instance: refused, naming both, whichever sorts first.
        let twin = Integration::from_json(r#"{"name":"0-twin","kind":"rds","region":"us-east-1","instance_id":"Orders-DB","admin":{"auth":"password","secret_id":"pgjit/t"},"max_duration_seconds":3600}"#).unwrap();
        let with_twin = [twin, all[0].clone(), all[1].clone()];
        let err = integration_of_log_group(&with_twin, "/aws/rds/instance/orders-db/postgresql", here).unwrap_err().to_string();
        assert!(err.contains("0-twin, a") && err.contains("nothing was written"), "{err}");
        assert_eq!(of(&with_twin, "/aws/rds/cluster/crm/postgresql", here).as_deref(), Some("b"));
    }

    #[test]
    fn malformed_deliveries_are_named() {
        use base64::Engine;
        use std::io::Write;
        let gz = |bytes: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            base64::engine::general_purpose::STANDARD.encode(e.finish().unwrap())
        };
        for (payload, says) in [
            (serde_json::json!({}), "no awslogs.data"),
            (serde_json::json!({"awslogs": {"data": "%%%"}}), "not base64"),
            (serde_json::json!({"awslogs": {"data": "aGVsbG8="}}), "not gzip"),
            (serde_json::json!({"awslogs": {"data": gz(b"[1,2]")}}), "not a log batch"),
        ] {
            let e = decode_subscription(&payload).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        // A bomb: far more than a batch once decompressed.
        let e = decode_subscription(&serde_json::json!({"awslogs": {"data": gz(&vec![b' '; (MAX_BATCH_BYTES + 10) as usize])}})).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
    }

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
