//! Reading the `AUDIT:` lines pgaudit writes (which classes a user's sessions log, and whether a
//! server can, is the engine's: [`crate::engine::pgaudit`]).

use std::borrow::Cow;

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
