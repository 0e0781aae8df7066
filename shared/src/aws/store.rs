//! DynamoDB: integrations, grants, inventory and the append-only audit trail.
//!
//! Every change of a grant's state is a conditional write on its `version`, so two deliveries of
//! one event, or two functions racing, cannot both act. Cleanup finds due work through the
//! `status-due` index (partition `status`, sort `due_at`), never with a Scan.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, DeleteRequest, GlobalSecondaryIndex, KeySchemaElement, KeyType,
    Projection, ProjectionType, PutRequest, ScalarAttributeType, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::AccessEntry;
use crate::contract::config::Config;
use crate::contract::events::Requester;
use crate::contract::integration::{AccessMode, DiscoveryStatus, Integration};
use crate::engine::roles::grant::SessionAudit;

pub const STATUS_DUE_INDEX: &str = "status-due";
pub const DB_USER_INDEX: &str = "db-user";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantStatus {
    Granting,
    Active,
    Revoking,
    Revoked,
    Deleted,
    Failed,
}

impl GrantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantStatus::Granting => "granting",
            GrantStatus::Active => "active",
            GrantStatus::Revoking => "revoking",
            GrantStatus::Revoked => "revoked",
            GrantStatus::Deleted => "deleted",
            GrantStatus::Failed => "failed",
        }
    }
}

impl std::fmt::Display for GrantStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The inline policy put on the requester in IAM mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IamPolicyRef {
    /// `user` or `role`
    pub principal_kind: String,
    pub principal_name: String,
    pub policy_name: String,
}

/// One request's grant, from approval to deletion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub request_id: String,
    pub status: GrantStatus,
    /// Bumped by every write; each write is conditional on the version it read.
    pub version: u64,
    pub integration: String,
    pub requester: Requester,
    pub approver: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub access: Vec<AccessEntry>,
    pub access_mode: AccessMode,
    pub duration_seconds: u64,
    pub db_user: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Sort key of the `status-due` index: when cleanup must look at this record next
    /// (expiry or rotation when active, deletion when revoked, abandonment when in between).
    /// Absent for final states, which keeps them out of the index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_policy: Option<IamPolicyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_after: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Session audit for this grant: the `pgaudit.log` classes its login role logs, or why it
    /// logs nothing (absent when the integration does not audit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_audit: Option<SessionAudit>,
    /// The extensions applied, oldest first: a redelivered one is recognised by its key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<ExtensionEntry>,
}

/// One extension of a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtensionEntry {
    /// The event's id (or a digest of a bare detail): the same extension delivered again.
    pub key: String,
    pub approver: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

impl GrantRecord {
    /// A new record for an approval, in `granting`, due at `stuck_at` should its run die.
    pub fn granting(
        approval: &crate::contract::events::Approval,
        integration: &Integration,
        db_user: String,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        stuck_at: DateTime<Utc>,
    ) -> GrantRecord {
        GrantRecord {
            request_id: approval.request_id.clone(),
            status: GrantStatus::Granting,
            version: 1,
            integration: integration.name.clone(),
            requester: approval.requester.clone(),
            approver: approval.approver.clone(),
            reason: approval.reason.clone(),
            access: approval.access.clone(),
            access_mode: integration.access_mode,
            duration_seconds: approval.duration_seconds,
            db_user,
            created_at: now,
            updated_at: now,
            expires_at,
            due_at: Some(due_key(stuck_at)),
            host: None,
            port: None,
            secret_arn: None,
            iam_policy: None,
            schedule_name: None,
            rotated_at: None,
            revoked_at: None,
            revoke_reason: None,
            delete_after: None,
            deleted_at: None,
            failure: None,
            session_audit: None,
            extensions: Vec::new(),
        }
    }
}

/// The index key for a moment: fixed width, so text order is time order.
pub fn due_key(at: DateTime<Utc>) -> String {
    let mut key = String::with_capacity(24);
    push_time_key(&mut key, at);
    key
}

