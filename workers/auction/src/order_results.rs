//! `order-results-worker`: the step of the auction pipeline whose errors are notified.
//!
//! Each message is one order's result in an auction cycle, `{"cycle", "record_id",
//! "status": "accepted" | "rejected", "reason"?, ...}`:
//! - accepted → written to S3 as `results/{cycle}/{record_id}.json`, encrypted with the KMS key
//!   `RESULTS_KMS_KEY_ID` when one is set (Terraform sets the bucket's key), else by the
//!   bucket's default encryption (no encryption header is sent, so a bucket whose default is
//!   SSE-KMS with its customer-managed key is never downgraded to SSE-S3); writing it again on a
//!   redelivery writes the same object;
//! - rejected → an error, notified on the SNS topic (chat-ready: `text` plus `cycle`,
//!   `record_id`, `reason`; message attributes `event`, `cycle` for subscription filters) and the
//!   message is finished, not retried. Exactly one notification per rejected order
//!   ([`crate::notify::Notifier`]).
//!
//! The handler ([`OrderResultsHandler`]) writes through [`ResultStore`] (S3: [`S3Results`])
//! and notifies through [`Notify`].

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use clap::Parser;
use fleet::kind;
use fleet::worker::WorkerArgs;
use fleet::{classify, AwsError, Handler, Message, Metrics, Outcome};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tracing::info;

use crate::notify::{safe_id, Notification, Notify};

/// Command line and environment of the `order-results-worker` binary.
#[derive(Debug, Parser)]
#[command(
    name = "order-results-worker",
    version,
    about = "Stores accepted order results in S3, notifies rejected ones on SNS"
)]
pub struct Config {
    /// The bucket for accepted results.
    #[arg(long, env = "RESULTS_BUCKET", value_name = "BUCKET")]
    pub bucket: String,
    /// KMS key for the result objects (SSE-KMS: key id, ARN or alias); without one, no
    /// encryption header is sent and the bucket's default encryption applies.
    #[arg(long, env = "RESULTS_KMS_KEY_ID", value_name = "KEY")]
    pub kms_key_id: Option<String>,
    /// Where notifications go.
    #[command(flatten)]
    pub notifications: crate::NotificationArgs,
    /// What every worker has: the engine, logs, threads.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// The `event` of the notification of a rejected order (a field of the SNS message and a
/// message attribute, for subscription filters): not a dead-letter kind.
pub const ORDER_REJECTED_EVENT: &str = "order-rejected";
/// The status of an accepted order.
pub const ACCEPTED: &str = "accepted";
/// The status of a rejected order.
pub const REJECTED: &str = "rejected";

/// One order's result in a cycle: what `results-worker` fans out, one per message.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct OrderResult {
    /// The auction cycle (e.g. `2026-11-22T23:10:00Z`).
    pub cycle: String,
    /// The order.
    pub record_id: String,
    /// `accepted` or `rejected`.
    pub status: String,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Everything else the result says, kept in the S3 object.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl OrderResult {
    /// `results/{cycle}/{record_id}.json`.
    pub fn object_key(&self) -> String {
        format!("results/{}/{}.json", self.cycle, self.record_id)
    }

    /// The notification of a rejection: chat-ready text and fields, deduplicated by
    /// `{cycle}/{record_id}`.
    pub fn notification(&self) -> Notification<'static> {
        let reason = self.reason.as_deref().unwrap_or("no reason given");
        Notification {
            id: format!("{}/{}", self.cycle, self.record_id),
            subject: "Order rejected",
            body: json!({
                "text": format!(":warning: order {} was rejected in auction cycle {}: {}", self.record_id, self.cycle, reason),
                "event": ORDER_REJECTED_EVENT,
                "cycle": self.cycle,
                "record_id": self.record_id,
                "reason": reason,
            }),
            attributes: vec![
                ("event", ORDER_REJECTED_EVENT.to_owned()),
                ("cycle", self.cycle.clone()),
            ],
        }
    }

    /// Ids safe for S3 keys and dedupe ids, and a known status.
    pub fn validate(&self) -> Result<(), String> {
        if !safe_id(&self.cycle) || !safe_id(&self.record_id) {
            return Err(
                "cycle and record_id must be 1-128 characters of A-Z a-z 0-9 - _ . :".into(),
            );
        }
        match self.status.as_str() {
            ACCEPTED | REJECTED => Ok(()),
            other => Err(format!(
                "record {}: unknown status {other:?} (accepted or rejected)",
                self.record_id
            )),
        }
    }
}

