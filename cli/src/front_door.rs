//! `pgjit request | approve | deny | cancel | requests`: people at the front door, as
//! themselves. With `PGJIT_REQUESTS_URL` the call is signed with the caller's own AWS
//! credentials (SigV4, service `lambda`), carries their proof of identity (a signed STS
//! request bound to the call, `pgjit::aws::caller_proof`) and goes to the requests Function URL; without it
//! (the local emulator) the handler runs in-process with the identity STS names, and an
//! approval that completes a request is granted in-process, as no rule delivers the bus's
//! events there.

use lambda_runtime::{Context, LambdaEvent};
use pgjit::aws::Services;
use pgjit::contract::requests::{parse_action, Action, Caller};
use serde_json::Value;

/// Sends one action; returns the requests it answered with, or one line saying why not.
pub async fn call(svc: &Services, body: Value) -> Result<Vec<Value>, String> {
    match std::env::var("PGJIT_REQUESTS_URL").ok().filter(|u| !u.trim().is_empty()) {
        Some(url) => remote(svc, &url, &body).await,
        None => in_process(svc, body).await,
    }
}

async fn in_process(svc: &Services, body: Value) -> Result<Vec<Value>, String> {
    let me = svc.sts.get_caller_identity().send().await.map_err(|e| super::chain(pgjit::aws::AwsError::new("sts:GetCallerIdentity", e)))?;
    let caller = Caller {
        arn: me.arn().ok_or("sts:GetCallerIdentity named no ARN")?.to_owned(),
        user_id: me.user_id().ok_or("sts:GetCallerIdentity named no user id")?.to_owned(),
        account: me.account().ok_or("sts:GetCallerIdentity named no account")?.to_owned(),
    };
    let now = chrono::Utc::now();
    let action = parse_action(&body.to_string(), now).map_err(super::chain)?;
    let reply = Box::pin(pgjit::control::requests::handle(svc, &caller, action, now)).await.map_err(super::chain)?;
    let Some(event) = reply.sent else { return to_values(&reply.requests) };
    let request_id = reply.requests.first().map(|r| r.request_id.clone()).unwrap_or_default();
    if let Err(e) = Box::pin(pgjit::control::handlers::grant(svc, LambdaEvent::new(event, Context::default()))).await {
        eprintln!("pgjit: the grant of {request_id} failed: {}", e.to_string().replace('\n', " "));
    }
    let again = Box::pin(pgjit::control::requests::handle(svc, &caller, Action::Get { request_id }, chrono::Utc::now())).await.map_err(super::chain)?;
    to_values(&again.requests)
}

fn to_values(requests: &[pgjit::control::requests::RequestView]) -> Result<Vec<Value>, String> {
    requests.iter().map(|r| serde_json::to_value(r).map_err(super::chain)).collect()
}

async fn remote(svc: &Services, url: &str, body: &Value) -> Result<Vec<Value>, String> {
    use aws_credential_types::provider::ProvideCredentials;
    let uri: http::Uri = url.parse().map_err(|_| format!("PGJIT_REQUESTS_URL {url:?} is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("PGJIT_REQUESTS_URL {url:?} is not https: signed requests go over TLS only"));
    }
    let host = uri.host().ok_or_else(|| format!("PGJIT_REQUESTS_URL {url:?} has no host"))?.to_owned();
    // The front door's region: its URL says it (the proof is checked by STS there).
    let region = region_of(url).or_else(|| svc.region()).ok_or("no AWS region: set AWS_REGION")?;
    let action = body.to_string();
    let proof = pgjit::aws::caller_proof::make(&svc.sdk_config, &region, &action, std::time::SystemTime::now()).await.map_err(super::chain)?;
    let text = serde_json::json!({"body": action, "proof": proof}).to_string();
    let provider = svc.sdk_config.credentials_provider().ok_or("no AWS credentials: sign in (aws sso login) or set AWS_PROFILE")?;
    let credentials = provider.provide_credentials().await.map_err(|e| format!("your AWS credentials: {}", super::chain(e)))?;
    let identity: aws_smithy_runtime_api::client::identity::Identity = credentials.into();
    let mut headers = vec![("host".to_owned(), host), ("content-type".to_owned(), "application/json".to_owned())];
    let params: aws_sigv4::http_request::SigningParams = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(&region)
        .name("lambda")
        .time(std::time::SystemTime::now())
        .settings(aws_sigv4::http_request::SigningSettings::default())
        .build()
        .map_err(super::chain)?
        .into();
    let signable = aws_sigv4::http_request::SignableRequest::new("POST", url, headers.iter().map(|(k, v)| (k.as_str(), v.as_str())), aws_sigv4::http_request::SignableBody::Bytes(text.as_bytes())).map_err(super::chain)?;
    let (instructions, _signature) = aws_sigv4::http_request::sign(signable, &params).map_err(super::chain)?.into_parts();
    let (added, _) = instructions.into_parts();
    for header in added {
        headers.push((header.name().to_owned(), header.value().to_owned()));
    }
    let headers: Vec<(&str, String)> = headers.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let (status, bytes) = tokio::time::timeout(std::time::Duration::from_secs(60), pgjit::aws::caller_proof::post(url, &headers, text.into_bytes(), false))
        .await
        .map_err(|_| format!("{url} did not answer within 60 s"))??;
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| serde_json::json!({"error": String::from_utf8_lossy(&bytes)}));
    if !(200..300).contains(&status) {
        let why = answer.get("error").or_else(|| answer.get("Message")).and_then(Value::as_str).unwrap_or("no reason given");
        return Err(match status {
            403 if answer.get("Message").is_some() => format!("AWS refused the call ({why}): your identity may not call the front door (RequesterPrincipals, lambda:InvokeFunctionUrl)"),
            code => format!("{why} (HTTP {code})"),
        });
    }
    Ok(answer.get("requests").and_then(Value::as_array).cloned().unwrap_or_default())
}

/// The region of a Function URL (`https://<id>.lambda-url.<region>.on.aws/`).
fn region_of(url: &str) -> Option<String> {
    let host = url.split("://").nth(1)?.split('/').next()?;
    let mut parts = host.split('.');
    parts.next()?;
    (parts.next()? == "lambda-url").then(|| parts.next().map(str::to_owned))?
}

/// A request in one line, for a person to read.
pub fn line(r: &Value) -> String {
    let text = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or("-").to_owned();
    let approvals = r.get("approvals").and_then(Value::as_array).map(|a| a.len()).unwrap_or(0);
    let required = r.get("required").and_then(Value::as_u64).unwrap_or(0);
    let mut out = format!("{} {} {} flow {} by {} for {}s", text("request_id"), text("status"), text("integration"), text("flow"), text("requester"), r.get("duration_seconds").and_then(Value::as_u64).unwrap_or(0));
    if required > 0 {
        out.push_str(&format!(", {approvals} of {required} approval(s)"));
    }
    if let Some(grant) = r.get("grant") {
        out.push_str(&format!(", db user {} until {}", grant.get("db_user").and_then(Value::as_str).unwrap_or("?"), grant.get("expires_at").and_then(Value::as_str).unwrap_or("?")));
    }
    if let Some(why) = r.get("failure").and_then(Value::as_str) {
        out.push_str(&format!(" ({why})"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_function_urls_region() {
        assert_eq!(super::region_of("https://abc123.lambda-url.eu-west-1.on.aws/").as_deref(), Some("eu-west-1"));
        assert_eq!(super::region_of("https://example.com/"), None);
    }
}
