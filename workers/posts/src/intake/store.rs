//! What the intake keeps in DynamoDB: the narrow trait [`super::PostsHandler`] needs, and its
//! implementation over the posts and decisions tables.

use std::future::Future;

use aws_sdk_dynamodb::types::{ConditionCheck, Put, TransactWriteItem};
use fleet::dynamodb::{cancellation_codes, condition_met, failed_condition};
use fleet::{classify, AwsError};

use crate::model::{get_post, n, number, s, Item, PostRequest, PENDING, POST_LIFETIME_SECS};

/// A post to create as `PENDING`.
#[derive(Debug, Clone, Copy)]
pub struct NewPost<'a> {
    /// Its id (the gateway's `postId` attribute).
    pub post_id: &'a str,
    /// Its author's owner id.
    pub owner: &'a str,
    /// What was posted.
    pub post: &'a PostRequest,
    /// When the gateway received it, ms since the epoch; it expires [`POST_LIFETIME_SECS`]
    /// later.
    pub created_at_ms: u64,
}

/// What became of a create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Create {
    /// The post is stored, `PENDING`.
    Created,
    /// A post of this id is stored already (left untouched).
    Exists,
    /// A decision on this id is recorded already: the post is not created again.
    Decided,
    /// The transaction was cancelled for another reason (the cancellation codes): try again.
    Cancelled(String),
}

/// The posts and decisions tables, as the intake uses them.
pub trait IntakeStore: Send + Sync + 'static {
    /// Whether the post is stored (`None`: it is not) and, if it is, whether its approval was
    /// requested already. A strongly consistent read.
    fn approval_requested(
        &self,
        post_id: &str,
    ) -> impl Future<Output = Result<Option<bool>, AwsError>> + Send;

    /// Creates the post unless a post of its id exists or a decision on it was recorded, in one
    /// transaction.
    fn create(&self, post: NewPost<'_>) -> impl Future<Output = Result<Create, AwsError>> + Send;

    /// Records that the post's approval was requested at `at_ms`. `Ok(false)`: the post is gone
    /// (decided and deleted already), nothing to mark.
    fn mark_requested(
        &self,
        post_id: &str,
        at_ms: u64,
    ) -> impl Future<Output = Result<bool, AwsError>> + Send;
}

/// The attribute set once the approval was requested.
const REQUESTED_AT: &str = "approval_requested_at";

/// [`IntakeStore`] on DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoIntakeStore {
    client: aws_sdk_dynamodb::Client,
    posts_table: String,
    decisions_table: String,
}

impl DynamoIntakeStore {
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
}

impl IntakeStore for DynamoIntakeStore {
    async fn approval_requested(&self, post_id: &str) -> Result<Option<bool>, AwsError> {
        let item = get_post(&self.client, &self.posts_table, post_id).await?;
        Ok(item.map(|post| number(&post, REQUESTED_AT).is_some()))
    }

    async fn create(&self, new: NewPost<'_>) -> Result<Create, AwsError> {
        let NewPost {
            post_id,
            owner,
            post,
            created_at_ms,
        } = new;
        let item: Item = [
            ("post_id", s(post_id)),
            ("title", s(&post.title)),
            ("body", s(&post.body)),
            ("author", s(&post.author)),
            ("owner_id", s(owner)),
            ("status", s(PENDING)),
            ("created_at", n(created_at_ms)),
            ("expires_at", n(created_at_ms / 1000 + POST_LIFETIME_SECS)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let put = Put::builder()
            .table_name(&self.posts_table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(post_id)")
            .build()
            .expect("table and item are set");
        let undecided = ConditionCheck::builder()
            .table_name(&self.decisions_table)
            .key("post_id", s(post_id))
            .condition_expression("attribute_not_exists(post_id)")
            .build()
            .expect("table, key and condition are set");
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(
                TransactWriteItem::builder()
                    .condition_check(undecided)
                    .build(),
            )
            .send()
            .await;
        let Err(err) = result else {
            return Ok(Create::Created);
        };
        let Some(codes) = cancellation_codes(&err) else {
            return Err(classify(&err));
        };
        Ok(if failed_condition(&codes, 1) {
            Create::Decided
        } else if failed_condition(&codes, 0) {
            Create::Exists
        } else {
            Create::Cancelled(codes.join(", "))
        })
    }

    async fn mark_requested(&self, post_id: &str, at_ms: u64) -> Result<bool, AwsError> {
        let marked = self
            .client
            .update_item()
            .table_name(&self.posts_table)
            .key("post_id", s(post_id))
            .update_expression("SET approval_requested_at = :now")
            .condition_expression("attribute_exists(post_id)")
            .expression_attribute_values(":now", n(at_ms))
            .send()
            .await;
        condition_met(marked)
    }
}
