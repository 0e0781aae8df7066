//! Taking access away from a login role (revoke): no login, its sessions ended, its
//! memberships and direct privileges gone, and what its roles own disarmed ([`disarm`]).
//!
//! What a temporary user created must never run with more rights than the user had: a
//! `SECURITY DEFINER` function handed to the admin would run as the admin for anyone who calls
//! it. So `SECURITY DEFINER` is taken away and the grants on its objects are dropped here; when
//! the role departs ([`super::departure`]) its objects go to a powerless *holding role* (NOLOGIN,
//! no privileges, no memberships), and functions that fire as triggers on other owners' tables
//! are dropped with their triggers.

use tokio_postgres::Client;

use crate::engine::postgres::{ident, Connector};
use super::{check_login_name, retry, role_oid, RoleError};

/// What a revoke found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// False when the role was already gone: revoke is then a no-op that succeeds.
    pub existed: bool,
    pub sessions_ended: i64,
    pub memberships_removed: usize,
    /// What was made harmless among the objects the user owns (schema-qualified names).
    pub disarmed: Vec<String>,
}

impl Revoked {
    fn gone() -> Revoked {
        Revoked { existed: false, sessions_ended: 0, memberships_removed: 0, disarmed: Vec::new() }
    }
}

/// Takes every way in away from a login role: NOLOGIN (committed first, so no new session can
/// start), its sessions ended by `usesysid` (a session outlives DROP ROLE with a dangling OID),
/// its memberships (verified gone: from 16 a REVOKE of another grantor's membership only warns),
/// the members it gave itself to, its direct privileges, and the code it planted (see
/// [`disarm`]). Safe to repeat.
pub async fn revoke(connector: &Connector, maintenance_database: &str, username: &str, prefix: &str) -> Result<Revoked, RoleError> {
    check_login_name(username, prefix, connector.user())?;
    let client = connector.connect(maintenance_database).await?;
    revoke_over(&client, connector, maintenance_database, username, prefix).await
}

/// [`revoke`] on an open connection to the maintenance database (cleanup reuses one for many
/// roles); `connector` opens those to other databases the role has privileges in.
pub async fn revoke_over(client: &Client, connector: &Connector, maintenance_database: &str, username: &str, prefix: &str) -> Result<Revoked, RoleError> {
    check_login_name(username, prefix, connector.user())?;
    match revoke_on(client, connector, maintenance_database, username, prefix, AtRevoke::Disarm).await {
        // Dropped by a concurrent delete half-way through: gone is what revoke wants.
        Err(e) if dropped_meanwhile(&e) => Ok(Revoked::gone()),
        other => other,
    }
}

/// A session in a database: the maintenance database's open one, or a new one.
pub(super) enum Session<'a> {
    Open(&'a Client),
    New(Client),
}

impl<'a> Session<'a> {
    pub(super) async fn to(open: &'a Client, open_database: &str, connector: &Connector, database: &str) -> Result<Session<'a>, RoleError> {
        Ok(if database == open_database { Session::Open(open) } else { Session::New(connector.connect(database).await?) })
    }

    pub(super) fn client(&self) -> &Client {
        match self {
            Session::Open(c) => c,
            Session::New(c) => c,
        }
    }
}

/// Whether an error says the role stopped existing (another run dropped it first).
pub(super) fn dropped_meanwhile(e: &RoleError) -> bool {
    matches!(e, RoleError::Sql { source, .. } if source.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT))
}

/// Revoke on an open connection to the maintenance database (delete reuses its connection).
/// Whether a revoke disarms the role's objects itself, or leaves that to the delete that follows
/// it on the same connection (which must disarm anyway, and fails if it cannot).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum AtRevoke {
    Disarm,
    LeaveToDelete,
}

