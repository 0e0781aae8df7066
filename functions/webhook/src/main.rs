//! The `webhook` function (a Lambda Function URL): wiring only; the logic is
//! `pgjit::handlers::webhook`.

use aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlRequest;
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    pgjit::handlers::init_tracing();
    // Configuration, AWS clients and the secret cache live as long as the execution environment.
    let services = pgjit::aws::Services::from_env().await?;
    let secrets = pgjit::webhook::SecretCache::default();
    let (services, secrets) = (&services, &secrets);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<LambdaFunctionUrlRequest>| async move {
        pgjit::handlers::webhook(services, secrets, event).await
    }))
    .await
}
