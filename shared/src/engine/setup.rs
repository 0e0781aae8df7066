//! Preparing the admin role pgjit logs in as (`pgjit setup-sql`) and checking it (`pgjit doctor`).
//!
//! The admin is never a superuser: it is what the cloud providers give (CREATEROLE plus
//! privileges WITH GRANT OPTION), so pgjit can only hand out what it was itself handed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::access::check_identifier;
use crate::engine::postgres::{ident, literal, ConnectError, Connector};

/// Where the PostgreSQL server runs; it decides the cloud admin role and IAM support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    Postgres,
    Rds,
    Aurora,
    Azure,
    Cloudsql,
    Alloydb,
}

impl Flavor {
    pub const ALL: [Flavor; 6] = [Flavor::Postgres, Flavor::Rds, Flavor::Aurora, Flavor::Azure, Flavor::Cloudsql, Flavor::Alloydb];

    /// Whether its servers' certificates chain to Amazon's RDS CAs, which pgjit carries and
    /// trusts by default for it (every other flavor names its roots in `ca_bundle`).
    pub fn has_rds_certificates(self) -> bool {
        matches!(self, Flavor::Rds | Flavor::Aurora)
    }

    /// The CAs trusted for this flavor when the integration names no `ca_bundle` of its own.
    pub fn default_ca_bundle(self) -> Option<&'static str> {
        self.has_rds_certificates().then_some(crate::engine::postgres::RDS_CA_BUNDLE)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Postgres => "postgres",
            Flavor::Rds => "rds",
            Flavor::Aurora => "aurora",
            Flavor::Azure => "azure",
            Flavor::Cloudsql => "cloudsql",
            Flavor::Alloydb => "alloydb",
        }
    }

    /// The provider's admin role the master user holds and can pass on, if any.
    pub fn cloud_admin_role(self) -> Option<&'static str> {
        match self {
            Flavor::Postgres => None,
            Flavor::Rds | Flavor::Aurora => Some("rds_superuser"),
            Flavor::Azure => Some("azure_pg_admin"),
            Flavor::Cloudsql => Some("cloudsqlsuperuser"),
            Flavor::Alloydb => Some("alloydbsuperuser"),
        }
    }

    /// Whether IAM access mode (`rds_iam`) exists on this flavor.
    pub fn supports_iam(self) -> bool {
        matches!(self, Flavor::Rds | Flavor::Aurora)
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Flavor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Flavor::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown flavor {s:?} (expected postgres, rds, aurora, azure, cloudsql or alloydb)"))
    }
}

