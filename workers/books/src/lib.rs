//! # books-worker
//!
//! The command side of books. Consumes the FIFO commands queue (fed by `POST /books`,
//! `PUT /books/{book_id}` and `DELETE /books/{book_id}` through API Gateway, one message group
//! per book, so the engine applies a book's commands in order) and applies each command with
//! optimistic concurrency (see [`store`]):
//! - applied: the book changes and the command is recorded `APPLIED` ([`Outcome::Done`]);
//! - decided before (a replay of the same request id): nothing is written
//!   ([`Outcome::Duplicate`]); the same id with another payload is a reused idempotency key
//!   and goes to the DLQ;
//! - refused by the book's state (a stale `If-Match`, no such book, already exists), by its
//!   owner (an update or delete by anyone but the book's creator: `not-owner`) or a wrong
//!   ISBN check digit: the book is untouched and the command is recorded `REJECTED` with the
//!   reason, which its sender (only) reads at `GET /books/{book_id}/commands/{request_id}`. The
//!   message is then finished: retrying cannot change the answer, and a client's mistake is
//!   not an operator's incident (counted as `commands_rejected`);
//! - a message the gateway could not have sent goes to the DLQ;
//! - DynamoDB throttling, timeouts, 5xx and transaction conflicts are retried with backoff,
//!   holding back only that book's later commands.
//!
//! The query side is API Gateway reading the `books` table directly: no code here. The books
//! are a shared catalogue (every caller reads every book); the command records are their
//! sender's (each carries `owner_id`, which the gateway compares with the caller's).

pub mod command;
pub mod store;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use clap::Parser;
use fleet::kind;
use fleet::worker::WorkerArgs;
use fleet::{Handler, Message, Metrics, Outcome};
use tracing::{info, warn};

use crate::command::{Command, Rejection};
use crate::store::{Apply, BookStore, Recorded};

/// Command line and environment of the `books-worker` binary.
#[derive(Debug, Parser)]
#[command(
    name = "books-worker",
    version,
    about = "Applies book commands from the FIFO books queue to DynamoDB"
)]
pub struct Config {
    /// The books table (partition key `book_id`, index `by-author`).
    #[arg(long, env = "BOOKS_TABLE", value_name = "TABLE")]
    pub books_table: String,

    /// The command records table (partition key `book_id`, sort key `request_id`).
    #[arg(long, env = "BOOK_COMMANDS_TABLE", value_name = "TABLE")]
    pub commands_table: String,

    /// What every worker has: the engine, logs, threads.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// The books handler, over any [`BookStore`].
#[derive(Debug)]
pub struct BooksHandler<S> {
    store: S,
    applied: Arc<AtomicU64>,
    rejected: Arc<AtomicU64>,
}

impl<S: BookStore> BooksHandler<S> {
    /// A handler writing to `store`, counting `commands_applied` and `commands_rejected`.
    pub fn new(store: S, metrics: &Metrics) -> Self {
        Self {
            store,
            applied: metrics.counter("commands_applied"),
            rejected: metrics.counter("commands_rejected"),
        }
    }

    async fn reject(&self, command: &Command, rejection: Rejection) -> Outcome {
        match self.store.reject(command, &rejection).await {
            Ok(Recorded::Recorded) => {
                Metrics::incr(&self.rejected);
                info!(
                    book_id = %command.book_id,
                    request_id = %command.request_id,
                    reason = rejection.reason,
                    detail = %rejection.detail,
                    "command rejected"
                );
                Outcome::Done
            }
            Ok(Recorded::AlreadyDecided { payload_hash }) => self.replayed(command, payload_hash),
            Err(err) => err.into_outcome(),
        }
    }

