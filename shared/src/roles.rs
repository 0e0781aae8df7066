//! Temporary login roles in PostgreSQL: grant, revoke and delete, as the SPEC's lifecycle says,
//! run as a non-superuser admin.
//!
//! Privileges go to a NOLOGIN *profile role* per distinct privilege set and database; the login
//! role only becomes a member of it. Granting straight to each user fails under concurrency
//! ("tuple concurrently updated") and at scale ("row is too big" on a table's ACL).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::access::{check_identifier, AccessSet, DatabaseAccess, Object, Privilege, Target};
use crate::postgres::{ident, is_retryable, literal, ConnectError, Connector};
use crate::secret::SecretString;

/// Key of the advisory lock that serialises pgjit's grants within one database.
pub(crate) const GRANT_LOCK: i64 = 0x7067_6a69_745f_6772; // "pgjit_gr"
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub username: String,
    /// Whether the login role's sessions are audited (none: not asked for).
    pub audit: Option<crate::store::SessionAudit>,
    /// The profile role used in each database.
    pub profiles: BTreeMap<String, String>,
    /// Whether the login role already existed (a repeated grant converged it instead).
    pub already_existed: bool,
}

/// One database's part of a grant: its statements and the proof that they took effect.
struct Plan {
    database: String,
    profile: String,
    /// Whether the profile role exists (assumed when planned without a lookup: it does for every
    /// grant of a privilege set but the first, and the GRANTs fail if it does not).
    profile_exists: bool,
    /// Whether the login role exists (assumed not without a lookup: CREATE ROLE fails if it
    /// does, and a repeated grant then converges it).
    login_exists: bool,
    statements: Vec<String>,
    /// Queries yielding `(kind, oid, privilege)` rows that `has_*_privilege` must confirm. They
    /// name objects by their quoted names (`'"s"."t"'::regclass`), so the proof needs no lookup.
    proofs: Vec<String>,
}

/// What went wrong in one attempt.
enum AttemptError {
    /// Contention, or the world changed since the lookup: worth another attempt, planned again.
    Conflict { database: String, source: tokio_postgres::Error },
    /// A grant sent without a lookup failed on an object (missing, of another kind, or not
    /// delegable): the lookup will say exactly what, or plan the same grant properly.
    NeedsLookup,
    Failed(RoleError),
}

/// The SCRAM verifier, computed on a blocking thread (about a millisecond of CPU), started as
/// early as possible so it overlaps the network.
type PendingPassword = Option<tokio::task::JoinHandle<String>>;

fn start_password(login: LoginMethod<'_>) -> PendingPassword {
    match login {
        LoginMethod::Password(p) => {
            let password = p.clone();
            Some(tokio::task::spawn_blocking(move || crate::scram::verifier(&password)))
        }
        LoginMethod::Iam => None,
    }
}

