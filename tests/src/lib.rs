//! Access to the local environment that `scripts/localenv.sh` starts (real PostgreSQL servers
//! with TLS and scram, and moto), for the integration tests and the demo.

pub mod latency;
pub mod policy;

use std::sync::OnceLock;
use std::time::Duration;

use pgjit::engine::postgres::{ConnectError, Connector, Credentials, Endpoint, Login, SslMode};
use pgjit::SecretString;

/// The environment's addresses and the admin's credentials, from `.localenv/env`.
#[derive(Debug, Clone)]
pub struct LocalEnv {
    pub host: String,
    pub port: u16,
    pub plain_port: u16,
    pub ca_file: String,
    pub log_file: String,
    pub socket_dir: String,
    pub plain_socket_dir: String,
    pub admin_user: String,
    pub admin_password: SecretString,
    pub moto_url: String,
    /// The `pgjit` binary the environment was prepared with.
    pub cli: String,
    /// The `audit` function's binary (built with the CLI), to run under a Runtime API.
    pub audit_bin: String,
    /// Whether the TLS server loads pgaudit (Debian's, for 15), with RDS's log_line_prefix.
    pub pgaudit: bool,
}

async fn superuser_over(socket_dir: &str, port: u16, database: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::Config::new()
        .host_path(socket_dir)
        .port(port)
        .user("postgres")
        .dbname(database)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("superuser connection over the unix socket");
    tokio::spawn(connection);
    client
}

/// A variable of the environment: from the process, or else from `.localenv/env`, which
/// `scripts/localenv.sh up` writes, so `cargo test` works while an environment is up.
fn var(name: &str) -> String {
    if let Ok(v) = std::env::var(name) {
        return v;
    }
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../.localenv/env");
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| text.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('=')).map(str::to_owned)))
        .unwrap_or_else(|| panic!("{name} is not set: run the tests through scripts/test.sh, or start `scripts/localenv.sh up` first"))
}

/// The running environment; panics with a hint when the tests were started without it.
pub fn env() -> &'static LocalEnv {
    static ENV: OnceLock<LocalEnv> = OnceLock::new();
    ENV.get_or_init(|| LocalEnv {
        host: var("PGJIT_TEST_PG_HOST"),
        port: var("PGJIT_TEST_PG_PORT").parse().expect("PGJIT_TEST_PG_PORT"),
        plain_port: var("PGJIT_TEST_PG_PLAIN_PORT").parse().expect("PGJIT_TEST_PG_PLAIN_PORT"),
        ca_file: var("PGJIT_TEST_PG_CA"),
        log_file: var("PGJIT_TEST_PG_LOG"),
        socket_dir: var("PGJIT_TEST_PG_SOCKET"),
        plain_socket_dir: var("PGJIT_TEST_PG_PLAIN_SOCKET"),
        admin_user: var("PGJIT_TEST_ADMIN_USER"),
        admin_password: SecretString::new(var("PGJIT_TEST_ADMIN_PASSWORD")),
        moto_url: var("PGJIT_TEST_MOTO_URL"),
        cli: var("PGJIT_TEST_CLI"),
        audit_bin: var("PGJIT_TEST_AUDIT_BIN"),
        pgaudit: var("PGJIT_TEST_PG_AUDIT") == "on",
    })
}

impl LocalEnv {
    /// The TLS server, verified fully against the environment's CA.
    pub fn endpoint(&self) -> Endpoint {
        let mut e = Endpoint::new(&self.host, self.port, SslMode::VerifyFull);
        e.ca_bundle = Some(self.ca_file.clone());
        e.timeouts.connect = Duration::from_secs(20);
        e
    }

    /// The server without TLS.
    pub fn plain_endpoint(&self, ssl_mode: SslMode) -> Endpoint {
        let mut e = Endpoint::new(&self.host, self.plain_port, ssl_mode);
        e.ca_bundle = Some(self.ca_file.clone());
        e
    }

