//! Access requests made at the front door, from creation to their grant. Every change is a
//! conditional write on the record's `version`, like a grant's: two approvers approving at
//! once both count, never one over the other.

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{due_key, Store, StoreError};
use crate::access::AccessEntry;
use crate::contract::events::Requester;
use crate::contract::flow::Mode;
use crate::contract::requests::RequestStatus;

/// The index of requests by person, newest last.
pub const REQUESTER_INDEX: &str = "requester";

/// One approval (or the denial or cancellation) of a request, by whom IAM said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The person's id (an Identity Center user name, else their ARN).
    pub by: String,
    pub arn: String,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub request_id: String,
    pub status: RequestStatus,
    pub version: u64,
    pub integration: String,
    /// The flow it was made under, and how that flow grants.
    pub flow: String,
    pub mode: Mode,
    pub required: u32,
    pub requester: Requester,
    /// Partition of [`REQUESTER_INDEX`]: the requester's id, lowercased.
    pub requester_key: String,
    pub client_token: String,
    pub access: Vec<AccessEntry>,
    pub duration_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// A pending request expires then (`RequestTtlHours`).
    pub expires_at: DateTime<Utc>,
    /// Sort key of the `status-due` index: when a pending request expires, when an approved
    /// one with a start is due; absent once final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<Decision>,
    /// Who denied or cancelled it, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<Decision>,
    /// Client tokens of the approvals, denials and cancellations applied (`<action>:<token>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<String>,
    /// Why the grant was refused, or the request expired at its start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// When its approval was claimed for the bus (none while it waits for its start). Written
    /// before the approval is sent: a cancellation or a second sender that comes after it sees
    /// that it is on its way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    /// The bus's id for the sent approval, once PutEvents took it; a claim without one is sent
    /// again by the next call that finds it (the grant function takes a request once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// DynamoDB's time to live (epoch seconds): a request is kept 400 days; its grant's record
    /// and the audit trail keep the rest.
    pub ttl: i64,
}

impl RequestRecord {
    /// Sets the status and the index key that goes with it.
    pub fn set_status(&mut self, status: RequestStatus, now: DateTime<Utc>) {
        self.status = status;
        self.updated_at = now;
        self.due_at = match status {
            RequestStatus::Pending => Some(due_key(self.expires_at)),
            RequestStatus::Approved if self.sent_at.is_none() => self.start_at.map(due_key),
            _ => None,
        };
    }
}

impl Store {
    /// Writes a new request; `AlreadyExists` when its id is taken (a retried create).
    pub async fn insert_request(&self, record: &RequestRecord) -> Result<(), StoreError> {
        self.insert_new(&self.requests, record, format!("request {:?}", record.request_id)).await
    }

    pub async fn get_request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        self.get_by_request_id(&self.requests, request_id).await
    }

    /// Replaces the request if nobody wrote it since `record.version` was read.
    pub async fn update_request(&self, record: &mut RequestRecord) -> Result<(), StoreError> {
        let expected = record.version;
        record.version += 1;
        let result = self.put_if_version(&self.requests, record, expected, format!("request {:?}", record.request_id)).await;
        if result.is_err() {
            record.version = expected;
        }
        result
    }

    /// Requests in `status`, those due by `due_by` only when given, oldest first.
    pub async fn requests_in(&self, status: RequestStatus, due_by: Option<DateTime<Utc>>) -> Result<Vec<RequestRecord>, StoreError> {
        let mut query = self.client.query().index_name(super::STATUS_DUE_INDEX).expression_attribute_names("#s", "status").expression_attribute_values(":s", AttributeValue::S(status.as_str().to_owned()));
        query = match due_by {
            Some(at) => query.key_condition_expression("#s = :s AND due_at <= :d").expression_attribute_values(":d", AttributeValue::S(due_key(at))),
            None => query.key_condition_expression("#s = :s"),
        };
        self.query_all(&self.requests, query).await
    }

    /// A person's requests (by [`RequestRecord::requester_key`]), oldest first.
    pub async fn requests_of(&self, requester_key: &str) -> Result<Vec<RequestRecord>, StoreError> {
        let query = self
            .client
            .query()
            .index_name(REQUESTER_INDEX)
            .key_condition_expression("requester_key = :k")
            .expression_attribute_values(":k", AttributeValue::S(requester_key.to_owned()));
        self.query_all(&self.requests, query).await
    }
}
