//! The PostgreSQL engine against the real local servers, connected as the non-superuser admin.

use std::collections::BTreeSet;

use chrono::{Duration, Utc};
use pgjit::access::{login_role_name, AccessEntry, AccessSet};
use pgjit::engine::postgres::{Connector, Credentials, Endpoint, SslMode};
use pgjit::engine::roles::revocation;
use pgjit::engine::roles::{self, departure, GrantSpec, LoginMethod, RoleError};
use pgjit::SecretString;
use pgjit_tests::{env, role_exists};

const PREFIX: &str = "pgjit_";
const HOLDING: &str = pgjit::contract::integration::DEFAULT_HOLDING_ROLE;

fn access(json: &str) -> AccessSet {
    let entries: Vec<AccessEntry> = serde_json::from_str(json).expect("access json");
    AccessSet::from_entries(&entries).expect("valid access")
}

fn spec<'a>(username: &'a str, access: &'a AccessSet, password: &'a SecretString) -> GrantSpec<'a> {
    GrantSpec {
        username,
        access,
        login: LoginMethod::Password(password),
        valid_until: Utc::now() + Duration::hours(1),
        prefix: PREFIX,
        grantable_roles: &[],
        privileged_roles: &[],
        audit: None,
    }
}

async fn is_tls(client: &tokio_postgres::Client) -> bool {
    client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0)
}

fn connector(endpoint: Endpoint) -> Connector {
    Connector::new(endpoint, Credentials::Password(env().admin_login()))
}

#[tokio::test]
async fn every_ssl_mode_against_a_tls_only_server() {
    let e = env();
    for mode in SslMode::ALL {
        let mut endpoint = e.endpoint();
        endpoint.ssl_mode = mode;
        let result = connector(endpoint).connect("postgres").await;
        match mode {
            // The server accepts TLS only (hostssl): plaintext is refused by the server.
            SslMode::Disable => {
                let err = result.expect_err("disable must not use TLS");
                assert!(err.db_error().is_some(), "refused by the server: {err:?}");
            }
            _ => {
                let client = result.unwrap_or_else(|err| panic!("{mode:?}: {}", pgjit::engine::postgres::error_chain(&err)));
                assert!(is_tls(&client).await, "{mode:?} must end up on TLS");
            }
        }
    }
}

#[tokio::test]
async fn every_ssl_mode_against_a_server_without_tls() {
    let e = env();
    for mode in SslMode::ALL {
        let result = connector(e.plain_endpoint(mode)).connect("postgres").await;
        match mode {
            SslMode::Disable | SslMode::Allow | SslMode::Prefer => {
                let client = result.unwrap_or_else(|err| panic!("{mode:?}: {}", pgjit::engine::postgres::error_chain(&err)));
                assert!(!is_tls(&client).await, "{mode:?}");
            }
            _ => assert!(result.is_err(), "{mode:?} must refuse a server without TLS"),
        }
    }
}

#[tokio::test]
async fn verify_full_checks_the_host_name_and_the_ca() {
    let e = env();
    // Right address, wrong name: verify-full fails, verify-ca (chain only) succeeds.
    let mut wrong_name = e.endpoint();
    wrong_name.host = "db.wrong-name.test".into();
    wrong_name.hostaddr = Some("127.0.0.1".parse().unwrap());
    let err = connector(wrong_name.clone()).connect("postgres").await.expect_err("wrong host name");
    let chain = pgjit::engine::postgres::error_chain(&err);
    assert!(chain.contains("NotValidForName") || chain.contains("not valid for name"), "{chain}");
    wrong_name.ssl_mode = SslMode::VerifyCa;
    connector(wrong_name).connect("postgres").await.expect("verify-ca ignores the name");
    // The name by which the certificate was issued, both as DNS name and as IP address.
    let mut by_name = e.endpoint();
    by_name.host = "localhost".into();
    connector(by_name).connect("postgres").await.expect("localhost is in the certificate");
    // No roots given: the verifying modes trust nothing (never the public roots by default);
    // the public roots, named, do not know the local CA.
    for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
        let mut unknown = e.endpoint();
        unknown.ca_bundle = None;
        unknown.ssl_mode = mode;
        let err = connector(unknown.clone()).connect("postgres").await.expect_err("no roots");
        assert!(matches!(err, pgjit::engine::postgres::ConnectError::CaBundle(pgjit::engine::postgres::CaBundleError::NoRoots)), "{mode:?}: {err}");
        unknown.ca_bundle = Some(pgjit::engine::postgres::SYSTEM_ROOTS.into());
        let err = connector(unknown).connect("postgres").await.expect_err("unknown CA");
        let chain = pgjit::engine::postgres::error_chain(&err);
        assert!(chain.contains("UnknownIssuer") || chain.contains("unknown issuer"), "{mode:?}: {chain}");
    }
    // require with a CA bundle verifies the chain, as libpq does with a root certificate file.
    let mut require = e.endpoint();
    require.ssl_mode = SslMode::Require;
    let other_ca = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUKq1pJnXk\n-----END CERTIFICATE-----\n";
    require.ca_bundle = Some(other_ca.into());
    assert!(connector(require).connect("postgres").await.is_err(), "a broken bundle is an error, not ignored");
}

