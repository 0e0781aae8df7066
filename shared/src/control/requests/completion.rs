//! A complete request becomes an ordinary approval: signed with the approvals key, listing its
//! approvers, put on the approval bus now or by a one-shot schedule at its start (checked
//! again then). And what is not approved in time expires.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};

use super::RequestError;
use crate::aws::store::requests::RequestRecord;
use crate::aws::Services;
use crate::contract::flow::{self, Mode};
use crate::contract::identity::Person;
use crate::contract::requests::RequestStatus;

/// How far in the future a start must be to be scheduled rather than sent now.
const SCHEDULE_AFTER: i64 = 60;

/// Sends (or schedules) the approval of a request that has what its flow requires. The request
/// is recorded `approved` first (a conditional write: a concurrent cancellation or approval
/// makes it fail, and nothing is sent); then its approval goes on the bus; then the bus's id is
/// recorded, with the audit entry and the event, at once. Returns the approval event when it was
/// sent now, with the envelope the approval bus gives it.
pub async fn complete(svc: &Services, record: &mut RequestRecord, now: DateTime<Utc>) -> Result<Option<Value>, RequestError> {
    let later = record.start_at.filter(|s| *s > now + Duration::seconds(SCHEDULE_AFTER));
    if let Some(start) = later {
        crate::aws::schedule::create_start(svc, &record.request_id, start).await?;
        record.set_status(RequestStatus::Approved, now);
        svc.store.update_request(record).await?;
        announce_approved(svc, record).await;
        return Ok(None);
    }
    record.sent_at = Some(now);
    record.set_status(RequestStatus::Approved, now);
    // The claim and the MAC at once: the MAC is used only if the claim holds.
    let (account, detail) = (svc.account_id().await?, approval_detail(record));
    let (claimed, signed) = tokio::join!(svc.store.update_request(record), crate::aws::approval_mac::signed_event(svc, detail, crate::contract::events::APPROVED, now));
    claimed?;
    let event = put_signed(svc, record, signed?, &account).await?;
    record.event_id = event.get("id").and_then(Value::as_str).map(str::to_owned);
    match svc.store.update_request(record).await {
        Ok(()) | Err(crate::aws::store::StoreError::Conflict { .. }) => {}
        Err(e) => tracing::warn!(request_id = %record.request_id, error = %crate::engine::postgres::error_chain(&e), "the sent approval's id was not recorded; a later call sends it again"),
    }
    announce_approved(svc, record).await;
    Ok(Some(event))
}

/// Whether the request's approval was claimed for the bus but PutEvents has not been seen to
/// take it (a sender that failed or died half-way): the next call sends it again.
pub fn unsent(record: &RequestRecord) -> bool {
    record.status == RequestStatus::Approved && record.sent_at.is_some() && record.event_id.is_none()
}

/// Sends a claimed request's approval, then records the bus's id (a lost race there is
/// harmless: another sender recorded its own).
pub async fn send_claimed(svc: &Services, record: &mut RequestRecord, now: DateTime<Utc>) -> Result<Value, RequestError> {
    let event = send(svc, record, now).await?;
    record.event_id = event.get("id").and_then(Value::as_str).map(str::to_owned);
    match svc.store.update_request(record).await {
        Ok(()) | Err(crate::aws::store::StoreError::Conflict { .. }) => {}
        Err(e) => tracing::warn!(request_id = %record.request_id, error = %crate::engine::postgres::error_chain(&e), "the sent approval's id was not recorded; a later call sends it again"),
    }
    Ok(event)
}

async fn announce_approved(svc: &Services, record: &RequestRecord) {
    let detail = json!({"request_id": record.request_id, "integration": record.integration, "flow": record.flow, "mode": record.mode,
        "requester": record.requester, "approvers": record.approvals.iter().map(|d| d.by.as_str()).collect::<Vec<_>>(), "start_at": record.start_at});
    crate::control::grants::emit(svc, crate::contract::events::APPROVED, detail, &record.request_id, &record.integration).await;
}

