//! Connections to PostgreSQL with libpq's six `sslmode`s over rustls, timeouts on every
//! connection, quoting, and the SQLSTATEs that are worth a retry.

pub mod password_guard;
pub(crate) mod tls;

/// Amazon's RDS and Aurora certificate authorities, every region and partition and RDS Proxy
/// (`scripts/refresh-rds-ca.sh` refreshes them): RDS server certificates chain to these, not to
/// a public root, so `verify-full` against a discovered instance needs them.
pub const RDS_CA_BUNDLE: &str = include_str!("../../certs/rds-ca-bundle.pem");

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::secret::SecretString;

pub use tls::{CaBundleError, SYSTEM_ROOTS};

/// How a connection uses TLS, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// Plaintext first; TLS (unverified) if the server refuses plaintext.
    Allow,
    /// TLS (unverified) first; plaintext if the server has no TLS.
    Prefer,
    /// TLS, certificate not verified (unless a `ca_bundle` is given: then as `verify-ca`, as libpq
    /// does when a root certificate file exists).
    Require,
    /// TLS, the chain is verified against the trusted roots; the host name is not.
    VerifyCa,
    /// TLS, the chain and the host name are verified.
    #[default]
    VerifyFull,
}

impl SslMode {
    pub const ALL: [SslMode; 6] = [
        SslMode::Disable,
        SslMode::Allow,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SslMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown ssl_mode {s:?} (expected disable, allow, prefer, require, verify-ca or verify-full)"))
    }
}

/// Connect, statement and lock timeouts, applied to every connection pgjit opens, so a database
/// that accepts TCP and never answers cannot hold a function past its own timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole connection set-up: TCP, TLS and authentication.
    pub connect: Duration,
    pub statement: Duration,
    pub lock: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            statement: Duration::from_secs(30),
            lock: Duration::from_secs(10),
        }
    }
}

/// Where a PostgreSQL server is and how to reach it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The server's name: dialled, and checked against its certificate in `verify-full`.
    pub host: String,
    /// Dial this address instead of resolving `host` (libpq's `hostaddr`): tunnels and proxies.
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
    pub ssl_mode: SslMode,
    /// PEM text, or the path of a PEM file, added to the trusted roots.
    pub ca_bundle: Option<String>,
    pub timeouts: Timeouts,
}

impl Endpoint {
    pub fn new(host: impl Into<String>, port: u16, ssl_mode: SslMode) -> Self {
        Endpoint { host: host.into(), hostaddr: None, port, ssl_mode, ca_bundle: None, timeouts: Timeouts::default() }
    }
}

/// A user name and the password (or IAM token) it logs in with.
#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    pub password: SecretString,
}

/// Makes a fresh password for each new connection (an RDS IAM auth token). The AWS side
/// implements it, so the engine needs nothing of AWS to log in with one.
pub trait TokenSource: Send + Sync {
    /// The user the tokens log in as.
    fn username(&self) -> &str;
    /// A fresh token for `host:port`.
    fn token<'a>(&'a self, host: &'a str, port: u16) -> futures_util::future::BoxFuture<'a, Result<SecretString, Box<dyn std::error::Error + Send + Sync>>>;
}

/// Makes the login for each new connection: a fixed password, or a fresh RDS IAM token.
#[derive(Clone)]
pub enum Credentials {
    Password(Login),
    RdsIam(Arc<dyn TokenSource>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password(l) => f.debug_tuple("Password").field(&l.user).finish(),
            Credentials::RdsIam(t) => f.debug_tuple("RdsIam").field(&t.username()).finish(),
        }
    }
}

impl Credentials {
    pub fn user(&self) -> &str {
        match self {
            Credentials::Password(l) => &l.user,
            Credentials::RdsIam(t) => t.username(),
        }
    }

