//! Discovery: registers tagged RDS instances and Aurora clusters as integrations, and keeps each
//! integration's inventory of databases, schemas, tables, sequences, functions and roles.

use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::aws::store::{InventoryItem, StoreError};
use crate::aws::Services;
use crate::contract::integration::AdminAuth;
use crate::contract::integration::{AccessMode, DiscoveryStatus, Integration};
use crate::engine::catalog;
use crate::engine::postgres::{error_chain, SslMode};
use crate::engine::setup::Flavor;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiscoveryReport {
    /// Integrations registered from tagged instances and clusters in this run.
    pub registered: Vec<String>,
    /// Integrations inventoried, with their number of objects.
    pub inventoried: Vec<(String, usize)>,
    /// Integrations that could not be read, with why (also recorded on the integration).
    pub failed: Vec<(String, String)>,
    /// Tagged instances and clusters not registered, with why (already covered by an
    /// integration, or a tag naming a secret that is not a usable admin secret).
    pub skipped: Vec<(String, String)>,
}

/// The integration, other than `own` (the one discovery registered for it before), that already
/// covers the instance or cluster: one registered twin would be a second, weaker way to the same
/// database (discovery's defaults: no audit, 8 h, no total cap) and would split its audit.
fn covering<'i>(
    integrations: &'i [Integration],
    target: &crate::aws::rds::RdsTarget,
    own: &str,
) -> Option<&'i Integration> {
    let same = |a: Option<&str>, b: &str| a.is_some_and(|a| a.eq_ignore_ascii_case(b));
    integrations.iter().filter(|i| i.name != own).find(|i| {
        let by_id = if target.kind == "aurora" {
            same(i.cluster_id.as_deref(), &target.id)
        } else {
            same(i.instance_id.as_deref(), &target.id)
        };
        let by_host = target
            .host
            .as_deref()
            .is_some_and(|host| same(i.host.as_deref(), host));
        by_id || by_host
    })
}

/// Checks the secret a discovery tag names before anything is registered with it: it exists,
/// is one of pgjit's admin secrets (under `PGJIT_SECRET_PREFIX`, where operators keep them and
/// the functions may read) and holds the RDS format. The value is parsed and dropped.
async fn check_tagged_secret(svc: &Services, secret_id: &str) -> Result<(), String> {
    let out = svc
        .secrets
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| {
            format!(
                "its secret {secret_id:?} cannot be read: {}",
                error_chain(&crate::aws::AwsError::new(
                    "secretsmanager:GetSecretValue",
                    e
                ))
            )
        })?;
    let name = out.name().unwrap_or(secret_id);
    if !name.starts_with(&svc.config.secret_prefix) {
        return Err(format!(
            "its secret {name:?} is not under pgjit's admin secret prefix {:?}",
            svc.config.secret_prefix
        ));
    }
    let text = out
        .secret_string()
        .ok_or_else(|| format!("its secret {name:?} has no SecretString"))?;
    crate::aws::admin::RdsSecret::parse(name, text)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Longest grant of an auto-registered integration (an operator can change it after).
const DEFAULT_MAX_DURATION: u64 = 8 * 3600;

