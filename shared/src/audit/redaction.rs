//! Taking secrets out of SQL text before pgjit stores or logs it.
//!
//! A statement keeps its shape, and each secret becomes `'[redacted]'`:
//! - a string literal that follows a word naming a secret (`PASSWORD`, `ENCRYPTED PASSWORD`,
//!   `sslpassword`, `secret`, `token`, …), with an optional `=` or `TO` between: role
//!   passwords, user mappings and server options (`OPTIONS (ADD password '…')`), `SET x.password`;
//! - inside any literal, libpq connection strings' `password=…` (quoted or not) and the password
//!   of a URI (`postgresql://user:…@host`): `dblink`, `dblink_connect`, `postgres_fdw`, …
//!
//! Literals are read as PostgreSQL reads them: `'…'` with `''`, `E'…'` with backslash escapes,
//! and dollar quotes; comments are skipped. Redaction errs towards hiding.

const REDACTED: &str = "[redacted]";

/// Words after which a literal is a secret.
fn names_a_secret(word: &str) -> bool {
    let b = word.as_bytes();
    let at = |i: usize, needle: &[u8]| b.get(i..i + needle.len()).is_some_and(|w| w.eq_ignore_ascii_case(needle));
    word.eq_ignore_ascii_case("passphrase")
        || word.eq_ignore_ascii_case("pwd")
        || (0..b.len()).any(|i| match b[i] | 0x20 {
            b'p' => at(i, b"password") || at(i, b"passwd"),
            b's' => at(i, b"secret"),
            b't' => at(i, b"token"),
            b'c' => at(i, b"credential"),
            b'a' => at(i, b"apikey") || at(i, b"api_key") || at(i, b"access_key"),
            _ => false,
        })
}

/// `statement` with every secret replaced; unchanged (and not copied) when it holds none.
pub fn redact(statement: &str) -> std::borrow::Cow<'_, str> {
    if !may_hold_secret(statement) {
        return std::borrow::Cow::Borrowed(statement);
    }
    let bytes = statement.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut at = 0;
    // The last word seen, and whether only `=`/`TO`/space/comments came after it.
    let mut secret_word_pending = false;
    while at < bytes.len() {
        let c = bytes[at];
        if c == b'-' && bytes.get(at + 1) == Some(&b'-') {
            at += statement[at..].find('\n').unwrap_or(statement.len() - at);
            continue;
        }
        if c == b'/' && bytes.get(at + 1) == Some(&b'*') {
            at = comment_end(bytes, at);
            continue;
        }
        if let Some(literal) = literal_at(statement, at) {
            let secret = secret_word_pending;
            let replacement = if secret { Some(format!("'{REDACTED}'")) } else { redact_inside(&literal.value).map(|v| quote(&v)) };
            if let Some(replacement) = replacement {
                out.push_str(&statement[copied..literal.start]);
                out.push_str(&replacement);
                copied = literal.end;
            }
            at = literal.end;
            secret_word_pending = false;
            continue;
        }
        if c == b'"' {
            // A quoted identifier: `"password"` names a secret as much as the bare word.
            // (`""` inside is a quote; an unclosed one runs to the end.)
            let (name, end) = match statement[at + 1..].find('"') {
                Some(i) => (&statement[at + 1..at + 1 + i], at + 2 + i),
                None => (&statement[at + 1..], statement.len()),
            };
            secret_word_pending = names_a_secret(name);
            at = end;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            // Identifier bytes: ASCII letters, digits, '_', '$', and any byte of a multi-byte
            // character (so a word never ends inside one).
            let len = bytes[at..].iter().position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$' || *b >= 0x80)).unwrap_or(bytes.len() - at);
            let word = &statement[at..at + len];
            if word.eq_ignore_ascii_case("to") && secret_word_pending {
                // `SET x.password TO '…'`
            } else {
                secret_word_pending = names_a_secret(word);
            }
            at += len;
            continue;
        }
        if !(c.is_ascii_whitespace() || (c == b'=' && secret_word_pending)) {
            secret_word_pending = false;
        }
        at += 1;
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(statement);
    }
    out.push_str(&statement[copied..]);
    std::borrow::Cow::Owned(out)
}

/// Where the block comment starting at `at` ends: PostgreSQL's comments nest, so
/// `/* /* */ ' */` is one comment, and a literal inside it is not one.
fn comment_end(bytes: &[u8], at: usize) -> usize {
    let (mut depth, mut i) = (0usize, at);
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// [`redact`] of text that may already be owned: moved, not copied, when it holds no secret.
pub fn redact_cow(statement: std::borrow::Cow<'_, str>) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    match statement {
        Cow::Borrowed(text) => redact(text),
        Cow::Owned(text) => {
            let redacted = match redact(&text) {
                Cow::Owned(redacted) => Some(redacted),
                Cow::Borrowed(_) => None,
            };
            Cow::Owned(redacted.unwrap_or(text))
        }
    }
}

