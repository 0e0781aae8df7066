//! pgjit: temporary, approved, audited access to PostgreSQL, granted on approval and taken away
//! on time.
//!
//! This crate holds all of pgjit's logic; the Lambda binaries in `functions/` and the `pgjit`
//! CLI only wire it up.
//!
//! - [`postgres`]: connections (libpq's ssl modes over rustls, timeouts), quoting, retries.
//! - [`access`]: the access a request asks for, checked and normalised.
//! - [`roles`]: the login and profile roles: grant, revoke, delete.
//! - [`catalog`]: reading databases, schemas, tables, sequences, functions and roles.
//! - [`setup`]: the admin's set-up SQL per flavor, and the doctor that checks it.
//! - [`admin`]: how pgjit logs in: a Secrets Manager secret or an RDS IAM token.

pub mod access;
pub mod admin;
pub mod catalog;
pub mod postgres;
pub mod roles;
pub mod secret;
pub mod setup;

pub use secret::SecretString;
