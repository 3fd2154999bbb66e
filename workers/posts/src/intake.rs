//! `posts-worker`: stores each new post as `PENDING` (expiring 30 days after it was received),
//! with its author's owner id (`owner_id`), and asks the approval service for a decision, once
//! per post.
//!
//! "Once" holds through redeliveries and crashes: the post is written only if absent and never
//! decided (one transaction with a condition on `post-decisions`, so a rejected and deleted
//! post is not created again); the request goes to a FIFO queue deduplicated by post id (a
//! resend within 5 minutes, e.g. after a crash before the next step, is dropped by SQS); then
//! `approval_requested_at` is set, and a redelivery that finds it sends nothing.
//!
//! The handler is generic over the tables ([`store::IntakeStore`], on DynamoDB
//! [`store::DynamoIntakeStore`]) and the request queue ([`ApprovalRequests`]).

pub mod store;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use clap::Parser;
use fleet::util::now_ms;
use fleet::worker::WorkerArgs;
use fleet::{kind, AwsError, Handler, Message, Metrics, Outcome};
use tracing::info;

use crate::approval_queues::ApprovalRequests;
use crate::model::{owner_of, ApprovalRequest, PostRequest, ATTR_POST_ID, TRANSACTION_CANCELLED};
use store::{Create, IntakeStore, NewPost};

/// Command line and environment of `posts-worker`.
#[derive(Debug, Parser)]
#[command(
    name = "posts-worker",
    version,
    about = "Stores new posts and requests their approval"
)]
pub struct Config {
    /// The posts table.
    #[arg(long, env = "POSTS_TABLE", value_name = "TABLE")]
    pub posts_table: String,
    /// The decisions table (a decided post is never created again).
    #[arg(long, env = "POST_DECISIONS_TABLE", value_name = "TABLE")]
    pub decisions_table: String,
    /// The approval service's FIFO request queue.
    #[arg(long, env = "APPROVAL_REQUESTS_QUEUE_URL", value_name = "URL")]
    pub requests_queue_url: String,
    /// What every worker has: the engine, logs, threads.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// The `posts-worker` handler, over any [`IntakeStore`] and [`ApprovalRequests`].
#[derive(Debug)]
pub struct PostsHandler<S, Q> {
    store: S,
    requests: Q,
    requests_sent: Arc<AtomicU64>,
}

impl<S: IntakeStore, Q: ApprovalRequests> PostsHandler<S, Q> {
    /// A handler storing posts in `store` and requesting approvals on `requests`, counting
    /// `approval_requests_sent`.
    pub fn new(store: S, requests: Q, metrics: &Metrics) -> Self {
        Self {
            store,
            requests,
            requests_sent: metrics.counter("approval_requests_sent"),
        }
    }

