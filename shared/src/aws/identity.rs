//! People as AWS knows them: Identity Center users and their groups (the Identity Store), and
//! a resource's owners (the owner tag on its instance or cluster, else the integration owners).

use std::collections::{BTreeSet, HashMap};

use crate::aws::{AwsError, Services};
use crate::contract::identity::Person;
use crate::contract::integration::Integration;

/// Where IAM Identity Center puts the roles of its permission sets.
pub const IDENTITY_CENTER_PATH: &str = "/aws-reserved/sso.amazonaws.com/";

/// Fills in the person's Identity Store user id and group names from their user names (as
/// `UserName`, then as an e-mail address). Without `PGJIT_IDENTITY_STORE_ID` nothing is looked
/// up; a user name the store does not know stays as it is, with no groups.
///
/// A session is taken as the Identity Center user it names only when its role is Identity
/// Center's: in pgjit's account, a role under `/aws-reserved/sso.amazonaws.com/` (IAM says);
/// in a trusted account (`PGJIT_TRUSTED_ACCOUNTS`), by its name; elsewhere never (a role named
/// `AWSReservedSSO_…` by someone who may create roles there proves nothing).
pub async fn resolve(svc: &Services, person: &mut Person, group_names: &mut HashMap<String, String>) -> Result<(), AwsError> {
    for (account, role, _) in person.identity_center_sessions.clone() {
        let own = svc.account_id().await?;
        let genuine = if account == own {
            match svc.iam.get_role().role_name(&role).send().await {
                Ok(out) => out.role().is_some_and(|r| r.path().starts_with(IDENTITY_CENTER_PATH)),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_entity_exception()) => false,
                Err(e) => return Err(AwsError::new("iam:GetRole", e)),
            }
        } else {
            svc.config.trusted_accounts.contains(&account)
        };
        if !genuine {
            tracing::warn!(account = %account, role = %role, "a session of a role named like Identity Center's that is not: taken as a plain role session");
            person.not_identity_center(&account, &role);
        }
    }
    let Some(store) = svc.config.identity_store_id.as_deref() else { return Ok(()) };
    for name in person.user_names.clone() {
        let Some(user_id) = user_id(svc, store, &name).await? else { continue };
        let mut pages = svc
            .identity_store
            .list_group_memberships_for_member()
            .identity_store_id(store)
            .member_id(aws_sdk_identitystore::types::MemberId::UserId(user_id.clone()))
            .into_paginator()
            .items()
            .send();
        while let Some(membership) = pages.next().await {
            let membership = membership.map_err(|e| AwsError::new("identitystore:ListGroupMembershipsForMember", e))?;
            let Some(group_id) = membership.group_id() else { continue };
            if !group_names.contains_key(group_id) {
                let group = svc.identity_store.describe_group().identity_store_id(store).group_id(group_id).send().await.map_err(|e| AwsError::new("identitystore:DescribeGroup", e))?;
                group_names.insert(group_id.to_owned(), group.display_name().unwrap_or_default().to_owned());
            }
            if let Some(display) = group_names.get(group_id).filter(|d| !d.is_empty()) {
                person.groups.insert(display.clone());
            }
        }
        // Two user names of one person resolve to one id, which `Person::same_as` then sees.
        person.user_id.get_or_insert(user_id);
    }
    Ok(())
}

async fn user_id(svc: &Services, store: &str, name: &str) -> Result<Option<String>, AwsError> {
    use aws_sdk_identitystore::types::{AlternateIdentifier, UniqueAttribute};
    for path in ["userName", "emails.value"] {
        let attribute = UniqueAttribute::builder()
            .attribute_path(path)
            .attribute_value(aws_smithy_types::Document::String(name.to_owned()))
            .build()
            .map_err(|e| AwsError::msg("identitystore:GetUserId", e.to_string()))?;
        match svc.identity_store.get_user_id().identity_store_id(store).alternate_identifier(AlternateIdentifier::UniqueAttribute(attribute)).send().await {
            Ok(out) => return Ok(Some(out.user_id().to_owned())),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => continue,
            Err(e) => return Err(AwsError::new("identitystore:GetUserId", e)),
        }
    }
    Ok(None)
}

/// The names (groups or users) the integration's resource owners go by: the value of the
/// instance's or cluster's `resource_owner_tag` (comma-separated names allowed), else the
/// integration owners.
pub async fn owners(svc: &Services, integration: &Integration) -> Result<BTreeSet<String>, AwsError> {
    if let Some(tag) = &integration.resource_owner_tag {
        if let Some(target) = crate::aws::rds::describe(svc, integration).await? {
            let tagged: BTreeSet<String> = target
                .tags
                .iter()
                .filter(|(k, _)| k == tag)
                .flat_map(|(_, v)| v.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_owned))
                .collect();
            if !tagged.is_empty() {
                return Ok(tagged);
            }
        }
    }
    Ok(integration.integration_owners.iter().cloned().collect())
}