/// Whether `text` has anything redaction looks for (a word with `pass`, `pwd`, `secret` or
/// `token` in it, or a URI): one pass over the bytes, so most statements cost nothing more.
///
/// The pass looks at each pair of bytes once, in a table of the pairs that anchor a needle
/// (`pa` of `pass`, `cr` of `secret` and `credential`, …): ordinary SQL has few of them, so
/// the loop rarely branches away, and only at an anchor are the needles around it compared.
fn may_hold_secret(text: &str) -> bool {
    let b = text.as_bytes();
    let at = |i: Option<usize>, needle: &[u8]| i.and_then(|i| b.get(i..i + needle.len())).is_some_and(|w| w.eq_ignore_ascii_case(needle));
    b.windows(2).enumerate().any(|(i, w)| {
        let pair = anchor_pair(w[0], w[1]);
        if SECRET_ANCHORS[pair >> 6] >> (pair & 63) & 1 == 0 {
            return false;
        }
        match pair {
            _ if pair == anchor_pair(b'p', b'a') => at(Some(i), b"pass"),
            _ if pair == anchor_pair(b'p', b'w') => at(Some(i), b"pwd"),
            _ if pair == anchor_pair(b'c', b'r') => at(i.checked_sub(2), b"secret") || at(Some(i), b"credential"),
            _ if pair == anchor_pair(b'o', b'k') => at(i.checked_sub(1), b"token"),
            _ if pair == anchor_pair(b'i', b'k') => at(i.checked_sub(2), b"apikey"),
            _ if pair == anchor_pair(b'_', b'k') => at(i.checked_sub(3), b"api_key") || at(i.checked_sub(6), b"access_key"),
            _ => at(Some(i), b"://"),
        }
    })
}

/// A pair of bytes as an index of 16 bits, each byte ORed with 0x20 (letters lowercased; a
/// byte equal to a needle's ignoring ASCII case always gives the needle's pair).
const fn anchor_pair(first: u8, second: u8) -> usize {
    ((first | 0x20) as usize) << 8 | (second | 0x20) as usize
}

/// The set of anchor pairs of [`may_hold_secret`], one bit per pair.
const SECRET_ANCHORS: [u64; 1024] = {
    let pairs = [anchor_pair(b'p', b'a'), anchor_pair(b'p', b'w'), anchor_pair(b'c', b'r'), anchor_pair(b'o', b'k'), anchor_pair(b'i', b'k'), anchor_pair(b'_', b'k'), anchor_pair(b':', b'/')];
    let mut set = [0u64; 1024];
    let mut i = 0;
    while i < pairs.len() {
        set[pairs[i] >> 6] |= 1 << (pairs[i] & 63);
        i += 1;
    }
    set
};

struct Literal<'a> {
    start: usize,
    end: usize,
    /// The literal's text, borrowed unless escapes had to be undone.
    value: std::borrow::Cow<'a, str>,
}

