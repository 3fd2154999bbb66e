//! AWS client setup shared by every binary.
//!
//! Configuration comes from the standard AWS chain (`AWS_ENDPOINT_URL`, `AWS_REGION`,
//! `AWS_PROFILE`, credentials...). Clients are built once and cloned.

use std::time::Duration;

use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// How long a TCP connection may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one attempt of any call may take: above the 20 s long poll, so that a hung
/// endpoint fails a call (and is retried) instead of stalling a worker.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(40);

/// Loads the shared AWS configuration from the environment.
///
/// Stalled-stream protection is off: its per-body throughput bookkeeping was a measurable share
/// of a worker's CPU for small JSON calls, and [`ATTEMPT_TIMEOUT`] covers what it guards.
pub async fn load_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        .load()
        .await
}

/// An SQS client with the engine's interceptors.
pub fn sqs_client(config: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::from_conf(sqs_config(config).build())
}

/// The SQS client configuration the engine uses, to adjust before building (a benchmark points
/// it at another endpoint).
pub fn sqs_config(config: &SdkConfig) -> aws_sdk_sqs::config::Builder {
    aws_sdk_sqs::config::Builder::from(config).interceptor(KeepAliveOnPlainHttp)
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
