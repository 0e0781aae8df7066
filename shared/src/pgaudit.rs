//! pgaudit: which statement classes a temporary user's sessions log, whether a server can log
//! them, and reading the `AUDIT:` lines it writes.

use std::borrow::Cow;

use tokio_postgres::Client;

/// The classes logged when an integration does not name its own: everything a person at a
/// prompt does, but not `misc_set` (every `SET`, mostly noise).
pub const DEFAULT_CLASSES: &[&str] = &["read", "write", "ddl", "role", "function", "misc"];

/// pgaudit's classes (`pgaudit.log`), each of which may also be excluded with a leading `-`.
const CLASSES: &[&str] = &["read", "write", "function", "role", "ddl", "misc", "misc_set", "all", "none"];

/// The class names pgaudit writes in its lines.
pub const CLASS_NAMES: &[&str] = &["READ", "WRITE", "FUNCTION", "ROLE", "DDL", "MISC", "MISC_SET"];

/// The commands most lines carry.
pub const COMMON_COMMANDS: &[&str] = &[
    "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "TRUNCATE TABLE", "COPY", "CREATE TABLE", "CREATE TABLE AS", "CREATE INDEX", "CREATE VIEW", "CREATE FUNCTION",
    "ALTER TABLE", "DROP TABLE", "ALTER ROLE", "GRANT", "REVOKE", "DO", "EXECUTE", "PREPARE", "BEGIN", "COMMIT", "ROLLBACK", "SET", "SHOW", "EXPLAIN", "VACUUM",
    "ANALYZE", "CALL",
];

/// The object types of relation lines.
pub const OBJECT_TYPES: &[&str] = &["TABLE", "VIEW", "MATERIALIZED VIEW", "SEQUENCE", "INDEX", "FOREIGN TABLE", "COMPOSITE TYPE", "TOAST TABLE", "FUNCTION", ""];

/// Checks `audit_classes` and returns the `pgaudit.log` value they make.
pub fn log_setting(classes: &[String]) -> Result<String, String> {
    if classes.is_empty() {
        return Err("must name at least one class".into());
    }
    let mut seen = Vec::new();
    for class in classes {
        let name = class.strip_prefix('-').unwrap_or(class).to_ascii_lowercase();
        if !CLASSES.contains(&name.as_str()) {
            return Err(format!("{class:?} is not a pgaudit class (one of {}, optionally with a leading '-')", CLASSES.join(", ")));
        }
        seen.push(if class.starts_with('-') { format!("-{name}") } else { name });
    }
    if seen.iter().all(|c| c == "none" || c.starts_with('-')) {
        return Err("would log nothing".into());
    }
    Ok(seen.join(", "))
}

/// Why a server cannot audit a temporary user's sessions, each reason with what to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Things that stop auditing altogether.
    pub blockers: Vec<String>,
    /// Things that make the audit less complete.
    pub gaps: Vec<String>,
}

impl Readiness {
    pub fn can_audit(&self) -> bool {
        self.blockers.is_empty()
    }
}

/// Reads, in one statement on `client`, whether pgaudit is loaded, whether its extension exists
/// in this database, and whether the logged-in admin may set `pgaudit.log` on roles.
pub async fn readiness(client: &Client, cloud: bool) -> Result<Readiness, tokio_postgres::Error> {
    // pg_settings lists a custom parameter only once its library defined it (a placeholder
    // made by `SET pgaudit.log` or `ALTER ROLE … SET` is not listed), so this row means the
    // server loaded pgaudit.
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, \
                    EXISTS (SELECT 1 FROM pg_settings WHERE name = 'pgaudit.log'), \
                    EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pgaudit'), \
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                    EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_superuser' AND pg_has_role(current_user, oid, 'MEMBER')), \
                    current_setting('log_connections'), current_setting('log_disconnections'), \
                    current_setting('log_destination')",
            &[],
        )
        .await?;
    let version: i32 = row.get(0);
    let (loaded, extension, superuser, rds_superuser): (bool, bool, bool, bool) = (row.get(1), row.get(2), row.get(3), row.get(4));
    let mut ready = Readiness::default();
    if !loaded {
        ready.blockers.push(if cloud {
            "pgaudit is not loaded: add pgaudit to shared_preload_libraries in the DB parameter group and reboot".into()
        } else {
            "pgaudit is not loaded: add pgaudit to shared_preload_libraries in postgresql.conf and restart".into()
        });
    }
    let can_set = superuser || rds_superuser || (version >= 150000 && settable(client).await?);
    if !can_set {
        ready.blockers.push(if version >= 150000 {
            "the admin may not set pgaudit.log and pgaudit.log_relation on roles: run `GRANT SET ON PARAMETER pgaudit.log, pgaudit.log_relation TO <admin>` (pgjit setup-sql prints it)".into()
        } else if cloud {
            format!("on PostgreSQL {} only a superuser or a member of rds_superuser may set pgaudit.log on roles; the admin is neither", version / 10000)
        } else {
            format!("on PostgreSQL {} only a superuser may set pgaudit.log on roles (from 15, GRANT SET ON PARAMETER can allow the admin)", version / 10000)
        });
    }
    if loaded && !extension {
        ready.gaps.push("the pgaudit extension is not created in this database: run `CREATE EXTENSION pgaudit` so DDL is logged with its objects".into());
    }
    let (connections, disconnections, destination): (String, String, String) = (row.get(5), row.get(6), row.get(7));
    if connections != "on" || disconnections != "on" {
        ready.gaps.push("log_connections and log_disconnections are not both on: sessions will show no start or end".into());
    }
    if !destination.split(',').any(|d| d.trim() == "stderr") {
        ready.gaps.push(format!("log_destination is {destination:?}: pgjit reads the stderr format"));
    }
    Ok(ready)
}

