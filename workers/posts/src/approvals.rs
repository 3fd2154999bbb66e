//! `approvals-worker`: applies the approval service's decisions. An approval makes the post
//! public (`status` and `listing` = `APPROVED`, the key of the public index); a rejection
//! deletes it. Either way the decision is recorded in `post-decisions`, in the same
//! transaction, once: a repeated response is a duplicate, and a response for an unknown post
//! (or one no longer pending) is noted and finished, never retried. The decision record keeps
//! the post's `owner_id` (its author's), which outlives a rejected, deleted post.
//!
//! The handler is generic over the tables ([`store::DecisionStore`], on DynamoDB
//! [`store::DynamoDecisionStore`]).

pub mod store;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use clap::Parser;
use fleet::util::now_ms;
use fleet::worker::WorkerArgs;
use fleet::{kind, Handler, Message, Metrics, Outcome};
use tracing::{info, warn};

use crate::model::{ApprovalResponse, APPROVED, PENDING, REJECTED, TRANSACTION_CANCELLED};
use store::{Applied, Decision, DecisionStore};

/// Command line and environment of `approvals-worker`.
#[derive(Debug, Parser)]
#[command(
    name = "approvals-worker",
    version,
    about = "Applies the approval service's decisions to posts"
)]
pub struct Config {
    /// The posts table.
    #[arg(long, env = "POSTS_TABLE", value_name = "TABLE")]
    pub posts_table: String,
    /// The decisions table.
    #[arg(long, env = "POST_DECISIONS_TABLE", value_name = "TABLE")]
    pub decisions_table: String,
    /// What every worker has: the engine, logs, threads.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// The `approvals-worker` handler, over any [`DecisionStore`].
#[derive(Debug)]
pub struct ApprovalsHandler<S> {
    store: S,
    ignored: Arc<AtomicU64>,
}

impl<S: DecisionStore> ApprovalsHandler<S> {
    /// A handler over `store`, counting `responses_ignored`.
    pub fn new(store: S, metrics: &Metrics) -> Self {
        Self {
            store,
            ignored: metrics.counter("responses_ignored"),
        }
    }