/// Creates (or, when repeated with the same username, converges) the login role with exactly the
/// access asked for, on sessions it opens itself (one per database: privileges are per database,
/// roles per cluster). The password's verifier is computed while it connects. See [`grant_on`].
pub async fn grant(connector: &Connector, spec: &GrantSpec<'_>) -> Result<Granted, RoleError> {
    check_request(spec, connector.user())?;
    let password = start_password(spec.login);
    let mut clients = Vec::new();
    for database in spec.access.databases.keys() {
        let client = connector.connect(database).await.map_err(|e| match e.db_error().map(|d| d.code().clone()) {
            Some(tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => RoleError::NotFound(vec![format!("database {database:?} does not exist")]),
            _ => RoleError::Connect(e),
        })?;
        clients.push(client);
    }
    grant_with(&clients, connector.user(), spec, password).await
}

/// The grant on open sessions, one per database of `spec.access` in its order, as `admin`.
///
/// Each database gets one transaction in two round trips: under the database's grant lock, the
/// profile role is created if it is new, its grants are re-applied, and the `has_*_privilege`
/// proof is read back (a GRANT the admin cannot delegate only warns); only when it finds nothing
/// missing does the second round trip create (or converge) the login role, in the last
/// database's transaction, and commit. Any error rolls the transaction back, so a failure leaves
/// at most unused profile roles, never a login.
///
/// A single-database request for database, schema, table and sequence privileges goes straight
/// away, assuming the profile role exists and the login role does not (true for all but the
/// first and a repeated grant): a missing object makes its GRANT fail, and nothing commits. Only
/// then, or when the request spans databases or names functions (their overloads must be
/// resolved) or roles (their membership chains must be vetted before anything is granted), is
/// each database's catalog read first, so that every missing or refused entry is reported
/// together. Contention and concurrent changes are tried again.
pub async fn grant_on(clients: &[Client], admin: &str, spec: &GrantSpec<'_>) -> Result<Granted, RoleError> {
    check_request(spec, admin)?;
    grant_with(clients, admin, spec, start_password(spec.login)).await
}

fn check_request(spec: &GrantSpec<'_>, admin: &str) -> Result<(), RoleError> {
    check_login_name(spec.username, spec.prefix, admin)?;
    if spec.access.databases.is_empty() {
        return Err(RoleError::Invalid("no access asked for".into()));
    }
    Ok(())
}

async fn grant_with(clients: &[Client], admin: &str, spec: &GrantSpec<'_>, password: PendingPassword) -> Result<Granted, RoleError> {
    if clients.len() != spec.access.databases.len() {
        return Err(RoleError::Invalid(format!("{} sessions given for {} databases", clients.len(), spec.access.databases.len())));
    }
    let mut password = Password { pending: password, clause: None };
    let audit = match spec.audit {
        None => None,
        Some(request) => Some(audit_state(&clients[clients.len() - 1], request).await?),
    };
    let audit_classes = match &audit {
        Some(crate::store::SessionAudit::On { classes }) => Some(classes.as_str()),
        _ => None,
    };
    let (mut plans, mut looked_up) = match unchecked_plans(spec) {
        Some(plans) => (plans, false),
        None => (plan_all(clients, admin, spec).await?, true),
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        match apply_all(clients, &plans, admin, spec, &mut password, looked_up, audit_classes).await {
            Ok(mut granted) => {
                granted.audit = audit;
                tracing::info!(db_user = spec.username, databases = granted.profiles.len(), already_existed = granted.already_existed, "login role ready");
                return Ok(granted);
            }
            Err(AttemptError::NeedsLookup) => {
                plans = plan_all(clients, admin, spec).await?;
                looked_up = true;
            }
            Err(AttemptError::Conflict { database, source }) if attempt < ATTEMPTS => {
                backoff(&database, "granting", attempt, &source).await;
                if looked_up {
                    plans = plan_all(clients, admin, spec).await?;
                }
            }
            Err(AttemptError::Conflict { database, source }) => return Err(RoleError::Sql { database, action: "granting", source }),
            Err(AttemptError::Failed(e)) => return Err(e),
        }
    }
}

/// Whether the login role's sessions will be audited: asks the server (one statement) whether
/// pgaudit is loaded and the admin may set `pgaudit.log` on roles. A server that cannot refuses
/// the grant when audit is required, and otherwise makes a grant whose record says audit is off.
async fn audit_state(client: &Client, request: AuditRequest<'_>) -> Result<crate::store::SessionAudit, RoleError> {
    let readiness = crate::pgaudit::readiness(client, request.cloud).await.map_err(RoleError::sql("(maintenance)", "checking session audit"))?;
    if readiness.can_audit() {
        return Ok(crate::store::SessionAudit::On { classes: request.classes.to_owned() });
    }
    if request.required {
        return Err(RoleError::AuditUnavailable(readiness.blockers));
    }
    tracing::warn!(reasons = %readiness.blockers.join("; "), "session audit unavailable; granting without it (audit_required is false)");
    Ok(crate::store::SessionAudit::Off { reason: readiness.blockers.join("; ") })
}

/// Plans made from the request alone, when it asks for nothing that needs a lookup first: one
/// database (across several, a later database's missing object must be found before an earlier
/// one commits), and no functions or roles.
fn unchecked_plans(spec: &GrantSpec<'_>) -> Option<Vec<Plan>> {
    let [(database, access)] = spec.access.databases.iter().collect::<Vec<_>>()[..] else { return None };
    let mut plan = Plan {
        database: database.clone(),
        profile: access.profile_role(spec.prefix, database),
        profile_exists: true,
        login_exists: false,
        statements: Vec::new(),
        proofs: Vec::new(),
    };
    let by_name = access.objects.iter().all(|(object, set)| plan_object(&mut plan, object, set));
    (by_name && access.roles.is_empty()).then(|| vec![plan])
}

/// Looks up and plans every database at once; reports everything missing or refused together.
async fn plan_all(clients: &[Client], admin: &str, spec: &GrantSpec<'_>) -> Result<Vec<Plan>, RoleError> {
    let facts = futures_util::future::try_join_all(
        spec.access.databases.iter().zip(clients).map(|((database, access), client)| look_up(client, database, access, spec)),
    )
    .await?;
    let (mut missing, mut refused) = (Vec::new(), Vec::new());
    let plans: Vec<Plan> = spec
        .access
        .databases
        .iter()
        .zip(&facts)
        .map(|((database, access), facts)| plan(database, access, facts, admin, spec, &mut missing, &mut refused))
        .collect();
    if !missing.is_empty() {
        return Err(RoleError::NotFound(missing));
    }
    if !refused.is_empty() {
        return Err(RoleError::Refused(refused));
    }
    Ok(plans)
}

/// The `PASSWORD …` clause of the login role, awaited only when the login role is sent.
struct Password {
    pending: PendingPassword,
    clause: Option<String>,
}

impl Password {
    async fn clause(&mut self) -> Result<&str, RoleError> {
        let clause = match self.clause.take() {
            Some(clause) => clause,
            None => match self.pending.take() {
                Some(task) => format!("PASSWORD {}", literal(&task.await.map_err(RoleError::Verifier)?)),
                None => "PASSWORD NULL".to_owned(),
            },
        };
        Ok(self.clause.insert(clause))
    }
}

/// Runs each database's transaction in turn, the login role with the last one.
async fn apply_all(clients: &[Client], plans: &[Plan], admin: &str, spec: &GrantSpec<'_>, password: &mut Password, looked_up: bool, audit_classes: Option<&str>) -> Result<Granted, AttemptError> {
    let mut memberships: Vec<&str> = plans.iter().map(|p| p.profile.as_str()).collect();
    if matches!(spec.login, LoginMethod::Iam) {
        memberships.insert(0, "rds_iam");
    }
    let last = plans.len() - 1;
    for (i, (plan, client)) in plans.iter().zip(clients).enumerate() {
        let memberships = &memberships;
        let password = &mut *password;
        let end = move |version: u32| async move {
            if i < last {
                return Ok("COMMIT".to_owned());
            }
            Ok(format!("{};\nCOMMIT", login_statements(spec, admin, password.clause().await?, memberships, plan.login_exists, version, audit_classes)))
        };
        match run_transaction(client, plan, end).await {
            Ok(None) => {}
            // Without a lookup, a proof that fails may mean an object of another kind than asked
            // for: the lookup tells.
            Ok(Some(_)) if !looked_up => return Err(AttemptError::NeedsLookup),
            Ok(Some(missing)) => {
                return Err(AttemptError::Failed(RoleError::NotGranted { database: plan.database.clone(), profile: plan.profile.clone(), missing }))
            }
            Err(TransactionError::Sql(e)) => return Err(classify(plan, e, looked_up)),
            Err(TransactionError::Other(e)) => return Err(AttemptError::Failed(e)),
        }
    }
    Ok(Granted {
        username: spec.username.to_owned(),
        profiles: plans.iter().map(|p| (p.database.clone(), p.profile.clone())).collect(),
        already_existed: plans[last].login_exists,
        audit: None,
    })
}

fn classify(plan: &Plan, e: tokio_postgres::Error, looked_up: bool) -> AttemptError {
    use tokio_postgres::error::SqlState;
    let code = e.code().cloned();
    // A missing object, or one of another kind; without a lookup also a profile role that does
    // not exist yet (42704) or a login role that does (42710).
    let object_trouble = [SqlState::UNDEFINED_TABLE, SqlState::INVALID_SCHEMA_NAME, SqlState::UNDEFINED_OBJECT, SqlState::UNDEFINED_FUNCTION, SqlState::WRONG_OBJECT_TYPE];
    if !looked_up && code.as_ref().is_some_and(|c| object_trouble.contains(c) || *c == SqlState::DUPLICATE_OBJECT) {
        return AttemptError::NeedsLookup;
    }
    // An admin with no privilege at all on an object gets an error instead of a warning.
    if code == Some(SqlState::INSUFFICIENT_PRIVILEGE) {
        let missing = vec![e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default()];
        return AttemptError::Failed(RoleError::NotGranted { database: plan.database.clone(), profile: plan.profile.clone(), missing });
    }
    // Contention, a role created by a concurrent delivery, or an object dropped since the lookup.
    if is_retryable(&e) || code.as_ref().is_some_and(|c| object_trouble.contains(c) || *c == SqlState::DUPLICATE_OBJECT || *c == SqlState::UNIQUE_VIOLATION) {
        return AttemptError::Conflict { database: plan.database.clone(), source: e };
    }
    AttemptError::Failed(RoleError::Sql { database: plan.database.clone(), action: "granting", source: e })
}

/// Why one database's transaction stopped: the server's error, or pgjit's own (the verifier).
enum TransactionError {
    Sql(tokio_postgres::Error),
    Other(RoleError),
}

/// Runs one database's transaction in two round trips: the grants with the proof read back
/// (the verifier is computed meanwhile), then, only when the proof found nothing missing,
/// `end` (the login role and COMMIT). Returns what did not take effect, if anything; the
/// transaction is then rolled back, as it is on any error.
async fn run_transaction<F, Fut>(client: &Client, plan: &Plan, end: F) -> Result<Option<Vec<String>>, TransactionError>
where
    F: FnOnce(u32) -> Fut,
    Fut: std::future::Future<Output = Result<String, RoleError>>,
{
    let result = async {
        let messages = client.simple_query(&grants_part(plan)).await.map_err(TransactionError::Sql)?;
        let column = |name: &str| {
            messages.iter().find_map(|m| match m {
                SimpleQueryMessage::Row(row) if row.columns().first().map(|c| c.name()) == Some(name) => row.get(0).map(str::to_owned),
                _ => None,
            })
        };
        let missing = column(PROOF_COLUMN).map(|missing| missing.split("; ").map(str::to_owned).collect::<Vec<_>>());
        if missing.is_some() {
            return Ok(missing);
        }
        let version = column(VERSION_COLUMN).and_then(|v| v.parse().ok()).unwrap_or(0);
        let end = end(version).await.map_err(TransactionError::Other)?;
        client.batch_execute(&end).await.map_err(TransactionError::Sql)?;
        Ok(None)
    }
    .await;
    if !matches!(result, Ok(None)) {
        // Whatever stopped it, the transaction may still be open: end it before anything else.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// The name of the proof's one column: the privileges that did not take effect, or NULL.
const PROOF_COLUMN: &str = "pgjit_missing";
/// The column that carries `server_version_num`: version differences are chosen from it.
const VERSION_COLUMN: &str = "pgjit_server_version";

/// What a database's plan needs to know, read as one JSON document in one statement, from the
/// parts the request needs: which of the profile and login roles (`names`) exist, the schemas
/// named with every relation and sequence in them, the requested roles' membership chains (a
/// harmless name that leads to `rds_superuser` is refused like `rds_superuser` itself), and the
/// functions named, with regprocedure's text as the server's own quoted signature. It is sent as
/// a simple query, every value quoted by `literal`: the server logged 0.73 ms for it that way,
/// against about 1.06 ms for parse, bind and execute with the extended protocol.
fn lookup_sql(names: &[&str], schemas: &[&str], roles: &[&str], functions: &[serde_json::Value]) -> String {
    let mut parts = vec![format!("'existing_roles', (SELECT coalesce(json_agg(rolname), '[]') FROM pg_roles WHERE rolname = ANY({}))", text_array(names))];
    if !schemas.is_empty() {
        parts.push(format!(
            "'schemas', (SELECT coalesce(json_agg(nspname), '[]') \
                 FROM pg_namespace WHERE nspname = ANY({schemas})), \
             'relations', (SELECT coalesce(json_agg(json_build_object('schema', n.nspname, 'name', c.relname, 'sequence', c.relkind = 'S')), '[]') \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = ANY({schemas}) AND c.relkind IN ('r','p','v','m','f','S'))",
            schemas = text_array(schemas)
        ));
    }
    if !roles.is_empty() {
        parts.push(format!(
            "'role_chains', (WITH RECURSIVE up(root, oid) AS ( \
                     SELECT r.rolname::text, r.oid FROM pg_roles r WHERE r.rolname = ANY({roles}) \
                   UNION \
                     SELECT up.root, m.roleid FROM up JOIN pg_auth_members m ON m.member = up.oid) \
                 SELECT coalesce(json_agg(json_build_object('root', up.root, 'name', r.rolname, \
                     'superuser', r.rolsuper, 'createrole', r.rolcreaterole, 'createdb', r.rolcreatedb, \
                     'replication', r.rolreplication, 'bypassrls', r.rolbypassrls, 'login', r.rolcanlogin, \
                     'owns', EXISTS (SELECT 1 FROM pg_shdepend d WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.oid AND d.deptype = 'o'), \
                     'admin_option', EXISTS (SELECT 1 FROM pg_auth_members a WHERE a.member = r.oid AND a.admin_option))), '[]') \
                 FROM up JOIN pg_roles r ON r.oid = up.oid)",
            roles = text_array(roles)
        ));
    }
    if !functions.is_empty() {
        parts.push(format!(
            "'functions', (SELECT coalesce(json_agg(json_build_object('request', f.position - 1, \
                     'signature', p.oid::regprocedure::text, \
                     'matches', coalesce(jsonb_typeof(f.request->'arguments'), 'null') <> 'array' OR p.proargtypes::oid[] = \
                         ARRAY(SELECT coalesce(to_regtype(a)::oid, 0) FROM jsonb_array_elements_text(f.request->'arguments') WITH ORDINALITY u(a, i) ORDER BY i))), '[]') \
                 FROM jsonb_array_elements({functions}::jsonb) WITH ORDINALITY f(request, position) \
                 JOIN pg_namespace n ON n.nspname = f.request->>'schema' \
                 JOIN pg_proc p ON p.pronamespace = n.oid AND p.prokind IN ('f','p') \
                     AND (f.request->>'name' IS NULL OR p.proname = f.request->>'name'))",
            functions = literal(&serde_json::Value::Array(functions.to_vec()).to_string())
        ));
    }
    format!("SELECT json_build_object({}) AS facts", parts.join(", "))
}

/// `ARRAY['a','b']::text[]`, every item quoted.
fn text_array<S: AsRef<str>>(items: &[S]) -> String {
    format!("ARRAY[{}]::text[]", items.iter().map(|i| literal(i.as_ref())).collect::<Vec<_>>().join(","))
}

/// What a request needs to know of one database. Parts the lookup left out are empty.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Facts {
    schemas: BTreeSet<String>,
    relations: Vec<RelationFact>,
    existing_roles: BTreeSet<String>,
    role_chains: Vec<RoleLink>,
    functions: Vec<FunctionFact>,
}

#[derive(serde::Deserialize)]
struct RelationFact {
    schema: String,
    name: String,
    sequence: bool,
}

/// One role on the way up from a requested role (`root`), the requested role included.
#[derive(serde::Deserialize)]
struct RoleLink {
    root: String,
    name: String,
    superuser: bool,
    createrole: bool,
    createdb: bool,
    replication: bool,
    bypassrls: bool,
    login: bool,
    /// Owns objects in any database of the cluster (membership applies cluster-wide).
    owns: bool,
    /// Holds some membership WITH ADMIN OPTION: a member could hand that role to anyone, and
    /// such a grant outlives the revoke.
    admin_option: bool,
}

/// A function that a function request (by its index among them) may mean.
#[derive(serde::Deserialize)]
struct FunctionFact {
    request: usize,
    signature: String,
    /// Whether its argument types are the ones asked for (always, when none were given).
    matches: bool,
}

async fn look_up(client: &Client, database: &str, access: &DatabaseAccess, spec: &GrantSpec<'_>) -> Result<Facts, RoleError> {
    let profile = access.profile_role(spec.prefix, database);
    let schemas: Vec<&str> = access.objects.keys().filter_map(Object::schema).collect::<BTreeSet<_>>().into_iter().collect();
    let functions: Vec<serde_json::Value> = access
        .objects
        .keys()
        .filter_map(|o| match o {
            Object::Function { schema, function, arguments } => {
                let name = match function {
                    Target::Named(n) => Some(n.as_str()),
                    Target::All => None,
                };
                Some(serde_json::json!({ "schema": schema, "name": name, "arguments": arguments }))
            }
            _ => None,
        })
        .collect();
    let roles: Vec<&str> = access.roles.iter().map(String::as_str).collect();
    let messages = client
        .simple_query(&lookup_sql(&[profile.as_str(), spec.username], &schemas, &roles, &functions))
        .await
        .map_err(RoleError::sql(database, "looking up the objects and roles asked for"))?;
    let json = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0),
        _ => None,
    });
    serde_json::from_str(json.unwrap_or_default()).map_err(|source| RoleError::Lookup { database: database.to_owned(), source })
}

