//! The requester's credentials in Secrets Manager: one secret per grant, in the RDS format plus
//! `expires_at`, tagged with the requester and the request id, deleted at revoke.

use aws_sdk_secretsmanager::types::Tag;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::aws::{AwsError, Services};
use crate::aws::names;
use crate::secret::SecretString;

/// `<credentials prefix><integration>/<request id>`, the request id encoded so that every name is
/// one Secrets Manager accepts and distinct ids never share a secret ([`crate::aws::names`]). The
/// prefix is apart from pgjit's own secrets, and the functions' IAM policies cover it alone.
pub fn secret_name(svc: &Services, integration: &str, request_id: &str) -> String {
    let prefix = format!("{}{integration}/", svc.config.credentials_prefix);
    let room = names::SECRET_NAME.max_len.saturating_sub(prefix.len());
    format!("{prefix}{}", names::encode(request_id, names::SECRET_NAME, room))
}

/// The tag that says which request a secret belongs to; checked before pgjit overwrites or
/// deletes a secret, so one request can never touch another's.
const REQUEST_TAG: &str = "pgjit:request_id";

fn tag_value(text: &str) -> String {
    names::encode(text, names::SECRET_TAG_VALUE, names::SECRET_TAG_VALUE.max_len)
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

/// Who may read a credentials secret: the requester (when the approval names it), pgjit's own
/// roles that must (the grant function moves `expires_at` on an extension) and the configured
/// readers; everyone else is denied, whatever their identity policies say.
pub struct Readers<'a> {
    pub requester: Option<&'a crate::aws::iam::Requester>,
    /// pgjit's function roles that read the secret (`PGJIT_FUNCTION_ROLE_ARNS`).
    pub functions: &'a [String],
    pub others: &'a [String],
}

/// The secret's resource policy, or None when it names nobody (then the account's IAM decides).
///
/// An assumed-role requester is pinned to its own session: `aws:PrincipalArn` of a session is
/// its role, shared by every session of the role (every user of one Identity Center permission
/// set), so a second Deny refuses the role's sessions whose `aws:userid` (`<role id>:<session
/// name>`) is not the requester's session name. Session names hold no `*` or `?`, so the pattern
/// matches that name only.
pub fn resource_policy(readers: &Readers<'_>) -> Option<String> {
    let requester_arns: Vec<String> = readers.requester.map(|r| r.principal_arn_patterns()).unwrap_or_default();
    let mut allowed = requester_arns.clone();
    allowed.extend(readers.functions.iter().cloned());
    allowed.extend(readers.others.iter().cloned());
    if allowed.is_empty() {
        return None;
    }
    let session = readers.requester.and_then(|r| r.session.as_deref()).map(|s| format!("*:{s}"));
    let mut statements = vec![serde_json::json!({
        "Sid": "OnlyTheRequesterAndReaders", "Effect": "Deny", "Principal": "*",
        "Action": "secretsmanager:GetSecretValue", "Resource": "*",
        "Condition": {"ArnNotLike": {"aws:PrincipalArn": allowed}}
    })];
    if let Some(session) = &session {
        // The requester's role is among the allowed ARNs only for the requester's own session;
        // pgjit's roles and the readers are named apart, so they are never caught here.
        let own: Vec<&String> = readers.functions.iter().chain(readers.others).collect();
        statements.push(serde_json::json!({
            "Sid": "OnlyTheRequestersSession", "Effect": "Deny", "Principal": "*",
            "Action": "secretsmanager:GetSecretValue", "Resource": "*",
            "Condition": {"ArnLike": {"aws:PrincipalArn": requester_arns}, "ArnNotLike": {"aws:PrincipalArn": own}, "StringNotLike": {"aws:userid": session}}
        }));
    }
    if let Some(r) = readers.requester {
        let mut condition = serde_json::json!({"ArnLike": {"aws:PrincipalArn": r.principal_arn_patterns()}});
        if let Some(session) = &session {
            condition["StringLike"] = serde_json::json!({"aws:userid": session});
        }
        statements.push(serde_json::json!({
            "Sid": "TheRequesterReads", "Effect": "Allow",
            "Principal": {"AWS": format!("arn:{}:iam::{}:root", r.partition, r.account)},
            "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"], "Resource": "*",
            "Condition": condition
        }));
    }
    Some(serde_json::json!({"Version": "2012-10-17", "Statement": statements}).to_string())
}

