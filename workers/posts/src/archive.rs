//! `archive-worker`: moves expired posts to the archive, exactly once, whichever path reports
//! them:
//! - the sweep (this process, every `--sweep-interval-secs`, [`sweep_every`]): a scan for posts
//!   past `expires_at`, each sent to the archive queue as `{"post_id": ...}`; the handler copies
//!   the post to the archive and deletes it in one transaction (archive only if absent, delete
//!   only if still expired);
//! - in AWS, DynamoDB TTL deletes the post and its stream record reaches the archive queue
//!   through EventBridge Pipes: the handler copies the record's `OldImage` (archive only if
//!   absent). Deletions that are not TTL's (a rejected post) are not archived.
//!
//! LocalStack's DynamoDB never expires items, so the local run and the tests use the sweep.
//!
//! The handler is generic over the tables ([`store::ArchiveStore`], on DynamoDB
//! [`store::DynamoArchiveStore`]).

pub mod store;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use clap::Parser;
use fleet::util::now_ms;
use fleet::worker::WorkerArgs;
use fleet::{classify, kind, AwsError, CancellationToken, Handler, Message, Metrics, Outcome};
use serde_json::Value;
use tracing::{info, warn};

use crate::model::{n, number, s, Item, TRANSACTION_CANCELLED};
use store::{ArchiveStore, Moved};

/// Command line and environment of `archive-worker`.
#[derive(Debug, Parser)]
#[command(
    name = "archive-worker",
    version,
    about = "Moves expired posts to the archive"
)]
pub struct Config {
    /// The posts table.
    #[arg(long, env = "POSTS_TABLE", value_name = "TABLE")]
    pub posts_table: String,
    /// The archive table.
    #[arg(long, env = "POSTS_ARCHIVE_TABLE", value_name = "TABLE")]
    pub archive_table: String,
    /// The archive queue (this worker's own queue), where the sweep sends expired posts.
    #[arg(long, env = "POSTS_ARCHIVE_QUEUE_URL", value_name = "URL")]
    pub archive_queue_url: String,
    /// Seconds between two sweeps for expired posts; 0 turns the sweep off (in AWS, TTL and
    /// the stream feed the queue; a daily sweep still catches what TTL has not deleted yet).
    #[arg(long, env = "POSTS_SWEEP_INTERVAL_SECS", default_value_t = 60)]
    pub sweep_interval_secs: u64,
    /// What every worker has: the engine, logs, threads.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

impl Config {
    /// The time between two sweeps; `None` when the sweep is off.
    pub fn sweep_interval(&self) -> Option<Duration> {
        (self.sweep_interval_secs > 0).then(|| Duration::from_secs(self.sweep_interval_secs))
    }
}

/// The principal of deletions made by DynamoDB's TTL in stream records.
const TTL_PRINCIPAL: &str = "dynamodb.amazonaws.com";

/// What an archive message says.
#[derive(Debug, Clone, PartialEq)]
pub enum Expired {
    /// From the sweep: the post (still in the table) is due.
    Due(String),
    /// From a TTL stream record: the post is gone; its last image.
    Removed(Item),
    /// A stream record of some other change (e.g. a rejection's delete): nothing to archive.
    NotExpiry,
}

/// Why a message is not an archive message (always permanent: retrying cannot fix it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidArchiveMessage {
    /// The body is not JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but neither a sweep message nor a usable stream record.
    #[error("{0}")]
    Unrecognised(String),
}

impl InvalidArchiveMessage {
    /// The kind recorded on the dead-lettered message.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotJson(_) => kind::INVALID_JSON,
            Self::Unrecognised(_) => kind::INVALID_MESSAGE,
        }
    }
}