/// Plans one database's grants from its facts, adding what is missing or refused to the lists.
fn plan(database: &str, access: &DatabaseAccess, facts: &Facts, admin: &str, spec: &GrantSpec<'_>, missing: &mut Vec<String>, refused: &mut Vec<String>) -> Plan {
    let profile = access.profile_role(spec.prefix, database);
    let mut plan = Plan {
        database: database.to_owned(),
        profile_exists: facts.existing_roles.contains(&profile),
        login_exists: facts.existing_roles.contains(spec.username),
        profile,
        statements: Vec::new(),
        proofs: Vec::new(),
    };
    let mut function_request = 0;
    for (object, set) in &access.objects {
        let request = function_request;
        if matches!(object, Object::Function { .. }) {
            function_request += 1;
        }
        if let Some(schema) = object.schema().filter(|s| !facts.schemas.contains(*s)) {
            missing.push(format!("database {database:?}: schema {schema:?} does not exist"));
            continue;
        }
        match object {
            Object::Table { schema, table: Target::Named(name) } | Object::Sequence { schema, sequence: Target::Named(name) } => {
                let sequence = matches!(object, Object::Sequence { .. });
                if !facts.relations.iter().any(|r| r.schema == *schema && r.name == *name && r.sequence == sequence) {
                    let kind = if sequence { "sequence" } else { "table" };
                    missing.push(format!("database {database:?}: {kind} {schema:?}.{name:?} does not exist"));
                    continue;
                }
            }
            Object::Function { schema, function, .. } => {
                let matching: Vec<&FunctionFact> = facts.functions.iter().filter(|f| f.request == request && f.matches).collect();
                let to = ident(&plan.profile);
                let privileges = set.iter().map(|p| p.as_sql()).collect::<Vec<_>>();
                match (function, matching.as_slice()) {
                    (Target::All, _) => {
                        plan.statements.push(format!("GRANT {} ON ALL FUNCTIONS IN SCHEMA {} TO {to}", privileges.join(", "), ident(schema)));
                        let every = format!("SELECT oid FROM pg_proc WHERE pronamespace = {}::regnamespace AND prokind IN ('f','p')", literal(&ident(schema)));
                        plan.proofs.push(proof_rows("function", &every, privileges));
                    }
                    (Target::Named(_), []) => missing.push(format!("database {database:?}: {object} does not exist")),
                    (Target::Named(_), [only]) => {
                        plan.statements.push(format!("GRANT {} ON FUNCTION {} TO {to}", privileges.join(", "), only.signature));
                        plan.proofs.push(proof_rows("function", &format!("SELECT {}::regprocedure::oid", literal(&only.signature)), privileges));
                    }
                    (Target::Named(_), overloads) => {
                        let overloads: Vec<&str> = overloads.iter().map(|f| f.signature.as_str()).collect();
                        refused.push(format!("database {database:?}: {object} is overloaded ({}); give \"arguments\" to pick one", overloads.join(", ")));
                    }
                }
                continue;
            }
            _ => {}
        }
        plan_object(&mut plan, object, set);
    }
    plan_roles(access, facts, admin, spec, &mut plan, missing, refused);
    plan
}

