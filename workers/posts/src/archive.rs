//! `archive-worker`: moves expired posts to the archive, exactly once, whichever path reports
//! them:
//! - the sweep (this process, every `--sweep-interval-secs`): a scan for posts past
//!   `expires_at`, each sent to the archive queue as `{"post_id": ...}`; the handler copies the
//!   post to the archive and deletes it in one transaction (archive only if absent, delete only
//!   if still expired);
//! - in AWS, DynamoDB TTL deletes the post and its stream record reaches the archive queue
//!   through EventBridge Pipes: the handler copies the record's `OldImage` (archive only if
//!   absent). Deletions that are not TTL's (a rejected post) are not archived.
//!
//! LocalStack's DynamoDB never expires items, so the local run and the tests use the sweep.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use fleet::dynamodb::{cancellation_codes, failed_condition};
use fleet::util::now_ms;
use fleet::{classify, AwsError, Handler, Message, Metrics, Outcome};
use serde_json::Value;
use tracing::{info, warn};

use crate::model::{n, number, s, Item};

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

impl Expired {
    /// Parses a sweep message or a DynamoDB stream record (as EventBridge Pipes delivers it).
    ///
    /// # Errors
    /// When it is neither.
    pub fn parse(body: &str) -> Result<Self, String> {
        let value: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
        if let Some(id) = value.get("post_id").and_then(Value::as_str) {
            return Ok(Expired::Due(id.to_owned()));
        }
        let Some(record) = value.get("dynamodb") else {
            return Err("neither {\"post_id\"} nor a DynamoDB stream record".into());
        };
        let by_ttl =
            value["eventName"] == "REMOVE" && value["userIdentity"]["principalId"] == TTL_PRINCIPAL;
        if !by_ttl {
            return Ok(Expired::NotExpiry);
        }
        let image = record
            .get("OldImage")
            .ok_or("a TTL record without OldImage (set the stream to OLD_IMAGE)")?;
        image_to_item(image).map(Expired::Removed)
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

/// The `archive-worker` handler.
#[derive(Debug)]
pub struct ArchiveHandler {
    dynamodb: aws_sdk_dynamodb::Client,
    posts_table: String,
    archive_table: String,
    archived: Arc<AtomicU64>,
    ignored: Arc<AtomicU64>,
}

impl ArchiveHandler {
    /// A handler over the posts and archive tables, counting `posts_archived` and
    /// `archive_ignored`.
    pub fn new(
        dynamodb: aws_sdk_dynamodb::Client,
        posts_table: String,
        archive_table: String,
        metrics: &Metrics,
    ) -> Self {
        Self {
            dynamodb,
            posts_table,
            archive_table,
            archived: metrics.counter("posts_archived"),
            ignored: metrics.counter("archive_ignored"),
        }
    }

    fn archive_put(&self, mut item: Item, by: &str) -> Put {
        item.insert("archived_at".into(), n(now_ms()));
        item.insert("archived_by".into(), s(by));
        item.remove("listing"); // not part of the archive's story, and no index there
        Put::builder()
            .table_name(&self.archive_table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(post_id)")
            .build()
            .expect("table and item are set")
    }

    async fn archive_removed(&self, item: Item) -> Outcome {
        let put = self.archive_put(item, "ttl");
        let result = self
            .dynamodb
            .put_item()
            .table_name(put.table_name())
            .set_item(Some(put.item().clone()))
            .condition_expression("attribute_not_exists(post_id)")
            .send()
            .await;
        match result {
            Ok(_) => {
                Metrics::incr(&self.archived);
                Outcome::Done
            }
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Outcome::Duplicate
            }
            Err(err) => classify(&err).into_outcome(),
        }
    }

    async fn archive_due(&self, post_id: &str) -> Outcome {
        let post = match self.get(&self.posts_table, post_id).await {
            Ok(post) => post,
            Err(err) => return err.into_outcome(),
        };
        let Some(post) = post else {
            // Gone: archived already (by the other path, or an earlier delivery), or rejected.
            return match self.get(&self.archive_table, post_id).await {
                Ok(Some(_)) => Outcome::Duplicate,
                Ok(None) => {
                    Metrics::incr(&self.ignored);
                    Outcome::Done
                }
                Err(err) => err.into_outcome(),
            };
        };
        // Archived already by the other path? Then only the delete is left (no transaction
        // bound to fail).
        match self.get(&self.archive_table, post_id).await {
            Ok(Some(_)) => return self.delete_post(post_id).await,
            Ok(None) => {}
            Err(err) => return err.into_outcome(),
        }
        let Some(expires_at) = number(&post, "expires_at") else {
            Metrics::incr(&self.ignored);
            warn!(post_id, "a post without expires_at: not archived");
            return Outcome::Done;
        };
        if expires_at * 1000 > now_ms() {
            Metrics::incr(&self.ignored);
            return Outcome::Done;
        }
        let delete = Delete::builder()
            .table_name(&self.posts_table)
            .key("post_id", s(post_id))
            .condition_expression("expires_at = :e")
            .expression_attribute_values(":e", n(expires_at))
            .build()
            .expect("table and key are set");
        let result = self
            .dynamodb
            .transact_write_items()
            .transact_items(
                TransactWriteItem::builder()
                    .put(self.archive_put(post, "sweep"))
                    .build(),
            )
            .transact_items(TransactWriteItem::builder().delete(delete).build())
            .send()
            .await;
        let Err(err) = result else {
            Metrics::incr(&self.archived);
            info!(post_id, "post archived");
            return Outcome::Done;
        };
        let Some(codes) = cancellation_codes(&err) else {
            return classify(&err).into_outcome();
        };
        if failed_condition(&codes, 0) {
            // Archived meanwhile (the TTL path): make sure the post is gone too.
            return self.delete_post(post_id).await;
        }
        Outcome::retry("transaction-cancelled", codes.join(", "))
    }

    /// Removes a post that is in the archive already: the archive's duplicate.
    async fn delete_post(&self, post_id: &str) -> Outcome {
        let removed = self
            .dynamodb
            .delete_item()
            .table_name(&self.posts_table)
            .key("post_id", s(post_id))
            .send()
            .await;
        match removed {
            Ok(_) => Outcome::Duplicate,
            Err(err) => classify(&err).into_outcome(),
        }
    }

    async fn get(&self, table: &str, post_id: &str) -> Result<Option<Item>, AwsError> {
        Ok(self
            .dynamodb
            .get_item()
            .table_name(table)
            .key("post_id", s(post_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(&e))?
            .item)
    }
}

impl Handler for ArchiveHandler {
    async fn handle(&self, message: &Message) -> Outcome {
        match Expired::parse(&message.body) {
            Ok(Expired::Due(post_id)) => self.archive_due(&post_id).await,
            Ok(Expired::Removed(item)) => self.archive_removed(item).await,
            Ok(Expired::NotExpiry) => {
                Metrics::incr(&self.ignored);
                Outcome::Done
            }
            Err(why) => Outcome::permanent("invalid-archive-message", why),
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
}