/// The string literal starting at `at`, if one does: `'…'`, `E'…'`, `U&'…'`, `$tag$…$tag$`.
fn literal_at(s: &str, at: usize) -> Option<Literal<'_>> {
    let bytes = s.as_bytes();
    let c = bytes[at];
    // A letter that prefixes a literal must not end a longer word (`the'` is not `E'`).
    let after_word = at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
    let (quote_at, backslashes) = match c {
        b'\'' => (at, false),
        b'E' | b'e' if !after_word && bytes.get(at + 1) == Some(&b'\'') => (at + 1, true),
        b'U' | b'u' if !after_word && bytes.get(at + 1) == Some(&b'&') && bytes.get(at + 2) == Some(&b'\'') => (at + 2, false),
        b'$' => {
            let tag_len = s[at + 1..].find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))?;
            if bytes.get(at + 1 + tag_len) != Some(&b'$') || s[at + 1..].starts_with(|ch: char| ch.is_ascii_digit()) {
                return None;
            }
            let tag = &s[at..at + tag_len + 2];
            let body = at + tag.len();
            let close = s[body..].find(tag).map(|i| body + i);
            let end = close.map(|i| i + tag.len()).unwrap_or(s.len());
            return Some(Literal { start: at, end, value: std::borrow::Cow::Borrowed(&s[body..close.unwrap_or(s.len())]) });
        }
        _ => return None,
    };
    let body = quote_at + 1;
    // Fast path: up to the first quote (or backslash, in E'' strings) the text is the value.
    let special = |b: &u8| *b == b'\'' || (backslashes && *b == b'\\');
    let first = bytes[body..].iter().position(special).map(|i| body + i);
    if let Some(close) = first.filter(|&i| bytes[i] == b'\'' && bytes.get(i + 1) != Some(&b'\'')) {
        return Some(Literal { start: at, end: close + 1, value: std::borrow::Cow::Borrowed(&s[body..close]) });
    }
    let mut value = String::from(&s[body..first.unwrap_or(s.len())]);
    let mut i = first.unwrap_or(s.len());
    while i < bytes.len() {
        match bytes[i] {
            b'\'' if bytes.get(i + 1) == Some(&b'\'') => {
                value.push('\'');
                i += 2;
            }
            b'\'' => return Some(Literal { start: at, end: i + 1, value: std::borrow::Cow::Owned(value) }),
            b'\\' if backslashes && i + 1 < bytes.len() => {
                let next = s[i + 1..].chars().next().unwrap_or('\\');
                value.push(next);
                i += 1 + next.len_utf8();
            }
            _ => {
                let run = bytes[i..].iter().position(special).unwrap_or(bytes.len() - i).max(1);
                let run_end = (i + run..=bytes.len()).find(|e| s.is_char_boundary(*e)).unwrap_or(bytes.len());
                value.push_str(&s[i..run_end]);
                i = run_end;
            }
        }
    }
    // An unterminated literal runs to the end (the server would have refused it; hide it all).
    Some(Literal { start: at, end: s.len(), value: std::borrow::Cow::Owned(value) })
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A literal's text with connection-string and URI passwords replaced, if it held any.
fn redact_inside(value: &str) -> Option<String> {
    if !may_hold_secret(value) {
        return None;
    }
    let lower = value.to_ascii_lowercase();
    let mut out = String::new();
    let mut copied = 0;
    // `password=…`, `sslpassword = '…'` in a libpq connection string.
    let mut from = 0;
    while let Some(found) = lower[from..].find("password") {
        let key_end = from + found + "password".len();
        let mut at = key_end;
        let b = value.as_bytes();
        while b.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        if b.get(at) == Some(&b'=') {
            at += 1;
            while b.get(at).is_some_and(u8::is_ascii_whitespace) {
                at += 1;
            }
            let end = if b.get(at) == Some(&b'\'') {
                let mut i = at + 1;
                while i < b.len() && b[i] != b'\'' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                (i + 1).min(b.len())
            } else {
                at + value[at..].find(char::is_whitespace).unwrap_or(value.len() - at)
            };
            if at >= copied {
                out.push_str(&value[copied..at]);
                out.push_str(REDACTED);
                copied = end;
            }
            from = end.max(key_end);
        } else {
            from = key_end;
        }
    }
    // `scheme://user:password@host`
    let mut from = 0;
    while let Some(found) = value[from..].find("://") {
        let authority_start = from + found + 3;
        let authority_end = authority_start + value[authority_start..].find(|c: char| c == '/' || c == '?' || c.is_whitespace()).unwrap_or(value.len() - authority_start);
        let authority = &value[authority_start..authority_end];
        if let Some(at_sign) = authority.rfind('@') {
            if let Some(colon) = authority[..at_sign].find(':') {
                let secret_start = authority_start + colon + 1;
                if secret_start >= copied {
                    out.push_str(&value[copied..secret_start]);
                    out.push_str(REDACTED);
                    copied = authority_start + at_sign;
                }
            }
        }
        from = authority_end.max(authority_start);
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&value[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn secrets_in_statements_are_redacted() {
        let cases = [
            ("ALTER ROLE me PASSWORD 'hunter2'", "ALTER ROLE me PASSWORD '[redacted]'"),
            ("alter user me with encrypted password 'SCRAM-SHA-256$4096:abc'", "alter user me with encrypted password '[redacted]'"),
            ("CREATE ROLE x LOGIN PASSWORD E'hun\\'ter2' VALID UNTIL 'infinity'", "CREATE ROLE x LOGIN PASSWORD '[redacted]' VALID UNTIL 'infinity'"),
            ("CREATE ROLE x PASSWORD $pw$hunter2$pw$", "CREATE ROLE x PASSWORD '[redacted]'"),
            ("CREATE USER MAPPING FOR me SERVER s OPTIONS (user 'bob', password 'hunter2')", "CREATE USER MAPPING FOR me SERVER s OPTIONS (user 'bob', password '[redacted]')"),
            ("ALTER USER MAPPING FOR me SERVER s OPTIONS (SET \"password\" 'hunter2')", "ALTER USER MAPPING FOR me SERVER s OPTIONS (SET \"password\" '[redacted]')"),
            ("SELECT dblink_connect('c', 'host=db1 user=bob password=hunter2 dbname=x')", "SELECT dblink_connect('c', 'host=db1 user=bob password=[redacted] dbname=x')"),
            ("SELECT * FROM dblink('host=db1 password = ''hun ter2'' dbname=x', 'SELECT 1') AS t(a int)", "SELECT * FROM dblink('host=db1 password = [redacted] dbname=x', 'SELECT 1') AS t(a int)"),
            ("SELECT dblink_connect('postgresql://bob:hunter2@db1:5432/x')", "SELECT dblink_connect('postgresql://bob:[redacted]@db1:5432/x')"),
            ("SET myapp.api_token TO 'hunter2'", "SET myapp.api_token TO '[redacted]'"),
            ("SET myapp.secret = 'hunter2'", "SET myapp.secret = '[redacted]'"),
            ("CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host 'db', sslpassword 'hunter2')", "CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host 'db', sslpassword '[redacted]')"),
        ];
        for (statement, expected) in cases {
            let redacted = redact(statement);
            assert_eq!(redacted, expected, "{statement}");
            assert!(!redacted.contains("hunter2") && !redacted.contains("hun"), "{redacted}");
        }
    }

    #[test]
    fn statements_without_secrets_are_untouched() {
        for statement in [
            "SELECT customer, total FROM sales.orders WHERE customer = 'acme'",
            "SELECT 'password' AS word -- a comment with password 'x' is not a literal\n",
            "UPDATE users SET password_changed_at = now() WHERE id = 1",
            "SELECT $1, 'it''s', E'a\\nb' /* password */",
        ] {
            assert!(matches!(redact(statement), std::borrow::Cow::Borrowed(_)), "{statement}");
        }
        // A literal that merely names the column is a value, not the secret being set:
        // redaction errs towards hiding, so a value compared with a password column goes too.
        assert_eq!(redact("SELECT 1 FROM u WHERE password = 'x'"), "SELECT 1 FROM u WHERE password = '[redacted]'");
    }

    #[test]
    fn nested_comments_hide_no_literal() {
        // `/* /* */ ' */` is one comment: the quote inside it starts no literal.
        let statement = "SELECT 'x' /* /* */ ' */ ALTER ROLE me PASSWORD 'hunter2' --'";
        assert!(!redact(statement).contains("hunter2"), "{}", redact(statement));
        assert_eq!(redact("SELECT 1 /* password 'a' */ , 2"), "SELECT 1 /* password 'a' */ , 2");
    }

    #[test]
    fn more_words_name_secrets() {
        assert_eq!(redact("UPDATE t SET api_key = 'hunter2'"), "UPDATE t SET api_key = '[redacted]'");
        assert_eq!(redact("ALTER SERVER s OPTIONS (SET credentials 'hunter2')"), "ALTER SERVER s OPTIONS (SET credentials '[redacted]')");
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_redacted_without_panicking(text in "\\PC*", glue in proptest::sample::select(vec!["'", "\"", "/*", "*/", "--", "$$", "$a$", "E'", "\\", "password ", "é", "\n"])) {
            let _ = redact(&text);
            let _ = redact(&format!("{glue}{text}{glue}"));
            let _ = redact(&format!("password {glue} {text}"));
        }
    }

    proptest::proptest! {
        /// The fast prefilter says yes exactly where a plain case-insensitive search finds a
        /// needle: a secret it missed would be stored in the clear.
        #[test]
        fn the_prefilter_misses_no_needle(text in "[a-zA-Z_:/ ']{0,12}", needle in proptest::sample::select(vec!["pass", "pwd", "secret", "token", "credential", "apikey", "api_key", "access_key", "://", "pas", "secre", "toke", "acces"]), upper in proptest::bool::ANY, at_end in proptest::bool::ANY) {
            let needle = if upper { needle.to_ascii_uppercase() } else { needle.to_owned() };
            let candidate = if at_end { format!("{text}{needle}") } else { format!("{needle}{text}") };
            let lower = candidate.to_ascii_lowercase();
            let plain = ["pass", "pwd", "secret", "token", "credential", "apikey", "api_key", "access_key", "://"].iter().any(|n| lower.contains(n));
            proptest::prop_assert_eq!(super::may_hold_secret(&candidate), plain, "{}", candidate);
        }
    }

    #[test]
    fn unterminated_and_odd_input_never_panics_or_leaks() {
        let _ = redact("SELECT 'pass' /* /* */ \" */ --é");
        assert_eq!(redact("ALTER ROLE me PASSWORD 'hunter2"), "ALTER ROLE me PASSWORD '[redacted]'");
        for s in ["'", "$", "$a", "E'", "U&'", "\"", "/*", "--", "password", "password =", "é'password=x"] {
            let _ = redact(s);
        }
    }
}
