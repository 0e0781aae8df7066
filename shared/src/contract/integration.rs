//! An integration: one PostgreSQL endpoint plus the policy for access to it, as an operator
//! registers it (`pgjit integration put FILE`) or discovery does.

use serde::{Deserialize, Serialize};

use crate::access::check_identifier;
use crate::engine::postgres::SslMode;
use crate::engine::setup::Flavor;

/// How the requester logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// A temporary login role with a generated password, handed over in Secrets Manager.
    #[default]
    Password,
    /// RDS IAM authentication: the role is a member of `rds_iam`, the requester gets an inline
    /// `rds-db:connect` policy.
    Iam,
}

/// In IAM mode, who is given a per-grant access role to assume (under `/pgjit/access/`, fenced
/// by the stack's permissions boundary) rather than an inline policy on their own identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessRoles {
    /// IAM Identity Center sessions only: their permission-set roles cannot be changed by anyone
    /// but Identity Center, so no inline policy can go on them.
    #[default]
    IdentityCenter,
    /// Every requester: pgjit never writes on a requester's own user or role.
    Everyone,
}

impl AccessRoles {
    /// The word configuration uses for it.
    pub fn parse(text: &str) -> Option<AccessRoles> {
        match text {
            "identity_center" => Some(AccessRoles::IdentityCenter),
            "everyone" => Some(AccessRoles::Everyone),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Integration {
    pub name: String,
    pub kind: Flavor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The database pgjit connects to for cluster-wide work (default `postgres`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    pub admin: AdminAuth,
    #[serde(default)]
    pub ssl_mode: SslMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    #[serde(default)]
    pub access_mode: AccessMode,
    /// Overrides the stack's `PGJIT_ACCESS_ROLES` for this integration (IAM mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_roles: Option<AccessRoles>,
    pub max_duration_seconds: u64,
    /// The latest a grant may last from its first grant, extensions included (none: no limit
    /// beyond `max_duration_seconds` per approval or extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_duration_seconds: Option<u64>,
    #[serde(default)]
    pub user_cleanup_after_days: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_rotation_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_access_details: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub integration_owners: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_owner_tag: Option<String>,
    /// Session audit: each login role gets `pgaudit.log` set to `audit_classes`, and the
    /// server's log is read back into the sessions table.
    #[serde(default)]
    pub enable_audit: bool,
    /// The pgaudit classes logged (default: read, write, ddl, role, function, misc).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_classes: Vec<String>,
    /// Whether a grant the server cannot audit is refused (default) or granted with audit off,
    /// which its record then says.
    #[serde(default = "default_true", skip_serializing_if = "Clone::clone")]
    pub audit_required: bool,
    /// The server's `log_line_prefix` (default RDS's, which RDS and Aurora do not let you change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_line_prefix: Option<String>,
    #[serde(default = "default_prefix")]
    pub user_prefix: String,
    /// Days a profile role with no members is kept before cleanup drops it (default 30): each
    /// distinct privilege set has one, with ACL entries on what it covers.
    #[serde(default = "default_profile_retention_days")]
    pub profile_retention_days: u32,
    /// Existing roles a request may ask membership of; none unless listed (deny by default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grantable_roles: Vec<String>,
    /// Roles of `grantable_roles` handed out even though they can log in, own objects, carry
    /// powers (SUPERUSER, CREATEROLE, …) or lead to predefined or cloud admin roles: an explicit
    /// opt-in, since membership gives whatever those roles can do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub privileged_grantable_roles: Vec<String>,
    /// Whether an approval whose approver is the requester is accepted (default: refused).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_self_approval: bool,
    /// The NOLOGIN role, without privileges or memberships, that receives whatever a temporary
    /// user owned when it is dropped (`setup-sql` creates it). Never the admin: what a temporary
    /// user created must never run with the admin's rights.
    #[serde(default = "default_holding_role")]
    pub holding_role: String,
    /// Written by discovery: when it last read this integration, and what went wrong if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryStatus {
    pub at: chrono::DateTime<chrono::Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub objects: usize,
}

fn default_profile_retention_days() -> u32 {
    30
}

fn default_true() -> bool {
    true
}

fn default_prefix() -> String {
    "pgjit_".into()
}

/// The holding role `setup-sql` creates unless told otherwise.
pub const DEFAULT_HOLDING_ROLE: &str = "pgjit_holding";

fn default_holding_role() -> String {
    DEFAULT_HOLDING_ROLE.into()
}

/// A field of an integration that is not acceptable, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("integration field `{field}`: {message}")]
pub struct IntegrationError {
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> IntegrationError {
    IntegrationError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// The longest grant pgjit accepts at all: 31 days.
pub const MAX_DURATION_SECONDS: u64 = 31 * 24 * 3600;

impl Integration {
    /// Parses integration JSON; a wrong type or unknown field is reported with its path.
    pub fn from_json(text: &str) -> Result<Integration, IntegrationError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let integration: Integration = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            bad(
                &crate::contract::events::field_of(&path, &message, "(document)"),
                message,
            )
        })?;
        integration.validate()?;
        Ok(integration)
    }

    pub fn validate(&self) -> Result<(), IntegrationError> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(
                "name",
                format!("{:?} must be 1-64 letters, digits, '-' or '_'", self.name),
            ));
        }
        let cloud = matches!(self.kind, Flavor::Rds | Flavor::Aurora);
        match (&self.host, self.kind) {
            (Some(h), _)
                if h.trim().is_empty() || h.len() > 253 || h.contains(char::is_whitespace) =>
            {
                return Err(bad("host", format!("{h:?} is not a host name")))
            }
            (None, Flavor::Rds) if self.instance_id.is_none() => {
                return Err(bad(
                    "instance_id",
                    "an rds integration needs instance_id (or host)",
                ))
            }
            (None, Flavor::Aurora) if self.cluster_id.is_none() => {
                return Err(bad(
                    "cluster_id",
                    "an aurora integration needs cluster_id (or host)",
                ))
            }
            (None, k) if !cloud => {
                return Err(bad("host", format!("a {k} integration needs host")))
            }
            _ => {}
        }
        if self.port == Some(0) {
            return Err(bad("port", "must be 1-65535"));
        }
        if let Some(db) = &self.database {
            check_identifier(db).map_err(|m| bad("database", format!("{db:?} {m}")))?;
        }
        if self.instance_id.is_some() && self.kind != Flavor::Rds {
            return Err(bad(
                "instance_id",
                format!(
                    "only an rds integration has instance_id (this one is {})",
                    self.kind
                ),
            ));
        }
        if self.cluster_id.is_some() && self.kind != Flavor::Aurora {
            return Err(bad(
                "cluster_id",
                format!(
                    "only an aurora integration has cluster_id (this one is {})",
                    self.kind
                ),
            ));
        }
        for (field, id) in [
            ("instance_id", &self.instance_id),
            ("cluster_id", &self.cluster_id),
        ] {
            if let Some(id) = id {
                if id.is_empty()
                    || id.len() > 63
                    || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    return Err(bad(field, format!("{id:?} is not an RDS identifier")));
                }
            }
        }
        if let Some(r) = &self.region {
            if r.is_empty()
                || r.len() > 32
                || !r
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(bad("region", format!("{r:?} is not an AWS region")));
            }
        }
        match &self.admin {
            AdminAuth::Password { secret_id } if secret_id.trim().is_empty() => {
                return Err(bad("admin.secret_id", "must not be empty"))
            }
            AdminAuth::Iam { username } => {
                check_identifier(username)
                    .map_err(|m| bad("admin.username", format!("{username:?} {m}")))?;
                if !cloud {
                    return Err(bad(
                        "admin",
                        format!(
                            "IAM authentication exists on rds and aurora only, not {}",
                            self.kind
                        ),
                    ));
                }
            }
            _ => {}
        }
        if let Some(ca) = &self.ca_bundle {
            if ca.trim().is_empty() {
                return Err(bad("ca_bundle", "must not be empty (leave it out instead)"));
            }
        }
        let verifying = matches!(self.ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull);
        if verifying && self.ca_bundle.is_none() && !self.kind.has_rds_certificates() {
            return Err(bad(
                "ca_bundle",
                format!(
                    "{} trusts only the roots it is given: name the CA that signed the server's certificate (PEM text or a file path), or \"system\" for the public web roots",
                    self.ssl_mode.as_str()
                ),
            ));
        }
        if matches!(self.admin, AdminAuth::Iam { .. }) && self.ssl_mode != SslMode::VerifyFull {
            return Err(bad("ssl_mode", "an RDS IAM auth token is sent as a password in clear to the server: admin.auth iam needs verify-full"));
        }
        if self.access_mode == AccessMode::Iam {
            if !cloud {
                return Err(bad(
                    "access_mode",
                    format!("iam works on rds and aurora only, not {}", self.kind),
                ));
            }
            if self.instance_id.is_none() && self.cluster_id.is_none() {
                return Err(bad(
                    "access_mode",
                    "iam needs instance_id or cluster_id (the policy names the resource id)",
                ));
            }
        }
        if self.max_duration_seconds == 0 || self.max_duration_seconds > MAX_DURATION_SECONDS {
            return Err(bad(
                "max_duration_seconds",
                format!("must be 1-{MAX_DURATION_SECONDS} (31 days)"),
            ));
        }
        if let Some(total) = self.max_total_duration_seconds {
            if total < self.max_duration_seconds || total > 4 * MAX_DURATION_SECONDS {
                return Err(bad(
                    "max_total_duration_seconds",
                    format!(
                        "must be at least max_duration_seconds ({}) and at most {}",
                        self.max_duration_seconds,
                        4 * MAX_DURATION_SECONDS
                    ),
                ));
            }
        }
        if self.user_cleanup_after_days > 3650 {
            return Err(bad("user_cleanup_after_days", "must be 0-3650"));
        }
        if self.credential_rotation_days == Some(0) {
            return Err(bad(
                "credential_rotation_days",
                "must be at least 1 (leave it out for no rotation)",
            ));
        }
        if let Some(text) = &self.custom_access_details {
            if text.chars().count() > 400 {
                return Err(bad(
                    "custom_access_details",
                    format!("is {} characters; at most 400", text.chars().count()),
                ));
            }
        }
        if self.resource_owner_tag.is_some() && self.integration_owners.is_empty() {
            return Err(bad(
                "resource_owner_tag",
                "a resource owner needs integration_owners as well",
            ));
        }
        if self.user_prefix.is_empty()
            || self.user_prefix.len() > 32
            || !self
                .user_prefix
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase())
            || !self
                .user_prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || self.user_prefix.starts_with("pg_")
            || !self.user_prefix.ends_with('_')
        {
            return Err(bad(
                "user_prefix",
                format!(
                    "{:?} must be 1-32 lowercase letters, digits or '_', start with a letter, end with '_', and not start with pg_",
                    self.user_prefix
                ),
            ));
        }
        for (i, r) in self.grantable_roles.iter().enumerate() {
            check_identifier(r)
                .map_err(|m| bad(&format!("grantable_roles[{i}]"), format!("{r:?} {m}")))?;
        }
        for (i, r) in self.privileged_grantable_roles.iter().enumerate() {
            if !self.grantable_roles.contains(r) {
                return Err(bad(
                    &format!("privileged_grantable_roles[{i}]"),
                    format!("{r:?} is not in grantable_roles"),
                ));
            }
        }
        check_identifier(&self.holding_role)
            .map_err(|m| bad("holding_role", format!("{:?} {m}", self.holding_role)))?;
        if self.holding_role.starts_with("pg_")
            || crate::engine::roles::CLOUD_ADMIN_ROLES.contains(&self.holding_role.as_str())
        {
            return Err(bad(
                "holding_role",
                format!(
                    "{:?} is a predefined or cloud admin role; name a powerless role",
                    self.holding_role
                ),
            ));
        }
        if let AdminAuth::Iam { username } = &self.admin {
            if *username == self.holding_role {
                return Err(bad("holding_role", "must not be the admin"));
            }
        }
        if self.profile_retention_days > 3650 {
            return Err(bad("profile_retention_days", "at most 3650"));
        }
        if !self.audit_classes.is_empty() {
            crate::engine::pgaudit::log_setting(&self.audit_classes)
                .map_err(|m| bad("audit_classes", m))?;
        }
        self.line_prefix()
            .map_err(|e| bad("log_line_prefix", e.message))?;
        Ok(())
    }

    /// The `pgaudit.log` value for this integration's login roles, when it audits sessions.
    pub fn audit_setting(&self) -> Option<String> {
        if !self.enable_audit {
            return None;
        }
        if self.audit_classes.is_empty() {
            return Some(crate::engine::pgaudit::DEFAULT_CLASSES.join(", "));
        }
        crate::engine::pgaudit::log_setting(&self.audit_classes).ok()
    }

    /// How this integration's server log lines start.
    pub fn line_prefix(
        &self,
    ) -> Result<crate::audit::server_log::LinePrefix, crate::audit::server_log::PrefixError> {
        crate::audit::server_log::LinePrefix::parse(
            self.log_line_prefix
                .as_deref()
                .unwrap_or(crate::audit::server_log::RDS_LOG_LINE_PREFIX),
        )
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or(5432)
    }

    /// The database for cluster-wide statements.
    pub fn maintenance_database(&self) -> &str {
        self.database.as_deref().unwrap_or("postgres")
    }

    /// What `pgjit doctor` checks this integration's server against.
    pub fn doctor_scope(&self) -> crate::engine::doctor::DoctorScope<'_> {
        crate::engine::doctor::DoctorScope {
            kind: self.kind,
            maintenance_database: self.maintenance_database(),
            holding_role: &self.holding_role,
            user_prefix: &self.user_prefix,
            grantable_roles: &self.grantable_roles,
            enable_audit: self.enable_audit,
            audit_required: self.audit_required,
            ca_bundle: self.ca_bundle.as_deref(),
        }
    }
}

