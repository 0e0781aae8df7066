//! IAM mode for requesters pgjit may not write a policy on: IAM Identity Center sessions (their
//! permission-set roles belong to Identity Center), or everyone where the stack or integration
//! says so. Each grant gets its own role under pgjit's path, made only with the stack's
//! permissions boundary (`rds-db:connect` and nothing else), that only the requester's own
//! identity may assume and only until the grant's expiry; its inline policy is the usual
//! `rds-db:connect` on the grant's one database user. Revoke deletes it.
//!
//! AWS's rules this follows (moto enforces none of them): role names are at most 64 of
//! `[A-Za-z0-9+=,.@_-]` and unique in the account whatever the path; `MaxSessionDuration` is
//! 3,600 to 43,200 s, and a role assumed with a role session's credentials (role chaining, as an
//! Identity Center user does) lasts at most an hour whatever it says; a role with inline
//! policies cannot be deleted (`DeleteConflict`), so they go first.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::aws::store::IamPolicyRef;
use crate::aws::{AwsError, Services};
use crate::contract::identity::{Principal, Requester, IDENTITY_CENTER_ROLE_PREFIX};
use crate::contract::integration::AccessRoles;

/// Every access role lives here, and pgjit's IAM rights to make, change and delete roles end here.
pub const PATH: &str = "/pgjit/access/";
/// The tag naming the request a role was made for: a role of the name that lacks it is not
/// pgjit's. A request id's characters are all allowed in IAM tag values, so it is the id itself.
pub const REQUEST_TAG: &str = "pgjit:request-id";
/// The kind an [`IamPolicyRef`] records for a policy on an access role.
pub const KIND: &str = "access_role";
const NAME_PREFIX: &str = "pgjit-access-";

/// Whether this requester is given an access role rather than an inline policy on itself.
pub fn wanted(requester: &Requester, mode: AccessRoles) -> bool {
    match mode {
        AccessRoles::Everyone => true,
        AccessRoles::IdentityCenter => is_identity_center(requester),
    }
}

/// An IAM Identity Center permission-set role or one of its sessions.
pub fn is_identity_center(requester: &Requester) -> bool {
    match &requester.principal {
        Principal::Role(name) => {
            name.starts_with(IDENTITY_CENTER_ROLE_PREFIX)
                || requester
                    .path
                    .as_deref()
                    .is_some_and(|p| p.starts_with("/aws-reserved/sso.amazonaws.com/"))
        }
        Principal::User(_) => false,
    }
}

/// The role's name: readable (the request id's start, lower case) and one per request, as IAM
/// wants it: role names are unique in an account whatever their case, so the end is a digest of
/// the exact id (`REQ-a` and `req-A` get two roles).
pub fn role_name(request_id: &str) -> String {
    use sha2::Digest;
    let digest = hex::encode(&sha2::Sha256::digest(request_id.as_bytes())[..8]);
    let room = crate::aws::names::IAM_ROLE_NAME.max_len - NAME_PREFIX.len() - 1 - digest.len();
    let readable: String = request_id
        .to_ascii_lowercase()
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"+,.@_-".contains(&b) {
                b as char
            } else {
                '_'
            }
        })
        .take(room)
        .collect();
    format!("{NAME_PREFIX}{readable}-{digest}")
}

/// `arn:<partition>:iam::<account>:role/pgjit/access/<name>`
pub fn role_arn(partition: &str, account: &str, name: &str) -> String {
    format!("arn:{partition}:iam::{account}:role{PATH}{name}")
}

