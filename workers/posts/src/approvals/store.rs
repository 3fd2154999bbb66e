//! What the approvals worker reads and writes in DynamoDB: the narrow trait
//! [`super::ApprovalsHandler`] needs, and its implementation over the posts and decisions
//! tables.

use std::future::Future;

use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use fleet::dynamodb::{cancellation_codes, failed_condition};
use fleet::{classify, AwsError};

use crate::model::{get_post, n, s, Item, APPROVED, PENDING};

/// A decision to apply to a pending post.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<'a> {
    /// The post decided on.
    pub post_id: &'a str,
    /// `true`: the post becomes public; `false`: it is deleted.
    pub approve: bool,
    /// The decision as the approval service spelled it (`APPROVED` or `REJECTED`).
    pub decision: &'a str,
    /// Why, for a rejection.
    pub reason: Option<&'a str>,
    /// The post's `owner_id`, kept in the decision record (it outlives a deleted post).
    pub owner: Option<AttributeValue>,
    /// When, ms since the epoch.
    pub at_ms: u64,
}

/// What became of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The post changed and the decision is recorded.
    Applied,
    /// A decision on this post was recorded already: nothing changed.
    Decided,
    /// The post is gone or no longer pending: nothing changed.
    NotPending,
    /// The transaction was cancelled for another reason (the cancellation codes): try again.
    Cancelled(String),
}

/// The posts and decisions tables, as the approvals worker uses them.
pub trait DecisionStore: Send + Sync + 'static {
    /// Whether a decision on the post is recorded. A strongly consistent read.
    fn decided(&self, post_id: &str) -> impl Future<Output = Result<bool, AwsError>> + Send;

    /// The post, if it is stored. A strongly consistent read.
    fn post(&self, post_id: &str) -> impl Future<Output = Result<Option<Item>, AwsError>> + Send;

    /// In one transaction: approves (`status` and `listing` = `APPROVED`) or deletes the post
    /// if it is still pending, and records the decision if none is.
    fn apply(
        &self,
        decision: Decision<'_>,
    ) -> impl Future<Output = Result<Applied, AwsError>> + Send;
}

/// [`DecisionStore`] on DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoDecisionStore {
    client: aws_sdk_dynamodb::Client,
    posts_table: String,
    decisions_table: String,
}

impl DynamoDecisionStore {
    /// A store over the posts and decisions tables.
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        posts_table: String,
        decisions_table: String,
    ) -> Self {
        Self {
            client,
            posts_table,
            decisions_table,
        }
    }

    async fn get(&self, table: &str, post_id: &str) -> Result<Option<Item>, AwsError> {
        get_post(&self.client, table, post_id).await
    }
}

impl DecisionStore for DynamoDecisionStore {
    async fn decided(&self, post_id: &str) -> Result<bool, AwsError> {
        Ok(self.get(&self.decisions_table, post_id).await?.is_some())
    }

    async fn post(&self, post_id: &str) -> Result<Option<Item>, AwsError> {
        self.get(&self.posts_table, post_id).await
    }

    async fn apply(&self, decision: Decision<'_>) -> Result<Applied, AwsError> {
        let key = ("post_id".to_owned(), s(decision.post_id));
        let change = if decision.approve {
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
                .expression_attribute_values(":now", n(decision.at_ms))
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
        let mut record: Item = Item::from([
            key,
            ("decision".to_owned(), s(decision.decision)),
            ("decided_at".to_owned(), n(decision.at_ms)),
        ]);
        if let Some(reason) = decision.reason {
            record.insert("reason".into(), s(reason));
        }
        if let Some(owner) = decision.owner {
            record.insert("owner_id".into(), owner);
        }
        let record = Put::builder()
            .table_name(&self.decisions_table)
            .set_item(Some(record))
            .condition_expression("attribute_not_exists(post_id)")
            .build()
            .expect("table and item are set");
        let result = self
            .client
            .transact_write_items()
            .transact_items(change)
            .transact_items(TransactWriteItem::builder().put(record).build())
            .send()
            .await;
        let Err(err) = result else {
            return Ok(Applied::Applied);
        };
        let Some(codes) = cancellation_codes(&err) else {
            return Err(classify(&err));
        };
        Ok(if failed_condition(&codes, 1) {
            Applied::Decided
        } else if failed_condition(&codes, 0) {
            Applied::NotPending
        } else {
            Applied::Cancelled(codes.join(", "))
        })
    }
}
