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