    fn replayed(&self, command: &Command, recorded_hash: Option<String>) -> Outcome {
        match recorded_hash {
            Some(hash) if hash != command.payload_hash => {
                warn!(request_id = %command.request_id, "idempotency key reused with another payload");
                Outcome::permanent(
                    kind::CONFLICT,
                    format!(
                        "request {} on book {} was decided with another payload: the idempotency key was reused; the first command stands",
                        command.request_id, command.book_id
                    ),
                )
            }
            _ => Outcome::Duplicate,
        }
    }
}

impl<S: BookStore> Handler for BooksHandler<S> {
    async fn handle(&self, message: &Message) -> Outcome {
        let command = match Command::from_message(message) {
            Ok(command) => command,
            Err(malformed) => return Outcome::permanent(malformed.kind, malformed.message),
        };
        if let Err(rejection) = command.check() {
            return self.reject(&command, rejection).await;
        }
        match self.store.apply(&command).await {
            Ok(Apply::Applied) => {
                Metrics::incr(&self.applied);
                Outcome::Done
            }
            Ok(Apply::Duplicate { payload_hash }) => self.replayed(&command, payload_hash),
            Ok(Apply::Refused { current }) => match command.rejection(current.as_ref()) {
                Some(rejection) => self.reject(&command, rejection).await,
                None => Outcome::retry(
                    "concurrent-change",
                    format!(
                        "book {} changed while the command was applied",
                        command.book_id
                    ),
                ),
            },
            Err(err) => err.into_outcome(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use fleet::{AwsError, ErrorClass};

    use super::*;
    use crate::command::tests::{command, BOOK};
    use crate::command::Kind;

    /// Books by id (version, owner), decisions by request id (status, hash), and an injected
    /// failure.
    #[derive(Default)]
    struct FakeStore {
        books: Mutex<HashMap<String, (u64, String)>>,
        decisions: Mutex<HashMap<String, (&'static str, String)>>,
        fail: Mutex<Option<AwsError>>,
    }

    impl BookStore for FakeStore {
        async fn apply(&self, c: &Command) -> Result<Apply, AwsError> {
            if let Some(err) = self.fail.lock().unwrap().clone() {
                return Err(err);
            }
            if let Some((_, hash)) = self.decisions.lock().unwrap().get(&c.request_id) {
                return Ok(Apply::Duplicate {
                    payload_hash: Some(hash.clone()),
                });
            }
            let mut books = self.books.lock().unwrap();
            let current = books.get(&c.book_id).cloned();
            let version = current.as_ref().map(|(v, _)| *v);
            let owned = current.as_ref().is_some_and(|(_, o)| *o == c.owner);
            let ok = match c.kind {
                Kind::Create => current.is_none(),
                Kind::Update => owned && version == c.if_match,
                Kind::Delete => owned && (c.if_match.is_none() || version == c.if_match),
            };
            if !ok {
                return Ok(Apply::Refused {
                    current: current.map(|(version, owner)| crate::command::Current {
                        version,
                        owner: Some(owner),
                    }),
                });
            }
            match c.kind {
                Kind::Delete => books.remove(&c.book_id),
                Kind::Create => books.insert(c.book_id.clone(), (1, c.owner.clone())),
                Kind::Update => {
                    let owner = c.owner.clone();
                    books.insert(c.book_id.clone(), (c.next_version().unwrap(), owner))
                }
            };
            self.decisions
                .lock()
                .unwrap()
                .insert(c.request_id.clone(), ("APPLIED", c.payload_hash.clone()));
            Ok(Apply::Applied)
        }

        async fn reject(&self, c: &Command, r: &Rejection) -> Result<Recorded, AwsError> {
            let mut decisions = self.decisions.lock().unwrap();
            if let Some((_, hash)) = decisions.get(&c.request_id) {
                return Ok(Recorded::AlreadyDecided {
                    payload_hash: Some(hash.clone()),
                });
            }
            decisions.insert(c.request_id.clone(), (r.reason, c.payload_hash.clone()));
            Ok(Recorded::Recorded)
        }
    }

    fn handler() -> BooksHandler<FakeStore> {
        BooksHandler::new(FakeStore::default(), &Metrics::new())
    }

    fn with_request(mut m: Message, id: &str) -> Message {
        let v = aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(id)
            .build()
            .unwrap();
        m.attributes.insert("requestId".into(), v);
        m
    }

    #[tokio::test]
    async fn create_update_delete_apply_and_a_replay_writes_nothing() {
        let h = handler();
        let create = command("CREATE", None, BOOK);
        assert_eq!(h.handle(&create).await, Outcome::Done);
        assert_eq!(h.handle(&create).await, Outcome::Duplicate);
        let update = with_request(command("UPDATE", Some("1"), BOOK), "r-2");
        assert_eq!(h.handle(&update).await, Outcome::Done);
        assert_eq!(h.store.books.lock().unwrap()["b-1"].0, 2);
        let delete = with_request(command("DELETE", Some("2"), "{}"), "r-3");
        assert_eq!(h.handle(&delete).await, Outcome::Done);
        assert!(h.store.books.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_stale_version_is_recorded_as_rejected_and_finished() {
        let h = handler();
        h.handle(&command("CREATE", None, BOOK)).await;
        h.handle(&with_request(command("UPDATE", Some("1"), BOOK), "r-2"))
            .await;
        let stale = with_request(command("UPDATE", Some("1"), BOOK), "r-3");
        assert_eq!(h.handle(&stale).await, Outcome::Done);
        assert_eq!(h.store.decisions.lock().unwrap()["r-3"].0, "stale-version");
        assert_eq!(h.store.books.lock().unwrap()["b-1"].0, 2, "not overwritten");
        assert_eq!(h.rejected.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(h.handle(&stale).await, Outcome::Duplicate, "decided once");
    }

    fn from(mut m: Message, owner: &str) -> Message {
        let v = aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(owner)
            .build()
            .unwrap();
        m.attributes.insert(crate::command::ATTR_OWNER_ID.into(), v);
        m
    }

    #[tokio::test]
    async fn only_the_creator_changes_a_book() {
        let h = handler();
        h.handle(&command("CREATE", None, BOOK)).await;
        let update = from(
            with_request(command("UPDATE", Some("1"), BOOK), "r-2"),
            "owner-b",
        );
        assert_eq!(
            h.handle(&update).await,
            Outcome::Done,
            "finished, not retried"
        );
        assert_eq!(h.store.decisions.lock().unwrap()["r-2"].0, "not-owner");
        let delete = from(
            with_request(command("DELETE", None, "{}"), "r-3"),
            "owner-b",
        );
        assert_eq!(h.handle(&delete).await, Outcome::Done);
        assert_eq!(h.store.decisions.lock().unwrap()["r-3"].0, "not-owner");
        assert_eq!(
            h.store.books.lock().unwrap()["b-1"],
            (1, "owner-a".to_owned()),
            "untouched"
        );
        let mine = with_request(command("UPDATE", Some("1"), BOOK), "r-4");
        assert_eq!(h.handle(&mine).await, Outcome::Done);
        assert_eq!(h.store.books.lock().unwrap()["b-1"].0, 2);
    }

    #[tokio::test]
    async fn a_bad_check_digit_is_rejected_without_touching_the_book() {
        let h = handler();
        let body = BOOK.replace("40615-7", "40615-8");
        assert_eq!(
            h.handle(&command("CREATE", None, &body)).await,
            Outcome::Done
        );
        assert_eq!(h.store.decisions.lock().unwrap()["r-1"].0, "invalid-isbn");
        assert!(h.store.books.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_reused_key_with_another_payload_is_dead_lettered() {
        let h = handler();
        h.handle(&command("CREATE", None, BOOK)).await;
        let other = command("CREATE", None, &BOOK.replace("Dune", "Emma"));
        let outcome = h.handle(&other).await;
        assert!(
            matches!(&outcome, Outcome::Permanent(r) if r.kind == kind::CONFLICT),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn malformed_messages_are_dead_lettered_and_store_errors_keep_their_class() {
        let h = handler();
        let outcome = h.handle(&command("CREATE", None, "not json")).await;
        assert!(matches!(&outcome, Outcome::Permanent(r) if r.kind == kind::INVALID_JSON));
        let outcome = h.handle(&command("CREATE", None, r#"{"isbn":1}"#)).await;
        assert!(matches!(&outcome, Outcome::Permanent(r) if r.kind == kind::INVALID_MESSAGE));
        *h.store.fail.lock().unwrap() = Some(AwsError {
            class: ErrorClass::Retryable,
            code: "ProvisionedThroughputExceededException".into(),
            message: "slow down".into(),
        });
        let outcome = h.handle(&command("CREATE", None, BOOK)).await;
        assert!(matches!(outcome, Outcome::Retry(_)), "{outcome:?}");
    }
}