/// The SQL that prepares `admin_user` on `flavor`. Run it as the superuser or master user in
/// every database pgjit should manage (the role part is cluster-wide and runs harmlessly again).
/// It creates the role only if it is missing, never sets a password (set one yourself, or use IAM
/// authentication), and can be run again at any time, e.g. after new schemas appear.
///
/// It grants only what pgjit uses, each line saying why, and never the provider's admin role
/// (`rds_superuser`, …): a member of it could hand out far more than any approval asks for.
pub fn setup_sql(flavor: Flavor, admin_user: &str, holding_role: &str, options: &SetupOptions) -> Result<String, String> {
    check_identifier(admin_user).map_err(|m| format!("admin user {admin_user:?} {m}"))?;
    check_identifier(holding_role).map_err(|m| format!("holding role {holding_role:?} {m}"))?;
    if holding_role == admin_user {
        return Err("the holding role must not be the admin: what departed users created must never run with the admin's rights".into());
    }
    let holding_ident = ident(holding_role);
    let holding_literal = literal(holding_role);
    let admin_ident = ident(admin_user);
    // The name goes into DO blocks as a literal, and those bodies are dollar-quoted.
    let admin_literal = literal(admin_user);
    if admin_user.contains('$') || holding_role.contains('$') {
        return Err(format!("admin user {admin_user:?} / holding role {holding_role:?}: '$' is not supported in these names"));
    }
    for role in &options.grantable_roles {
        check_identifier(role).map_err(|m| format!("grantable role {role:?} {m}"))?;
        if role == admin_user || role == holding_role {
            return Err(format!("grantable role {role:?} is pgjit's own role"));
        }
    }
    let prefix = &options.user_prefix;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') || !prefix.ends_with('_') {
        return Err(format!("user prefix {prefix:?} must be lowercase letters, digits and '_', ending in '_'"));
    }
    let mut sql = String::new();
    sql.push_str(&format!(
        "-- pgjit admin set-up for {flavor}: run as the superuser / master user in every database pgjit manages.\n\
         -- Safe to run again. It sets no password: set one (ALTER ROLE … PASSWORD) or use IAM authentication.\n\
         \n\
         -- Only the catalog's functions: a function planted in public (open to every login before 15) must\n\
         -- never run as the master user.\n\
         SET search_path = pg_catalog, pg_temp;\n\
         \n\
         DO $pgjit$\nBEGIN\n  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {admin_literal}) THEN\n    CREATE ROLE {admin_ident} LOGIN CREATEROLE;\n  END IF;\nEND\n$pgjit$;\n\
         -- CREATEROLE: create, alter and drop the temporary login roles and the profile roles.\n\
         ALTER ROLE {admin_ident} LOGIN CREATEROLE;\n\
         -- pg_signal_backend: end the temporary users' sessions at revoke.\n\
         GRANT pg_signal_backend TO {admin_ident};\n\
         -- Session audit (enable_audit): from PostgreSQL 15 the admin may be allowed to set pgaudit.log (the classes)\n\
         -- and pgaudit.log_relation (each table named) on the temporary users (before 15 only a superuser, or on\n\
         -- RDS rds_superuser, can). Skipped with a NOTICE where the one running this may not grant them.\n\
         DO $pgjit$\nBEGIN\n  IF current_setting('server_version_num')::int >= 150000 THEN\n\
         \x20   EXECUTE format('GRANT SET ON PARAMETER pgaudit.log, pgaudit.log_relation TO %I', {admin_literal});\n  END IF;\n\
         EXCEPTION WHEN insufficient_privilege THEN\n\
         \x20 RAISE NOTICE 'pgjit: not granted SET ON PARAMETER pgaudit.log, pgaudit.log_relation (%); session audit needs them', SQLERRM;\nEND\n$pgjit$;\n"
    ));
    if let Some(role) = flavor.cloud_admin_role() {
        sql.push_str(&format!(
            "-- Not granted: {role}. pgjit needs none of its powers, and an admin holding it could hand out more\n\
             -- than any approval asks for (`pgjit doctor` warns if the admin is a member). Where {role}\n\
             -- refuses to pass on pg_signal_backend, ask the provider's support rather than granting {role}.\n"
        ));
    }
    if flavor.supports_iam() {
        sql.push_str(&format!("-- IAM access mode: the temporary users are made members of rds_iam.\nGRANT rds_iam TO {admin_ident} WITH ADMIN OPTION;\n"));
    }
    sql.push_str(&format!(
        "\n-- The holding role: owns what departed temporary users created (REASSIGN OWNED), so none of it ever\n\
         -- runs with the admin's rights. NOLOGIN, no privileges, no memberships; only the admin is a member.\n\
         DO $pgjit$\nBEGIN\n  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {holding_literal}) THEN\n    CREATE ROLE {holding_ident} NOLOGIN;\n  END IF;\nEND\n$pgjit$;\n\
         ALTER ROLE {holding_ident} NOLOGIN;\n\
         COMMENT ON ROLE {holding_ident} IS 'pgjit: owns what departed temporary users created; no privileges, no login';\n\
         -- Membership: REASSIGN OWNED needs the admin to hold the rights of the role it hands objects to.\n\
         GRANT {holding_ident} TO {admin_ident};\n\
         \n\
         -- PostgreSQL 13 and 14 let every login create objects in schema public (15 took that away): a\n\
         -- temporary user could plant functions there without any grant. Unless an application relies on\n\
         -- it, take it away in each database (`pgjit doctor` warns while PUBLIC still has it):\n\
         --   REVOKE CREATE ON SCHEMA public FROM PUBLIC;\n"
    ));
    for role in &options.grantable_roles {
        sql.push_str(&format!(
            "\n-- Grantable role {role_text}: from PostgreSQL 16 handing out membership needs ADMIN OPTION (before,\n\
             -- CREATEROLE sufficed). INHERIT FALSE, SET FALSE: the admin may hand it out without holding its rights.\n\
             DO $pgjit$\nBEGIN\n  IF current_setting('server_version_num')::int >= 160000 THEN\n\
             \x20   EXECUTE format('GRANT %I TO %I WITH ADMIN TRUE, INHERIT FALSE, SET FALSE', {role_literal}, {admin_literal});\n  END IF;\nEND\n$pgjit$;\n",
            role_text = ident(role),
            role_literal = literal(role),
        ));
    }
    sql.push_str(&format!(
        "\n-- PostgreSQL 16 and later: a role pgjit created before an upgrade from 15 or older is one the admin\n\
         -- holds no ADMIN OPTION on, so revoke and cleanup could not alter or drop it. Give it back\n\
         -- (roles with pgjit's name shape and prefix {prefix_text} only).\n\
         DO $pgjit$\nDECLARE\n  r record;\nBEGIN\n  IF current_setting('server_version_num')::int >= 160000 THEN\n\
         \x20   FOR r IN SELECT rolname FROM pg_roles\n\
         \x20            WHERE rolname ~ {shape} AND rolname <> {admin_literal} AND NOT rolsuper\n\
         \x20              AND NOT pg_has_role({admin_literal}, oid, 'MEMBER WITH ADMIN OPTION')\n\
         \x20   LOOP\n\
         \x20     EXECUTE format('GRANT %I TO %I WITH ADMIN TRUE, INHERIT FALSE, SET FALSE', r.rolname, {admin_literal});\n\
         \x20   END LOOP;\n  END IF;\nEND\n$pgjit$;\n",
        prefix_text = literal(prefix),
        shape = literal(&managed_role_pattern(prefix)),
    ));
    sql.push_str(&format!(
        "\n-- In this database: every privilege WITH GRANT OPTION, so the admin can delegate it.\n\
         DO $pgjit$\nDECLARE\n  admin text := {admin_literal};\n  s record;\n  o record;\nBEGIN\n\
         \x20 EXECUTE format('GRANT CONNECT, CREATE, TEMPORARY ON DATABASE %I TO %I WITH GRANT OPTION', current_database(), admin);\n\
         \x20 FOR s IN SELECT nspname FROM pg_namespace\n\
         \x20          WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp\\_%'\n\
         \x20 LOOP\n\
         \x20   EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO %I WITH GRANT OPTION', s.nspname, admin);\n\
         \x20   EXECUTE format('GRANT ALL ON ALL TABLES IN SCHEMA %I TO %I WITH GRANT OPTION', s.nspname, admin);\n\
         \x20   EXECUTE format('GRANT ALL ON ALL SEQUENCES IN SCHEMA %I TO %I WITH GRANT OPTION', s.nspname, admin);\n\
         \x20   EXECUTE format('GRANT ALL ON ALL FUNCTIONS IN SCHEMA %I TO %I WITH GRANT OPTION', s.nspname, admin);\n\
         \x20 END LOOP;\n\
         \x20 -- Objects created later by the roles that own objects today are covered as well.\n\
         \x20 FOR o IN SELECT DISTINCT pg_get_userbyid(c.relowner) AS owner, n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace\n\
         \x20          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'\n\
         \x20            AND pg_get_userbyid(c.relowner) <> admin\n\
         \x20 LOOP\n\
         \x20   -- Only an owner's member may set its default privileges (on RDS the master is not a member\n\
         \x20   -- of every owner): such a statement is skipped with a NOTICE naming it, never the whole script.\n\
         \x20   BEGIN\n\
         \x20     EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT ALL ON TABLES TO %I WITH GRANT OPTION', o.owner, o.nspname, admin);\n\
         \x20     EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT ALL ON SEQUENCES TO %I WITH GRANT OPTION', o.owner, o.nspname, admin);\n\
         \x20     EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT ALL ON FUNCTIONS TO %I WITH GRANT OPTION', o.owner, o.nspname, admin);\n\
         \x20   EXCEPTION WHEN insufficient_privilege THEN\n\
         \x20     RAISE NOTICE 'pgjit: skipped default privileges for objects role % creates in schema % (%)', o.owner, o.nspname, SQLERRM;\n\
         \x20   END;\n\
         \x20 END LOOP;\nEND\n$pgjit$;\n"
    ));
    Ok(sql)
}

