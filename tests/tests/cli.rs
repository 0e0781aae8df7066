//! The `pgjit` binary as an operator runs it: only the standard AWS variables point it at moto.

use std::process::{Command, Output};

use pgjit_tests::env;
use serde_json::{json, Value};

struct Cli {
    vars: Vec<(String, String)>,
    dir: std::path::PathBuf,
}

impl Cli {
    fn new() -> Cli {
        let id: u32 = rand::random();
        let e = env();
        let dir = std::env::temp_dir().join(format!("pgjit-cli-test-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let vars = [
            ("AWS_ENDPOINT_URL", e.moto_url.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            // Tables and names of its own, so it runs beside the other tests.
            ("PGJIT_GRANTS_TABLE", format!("cli-grants-{id}")),
            ("PGJIT_INTEGRATIONS_TABLE", format!("cli-integrations-{id}")),
            ("PGJIT_INVENTORY_TABLE", format!("cli-inventory-{id}")),
            ("PGJIT_AUDIT_TABLE", format!("cli-audit-{id}")),
            ("PGJIT_SCHEDULE_GROUP", format!("cli-{id}")),
            ("PGJIT_SECRET_PREFIX", format!("cli-{id}/")),
        ];
        Cli { vars: vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(), dir }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(&env().cli)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run pgjit")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "pgjit {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must fail: returns its one line of error.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "pgjit {args:?} should fail");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "one line on stderr: {err}");
        assert!(err.starts_with("pgjit: error: "), "{err}");
        err
    }

    fn file(&self, name: &str, content: &Value) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, content.to_string()).unwrap();
        path.to_string_lossy().into_owned()
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn bootstrap_then_the_lifecycle_from_the_command_line() {
    let e = env();
    let cli = Cli::new();
    assert!(cli.ok(&["bootstrap"]).contains("tables created"));
    assert!(cli.ok(&["bootstrap"]).contains("none (all exist)"), "bootstrap is safe to repeat");

    // The admin secret, as an operator would have put it into Secrets Manager.
    let svc = pgjit_tests::isolated_services().await;
    let secret_id = format!("{}cli-admin-{}", svc.config.secret_prefix, rand::random::<u32>());
    let secret = json!({"username": e.admin_user, "password": e.admin_password.expose()}).to_string();
    svc.secrets.create_secret().name(&secret_id).secret_string(secret).send().await.unwrap();

    let prefix = format!("c{}_", rand::random::<u32>());
    let mut integration = json!({"name": "cli-db", "kind": "postgres", "host": "localhost", "port": e.port,
        "admin": {"auth": "password", "secret_id": secret_id}, "ca_bundle": e.ca_file,
        "max_duration_seconds": 3600, "user_prefix": prefix});
    let mut bad = integration.clone();
    bad["port"] = json!("5432");
    let err = cli.fails(&["integration", "put", &cli.file("bad.json", &bad)]);
    assert!(err.contains("`port`"), "{err}");
    integration["ssl_mode"] = json!("verify-full");
    cli.ok(&["integration", "put", &cli.file("integration.json", &integration)]);
    let listed: Value = serde_json::from_str(&cli.ok(&["integration", "list", "--json"])).unwrap();
    assert_eq!(listed[0]["name"], "cli-db");
    assert!(cli.ok(&["doctor", "cli-db"]).contains("[ok] CREATEROLE"));

    let event = json!({"detail-type": "Access Request Approved", "source": "pgjit.approvals", "account": "123456789012",
        "time": chrono::Utc::now().to_rfc3339(), "detail": {
        "request_id": "CLI-1", "integration": "cli-db", "requester": {"id": "cli.user@corp.com"}, "approver": "boss@corp.com",
        "duration_seconds": 600, "access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["SELECT"]}]}});
    let event_file = cli.file("approval.json", &event);
    let granted: Value = serde_json::from_str(&cli.ok(&["grant", "--event", &event_file, "--json"])).unwrap();
    for field in ["request_id", "status", "db_user", "expires_at", "secret_arn"] {
        assert!(!granted[field].is_null(), "{field} in {granted}");
    }
    assert_eq!(granted["status"], "active");
    let user = granted["db_user"].as_str().unwrap().to_owned();
    assert!(cli.ok(&["grants"]).contains(&user), "listed as active");
    let creds: Value = serde_json::from_str(&cli.ok(&["credentials", "CLI-1"])).unwrap();
    let password = pgjit::SecretString::new(creds["password"].as_str().unwrap());
    e.login_as(&user, &password, "app").await.expect("the printed credentials work");
    assert!(!cli.ok(&["grants", "--all", "--json"]).contains(password.expose()), "listings never show the password");

    // Audit answers who had access to a database, approved by whom.
    let audit: Value = serde_json::from_str(&cli.ok(&["audit", "--database", "app", "--json"])).unwrap();
    assert_eq!(audit[0]["requester"]["id"], "cli.user@corp.com");
    assert_eq!(audit[0]["approver"], "boss@corp.com");
    assert_eq!(cli.ok(&["audit", "--database", "crm", "--json"]).trim(), "[]");

    // More time, same user and password: `pgjit extend`.
    let extended: Value = serde_json::from_str(&cli.ok(&["extend", "CLI-1", "--duration", "30m", "--approver", "boss@corp.com", "--reason", "not done", "--json"])).unwrap();
    assert!(extended["expires_at"].as_str().unwrap() > granted["expires_at"].as_str().unwrap(), "{extended}");
    assert_eq!(extended["db_user"], json!(user));
    assert!(cli.fails(&["extend", "CLI-1", "--duration", "soon", "--approver", "boss@corp.com"]).contains("not a duration"));
    assert!(cli.fails(&["extend", "CLI-1", "--duration", "1h", "--approver", "cli.user@corp.com"]).contains("is the requester"));
    e.login_as(&user, &password, "app").await.expect("the same password after the extension");

    assert!(cli.ok(&["revoke", "CLI-1"]).contains("CLI-1: deleted"), "retention 0: dropped at revoke");

    // Break glass: every active grant of the integration, at once.
    let mut users = Vec::new();
    for n in 2..5 {
        let mut ev = event.clone();
        ev["detail"]["request_id"] = json!(format!("CLI-{n}"));
        let g: Value = serde_json::from_str(&cli.ok(&["grant", "--event", &cli.file(&format!("a{n}.json"), &ev), "--json"])).unwrap();
        users.push(g["db_user"].as_str().unwrap().to_owned());
    }
    assert!(cli.fails(&["revoke-all", "cli-db"]).contains("--yes"), "asks for --yes and changes nothing");
    assert!(cli.ok(&["grants"]).contains(&users[0]));
    let out = cli.ok(&["revoke-all", "cli-db", "--yes"]);
    assert!(out.contains("3 grant(s) revoked"), "{out}");
    assert!(cli.ok(&["grants"]).contains("no active grants"));
    let su = e.superuser("postgres").await;
    for u in &users {
        assert!(!pgjit_tests::role_exists(&su, u).await, "{u} dropped");
    }
    assert!(e.login_as(&user, &password, "app").await.is_err());
    let err = cli.fails(&["credentials", "CLI-1"]);
    assert!(err.contains("revoked") || err.contains("deleted"), "{err}");
    let report: Value = serde_json::from_str(&cli.ok(&["cleanup", "--now", "2099-01-01T00:00:00Z", "--json"])).unwrap();
    assert_eq!(report["errors"], json!([]));
    let inventory = cli.ok(&["discover"]);
    assert!(inventory.contains("cli-db: "), "{inventory}");
    assert!(cli.ok(&["inventory", "cli-db"]).contains("sales.orders"));

    // Errors: one line, non-zero exit.
    cli.fails(&["grant", "--event", "/nonexistent/event.json"]);
    cli.fails(&["revoke", "NO-SUCH-REQUEST"]);
    cli.fails(&["cleanup", "--now", "yesterday"]);
    cli.fails(&["inventory", "nope"]);
    let err = cli.fails(&["setup-sql", "--flavor", "postgres", "--admin-user", &"x".repeat(64)]);
    assert!(err.contains("63 bytes"), "{err}");
}
