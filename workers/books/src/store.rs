//! Where books live: the narrow trait the handler needs, and its DynamoDB implementation.
//!
//! Two tables: `books` (the query side, one row per live book, with a `version`) and
//! `book-commands` (one record per command: what became of it). A command is applied with ONE
//! `TransactWriteItems`: its record (only if absent: a replay applies nothing twice) and the
//! change to the book (only at the expected version: optimistic concurrency; an update or a
//! delete also only by the book's owner, `owner_id`, set once by its create). Both items carry
//! the sender's `owner_id`: the book its creator's, the record its sender's (what
//! `GET /books/{book_id}/commands/{request_id}` checks).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use fleet::dynamodb::cancellation_codes;
use fleet::dynamodb::Insert;
use fleet::util::now_ms;
use fleet::{classify, AwsError, ErrorClass, Metrics};

use crate::command::{Command, Current, Kind, Rejection};

/// How long command records are kept (their `expires_at` TTL): a key replayed later than this
/// is a new command.
pub const RECORD_RETENTION_SECS: u64 = 30 * 24 * 3600;

/// What became of an attempt to apply a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Apply {
    /// The book changed and the command is recorded as applied.
    Applied,
    /// The command was decided before (a replay); the hash it was decided with.
    Duplicate {
        /// The recorded command's payload hash.
        payload_hash: Option<String>,
    },
    /// The book was not in the state the command expects (or is another owner's); nothing
    /// was written.
    Refused {
        /// The book now (`None`: there is no such book).
        current: Option<Current>,
    },
}

/// What became of recording a rejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded now.
    Recorded,
    /// The command was decided before; the hash it was decided with.
    AlreadyDecided {
        /// The recorded command's payload hash.
        payload_hash: Option<String>,
    },
}

/// The books and their command records.
pub trait BookStore: Send + Sync + 'static {
    /// Applies a command and records it, atomically, unless it was decided before or the book
    /// is not in the expected state.
    fn apply(&self, command: &Command) -> impl Future<Output = Result<Apply, AwsError>> + Send;

    /// Records a command as rejected (unless it was decided before); the book is not touched.
    fn reject(
        &self,
        command: &Command,
        rejection: &Rejection,
    ) -> impl Future<Output = Result<Recorded, AwsError>> + Send;
}

/// The two tables in DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    books: String,
    commands: String,
    writes: Arc<AtomicU64>,
}

impl DynamoStore {
    /// A store over the `books` and `commands` tables, counting its write calls in `metrics`
    /// as `dynamodb_writes`.
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        books: String,
        commands: String,
        metrics: &Metrics,
    ) -> Self {
        Self {
            client,
            books,
            commands,
            writes: metrics.counter("dynamodb_writes"),
        }
    }

    /// The record of a decided command.
    fn record(
        command: &Command,
        rejection: Option<&Rejection>,
        now: u64,
    ) -> HashMap<String, AttributeValue> {
        let mut item = HashMap::from([
            ("book_id".to_owned(), s(&command.book_id)),
            ("request_id".to_owned(), s(&command.request_id)),
            ("owner_id".to_owned(), s(&command.owner)),
            ("command".to_owned(), s(command.kind.as_str())),
            ("payload_hash".to_owned(), s(&command.payload_hash)),
            ("decided_at".to_owned(), n(now)),
            (
                "expires_at".to_owned(),
                n(now / 1000 + RECORD_RETENTION_SECS),
            ),
        ]);
        match rejection {
            None => {
                item.insert("status".into(), s("APPLIED"));
                if let Some(version) = command.next_version() {
                    item.insert("version".into(), n(version));
                }
            }
            Some(r) => {
                item.insert("status".into(), s("REJECTED"));
                item.insert("reason".into(), s(r.reason));
                item.insert("detail".into(), s(&r.detail));
            }
        }
        if let Some(at) = command.received_at_ms {
            item.insert("received_at".into(), n(at));
        }
        item
    }

    /// The change to the book, conditioned on the state the command expects.
    fn change(&self, command: &Command, now: u64) -> TransactWriteItem {
        let key = HashMap::from([("book_id".to_owned(), s(&command.book_id))]);
        let expected = command.if_match.map(n);
        let built = match (command.kind, &command.book) {
            (Kind::Create, Some(book)) => {
                let mut item = key;
                item.extend([
                    ("isbn".to_owned(), s(&book.isbn)),
                    ("title".to_owned(), s(&book.title)),
                    ("author".to_owned(), s(&book.author)),
                    ("owner_id".to_owned(), s(&command.owner)),
                    ("version".to_owned(), n(1)),
                    (
                        "created_at".to_owned(),
                        n(command.received_at_ms.unwrap_or(now)),
                    ),
                    ("updated_at".to_owned(), n(now)),
                    ("last_request_id".to_owned(), s(&command.request_id)),
                ]);
                if let Some(year) = book.year {
                    item.insert("year".into(), AttributeValue::N(year.to_string()));
                }
                if !book.tags.is_empty() {
                    item.insert("tags".into(), tags(&book.tags));
                }
                let put = Put::builder()
                    .table_name(&self.books)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(book_id)")
                    .build()
                    .expect("table and item are set");
                return TransactWriteItem::builder().put(put).build();
            }
            (Kind::Update, Some(book)) => {
                let mut set = vec![
                    "#isbn = :isbn",
                    "#title = :title",
                    "#author = :author",
                    "#version = :next",
                    "#updated = :now",
                    "#rid = :rid",
                ];
                let mut remove = Vec::new();
                let mut values = HashMap::from([
                    (":isbn".to_owned(), s(&book.isbn)),
                    (":title".to_owned(), s(&book.title)),
                    (":author".to_owned(), s(&book.author)),
                    (
                        ":next".to_owned(),
                        n(command.next_version().expect("an update has If-Match")),
                    ),
                    (":now".to_owned(), n(now)),
                    (":rid".to_owned(), s(&command.request_id)),
                    (
                        ":expected".to_owned(),
                        expected.expect("an update has If-Match"),
                    ),
                    (":owner".to_owned(), s(&command.owner)),
                ]);
                match book.year {
                    Some(year) => {
                        set.push("#year = :year");
                        values.insert(":year".into(), AttributeValue::N(year.to_string()));
                    }
                    None => remove.push("#year"),
                }
                if book.tags.is_empty() {
                    remove.push("#tags");
                } else {
                    set.push("#tags = :tags");
                    values.insert(":tags".into(), tags(&book.tags));
                }
                let mut expression = format!("SET {}", set.join(", "));
                if !remove.is_empty() {
                    expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
                }
                let update = Update::builder()
                    .table_name(&self.books)
                    .set_key(Some(key))
                    .update_expression(expression)
                    .condition_expression("#version = :expected AND #owner = :owner")
                    .set_expression_attribute_names(Some(names(&[
                        "isbn", "title", "author", "version", "updated", "rid", "year", "tags",
                        "owner",
                    ])))
                    .set_expression_attribute_values(Some(values))
                    .build()
                    .expect("table, key and expression are set");
                TransactWriteItem::builder().update(update)
            }
            (Kind::Delete, _) | (_, None) => {
                let mut delete = Delete::builder()
                    .table_name(&self.books)
                    .set_key(Some(key))
                    .expression_attribute_names("#owner", "owner_id")
                    .expression_attribute_values(":owner", s(&command.owner));
                delete = match expected {
                    Some(version) => delete
                        .condition_expression("#version = :expected AND #owner = :owner")
                        .expression_attribute_names("#version", "version")
                        .expression_attribute_values(":expected", version),
                    None => {
                        delete.condition_expression("attribute_exists(book_id) AND #owner = :owner")
                    }
                };
                TransactWriteItem::builder().delete(delete.build().expect("table and key are set"))
            }
        };
        built.build()
    }

    async fn current(&self, book_id: &str) -> Result<Option<Current>, AwsError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.books)
            .key("book_id", s(book_id))
            .consistent_read(true)
            .projection_expression("#v, #o")
            .expression_attribute_names("#v", "version")
            .expression_attribute_names("#o", "owner_id")
            .send()
            .await
            .map_err(|e| classify(&e))?
            .item;
        Ok(item.as_ref().and_then(|i| {
            Some(Current {
                version: i.get("version")?.as_n().ok()?.parse().ok()?,
                owner: i.get("owner_id").and_then(|o| o.as_s().ok()).cloned(),
            })
        }))
    }

    async fn recorded_hash(&self, command: &Command) -> Result<Option<String>, AwsError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.commands)
            .key("book_id", s(&command.book_id))
            .key("request_id", s(&command.request_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(&e))?
            .item;
        Ok(hash_of(item.as_ref()))
    }
}