impl Expired {
    /// Parses a sweep message or a DynamoDB stream record (as EventBridge Pipes delivers it).
    ///
    /// # Errors
    /// When it is neither.
    pub fn parse(body: &str) -> Result<Self, InvalidArchiveMessage> {
        let unrecognised = |why: &str| InvalidArchiveMessage::Unrecognised(why.to_owned());
        let value: Value = serde_json::from_str(body)
            .map_err(|e| InvalidArchiveMessage::NotJson(e.to_string()))?;
        if let Some(id) = value.get("post_id").and_then(Value::as_str) {
            return Ok(Expired::Due(id.to_owned()));
        }
        let Some(record) = value.get("dynamodb") else {
            return Err(unrecognised(
                "neither {\"post_id\"} nor a DynamoDB stream record",
            ));
        };
        let by_ttl =
            value["eventName"] == "REMOVE" && value["userIdentity"]["principalId"] == TTL_PRINCIPAL;
        if !by_ttl {
            return Ok(Expired::NotExpiry);
        }
        let image = record.get("OldImage").ok_or_else(|| {
            unrecognised("a TTL record without OldImage (set the stream to OLD_IMAGE)")
        })?;
        image_to_item(image)
            .map(Expired::Removed)
            .map_err(InvalidArchiveMessage::Unrecognised)
    }
}

