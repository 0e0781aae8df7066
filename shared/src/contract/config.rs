//! Configuration from environment variables. Every variable has a default that the local
//! environment uses, so `pgjit bootstrap` plus the standard AWS variables is enough locally.

use std::time::Duration;

/// The approvals key's alias when `PGJIT_APPROVALS_KEY_ID` is not set, as `pgjit bootstrap`
/// creates it locally (the template names `alias/<stack>-approvals`).
pub const DEFAULT_APPROVALS_KEY: &str = "alias/pgjit-approvals";

#[derive(Debug, Clone)]
pub struct Config {
    /// `PGJIT_GRANTS_TABLE`: one item per request, keyed by `request_id`.
    pub grants_table: String,
    /// `PGJIT_INTEGRATIONS_TABLE`
    pub integrations_table: String,
    /// `PGJIT_INVENTORY_TABLE`: discovered objects, keyed by integration and object.
    pub inventory_table: String,
    /// `PGJIT_AUDIT_TABLE`: append-only trail, keyed by request id and time.
    pub audit_table: String,
    /// `PGJIT_SESSIONS_TABLE`: session audit entries, keyed by request id and log position.
    pub sessions_table: String,
    /// `PGJIT_FLOWS_TABLE`: the access flows.
    pub flows_table: String,
    /// `PGJIT_REQUESTS_TABLE`: requests made at the front door.
    pub requests_table: String,
    /// `PGJIT_REQUEST_TTL_HOURS`: how long a request waits for its approvals (24).
    pub request_ttl: Duration,
    /// `PGJIT_REQUESTS_FUNCTION_ARN`: the requests function, which a request's start schedule
    /// invokes.
    pub requests_function_arn: String,
    /// `PGJIT_SESSION_RETENTION_DAYS` (365): how long session audit entries are kept (the
    /// table's time to live deletes them after).
    pub session_retention_days: u32,
    /// `PGJIT_SCHEDULE_GROUP`: the EventBridge Scheduler group of the revoke schedules.
    pub schedule_group: String,
    /// `PGJIT_REVOKE_FUNCTION_ARN`: what the one-shot schedules invoke.
    pub revoke_function_arn: String,
    /// `PGJIT_SCHEDULER_ROLE_ARN`: the role the scheduler assumes to invoke revoke.
    pub scheduler_role_arn: String,
    /// `PGJIT_REVOKE_DLQ_ARN`: where the scheduler puts revokes that kept failing (empty: none).
    pub revoke_dlq_arn: Option<String>,
    /// `PGJIT_SECRET_PREFIX` (`pgjit/`): the name prefix of pgjit's own secrets (the admin
    /// secrets the integrations name, the webhook key). Requesters never get anything under it.
    pub secret_prefix: String,
    /// `PGJIT_CREDENTIALS_PREFIX` (`pgjit-credentials/`): the name prefix of the requesters'
    /// credential secrets. Neither prefix may start the other, so IAM can tell them apart.
    pub credentials_prefix: String,
    /// `PGJIT_CREDENTIALS_KMS_KEY_ID` (none: the account's `aws/secretsmanager` key): a
    /// customer-managed KMS key for the credential secrets.
    pub credentials_kms_key_id: Option<String>,
    /// `PGJIT_CREDENTIAL_READERS` (comma-separated principal ARNs, `*` allowed): who besides the
    /// requester may read a credential secret (the approval tool that hands it on, operators).
    pub credential_readers: Vec<String>,
    /// `PGJIT_FUNCTION_ROLE_ARNS` (comma-separated role ARNs; the template sets the grant
    /// function's): pgjit's own roles that read a credentials secret (an extension rewrites its
    /// `expires_at`), named in every secret's resource policy so the Deny spares them.
    pub function_role_arns: Vec<String>,
    /// `PGJIT_APPROVAL_MAX_AGE_SECONDS` (3600): an approval event older than this is refused, so
    /// a replay cannot grant again. The template sets the approval rule's retry window to it.
    pub approval_max_age: Duration,
    /// `PGJIT_APPROVAL_BUS` (`default`): the bus approvals arrive on; the webhook forwards there.
    pub approval_bus: String,
    /// `PGJIT_APPROVALS_KEY_ID` (`alias/pgjit-approvals`): the KMS HMAC key whose MAC makes an
    /// approval, extension or early revoke valid ([`crate::aws::approval_mac`]).
    pub approvals_key_id: String,
    /// `PGJIT_APPROVAL_SOURCE` (`pgjit.approvals`): the `source` of approval events.
    pub approval_source: String,
    /// `PGJIT_TRUSTED_ACCOUNTS` (comma-separated; pgjit's own account always counts): accounts whose
    /// principals may be named as `requester.iam_arn`.
    pub trusted_accounts: Vec<String>,
    /// `PGJIT_PROTECTED_ROLES` (comma-separated role names, a trailing `*` matches a prefix): roles
    /// IAM mode never writes a policy on (pgjit's own roles, break-glass roles, …).
    pub protected_roles: Vec<String>,
    /// `PGJIT_ACCESS_ROLES` (`identity_center` or `everyone`): in IAM mode, who is given a
    /// per-grant access role to assume instead of an inline policy on themselves.
    pub access_roles: crate::contract::integration::AccessRoles,
    /// `PGJIT_ACCESS_ROLE_BOUNDARY_ARN`: the permissions boundary every access role is made
    /// with (the template's, allowing `rds-db:connect` only); without it none is made.
    pub access_role_boundary_arn: Option<String>,
    /// `PGJIT_DISCOVERY_TAG_KEY`: the tag whose value names an instance's admin secret.
    pub discovery_tag_key: String,
    /// `PGJIT_AUTO_REGISTER`: register tagged instances as integrations (`true`/`false`).
    pub auto_register: bool,
    /// `PGJIT_DISCOVERY_CONCURRENCY`: integrations inventoried at once.
    pub discovery_concurrency: usize,
    /// `PGJIT_CLEANUP_CONCURRENCY` (16): cleanup items in flight at once, over every integration.
    pub cleanup_concurrency: usize,
    /// `PGJIT_CLEANUP_CONNECTIONS` (2): connections cleanup keeps open to each integration's
    /// server, reused item after item; the most the server sees from one sweep.
    pub cleanup_connections: usize,
    /// `PGJIT_STUCK_AFTER_SECONDS`: a record left in `granting` or `revoking` this long was
    /// abandoned by a crashed run, and cleanup (or a repeated event) finishes it.
    pub stuck_after: Duration,
    /// `PGJIT_RECONCILE_GRACE_SECONDS` (3600): how old a role without a record must be before
    /// cleanup treats it as an orphan (the store's db-user index is eventually consistent).
    pub reconcile_grace: Duration,
    /// `PGJIT_CONNECT_TIMEOUT_SECONDS` (10), `PGJIT_STATEMENT_TIMEOUT_SECONDS` (30),
    /// `PGJIT_LOCK_TIMEOUT_SECONDS` (10): applied to every database connection, so a database that
    /// accepts TCP and never answers cannot hold a function past its own timeout.
    pub db_timeouts: crate::engine::postgres::Timeouts,
    /// `PGJIT_EVENT_BUS` (`default`; empty: none): where `Access Granted` events go.
    pub event_bus: Option<String>,
    /// `PGJIT_EVENT_SOURCE` (`pgjit`): the `source` of the events pgjit emits.
    pub event_source: String,
    /// `PGJIT_WEBHOOK_SECRET_ID`: the Secrets Manager secret holding the webhook's HMAC key.
    pub webhook_secret_id: Option<String>,
    /// `PGJIT_IDENTITY_STORE_ID`: the IAM Identity Center identity store people's groups come
    /// from (`d-…`); without it, flows match users and principals only.
    pub identity_store_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}: {message}")]