    pub fn admin_login(&self) -> Login {
        Login { user: self.admin_user.clone(), password: self.admin_password.clone() }
    }

    /// pgjit's connector: the non-superuser admin over verified TLS.
    pub fn admin(&self) -> Connector {
        Connector::new(self.endpoint(), Credentials::Password(self.admin_login()))
    }

    /// A connection as someone else (a temporary user), over verified TLS.
    pub async fn login_as(&self, user: &str, password: &SecretString, database: &str) -> Result<tokio_postgres::Client, ConnectError> {
        Connector::new(self.endpoint(), Credentials::Password(Login { user: user.to_owned(), password: password.clone() }))
            .connect(database)
            .await
    }

    /// The superuser over the TLS server's unix socket: only for looking at what pgjit did.
    pub async fn superuser(&self, database: &str) -> tokio_postgres::Client {
        superuser_over(&self.socket_dir, self.port, database).await
    }

    /// The superuser over the plain server's unix socket.
    pub async fn superuser_plain(&self, database: &str) -> tokio_postgres::Client {
        superuser_over(&self.plain_socket_dir, self.plain_port, database).await
    }

    /// Everything the TLS server has logged (log_statement=all).
    pub fn server_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_file).expect("server log")).into_owned()
    }
}

/// Whether a role exists, as the superuser sees it.
pub async fn role_exists(su: &tokio_postgres::Client, name: &str) -> bool {
    su.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name]).await.expect("pg_roles").is_some()
}

/// AWS settings pointing at the environment's moto, with fixed test credentials: nothing is
/// read from the process environment, so no test can reach a real account or the metadata service.
pub async fn moto_sdk_config() -> aws_config::SdkConfig {
    moto_sdk_config_at(&env().moto_url).await
}

/// The same, for moto behind another address (a [`Proxy`]).
pub async fn moto_sdk_config_at(url: &str) -> aws_config::SdkConfig {
    moto_sdk_config_via(url, pgjit::aws::https_client()).await
}

/// [`moto_sdk_config_at`] over an HTTP client of the caller's (one that adds latency, say).
pub async fn moto_sdk_config_via(url: &str, http_client: aws_smithy_runtime_api::client::http::SharedHttpClient) -> aws_config::SdkConfig {
    let creds = aws_credential_types::Credentials::new("testing", "testing", None, None, "pgjit-tests");
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http_client)
        .endpoint_url(url)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .load()
        .await
}

/// Services with tables, schedule group and secret prefix of their own, so tests running at the
/// same time against one moto never see each other's records.
pub async fn isolated_services() -> pgjit::aws::Services {
    isolated_services_with(|_| None).await
}

/// [`isolated_services`] with some settings of the test's own (`extra` is asked first).
pub async fn isolated_services_with(extra: impl Fn(&str) -> Option<String>) -> pgjit::aws::Services {
    let id: u32 = rand::random();
    let config = pgjit::contract::config::Config::from_lookup(|name| extra(name).or_else(|| match name {
        "PGJIT_GRANTS_TABLE" => Some(format!("grants-{id}")),
        "PGJIT_INTEGRATIONS_TABLE" => Some(format!("integrations-{id}")),
        "PGJIT_INVENTORY_TABLE" => Some(format!("inventory-{id}")),
        "PGJIT_AUDIT_TABLE" => Some(format!("audit-{id}")),
        "PGJIT_SESSIONS_TABLE" => Some(format!("sessions-{id}")),
        "PGJIT_FLOWS_TABLE" => Some(format!("flows-{id}")),
        "PGJIT_REQUESTS_TABLE" => Some(format!("requests-{id}")),
        "PGJIT_SCHEDULE_GROUP" => Some(format!("pgjit-{id}")),
        "PGJIT_SECRET_PREFIX" => Some(format!("pgjit-{id}/")),
        "PGJIT_CREDENTIALS_PREFIX" => Some(format!("pgjit-credentials-{id}/")),
        // Cleanup's reconciliation sees every role of the shared server with a test's prefix.
        "PGJIT_RECONCILE_GRACE_SECONDS" => Some("0".into()),
        "PGJIT_DISCOVERY_TAG_KEY" => Some(format!("pgjit:secret:{id}")),
        "PGJIT_APPROVALS_KEY_ID" => Some(format!("alias/pgjit-approvals-{id}")),
        _ => None,
    }))
    .expect("test configuration");
    // `PGJIT_TEST_MOTO_URL` in `extra` puts moto behind another address.
    let url = extra("PGJIT_TEST_MOTO_URL").unwrap_or_else(|| env().moto_url.clone());
    let svc = pgjit::aws::Services::new(config, moto_sdk_config_at(&url).await);
    svc.store.create_tables().await.expect("create tables in moto");
    pgjit::aws::schedule::ensure_group(&svc).await.expect("schedule group in moto");
    pgjit::aws::approval_mac::ensure_key(&svc).await.expect("approvals key in moto");
    svc
}