/// A stream image (DynamoDB JSON) as an item.
fn image_to_item(image: &Value) -> Result<Item, String> {
    fn attribute(v: &Value) -> Result<AttributeValue, String> {
        let (kind, inner) = v
            .as_object()
            .and_then(|o| o.iter().next())
            .ok_or("an attribute value must be an object with one type key")?;
        Ok(match (kind.as_str(), inner) {
            ("S", Value::String(x)) => AttributeValue::S(x.clone()),
            ("N", Value::String(x)) => AttributeValue::N(x.clone()),
            ("BOOL", Value::Bool(x)) => AttributeValue::Bool(*x),
            ("NULL", _) => AttributeValue::Null(true),
            ("L", Value::Array(xs)) => {
                AttributeValue::L(xs.iter().map(attribute).collect::<Result<_, _>>()?)
            }
            ("M", Value::Object(m)) => AttributeValue::M(
                m.iter()
                    .map(|(k, v)| Ok((k.clone(), attribute(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            ("SS", Value::Array(xs)) => AttributeValue::Ss(
                xs.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect(),
            ),
            (other, _) => return Err(format!("unsupported attribute type {other}")),
        })
    }
    image
        .as_object()
        .ok_or("OldImage is not an object")?
        .iter()
        .map(|(k, v)| Ok((k.clone(), attribute(v)?)))
        .collect()
}

/// The archive's copy of `post`: stamped with when and by which path (`sweep`, `ttl`), without
/// `listing` (not part of the archive's story, and no index there).
pub fn archive_copy(mut post: Item, by: &str, at_ms: u64) -> Item {
    post.insert("archived_at".into(), n(at_ms));
    post.insert("archived_by".into(), s(by));
    post.remove("listing");
    post
}

/// The `archive-worker` handler, over any [`ArchiveStore`].
#[derive(Debug)]
pub struct ArchiveHandler<S> {
    store: S,
    archived: Arc<AtomicU64>,
    ignored: Arc<AtomicU64>,
}

impl<S: ArchiveStore> ArchiveHandler<S> {
    /// A handler over `store`, counting `posts_archived` and `archive_ignored`.
    pub fn new(store: S, metrics: &Metrics) -> Self {
        Self {
            store,
            archived: metrics.counter("posts_archived"),
            ignored: metrics.counter("archive_ignored"),
        }
    }

    /// Nothing to archive: counted and finished.
    fn ignore(&self) -> Outcome {
        Metrics::incr(&self.ignored);
        Outcome::Done
    }

    async fn archive_removed(&self, item: Item) -> Outcome {
        match self
            .store
            .archive(archive_copy(item, "ttl", now_ms()))
            .await
        {
            Ok(true) => {
                Metrics::incr(&self.archived);
                Outcome::Done
            }
            Ok(false) => Outcome::Duplicate,
            Err(err) => err.into_outcome(),
        }
    }

    async fn archive_due(&self, post_id: &str) -> Outcome {
        let post = match self.store.post(post_id).await {
            Ok(post) => post,
            Err(err) => return err.into_outcome(),
        };
        let Some(post) = post else {
            // Gone: archived already (by the other path, or an earlier delivery), or rejected.
            return match self.store.archived(post_id).await {
                Ok(true) => Outcome::Duplicate,
                Ok(false) => self.ignore(),
                Err(err) => err.into_outcome(),
            };
        };
        // Archived already by the other path? Then only the delete is left (no transaction
        // bound to fail).
        match self.store.archived(post_id).await {
            Ok(true) => return self.delete_post(post_id).await,
            Ok(false) => {}
            Err(err) => return err.into_outcome(),
        }
        let Some(expires_at) = number(&post, "expires_at") else {
            warn!(post_id, "a post without expires_at: not archived");
            return self.ignore();
        };
        if expires_at * 1000 > now_ms() {
            return self.ignore();
        }
        let copy = archive_copy(post, "sweep", now_ms());
        match self.store.move_to_archive(copy, post_id, expires_at).await {
            Ok(Moved::Moved) => {
                Metrics::incr(&self.archived);
                info!(post_id, "post archived");
                Outcome::Done
            }
            // Archived meanwhile (the TTL path): make sure the post is gone too.
            Ok(Moved::AlreadyArchived) => self.delete_post(post_id).await,
            Ok(Moved::Cancelled(codes)) => Outcome::retry(TRANSACTION_CANCELLED, codes),
            Err(err) => err.into_outcome(),
        }
    }

    /// Removes a post that is in the archive already: the archive's duplicate.
    async fn delete_post(&self, post_id: &str) -> Outcome {
        match self.store.delete_post(post_id).await {
            Ok(()) => Outcome::Duplicate,
            Err(err) => err.into_outcome(),
        }
    }
}

impl<S: ArchiveStore> Handler for ArchiveHandler<S> {
    async fn handle(&self, message: &Message) -> Outcome {
        match Expired::parse(&message.body) {
            Ok(Expired::Due(post_id)) => self.archive_due(&post_id).await,
            Ok(Expired::Removed(item)) => self.archive_removed(item).await,
            Ok(Expired::NotExpiry) => self.ignore(),
            Err(why) => Outcome::permanent(why.kind(), why.to_string()),
        }
    }
}

/// Finds the posts past their expiry and queues each for the archive. Returns how many.
///
/// # Errors
/// When DynamoDB or SQS fail (the next sweep tries again).
pub async fn sweep(
    dynamodb: &aws_sdk_dynamodb::Client,
    sqs: &aws_sdk_sqs::Client,
    posts_table: &str,
    archive_queue_url: &str,
) -> Result<usize, AwsError> {
    let now_secs = now_ms() / 1000;
    let mut due = Vec::new();
    let mut start = None;
    loop {
        let page = dynamodb
            .scan()
            .table_name(posts_table)
            .filter_expression("expires_at < :now")
            .expression_attribute_values(":now", n(now_secs))
            .projection_expression("post_id")
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        due.extend(
            page.items()
                .iter()
                .filter_map(|i| i.get("post_id")?.as_s().ok().cloned()),
        );
        start = page.last_evaluated_key;
        if start.is_none() {
            break;
        }
    }
    let entries = due
        .iter()
        .map(|id| {
            SendMessageBatchRequestEntry::builder()
                .id(id)
                .message_body(serde_json::json!({ "post_id": id }).to_string())
                .build()
                .expect("id and body are set")
        })
        .collect();
    fleet::queue::send_all(sqs, archive_queue_url, entries).await?;
    Ok(due.len())
}

/// Runs [`sweep`] every `every` (the first one at once) until `shutdown`: a sweep in progress
/// finishes (each post it queues is queued whole); none starts after the shutdown. A failed
/// sweep is logged, and the next one tries again. `every` must not be zero.
pub async fn sweep_every(
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    posts_table: String,
    archive_queue_url: String,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    // A sweep longer than `every` does not make the next ones run back to back.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Shutdown first: when both are ready, no sweep starts after the signal.
            biased;
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        match sweep(&dynamodb, &sqs, &posts_table, &archive_queue_url).await {
            Ok(0) => {}
            Ok(n) => info!(expired = n, "sweep queued expired posts"),
            Err(err) => warn!(error = %err, "sweep failed; the next one tries again"),
        }
    }
    info!("sweep stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_messages_and_ttl_stream_records_parse() {
        assert_eq!(
            Expired::parse(r#"{"post_id":"p-1"}"#),
            Ok(Expired::Due("p-1".into()))
        );
        let ttl = r#"{"eventName":"REMOVE","userIdentity":{"type":"Service","principalId":"dynamodb.amazonaws.com"},
            "dynamodb":{"Keys":{"post_id":{"S":"p-1"}},"OldImage":{"post_id":{"S":"p-1"},"expires_at":{"N":"5"},"tags":{"L":[{"S":"x"}]}}}}"#;
        let Ok(Expired::Removed(item)) = Expired::parse(ttl) else {
            panic!("a TTL record")
        };
        assert_eq!(item["post_id"], AttributeValue::S("p-1".into()));
        assert_eq!(number(&item, "expires_at"), Some(5));
    }

    #[test]
    fn other_deletions_are_not_archived_and_garbage_is_refused() {
        let rejected = r#"{"eventName":"REMOVE","dynamodb":{"Keys":{"post_id":{"S":"p-1"}},"OldImage":{"post_id":{"S":"p-1"}}}}"#;
        assert_eq!(Expired::parse(rejected), Ok(Expired::NotExpiry));
        assert!(Expired::parse("[]").is_err());
        assert!(Expired::parse("nope").is_err());
    }

    #[test]
    fn a_body_that_is_not_json_is_told_from_json_that_is_no_archive_message() {
        assert_eq!(
            Expired::parse("nope").unwrap_err().kind(),
            kind::INVALID_JSON
        );
        for body in [
            "[]",
            r#"{"id":"p-1"}"#,
            r#"{"eventName":"REMOVE","userIdentity":{"principalId":"dynamodb.amazonaws.com"},"dynamodb":{}}"#,
            r#"{"eventName":"REMOVE","userIdentity":{"principalId":"dynamodb.amazonaws.com"},"dynamodb":{"OldImage":{"x":{"B":"AA=="}}}}"#,
        ] {
            assert_eq!(
                Expired::parse(body).unwrap_err().kind(),
                kind::INVALID_MESSAGE,
                "{body}"
            );
        }
    }

    use std::collections::HashMap;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    use fleet::ErrorClass;

    /// The posts and archive tables in memory, with an optional injected failure and an
    /// optional outcome forced on the next move (a race lost to the other path).
    #[derive(Default)]
    struct FakeStore {
        posts: Mutex<HashMap<String, Item>>,
        archive: Mutex<HashMap<String, Item>>,
        fail: Mutex<Option<AwsError>>,
        race: Mutex<Option<Moved>>,
    }

    impl FakeStore {
        fn failure(&self) -> Result<(), AwsError> {
            self.fail.lock().unwrap().clone().map_or(Ok(()), Err)
        }
    }

    fn id_of(item: &Item) -> String {
        item["post_id"].as_s().unwrap().clone()
    }

    impl ArchiveStore for FakeStore {
        async fn post(&self, post_id: &str) -> Result<Option<Item>, AwsError> {
            self.failure()?;
            Ok(self.posts.lock().unwrap().get(post_id).cloned())
        }

        async fn archived(&self, post_id: &str) -> Result<bool, AwsError> {
            self.failure()?;
            Ok(self.archive.lock().unwrap().contains_key(post_id))
        }

        async fn archive(&self, copy: Item) -> Result<bool, AwsError> {
            self.failure()?;
            let mut archive = self.archive.lock().unwrap();
            let id = id_of(&copy);
            if archive.contains_key(&id) {
                return Ok(false);
            }
            archive.insert(id, copy);
            Ok(true)
        }

        async fn move_to_archive(
            &self,
            copy: Item,
            post_id: &str,
            expires_at: u64,
        ) -> Result<Moved, AwsError> {
            self.failure()?;
            if let Some(moved) = self.race.lock().unwrap().take() {
                return Ok(moved);
            }
            let mut posts = self.posts.lock().unwrap();
            let mut archive = self.archive.lock().unwrap();
            let archived = archive.contains_key(&id_of(&copy));
            let expired = posts
                .get(post_id)
                .is_some_and(|p| number(p, "expires_at") == Some(expires_at));
            if archived {
                return Ok(Moved::AlreadyArchived);
            }
            if !expired {
                return Ok(Moved::Cancelled("None, ConditionalCheckFailed".into()));
            }
            archive.insert(id_of(&copy), copy);
            posts.remove(post_id);
            Ok(Moved::Moved)
        }

        async fn delete_post(&self, post_id: &str) -> Result<(), AwsError> {
            self.failure()?;
            self.posts.lock().unwrap().remove(post_id);
            Ok(())
        }
    }

    type Archive = ArchiveHandler<FakeStore>;

    fn handler() -> Archive {
        ArchiveHandler::new(FakeStore::default(), &Metrics::new())
    }

    /// A post in the posts table, expiring at `expires_at` (s) unless `None`.
    fn stored(handler: &Archive, id: &str, expires_at: Option<u64>) {
        let mut post = Item::from([
            ("post_id".to_owned(), s(id)),
            ("status".to_owned(), s("APPROVED")),
            ("listing".to_owned(), s("APPROVED")),
        ]);
        if let Some(at) = expires_at {
            post.insert("expires_at".into(), n(at));
        }
        handler.store.posts.lock().unwrap().insert(id.into(), post);
    }

    fn due(id: &str) -> Message {
        Message {
            body: serde_json::json!({ "post_id": id }).to_string(),
            ..Message::default()
        }
    }

    fn ttl_record(id: &str) -> Message {
        let body = serde_json::json!({
            "eventName": "REMOVE",
            "userIdentity": {"type": "Service", "principalId": TTL_PRINCIPAL},
            "dynamodb": {"Keys": {"post_id": {"S": id}},
                         "OldImage": {"post_id": {"S": id}, "expires_at": {"N": "5"},
                                      "listing": {"S": "APPROVED"}}},
        });
        Message {
            body: body.to_string(),
            ..Message::default()
        }
    }

    fn counts(handler: &Archive) -> (u64, u64) {
        (
            handler.archived.load(Ordering::Relaxed),
            handler.ignored.load(Ordering::Relaxed),
        )
    }

    const LONG_AGO: Option<u64> = Some(5);

    #[tokio::test]
    async fn an_expired_post_is_archived_once_and_a_second_delivery_is_a_duplicate() {
        let handler = handler();
        stored(&handler, "p-1", LONG_AGO);
        assert_eq!(handler.handle(&due("p-1")).await, Outcome::Done);
        assert!(handler.store.posts.lock().unwrap().is_empty());
        let copy = handler.store.archive.lock().unwrap()["p-1"].clone();
        assert_eq!(copy["archived_by"], s("sweep"));
        assert!(number(&copy, "archived_at").is_some());
        assert!(!copy.contains_key("listing"));
        assert_eq!(handler.handle(&due("p-1")).await, Outcome::Duplicate);
        assert_eq!(counts(&handler), (1, 0));
    }

    #[tokio::test]
    async fn a_post_not_yet_expired_or_without_expiry_is_left_alone() {
        let handler = handler();
        stored(&handler, "p-1", Some(now_ms() / 1000 + 3600));
        stored(&handler, "p-2", None);
        assert_eq!(handler.handle(&due("p-1")).await, Outcome::Done);
        assert_eq!(handler.handle(&due("p-2")).await, Outcome::Done);
        assert_eq!(handler.store.posts.lock().unwrap().len(), 2);
        assert!(handler.store.archive.lock().unwrap().is_empty());
        assert_eq!(counts(&handler), (0, 2));
    }

    #[tokio::test]
    async fn a_post_archived_already_by_the_other_path_is_only_deleted() {
        let handler = handler();
        assert_eq!(handler.handle(&ttl_record("p-1")).await, Outcome::Done);
        stored(&handler, "p-1", LONG_AGO);
        assert_eq!(handler.handle(&due("p-1")).await, Outcome::Duplicate);
        assert!(handler.store.posts.lock().unwrap().is_empty());
        let copy = handler.store.archive.lock().unwrap()["p-1"].clone();
        assert_eq!(copy["archived_by"], s("ttl"), "the first copy stands");
        // The same, when the other path wins between the read and the transaction.
        stored(&handler, "p-2", LONG_AGO);
        *handler.store.race.lock().unwrap() = Some(Moved::AlreadyArchived);
        assert_eq!(handler.handle(&due("p-2")).await, Outcome::Duplicate);
        assert!(handler.store.posts.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_post_gone_and_never_archived_is_ignored() {
        let handler = handler();
        assert_eq!(handler.handle(&due("p-9")).await, Outcome::Done);
        assert_eq!(counts(&handler), (0, 1));
    }

    #[tokio::test]
    async fn a_ttl_record_is_archived_once_and_other_deletions_not_at_all() {
        let handler = handler();
        assert_eq!(handler.handle(&ttl_record("p-1")).await, Outcome::Done);
        let copy = handler.store.archive.lock().unwrap()["p-1"].clone();
        assert_eq!(copy["archived_by"], s("ttl"));
        assert!(!copy.contains_key("listing"));
        assert_eq!(handler.handle(&ttl_record("p-1")).await, Outcome::Duplicate);
        let rejected = Message {
            body: r#"{"eventName":"REMOVE","dynamodb":{"Keys":{"post_id":{"S":"p-2"}},"OldImage":{"post_id":{"S":"p-2"}}}}"#.into(),
            ..Message::default()
        };
        assert_eq!(handler.handle(&rejected).await, Outcome::Done);
        assert_eq!(handler.store.archive.lock().unwrap().len(), 1);
        assert_eq!(counts(&handler), (1, 1));
    }

    #[tokio::test]
    async fn an_invalid_message_is_permanent() {
        let handler = handler();
        for (body, kind) in [
            ("nope", kind::INVALID_JSON),
            (r#"{"id":"p-1"}"#, kind::INVALID_MESSAGE),
        ] {
            let message = Message {
                body: body.into(),
                ..Message::default()
            };
            match handler.handle(&message).await {
                Outcome::Permanent(reason) => assert_eq!(reason.kind, kind, "{body}"),
                other => panic!("{body}: expected permanent, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_cancelled_move_and_store_errors_are_retried() {
        let handler = handler();
        stored(&handler, "p-1", LONG_AGO);
        *handler.store.race.lock().unwrap() = Some(Moved::Cancelled("None, None".into()));
        match handler.handle(&due("p-1")).await {
            Outcome::Retry(reason) => assert_eq!(reason.kind, TRANSACTION_CANCELLED),
            other => panic!("expected a retry, got {other:?}"),
        }
        *handler.store.fail.lock().unwrap() = Some(AwsError {
            class: ErrorClass::Retryable,
            code: "ThrottlingException".into(),
            message: "slow down".into(),
        });
        assert_eq!(
            handler.handle(&due("p-1")).await,
            Outcome::unavailable("ThrottlingException", "slow down")
        );
        *handler.store.fail.lock().unwrap() = None;
        assert_eq!(handler.handle(&due("p-1")).await, Outcome::Done);
        assert_eq!(counts(&handler), (1, 0));
    }
}
