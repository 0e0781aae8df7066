//! DynamoDB: integrations, grants, inventory and the append-only audit trail.
//!
//! Every change of a grant's state is a conditional write on its `version`, so two deliveries of
//! one event, or two functions racing, cannot both act. Cleanup finds due work through the
//! `status-due` index (partition `status`, sort `due_at`), never with a Scan.
//!
//! Here: the records, the tables and what every operation shares. The operations are by table:
//! `grants` (with the audit trail), `integrations` (with the inventory), `flows`, [`sessions`].

mod flows;
mod grants;
mod integrations;
pub mod requests;
pub mod sessions;

use std::collections::HashMap;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::AccessEntry;
use crate::contract::config::Config;
use crate::contract::events::Requester;
use crate::contract::integration::{AccessMode, Integration};
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

/// The inline policy put in IAM mode: on the requester, or on the grant's own access role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IamPolicyRef {
    /// `user` or `role` (the requester's own), or `access_role` (made for the grant)
    pub principal_kind: String,
    pub principal_name: String,
    pub policy_name: String,
    /// The access role the requester assumes, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
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
    /// The access flow that allowed it (none where the integration has no flows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// The approvers the flow counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// Granted through a break-glass flow: to be reviewed (`pgjit review`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed_at: Option<DateTime<Utc>>,
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
            flow: None,
            approvers: Vec::new(),
            break_glass: false,
            reviewed_by: None,
            reviewed_at: None,
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
    for (separator, n, width) in [
        ('-', at.month(), 2),
        ('-', at.day(), 2),
        ('T', at.hour(), 2),
        (':', at.minute(), 2),
        (':', at.second(), 2),
        ('.', at.timestamp_subsec_millis().min(999), 3),
    ] {
        out.push(separator);
        digits(out, n, width);
    }
    out.push('Z');
}