/// What `setup-sql` prepares besides the admin itself.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// Existing roles requests may ask membership of (the integration's `grantable_roles`).
    pub grantable_roles: Vec<String>,
    /// The integration's `user_prefix`, for repairing roles created before an upgrade to 16.
    pub user_prefix: String,
}

impl Default for SetupOptions {
    fn default() -> Self {
        SetupOptions { grantable_roles: Vec::new(), user_prefix: "pgjit_".into() }
    }
}

/// A regular expression for the names pgjit gives roles with `prefix` (login and profile roles).
fn managed_role_pattern(prefix: &str) -> String {
    format!("^{prefix}([a-z0-9_]+_[a-z0-9]{{8}}|p_[0-9a-f]{{16}})$")
}

/// One thing the doctor checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The capability, by name: `CREATEROLE`, `grant option on database "app"`, …
    pub capability: String,
    pub ok: bool,
    pub detail: String,
    /// A risk rather than something missing: pgjit works, but with more power than it needs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warning: bool,
}

impl Finding {
    pub(crate) fn check(capability: impl Into<String>, ok: bool, detail: impl Into<String>) -> Finding {
        Finding { capability: capability.into(), ok, detail: detail.into(), warning: false }
    }

    pub(crate) fn warn(capability: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding { capability: capability.into(), ok: false, detail: detail.into(), warning: true }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("the server's TLS certificate is not signed by {expected}: {fix}")]
    Certificate {
        expected: String,
        fix: String,
        #[source]
        source: ConnectError,
    },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("reading the catalog of database {database:?} failed")]
    Query {
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Session audit: whether pgaudit is loaded and the admin may set `pgaudit.log` on roles
/// (missing when audit is required, a warning otherwise), and what makes it less complete.
async fn audit_findings(client: &Client, scope: &DoctorScope<'_>) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let cloud = matches!(scope.kind, Flavor::Rds | Flavor::Aurora);
    let readiness = crate::engine::pgaudit::readiness(client, cloud).await?;
    let mut findings = Vec::new();
    if readiness.can_audit() {
        findings.push(Finding::check("session audit", true, "pgaudit is loaded and the admin can set pgaudit.log on the temporary users"));
    }
    for blocker in readiness.blockers {
        findings.push(if scope.audit_required { Finding::check("session audit", false, blocker) } else { Finding::warn("session audit", format!("{blocker} (grants are made without audit: audit_required is false)")) });
    }
    findings.extend(readiness.gaps.into_iter().map(|gap| Finding::warn("session audit", gap)));
    Ok(findings)
}

/// What the doctor checks a server against: the parts of an integration it reads, as plain
/// values (the integration itself is a contract the engine does not depend on).
#[derive(Debug, Clone, Copy)]
pub struct DoctorScope<'a> {
    pub kind: Flavor,
    pub maintenance_database: &'a str,
    pub holding_role: &'a str,
    pub user_prefix: &'a str,
    pub grantable_roles: &'a [String],
    pub enable_audit: bool,
    pub audit_required: bool,
    /// The integration's own `ca_bundle`, if it names one.
    pub ca_bundle: Option<&'a str>,
}

