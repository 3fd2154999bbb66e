//! AWS client setup shared by every binary.
//!
//! Configuration comes from the standard AWS chain (`AWS_ENDPOINT_URL`, `AWS_REGION`,
//! `AWS_PROFILE`, credentials...). Clients are built once and cloned.

use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// Loads the shared AWS configuration from the environment.
pub async fn load_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// An SQS client with the engine's interceptors.
pub fn sqs_client(config: &SdkConfig) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::config::Builder::from(config)
        .interceptor(KeepAliveOnPlainHttp)
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

/// Adds `Connection: keep-alive` to requests sent over plain `http://`.
///
/// Plain HTTP only ever means a local emulator: LocalStack behind hypercorn closes every
/// connection that does not ask for keep-alive explicitly, which doubles a worker's CPU per
/// call. Real AWS endpoints are HTTPS (and may be HTTP/2, where the header is forbidden), so
/// they are left alone. Add it to any service client with `.interceptor(KeepAliveOnPlainHttp)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepAliveOnPlainHttp;

impl Intercept for KeepAliveOnPlainHttp {
    fn name(&self) -> &'static str {
        "KeepAliveOnPlainHttp"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request_mut();
        if request.uri().starts_with("http://") {
            request.headers_mut().insert("connection", "keep-alive");
        }
        Ok(())
    }
}
