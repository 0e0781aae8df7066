//! The signed webhook: an approval's `detail` POSTed to a Lambda Function URL, with
//! `X-Pgjit-Timestamp` and `X-Pgjit-Signature: sha256=<hex HMAC-SHA256 of "timestamp.body">`.
//! A missing, malformed, stale or wrong signature gets 401 and changes nothing; a bad body 400.
//!
//! The webhook holds no database, IAM or broad secret rights: it verifies, checks the body, and
//! forwards the approval as an event to the approval bus, where the grant function takes it
//! under the same checks as any approval. A bug in this internet-facing function can at most
//! send approvals, never grant. Error bodies never carry internal error chains.

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use aws_lambda_events::http;
use aws_lambda_events::event::lambda_function_urls::{LambdaFunctionUrlRequest, LambdaFunctionUrlResponse};
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::Mutex;

use crate::aws::Services;
use crate::engine::postgres::error_chain;
use crate::secret::SecretString;

pub const TIMESTAMP_HEADER: &str = "x-pgjit-timestamp";
pub const SIGNATURE_HEADER: &str = "x-pgjit-signature";
/// How far the timestamp may be from now, either way.
pub const WINDOW_SECONDS: i64 = 300;
/// Largest body accepted (an approval is a few KB).
pub const MAX_BODY: usize = 256 * 1024;

/// Why a request was not let in. The messages say what was wrong, never what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("malformed {0} header")]
    Malformed(&'static str),
    #[error("timestamp outside the {WINDOW_SECONDS}-second window")]
    Stale,
    #[error("signature does not match")]
    Wrong,
}

/// The `sha256=<hex>` signature of `body` sent at `timestamp`: what a sender computes.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: this cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

/// Checks the headers against the body; the comparison takes the same time whatever matches.
pub fn verify(secret: &[u8], timestamp: Option<&str>, signature: Option<&str>, body: &[u8], now: DateTime<Utc>) -> Result<(), Rejection> {
    let timestamp = timestamp.ok_or(Rejection::Missing("X-Pgjit-Timestamp"))?;
    let signature = signature.ok_or(Rejection::Missing("X-Pgjit-Signature"))?;
    let seconds: i64 = timestamp.trim().parse().map_err(|_| Rejection::Malformed("X-Pgjit-Timestamp"))?;
    let hex_part = signature.trim().strip_prefix("sha256=").ok_or(Rejection::Malformed("X-Pgjit-Signature"))?;
    let given = hex::decode(hex_part).map_err(|_| Rejection::Malformed("X-Pgjit-Signature"))?;
    if given.len() != 32 {
        return Err(Rejection::Malformed("X-Pgjit-Signature"));
    }
    if (now.timestamp() - seconds).abs() > WINDOW_SECONDS {
        return Err(Rejection::Stale);
    }
    let mut mac = mac(secret);
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).map_err(|_| Rejection::Wrong)
}

/// The webhook's shared secret, read from Secrets Manager and kept for five minutes, so a
/// rotated secret is picked up without a cold start.
#[derive(Clone, Default)]
pub struct SecretCache(Arc<Mutex<Option<(SecretString, Instant)>>>);

impl SecretCache {
    async fn get(&self, svc: &Services) -> Result<SecretString, String> {
        let mut slot = self.0.lock().await;
        if let Some((secret, at)) = slot.as_ref() {
            if at.elapsed() < StdDuration::from_secs(300) {
                return Ok(secret.clone());
            }
        }
        let id = svc.config.webhook_secret_id.as_deref().ok_or("PGJIT_WEBHOOK_SECRET_ID is not set")?;
        let secret = crate::aws::credentials::read(svc, id).await.map_err(|e| error_chain(&e))?;
        *slot = Some((secret.clone(), Instant::now()));
        Ok(secret)
    }
}

/// A JSON response of a Function URL (the webhook's and the front door's).
pub(crate) fn respond(status: i64, body: Value) -> LambdaFunctionUrlResponse {
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    let mut response = LambdaFunctionUrlResponse::default();
    response.status_code = status;
    response.headers = headers;
    response.body = Some(body.to_string());
    response
}