/// The longest session the role allows: the time left of the grant, within IAM's 1 to 12 hours
/// (the inline policy's and the trust policy's expiry conditions end access at the expiry
/// whatever a session's own lifetime).
pub fn max_session_seconds(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> i32 {
    (expires_at - now).num_seconds().clamp(3_600, 43_200) as i32
}

/// The trust policy: only the requester's own identity may assume the role, and only before the
/// grant's expiry. An IAM user is named by its ARN; a role session by its session principal
/// (`arn:…:sts::…:assumed-role/<role>/<session>`), and, where the role is in pgjit's account,
/// also by `aws:userid` (`<role id>:<session>`), which a role deleted and made again under the
/// same name does not share. A role named without a session is the role itself.
pub fn trust_policy(
    requester: &Requester,
    role_id: Option<&str>,
    expires_at: DateTime<Utc>,
) -> String {
    let (p, a) = (&requester.partition, &requester.account);
    let mut condition = json!({"DateLessThan": {"aws:CurrentTime": expires_at.format("%Y-%m-%dT%H:%M:%SZ").to_string()}});
    let principal = match (&requester.principal, &requester.session) {
        (Principal::User(user), _) => {
            let path = requester.path.as_deref().unwrap_or("/");
            format!("arn:{p}:iam::{a}:user{path}{user}")
        }
        (Principal::Role(role), Some(session)) => {
            if let Some(id) = role_id {
                condition["StringEquals"] = json!({"aws:userid": format!("{id}:{session}")});
            }
            format!("arn:{p}:sts::{a}:assumed-role/{role}/{session}")
        }
        (Principal::Role(role), None) => {
            let path = requester.path.as_deref().unwrap_or("/");
            format!("arn:{p}:iam::{a}:role{path}{role}")
        }
    };
    json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": principal}, "Action": "sts:AssumeRole", "Condition": condition}]
    })
    .to_string()
}

/// The boundary every access role is made with, or why none can be made.
pub fn boundary(svc: &Services) -> Result<&str, String> {
    svc.config.access_role_boundary_arn.as_deref().ok_or_else(|| {
        "IAM mode gives this requester (an IAM Identity Center session, or everyone under access_roles: everyone) an access role, and PGJIT_ACCESS_ROLE_BOUNDARY_ARN is not set: pgjit makes access roles only with the stack's permissions boundary (deploy the template's AccessRoleBoundary), or use password access mode".to_owned()
    })
}

fn code_of<E: aws_smithy_types::error::metadata::ProvideErrorMetadata>(
    e: &aws_smithy_runtime_api::client::result::SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> Option<String> {
    e.as_service_error()
        .and_then(|s| aws_smithy_types::error::metadata::ProvideErrorMetadata::code(s))
        .map(str::to_owned)
}

/// Makes (or, repeated, brings up to date) the request's access role with its trust, boundary
/// and inline policy. A role of that name that is not this request's (another path, no tag
/// naming the request, another boundary) is refused and left untouched.
pub async fn ensure(
    svc: &Services,
    requester: &Requester,
    request_id: &str,
    expires_at: DateTime<Utc>,
    policy_name: &str,
    policy_document: &str,
) -> Result<IamPolicyRef, AwsError> {
    let boundary = boundary(svc).map_err(|m| AwsError::msg("iam:CreateRole", m))?;
    let account = svc.account_id().await?;
    let role_id = match (&requester.principal, &requester.session) {
        (Principal::Role(role), Some(_)) if requester.account == account => {
            Some(crate::aws::iam::role_id(svc, role).await?)
        }
        _ => None,
    };
    let trust = trust_policy(requester, role_id.as_deref(), expires_at);
    let name = role_name(request_id);
    let max_session = max_session_seconds(expires_at, Utc::now());
    let tag = aws_sdk_iam::types::Tag::builder()
        .key(REQUEST_TAG)
        .value(request_id)
        .build()
        .map_err(|e| AwsError::msg("iam:CreateRole", e.to_string()))?;
    let created = svc
        .iam
        .create_role()
        .path(PATH)
        .role_name(&name)
        .assume_role_policy_document(&trust)
        .permissions_boundary(boundary)
        .max_session_duration(max_session)
        .description(format!(
            "pgjit access role: rds-db:connect for one grant until {}",
            expires_at.format("%Y-%m-%dT%H:%M:%SZ")
        ))
        .tags(tag)
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(e) if code_of(&e).as_deref() == Some("EntityAlreadyExists") => {
            check_ours(svc, &name, request_id, Some(boundary)).await?;
            svc.iam
                .update_assume_role_policy()
                .role_name(&name)
                .policy_document(&trust)
                .send()
                .await
                .map_err(|e| AwsError::new("iam:UpdateAssumeRolePolicy", e))?;
            svc.iam
                .update_role()
                .role_name(&name)
                .max_session_duration(max_session)
                .send()
                .await
                .map_err(|e| AwsError::new("iam:UpdateRole", e))?;
        }
        Err(e) => return Err(AwsError::new("iam:CreateRole", e)),
    }
    svc.iam
        .put_role_policy()
        .role_name(&name)
        .policy_name(policy_name)
        .policy_document(policy_document)
        .send()
        .await
        .map_err(|e| AwsError::new("iam:PutRolePolicy", e))?;
    Ok(IamPolicyRef {
        principal_kind: KIND.into(),
        principal_name: name.clone(),
        policy_name: policy_name.to_owned(),
        role_arn: Some(role_arn(&requester.partition, &account, &name)),
    })
}