/// Where accepted results are stored: what [`OrderResultsHandler`] needs of the bucket.
/// [`S3Results`] writes them to S3.
pub trait ResultStore: Send + Sync + 'static {
    /// Writes `body` under `key` (writing the same key again writes the same object).
    fn put(&self, key: &str, body: &str) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// The results bucket on S3, with its optional KMS key ([`put_result`]).
#[derive(Debug, Clone)]
pub struct S3Results {
    s3: aws_sdk_s3::Client,
    bucket: String,
    kms_key_id: Option<String>,
}

impl S3Results {
    /// Writes to `bucket` (SSE-KMS with `kms_key_id`, else the bucket's default encryption).
    pub fn new(s3: aws_sdk_s3::Client, bucket: String, kms_key_id: Option<String>) -> Self {
        Self {
            s3,
            bucket,
            kms_key_id,
        }
    }
}

impl ResultStore for S3Results {
    async fn put(&self, key: &str, body: &str) -> Result<(), AwsError> {
        let put = put_result(
            &self.s3,
            &self.bucket,
            self.kms_key_id.as_deref(),
            key,
            body,
        );
        put.send().await.map(drop).map_err(|e| classify(&e))
    }
}

/// An S3 client from the shared AWS configuration: path-style addressing (LocalStack answers
/// on one host name), keep-alive on plain HTTP.
pub fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .interceptor(fleet::aws::KeepAliveOnPlainHttp)
            .build(),
    )
}

/// The handler, over the bucket `S` and the notifier `N`.
#[derive(Debug)]
pub struct OrderResultsHandler<S, N> {
    results: S,
    notifier: N,
    stored: Arc<AtomicU64>,
}

impl<S: ResultStore, N: Notify> OrderResultsHandler<S, N> {
    /// A handler storing accepted results in `results` and notifying rejected ones through
    /// `notifier`, counting `results_stored`.
    pub fn new(results: S, notifier: N, metrics: &Metrics) -> Self {
        Self {
            results,
            notifier,
            stored: metrics.counter("results_stored"),
        }
    }

    async fn store(&self, result: &OrderResult, body: &str) -> Outcome {
        match self.results.put(&result.object_key(), body).await {
            Ok(()) => {
                Metrics::incr(&self.stored);
                Outcome::Done
            }
            Err(err) => err.into_outcome(),
        }
    }
}

/// The `PutObject` of one accepted result: SSE-KMS with `kms_key_id` when given; without it
/// no server-side-encryption header at all, so S3 applies the bucket's default encryption
/// (Terraform: SSE-KMS with the fleet's customer-managed key). Never SSE-S3 by request: an
/// explicit `AES256` would override a bucket default of SSE-KMS.
pub fn put_result(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    kms_key_id: Option<&str>,
    key: &str,
    body: &str,
) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
    let put = s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type("application/json")
        .body(ByteStream::from(body.as_bytes().to_vec()));
    match kms_key_id.filter(|k| !k.trim().is_empty()) {
        Some(kms_key) => put
            .server_side_encryption(ServerSideEncryption::AwsKms)
            .ssekms_key_id(kms_key),
        None => put,
    }
}