/// The approval a complete request stands for, as an approval sender puts it on the bus.
fn approval_detail(record: &RequestRecord) -> Value {
    // By ARN: the grant function finds the same person in it (an Identity Center session names
    // its user), and a flow's principal patterns match it.
    let mut approvers = record.approvals.iter().map(|d| d.arn.clone());
    let approver = match record.mode {
        Mode::Approvers => approvers.next().unwrap_or_default(),
        Mode::Auto => "pgjit:auto-approved".to_owned(),
        Mode::BreakGlass => "pgjit:break-glass".to_owned(),
    };
    let mut detail = json!({
        "request_id": record.request_id,
        "integration": record.integration,
        "requester": record.requester,
        "approver": approver,
        "duration_seconds": record.duration_seconds,
        "access": record.access,
        "flow": record.flow,
    });
    let rest: Vec<String> = approvers.collect();
    if !rest.is_empty() {
        detail["approvers"] = json!(rest);
    }
    for (field, value) in [("reason", &record.reason), ("ticket", &record.ticket)] {
        if let Some(v) = value {
            detail[field] = json!(v);
        }
    }
    detail
}

/// Signs the approval and puts it on the approval bus; returns it as the bus delivers it.
async fn send(svc: &Services, record: &RequestRecord, now: DateTime<Utc>) -> Result<Value, RequestError> {
    // Asked first: nothing after PutEvents may fail the send.
    let account = svc.account_id().await?;
    let event = crate::aws::approval_mac::signed_event(svc, approval_detail(record), crate::contract::events::APPROVED, now).await?;
    put_signed(svc, record, event, &account).await
}

/// Puts a signed approval on the bus; returns it as the bus delivers it.
async fn put_signed(svc: &Services, record: &RequestRecord, mut event: Value, account: &str) -> Result<Value, RequestError> {
    let event_id = crate::aws::approval_mac::put_on_bus(svc, &event).await?;
    tracing::info!(request_id = %record.request_id, integration = %record.integration, flow = %record.flow, event_id = %event_id, "approval sent to the approval bus");
    for (field, value) in [("version", json!("0")), ("id", json!(event_id)), ("source", json!(svc.config.approval_source)), ("account", json!(account)), ("region", json!(svc.region())), ("resources", json!([]))] {
        event[field] = value;
    }
    Ok(event)
}

/// A start schedule fired: the request is checked again (the requester still eligible, now
/// within the flow's hours) and its approval sent; one no longer allowed expires, naming why.
/// Returns the approval event when one was sent.
pub async fn start(svc: &Services, request_id: &str, now: DateTime<Utc>) -> Result<Option<Value>, RequestError> {
    crate::contract::events::check_request_id(request_id)?;
    let mut record = svc.store.get_request(request_id).await?.ok_or_else(|| RequestError::Unknown(format!("request {request_id:?}")))?;
    if unsent(&record) {
        return Ok(Some(send_claimed(svc, &mut record, now).await?));
    }
    if record.status != RequestStatus::Approved || record.sent_at.is_some() {
        tracing::info!(request_id, status = %record.status, "start: nothing to do");
        return Ok(None);
    }
    if record.start_at.is_some_and(|s| s > now + Duration::seconds(SCHEDULE_AFTER)) {
        return Err(RequestError::Conflict(format!("request {request_id} starts at {}, not now", record.start_at.map(|s| s.to_rfc3339()).unwrap_or_default())));
    }
    let flows = svc.store.list_flows(Some(&record.integration)).await?;
    let mut requester = Person::named(&[record.requester.id.as_str(), record.requester.iam_arn.as_deref().unwrap_or("")]).map_err(RequestError::Forbidden)?;
    crate::aws::identity::resolve(svc, &mut requester, &mut Default::default()).await?;
    let request = flow::Request {
        integration: &record.integration,
        flow: Some(&record.flow),
        requester: &requester,
        access: &record.access,
        duration_seconds: record.duration_seconds,
        reason: record.reason.as_deref(),
        ticket: record.ticket.as_deref(),
        at: now,
    };
    if let Err(refusal) = flow::admitting(&flows.iter().map(|f| f.as_ref()).collect::<Vec<_>>(), &request) {
        expire(svc, record, now, Some(format!("no longer allowed at its start: {refusal}"))).await?;
        return Ok(None);
    }
    // Claimed before it is sent: a cancellation after this sees it on its way.
    record.sent_at = Some(now);
    record.set_status(RequestStatus::Approved, now);
    svc.store.update_request(&mut record).await?;
    Ok(Some(send_claimed(svc, &mut record, now).await?))
}