/// Whether the role `name` is this request's access role: under [`PATH`], tagged with the
/// request, and (when given) bounded by `boundary`. `Ok(false)`: there is no such role.
async fn check_ours(
    svc: &Services,
    name: &str,
    request_id: &str,
    boundary: Option<&str>,
) -> Result<bool, AwsError> {
    let role = match svc.iam.get_role().role_name(name).send().await {
        Ok(out) => out.role,
        Err(e) if code_of(&e).as_deref() == Some("NoSuchEntity") => return Ok(false),
        Err(e) => return Err(AwsError::new("iam:GetRole", e)),
    };
    let Some(role) = role else { return Ok(false) };
    let tagged = role
        .tags()
        .iter()
        .any(|t| t.key() == REQUEST_TAG && t.value() == request_id);
    let bounded = match boundary {
        None => true,
        Some(b) => {
            role.permissions_boundary()
                .and_then(|p| p.permissions_boundary_arn())
                == Some(b)
        }
    };
    if role.path() != PATH || !tagged || !bounded {
        return Err(AwsError::msg(
            "iam:GetRole",
            format!("role {name:?} exists and is not this request's access role (path {:?}, {REQUEST_TAG} tag {}, boundary {}): left untouched", role.path(), if tagged { "matches" } else { "missing or another request's" }, if bounded { "matches" } else { "not the stack's" }),
        ));
    }
    Ok(true)
}

/// Deletes the request's access role and its inline policies; one already gone is success, and a
/// role of the name that is not this request's is left alone (pgjit never made it).
pub async fn delete(svc: &Services, name: &str, request_id: &str) -> Result<(), AwsError> {
    match check_ours(svc, name, request_id, None).await {
        Ok(true) => {}
        Ok(false) => return Ok(()),
        Err(e) if e.operation == "iam:GetRole" && e.source.is_none() => {
            // Not pgjit's (or its tag was removed): the role stays, but pgjit's own policy,
            // if it is there, goes.
            tracing::warn!(role = %name, request_id, error = %e, "a role of the access role's name is not pgjit's: only pgjit's policy is removed");
            let policy = crate::aws::iam::policy_name(request_id);
            return match svc.iam.delete_role_policy().role_name(name).policy_name(&policy).send().await {
                Ok(_) => Ok(()),
                Err(e) if code_of(&e).as_deref() == Some("NoSuchEntity") => Ok(()),
                Err(e) => Err(AwsError::new("iam:DeleteRolePolicy", e)),
            };
        }
        Err(e) => return Err(e),
    }
    let policies = svc.iam.list_role_policies().role_name(name).send().await;
    let policies = match policies {
        Ok(out) => out.policy_names,
        Err(e) if code_of(&e).as_deref() == Some("NoSuchEntity") => return Ok(()),
        Err(e) => return Err(AwsError::new("iam:ListRolePolicies", e)),
    };
    for policy in policies {
        match svc
            .iam
            .delete_role_policy()
            .role_name(name)
            .policy_name(&policy)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if code_of(&e).as_deref() == Some("NoSuchEntity") => {}
            Err(e) => return Err(AwsError::new("iam:DeleteRolePolicy", e)),
        }
    }
    match svc.iam.delete_role().role_name(name).send().await {
        Ok(_) => Ok(()),
        Err(e) if code_of(&e).as_deref() == Some("NoSuchEntity") => Ok(()),
        Err(e) => Err(AwsError::new("iam:DeleteRole", e)),
    }
}