/// The event with the approvals key's MAC, as an approval sender sends it: the tests call the
/// handlers as the bus delivers a sender's events. An event that cannot be signed (no envelope,
/// no detail: the bad-input tests) is returned as it is, for the handler to refuse.
pub async fn signed(svc: &pgjit::aws::Services, mut event: serde_json::Value) -> serde_json::Value {
    let unsigned = event.get("detail").is_some_and(|d| d.get(pgjit::aws::approval_mac::MAC_FIELD).is_none());
    if unsigned && pgjit::aws::approval_mac::message(&event).is_ok() {
        pgjit::aws::approval_mac::sign(svc, &mut event).await.expect("GenerateMac in moto");
    }
    event
}

/// A TCP relay in front of a server that a test can cut, as a server that stopped or a network
/// that broke: `down()` refuses new connections and drops every open one; `up()` restores.
/// [`Proxy::with_latency`] makes it a link of fixed latency too (benchmarks).
pub struct Proxy {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target_port: u16) -> Proxy {
        Proxy::with_latency(target_port, Duration::ZERO).await
    }

    /// A relay whose every byte arrives `one_way` later in each direction (see [`latency`]).
    pub async fn with_latency(target_port: u16, one_way: Duration) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy listener");
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, open2) = (up.clone(), open.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await {
                        if one_way.is_zero() {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        } else {
                            latency::carry_both_ways(inbound, outbound, one_way).await;
                        }
                    }
                });
                open2.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { port, up, open, accept }
    }

    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for task in self.open.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// A handle that cuts the proxy from anywhere (a failpoint hook).
    pub fn cutter(&self) -> impl Fn() + Send + Sync + 'static {
        let (up, open) = (self.up.clone(), self.open.clone());
        move || {
            up.store(false, std::sync::atomic::Ordering::SeqCst);
            for task in open.lock().unwrap().drain(..) {
                task.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
        self.accept.abort();
    }
}

/// A server that accepts TCP connections and never says a word.
pub async fn silent_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

/// Stores the admin's credentials in moto (RDS format) and an integration of the local TLS
/// server that uses them, with a user prefix of its own: cleanup reconciles every role with the
/// prefix on the server, and the tests share one server. `extra` overrides any field.
pub async fn register_integration(svc: &pgjit::aws::Services, name: &str, extra: serde_json::Value) -> pgjit::contract::integration::Integration {
    use serde_json::json;
    let e = env();
    let secret_id = format!("{}admin/{name}", svc.config.secret_prefix);
    let secret = json!({"engine": "postgres", "username": e.admin_user, "password": e.admin_password.expose()}).to_string();
    svc.secrets.create_secret().name(&secret_id).secret_string(secret).send().await.expect("admin secret");
    let prefix = format!("t{}_", rand::random::<u32>());
    let mut doc = json!({
        "name": name, "kind": "postgres", "host": "localhost", "port": e.port, "user_prefix": prefix,
        "admin": {"auth": "password", "secret_id": secret_id},
        "ssl_mode": "verify-full", "ca_bundle": e.ca_file,
        "max_duration_seconds": 7200, "user_cleanup_after_days": 0,
        "custom_access_details": "Connect with psql; sessions end at expiry."
    });
    for (k, v) in extra.as_object().expect("extra fields as an object") {
        doc[k] = v.clone();
    }
    let integration = pgjit::contract::integration::Integration::from_json(&doc.to_string()).expect("valid integration");
    svc.store.put_integration(&integration).await.expect("put integration");
    integration
}

