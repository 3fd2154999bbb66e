//! `fleetctl dlq groups|release`: FIFO message groups stopped behind a dead-lettered message
//! (see the engine's `groups.rs`).
//!
//! A stopped group parks every later message in the DLQ, in order. Redriving the group (any
//! method) lets the head through first and the rest after it; the stop ends by itself when the
//! last parked message is applied. `release` ends it at once: after the head was discarded
//! instead of redriven, or when the DLQ was purged.

use anyhow::{bail, Result};
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;

use ::fleet::group_store::{stop_of, KEY};

use crate::deployment::Deployment;

/// The topology's table of stopped groups (the FIFO workers' `FLEET_GROUP_TABLE`).
pub(crate) const TABLE: &str = "fifo-groups";

/// One stopped group.
#[derive(Debug, Serialize)]
pub(crate) struct Stopped {
    /// The message group (a book id for books).
    pub(crate) group: String,
    /// The original id of the message that must be handled first; none while the group
    /// drains (its redriven messages are being applied).
    pub(crate) head: Option<String>,
    /// How many of its messages are in the DLQ, head included.
    pub(crate) parked: u64,
    /// When the stop last changed, ms since the epoch.
    pub(crate) updated_at: Option<u64>,
}

/// The stopped groups of one FIFO queue.
pub(crate) async fn list(
    fleet: &Deployment,
    dynamodb: &aws_sdk_dynamodb::Client,
    key: &str,
) -> Result<Vec<Stopped>> {
    let prefix = format!("{}#", fleet.name(key, false));
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let page = dynamodb
            .scan()
            .table_name(table(fleet))
            .filter_expression("begins_with(#key, :prefix)")
            .expression_attribute_names("#key", KEY)
            .expression_attribute_values(":prefix", AttributeValue::S(prefix.clone()))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| ::fleet::classify(&e))?;
        for item in page.items() {
            let Some(group_key) = item.get(KEY).and_then(|v| v.as_s().ok()) else {
                continue;
            };
            let stop = stop_of(item);
            out.push(Stopped {
                group: group_key[prefix.len()..].to_owned(),
                head: stop.head,
                parked: stop.parked,
                updated_at: item
                    .get("updated_at")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse().ok()),
            });
        }
        start = page.last_evaluated_key;
        if start.is_none() {
            return Ok(out);
        }
    }
}

/// Ends the stop of `group`: its later messages are handled again.
///
/// # Errors
/// When the group is not stopped, or DynamoDB refuses.
pub(crate) async fn release(
    fleet: &Deployment,
    dynamodb: &aws_sdk_dynamodb::Client,
    key: &str,
    group: &str,
) -> Result<Stopped> {
    let group_key = format!("{}#{group}", fleet.name(key, false));
    let deleted = dynamodb
        .delete_item()
        .table_name(table(fleet))
        .key(KEY, AttributeValue::S(group_key))
        .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
        .send()
        .await
        .map_err(|e| ::fleet::classify(&e))?;
    let old = deleted.attributes.unwrap_or_default();
    let Some(stop) = old.contains_key(KEY).then(|| stop_of(&old)) else {
        bail!("group {group} of {key} is not stopped");
    };
    Ok(Stopped {
        group: group.to_owned(),
        head: stop.head,
        parked: stop.parked,
        updated_at: None,
    })
}

fn table(fleet: &Deployment) -> String {
    format!("{}{TABLE}", fleet.prefix)
}
