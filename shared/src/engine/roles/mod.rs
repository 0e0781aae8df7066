//! The roles pgjit makes in PostgreSQL: a temporary login role per grant, and a NOLOGIN
//! *profile role* per distinct privilege set and database that holds the privileges (granting
//! straight to each user fails under concurrency, "tuple concurrently updated", and at scale,
//! "row is too big" on a table's ACL). All of it runs as a non-superuser admin.
//!
//! - [`grant`]: a grant, planned from the catalog (`plan`) and applied in one transaction per
//!   database, with its proof.
//! - [`revocation`]: taking access away, and disarming what a user's roles own.
//! - [`departure`]: dropping a role for good, handing what it owned to the holding role, and the
//!   roles pgjit manages as the catalog shows them.
//! - Here: what they share (errors, the grant lock, retries, markers, name checks) and the
//!   changes to an existing login (its expiry, its password).

pub mod departure;
pub mod grant;
mod plan;
pub mod revocation;

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use crate::access::{check_identifier, AccessSet};
use crate::engine::postgres::{ident, is_retryable, literal, ConnectError, Connector};
use crate::secret::SecretString;

/// How the new role logs in.
#[derive(Debug, Clone, Copy)]
pub enum LoginMethod<'a> {
    /// A password, stored as a SCRAM-SHA-256 verifier computed here so the plaintext never
    /// reaches the server (nor its statement log).
    Password(&'a SecretString),
    /// RDS IAM authentication: no password, membership of `rds_iam`.
    Iam,
}

/// Everything a grant needs, checked by the caller's policy already (duration, requester).
#[derive(Debug, Clone, Copy)]
pub struct GrantSpec<'a> {
    pub username: &'a str,
    pub access: &'a AccessSet,
    pub login: LoginMethod<'a>,
    pub valid_until: DateTime<Utc>,
    /// Prefix of every role pgjit creates; the username must carry it.
    pub prefix: &'a str,
    /// Roles a request may ask membership of; none unless listed.
    pub grantable_roles: &'a [String],
    /// Roles of `grantable_roles` handed out although they can log in, own objects, carry powers
    /// or lead to predefined or cloud admin roles (an explicit opt-in).
    pub privileged_roles: &'a [String],
    /// Session audit for the login role, when the integration asks for it.
    pub audit: Option<AuditRequest<'a>>,
}

/// The pgaudit classes a login role's sessions log, and what to do when the server cannot.
#[derive(Debug, Clone, Copy)]
pub struct AuditRequest<'a> {
    /// The `pgaudit.log` value.
    pub classes: &'a str,
    /// Refuse the grant when the server cannot audit (otherwise grant, with audit off).
    pub required: bool,
    /// RDS or Aurora: `rds_superuser` may set pgaudit.log, and fixes name the parameter group.
    pub cloud: bool,
}

/// Key of the advisory lock that serialises pgjit's grants within one database.
pub(crate) const GRANT_LOCK: i64 = 0x7067_6a69_745f_6772; // "pgjit_gr"
/// Attempts of one transaction on XX000, 40001 and 40P01 before giving up.
pub(super) const ATTEMPTS: u32 = 8;

