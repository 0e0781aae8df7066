//! Access flows in the store: one item per flow, its document kept as the operator wrote it
//! and checked on read, so an item edited behind pgjit's back is refused, never half-trusted.
//! A document already checked (the same text) is taken from a cache of this execution
//! environment: every approval reads the flows, and parsing a thousand of them costs more than
//! the grant's database work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::types::AttributeValue;

/// Flows already checked, by their document's text; and each integration's indexed set.
#[derive(Debug, Clone, Default)]
pub struct FlowCache(Arc<Mutex<HashMap<String, Arc<Flow>>>>, Arc<Mutex<HashMap<String, Arc<FlowSet>>>>);

/// More documents than any deployment has flows: past it, the cache starts again.
const CACHE_MAX: usize = 20_000;

impl FlowCache {
    fn parse(&self, document: &str) -> Result<Arc<Flow>, crate::contract::flow::FlowError> {
        if let Some(flow) = self.0.lock().ok().and_then(|c| c.get(document).cloned()) {
            return Ok(flow);
        }
        let flow = Arc::new(Flow::from_json(document)?);
        if let Ok(mut cache) = self.0.lock() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(document.to_owned(), flow.clone());
        }
        Ok(flow)
    }
}
use serde::{Deserialize, Serialize};

use super::{dynamo, Store, StoreError};
use crate::contract::flow::{Flow, FlowSet};

#[derive(Serialize, Deserialize)]
struct FlowItem {
    name: String,
    /// Also kept apart, for the scan's filter.
    integrations: Vec<String>,
    document: String,
}

impl Store {
    /// Stores (or replaces) a flow.
    pub async fn put_flow(&self, flow: &Flow) -> Result<(), StoreError> {
        let document = serde_json::to_string(flow).map_err(|e| StoreError::Invalid { table: self.flows.clone(), message: e.to_string() })?;
        let item = self.to_item(&self.flows, &FlowItem { name: flow.name.clone(), integrations: flow.integrations.clone(), document })?;
        self.client.put_item().table_name(&self.flows).set_item(Some(item)).send().await.map_err(dynamo("PutItem", &self.flows))?;
        Ok(())
    }

    /// Removes a flow; whether there was one.
    pub async fn delete_flow(&self, name: &str) -> Result<bool, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.flows)
            .key("name", AttributeValue::S(name.to_owned()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(dynamo("DeleteItem", &self.flows))?;
        Ok(out.attributes.is_some())
    }

    /// The flows of one integration as an indexed set (read as [`Store::list_flows`] reads them;
    /// the index is made again only when the flows changed).
    pub async fn flow_set(&self, integration: &str) -> Result<Arc<FlowSet>, StoreError> {
        let flows = self.list_flows(Some(integration)).await?;
        let cached = self.flow_cache.1.lock().ok().and_then(|c| c.get(integration).cloned());
        if let Some(set) = cached.filter(|set| set.holds(&flows)) {
            return Ok(set);
        }
        let set = Arc::new(FlowSet::new(flows));
        if let Ok(mut sets) = self.flow_cache.1.lock() {
            if sets.len() >= CACHE_MAX {
                sets.clear();
            }
            sets.insert(integration.to_owned(), set.clone());
        }
        Ok(set)
    }

    /// Every flow, or those of one integration, in name order. A consistent read: a flow just
    /// narrowed or removed applies to the next approval.
    pub async fn list_flows(&self, integration: Option<&str>) -> Result<Vec<Arc<Flow>>, StoreError> {
        let mut scan = self.client.scan().table_name(&self.flows).consistent_read(true);
        if let Some(integration) = integration {
            scan = scan.filter_expression("contains(integrations, :i)").expression_attribute_values(":i", AttributeValue::S(integration.to_owned()));
        }
        let mut pages = scan.into_paginator().items().send();
        let mut flows = Vec::new();
        while let Some(item) = pages.next().await {
            let item: FlowItem = self.from_item(&self.flows, item.map_err(dynamo("Scan", &self.flows))?)?;
            let flow = self.flow_cache.parse(&item.document).map_err(|e| StoreError::Invalid { table: self.flows.clone(), message: format!("flow {:?}: {e}", item.name) })?;
            if flow.name != item.name || integration.is_some_and(|i| !flow.applies_to(i)) {
                return Err(StoreError::Invalid { table: self.flows.clone(), message: format!("flow item {:?} does not match its document", item.name) });
            }
            flows.push(flow);
        }
        flows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(flows)
    }
}
