//! Session audit entries: what a temporary user did, as the sessions table keeps it.

use std::borrow::Cow;
use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{dynamo, Store, StoreError};

/// One line of a request's session audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEntry {
    pub request_id: String,
    /// Sort key: `<time>#<where in the log>`: time order, and the same record always gets the
    /// same key.
    pub at_origin: String,
    pub at: DateTime<Utc>,
    pub kind: EntryKind,
    pub db_user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The client's address as the server logged it (`host(port)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The server process of the session (its pid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Cow<'static, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Cow<'static, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_type: Option<Cow<'static, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The statement, secrets redacted, at most [`crate::control::sessions::attribution::MAX_STATEMENT_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    /// The redacted statement's full length, only when it was cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatement_id: Option<u64>,
    /// Why this entry may not be what pgaudit wrote (a line the session raised itself, or two
    /// lines claiming one statement): shown with it, never dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect: Option<String>,
    /// Connections: the rest of the server's line (application name, TLS); disconnections: the
    /// session's length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When DynamoDB deletes the entry (epoch seconds; the table's time to live).
    pub expires_at: i64,
}

/// What a session audit entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Connected,
    Statement,
    Disconnected,
}

impl Store {
    /// Writes session audit entries. Each key is where the record was in the log (the log
    /// event's id) and a digest of what the entry says: writing the same batch again overwrites
    /// each item with itself, and a delivery that claims the same place with other content (a
    /// direct invocation of the audit function) adds an entry beside it, never replacing the
    /// one written (BatchWriteItem takes no condition).
    pub async fn put_session_entries(&self, entries: &[SessionEntry]) -> Result<(), StoreError> {
        // One batch may not name the same key twice.
        let mut seen = std::collections::BTreeSet::new();
        let mut requests = Vec::with_capacity(entries.len());
        for entry in entries {
            let mut sealed = entry.clone();
            sealed.at_origin = format!("{}#{}", entry.at_origin, content_digest(entry));
            if !seen.insert((sealed.request_id.clone(), sealed.at_origin.clone())) {
                continue;
            }
            let put = PutRequest::builder().set_item(Some(self.to_item(&self.sessions, &sealed)?)).build().map_err(dynamo("BatchWriteItem", &self.sessions))?;
            requests.push(WriteRequest::builder().put_request(put).build());
        }
        self.write_batches(&self.sessions, requests).await
    }

    /// A request's session audit entries, in time order.
    pub async fn session_entries(&self, request_id: &str) -> Result<Vec<SessionEntry>, StoreError> {
        let query = self.client.query().key_condition_expression("request_id = :r").expression_attribute_values(":r", AttributeValue::S(request_id.to_owned()));
        self.query_all(&self.sessions, query).await
    }

    /// The sessions of a request whose connection is stored: (database user, server process).
    /// Only `connected` entries come back (the filter runs in DynamoDB).
    pub async fn connected_sessions(&self, request_id: &str) -> Result<std::collections::HashSet<(String, Option<u32>)>, StoreError> {
        let query = self
            .client
            .query()
            .key_condition_expression("request_id = :r")
            .filter_expression("#kind = :k")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_values(":r", AttributeValue::S(request_id.to_owned()))
            .expression_attribute_values(":k", AttributeValue::S("connected".into()));
        let entries: Vec<SessionEntry> = self.query_all(&self.sessions, query).await?;
        Ok(entries.into_iter().filter(|e| e.suspect.is_none()).map(|e| (e.db_user, e.session)).collect())
    }

    /// How many statements were audited for a request.
    pub async fn audited_statement_count(&self, request_id: &str) -> Result<usize, StoreError> {
        let mut count = 0;
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.sessions)
                .key_condition_expression("request_id = :r")
                .filter_expression("#kind = :k")
                .expression_attribute_names("#kind", "kind")
                .expression_attribute_values(":r", AttributeValue::S(request_id.to_owned()))
                .expression_attribute_values(":k", AttributeValue::S("statement".into()))
                .select(aws_sdk_dynamodb::types::Select::Count)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(dynamo("Query", &self.sessions))?;
            count += out.count as usize;
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(count),
            }
        }
    }
}

/// 128 bits of SHA-256 over what a session entry says, less its key and its time to live (a
/// redelivery computes another `expires_at`): the same content, the same digest.
fn content_digest(entry: &SessionEntry) -> String {
    use sha2::Digest;
    let content = SessionEntry { at_origin: String::new(), expires_at: 0, ..entry.clone() };
    let text = serde_json::to_string(&content).unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..16])
}
