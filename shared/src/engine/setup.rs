//! Preparing the admin role pgjit logs in as (`pgjit setup-sql`); [`crate::engine::doctor`] checks it.
//!
//! The admin is never a superuser: it is what the cloud providers give (CREATEROLE plus
//! privileges WITH GRANT OPTION), so pgjit can only hand out what it was itself handed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::access::check_identifier;
use crate::engine::postgres::{ident, literal};

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
pub(crate) fn managed_role_pattern(prefix: &str) -> String {
    format!("^{prefix}([a-z0-9_]+_[a-z0-9]{{8}}|p_[0-9a-f]{{16}})$")
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