/// Handles one Function URL request.
pub async fn handle(svc: &Services, secrets: &SecretCache, request: LambdaFunctionUrlRequest, now: DateTime<Utc>) -> LambdaFunctionUrlResponse {
    let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
    let raw = request.body.clone().unwrap_or_default();
    let body = if request.is_base64_encoded {
        match base64::engine::general_purpose::STANDARD.decode(raw.as_bytes()) {
            Ok(b) => b,
            Err(_) => return respond(400, json!({"error": "body is not valid base64"})),
        }
    } else {
        raw.into_bytes()
    };
    if body.len() > MAX_BODY {
        return respond(413, json!({"error": format!("body larger than {MAX_BODY} bytes")}));
    }
    let secret = match secrets.get(svc).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "webhook secret unavailable");
            return respond(500, json!({"error": "internal error"}));
        }
    };
    if let Err(rejection) = verify(secret.expose().as_bytes(), header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER), &body, now) {
        tracing::warn!(reason = %rejection, "webhook request rejected");
        return respond(401, json!({"error": rejection.to_string()}));
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return respond(400, json!({"error": "body is not JSON"})),
    };
    // A body with an EventBridge envelope is refused: the bus sets the envelope, not the sender.
    if value.get("detail-type").is_some() {
        return respond(400, json!({"error": "send the approval's detail, not an EventBridge event"}));
    }
    // An approval, or an extension of an active grant: checked here, and again by the grant
    // function that receives it from the bus.
    let mut value = value;
    let (request_id, detail_type) = if crate::contract::events::is_extension(&value) {
        if value.get("signed_at").is_some() {
            return respond(400, json!({"error": "signed_at is set by the webhook, not the sender"}));
        }
        // The signed request's timestamp goes with it: the same request replayed within the
        // signature's window is the same extension, applied once.
        value["signed_at"] = json!(header(TIMESTAMP_HEADER).and_then(|t| t.parse::<i64>().ok()));
        match crate::contract::events::parse_extension(value.clone()) {
            Ok(e) => (e.request_id, crate::contract::events::EXTENSION_APPROVED),
            Err(e) => return respond(400, json!({"error": e.to_string()})),
        }
    } else {
        match crate::contract::events::parse_approval(value.clone()) {
            Ok(a) => (a.request_id, crate::contract::events::APPROVED),
            Err(e) => return respond(400, json!({"error": e.to_string()})),
        }
    };
    match forward(svc, value, detail_type, now).await {
        Ok(event_id) => {
            tracing::info!(request_id = %request_id, detail_type, event_id = %event_id, "forwarded to the approval bus");
            respond(202, json!({"request_id": request_id, "forwarded": true, "event_id": event_id}))
        }
        Err(e) => {
            // The cause goes to the log only: the caller learns that it failed, not how.
            tracing::error!(request_id = %request_id, error = %e, "forwarding to the approval bus failed");
            respond(502, json!({"error": "the approval could not be forwarded; send it again"}))
        }
    }
}

/// Puts the approval (or extension) on the approval bus (the webhook is an approval sender:
/// the signature it verified is the approval tool's proof); returns the event's id.
async fn forward(svc: &Services, detail: Value, detail_type: &str, now: DateTime<Utc>) -> Result<String, String> {
    let event = crate::aws::approval_mac::signed_event(svc, detail, detail_type, now).await.map_err(|e| error_chain(&e))?;
    crate::aws::approval_mac::put_on_bus(svc, &event).await.map_err(|e| error_chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_every_fault_is_named() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let ts = "1800000000";
        let body = br#"{"request_id":"R1"}"#;
        let sig = sign(b"s3cret", ts, body);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert_eq!(verify(b"s3cret", Some(ts), Some(&sig), body, now), Ok(()));
        assert_eq!(verify(b"other", Some(ts), Some(&sig), body, now), Err(Rejection::Wrong));
        assert_eq!(verify(b"s3cret", Some(ts), Some(&sig), br#"{"request_id":"R2"}"#, now), Err(Rejection::Wrong));
        assert_eq!(verify(b"s3cret", None, Some(&sig), body, now), Err(Rejection::Missing("X-Pgjit-Timestamp")));
        assert_eq!(verify(b"s3cret", Some(ts), None, body, now), Err(Rejection::Missing("X-Pgjit-Signature")));
        assert_eq!(verify(b"s3cret", Some("soon"), Some(&sig), body, now), Err(Rejection::Malformed("X-Pgjit-Timestamp")));
        assert_eq!(verify(b"s3cret", Some(ts), Some("md5=abc"), body, now), Err(Rejection::Malformed("X-Pgjit-Signature")));
        assert_eq!(verify(b"s3cret", Some(ts), Some("sha256=zz"), body, now), Err(Rejection::Malformed("X-Pgjit-Signature")));
        assert_eq!(verify(b"s3cret", Some(ts), Some(&sig[..20]), body, now), Err(Rejection::Malformed("X-Pgjit-Signature")));
        let late = now + chrono::Duration::seconds(WINDOW_SECONDS + 1);
        assert_eq!(verify(b"s3cret", Some(ts), Some(&sig), body, late), Err(Rejection::Stale));
        let early = now - chrono::Duration::seconds(WINDOW_SECONDS + 1);
        assert_eq!(verify(b"s3cret", Some(ts), Some(&sig), body, early), Err(Rejection::Stale));
        // The signature covers the timestamp: replaying the body with a fresh time fails.
        assert_eq!(verify(b"s3cret", Some("1800000100"), Some(&sig), body, now), Err(Rejection::Wrong));
    }
}
