//! pgaudit on a server: which statement classes a temporary user's sessions log
//! (`pgaudit.log`), and whether the server can log them.

use tokio_postgres::Client;

/// The classes logged when an integration does not name its own: everything a person at a
/// prompt does, but not `misc_set` (every `SET`, mostly noise).
pub const DEFAULT_CLASSES: &[&str] = &["read", "write", "ddl", "role", "function", "misc"];

/// pgaudit's classes (`pgaudit.log`), each of which may also be excluded with a leading `-`.
const CLASSES: &[&str] = &["read", "write", "function", "role", "ddl", "misc", "misc_set", "all", "none"];

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
}
