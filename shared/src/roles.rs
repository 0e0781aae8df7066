//! Temporary login roles in PostgreSQL: grant, revoke and delete, as the SPEC's lifecycle says,
//! run as a non-superuser admin.
//!
//! Privileges go to a NOLOGIN *profile role* per distinct privilege set and database; the login
//! role only becomes a member of it. Granting straight to each user fails under concurrency
//! ("tuple concurrently updated") and at scale ("row is too big" on a table's ACL).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::access::{check_identifier, AccessSet, DatabaseAccess, Object, Privilege, Target};
use crate::postgres::{ident, is_retryable, literal, ConnectError, Connector};
use crate::secret::SecretString;

/// Key of the advisory lock that serialises pgjit's grants within one database.
const GRANT_LOCK: i64 = 0x7067_6a69_745f_6772; // "pgjit_gr"
/// Attempts of one transaction on XX000, 40001 and 40P01 before giving up.
const ATTEMPTS: u32 = 8;

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
    #[error("database {database:?}: {action} failed")]
    Sql {
        database: String,
        action: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl RoleError {
    fn sql(database: &str, action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> RoleError {
        let database = database.to_owned();
        move |source| RoleError::Sql { database, action, source }
    }
}

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
    /// Roles a request may ask membership of; `None`: any role but the dangerous ones.
    pub grantable_roles: Option<&'a [String]>,
    /// The database pgjit connects to for cluster-wide statements (CREATE ROLE).
    pub maintenance_database: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub username: String,
    /// The profile role used in each database.
    pub profiles: BTreeMap<String, String>,
    /// Whether the login role already existed (a repeated grant converged it instead).
    pub already_existed: bool,
}

/// A checked object with what must be granted on it and verified afterwards.
struct Resolved {
    statements: Vec<String>,
    /// (kind, oid, privilege) triples that `has_*_privilege` must confirm.
    checks: Vec<(&'static str, u32, String)>,
}

/// Creates (or, when repeated with the same username, converges) the login role with exactly the
/// access asked for. Every object is checked before anything is created; every database's
/// profile role is prepared before the login role is created, so a failure part-way leaves at
/// most unused profile roles, never a login.
pub async fn grant(connector: &Connector, spec: &GrantSpec<'_>) -> Result<Granted, RoleError> {
    let admin = connector.user().to_owned();
    check_login_name(spec.username, spec.prefix, &admin)?;
    if spec.access.databases.is_empty() {
        return Err(RoleError::Invalid("no access asked for".into()));
    }
    // One connection per database: privileges are per database, roles per cluster.
    let mut clients = Vec::new();
    for database in spec.access.databases.keys() {
        let client = connector.connect(database).await.map_err(|e| match e.db_error().map(|d| d.code().clone()) {
            Some(tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => RoleError::NotFound(vec![format!("database {database:?} does not exist")]),
            _ => RoleError::Connect(e),
        })?;
        clients.push(client);
    }
    // Check everything first: nothing is created when anything is missing or refused.
    let mut missing = Vec::new();
    let mut refused = Vec::new();
    let mut plans = Vec::new();
    for ((database, access), client) in spec.access.databases.iter().zip(&clients) {
        let profile = access.profile_role(spec.prefix, database);
        let plan = resolve(client, database, access, &profile, &admin, spec, &mut missing, &mut refused).await?;
        plans.push((database, profile, plan));
    }
    if !missing.is_empty() {
        return Err(RoleError::NotFound(missing));
    }
    if !refused.is_empty() {
        return Err(RoleError::Refused(refused));
    }
    let mut profiles = BTreeMap::new();
    for ((database, profile, plan), client) in plans.iter().zip(clients.iter_mut()) {
        prepare_profile(client, database, profile, plan).await?;
        profiles.insert((*database).clone(), profile.clone());
    }
    let mut memberships: Vec<&str> = profiles.values().map(String::as_str).collect();
    if matches!(spec.login, LoginMethod::Iam) {
        memberships.insert(0, "rds_iam");
    }
    let already_existed = create_login(&clients[0], spec, &admin, &memberships).await?;
    tracing::info!(db_user = spec.username, databases = profiles.len(), already_existed, "login role ready");
    Ok(Granted { username: spec.username.to_owned(), profiles, already_existed })
}

fn check_login_name(username: &str, prefix: &str, admin: &str) -> Result<(), RoleError> {
    check_identifier(username).map_err(|m| RoleError::Invalid(format!("username {username:?} {m}")))?;
    if username == admin {
        return Err(RoleError::Invalid(format!("username {username:?} is pgjit's own admin role")));
    }
    if prefix.is_empty() || !username.starts_with(prefix) {
        return Err(RoleError::Invalid(format!("username {username:?} does not carry the prefix {prefix:?}: pgjit only manages its own roles")));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn resolve(
    client: &Client,
    database: &str,
    access: &DatabaseAccess,
    profile: &str,
    admin: &str,
    spec: &GrantSpec<'_>,
    missing: &mut Vec<String>,
    refused: &mut Vec<String>,
) -> Result<Resolved, RoleError> {
    let sql = RoleError::sql;
    let to = ident(profile);
    let mut plan = Resolved { statements: Vec::new(), checks: Vec::new() };
    let privs = |set: &BTreeSet<Privilege>| set.iter().map(|p| p.as_sql()).collect::<Vec<_>>().join(", ");

    // Schemas, relations and sequences named by the request, in one query each.
    let schemas: Vec<String> = access
        .objects
        .keys()
        .filter_map(|o| match o {
            Object::Schema { schema } | Object::Table { schema, .. } | Object::Sequence { schema, .. } | Object::Function { schema, .. } => Some(schema.clone()),
            Object::Database => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // The schemas, every relation and sequence in them ('*' needs them all anyway), and the
    // database itself: three lookups sent together, one round trip.
    let (schema_rows, relation_rows, database_row) = futures_util::future::try_join3(
        client.query_typed("SELECT nspname::text, oid FROM pg_namespace WHERE nspname = ANY($1)", &[(&schemas, Type::TEXT_ARRAY)]),
        client.query_typed(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text, c.oid FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = ANY($1) AND c.relkind IN ('r','p','v','m','f','S')",
            &[(&schemas, Type::TEXT_ARRAY)],
        ),
        client.query_typed("SELECT oid FROM pg_database WHERE datname = current_database()", &[]),
    )
    .await
    .map_err(sql(database, "looking up schemas, tables and sequences"))?;
    let schema_oids: BTreeMap<String, u32> = schema_rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut relations: BTreeMap<(String, bool), Vec<(String, u32)>> = BTreeMap::new();
    for r in &relation_rows {
        let kind: String = r.get(2);
        relations.entry((r.get::<_, String>(0), kind == "S")).or_default().push((r.get(1), r.get(3)));
    }
    let database_oid: u32 = database_row.first().map(|r| r.get(0)).unwrap_or(0);

    for (object, set) in &access.objects {
        match object {
            Object::Database => {
                plan.statements.push(format!("GRANT {} ON DATABASE {} TO {to}", privs(set), ident(database)));
                for p in set {
                    plan.checks.push(("database", database_oid, p.as_sql().to_owned()));
                }
            }
            Object::Schema { schema } => match schema_oids.get(schema) {
                None => missing.push(format!("database {database:?}: schema {schema:?} does not exist")),
                Some(oid) => {
                    plan.statements.push(format!("GRANT {} ON SCHEMA {} TO {to}", privs(set), ident(schema)));
                    for p in set {
                        plan.checks.push(("schema", *oid, p.as_sql().to_owned()));
                    }
                }
            },
            Object::Table { schema, table: target } | Object::Sequence { schema, sequence: target } => {
                let is_seq = matches!(object, Object::Sequence { .. });
                let (kind, keyword, all) = if is_seq { ("sequence", "SEQUENCE", "ALL SEQUENCES") } else { ("table", "TABLE", "ALL TABLES") };
                if !schema_oids.contains_key(schema) {
                    missing.push(format!("database {database:?}: schema {schema:?} does not exist"));
                    continue;
                }
                let in_schema = relations.get(&(schema.clone(), is_seq)).map(Vec::as_slice).unwrap_or(&[]);
                let oids: Vec<u32> = match target {
                    Target::All => {
                        plan.statements.push(format!("GRANT {} ON {all} IN SCHEMA {} TO {to}", privs(set), ident(schema)));
                        in_schema.iter().map(|(_, oid)| *oid).collect()
                    }
                    Target::Named(name) => match in_schema.iter().find(|(n, _)| n == name) {
                        None => {
                            missing.push(format!("database {database:?}: {kind} {schema:?}.{name:?} does not exist"));
                            continue;
                        }
                        Some((_, oid)) => {
                            plan.statements.push(format!("GRANT {} ON {keyword} {}.{} TO {to}", privs(set), ident(schema), ident(name)));
                            vec![*oid]
                        }
                    },
                };
                for oid in oids {
                    for p in set {
                        plan.checks.push((kind, oid, p.as_sql().to_owned()));
                    }
                }
            }
            Object::Function { schema, function, arguments } => {
                if !schema_oids.contains_key(schema) {
                    missing.push(format!("database {database:?}: schema {schema:?} does not exist"));
                    continue;
                }
                let name = match function {
                    Target::Named(n) => Some(n.as_str()),
                    Target::All => None,
                };
                // regprocedure's text is the server's own quoted signature of the function.
                let rows = client
                    .query(
                        "SELECT p.oid, p.oid::regprocedure::text, \
                                ($3::text[] IS NULL OR p.proargtypes::oid[] = \
                                   ARRAY(SELECT coalesce(to_regtype(a)::oid, 0) FROM unnest($3::text[]) WITH ORDINALITY u(a, i) ORDER BY i)) \
                         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                         WHERE n.nspname = $1 AND ($2::text IS NULL OR p.proname = $2) AND p.prokind IN ('f','p')",
                        &[schema, &name, arguments],
                    )
                    .await
                    .map_err(sql(database, "looking up functions"))?;
                let matching: Vec<(u32, String)> = rows.iter().filter(|r| r.get::<_, bool>(2)).map(|r| (r.get(0), r.get(1))).collect();
                match (function, matching.len()) {
                    (Target::All, _) => {
                        plan.statements.push(format!("GRANT {} ON ALL FUNCTIONS IN SCHEMA {} TO {to}", privs(set), ident(schema)));
                    }
                    (Target::Named(n), 0) => {
                        missing.push(format!("database {database:?}: {object} does not exist"));
                        let _ = n;
                        continue;
                    }
                    (Target::Named(_), 1) => {
                        plan.statements.push(format!("GRANT {} ON FUNCTION {} TO {to}", privs(set), matching[0].1));
                    }
                    (Target::Named(_), _) => {
                        let overloads: Vec<&str> = matching.iter().map(|(_, s)| s.as_str()).collect();
                        refused.push(format!(
                            "database {database:?}: {object} is overloaded ({}); give \"arguments\" to pick one",
                            overloads.join(", ")
                        ));
                        continue;
                    }
                }
                for (oid, _) in &matching {
                    for p in set {
                        plan.checks.push(("function", *oid, p.as_sql().to_owned()));
                    }
                }
            }
        }
    }

    if !access.roles.is_empty() {
        check_roles(client, database, access, admin, spec, &mut plan, missing, refused).await?;
    }
    Ok(plan)
}

/// Membership is checked through every role the requested one is itself a member of: a harmless
/// name that leads to `rds_superuser` is refused like `rds_superuser` itself.
#[allow(clippy::too_many_arguments)]
async fn check_roles(
    client: &Client,
    database: &str,
    access: &DatabaseAccess,
    admin: &str,
    spec: &GrantSpec<'_>,
    plan: &mut Resolved,
    missing: &mut Vec<String>,
    refused: &mut Vec<String>,
) -> Result<(), RoleError> {
    let requested: Vec<&str> = access.roles.iter().map(String::as_str).collect();
    let rows = client
        .query(
            "WITH RECURSIVE up(root, oid) AS ( \
                 SELECT r.rolname::text, r.oid FROM pg_roles r WHERE r.rolname = ANY($1) \
               UNION \
                 SELECT up.root, m.roleid FROM up JOIN pg_auth_members m ON m.member = up.oid) \
             SELECT up.root, r.rolname::text, r.oid, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls \
             FROM up JOIN pg_roles r ON r.oid = up.oid",
            &[&requested],
        )
        .await
        .map_err(RoleError::sql(database, "looking up roles"))?;
    let to = ident(&access.profile_role(spec.prefix, database));
    for role in &access.roles {
        let chain: Vec<_> = rows.iter().filter(|r| r.get::<_, String>(0) == *role).collect();
        let Some(own) = chain.iter().find(|r| r.get::<_, String>(1) == *role) else {
            missing.push(format!("role {role:?} does not exist"));
            continue;
        };
        if let Some(allowed) = spec.grantable_roles {
            if !allowed.iter().any(|a| a == role) {
                refused.push(format!("role {role:?} is not in the integration's grantable_roles"));
                continue;
            }
        } else {
            let mut reasons = Vec::new();
            for r in &chain {
                let name: String = r.get(1);
                let via = if name == *role { String::new() } else { format!(" (through {name:?})") };
                if name.starts_with("pg_") {
                    reasons.push(format!("predefined role{via}"));
                }
                if CLOUD_ADMIN_ROLES.contains(&name.as_str()) {
                    reasons.push(format!("cloud admin role{via}"));
                }
                if name == admin {
                    reasons.push(format!("pgjit's admin role{via}"));
                }
                if name.starts_with(spec.prefix) {
                    reasons.push(format!("a role pgjit manages{via}"));
                }
                for (i, attr) in [(3, "SUPERUSER"), (4, "CREATEROLE"), (5, "CREATEDB"), (6, "REPLICATION"), (7, "BYPASSRLS")] {
                    if r.get::<_, bool>(i) {
                        reasons.push(format!("{attr}{via}"));
                    }
                }
            }
            if !reasons.is_empty() {
                refused.push(format!(
                    "membership of role {role:?} is never handed out ({}) unless the integration's grantable_roles names it",
                    reasons.join(", ")
                ));
                continue;
            }
        }
        plan.statements.push(format!("GRANT {} TO {to}", ident(role)));
        plan.checks.push(("role", own.get(2), "MEMBER".into()));
    }
    Ok(())
}

/// The SQLSTATE the verification raises when a grant did not take effect.
const NOT_GRANTED: &str = "PJ001";

/// Creates the profile role if it is new, re-applies its grants, and proves they took effect,
/// in one transaction under the database's grant lock, retried as a whole on contention. It is
/// one round trip: the statements go as one batch, and the proof is a DO block that raises when
/// `has_*_privilege` disagrees, which rolls everything back.
async fn prepare_profile(client: &mut Client, database: &str, profile: &str, plan: &Resolved) -> Result<(), RoleError> {
    let batch = profile_batch(profile, plan);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match client.batch_execute(&batch).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                // The batch stopped inside its transaction: end it before anything else.
                let _ = client.batch_execute("ROLLBACK").await;
                if let Some(db) = e.as_db_error().filter(|d| d.code().code() == NOT_GRANTED) {
                    let missing = db.message().split("; ").map(str::to_owned).collect();
                    return Err(RoleError::NotGranted { database: database.to_owned(), profile: profile.to_owned(), missing });
                }
                // An admin with no privilege at all on an object gets an error instead of a warning.
                if let Some(db) = e.as_db_error().filter(|d| *d.code() == tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
                    return Err(RoleError::NotGranted { database: database.to_owned(), profile: profile.to_owned(), missing: vec![db.message().to_owned()] });
                }
                if attempt < ATTEMPTS && is_retryable(&e) {
                    backoff(database, "preparing the profile role", attempt, &e).await;
                    continue;
                }
                return Err(RoleError::Sql { database: database.to_owned(), action: "preparing the profile role", source: e });
            }
        }
    }
}

/// The profile's transaction as one batch. Everything in it is either quoted (`ident`,
/// `literal`) or pgjit's own fixed words and catalog numbers; the profile name is pgjit's own
/// `<prefix>p_<hex>` (prefix `[a-z0-9_]`), so it cannot end the `$pgjit$` quoting.
fn profile_batch(profile: &str, plan: &Resolved) -> String {
    let array = |items: Vec<String>, ty: &str| format!("ARRAY[{}]::{ty}[]", items.join(","));
    let kinds = array(plan.checks.iter().map(|(k, _, _)| literal(k)).collect(), "text");
    let oids = array(plan.checks.iter().map(|(_, o, _)| o.to_string()).collect(), "oid");
    let privileges = array(plan.checks.iter().map(|(_, _, p)| literal(p)).collect(), "text");
    let name = literal(profile);
    let mut sql = format!(
        "BEGIN;\nSELECT pg_advisory_xact_lock({GRANT_LOCK});\n\
         DO $pgjit$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {name}) THEN CREATE ROLE {} NOLOGIN; END IF; END $pgjit$;\n",
        ident(profile)
    );
    for statement in &plan.statements {
        sql.push_str(statement);
        sql.push_str(";\n");
    }
    if !plan.checks.is_empty() {
        sql.push_str(&format!(
            "DO $pgjit$ DECLARE missing text; BEGIN\n\
             SELECT string_agg(privilege || ' on ' || kind || ' ' || coalesce(CASE kind \
                 WHEN 'database' THEN (SELECT datname::text FROM pg_database WHERE oid = t.oid) \
                 WHEN 'schema' THEN (SELECT nspname::text FROM pg_namespace WHERE oid = t.oid) \
                 WHEN 'function' THEN (SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.oid = t.oid) \
                 WHEN 'role' THEN (SELECT rolname::text FROM pg_roles WHERE oid = t.oid) \
                 ELSE (SELECT c.oid::regclass::text FROM pg_class c WHERE c.oid = t.oid) END, 'oid ' || t.oid), '; ') INTO missing \
             FROM unnest({kinds}, {oids}, {privileges}) AS t(kind, oid, privilege) \
             WHERE (CASE kind \
                 WHEN 'database' THEN has_database_privilege({name}, t.oid, privilege) \
                 WHEN 'schema' THEN has_schema_privilege({name}, t.oid, privilege) \
                 WHEN 'table' THEN has_table_privilege({name}, t.oid, privilege) \
                 WHEN 'sequence' THEN has_sequence_privilege({name}, t.oid, privilege) \
                 WHEN 'function' THEN has_function_privilege({name}, t.oid, privilege) \
                 WHEN 'role' THEN pg_has_role({name}, t.oid, privilege) END) IS NOT TRUE;\n\
             IF missing IS NOT NULL THEN RAISE EXCEPTION USING ERRCODE = '{NOT_GRANTED}', MESSAGE = missing; END IF;\n\
             END $pgjit$;\n"
        ));
    }
    sql.push_str("COMMIT");
    sql
}

/// `CREATE ROLE … LOGIN … VALID UNTIL … ROLE <admin> IN ROLE <profiles>`; when the role exists
/// already (the same grant, repeated), it is brought to the same state instead.
async fn create_login(client: &Client, spec: &GrantSpec<'_>, admin: &str, memberships: &[&str]) -> Result<bool, RoleError> {
    let user = ident(spec.username);
    let password = match spec.login {
        LoginMethod::Password(p) => format!("PASSWORD {}", literal(&postgres_protocol::password::scram_sha_256(p.expose().as_bytes()))),
        LoginMethod::Iam => "PASSWORD NULL".to_owned(),
    };
    let valid_until = literal(&spec.valid_until.format("%Y-%m-%d %H:%M:%S+00").to_string());
    let in_roles = memberships.iter().map(|r| ident(r)).collect::<Vec<_>>().join(", ");
    let create = format!("CREATE ROLE {user} LOGIN INHERIT {password} VALID UNTIL {valid_until} ROLE {} IN ROLE {in_roles}", ident(admin));
    let converge = format!(
        "ALTER ROLE {user} LOGIN INHERIT {password} VALID UNTIL {valid_until};\nGRANT {user} TO {};\nGRANT {in_roles} TO {user}",
        ident(admin)
    );
    let database = spec.maintenance_database;
    let (create, converge) = (&create, &converge);
    retry(database, "creating the login role", || async move {
        let exists = client.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&spec.username]).await?.is_some();
        if !exists {
            match client.batch_execute(&create).await {
                Ok(()) => return Ok(false),
                // Created by a concurrent delivery of the same grant: converge below.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
                Err(e) => return Err(e),
            }
        }
        client.batch_execute(converge).await?;
        Ok(true)
    })
    .await
}

/// Runs `attempt` until it succeeds or fails with an error that is not worth a retry.
async fn retry<T, F, Fut>(database: &str, action: &'static str, attempt: F) -> Result<T, RoleError>
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
async fn backoff(database: &str, action: &str, attempt: u32, error: &tokio_postgres::Error) {
    tracing::debug!(database, action, attempt, error = %error, "retrying after contention");
    let jitter = rand::random_range(0..20u64);
    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt) + jitter)).await;
}