/// An approval event as EventBridge delivers it, sent just now.
pub fn approval(request_id: &str, integration: &str, requester: &str, access: serde_json::Value) -> serde_json::Value {
    let time = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    serde_json::json!({"version": "0", "id": format!("ev-{request_id}"), "detail-type": "Access Request Approved", "source": "pgjit.approvals",
        "account": "123456789012", "time": time, "region": "us-east-1", "resources": [],
        "detail": {"request_id": request_id, "integration": integration,
            "requester": {"id": requester, "iam_arn": "arn:aws:iam::123456789012:user/john"},
            "approver": "jane@corp.com", "duration_seconds": 3600, "reason": "INC-42 stuck orders", "access": access}})
}

/// Grants `n` requests as if approved two hours ago for one hour: overdue now, their revoke never
/// ran (cleanup's backstop case). Returns the request ids and database users.
pub async fn overdue_grants(svc: &pgjit::aws::Services, integration: &str, prefix: &str, n: usize) -> Vec<(String, String)> {
    let then = chrono::Utc::now() - chrono::Duration::hours(2);
    let mut granted = Vec::new();
    for i in 0..n {
        let request_id = format!("{prefix}-{i}");
        let mut event = approval(&request_id, integration, &format!("late{i}@corp.com"), orders_access());
        event["time"] = serde_json::json!(then.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        let approved = pgjit::contract::events::parse_approval(event).unwrap();
        let result = pgjit::control::grants::grant::grant(svc, &approved, then).await.unwrap();
        granted.push((request_id, result.db_user));
    }
    granted
}

/// An `Access Revoke Requested` event: an early revoke (the scheduler's bare input revokes only
/// an expired grant).
pub fn early_revoke(request_id: &str) -> serde_json::Value {
    let time = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    serde_json::json!({"version": "0", "detail-type": "Access Revoke Requested", "source": "pgjit.approvals", "time": time, "detail": {"request_id": request_id}})
}

/// An `Access Extension Approved` event as the approval bus delivers it, sent just now.
pub fn extension(id: &str, request_id: &str, approver: &str, duration_seconds: u64) -> serde_json::Value {
    serde_json::json!({"version": "0", "id": id, "detail-type": "Access Extension Approved", "source": "pgjit.approvals", "account": "123456789012",
        "time": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(), "region": "us-east-1", "resources": [],
        "detail": {"request_id": request_id, "approver": approver, "duration_seconds": duration_seconds, "reason": "INC-42 still open"}})
}

/// An orphan: a role pgjit made (marked, with the prefix) with no record, as a crash between
/// creating the role and writing the record would leave. Returns its name.
pub async fn orphan_role(prefix: &str) -> String {
    let orphan = pgjit::access::login_role_name(prefix, "ghost@corp.com");
    let entries: Vec<pgjit::access::AccessEntry> = serde_json::from_value(orders_access()).expect("access entries");
    let access = pgjit::access::AccessSet::from_entries(&entries).expect("access");
    let password = SecretString::random_password();
    let spec = pgjit::engine::roles::GrantSpec {
        username: &orphan,
        access: &access,
        login: pgjit::engine::roles::LoginMethod::Password(&password),
        valid_until: chrono::Utc::now() + chrono::Duration::hours(1),
        prefix,
        grantable_roles: &[],
        privileged_roles: &[],
        audit: None,
    };
    pgjit::engine::roles::grant::grant(&env().admin(), &spec).await.expect("orphan role");
    orphan
}

/// A PostgreSQL instance in moto's RDS (for IAM mode: RDS supplies the resource id; the
/// database itself is the local one). Returns its DbiResourceId.
pub async fn moto_rds_instance(svc: &pgjit::aws::Services, instance: &str) -> String {
    moto_rds_instance_with(&svc.rds, instance).await
}

/// [`moto_rds_instance`] through a client of one's own (another region).
pub async fn moto_rds_instance_with(rds: &aws_sdk_rds::Client, instance: &str) -> String {
    let created = rds
        .create_db_instance()
        .db_instance_identifier(instance)
        .engine("postgres")
        .db_instance_class("db.t3.micro")
        .master_username("postgres")
        .master_user_password("not-used-here")
        .allocated_storage(20)
        .send()
        .await
        .expect("moto RDS instance");
    created.db_instance().and_then(|i| i.dbi_resource_id()).expect("resource id").to_owned()
}

/// SELECT on sales.orders in app: the access most tests ask for.
pub fn orders_access() -> serde_json::Value {
    serde_json::json!([{"database": "app", "schema": "sales", "table": "orders", "privileges": ["SELECT"]}])
}

/// A queue that receives what a rule on `bus` matches (moto delivers EventBridge to SQS), so a
/// test sees the events as a target would; returns the SQS client and the queue's URL.
pub async fn queue_for(svc: &pgjit::aws::Services, bus: &str, pattern: serde_json::Value) -> (aws_sdk_sqs::Client, String) {
    let sqs = aws_sdk_sqs::Client::new(&moto_sdk_config().await);
    let name = format!("q-{}", rand::random::<u32>());
    let queue = sqs.create_queue().queue_name(&name).send().await.expect("queue").queue_url.expect("queue url");
    let attributes = sqs.get_queue_attributes().queue_url(&queue).attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn).send().await.expect("queue arn");
    let queue_arn = attributes.attributes().expect("attributes")[&aws_sdk_sqs::types::QueueAttributeName::QueueArn].clone();
    svc.events.put_rule().name(&name).event_bus_name(bus).event_pattern(pattern.to_string()).send().await.expect("rule");
    let target = aws_sdk_eventbridge::types::Target::builder().id("queue").arn(&queue_arn).build().expect("target");
    svc.events.put_targets().rule(&name).event_bus_name(bus).targets(target).send().await.expect("targets");
    (sqs, queue)
}

