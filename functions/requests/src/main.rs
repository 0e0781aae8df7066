//! The `requests` function (the front door, a Lambda Function URL with AuthType AWS_IAM):
//! wiring only; the logic is `pgjit::control::handlers::requests`.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    pgjit::control::handlers::init_tracing();
    // Configuration and AWS clients live as long as the execution environment.
    let services = pgjit::aws::Services::from_env().await?;
    let services = &services;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move { pgjit::control::handlers::requests(services, event).await })).await
}