    /// A decision for an unknown or no longer pending post: counted and finished.
    fn ignore(&self, response: &ApprovalResponse) -> Outcome {
        Metrics::incr(&self.ignored);
        warn!(post_id = %response.post_id, decision = %response.decision, "a decision for an unknown or no longer pending post: ignored");
        Outcome::Done
    }
}

impl<S: DecisionStore> Handler for ApprovalsHandler<S> {
    async fn handle(&self, message: &Message) -> Outcome {
        let response: ApprovalResponse = match serde_json::from_str(&message.body) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::permanent(
                    kind::INVALID_RESPONSE,
                    format!("not an approval response: {e}"),
                )
            }
        };
        let approve = match response.decision.as_str() {
            APPROVED => true,
            REJECTED => false,
            other => {
                return Outcome::permanent(
                    kind::INVALID_RESPONSE,
                    format!("unknown decision {other:?}"),
                )
            }
        };
        // Decided before (a repeated response)? A read instead of a transaction bound to fail.
        // The transaction's conditions remain the guarantee.
        match self.store.decided(&response.post_id).await {
            Ok(true) => return Outcome::Duplicate,
            Ok(false) => {}
            Err(err) => return err.into_outcome(),
        }
        // The post, for its owner (and, when it is unknown or decided, instead of a
        // transaction bound to fail; the transaction's conditions remain the guarantee).
        let post = match self.store.post(&response.post_id).await {
            Ok(post) => post,
            Err(err) => return err.into_outcome(),
        };
        let pending = post
            .as_ref()
            .and_then(|p| p.get("status"))
            .and_then(|v| v.as_s().ok())
            .is_some_and(|v| v == PENDING);
        if !pending {
            return self.ignore(&response);
        }
        let decision = Decision {
            post_id: &response.post_id,
            approve,
            decision: &response.decision,
            reason: response.reason.as_deref(),
            owner: post.as_ref().and_then(|p| p.get("owner_id")).cloned(),
            at_ms: now_ms(),
        };
        match self.store.apply(decision).await {
            Ok(Applied::Applied) => {
                info!(post_id = %response.post_id, decision = %response.decision, "decision applied");
                Outcome::Done
            }
            Ok(Applied::Decided) => Outcome::Duplicate,
            Ok(Applied::NotPending) => self.ignore(&response),
            Ok(Applied::Cancelled(codes)) => Outcome::retry(TRANSACTION_CANCELLED, codes),
            Err(err) => err.into_outcome(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    use aws_sdk_dynamodb::types::AttributeValue;
    use fleet::{AwsError, ErrorClass};

    use super::*;
    use crate::model::{s, Item};

    /// A recorded decision: what, why, whose.
    type Record = (String, Option<String>, Option<AttributeValue>);

    /// The posts and decisions tables in memory, with an optional injected failure and an
    /// optional outcome forced on the next transaction (a race lost to another writer).
    #[derive(Default)]
    struct FakeStore {
        posts: Mutex<HashMap<String, Item>>,
        decisions: Mutex<HashMap<String, Record>>,
        fail: Mutex<Option<AwsError>>,
        race: Mutex<Option<Applied>>,
    }

    impl FakeStore {
        fn failure(&self) -> Result<(), AwsError> {
            self.fail.lock().unwrap().clone().map_or(Ok(()), Err)
        }
    }

    impl DecisionStore for FakeStore {
        async fn decided(&self, post_id: &str) -> Result<bool, AwsError> {
            self.failure()?;
            Ok(self.decisions.lock().unwrap().contains_key(post_id))
        }

        async fn post(&self, post_id: &str) -> Result<Option<Item>, AwsError> {
            self.failure()?;
            Ok(self.posts.lock().unwrap().get(post_id).cloned())
        }

        async fn apply(&self, d: Decision<'_>) -> Result<Applied, AwsError> {
            self.failure()?;
            if let Some(applied) = self.race.lock().unwrap().take() {
                return Ok(applied);
            }
            let mut posts = self.posts.lock().unwrap();
            let mut decisions = self.decisions.lock().unwrap();
            if decisions.contains_key(d.post_id) {
                return Ok(Applied::Decided);
            }
            let pending = posts
                .get(d.post_id)
                .is_some_and(|p| p.get("status") == Some(&s(PENDING)));
            if !pending {
                return Ok(Applied::NotPending);
            }
            if d.approve {
                let post = posts.get_mut(d.post_id).unwrap();
                post.insert("status".into(), s(APPROVED));
                post.insert("listing".into(), s(APPROVED));
            } else {
                posts.remove(d.post_id);
            }
            let record = (
                d.decision.to_owned(),
                d.reason.map(str::to_owned),
                d.owner.clone(),
            );
            decisions.insert(d.post_id.to_owned(), record);
            Ok(Applied::Applied)
        }
    }

    fn handler() -> ApprovalsHandler<FakeStore> {
        let handler = ApprovalsHandler::new(FakeStore::default(), &Metrics::new());
        for id in ["p-1", "p-2"] {
            let post = Item::from([
                ("post_id".to_owned(), s(id)),
                ("status".to_owned(), s(PENDING)),
                ("owner_id".to_owned(), s("owner-a")),
            ]);
            handler.store.posts.lock().unwrap().insert(id.into(), post);
        }
        handler
    }

    fn response(body: &str) -> Message {
        Message {
            message_id: "m-1".into(),
            body: body.into(),
            ..Message::default()
        }
    }

    fn status(handler: &ApprovalsHandler<FakeStore>, id: &str) -> Option<AttributeValue> {
        let posts = handler.store.posts.lock().unwrap();
        posts.get(id).map(|p| p["status"].clone())
    }

    const APPROVE: &str = r#"{"post_id":"p-1","decision":"APPROVED"}"#;
    const REJECT: &str = r#"{"post_id":"p-2","decision":"REJECTED","reason":"spam"}"#;

    #[tokio::test]
    async fn an_approval_makes_the_post_public_and_is_recorded_once() {
        let handler = handler();
        assert_eq!(handler.handle(&response(APPROVE)).await, Outcome::Done);
        assert_eq!(status(&handler, "p-1"), Some(s(APPROVED)));
        assert_eq!(
            handler.store.posts.lock().unwrap()["p-1"]["listing"],
            s(APPROVED)
        );
        let record = handler.store.decisions.lock().unwrap()["p-1"].clone();
        assert_eq!(record, (APPROVED.into(), None, Some(s("owner-a"))));
        // The same response again.
        assert_eq!(handler.handle(&response(APPROVE)).await, Outcome::Duplicate);
        // A contradicting response after the decision.
        let reject = APPROVE.replace("APPROVED", "REJECTED");
        assert_eq!(handler.handle(&response(&reject)).await, Outcome::Duplicate);
        assert_eq!(status(&handler, "p-1"), Some(s(APPROVED)));
    }

    #[tokio::test]
    async fn a_rejection_deletes_the_post_and_keeps_the_decision_with_its_owner() {
        let handler = handler();
        assert_eq!(handler.handle(&response(REJECT)).await, Outcome::Done);
        assert_eq!(status(&handler, "p-2"), None);
        let record = handler.store.decisions.lock().unwrap()["p-2"].clone();
        assert_eq!(
            record,
            (REJECTED.into(), Some("spam".into()), Some(s("owner-a")))
        );
        assert_eq!(handler.handle(&response(REJECT)).await, Outcome::Duplicate);
    }

    #[tokio::test]
    async fn a_decision_for_an_unknown_or_no_longer_pending_post_is_ignored() {
        let handler = handler();
        let unknown = r#"{"post_id":"p-9","decision":"APPROVED"}"#;
        assert_eq!(handler.handle(&response(unknown)).await, Outcome::Done);
        handler
            .store
            .posts
            .lock()
            .unwrap()
            .get_mut("p-1")
            .unwrap()
            .insert("status".into(), s(APPROVED));
        assert_eq!(handler.handle(&response(APPROVE)).await, Outcome::Done);
        assert!(handler.store.decisions.lock().unwrap().is_empty());
        assert_eq!(handler.ignored.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_transaction_lost_to_a_race_says_what_won() {
        let handler = handler();
        *handler.store.race.lock().unwrap() = Some(Applied::Decided);
        assert_eq!(handler.handle(&response(APPROVE)).await, Outcome::Duplicate);
        *handler.store.race.lock().unwrap() = Some(Applied::NotPending);
        assert_eq!(handler.handle(&response(APPROVE)).await, Outcome::Done);
        assert_eq!(handler.ignored.load(Ordering::Relaxed), 1);
        *handler.store.race.lock().unwrap() = Some(Applied::Cancelled("None, None".into()));
        match handler.handle(&response(APPROVE)).await {
            Outcome::Retry(reason) => assert_eq!(reason.kind, TRANSACTION_CANCELLED),
            other => panic!("expected a retry, got {other:?}"),
        }
        assert_eq!(status(&handler, "p-1"), Some(s(PENDING)));
    }

    #[tokio::test]
    async fn an_invalid_response_is_permanent_without_a_change() {
        let handler = handler();
        for body in [
            "not json",
            r#"{"post_id":"p-1"}"#,
            r#"{"post_id":"p-1","decision":"MAYBE"}"#,
        ] {
            match handler.handle(&response(body)).await {
                Outcome::Permanent(reason) => {
                    assert_eq!(reason.kind, kind::INVALID_RESPONSE, "{body}")
                }
                other => panic!("{body}: expected permanent, got {other:?}"),
            }
        }
        assert_eq!(status(&handler, "p-1"), Some(s(PENDING)));
        assert!(handler.store.decisions.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn store_errors_follow_their_class() {
        let handler = handler();
        *handler.store.fail.lock().unwrap() = Some(AwsError {
            class: ErrorClass::Retryable,
            code: "InternalServerError".into(),
            message: "oops".into(),
        });
        assert_eq!(
            handler.handle(&response(APPROVE)).await,
            Outcome::unavailable("InternalServerError", "oops")
        );
        *handler.store.fail.lock().unwrap() = Some(AwsError {
            class: ErrorClass::Permanent,
            code: "AccessDeniedException".into(),
            message: "no".into(),
        });
        assert!(matches!(
            handler.handle(&response(APPROVE)).await,
            Outcome::Permanent(_)
        ));
    }
}
