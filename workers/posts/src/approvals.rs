//! `approvals-worker`: applies the approval service's decisions. An approval makes the post
//! public (`status` and `listing` = `APPROVED`, the key of the public index); a rejection
//! deletes it. Either way the decision is recorded in `post-decisions`, in the same
//! transaction, once: a repeated response is a duplicate, and a response for an unknown post
//! (or one no longer pending) is noted and finished, never retried. The decision record keeps
//! the post's `owner_id` (its author's), which outlives a rejected, deleted post.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem, Update};
use fleet::dynamodb::{cancellation_codes, failed_condition};
use fleet::util::now_ms;
use fleet::{classify, Handler, Message, Metrics, Outcome};
use tracing::{info, warn};

use crate::model::{n, s, ApprovalResponse, Item, APPROVED, PENDING, REJECTED};

/// The `approvals-worker` handler.
#[derive(Debug)]
pub struct ApprovalsHandler {
    dynamodb: aws_sdk_dynamodb::Client,
    posts_table: String,
    decisions_table: String,
    ignored: Arc<AtomicU64>,
}

impl ApprovalsHandler {
    /// A handler over the posts and decisions tables, counting `responses_ignored`.
    pub fn new(
        dynamodb: aws_sdk_dynamodb::Client,
        posts_table: String,
        decisions_table: String,
        metrics: &Metrics,
    ) -> Self {
        Self {
            dynamodb,
            posts_table,
            decisions_table,
            ignored: metrics.counter("responses_ignored"),
        }
    }
}

impl Handler for ApprovalsHandler {
    async fn handle(&self, message: &Message) -> Outcome {
        let response: ApprovalResponse = match serde_json::from_str(&message.body) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::permanent(
                    "invalid-response",
                    format!("not an approval response: {e}"),
                )
            }
        };
        let approve = match response.decision.as_str() {
            APPROVED => true,
            REJECTED => false,
            other => {
                return Outcome::permanent(
                    "invalid-response",
                    format!("unknown decision {other:?}"),
                )
            }
        };
        // Decided before (a repeated response)? A read instead of a transaction bound to fail.
        // The transaction's conditions remain the guarantee.
        let decided = self
            .dynamodb
            .get_item()
            .table_name(&self.decisions_table)
            .key("post_id", s(&response.post_id))
            .consistent_read(true)
            .send()
            .await;
        match decided {
            Ok(out) if out.item.is_some() => return Outcome::Duplicate,
            Ok(_) => {}
            Err(err) => return classify(&err).into_outcome(),
        }
        // The post, for its owner (and, when it is unknown or decided, instead of a
        // transaction bound to fail; the transaction's conditions remain the guarantee).
        let post = match self
            .dynamodb
            .get_item()
            .table_name(&self.posts_table)
            .key("post_id", s(&response.post_id))
            .consistent_read(true)
            .send()
            .await
        {
            Ok(out) => out.item,
            Err(err) => return classify(&err).into_outcome(),
        };
        let pending = post
            .as_ref()
            .and_then(|p| p.get("status"))
            .and_then(|v| v.as_s().ok())
            .is_some_and(|v| v == PENDING);
        if !pending {
            return self.ignore(&response);
        }
        let owner = post.as_ref().and_then(|p| p.get("owner_id")).cloned();
        let now = now_ms();
        let key = ("post_id".to_owned(), s(&response.post_id));
        let change = if approve {
            let update = Update::builder()
                .table_name(&self.posts_table)
                .key(key.0.clone(), key.1.clone())
                .update_expression(
                    "SET #status = :approved, listing = :approved, approved_at = :now",
                )
                .condition_expression("#status = :pending")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":approved", s(APPROVED))
                .expression_attribute_values(":pending", s(PENDING))
                .expression_attribute_values(":now", n(now))
                .build()
                .expect("table, key and expression are set");
            TransactWriteItem::builder().update(update).build()
        } else {
            let delete = Delete::builder()
                .table_name(&self.posts_table)
                .key(key.0.clone(), key.1.clone())
                .condition_expression("#status = :pending")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":pending", s(PENDING))
                .build()
                .expect("table and key are set");
            TransactWriteItem::builder().delete(delete).build()
        };
        let mut decision: Item = Item::from([
            key.clone(),
            ("decision".to_owned(), s(&response.decision)),
            ("decided_at".to_owned(), n(now)),
        ]);
        if let Some(reason) = &response.reason {
            decision.insert("reason".into(), s(reason));
        }
        if let Some(owner) = owner {
            decision.insert("owner_id".into(), owner);
        }
        let record = Put::builder()
            .table_name(&self.decisions_table)
            .set_item(Some(decision))
            .condition_expression("attribute_not_exists(post_id)")
            .build()
            .expect("table and item are set");
        let result = self
            .dynamodb
            .transact_write_items()
            .transact_items(change)
            .transact_items(TransactWriteItem::builder().put(record).build())
            .send()
            .await;
        let Err(err) = result else {
            info!(post_id = %response.post_id, decision = %response.decision, "decision applied");
            return Outcome::Done;
        };
        let Some(codes) = cancellation_codes(&err) else {
            return classify(&err).into_outcome();
        };
        if failed_condition(&codes, 1) {
            return Outcome::Duplicate;
        }
        if failed_condition(&codes, 0) {
            return self.ignore(&response);
        }
        Outcome::retry("transaction-cancelled", codes.join(", "))
    }
}

impl ApprovalsHandler {
    /// A decision for an unknown or no longer pending post: counted and finished.
    fn ignore(&self, response: &ApprovalResponse) -> Outcome {
        Metrics::incr(&self.ignored);
        warn!(post_id = %response.post_id, decision = %response.decision, "a decision for an unknown or no longer pending post: ignored");
        Outcome::Done
    }
}
