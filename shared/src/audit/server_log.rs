//! PostgreSQL's server log in its `stderr` format: lines that start with `log_line_prefix`, then
//! a severity (`LOG:  `), then the message; a message's further lines start with a tab.
//!
//! The tab matters for trust: the server puts one after every newline of a message (statements
//! included), so no text a database user sends can begin a line of its own. A line that starts
//! with a prefix was written by the server; anything else continues the record before it.

use std::borrow::Cow;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};

/// RDS's and Aurora's `log_line_prefix`, which they do not let you change.
pub const RDS_LOG_LINE_PREFIX: &str = "%t:%r:%u@%d:[%p]:";

/// The severities (and the labels of a message's extra parts) that follow the prefix.
const SEVERITIES: &[&str] = &[
    "LOG", "ERROR", "FATAL", "PANIC", "WARNING", "NOTICE", "INFO", "DEBUG", "DEBUG1", "DEBUG2", "DEBUG3", "DEBUG4", "DEBUG5", "STATEMENT", "DETAIL", "HINT",
    "CONTEXT", "QUERY", "LOCATION",
];

/// A `log_line_prefix` that pgjit cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log_line_prefix {prefix:?}: {message}")]
pub struct PrefixError {
    pub prefix: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// `%t`: `2026-11-25 07:54:04 UTC`
    Time,
    /// `%m`: `2026-11-25 07:54:04.123 UTC`
    TimeMs,
    /// `%n`: `1764057244.123`
    Epoch,
    /// `%s`: the session's start, like `%t`
    SessionStart,
    /// `%r`: `10.0.0.1(54321)` or `[local]`
    RemoteWithPort,
    /// `%h`
    RemoteHost,
    User,
    Database,
    Pid,
    /// Any other escape: text whose shape pgjit does not need.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    Field(Field),
    /// `%q`: processes without a session stop the prefix here.
    SessionOnly,
}

/// A parsed `log_line_prefix`, ready to split lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinePrefix {
    tokens: Vec<Token>,
}

/// What a line's prefix said (borrowing the line's text).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PrefixFields<'a> {
    pub time: Option<DateTime<Utc>>,
    pub user: Option<&'a str>,
    pub database: Option<&'a str>,
    /// The client's address (`host(port)` under `%r`, the host alone under `%h`).
    pub client: Option<&'a str>,
    pub pid: Option<u32>,
}

impl LinePrefix {
    /// Reads `log_line_prefix` as the server does: `%` escapes (PostgreSQL's full set, with
    /// optional padding such as `%-10u`), `%%` for a percent sign, anything else literal.
    pub fn parse(prefix: &str) -> Result<LinePrefix, PrefixError> {
        let bad = |message: String| PrefixError { prefix: prefix.to_owned(), message };
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut chars = prefix.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            // Padding: an optional '-' and digits between '%' and the escape.
            let mut padded = false;
            while let Some(&p) = chars.peek() {
                if p == '-' || p.is_ascii_digit() {
                    padded = true;
                    chars.next();
                } else {
                    break;
                }
            }
            let Some(escape) = chars.next() else { return Err(bad("ends in a lone '%'".into())) };
            let field = match escape {
                '%' => {
                    literal.push('%');
                    continue;
                }
                't' => Field::Time,
                'm' => Field::TimeMs,
                'n' => Field::Epoch,
                's' => Field::SessionStart,
                'r' => Field::RemoteWithPort,
                'h' => Field::RemoteHost,
                'u' => Field::User,
                'd' => Field::Database,
                'p' => Field::Pid,
                'q' => {
                    if !literal.is_empty() {
                        tokens.push(Token::Literal(std::mem::take(&mut literal)));
                    }
                    tokens.push(Token::SessionOnly);
                    continue;
                }
                'a' | 'b' | 'c' | 'e' | 'i' | 'l' | 'v' | 'x' | 'P' | 'Q' | 'L' => Field::Other,
                other => return Err(bad(format!("unknown escape %{other}"))),
            };
            if padded {
                // Padding adds spaces that pgjit would have to strip from every field; none of
                // the usual prefixes pad, so refuse rather than misread.
                return Err(bad(format!("padded escapes (%-N{escape}) are not supported")));
            }
            if !literal.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut literal)));
            }
            if let Some(Token::Field(previous)) = tokens.last() {
                if !fixed_shape(*previous) && !fixed_shape(field) {
                    return Err(bad("two escapes of free text side by side cannot be told apart; put a separator between them".into()));
                }
            }
            tokens.push(Token::Field(field));
        }
        if !literal.is_empty() {
            tokens.push(Token::Literal(literal));
        }
        if !tokens.iter().any(|t| matches!(t, Token::Field(Field::User))) {
            return Err(bad("has no %u: log lines could not be tied to a user".into()));
        }
        Ok(LinePrefix { tokens })
    }

    /// Splits a line into what its prefix said, its severity and the message, or `None` when
    /// the line does not start with this prefix and a severity.
    pub fn split<'l>(&self, line: &'l str) -> Option<(PrefixFields<'l>, &'static str, &'l str)> {
        let (spans, severity, message) = self.split_spans(line)?;
        Some((spans.fields(line, parse_timestamp), severity, message))
    }

    /// [`LinePrefix::split`] without making the fields: where each lies in `line`.
    fn split_spans<'l>(&self, line: &'l str) -> Option<(Spans, &'static str, &'l str)> {
        let mut spans = Spans::default();
        let end = match_tokens(&self.tokens, line, 0, &mut spans)?;
        let (severity, message) = severity_at(line, end)?;
        Some((spans, severity, message))
    }
}