#[tokio::test]
async fn grant_login_allowed_and_denied_then_revoke_and_delete() {
    let e = env();
    let admin = e.admin();
    let su = e.superuser("app").await;
    let set = access(
        r#"[{"database":"app","schema":"sales","table":"orders","privileges":["SELECT"]},
            {"database":"app","schema":"sales","function":"order_count","privileges":["EXECUTE"]},
            {"database":"app","schema":"sales","sequence":"orders_id_seq","privileges":["USAGE"]}]"#,
    );
    let user = login_role_name(PREFIX, "john.doe@corp.com");
    let password = SecretString::random_password();
    let granted = roles::grant::grant(&admin, &spec(&user, &set, &password)).await.expect("grant");
    assert!(!granted.already_existed);
    let profile = &granted.profiles["app"];

    let client = e.login_as(&user, &password, "app").await.expect("the new user logs in over TLS");
    assert!(is_tls(&client).await);
    let n: i64 = client.query_one("SELECT count(*) FROM sales.orders", &[]).await.expect("allowed").get(0);
    assert_eq!(n, 2);
    let n: i64 = client.query_one("SELECT sales.order_count()", &[]).await.expect("function allowed").get(0);
    assert_eq!(n, 2);
    client.query_one("SELECT nextval('sales.orders_id_seq')", &[]).await.expect("sequence allowed");
    for denied in ["SELECT * FROM sales.customers", "SELECT * FROM hr.salaries", "INSERT INTO sales.orders (customer, total) VALUES ('x', 1)", "CREATE TABLE sales.mine (x int)"] {
        let err = client.query(denied, &[]).await.expect_err(denied);
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{denied}: {err}");
    }
    // The user cannot give itself more.
    let err = client.batch_execute(&format!("GRANT SELECT ON sales.customers TO {}", pgjit::engine::postgres::ident(&user))).await.expect_err("no grant option");
    assert!(err.code().is_some());
    let err = client.batch_execute(&format!("GRANT {} TO {}", pgjit::engine::postgres::ident(&e.admin_user), pgjit::engine::postgres::ident(&user))).await;
    assert!(err.is_err(), "cannot join the admin role");

    // pgjit is the only grantor to its profile roles, and the user holds no direct privileges.
    let grantors: Vec<String> = su
        .query(
            "SELECT DISTINCT pg_get_userbyid((aclexplode(relacl)).grantor)::text FROM pg_class \
             WHERE oid = 'sales.orders'::regclass",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(grantors.contains(&e.admin_user), "{grantors:?}");
    let direct: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(direct, 0, "privileges go to the profile role, never to the user");
    let member: bool = su.query_one("SELECT pg_has_role($1, $2, 'MEMBER')", &[&user, profile]).await.unwrap().get(0);
    assert!(member);

    // Revoke: the open session ends, new logins are refused, memberships are gone.
    let revoked = revocation::revoke(&admin, "postgres", &user, PREFIX).await.expect("revoke");
    assert!(revoked.existed);
    assert_eq!(revoked.sessions_ended, 1);
    assert!(client.query_one("SELECT 1", &[]).await.is_err(), "the open session was ended");
    let err = e.login_as(&user, &password, "app").await.expect_err("login after revoke");
    assert!(pgjit::engine::postgres::error_chain(&err).contains("not permitted to log in"), "{}", pgjit::engine::postgres::error_chain(&err));
    let memberships: i64 = su
        .query_one("SELECT count(*) FROM pg_auth_members WHERE member = (SELECT oid FROM pg_roles WHERE rolname = $1)", &[&user])
        .await
        .unwrap()
        .get(0);
    assert_eq!(memberships, 0);
    // Revoke again: a no-op that succeeds.
    let again = revocation::revoke(&admin, "postgres", &user, PREFIX).await.expect("second revoke");
    assert_eq!((again.existed, again.sessions_ended, again.memberships_removed), (true, 0, 0));
    assert!(again.disarmed.is_empty(), "{:?}", again.disarmed);

    let deleted = departure::delete(&admin, "postgres", &user, PREFIX, HOLDING).await.expect("delete");
    assert!(deleted.existed);
    assert!(!role_exists(&su, &user).await);
    let again = departure::delete(&admin, "postgres", &user, PREFIX, HOLDING).await.expect("second delete");
    assert!(!again.existed);
    let gone = revocation::revoke(&admin, "postgres", &user, PREFIX).await.expect("revoke of a dropped role");
    assert!(!gone.existed);
    // The profile role stays for the next grant of the same set.
    assert!(role_exists(&su, profile).await);
}

#[tokio::test]
async fn all_tables_of_a_schema_and_several_databases() {
    let e = env();
    let admin = e.admin();
    let set = access(
        r#"[{"database":"app","schema":"sales","table":"*","privileges":["SELECT"]},
            {"database":"crm","schema":"accounts","table":"contacts","privileges":["SELECT","INSERT"]},
            {"database":"crm","schema":"accounts","sequence":"*","privileges":["USAGE"]}]"#,
    );
    let user = login_role_name(PREFIX, "multi@corp.com");
    let password = SecretString::random_password();
    let granted = roles::grant::grant(&admin, &spec(&user, &set, &password)).await.expect("grant");
    assert_eq!(granted.profiles.keys().cloned().collect::<Vec<_>>(), ["app", "crm"]);
    let app = e.login_as(&user, &password, "app").await.unwrap();
    for table in ["sales.orders", "sales.customers", "sales.big_orders"] {
        app.query(&format!("SELECT * FROM {table}"), &[]).await.unwrap_or_else(|err| panic!("{table}: {err}"));
    }
    assert!(app.query("SELECT * FROM hr.salaries", &[]).await.is_err());
    let crm = e.login_as(&user, &password, "crm").await.unwrap();
    crm.execute("INSERT INTO accounts.contacts (email) VALUES ('new@example.com')", &[]).await.expect("insert with sequence usage");
    assert!(crm.execute("DELETE FROM accounts.contacts", &[]).await.is_err());
    departure::delete(&admin, "postgres", &user, PREFIX, HOLDING).await.expect("delete");
}

