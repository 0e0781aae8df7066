//! `pgjit doctor`: connects as the admin and reports, by name, each capability pgjit needs of a
//! server (the admin's powers, the holding role, each database, session audit), with the fix.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::engine::postgres::{ConnectError, Connector};
use crate::engine::setup::{managed_role_pattern, Flavor};

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

