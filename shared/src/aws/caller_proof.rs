//! Who calls the front door, proved by the caller's own signature. The Function URL's IAM
//! context names the caller, but whoever may invoke the function directly writes that context
//! too; so each call carries a proof: an STS `GetCallerIdentity` request the caller signed
//! (SigV4, in headers) with a header that binds it to the exact body of the call. The function
//! sends it to STS, and the identity STS answers with is the caller. Nobody can make one for
//! someone else, or reuse one for another body; one older than five minutes is refused
//! (Vault's `aws` auth method works the same way).
//!
//! The signed request: `POST https://sts.<region>.amazonaws.com/` (the SDK's endpoint where
//! one is configured, as for an emulator), body `Action=GetCallerIdentity&Version=2011-06-15`,
//! signed headers `host`, `content-type`, `x-amz-date`, `x-pgjit-request` (hex SHA-256 of
//! the call's body) and `x-amz-security-token` for temporary credentials.

use aws_config::SdkConfig;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::aws::AwsError;
use crate::contract::requests::Caller;

const STS_BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";
const BINDING_HEADER: &str = "x-pgjit-request";
/// How old a proof may be (STS itself takes signatures up to 15 minutes old).
const MAX_AGE_SECONDS: i64 = 300;

/// The signed headers of the caller's `GetCallerIdentity` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    pub authorization: String,
    pub amz_date: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("the call carries no proof of who makes it: use pgjit's CLI (it signs an STS GetCallerIdentity request bound to the call)")]
    Missing,
    #[error("the proof of who calls is not usable: {0}")]
    Malformed(String),
    #[error("the proof of who calls is {0} s old; at most {MAX_AGE_SECONDS} s are taken")]
    Stale(i64),
    #[error("STS did not accept the proof of who calls (HTTP {0}): it was not signed for this call")]
    Refused(u16),
    #[error(transparent)]
    Aws(#[from] AwsError),
}

/// Where the proof's request goes: the SDK's endpoint (an emulator) or STS in `region`.
fn sts_endpoint(sdk: &SdkConfig, region: &str) -> Result<(String, String), AwsError> {
    let url = match sdk.endpoint_url() {
        Some(url) => format!("{}/", url.trim_end_matches('/')),
        None => format!("https://sts.{region}.amazonaws.com/"),
    };
    let uri: http::Uri = url.parse().map_err(|_| AwsError::msg("sts:GetCallerIdentity", format!("{url:?} is not a URL")))?;
    let host = match (uri.host(), uri.port_u16()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => return Err(AwsError::msg("sts:GetCallerIdentity", format!("{url:?} has no host"))),
    };
    Ok((url, host))
}

fn binding(body: &str) -> String {
    hex::encode(Sha256::digest(body.as_bytes()))
}

/// Signs the proof for a call whose body is `body`, with the SDK's credentials (the caller's
/// own), for the front door in `region`.
pub async fn make(sdk: &SdkConfig, region: &str, body: &str, now: std::time::SystemTime) -> Result<Proof, AwsError> {
    use aws_credential_types::provider::ProvideCredentials;
    let op = "sts:GetCallerIdentity";
    let provider = sdk.credentials_provider().ok_or_else(|| AwsError::msg(op, "no AWS credentials: sign in (aws sso login) or set AWS_PROFILE"))?;
    let credentials = provider.provide_credentials().await.map_err(|e| AwsError::msg(op, format!("your AWS credentials: {e}")))?;
    let security_token = credentials.session_token().map(str::to_owned);
    let identity: aws_smithy_runtime_api::client::identity::Identity = credentials.into();
    let (url, host) = sts_endpoint(sdk, region)?;
    let mut headers = vec![("host".to_owned(), host), ("content-type".to_owned(), CONTENT_TYPE.to_owned()), (BINDING_HEADER.to_owned(), binding(body))];
    let params: aws_sigv4::http_request::SigningParams = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(aws_sigv4::http_request::SigningSettings::default())
        .build()
        .map_err(|e| AwsError::msg(op, e.to_string()))?
        .into();
    let signable = aws_sigv4::http_request::SignableRequest::new("POST", &url, headers.iter().map(|(k, v)| (k.as_str(), v.as_str())), aws_sigv4::http_request::SignableBody::Bytes(STS_BODY.as_bytes()))
        .map_err(|e| AwsError::msg(op, e.to_string()))?;
    let (instructions, _) = aws_sigv4::http_request::sign(signable, &params).map_err(|e| AwsError::msg(op, e.to_string()))?.into_parts();
    let (added, _) = instructions.into_parts();
    for header in added {
        headers.push((header.name().to_ascii_lowercase(), header.value().to_owned()));
    }
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    Ok(Proof {
        authorization: get("authorization").ok_or_else(|| AwsError::msg(op, "the signer made no authorization header"))?,
        amz_date: get("x-amz-date").ok_or_else(|| AwsError::msg(op, "the signer made no date"))?,
        security_token,
    })
}

