//! The front door: people ask for access, and approve, deny or cancel, as the identity AWS
//! proved (SigV4 on the Function URL, or STS for the CLI in-process); the integration's access
//! flows decide. A request that has its approvals (or whose flow is `auto` or `break_glass`)
//! becomes an ordinary approval with the approvals key's MAC on the approval bus, listing its
//! approvers: the grant function checks it again against the same flows, so the grant path
//! stays the one way in.
//!
//! Here: the actions. [`url`] adapts the Function URL; [`completion`] sends a complete request
//! (now, or through a one-shot schedule at its start) and expires the unapproved.

pub mod completion;
pub mod url;

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::aws::store::requests::{Decision, RequestRecord};
use crate::aws::store::{AuditEntry, StoreError};
use crate::aws::{AwsError, Services};
use crate::contract::events::{EventError, Requester};
use crate::contract::flow::{self, Flow, Mode, Refusal};
use crate::contract::identity::Person;
use crate::contract::requests::{Action, Caller, ListFilter, NewRequest, RequestStatus};

/// Why a call to the front door was refused; the HTTP status says which kind.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Input(#[from] EventError),
    #[error("{0}")]
    Forbidden(String),
    #[error("refused: {0}")]
    NotAllowed(Refusal),
    #[error("unknown {0}")]
    Unknown(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Mac(#[from] crate::aws::approval_mac::MacError),
}

impl From<Refusal> for RequestError {
    fn from(refusal: Refusal) -> Self {
        RequestError::NotAllowed(refusal)
    }
}

impl RequestError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Input(_) => 400,
            RequestError::Forbidden(_) | RequestError::NotAllowed(_) => 403,
            RequestError::Unknown(_) => 404,
            RequestError::Conflict(_) => 409,
            RequestError::Store(_) | RequestError::Aws(_) | RequestError::Mac(_) => 503,
        }
    }
}

/// A request as the front door shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestView {
    pub request_id: String,
    pub status: RequestStatus,
    pub integration: String,
    pub flow: String,
    pub mode: Mode,
    pub requester: String,
    pub access: Vec<crate::access::AccessEntry>,
    pub duration_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub required: u32,
    pub approvals: Vec<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The grant, once made: its database user and expiry (never a password).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantView>,
}

/// A request's grant as its requester sees it: enough to connect (`pgjit connect`), never a
/// password or token.
#[derive(Debug, Clone, Serialize)]
pub struct GrantView {
    pub status: crate::aws::store::GrantStatus,
    pub db_user: String,
    pub expires_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_arn: Option<String>,
    pub access_mode: crate::contract::integration::AccessMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The databases the grant reaches, in order (the first is where `connect` goes by default).
    pub databases: Vec<String>,
    /// The region an RDS IAM auth token is signed for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The access role to assume before making the token (IAM mode, Identity Center users).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_role_arn: Option<String>,
    /// The roots a client trusts for the server: `rds` (Amazon's, which pgjit carries), `system`
    /// (the public web roots) or `pem` (then in `ca_pem`).
    pub roots: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

/// What an action returns: the request(s), and for an approval that completed a request, the
/// signed approval event it sent (the CLI in-process grants it, as no rule delivers it there).
#[derive(Debug, Clone, Serialize)]
pub struct Reply {
    pub requests: Vec<RequestView>,
    #[serde(skip)]
    pub sent: Option<serde_json::Value>,
}

/// Most tries of one action against concurrent writers of the same request.
const TRIES: usize = 8;

/// Handles one action by `caller`.
pub async fn handle(
    svc: &Services,
    caller: &Caller,
    action: Action,
    now: DateTime<Utc>,
) -> Result<Reply, RequestError> {
    caller
        .check()
        .map_err(|why| RequestError::Forbidden(format!("who called cannot be told: {why}")))?;
    let mut person = caller.person().map_err(RequestError::Forbidden)?;
    let mut groups = HashMap::new();
    crate::aws::identity::resolve(svc, &mut person, &mut groups).await?;
    let me = Me { caller, person };
    let name = action.name();
    let result = match action {
        Action::Create(new) => create(svc, &me, new, now).await,
        Action::Approve {
            request_id,
            client_token,
        } => approve(svc, &me, &request_id, client_token, now).await,
        Action::Deny {
            request_id,
            reason,
            client_token,
        } => {
            close(
                svc,
                &me,
                &request_id,
                Close::Deny(reason),
                client_token,
                now,
            )
            .await
        }
        Action::Cancel {
            request_id,
            client_token,
        } => close(svc, &me, &request_id, Close::Cancel, client_token, now).await,
        Action::Get { request_id } => get(svc, &me, &request_id, now).await,
        Action::List { filter } => list(svc, &me, filter, now).await,
    };
    match &result {
        Ok(reply) => {
            tracing::info!(action = name, caller = %caller.arn, requests = reply.requests.len(), "front door")
        }
        Err(e) => {
            tracing::warn!(action = name, caller = %caller.arn, status = e.status(), error = %crate::engine::postgres::error_chain(e), "front door refused")
        }
    }
    result
}

struct Me<'a> {
    caller: &'a Caller,
    person: Person,
}

