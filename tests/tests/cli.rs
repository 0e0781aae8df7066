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
            ("PGJIT_FLOWS_TABLE", format!("cli-flows-{id}")),
            ("PGJIT_REQUESTS_TABLE", format!("cli-requests-{id}")),
            ("PGJIT_SCHEDULE_GROUP", format!("cli-{id}")),
            ("PGJIT_SECRET_PREFIX", format!("cli-{id}/")),
        ];
        Cli {
            vars: vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            dir,
        }
    }

    /// The same commands with another person's AWS credentials.
    fn as_person(&self, key: &str, secret: &str) -> Cli {
        let mut vars = self.vars.clone();
        for (k, v) in vars.iter_mut() {
            match k.as_str() {
                "AWS_ACCESS_KEY_ID" => *v = key.to_owned(),
                "AWS_SECRET_ACCESS_KEY" => *v = secret.to_owned(),
                _ => {}
            }
        }
        let dir = self.dir.join(key);
        std::fs::create_dir_all(&dir).unwrap();
        Cli { vars, dir }
    }

    /// The same commands with one more environment variable.
    fn with_var(mut self, name: &str, value: &str) -> Cli {
        self.vars.push((name.to_owned(), value.to_owned()));
        self
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
        assert!(
            out.status.success(),
            "pgjit {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must fail: returns its one line of error.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "pgjit {args:?} should fail");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "one line on stderr: {err}"
        );
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
    assert!(
        cli.ok(&["bootstrap"]).contains("none (all exist)"),
        "bootstrap is safe to repeat"
    );

    // The admin secret, as an operator would have put it into Secrets Manager.
    let svc = pgjit_tests::isolated_services().await;
    let secret_id = format!(
        "{}cli-admin-{}",
        svc.config.secret_prefix,
        rand::random::<u32>()
    );
    let secret =
        json!({"username": e.admin_user, "password": e.admin_password.expose()}).to_string();
    svc.secrets
        .create_secret()
        .name(&secret_id)
        .secret_string(secret)
        .send()
        .await
        .unwrap();

    let prefix = format!("c{}_", rand::random::<u32>());
    let mut integration = json!({"name": "cli-db", "kind": "postgres", "host": "localhost", "port": e.port,
        "admin": {"auth": "password", "secret_id": secret_id}, "ca_bundle": e.ca_file,
        "max_duration_seconds": 3600, "user_prefix": prefix});
    let mut bad = integration.clone();
    bad["port"] = json!("5432");
    let err = cli.fails(&["integration", "put", &cli.file("bad.json", &bad)]);
    assert!(err.contains("`port`"), "{err}");
    integration["ssl_mode"] = json!("verify-full");
    cli.ok(&[
        "integration",
        "put",
        &cli.file("integration.json", &integration),
    ]);
    let listed: Value = serde_json::from_str(&cli.ok(&["integration", "list", "--json"])).unwrap();
    assert_eq!(listed[0]["name"], "cli-db");
    assert!(cli.ok(&["doctor", "cli-db"]).contains("[ok] CREATEROLE"));

    let event = json!({"detail-type": "Access Request Approved", "source": "pgjit.approvals", "account": "123456789012",
        "time": chrono::Utc::now().to_rfc3339(), "detail": {
        "request_id": "CLI-1", "integration": "cli-db", "requester": {"id": "cli.user@corp.com"}, "approver": "boss@corp.com",
        "duration_seconds": 600, "access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["SELECT"]}]}});
    let event_file = cli.file("approval.json", &event);
    let granted: Value =
        serde_json::from_str(&cli.ok(&["grant", "--event", &event_file, "--json"])).unwrap();
    for field in [
        "request_id",
        "status",
        "db_user",
        "expires_at",
        "secret_arn",
    ] {
        assert!(!granted[field].is_null(), "{field} in {granted}");
    }
    assert_eq!(granted["status"], "active");
    let user = granted["db_user"].as_str().unwrap().to_owned();
    assert!(cli.ok(&["grants"]).contains(&user), "listed as active");
    let creds: Value = serde_json::from_str(&cli.ok(&["credentials", "CLI-1"])).unwrap();
    let password = pgjit::SecretString::new(creds["password"].as_str().unwrap());
    e.login_as(&user, &password, "app")
        .await
        .expect("the printed credentials work");
    assert!(
        !cli.ok(&["grants", "--all", "--json"])
            .contains(password.expose()),
        "listings never show the password"
    );

    // Audit answers who had access to a database, approved by whom.
    let audit: Value =
        serde_json::from_str(&cli.ok(&["audit", "--database", "app", "--json"])).unwrap();
    assert_eq!(audit[0]["requester"]["id"], "cli.user@corp.com");
    assert_eq!(audit[0]["approver"], "boss@corp.com");
    assert_eq!(
        cli.ok(&["audit", "--database", "crm", "--json"]).trim(),
        "[]"
    );

    // More time, same user and password: `pgjit extend`.
    let extended: Value = serde_json::from_str(&cli.ok(&[
        "extend",
        "CLI-1",
        "--duration",
        "30m",
        "--approver",
        "boss@corp.com",
        "--reason",
        "not done",
        "--json",
    ]))
    .unwrap();
    assert!(
        extended["expires_at"].as_str().unwrap() > granted["expires_at"].as_str().unwrap(),
        "{extended}"
    );
    assert_eq!(extended["db_user"], json!(user));
    assert!(cli
        .fails(&[
            "extend",
            "CLI-1",
            "--duration",
            "soon",
            "--approver",
            "boss@corp.com"
        ])
        .contains("not a duration"));
    assert!(cli
        .fails(&[
            "extend",
            "CLI-1",
            "--duration",
            "1h",
            "--approver",
            "cli.user@corp.com"
        ])
        .contains("is the requester"));
    e.login_as(&user, &password, "app")
        .await
        .expect("the same password after the extension");

    assert!(
        cli.ok(&["revoke", "CLI-1"]).contains("CLI-1: deleted"),
        "retention 0: dropped at revoke"
    );

    // Break glass: every active grant of the integration, at once.
    let mut users = Vec::new();
    for n in 2..5 {
        let mut ev = event.clone();
        ev["detail"]["request_id"] = json!(format!("CLI-{n}"));
        let g: Value = serde_json::from_str(&cli.ok(&[
            "grant",
            "--event",
            &cli.file(&format!("a{n}.json"), &ev),
            "--json",
        ]))
        .unwrap();
        users.push(g["db_user"].as_str().unwrap().to_owned());
    }
    assert!(
        cli.fails(&["revoke-all", "cli-db"]).contains("--yes"),
        "asks for --yes and changes nothing"
    );
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
    let report: Value =
        serde_json::from_str(&cli.ok(&["cleanup", "--now", "2099-01-01T00:00:00Z", "--json"]))
            .unwrap();
    assert_eq!(report["errors"], json!([]));
    let inventory = cli.ok(&["discover"]);
    assert!(inventory.contains("cli-db: "), "{inventory}");
    assert!(cli.ok(&["inventory", "cli-db"]).contains("sales.orders"));

    // Errors: one line, non-zero exit.
    cli.fails(&["grant", "--event", "/nonexistent/event.json"]);
    cli.fails(&["revoke", "NO-SUCH-REQUEST"]);
    cli.fails(&["cleanup", "--now", "yesterday"]);
    cli.fails(&["inventory", "nope"]);
    let err = cli.fails(&[
        "setup-sql",
        "--flavor",
        "postgres",
        "--admin-user",
        &"x".repeat(64),
    ]);
    assert!(err.contains("63 bytes"), "{err}");
}

/// People at the front door with their own credentials (two IAM users of moto): one asks,
/// the other approves, the grant is made; the requester cannot approve; a denial is final.
#[tokio::test]
async fn people_request_and_approve_as_themselves() {
    let e = env();
    let operator = Cli::new();
    operator.ok(&["bootstrap"]);
    let svc = pgjit_tests::isolated_services().await;
    let id: u32 = rand::random();
    let mut people = Vec::new();
    for who in ["alice", "bob"] {
        let name = format!("{who}-{id}");
        svc.iam.create_user().user_name(&name).send().await.unwrap();
        let key = svc
            .iam
            .create_access_key()
            .user_name(&name)
            .send()
            .await
            .unwrap();
        let key = key.access_key().unwrap();
        people.push((
            format!("arn:aws:iam::123456789012:user/{name}"),
            operator.as_person(key.access_key_id(), key.secret_access_key()),
        ));
    }
    let [(alice_arn, alice), (bob_arn, bob)] = <[_; 2]>::try_from(people).ok().unwrap();
    let secret_id = format!("{}front-admin-{id}", svc.config.secret_prefix);
    svc.secrets
        .create_secret()
        .name(&secret_id)
        .secret_string(
            json!({"username": e.admin_user, "password": e.admin_password.expose()}).to_string(),
        )
        .send()
        .await
        .unwrap();
    let integration = json!({"name": "front-db", "kind": "postgres", "host": "localhost", "port": e.port, "database": "app",
        "admin": {"auth": "password", "secret_id": secret_id}, "ca_bundle": e.ca_file, "ssl_mode": "verify-full",
        "max_duration_seconds": 3600, "user_prefix": format!("f{id}_"), "user_cleanup_after_days": 0});
    operator.ok(&[
        "integration",
        "put",
        &operator.file("integration.json", &integration),
    ]);
    // Without a flow, nobody decides: the front door refuses, and doctor says who is trusted.
    assert!(alice
        .fails(&[
            "request",
            "--integration",
            "front-db",
            "--table",
            "sales.orders",
            "--privileges",
            "SELECT",
            "--for",
            "30m"
        ])
        .contains("has no access flows"));
    assert!(
        String::from_utf8_lossy(&operator.run(&["doctor", "front-db"]).stdout).contains(
            "[WARN] access flows: none: integration \"front-db\" trusts its approval tool"
        )
    );
    let flow = json!({"name": "orders-read", "integrations": ["front-db"], "requesters": {"principals": [alice_arn]},
        "access": [{"database": "app", "schema": "sales", "table": "*", "privileges": ["SELECT"]}], "max_duration_seconds": 3600,
        "approval": {"approvers": {"principals": [bob_arn]}, "reason_required": true}});
    let mut bad = flow.clone();
    bad["approval"] = json!({"approvers": {"principals": ["bob"]}});
    assert!(operator
        .fails(&["flow", "put", &operator.file("bad-flow.json", &bad)])
        .contains("approval.approvers.principals[0]"));
    operator.ok(&["flow", "put", &operator.file("flow.json", &flow)]);
    assert!(operator.ok(&["flow", "list"]).contains("orders-read"));

    let asked: Value = serde_json::from_str(&alice.ok(&[
        "request",
        "--integration",
        "front-db",
        "--table",
        "sales.orders",
        "--privileges",
        "SELECT",
        "--for",
        "30m",
        "--reason",
        "INC-42 stuck orders",
        "--json",
    ]))
    .unwrap();
    let request_id = asked["request_id"].as_str().unwrap().to_owned();
    assert_eq!(
        (asked["status"].as_str(), asked["requester"].as_str()),
        (Some("pending"), Some(alice_arn.as_str()))
    );
    assert!(alice
        .fails(&["approve", &request_id])
        .contains("an approval must come from someone else"));
    assert!(bob
        .fails(&[
            "request",
            "--integration",
            "front-db",
            "--table",
            "sales.orders",
            "--privileges",
            "SELECT",
            "--for",
            "30m",
            "--reason",
            "x"
        ])
        .contains("is not one of its requesters"));
    let waiting: Value =
        serde_json::from_str(&bob.ok(&["requests", "--to-approve", "--json"])).unwrap();
    assert_eq!(waiting[0]["request_id"].as_str(), Some(request_id.as_str()));
    let granted: Value =
        serde_json::from_str(&bob.ok(&["approve", &request_id, "--json"])).unwrap();
    assert_eq!(granted["status"].as_str(), Some("granted"), "{granted}");
    let db_user = granted["grant"]["db_user"].as_str().unwrap().to_owned();
    assert!(alice
        .ok(&["requests"])
        .contains(&format!("{request_id} granted")));
    let creds: Value = serde_json::from_str(&operator.ok(&["credentials", &request_id])).unwrap();
    let password = pgjit::SecretString::new(creds["password"].as_str().unwrap());
    let client = e
        .login_as(&db_user, &password, "app")
        .await
        .expect("the grant works");
    client
        .query("SELECT count(*) FROM sales.orders", &[])
        .await
        .expect("SELECT was approved");

    // Alice connects as herself: psql runs her query over verify-full, and the password goes to
    // psql through its environment only: its command line (kept by a wrapper from /proc before
    // it becomes psql) holds none, and no output but --print-env does.
    let wrapper = alice.dir.join("psql-wrapper.sh");
    let seen = alice.dir.join("psql-cmdline");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ntr '\\0' ' ' < /proc/$$/cmdline > '{}'\nexec psql \"$@\"\n",
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let alice = alice.with_var("PGJIT_PSQL", &wrapper.to_string_lossy());
    let out = alice.run(&[
        "connect",
        &request_id,
        "--",
        "-tAc",
        "SELECT current_user || ' ' || count(*) FROM sales.orders",
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "pgjit connect: {stderr}");
    assert!(stdout.starts_with(&format!("{db_user} ")), "{stdout}");
    let cmdline = std::fs::read_to_string(&seen).unwrap();
    assert!(
        cmdline.contains("-tAc") && !cmdline.contains(password.expose()),
        "{cmdline}"
    );
    assert!(!stdout.contains(password.expose()) && !stderr.contains(password.expose()));
    assert!(!alice
        .ok(&["connect", &request_id, "--url"])
        .contains(password.expose()));
    // --print-env: what it prints connects any client (psql here, with nothing else set).
    let printed = alice.ok(&["connect", &request_id, "--print-env"]);
    let vars: Vec<(String, String)> = printed
        .lines()
        .map(|l| {
            let (name, value) = l.strip_prefix("export ").unwrap().split_once('=').unwrap();
            (name.to_owned(), value.trim_matches('\'').to_owned())
        })
        .collect();
    assert!(
        vars.iter()
            .any(|(k, v)| k == "PGSSLMODE" && v == "verify-full"),
        "{vars:?}"
    );
    assert!(vars
        .iter()
        .any(|(k, v)| k == "PGPASSWORD" && v == password.expose()));
    let other = Command::new("psql")
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(["-tAc", "SELECT current_user"])
        .output()
        .unwrap();
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&other.stdout).trim(), db_user);
    if let Some((_, ca)) = vars.iter().find(|(k, _)| k == "PGSSLROOTCERT") {
        let _ = std::fs::remove_file(ca);
    }
    // Someone else's grant, and a database it does not reach, are refused.
    assert!(bob
        .fails(&["connect", &request_id])
        .contains("is not yours"));
    assert!(alice
        .fails(&["connect", &request_id, "--database", "postgres"])
        .contains("does not reach database"));

    // Denied: final.
    let second: Value = serde_json::from_str(&alice.ok(&[
        "request",
        "--integration",
        "front-db",
        "--table",
        "sales.orders",
        "--privileges",
        "SELECT",
        "--for",
        "10m",
        "--reason",
        "again",
        "--json",
    ]))
    .unwrap();
    let second_id = second["request_id"].as_str().unwrap();
    let no_reason = bob.run(&["deny", second_id]);
    assert!(
        !no_reason.status.success()
            && String::from_utf8_lossy(&no_reason.stderr).contains("--reason"),
        "a denial says why"
    );
    let denied: Value = serde_json::from_str(&bob.ok(&[
        "deny",
        second_id,
        "--reason",
        "use the replica",
        "--json",
    ]))
    .unwrap();
    assert_eq!(denied["status"].as_str(), Some("denied"));
    assert!(bob.fails(&["approve", second_id]).contains("is denied"));
    operator.ok(&["revoke", &request_id]);
    assert!(
        e.login_as(&db_user, &password, "app").await.is_err(),
        "revoked"
    );
    assert!(alice
        .fails(&["connect", &request_id])
        .contains("was revoked before its expiry"));
}

/// An IAM Identity Center user in IAM mode connects through the grant's access role: `pgjit
/// connect` assumes it with their own session and signs the RDS IAM token with its credentials
/// (the token names the database user and carries the role session's token); another session of
/// the same permission set is refused. (The local server cannot check an RDS token, so the
/// settings are read with --print-env rather than used.)
#[tokio::test]
async fn an_identity_center_user_connects_through_the_grants_access_role() {
    let e = env();
    let svc = pgjit_tests::isolated_services().await;
    let id: u32 = rand::random();
    let boundary = svc.iam.create_policy().policy_name(format!("cli-boundary-{id}"))
        .policy_document(json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "rds-db:connect", "Resource": "*"}]}).to_string())
        .send().await.unwrap().policy.unwrap().arn.unwrap();
    let operator = Cli::new().with_var("PGJIT_ACCESS_ROLE_BOUNDARY_ARN", &boundary);
    operator.ok(&["bootstrap"]);
    let set = format!("AWSReservedSSO_Dev_{id:08x}");
    let set_arn = svc
        .iam
        .create_role()
        .path("/aws-reserved/sso.amazonaws.com/eu-west-1/")
        .role_name(&set)
        .assume_role_policy_document("{}")
        .send()
        .await
        .unwrap()
        .role
        .unwrap()
        .arn;
    let mut sessions = Vec::new();
    for who in ["john@corp.com", "jane@corp.com"] {
        let out = svc
            .sts
            .assume_role()
            .role_arn(&set_arn)
            .role_session_name(who)
            .send()
            .await
            .unwrap();
        let c = out.credentials.unwrap();
        sessions.push((
            c.access_key_id.clone(),
            operator
                .as_person(&c.access_key_id, &c.secret_access_key)
                .with_var("AWS_SESSION_TOKEN", &c.session_token),
        ));
    }
    let [(john_key, john), (_, jane)] = <[_; 2]>::try_from(sessions).ok().unwrap();
    let instance = format!("cli-sso-{id}");
    pgjit_tests::moto_rds_instance(&svc, &instance).await;
    let secret_id = format!("cli-sso-admin-{id}");
    svc.secrets
        .create_secret()
        .name(&secret_id)
        .secret_string(
            json!({"username": e.admin_user, "password": e.admin_password.expose()}).to_string(),
        )
        .send()
        .await
        .unwrap();
    let integration = json!({"name": "sso-db", "kind": "rds", "instance_id": instance, "region": "us-east-1", "host": "localhost", "port": e.port,
        "database": "app", "admin": {"auth": "password", "secret_id": secret_id}, "ca_bundle": e.ca_file, "ssl_mode": "verify-full",
        "access_mode": "iam", "max_duration_seconds": 3600, "user_prefix": format!("s{id}_"), "user_cleanup_after_days": 0});
    operator.ok(&[
        "integration",
        "put",
        &operator.file("integration.json", &integration),
    ]);
    let doctor = String::from_utf8_lossy(&operator.run(&["doctor", "sso-db"]).stdout).into_owned();
    assert!(
        doctor.contains(
            "[ok] access roles: IAM Identity Center users get an access role under /pgjit/access/"
        ) && doctor
            .contains("need sts:AssumeRole on arn:aws:iam::123456789012:role/pgjit/access/*"),
        "{doctor}"
    );
    let request_id = format!("REQ-CLI-SSO-{id}");
    let mut approval = pgjit_tests::approval(
        &request_id,
        "sso-db",
        "john@corp.com",
        pgjit_tests::orders_access(),
    );
    approval["detail"]["requester"]["iam_arn"] = json!(format!(
        "arn:aws:sts::123456789012:assumed-role/{set}/john@corp.com"
    ));
    approval["detail"]["duration_seconds"] = json!(1800);
    let granted: Value = serde_json::from_str(&operator.ok(&[
        "grant",
        "--event",
        &operator.file("approval.json", &approval),
        "--json",
    ]))
    .unwrap();
    let db_user = granted["db_user"].as_str().unwrap().to_owned();

    let printed = john.ok(&["connect", &request_id, "--print-env"]);
    let var = |name: &str| {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}='")))
            .map(|v| v.trim_end_matches('\'').to_owned())
            .unwrap_or_else(|| panic!("{name} in {printed}"))
    };
    let token = var("PGPASSWORD");
    assert_eq!(
        (var("PGUSER"), var("PGSSLMODE")),
        (db_user.clone(), "verify-full".to_owned())
    );
    assert!(
        token.starts_with(&format!("localhost:{}/?", e.port)),
        "{token}"
    );
    assert!(
        token.contains("Action=connect") && token.contains(&format!("DBUser={db_user}")),
        "{token}"
    );
    assert!(
        token.contains("X-Amz-Security-Token="),
        "signed by a role session: {token}"
    );
    assert!(
        !token.contains(&john_key),
        "signed with the access role's credentials, not john's own: {token}"
    );
    if let Some(ca) = printed
        .lines()
        .find_map(|l| l.strip_prefix("export PGSSLROOTCERT='"))
    {
        let _ = std::fs::remove_file(ca.trim_end_matches('\''));
    }
    assert!(jane
        .fails(&["connect", &request_id])
        .contains("is not yours"));
    let role = pgjit::aws::access_role::role_name(&request_id);
    assert!(
        svc.iam.get_role().role_name(&role).send().await.is_ok(),
        "the grant made an access role"
    );
    operator.ok(&["revoke", &request_id]);
    assert!(
        svc.iam.get_role().role_name(&role).send().await.is_err(),
        "the access role is gone"
    );
    assert!(john
        .fails(&["connect", &request_id])
        .contains("was revoked"));
}
