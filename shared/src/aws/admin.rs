//! How pgjit itself logs in to a database: a Secrets Manager secret in the RDS JSON format, or an
//! RDS IAM auth token made for each connection. The admin's secret is read when a connection is
//! about to be made, kept in memory only, and never written anywhere else.

use serde::Deserialize;

use crate::engine::postgres::{Login, TokenSource};
use crate::secret::SecretString;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("reading admin secret {secret_id:?} from Secrets Manager failed")]
    ReadSecret {
        secret_id: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("admin secret {secret_id:?} has no SecretString")]
    NotAString { secret_id: String },
    #[error("admin secret {secret_id:?} is not in the RDS JSON format ({{\"username\":…,\"password\":…}}): {reason}")]
    Format { secret_id: String, reason: String },
    #[error("making an RDS IAM auth token for {username:?} failed: {reason}")]
    Token { username: String, reason: String },
}

/// The RDS secret format. Only the fields pgjit reads; the password stays a [`SecretString`].
/// Debug is safe: the password is a [`SecretString`].
#[derive(Debug, Deserialize)]
pub struct RdsSecret {
    pub username: String,
    pub password: SecretString,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub dbname: Option<String>,
}

impl RdsSecret {
    /// Parses the secret's JSON; the error never quotes the secret's text.
    pub fn parse(secret_id: &str, json: &str) -> Result<Self, AdminError> {
        let secret: RdsSecret = serde_json::from_str(json).map_err(|e| AdminError::Format {
            secret_id: secret_id.to_owned(),
            // serde_json's messages name the field and position, never the value.
            reason: e.to_string(),
        })?;
        if secret.username.is_empty() || secret.password.is_empty() {
            return Err(AdminError::Format { secret_id: secret_id.to_owned(), reason: "username and password must not be empty".into() });
        }
        Ok(secret)
    }

    pub fn login(&self) -> Login {
        Login { user: self.username.clone(), password: self.password.clone() }
    }
}

/// Reads the admin secret from Secrets Manager.
pub async fn read_secret(client: &aws_sdk_secretsmanager::Client, secret_id: &str) -> Result<RdsSecret, AdminError> {
    let out = client.get_secret_value().secret_id(secret_id).send().await.map_err(|e| AdminError::ReadSecret {
        secret_id: secret_id.to_owned(),
        source: e.into(),
    })?;
    let text = out.secret_string().ok_or_else(|| AdminError::NotAString { secret_id: secret_id.to_owned() })?;
    RdsSecret::parse(secret_id, text)
}

/// Makes RDS IAM auth tokens for one database user, one per connection (a token lives 15 minutes).
pub struct RdsIamTokens {
    username: String,
    /// Region, credentials and clock: the function's own AWS configuration.
    sdk_config: aws_config::SdkConfig,
}

impl RdsIamTokens {
    pub fn new(username: impl Into<String>, sdk_config: aws_config::SdkConfig) -> Self {
        RdsIamTokens { username: username.into(), sdk_config }
    }

    /// A fresh token for `host:port`, as the login password.
    pub async fn fresh_token(&self, host: &str, port: u16) -> Result<SecretString, AdminError> {
        let fail = |reason: String| AdminError::Token { username: self.username.clone(), reason };
        let mut config = aws_sdk_rds::auth_token::Config::builder().hostname(host).port(u64::from(port)).username(&self.username);
        if let Some(region) = self.sdk_config.region() {
            config = config.region(region.clone());
        }
        let config = config.build().map_err(|e| fail(e.to_string()))?;
        let token = aws_sdk_rds::auth_token::AuthTokenGenerator::new(config)
            .auth_token(&self.sdk_config)
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(SecretString::new(token.as_str()))
    }
}

impl TokenSource for RdsIamTokens {
    fn username(&self) -> &str {
        &self.username
    }

    fn token<'a>(&'a self, host: &'a str, port: u16) -> futures_util::future::BoxFuture<'a, Result<SecretString, Box<dyn std::error::Error + Send + Sync>>> {
        Box::pin(async move { self.fresh_token(host, port).await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;

    #[test]
    fn rds_secret_is_parsed_and_errors_do_not_quote_it() {
        let s = RdsSecret::parse("db/admin", r#"{"engine":"postgres","username":"admin","password":"p@ss","host":"h","port":5432}"#).unwrap();
        assert_eq!(s.username, "admin");
        assert_eq!(s.password.expose(), "p@ss");
        assert_eq!(s.port, Some(5432));
        let err = RdsSecret::parse("db/admin", r#"{"username":"admin","pass":"topsecret"}"#).unwrap_err().to_string();
        assert!(err.contains("password"), "{err}");
        assert!(!err.contains("topsecret"), "{err}");
        let err = RdsSecret::parse("db/admin", "topsecret-not-json").unwrap_err().to_string();
        assert!(!err.contains("topsecret"), "{err}");
    }

    #[tokio::test]
    async fn iam_token_is_a_presigned_connect_request() {
        let creds = Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None, None, "test");
        let sdk_config = aws_config::SdkConfig::builder()
            .region(aws_config::Region::new("eu-west-1"))
            .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(creds))
            .time_source(aws_smithy_async::time::SystemTimeSource::new())
            .build();
        let tokens = RdsIamTokens::new("pgjit_admin", sdk_config);
        let token = tokens.fresh_token("db.example.eu-west-1.rds.amazonaws.com", 5432).await.unwrap();
        let token = token.expose();
        assert!(token.starts_with("db.example.eu-west-1.rds.amazonaws.com:5432/?"), "{token}");
        assert!(token.contains("Action=connect"), "{token}");
        assert!(token.contains("DBUser=pgjit_admin"), "{token}");
        assert!(token.contains("X-Amz-Signature="), "{token}");
        assert!(token.contains("eu-west-1%2Frds-db%2Faws4_request"), "{token}");
    }
}
