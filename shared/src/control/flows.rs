//! pgjit decides: where an integration has access flows, every approval and extension,
//! whatever path brought it (the front door, the approval bus, the webhook), must fit one of
//! them before anything is made. An integration without flows trusts its approval tool.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use crate::aws::Services;
use crate::aws::store::GrantRecord;
use crate::contract::events::{Approval, Extension};
use crate::contract::flow::{self, Flow, Mode, Refusal};
use crate::contract::identity::Person;
use crate::contract::integration::Integration;
use crate::control::grants::{GrantError, StepError};

/// The flow that allowed an approval, and who counted as its approvers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub flow: String,
    pub mode: Mode,
    pub approvers: Vec<String>,
}

/// Checks an approval against the integration's flows: `None` when it has none (the approval
/// tool is trusted, as before flows), the flow that allows it, or a refusal naming each flow
/// and what did not fit.
pub async fn check_approval(svc: &Services, integration: &Integration, approval: &Approval, now: DateTime<Utc>) -> Result<Option<Allowed>, GrantError> {
    let set = svc.store.flow_set(&integration.name).await.map_err(|e| step(&approval.request_id, "access flows", e.into()))?;
    if set.flows().is_empty() {
        return Ok(None);
    }
    let request = flow::Request {
        integration: &integration.name,
        flow: approval.flow.as_deref(),
        requester: &Person::default(),
        access: &approval.access,
        duration_seconds: approval.duration_seconds,
        reason: approval.reason.as_deref(),
        ticket: approval.ticket.as_deref(),
        at: now,
    };
    decide(svc, integration, Flows::Set(&set), request, &approval.requester, &approval.all_approvers(), &approval.request_id).await.map(Some)
}

/// Checks an extension against the flow that allowed the grant (still there, still allowing
/// this requester, this long, now, with these approvers). Grants made before the integration
/// had flows cannot be extended once it has some: they were never decided by pgjit.
pub async fn check_extension(svc: &Services, integration: &Integration, record: &GrantRecord, extension: &Extension, now: DateTime<Utc>) -> Result<(), GrantError> {
    let flows = load(svc, integration, &record.request_id).await?;
    if flows.is_empty() {
        return Ok(());
    }
    let refuse = |why: String| GrantError::NotInFlow(Refusal { integration: integration.name.clone(), reasons: vec![(record.flow.clone().unwrap_or_else(|| "(none)".into()), why)] });
    if record.break_glass {
        return Err(refuse("a break-glass grant is not extended: ask for a new one (its use is reviewed)".into()));
    }
    let Some(name) = &record.flow else {
        return Err(refuse("the grant was made before the integration had access flows: request a new grant".into()));
    };
    let Some(flow) = flows.iter().find(|f| &f.name == name) else {
        return Err(refuse("the flow that allowed the grant is gone: request a new grant".into()));
    };
    let request = flow::Request {
        integration: &integration.name,
        flow: Some(name),
        requester: &Person::default(),
        access: &record.access,
        duration_seconds: extension.duration_seconds,
        reason: extension.reason.as_deref().or(record.reason.as_deref()),
        ticket: None,
        at: now,
    };
    // The ticket was checked at the grant; an extension keeps it.
    let mut flow = Flow::clone(flow);
    flow.approval.ticket_pattern = None;
    decide(svc, integration, Flows::One(&flow), request, &record.requester, &extension.all_approvers(), &record.request_id).await.map(|_| ())
}

async fn load(svc: &Services, integration: &Integration, request_id: &str) -> Result<Vec<std::sync::Arc<Flow>>, GrantError> {
    svc.store.list_flows(Some(&integration.name)).await.map_err(|e| step(request_id, "access flows", e.into()))
}

fn step(request_id: &str, step: &'static str, source: StepError) -> GrantError {
    GrantError::Step { operation: "grant", request_id: request_id.to_owned(), step, undone: false, source }
}

