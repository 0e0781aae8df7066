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
//!
//! Here: receiving a delivery (or a log file), finding its integration, and writing what
//! [`attribution`] made of it; [`view`] shows a request's entries as sessions.

pub mod attribution;
pub mod view;

use std::collections::HashMap;

use aws_lambda_events::event::cloudwatch_logs::LogData;
use chrono::{DateTime, Utc};

use crate::contract::integration::Integration;
use crate::audit::server_log::{Record, Records};
use crate::aws::store::sessions::SessionEntry;
use crate::aws::store::{Store, StoreError};

use attribution::{attribute, Ingested, Retention, NO_CONNECTION};

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
pub async fn log_export_finding(svc: &crate::aws::Services, integration: &Integration) -> Option<crate::engine::doctor::Finding> {
    use crate::engine::doctor::Finding;
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
}