impl Me<'_> {
    fn decision(&self, now: DateTime<Utc>, reason: Option<String>) -> Decision {
        Decision {
            by: self.caller.id(),
            arn: self.caller.arn.clone(),
            at: now,
            reason,
        }
    }

    fn is(&self, requester: &Requester) -> bool {
        requester_person(requester).is_some_and(|r| r.same_as(&self.person))
    }
}

fn requester_person(requester: &Requester) -> Option<Person> {
    Person::named(&[
        requester.id.as_str(),
        requester.iam_arn.as_deref().unwrap_or(""),
    ])
    .ok()
}

/// A request's id: the same requester and client token give the same id, so a retried create
/// is the same request.
pub fn request_id_for(caller: &Caller, client_token: &str) -> String {
    let digest =
        Sha256::digest(format!("{}\n{client_token}", caller.id().to_lowercase()).as_bytes());
    format!("REQ-{}", hex::encode(&digest[..10]))
}

async fn flows_of(
    svc: &Services,
    integration: &str,
) -> Result<Vec<std::sync::Arc<Flow>>, RequestError> {
    Ok(svc.store.list_flows(Some(integration)).await?)
}

async fn create(
    svc: &Services,
    me: &Me<'_>,
    mut new: NewRequest,
    now: DateTime<Utc>,
) -> Result<Reply, RequestError> {
    let request_id = request_id_for(me.caller, &new.client_token);
    let integration = svc
        .store
        .get_integration(&new.integration)
        .await?
        .ok_or_else(|| RequestError::Unknown(format!("integration {:?}", new.integration)))?;
    new.access =
        crate::contract::requests::with_database(&new.access, integration.maintenance_database());
    if let Some(existing) = svc.store.get_request(&request_id).await? {
        return same_request(svc, existing, &new, now).await;
    }
    let set = svc.store.flow_set(&integration.name).await?;
    if set.flows().is_empty() {
        return Err(RequestError::Forbidden(format!(
            "integration {:?} has no access flows, so pgjit cannot decide who approves: ask its operator for one (pgjit flow put)",
            integration.name
        )));
    }
    if new.duration_seconds > integration.max_duration_seconds {
        return Err(RequestError::Forbidden(format!(
            "{} s is longer than integration {:?} grants ({} s)",
            new.duration_seconds, integration.name, integration.max_duration_seconds
        )));
    }
    let start = new.start_at.filter(|s| *s > now);
    let request = flow::Request {
        integration: &integration.name,
        flow: new.flow.as_deref(),
        requester: &me.person,
        access: &new.access,
        duration_seconds: new.duration_seconds,
        reason: new.reason.as_deref(),
        ticket: new.ticket.as_deref(),
        at: start.unwrap_or(now),
    };
    let chosen = set.admitting(&request)?;
    let requester = Requester {
        id: me.caller.id(),
        iam_arn: Some(me.caller.arn.clone()),
    };
    let mut record = RequestRecord {
        request_id: request_id.clone(),
        status: RequestStatus::Pending,
        version: 1,
        integration: integration.name.clone(),
        flow: chosen.name.clone(),
        mode: chosen.approval.mode(),
        required: chosen.approval.required(),
        requester_key: requester.id.to_lowercase(),
        requester,
        client_token: new.client_token.clone(),
        access: new.access.clone(),
        duration_seconds: new.duration_seconds,
        reason: new.reason.clone(),
        ticket: new.ticket.clone(),
        start_at: start,
        created_at: now,
        updated_at: now,
        expires_at: now + Duration::from_std(svc.config.request_ttl).unwrap_or(Duration::hours(24)),
        due_at: None,
        approvals: Vec::new(),
        closed_by: None,
        tokens: Vec::new(),
        failure: None,
        sent_at: None,
        event_id: None,
        ttl: (now + Duration::days(400)).timestamp(),
    };
    record.set_status(RequestStatus::Pending, now);
    match svc.store.insert_request(&record).await {
        Ok(()) => {}
        Err(StoreError::AlreadyExists(_)) => {
            let existing = svc.store.get_request(&request_id).await?.ok_or_else(|| {
                RequestError::Conflict(
                    "the request is being created by another call; try again".into(),
                )
            })?;
            return same_request(svc, existing, &new, now).await;
        }
        Err(e) => return Err(e.into()),
    }
    audit(
        svc,
        &record,
        "request_created",
        now,
        me.caller,
        record.reason.clone(),
    )
    .await?;
    crate::control::grants::emit(
        svc,
        crate::contract::events::REQUEST_CREATED,
        created_event(&record, chosen),
        &record.request_id,
        &record.integration,
    )
    .await;
    let mut sent = None;
    if record.mode != Mode::Approvers {
        // Auto and break-glass: approved on request.
        sent = completion::complete(svc, &mut record, now).await?;
    }
    Ok(Reply {
        requests: vec![view_as_is(record)],
        sent,
    })
}