/// The cloud providers' admin roles: membership of these is never handed out unless listed.
pub const CLOUD_ADMIN_ROLES: [&str; 4] = ["rds_superuser", "azure_pg_admin", "cloudsqlsuperuser", "alloydbsuperuser"];

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Invalid(String),
    #[error("not found in PostgreSQL: {}", .0.join("; "))]
    NotFound(Vec<String>),
    #[error("refused: {}", .0.join("; "))]
    Refused(Vec<String>),
    #[error("database {database:?}: the grant did not take effect for the profile role {profile:?}: {} (does the admin hold these privileges WITH GRANT OPTION?)", .missing.join(", "))]
    NotGranted { database: String, profile: String, missing: Vec<String> },
    #[error("database {database:?}: the catalog lookup could not be read")]
    Lookup {
        database: String,
        #[source]
        source: serde_json::Error,
    },
    /// The integration audits sessions, requires it, and this server cannot.
    #[error("session audit is required and the server cannot audit: {}", .0.join("; "))]
    AuditUnavailable(Vec<String>),
    #[error("computing the password verifier failed")]
    Verifier(#[source] tokio::task::JoinError),
    #[error("database {database:?}: {action} failed")]
    Sql {
        database: String,
        action: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl RoleError {
    pub(crate) fn sql(database: &str, action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> RoleError {
        let database = database.to_owned();
        move |source| RoleError::Sql { database, action, source }
    }
}

/// The comment pgjit puts on every role it creates, with the time: cleanup reconciles only
/// marked roles (never a DBA's role that happens to carry the prefix), and only once they are
/// older than a grace period (the store's db-user index is eventually consistent).
pub fn marker(created: DateTime<Utc>) -> String {
    format!("{MARKER_PREFIX}{}", created.format("%Y-%m-%dT%H:%M:%SZ"))
}

const MARKER_PREFIX: &str = "pgjit-managed; created ";

/// When a role carrying pgjit's marker was created; None for a comment pgjit did not write.
pub fn marker_created(comment: &str) -> Option<DateTime<Utc>> {
    let at = comment.strip_prefix(MARKER_PREFIX)?;
    let at = at.split_once(UNUSED_SINCE).map_or(at, |(created, _)| created);
    DateTime::parse_from_rfc3339(at).ok().map(|t| t.with_timezone(&Utc))
}

const UNUSED_SINCE: &str = "; unused since ";

/// pgjit's marker for a profile role that cleanup found without members at `since`: it is
/// dropped once that lasts the integration's `profile_retention_days`.
pub fn marker_unused(created: DateTime<Utc>, since: DateTime<Utc>) -> String {
    format!("{}{UNUSED_SINCE}{}", marker(created), since.format("%Y-%m-%dT%H:%M:%SZ"))
}

/// Since when a profile role has had no members, as its marker says (None: in use, or never
/// seen empty).
pub fn marker_unused_since(comment: &str) -> Option<DateTime<Utc>> {
    marker_created(comment)?;
    let (_, since) = comment.split_once(UNUSED_SINCE)?;
    DateTime::parse_from_rfc3339(since).ok().map(|t| t.with_timezone(&Utc))
}

pub(crate) fn check_login_name(username: &str, prefix: &str, admin: &str) -> Result<(), RoleError> {
    check_identifier(username).map_err(|m| RoleError::Invalid(format!("username {username:?} {m}")))?;
    if username == admin {
        return Err(RoleError::Invalid(format!("username {username:?} is pgjit's own admin role")));
    }
    if prefix.is_empty() || !username.starts_with(prefix) {
        return Err(RoleError::Invalid(format!("username {username:?} does not carry the prefix {prefix:?}: pgjit only manages its own roles")));
    }
    Ok(())
}

/// Runs `attempt` until it succeeds or fails with an error that is not worth a retry.
pub(crate) async fn retry<T, F, Fut>(database: &str, action: &'static str, attempt: F) -> Result<T, RoleError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    let mut n = 0;
    loop {
        n += 1;
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if n < ATTEMPTS && is_retryable(&e) => backoff(database, action, n, &e).await,
            Err(source) => return Err(RoleError::Sql { database: database.to_owned(), action, source }),
        }
    }
}

/// A short, growing, jittered pause before another attempt after contention.
pub(super) async fn backoff(database: &str, action: &str, attempt: u32, error: &tokio_postgres::Error) {
    tracing::debug!(database, action, attempt, error = %error, "retrying after contention");
    let jitter = rand::random_range(0..20u64);
    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt) + jitter)).await;
}

/// Moves a login role's `VALID UNTIL` (an extension, or its undo). Returns false when the role
/// does not exist.
pub async fn set_valid_until(connector: &Connector, maintenance_database: &str, username: &str, prefix: &str, until: DateTime<Utc>) -> Result<bool, RoleError> {
    check_login_name(username, prefix, connector.user())?;
    let client = connector.connect(maintenance_database).await?;
    if role_oid(&client, maintenance_database, username).await?.is_none() {
        return Ok(false);
    }
    let alter = format!("ALTER ROLE {} VALID UNTIL {}", ident(username), literal(&until.format("%Y-%m-%d %H:%M:%S+00").to_string()));
    retry(maintenance_database, "moving the expiry", || client.batch_execute(&alter)).await?;
    Ok(true)
}

/// Gives a login role a new password (its SCRAM verifier, computed here, so the password never
/// reaches the server); false when the role does not exist.
pub async fn set_password(client: &Client, admin: &str, maintenance_database: &str, username: &str, prefix: &str, password: &SecretString) -> Result<bool, RoleError> {
    check_login_name(username, prefix, admin)?;
    if role_oid(client, maintenance_database, username).await?.is_none() {
        return Ok(false);
    }
    let verifier = crate::engine::scram::verifier(password);
    let alter = format!("ALTER ROLE {} PASSWORD {}", ident(username), literal(&verifier));
    retry(maintenance_database, "setting a new password", || client.batch_execute(&alter)).await?;
    Ok(true)
}

/// The role's oid and the server's `server_version_num`, or None when the role does not exist.
pub(crate) async fn role_oid(client: &Client, database: &str, username: &str) -> Result<Option<(u32, i32)>, RoleError> {
    Ok(client
        .query_opt("SELECT oid, current_setting('server_version_num')::int FROM pg_roles WHERE rolname = $1", &[&username])
        .await
        .map_err(RoleError::sql(database, "looking up the role"))?
        .map(|r| (r.get(0), r.get(1))))
}

#[cfg(test)]
mod marker_tests {
    use chrono::TimeZone;

    #[test]
    fn markers_carry_the_creation_and_the_unused_time() {
        let created = chrono::Utc.with_ymd_and_hms(2026, 11, 1, 8, 0, 0).unwrap();
        let since = chrono::Utc.with_ymd_and_hms(2026, 11, 20, 3, 0, 0).unwrap();
        let plain = super::marker(created);
        assert_eq!((super::marker_created(&plain), super::marker_unused_since(&plain)), (Some(created), None));
        let unused = super::marker_unused(created, since);
        assert_eq!((super::marker_created(&unused), super::marker_unused_since(&unused)), (Some(created), Some(since)));
        // A comment pgjit did not write is neither.
        for other in ["", "reporting role", "; unused since 2026-11-20T03:00:00Z"] {
            assert_eq!((super::marker_created(other), super::marker_unused_since(other)), (None, None), "{other}");
        }
    }
}
