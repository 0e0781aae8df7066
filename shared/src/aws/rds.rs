//! RDS and Aurora: where an instance or cluster is, its resource id (for IAM policies), and the
//! PostgreSQL instances and clusters discovery can find.

use crate::aws::{AwsError, Services};
use crate::contract::integration::Integration;

/// What RDS says about one instance or cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdsTarget {
    /// `rds` (an instance) or `aurora` (a cluster)
    pub kind: &'static str,
    pub id: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// `DbiResourceId` of an instance, `DbClusterResourceId` of a cluster.
    pub resource_id: Option<String>,
    pub tags: Vec<(String, String)>,
    /// The logs it exports to CloudWatch Logs (`postgresql` is what session audit reads).
    pub log_exports: Vec<String>,
}

fn tags(list: &[aws_sdk_rds::types::Tag]) -> Vec<(String, String)> {
    list.iter().filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned()))).collect()
}

fn port(p: Option<i32>) -> Option<u16> {
    p.and_then(|p| u16::try_from(p).ok())
}

fn from_instance(i: &aws_sdk_rds::types::DbInstance) -> RdsTarget {
    RdsTarget {
        kind: "rds",
        id: i.db_instance_identifier().unwrap_or_default().to_owned(),
        host: i.endpoint().and_then(|e| e.address()).map(str::to_owned),
        port: port(i.endpoint().and_then(|e| e.port())),
        resource_id: i.dbi_resource_id().map(str::to_owned),
        tags: tags(i.tag_list()),
        log_exports: i.enabled_cloudwatch_logs_exports().to_vec(),
    }
}

fn from_cluster(c: &aws_sdk_rds::types::DbCluster) -> RdsTarget {
    RdsTarget {
        kind: "aurora",
        id: c.db_cluster_identifier().unwrap_or_default().to_owned(),
        host: c.endpoint().map(str::to_owned),
        port: port(c.port()),
        resource_id: c.db_cluster_resource_id().map(str::to_owned),
        tags: tags(c.tag_list()),
        log_exports: c.enabled_cloudwatch_logs_exports().to_vec(),
    }
}

/// The integration's own region for its RDS calls, when it names one (pgjit's otherwise).
fn in_region(integration: &Integration) -> aws_sdk_rds::config::Builder {
    let mut config = aws_sdk_rds::config::Builder::default();
    if let Some(region) = &integration.region {
        config = config.region(aws_sdk_rds::config::Region::new(region.clone()));
    }
    config
}

/// Looks up the integration's instance or cluster, in the integration's region; `None` for
/// integrations without one.
pub async fn describe(svc: &Services, integration: &Integration) -> Result<Option<RdsTarget>, AwsError> {
    if let Some(id) = &integration.instance_id {
        let out = svc.rds.describe_db_instances().db_instance_identifier(id).customize().config_override(in_region(integration)).send().await.map_err(|e| AwsError::new("rds:DescribeDBInstances", e))?;
        let instance = out.db_instances().first().ok_or_else(|| AwsError::msg("rds:DescribeDBInstances", format!("instance {id:?} not found")))?;
        return Ok(Some(from_instance(instance)));
    }
    if let Some(id) = &integration.cluster_id {
        let out = svc.rds.describe_db_clusters().db_cluster_identifier(id).customize().config_override(in_region(integration)).send().await.map_err(|e| AwsError::new("rds:DescribeDBClusters", e))?;
        let cluster = out.db_clusters().first().ok_or_else(|| AwsError::msg("rds:DescribeDBClusters", format!("cluster {id:?} not found")))?;
        return Ok(Some(from_cluster(cluster)));
    }
    Ok(None)
}

/// Every PostgreSQL instance (engine `postgres`) and Aurora PostgreSQL cluster, all pages.
pub async fn postgres_targets(svc: &Services) -> Result<Vec<RdsTarget>, AwsError> {
    let mut out = Vec::new();
    let mut pages = svc.rds.describe_db_instances().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AwsError::new("rds:DescribeDBInstances", e))?;
        // Aurora members are reached through their cluster.
        out.extend(page.db_instances().iter().filter(|i| i.engine() == Some("postgres")).map(from_instance));
    }
    let mut pages = svc.rds.describe_db_clusters().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AwsError::new("rds:DescribeDBClusters", e))?;
        out.extend(page.db_clusters().iter().filter(|c| c.engine() == Some("aurora-postgresql")).map(from_cluster));
    }
    Ok(out)
}