/// Whether the current user holds SET on `pgaudit.log` and `pgaudit.log_relation` (15+; the
/// function does not exist before).
async fn settable(client: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(client.query_one("SELECT has_parameter_privilege('pgaudit.log', 'SET') AND has_parameter_privilege('pgaudit.log_relation', 'SET')", &[]).await?.get(0))
}

/// One `AUDIT:` line: `AUDIT: SESSION,<statement id>,<substatement id>,<class>,<command>,
/// <object type>,<object name>,<statement>,<parameter>[,<rows>]`, fields CSV-quoted when they
/// hold a comma, a quote or a newline. Fields borrow from the line unless unquoting changed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLine<'a> {
    pub kind: Cow<'a, str>,
    pub statement_id: u64,
    pub substatement_id: u64,
    pub class: Cow<'a, str>,
    pub command: Cow<'a, str>,
    pub object_type: Cow<'a, str>,
    pub object_name: Cow<'a, str>,
    pub statement: Cow<'a, str>,
}

impl<'a> AuditLine<'a> {
    /// Parses the message of a log record; `None` when it is not an `AUDIT:` line or its CSV is
    /// not pgaudit's shape.
    pub fn parse(message: &'a str) -> Option<AuditLine<'a>> {
        let (mut line, mut fields) = Self::head(message)?;
        line.statement = fields.next()??;
        // The parameter field, then, with log_rows, a row count: nothing else.
        fields.next()??;
        match fields.next() {
            None => {}
            Some(rows) => {
                rows?.parse::<u64>().ok()?;
                if fields.next().is_some() {
                    return None;
                }
            }
        }
        Some(line)
    }

    /// A line whose record ends inside its statement's quotes: the rest of the record (more
    /// lines of the statement, the parameter field) was not in this text, as when a long
    /// statement is split across two log deliveries. Its first fields are pgaudit's shape and
    /// its statement is what there is of it. `None` for anything else, as [`AuditLine::parse`].
    pub fn parse_cut(message: &'a str) -> Option<AuditLine<'a>> {
        let (mut line, fields) = Self::head(message)?;
        // The statement: an opening quote, then text in which every quote is doubled (a lone
        // one would have closed the field), to the end.
        let rest = fields.text.get(fields.at..)?.strip_prefix('"')?;
        if fields.done || rest.replace("\"\"", "").contains('"') {
            return None;
        }
        line.statement = if rest.contains("\"\"") { Cow::Owned(rest.replace("\"\"", "\"")) } else { Cow::Borrowed(rest) };
        Some(line)
    }

    /// The fields before the statement (its own left empty), and the reader standing at it.
    fn head(message: &'a str) -> Option<(AuditLine<'a>, CsvFields<'a>)> {
        let csv = message.strip_prefix("AUDIT: ")?;
        let mut fields = CsvFields { text: csv, at: 0, done: false };
        let kind = fields.next()??;
        if kind != "SESSION" && kind != "OBJECT" {
            return None;
        }
        let line = AuditLine {
            kind,
            statement_id: fields.next()??.parse().ok()?,
            substatement_id: fields.next()??.parse().ok()?,
            class: fields.next()??,
            command: fields.next()??,
            object_type: fields.next()??,
            object_name: fields.next()??,
            statement: Cow::Borrowed(""),
        };
        Some((line, fields))
    }
}

/// The fields of one CSV record (RFC 4180 quoting: `"…"` with `""` for a quote), each `None`
/// when a quote is left open or text follows a closing quote.
struct CsvFields<'a> {
    text: &'a str,
    at: usize,
    done: bool,
}

impl<'a> Iterator for CsvFields<'a> {
    type Item = Option<Cow<'a, str>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let (text, bytes) = (self.text, self.text.as_bytes());
        if bytes.get(self.at) != Some(&b'"') {
            // pgaudit quotes every field holding a quote, so an unquoted field never has one: a
            // line that does is not pgaudit's (the tail of another message, say).
            let field_start = self.at;
            return Some(match bytes[field_start..].iter().position(|b| *b == b',' || *b == b'"') {
                Some(i) if bytes[field_start + i] == b'"' => {
                    self.done = true;
                    None
                }
                Some(comma) => {
                    self.at += comma + 1;
                    Some(Cow::Borrowed(&text[field_start..field_start + comma]))
                }
                None => {
                    self.done = true;
                    Some(Cow::Borrowed(&text[field_start..]))
                }
            });
        }
        let start = self.at + 1;
        let mut value: Option<String> = None;
        let mut from = start;
        let field = loop {
            let Some(close) = text[from..].find('"').map(|i| from + i) else {
                self.done = true;
                return Some(None);
            };
            if bytes.get(close + 1) == Some(&b'"') {
                value.get_or_insert_with(String::new).push_str(&text[from..=close]);
                from = close + 2;
                continue;
            }
            self.at = close + 1;
            break match value {
                Some(mut v) => {
                    v.push_str(&text[from..close]);
                    Cow::Owned(v)
                }
                None => Cow::Borrowed(&text[start..close]),
            };
        };
        match bytes.get(self.at) {
            None => self.done = true,
            Some(b',') => self.at += 1,
            Some(_) => {
                self.done = true;
                return Some(None);
            }
        }
        Some(Some(field))
    }
}