/// Where the fields pgjit reads lie in a line: byte ranges, copied freely while matching.
#[derive(Debug, Clone, Copy, Default)]
struct Spans {
    time: Option<(usize, usize, Field)>,
    user: Option<(usize, usize)>,
    database: Option<(usize, usize)>,
    client: Option<(usize, usize)>,
    pid: Option<(usize, usize)>,
}

impl Spans {
    fn fields<'l>(&self, line: &'l str, parse_time: impl FnOnce(&str) -> Option<DateTime<Utc>>) -> PrefixFields<'l> {
        let text = |span: Option<(usize, usize)>| span.map(|(a, b)| &line[a..b]).filter(|v| !v.is_empty() && *v != "[unknown]");
        let time = match self.time {
            Some((a, b, Field::Epoch)) => line[a..b].parse::<f64>().ok().and_then(|s| DateTime::from_timestamp_millis((s * 1000.0).round() as i64)),
            Some((a, b, _)) => parse_time(&line[a..b]),
            None => None,
        };
        PrefixFields { time, user: text(self.user), database: text(self.database), client: text(self.client), pid: self.pid.and_then(|(a, b)| line[a..b].parse().ok()) }
    }
}

/// Fields whose text has a shape of its own, so they can sit next to another field.
fn fixed_shape(field: Field) -> bool {
    matches!(field, Field::Time | Field::TimeMs | Field::Epoch | Field::SessionStart | Field::Pid | Field::RemoteWithPort)
}

/// `SEVERITY:  message` at `at`, if there is one.
fn severity_at(line: &str, at: usize) -> Option<(&'static str, &str)> {
    let rest = line.get(at..)?;
    // The longest severity is 9 bytes; look no further for the colon.
    let colon = rest.as_bytes().iter().take(10).position(|b| *b == b':')?;
    if !rest[colon..].starts_with(":  ") {
        return None;
    }
    let severity = SEVERITIES.iter().find(|s| **s == &rest[..colon])?;
    Some((severity, &rest[colon + 3..]))
}

