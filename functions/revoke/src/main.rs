//! The `revoke` function: wiring only; the logic is `pgjit::control::handlers::revoke`.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    pgjit::control::handlers::init_tracing();
    // Configuration and AWS clients are built once per cold start, not per event.
    let services = pgjit::aws::Services::from_env().await?;
    let services = &services;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move { pgjit::control::handlers::revoke(services, event).await })).await
}
