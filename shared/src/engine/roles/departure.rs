//! A role's departure: a login role dropped for good, what it owned handed to the holding role,
//! unused profile roles marked and dropped, and the roles pgjit manages as the catalog shows them.

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::revocation::{dependent_databases, disarm, dropped_meanwhile, revoke_on, transaction, AtRevoke, Session};
use super::{check_login_name, retry, role_oid, RoleError};
use crate::engine::postgres::{ident, literal, Connector};

/// What a delete found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub existed: bool,
    /// Databases where objects owned by the role were handed to the holding role.
    pub reassigned_in: Vec<String>,
    /// What was handed over or made harmless, schema-qualified (names, never contents).
    pub handed_over: Vec<String>,
}

/// Drops a login role for good: revoked first (if it was not), then what it owns handed to the
/// holding role ([`hand_over`]), then `DROP ROLE`. Safe to repeat.
pub async fn delete(connector: &Connector, maintenance_database: &str, username: &str, prefix: &str, holding_role: &str) -> Result<Deleted, RoleError> {
    check_login_name(username, prefix, connector.user())?;
    let client = connector.connect(maintenance_database).await?;
    delete_over(&client, connector, maintenance_database, username, prefix, holding_role).await
}

/// [`delete`] on an open connection to the maintenance database: one connection for the
/// revoke, the hand-over and the drop.
pub async fn delete_over(client: &Client, connector: &Connector, maintenance_database: &str, username: &str, prefix: &str, holding_role: &str) -> Result<Deleted, RoleError> {
    check_login_name(username, prefix, connector.user())?;
    let gone = || Deleted { existed: false, reassigned_in: Vec::new(), handed_over: Vec::new() };
    let deleted = async {
        let revoked = revoke_on(client, connector, maintenance_database, username, prefix, AtRevoke::LeaveToDelete).await?;
        if !revoked.existed {
            return Ok(gone());
        }
        let (reassigned_in, handed_over) = hand_over_on(client, connector, maintenance_database, username, holding_role, Departure::Login).await?;
        let drop = format!("DROP ROLE IF EXISTS {}", ident(username));
        retry(maintenance_database, "dropping the role", || client.batch_execute(&drop)).await?;
        tracing::info!(db_user = username, databases = reassigned_in.len(), handed_over = handed_over.len(), "login role dropped");
        Ok(Deleted { existed: true, reassigned_in, handed_over })
    };
    match deleted.await {
        Err(e) if dropped_meanwhile(&e) => Ok(gone()),
        other => other,
    }
}

/// Hands whatever a profile role owns, in every database, to the holding role (see [`disarm`]);
/// the role and its privileges stay, for the users who hold it now (so no `DROP OWNED`), and the
/// hand-over holds the grant lock. Cleanup uses it: a user could act as its profile role before
/// PostgreSQL 16.
pub async fn hand_over(connector: &Connector, maintenance_database: &str, role: &str, holding_role: &str) -> Result<Vec<String>, RoleError> {
    let client = connector.connect(maintenance_database).await?;
    Ok(hand_over_on(&client, connector, maintenance_database, role, holding_role, Departure::Profile).await?.1)
}

/// Marks a profile role as seen without members at `since` (or, with `None`, in use again):
/// its comment carries the time, so the retention counts across cleanup runs.
pub async fn mark_unused(client: &Client, database: &str, role: &ManagedRole, since: Option<DateTime<Utc>>) -> Result<(), RoleError> {
    let comment = match since {
        Some(since) => crate::engine::roles::marker_unused(role.created, since),
        None => crate::engine::roles::marker(role.created),
    };
    let sql = format!("COMMENT ON ROLE {} IS {}", ident(&role.name), literal(&comment));
    retry(database, "marking a profile role", || client.batch_execute(&sql)).await
}