/// The events a [`queue_for`] queue holds now (waiting up to two seconds for the first).
pub async fn received(sqs: &aws_sdk_sqs::Client, queue: &str) -> Vec<serde_json::Value> {
    let messages = sqs.receive_message().queue_url(queue).max_number_of_messages(10).wait_time_seconds(2).send().await.expect("receive");
    messages.messages().iter().map(|m| serde_json::from_str(m.body().unwrap_or_default()).expect("event JSON")).collect()
}

/// The names of every secret in moto, all pages.
pub async fn secret_names(svc: &pgjit::aws::Services) -> Vec<String> {
    let mut names = Vec::new();
    let mut pages = svc.secrets.list_secrets().max_results(100).into_paginator().send();
    while let Some(page) = pages.next().await {
        names.extend(page.expect("ListSecrets").secret_list().iter().filter_map(|s| s.name().map(str::to_owned)));
    }
    names
}

/// Answers the first `times` calls of one AWS operation (`X-Amz-Target`, e.g.
/// `secretsmanager.CreateSecret`) with an error of AWS's own, as AWS sends it, where moto is
/// more lenient than AWS. Install it with [`with_aws_fault`].
#[derive(Debug)]
pub struct AwsFault {
    pub target: &'static str,
    pub times: std::sync::atomic::AtomicUsize,
    pub status: u16,
    /// The error's JSON body: `{"__type": "…Exception", "Message": "…"}`.
    pub body: String,
}