#[tokio::test]
async fn role_membership_and_dangerous_roles() {
    let e = env();
    let admin = e.admin();
    let su = e.superuser("postgres").await;
    su.batch_execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sneaky') THEN CREATE ROLE sneaky NOLOGIN; END IF; END $$; \
         GRANT pg_read_all_settings TO sneaky; GRANT sneaky TO pgjit_admin WITH ADMIN OPTION",
    )
    .await
    .unwrap();
    let password = SecretString::random_password();

    su.batch_execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'alice_login') THEN CREATE ROLE alice_login LOGIN; END IF; END $$",
    )
    .await
    .unwrap();
    let set = access(r#"[{"database":"app","role":"reporting"}]"#);
    let user = login_role_name(PREFIX, "member@corp.com");
    // Deny by default: no role is handed out unless the integration lists it.
    let err = roles::grant::grant(&admin, &spec(&user, &set, &password)).await.expect_err("reporting is not listed");
    assert!(matches!(err, RoleError::Refused(_)) && err.to_string().contains("grantable_roles"), "{err}");
    assert!(!role_exists(&su, &user).await);
    let listed: Vec<String> = ["reporting", "pg_read_all_settings", "sneaky", "app_owner", "alice_login", "postgres", "pgjit_admin"].map(String::from).to_vec();
    let mut s = spec(&user, &set, &password);
    s.grantable_roles = &listed;
    roles::grant::grant(&admin, &s).await.expect("membership of a plain, listed role");
    let client = e.login_as(&user, &password, "app").await.unwrap();
    client.query("SELECT * FROM sales.orders", &[]).await.expect("reporting may read orders");
    assert!(client.query("SELECT * FROM sales.customers", &[]).await.is_err());
    departure::delete(&admin, "postgres", &user, PREFIX, HOLDING).await.unwrap();

    // Listed, but powerful: refused unless privileged_grantable_roles opts in, the reason named.
    for (role, why) in [
        ("pg_read_all_settings", "predefined role"),
        ("sneaky", "through \"pg_read_all_settings\""),
        ("app_owner", "owns objects"),
        ("alice_login", "can log in"),
        ("postgres", "SUPERUSER"),
    ] {
        let set = access(&format!(r#"[{{"database":"app","role":"{role}"}}]"#));
        let user = login_role_name(PREFIX, "greedy@corp.com");
        // (the opted-in grant below makes the sneaky profile on an earlier run against the same server)
        let profile = set.databases["app"].profile_role(PREFIX, "app");
        let profile_before = role_exists(&su, &profile).await;
        let mut s = spec(&user, &set, &password);
        s.grantable_roles = &listed;
        let err = roles::grant::grant(&admin, &s).await.expect_err(role);
        assert!(matches!(err, RoleError::Refused(_)), "{role}: {err}");
        assert!(err.to_string().contains(why) && err.to_string().contains("privileged_grantable_roles"), "{role}: {err}");
        assert!(!role_exists(&su, &user).await);
        assert_eq!(role_exists(&su, &profile).await, profile_before, "{role}: no profile made");
    }
    // pgjit's own admin is never handed out, opt-in or not.
    let set = access(r#"[{"database":"app","role":"pgjit_admin"}]"#);
    let user = login_role_name(PREFIX, "greedy@corp.com");
    let mut s = spec(&user, &set, &password);
    s.grantable_roles = &listed;
    s.privileged_roles = &listed;
    let err = roles::grant::grant(&admin, &s).await.expect_err("the admin");
    assert!(err.to_string().contains("never handed out") && err.to_string().contains("pgjit's admin role"), "{err}");
    assert!(!role_exists(&su, &user).await);
    // An explicit opt-in hands out exactly what the operator chose.
    let opted = vec!["sneaky".to_string()];
    let set = access(r#"[{"database":"app","role":"sneaky"}]"#);
    let user = login_role_name(PREFIX, "allowed@corp.com");
    let mut s = spec(&user, &set, &password);
    s.grantable_roles = &listed;
    s.privileged_roles = &opted;
    roles::grant::grant(&admin, &s).await.expect("opted in");
    departure::delete(&admin, "postgres", &user, PREFIX, HOLDING).await.unwrap();
}

#[tokio::test]
async fn identifiers_that_look_like_sql_are_names() {
    let e = env();
    let admin = e.admin();
    let su = e.superuser("app").await;
    let schema = r#"we.ird "schema""#;
    let set = access(&serde_json::json!([
        {"database": "app", "schema": schema, "table": ";DROP TABLE x;--", "privileges": ["SELECT"]},
        {"database": "app", "schema": schema, "table": "Ünïcødé tàble", "privileges": ["SELECT", "INSERT"]},
    ]).to_string());
    let user = login_role_name(PREFIX, "o'brien \"; DROP ROLE x; --@corp.com");
    assert!(user.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{user}");
    let password = SecretString::random_password();
    roles::grant::grant(&admin, &spec(&user, &set, &password)).await.expect("grant on odd names");
    let client = e.login_as(&user, &password, "app").await.unwrap();
    client.query(r#"SELECT * FROM "we.ird ""schema""".";DROP TABLE x;--""#, &[]).await.expect("select");
    client.execute(r#"INSERT INTO "we.ird ""schema"""."Ünïcødé tàble" VALUES (1)"#, &[]).await.expect("insert");
    let tables: i64 = su.query_one("SELECT count(*) FROM pg_class WHERE relnamespace = $1::text::regnamespace", &[&r#""we.ird ""schema""""#]).await.unwrap().get(0);
    assert_eq!(tables, 2, "nothing was dropped or created");

    // Names that do not exist, however they are spelled, are rejected before anything is made.
    let bogus = access(&serde_json::json!([
        {"database": "app", "schema": "sales", "table": "orders\"; DROP TABLE sales.orders; --", "privileges": ["SELECT"]},
    ]).to_string());
    let user2 = login_role_name(PREFIX, "injector@corp.com");
    let err = roles::grant::grant(&admin, &spec(&user2, &bogus, &password)).await.expect_err("no such table");
    assert!(matches!(err, RoleError::NotFound(_)), "{err}");
    let orders: i64 = su.query_one("SELECT count(*) FROM sales.orders", &[]).await.unwrap().get(0);
    assert!(orders >= 2);
    departure::delete(&admin, "postgres", &user, PREFIX, HOLDING).await.unwrap();
}

#[tokio::test]
async fn missing_objects_are_rejected_with_nothing_created() {
    let e = env();
    let admin = e.admin();
    let su = e.superuser("postgres").await;
    let password = SecretString::random_password();
    let cases = [
        (r#"[{"database":"app","schema":"sales","table":"nope","privileges":["SELECT"]}]"#, "table \"sales\".\"nope\" does not exist"),
        (r#"[{"database":"app","schema":"nope","privileges":["USAGE"]}]"#, "schema \"nope\" does not exist"),
        (r#"[{"database":"app","schema":"sales","function":"nope","privileges":["EXECUTE"]}]"#, "does not exist"),
        (r#"[{"database":"app","schema":"sales","function":"order_count","arguments":["integer"],"privileges":["EXECUTE"]}]"#, "does not exist"),
        (r#"[{"database":"app","role":"nope"}]"#, "role \"nope\" does not exist"),
        (r#"[{"database":"nope","privileges":["CONNECT"]}]"#, "database \"nope\" does not exist"),
        // One good database, one bad one: the good one gets no profile role either.
        (r#"[{"database":"crm","schema":"accounts","privileges":["USAGE"]},{"database":"app","schema":"sales","table":"nope","privileges":["SELECT"]}]"#, "does not exist"),
        (r#"[{"database":"app","schema":"sales","privileges":["USAGE"]},{"database":"crm","schema":"accounts","table":"nope","privileges":["SELECT"]}]"#, "does not exist"),
        // An object of another kind than asked for is not there either.
        (r#"[{"database":"app","schema":"sales","table":"orders_id_seq","privileges":["SELECT"]}]"#, "table \"sales\".\"orders_id_seq\" does not exist"),
        (r#"[{"database":"app","schema":"sales","sequence":"orders","privileges":["USAGE"]}]"#, "sequence \"sales\".\"orders\" does not exist"),
    ];
    for (json, expected) in cases {
        let set = access(json);
        let user = login_role_name(PREFIX, "missing@corp.com");
        let listed = ["nope".to_string()];
        let mut s = spec(&user, &set, &password);
        s.grantable_roles = &listed;
        let err = roles::grant::grant(&admin, &s).await.expect_err(json);
        assert!(matches!(err, RoleError::NotFound(_)), "{json}: {err}");
        assert!(err.to_string().contains(expected), "{json}: {err}");
        assert!(!role_exists(&su, &user).await, "{json}: no login role");
        for (db, a) in &set.databases {
            assert!(!role_exists(&su, &a.profile_role(PREFIX, db)).await, "{json}: no profile role");
        }
    }
    // A username without pgjit's prefix is never touched.
    let set = access(r#"[{"database":"app","privileges":["CONNECT"]}]"#);
    let err = roles::grant::grant(&admin, &spec("postgres", &set, &password)).await.expect_err("foreign name");
    assert!(matches!(err, RoleError::Invalid(_)), "{err}");
    let err = departure::delete(&admin, "postgres", "postgres", PREFIX, HOLDING).await.expect_err("foreign name");
    assert!(matches!(err, RoleError::Invalid(_)), "{err}");
}

#[tokio::test]
async fn fifty_concurrent_grants_of_the_same_privileges_all_succeed() {
    let e = env();
    let admin = std::sync::Arc::new(e.admin());
    let set = std::sync::Arc::new(access(r#"[{"database":"app","schema":"sales","table":"customers","privileges":["SELECT","UPDATE"]}]"#));
    // A prefix of its own, so the profile role is new and all fifty race to create it.
    let prefix: &'static str = Box::leak(format!("burst{}_", rand::random::<u32>()).into_boxed_str());
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (admin, set) = (admin.clone(), set.clone());
        tasks.push(tokio::spawn(async move {
            let user = login_role_name(prefix, &format!("burst{i}@corp.com"));
            let password = SecretString::random_password();
            let mut s = spec(&user, &set, &password);
            s.prefix = prefix;
            roles::grant::grant(&admin, &s).await.map(|g| (user, password, g))
        }));
    }
    let mut users = Vec::new();
    for t in tasks {
        let (user, password, granted) = t.await.unwrap().unwrap_or_else(|err| panic!("{}", pgjit::engine::postgres::error_chain(&err)));
        users.push((user, password, granted));
    }
    let profiles: BTreeSet<_> = users.iter().map(|(_, _, g)| g.profiles["app"].clone()).collect();
    assert_eq!(profiles.len(), 1, "one shared profile role");
    let (user, password, _) = &users[17];
    let client = e.login_as(user, password, "app").await.unwrap();
    client.query("SELECT * FROM sales.customers", &[]).await.unwrap();
    let mut deletes = Vec::new();
    for (user, _, _) in users {
        let admin = admin.clone();
        deletes.push(tokio::spawn(async move { departure::delete(&admin, "postgres", &user, prefix, HOLDING).await }));
    }
    for d in deletes {
        d.await.unwrap().expect("delete");
    }
}

#[tokio::test]
async fn valid_until_in_the_past_blocks_login() {
    let e = env();
    let admin = e.admin();
    let set = access(r#"[{"database":"app","privileges":["CONNECT"]}]"#);
    let user = login_role_name(PREFIX, "expired@corp.com");
    let password = SecretString::random_password();
    let mut s = spec(&user, &set, &password);
    s.valid_until = Utc::now() - Duration::minutes(1);
    roles::grant::grant(&admin, &s).await.expect("grant");
    let err = e.login_as(&user, &password, "app").await.expect_err("expired");
    assert!(pgjit::engine::postgres::error_chain(&err).contains("password authentication failed"), "{}", pgjit::engine::postgres::error_chain(&err));
    // Repeating the grant with a later expiry converges the same role.
    s.valid_until = Utc::now() + Duration::minutes(5);
    let again = roles::grant::grant(&admin, &s).await.expect("repeat");
    assert!(again.already_existed);
    e.login_as(&user, &password, "app").await.expect("valid again");
    departure::delete(&admin, "postgres", &user, PREFIX, HOLDING).await.unwrap();
}

/// The attack: a temporary user with CREATE on a schema plants a SECURITY DEFINER function that
/// creates roles, a view over a table it may not read (the admin may), grants to PUBLIC, default privileges and
/// a trigger on someone else's table. Once it is revoked and dropped, none of it may run with the
/// admin's rights (the admin has CREATEROLE and every privilege WITH GRANT OPTION), nor with
/// anyone else's.
#[tokio::test]
async fn what_a_temporary_user_leaves_behind_never_runs_with_anyone_elses_rights() {
    let e = env();
    let admin = e.admin();
    let su = e.superuser("app").await;
    let set = access(
        r#"[{"database":"app","schema":"sales","privileges":["USAGE","CREATE"]},
            {"database":"app","schema":"sales","table":"orders","privileges":["SELECT","TRIGGER"]}]"#,
    );
    let user = login_role_name(PREFIX, "planter@corp.com");
    let tag = &user[user.len() - 8..];
    let password = SecretString::random_password();
    let granted = roles::grant::grant(&admin, &spec(&user, &set, &password)).await.expect("grant");
    let profile = granted.profiles["app"].clone();
    let version: i32 = su.query_one("SELECT current_setting('server_version_num')::int", &[]).await.unwrap().get(0);

    let client = e.login_as(&user, &password, "app").await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE sales.scratch_{tag} (x int); INSERT INTO sales.scratch_{tag} VALUES (42);
             GRANT SELECT ON sales.scratch_{tag} TO PUBLIC;
             GRANT SELECT ON sales.scratch_{tag} TO reporting WITH GRANT OPTION;
             CREATE TABLE sales.columns_{tag} (x int, secret text); INSERT INTO sales.columns_{tag} VALUES (1, 'kept');
             GRANT SELECT (x) ON sales.columns_{tag} TO PUBLIC;
             CREATE FUNCTION sales.escalate_{tag}() RETURNS text LANGUAGE plpgsql SECURITY DEFINER
                 AS $f$ BEGIN EXECUTE 'CREATE ROLE attacker_{tag} LOGIN'; RETURN current_user; END $f$;
             CREATE VIEW sales.peek_{tag} AS SELECT * FROM sales.customers;
             GRANT SELECT ON sales.peek_{tag} TO PUBLIC;
             ALTER DEFAULT PRIVILEGES IN SCHEMA sales GRANT SELECT ON TABLES TO PUBLIC;
             CREATE FUNCTION sales.trap_{tag}() RETURNS trigger LANGUAGE plpgsql
                 AS $f$ BEGIN EXECUTE 'CREATE ROLE trapped_{tag}'; RETURN NEW; END $f$;
             CREATE TRIGGER trap_{tag} BEFORE INSERT ON sales.orders FOR EACH ROW EXECUTE FUNCTION sales.trap_{tag}()"
        ))
        .await
        .expect("what a user with CREATE on a schema and TRIGGER on a table can do");
    // Someone the user gave a grant option to passes it on: revoking needs CASCADE.
    su.batch_execute(&format!("SET ROLE reporting; GRANT SELECT ON sales.scratch_{tag} TO app_owner; RESET ROLE")).await.unwrap();
    // Acting as its profile role would leave objects owned by a role that outlives the user:
    // impossible from 16 (SET FALSE); before 16, cleanup hands them over (below).
    let as_profile = client.batch_execute(&format!("SET ROLE {}; CREATE TABLE sales.by_profile_{tag} (x int); RESET ROLE", pgjit::engine::postgres::ident(&profile))).await;
    assert_eq!(as_profile.is_err(), version >= 160000, "SET ROLE to the profile: {as_profile:?}");
    // Older servers let a role hand membership of itself to others from its own session (current
    // minors refuse it); whichever this server does, revoke leaves no such member.
    let _ = client.batch_execute(&format!("GRANT {} TO reporting", pgjit::engine::postgres::ident(&user))).await;
    drop(client);

    // Revoke already takes the trigger away: it would run the user's code as whoever inserts.
    let revoked = revocation::revoke(&admin, "postgres", &user, PREFIX).await.expect("revoke");
    assert!(revoked.disarmed.iter().any(|d| d.contains(&format!("dropped function sales.trap_{tag}()")) && d.contains(&format!("trap_{tag} ON sales.orders"))), "{:?}", revoked.disarmed);
    for disarmed in [format!("SECURITY DEFINER taken from function sales.escalate_{tag}()"), format!("grants on table sales.peek_{tag} to PUBLIC dropped")] {
        assert!(revoked.disarmed.iter().any(|d| d.contains(&disarmed)), "{disarmed} in {:?}", revoked.disarmed);
    }
    let triggers: i64 = su.query_one("SELECT count(*) FROM pg_trigger WHERE tgname = $1", &[&format!("trap_{tag}")]).await.unwrap().get(0);
    assert_eq!(triggers, 0);
    let shared_with: i64 = su
        .query_one("SELECT count(*) FROM pg_auth_members WHERE roleid = (SELECT oid FROM pg_roles WHERE rolname = $1) AND member = 'reporting'::regrole", &[&user])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shared_with, 0, "whoever the user let in is out again");
    let deleted = departure::delete(&admin, "postgres", &user, PREFIX, HOLDING).await.expect("delete despite owned objects");
    assert_eq!(deleted.reassigned_in, ["app"]);
    assert!(!role_exists(&su, &user).await);
    for handed in [format!("table sales.scratch_{tag} handed to {HOLDING}"), format!("routine sales.escalate_{tag}() handed to {HOLDING}")] {
        assert!(deleted.handed_over.iter().any(|h| h.contains(&handed)), "{handed} in {:?}", deleted.handed_over);
    }
    if version < 160000 {
        let handed = departure::hand_over(&admin, "postgres", &profile, HOLDING).await.expect("profile hand-over");
        assert!(handed.iter().any(|h| h.contains(&format!("sales.by_profile_{tag}"))), "{handed:?}");
    }
    // The profile role keeps its privileges for whoever else holds it (no DROP OWNED for it).
    let kept: bool = su.query_one("SELECT has_table_privilege($1, 'sales.orders', 'SELECT')", &[&profile]).await.unwrap().get(0);
    assert!(kept, "the profile still grants what it granted");

    // Everything is kept, owned by the powerless holding role, with nothing granted on it.
    for object in [format!("sales.scratch_{tag}"), format!("sales.peek_{tag}")].iter().chain((version < 160000).then(|| format!("sales.by_profile_{tag}")).iter()) {
        let owner: String = su.query_one(&format!("SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = '{object}'::regclass"), &[]).await.unwrap().get(0);
        assert_eq!(owner, HOLDING, "{object}");
    }
    let row = su
        .query_one(
            &format!("SELECT pg_get_userbyid(proowner)::text, prosecdef, proacl::text FROM pg_proc WHERE oid = 'sales.escalate_{tag}()'::regprocedure"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, String>(0).as_str(), row.get::<_, bool>(1)), (HOLDING, false), "no longer SECURITY DEFINER");
    let acl = row.get::<_, Option<String>>(2).unwrap_or_default();
    assert!(!acl.contains("{=X") && !acl.contains(",=X"), "no EXECUTE for PUBLIC: {acl}");
    let holding: (bool, bool, i64) = {
        let r = su
            .query_one("SELECT rolcanlogin, rolsuper OR rolcreaterole OR rolcreatedb, (SELECT count(*) FROM pg_auth_members WHERE member = r.oid) FROM pg_roles r WHERE rolname = $1", &[&HOLDING])
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(holding, (false, false, 0), "the holding role is powerless");
    let defaults: i64 = su.query_one("SELECT count(*) FROM pg_default_acl WHERE defaclrole = (SELECT oid FROM pg_roles WHERE rolname = $1)", &[&HOLDING]).await.unwrap().get(0);
    assert_eq!(defaults, 0, "the user's default privileges went with it");

    // A bystander with a login of its own tries what was planted.
    let bystander = format!("bystander_{tag}");
    let bystander_password = SecretString::random_password();
    su.batch_execute("SET log_statement = 'none'").await.unwrap();
    su.batch_execute(&format!("CREATE ROLE {bystander} LOGIN PASSWORD {}; GRANT USAGE ON SCHEMA sales TO {bystander}", pgjit::engine::postgres::literal(bystander_password.expose())))
        .await
        .unwrap();
    su.batch_execute("RESET log_statement").await.unwrap();
    let other = e.login_as(&bystander, &bystander_password, "app").await.unwrap();
    for attack in [
        format!("SELECT sales.escalate_{tag}()"),
        format!("SELECT * FROM sales.peek_{tag}"),
        format!("SELECT * FROM sales.scratch_{tag}"),
        format!("SELECT x FROM sales.columns_{tag}"),
    ] {
        let err = other.query(&attack, &[]).await.expect_err(&attack);
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{attack}: {err}");
    }
    // The admin itself writes to the table the trap was on: nothing of the user's runs.
    su.batch_execute("SET ROLE app_owner; INSERT INTO sales.orders (customer, total) VALUES ('trap check', 1); RESET ROLE; DELETE FROM sales.orders WHERE customer = 'trap check'").await.unwrap();
    for planted in [format!("attacker_{tag}"), format!("trapped_{tag}")] {
        assert!(!role_exists(&su, &planted).await, "{planted} was never created");
    }
    su.batch_execute(&format!(
        "DROP VIEW sales.peek_{tag}; DROP TABLE sales.scratch_{tag}; DROP TABLE sales.columns_{tag}; DROP TABLE IF EXISTS sales.by_profile_{tag}; DROP FUNCTION sales.escalate_{tag}(); \
         REVOKE USAGE ON SCHEMA sales FROM {bystander}; DROP ROLE {bystander}"
    ))
    .await
    .unwrap();
}

/// The attack: functions planted in `public` (open to every login before 15; here granted) that
/// shadow the catalog functions pgjit's own statements call (`starts_with`, `quote_ident`), so
/// pgjit's admin would run them when it next reconciles, revokes or drops.
#[tokio::test]
async fn functions_planted_on_the_search_path_never_run_as_the_admin() {
    let e = env();
    let admin = e.admin();
    let su = e.superuser("postgres").await;
    let set = access(r#"[{"database":"postgres","schema":"public","privileges":["USAGE","CREATE"]}]"#);
    let user = login_role_name(PREFIX, "shadow@corp.com");
    let tag = &user[user.len() - 8..];
    let password = SecretString::random_password();
    roles::grant::grant(&admin, &spec(&user, &set, &password)).await.expect("grant");
    let client = e.login_as(&user, &password, "postgres").await.unwrap();
    for (function, result) in [("starts_with(name, text)", "boolean"), ("quote_ident(name)", "text"), ("pg_get_userbyid(oid)", "name")] {
        let name = function.split('(').next().unwrap();
        client
            .batch_execute(&format!(
                "CREATE FUNCTION public.{function} RETURNS {result} LANGUAGE plpgsql AS $f$ BEGIN                      EXECUTE 'CREATE ROLE shadowed_{tag}_{name}'; RETURN NULL; END $f$"
            ))
            .await
            .expect("planting in public");
    }
    drop(client);
    let listing = admin.connect("postgres").await.unwrap();
    let listed = departure::managed_roles(&listing, PREFIX).await;
    let revoked = revocation::revoke(&admin, "postgres", &user, PREFIX).await;
    let deleted = departure::delete(&admin, "postgres", &user, PREFIX, HOLDING).await;
    // Gone before anything is asserted: the other tests share this server and its public schema.
    su.batch_execute("DROP FUNCTION public.starts_with(name, text); DROP FUNCTION public.quote_ident(name); DROP FUNCTION public.pg_get_userbyid(oid)").await.unwrap();
    listed.expect("reconciliation's listing");
    revoked.expect("revoke");
    deleted.expect("delete");
    let planted: i64 = su.query_one("SELECT count(*) FROM pg_roles WHERE rolname LIKE $1", &[&format!("shadowed_{tag}_%")]).await.unwrap().get(0);
    assert_eq!(planted, 0, "none of the planted functions ran as the admin");
}

#[tokio::test]
async fn iam_mode_makes_an_rds_iam_member_without_password() {
    let e = env();
    let admin = e.admin();
    let su = e.superuser("postgres").await;
    let set = access(r#"[{"database":"app","schema":"sales","table":"orders","privileges":["SELECT"]}]"#);
    let user = login_role_name(PREFIX, "iam.user@corp.com");
    let unused = SecretString::default();
    let mut s = spec(&user, &set, &unused);
    s.login = LoginMethod::Iam;
    roles::grant::grant(&admin, &s).await.expect("grant");
    let row = su
        .query_one("SELECT pg_has_role($1, 'rds_iam', 'MEMBER'), rolpassword IS NULL FROM pg_authid WHERE rolname = $1", &[&user])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "member of rds_iam");
    assert!(row.get::<_, bool>(1), "no password");
    revocation::revoke(&admin, "postgres", &user, PREFIX).await.unwrap();
    let member: bool = su.query_one("SELECT pg_has_role($1, 'rds_iam', 'MEMBER')", &[&user]).await.unwrap().get(0);
    assert!(!member, "rds_iam membership removed at revoke");
    departure::delete(&admin, "postgres", &user, PREFIX, HOLDING).await.unwrap();
}

#[tokio::test]
async fn the_password_never_reaches_the_server_log() {
    let e = env();
    let admin = e.admin();
    let set = access(r#"[{"database":"app","schema":"hr","table":"salaries","privileges":["SELECT"]}]"#);
    let user = login_role_name(PREFIX, "logcheck@corp.com");
    let password = SecretString::random_password();
    roles::grant::grant(&admin, &spec(&user, &set, &password)).await.expect("grant");
    e.login_as(&user, &password, "app").await.unwrap().query("SELECT * FROM hr.salaries", &[]).await.unwrap();
    departure::delete(&admin, "postgres", &user, PREFIX, HOLDING).await.unwrap();
    let log = e.server_log();
    assert!(log.contains(&format!("CREATE ROLE \"{user}\" LOGIN")), "the statement log is on and saw the grant");
    assert!(log.contains("SCRAM-SHA-256$4096:"), "only the verifier is sent");
    assert!(!log.contains(password.expose()), "the password is in the server log");
    assert!(!log.contains(e.admin_password.expose()), "the admin password is in the server log");
}

#[tokio::test]
async fn catalog_reads_a_database_with_a_fixed_number_of_queries() {
    let e = env();
    let admin = e.admin();
    let client = admin.connect("app").await.unwrap();
    let dbs = pgjit::engine::catalog::databases(&client).await.unwrap();
    assert!(dbs.contains(&"app".to_string()) && dbs.contains(&"crm".to_string()), "{dbs:?}");
    assert!(!dbs.iter().any(|d| d.starts_with("template")), "{dbs:?}");
    let cat = pgjit::engine::catalog::read_database(&client).await.unwrap();
    assert_eq!(cat.database, "app");
    let schemas: Vec<&str> = cat.schemas.iter().map(|s| s.name.as_str()).collect();
    assert!(schemas.contains(&"sales") && schemas.contains(&"hr") && schemas.contains(&r#"we.ird "schema""#), "{schemas:?}");
    let orders = cat.relations.iter().find(|r| r.schema == "sales" && r.name == "orders").unwrap();
    assert_eq!((orders.kind.as_str(), orders.owner.as_str()), ("table", "app_owner"));
    assert!(cat.relations.iter().any(|r| r.name == "big_orders" && r.kind == "view"));
    assert!(cat.sequences.iter().any(|s| s.name == "orders_id_seq"));
    assert!(cat.functions.iter().any(|f| f.name == "order_count" && f.arguments.is_empty()));
    assert!(!cat.relations.iter().any(|r| r.schema == "pg_catalog"));
    let roles = pgjit::engine::catalog::roles(&client).await.unwrap();
    assert!(roles.iter().any(|r| r.name == "reporting" && !r.can_login));
    assert!(!roles.iter().any(|r| r.name.starts_with("pg_")));

    // The number of statements does not depend on how many schemas or tables there are:
    // count what this connection's backend logged between two markers.
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let marker = format!("catalog-count-{}", rand::random::<u32>());
    client.batch_execute(&format!("SELECT '{marker}'")).await.unwrap();
    pgjit::engine::catalog::read_database(&client).await.unwrap();
    client.batch_execute(&format!("SELECT '{marker}-end'")).await.unwrap();
    let log = e.server_log();
    let start = log.find(&format!("SELECT '{marker}'")).unwrap();
    let end = log.find(&format!("SELECT '{marker}-end'")).unwrap();
    let tag = format!("[{pid}]");
    let statements = log[start..end].lines().filter(|l| l.contains(&tag) && l.contains("LOG:  execute")).count();
    assert_eq!(statements, 5, "five catalog statements for the whole database");
}

#[tokio::test]
async fn managed_roles_lists_login_and_profile_roles() {
    let e = env();
    let admin = e.admin();
    let set = access(r#"[{"database":"app","schema":"sales","table":"orders","privileges":["SELECT","DELETE"]}]"#);
    let user = login_role_name(PREFIX, "listed@corp.com");
    let password = SecretString::random_password();
    let granted = roles::grant::grant(&admin, &spec(&user, &set, &password)).await.unwrap();
    let client = admin.connect("postgres").await.unwrap();
    let listed = departure::managed_roles(&client, PREFIX).await.unwrap();
    let mine = listed.iter().find(|r| r.name == user).unwrap();
    assert!(mine.can_login && !mine.profile && mine.valid_until.is_some());
    let profile = listed.iter().find(|r| r.name == granted.profiles["app"]).unwrap();
    assert!(profile.profile && !profile.can_login);
    assert!(!listed.iter().any(|r| r.name == e.admin_user));
    departure::delete(&admin, "postgres", &user, PREFIX, HOLDING).await.unwrap();
}

#[tokio::test]
async fn doctor_names_what_the_admin_can_and_cannot_do() {
    let e = env();
    // The environment's databases, named: other tests create short-lived ones of their own.
    let databases = ["postgres", "app", "crm"].map(String::from);
    let integration = |kind: &str, extra: serde_json::Value| {
        let mut doc = serde_json::json!({"name": "doctored", "kind": kind, "host": "localhost", "admin": {"auth": "password", "secret_id": "unused"},
            "max_duration_seconds": 60, "grantable_roles": ["reporting"], "ca_bundle": "system"});
        for (k, v) in extra.as_object().unwrap() {
            doc[k] = v.clone();
        }
        pgjit::contract::integration::Integration::from_json(&doc.to_string()).unwrap()
    };
    let findings = pgjit::engine::doctor::doctor(&e.admin(), &integration("postgres", serde_json::json!({})).doctor_scope(), &databases).await.unwrap();
    // 13 and 14 give PUBLIC CREATE on schema public: the doctor warns in each database (and only then).
    let version: i32 = e.superuser("postgres").await.query_one("SELECT current_setting('server_version_num')::int", &[]).await.unwrap().get(0);
    let public_warnings = findings.iter().filter(|f| f.warning && f.capability.starts_with("no CREATE for PUBLIC")).count();
    assert_eq!(public_warnings, if version < 150000 { 3 } else { 0 }, "{findings:?}");
    let failed: Vec<_> = findings.iter().filter(|f| !f.ok && !f.capability.starts_with("no CREATE for PUBLIC")).collect();
    assert!(failed.is_empty(), "the prepared admin passes, without warnings: {failed:?}");
    assert!(findings.iter().any(|f| f.capability == format!("holding role {HOLDING:?}") && f.ok), "{findings:?}");
    assert!(findings.iter().any(|f| f.capability == "CREATEROLE"));
    assert!(findings.iter().any(|f| f.capability == "grant role \"reporting\"" && f.ok), "{findings:?}");
    assert!(findings.iter().any(|f| f.capability == "grant option on database \"app\""));
    assert!(findings.iter().any(|f| f.capability == "grant option on schema \"app\".\"sales\""));

    // An rds integration trusts Amazon's RDS CAs by default: a server whose certificate chains
    // elsewhere (here, the local CA) is named as such, with the fix.
    let mut rds_endpoint = e.endpoint();
    rds_endpoint.ca_bundle = pgjit::engine::setup::Flavor::Rds.default_ca_bundle().map(str::to_owned);
    let err = pgjit::engine::doctor::doctor(&Connector::new(rds_endpoint, Credentials::Password(e.admin_login())), &integration("rds", serde_json::json!({"ca_bundle": null})).doctor_scope(), &databases)
        .await
        .expect_err("not an RDS certificate");
    assert!(matches!(err, pgjit::engine::doctor::DoctorError::Certificate { .. }), "{err}");
    assert!(err.to_string().contains("Amazon's RDS certificate authorities") && err.to_string().contains("ca_bundle"), "{err}");

    // A role that was never prepared: each missing capability is named.
    let su = e.superuser("postgres").await;
    let password = SecretString::random_password();
    su.batch_execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'weak_admin') THEN CREATE ROLE weak_admin LOGIN; END IF; END $$")
        .await
        .unwrap();
    // Kept out of the statement log, which another test searches for passwords.
    su.batch_execute("SET log_statement = 'none'").await.unwrap();
    su.batch_execute(&format!("ALTER ROLE weak_admin PASSWORD {}", pgjit::engine::postgres::literal(password.expose()))).await.unwrap();
    let weak = Connector::new(e.endpoint(), Credentials::Password(pgjit::engine::postgres::Login { user: "weak_admin".into(), password }));
    let findings = pgjit::engine::doctor::doctor(&weak, &integration("rds", serde_json::json!({"grantable_roles": ["reporting", "no_such_role"]})).doctor_scope(), &["app".into()]).await.unwrap();
    let failed: BTreeSet<&str> = findings.iter().filter(|f| !f.ok).map(|f| f.capability.as_str()).collect();
    for expected in ["CREATEROLE", "end sessions", "grant rds_iam", "grant option on database \"app\"", "grant option on schema \"app\".\"sales\"", "grant role \"reporting\"", "grant role \"no_such_role\""] {
        assert!(failed.contains(expected), "{expected} missing from {failed:?}");
    }
}

#[tokio::test]
async fn a_grant_that_does_not_take_effect_is_refused_and_rolled_back() {
    let e = env();
    let admin = e.admin();
    // Its own database: the half-delegable schema below would fail the doctor running alongside.
    let db = format!("notgranted_{}", rand::random::<u32>());
    e.superuser("postgres").await.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
    let su = e.superuser(&db).await;
    // A schema the admin may delegate, holding a table it was never given: GRANT only warns.
    let schema = format!("lonely_{}", rand::random::<u32>());
    su.batch_execute(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'stranger') THEN CREATE ROLE stranger NOLOGIN; END IF; END $$;
         CREATE SCHEMA {schema} AUTHORIZATION stranger;
         CREATE TABLE {schema}.kept_away (x int);
         ALTER TABLE {schema}.kept_away OWNER TO stranger;
         CREATE TABLE {schema}.half_given (x int);
         ALTER TABLE {schema}.half_given OWNER TO stranger;
         GRANT USAGE ON SCHEMA {schema} TO {a} WITH GRANT OPTION;
         GRANT SELECT ON {schema}.half_given TO {a}",
        a = pgjit::engine::postgres::ident(&e.admin_user)
    ))
    .await
    .unwrap();
    // SELECT held without grant option: GRANT warns, the verification catches it.
    // No privilege at all: GRANT fails outright. Both: refused, nothing kept.
    for (table, expected) in [("half_given", format!("SELECT on table {schema}.half_given")), ("kept_away", "permission denied".to_owned())] {
        let set = access(&format!(r#"[{{"database":"{db}","schema":"{schema}","table":"{table}","privileges":["SELECT"]}}]"#));
        let user = login_role_name(PREFIX, "notgranted@corp.com");
        let password = SecretString::random_password();
        let err = roles::grant::grant(&admin, &spec(&user, &set, &password)).await.expect_err("the admin cannot delegate it");
        assert!(matches!(err, RoleError::NotGranted { .. }), "{table}: {err}");
        assert!(err.to_string().contains(&expected), "{table}: {err}");
        assert!(!role_exists(&su, &user).await, "{table}: no login role");
        assert!(!role_exists(&su, &set.databases[&db].profile_role(PREFIX, &db)).await, "{table}: the profile was rolled back");
    }
    drop(su);
    e.superuser("postgres").await.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)")).await.unwrap();
}

/// A role pgjit created on 15 and still alive after an upgrade to 16: the admin holds no ADMIN
/// OPTION on it, so revoke could not alter it. The doctor names it; setup-sql repairs it.
#[tokio::test]
async fn roles_stranded_by_an_upgrade_to_16_are_found_and_repaired() {
    let e = env();
    let su = e.superuser("postgres").await;
    let version: i32 = su.query_one("SELECT current_setting('server_version_num')::int", &[]).await.unwrap().get(0);
    let prefix = format!("up{}_", rand::random::<u32>());
    // Made by the superuser, as pg_upgrade carries a 15 role over: no grant to the admin at all.
    let stranded = login_role_name(&prefix, "upgraded@corp.com");
    su.batch_execute(&format!("CREATE ROLE {stranded} NOLOGIN")).await.unwrap();
    let integration = pgjit::contract::integration::Integration::from_json(
        &serde_json::json!({"name": "upgraded", "kind": "postgres", "host": "localhost", "admin": {"auth": "password", "secret_id": "unused"},
            "max_duration_seconds": 60, "user_prefix": prefix, "ca_bundle": "system"}).to_string(),
    )
    .unwrap();
    let finding = |findings: &[pgjit::engine::doctor::Finding]| findings.iter().find(|f| f.capability == "manage pgjit's roles").cloned();
    let findings = pgjit::engine::doctor::doctor(&e.admin(), &integration.doctor_scope(), &["postgres".into()]).await.unwrap();
    if version < 160000 {
        assert!(finding(&findings).is_none(), "before 16 CREATEROLE is enough: {findings:?}");
    } else {
        let f = finding(&findings).expect("checked from 16");
        assert!(!f.ok && f.detail.contains(&stranded) && f.detail.contains("--user-prefix"), "{f:?}");
        let options = pgjit::engine::setup::SetupOptions { grantable_roles: vec!["reporting".into()], user_prefix: prefix.clone() };
        let sql = pgjit::engine::setup::setup_sql(pgjit::engine::setup::Flavor::Postgres, &e.admin_user, HOLDING, &options).unwrap();
        su.batch_execute(&sql).await.expect("setup-sql runs as the superuser");
        let findings = pgjit::engine::doctor::doctor(&e.admin(), &integration.doctor_scope(), &["postgres".into()]).await.unwrap();
        assert!(finding(&findings).is_some_and(|f| f.ok), "{findings:?}");
        // And the admin can now manage it: revoke and delete work.
        let admin = e.admin();
        departure::delete(&admin, "postgres", &stranded, &prefix, HOLDING).await.expect("managed again");
    }
    su.batch_execute(&format!("DROP ROLE IF EXISTS {stranded}")).await.unwrap();
}