/// Creates the secret (or, when a repeated run of the same request finds it, replaces its value),
/// encrypted with the configured KMS key, tagged, and with its resource policy; returns its ARN.
/// A secret of that name that belongs to another request is never touched.
pub async fn store(svc: &Services, name: &str, value: &CredentialsValue<'_>, requester: &str, request_id: &str, readers: &Readers<'_>) -> Result<String, AwsError> {
    let secret = text(value)?;
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(tag_value(v)).build();
    let mut create = svc
        .secrets
        .create_secret()
        .name(name)
        .description(format!("pgjit temporary credentials for request {}", tag_value(request_id)))
        .secret_string(secret.expose())
        .tags(tag("pgjit:requester", requester))
        .tags(tag(REQUEST_TAG, request_id));
    if let Some(key) = &svc.config.credentials_kms_key_id {
        create = create.kms_key_id(key);
    }
    let mut attempt = 0;
    let arn = loop {
        attempt += 1;
        match create.clone().send().await {
            Ok(out) => break out.arn.ok_or_else(|| AwsError::msg("secretsmanager:CreateSecret", "no ARN in the answer"))?,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_exists_exception()) => {
                owner_of(svc, name, request_id).await?.require(name)?;
                break replace(svc, name, &secret).await?;
            }
            // Secrets Manager deletes asynchronously: an earlier attempt's undo deleted this name
            // and AWS refuses to create it again while that runs (moto never does). A secret of
            // this request that is scheduled for deletion is restored and reused; one being
            // force-deleted is waited for.
            Err(e) if e.as_service_error().is_some_and(|s| s.is_invalid_request_exception() && scheduled_for_deletion(s)) => {
                match owner_of(svc, name, request_id).await? {
                    Owner::This => match svc.secrets.restore_secret().secret_id(name).send().await {
                        Ok(_) => break replace(svc, name, &secret).await?,
                        Err(r) if attempt < DELETION_WAITS && r.as_service_error().is_some_and(|s| s.is_resource_not_found_exception() || s.is_invalid_request_exception()) => {}
                        Err(r) => return Err(AwsError::new("secretsmanager:RestoreSecret", r)),
                    },
                    Owner::Absent if attempt < DELETION_WAITS => {}
                    other => {
                        other.require(name)?;
                        return Err(AwsError::new("secretsmanager:CreateSecret", e));
                    }
                }
                tracing::info!(secret = name, attempt, "the secret's name is still being deleted; waiting");
                tokio::time::sleep(std::time::Duration::from_millis(500 * u64::from(attempt))).await;
            }
            Err(e) => return Err(AwsError::new("secretsmanager:CreateSecret", e)),
        }
    };
    if let Some(policy) = resource_policy(readers) {
        svc.secrets
            .put_resource_policy()
            .secret_id(&arn)
            .resource_policy(policy)
            .block_public_policy(true)
            .send()
            .await
            .map_err(|e| AwsError::new("secretsmanager:PutResourcePolicy", e))?;
    }
    Ok(arn)
}

/// How many times a create waits for an earlier deletion of the same name (about 7 s in all).
const DELETION_WAITS: u32 = 5;

/// AWS's refusal to create a secret whose name is still being deleted.
fn scheduled_for_deletion(e: &aws_sdk_secretsmanager::operation::create_secret::CreateSecretError) -> bool {
    aws_sdk_secretsmanager::error::ProvideErrorMetadata::message(e).is_some_and(|m| m.contains("scheduled for deletion"))
}

/// Whose a secret is, by its request tag.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    /// It carries this request's tag.
    This,
    /// It does not exist.
    Absent,
    /// It carries another tag (or none): another request's, or not pgjit's at all.
    Other(Option<String>),
}

impl Owner {
    /// Ok only for this request's own secret.
    fn require(self, name: &str) -> Result<(), AwsError> {
        match self {
            Owner::This => Ok(()),
            Owner::Absent => Err(AwsError::msg("secretsmanager:DescribeSecret", format!("secret {name:?} does not exist"))),
            Owner::Other(tag) => Err(AwsError::msg(
                "secretsmanager:DescribeSecret",
                format!("secret {name:?} does not belong to this request (its {REQUEST_TAG} tag is {tag:?}); pgjit leaves it alone"),
            )),
        }
    }
}

