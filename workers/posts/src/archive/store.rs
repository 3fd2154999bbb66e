//! What the archive worker reads and writes in DynamoDB: the narrow trait
//! [`super::ArchiveHandler`] needs, and its implementation over the posts and archive tables.

use std::future::Future;

use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem};
use fleet::dynamodb::{cancellation_codes, condition_met, failed_condition};
use fleet::{classify, AwsError};

use crate::model::{get_post, n, s, Item};

/// What became of a move to the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// Archived and removed from the posts table.
    Moved,
    /// The archive had the post already (the other path was first): nothing changed.
    AlreadyArchived,
    /// The transaction was cancelled for another reason (the cancellation codes), the post's
    /// `expires_at` changed among them: try again.
    Cancelled(String),
}

/// The posts and archive tables, as the archive worker uses them.
pub trait ArchiveStore: Send + Sync + 'static {
    /// The post, if it is in the posts table. A strongly consistent read.
    fn post(&self, post_id: &str) -> impl Future<Output = Result<Option<Item>, AwsError>> + Send;

    /// Whether the archive has the post. A strongly consistent read.
    fn archived(&self, post_id: &str) -> impl Future<Output = Result<bool, AwsError>> + Send;

    /// Writes `copy` (keyed by its `post_id`) to the archive unless the archive has it.
    /// `Ok(false)`: it had, nothing written.
    fn archive(&self, copy: Item) -> impl Future<Output = Result<bool, AwsError>> + Send;

    /// In one transaction: writes `copy` to the archive unless the archive has it, and deletes
    /// post `post_id` if its `expires_at` is still `expires_at`.
    fn move_to_archive(
        &self,
        copy: Item,
        post_id: &str,
        expires_at: u64,
    ) -> impl Future<Output = Result<Moved, AwsError>> + Send;

    /// Deletes post `post_id` from the posts table (nothing if it is not there).
    fn delete_post(&self, post_id: &str) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// [`ArchiveStore`] on DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoArchiveStore {
    client: aws_sdk_dynamodb::Client,
    posts_table: String,
    archive_table: String,
}

impl DynamoArchiveStore {
    /// A store over the posts and archive tables.
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        posts_table: String,
        archive_table: String,
    ) -> Self {
        Self {
            client,
            posts_table,
            archive_table,
        }
    }

    async fn get(&self, table: &str, post_id: &str) -> Result<Option<Item>, AwsError> {
        get_post(&self.client, table, post_id).await
    }
}

impl ArchiveStore for DynamoArchiveStore {
    async fn post(&self, post_id: &str) -> Result<Option<Item>, AwsError> {
        self.get(&self.posts_table, post_id).await
    }

    async fn archived(&self, post_id: &str) -> Result<bool, AwsError> {
        Ok(self.get(&self.archive_table, post_id).await?.is_some())
    }

    async fn archive(&self, copy: Item) -> Result<bool, AwsError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.archive_table)
            .set_item(Some(copy))
            .condition_expression("attribute_not_exists(post_id)")
            .send()
            .await;
        condition_met(result)
    }

    async fn move_to_archive(
        &self,
        copy: Item,
        post_id: &str,
        expires_at: u64,
    ) -> Result<Moved, AwsError> {
        let put = Put::builder()
            .table_name(&self.archive_table)
            .set_item(Some(copy))
            .condition_expression("attribute_not_exists(post_id)")
            .build()
            .expect("table and item are set");
        let delete = Delete::builder()
            .table_name(&self.posts_table)
            .key("post_id", s(post_id))
            .condition_expression("expires_at = :e")
            .expression_attribute_values(":e", n(expires_at))
            .build()
            .expect("table and key are set");
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(TransactWriteItem::builder().delete(delete).build())
            .send()
            .await;
        let Err(err) = result else {
            return Ok(Moved::Moved);
        };
        let Some(codes) = cancellation_codes(&err) else {
            return Err(classify(&err));
        };
        Ok(if failed_condition(&codes, 0) {
            Moved::AlreadyArchived
        } else {
            Moved::Cancelled(codes.join(", "))
        })
    }

    async fn delete_post(&self, post_id: &str) -> Result<(), AwsError> {
        self.client
            .delete_item()
            .table_name(&self.posts_table)
            .key("post_id", s(post_id))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(())
    }
}