/// Matches `tokens` against `line` from `at`, noting where fields lie in `spans`; returns where
/// the prefix ends (the severity must follow there). Free-text fields try each end, shortest
/// first, without allocating.
fn match_tokens(tokens: &[Token], line: &str, at: usize, spans: &mut Spans) -> Option<usize> {
    let Some((token, rest)) = tokens.split_first() else { return Some(at) };
    let field = match token {
        Token::Literal(text) => {
            if !line.get(at..)?.starts_with(text.as_str()) {
                return None;
            }
            return match_tokens(rest, line, at + text.len(), spans);
        }
        Token::SessionOnly => {
            // A process without a session ends its prefix here; a session goes on.
            let mut with_session = *spans;
            if let Some(end) = match_tokens(rest, line, at, &mut with_session) {
                if severity_at(line, end).is_some() {
                    *spans = with_session;
                    return Some(end);
                }
            }
            return severity_at(line, at).map(|_| at);
        }
        Token::Field(field) => *field,
    };
    let tail = line.get(at..)?;
    let attempt = |len: usize, spans: &mut Spans| -> Option<usize> {
        let mut tried = *spans;
        let span = (at, at + len);
        match field {
            Field::Time | Field::TimeMs | Field::Epoch => tried.time = Some((span.0, span.1, field)),
            Field::User => tried.user = Some(span),
            Field::Database => tried.database = Some(span),
            Field::RemoteWithPort | Field::RemoteHost => tried.client = Some(span),
            Field::Pid => tried.pid = Some(span),
            Field::SessionStart | Field::Other => {}
        }
        let end = match_tokens(rest, line, at + len, &mut tried)?;
        *spans = tried;
        Some(end)
    };
    match field {
        Field::Time | Field::SessionStart => attempt(timestamp_len(tail, false)?, spans),
        Field::TimeMs => attempt(timestamp_len(tail, true)?, spans),
        Field::Epoch => attempt(tail.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count(), spans),
        Field::Pid => attempt(tail.bytes().take_while(u8::is_ascii_digit).count(), spans),
        Field::RemoteWithPort => {
            let (full, empty) = remote_len(tail);
            full.and_then(|len| attempt(len, spans)).or_else(|| attempt(empty, spans))
        }
        Field::RemoteHost | Field::User | Field::Database | Field::Other => {
            // Free text ends where the next literal (or the severity) can start; a line's
            // prefix is short, so only its first 1 KiB is searched.
            let mut limit = tail.len().min(1024);
            while !tail.is_char_boundary(limit) {
                limit -= 1;
            }
            let window = &tail[..limit];
            match rest.first() {
                Some(Token::Literal(next)) => window.match_indices(next.as_str()).find_map(|(i, _)| attempt(i, spans)),
                _ => (0..=limit).filter(|i| window.is_char_boundary(*i) && severity_at(tail, *i).is_some()).find_map(|i| attempt(i, spans)),
            }
        }
    }
}

/// Length of `YYYY-MM-DD HH:MM:SS[.mmm] ZONE` at the start of `text`.
fn timestamp_len(text: &str, millis: bool) -> Option<usize> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| b.get(range.clone()).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let shape = digits(0..4) && b.get(4) == Some(&b'-') && digits(5..7) && b.get(7) == Some(&b'-') && digits(8..10) && b.get(10) == Some(&b' ')
        && digits(11..13) && b.get(13) == Some(&b':') && digits(14..16) && b.get(16) == Some(&b':') && digits(17..19);
    if !shape {
        return None;
    }
    let mut at = 19;
    if millis {
        if b.get(19) != Some(&b'.') || !digits(20..23) {
            return None;
        }
        at = 23;
    }
    if b.get(at) != Some(&b' ') {
        return None;
    }
    // An abbreviation (`UTC`, `CEST`) or a numeric offset (`+01`, `-0530`); a ':' may follow
    // the zone in the prefix, so it is never part of it.
    let zone_text = &b[at + 1..];
    let zone = match zone_text.first() {
        Some(b'+' | b'-') => 1 + zone_text[1..].iter().take_while(|c| c.is_ascii_digit()).count(),
        _ => zone_text.iter().take_while(|c| c.is_ascii_alphabetic()).count(),
    };
    (zone > 0).then_some(at + 1 + zone)
}

