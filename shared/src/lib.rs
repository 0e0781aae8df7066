//! pgjit: temporary, approved, audited access to PostgreSQL, granted on approval and taken away
//! on time.
//!
//! This crate holds all of pgjit's logic; the Lambda binaries in `functions/` and the `pgjit`
//! CLI only wire it up.
//!
//! - [`postgres`]: connections (libpq's ssl modes over rustls, timeouts), quoting, retries;
//!   [`pool`]: a few of them reused, operation after operation.
//! - [`access`]: the access a request asks for, checked and normalised.
//! - [`roles`]: the login and profile roles and their grant; [`revocation`]: revoke, delete, and
//!   the holding role for what departed users owned; [`scram`]: password verifiers.
//! - [`catalog`]: reading databases, schemas, tables, sequences, functions and roles.
//! - [`setup`]: the admin's set-up SQL per flavor, and the doctor that checks it.
//! - [`admin`]: how pgjit logs in: a Secrets Manager secret or an RDS IAM token.
//! - [`integration`], [`events`]: the operator's and the approval tools' contracts;
//!   [`approval_mac`]: the approvals key's MAC that makes an approval valid.
//! - [`store`]: DynamoDB records with conditional state changes; [`grants`]: grant and revoke
//!   across PostgreSQL, Secrets Manager ([`credentials`]), IAM ([`iam`]) and the scheduler
//!   ([`schedule`]); [`cleanup`] and [`discovery`]: the periodic sweeps.
//! - [`sessions`]: session audit, from the server log ([`server_log`], [`pgaudit`]) to the
//!   sessions table, with secrets taken out first ([`redaction`]).
//! - [`handlers`]: the Lambda handlers, plain async functions over [`aws::Services`].

pub mod access;
pub mod admin;
pub mod approval_mac;
pub mod aws;
pub mod budget;
pub mod catalog;
pub mod cleanup;
pub mod config;
pub mod credentials;
pub mod discovery;
pub mod endpoint;
pub mod events;
pub mod extension;
pub mod failpoint;
pub mod grants;
pub mod handlers;
pub mod iam;
pub mod integration;
pub mod metrics;
pub mod names;
pub mod pgaudit;
pub mod pool;
pub mod postgres;
pub mod rds;
pub mod redaction;
pub mod revocation;
pub mod roles;
pub mod schedule;
pub mod scram;
pub mod secret;
pub mod server_log;
pub mod sessions;
pub mod setup;
pub mod store;
pub mod webhook;

pub use secret::SecretString;