/// Drops a profile role that no one holds any more: what it owns goes to the holding role, its
/// privileges are revoked (`DROP OWNED`), then `DROP ROLE`, in the database it grants in, under
/// that database's grant lock and only if it still has no members (a grant that reuses it at the
/// same moment either comes first, and the role stays, or after, and makes it anew). Returns
/// what was handed over, or None when the role was in use again or gone.
pub async fn drop_profile(connector: &Connector, maintenance_database: &str, role: &str, holding_role: &str) -> Result<Option<Vec<String>>, RoleError> {
    let client = connector.connect(maintenance_database).await?;
    let Some((oid, _)) = role_oid(&client, maintenance_database, role).await? else { return Ok(None) };
    let (_, handed_over) = hand_over_on(&client, connector, maintenance_database, role, holding_role, Departure::Profile).await?;
    // The databases it holds privileges in (pg_shdepend rows of dbid 0, such as CONNECT on a
    // database, are shared objects: any database's DROP OWNED revokes those too).
    let rows = client
        .query(
            "SELECT DISTINCT d.datname::text FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid \
             WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = $1 ORDER BY 1",
            &[&oid],
        )
        .await
        .map_err(RoleError::sql(maintenance_database, "listing the databases a profile role grants in"))?;
    let mut databases: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    if databases.is_empty() {
        databases.push(maintenance_database.to_owned());
    }
    // Each database's transaction first checks, by name and under that database's grant lock,
    // that no one became a member meanwhile; the role is dropped with the last one.
    let in_use = format!(
        "DO $pgjit$ BEGIN IF EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member \
         WHERE m.roleid = (SELECT oid FROM pg_roles WHERE rolname = {}) AND u.rolname <> current_user) \
         THEN RAISE EXCEPTION 'pgjit: profile role in use again' USING ERRCODE = 'P0001'; END IF; END $pgjit$;",
        literal(role)
    );
    let role_ident = ident(role);
    let last = databases.len() - 1;
    for (i, database) in databases.iter().enumerate() {
        let session = Session::to(&client, maintenance_database, connector, database).await?;
        let drop_role = if i == last { format!("DROP ROLE {role_ident};\n") } else { String::new() };
        let sql = format!("BEGIN;\nSELECT pg_advisory_xact_lock({});\n{in_use}\nDROP OWNED BY {role_ident};\n{drop_role}COMMIT;", crate::engine::roles::GRANT_LOCK);
        match transaction(session.client(), database, "dropping a profile role", &sql).await {
            Ok(()) => {}
            Err(RoleError::Sql { source, .. }) if source.code() == Some(&tokio_postgres::error::SqlState::RAISE_EXCEPTION) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    tracing::info!(role, handed_over = handed_over.len(), "unused profile role dropped");
    Ok(Some(handed_over))
}

/// Whose objects are handed over: a login role that is about to be dropped (its grants and
/// default privileges go too), or a profile role that stays.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Departure {
    Login,
    Profile,
}

async fn hand_over_on(client: &Client, connector: &Connector, db: &str, role: &str, holding_role: &str, departure: Departure) -> Result<(Vec<String>, Vec<String>), RoleError> {
    let Some((oid, _)) = role_oid(client, db, role).await? else {
        return Ok((Vec::new(), Vec::new()));
    };
    ensure_holding_role(client, db, holding_role).await?;
    if departure == Departure::Profile {
        // The admin must be a member to reassign what the role owns (a login role's revoke,
        // just before on this connection, repaired that already).
        let membership = format!("GRANT {} TO {}", ident(role), ident(connector.user()));
        retry(db, "making the admin a member", || client.batch_execute(&membership)).await?;
    }
    let (mut reassigned_in, mut handed_over) = (Vec::new(), Vec::new());
    for database in dependent_databases(client, db, oid, "").await? {
        let session = Session::to(client, db, connector, &database).await?;
        let c = session.client();
        let (changes, kept) = disarm(c, &database, role).await?;
        handed_over.extend(changes);
        let hand_over = hand_over_sql(c, &database, role, holding_role, departure).await?;
        transaction(c, &database, "handing owned objects to the holding role", &hand_over).await?;
        handed_over.extend(kept.into_iter().map(|object| format!("{database}: {object} handed to {holding_role}")));
        reassigned_in.push(database);
    }
    Ok((reassigned_in, handed_over))
}

/// The hand-over transaction of one database. A new owner needs CREATE on each object's schema
/// (and on the database, for a schema): the holding role gets exactly that for the length of the
/// transaction and loses it before COMMIT, so it is never seen holding a privilege.
async fn hand_over_sql(client: &Client, database: &str, role: &str, holding_role: &str, departure: Departure) -> Result<String, RoleError> {
    let row = client
        .query_one(
            "WITH o AS (SELECT oid FROM pg_roles WHERE rolname = $1) \
             SELECT quote_ident(current_database()), ARRAY(SELECT quote_ident(n.nspname) FROM pg_namespace n WHERE n.oid IN ( \
                 SELECT relnamespace FROM pg_class, o WHERE relowner = o.oid \
                 UNION SELECT pronamespace FROM pg_proc, o WHERE proowner = o.oid \
                 UNION SELECT typnamespace FROM pg_type, o WHERE typowner = o.oid \
                 UNION SELECT oprnamespace FROM pg_operator, o WHERE oprowner = o.oid \
                 UNION SELECT collnamespace FROM pg_collation, o WHERE collowner = o.oid \
                 UNION SELECT connamespace FROM pg_conversion, o WHERE conowner = o.oid \
                 UNION SELECT cfgnamespace FROM pg_ts_config, o WHERE cfgowner = o.oid \
                 UNION SELECT dictnamespace FROM pg_ts_dict, o WHERE dictowner = o.oid \
                 UNION SELECT stxnamespace FROM pg_statistic_ext, o WHERE stxowner = o.oid) \
               AND n.nspname NOT IN ('pg_toast', 'pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%' ORDER BY 1)",
            &[&role],
        )
        .await
        .map_err(RoleError::sql(database, "listing the schemas of the objects the role owns"))?;
    let (db, schemas): (String, Vec<String>) = (row.get(0), row.get(1));
    let (user, holding) = (ident(role), ident(holding_role));
    let mut sql = String::from("BEGIN;\n");
    if departure == Departure::Profile {
        // Grants re-apply a profile's privileges under this lock: none runs halfway through.
        sql.push_str(&format!("SELECT pg_advisory_xact_lock({});\n", crate::engine::roles::GRANT_LOCK));
    }
    sql.push_str(&format!("GRANT CREATE ON DATABASE {db} TO {holding};\n"));
    if !schemas.is_empty() {
        sql.push_str(&format!("GRANT CREATE ON SCHEMA {} TO {holding};\n", schemas.join(", ")));
    }
    sql.push_str(&format!("REASSIGN OWNED BY {user} TO {holding};\n"));
    if departure == Departure::Login {
        sql.push_str(&format!("DROP OWNED BY {user};\n"));
    }
    if !schemas.is_empty() {
        sql.push_str(&format!("REVOKE CREATE ON SCHEMA {} FROM {holding};\n", schemas.join(", ")));
    }
    sql.push_str(&format!("REVOKE CREATE ON DATABASE {db} FROM {holding};\nCOMMIT"));
    Ok(sql)
}

/// Makes sure the holding role exists and is powerless: NOLOGIN, no attributes, a member of
/// nothing, with no member but the admin. pgjit creates it when it is missing (the admin has
/// CREATEROLE); a holding role that has gained anything is refused, since everything handed to
/// it would gain the same.
async fn ensure_holding_role(client: &Client, database: &str, holding_role: &str) -> Result<(), RoleError> {
    let row = client
        .query_opt(
            "SELECT r.rolcanlogin OR r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication OR r.rolbypassrls, \
                    EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid), \
                    EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles x ON x.oid = m.member WHERE m.roleid = r.oid AND x.rolname <> current_user), \
                    r.rolname = current_user, pg_has_role(current_user, r.oid, 'USAGE') \
             FROM pg_roles r WHERE r.rolname = $1",
            &[&holding_role],
        )
        .await
        .map_err(RoleError::sql(database, "checking the holding role"))?;
    let holding = ident(holding_role);
    match row {
        None => {
            let create = format!(
                "CREATE ROLE {holding} NOLOGIN;\nCOMMENT ON ROLE {holding} IS {};\nGRANT {holding} TO CURRENT_USER",
                literal("pgjit: owns what departed temporary users created; no privileges, no login")
            );
            retry(database, "creating the holding role", || client.batch_execute(&create)).await?;
            Ok(())
        }
        Some(r) => {
            let (powers, member_of, members, is_admin, usable): (bool, bool, bool, bool, bool) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            let mut wrong = Vec::new();
            if is_admin {
                wrong.push("it is the admin itself");
            }
            if powers {
                wrong.push("it can log in or has role attributes");
            }
            if member_of {
                wrong.push("it is a member of other roles");
            }
            if members {
                wrong.push("roles other than the admin are members of it");
            }
            if !wrong.is_empty() {
                return Err(RoleError::Invalid(format!(
                    "holding role {holding_role:?} is not powerless ({}): what departed users created would gain that; fix it (see `pgjit setup-sql`) or name another holding_role",
                    wrong.join("; ")
                )));
            }
            if !usable {
                // From 16 only a role with ADMIN OPTION on it may grant this: setup-sql's job.
                let membership = format!("GRANT {holding} TO CURRENT_USER");
                retry(database, "making the admin a member of the holding role (run `pgjit setup-sql`)", || client.batch_execute(&membership)).await?;
            }
            Ok(())
        }
    }
}

/// A role with pgjit's marker and prefix, as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedRole {
    pub name: String,
    pub can_login: bool,
    pub valid_until: Option<DateTime<Utc>>,
    /// A profile role (privileges holder) rather than a login role.
    pub profile: bool,
    /// When pgjit created it, from its marker.
    pub created: DateTime<Utc>,
    /// Whether it owns anything in any database.
    pub owns_objects: bool,
    /// How many roles are members of it (the admin aside).
    pub members: i64,
    /// For a profile role: since when cleanup has seen it without members (its marker).
    pub unused_since: Option<DateTime<Utc>>,
}

