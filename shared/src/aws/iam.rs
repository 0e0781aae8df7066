//! IAM mode: the inline `rds-db:connect` policy on the requester's user or role.

use serde_json::json;

use crate::aws::store::IamPolicyRef;
use crate::aws::{AwsError, Services};

pub use crate::contract::identity::{principal_of, requester_of, Principal, Requester};

/// Refuses requesters that IAM mode must never write a policy on, or whose account pgjit does
/// not serve: a principal of another account (pgjit's IAM rights end at its own account), IAM
/// Identity Center and service-linked roles (AWS refuses changes to them), and protected roles
/// (pgjit's own, and those the operator listed; a trailing `*` matches a prefix).
pub fn check_policy_target(
    requester: &Requester,
    own_account: &str,
    protected_roles: &[String],
) -> Result<(), String> {
    if requester.account != own_account {
        return Err(format!(
            "account {} is not pgjit's account ({own_account}): IAM mode can only write policies in its own account; use password access mode",
            requester.account
        ));
    }
    let Principal::Role(name) = &requester.principal else {
        return Ok(());
    };
    let path = requester.path.as_deref().unwrap_or("/");
    if path.starts_with("/aws-reserved/sso.amazonaws.com/") || name.starts_with("AWSReservedSSO_") {
        return Err(format!(
            "role {name:?} is an IAM Identity Center role, whose policies AWS lets nobody change; use password access mode for this requester"
        ));
    }
    if path.starts_with("/aws-service-role/") || name.starts_with("AWSServiceRole") {
        return Err(format!(
            "role {name:?} is a service-linked role, whose policies AWS lets nobody change"
        ));
    }
    // IAM role names are unique case-insensitively: `breakglass` is `BreakGlass`.
    let lower = name.to_ascii_lowercase();
    let protected = protected_roles.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => lower.starts_with(&prefix.to_ascii_lowercase()),
        None => p.eq_ignore_ascii_case(name),
    });
    if protected {
        return Err(format!("role {name:?} is protected (pgjit's own roles and PGJIT_PROTECTED_ROLES): pgjit never writes policies on it"));
    }
    Ok(())
}

/// Whether a requester's account may be named at all: pgjit's own or a trusted one.
pub fn check_account(
    requester: &Requester,
    own_account: &str,
    trusted_accounts: &[String],
) -> Result<(), String> {
    if requester.account == own_account || trusted_accounts.contains(&requester.account) {
        return Ok(());
    }
    Err(format!(
        "account {} is neither pgjit's account ({own_account}) nor in PGJIT_TRUSTED_ACCOUNTS",
        requester.account
    ))
}

/// The policy's name: one per request, so overlapping grants never remove each other's access;
/// distinct request ids give distinct names (see [`crate::aws::names`]).
pub fn policy_name(request_id: &str) -> String {
    format!(
        "pgjit-{}",
        crate::aws::names::encode(
            request_id,
            crate::aws::names::IAM_POLICY_NAME,
            crate::aws::names::IAM_POLICY_NAME.max_len - 6
        )
    )
}

/// `arn:<partition>:rds-db:<region>:<account>:dbuser:<resource id>/<db user>`
pub fn dbuser_arn(
    partition: &str,
    region: &str,
    account: &str,
    resource_id: &str,
    db_user: &str,
) -> String {
    format!("arn:{partition}:rds-db:{region}:{account}:dbuser:{resource_id}/{db_user}")
}

/// The `rds-db:connect` policy: it stops working at `expires_at` on its own (even if revoke
/// never runs), and for an assumed role only the requester's own session (`aws:userid` is
/// `<role id>:<session name>`) may use it, not every session of the role.
pub fn policy_document(
    resource_arn: &str,
    expires_at: chrono::DateTime<chrono::Utc>,
    session_userid: Option<&str>,
) -> String {
    let mut condition = json!({"DateLessThan": {"aws:CurrentTime": expires_at.format("%Y-%m-%dT%H:%M:%SZ").to_string()}});
    if let Some(userid) = session_userid {
        condition["StringEquals"] = json!({"aws:userid": userid});
    }
    json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "rds-db:connect", "Resource": resource_arn, "Condition": condition}]
    })
    .to_string()
}

/// The unique id of a role (`AROA…`), which `aws:userid` of its sessions starts with.
pub async fn role_id(svc: &Services, role: &str) -> Result<String, AwsError> {
    let out = svc
        .iam
        .get_role()
        .role_name(role)
        .send()
        .await
        .map_err(|e| AwsError::new("iam:GetRole", e))?;
    out.role()
        .map(|r| r.role_id().to_owned())
        .ok_or_else(|| AwsError::msg("iam:GetRole", "no role in the answer"))
}

/// Puts the inline policy (PutUserPolicy/PutRolePolicy replace, so a repeat is harmless).
pub async fn put_policy(
    svc: &Services,
    principal: &Principal,
    name: &str,
    document: &str,
) -> Result<IamPolicyRef, AwsError> {
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
            Ok(IamPolicyRef {
                principal_kind: "user".into(),
                principal_name: user.clone(),
                policy_name: name.to_owned(),
                role_arn: None,
            })
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
            Ok(IamPolicyRef {
                principal_kind: "role".into(),
                principal_name: role.clone(),
                policy_name: name.to_owned(),
                role_arn: None,
            })
        }
    }
}

