//! The control plane: where the engine and AWS meet. Grant, extension and revoke across
//! PostgreSQL, the store, Secrets Manager, IAM and the scheduler; the periodic cleanup and
//! discovery; session audit's ingestion; where a server is and how pgjit logs in to it; the
//! time budget of an invocation; the webhook; and the Lambda handlers over all of it.

pub mod budget;
pub mod cleanup;
pub mod discovery;
pub mod endpoint;
pub mod extension;
pub mod flows;
pub mod grants;
pub mod handlers;
pub mod requests;
pub mod sessions;
pub mod webhook;