/// The GRANT and its proof for a database, schema, table or sequence, by name: these need no
/// lookup (a missing one makes the GRANT fail). Returns false for a function, which does.
fn plan_object(plan: &mut Plan, object: &Object, set: &BTreeSet<Privilege>) -> bool {
    let to = ident(&plan.profile);
    let privileges: Vec<&str> = set.iter().map(|p| p.as_sql()).collect();
    let list = privileges.join(", ");
    let relations_in = |schema: &str, kinds: &str| {
        format!("SELECT oid FROM pg_class WHERE relnamespace = {}::regnamespace AND relkind IN ({kinds})", literal(&ident(schema)))
    };
    let relation = |schema: &str, name: &str| format!("SELECT {}::regclass::oid", literal(&format!("{}.{}", ident(schema), ident(name))));
    let (statement, kind, oids) = match object {
        Object::Database => (
            format!("GRANT {list} ON DATABASE {} TO {to}", ident(&plan.database)),
            "database",
            "SELECT oid FROM pg_database WHERE datname = current_database()".to_owned(),
        ),
        Object::Schema { schema } => {
            (format!("GRANT {list} ON SCHEMA {} TO {to}", ident(schema)), "schema", format!("SELECT {}::regnamespace::oid", literal(&ident(schema))))
        }
        Object::Table { schema, table: Target::All } => {
            (format!("GRANT {list} ON ALL TABLES IN SCHEMA {} TO {to}", ident(schema)), "table", relations_in(schema, TABLE_KINDS))
        }
        Object::Table { schema, table: Target::Named(name) } => {
            (format!("GRANT {list} ON TABLE {}.{} TO {to}", ident(schema), ident(name)), "table", relation(schema, name))
        }
        Object::Sequence { schema, sequence: Target::All } => {
            (format!("GRANT {list} ON ALL SEQUENCES IN SCHEMA {} TO {to}", ident(schema)), "sequence", relations_in(schema, "'S'"))
        }
        Object::Sequence { schema, sequence: Target::Named(name) } => {
            (format!("GRANT {list} ON SEQUENCE {}.{} TO {to}", ident(schema), ident(name)), "sequence", relation(schema, name))
        }
        Object::Function { .. } => return false,
    };
    plan.statements.push(statement);
    plan.proofs.push(proof_rows(kind, &oids, privileges));
    true
}