/// What a revoke found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    /// False when the role was already gone: revoke is then a no-op that succeeds.
    pub existed: bool,
    pub sessions_ended: i64,
    pub memberships_removed: usize,
}

/// Takes every way in away from a login role: NOLOGIN (committed first, so no new session can
/// start), its sessions ended by `usesysid` (a session outlives DROP ROLE with a dangling OID),
/// then its memberships and direct privileges stripped. Safe to repeat.
pub async fn revoke(connector: &Connector, maintenance_database: &str, username: &str, prefix: &str) -> Result<Revoked, RoleError> {
    check_login_name(username, prefix, connector.user())?;
    match revoke_existing(connector, maintenance_database, username).await {
        // Dropped by a concurrent delete half-way through: gone is what revoke wants.
        Err(e) if dropped_meanwhile(&e) => Ok(Revoked { existed: false, sessions_ended: 0, memberships_removed: 0 }),
        other => other,
    }
}

/// Whether an error says the role stopped existing (another run dropped it first).
fn dropped_meanwhile(e: &RoleError) -> bool {
    matches!(e, RoleError::Sql { source, .. } if source.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT))
}

async fn revoke_existing(connector: &Connector, maintenance_database: &str, username: &str) -> Result<Revoked, RoleError> {
    let client = connector.connect(maintenance_database).await?;
    revoke_on(&client, connector, maintenance_database, username).await
}

