//! Where an integration's server is and how pgjit logs in to it, resolved per invocation:
//! the admin's secret is read here, when a connection is about to be made, and nowhere else.

use std::sync::Arc;

use crate::aws::admin::{read_secret, AdminError, RdsIamTokens};
use crate::contract::integration::AdminAuth;
use crate::aws::{AwsError, Services};
use crate::contract::integration::Integration;
use crate::engine::pool::Pool;
use crate::engine::postgres::{Connector, Credentials, Endpoint};
use crate::aws::rds::RdsTarget;

/// A connector for the integration, plus what RDS said about it (for IAM policies).
pub struct Resolved {
    pub connector: Connector,
    pub rds: Option<RdsTarget>,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("integration {0:?}: no host (set host, or check the instance or cluster has an endpoint)")]
    NoHost(String),
}

pub async fn resolve(svc: &Services, integration: &Integration) -> Result<Resolved, EndpointError> {
    let needs_rds = integration.host.is_none() || integration.access_mode == crate::contract::integration::AccessMode::Iam;
    let rds = if needs_rds { crate::aws::rds::describe(svc, integration).await? } else { None };
    let credentials = match &integration.admin {
        AdminAuth::Password { secret_id } => {
            let secret = read_secret(&svc.secrets, secret_id).await?;
            Credentials::Password(secret.login())
        }
        AdminAuth::Iam { username } => {
            let mut sdk = svc.sdk_config.clone();
            if let Some(region) = &integration.region {
                sdk = sdk.into_builder().region(aws_config::Region::new(region.clone())).build();
            }
            Credentials::RdsIam(Arc::new(RdsIamTokens::new(username.clone(), sdk)))
        }
    };
    let host = integration
        .host
        .clone()
        .or_else(|| rds.as_ref().and_then(|r| r.host.clone()))
        .ok_or_else(|| EndpointError::NoHost(integration.name.clone()))?;
    let port = integration.port.or_else(|| rds.as_ref().and_then(|r| r.port)).unwrap_or(5432);
    let mut endpoint = Endpoint::new(host, port, integration.ssl_mode);
    endpoint.ca_bundle = integration.ca_bundle.clone().or_else(|| integration.kind.default_ca_bundle().map(str::to_owned));
    // Within what is left of the invocation, if a handler set a budget.
    endpoint.timeouts = crate::control::budget::cap(svc.config.db_timeouts);
    Ok(Resolved { connector: Connector::new(endpoint, credentials), rds })
}

/// An integration's server, resolved once (one read of the admin secret), with a few
/// connections to its maintenance database that the operations of one run share.
pub struct Server {
    pub integration: Integration,
    pub rds: Option<RdsTarget>,
    pub pool: Pool,
}

impl Server {
    /// Resolves the integration's server; connections open when first needed, at most
    /// `connections` at once.
    pub async fn open(svc: &Services, integration: Integration, connections: usize) -> Result<Server, EndpointError> {
        let Resolved { connector, rds } = resolve(svc, &integration).await?;
        let pool = Pool::new(connector, integration.maintenance_database(), connections);
        Ok(Server { integration, rds, pool })
    }
}