/// Connects as the admin and reports each capability pgjit needs, by name. `databases`: the
/// databases to check (empty: every database that accepts connections).
pub async fn doctor(connector: &Connector, scope: &DoctorScope<'_>, databases: &[String]) -> Result<Vec<Finding>, DoctorError> {
    let (flavor, maintenance_database, holding_role) = (scope.kind, scope.maintenance_database, scope.holding_role);
    let query_err = |database: &str| {
        let database = database.to_owned();
        move |source| DoctorError::Query { database, source }
    };
    let client = connector.connect(maintenance_database).await.map_err(|e| certificate_error(e, scope))?;
    let mut findings = Vec::new();
    let row = client
        .query_one(
            "SELECT rolcreaterole, rolsuper, \
                    pg_has_role(current_user, 'pg_signal_backend', 'USAGE') \
                    OR EXISTS (SELECT 1 FROM pg_roles WHERE rolname = ANY($1) AND pg_has_role(current_user, oid, 'USAGE')), \
                    EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_iam'), \
                    EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_iam' AND (pg_has_role(current_user, oid, 'MEMBER WITH ADMIN OPTION') \
                           OR (rolcreaterole AND current_setting('server_version_num')::int < 160000))), \
                    ARRAY(SELECT c.rolname::text FROM pg_roles c WHERE c.rolname = ANY($1) AND pg_has_role(current_user, c.oid, 'MEMBER') ORDER BY 1), \
                    ARRAY(SELECT a FROM unnest(ARRAY[CASE WHEN rolcreatedb THEN 'CREATEDB' END, CASE WHEN rolreplication THEN 'REPLICATION' END, \
                                                      CASE WHEN rolbypassrls THEN 'BYPASSRLS' END]) a WHERE a IS NOT NULL) \
             FROM pg_roles WHERE rolname = current_user",
            &[&crate::engine::roles::CLOUD_ADMIN_ROLES.to_vec()],
        )
        .await
        .map_err(query_err(maintenance_database))?;
    let (createrole, superuser, signal, iam_exists, iam_admin): (bool, bool, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let (cloud_admin_of, surplus_attributes): (Vec<String>, Vec<String>) = (row.get(5), row.get(6));
    if !cloud_admin_of.is_empty() {
        findings.push(Finding::warn(
            "no cloud admin role",
            format!("the admin is a member of {}: pgjit needs none of it; REVOKE it after granting what `pgjit setup-sql` lists", cloud_admin_of.join(", ")),
        ));
    }
    if !surplus_attributes.is_empty() {
        findings.push(Finding::warn("no surplus attributes", format!("the admin has {}, which pgjit never uses", surplus_attributes.join(", "))));
    }
    findings.push(holding_finding(&client, holding_role).await.map_err(query_err(maintenance_database))?);
    findings.extend(role_admin_findings(&client, scope).await.map_err(query_err(maintenance_database))?);
    findings.push(Finding::check(
        "CREATEROLE",
        createrole,
        if createrole { "can create and drop roles" } else { "ALTER ROLE … CREATEROLE is needed to create temporary users" },
    ));
    findings.push(Finding::check(
        "end sessions",
        signal,
        if signal {
            "member of pg_signal_backend"
        } else {
            "GRANT pg_signal_backend so revoke can end open sessions"
        },
    ));
    if superuser {
        findings.push(Finding::warn("not a superuser", "the admin is a superuser: pgjit works, but a non-superuser admin limits what a mistake can do"));
    }
    if flavor.supports_iam() {
        findings.push(Finding::check(
            "grant rds_iam",
            iam_admin,
            match (iam_exists, iam_admin) {
                (false, _) => "role rds_iam does not exist (IAM authentication is not enabled on this instance)",
                (true, false) => "GRANT rds_iam TO the admin WITH ADMIN OPTION is needed for IAM access mode",
                (true, true) => "can make temporary users members of rds_iam",
            },
        ));
    }
    if scope.enable_audit {
        findings.extend(audit_findings(&client, scope).await.map_err(query_err(maintenance_database))?);
    }
    let databases = if databases.is_empty() {
        crate::engine::catalog::databases(&client).await.map_err(query_err(maintenance_database))?
    } else {
        databases.to_vec()
    };
    for database in &databases {
        let other;
        let c = if database == maintenance_database {
            &client
        } else {
            match connector.connect(database).await {
                Ok(c) => {
                    other = c;
                    &other
                }
                Err(e) => {
                    findings.push(Finding::check(format!("connect to database {database:?}"), false, crate::engine::postgres::error_chain(&e)));
                    continue;
                }
            }
        };
        findings.extend(check_database(c, database).await.map_err(query_err(database))?);
    }
    Ok(findings)
}

/// Grant options in the connected database: the database itself, then each schema with the
/// tables, sequences and functions it lacks (one query for all schemas).
async fn check_database(client: &Client, database: &str) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let mut findings = Vec::new();
    let db = client
        .query_one(
            "SELECT has_database_privilege(current_database(), 'CONNECT WITH GRANT OPTION') \
                AND has_database_privilege(current_database(), 'TEMPORARY WITH GRANT OPTION') \
                AND has_database_privilege(current_database(), 'CREATE WITH GRANT OPTION')",
            &[],
        )
        .await?;
    let ok: bool = db.get(0);
    findings.push(Finding::check(
        format!("grant option on database {database:?}"),
        ok,
        if ok { "CONNECT, CREATE, TEMPORARY" } else { "run pgjit setup-sql in this database" },
    ));
    let rows = client
        .query(
            "SELECT n.nspname::text, \
                    has_schema_privilege(n.oid, 'USAGE WITH GRANT OPTION') AND has_schema_privilege(n.oid, 'CREATE WITH GRANT OPTION'), \
                    ARRAY(SELECT c.relname::text FROM pg_class c WHERE c.relnamespace = n.oid AND c.relkind IN ('r','p','v','m','f') \
                          AND NOT (has_table_privilege(c.oid, 'SELECT WITH GRANT OPTION') AND has_table_privilege(c.oid, 'INSERT WITH GRANT OPTION') \
                               AND has_table_privilege(c.oid, 'UPDATE WITH GRANT OPTION') AND has_table_privilege(c.oid, 'DELETE WITH GRANT OPTION')) ORDER BY 1), \
                    ARRAY(SELECT c.relname::text FROM pg_class c WHERE c.relnamespace = n.oid AND c.relkind = 'S' \
                          AND CASE WHEN c.relkind = 'S' THEN NOT has_sequence_privilege(c.oid, 'USAGE WITH GRANT OPTION') END ORDER BY 1), \
                    ARRAY(SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = n.oid \
                          AND NOT has_function_privilege(p.oid, 'EXECUTE WITH GRANT OPTION') ORDER BY 1) \
             FROM pg_namespace n \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
             ORDER BY 1",
            &[],
        )
        .await?;
    for r in rows {
        let schema: String = r.get(0);
        let schema_ok: bool = r.get(1);
        let tables: Vec<String> = r.get(2);
        let sequences: Vec<String> = r.get(3);
        let functions: Vec<String> = r.get(4);
        let mut gaps = Vec::new();
        if !schema_ok {
            gaps.push("USAGE/CREATE on the schema".to_owned());
        }
        for (what, names) in [("tables", &tables), ("sequences", &sequences), ("functions", &functions)] {
            if !names.is_empty() {
                let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
                let more = if names.len() > 5 { format!(" and {} more", names.len() - 5) } else { String::new() };
                gaps.push(format!("{what} {}{more}", shown.join(", ")));
            }
        }
        findings.push(Finding::check(
            format!("grant option on schema {database:?}.{schema:?}"),
            gaps.is_empty(),
            if gaps.is_empty() { "schema and every object in it".into() } else { format!("missing: {}", gaps.join("; ")) },
        ));
    }
    // 13 and 14 give every login CREATE on schema public: a temporary user could plant code there.
    let public_create: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a                             WHERE n.nspname = 'public' AND a.grantee = 0 AND a.privilege_type = 'CREATE')",
            &[],
        )
        .await?
        .get(0);
    if public_create {
        findings.push(Finding::warn(
            format!("no CREATE for PUBLIC in {database:?}.\"public\""),
            "every login may create objects in schema public (the default before PostgreSQL 15), temporary users included: \
             REVOKE CREATE ON SCHEMA public FROM PUBLIC unless an application relies on it",
        ));
    }
    Ok(findings)
}