/// Reads a `%t`/`%m` timestamp. The zone is `log_timezone`'s abbreviation: UTC and GMT (RDS's
/// and the usual server setting) and numeric offsets are understood; other abbreviations are
/// ambiguous, and the caller falls back to the time the log event carries.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let (local, zone) = text.rsplit_once(' ')?;
    // Fixed positions (`YYYY-MM-DD HH:MM:SS[.fff]`): several times faster than a format parser,
    // and every line has one.
    let b = local.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0u32, |n, d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let nanos = match b.get(19) {
        None => 0,
        Some(b'.') => {
            let fraction = &local[20..];
            if fraction.is_empty() || fraction.len() > 9 || !fraction.bytes().all(|d| d.is_ascii_digit()) {
                return None;
            }
            fraction.parse::<u32>().ok()? * 10u32.pow(9 - fraction.len() as u32)
        }
        Some(_) => return None,
    };
    let naive = chrono::NaiveDate::from_ymd_opt(number(0..4)? as i32, number(5..7)?, number(8..10)?)?.and_hms_nano_opt(number(11..13)?, number(14..16)?, number(17..19)?, nanos)?;
    let offset_seconds = match zone {
        "UTC" | "GMT" | "Z" | "UCT" => 0,
        _ => {
            let sign = match zone.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let digits: String = zone[1..].chars().filter(char::is_ascii_digit).collect();
            let (hours, minutes) = match digits.len() {
                2 => (digits.parse::<i32>().ok()?, 0),
                4 => (digits[..2].parse::<i32>().ok()?, digits[2..].parse::<i32>().ok()?),
                _ => return None,
            };
            sign * (hours * 3600 + minutes * 60)
        }
    };
    FixedOffset::east_opt(offset_seconds)?.from_local_datetime(&naive).single().map(|t| t.with_timezone(&Utc))
}

/// Length of `%r` at the start of `text`: `host(port)` or `[local]` if there is one, and the
/// empty alternative (a process without a session).
fn remote_len(text: &str) -> (Option<usize>, usize) {
    if text.starts_with("[local]") {
        return (Some("[local]".len()), 0);
    }
    let head = &text.as_bytes()[..text.len().min(300)];
    if let Some(open) = head.iter().position(|b| *b == b'(') {
        let host = &head[..open];
        if !host.is_empty() && !host.iter().any(u8::is_ascii_whitespace) {
            let port = text.as_bytes()[open + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
            if port > 0 && text.as_bytes().get(open + 1 + port) == Some(&b')') {
                return (Some(open + port + 2), 0);
            }
        }
    }
    (None, 0)
}

/// One record of the log: its prefix, severity and message (further lines joined with `\n`,
/// their leading tab removed, as they were before the server wrote them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub fields: PrefixFields<'a>,
    pub severity: &'static str,
    /// Borrowed from the log text unless further lines were joined to it.
    pub message: Cow<'a, str>,
    /// Where the record started: the log event's id and the record's position within it.
    pub origin: (&'a str, u32),
    /// The time of the log event that carried the record (CloudWatch's), when there is one.
    pub event_time: Option<DateTime<Utc>>,
}

impl Record<'_> {
    /// The record's time: the prefix's, else the log event's.
    pub fn time(&self) -> Option<DateTime<Utc>> {
        self.fields.time.or(self.event_time)
    }
}

/// Joins lines into records. Lines that neither start a record nor continue one (a
/// continuation before any record, or text in another format) are counted, never guessed at.
#[derive(Debug)]
pub struct Records<'p, 'a> {
    prefix: &'p LinePrefix,
    pub records: Vec<Record<'a>>,
    /// Lines that were neither a record's start nor a continuation of one.
    pub unparsed: usize,
    /// The last timestamp text read and its time: lines come in bursts of the same second.
    last_time: Option<(String, Option<DateTime<Utc>>)>,
    /// Keep only the records of users whose name starts with this (and their continuations).
    /// (A searcher built once: every line of a delivery is searched for it.)
    users_with_prefix: Option<memchr::memmem::Finder<'static>>,
    /// Whether the record being continued was left out.
    skipping: bool,
}

impl<'p, 'a> Records<'p, 'a> {
    pub fn new(prefix: &'p LinePrefix) -> Self {
        Records { prefix, records: Vec::new(), unparsed: 0, last_time: None, users_with_prefix: None, skipping: false }
    }

    /// Records of users whose name starts with `prefix` only: the others (and the lines that
    /// continue them) are read past without being kept.
    pub fn of_users_with_prefix(prefix: &'p LinePrefix, user_prefix: &str) -> Self {
        Records { users_with_prefix: Some(memchr::memmem::Finder::new(user_prefix.as_bytes()).into_owned()), ..Records::new(prefix) }
    }