/// Sends the proof to STS for a call whose body is `body`; the caller STS names.
pub async fn verify(sdk: &SdkConfig, region: &str, proof: &Proof, body: &str, now: DateTime<Utc>) -> Result<Caller, ProofError> {
    let signed_at = chrono::NaiveDateTime::parse_from_str(&proof.amz_date, "%Y%m%dT%H%M%SZ").map_err(|_| ProofError::Malformed("amz_date is not yyyymmddThhmmssZ".into()))?.and_utc();
    let age = (now - signed_at).num_seconds();
    if age.abs() > MAX_AGE_SECONDS {
        return Err(ProofError::Stale(age));
    }
    for (name, value) in [("authorization", Some(&proof.authorization)), ("security_token", proof.security_token.as_ref())] {
        if value.is_some_and(|v| v.len() > 4096 || v.contains(['\r', '\n'])) {
            return Err(ProofError::Malformed(format!("{name} is not a header value")));
        }
    }
    if !proof.authorization.starts_with("AWS4-HMAC-SHA256 Credential=") || !proof.authorization.contains("/sts/aws4_request") {
        return Err(ProofError::Malformed("authorization is not a SigV4 signature for STS".into()));
    }
    let (url, host) = sts_endpoint(sdk, region)?;
    let mut headers = vec![
        ("host", host),
        ("content-type", CONTENT_TYPE.to_owned()),
        (BINDING_HEADER, binding(body)),
        ("x-amz-date", proof.amz_date.clone()),
        ("authorization", proof.authorization.clone()),
    ];
    if let Some(token) = &proof.security_token {
        headers.push(("x-amz-security-token", token.clone()));
    }
    let (status, answer) = post(&url, &headers, STS_BODY.as_bytes().to_vec(), sdk.endpoint_url().is_some()).await.map_err(|e| AwsError::msg("sts:GetCallerIdentity", e))?;
    if status != 200 {
        return Err(ProofError::Refused(status));
    }
    let text = String::from_utf8_lossy(&answer);
    let field = |name: &str| -> Result<String, ProofError> {
        let open = format!("<{name}>");
        let start = text.find(&open).ok_or_else(|| ProofError::Malformed(format!("STS's answer has no {name}")))? + open.len();
        let end = text[start..].find("</").ok_or_else(|| ProofError::Malformed(format!("STS's answer has no end of {name}")))?;
        Ok(text[start..start + end].trim().to_owned())
    };
    Ok(Caller { arn: field("Arn")?, user_id: field("UserId")?, account: field("Account")? })
}

/// One HTTP POST over rustls (ring) with the system's roots; plain HTTP only where the SDK
/// itself is pointed at an emulator. Returns the status and body.
pub async fn post(url: &str, headers: &[(&str, String)], body: Vec<u8>, allow_http: bool) -> Result<(u16, Vec<u8>), String> {
    let mut request = http::Request::builder().method("POST").uri(url);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request.body(http_body_util::Full::new(bytes::Bytes::from(body))).map_err(|e| e.to_string())?;
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .map_err(|e| format!("the system's root certificates: {e}"))?;
    let connector = if allow_http { builder.https_or_http().enable_http1().build() } else { builder.https_only().enable_http1().build() };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let response = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(request))
        .await
        .map_err(|_| format!("{url} did not answer within 30 s"))?
        .map_err(|e| format!("cannot reach {url}: {}", crate::engine::postgres::error_chain(&e)))?;
    let status = response.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(response.into_body()).await.map_err(|e| format!("reading {url}'s answer: {e}"))?.to_bytes();
    Ok((status, bytes.to_vec()))
}
