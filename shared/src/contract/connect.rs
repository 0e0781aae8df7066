//! `pgjit connect`: the requester's way into their grant, decided without I/O: whether the
//! grant is theirs and usable now (each refusal says why), which database, and the libpq
//! settings a client gets. The password or token is never part of these settings: the CLI hands
//! it to psql through the environment only.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::contract::integration::AccessMode;
use crate::contract::requests::Caller;

/// What the requester needs to connect, from the front door's request or from an `Access
/// Granted` event's detail (never a secret value).
#[derive(Debug, Clone, PartialEq)]
pub struct WayIn {
    pub request_id: String,
    /// The requester as the record names them: an Identity Center user name or an ARN.
    pub requester_id: String,
    pub requester_arn: Option<String>,
    /// The front door's status of the request (`pending`, `approved`, `granted`, …), if it came
    /// from there.
    pub request_status: Option<String>,
    pub start_at: Option<DateTime<Utc>>,
    /// The grant's own status (`active`, `revoked`, …); None: no grant made yet.
    pub grant_status: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub access_mode: AccessMode,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub databases: Vec<String>,
    pub db_user: Option<String>,
    pub secret_arn: Option<String>,
    pub access_role_arn: Option<String>,
    pub region: Option<String>,
    /// `rds`, `system`, `pem` (then `ca_pem`), or `none` (unknown: the caller names a CA).
    pub roots: String,
    pub ca_pem: Option<String>,
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn time(v: &Value, key: &str) -> Option<DateTime<Utc>> {
    v.get(key)
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn mode(v: &Value) -> AccessMode {
    match v.get("access_mode").and_then(Value::as_str) {
        Some("iam") => AccessMode::Iam,
        _ => AccessMode::Password,
    }
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

impl WayIn {
    /// From the front door's answer to `get` (a request, its grant once made).
    pub fn from_request(request: &Value) -> Result<WayIn, String> {
        let request_id =
            text(request, "request_id").ok_or("the front door's answer has no request_id")?;
        let grant = request.get("grant").cloned().unwrap_or(Value::Null);
        Ok(WayIn {
            request_id,
            requester_id: text(request, "requester").unwrap_or_default(),
            requester_arn: text(request, "requester_arn"),
            request_status: text(request, "status"),
            start_at: time(request, "start_at"),
            grant_status: text(&grant, "status"),
            expires_at: time(&grant, "expires_at"),
            access_mode: mode(&grant),
            host: text(&grant, "host"),
            port: grant
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok()),
            databases: strings(&grant, "databases"),
            db_user: text(&grant, "db_user"),
            secret_arn: text(&grant, "secret_arn"),
            access_role_arn: text(&grant, "access_role_arn"),
            region: text(&grant, "region"),
            roots: text(&grant, "roots").unwrap_or_else(|| "none".into()),
            ca_pem: text(&grant, "ca_pem"),
        })
    }

    /// From an `Access Granted` event (the whole event or its detail), for grants an approval
    /// tool asked for: the event says nothing of the server's CA except for RDS and Aurora
    /// hosts, whose roots pgjit carries.
    pub fn from_granted(event: &Value) -> Result<WayIn, String> {
        let detail = event.get("detail").unwrap_or(event);
        let request_id =
            text(detail, "request_id").ok_or("the Access Granted details have no request_id")?;
        let requester = detail.get("requester").cloned().unwrap_or(Value::Null);
        let host = text(detail, "host");
        let rds = host.as_deref().is_some_and(|h| {
            let h = h.to_ascii_lowercase();
            h.ends_with(".rds.amazonaws.com") || h.ends_with(".rds.amazonaws.com.cn")
        });
        Ok(WayIn {
            request_id,
            requester_id: text(&requester, "id").unwrap_or_default(),
            requester_arn: text(&requester, "iam_arn"),
            request_status: None,
            start_at: None,
            grant_status: Some("active".into()),
            expires_at: time(detail, "expires_at"),
            access_mode: mode(detail),
            host,
            port: detail
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok()),
            databases: strings(detail, "databases"),
            db_user: text(detail, "db_user"),
            secret_arn: text(detail, "secret_arn"),
            access_role_arn: text(detail, "access_role_arn"),
            region: text(detail, "region"),
            roots: if rds { "rds".into() } else { "none".into() },
            ca_pem: None,
        })
    }

    /// Whether `me` may connect with it now; the refusal says why not.
    pub fn check(&self, me: &Caller, now: DateTime<Utc>) -> Result<(), String> {
        let id = &self.request_id;
        let mine = me.id() == self.requester_id
            || self.requester_arn.as_deref() == Some(me.arn.as_str())
            || me.arn == self.requester_id;
        if !mine {
            return Err(format!(
                "request {id} is not yours: it was asked for by {} (you are {})",
                self.requester_id,
                me.id()
            ));
        }
        match self.request_status.as_deref() {
            Some("pending") => {
                return Err(format!("request {id} is pending: it is not approved yet"))
            }
            Some("approved") if self.grant_status.is_none() => {
                return Err(match self.start_at {
                    Some(at) if at > now => format!(
                        "request {id} has not started yet: it starts at {}",
                        at.format("%Y-%m-%dT%H:%M:%SZ")
                    ),
                    _ => format!(
                    "request {id} is approved and its grant is being made: try again in a moment"
                ),
                })
            }
            Some(s @ ("denied" | "cancelled" | "expired" | "failed")) => {
                return Err(format!(
                    "request {id} is {s}: there is no grant to connect with"
                ))
            }
            _ => {}
        }
        let expired = self.expires_at.is_some_and(|at| at <= now);
        let at = self
            .expires_at
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        match self.grant_status.as_deref() {
            Some("active") if !expired => Ok(()),
            Some("active" | "revoked" | "deleted" | "revoking") if expired => {
                Err(format!("the grant of request {id} expired at {at}"))
            }
            Some("revoked" | "deleted" | "revoking") => Err(format!(
                "the grant of request {id} was revoked before its expiry ({at})"
            )),
            Some("granting") => Err(format!(
                "the grant of request {id} is being made: try again in a moment"
            )),
            Some("failed") => Err(format!(
                "the grant of request {id} failed: there is no access"
            )),
            Some(other) => Err(format!("the grant of request {id} is {other}")),
            None => Err(format!("request {id} has no grant")),
        }
    }

    /// The database to connect to: `wanted` if the grant reaches it, else its first.
    pub fn database(&self, wanted: Option<&str>) -> Result<String, String> {
        match wanted {
            Some(db) if self.databases.iter().any(|d| d == db) => Ok(db.to_owned()),
            Some(db) => Err(format!(
                "request {} does not reach database {db:?}; it reaches {}",
                self.request_id,
                self.databases.join(", ")
            )),
            None => self
                .databases
                .first()
                .cloned()
                .ok_or_else(|| format!("request {} names no database", self.request_id)),
        }
    }
}

/// libpq's settings for one connection, the password apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    /// A file of PEM roots, or `system`.
    pub sslrootcert: String,
}