/// Appends [`due_key`]'s text for `at` to `out`, digit by digit: chrono's format strings cost a
/// microsecond, and session audit makes a key per log line.
pub fn push_time_key(out: &mut String, at: DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    fn digits(out: &mut String, n: u32, width: u32) {
        for place in (0..width).rev() {
            out.push(char::from(b'0' + ((n / 10u32.pow(place)) % 10) as u8));
        }
    }
    digits(out, at.year().clamp(0, 9999) as u32, 4);
    for (separator, n, width) in [('-', at.month(), 2), ('-', at.day(), 2), ('T', at.hour(), 2), (':', at.minute(), 2), (':', at.second(), 2), ('.', at.timestamp_subsec_millis().min(999), 3)] {
        out.push(separator);
        digits(out, n, width);
    }
    out.push('Z');
}

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
    /// The statement, secrets redacted, at most [`crate::control::sessions::MAX_STATEMENT_BYTES`].
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

#[cfg(test)]
mod key_tests {
    #[test]
    fn time_keys_read_as_chronos_format_and_sort_as_time() {
        use chrono::TimeZone;
        let times = [chrono::Utc.timestamp_millis_opt(1_764_057_244_987).unwrap(), chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(), chrono::Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap()];
        for t in times {
            assert_eq!(super::due_key(t), t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
        }
        assert!(super::due_key(times[0]) < super::due_key(times[1]) && super::due_key(times[1]) < super::due_key(times[2]));
    }
}

/// One line of the audit trail: who asked, who approved, what, where and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub request_id: String,
    /// Sort key: `<time>#<event>`, unique per request.
    pub at_event: String,
    pub at: DateTime<Utc>,
    pub event: String,
    pub integration: String,
    pub requester: String,
    pub approver: String,
    pub db_user: String,
    pub access: Vec<AccessEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One discovered object of an integration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryItem {
    pub integration: String,
    /// `<database>/<kind>/<schema>/<name>`: unique within the integration.
    pub object: String,
    pub database: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub discovered_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DynamoDB {operation} on {table} failed")]
    Dynamo {
        operation: &'static str,
        table: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("item in {table} is not a valid record")]
    Decode {
        table: String,
        #[source]
        source: serde_dynamo::Error,
    },
    /// The conditional write lost: someone else changed the item first.
    #[error("{what} was changed concurrently (expected version {expected})")]
    Conflict { what: String, expected: u64 },
    #[error("{0} exists already")]
    AlreadyExists(String),
}

/// The DynamoDB tables pgjit uses.
#[derive(Debug, Clone)]
pub struct Store {
    client: Client,
    grants: String,
    integrations: String,
    inventory: String,
    audit: String,
    sessions: String,
}

fn dynamo<E: std::error::Error + Send + Sync + 'static>(operation: &'static str, table: &str) -> impl FnOnce(E) -> StoreError {
    let table = table.to_owned();
    move |e| StoreError::Dynamo { operation, table, source: Box::new(e) }
}

fn is_conditional_failure<E, R>(e: &SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error().and_then(|s| s.code()) == Some("ConditionalCheckFailedException")
}

impl Store {
    pub fn new(client: Client, config: &Config) -> Self {
        Store {
            client,
            grants: config.grants_table.clone(),
            integrations: config.integrations_table.clone(),
            inventory: config.inventory_table.clone(),
            audit: config.audit_table.clone(),
            sessions: config.sessions_table.clone(),
        }
    }

    fn to_item<T: Serialize>(&self, table: &str, value: &T) -> Result<HashMap<String, AttributeValue>, StoreError> {
        serde_dynamo::to_item(value).map_err(|source| StoreError::Decode { table: table.to_owned(), source })
    }

    fn from_item<T: for<'de> Deserialize<'de>>(&self, table: &str, item: HashMap<String, AttributeValue>) -> Result<T, StoreError> {
        serde_dynamo::from_item(item).map_err(|source| StoreError::Decode { table: table.to_owned(), source })
    }

    /// Every item a Query returns, all pages, decoded.
    async fn query_all<T: for<'de> Deserialize<'de>>(&self, table: &str, query: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        let mut pages = query.table_name(table).into_paginator().items().send();
        while let Some(item) = pages.next().await {
            out.push(self.from_item(table, item.map_err(dynamo("Query", table))?)?);
        }
        Ok(out)
    }