/// The relkinds `GRANT … ON ALL TABLES` covers: tables, partitioned tables, views, materialized
/// views and foreign tables (sequences have their own).
const TABLE_KINDS: &str = "'r','p','v','m','f'";

/// A query yielding `(kind, oid, privilege)` for every oid `oids` yields and every privilege.
fn proof_rows<'a>(kind: &str, oids: &str, privileges: impl IntoIterator<Item = &'a str>) -> String {
    let privileges: Vec<&str> = privileges.into_iter().collect();
    format!("SELECT {}::text, o.oid, p.privilege FROM ({oids}) AS o(oid), unnest({}) AS p(privilege)", literal(kind), text_array(&privileges))
}

/// Membership of the requested roles: only roles the integration's `grantable_roles` names, and
/// among them never pgjit's admin or its own roles; a role whose chain leads to a predefined or
/// cloud admin role, to powers (SUPERUSER, CREATEROLE, …), to a role that can log in or that
/// owns objects only when `privileged_grantable_roles` opts in to it.
fn plan_roles(access: &DatabaseAccess, facts: &Facts, admin: &str, spec: &GrantSpec<'_>, plan: &mut Plan, missing: &mut Vec<String>, refused: &mut Vec<String>) {
    let to = ident(&plan.profile);
    for role in &access.roles {
        if !spec.grantable_roles.contains(role) {
            refused.push(format!("role {role:?} is not in the integration's grantable_roles (membership of existing roles is refused unless listed)"));
            continue;
        }
        let chain: Vec<&RoleLink> = facts.role_chains.iter().filter(|l| l.root == *role).collect();
        let Some(own) = chain.iter().find(|l| l.name == *role) else {
            missing.push(format!("role {role:?} does not exist"));
            continue;
        };
        let (mut never, mut privileged) = (Vec::new(), Vec::new());
        for link in &chain {
            let name = link.name.as_str();
            let via = if name == role { String::new() } else { format!(" (through {name:?})") };
            if name == admin {
                never.push(format!("pgjit's admin role{via}"));
            }
            if name.starts_with(spec.prefix) {
                never.push(format!("a role pgjit manages{via}"));
            }
            if name.starts_with("pg_") {
                privileged.push(format!("predefined role{via}"));
            }
            if CLOUD_ADMIN_ROLES.contains(&name) {
                privileged.push(format!("cloud admin role{via}"));
            }
            for (held, what) in [
                (link.superuser, "SUPERUSER"),
                (link.createrole, "CREATEROLE"),
                (link.createdb, "CREATEDB"),
                (link.replication, "REPLICATION"),
                (link.bypassrls, "BYPASSRLS"),
                (link.login, "can log in"),
                (link.owns, "owns objects"),
                (link.admin_option, "can grant roles (ADMIN OPTION)"),
            ] {
                if held {
                    privileged.push(format!("{what}{via}"));
                }
            }
        }
        if !never.is_empty() {
            refused.push(format!("membership of role {role:?} is never handed out ({})", never.join(", ")));
            continue;
        }
        if !privileged.is_empty() && !spec.privileged_roles.contains(role) {
            refused.push(format!(
                "membership of role {role:?} is refused ({}) unless the integration's privileged_grantable_roles names it",
                privileged.join(", ")
            ));
            continue;
        }
        plan.statements.push(format!("GRANT {} TO {to}", ident(role)));
        plan.proofs.push(proof_rows("role", &format!("SELECT {}::regrole::oid", literal(&ident(&own.name))), ["MEMBER"]));
    }
}

