//! pgjit: temporary, approved, audited access to PostgreSQL, granted on approval and taken away
//! on time.
//!
//! This crate holds all of pgjit's logic; the Lambda binaries in `functions/` and the `pgjit`
//! CLI only wire it up. Its rooms, each allowed to use only the rooms listed before it
//! (`cargo test -p pgjit --test architecture` fails on any other import, and on any import
//! circle):
//!
//! - [`secret`], [`failpoint`], [`metrics`]: basics used everywhere (a string that never
//!   reaches a log, test fault points, metric lines). Use nothing.
//! - [`access`]: the access a request asks for, checked and normalised, and the names of the
//!   roles pgjit makes. Uses the basics.
//! - [`audit`]: the server log, pgaudit's lines and redaction. Pure parsing. Uses the basics.
//! - [`engine`]: PostgreSQL only: connections and TLS, pool, SCRAM, catalog, pgaudit's settings,
//!   the roles (grant, revoke, delete, the holding role), set-up SQL and the doctor's checks.
//!   Uses the basics and [`access`]; nothing of AWS, of the contracts or of the store: it takes
//!   plain parameters and returns plain results.
//! - [`contract`]: an operator's integration, the approval events, the functions'
//!   configuration. Uses the basics, [`access`], [`audit`] and the engine's public types.
//! - [`aws`]: the clients and everything that calls AWS: the store and its records, the
//!   approvals key, credentials secrets, IAM, the scheduler, RDS, the admin's login. Uses all of
//!   the above.
//! - [`control`]: the control plane, the only place where the engine and AWS meet: grant,
//!   extension, revoke, cleanup, discovery, session ingestion, endpoints, the Lambda handlers.
//!   Uses everything.

pub mod access;
pub mod audit;
pub mod aws;
pub mod contract;
pub mod control;
pub mod engine;
pub mod failpoint;
pub mod metrics;
pub mod secret;

pub use secret::SecretString;
