//! AWS errors classified in one place: what is worth retrying and what is not.
//!
//! Every worker and the engine itself funnel SDK errors through [`classify`], so "throttling,
//! timeouts and 5xx are retryable" is decided once (compare vector's `is_retriable_error`).

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::outcome::{Outcome, Reason};

/// Error codes that AWS services use for throttling or a transient fault, whatever the status.
const RETRYABLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "RequestThrottled",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "TransactionInProgressException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "KMS.ThrottlingException",
];

/// Whether an AWS call may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Throttling, timeouts, connection failures, 5xx: try again later.
    Retryable,
    /// The request itself is wrong or refused (4xx other than throttling): retrying is futile.
    Permanent,
}

/// An AWS error reduced to what a worker needs: its class, a stable code and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AwsError {
    /// Retry or give up.
    pub class: ErrorClass,
    /// The service's error code, or `timeout` / `dispatch` / `response` / `construction`.
    pub code: String,
    /// The service's message, or the transport error.
    pub message: String,
}

impl AwsError {
    /// Whether retrying may help.
    pub fn is_retryable(&self) -> bool {
        self.class == ErrorClass::Retryable
    }

    /// The engine outcome for a handler that failed with this error.
    pub fn into_outcome(self) -> Outcome {
        match self.class {
            ErrorClass::Retryable => Outcome::Retry(Reason::dependency(self.code, self.message)),
            ErrorClass::Permanent => Outcome::Permanent(Reason::new(self.code, self.message)),
        }
    }
}

/// Classifies a code and HTTP status as AWS services report them.
pub fn classify_code(code: Option<&str>, status: Option<u16>) -> ErrorClass {
    if code.is_some_and(|c| RETRYABLE_CODES.contains(&c)) {
        return ErrorClass::Retryable;
    }
    match status {
        Some(429) | Some(500..=599) => ErrorClass::Retryable,
        _ => ErrorClass::Permanent,
    }
}

/// Classifies any SDK error (every `aws-sdk-*` operation error fits).
pub fn classify<E>(err: &SdkError<E, Response>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let transport = |code: &str, class| AwsError {
        class,
        code: code.to_owned(),
        message: error_chain(err),
    };
    match err {
        SdkError::TimeoutError(_) => transport("timeout", ErrorClass::Retryable),
        SdkError::DispatchFailure(failure) => {
            // An invalid request built by us (`is_user`) will not get better; I/O will.
            let class = if failure.is_user() {
                ErrorClass::Permanent
            } else {
                ErrorClass::Retryable
            };
            transport("dispatch", class)
        }
        SdkError::ResponseError(_) => transport("response", ErrorClass::Retryable),
        SdkError::ConstructionFailure(_) => transport("construction", ErrorClass::Permanent),
        SdkError::ServiceError(service) => {
            let code = service.err().code();
            let status = service.raw().status().as_u16();
            AwsError {
                class: classify_code(code, Some(status)),
                code: code.unwrap_or("unknown").to_owned(),
                message: service
                    .err()
                    .message()
                    .map_or_else(|| format!("HTTP {status}"), str::to_owned),
            }
        }
        // `SdkError` is non-exhaustive: an unknown kind is treated as transient.
        _ => transport("unknown", ErrorClass::Retryable),
    }
}

/// The error and its sources on one line (SDK errors hide the useful part in `source()`).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_codes_are_retryable_whatever_the_status() {
        for code in [
            "ThrottlingException",
            "ProvisionedThroughputExceededException",
        ] {
            assert_eq!(classify_code(Some(code), Some(400)), ErrorClass::Retryable);
        }
    }

    #[test]
    fn server_errors_and_429_are_retryable() {
        for status in [429, 500, 502, 503, 504] {
            assert_eq!(classify_code(None, Some(status)), ErrorClass::Retryable);
        }
    }

    #[test]
    fn client_errors_are_permanent() {
        assert_eq!(
            classify_code(Some("ValidationException"), Some(400)),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify_code(Some("ResourceNotFoundException"), Some(400)),
            ErrorClass::Permanent
        );
        assert_eq!(classify_code(None, Some(403)), ErrorClass::Permanent);
        assert_eq!(classify_code(None, None), ErrorClass::Permanent);
    }

    #[test]
    fn outcome_follows_the_class() {
        let err = AwsError {
            class: ErrorClass::Retryable,
            code: "ThrottlingException".into(),
            message: "slow down".into(),
        };
        assert_eq!(
            err.into_outcome(),
            Outcome::unavailable("ThrottlingException", "slow down"),
            "a retryable AWS error blames the dependency (the breaker counts it)"
        );
        let err = AwsError {
            class: ErrorClass::Permanent,
            code: "ValidationException".into(),
            message: "bad".into(),
        };
        assert!(matches!(err.into_outcome(), Outcome::Permanent(_)));
    }
}
