//! IAM mode: the inline `rds-db:connect` policy on the requester's user or role.

use serde_json::json;

use crate::aws::{AwsError, Services};
use crate::store::IamPolicyRef;

/// The IAM principal a requester's ARN names: users and roles as they are, and an STS
/// assumed-role session as the role it was assumed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User(String),
    Role(String),
}

pub fn principal_of(arn: &str) -> Result<Principal, String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" || parts[4].len() != 12 || !parts[4].bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{arn:?} is not an IAM ARN (arn:aws:iam::<account>:user/… or role/…)"));
    }
    let (service, resource) = (parts[2], parts[5]);
    let last = |path: &str| path.rsplit('/').next().unwrap_or("").to_owned();
    let valid = |name: &str| !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    let principal = match (service, resource.split_once('/')) {
        ("iam", Some(("user", path))) => Principal::User(last(path)),
        ("iam", Some(("role", path))) => Principal::Role(last(path)),
        ("sts", Some(("assumed-role", rest))) => Principal::Role(rest.split('/').next().unwrap_or("").to_owned()),
        _ => return Err(format!("{arn:?} names neither an IAM user, an IAM role nor an assumed role")),
    };
    match &principal {
        Principal::User(n) | Principal::Role(n) if valid(n) => Ok(principal),
        _ => Err(format!("{arn:?} has no valid principal name")),
    }
}

/// The policy's name: one per request, so overlapping grants never remove each other's access.
pub fn policy_name(request_id: &str) -> String {
    let safe: String = request_id.chars().map(|c| if c.is_ascii_alphanumeric() || "+=,.@_-".contains(c) { c } else { '_' }).take(100).collect();
    format!("pgjit-{safe}")
}

/// `arn:aws:rds-db:<region>:<account>:dbuser:<resource id>/<db user>`
pub fn dbuser_arn(region: &str, account: &str, resource_id: &str, db_user: &str) -> String {
    format!("arn:aws:rds-db:{region}:{account}:dbuser:{resource_id}/{db_user}")
}

pub fn policy_document(resource_arn: &str) -> String {
    json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "rds-db:connect", "Resource": resource_arn}]
    })
    .to_string()
}

/// Puts the inline policy (PutUserPolicy/PutRolePolicy replace, so a repeat is harmless).
pub async fn put_policy(svc: &Services, principal: &Principal, name: &str, document: &str) -> Result<IamPolicyRef, AwsError> {
    match principal {
        Principal::User(user) => {
            svc.iam
                .put_user_policy()
                .user_name(user)
                .policy_name(name)
                .policy_document(document)
                .send()
                .await
                .map_err(|e| AwsError::new("iam:PutUserPolicy", e))?;
            Ok(IamPolicyRef { principal_kind: "user".into(), principal_name: user.clone(), policy_name: name.to_owned() })
        }
        Principal::Role(role) => {
            svc.iam
                .put_role_policy()
                .role_name(role)
                .policy_name(name)
                .policy_document(document)
                .send()
                .await
                .map_err(|e| AwsError::new("iam:PutRolePolicy", e))?;
            Ok(IamPolicyRef { principal_kind: "role".into(), principal_name: role.clone(), policy_name: name.to_owned() })
        }
    }
}

/// Deletes the inline policy; one that is gone already is success.
pub async fn delete_policy(svc: &Services, policy: &IamPolicyRef) -> Result<(), AwsError> {
    let gone = |code: Option<&str>| code == Some("NoSuchEntity");
    if policy.principal_kind == "user" {
        match svc.iam.delete_user_policy().user_name(&policy.principal_name).policy_name(&policy.policy_name).send().await {
            Ok(_) => Ok(()),
            Err(e) if gone(e.as_service_error().and_then(|s| aws_sdk_iam::error::ProvideErrorMetadata::code(s))) => Ok(()),
            Err(e) => Err(AwsError::new("iam:DeleteUserPolicy", e)),
        }
    } else {
        match svc.iam.delete_role_policy().role_name(&policy.principal_name).policy_name(&policy.policy_name).send().await {
            Ok(_) => Ok(()),
            Err(e) if gone(e.as_service_error().and_then(|s| aws_sdk_iam::error::ProvideErrorMetadata::code(s))) => Ok(()),
            Err(e) => Err(AwsError::new("iam:DeleteRolePolicy", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_from_arns() {
        assert_eq!(principal_of("arn:aws:iam::123456789012:user/john").unwrap(), Principal::User("john".into()));
        assert_eq!(principal_of("arn:aws:iam::123456789012:user/dev/team/john").unwrap(), Principal::User("john".into()));
        assert_eq!(principal_of("arn:aws:iam::123456789012:role/Admin").unwrap(), Principal::Role("Admin".into()));
        assert_eq!(
            principal_of("arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Dev_abc/john@corp.com").unwrap(),
            Principal::Role("AWSReservedSSO_Dev_abc".into())
        );
        for bad in ["", "john", "arn:aws:iam::123:user/john", "arn:aws:s3:::bucket/key", "arn:aws:iam::123456789012:group/devs", "arn:aws:iam::123456789012:user/"] {
            assert!(principal_of(bad).is_err(), "{bad}");
        }
        assert_eq!(
            dbuser_arn("eu-west-1", "123456789012", "db-ABCDEFG", "pgjit_john_x1"),
            "arn:aws:rds-db:eu-west-1:123456789012:dbuser:db-ABCDEFG/pgjit_john_x1"
        );
        let doc: serde_json::Value = serde_json::from_str(&policy_document("arn:x")).unwrap();
        assert_eq!(doc["Statement"][0]["Action"], "rds-db:connect");
        assert_eq!(policy_name("REQ 1/2"), "pgjit-REQ_1_2");
    }
}