/// A create sent again with its client token: the same request if it asks for the same.
async fn same_request(
    svc: &Services,
    existing: RequestRecord,
    new: &NewRequest,
    now: DateTime<Utc>,
) -> Result<Reply, RequestError> {
    let same = existing.integration == new.integration
        && existing.access == new.access
        && existing.duration_seconds == new.duration_seconds
        && existing.reason == new.reason
        && existing.ticket == new.ticket
        && new.flow.as_ref().is_none_or(|f| *f == existing.flow);
    if !same {
        return Err(RequestError::Conflict(format!("client token {:?} was used for request {} with other details; use a new token for a new request", new.client_token, existing.request_id)));
    }
    let mut record = expire_if_due(svc, existing, now).await?;
    // An auto or break-glass request whose completion failed part-way: finished now.
    if record.mode != Mode::Approvers && record.status == RequestStatus::Pending {
        let sent = completion::complete(svc, &mut record, now).await?;
        return Ok(Reply {
            requests: vec![view_as_is(record)],
            sent,
        });
    }
    if completion::unsent(&record) {
        let sent = completion::send_claimed(svc, &mut record, now).await?;
        return Ok(Reply {
            requests: vec![view_as_is(record)],
            sent: Some(sent),
        });
    }
    Ok(Reply {
        requests: vec![view(svc, record).await?],
        sent: None,
    })
}

fn created_event(record: &RequestRecord, flow: &Flow) -> serde_json::Value {
    serde_json::json!({
        "request_id": record.request_id,
        "integration": record.integration,
        "flow": record.flow,
        "mode": record.mode,
        "requester": record.requester,
        "access": record.access,
        "duration_seconds": record.duration_seconds,
        "reason": record.reason,
        "ticket": record.ticket,
        "start_at": record.start_at,
        "expires_at": record.expires_at,
        "required": record.required,
        "approvers": flow.approval.approvers,
    })
}

async fn load(svc: &Services, request_id: &str) -> Result<RequestRecord, RequestError> {
    svc.store
        .get_request(request_id)
        .await?
        .ok_or_else(|| RequestError::Unknown(format!("request {request_id:?}")))
}