/// A connection refused over an unknown certificate authority, said with the CA pgjit expected
/// and how to fix it; any other failure as it is.
fn certificate_error(e: ConnectError, scope: &DoctorScope<'_>) -> DoctorError {
    let chain = crate::engine::postgres::error_chain(&e);
    if !(chain.contains("UnknownIssuer") || chain.contains("unknown issuer")) {
        return DoctorError::Connect(e);
    }
    let (expected, fix) = match (scope.ca_bundle, scope.kind.default_ca_bundle()) {
        (Some(ca), _) if ca.trim() == crate::engine::postgres::SYSTEM_ROOTS => {
            ("a public root (Mozilla's list, ca_bundle \"system\")".to_owned(), "give the CA that signed the server's certificate as ca_bundle".to_owned())
        }
        (Some(_), _) => ("the integration's ca_bundle (and nothing else)".to_owned(), "give the CA that signed the server's certificate as ca_bundle".to_owned()),
        (None, Some(_)) => (
            "Amazon's RDS certificate authorities (the bundle built into pgjit)".to_owned(),
            "if the instance uses a newer or a private CA, give its PEM as ca_bundle, or refresh the bundle with scripts/refresh-rds-ca.sh".to_owned(),
        ),
        (None, None) => ("no root at all".to_owned(), "give the server's CA as ca_bundle (PEM text or a file path), or \"system\" for the public web roots".to_owned()),
    };
    DoctorError::Certificate { expected, fix, source: e }
}