/// Reads the secret's request tag.
async fn owner_of(svc: &Services, name_or_arn: &str, request_id: &str) -> Result<Owner, AwsError> {
    let described = match svc.secrets.describe_secret().secret_id(name_or_arn).send().await {
        Ok(out) => out,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => return Ok(Owner::Absent),
        Err(e) => return Err(AwsError::new("secretsmanager:DescribeSecret", e)),
    };
    let tag = described.tags().iter().find(|t| t.key() == Some(REQUEST_TAG)).and_then(|t| t.value());
    Ok(if tag == Some(tag_value(request_id).as_str()) { Owner::This } else { Owner::Other(tag.map(str::to_owned)) })
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

pub async fn rotate(svc: &Services, name: &str, value: &CredentialsValue<'_>, request_id: &str) -> Result<String, AwsError> {
    owner_of(svc, name, request_id).await?.require(name)?;
    replace(svc, name, &text(value)?).await
}

/// Moves the `expires_at` the requester reads in its credentials secret (an extension, or its
/// undo); the rest of the value is kept as it is. Only the request's own secret is changed.
pub async fn set_expiry(svc: &Services, name_or_arn: &str, request_id: &str, expires_at: chrono::DateTime<chrono::Utc>) -> Result<String, AwsError> {
    owner_of(svc, name_or_arn, request_id).await?.require(name_or_arn)?;
    let current = read(svc, name_or_arn).await?;
    let mut value: serde_json::Value =
        serde_json::from_str(current.expose()).map_err(|_| AwsError::msg("secretsmanager:GetSecretValue", "the credentials secret is not JSON"))?;
    value["expires_at"] = serde_json::json!(expires_at);
    replace(svc, name_or_arn, &SecretString::new(value.to_string())).await
}

/// What to do with a secret of that name that carries another request's tag (or none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    /// An error: revoke deletes the secret its own record names, so another owner is a fault.
    Refuse,
    /// Leave it: an undo deletes by the derived name, and a secret it did not make is not its.
    Skip,
}

/// Deletes the request's secret at once (no recovery window: the credentials must stop existing
/// now); a secret that is gone already is success, one of another request is left alone and,
/// with [`Foreign::Refuse`], reported.
pub async fn delete(svc: &Services, name_or_arn: &str, request_id: &str, foreign: Foreign) -> Result<(), AwsError> {
    match owner_of(svc, name_or_arn, request_id).await? {
        Owner::This => {}
        Owner::Absent => return Ok(()),
        Owner::Other(_) if foreign == Foreign::Skip => return Ok(()),
        other => other.require(name_or_arn)?,
    }
    delete_recorded(svc, name_or_arn).await
}

/// Whether `arn` is a full Secrets Manager ARN of a secret called `name` (its name, a hyphen
/// and the six random characters AWS adds).
pub fn is_arn_of(arn: &str, name: &str) -> bool {
    arn.starts_with("arn:")
        && arn.rsplit_once(":secret:").and_then(|(_, rest)| rest.strip_prefix(name)).and_then(|rest| rest.strip_prefix('-')).is_some_and(|suffix| {
            suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// Deletes, at once, the secret a grant made, by the full ARN the grant recorded: a secret's ARN
/// ends in six random characters, so it names that secret and no later one of the same name,
/// and no tag need be read first. One that is gone already is success.
pub async fn delete_recorded(svc: &Services, arn: &str) -> Result<(), AwsError> {
    match svc.secrets.delete_secret().secret_id(arn).force_delete_without_recovery(true).send().await {
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_recorded_arn_is_taken_only_for_the_requests_own_name() {
        let name = "pgjit-credentials/orders/REQ-1";
        let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:pgjit-credentials/orders/REQ-1-a1B2c3";
        assert!(super::is_arn_of(arn, name));
        for other in [
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:pgjit-credentials/orders/REQ-12-a1B2c3",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:pgjit-credentials/orders/REQ-1",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:pgjit-credentials/orders/REQ-1-a1B2c3d",
            "pgjit-credentials/orders/REQ-1-a1B2c3",
        ] {
            assert!(!super::is_arn_of(other, name), "{other}");
        }
    }
}