pub(super) async fn revoke_on(client: &Client, connector: &Connector, maintenance_database: &str, username: &str, prefix: &str, at_revoke: AtRevoke) -> Result<Revoked, RoleError> {
    let db = maintenance_database;
    let Some((oid, version)) = role_oid(client, db, username).await? else {
        return Ok(Revoked::gone());
    };
    let user = ident(username);
    let nologin = format!("ALTER ROLE {user} NOLOGIN");
    retry(db, "setting NOLOGIN", || client.batch_execute(&nologin)).await?;
    let sessions_ended = end_sessions(client, db, oid, version).await?;
    let memberships = memberships_of(client, db, oid).await?;
    let memberships_removed = memberships.len();
    if !memberships.is_empty() {
        let list = memberships.iter().map(|m| ident(m)).collect::<Vec<_>>().join(", ");
        let revoke = format!("REVOKE {list} FROM {user}");
        retry(db, "revoking memberships", || client.batch_execute(&revoke)).await?;
        let left = memberships_of(client, db, oid).await?;
        if !left.is_empty() {
            return Err(RoleError::Invalid(format!(
                "role {username:?} is still a member of {} after REVOKE (granted by another role: the admin may only revoke its own grants)",
                left.join(", ")
            )));
        }
    }
    // Before PostgreSQL 16 a role may grant membership of itself to others from its own session:
    // whoever it let in loses that too (the admin keeps its own membership, to drop the role).
    let members: Vec<String> = client
        .query(
            "SELECT r.rolname::text FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member WHERE m.roleid = $1 AND r.rolname <> current_user",
            &[&oid],
        )
        .await
        .map_err(RoleError::sql(db, "listing the role's members"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !members.is_empty() {
        let revoke = format!("REVOKE {user} FROM {}", members.iter().map(|m| ident(m)).collect::<Vec<_>>().join(", "));
        retry(db, "removing the role's members", || client.batch_execute(&revoke)).await?;
    }
    // Direct privileges (pgjit grants none, but a role may have been given some) and what it
    // owns: in every database where the catalog records an ACL entry or an owned object.
    // The admin acts as the objects' owner through its membership: repaired first if the user
    // (or anyone) took it away.
    let membership = format!("GRANT {user} TO {}", ident(connector.user()));
    retry(db, "making the admin a member", || client.batch_execute(&membership)).await?;
    let mut disarmed = Vec::new();
    for database in dependent_databases(client, db, oid, "").await? {
        let session = Session::to(client, db, connector, &database).await?;
        let c = session.client();
        revoke_direct_privileges(c, &database, username).await?;
        if at_revoke == AtRevoke::LeaveToDelete {
            continue;
        }
        // The way in is already closed: a failure here must not keep the credentials and the IAM
        // policy from being removed. It is logged and reported; delete disarms again and must succeed.
        match disarm(c, &database, username).await {
            Ok((changes, _)) => disarmed.extend(changes),
            Err(e) => {
                tracing::error!(db_user = username, database = %database, error = %crate::engine::postgres::error_chain(&e), "disarming the role's objects failed; delete will try again");
                disarmed.push(format!("{database}: disarming failed ({e}); delete will try again"));
            }
        }
    }
    // Before 16 the user could act as its profile roles (SET ROLE): what it made that way is
    // owned by a role that outlives it and that other grants share, so it is disarmed now, not
    // when cleanup next hands it over.
    let profiles: Vec<String> = memberships.into_iter().filter(|m| crate::access::is_profile_role(m, prefix)).collect();
    match disarm_profiles(client, connector, db, &profiles).await {
        Ok(changes) => disarmed.extend(changes),
        Err(e) => {
            tracing::error!(db_user = username, error = %crate::engine::postgres::error_chain(&e), "disarming what its profile roles own failed; cleanup hands it over");
            disarmed.push(format!("disarming what its profile roles own failed ({e}); cleanup hands it over"));
        }
    }
    tracing::info!(db_user = username, sessions_ended, profiles = profiles.len(), members = members.len(), disarmed = disarmed.len(), "login role revoked");
    Ok(Revoked { existed: true, sessions_ended, memberships_removed, disarmed })
}

/// Disarms (see [`disarm`]) whatever the given profile roles own, in every database where they
/// own something. The roles stay, with their privileges, for the other grants that share them.
async fn disarm_profiles(client: &Client, connector: &Connector, db: &str, profiles: &[String]) -> Result<Vec<String>, RoleError> {
    let mut changed = Vec::new();
    for profile in profiles {
        let Some((oid, _)) = role_oid(client, db, profile).await? else { continue };
        let databases = dependent_databases(client, db, oid, "o").await?;
        if databases.is_empty() {
            continue;
        }
        // Only a member may alter what the role owns.
        let membership = format!("GRANT {} TO {}", ident(profile), ident(connector.user()));
        retry(db, "making the admin a member", || client.batch_execute(&membership)).await?;
        for database in databases {
            let session = Session::to(client, db, connector, &database).await?;
            let (changes, _) = disarm(session.client(), &database, profile).await?;
            changed.extend(changes.into_iter().map(|c| format!("{c} (owned by profile role {profile})")));
        }
    }
    Ok(changed)
}

async fn memberships_of(client: &Client, database: &str, oid: u32) -> Result<Vec<String>, RoleError> {
    Ok(client
        .query("SELECT r.rolname::text FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid WHERE m.member = $1 ORDER BY 1", &[&oid])
        .await
        .map_err(RoleError::sql(database, "listing memberships"))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Ends every session of the role. From 14 each termination waits (up to 5 s) until the
/// session is gone; 13 has no timeout argument, so pgjit polls for that itself.
async fn end_sessions(client: &Client, database: &str, oid: u32, server_version: i32) -> Result<i64, RoleError> {
    let terminate = if server_version >= 140000 { "pg_terminate_backend(pid, 5000)" } else { "pg_terminate_backend(pid)" };
    let row = client
        .query_one(
            &format!("SELECT count(*) FILTER (WHERE {terminate}) FROM pg_stat_activity WHERE usesysid = $1 AND pid <> pg_backend_pid()"),
            &[&oid],
        )
        .await
        .map_err(RoleError::sql(database, "ending sessions"))?;
    // From 14 each termination waits; 13 has none, so pgjit polls. Either way a session still
    // there after 5 s is an error: revoke must not report success while the user is connected.
    let mut left: i64 = 0;
    for attempt in 0..50 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        left = client
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE usesysid = $1 AND pid <> pg_backend_pid()", &[&oid])
            .await
            .map_err(RoleError::sql(database, "waiting for sessions to end"))?
            .get(0);
        if left == 0 {
            return Ok(row.get(0));
        }
    }
    Err(RoleError::Invalid(format!("{left} session(s) of the role did not end within 5 s")))
}

/// Databases in which `pg_shdepend` records a dependency of kind `deptype` on the role
/// (`a`: ACL entries, `o`: ownership, empty: any); shared objects are reported under `fallback`.
pub(super) async fn dependent_databases(client: &Client, fallback: &str, oid: u32, deptype: &str) -> Result<Vec<String>, RoleError> {
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

/// The objects `owner` owns in the connected database, with what makes each dangerous: the
/// grants on it (to PUBLIC, by default, for functions and types), `SECURITY DEFINER`, and
/// triggers on tables of other owners that a function fires as. Every name is the server's own
/// quoting (regclass, regprocedure, regtype, quote_ident).
const OWNED_OBJECTS: &str = "\
WITH o AS (SELECT oid FROM pg_roles WHERE rolname = $1) \
SELECT kind, name, secdef, grantees, foreign_triggers FROM ( \
  SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END AS kind, c.oid::regclass::text AS name, false AS secdef, \
         ARRAY(SELECT DISTINCT CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END \
               FROM (SELECT c.relacl AS acl UNION ALL SELECT at.attacl FROM pg_attribute at WHERE at.attrelid = c.oid AND at.attacl IS NOT NULL) x, \
                    aclexplode(x.acl) a WHERE a.grantee <> c.relowner) AS grantees, NULL::text AS foreign_triggers \
    FROM pg_class c, o WHERE c.relowner = o.oid AND c.relkind IN ('r','p','v','m','f','S') \
  UNION ALL \
  SELECT 'ROUTINE', p.oid::regprocedure::text, p.prosecdef, \
         ARRAY(SELECT DISTINCT CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END \
               FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a WHERE a.grantee <> p.proowner), \
         (SELECT string_agg(quote_ident(t.tgname) || ' ON ' || t.tgrelid::regclass::text, ', ' ORDER BY 1) \
            FROM pg_trigger t JOIN pg_class tc ON tc.oid = t.tgrelid WHERE t.tgfoid = p.oid AND tc.relowner <> p.proowner) \
    FROM pg_proc p, o WHERE p.proowner = o.oid \
  UNION ALL \
  SELECT 'SCHEMA', quote_ident(n.nspname), false, \
         ARRAY(SELECT DISTINCT CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END \
               FROM aclexplode(n.nspacl) a WHERE a.grantee <> n.nspowner), NULL \
    FROM pg_namespace n, o WHERE n.nspowner = o.oid \
  UNION ALL \
  SELECT 'TYPE', t.oid::regtype::text, false, \
         ARRAY(SELECT DISTINCT CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END \
               FROM aclexplode(coalesce(t.typacl, acldefault('T', t.typowner))) a WHERE a.grantee <> t.typowner), NULL \
    FROM pg_type t, o WHERE t.typowner = o.oid AND t.typtype IN ('b','d','e','r','m') AND t.typrelid = 0 \
      AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid) \
) owned ORDER BY kind, name";

/// Makes what `owner` owns in the connected database harmless to everyone else, in one
/// transaction: functions that fire as triggers on other owners' tables are dropped with those
/// triggers (they would run the departed user's code as whoever writes to the table),
/// `SECURITY DEFINER` is taken away, and every grant on the objects is revoked, so nobody but
/// their owner can use them. Returns what it changed, for the audit trail, and the objects the
/// owner still has (`kind name`). Safe to repeat.
pub async fn disarm(client: &Client, database: &str, owner: &str) -> Result<(Vec<String>, Vec<String>), RoleError> {
    let rows = client.query(OWNED_OBJECTS, &[&owner]).await.map_err(RoleError::sql(database, "listing the objects the role owns"))?;
    let mut statements = Vec::new();
    let mut changed = Vec::new();
    let mut kept = Vec::new();
    for row in &rows {
        let (kind, name, secdef): (&str, &str, bool) = (row.get(0), row.get(1), row.get(2));
        let grantees: Vec<String> = row.get(3);
        let foreign_triggers: Option<&str> = row.get(4);
        if let Some(triggers) = foreign_triggers {
            statements.push(format!("DROP ROUTINE {name} CASCADE"));
            changed.push(format!("{database}: dropped function {name} and its triggers {triggers}"));
            continue;
        }
        kept.push(format!("{} {name}", kind.to_lowercase()));
        if secdef {
            statements.push(format!("ALTER ROUTINE {name} SECURITY INVOKER"));
            changed.push(format!("{database}: SECURITY DEFINER taken from function {name}"));
        }
        if !grantees.is_empty() {
            // CASCADE: grants others made through a grant option the user handed out go too.
            statements.push(format!("REVOKE ALL ON {kind} {name} FROM {} CASCADE", grantees.join(", ")));
            changed.push(format!("{database}: grants on {} {name} to {} dropped", kind.to_lowercase(), grantees.join(", ")));
        }
    }
    if !statements.is_empty() {
        let batch = format!("BEGIN;\n{};\nCOMMIT", statements.join(";\n"));
        transaction(client, database, "disarming the objects the role owns", &batch).await?;
        for c in &changed {
            tracing::warn!(database, role = owner, change = %c, "disarmed an object a temporary role owned");
        }
    }
    Ok((changed, kept))
}

/// Runs `batch` (`BEGIN; …; COMMIT`) with retries on contention, rolling back whatever failed.
pub(super) async fn transaction(client: &Client, database: &str, action: &'static str, batch: &str) -> Result<(), RoleError> {
    let run = || async {
        let result = client.batch_execute(batch).await;
        if result.is_err() {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        result
    };
    retry(database, action, run).await
}