/// Revoke on an open connection to the maintenance database (delete reuses its connection).
async fn revoke_on(client: &Client, connector: &Connector, maintenance_database: &str, username: &str) -> Result<Revoked, RoleError> {
    let db = maintenance_database;
    let Some(oid) = role_oid(client, db, username).await? else {
        return Ok(Revoked { existed: false, sessions_ended: 0, memberships_removed: 0 });
    };
    let user = ident(username);
    let nologin = format!("ALTER ROLE {user} NOLOGIN");
    retry(db, "setting NOLOGIN", || client.batch_execute(&nologin)).await?;
    let sessions_ended = end_sessions(client, db, oid).await?;
    let memberships: Vec<String> = client
        .query("SELECT r.rolname::text FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid WHERE m.member = $1", &[&oid])
        .await
        .map_err(RoleError::sql(db, "listing memberships"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !memberships.is_empty() {
        let list = memberships.iter().map(|m| ident(m)).collect::<Vec<_>>().join(", ");
        let revoke = format!("REVOKE {list} FROM {user}");
        retry(db, "revoking memberships", || client.batch_execute(&revoke)).await?;
    }
    // Direct privileges (pgjit grants none, but a role may have been given some): revoked in
    // every database where the catalog records an ACL entry for it.
    for database in dependent_databases(client, db, oid, "a").await? {
        let other;
        let c = if database == db {
            client
        } else {
            other = connector.connect(&database).await?;
            &other
        };
        revoke_direct_privileges(c, &database, username).await?;
    }
    tracing::info!(db_user = username, sessions_ended, memberships = memberships.len(), "login role revoked");
    Ok(Revoked { existed: true, sessions_ended, memberships_removed: memberships.len() })
}

async fn role_oid(client: &Client, database: &str, username: &str) -> Result<Option<u32>, RoleError> {
    Ok(client
        .query_opt("SELECT oid FROM pg_roles WHERE rolname = $1", &[&username])
        .await
        .map_err(RoleError::sql(database, "looking up the role"))?
        .map(|r| r.get(0)))
}

/// Ends every session of the role and waits (up to 5 s each) until they are gone.
async fn end_sessions(client: &Client, database: &str, oid: u32) -> Result<i64, RoleError> {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity WHERE usesysid = $1 AND pid <> pg_backend_pid()",
            &[&oid],
        )
        .await
        .map_err(RoleError::sql(database, "ending sessions"))?;
    Ok(row.get(0))
}

/// Databases in which `pg_shdepend` records a dependency of kind `deptype` on the role
/// (`a`: ACL entries, `o`: ownership, None: any); shared objects are reported under `fallback`.
async fn dependent_databases(client: &Client, fallback: &str, oid: u32, deptype: &str) -> Result<Vec<String>, RoleError> {
    let rows = client
        .query(
            "SELECT DISTINCT coalesce(d.datname::text, $3) FROM pg_shdepend s LEFT JOIN pg_database d ON d.oid = s.dbid \
             WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = $1 AND ($2 = '' OR s.deptype::text = $2)",
            &[&oid, &deptype, &fallback],
        )
        .await
        .map_err(RoleError::sql(fallback, "listing the databases that depend on the role"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// REVOKE ALL on every table, sequence, schema, function and the database itself where the role
/// holds a privilege. The object names come from the server's own quoting (regclass, regprocedure).
async fn revoke_direct_privileges(client: &Client, database: &str, username: &str) -> Result<(), RoleError> {
    let rows = client
        .query(
            "SELECT CASE s.classid \
                 WHEN 'pg_class'::regclass THEN CASE c.relkind WHEN 'S' THEN 'SEQUENCE ' ELSE 'TABLE ' END || s.objid::regclass::text \
                 WHEN 'pg_namespace'::regclass THEN 'SCHEMA ' || quote_ident(n.nspname) \
                 WHEN 'pg_proc'::regclass THEN 'FUNCTION ' || s.objid::regprocedure::text \
                 WHEN 'pg_database'::regclass THEN 'DATABASE ' || quote_ident(d.datname) END \
             FROM pg_shdepend s \
             LEFT JOIN pg_class c ON s.classid = 'pg_class'::regclass AND c.oid = s.objid \
             LEFT JOIN pg_namespace n ON s.classid = 'pg_namespace'::regclass AND n.oid = s.objid \
             LEFT JOIN pg_database d ON s.classid = 'pg_database'::regclass AND d.oid = s.objid \
             WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1) \
               AND s.deptype = 'a' AND s.dbid IN (0, (SELECT oid FROM pg_database WHERE datname = current_database())) \
               AND s.objsubid = 0",
            &[&username],
        )
        .await
        .map_err(RoleError::sql(database, "listing direct privileges"))?;
    let user = ident(username);
    let statements: Vec<String> =
        rows.iter().filter_map(|r| r.get::<_, Option<String>>(0)).map(|object| format!("REVOKE ALL ON {object} FROM {user}")).collect();
    if !statements.is_empty() {
        let batch = statements.join(";\n");
        retry(database, "revoking direct privileges", || client.batch_execute(&batch)).await?;
    }
    Ok(())
}

/// What a delete found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub existed: bool,
    /// Databases where objects owned by the role were handed to the admin.
    pub reassigned_in: Vec<String>,
}

/// Drops a login role for good: revoked first (if it was not), then in every database where
/// `pg_shdepend` shows the role, `REASSIGN OWNED BY … TO <admin>` and `DROP OWNED BY …`, then
/// `DROP ROLE`. Whatever the role created is kept, owned by the admin. Safe to repeat.
pub async fn delete(connector: &Connector, maintenance_database: &str, username: &str, prefix: &str) -> Result<Deleted, RoleError> {
    check_login_name(username, prefix, connector.user())?;
    match delete_existing(connector, maintenance_database, username).await {
        Err(e) if dropped_meanwhile(&e) => Ok(Deleted { existed: false, reassigned_in: Vec::new() }),
        other => other,
    }
}

async fn delete_existing(connector: &Connector, maintenance_database: &str, username: &str) -> Result<Deleted, RoleError> {
    // One connection for the revoke and the drop.
    let client = connector.connect(maintenance_database).await?;
    let revoked = revoke_on(&client, connector, maintenance_database, username).await?;
    if !revoked.existed {
        return Ok(Deleted { existed: false, reassigned_in: Vec::new() });
    }
    let admin = ident(connector.user());
    let user = ident(username);
    let db = maintenance_database;
    let Some(oid) = role_oid(&client, db, username).await? else {
        return Ok(Deleted { existed: false, reassigned_in: Vec::new() });
    };
    // The admin must be a member to reassign and drop what the role owns; ROLE <admin> at
    // creation made it one, and this repairs it if someone removed that.
    let membership = format!("GRANT {user} TO {admin}");
    retry(db, "making the admin a member", || client.batch_execute(&membership)).await?;
    let hand_over = format!("REASSIGN OWNED BY {user} TO {admin};\nDROP OWNED BY {user}");
    let mut reassigned_in = Vec::new();
    for database in dependent_databases(&client, db, oid, "").await? {
        let other;
        let c = if database == db {
            &client
        } else {
            other = connector.connect(&database).await?;
            &other
        };
        retry(&database, "handing owned objects to the admin", || c.batch_execute(&hand_over)).await?;
        reassigned_in.push(database);
    }
    let drop = format!("DROP ROLE IF EXISTS {user}");
    retry(db, "dropping the role", || client.batch_execute(&drop)).await?;
    tracing::info!(db_user = username, databases = reassigned_in.len(), "login role dropped");
    Ok(Deleted { existed: true, reassigned_in })
}

/// A role carrying pgjit's prefix, as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedRole {
    pub name: String,
    pub can_login: bool,
    pub valid_until: Option<DateTime<Utc>>,
    /// A profile role (privileges holder) rather than a login role.
    pub profile: bool,
}

/// Every role with the prefix, for reconciliation against the store. The admin itself and any
/// role with powers pgjit never gives (superuser, CREATEROLE) are left out even if their name
/// carries the prefix: an admin called `pgjit_admin` must never look like an orphan.
pub async fn managed_roles(client: &Client, prefix: &str) -> Result<Vec<ManagedRole>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT rolname::text, rolcanlogin, rolvaliduntil FROM pg_roles \
             WHERE starts_with(rolname, $1) AND rolname <> current_user AND NOT rolsuper AND NOT rolcreaterole ORDER BY rolname",
            &[&prefix],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            ManagedRole { profile: crate::access::is_profile_role(&name, prefix), name, can_login: r.get(1), valid_until: r.get(2) }
        })
        .collect())
}

/// Gives a login role a new password (rotation), again as a verifier computed here. Returns
/// false when the role is gone.
pub async fn set_password(connector: &Connector, maintenance_database: &str, username: &str, prefix: &str, password: &SecretString) -> Result<bool, RoleError> {
    check_login_name(username, prefix, connector.user())?;
    let client = connector.connect(maintenance_database).await?;
    if role_oid(&client, maintenance_database, username).await?.is_none() {
        return Ok(false);
    }
    let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
    let alter = format!("ALTER ROLE {} PASSWORD {}", ident(username), literal(&verifier));
    retry(maintenance_database, "setting a new password", || client.batch_execute(&alter)).await?;
    Ok(true)
}
