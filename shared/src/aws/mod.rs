//! The AWS side, built once per cold start: one rustls (ring) HTTPS client shared by every SDK
//! client, and the clients themselves.

pub mod access_role;
pub mod admin;
pub mod approval_mac;
pub mod caller_proof;
pub mod credentials;
pub mod iam;
pub mod identity;
pub mod names;
pub mod rds;
pub mod schedule;
pub mod store;

use std::sync::Arc;

use aws_config::{BehaviorVersion, SdkConfig};
use tokio::sync::OnceCell;

use crate::aws::store::Store;
use crate::contract::config::Config;
use crate::failpoint::Failpoints;

/// Loads the AWS configuration from the environment (region, credentials, `AWS_ENDPOINT_URL`)
/// with pgjit's own HTTPS client: rustls with ring, no OpenSSL, no aws-lc.
///
/// Every operation has timeouts (the SDK sets none by default): an AWS endpoint that stops
/// answering (a VPC without the endpoint or NAT it needs) fails the step in seconds, within the
/// invocation's budget, instead of holding the function until Lambda kills it.
pub async fn load_sdk_config() -> SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .operation_attempt_timeout(std::time::Duration::from_secs(5))
        .operation_timeout(std::time::Duration::from_secs(12))
        .build();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(https_client())
        .timeout_config(timeouts)
        .load()
        .await
}

/// The one HTTPS client of every SDK client.
pub fn https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Everything a handler needs; built once in `main` and shared by every invocation.
#[derive(Clone)]
pub struct Services {
    pub config: Arc<Config>,
    pub sdk_config: SdkConfig,
    pub store: Store,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub scheduler: aws_sdk_scheduler::Client,
    pub iam: aws_sdk_iam::Client,
    pub sts: aws_sdk_sts::Client,
    pub rds: aws_sdk_rds::Client,
    pub events: aws_sdk_eventbridge::Client,
    /// The approvals key's MACs ([`crate::aws::approval_mac`]).
    pub kms: aws_sdk_kms::Client,
    /// IAM Identity Center's users and groups ([`crate::aws::identity`]).
    pub identity_store: aws_sdk_identitystore::Client,
    /// Steps where tests make a run fail on purpose; empty in production.
    pub failpoints: Failpoints,
    account: Arc<OnceCell<String>>,
}

impl Services {
    pub fn new(config: Config, sdk_config: SdkConfig) -> Self {
        let store = Store::new(aws_sdk_dynamodb::Client::new(&sdk_config), &config);
        Services {
            store,
            secrets: aws_sdk_secretsmanager::Client::new(&sdk_config),
            scheduler: aws_sdk_scheduler::Client::new(&sdk_config),
            iam: aws_sdk_iam::Client::new(&sdk_config),
            sts: aws_sdk_sts::Client::new(&sdk_config),
            rds: aws_sdk_rds::Client::new(&sdk_config),
            events: aws_sdk_eventbridge::Client::new(&sdk_config),
            kms: aws_sdk_kms::Client::new(&sdk_config),
            identity_store: aws_sdk_identitystore::Client::new(&sdk_config),
            config: Arc::new(config),
            sdk_config,
            failpoints: Failpoints::default(),
            account: Arc::new(OnceCell::new()),
        }
    }

    /// Loads configuration and AWS settings from the environment.
    pub async fn from_env() -> Result<Self, crate::contract::config::ConfigError> {
        let config = Config::from_env()?;
        Ok(Services::new(config, load_sdk_config().await))
    }

    /// The account id of pgjit's own credentials (STS), asked once.
    pub async fn account_id(&self) -> Result<String, AwsError> {
        self.account
            .get_or_try_init(|| async {
                let out = self
                    .sts
                    .get_caller_identity()
                    .send()
                    .await
                    .map_err(|e| AwsError::new("sts:GetCallerIdentity", e))?;
                out.account.ok_or_else(|| {
                    AwsError::msg("sts:GetCallerIdentity", "no account in the answer")
                })
            })
            .await
            .cloned()
    }

    /// The region pgjit runs in.
    pub fn region(&self) -> Option<String> {
        self.sdk_config.region().map(|r| r.to_string())
    }
}

/// A failed AWS call, with the SDK's error (and its service message) kept as the source.
#[derive(Debug, thiserror::Error)]
#[error("AWS {operation} failed: {message}")]
pub struct AwsError {
    pub operation: &'static str,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl AwsError {
    pub fn new<E, R>(
        operation: &'static str,
        e: aws_smithy_runtime_api::client::result::SdkError<E, R>,
    ) -> Self
    where
        E: std::error::Error
            + Send
            + Sync
            + 'static
            + aws_smithy_types::error::metadata::ProvideErrorMetadata,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let message = match e.as_service_error() {
            Some(s) => format!(
                "{}: {}",
                s.code().unwrap_or("error"),
                s.message().unwrap_or("")
            ),
            None => crate::engine::postgres::error_chain(&e),
        };
        AwsError {
            operation,
            message,
            source: Some(Box::new(e)),
        }
    }

    pub fn msg(operation: &'static str, message: impl Into<String>) -> Self {
        AwsError {
            operation,
            message: message.into(),
            source: None,
        }
    }
}