pub struct ConfigError {
    pub name: &'static str,
    pub message: String,
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let text = |name: &'static str, default: &str| -> Result<String, ConfigError> {
            match lookup(name) {
                None => Ok(default.to_owned()),
                Some(v) if v.trim().is_empty() => Err(ConfigError {
                    name,
                    message: "is set but empty".into(),
                }),
                Some(v) => Ok(v),
            }
        };
        let number =
            |name: &'static str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
                let v = text(name, &default.to_string())?;
                let n: u64 = v.parse().map_err(|_| ConfigError {
                    name,
                    message: format!("{v:?} is not a whole number"),
                })?;
                if !(min..=max).contains(&n) {
                    return Err(ConfigError {
                        name,
                        message: format!("{n} is outside {min}..={max}"),
                    });
                }
                Ok(n)
            };
        let auto_register = match text("PGJIT_AUTO_REGISTER", "true")?.as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            other => {
                return Err(ConfigError {
                    name: "PGJIT_AUTO_REGISTER",
                    message: format!("{other:?} is not true or false"),
                })
            }
        };
        let list = |name: &'static str| -> Vec<String> {
            lookup(name)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|x| !x.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let secret_prefix = text("PGJIT_SECRET_PREFIX", "pgjit/")?;
        let credentials_prefix = text("PGJIT_CREDENTIALS_PREFIX", "pgjit-credentials/")?;
        for (name, prefix) in [
            ("PGJIT_SECRET_PREFIX", &secret_prefix),
            ("PGJIT_CREDENTIALS_PREFIX", &credentials_prefix),
        ] {
            if !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b))
            {
                return Err(ConfigError {
                    name,
                    message: format!(
                        "{prefix:?}: a secret name holds letters, digits and /_+=.@- only"
                    ),
                });
            }
        }
        if secret_prefix.starts_with(credentials_prefix.as_str())
            || credentials_prefix.starts_with(secret_prefix.as_str())
        {
            return Err(ConfigError {
                name: "PGJIT_CREDENTIALS_PREFIX",
                message: format!("{credentials_prefix:?} and PGJIT_SECRET_PREFIX {secret_prefix:?} overlap: requesters' credentials must be apart from pgjit's own secrets"),
            });
        }
        let trusted_accounts = list("PGJIT_TRUSTED_ACCOUNTS");
        if let Some(bad) = trusted_accounts
            .iter()
            .find(|a| a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(ConfigError {
                name: "PGJIT_TRUSTED_ACCOUNTS",
                message: format!("{bad:?} is not a 12-digit account id"),
            });
        }
        let access_roles = match lookup("PGJIT_ACCESS_ROLES") {
            None => crate::contract::integration::AccessRoles::default(),
            Some(v) => {
                crate::contract::integration::AccessRoles::parse(v.trim()).ok_or_else(|| {
                    ConfigError {
                        name: "PGJIT_ACCESS_ROLES",
                        message: format!("{v:?} is neither identity_center nor everyone"),
                    }
                })?
            }
        };
        let dlq = lookup("PGJIT_REVOKE_DLQ_ARN")
            .unwrap_or_else(|| "arn:aws:sqs:us-east-1:123456789012:pgjit-revoke-dlq".into());
        Ok(Config {
            grants_table: text("PGJIT_GRANTS_TABLE", "pgjit-grants")?,
            integrations_table: text("PGJIT_INTEGRATIONS_TABLE", "pgjit-integrations")?,
            inventory_table: text("PGJIT_INVENTORY_TABLE", "pgjit-inventory")?,
            audit_table: text("PGJIT_AUDIT_TABLE", "pgjit-audit")?,
            sessions_table: text("PGJIT_SESSIONS_TABLE", "pgjit-sessions")?,
            flows_table: text("PGJIT_FLOWS_TABLE", "pgjit-flows")?,
            requests_table: text("PGJIT_REQUESTS_TABLE", "pgjit-requests")?,
            request_ttl: Duration::from_secs(
                3600 * number("PGJIT_REQUEST_TTL_HOURS", 24, 1, 24 * 14)?,
            ),
            requests_function_arn: text(
                "PGJIT_REQUESTS_FUNCTION_ARN",
                "arn:aws:lambda:us-east-1:123456789012:function:pgjit-requests",
            )?,
            session_retention_days: number("PGJIT_SESSION_RETENTION_DAYS", 365, 1, 3650)? as u32,
            schedule_group: text("PGJIT_SCHEDULE_GROUP", "pgjit")?,
            revoke_function_arn: text(
                "PGJIT_REVOKE_FUNCTION_ARN",
                "arn:aws:lambda:us-east-1:123456789012:function:pgjit-revoke",
            )?,
            scheduler_role_arn: text(
                "PGJIT_SCHEDULER_ROLE_ARN",
                "arn:aws:iam::123456789012:role/pgjit-scheduler",
            )?,
            revoke_dlq_arn: if dlq.trim().is_empty() {
                None
            } else {
                Some(dlq)
            },
            secret_prefix,
            credentials_prefix,
            credentials_kms_key_id: lookup("PGJIT_CREDENTIALS_KMS_KEY_ID")
                .filter(|v| !v.trim().is_empty()),
            credential_readers: list("PGJIT_CREDENTIAL_READERS"),
            function_role_arns: list("PGJIT_FUNCTION_ROLE_ARNS"),
            approval_max_age: Duration::from_secs(number(
                "PGJIT_APPROVAL_MAX_AGE_SECONDS",
                3600,
                60,
                86_400,
            )?),
            approval_bus: text("PGJIT_APPROVAL_BUS", "default")?,
            approval_source: text("PGJIT_APPROVAL_SOURCE", "pgjit.approvals")?,
            approvals_key_id: text("PGJIT_APPROVALS_KEY_ID", DEFAULT_APPROVALS_KEY)?,
            trusted_accounts,
            protected_roles: list("PGJIT_PROTECTED_ROLES"),
            access_roles,
            access_role_boundary_arn: lookup("PGJIT_ACCESS_ROLE_BOUNDARY_ARN")
                .filter(|v| !v.trim().is_empty()),
            discovery_tag_key: text("PGJIT_DISCOVERY_TAG_KEY", "pgjit:secret")?,
            auto_register,
            discovery_concurrency: number("PGJIT_DISCOVERY_CONCURRENCY", 4, 1, 64)? as usize,
            cleanup_concurrency: number("PGJIT_CLEANUP_CONCURRENCY", 16, 1, 256)? as usize,
            cleanup_connections: number("PGJIT_CLEANUP_CONNECTIONS", 2, 1, 32)? as usize,
            stuck_after: Duration::from_secs(number("PGJIT_STUCK_AFTER_SECONDS", 900, 1, 86_400)?),
            reconcile_grace: Duration::from_secs(number(
                "PGJIT_RECONCILE_GRACE_SECONDS",
                3600,
                0,
                7 * 86_400,
            )?),
            db_timeouts: crate::engine::postgres::Timeouts {
                connect: Duration::from_secs(number("PGJIT_CONNECT_TIMEOUT_SECONDS", 10, 1, 300)?),
                statement: Duration::from_secs(number(
                    "PGJIT_STATEMENT_TIMEOUT_SECONDS",
                    30,
                    1,
                    3600,
                )?),
                lock: Duration::from_secs(number("PGJIT_LOCK_TIMEOUT_SECONDS", 10, 1, 3600)?),
            },
            event_bus: match lookup("PGJIT_EVENT_BUS") {
                None => Some("default".to_owned()),
                Some(v) if v.trim().is_empty() => None,
                Some(v) => Some(v),
            },
            event_source: text("PGJIT_EVENT_SOURCE", "pgjit")?,
            webhook_secret_id: lookup("PGJIT_WEBHOOK_SECRET_ID").filter(|v| !v.trim().is_empty()),
            identity_store_id: match lookup("PGJIT_IDENTITY_STORE_ID")
                .filter(|v| !v.trim().is_empty())
            {
                // Identity Store ids: `d-` and 10 hexadecimal digits, or a UUID.
                Some(id)
                    if !(id.len() <= 36
                        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')) =>
                {
                    return Err(ConfigError {
                        name: "PGJIT_IDENTITY_STORE_ID",
                        message: format!("{id:?} is not an identity store id (d-1234567890)"),
                    })
                }
                other => other,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_variable() {
        let c = Config::from_lookup(|_| None).unwrap();
        assert_eq!(c.grants_table, "pgjit-grants");
        assert_eq!(c.schedule_group, "pgjit");
        assert!(c.auto_register);
        let err =
            Config::from_lookup(|n| (n == "PGJIT_DISCOVERY_CONCURRENCY").then(|| "lots".into()))
                .unwrap_err();
        assert_eq!(err.name, "PGJIT_DISCOVERY_CONCURRENCY");
        let err =
            Config::from_lookup(|n| (n == "PGJIT_GRANTS_TABLE").then(|| " ".into())).unwrap_err();
        assert!(err.to_string().contains("PGJIT_GRANTS_TABLE"), "{err}");
        let c = Config::from_lookup(|n| (n == "PGJIT_REVOKE_DLQ_ARN").then(String::new)).unwrap();
        assert_eq!(c.revoke_dlq_arn, None);
        // Credentials apart from pgjit's own secrets, or nothing starts.
        let c = Config::from_lookup(|_| None).unwrap();
        assert!(
            !c.credentials_prefix.starts_with(&c.secret_prefix)
                && !c.secret_prefix.starts_with(&c.credentials_prefix)
        );
        let err = Config::from_lookup(|n| {
            (n == "PGJIT_CREDENTIALS_PREFIX").then(|| "pgjit/credentials/".into())
        })
        .unwrap_err();
        assert_eq!(err.name, "PGJIT_CREDENTIALS_PREFIX");
        let err =
            Config::from_lookup(|n| (n == "PGJIT_CREDENTIALS_PREFIX").then(|| "creds:x/".into()))
                .unwrap_err();
        assert_eq!(err.name, "PGJIT_CREDENTIALS_PREFIX");
        let err = Config::from_lookup(|n| {
            (n == "PGJIT_TRUSTED_ACCOUNTS").then(|| "123456789012, 12".into())
        })
        .unwrap_err();
        assert_eq!(err.name, "PGJIT_TRUSTED_ACCOUNTS");
        let c = Config::from_lookup(|n| {
            (n == "PGJIT_PROTECTED_ROLES").then(|| "pgjit-*, BreakGlass".into())
        })
        .unwrap();
        assert_eq!(c.protected_roles, ["pgjit-*", "BreakGlass"]);
    }
}