/// Whether the admin can hand out each grantable role on this server's version (from 16 that
/// takes ADMIN OPTION), and, from 16, whether it can still manage the roles pgjit created before
/// an upgrade (it holds no ADMIN OPTION on those).
async fn role_admin_findings(client: &Client, scope: &DoctorScope<'_>) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let mut findings = Vec::new();
    let version: i32 = client.query_one("SELECT current_setting('server_version_num')::int", &[]).await?.get(0);
    let setup_hint = |extra: &str| format!("run `pgjit setup-sql --flavor {} --admin-user NAME{extra}` as the master user", scope.kind);
    for role in scope.grantable_roles {
        let row = client
            .query_opt(
                "SELECT CASE WHEN current_setting('server_version_num')::int >= 160000                              THEN pg_has_role(current_user, r.oid, 'MEMBER WITH ADMIN OPTION')                              ELSE (SELECT rolcreaterole FROM pg_roles WHERE rolname = current_user) AND NOT r.rolsuper END                  FROM pg_roles r WHERE r.rolname = $1",
                &[role],
            )
            .await?;
        let capability = format!("grant role {role:?}");
        findings.push(match row.map(|r| r.get::<_, bool>(0)) {
            None => Finding::check(capability, false, "the role does not exist (it is in grantable_roles)"),
            Some(true) => Finding::check(capability, true, "the admin can hand out membership"),
            Some(false) => Finding::check(
                capability,
                false,
                format!("PostgreSQL {} needs ADMIN OPTION on it: {}", version / 10000, setup_hint(&format!(" --grantable-role {role}"))),
            ),
        });
    }
    if version >= 160000 {
        let stranded: Vec<String> = client
            .query(
                "SELECT rolname::text FROM pg_roles WHERE rolname ~ $1 AND rolname <> current_user AND NOT rolsuper                    AND NOT pg_has_role(current_user, oid, 'MEMBER WITH ADMIN OPTION') ORDER BY 1",
                &[&managed_role_pattern(scope.user_prefix)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        findings.push(if stranded.is_empty() {
            Finding::check("manage pgjit's roles", true, "ADMIN OPTION on every role pgjit created")
        } else {
            let shown: Vec<&str> = stranded.iter().take(5).map(String::as_str).collect();
            Finding::check(
                "manage pgjit's roles",
                false,
                format!(
                    "no ADMIN OPTION on {} role(s) pgjit created before an upgrade to 16 ({}{}): revoke and cleanup cannot alter or drop them; {}",
                    stranded.len(),
                    shown.join(", "),
                    if stranded.len() > 5 { ", …" } else { "" },
                    setup_hint(&format!(" --user-prefix {}", scope.user_prefix))
                ),
            )
        });
    }
    Ok(findings)
}

/// The holding role exists, is powerless (NOLOGIN, no attributes, a member of nothing, no member
/// but the admin) and the admin is a member, so delete can hand objects to it.
async fn holding_finding(client: &Client, holding_role: &str) -> Result<Finding, tokio_postgres::Error> {
    let capability = format!("holding role {holding_role:?}");
    let row = client
        .query_opt(
            "SELECT ARRAY(SELECT a FROM unnest(ARRAY[CASE WHEN r.rolcanlogin THEN 'LOGIN' END, CASE WHEN r.rolsuper THEN 'SUPERUSER' END, \
                        CASE WHEN r.rolcreaterole THEN 'CREATEROLE' END, CASE WHEN r.rolcreatedb THEN 'CREATEDB' END, \
                        CASE WHEN r.rolreplication THEN 'REPLICATION' END, CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END, \
                        CASE WHEN r.rolname = current_user THEN 'it is the admin' END, \
                        CASE WHEN EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid) THEN 'member of other roles' END, \
                        CASE WHEN EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles x ON x.oid = m.member \
                                          WHERE m.roleid = r.oid AND x.rolname <> current_user) THEN 'roles besides the admin are members' END]) a \
                        WHERE a IS NOT NULL), \
                    pg_has_role(current_user, r.oid, 'USAGE') \
             FROM pg_roles r WHERE r.rolname = $1",
            &[&holding_role],
        )
        .await?;
    Ok(match row {
        None => Finding::check(capability, false, "missing: run `pgjit setup-sql` (pgjit would create it at the first delete)"),
        Some(r) => {
            let wrong: Vec<String> = r.get(0);
            let member: bool = r.get(1);
            if !wrong.is_empty() {
                Finding::check(capability, false, format!("not powerless: {}; whatever departed users created would gain that", wrong.join(", ")))
            } else if !member {
                Finding::check(capability, false, "the admin is not a member (REASSIGN OWNED needs it): run `pgjit setup-sql`")
            } else {
                Finding::check(capability, true, "NOLOGIN, no privileges or memberships; the admin may hand objects to it")
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rds_bundle_is_trusted_for_rds_and_aurora_only() {
        let bundle = crate::engine::postgres::RDS_CA_BUNDLE;
        let certs = bundle.matches("-----BEGIN CERTIFICATE-----").count();
        assert!(certs >= 100, "{certs} certificates");
        crate::engine::postgres::tls::TlsConfigs::new(Some(bundle)).expect("every certificate parses");
        for kind in super::Flavor::ALL {
            let expected = matches!(kind, super::Flavor::Rds | super::Flavor::Aurora);
            assert_eq!(kind.default_ca_bundle().is_some(), expected, "{kind}");
        }
    }

    use super::*;

    #[test]
    fn every_flavor_has_sql_and_names_are_quoted() {
        for f in Flavor::ALL {
            let sql = setup_sql(f, "pgjit_admin", "pgjit_holding", &SetupOptions::default()).unwrap();
            assert!(sql.contains("CREATE ROLE \"pgjit_admin\" LOGIN CREATEROLE"), "{f}");
            assert!(sql.contains("WITH GRANT OPTION"), "{f}");
            assert_eq!(sql.contains("rds_iam"), f.supports_iam(), "{f}");
            assert!(sql.contains("GRANT pg_signal_backend TO \"pgjit_admin\""), "{f}");
            assert!(sql.contains("CREATE ROLE \"pgjit_holding\" NOLOGIN") && sql.contains("GRANT \"pgjit_holding\" TO \"pgjit_admin\""), "{f}");
            assert!(sql.contains("REVOKE CREATE ON SCHEMA public FROM PUBLIC"), "{f}: says how to close public on 13 and 14");
            assert!(sql.contains("\nSET search_path = pg_catalog, pg_temp;\n"), "{f}: no planted function runs as the master user");
            // The provider's admin role is never granted: no statement grants it.
            for role in crate::engine::roles::CLOUD_ADMIN_ROLES {
                let granted = sql.lines().filter(|l| !l.trim_start().starts_with("--")).any(|l| l.contains(role));
                assert!(!granted, "{f}: {role} must not be granted");
            }
            assert_eq!(f.as_str().parse::<Flavor>().unwrap(), f);
        }
        assert!(setup_sql(Flavor::Postgres, "pgjit_admin", "pgjit_admin", &SetupOptions::default()).is_err(), "the holding role is never the admin");
        let options = SetupOptions { grantable_roles: vec!["report\"ing".into()], user_prefix: "jit_".into() };
        let sql = setup_sql(Flavor::Rds, "pgjit_admin", "pgjit_holding", &options).unwrap();
        assert!(sql.contains("GRANT %I TO %I WITH ADMIN TRUE, INHERIT FALSE, SET FALSE', 'report\"ing', 'pgjit_admin'"), "{sql}");
        assert!(sql.contains("'^jit_([a-z0-9_]+_[a-z0-9]{8}|p_[0-9a-f]{16})$'"), "{sql}");
        assert!(sql.contains("EXCEPTION WHEN insufficient_privilege THEN") && sql.contains("RAISE NOTICE 'pgjit: skipped default privileges"), "{sql}");
        for bad in [SetupOptions { grantable_roles: vec!["pgjit_admin".into()], ..SetupOptions::default() }, SetupOptions { user_prefix: "pgjit".into(), ..SetupOptions::default() }] {
            assert!(setup_sql(Flavor::Postgres, "pgjit_admin", "pgjit_holding", &bad).is_err(), "{bad:?}");
        }
        let sql = setup_sql(Flavor::Postgres, "o'brien \"x\"", "pgjit_holding", &SetupOptions::default()).unwrap();
        assert!(sql.contains(r#"CREATE ROLE "o'brien ""x""" LOGIN"#), "{sql}");
        assert!(sql.contains(r#"rolname = 'o''brien "x"'"#), "{sql}");
        assert!(setup_sql(Flavor::Postgres, "a$pgjit$b", "pgjit_holding", &SetupOptions::default()).is_err());
        assert!(setup_sql(Flavor::Postgres, &"a".repeat(64), "pgjit_holding", &SetupOptions::default()).is_err());
        assert!("mysql".parse::<Flavor>().unwrap_err().contains("mysql"));
    }
}
