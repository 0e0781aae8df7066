//! The PostgreSQL engine: connections and TLS, the pool, SCRAM verifiers, catalog reads,
//! grant, revoke and delete of login and profile roles, the holding role, and the admin's
//! set-up SQL and doctor checks. It knows nothing of AWS or of pgjit's records: it takes plain
//! parameters (names, an [`crate::access::AccessSet`], a login) and returns plain results.

pub mod catalog;
pub mod doctor;
pub mod pgaudit;
pub mod postgres;
pub mod pool;
pub mod roles;
pub mod scram;
pub mod setup;
