//! Reading a server's catalog for discovery: databases, schemas, tables and views, sequences,
//! functions and roles, with a fixed number of queries per database (never one per schema or
//! table), sent together on one connection.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

/// Schemas that belong to PostgreSQL itself and are never inventoried.
const SYSTEM_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    pub name: String,
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relation {
    pub schema: String,
    pub name: String,
    /// table, partitioned_table, view, materialized_view or foreign_table
    pub kind: String,
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sequence {
    pub schema: String,
    pub name: String,
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Function {
    pub schema: String,
    pub name: String,
    /// The identity arguments, as `pg_get_function_identity_arguments` gives them.
    pub arguments: String,
    /// function or procedure
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseCatalog {
    pub database: String,
    pub schemas: Vec<Schema>,
    pub relations: Vec<Relation>,
    pub sequences: Vec<Sequence>,
    pub functions: Vec<Function>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    pub can_login: bool,
    pub superuser: bool,
    pub create_role: bool,
    pub member_of: Vec<String>,
}

/// The databases that accept connections (templates excluded).
pub async fn databases(client: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query("SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname", &[])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The table of this database with the most ACL entries among those a role named
/// `<role_prefix>…` holds a privilege on, and its count: how much pgjit's profile roles add to
/// the ACLs every permission check reads.
pub async fn largest_acl(client: &Client, role_prefix: &str) -> Result<Option<(String, i32)>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT c.oid::regclass::text, cardinality(c.relacl) FROM pg_class c \
             WHERE c.relacl IS NOT NULL AND EXISTS (SELECT 1 FROM aclexplode(c.relacl) a JOIN pg_roles r ON r.oid = a.grantee WHERE starts_with(r.rolname, $1)) \
             ORDER BY 2 DESC, 1 LIMIT 1",
            &[&role_prefix],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// The objects of the database `client` is connected to: four queries, pipelined.
pub async fn read_database(client: &Client) -> Result<DatabaseCatalog, tokio_postgres::Error> {
    let schemas_sql = format!(
        "SELECT n.nspname::text, pg_get_userbyid(n.nspowner)::text FROM pg_namespace n WHERE {SYSTEM_SCHEMAS} ORDER BY 1"
    );
    let relations_sql = format!(
        "SELECT n.nspname::text, c.relname::text, \
                CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned_table' WHEN 'v' THEN 'view' \
                               WHEN 'm' THEN 'materialized_view' ELSE 'foreign_table' END, \
                pg_get_userbyid(c.relowner)::text \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r','p','v','m','f') AND NOT c.relispartition AND {SYSTEM_SCHEMAS} ORDER BY 1, 2"
    );
    let sequences_sql = format!(
        "SELECT n.nspname::text, c.relname::text, pg_get_userbyid(c.relowner)::text \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'S' AND {SYSTEM_SCHEMAS} ORDER BY 1, 2"
    );
    let functions_sql = format!(
        "SELECT n.nspname::text, p.proname::text, pg_get_function_identity_arguments(p.oid), \
                CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END \
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE p.prokind IN ('f','p') AND {SYSTEM_SCHEMAS} ORDER BY 1, 2, 3"
    );
    let (database, schemas, relations, sequences, functions) = futures_util::future::try_join5(
        client.query_one("SELECT current_database()::text", &[]),
        client.query(&schemas_sql, &[]),
        client.query(&relations_sql, &[]),
        client.query(&sequences_sql, &[]),
        client.query(&functions_sql, &[]),
    )
    .await?;
    Ok(DatabaseCatalog {
        database: database.get(0),
        schemas: schemas.iter().map(|r| Schema { name: r.get(0), owner: r.get(1) }).collect(),
        relations: relations
            .iter()
            .map(|r| Relation { schema: r.get(0), name: r.get(1), kind: r.get(2), owner: r.get(3) })
            .collect(),
        sequences: sequences.iter().map(|r| Sequence { schema: r.get(0), name: r.get(1), owner: r.get(2) }).collect(),
        functions: functions
            .iter()
            .map(|r| Function { schema: r.get(0), name: r.get(1), arguments: r.get(2), kind: r.get(3) })
            .collect(),
    })
}

/// Every role but PostgreSQL's predefined ones, with what it is a member of: one query.
pub async fn roles(client: &Client) -> Result<Vec<Role>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT r.rolname::text, r.rolcanlogin, r.rolsuper, r.rolcreaterole, \
                    ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
                          WHERE m.member = r.oid ORDER BY 1) \
             FROM pg_roles r WHERE r.rolname !~ '^pg_' ORDER BY 1",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Role { name: r.get(0), can_login: r.get(1), superuser: r.get(2), create_role: r.get(3), member_of: r.get(4) })
        .collect())
}
