//! Integrations and the discovered inventory in the store.

use std::collections::BTreeMap;

use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, PutRequest, WriteRequest};

use super::{dynamo, is_conditional_failure, InventoryItem, Store, StoreError};
use crate::contract::integration::{DiscoveryStatus, Integration};

impl Store {
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
}