impl<S: ResultStore, N: Notify> Handler for OrderResultsHandler<S, N> {
    async fn handle(&self, message: &Message) -> Outcome {
        let result: OrderResult = match serde_json::from_str(&message.body) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::permanent(
                    kind::of_json_error(&e),
                    format!("not an order result: {e}"),
                )
            }
        };
        if let Err(why) = result.validate() {
            return Outcome::permanent(kind::INVALID_MESSAGE, why);
        }
        if result.status == ACCEPTED {
            return self.store(&result, &message.body).await;
        }
        let outcome = self.notifier.notify_once(&result.notification()).await;
        if outcome == Outcome::Done {
            info!(cycle = %result.cycle, record_id = %result.record_id, "rejection notified");
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fakes::{self, FakeRecords, FakeSns};
    use crate::lease::CLAIMED_ELSEWHERE;
    use crate::notify::Notifier;

    fn result(text: &str) -> OrderResult {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Config::command().debug_assert();
    }

    /// A request's headers: lower-case name, value.
    type Headers = Vec<(String, String)>;

    /// Records the headers of every request and stops it before it leaves the process.
    #[derive(Debug, Default, Clone)]
    struct CaptureHeaders(Arc<std::sync::Mutex<Vec<Headers>>>);

    impl aws_sdk_s3::config::Intercept for CaptureHeaders {
        fn name(&self) -> &'static str {
            "CaptureHeaders"
        }

        fn read_before_transmit(
            &self,
            context: &aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
            _components: &aws_sdk_s3::config::RuntimeComponents,
            _cfg: &mut aws_sdk_s3::config::ConfigBag,
        ) -> Result<(), aws_sdk_s3::error::BoxError> {
            let headers = context
                .request()
                .headers()
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
                .collect();
            self.0.lock().unwrap().push(headers);
            Err("captured, not sent".into())
        }
    }

    /// The headers of the `PutObject` that [`put_result`] sends for `kms_key_id`.
    async fn put_headers(kms_key_id: Option<&str>) -> Headers {
        let capture = CaptureHeaders::default();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("eu-west-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "AKID", "secret", None, None, "test",
            ))
            .interceptor(capture.clone())
            .build();
        let s3 = aws_sdk_s3::Client::from_conf(config);
        let sent = put_result(&s3, "results", kms_key_id, "results/c/r.json", "{}")
            .send()
            .await;
        assert!(sent.is_err(), "the interceptor stops the request");
        let mut requests = capture.0.lock().unwrap().clone();
        assert_eq!(requests.len(), 1, "one attempt");
        requests.remove(0)
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn without_a_key_no_encryption_header_is_sent_so_the_bucket_default_applies() {
        for none in [None, Some(""), Some("  ")] {
            let headers = put_headers(none).await;
            assert!(
                headers
                    .iter()
                    .all(|(k, _)| !k.starts_with("x-amz-server-side-encryption")),
                "{none:?}: never AES256 by request, no SSE header at all: {headers:?}"
            );
        }
    }

    #[tokio::test]
    async fn with_a_key_the_object_is_sse_kms_with_that_key() {
        let key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let headers = put_headers(Some(key)).await;
        assert_eq!(
            header(&headers, "x-amz-server-side-encryption"),
            Some("aws:kms")
        );
        assert_eq!(
            header(&headers, "x-amz-server-side-encryption-aws-kms-key-id"),
            Some(key)
        );
    }

    #[test]
    fn keys_notifications_and_validation() {
        let r = result(
            r#"{"cycle":"c-1","record_id":"r-1","status":"rejected","reason":"price too low","price":2.1}"#,
        );
        assert_eq!(r.object_key(), "results/c-1/r-1.json");
        let n = r.notification();
        assert_eq!(n.id, "c-1/r-1");
        assert_eq!(n.body["record_id"], "r-1");
        assert!(n.body["text"].as_str().unwrap().contains("price too low"));
        assert_eq!(r.rest["price"], json!(2.1));
        assert!(r.validate().is_ok());
        for bad in [
            r#"{"cycle":"../x","record_id":"r","status":"accepted"}"#,
            r#"{"cycle":"c","record_id":"r","status":"maybe"}"#,
        ] {
            assert!(result(bad).validate().is_err(), "{bad}");
        }
    }

    /// The bucket in memory: its objects, how many puts, a failure for the next put.
    #[derive(Default)]
    struct FakeBucket {
        objects: std::sync::Mutex<std::collections::HashMap<String, String>>,
        puts: std::sync::Mutex<u32>,
        fail: std::sync::Mutex<Option<AwsError>>,
    }

    impl ResultStore for FakeBucket {
        async fn put(&self, key: &str, body: &str) -> Result<(), AwsError> {
            if let Some(err) = self.fail.lock().unwrap().take() {
                return Err(err);
            }
            *self.puts.lock().unwrap() += 1;
            self.objects
                .lock()
                .unwrap()
                .insert(key.to_owned(), body.to_owned());
            Ok(())
        }
    }

    type Tested = OrderResultsHandler<FakeBucket, Notifier<FakeRecords, FakeSns>>;

    fn handler() -> (Tested, FakeRecords, FakeSns) {
        let (notifier, records, sns) = fakes::notifier();
        let handler = OrderResultsHandler::new(FakeBucket::default(), notifier, &Metrics::new());
        (handler, records, sns)
    }

    fn delivery(body: &str) -> Message {
        Message {
            message_id: "m-1".into(),
            body: body.into(),
            receive_count: 1,
            ..Message::default()
        }
    }

    const ACCEPTED_BODY: &str =
        r#"{"cycle":"c-1","record_id":"r-1","status":"accepted","price":41.27}"#;
    const REJECTED_BODY: &str =
        r#"{"cycle":"c-1","record_id":"r-2","status":"rejected","reason":"price too low"}"#;

    #[tokio::test]
    async fn an_accepted_result_is_stored_once_under_its_key() {
        let (handler, _, sns) = handler();
        for _ in 0..2 {
            assert_eq!(
                handler.handle(&delivery(ACCEPTED_BODY)).await,
                Outcome::Done
            );
        }
        let objects = handler.results.objects.lock().unwrap();
        assert_eq!(objects.len(), 1, "a redelivery writes the same object");
        assert_eq!(objects["results/c-1/r-1.json"], ACCEPTED_BODY);
        assert_eq!(sns.count(), 0, "an accepted result notifies nothing");
    }

    #[tokio::test]
    async fn a_rejected_result_is_notified_exactly_once_across_redeliveries() {
        let (handler, records, sns) = handler();
        assert_eq!(
            handler.handle(&delivery(REJECTED_BODY)).await,
            Outcome::Done
        );
        assert_eq!(
            handler.handle(&delivery(REJECTED_BODY)).await,
            Outcome::Duplicate
        );
        assert_eq!(sns.count(), 1);
        assert!(records.sent("c-1/r-2"));
        let (subject, body, attributes) = sns.published.lock().unwrap()[0].clone();
        assert_eq!(subject, "Order rejected");
        assert_eq!(body["event"], ORDER_REJECTED_EVENT);
        assert_eq!(body["reason"], "price too low");
        assert!(attributes.contains(&("event".to_owned(), ORDER_REJECTED_EVENT.to_owned())));
        assert!(handler.results.objects.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_publish_whose_sent_mark_failed_is_marked_not_published_again() {
        let (handler, records, sns) = handler();
        *records.fail_mark.lock().unwrap() = Some(fakes::error(
            fleet::ErrorClass::Retryable,
            "ProvisionedThroughputExceededException",
        ));
        assert!(matches!(
            handler.handle(&delivery(REJECTED_BODY)).await,
            Outcome::Retry(_)
        ));
        assert_eq!(sns.count(), 1);
        assert_eq!(
            handler.handle(&delivery(REJECTED_BODY)).await,
            Outcome::Done
        );
        assert_eq!(sns.count(), 1, "the retry only marks it sent");
        assert!(records.sent("c-1/r-2"));
    }

    #[tokio::test]
    async fn a_rejection_claimed_by_another_delivery_is_a_retry_without_a_publish() {
        let (handler, records, sns) = handler();
        records.hold("c-1/r-2", "another");
        match handler.handle(&delivery(REJECTED_BODY)).await {
            Outcome::Retry(reason) => assert_eq!(reason.kind, CLAIMED_ELSEWHERE),
            other => panic!("{other:?}"),
        }
        assert_eq!(sns.count(), 0);
    }

    #[tokio::test]
    async fn an_invalid_body_is_permanent_without_a_write_or_a_notification() {
        let (handler, _, sns) = handler();
        for (body, expected) in [
            ("not json", kind::INVALID_JSON),
            (
                r#"{"cycle":"c-1","status":"accepted"}"#,
                kind::INVALID_MESSAGE,
            ),
            (
                r#"{"cycle":"c-1","record_id":"r-1","status":"maybe"}"#,
                kind::INVALID_MESSAGE,
            ),
            (
                r#"{"cycle":"../c","record_id":"r-1","status":"rejected"}"#,
                kind::INVALID_MESSAGE,
            ),
        ] {
            match handler.handle(&delivery(body)).await {
                Outcome::Permanent(reason) => assert_eq!(reason.kind, expected, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        assert_eq!(*handler.results.puts.lock().unwrap(), 0);
        assert_eq!(sns.count(), 0);
    }

    #[tokio::test]
    async fn aws_errors_follow_their_class() {
        let (handler, _, sns) = handler();
        *handler.results.fail.lock().unwrap() =
            Some(fakes::error(fleet::ErrorClass::Retryable, "SlowDown"));
        assert_eq!(
            handler.handle(&delivery(ACCEPTED_BODY)).await,
            Outcome::unavailable("SlowDown", "injected")
        );
        *sns.fail.lock().unwrap() = Some(fakes::error(fleet::ErrorClass::Retryable, "Throttling"));
        assert_eq!(
            handler.handle(&delivery(REJECTED_BODY)).await,
            Outcome::unavailable("Throttling", "injected")
        );
        // Nothing was sent: the next delivery publishes.
        assert_eq!(
            handler.handle(&delivery(REJECTED_BODY)).await,
            Outcome::Done
        );
        assert_eq!(sns.count(), 1);
    }
}