/// The `admin` field of an integration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "auth", rename_all = "lowercase", deny_unknown_fields)]
pub enum AdminAuth {
    /// A Secrets Manager secret holding `{"username":…,"password":…}` (RDS format).
    Password { secret_id: String },
    /// RDS IAM authentication as `username`; the token is generated for each connection.
    Iam { username: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"name":"orders-prod","kind":"postgres","host":"db.internal","admin":{"auth":"password","secret_id":"pgjit/admin"},
        "max_duration_seconds":3600,"user_cleanup_after_days":7,"ssl_mode":"require"}"#;

    fn with(change: &str) -> Result<Integration, IntegrationError> {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        let patch: serde_json::Value = serde_json::from_str(change).unwrap();
        for (k, val) in patch.as_object().unwrap() {
            if val.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = val.clone();
            }
        }
        Integration::from_json(&v.to_string())
    }

    #[test]
    fn a_good_integration_has_defaults() {
        let i = Integration::from_json(GOOD).unwrap();
        assert_eq!(
            (i.port(), i.maintenance_database(), i.user_prefix.as_str()),
            (5432, "postgres", "pgjit_")
        );
        assert_eq!(i.access_mode, AccessMode::Password);
        assert_eq!(i.ssl_mode, SslMode::Require);
        assert!(
            i.grantable_roles.is_empty(),
            "no role is grantable unless listed"
        );
        assert_eq!(i.holding_role, DEFAULT_HOLDING_ROLE);
        assert!(!i.allow_self_approval);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (r#"{"name":"has space"}"#, "name"),
            (r#"{"name":""}"#, "name"),
            (r#"{"kind":"mysql"}"#, "kind"),
            (r#"{"host":null}"#, "host"),
            (r#"{"port":0}"#, "port"),
            (r#"{"port":"5432"}"#, "port"),
            (r#"{"port":70000}"#, "port"),
            (r#"{"ssl_mode":"verify_full"}"#, "ssl_mode"),
            (r#"{"max_duration_seconds":0}"#, "max_duration_seconds"),
            (r#"{"max_duration_seconds":-5}"#, "max_duration_seconds"),
            (r#"{"max_duration_seconds":null}"#, "max_duration_seconds"),
            (
                r#"{"max_total_duration_seconds":60}"#,
                "max_total_duration_seconds",
            ),
            (r#"{"resource_owner_tag":"team"}"#, "resource_owner_tag"),
            (r#"{"access_mode":"iam"}"#, "access_mode"),
            (r#"{"admin":{"auth":"iam","username":"x"}}"#, "admin"),
            (
                r#"{"admin":{"auth":"password","secret_id":""}}"#,
                "admin.secret_id",
            ),
            (r#"{"admin":{"auth":"kerberos"}}"#, "admin.auth"),
            (r#"{"user_prefix":"PG"}"#, "user_prefix"),
            (r#"{"user_prefix":"pg_x"}"#, "user_prefix"),
            (r#"{"user_prefix":"pgjit"}"#, "user_prefix"),
            (
                r#"{"privileged_grantable_roles":["app_owner"]}"#,
                "privileged_grantable_roles[0]",
            ),
            (r#"{"holding_role":"pg_monitor"}"#, "holding_role"),
            (r#"{"holding_role":"rds_superuser"}"#, "holding_role"),
            (r#"{"grantable_roles":["ok",""]}"#, "grantable_roles[1]"),
            (r#"{"instance_id":"db-1"}"#, "instance_id"),
            (
                r#"{"credential_rotation_days":0}"#,
                "credential_rotation_days",
            ),
            (r#"{"colour":"blue"}"#, "colour"),
        ];
        let long_details = format!(r#"{{"custom_access_details":"{}"}}"#, "é".repeat(401));
        let cases = cases
            .iter()
            .map(|(c, f)| (c.to_string(), *f))
            .chain([(long_details, "custom_access_details")]);
        for (change, field) in cases {
            let err = with(&change).expect_err(&change);
            assert_eq!(err.field, field, "{change}: {err}");
        }
        // rds without host needs instance_id; with it, and iam, it is fine.
        let rds = r#"{"name":"r","kind":"rds","instance_id":"db-1","region":"eu-west-1","admin":{"auth":"iam","username":"pgjit_admin"},"access_mode":"iam","max_duration_seconds":60}"#;
        Integration::from_json(rds).unwrap();
        let err = Integration::from_json(&rds.replace(r#""instance_id":"db-1","#, "")).unwrap_err();
        assert_eq!(err.field, "instance_id");
        assert!(
            with(r#"{"resource_owner_tag":"team","integration_owners":["a@corp.com"]}"#).is_ok()
        );
        assert!(with(&format!(
            r#"{{"custom_access_details":"{}"}}"#,
            "é".repeat(400)
        ))
        .is_ok());
    }
}