/// Removes the requester's way in of IAM mode: the grant's access role with its policy, or the
/// inline policy on the requester's own identity. Either gone already is success.
pub async fn remove_iam_access(
    svc: &Services,
    policy: &IamPolicyRef,
    request_id: &str,
) -> Result<(), AwsError> {
    if policy.principal_kind == KIND {
        delete(svc, &policy.principal_name, request_id).await
    } else {
        crate::aws::iam::delete_policy(svc, policy).await
    }
}

/// One access role as cleanup sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    /// The request its tag names (None: untagged, not made by pgjit's grant).
    pub request_id: Option<String>,
    pub created: Option<DateTime<Utc>>,
}

/// Every role under [`PATH`], with the request each was made for (ListRoles does not return
/// tags, so each role's are read).
pub async fn list(svc: &Services) -> Result<Vec<Listed>, AwsError> {
    let mut names = Vec::new();
    let mut pages = svc
        .iam
        .list_roles()
        .path_prefix(PATH)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AwsError::new("iam:ListRoles", e))?;
        for role in page.roles() {
            // PathPrefix is a prefix: `/pgjit/access/x/` is under it, and not pgjit's.
            if role.path() == PATH {
                let created = DateTime::from_timestamp(role.create_date().secs(), 0);
                names.push((role.role_name().to_owned(), created));
            }
        }
    }
    let mut listed = Vec::with_capacity(names.len());
    for (name, created) in names {
        let tags = match svc.iam.list_role_tags().role_name(&name).send().await {
            Ok(out) => out.tags,
            Err(e) if code_of(&e).as_deref() == Some("NoSuchEntity") => continue,
            Err(e) => return Err(AwsError::new("iam:ListRoleTags", e)),
        };
        let request_id = tags
            .into_iter()
            .find(|t| t.key() == REQUEST_TAG)
            .map(|t| t.value().to_owned());
        listed.push(Listed {
            name,
            request_id,
            created,
        });
    }
    Ok(listed)
}

/// `pgjit doctor` for an IAM-mode integration: who gets access roles, and whether the boundary
/// they are made with exists and allows `rds-db:connect` only; what requesters need.
pub async fn doctor_finding(
    svc: &Services,
    integration: &crate::contract::integration::Integration,
) -> Option<crate::engine::doctor::Finding> {
    use crate::engine::doctor::Finding;
    if integration.access_mode != crate::contract::integration::AccessMode::Iam {
        return None;
    }
    let who = match integration.access_roles.unwrap_or(svc.config.access_roles) {
        AccessRoles::IdentityCenter => "IAM Identity Center users",
        AccessRoles::Everyone => "every requester",
    };
    let boundary = match boundary(svc) {
        Ok(b) => b,
        Err(why) => {
            return Some(Finding::check(
                "access roles",
                false,
                format!("{who} are refused: {why}"),
            ))
        }
    };
    let allows_only_connect = async {
        let policy = svc
            .iam
            .get_policy()
            .policy_arn(boundary)
            .send()
            .await
            .map_err(|e| AwsError::new("iam:GetPolicy", e))?;
        let version = policy
            .policy()
            .and_then(|p| p.default_version_id())
            .unwrap_or("v1")
            .to_owned();
        let out = svc
            .iam
            .get_policy_version()
            .policy_arn(boundary)
            .version_id(version)
            .send()
            .await
            .map_err(|e| AwsError::new("iam:GetPolicyVersion", e))?;
        let text = out
            .policy_version()
            .and_then(|v| v.document())
            .unwrap_or_default();
        let text = percent_decode(text);
        let doc: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| AwsError::msg("iam:GetPolicyVersion", e.to_string()))?;
        let statements = match &doc["Statement"] {
            serde_json::Value::Array(list) => list.clone(),
            one => vec![one.clone()],
        };
        Ok::<bool, AwsError>(statements.iter().all(|s| {
            s["Effect"] != "Allow"
                || match &s["Action"] {
                    serde_json::Value::String(a) => a == "rds-db:connect",
                    serde_json::Value::Array(list) => list.iter().all(|a| a == "rds-db:connect"),
                    _ => false,
                }
        }))
    };
    let account = svc
        .account_id()
        .await
        .unwrap_or_else(|_| "<pgjit's account>".into());
    let partition = if svc.region().is_some_and(|r| r.starts_with("cn-")) {
        "aws-cn"
    } else {
        "aws"
    };
    let needs = format!("requesters' permission sets need sts:AssumeRole on arn:{partition}:iam::{account}:role/pgjit/access/*");
    Some(match allows_only_connect.await {
        Ok(true) => Finding::check("access roles", true, format!("{who} get an access role under {PATH}, bounded by {boundary} (rds-db:connect only); {needs}")),
        Ok(false) => Finding::check("access roles", false, format!("the boundary {boundary} allows more than rds-db:connect: access roles could do more than connect")),
        Err(e) => Finding::check("access roles", false, format!("cannot read the boundary {boundary}: {}", crate::engine::postgres::error_chain(&e))),
    })
}