pub async fn run(
    svc: &Services,
    now: DateTime<Utc>,
    mut progress: impl FnMut(&str),
) -> Result<DiscoveryReport, StoreError> {
    let mut report = DiscoveryReport::default();
    if svc.config.auto_register {
        match crate::aws::rds::postgres_targets(svc).await {
            Ok(targets) => {
                let known = svc.store.list_integrations().await?;
                for target in targets {
                    let Some((_, secret)) = target
                        .tags
                        .iter()
                        .find(|(k, _)| *k == svc.config.discovery_tag_key)
                    else {
                        continue;
                    };
                    if let Some(other) = covering(&known, &target, &target.id) {
                        report.skipped.push((
                            target.id.clone(),
                            format!("already covered by integration {:?}", other.name),
                        ));
                        continue;
                    }
                    if known.iter().any(|i| i.name == target.id) {
                        continue;
                    }
                    if let Err(why) = check_tagged_secret(svc, secret).await {
                        tracing::warn!(target = %target.id, reason = %why, "tagged instance not registered");
                        report.skipped.push((target.id.clone(), why));
                        continue;
                    }
                    let aurora = target.kind == "aurora";
                    let integration = Integration {
                        name: target.id.clone(),
                        kind: if aurora { Flavor::Aurora } else { Flavor::Rds },
                        host: None,
                        port: None,
                        database: None,
                        region: svc.region(),
                        instance_id: (!aurora).then(|| target.id.clone()),
                        cluster_id: aurora.then(|| target.id.clone()),
                        admin: AdminAuth::Password {
                            secret_id: secret.clone(),
                        },
                        ssl_mode: SslMode::VerifyFull,
                        ca_bundle: None,
                        access_mode: AccessMode::Password,
                        access_roles: None,
                        max_duration_seconds: DEFAULT_MAX_DURATION,
                        max_total_duration_seconds: None,
                        user_cleanup_after_days: 0,
                        credential_rotation_days: None,
                        custom_access_details: None,
                        integration_owners: Vec::new(),
                        resource_owner_tag: None,
                        enable_audit: false,
                        audit_classes: Vec::new(),
                        audit_required: true,
                        log_line_prefix: None,
                        profile_retention_days: 30,
                        user_prefix: "pgjit_".into(),
                        grantable_roles: Vec::new(),
                        privileged_grantable_roles: Vec::new(),
                        allow_self_approval: false,
                        holding_role: crate::contract::integration::DEFAULT_HOLDING_ROLE.into(),
                        discovery: None,
                    };
                    if let Err(e) = integration.validate() {
                        report.failed.push((target.id.clone(), e.to_string()));
                        continue;
                    }
                    if svc.store.insert_integration(&integration).await? {
                        tracing::info!(integration = %integration.name, "registered from its {} tag", svc.config.discovery_tag_key);
                        report.registered.push(integration.name);
                    }
                }
            }
            Err(e) => report.failed.push(("(rds)".into(), error_chain(&e))),
        }
    }
    let integrations = svc.store.list_integrations().await?;
    let total = integrations.len();
    let mut done = 0;
    let mut results = stream::iter(integrations)
        .map(|integration| async move {
            let result = inventory_one(svc, &integration, now).await;
            (integration, result)
        })
        .buffer_unordered(svc.config.discovery_concurrency);
    while let Some((integration, result)) = results.next().await {
        done += 1;
        let status = match &result {
            Ok(n) => DiscoveryStatus {
                at: now,
                error: None,
                objects: *n,
            },
            Err(e) => DiscoveryStatus {
                at: now,
                error: Some(e.clone()),
                objects: 0,
            },
        };
        svc.store
            .set_discovery_status(&integration.name, &status)
            .await?;
        match result {
            Ok(n) => {
                progress(&format!(
                    "[{done}/{total}] {}: {n} objects",
                    integration.name
                ));
                report.inventoried.push((integration.name, n));
            }
            Err(e) => {
                tracing::warn!(integration = %integration.name, error = %e, "discovery failed for this integration");
                progress(&format!(
                    "[{done}/{total}] {}: failed: {e}",
                    integration.name
                ));
                report.failed.push((integration.name, e));
            }
        }
    }
    report.inventoried.sort();
    Ok(report)
}

/// Reads every database of one integration and replaces its stored inventory.
async fn inventory_one(
    svc: &Services,
    integration: &Integration,
    now: DateTime<Utc>,
) -> Result<usize, String> {
    let target = crate::control::endpoint::resolve(svc, integration)
        .await
        .map_err(|e| error_chain(&e))?;
    let connector = &target.connector;
    let main = connector
        .connect(integration.maintenance_database())
        .await
        .map_err(|e| error_chain(&e))?;
    let databases = catalog::databases(&main)
        .await
        .map_err(|e| error_chain(&e))?;
    let roles = catalog::roles(&main).await.map_err(|e| error_chain(&e))?;
    drop(main);
    let item =
        |database: &str, kind: &str, schema: Option<&str>, name: &str, owner: Option<&str>| {
            InventoryItem {
                integration: integration.name.clone(),
                object: match schema {
                    Some(s) => format!("{database}/{kind}/{s}/{name}"),
                    None => format!("{database}/{kind}/{name}"),
                },
                database: database.to_owned(),
                kind: kind.to_owned(),
                schema: schema.map(str::to_owned),
                name: name.to_owned(),
                owner: owner.map(str::to_owned),
                discovered_at: now,
            }
        };
    let mut items = Vec::new();
    for role in &roles {
        // pgjit's own temporary roles are not resources to request.
        if role.name.starts_with(&integration.user_prefix) {
            continue;
        }
        items.push(item("*", "role", None, &role.name, None));
    }
    for database in &databases {
        let client = match connector.connect(database).await {
            Ok(c) => c,
            // A database the admin may not enter is left out, not a failure of the integration.
            Err(e) if e.db_error().is_some() => {
                tracing::info!(integration = %integration.name, database, error = %error_chain(&e), "database skipped");
                continue;
            }
            Err(e) => return Err(error_chain(&e)),
        };
        let cat = catalog::read_database(&client)
            .await
            .map_err(|e| error_chain(&e))?;
        items.push(item(database, "database", None, database, None));
        for s in &cat.schemas {
            items.push(item(database, "schema", None, &s.name, Some(&s.owner)));
        }
        for r in &cat.relations {
            items.push(item(
                database,
                &r.kind,
                Some(&r.schema),
                &r.name,
                Some(&r.owner),
            ));
        }
        for s in &cat.sequences {
            items.push(item(
                database,
                "sequence",
                Some(&s.schema),
                &s.name,
                Some(&s.owner),
            ));
        }
        for f in &cat.functions {
            items.push(item(
                database,
                &f.kind,
                Some(&f.schema),
                &format!("{}({})", f.name, f.arguments),
                None,
            ));
        }
    }
    let count = items.len();
    svc.store
        .replace_inventory(&integration.name, &items)
        .await
        .map_err(|e| error_chain(&e))?;
    Ok(count)
}
