//! The access a request asks for, checked and normalised before anything touches a database.
//!
//! Entries name a database and then one of: nothing (database privileges), a schema, a table
//! (`*` = every table of the schema), a sequence, a function, or a role to be a member of.
//! CONNECT on the database and USAGE on the schema that an object needs are implied.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The longest name PostgreSQL keeps (NAMEDATALEN - 1 bytes); longer ones are silently truncated,
/// which would make pgjit act on a different object than the one named.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// One entry of an approval's `access` list, as it arrives.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessEntry {
    pub database: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Argument types that pick one overload of `function` (e.g. `["integer","text"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub privileges: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Privilege {
    Connect,
    Create,
    Temporary,
    Usage,
    Select,
    Insert,
    Update,
    Delete,
    Truncate,
    References,
    Trigger,
    Execute,
}

impl Privilege {
    pub fn as_sql(self) -> &'static str {
        match self {
            Privilege::Connect => "CONNECT",
            Privilege::Create => "CREATE",
            Privilege::Temporary => "TEMPORARY",
            Privilege::Usage => "USAGE",
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
            Privilege::Truncate => "TRUNCATE",
            Privilege::References => "REFERENCES",
            Privilege::Trigger => "TRIGGER",
            Privilege::Execute => "EXECUTE",
        }
    }
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_sql())
    }
}

/// What kind of object an entry is about; it decides which privileges apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Database,
    Schema,
    Table,
    Sequence,
    Function,
}

impl Level {
    /// The privileges that exist at this level, in PostgreSQL's order; `ALL` stands for them all.
    pub fn privileges(self) -> &'static [Privilege] {
        use Privilege::*;
        match self {
            Level::Database => &[Connect, Create, Temporary],
            Level::Schema => &[Usage, Create],
            Level::Table => &[Select, Insert, Update, Delete, Truncate, References, Trigger],
            Level::Sequence => &[Usage, Select, Update],
            Level::Function => &[Execute],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Database => "database",
            Level::Schema => "schema",
            Level::Table => "table",
            Level::Sequence => "sequence",
            Level::Function => "function",
        }
    }
}

/// A named object or every object of its kind in the schema (`*`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    All,
    Named(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => f.write_str("*"),
            Target::Named(n) => f.write_str(n),
        }
    }
}

/// An object inside one database.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Object {
    Database,
    Schema { schema: String },
    Table { schema: String, table: Target },
    Sequence { schema: String, sequence: Target },
    Function { schema: String, function: Target, arguments: Option<Vec<String>> },
}

impl Object {
    pub fn level(&self) -> Level {
        match self {
            Object::Database => Level::Database,
            Object::Schema { .. } => Level::Schema,
            Object::Table { .. } => Level::Table,
            Object::Sequence { .. } => Level::Sequence,
            Object::Function { .. } => Level::Function,
        }
    }

    /// The schema the object is in (none for the database itself).
    pub fn schema(&self) -> Option<&str> {
        match self {
            Object::Database => None,
            Object::Schema { schema } | Object::Table { schema, .. } | Object::Sequence { schema, .. } | Object::Function { schema, .. } => Some(schema),
        }
    }
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Database => f.write_str("the database"),
            Object::Schema { schema } => write!(f, "schema {schema:?}"),
            Object::Table { schema, table } => write!(f, "table {schema:?}.{:?}", table.to_string()),
            Object::Sequence { schema, sequence } => write!(f, "sequence {schema:?}.{:?}", sequence.to_string()),
            Object::Function { schema, function, arguments } => {
                write!(f, "function {schema:?}.{:?}", function.to_string())?;
                if let Some(args) = arguments {
                    write!(f, "({})", args.join(", "))?;
                }
                Ok(())
            }
        }
    }
}

/// The access of one database: privileges per object, and roles to be a member of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseAccess {
    #[serde(with = "object_list")]
    pub objects: BTreeMap<Object, BTreeSet<Privilege>>,
    pub roles: BTreeSet<String>,
}

/// A checked, normalised request: per database, every privilege spelled out (`ALL` expanded,
/// CONNECT and USAGE implied), so equal requests give equal sets and share a profile role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessSet {
    pub databases: BTreeMap<String, DatabaseAccess>,
}

/// A request entry that cannot be granted, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("access[{index}].{field}: {message}")]
pub struct AccessError {
    pub index: usize,
    pub field: &'static str,
    pub message: String,
}

/// Checks a name that will become a PostgreSQL identifier.
pub fn check_identifier(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(format!("is {} bytes long; PostgreSQL names are at most {MAX_IDENTIFIER_BYTES} bytes", name.len()));
    }
    if name.contains('\0') {
        return Err("must not contain a NUL byte".into());
    }
    Ok(())
}

impl AccessSet {
    /// Checks every entry and builds the normalised set; the first bad entry is named.
    pub fn from_entries(entries: &[AccessEntry]) -> Result<Self, AccessError> {
        if entries.is_empty() {
            return Err(AccessError { index: 0, field: "access", message: "at least one entry is needed".into() });
        }
        let mut set = AccessSet::default();
        for (index, entry) in entries.iter().enumerate() {
            set.add(index, entry)?;
        }
        Ok(set)
    }

    fn add(&mut self, index: usize, e: &AccessEntry) -> Result<(), AccessError> {
        let err = |field: &'static str, message: String| AccessError { index, field, message };
        let name = |field: &'static str, value: &str| check_identifier(value).map_err(|m| err(field, format!("{value:?} {m}")));
        name("database", &e.database)?;
        let target = |field: &'static str, value: &str| -> Result<Target, AccessError> {
            if value == "*" {
                Ok(Target::All)
            } else {
                name(field, value)?;
                Ok(Target::Named(value.to_owned()))
            }
        };
        let objects_named = [e.table.is_some(), e.sequence.is_some(), e.function.is_some(), e.role.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if objects_named > 1 {
            return Err(err("table", "name only one of table, sequence, function or role".into()));
        }
        if e.arguments.is_some() && e.function.is_none() {
            return Err(err("arguments", "only a function entry takes arguments".into()));
        }
        let db = self.databases.entry(e.database.clone()).or_default();
        db.objects.entry(Object::Database).or_default().insert(Privilege::Connect);

        if let Some(role) = &e.role {
            name("role", role)?;
            if e.schema.is_some() {
                return Err(err("schema", "a role entry takes no schema (roles belong to the whole server)".into()));
            }
            if !e.privileges.is_empty() {
                return Err(err("privileges", "a role entry takes no privileges: it grants membership of the role".into()));
            }
            db.roles.insert(role.clone());
            return Ok(());
        }

        let object = match (&e.schema, &e.table, &e.sequence, &e.function) {
            (None, None, None, None) => Object::Database,
            (None, _, _, _) => return Err(err("schema", "a table, sequence or function entry needs its schema".into())),
            (Some(s), None, None, None) => {
                name("schema", s)?;
                Object::Schema { schema: s.clone() }
            }
            (Some(s), Some(t), _, _) => {
                name("schema", s)?;
                Object::Table { schema: s.clone(), table: target("table", t)? }
            }
            (Some(s), _, Some(q), _) => {
                name("schema", s)?;
                Object::Sequence { schema: s.clone(), sequence: target("sequence", q)? }
            }
            (Some(s), _, _, Some(f)) => {
                name("schema", s)?;
                let function = target("function", f)?;
                if let Some(args) = &e.arguments {
                    if function == Target::All {
                        return Err(err("arguments", "arguments pick one overload; they do not go with \"*\"".into()));
                    }
                    for a in args {
                        // Bare type names (`integer`, `text[]`, `"My Type"`, `public.money`):
                        // argument types carry no modifiers, so no parentheses or commas.
                        let plain = a.chars().all(|c| c.is_alphanumeric() || " _.\"[]".contains(c));
                        if a.trim().is_empty() || a.len() > 200 || !plain {
                            return Err(err("arguments", format!("{a:?} is not a type name")));
                        }
                    }
                }
                Object::Function { schema: s.clone(), function, arguments: e.arguments.clone() }
            }
        };
        let level = object.level();
        if e.privileges.is_empty() {
            return Err(err("privileges", format!("at least one privilege is needed for {object} (one of {}, or ALL)", names(level))));
        }
        let mut privileges = BTreeSet::new();
        for p in &e.privileges {
            let upper = p.trim().to_ascii_uppercase();
            if upper == "ALL" || upper == "ALL PRIVILEGES" {
                privileges.extend(level.privileges().iter().copied());
                continue;
            }
            let upper = if upper == "TEMP" { "TEMPORARY".to_owned() } else { upper };
            match level.privileges().iter().find(|x| x.as_sql() == upper) {
                Some(x) => {
                    privileges.insert(*x);
                }
                None => {
                    return Err(err(
                        "privileges",
                        format!("{p:?} does not apply to a {} (allowed: {}, or ALL)", level.as_str(), names(level)),
                    ))
                }
            }
        }
        if let Some(schema) = match &object {
            Object::Table { schema, .. } | Object::Sequence { schema, .. } | Object::Function { schema, .. } => Some(schema),
            _ => None,
        } {
            db.objects.entry(Object::Schema { schema: schema.clone() }).or_default().insert(Privilege::Usage);
        }
        db.objects.entry(object).or_default().extend(privileges);
        Ok(())
    }
}

/// JSON maps need string keys: the objects are written as a list of `[object, privileges]`.
mod object_list {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(map: &BTreeMap<Object, BTreeSet<Privilege>>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Object, BTreeSet<Privilege>>, D::Error> {
        Ok(Vec::<(Object, BTreeSet<Privilege>)>::deserialize(d)?.into_iter().collect())
    }
}

fn names(level: Level) -> String {
    level.privileges().iter().map(|p| p.as_sql()).collect::<Vec<_>>().join(", ")
}

impl DatabaseAccess {
    /// The profile role that holds exactly this access in `database`: the same access gives the
    /// same name, so concurrent and later grants reuse one role instead of piling up ACL entries.
    pub fn profile_role(&self, prefix: &str, database: &str) -> String {
        // A canonical encoding: every name length-prefixed, maps and sets in their sorted order.
        let mut hash = Sha256::new();
        let mut put = |text: &str| {
            hash.update((text.len() as u64).to_be_bytes());
            hash.update(text.as_bytes());
        };
        put(database);
        for (object, privileges) in &self.objects {
            match object {
                Object::Database => put("database"),
                Object::Schema { schema } => {
                    put("schema");
                    put(schema);
                }
                Object::Table { schema, table: target } | Object::Sequence { schema, sequence: target } => {
                    put(object.level().as_str());
                    put(schema);
                    match target {
                        Target::All => put("*all"),
                        Target::Named(name) => {
                            put("named");
                            put(name);
                        }
                    }
                }
                Object::Function { schema, function, arguments } => {
                    put("function");
                    put(schema);
                    match function {
                        Target::All => put("*all"),
                        Target::Named(name) => {
                            put("named");
                            put(name);
                        }
                    }
                    match arguments {
                        None => put("any overload"),
                        Some(args) => {
                            put("arguments");
                            put(&args.len().to_string());
                            args.iter().for_each(|a| put(a));
                        }
                    }
                }
            }
            put("privileges");
            privileges.iter().for_each(|p| put(p.as_sql()));
        }
        put("roles");
        self.roles.iter().for_each(|r| put(r));
        let digest = hash.finalize();
        format!("{prefix}p_{}", hex::encode(&digest[..8]))
    }
}

/// Tells a profile role (`<prefix>p_<16 hex>`) from a login role (`<prefix><slug>_<8 random>`).
pub fn is_profile_role(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix("p_"))
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
}

/// Whether a name has the shape [`login_role_name`] gives: `<prefix><slug>_<8 of a-z0-9>`.
pub fn is_login_role_name(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else { return false };
    let Some((slug, random)) = rest.rsplit_once('_') else { return false };
    !slug.is_empty()
        && slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && random.len() == 8
        && random.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !is_profile_role(name, prefix)
}

/// `<prefix><slug>_<8 random>`, at most 63 bytes: the slug comes from the requester's id so a
/// person reading `pg_stat_activity` sees who it is; the random part keeps every grant's role apart.
pub fn login_role_name(prefix: &str, requester: &str) -> String {
    use rand::Rng;
    const RANDOM: usize = 8;
    // An ARN names the person by its last part (the user, or the session of a role).
    let named = if requester.starts_with("arn:") { requester.rsplit('/').next().unwrap_or(requester) } else { requester };
    let local = named.split('@').next().unwrap_or(named);
    let mut slug = String::new();
    for c in local.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('_') {
            slug.push('_');
        }
    }
    let slug = slug.trim_matches('_');
    let room = MAX_IDENTIFIER_BYTES.saturating_sub(prefix.len() + 1 + RANDOM);
    let mut slug: String = slug.chars().take(room).collect();
    while slug.ends_with('_') {
        slug.pop();
    }
    if slug.is_empty() {
        slug.push_str("user");
        slug.truncate(room);
    }
    let mut rng = rand::rng();
    let random: String = (0..RANDOM)
        .map(|_| {
            let i = rng.random_range(0..36u8);
            (if i < 10 { b'0' + i } else { b'a' + i - 10 }) as char
        })
        .collect();
    format!("{prefix}{slug}_{random}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(json: &str) -> Vec<AccessEntry> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn spec_example_normalises_with_implied_privileges() {
        let set = AccessSet::from_entries(&entries(
            r#"[{"database":"app","schema":"sales","table":"orders","privileges":["SELECT"]},
                {"database":"app","schema":"sales","table":"*","privileges":["select"]},
                {"database":"app","schema":"sales","privileges":["USAGE"]},
                {"database":"app","role":"reporting"}]"#,
        ))
        .unwrap();
        let app = &set.databases["app"];
        assert_eq!(app.objects[&Object::Database], BTreeSet::from([Privilege::Connect]));
        assert_eq!(app.objects[&Object::Schema { schema: "sales".into() }], BTreeSet::from([Privilege::Usage]));
        assert_eq!(
            app.objects[&Object::Table { schema: "sales".into(), table: Target::All }],
            BTreeSet::from([Privilege::Select])
        );
        assert_eq!(app.roles, BTreeSet::from(["reporting".to_string()]));
    }

    #[test]
    fn all_expands_and_equal_requests_share_a_profile() {
        let a = AccessSet::from_entries(&entries(r#"[{"database":"app","schema":"s","table":"t","privileges":["ALL"]}]"#)).unwrap();
        let b = AccessSet::from_entries(&entries(
            r#"[{"database":"app","schema":"s","privileges":["usage"]},
                {"database":"app","schema":"s","table":"t","privileges":["TRIGGER","SELECT","INSERT","UPDATE","DELETE","TRUNCATE","REFERENCES","SELECT"]}]"#,
        ))
        .unwrap();
        assert_eq!(a, b);
        let pa = a.databases["app"].profile_role("pgjit_", "app");
        assert_eq!(pa, b.databases["app"].profile_role("pgjit_", "app"));
        assert!(is_profile_role(&pa, "pgjit_"), "{pa}");
        assert_ne!(pa, a.databases["app"].profile_role("pgjit_", "other"));
        // Any difference in the set gives another profile role.
        let others = [
            r#"[{"database":"app","schema":"s","table":"t","privileges":["SELECT"]}]"#,
            r#"[{"database":"app","schema":"s","table":"u","privileges":["ALL"]}]"#,
            r#"[{"database":"app","schema":"s","table":"*","privileges":["ALL"]}]"#,
            r#"[{"database":"app","schema":"s","table":"t","privileges":["ALL"]},{"database":"app","role":"r"}]"#,
        ];
        let mut seen = std::collections::BTreeSet::from([pa]);
        for json in others {
            let set = AccessSet::from_entries(&entries(json)).unwrap();
            assert!(seen.insert(set.databases["app"].profile_role("pgjit_", "app")), "{json}");
            // The normalised set round-trips through JSON, as it is stored.
            let back: AccessSet = serde_json::from_str(&serde_json::to_string(&set).unwrap()).unwrap();
            assert_eq!(back, set);
        }
    }

    #[test]
    fn bad_entries_are_named() {
        let cases = [
            (r#"[]"#, "access[0].access"),
            (r#"[{"database":"app","schema":"s","privileges":["SELECT"]}]"#, "access[0].privileges: \"SELECT\" does not apply to a schema"),
            (r#"[{"database":"app","privileges":["CONNECT"]},{"database":"app","schema":"s","table":"t","privileges":["EXECUTE"]}]"#, "access[1].privileges"),
            (r#"[{"database":"app","table":"t","privileges":["SELECT"]}]"#, "access[0].schema"),
            (r#"[{"database":"app","schema":"s","table":"t"}]"#, "access[0].privileges: at least one"),
            (r#"[{"database":"app","role":"r","privileges":["SELECT"]}]"#, "access[0].privileges"),
            (r#"[{"database":"app","schema":"s","role":"r"}]"#, "access[0].schema"),
            (r#"[{"database":"","privileges":["CONNECT"]}]"#, "access[0].database"),
            (r#"[{"database":"app","schema":"s","table":"t","role":"r","privileges":["SELECT"]}]"#, "access[0].table"),
            (r#"[{"database":"app","schema":"s","table":"t","arguments":[],"privileges":["SELECT"]}]"#, "access[0].arguments"),
            (r#"[{"database":"app","schema":"s","function":"*","arguments":["int"],"privileges":["EXECUTE"]}]"#, "access[0].arguments"),
            (r#"[{"database":"a\u0000b","privileges":["CONNECT"]}]"#, "NUL"),
        ];
        for (json, expected) in cases {
            let err = AccessSet::from_entries(&entries(json)).unwrap_err().to_string();
            assert!(err.contains(expected), "{json}: {err}");
        }
        let long = "x".repeat(64);
        let err = AccessSet::from_entries(&[AccessEntry { database: "app".into(), schema: Some(long), privileges: vec!["USAGE".into()], ..Default::default() }])
            .unwrap_err();
        assert_eq!(err.field, "schema");
        assert!(err.message.contains("64 bytes"), "{err}");
        // 63 bytes of multi-byte characters is fine; 64 is not.
        let ok = "é".repeat(31) + "x";
        assert_eq!(ok.len(), 63);
        check_identifier(&ok).unwrap();
        assert!(serde_json::from_str::<Vec<AccessEntry>>(r#"[{"database":"a","tabel":"x"}]"#).is_err());
    }

    #[test]
    fn login_role_names_are_recognised_and_others_are_not() {
        for requester in ["john.doe@corp.com", "ö", &"x".repeat(300)] {
            assert!(is_login_role_name(&login_role_name("pgjit_", requester), "pgjit_"), "{requester}");
        }
        for other in ["pgjit_readonly", "pgjit_admin", "pgjit_p_0123456789abcdef", "other_john_abcd1234", "pgjit__abcd1234", "pgjit_john_ABCD1234"] {
            assert!(!is_login_role_name(other, "pgjit_"), "{other}");
        }
    }

    #[test]
    fn login_role_names_fit_and_differ() {
        let a = login_role_name("pgjit_", "John.Doe+ops@corp.com");
        assert!(a.starts_with("pgjit_john_doe_ops_"), "{a}");
        assert_eq!(a.len(), "pgjit_john_doe_ops_".len() + 8);
        assert_ne!(a, login_role_name("pgjit_", "John.Doe+ops@corp.com"));
        let long = login_role_name("pgjit_", &"verylongname".repeat(20));
        assert!(long.len() <= 63, "{long}");
        assert!(!is_profile_role(&long, "pgjit_"));
        let odd = login_role_name("pgjit_", "@@@");
        assert!(odd.starts_with("pgjit_user_"), "{odd}");
        assert!(!is_profile_role(&login_role_name("pgjit_", "p"), "pgjit_"));
    }
}