#[cfg(test)]
mod key_tests {
    #[test]
    fn time_keys_read_as_chronos_format_and_sort_as_time() {
        use chrono::TimeZone;
        let times = [
            chrono::Utc.timestamp_millis_opt(1_764_057_244_987).unwrap(),
            chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            chrono::Utc
                .with_ymd_and_hms(2026, 12, 31, 23, 59, 59)
                .unwrap(),
        ];
        for t in times {
            assert_eq!(
                super::due_key(t),
                t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
            );
        }
        assert!(
            super::due_key(times[0]) < super::due_key(times[1])
                && super::due_key(times[1]) < super::due_key(times[2])
        );
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
    /// The access flow the request went through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
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
    /// An item that decodes but breaks the rules its kind keeps (edited behind pgjit's back).
    #[error("item in {table} is not valid: {message}")]
    Invalid { table: String, message: String },
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
    flows: String,
    requests: String,
    flow_cache: flows::FlowCache,
}

fn dynamo<E: std::error::Error + Send + Sync + 'static>(
    operation: &'static str,
    table: &str,
) -> impl FnOnce(E) -> StoreError {
    let table = table.to_owned();
    move |e| StoreError::Dynamo {
        operation,
        table,
        source: Box::new(e),
    }
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
            flows: config.flows_table.clone(),
            requests: config.requests_table.clone(),
            flow_cache: flows::FlowCache::default(),
        }
    }

    fn to_item<T: Serialize>(
        &self,
        table: &str,
        value: &T,
    ) -> Result<HashMap<String, AttributeValue>, StoreError> {
        serde_dynamo::to_item(value).map_err(|source| StoreError::Decode {
            table: table.to_owned(),
            source,
        })
    }

    fn from_item<T: for<'de> Deserialize<'de>>(
        &self,
        table: &str,
        item: HashMap<String, AttributeValue>,
    ) -> Result<T, StoreError> {
        serde_dynamo::from_item(item).map_err(|source| StoreError::Decode {
            table: table.to_owned(),
            source,
        })
    }

    /// Every item a Query returns, all pages, decoded.
    async fn query_all<T: for<'de> Deserialize<'de>>(
        &self,
        table: &str,
        query: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        let mut pages = query.table_name(table).into_paginator().items().send();
        while let Some(item) = pages.next().await {
            out.push(self.from_item(table, item.map_err(dynamo("Query", table))?)?);
        }
        Ok(out)
    }

    /// The three writes every versioned record shares: a new item (`AlreadyExists` when its key
    /// is taken), an item by its key, and a replacement only if nobody wrote it since `expected`.
    async fn insert_new<T: Serialize>(
        &self,
        table: &str,
        record: &T,
        what: String,
    ) -> Result<(), StoreError> {
        let item = self.to_item(table, record)?;
        match self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(request_id)")
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Err(StoreError::AlreadyExists(what)),
            Err(e) => Err(dynamo("PutItem", table)(e)),
        }
    }

    async fn get_by_request_id<T: for<'de> Deserialize<'de>>(
        &self,
        table: &str,
        request_id: &str,
    ) -> Result<Option<T>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(table)
            .key("request_id", AttributeValue::S(request_id.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo("GetItem", table))?;
        out.item.map(|i| self.from_item(table, i)).transpose()
    }

    async fn put_if_version<T: Serialize>(
        &self,
        table: &str,
        record: &T,
        expected: u64,
        what: String,
    ) -> Result<(), StoreError> {
        let item = self.to_item(table, record)?;
        let result = self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .condition_expression("version = :v")
            .expression_attribute_values(":v", AttributeValue::N(expected.to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Err(StoreError::Conflict { what, expected }),
            Err(e) => Err(dynamo("PutItem", table)(e)),
        }
    }

    /// Every item of a table (operator listings and the small integrations table only).
    async fn scan_all<T: for<'de> Deserialize<'de>>(
        &self,
        table: &str,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .scan()
            .table_name(table)
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            out.push(self.from_item(table, item.map_err(dynamo("Scan", table))?)?);
        }
        Ok(out)
    }

    /// Creates the seven tables with their indexes (and the sessions table's time to live);
    /// tables that exist are left as they are.
    pub async fn create_tables(&self) -> Result<Vec<String>, StoreError> {
        let s = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        let key = |name: &str, t: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(t)
                .build()
        };
        let mut created = Vec::new();
        let specs: [(
            &str,
            Vec<(&str, KeyType)>,
            Vec<&str>,
            Vec<(&str, Vec<(&str, KeyType)>)>,
        ); 7] = [
            (
                &self.grants,
                vec![("request_id", KeyType::Hash)],
                vec!["request_id", "status", "due_at", "db_user"],
                vec![
                    (
                        STATUS_DUE_INDEX,
                        vec![("status", KeyType::Hash), ("due_at", KeyType::Range)],
                    ),
                    (DB_USER_INDEX, vec![("db_user", KeyType::Hash)]),
                ],
            ),
            (
                &self.integrations,
                vec![("name", KeyType::Hash)],
                vec!["name"],
                vec![],
            ),
            (
                &self.flows,
                vec![("name", KeyType::Hash)],
                vec!["name"],
                vec![],
            ),
            (
                &self.requests,
                vec![("request_id", KeyType::Hash)],
                vec![
                    "request_id",
                    "status",
                    "due_at",
                    "requester_key",
                    "created_at",
                ],
                vec![
                    (
                        STATUS_DUE_INDEX,
                        vec![("status", KeyType::Hash), ("due_at", KeyType::Range)],
                    ),
                    (
                        requests::REQUESTER_INDEX,
                        vec![
                            ("requester_key", KeyType::Hash),
                            ("created_at", KeyType::Range),
                        ],
                    ),
                ],
            ),
            (
                &self.inventory,
                vec![("integration", KeyType::Hash), ("object", KeyType::Range)],
                vec!["integration", "object"],
                vec![],
            ),
            (
                &self.audit,
                vec![("request_id", KeyType::Hash), ("at_event", KeyType::Range)],
                vec!["request_id", "at_event"],
                vec![],
            ),
            (
                &self.sessions,
                vec![("request_id", KeyType::Hash), ("at_origin", KeyType::Range)],
                vec!["request_id", "at_origin"],
                vec![],
            ),
        ];
        for (table, keys, attributes, indexes) in specs {
            let mut req = self
                .client
                .create_table()
                .table_name(table)
                .billing_mode(BillingMode::PayPerRequest);
            for a in attributes {
                req = req.attribute_definitions(s(a).map_err(dynamo("CreateTable", table))?);
            }
            for (k, t) in keys {
                req = req.key_schema(key(k, t).map_err(dynamo("CreateTable", table))?);
            }
            for (name, keys) in indexes {
                let mut gsi = GlobalSecondaryIndex::builder().index_name(name).projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                );
                for (k, t) in keys {
                    gsi = gsi.key_schema(key(k, t).map_err(dynamo("CreateTable", table))?);
                }
                req = req
                    .global_secondary_indexes(gsi.build().map_err(dynamo("CreateTable", table))?);
            }
            match req.send().await {
                Ok(_) => created.push(table.to_owned()),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_in_use_exception()) => {}
                Err(e) => return Err(dynamo("CreateTable", table)(e)),
            }
        }
        for (table, attribute) in [(&self.sessions, "expires_at"), (&self.requests, "ttl")] {
            if !created.contains(table) {
                continue;
            }
            let ttl = aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                .attribute_name(attribute)
                .enabled(true)
                .build()
                .map_err(dynamo("UpdateTimeToLive", table))?;
            self.client
                .update_time_to_live()
                .table_name(table)
                .time_to_live_specification(ttl)
                .send()
                .await
                .map_err(dynamo("UpdateTimeToLive", table))?;
        }
        Ok(created)
    }

    /// Writes `requests` to `table` in BatchWriteItem calls of 25, sending what DynamoDB left
    /// unprocessed (throttling) again with backoff.
    async fn write_batches(
        &self,
        table: &str,
        requests: Vec<WriteRequest>,
    ) -> Result<(), StoreError> {
        for chunk in requests.chunks(25) {
            let mut pending: Vec<WriteRequest> = chunk.to_vec();
            for attempt in 0..8u32 {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(table, pending.clone())
                    .send()
                    .await
                    .map_err(dynamo("BatchWriteItem", table))?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(table))
                    .unwrap_or_default();
                if pending.is_empty() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
            if !pending.is_empty() {
                return Err(StoreError::Dynamo {
                    operation: "BatchWriteItem",
                    table: table.to_owned(),
                    source: format!("{} items still unprocessed after retries", pending.len())
                        .into(),
                });
            }
        }
        Ok(())
    }
}