/// The flow a request was made under, and its owners where the flow names them.
async fn flow_and_owners(
    svc: &Services,
    record: &RequestRecord,
) -> Result<(std::sync::Arc<Flow>, BTreeSet<String>), RequestError> {
    flow_and_owners_in(svc, record, &flows_of(svc, &record.integration).await?).await
}

/// [`flow_and_owners`] among flows already read.
async fn flow_and_owners_in(
    svc: &Services,
    record: &RequestRecord,
    flows: &[std::sync::Arc<Flow>],
) -> Result<(std::sync::Arc<Flow>, BTreeSet<String>), RequestError> {
    let flow = flows
        .iter()
        .find(|f| f.name == record.flow && f.applies_to(&record.integration))
        .cloned()
        .ok_or_else(|| {
            RequestError::Conflict(format!(
                "flow {:?} of request {} is gone: ask again",
                record.flow, record.request_id
            ))
        })?;
    let owners = owners_for(svc, &flow, &record.integration).await?;
    Ok((flow, owners))
}

async fn owners_for(
    svc: &Services,
    flow: &Flow,
    integration: &str,
) -> Result<BTreeSet<String>, RequestError> {
    if !flow.approval.approvers.as_ref().is_some_and(|a| a.owners) {
        return Ok(BTreeSet::new());
    }
    let integration = svc
        .store
        .get_integration(integration)
        .await?
        .ok_or_else(|| RequestError::Unknown(format!("integration {integration:?}")))?;
    Ok(crate::aws::identity::owners(svc, &integration).await?)
}

/// The refusal for a request the caller may neither see nor act on.
fn not_yours(request_id: &str) -> RequestError {
    RequestError::Forbidden(format!(
        "request {request_id} is neither yours nor one you may approve"
    ))
}

/// Whether `me` may approve (or deny) under `flow`.
fn may_approve(flow: &Flow, me: &Me<'_>, owners: &BTreeSet<String>) -> bool {
    flow.approval
        .approvers
        .as_ref()
        .is_some_and(|a| a.includes(&me.person, owners))
}