/// Resolves the people (Identity Store groups, the resource's owners, only where a flow needs
/// them) and asks the flows.
///
/// The requester is judged as the identity that gets the access: its IAM ARN where the approval
/// names one (the credentials are bound to it), its id as well only where the two are one
/// person. An approval for "alice" whose `iam_arn` is someone else's session is judged as that
/// session. Every name counts, though, when telling whether an approver is the requester.
/// The flows a decision reads: the integration's indexed set, or the one flow of a grant.
enum Flows<'a> {
    Set(&'a flow::FlowSet),
    One(&'a Flow),
}

async fn decide(
    svc: &Services,
    integration: &Integration,
    flows: Flows<'_>,
    mut request: flow::Request<'_>,
    requester: &crate::contract::events::Requester,
    approver_names: &[&str],
    request_id: &str,
) -> Result<Allowed, GrantError> {
    let policy = |field: &str, why: String| GrantError::Policy(format!("{field}: {why}"));
    // One group-name cache for everyone resolved here: a group is described once.
    let mut groups: HashMap<String, String> = HashMap::new();
    let mut resolve = async |names: &[&str], field: &str| -> Result<Person, GrantError> {
        let mut person = Person::named(names).map_err(|why| policy(field, why))?;
        crate::aws::identity::resolve(svc, &mut person, &mut groups).await.map_err(|e| step(request_id, "identity store", e.into()))?;
        Ok(person)
    };
    let by_id = resolve(&[requester.id.as_str()], "requester.id").await?;
    let eligible = match requester.iam_arn.as_deref() {
        None => by_id.clone(),
        Some(arn) => {
            let by_arn = resolve(&[arn], "requester.iam_arn").await?;
            // One person under both names: known by both, without asking again.
            if by_arn.same_as(&by_id) { by_arn.joined(&by_id) } else { by_arn }
        }
    };
    let mut approvers = Vec::with_capacity(approver_names.len());
    for name in approver_names {
        let approver = resolve(&[name], "approver").await?;
        // The requester under any of the names the approval gives it.
        if approver.same_as(&by_id) || approver.same_as(&eligible) {
            return Err(GrantError::NotInFlow(Refusal {
                integration: integration.name.clone(),
                reasons: vec![("(every flow)".into(), format!("approver {:?} is the requester {:?}: an approval must come from someone else", approver.named, requester.id))],
            }));
        }
        approvers.push(approver);
    }
    let names_owners = |f: &Flow| f.approval.approvers.as_ref().is_some_and(|a| a.owners);
    let needs_owners = match &flows {
        Flows::Set(set) => set.flows().iter().any(|f| names_owners(f)),
        Flows::One(flow) => names_owners(flow),
    };
    let owners = if needs_owners {
        crate::aws::identity::owners(svc, integration).await.map_err(|e| step(request_id, "resource owners", e.into()))?
    } else {
        BTreeSet::new()
    };
    request.requester = &eligible;
    let allowance = match flows {
        Flows::Set(set) => set.decide(&request, &approvers, &owners)?,
        Flows::One(flow) => flow::decide(&[flow], &request, &approvers, &owners)?,
    };
    Ok(Allowed {
        flow: allowance.flow.name.clone(),
        mode: allowance.flow.approval.mode(),
        approvers: allowance.approvers.iter().map(|p| p.named.clone()).collect(),
    })
}

/// What `pgjit doctor` says about who decides: the integration's flows, or that it trusts its
/// approval tool (any approval with a valid MAC is granted within the integration's limits).
pub async fn doctor_finding(svc: &Services, integration: &Integration) -> crate::engine::doctor::Finding {
    use crate::engine::doctor::Finding;
    match svc.store.list_flows(Some(&integration.name)).await {
        Ok(flows) if flows.is_empty() => Finding::warn(
            "access flows",
            format!("none: integration {:?} trusts its approval tool (any approval with the approvals key's MAC is granted within the integration's limits); add flows with `pgjit flow put FILE` for pgjit to decide", integration.name),
        ),
        Ok(flows) => Finding::check(
            "access flows",
            true,
            format!("{} flow(s) decide every approval and extension (on the bus and webhook paths, as the approval tool names the people): {}", flows.len(), flows.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ")),
        ),
        Err(e) => Finding::check("access flows", false, format!("cannot read the flows: {}", crate::engine::postgres::error_chain(&e))),
    }
}

/// Records that a break-glass grant was reviewed, and by whom (`pgjit review`). Reviewing
/// twice keeps the first review; a grant that was not break-glass is refused.
pub async fn review(svc: &Services, request_id: &str, reviewer: &str, note: Option<String>, now: DateTime<Utc>) -> Result<GrantRecord, GrantError> {
    crate::contract::events::check_request_id(request_id)?;
    if reviewer.trim().is_empty() || reviewer.len() > 256 {
        return Err(GrantError::Policy("reviewer: must be 1-256 characters".into()));
    }
    // A lost race (the grant changed meanwhile) is read again; a few at most.
    for _ in 0..5 {
        let mut record = svc.store.get_grant(request_id).await?.ok_or_else(|| GrantError::UnknownRequest(request_id.to_owned()))?;
        if !record.break_glass {
            return Err(GrantError::Policy(format!("request {request_id:?} was not granted through a break-glass flow: there is nothing to review")));
        }
        if record.reviewed_by.is_some() {
            return Ok(record);
        }
        if Person::named(&[reviewer]).is_ok_and(|r| {
            Person::named(&[record.requester.id.as_str(), record.requester.iam_arn.as_deref().unwrap_or("")]).is_ok_and(|q| q.same_as(&r))
        }) {
            return Err(GrantError::Policy(format!("reviewer {reviewer:?} is the requester: a break-glass grant is reviewed by someone else")));
        }
        record.reviewed_by = Some(reviewer.to_owned());
        record.reviewed_at = Some(now);
        record.updated_at = now;
        match svc.store.update_grant(&mut record).await {
            Ok(()) => {
                svc.store.append_audit(&crate::control::grants::audit(&record, "reviewed", now, Some(format!("by {reviewer}{}", note.map(|n| format!(": {n}")).unwrap_or_default())))).await?;
                return Ok(record);
            }
            Err(crate::aws::store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(GrantError::InProgress(request_id.to_owned()))
}