/// The operation a request is for, seen before it is sent (the request is gone by the time its
/// response is read); one client's calls run one after another in these tests.
static LAST_TARGET: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

impl aws_smithy_runtime_api::client::interceptors::Intercept for AwsFault {
    fn name(&self) -> &'static str {
        "AwsFault"
    }

    fn read_before_transmit(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let target = context.request().headers().get("x-amz-target").unwrap_or_default().to_owned();
        *LAST_TARGET.lock().unwrap_or_else(|e| e.into_inner()) = target;
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        use std::sync::atomic::Ordering;
        let target = LAST_TARGET.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if target != self.target || self.times.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err() {
            return Ok(());
        }
        let response = context.response_mut();
        *response.status_mut() = aws_smithy_runtime_api::http::StatusCode::try_from(self.status)?;
        *response.body_mut() = aws_smithy_types::body::SdkBody::from(self.body.clone());
        // The SDK reads the error's type from this header first, as AWS sends it.
        let kind: serde_json::Value = serde_json::from_str(&self.body)?;
        response.headers_mut().insert("x-amzn-errortype", kind["__type"].as_str().unwrap_or_default().to_owned());
        Ok(())
    }
}

/// The services with their Secrets Manager client answering as `fault` says.
pub fn with_aws_fault(mut svc: pgjit::aws::Services, fault: AwsFault) -> pgjit::aws::Services {
    let config = aws_sdk_secretsmanager::config::Builder::from(&svc.sdk_config).interceptor(fault).build();
    svc.secrets = aws_sdk_secretsmanager::Client::from_conf(config);
    svc
}

/// Services with an Identity Store of their own (users in groups, as Identity Center keeps
/// them), and pgjit's events on `bus` when given. The people: john.doe@corp.com (engineers),
/// jane (e-mail jane.doe@corp.com) and dave@corp.com (dba), olga@corp.com (orders-team),
/// eve@corp.com (visitors), sam@corp.com (no group). Each has an Identity Center permission-set
/// role in moto's IAM, as their sessions need.
pub async fn directory_services(bus: Option<String>) -> pgjit::aws::Services {
    let store = format!("d-{:010x}", rand::random::<u32>());
    let id = store.clone();
    let svc = isolated_services_with(move |name| match name {
        "PGJIT_IDENTITY_STORE_ID" => Some(id.clone()),
        "PGJIT_EVENT_BUS" => bus.clone(),
        _ => None,
    })
    .await;
    let ids = &svc.identity_store;
    let mut groups = std::collections::HashMap::new();
    for group in ["engineers", "dba", "orders-team", "visitors"] {
        let out = ids.create_group().identity_store_id(&store).display_name(group).send().await.expect("moto group");
        groups.insert(group, out.group_id().to_owned());
    }
    for (user, email, member_of) in [
        ("john.doe@corp.com", "john.doe@corp.com", &["engineers"][..]),
        ("jane", "jane.doe@corp.com", &["dba"][..]),
        ("dave@corp.com", "dave@corp.com", &["dba"][..]),
        ("olga@corp.com", "olga@corp.com", &["orders-team"][..]),
        ("eve@corp.com", "eve@corp.com", &["visitors"][..]),
        ("sam@corp.com", "sam@corp.com", &[][..]),
    ] {
        let name = aws_sdk_identitystore::types::Name::builder().given_name(user).family_name("Test").build();
        let mail = aws_sdk_identitystore::types::Email::builder().value(email).primary(true).build();
        let out = ids.create_user().identity_store_id(&store).user_name(user).display_name(user).name(name).emails(mail).send().await.expect("moto user");
        for group in member_of {
            ids.create_group_membership()
                .identity_store_id(&store)
                .group_id(&groups[group])
                .member_id(aws_sdk_identitystore::types::MemberId::UserId(out.user_id().to_owned()))
                .send()
                .await
                .expect("moto membership");
        }
    }
    for set in SSO_PERMISSION_SETS {
        let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::123456789012:saml-provider/AWSSSO_0123456789abcdef_DO_NOT_DELETE"},"Action":["sts:AssumeRoleWithSAML","sts:TagSession"]}]}"#;
        let name = format!("AWSReservedSSO_{set}_0123456789abcdef");
        // Shared by every test of the run: made once.
        if svc.iam.get_role().role_name(&name).send().await.is_err() {
            let _ = svc.iam.create_role().role_name(&name).path("/aws-reserved/sso.amazonaws.com/").assume_role_policy_document(trust).send().await;
        }
    }
    svc
}

