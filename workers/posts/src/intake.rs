//! `posts-worker`: stores each new post as `PENDING` (expiring 30 days after it was received),
//! with its author's owner id (`owner_id`), and asks the approval service for a decision, once
//! per post.
//!
//! "Once" holds through redeliveries and crashes: the post is written only if absent and never
//! decided (one transaction with a condition on `post-decisions`, so a rejected and deleted
//! post is not created again); the request goes to a FIFO queue deduplicated by post id (a
//! resend within 5 minutes, e.g. after a crash before the next step, is dropped by SQS); then
//! `approval_requested_at` is set, and a redelivery that finds it sends nothing.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use aws_sdk_dynamodb::types::{ConditionCheck, Put, TransactWriteItem};
use fleet::dynamodb::{cancellation_codes, failed_condition};
use fleet::util::now_ms;
use fleet::{classify, Handler, Message, Metrics, Outcome};
use tracing::info;

use crate::model::{
    n, number, owner_of, s, ApprovalRequest, Item, PostRequest, ATTR_POST_ID, PENDING,
    POST_LIFETIME_SECS,
};

/// Where the intake writes and sends.
#[derive(Debug, Clone)]
pub struct Intake {
    /// DynamoDB.
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// SQS.
    pub sqs: aws_sdk_sqs::Client,
    /// The posts table.
    pub posts_table: String,
    /// The decisions table.
    pub decisions_table: String,
    /// The approval service's FIFO request queue.
    pub requests_queue_url: String,
}

/// The `posts-worker` handler.
#[derive(Debug)]
pub struct PostsHandler {
    to: Intake,
    requests_sent: Arc<AtomicU64>,
}

impl PostsHandler {
    /// A handler over `to`, counting `approval_requests_sent`.
    pub fn new(to: Intake, metrics: &Metrics) -> Self {
        Self {
            to,
            requests_sent: metrics.counter("approval_requests_sent"),
        }
    }

    /// Writes the post unless it exists or was decided. `Ok(true)`: the approval is still to
    /// be requested.
    async fn store(
        &self,
        post_id: &str,
        owner: &str,
        post: &PostRequest,
        created_at: u64,
    ) -> Result<bool, Outcome> {
        // Stored before (a redelivery)? A read instead of a transaction bound to fail; the
        // transaction's conditions remain the guarantee.
        if let Some(existing) = self.existing(post_id).await? {
            return Ok(number(&existing, "approval_requested_at").is_none());
        }
        let item: Item = [
            ("post_id", s(post_id)),
            ("title", s(&post.title)),
            ("body", s(&post.body)),
            ("author", s(&post.author)),
            ("owner_id", s(owner)),
            ("status", s(PENDING)),
            ("created_at", n(created_at)),
            ("expires_at", n(created_at / 1000 + POST_LIFETIME_SECS)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let put = Put::builder()
            .table_name(&self.to.posts_table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(post_id)")
            .build()
            .expect("table and item are set");
        let undecided = ConditionCheck::builder()
            .table_name(&self.to.decisions_table)
            .key("post_id", s(post_id))
            .condition_expression("attribute_not_exists(post_id)")
            .build()
            .expect("table, key and condition are set");
        let result = self
            .to
            .dynamodb
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(
                TransactWriteItem::builder()
                    .condition_check(undecided)
                    .build(),
            )
            .send()
            .await;
        let Err(err) = result else { return Ok(true) };
        let Some(codes) = cancellation_codes(&err) else {
            return Err(classify(&err).into_outcome());
        };
        if failed_condition(&codes, 1) {
            return Err(Outcome::Duplicate); // decided (and maybe deleted) already
        }
        if !failed_condition(&codes, 0) {
            return Err(Outcome::retry("transaction-cancelled", codes.join(", ")));
        }
        // Stored meanwhile: was the approval requested too?
        let existing = self.existing(post_id).await?.unwrap_or_default();
        Ok(number(&existing, "approval_requested_at").is_none())
    }

    async fn existing(&self, post_id: &str) -> Result<Option<Item>, Outcome> {
        Ok(self
            .to
            .dynamodb
            .get_item()
            .table_name(&self.to.posts_table)
            .key("post_id", s(post_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(&e).into_outcome())?
            .item)
    }
}

impl Handler for PostsHandler {
    async fn handle(&self, message: &Message) -> Outcome {
        let Some(post_id) = message.attribute(ATTR_POST_ID).filter(|v| !v.is_empty()) else {
            return Outcome::permanent(
                "missing-attribute",
                format!("message attribute {ATTR_POST_ID} is missing"),
            );
        };
        let post: PostRequest = match fleet::json::from_body(&message.body) {
            Ok(post) => post,
            Err(e) => {
                return Outcome::permanent("invalid-post", format!("the body is not a post: {e}"))
            }
        };
        let created_at = message.envelope().received_at_or_now();
        match self
            .store(post_id, owner_of(message), &post, created_at)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Outcome::Duplicate,
            Err(outcome) => return outcome,
        }
        let request = ApprovalRequest {
            post_id: post_id.to_owned(),
            post,
        };
        let sent = self
            .to
            .sqs
            .send_message()
            .queue_url(&self.to.requests_queue_url)
            .message_group_id(post_id)
            .message_deduplication_id(post_id)
            .message_body(serde_json::to_string(&request).expect("a request serialises"))
            .send()
            .await;
        if let Err(err) = sent {
            return classify(&err).into_outcome();
        }
        Metrics::incr(&self.requests_sent);
        let marked = self
            .to
            .dynamodb
            .update_item()
            .table_name(&self.to.posts_table)
            .key("post_id", s(post_id))
            .update_expression("SET approval_requested_at = :now")
            .condition_expression("attribute_exists(post_id)")
            .expression_attribute_values(":now", n(now_ms()))
            .send()
            .await;
        match marked {
            Ok(_) => {}
            // Decided and deleted already (a fast rejection): nothing to mark.
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) => {}
            Err(err) => return classify(&err).into_outcome(),
        }
        info!(post_id, "post stored, approval requested");
        Outcome::Done
    }
}