/// The first part of a database's transaction: the grant lock, the profile role if new, its
/// grants, and the proof as a one-row SELECT naming what did not take effect (a GRANT the admin
/// cannot delegate only warns). Everything in it is either quoted (`ident`, `literal`) or pgjit's
/// own fixed words.
fn grants_part(plan: &Plan) -> String {
    let mut sql = format!("BEGIN;\nSELECT pg_advisory_xact_lock({GRANT_LOCK});\nSELECT current_setting('server_version_num') AS {VERSION_COLUMN};\n");
    if !plan.profile_exists {
        sql.push_str(&format!("CREATE ROLE {0} NOLOGIN;\nCOMMENT ON ROLE {0} IS {1};\n", ident(&plan.profile), literal(&marker(Utc::now()))));
    }
    for statement in &plan.statements {
        sql.push_str(statement);
        sql.push_str(";\n");
    }
    if !plan.proofs.is_empty() {
        let name = literal(&plan.profile);
        sql.push_str(&format!(
            "SELECT string_agg(privilege || ' on ' || kind || ' ' || coalesce(CASE kind \
                 WHEN 'database' THEN (SELECT datname::text FROM pg_database WHERE oid = t.oid) \
                 WHEN 'schema' THEN (SELECT nspname::text FROM pg_namespace WHERE oid = t.oid) \
                 WHEN 'function' THEN (SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.oid = t.oid) \
                 WHEN 'role' THEN (SELECT rolname::text FROM pg_roles WHERE oid = t.oid) \
                 ELSE (SELECT c.oid::regclass::text FROM pg_class c WHERE c.oid = t.oid) END, 'oid ' || t.oid), '; ') AS {PROOF_COLUMN} \
             FROM ({}) AS t(kind, oid, privilege) \
             WHERE (CASE kind \
                 WHEN 'database' THEN has_database_privilege({name}, t.oid, privilege) \
                 WHEN 'schema' THEN has_schema_privilege({name}, t.oid, privilege) \
                 WHEN 'table' THEN has_table_privilege({name}, t.oid, privilege) \
                     AND (SELECT c.relkind FROM pg_class c WHERE c.oid = t.oid) <> 'S' \
                 WHEN 'sequence' THEN has_sequence_privilege({name}, t.oid, privilege) \
                 WHEN 'function' THEN has_function_privilege({name}, t.oid, privilege) \
                 WHEN 'role' THEN pg_has_role({name}, t.oid, privilege) END) IS NOT TRUE",
            plan.proofs.join(" UNION ALL ")
        ));
    }
    sql
}