/// The permission sets of [`directory_services`]' people.
pub const SSO_PERMISSION_SETS: [&str; 3] = ["Eng", "Dba", "Sec"];

/// A session of an Identity Center permission set's role, as IAM names its caller.
pub fn sso_caller(set: &str, user: &str) -> pgjit::contract::requests::Caller {
    pgjit::contract::requests::Caller {
        arn: format!("arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_{set}_0123456789abcdef/{user}"),
        user_id: format!("AROA{}:{user}", set.to_uppercase()),
        account: "123456789012".into(),
    }
}

/// Stores a flow (panics on an invalid one: the test's own mistake).
pub async fn put_flow(svc: &pgjit::aws::Services, doc: serde_json::Value) {
    let flow = pgjit::contract::flow::Flow::from_json(&doc.to_string()).unwrap_or_else(|e| panic!("{e}"));
    svc.store.put_flow(&flow).await.expect("put flow");
}

/// Takes `user` out of `group` in the services' Identity Store.
pub async fn leave_group(svc: &pgjit::aws::Services, user: &str, group: &str) {
    use aws_sdk_identitystore::types::{AlternateIdentifier, MemberId, UniqueAttribute};
    let store = svc.config.identity_store_id.clone().expect("an identity store");
    let ids = &svc.identity_store;
    let attribute = |path: &str, value: &str| AlternateIdentifier::UniqueAttribute(UniqueAttribute::builder().attribute_path(path).attribute_value(aws_smithy_types::Document::String(value.into())).build().unwrap());
    let user_id = ids.get_user_id().identity_store_id(&store).alternate_identifier(attribute("userName", user)).send().await.expect("user").user_id().to_owned();
    let group_id = ids.get_group_id().identity_store_id(&store).alternate_identifier(attribute("displayName", group)).send().await.expect("group").group_id().to_owned();
    let memberships = ids.list_group_memberships_for_member().identity_store_id(&store).member_id(MemberId::UserId(user_id)).send().await.expect("memberships");
    let membership = memberships.group_memberships().iter().find(|m| m.group_id() == Some(group_id.as_str())).map(|m| m.membership_id().to_owned()).expect("a member of the group");
    ids.delete_group_membership().identity_store_id(&store).membership_id(membership).send().await.expect("leave the group");
}

/// An SDK configuration for moto with someone's own credentials (an IAM user's access key).
pub async fn sdk_config_as(url: &str, key: &str, secret: &str) -> aws_config::SdkConfig {
    let creds = aws_credential_types::Credentials::new(key, secret, None, None, "pgjit-tests-person");
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(pgjit::aws::https_client())
        .endpoint_url(url)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .load()
        .await
}

/// An IAM user of moto with an access key: (ARN, key id, secret).
pub async fn moto_person(svc: &pgjit::aws::Services, name: &str) -> (String, String, String) {
    svc.iam.create_user().user_name(name).send().await.expect("moto user");
    let key = svc.iam.create_access_key().user_name(name).send().await.expect("moto key");
    let key = key.access_key().expect("a key");
    (format!("arn:aws:iam::123456789012:user/{name}"), key.access_key_id().to_owned(), key.secret_access_key().to_owned())
}