async fn approve(
    svc: &Services,
    me: &Me<'_>,
    request_id: &str,
    client_token: Option<String>,
    now: DateTime<Utc>,
) -> Result<Reply, RequestError> {
    // A token is the caller's own: another person's retry is another approval.
    let token = client_token.map(|t| format!("approve:{}:{t}", me.caller.id().to_lowercase()));
    for _ in 0..TRIES {
        // The request and the flows at once: an approval's way to the bus is its read, its claim,
        // its MAC and its PutEvents.
        let (record, flows) = tokio::join!(load(svc, request_id), svc.store.list_flows(None));
        let (record, flows) = (record?, flows?);
        if me.is(&record.requester) {
            return Err(RequestError::Forbidden(format!(
                "you asked for request {request_id}: an approval must come from someone else"
            )));
        }
        // Who may approve is asked before anything about the request is told.
        let (flow, owners) = flow_and_owners_in(svc, &record, &flows)
            .await
            .map_err(|_| not_yours(request_id))?;
        if !may_approve(&flow, me, &owners) {
            return Err(RequestError::Forbidden(format!(
                "you are not one of the approvers of flow {:?} of request {request_id}",
                flow.name
            )));
        }
        let mut record = expire_if_due(svc, record, now).await?;
        if token.as_ref().is_some_and(|t| record.tokens.contains(t)) {
            return Ok(Reply {
                requests: vec![view(svc, record).await?],
                sent: None,
            });
        }
        if completion::unsent(&record) {
            // Approved, and its approval claimed but not seen on the bus: send it again.
            let sent = completion::send_claimed(svc, &mut record, now).await?;
            return Ok(Reply {
                requests: vec![view_as_is(record)],
                sent: Some(sent),
            });
        }
        if record.status != RequestStatus::Pending {
            return Err(RequestError::Conflict(format!(
                "request {request_id} is {}: it can no longer be approved",
                record.status
            )));
        }
        let already = record.approvals.iter().any(|d| {
            Person::named(&[d.by.as_str(), d.arn.as_str()]).is_ok_and(|p| p.same_as(&me.person))
        });
        if already {
            // The same person again, under this or another of their names: counted once.
            return Ok(Reply {
                requests: vec![view(svc, record).await?],
                sent: None,
            });
        }
        record.approvals.push(me.decision(now, None));
        record.tokens.extend(token.clone());
        record.updated_at = now;
        let complete = record.approvals.len() >= record.required as usize;
        let detail = Some(format!("{} of {}", record.approvals.len(), record.required));
        if complete {
            // Recorded (conditionally) before it is sent: a cancellation or another approval
            // that won the race makes this one read again, and nothing is sent twice for it.
            match completion::complete(svc, &mut record, now).await {
                Ok(sent) => {
                    audit(svc, &record, "request_approved", now, me.caller, detail).await?;
                    // Just sent: its grant is on its way, not looked up.
                    return Ok(Reply {
                        requests: vec![view_as_is(record)],
                        sent,
                    });
                }
                Err(RequestError::Store(StoreError::Conflict { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
        match svc.store.update_request(&mut record).await {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
        audit(svc, &record, "request_approved", now, me.caller, detail).await?;
        return Ok(Reply {
            requests: vec![view_as_is(record)],
            sent: None,
        });
    }
    Err(RequestError::Conflict(format!(
        "request {request_id} kept changing; try again"
    )))
}

enum Close {
    Deny(String),
    Cancel,
}

async fn close(
    svc: &Services,
    me: &Me<'_>,
    request_id: &str,
    how: Close,
    client_token: Option<String>,
    now: DateTime<Utc>,
) -> Result<Reply, RequestError> {
    let (verb, status) = match how {
        Close::Deny(_) => ("deny", RequestStatus::Denied),
        Close::Cancel => ("cancel", RequestStatus::Cancelled),
    };
    let token = client_token.map(|t| format!("{verb}:{}:{t}", me.caller.id().to_lowercase()));
    for _ in 0..TRIES {
        let record = load(svc, request_id).await?;
        // Who may act is asked before anything about the request is told.
        match &how {
            Close::Deny(_) => {
                if me.is(&record.requester) {
                    return Err(RequestError::Forbidden(format!(
                        "you asked for request {request_id}: cancel it instead"
                    )));
                }
                let (flow, owners) = flow_and_owners(svc, &record)
                    .await
                    .map_err(|_| not_yours(request_id))?;
                if !may_approve(&flow, me, &owners) {
                    return Err(RequestError::Forbidden(format!(
                        "you are not one of the approvers of flow {:?} of request {request_id}",
                        flow.name
                    )));
                }
            }
            Close::Cancel if !me.is(&record.requester) => {
                return Err(RequestError::Forbidden(format!(
                    "only the requester cancels request {request_id}"
                )))
            }
            Close::Cancel => {}
        }
        let mut record = expire_if_due(svc, record, now).await?;
        if token.as_ref().is_some_and(|t| record.tokens.contains(t)) || record.status == status {
            return Ok(Reply {
                requests: vec![view(svc, record).await?],
                sent: None,
            });
        }
        let reason = match &how {
            Close::Deny(reason) => {
                if record.status != RequestStatus::Pending {
                    return Err(RequestError::Conflict(format!(
                        "request {request_id} is {}: it can no longer be denied",
                        record.status
                    )));
                }
                Some(reason.clone())
            }
            Close::Cancel => {
                // Pending, or approved to start later and not yet claimed for the bus.
                let waiting = record.status == RequestStatus::Approved && record.sent_at.is_none();
                if record.status != RequestStatus::Pending && !waiting {
                    return Err(RequestError::Conflict(format!(
                        "request {request_id} is {}: revoke its grant instead",
                        record.status
                    )));
                }
                None
            }
        };
        record.closed_by = Some(me.decision(now, reason.clone()));
        record.tokens.extend(token.clone());
        record.set_status(status, now);
        match svc.store.update_request(&mut record).await {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
        if status == RequestStatus::Cancelled && record.start_at.is_some() {
            completion::unschedule(svc, &record).await?;
        }
        audit(
            svc,
            &record,
            if status == RequestStatus::Denied {
                "request_denied"
            } else {
                "request_cancelled"
            },
            now,
            me.caller,
            reason.clone(),
        )
        .await?;
        let detail_type = if status == RequestStatus::Denied {
            crate::contract::events::REQUEST_DENIED
        } else {
            crate::contract::events::REQUEST_CANCELLED
        };
        let detail = serde_json::json!({"request_id": record.request_id, "integration": record.integration, "flow": record.flow, "requester": record.requester, "by": me.caller.id(), "reason": reason});
        crate::control::grants::emit(
            svc,
            detail_type,
            detail,
            &record.request_id,
            &record.integration,
        )
        .await;
        return Ok(Reply {
            requests: vec![view(svc, record).await?],
            sent: None,
        });
    }
    Err(RequestError::Conflict(format!(
        "request {request_id} kept changing; try again"
    )))
}

async fn get(
    svc: &Services,
    me: &Me<'_>,
    request_id: &str,
    now: DateTime<Utc>,
) -> Result<Reply, RequestError> {
    let record = expire_if_due(svc, load(svc, request_id).await?, now).await?;
    if !me.is(&record.requester) {
        let (flow, owners) = flow_and_owners(svc, &record)
            .await
            .map_err(|_| not_yours(request_id))?;
        if !may_approve(&flow, me, &owners) {
            return Err(not_yours(request_id));
        }
    }
    Ok(Reply {
        requests: vec![view(svc, record).await?],
        sent: None,
    })
}

async fn list(
    svc: &Services,
    me: &Me<'_>,
    filter: ListFilter,
    now: DateTime<Utc>,
) -> Result<Reply, RequestError> {
    let mut out = Vec::new();
    match filter {
        ListFilter::Mine => {
            for record in svc
                .store
                .requests_of(&me.caller.id().to_lowercase())
                .await?
            {
                out.push(view(svc, expire_if_due(svc, record, now).await?).await?);
            }
        }
        ListFilter::ToApprove => {
            let flows = svc.store.list_flows(None).await?;
            let mut owners: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
            for record in svc.store.requests_in(RequestStatus::Pending, None).await? {
                if record.expires_at <= now || me.is(&record.requester) {
                    continue;
                }
                let Some(flow) = flows
                    .iter()
                    .find(|f| f.name == record.flow && f.applies_to(&record.integration))
                else {
                    continue;
                };
                let key = (flow.name.clone(), record.integration.clone());
                if !owners.contains_key(&key) {
                    owners.insert(
                        key.clone(),
                        owners_for(svc, flow, &record.integration).await?,
                    );
                }
                let mine = record.approvals.iter().any(|d| {
                    Person::named(&[d.by.as_str(), d.arn.as_str()])
                        .is_ok_and(|p| p.same_as(&me.person))
                });
                if !mine && owners.get(&key).is_some_and(|o| may_approve(flow, me, o)) {
                    out.push(view(svc, record).await?);
                }
            }
        }
    }
    Ok(Reply {
        requests: out,
        sent: None,
    })
}

/// A pending request past its time is expired (written once, with its event), whoever looks.
async fn expire_if_due(
    svc: &Services,
    record: RequestRecord,
    now: DateTime<Utc>,
) -> Result<RequestRecord, RequestError> {
    if record.status != RequestStatus::Pending || record.expires_at > now {
        return Ok(record);
    }
    completion::expire(svc, record, now, None).await
}

/// The request's view, with its grant once the grant function made it (a request approved
/// and granted reads `granted`; refused or failed, `failed`).
async fn view(svc: &Services, record: RequestRecord) -> Result<RequestView, RequestError> {
    let grant = match record.status == RequestStatus::Approved && record.sent_at.is_some() {
        true => svc.store.get_grant(&record.request_id).await?,
        false => None,
    };
    let mut view = view_as_is(record);
    if let Some(g) = grant {
        use crate::aws::store::GrantStatus;
        match g.status {
            GrantStatus::Failed => {
                view.status = RequestStatus::Failed;
                view.failure = g.failure.clone();
            }
            GrantStatus::Granting => {}
            _ => view.status = RequestStatus::Granted,
        }
        view.grant = Some(grant_view(svc, g).await?);
    }
    Ok(view)
}

/// A grant as its requester sees it (what `pgjit connect` needs, never a secret value).
pub async fn grant_view(
    svc: &Services,
    g: crate::aws::store::GrantRecord,
) -> Result<GrantView, RequestError> {
    let integration = svc.store.get_integration(&g.integration).await?;
    let (roots, ca_pem) = client_roots(integration.as_ref());
    let mut databases: Vec<String> = Vec::new();
    for entry in &g.access {
        if !databases.contains(&entry.database) {
            databases.push(entry.database.clone());
        }
    }
    Ok(GrantView {
        status: g.status,
        db_user: g.db_user,
        expires_at: g.expires_at,
        secret_arn: g.secret_arn,
        access_mode: g.access_mode,
        host: g.host,
        port: g.port,
        databases,
        region: integration
            .as_ref()
            .and_then(|i| i.region.clone())
            .or_else(|| svc.region()),
        access_role_arn: g.iam_policy.and_then(|p| p.role_arn),
        roots,
        ca_pem,
    })
}

/// The roots a client should trust for an integration's server: its own `ca_bundle` (PEM text,
/// or the file it names, read here), the public roots where it says `system`, else Amazon's RDS
/// CAs for RDS and Aurora.
fn client_roots(
    integration: Option<&crate::contract::integration::Integration>,
) -> (&'static str, Option<String>) {
    let Some(integration) = integration else {
        return ("none", None);
    };
    match integration.ca_bundle.as_deref() {
        Some(b) if b.trim() == crate::engine::postgres::tls::SYSTEM_ROOTS => ("system", None),
        Some(b) if b.trim_start().starts_with("-----BEGIN") => ("pem", Some(b.to_owned())),
        // Only certificates leave the function: a path that names anything else is not shown.
        Some(path) => match std::fs::read_to_string(path) {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") && !pem.contains("PRIVATE KEY") => ("pem", Some(pem)),
            _ => ("none", None),
        },
        None if integration.kind.has_rds_certificates() => ("rds", None),
        None => ("none", None),
    }
}

/// The request as recorded, its grant not looked up.
fn view_as_is(record: RequestRecord) -> RequestView {
    RequestView {
        request_id: record.request_id,
        status: record.status,
        integration: record.integration,
        flow: record.flow,
        mode: record.mode,
        requester: record.requester.id,
        access: record.access,
        duration_seconds: record.duration_seconds,
        reason: record.reason,
        ticket: record.ticket,
        start_at: record.start_at,
        created_at: record.created_at,
        expires_at: record.expires_at,
        required: record.required,
        approvals: record.approvals,
        closed_by: record.closed_by,
        failure: record.failure,
        grant: None,
    }
}

/// An entry of the audit trail for a request's own history (before any grant).
pub(crate) async fn audit(
    svc: &Services,
    record: &RequestRecord,
    event: &str,
    at: DateTime<Utc>,
    by: &Caller,
    detail: Option<String>,
) -> Result<(), RequestError> {
    let entry = AuditEntry {
        request_id: record.request_id.clone(),
        // Ahead of the grant's own entries within a millisecond ("0" sorts before them).
        at_event: format!(
            "{}#0#{event}#{}",
            crate::aws::store::due_key(at),
            record.version
        ),
        at,
        event: event.to_owned(),
        integration: record.integration.clone(),
        requester: record.requester.id.clone(),
        approver: by.id(),
        db_user: String::new(),
        access: record.access.clone(),
        detail,
        flow: Some(record.flow.clone()),
    };
    Ok(svc.store.append_audit(&entry).await?)
}