impl Settings {
    /// The `PG*` variables (`sslmode=verify-full` always: the server's name is checked).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGDATABASE", self.dbname.clone()),
            ("PGUSER", self.user.clone()),
            ("PGSSLMODE", "verify-full".into()),
            ("PGSSLROOTCERT", self.sslrootcert.clone()),
        ]
    }

    /// A libpq connection URI without the password.
    pub fn url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "postgresql://{}@{host}:{}/{}?sslmode=verify-full&sslrootcert={}",
            percent(&self.user),
            self.port,
            percent(&self.dbname),
            percent(&self.sslrootcert)
        )
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters and `/`.
fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `export NAME='value'` for a POSIX shell, the value single-quoted whatever it holds.
pub fn shell_export(name: &str, value: &str) -> String {
    format!("export {name}='{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn me(arn: &str) -> Caller {
        Caller {
            arn: arn.into(),
            user_id: "AROAX:me".into(),
            account: "123456789012".into(),
        }
    }

    fn granted(status: &str, expires: &str) -> WayIn {
        WayIn::from_request(&json!({"request_id": "R1", "requester": "john.doe@corp.com", "status": "granted",
            "grant": {"status": status, "db_user": "jit_john", "expires_at": expires, "access_mode": "password",
                "host": "db.example.com", "port": 5432, "databases": ["app", "reports"], "roots": "rds"}}))
        .unwrap()
    }

    #[test]
    fn only_the_requester_connects_and_only_while_the_grant_lasts() {
        let now = DateTime::parse_from_rfc3339("2026-12-05T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let john = me("arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Eng_0123456789abcdef/john.doe@corp.com");
        let jane = me("arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Eng_0123456789abcdef/jane@corp.com");
        granted("active", "2026-12-05T13:00:00Z")
            .check(&john, now)
            .unwrap();
        assert!(granted("active", "2026-12-05T13:00:00Z")
            .check(&jane, now)
            .unwrap_err()
            .contains("is not yours"));
        assert!(granted("active", "2026-12-05T11:00:00Z")
            .check(&john, now)
            .unwrap_err()
            .contains("expired at 2026-12-05T11:00:00Z"));
        assert!(granted("revoked", "2026-12-05T11:00:00Z")
            .check(&john, now)
            .unwrap_err()
            .contains("expired"));
        assert!(granted("revoked", "2026-12-05T13:00:00Z")
            .check(&john, now)
            .unwrap_err()
            .contains("was revoked"));
        let later = WayIn::from_request(&json!({"request_id": "R2", "requester": "john.doe@corp.com", "status": "approved", "start_at": "2026-12-06T09:00:00Z"})).unwrap();
        assert!(later
            .check(&john, now)
            .unwrap_err()
            .contains("has not started yet: it starts at 2026-12-06T09:00:00Z"));
        let pending = WayIn::from_request(
            &json!({"request_id": "R3", "requester": "john.doe@corp.com", "status": "pending"}),
        )
        .unwrap();
        assert!(pending
            .check(&john, now)
            .unwrap_err()
            .contains("not approved yet"));
        // An IAM user is matched on its ARN.
        let alice = me("arn:aws:iam::123456789012:user/alice");
        let hers = WayIn::from_granted(&json!({"detail": {"request_id": "R4", "requester": {"id": "alice", "iam_arn": "arn:aws:iam::123456789012:user/alice"},
            "expires_at": "2026-12-05T13:00:00Z", "host": "orders.abc.eu-west-1.rds.amazonaws.com", "port": 5432, "databases": ["app"], "db_user": "jit_alice"}})).unwrap();
        hers.check(&alice, now).unwrap();
        assert_eq!(
            hers.roots, "rds",
            "RDS hosts chain to the CAs pgjit carries"
        );
    }

    #[test]
    fn the_database_is_one_the_grant_reaches() {
        let way = granted("active", "2026-12-05T13:00:00Z");
        assert_eq!(way.database(None).unwrap(), "app");
        assert_eq!(way.database(Some("reports")).unwrap(), "reports");
        assert!(way
            .database(Some("billing"))
            .unwrap_err()
            .contains("does not reach database \"billing\""));
    }

    #[test]
    fn settings_never_carry_a_password_and_quote_what_they_hold() {
        let s = Settings {
            host: "db.example.com".into(),
            port: 5432,
            dbname: "app db".into(),
            user: "jit_j@hn".into(),
            sslrootcert: "/tmp/ca 1.pem".into(),
        };
        assert_eq!(s.url(), "postgresql://jit_j%40hn@db.example.com:5432/app%20db?sslmode=verify-full&sslrootcert=/tmp/ca%201.pem");
        assert!(s.env().iter().all(|(k, _)| *k != "PGPASSWORD"));
        assert_eq!(
            shell_export("PGPASSWORD", "a'b"),
            r"export PGPASSWORD='a'\''b'"
        );
    }
}
