//! Planning a grant from the catalog: what exists of what the request names, read in one
//! statement per database, and the statements that grant it to the profile roles.

use std::collections::BTreeSet;

use tokio_postgres::{Client, SimpleQueryMessage};

use chrono::Utc;

use super::{marker, GrantSpec, RoleError, CLOUD_ADMIN_ROLES, GRANT_LOCK};
use crate::access::{DatabaseAccess, Object, Privilege, Target};
use crate::engine::postgres::{ident, literal};

/// One database's part of a grant: its statements and the proof that they took effect.
pub(super) struct Plan {
    pub(super) database: String,
    pub(super) profile: String,
    /// Whether the profile role exists (assumed when planned without a lookup: it does for every
    /// grant of a privilege set but the first, and the GRANTs fail if it does not).
    pub(super) profile_exists: bool,
    /// Whether the login role exists (assumed not without a lookup: CREATE ROLE fails if it
    /// does, and a repeated grant then converges it).
    pub(super) login_exists: bool,
    pub(super) statements: Vec<String>,
    /// Queries yielding `(kind, oid, privilege)` rows that `has_*_privilege` must confirm. They
    /// name objects by their quoted names (`'"s"."t"'::regclass`), so the proof needs no lookup.
    pub(super) proofs: Vec<String>,
}

/// The name of the proof's one column: the privileges that did not take effect, or NULL.
pub(super) const PROOF_COLUMN: &str = "pgjit_missing";
/// The column that carries `server_version_num`: version differences are chosen from it.
pub(super) const VERSION_COLUMN: &str = "pgjit_server_version";

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
pub(super) struct Facts {
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

pub(super) async fn look_up(client: &Client, database: &str, access: &DatabaseAccess, spec: &GrantSpec<'_>) -> Result<Facts, RoleError> {
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
pub(super) fn plan(database: &str, access: &DatabaseAccess, facts: &Facts, admin: &str, spec: &GrantSpec<'_>, missing: &mut Vec<String>, refused: &mut Vec<String>) -> Plan {
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
pub(super) fn plan_object(plan: &mut Plan, object: &Object, set: &BTreeSet<Privilege>) -> bool {
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
pub(super) fn grants_part(plan: &Plan) -> String {
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