    /// Writes the post unless it exists or was decided. `Ok(true)`: the approval is still to
    /// be requested.
    async fn store_post(&self, new: NewPost<'_>) -> Result<bool, Outcome> {
        // Stored before (a redelivery)? A read instead of a transaction bound to fail; the
        // transaction's conditions remain the guarantee.
        let stored = self.store.approval_requested(new.post_id).await;
        if let Some(requested) = stored.map_err(AwsError::into_outcome)? {
            return Ok(!requested);
        }
        match self.store.create(new).await {
            Ok(Create::Created) => Ok(true),
            Ok(Create::Decided) => Err(Outcome::Duplicate), // decided (and maybe deleted) already
            Ok(Create::Cancelled(codes)) => Err(Outcome::retry(TRANSACTION_CANCELLED, codes)),
            // Stored meanwhile: was the approval requested too?
            Ok(Create::Exists) => {
                let stored = self.store.approval_requested(new.post_id).await;
                Ok(!stored.map_err(AwsError::into_outcome)?.unwrap_or(false))
            }
            Err(err) => Err(err.into_outcome()),
        }
    }
}

impl<S: IntakeStore, Q: ApprovalRequests> Handler for PostsHandler<S, Q> {
    async fn handle(&self, message: &Message) -> Outcome {
        let Some(post_id) = message.attribute(ATTR_POST_ID).filter(|v| !v.is_empty()) else {
            return Outcome::permanent(
                kind::MISSING_ATTRIBUTE,
                format!("message attribute {ATTR_POST_ID} is missing"),
            );
        };
        let post: PostRequest = match fleet::json::from_body(&message.body) {
            Ok(post) => post,
            Err(e) => {
                return Outcome::permanent(
                    kind::INVALID_MESSAGE,
                    format!("the body is not a post: {e}"),
                )
            }
        };
        let new = NewPost {
            post_id,
            owner: owner_of(message),
            post: &post,
            created_at_ms: message.envelope().received_at_or_now(),
        };
        match self.store_post(new).await {
            Ok(true) => {}
            Ok(false) => return Outcome::Duplicate,
            Err(outcome) => return outcome,
        }
        let request = ApprovalRequest {
            post_id: post_id.to_owned(),
            post,
        };
        if let Err(err) = self.requests.send(&request).await {
            return err.into_outcome();
        }
        Metrics::incr(&self.requests_sent);
        // `Ok(false)`: decided and deleted already (a fast rejection), nothing to mark.
        if let Err(err) = self.store.mark_requested(post_id, now_ms()).await {
            return err.into_outcome();
        }
        info!(post_id, "post stored, approval requested");
        Outcome::Done
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    use fleet::ErrorClass;

    use super::*;
    use crate::model::{ATTR_OWNER_ID, NO_OWNER};

    /// A stored post: its owner and whether its approval was requested.
    #[derive(Debug, Clone, PartialEq)]
    struct Row {
        owner: String,
        title: String,
        requested: bool,
    }

    /// The posts and decisions tables in memory, with an optional injected failure and an
    /// optional transaction cancellation.
    #[derive(Default)]
    struct FakeStore {
        posts: Mutex<HashMap<String, Row>>,
        decided: Mutex<HashSet<String>>,
        fail: Mutex<Option<AwsError>>,
        cancel: Mutex<Option<String>>,
    }

    impl FakeStore {
        fn failure(&self) -> Result<(), AwsError> {
            self.fail.lock().unwrap().clone().map_or(Ok(()), Err)
        }
    }

    impl IntakeStore for FakeStore {
        async fn approval_requested(&self, post_id: &str) -> Result<Option<bool>, AwsError> {
            self.failure()?;
            Ok(self.posts.lock().unwrap().get(post_id).map(|r| r.requested))
        }

        async fn create(&self, new: NewPost<'_>) -> Result<Create, AwsError> {
            self.failure()?;
            if self.decided.lock().unwrap().contains(new.post_id) {
                return Ok(Create::Decided);
            }
            if let Some(codes) = self.cancel.lock().unwrap().clone() {
                return Ok(Create::Cancelled(codes));
            }
            let mut posts = self.posts.lock().unwrap();
            if posts.contains_key(new.post_id) {
                return Ok(Create::Exists);
            }
            let row = Row {
                owner: new.owner.to_owned(),
                title: new.post.title.clone(),
                requested: false,
            };
            posts.insert(new.post_id.to_owned(), row);
            Ok(Create::Created)
        }

        async fn mark_requested(&self, post_id: &str, _at_ms: u64) -> Result<bool, AwsError> {
            self.failure()?;
            Ok(match self.posts.lock().unwrap().get_mut(post_id) {
                Some(row) => {
                    row.requested = true;
                    true
                }
                None => false,
            })
        }
    }

    /// The request queue in memory.
    #[derive(Default)]
    struct FakeRequests {
        sent: Mutex<Vec<ApprovalRequest>>,
        fail: Mutex<Option<AwsError>>,
    }

    impl ApprovalRequests for FakeRequests {
        async fn send(&self, request: &ApprovalRequest) -> Result<(), AwsError> {
            if let Some(err) = self.fail.lock().unwrap().clone() {
                return Err(err);
            }
            self.sent.lock().unwrap().push(request.clone());
            Ok(())
        }
    }

    type Posts = PostsHandler<FakeStore, FakeRequests>;

    fn handler() -> Posts {
        PostsHandler::new(
            FakeStore::default(),
            FakeRequests::default(),
            &Metrics::new(),
        )
    }

    fn message(attrs: &[(&str, &str)], body: &str) -> Message {
        Message {
            message_id: "m-1".into(),
            body: body.into(),
            sent_at_ms: Some(1_000),
            attributes: attrs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), fleet::dlq::string(v)))
                .collect(),
            ..Message::default()
        }
    }

    const BODY: &str = r#"{"title":"Hello","body":"text","author":"Ann"}"#;

    fn post(id: &str) -> Message {
        message(&[(ATTR_POST_ID, id), (ATTR_OWNER_ID, "owner-a")], BODY)
    }

    fn throttled() -> AwsError {
        AwsError {
            class: ErrorClass::Retryable,
            code: "ThrottlingException".into(),
            message: "slow down".into(),
        }
    }

    fn sent(handler: &Posts) -> Vec<String> {
        let sent = handler.requests.sent.lock().unwrap();
        sent.iter().map(|r| r.post_id.clone()).collect()
    }

    #[tokio::test]
    async fn a_new_post_is_stored_pending_and_its_approval_requested_once() {
        let handler = handler();
        assert_eq!(handler.handle(&post("p-1")).await, Outcome::Done);
        let row = handler.store.posts.lock().unwrap()["p-1"].clone();
        assert_eq!(
            row,
            Row {
                owner: "owner-a".into(),
                title: "Hello".into(),
                requested: true
            }
        );
        let request = handler.requests.sent.lock().unwrap()[0].clone();
        assert_eq!(request.post_id, "p-1");
        assert_eq!(request.post.author, "Ann");
        assert_eq!(handler.requests_sent.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_redelivery_is_a_duplicate_and_requests_nothing() {
        let handler = handler();
        assert_eq!(handler.handle(&post("p-1")).await, Outcome::Done);
        assert_eq!(handler.handle(&post("p-1")).await, Outcome::Duplicate);
        assert_eq!(sent(&handler), ["p-1"]);
    }

    #[tokio::test]
    async fn a_post_stored_before_its_request_was_sent_is_requested_on_redelivery() {
        let handler = handler();
        *handler.requests.fail.lock().unwrap() = Some(throttled());
        assert_eq!(
            handler.handle(&post("p-1")).await,
            Outcome::unavailable("ThrottlingException", "slow down")
        );
        assert!(!handler.store.posts.lock().unwrap()["p-1"].requested);
        *handler.requests.fail.lock().unwrap() = None;
        assert_eq!(handler.handle(&post("p-1")).await, Outcome::Done);
        assert_eq!(sent(&handler), ["p-1"]);
        assert!(handler.store.posts.lock().unwrap()["p-1"].requested);
    }

    #[tokio::test]
    async fn a_decided_post_is_not_created_again() {
        let handler = handler();
        handler.store.decided.lock().unwrap().insert("p-1".into());
        assert_eq!(handler.handle(&post("p-1")).await, Outcome::Duplicate);
        assert!(handler.store.posts.lock().unwrap().is_empty());
        assert!(sent(&handler).is_empty());
    }

    #[tokio::test]
    async fn a_message_without_an_owner_stores_the_post_as_no_one_s() {
        let handler = handler();
        let anonymous = message(&[(ATTR_POST_ID, "p-1")], BODY);
        assert_eq!(handler.handle(&anonymous).await, Outcome::Done);
        assert_eq!(handler.store.posts.lock().unwrap()["p-1"].owner, NO_OWNER);
    }

    #[tokio::test]
    async fn a_missing_post_id_or_an_invalid_body_is_permanent_without_a_write() {
        let handler = handler();
        let cases = [
            (
                message(&[(ATTR_OWNER_ID, "o")], BODY),
                kind::MISSING_ATTRIBUTE,
            ),
            (
                message(&[(ATTR_POST_ID, ""), (ATTR_OWNER_ID, "o")], BODY),
                kind::MISSING_ATTRIBUTE,
            ),
            (
                message(&[(ATTR_POST_ID, "p-1")], "not json"),
                kind::INVALID_MESSAGE,
            ),
            (
                message(&[(ATTR_POST_ID, "p-1")], r#"{"title":"t","body":"b"}"#),
                kind::INVALID_MESSAGE,
            ),
            (
                message(
                    &[(ATTR_POST_ID, "p-1")],
                    r#"{"title":"t","body":"b","author":"a","x":1}"#,
                ),
                kind::INVALID_MESSAGE,
            ),
        ];
        for (message, kind) in cases {
            match handler.handle(&message).await {
                Outcome::Permanent(reason) => assert_eq!(reason.kind, kind, "{}", message.body),
                other => panic!("{}: expected permanent, got {other:?}", message.body),
            }
        }
        assert!(handler.store.posts.lock().unwrap().is_empty());
        assert!(sent(&handler).is_empty());
    }

    #[tokio::test]
    async fn failures_of_the_tables_are_retried_by_their_class() {
        let handler = handler();
        *handler.store.fail.lock().unwrap() = Some(throttled());
        assert_eq!(
            handler.handle(&post("p-1")).await,
            Outcome::unavailable("ThrottlingException", "slow down")
        );
        *handler.store.fail.lock().unwrap() = None;
        *handler.store.cancel.lock().unwrap() = Some("None, TransactionConflict".into());
        match handler.handle(&post("p-1")).await {
            Outcome::Retry(reason) => assert_eq!(reason.kind, TRANSACTION_CANCELLED),
            other => panic!("expected a retry, got {other:?}"),
        }
        assert!(sent(&handler).is_empty());
    }
}