    /// Adds one log event's text (one or more lines) from `origin`.
    pub fn push_event(&mut self, origin: &'a str, event_time: Option<DateTime<Utc>>, text: &'a str) {
        let mut started_here = 0;
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if let Some(continued) = line.strip_prefix('\t') {
                match self.records.last_mut() {
                    _ if self.skipping => {}
                    Some(record) => {
                        let message = record.message.to_mut();
                        message.push('\n');
                        message.push_str(continued);
                    }
                    None => self.unparsed += 1,
                }
                continue;
            }
            if line.is_empty() {
                continue;
            }
            // A line that does not even contain the users' prefix is no kept user's record: it
            // is read past without matching its prefix (and what continues it with it).
            if let Some(users) = &self.users_with_prefix {
                if users.find(line.get(..512).unwrap_or(line).as_bytes()).is_none() {
                    self.skipping = true;
                    continue;
                }
            }
            match self.prefix.split_spans(line) {
                Some((spans, severity, message)) => {
                    self.skipping = self.users_with_prefix.as_ref().is_some_and(|p| !spans.user.is_some_and(|(a, b)| line[a..b].as_bytes().starts_with(p.needle())));
                    if self.skipping {
                        continue;
                    }
                    let last_time = &mut self.last_time;
                    let fields = spans.fields(line, |text| match last_time {
                        Some((seen, time)) if seen == text => *time,
                        _ => {
                            let time = parse_timestamp(text);
                            *last_time = Some((text.to_owned(), time));
                            time
                        }
                    });
                    self.records.push(Record { fields, severity, message: Cow::Borrowed(message), origin: (origin, started_here), event_time });
                    started_here += 1;
                }
                None => self.unparsed += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rds() -> LinePrefix {
        LinePrefix::parse(RDS_LOG_LINE_PREFIX).unwrap()
    }

    #[test]
    fn rds_lines_split_into_their_fields() {
        let line = "2026-11-25 07:54:04 UTC:10.0.1.7(54321):pgjit_req_1@app:[12464]:LOG:  AUDIT: SESSION,1,1,READ,SELECT,,,SELECT 1,<not logged>";
        let (fields, severity, message) = rds().split(line).unwrap();
        assert_eq!(fields.user.as_deref(), Some("pgjit_req_1"));
        assert_eq!(fields.database.as_deref(), Some("app"));
        assert_eq!(fields.client.as_deref(), Some("10.0.1.7(54321)"));
        assert_eq!(fields.pid, Some(12464));
        assert_eq!(fields.time.unwrap().to_rfc3339(), "2026-11-25T07:54:04+00:00");
        assert_eq!(severity, "LOG");
        assert!(message.starts_with("AUDIT: SESSION,1,1,READ"));
    }

    #[test]
    fn background_processes_and_unknown_users_have_empty_fields() {
        let (fields, severity, _) = rds().split("2026-11-25 07:54:02 UTC::@:[12433]:LOG:  database system is ready").unwrap();
        assert_eq!((fields.user, fields.database, fields.client, severity), (None, None, None, "LOG"));
        let (fields, ..) = rds().split("2026-11-25 07:54:02 UTC:[local]:[unknown]@[unknown]:[12441]:LOG:  connection received: host=[local]").unwrap();
        assert_eq!((fields.user, fields.client.as_deref()), (None, Some("[local]")));
    }

    #[test]
    fn user_names_with_the_separators_in_them_do_not_shift_the_other_fields() {
        // A database name with ':' and '[' cannot move the pid or the severity.
        let line = "2026-11-25 07:54:04 UTC:[local]:bob@odd:[db]:[77]:ERROR:  x";
        let (fields, severity, message) = rds().split(line).unwrap();
        assert_eq!(fields.user.as_deref(), Some("bob"));
        assert_eq!(fields.database.as_deref(), Some("odd:[db]"));
        assert_eq!((fields.pid, severity, message), (Some(77), "ERROR", "x"));
    }

    #[test]
    fn other_prefixes_and_the_usual_escapes() {
        let p = LinePrefix::parse("%m [%p] %q%u@%d ").unwrap();
        let (f, s, m) = p.split("2026-11-25 07:54:04.123 UTC [42] alice@app LOG:  statement: SELECT 1").unwrap();
        assert_eq!((f.user.as_deref(), f.database.as_deref(), f.pid, s, m), (Some("alice"), Some("app"), Some(42), "LOG", "statement: SELECT 1"));
        assert_eq!(f.time.unwrap().timestamp_subsec_millis(), 123);
        // %q: the checkpointer has no session, so its prefix stops there.
        let (f, s, _) = p.split("2026-11-25 07:54:04.123 UTC [7] LOG:  checkpoint starting: time").unwrap();
        assert_eq!((f.user, f.pid, s), (None, Some(7), "LOG"));
        let p = LinePrefix::parse("%n|%a|%c|%l|%h|%u|%d|%%|").unwrap();
        let (f, ..) = p.split("1764057244.500|psql|692561a4.3090|3|10.0.0.9|carol|crm|%|LOG:  x").unwrap();
        assert_eq!((f.user.as_deref(), f.database.as_deref(), f.client.as_deref()), (Some("carol"), Some("crm"), Some("10.0.0.9")));
        assert_eq!(f.time.unwrap().timestamp_millis(), 1_764_057_244_500);
        let p = LinePrefix::parse("%t [%p]: user=%u,db=%d,app=%a,client=%h ").unwrap();
        let (f, ..) = p.split("2026-11-25 08:54:04 +01 [9]: user=dave,db=app,app=psql,client=[local] LOG:  x").unwrap();
        assert_eq!((f.user.as_deref(), f.time.unwrap().to_rfc3339()), (Some("dave"), "2026-11-25T07:54:04+00:00".into()));
    }

    #[test]
    fn prefixes_pgjit_cannot_read_are_refused_with_the_reason() {
        for (prefix, says) in [("%t:%p:", "no %u"), ("%t %u%d", "side by side"), ("%t %-10u ", "padded"), ("%t %u %", "lone"), ("%t %u %z", "%z")] {
            let e = LinePrefix::parse(prefix).unwrap_err();
            assert!(e.to_string().contains(says), "{prefix}: {e}");
        }
    }

    #[test]
    fn continuation_lines_join_their_record_and_nothing_a_user_types_starts_one() {
        let prefix = rds();
        let mut records = Records::new(&prefix);
        // The user's statement held a forged line; the server wrote it after a tab.
        let log = "2026-11-25 07:54:04 UTC:[local]:mallory@app:[10]:ERROR:  syntax error\n\
                   2026-11-25 07:54:04 UTC:[local]:mallory@app:[10]:STATEMENT:  SELECT 'x\n\
                   \t2026-11-25 07:54:04 UTC:[local]:pgjit_victim@app:[11]:LOG:  AUDIT: SESSION,1,1,DDL,DROP TABLE,,,DROP TABLE x,<none>'\n\
                   2026-11-25 07:54:05 UTC:[local]:pgjit_victim@app:[11]:LOG:  AUDIT: SESSION,1,1,READ,SELECT,,,\"SELECT 1,\n\
                   \t2\",<not logged>\n";
        records.push_event("e1", None, log);
        assert_eq!(records.unparsed, 0);
        assert_eq!(records.records.len(), 3);
        assert_eq!(records.records[1].fields.user.as_deref(), Some("mallory"));
        assert!(records.records[1].message.contains("\n2026-11-25 07:54:04 UTC:[local]:pgjit_victim"));
        assert_eq!(records.records[2].message, "AUDIT: SESSION,1,1,READ,SELECT,,,\"SELECT 1,\n2\",<not logged>");
        assert_eq!(records.records[2].origin, ("e1", 2));
        // Keeping one prefix's users only: the others and their continuations are read past.
        let mut kept = Records::of_users_with_prefix(&prefix, "pgjit_");
        kept.push_event("e1", None, log);
        assert_eq!(kept.records.len(), 1);
        assert_eq!(kept.records[0].message, records.records[2].message);
        assert_eq!(kept.records[0].origin, ("e1", 0));
        // A continuation with nothing before it, and text in no known shape, are counted.
        let prefix = rds();
        let mut records = Records::new(&prefix);
        records.push_event("e2", None, "\tstray\nnot a log line\n");
        assert_eq!((records.records.len(), records.unparsed), (0, 2));
    }
}
