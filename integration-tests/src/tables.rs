//! The stack's DynamoDB tables: rows, items, and how they expire (TTL).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};

use crate::{eventually, Stack};

impl Stack {
    /// Waits until a table holds exactly `n` rows.
    pub async fn wait_for_rows(&self, table: &str, n: usize, limit: Duration) -> Result<()> {
        eventually(limit, &format!("{n} rows in {table}"), || async {
            Ok((self.count_rows(table).await? == n).then_some(()))
        })
        .await
    }

    /// Number of rows in a table.
    pub async fn count_rows(&self, table: &str) -> Result<usize> {
        let mut count = 0usize;
        let mut start = None;
        loop {
            let out = self
                .dynamodb
                .scan()
                .table_name(table)
                .select(aws_sdk_dynamodb::types::Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await?;
            count += out.count as usize;
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(count);
            }
        }
    }

    /// An item of a table (its name, as [`Stack::table`] gives it) by a string key, read
    /// consistently; `None` when there is none.
    pub async fn item(
        &self,
        table: &str,
        key: &str,
        value: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>> {
        Ok(self
            .dynamodb
            .get_item()
            .table_name(table)
            .key(key, AttributeValue::S(value.to_owned()))
            .consistent_read(true)
            .send()
            .await?
            .item)
    }

    /// The attribute a table expires its items on (DynamoDB TTL); an error unless TTL is
    /// enabled.
    pub async fn ttl_attribute(&self, table: &str) -> Result<String> {
        let ttl = self
            .dynamodb
            .describe_time_to_live()
            .table_name(table)
            .send()
            .await?
            .time_to_live_description
            .with_context(|| format!("the TTL of {table}"))?;
        anyhow::ensure!(
            ttl.time_to_live_status() == Some(&TimeToLiveStatus::Enabled),
            "TTL of {table} is not enabled: {ttl:?}"
        );
        ttl.attribute_name()
            .map(str::to_owned)
            .with_context(|| format!("the TTL attribute of {table}"))
    }
}

/// A number attribute (`N`) of an item, as a whole number.
pub fn number_attribute(item: &HashMap<String, AttributeValue>, name: &str) -> Result<u64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .with_context(|| format!("{name} in the record: {item:?}"))?
        .parse()
        .with_context(|| format!("{name} is a number"))
}