impl BookStore for DynamoStore {
    async fn apply(&self, command: &Command) -> Result<Apply, AwsError> {
        let now = now_ms();
        let record = Put::builder()
            .table_name(&self.commands)
            .set_item(Some(Self::record(command, None, now)))
            .condition_expression("attribute_not_exists(request_id)")
            .build()
            .expect("table and item are set");
        Metrics::incr(&self.writes);
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(record).build())
            .transact_items(self.change(command, now))
            .send()
            .await;
        let err = match result {
            Ok(_) => return Ok(Apply::Applied),
            Err(err) => err,
        };
        let Some(codes) = cancellation_codes(&err) else {
            return Err(classify(&err));
        };
        let codes: Vec<&str> = codes.iter().map(String::as_str).collect();
        match codes.as_slice() {
            ["ConditionalCheckFailed", ..] => Ok(Apply::Duplicate {
                payload_hash: self.recorded_hash(command).await?,
            }),
            [_, "ConditionalCheckFailed"] => Ok(Apply::Refused {
                current: self.current(&command.book_id).await?,
            }),
            // TransactionConflict (another writer on the same item), throttling: try again.
            _ => Err(AwsError {
                class: ErrorClass::Retryable,
                code: "TransactionCanceled".into(),
                message: format!("transaction cancelled: {}", codes.join(", ")),
            }),
        }
    }

    async fn reject(&self, command: &Command, rejection: &Rejection) -> Result<Recorded, AwsError> {
        Metrics::incr(&self.writes);
        let request = self
            .client
            .put_item()
            .table_name(&self.commands)
            .set_item(Some(Self::record(command, Some(rejection), now_ms())))
            .condition_expression("attribute_not_exists(request_id)");
        Ok(
            match fleet::dynamodb::put_if_absent(request, "payload_hash").await? {
                Insert::Created => Recorded::Recorded,
                Insert::Exists { payload_hash } => Recorded::AlreadyDecided { payload_hash },
            },
        )
    }
}

fn hash_of(item: Option<&HashMap<String, AttributeValue>>) -> Option<String> {
    item?.get("payload_hash")?.as_s().ok().cloned()
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn tags(tags: &[String]) -> AttributeValue {
    AttributeValue::L(tags.iter().map(|t| s(t)).collect())
}

/// `#name` → `name`, with `#updated` → `updated_at`, `#rid` → `last_request_id` and `#owner` →
/// `owner_id`.
fn names(short: &[&str]) -> HashMap<String, String> {
    short
        .iter()
        .map(|name| {
            let attribute = match *name {
                "updated" => "updated_at",
                "rid" => "last_request_id",
                "owner" => "owner_id",
                other => other,
            };
            (format!("#{name}"), attribute.to_owned())
        })
        .collect()
}
