//! DynamoDB helpers for the workers that use it (feature `dynamodb`).

use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;

use crate::aws::KeepAliveOnPlainHttp;

/// A DynamoDB client from the shared configuration, with keep-alive on plain HTTP (LocalStack).
pub fn client(sdk: &SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(config(sdk).build())
}

/// The configuration [`client`] is built from, for callers that change one setting of it.
pub fn config(sdk: &SdkConfig) -> aws_sdk_dynamodb::config::Builder {
    aws_sdk_dynamodb::config::Builder::from(sdk).interceptor(KeepAliveOnPlainHttp)
}

/// The code of each reason a `TransactWriteItems` was cancelled, in the order of its items
/// (`"None"` for items that were fine), when cancellation was the error.
pub fn cancellation_codes<R>(err: &SdkError<TransactWriteItemsError, R>) -> Option<Vec<String>> {
    match err.as_service_error()? {
        TransactWriteItemsError::TransactionCanceledException(cancelled) => Some(
            cancelled
                .cancellation_reasons()
                .iter()
                .map(|r| r.code().unwrap_or("None").to_owned())
                .collect(),
        ),
        _ => None,
    }
}

/// Whether the transaction's item `index` failed its condition.
pub fn failed_condition(codes: &[String], index: usize) -> bool {
    codes
        .get(index)
        .is_some_and(|c| c == "ConditionalCheckFailed")
}

/// The attribute holding a client's number exactly: `N` when DynamoDB can hold it, else `S`
/// with the exact decimal ([`crate::json::Decimal::attribute`]).
pub fn number(value: &crate::json::Decimal) -> aws_sdk_dynamodb::types::AttributeValue {
    use aws_sdk_dynamodb::types::AttributeValue;
    match value.attribute() {
        crate::json::NumberAttribute::N(n) => AttributeValue::N(n),
        crate::json::NumberAttribute::S(s) => AttributeValue::S(s),
    }
}

/// What an insert-if-absent did ([`put_if_absent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Insert {
    /// The row was written.
    Created,
    /// A row with this key was there already (live, where the condition also checks expiry),
    /// left untouched; its payload hash, if it had one: the same hash is a replay, another is
    /// a conflict.
    Exists {
        /// The stored row's payload hash.
        payload_hash: Option<String>,
    },
}

/// Sends `request`, a `PutItem` whose condition says the row is absent, and asks for the stored
/// row when the condition fails: [`Insert::Exists`] with its string attribute `hash_attribute`.
/// One call either way.
///
/// # Errors
/// Any other failure, classified.
pub async fn put_if_absent(
    request: aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder,
    hash_attribute: &str,
) -> Result<Insert, crate::AwsError> {
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;
    let sent = request
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .send()
        .await;
    match sent {
        Ok(_) => Ok(Insert::Created),
        Err(err) => match err.as_service_error() {
            Some(PutItemError::ConditionalCheckFailedException(failed)) => Ok(Insert::Exists {
                payload_hash: failed
                    .item()
                    .and_then(|item| item.get(hash_attribute))
                    .and_then(|v| v.as_s().ok())
                    .cloned(),
            }),
            _ => Err(crate::classify(&err)),
        },
    }
}

/// What a conditional write came to: `true` written, `false` refused by its condition (the
/// item left as it was); any other failure classified.
///
/// # Errors
/// A failure other than the condition.
pub fn condition_met<T, E>(
    result: Result<T, SdkError<E, aws_smithy_runtime_api::http::Response>>,
) -> Result<bool, crate::AwsError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_dynamodb::error::ProvideErrorMetadata;
    match result {
        Ok(_) => Ok(true),
        Err(err)
            if err.as_service_error().and_then(ProvideErrorMetadata::code)
                == Some("ConditionalCheckFailedException") =>
        {
            Ok(false)
        }
        Err(err) => Err(crate::classify(&err)),
    }
}
