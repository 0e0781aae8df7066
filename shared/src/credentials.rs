//! The requester's credentials in Secrets Manager: one secret per grant, in the RDS format plus
//! `expires_at`, tagged with the requester and the request id, deleted at revoke.

use aws_sdk_secretsmanager::types::Tag;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::aws::{AwsError, Services};
use crate::secret::SecretString;

/// `<prefix><integration>/<request id>`: the IAM policy of the functions covers the prefix only.
pub fn secret_name(svc: &Services, integration: &str, request_id: &str) -> String {
    format!("{}{integration}/{request_id}", svc.config.secret_prefix)
}

/// The secret's JSON: what a client needs to connect, in the RDS secret format.
#[derive(Debug, Serialize)]
pub struct CredentialsValue<'a> {
    pub engine: &'static str,
    pub host: &'a str,
    pub port: u16,
    pub dbname: &'a str,
    pub username: &'a str,
    pub password: &'a SecretString,
    pub expires_at: DateTime<Utc>,
}

fn text(value: &CredentialsValue<'_>) -> Result<SecretString, AwsError> {
    serde_json::to_string(value).map(SecretString::new).map_err(|e| AwsError::msg("secretsmanager:CreateSecret", e.to_string()))
}

/// Creates the secret (or, when a repeated run finds it, replaces its value) and returns its ARN.
pub async fn store(svc: &Services, name: &str, value: &CredentialsValue<'_>, requester: &str, request_id: &str) -> Result<String, AwsError> {
    let secret = text(value)?;
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    let created = svc
        .secrets
        .create_secret()
        .name(name)
        .description(format!("pgjit temporary credentials for request {request_id}"))
        .secret_string(secret.expose())
        .tags(tag("pgjit:requester", requester))
        .tags(tag("pgjit:request_id", request_id))
        .send()
        .await;
    match created {
        Ok(out) => out.arn.ok_or_else(|| AwsError::msg("secretsmanager:CreateSecret", "no ARN in the answer")),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_exists_exception()) => replace(svc, name, &secret).await,
        Err(e) => Err(AwsError::new("secretsmanager:CreateSecret", e)),
    }
}

/// Puts a new value into an existing secret (rotation, or a repeated grant).
async fn replace(svc: &Services, name: &str, secret: &SecretString) -> Result<String, AwsError> {
    let out = svc
        .secrets
        .put_secret_value()
        .secret_id(name)
        .secret_string(secret.expose())
        .send()
        .await
        .map_err(|e| AwsError::new("secretsmanager:PutSecretValue", e))?;
    out.arn.ok_or_else(|| AwsError::msg("secretsmanager:PutSecretValue", "no ARN in the answer"))
}

pub async fn rotate(svc: &Services, name: &str, value: &CredentialsValue<'_>) -> Result<String, AwsError> {
    replace(svc, name, &text(value)?).await
}

/// Deletes the secret at once (no recovery window: the credentials must stop existing now);
/// a secret that is gone already is success.
pub async fn delete(svc: &Services, name_or_arn: &str) -> Result<(), AwsError> {
    match svc.secrets.delete_secret().secret_id(name_or_arn).force_delete_without_recovery(true).send().await {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => Ok(()),
        Err(e) => Err(AwsError::new("secretsmanager:DeleteSecret", e)),
    }
}

/// The secret's JSON, for `pgjit credentials` (the one deliberate place it is shown).
pub async fn read(svc: &Services, name_or_arn: &str) -> Result<SecretString, AwsError> {
    let out = svc.secrets.get_secret_value().secret_id(name_or_arn).send().await.map_err(|e| AwsError::new("secretsmanager:GetSecretValue", e))?;
    out.secret_string.map(SecretString::new).ok_or_else(|| AwsError::msg("secretsmanager:GetSecretValue", "no SecretString"))
}