#[cfg(test)]
mod cut_tests {
    use super::AuditLine;

    #[test]
    fn a_record_cut_inside_its_statement_keeps_its_first_fields() {
        let cut = AuditLine::parse_cut("AUDIT: SESSION,3,1,WRITE,DELETE,TABLE,ops.pay,\"DELETE FROM ops.pay WHERE note = \"\"a,b\"\"\n  AND id IN (1,").unwrap();
        assert_eq!((cut.statement_id, &*cut.class, &*cut.command, &*cut.object_name), (3, "WRITE", "DELETE", "ops.pay"));
        assert_eq!(cut.statement, "DELETE FROM ops.pay WHERE note = \"a,b\"\n  AND id IN (1,");
        assert!(AuditLine::parse("AUDIT: SESSION,3,1,WRITE,DELETE,TABLE,ops.pay,\"DELETE FROM").is_none(), "not a whole line");
        for not_cut in [
            "AUDIT: SESSION,3,1,WRITE,DELETE,TABLE,ops.pay,\"DELETE\",<not logged>",
            "AUDIT: SESSION,3,1,WRITE,DELETE,TABLE,ops.pay,\"DELETE\" x",
            "AUDIT: SESSION,3,1,WR\"ITE,DELETE,TABLE,ops.pay,\"DELETE",
            "AUDIT: SESSION,x,1,WRITE,DELETE,TABLE,ops.pay,\"DELETE",
            "AUDIT: SESSION,3,1,WRITE,DELETE,TABLE,ops.pay,DELETE",
        ] {
            assert!(AuditLine::parse_cut(not_cut).is_none(), "{not_cut}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_become_the_setting_and_unknown_ones_are_named() {
        let classes = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(log_setting(&classes(DEFAULT_CLASSES)).unwrap(), "read, write, ddl, role, function, misc");
        assert_eq!(log_setting(&classes(&["ALL", "-misc_set"])).unwrap(), "all, -misc_set");
        assert!(log_setting(&classes(&["read", "select"])).unwrap_err().contains("\"select\""));
        assert!(log_setting(&classes(&["read'; DROP"])).is_err());
        assert!(log_setting(&classes(&["none"])).unwrap_err().contains("nothing"));
        assert!(log_setting(&[]).is_err());
    }

    #[test]
    fn audit_lines_with_quotes_commas_and_newlines() {
        let line = AuditLine::parse("AUDIT: SESSION,3,1,READ,SELECT,TABLE,sales.orders,\"SELECT a, \"\"b\"\"\nFROM sales.orders\",<not logged>").unwrap();
        assert_eq!((line.statement_id, line.substatement_id, &*line.class, &*line.command), (3, 1, "READ", "SELECT"));
        assert_eq!((&*line.object_type, &*line.object_name), ("TABLE", "sales.orders"));
        assert_eq!(line.statement, "SELECT a, \"b\"\nFROM sales.orders");
        let plain = AuditLine::parse("AUDIT: SESSION,2,1,ROLE,ALTER ROLE,,,ALTER ROLE u PASSWORD <REDACTED>,<not logged>").unwrap();
        assert_eq!((&*plain.object_name, &*plain.statement), ("", "ALTER ROLE u PASSWORD <REDACTED>"));
        // pgaudit.log_rows adds a field
        assert!(AuditLine::parse("AUDIT: SESSION,1,1,READ,SELECT,,,SELECT 1,<not logged>,1").is_some());
        for bad in [
            "AUDIT: SESSION,1,1,READ",
            "AUDIT: SESSION,x,1,READ,SELECT,,,s,p",
            "AUDIT: SESSION,1,1,READ,SELECT,,,\"open,p",
            "statement: SELECT 1",
            "AUDIT: OTHER,1,1,a,b,c,d,e,f",
            // The tail of a FATAL line whose database name carried a forged record.
            "AUDIT: SESSION,7,1,DDL,DROP TABLE,,,DROP TABLE t,:[999]:FATAL:  password authentication failed for user \"pgjit_a_b1c2d3e4\"",
            "AUDIT: SESSION,1,1,READ,SELECT,,,SELECT 1,<not logged>,x",
            "AUDIT: SESSION,1,1,READ,SELECT,,,SELECT 1,<not logged>,1,2",
        ] {
            assert_eq!(AuditLine::parse(bad), None, "{bad}");
        }
    }
}
