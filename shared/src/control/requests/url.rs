//! The `requests` function's two doors: its Function URL, and the one-shot schedule that starts
//! an approved request (`{"start": REQUEST_ID}`).
//!
//! A URL call is `{"body": "<the action, as JSON text>", "proof": {…}}`: the caller is who STS
//! says signed the proof for exactly that body ([`crate::aws::caller_proof`]), and who IAM
//! put in the URL request's context (AuthType AWS_IAM) must be the same; a field of the body
//! never names anyone. The proof is what a direct invocation of the function, which writes the
//! whole request context itself, cannot make for someone else.

use aws_lambda_events::event::lambda_function_urls::{LambdaFunctionUrlRequest, LambdaFunctionUrlResponse};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::RequestError;
use crate::aws::Services;
use crate::contract::requests::Caller;

/// Largest body taken: a request's access list is small.
pub const MAX_BODY: usize = 64 * 1024;

fn respond(status: u16, body: Value) -> LambdaFunctionUrlResponse {
    crate::control::webhook::respond(i64::from(status), body)
}

fn refuse(e: &RequestError) -> LambdaFunctionUrlResponse {
    // AWS and store failures are logged with their cause; the caller learns only that it failed.
    let message = match e.status() {
        503 => "pgjit could not finish this call; try again".to_owned(),
        _ => e.to_string(),
    };
    respond(e.status(), json!({"error": message}))
}

/// Who IAM says called the URL; `None` without an IAM context (a URL not set to AWS_IAM).
pub fn caller_of(request: &LambdaFunctionUrlRequest) -> Option<Caller> {
    let iam = request.request_context.authorizer.as_ref()?.iam.as_ref()?;
    Some(Caller { arn: iam.user_arn.clone()?, user_id: iam.user_id.clone()?, account: iam.account_id.clone()? })
}

/// What a URL call carries: the action's JSON text and the caller's proof for it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Call {
    body: String,
    #[serde(default)]
    proof: Option<crate::aws::caller_proof::Proof>,
}

/// Handles one call to the Function URL.
pub async fn handle(svc: &Services, request: LambdaFunctionUrlRequest, now: DateTime<Utc>) -> LambdaFunctionUrlResponse {
    let Some(signed) = caller_of(&request) else {
        tracing::warn!("front door called without an IAM identity");
        return respond(403, json!({"error": "the front door takes SigV4-signed calls only (Function URL AuthType AWS_IAM)"}));
    };
    if request.request_context.http.method.as_deref().is_some_and(|m| m != "POST") {
        return respond(405, json!({"error": "POST a JSON body with an action"}));
    }
    let raw = request.body.unwrap_or_default();
    let body = if request.is_base64_encoded {
        match base64::engine::general_purpose::STANDARD.decode(raw.as_bytes()).ok().and_then(|b| String::from_utf8(b).ok()) {
            Some(text) => text,
            None => return respond(400, json!({"error": "the body is not base64 of UTF-8 text"})),
        }
    } else {
        raw
    };
    if body.len() > MAX_BODY {
        return respond(413, json!({"error": format!("the body is larger than {MAX_BODY} bytes")}));
    }
    let call: Call = match serde_json::from_str(&body) {
        Ok(c) => c,
        Err(e) => return respond(400, json!({"error": format!("the call is {{\"body\": …, \"proof\": …}}: {e}")})),
    };
    let caller = match (&call.proof, svc.region()) {
        (None, _) => return respond(401, json!({"error": crate::aws::caller_proof::ProofError::Missing.to_string()})),
        (Some(_), None) => return respond(500, json!({"error": "the function knows no region"})),
        (Some(proof), Some(region)) => match crate::aws::caller_proof::verify(&svc.sdk_config, &region, proof, &call.body, now).await {
            Ok(caller) => caller,
            Err(crate::aws::caller_proof::ProofError::Aws(e)) => {
                tracing::error!(error = %crate::engine::postgres::error_chain(&e), "the proof of who calls could not be checked");
                return respond(503, json!({"error": "pgjit could not check who calls; try again"}));
            }
            Err(e) => {
                tracing::warn!(signed = %signed.arn, error = %e, "front door: proof refused");
                return respond(401, json!({"error": e.to_string()}));
            }
        },
    };
    if caller.arn != signed.arn || caller.account != signed.account {
        tracing::warn!(signed = %signed.arn, proved = %caller.arn, "front door: the URL's caller and the proof's differ");
        return respond(403, json!({"error": "the call's signer and its proof name different callers"}));
    }
    let body = call.body;
    let action = match crate::contract::requests::parse_action(&body, now) {
        Ok(a) => a,
        Err(e) => return respond(400, json!({"error": e.to_string()})),
    };
    let created = matches!(action, crate::contract::requests::Action::Create(_));
    match super::handle(svc, &caller, action, now).await {
        Ok(reply) => respond(if created { 201 } else { 200 }, json!({"requests": reply.requests})),
        Err(e) => refuse(&e),
    }
}

/// The function's entry: a Function URL request, a start schedule's input, or its sweep's
/// (`{"sweep": "requests"}`: only due work, whoever sends it).
pub async fn invoke(svc: &Services, payload: Value, now: DateTime<Utc>) -> Result<Value, RequestError> {
    if payload.get("sweep").is_some() {
        let (expired, errors) = super::completion::sweep(svc, now).await;
        for e in &errors {
            tracing::error!(error = %e, "front-door sweep");
        }
        return Ok(json!({"expired": expired, "errors": errors}));
    }
    if let Some(request_id) = payload.get("start").and_then(Value::as_str) {
        let sent = super::completion::start(svc, request_id, now).await?;
        return Ok(json!({"request_id": request_id, "sent": sent.is_some()}));
    }
    let request: LambdaFunctionUrlRequest = serde_json::from_value(payload)
        .map_err(|e| RequestError::Input(crate::contract::events::EventError { field: "(event)".into(), message: format!("neither a Function URL request nor a start: {e}") }))?;
    let response = handle(svc, request, now).await;
    serde_json::to_value(response).map_err(|e| RequestError::Input(crate::contract::events::EventError { field: "(response)".into(), message: e.to_string() }))
}