/// Removes a cancelled request's start schedule (gone already is fine).
pub async fn unschedule(svc: &Services, record: &RequestRecord) -> Result<(), RequestError> {
    Ok(crate::aws::schedule::delete(svc, &crate::aws::schedule::start_schedule_name(&record.request_id)).await?)
}

/// Marks a request expired, once, with its audit entry and event (a concurrent change wins:
/// the request is read again and returned as it is).
pub async fn expire(svc: &Services, mut record: RequestRecord, now: DateTime<Utc>, why: Option<String>) -> Result<RequestRecord, RequestError> {
    record.set_status(RequestStatus::Expired, now);
    record.failure = why.clone().or_else(|| Some(format!("not approved by {}", record.expires_at.to_rfc3339())));
    match svc.store.update_request(&mut record).await {
        Ok(()) => {}
        Err(crate::aws::store::StoreError::Conflict { .. }) => {
            return svc.store.get_request(&record.request_id).await?.ok_or_else(|| RequestError::Unknown(format!("request {:?}", record.request_id)));
        }
        Err(e) => return Err(e.into()),
    }
    let system = crate::contract::requests::Caller { arn: "pgjit".into(), user_id: "pgjit".into(), account: String::new() };
    super::audit(svc, &record, "request_expired", now, &system, record.failure.clone()).await?;
    let detail = json!({"request_id": record.request_id, "integration": record.integration, "flow": record.flow, "requester": record.requester, "reason": record.failure});
    crate::control::grants::emit(svc, crate::contract::events::REQUEST_EXPIRED, detail, &record.request_id, &record.integration).await;
    Ok(record)
}

/// The requests function's own sweep (a schedule every 15 minutes): expires every pending
/// request past its time, sends the
/// approvals of requests claimed but not seen on the bus for a minute (a sender that died), and
/// starts approved requests whose start schedule did not (lookups expire and send sooner).
/// Returns how many requests it expired, and what failed (tried again at the next run).
pub async fn sweep(svc: &Services, now: DateTime<Utc>) -> (usize, Vec<String>) {
    let (mut expired, mut errors) = (0, Vec::new());
    let mut note = |what: &str, e: RequestError| errors.push(format!("{what}: {}", crate::engine::postgres::error_chain(&e)));
    match svc.store.requests_in(RequestStatus::Pending, Some(now)).await {
        Ok(due) => {
            for record in due {
                let id = record.request_id.clone();
                match expire(svc, record, now, None).await {
                    Ok(_) => expired += 1,
                    Err(e) => note(&format!("expiring request {id}"), e),
                }
            }
        }
        Err(e) => note("reading pending requests", e.into()),
    }
    match svc.store.requests_in(RequestStatus::Approved, None).await {
        Ok(approved) => {
            for mut record in approved {
                let id = record.request_id.clone();
                let stale_claim = unsent(&record) && record.sent_at.is_some_and(|t| now - t > Duration::minutes(1));
                let missed_start = record.sent_at.is_none() && record.start_at.is_some_and(|s| s + Duration::minutes(5) < now);
                let result = if stale_claim {
                    send_claimed(svc, &mut record, now).await.map(|_| ())
                } else if missed_start {
                    start(svc, &id, now).await.map(|_| ())
                } else {
                    Ok(())
                };
                if let Err(e) = result {
                    note(&format!("sending request {id}"), e);
                }
            }
        }
        Err(e) => note("reading approved requests", e.into()),
    }
    (expired, errors)
}
