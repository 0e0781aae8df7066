//! The lifecycle of one temporary user on the local environment, narrated: what the engine does
//! in PostgreSQL for an approved request. Run it with `scripts/demo.sh`.

use std::process::ExitCode;

use chrono::{Duration, Utc};
use pgjit::access::{login_role_name, AccessEntry, AccessSet};
use pgjit::postgres::error_chain;
use pgjit::roles::{self, GrantSpec, LoginMethod};
use pgjit::SecretString;

const PREFIX: &str = "pgjit_";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("demo failed: {message}");
            ExitCode::FAILURE
        }
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

async fn run() -> Result<(), String> {
    let env = pgjit_tests::env();
    let admin = env.admin();
    println!("PostgreSQL at {}:{} (TLS verify-full, scram-sha-256), pgjit logs in as the non-superuser {:?}", env.host, env.port, env.admin_user);

    step("doctor: what can the admin do?");
    let findings = pgjit::setup::doctor(&admin, pgjit::setup::Flavor::Postgres, "postgres", &["app".into()]).await.map_err(|e| error_chain(&e))?;
    for f in &findings {
        println!("    [{}] {}: {}", if f.ok { "ok" } else { "MISSING" }, f.capability, f.detail);
    }

    step("approval: john.doe@corp.com may SELECT sales.orders in database app for 1 hour");
    let entries: Vec<AccessEntry> = serde_json::from_str(r#"[{"database":"app","schema":"sales","table":"orders","privileges":["SELECT"]}]"#)
        .map_err(|e| e.to_string())?;
    let access = AccessSet::from_entries(&entries).map_err(|e| e.to_string())?;
    let username = login_role_name(PREFIX, "john.doe@corp.com");
    let password = SecretString::random_password();
    let expires = Utc::now() + Duration::hours(1);
    let spec = GrantSpec {
        username: &username,
        access: &access,
        login: LoginMethod::Password(&password),
        valid_until: expires,
        prefix: PREFIX,
        grantable_roles: None,
        maintenance_database: "postgres",
    };
    let granted = roles::grant(&admin, &spec).await.map_err(|e| error_chain(&e))?;
    println!("    login role {username} created, VALID UNTIL {}", expires.format("%Y-%m-%d %H:%M:%S UTC"));
    println!("    privileges held by the profile role {} (shared by every grant of the same set)", granted.profiles["app"]);
    println!("    the password went to the server only as a SCRAM-SHA-256 verifier (it is not shown here either)");

    step("the requester logs in over TLS");
    let client = env.login_as(&username, &password, "app").await.map_err(|e| error_chain(&e))?;
    let rows = client.query("SELECT customer, total::text FROM sales.orders ORDER BY id", &[]).await.map_err(|e| e.to_string())?;
    println!("    SELECT * FROM sales.orders -> {} rows:", rows.len());
    for r in &rows {
        println!("      {} {}", r.get::<_, String>(0), r.get::<_, String>(1));
    }
    match client.query("SELECT * FROM hr.salaries", &[]).await {
        Ok(_) => return Err("hr.salaries was readable: the grant is too wide".into()),
        Err(e) => println!("    SELECT * FROM hr.salaries -> refused: {}", e.as_db_error().map(|d| d.message()).unwrap_or("error")),
    }

    step("expiry: revoke");
    let revoked = roles::revoke(&admin, "postgres", &username, PREFIX).await.map_err(|e| error_chain(&e))?;
    println!("    NOLOGIN set, {} open session(s) ended, {} membership(s) removed", revoked.sessions_ended, revoked.memberships_removed);
    if client.query_one("SELECT 1", &[]).await.is_ok() {
        return Err("the requester's session survived the revoke".into());
    }
    println!("    the requester's open session is gone");
    match env.login_as(&username, &password, "app").await {
        Ok(_) => return Err("login still worked after revoke".into()),
        Err(e) => println!("    new login refused: {}", e.db_error().map(|d| d.message()).unwrap_or("error")),
    }

    step("retention over: delete");
    let deleted = roles::delete(&admin, "postgres", &username, PREFIX).await.map_err(|e| error_chain(&e))?;
    println!("    role dropped (objects it owned were handed to the admin in: {:?})", deleted.reassigned_in);
    let again = roles::delete(&admin, "postgres", &username, PREFIX).await.map_err(|e| error_chain(&e))?;
    println!("    delete again: {} (safe to repeat)", if again.existed { "dropped something?!" } else { "nothing to do" });

    step("nothing left behind");
    let catalog = admin.connect("postgres").await.map_err(|e| error_chain(&e))?;
    let managed = roles::managed_roles(&catalog, PREFIX).await.map_err(|e| e.to_string())?;
    if managed.iter().any(|r| r.name == username) {
        return Err(format!("{username} still exists"));
    }
    let sessions: i64 = catalog
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", &[&username])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if sessions != 0 {
        return Err(format!("{sessions} session(s) of {username} still open"));
    }
    println!("    {username}: no role, no session; only the reusable profile role remains");
    Ok(())
}
