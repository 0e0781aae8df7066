//! Grant records, their conditional state changes, and each request's audit trail.

use chrono::{DateTime, Utc};

use aws_sdk_dynamodb::types::AttributeValue;

use super::{due_key, dynamo, is_conditional_failure, AuditEntry, GrantRecord, GrantStatus, Store, StoreError, DB_USER_INDEX, STATUS_DUE_INDEX};

impl Store {
    /// Writes a new grant record; fails with [`StoreError::AlreadyExists`] if the request id is
    /// taken, which is how a repeated approval is recognised.
    pub async fn insert_grant(&self, record: &GrantRecord) -> Result<(), StoreError> {
        self.insert_new(&self.grants, record, format!("grant {:?}", record.request_id)).await
    }

    pub async fn get_grant(&self, request_id: &str) -> Result<Option<GrantRecord>, StoreError> {
        self.get_by_request_id(&self.grants, request_id).await
    }

    /// Replaces the record if nobody wrote it since `record.version` was read; the stored
    /// version becomes `record.version + 1` (and so does `record.version`).
    pub async fn update_grant(&self, record: &mut GrantRecord) -> Result<(), StoreError> {
        let expected = record.version;
        record.version += 1;
        let result = self.put_if_version(&self.grants, record, expected, format!("grant {:?}", record.request_id)).await;
        if result.is_err() {
            record.version = expected;
        }
        result
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
}