/// Every role pgjit created with this prefix, for reconciliation against the store: only roles
/// whose name has the shape pgjit gives (`<prefix><slug>_<8 random>` or `<prefix>p_<16 hex>`)
/// and that carry pgjit's marker comment. A DBA's `pgjit_readonly` or an admin called
/// `pgjit_admin` never looks like an orphan. Read in one statement.
pub async fn managed_roles(client: &Client, prefix: &str) -> Result<Vec<ManagedRole>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT r.rolname::text, r.rolcanlogin, r.rolvaliduntil, shobj_description(r.oid, 'pg_authid'), \
                    EXISTS (SELECT 1 FROM pg_shdepend d WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.oid AND d.deptype = 'o'), \
                    (SELECT count(*) FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member WHERE m.roleid = r.oid AND u.rolname <> current_user) \
             FROM pg_roles r \
             WHERE starts_with(r.rolname, $1) AND r.rolname <> current_user AND NOT r.rolsuper AND NOT r.rolcreaterole ORDER BY 1",
            &[&prefix],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let name: String = r.get(0);
            let created = crate::engine::roles::marker_created(r.get::<_, Option<&str>>(3)?)?;
            let profile = crate::access::is_profile_role(&name, prefix);
            (profile || crate::access::is_login_role_name(&name, prefix)).then(|| ManagedRole {
                profile,
                name,
                can_login: r.get(1),
                valid_until: r.get(2),
                created,
                owns_objects: r.get(4),
                members: r.get(5),
                unused_since: r.get::<_, Option<&str>>(3).and_then(crate::engine::roles::marker_unused_since),
            })
        })
        .collect())
}