    /// Every item of a table (operator listings and the small integrations table only).
    async fn scan_all<T: for<'de> Deserialize<'de>>(&self, table: &str) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self.client.scan().table_name(table).into_paginator().items().send();
        while let Some(item) = pages.next().await {
            out.push(self.from_item(table, item.map_err(dynamo("Scan", table))?)?);
        }
        Ok(out)
    }

    /// Creates the five tables with their indexes (and the sessions table's time to live);
    /// tables that exist are left as they are.
    pub async fn create_tables(&self) -> Result<Vec<String>, StoreError> {
        let s = |name: &str| AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build();
        let key = |name: &str, t: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(t).build();
        let mut created = Vec::new();
        let specs: [(&str, Vec<(&str, KeyType)>, Vec<&str>, Vec<(&str, Vec<(&str, KeyType)>)>); 5] = [
            (
                &self.grants,
                vec![("request_id", KeyType::Hash)],
                vec!["request_id", "status", "due_at", "db_user"],
                vec![
                    (STATUS_DUE_INDEX, vec![("status", KeyType::Hash), ("due_at", KeyType::Range)]),
                    (DB_USER_INDEX, vec![("db_user", KeyType::Hash)]),
                ],
            ),
            (&self.integrations, vec![("name", KeyType::Hash)], vec!["name"], vec![]),
            (&self.inventory, vec![("integration", KeyType::Hash), ("object", KeyType::Range)], vec!["integration", "object"], vec![]),
            (&self.audit, vec![("request_id", KeyType::Hash), ("at_event", KeyType::Range)], vec!["request_id", "at_event"], vec![]),
            (&self.sessions, vec![("request_id", KeyType::Hash), ("at_origin", KeyType::Range)], vec!["request_id", "at_origin"], vec![]),
        ];
        for (table, keys, attributes, indexes) in specs {
            let mut req = self.client.create_table().table_name(table).billing_mode(BillingMode::PayPerRequest);
            for a in attributes {
                req = req.attribute_definitions(s(a).map_err(dynamo("CreateTable", table))?);
            }
            for (k, t) in keys {
                req = req.key_schema(key(k, t).map_err(dynamo("CreateTable", table))?);
            }
            for (name, keys) in indexes {
                let mut gsi = GlobalSecondaryIndex::builder()
                    .index_name(name)
                    .projection(Projection::builder().projection_type(ProjectionType::All).build());
                for (k, t) in keys {
                    gsi = gsi.key_schema(key(k, t).map_err(dynamo("CreateTable", table))?);
                }
                req = req.global_secondary_indexes(gsi.build().map_err(dynamo("CreateTable", table))?);
            }
            match req.send().await {
                Ok(_) => created.push(table.to_owned()),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {}
                Err(e) => return Err(dynamo("CreateTable", table)(e)),
            }
        }
        if created.contains(&self.sessions) {
            let ttl = aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                .attribute_name("expires_at")
                .enabled(true)
                .build()
                .map_err(dynamo("UpdateTimeToLive", &self.sessions))?;
            self.client
                .update_time_to_live()
                .table_name(&self.sessions)
                .time_to_live_specification(ttl)
                .send()
                .await
                .map_err(dynamo("UpdateTimeToLive", &self.sessions))?;
        }
        Ok(created)
    }

    // ---- integrations ----

    pub async fn put_integration(&self, integration: &Integration) -> Result<(), StoreError> {
        let item = self.to_item(&self.integrations, integration)?;
        self.client
            .put_item()
            .table_name(&self.integrations)
            .set_item(Some(item))
            .send()
            .await
            .map_err(dynamo("PutItem", &self.integrations))?;
        Ok(())
    }

    /// Puts the integration only if none of that name exists (discovery never overwrites).
    pub async fn insert_integration(&self, integration: &Integration) -> Result<bool, StoreError> {
        let item = self.to_item(&self.integrations, integration)?;
        match self
            .client
            .put_item()
            .table_name(&self.integrations)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#n)")
            .expression_attribute_names("#n", "name")
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(dynamo("PutItem", &self.integrations)(e)),
        }
    }

    pub async fn get_integration(&self, name: &str) -> Result<Option<Integration>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.integrations)
            .key("name", AttributeValue::S(name.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo("GetItem", &self.integrations))?;
        out.item.map(|i| self.from_item(&self.integrations, i)).transpose()
    }

    /// Every integration (a handful per deployment: a paginated Scan of a small table).
    pub async fn list_integrations(&self) -> Result<Vec<Integration>, StoreError> {
        let mut out: Vec<Integration> = self.scan_all(&self.integrations).await?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub async fn set_discovery_status(&self, name: &str, status: &DiscoveryStatus) -> Result<(), StoreError> {
        let value = serde_dynamo::to_attribute_value(status).map_err(|source| StoreError::Decode { table: self.integrations.clone(), source })?;
        self.client
            .update_item()
            .table_name(&self.integrations)
            .key("name", AttributeValue::S(name.to_owned()))
            .update_expression("SET discovery = :d")
            .condition_expression("attribute_exists(#n)")
            .expression_attribute_names("#n", "name")
            .expression_attribute_values(":d", value)
            .send()
            .await
            .map_err(dynamo("UpdateItem", &self.integrations))?;
        Ok(())
    }

    // ---- grants ----

    /// Writes a new grant record; fails with [`StoreError::AlreadyExists`] if the request id is
    /// taken, which is how a repeated approval is recognised.
    pub async fn insert_grant(&self, record: &GrantRecord) -> Result<(), StoreError> {
        let item = self.to_item(&self.grants, record)?;
        match self
            .client
            .put_item()
            .table_name(&self.grants)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(request_id)")
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Err(StoreError::AlreadyExists(format!("grant {:?}", record.request_id))),
            Err(e) => Err(dynamo("PutItem", &self.grants)(e)),
        }
    }

    pub async fn get_grant(&self, request_id: &str) -> Result<Option<GrantRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.grants)
            .key("request_id", AttributeValue::S(request_id.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo("GetItem", &self.grants))?;
        out.item.map(|i| self.from_item(&self.grants, i)).transpose()
    }

    /// Replaces the record if nobody wrote it since `record.version` was read; the stored
    /// version becomes `record.version + 1` (and so does `record.version`).
    pub async fn update_grant(&self, record: &mut GrantRecord) -> Result<(), StoreError> {
        let expected = record.version;
        record.version += 1;
        let item = self.to_item(&self.grants, record)?;
        let result = self
            .client
            .put_item()
            .table_name(&self.grants)
            .set_item(Some(item))
            .condition_expression("version = :v")
            .expression_attribute_values(":v", AttributeValue::N(expected.to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                record.version = expected;
                if is_conditional_failure(&e) {
                    Err(StoreError::Conflict { what: format!("grant {:?}", record.request_id), expected })
                } else {
                    Err(dynamo("PutItem", &self.grants)(e))
                }
            }
        }
    }

    /// Records in `status` whose `due_at` has come, oldest first, and how many items were read.
    pub async fn due_grants(&self, status: GrantStatus, now: DateTime<Utc>) -> Result<(Vec<GrantRecord>, usize), StoreError> {
        let query = self
            .client
            .query()
            .index_name(STATUS_DUE_INDEX)
            .key_condition_expression("#s = :s AND due_at <= :now")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":s", AttributeValue::S(status.as_str().to_owned()))
            .expression_attribute_values(":now", AttributeValue::S(due_key(now)));
        let out: Vec<GrantRecord> = self.query_all(&self.grants, query).await?;
        let read = out.len();
        Ok((out, read))
    }

    /// Every record in `status` (the index holds the states that still have work to come).
    pub async fn grants_in(&self, status: GrantStatus) -> Result<Vec<GrantRecord>, StoreError> {
        // The last moment a four-digit year can write: every key sorts before it.
        let far = DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999Z").map(|d| d.with_timezone(&Utc)).unwrap_or(DateTime::<Utc>::MAX_UTC);
        Ok(self.due_grants(status, far).await?.0)
    }

    /// The records of one database user (normally one).
    pub async fn grants_of_user(&self, db_user: &str) -> Result<Vec<GrantRecord>, StoreError> {
        let query = self
            .client
            .query()
            .index_name(DB_USER_INDEX)
            .key_condition_expression("db_user = :u")
            .expression_attribute_values(":u", AttributeValue::S(db_user.to_owned()));
        self.query_all(&self.grants, query).await
    }

    /// Every grant, for an operator's listing (a Scan: never on a function's path).
    pub async fn all_grants(&self) -> Result<Vec<GrantRecord>, StoreError> {
        self.scan_all(&self.grants).await
    }

    // ---- audit ----

    /// Appends an entry; an entry is never overwritten.
    pub async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let item = self.to_item(&self.audit, entry)?;
        match self
            .client
            .put_item()
            .table_name(&self.audit)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(at_event)")
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(dynamo("PutItem", &self.audit)(e)),
        }
    }

    pub async fn audit_of(&self, request_id: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let query = self.client.query().key_condition_expression("request_id = :r").expression_attribute_values(":r", AttributeValue::S(request_id.to_owned()));
        self.query_all(&self.audit, query).await
    }

    // ---- inventory ----

    pub async fn inventory(&self, integration: &str) -> Result<Vec<InventoryItem>, StoreError> {
        let query = self.client.query().key_condition_expression("integration = :i").expression_attribute_values(":i", AttributeValue::S(integration.to_owned()));
        self.query_all(&self.inventory, query).await
    }

    /// Makes the stored inventory of `integration` equal `items`: new and changed objects are
    /// written, vanished ones deleted, in batches of 25. Returns (written, deleted).
    pub async fn replace_inventory(&self, integration: &str, items: &[InventoryItem]) -> Result<(usize, usize), StoreError> {
        let existing: BTreeMap<String, InventoryItem> =
            self.inventory(integration).await?.into_iter().map(|i| (i.object.clone(), i)).collect();
        let wanted: BTreeMap<&str, &InventoryItem> = items.iter().map(|i| (i.object.as_str(), i)).collect();
        let mut requests = Vec::new();
        let mut written = 0;
        for (object, item) in &wanted {
            let same = existing.get(*object).is_some_and(|old| InventoryItem { discovered_at: item.discovered_at, ..old.clone() } == **item);
            if !same {
                let put = PutRequest::builder().set_item(Some(self.to_item(&self.inventory, item)?)).build().map_err(dynamo("BatchWriteItem", &self.inventory))?;
                requests.push(WriteRequest::builder().put_request(put).build());
                written += 1;
            }
        }
        let mut deleted = 0;
        for object in existing.keys() {
            if !wanted.contains_key(object.as_str()) {
                let del = DeleteRequest::builder()
                    .key("integration", AttributeValue::S(integration.to_owned()))
                    .key("object", AttributeValue::S(object.clone()))
                    .build()
                    .map_err(dynamo("BatchWriteItem", &self.inventory))?;
                requests.push(WriteRequest::builder().delete_request(del).build());
                deleted += 1;
            }
        }
        self.write_batches(&self.inventory, requests).await?;
        Ok((written, deleted))
    }

    /// Writes `requests` to `table` in BatchWriteItem calls of 25, sending what DynamoDB left
    /// unprocessed (throttling) again with backoff.
    async fn write_batches(&self, table: &str, requests: Vec<WriteRequest>) -> Result<(), StoreError> {
        for chunk in requests.chunks(25) {
            let mut pending: Vec<WriteRequest> = chunk.to_vec();
            for attempt in 0..8u32 {
                let out = self.client.batch_write_item().request_items(table, pending.clone()).send().await.map_err(dynamo("BatchWriteItem", table))?;
                pending = out.unprocessed_items.and_then(|mut u| u.remove(table)).unwrap_or_default();
                if pending.is_empty() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
            if !pending.is_empty() {
                return Err(StoreError::Dynamo {
                    operation: "BatchWriteItem",
                    table: table.to_owned(),
                    source: format!("{} items still unprocessed after retries", pending.len()).into(),
                });
            }
        }
        Ok(())
    }

    // ---- sessions ----

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