/// IAM hands policy documents back URL-encoded.
fn percent_decode(text: &str) -> String {
    if !text.contains('%') {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::identity::requester_of;

    #[test]
    fn only_identity_center_sessions_get_a_role_unless_everyone_does() {
        let sso = requester_of("arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Eng_0123456789abcdef/john.doe@corp.com").unwrap();
        let user = requester_of("arn:aws:iam::123456789012:user/dev/alice").unwrap();
        let role = requester_of("arn:aws:sts::123456789012:assumed-role/Deployer/ci").unwrap();
        assert!(wanted(&sso, AccessRoles::IdentityCenter));
        assert!(
            !wanted(&user, AccessRoles::IdentityCenter)
                && !wanted(&role, AccessRoles::IdentityCenter)
        );
        assert!(wanted(&user, AccessRoles::Everyone) && wanted(&role, AccessRoles::Everyone));
    }

    #[test]
    fn names_fit_iam_and_differ_per_request() {
        let long = "R".repeat(200);
        let a = role_name(&long);
        assert!(
            a.len() <= 64
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b)),
            "{a}"
        );
        assert_ne!(role_name("REQ-1"), role_name("REQ-2"));
        assert_ne!(
            role_name(&format!("{long}a")),
            role_name(&format!("{long}b"))
        );
        assert_ne!(
            role_name("REQ-a").to_lowercase(),
            role_name("req-A").to_lowercase(),
            "unique whatever the case"
        );
    }

    #[test]
    fn sessions_last_within_iams_range() {
        let now = Utc::now();
        assert_eq!(
            max_session_seconds(now + chrono::Duration::minutes(10), now),
            3_600
        );
        assert_eq!(
            max_session_seconds(now + chrono::Duration::hours(3), now),
            10_800
        );
        assert_eq!(
            max_session_seconds(now + chrono::Duration::days(2), now),
            43_200
        );
    }

    #[test]
    fn the_trust_names_the_one_session_until_expiry() {
        let sso = requester_of("arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Eng_0123456789abcdef/john.doe@corp.com").unwrap();
        let at = DateTime::parse_from_rfc3339("2026-12-05T18:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let doc: serde_json::Value =
            serde_json::from_str(&trust_policy(&sso, Some("AROAEXAMPLE"), at)).unwrap();
        let s = &doc["Statement"][0];
        assert_eq!(s["Principal"]["AWS"], "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Eng_0123456789abcdef/john.doe@corp.com");
        assert_eq!(
            s["Condition"]["StringEquals"]["aws:userid"],
            "AROAEXAMPLE:john.doe@corp.com"
        );
        assert_eq!(
            s["Condition"]["DateLessThan"]["aws:CurrentTime"],
            "2026-12-05T18:00:00Z"
        );
        assert_eq!(s["Action"], "sts:AssumeRole");
    }
}