/// Deletes the inline policy on the requester's own user or role; one that is gone already is
/// success. (An access role's goes with the role: [`crate::aws::access_role::delete`].)
pub async fn delete_policy(svc: &Services, policy: &IamPolicyRef) -> Result<(), AwsError> {
    let gone = |code: Option<&str>| code == Some("NoSuchEntity");
    if policy.principal_kind == "user" {
        match svc
            .iam
            .delete_user_policy()
            .user_name(&policy.principal_name)
            .policy_name(&policy.policy_name)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if gone(
                    e.as_service_error()
                        .and_then(|s| aws_sdk_iam::error::ProvideErrorMetadata::code(s)),
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(AwsError::new("iam:DeleteUserPolicy", e)),
        }
    } else {
        match svc
            .iam
            .delete_role_policy()
            .role_name(&policy.principal_name)
            .policy_name(&policy.policy_name)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if gone(
                    e.as_service_error()
                        .and_then(|s| aws_sdk_iam::error::ProvideErrorMetadata::code(s)),
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(AwsError::new("iam:DeleteRolePolicy", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_from_arns() {
        assert_eq!(
            principal_of("arn:aws:iam::123456789012:user/john").unwrap(),
            Principal::User("john".into())
        );
        assert_eq!(
            principal_of("arn:aws:iam::123456789012:user/dev/team/john").unwrap(),
            Principal::User("john".into())
        );
        assert_eq!(
            principal_of("arn:aws:iam::123456789012:role/Admin").unwrap(),
            Principal::Role("Admin".into())
        );
        let sso = requester_of(
            "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Dev_abc/john@corp.com",
        )
        .unwrap();
        assert_eq!(
            (sso.principal.clone(), sso.session.as_deref()),
            (
                Principal::Role("AWSReservedSSO_Dev_abc".into()),
                Some("john@corp.com")
            )
        );
        for bad in [
            "",
            "john",
            "arn:aws:iam::123:user/john",
            "arn:aws:s3:::bucket/key",
            "arn:aws:iam::123456789012:group/devs",
            "arn:aws:iam::123456789012:user/",
            "arn:evil:iam::123456789012:user/john",
            "arn:aws:sts::123456789012:assumed-role/Admin",
            "arn:aws:iam::123456789012:user/a//john",
        ] {
            assert!(requester_of(bad).is_err(), "{bad}");
        }
        let china = requester_of("arn:aws-cn:iam::123456789012:role/ops/Dev").unwrap();
        assert_eq!(
            china.principal_arn_patterns(),
            ["arn:aws-cn:iam::123456789012:role/ops/Dev"]
        );
        assert_eq!(
            sso.principal_arn_patterns(),
            [
                "arn:aws:iam::123456789012:role/AWSReservedSSO_Dev_abc",
                "arn:aws:iam::123456789012:role/*/AWSReservedSSO_Dev_abc"
            ]
        );
        assert_eq!(
            dbuser_arn(
                "aws-us-gov",
                "us-gov-west-1",
                "123456789012",
                "db-ABCDEFG",
                "pgjit_john_x1"
            ),
            "arn:aws-us-gov:rds-db:us-gov-west-1:123456789012:dbuser:db-ABCDEFG/pgjit_john_x1"
        );
        assert_eq!(policy_name("REQ 1/2"), "pgjit-REQ=201=2F2");
        assert_ne!(policy_name("CHG:2041/a"), policy_name("CHG_2041_a"));
    }

    #[test]
    fn the_policy_expires_and_binds_the_session() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let doc: serde_json::Value =
            serde_json::from_str(&policy_document("arn:x", at, Some("AROAEXAMPLE:john"))).unwrap();
        let statement = &doc["Statement"][0];
        assert_eq!(statement["Action"], "rds-db:connect");
        assert_eq!(
            statement["Condition"]["DateLessThan"]["aws:CurrentTime"],
            "2026-11-25T12:00:00Z"
        );
        assert_eq!(
            statement["Condition"]["StringEquals"]["aws:userid"],
            "AROAEXAMPLE:john"
        );
        let doc: serde_json::Value =
            serde_json::from_str(&policy_document("arn:x", at, None)).unwrap();
        assert!(doc["Statement"][0]["Condition"]
            .get("StringEquals")
            .is_none());
    }

    #[test]
    fn protected_and_foreign_principals_are_refused() {
        let protected = vec!["pgjit-prod-*".to_owned(), "BreakGlass".to_owned()];
        let check = |arn: &str| {
            check_policy_target(&requester_of(arn).unwrap(), "123456789012", &protected)
        };
        assert!(check("arn:aws:iam::123456789012:user/john").is_ok());
        assert!(check("arn:aws:iam::123456789012:role/Developer").is_ok());
        let cases = [
            ("arn:aws:iam::210987654321:user/john", "pgjit's account"),
            ("arn:aws:iam::123456789012:role/aws-reserved/sso.amazonaws.com/eu-west-1/AWSReservedSSO_Admin_1", "Identity Center"),
            ("arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Admin_1/jane", "password access mode"),
            ("arn:aws:iam::123456789012:role/aws-service-role/rds.amazonaws.com/AWSServiceRoleForRDS", "service-linked"),
            ("arn:aws:iam::123456789012:role/pgjit-prod-GrantFunctionRole-X1", "protected"),
            ("arn:aws:sts::123456789012:assumed-role/BreakGlass/ops", "protected"),
            ("arn:aws:iam::123456789012:role/breakglass", "protected"),
            ("arn:aws:iam::123456789012:role/PGJIT-PROD-Other", "protected"),
        ];
        for (arn, why) in cases {
            let err = check(arn).expect_err(arn);
            assert!(err.contains(why), "{arn}: {err}");
        }
        let foreign = requester_of("arn:aws:iam::210987654321:user/john").unwrap();
        assert!(check_account(&foreign, "123456789012", &[]).is_err());
        assert!(check_account(&foreign, "123456789012", &["210987654321".into()]).is_ok());
    }
}