/// `CREATE ROLE … LOGIN … VALID UNTIL … ROLE <admin>` with the profile memberships, or, when
/// the role exists already (the same grant, repeated), the statements that bring it to the same
/// state; then pgjit's marker as the role's comment.
///
/// From PostgreSQL 16 the memberships are granted `WITH INHERIT TRUE, SET FALSE`: the user gets
/// the profile's privileges but cannot `SET ROLE` to it, so nothing it creates can be owned by a
/// profile role that outlives it (on 15 and older, cleanup hands such objects over instead).
///
/// With session audit, the role's `pgaudit.log` (and `pgaudit.log_relation`) is set too: every
/// session it opens logs those classes, and the user cannot turn that off (both need a SET
/// privilege it lacks).
fn login_statements(spec: &GrantSpec<'_>, admin: &str, password: &str, memberships: &[&str], exists: bool, server_version: u32, audit_classes: Option<&str>) -> String {
    let user = ident(spec.username);
    let valid_until = literal(&spec.valid_until.format("%Y-%m-%d %H:%M:%S+00").to_string());
    let in_roles = memberships.iter().map(|r| ident(r)).collect::<Vec<_>>().join(", ");
    let membership_options = if server_version >= 160000 { " WITH INHERIT TRUE, SET FALSE" } else { "" };
    let role = if exists {
        format!("ALTER ROLE {user} LOGIN INHERIT {password} VALID UNTIL {valid_until};\nGRANT {user} TO {}", ident(admin))
    } else if server_version >= 160000 {
        format!("CREATE ROLE {user} LOGIN INHERIT {password} VALID UNTIL {valid_until} ROLE {}", ident(admin))
    } else {
        format!("CREATE ROLE {user} LOGIN INHERIT {password} VALID UNTIL {valid_until} ROLE {} IN ROLE {in_roles}", ident(admin))
    };
    let grant = if exists || server_version >= 160000 { format!(";\nGRANT {in_roles} TO {user}{membership_options}") } else { String::new() };
    // log_relation: a line per table a statement touches, so each entry names its objects.
    let audit = audit_classes.map(|classes| format!(";\nALTER ROLE {user} SET pgaudit.log TO {};\nALTER ROLE {user} SET pgaudit.log_relation TO on", literal(classes))).unwrap_or_default();
    format!("{role}{grant}{audit};\nCOMMENT ON ROLE {user} IS {}", literal(&marker(Utc::now())))
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
async fn backoff(database: &str, action: &str, attempt: u32, error: &tokio_postgres::Error) {
    tracing::debug!(database, action, attempt, error = %error, "retrying after contention");
    let jitter = rand::random_range(0..20u64);
    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt) + jitter)).await;
}

/// Gives a login role a new password (rotation), again as a verifier computed here. Returns
/// false when the role is gone.
/// Moves a login role's `VALID UNTIL` (an extension, or its undo). Returns false when the role
/// does not exist.
pub async fn set_valid_until(connector: &Connector, maintenance_database: &str, username: &str, prefix: &str, until: DateTime<Utc>) -> Result<bool, RoleError> {
    check_login_name(username, prefix, connector.user())?;
    let client = connector.connect(maintenance_database).await?;
    if crate::revocation::role_oid(&client, maintenance_database, username).await?.is_none() {
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
    if crate::revocation::role_oid(client, maintenance_database, username).await?.is_none() {
        return Ok(false);
    }
    let verifier = crate::scram::verifier(password);
    let alter = format!("ALTER ROLE {} PASSWORD {}", ident(username), literal(&verifier));
    retry(maintenance_database, "setting a new password", || client.batch_execute(&alter)).await?;
    Ok(true)
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
