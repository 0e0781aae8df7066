//! A grant: the login role made (or renewed) with exactly the approved privileges, through the
//! profile roles, in one transaction per database that proves what it granted.

use std::collections::BTreeMap;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::plan::{grants_part, look_up, plan, plan_object, Plan, PROOF_COLUMN, VERSION_COLUMN};
use super::{backoff, check_login_name, marker, AuditRequest, GrantSpec, LoginMethod, RoleError, ATTEMPTS};
use crate::engine::postgres::{ident, is_retryable, literal, Connector};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub username: String,
    /// Whether the login role's sessions are audited (none: not asked for).
    pub audit: Option<crate::engine::roles::grant::SessionAudit>,
    /// The profile role used in each database.
    pub profiles: BTreeMap<String, String>,
    /// Whether the login role already existed (a repeated grant converged it instead).
    pub already_existed: bool,
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
            Some(tokio::task::spawn_blocking(move || crate::engine::scram::verifier(&password)))
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
        Some(crate::engine::roles::grant::SessionAudit::On { classes }) => Some(classes.as_str()),
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
async fn audit_state(client: &Client, request: AuditRequest<'_>) -> Result<crate::engine::roles::grant::SessionAudit, RoleError> {
    let readiness = crate::engine::pgaudit::readiness(client, request.cloud).await.map_err(RoleError::sql("(maintenance)", "checking session audit"))?;
    if readiness.can_audit() {
        return Ok(crate::engine::roles::grant::SessionAudit::On { classes: request.classes.to_owned() });
    }
    if request.required {
        return Err(RoleError::AuditUnavailable(readiness.blockers));
    }
    tracing::warn!(reasons = %readiness.blockers.join("; "), "session audit unavailable; granting without it (audit_required is false)");
    Ok(crate::engine::roles::grant::SessionAudit::Off { reason: readiness.blockers.join("; ") })
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

/// Whether a grant's sessions are audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum SessionAudit {
    /// The login role logs these pgaudit classes.
    On { classes: String },
    /// Granted without audit (the integration said `audit_required: false`), and why.
    Off { reason: String },
}

