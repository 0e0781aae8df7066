//! The `webhook` function (a Lambda Function URL): wiring only; the logic is
//! `pgjit::control::handlers::webhook`.

use aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlRequest;
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    pgjit::control::handlers::init_tracing();
    // Configuration, AWS clients and the secret cache live as long as the execution environment.
    let services = pgjit::aws::Services::from_env().await?;
    let secrets = pgjit::control::webhook::SecretCache::default();
    let (services, secrets) = (&services, &secrets);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<LambdaFunctionUrlRequest>| async move {
        pgjit::control::handlers::webhook(services, secrets, event).await
    }))
    .await
}