    async fn login(&self, endpoint: &Endpoint) -> Result<Login, ConnectError> {
        match self {
            Credentials::Password(l) => Ok(l.clone()),
            Credentials::RdsIam(t) => {
                let token = t.token(&endpoint.host, endpoint.port).await.map_err(ConnectError::IamToken)?;
                Ok(Login { user: t.username().to_owned(), password: token })
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    CaBundle(#[from] CaBundleError),
    #[error("could not make an RDS IAM auth token")]
    IamToken(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("connecting to {host}:{port} (database {database:?}, user {user:?}, ssl_mode {ssl_mode}) timed out after {seconds}s")]
    Timeout { host: String, port: u16, database: String, user: String, ssl_mode: &'static str, seconds: u64 },
    #[error("connecting to {host}:{port} (database {database:?}, user {user:?}, ssl_mode {ssl_mode}) failed")]
    Postgres {
        host: String,
        port: u16,
        database: String,
        user: String,
        ssl_mode: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the connection pool was closed")]
    PoolClosed,
    #[error("an RDS IAM auth token goes to the server as a clear-text password: it is sent only under ssl_mode verify-full, not {ssl_mode} (host {host})")]
    IamTokenNeedsVerifyFull { host: String, ssl_mode: &'static str },
    #[error("connecting to {host}:{port} failed")]
    Socket {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

impl ConnectError {
    /// The server's own error, where the server answered.
    pub fn db_error(&self) -> Option<&tokio_postgres::error::DbError> {
        match self {
            ConnectError::Postgres { source, .. } => source.as_db_error(),
            _ => None,
        }
    }
}

/// Opens connections to one server with one set of credentials; the TLS configuration is built
/// once and shared by every connection it opens.
#[derive(Debug)]
pub struct Connector {
    endpoint: Endpoint,
    credentials: Credentials,
    tls: OnceLock<Result<tls::TlsConfigs, CaBundleError>>,
}

impl Connector {
    pub fn new(endpoint: Endpoint, credentials: Credentials) -> Self {
        Connector { endpoint, credentials, tls: OnceLock::new() }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The role pgjit logs in as: the admin that owns every grant.
    pub fn user(&self) -> &str {
        self.credentials.user()
    }

    fn tls(&self) -> Result<&tls::TlsConfigs, ConnectError> {
        self.tls
            .get_or_init(|| tls::TlsConfigs::new(self.endpoint.ca_bundle.as_deref()))
            .as_ref()
            .map_err(|e| ConnectError::CaBundle(e.clone()))
    }

    /// Opens a connection to `database`; its I/O runs on a spawned task that ends with the client.
    pub async fn connect(&self, database: &str) -> Result<Client, ConnectError> {
        let ep = &self.endpoint;
        if matches!(self.credentials, Credentials::RdsIam(_)) && ep.ssl_mode != SslMode::VerifyFull {
            return Err(ConnectError::IamTokenNeedsVerifyFull { host: ep.host.clone(), ssl_mode: ep.ssl_mode.as_str() });
        }
        let login = self.credentials.login(&self.endpoint).await?;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&ep.host)
            .port(ep.port)
            .dbname(database)
            .user(&login.user)
            .password(login.password.expose())
            .application_name("pgjit")
            .connect_timeout(ep.timeouts.connect)
            // search_path: pgjit's statements name the catalog's functions unqualified, and on the
            // default path ("$user", public) a function a temporary user planted (public is open
            // to every login before 15) would be chosen over pg_catalog's and run as the admin.
            .options(format!(
                "-c search_path=pg_catalog,pg_temp -c statement_timeout={} -c lock_timeout={}",
                ep.timeouts.statement.as_millis(),
                ep.timeouts.lock.as_millis()
            ));
        if let Some(addr) = ep.hostaddr {
            config.hostaddr(addr);
        }
        use tokio_postgres::config::SslMode as Wire;
        match ep.ssl_mode {
            SslMode::Disable => self.attempt(&config, Wire::Disable, None, database, &login.user).await,
            SslMode::Allow => {
                match self.attempt(&config, Wire::Disable, None, database, &login.user).await {
                    // The server answered and refused plaintext: try again over TLS, as libpq does.
                    Err(e) if e.db_error().is_some() => {
                        let tls = self.tls()?.unverified.clone();
                        self.attempt(&config, Wire::Require, Some(tls), database, &login.user).await
                    }
                    other => other,
                }
            }
            SslMode::Prefer => {
                let tls = self.tls()?.unverified.clone();
                self.attempt(&config, Wire::Prefer, Some(tls), database, &login.user).await
            }
            SslMode::Require => {
                let tls = self.tls()?;
                let tls = if ep.ca_bundle.is_some() { tls.chain_only()? } else { tls.unverified.clone() };
                self.attempt(&config, Wire::Require, Some(tls), database, &login.user).await
            }
            SslMode::VerifyCa => {
                let tls = self.tls()?.chain_only()?;
                self.attempt(&config, Wire::Require, Some(tls), database, &login.user).await
            }
            SslMode::VerifyFull => {
                let tls = self.tls()?.full()?;
                self.attempt(&config, Wire::Require, Some(tls), database, &login.user).await
            }
        }
    }

    async fn attempt(
        &self,
        config: &tokio_postgres::Config,
        wire: tokio_postgres::config::SslMode,
        tls: Option<Arc<rustls::ClientConfig>>,
        database: &str,
        user: &str,
    ) -> Result<Client, ConnectError> {
        let ep = &self.endpoint;
        let mut config = config.clone();
        config.ssl_mode(wire);
        let fail = |source| ConnectError::Postgres {
            host: ep.host.clone(),
            port: ep.port,
            database: database.to_owned(),
            user: user.to_owned(),
            ssl_mode: ep.ssl_mode.as_str(),
            source,
        };
        let timeout = ep.timeouts.connect;
        let timed_out = || ConnectError::Timeout {
            host: ep.host.clone(),
            port: ep.port,
            database: database.to_owned(),
            user: user.to_owned(),
            ssl_mode: ep.ssl_mode.as_str(),
            seconds: timeout.as_secs(),
        };
        let answers = match self.credentials {
            Credentials::Password(_) => password_guard::Answers::ScramOnly,
            Credentials::RdsIam(_) => password_guard::Answers::CleartextToken,
        };
        let connecting = async {
            let socket = self.socket().await?;
            let socket = password_guard::Guarded::socket(socket, answers);
            match tls {
                None => {
                    let (client, connection) = config.connect_raw(socket, NoTls).await.map_err(fail)?;
                    tokio::spawn(drive(connection));
                    Ok(client)
                }
                Some(tls) => {
                    let mut make = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
                    let connect = tokio_postgres::tls::MakeTlsConnect::<password_guard::Guarded<tokio::net::TcpStream>>::make_tls_connect(&mut make, &ep.host)
                        .map_err(|e| ConnectError::Socket { host: ep.host.clone(), port: ep.port, source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e) })?;
                    let (client, connection) = config.connect_raw(socket, password_guard::GuardedTls::new(connect, answers)).await.map_err(fail)?;
                    tokio::spawn(drive(connection));
                    Ok(client)
                }
            }
        };
        tokio::time::timeout(timeout, connecting).await.map_err(|_| timed_out())?
    }

    /// The TCP connection to the server (`hostaddr`, else every address `host` resolves to, in
    /// turn), opened here rather than by tokio-postgres so that what the server asks for can be
    /// watched ([`password_guard`]).
    async fn socket(&self) -> Result<tokio::net::TcpStream, ConnectError> {
        let ep = &self.endpoint;
        let fail = |source| ConnectError::Socket { host: ep.host.clone(), port: ep.port, source };
        let stream = match ep.hostaddr {
            Some(addr) => tokio::net::TcpStream::connect((addr, ep.port)).await,
            None => tokio::net::TcpStream::connect((ep.host.as_str(), ep.port)).await,
        }
        .map_err(fail)?;
        stream.set_nodelay(true).map_err(fail)?;
        Ok(stream)
    }
}

async fn drive<C: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: C) {
    if let Err(error) = connection.await {
        tracing::debug!(%error, "postgres connection ended with an error");
    }
}

/// `"name"`, with embedded quotes doubled: every identifier pgjit sends goes through this.
pub fn ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// `'text'` (or `E'…'` where backslashes need it): every literal pgjit sends goes through this.
pub fn literal(text: &str) -> String {
    postgres_protocol::escape::escape_literal(text)
}

/// Errors on which a whole transaction is retried: "tuple concurrently updated" (XX000),
/// serialization failures and deadlocks.
pub fn is_retryable(error: &tokio_postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(c) if *c == SqlState::INTERNAL_ERROR || *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}


/// Formats an error with its chain of causes: `a: b: c`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_modes_parse_with_libpq_names() {
        for m in SslMode::ALL {
            assert_eq!(m.as_str().parse::<SslMode>().unwrap(), m);
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.as_str()));
        }
        assert!("verify_full".parse::<SslMode>().unwrap_err().contains("verify_full"));
        assert_eq!(SslMode::default(), SslMode::VerifyFull);
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(ident("x;DROP TABLE y;--"), r#""x;DROP TABLE y;--""#);
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal(r"back\slash"), r" E'back\\slash'");
    }
}
