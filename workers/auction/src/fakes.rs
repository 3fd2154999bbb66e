//! Fakes of what the handlers reach, for their unit tests: the notifications' dedupe records
//! and the SNS topic, and AWS errors to inject.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet::{AwsError, ErrorClass, Metrics};
use serde_json::Value;

use crate::notify::{Notification, NotificationClaim, NotificationRecords, Notifier, Publisher};

/// An AWS error of `class` with `code`.
pub(crate) fn error(class: ErrorClass, code: &str) -> AwsError {
    AwsError {
        class,
        code: code.into(),
        message: "injected".into(),
    }
}

/// A dedupe record: sent, and who holds its claim.
#[derive(Debug, Default, Clone)]
struct Record {
    sent: bool,
    lease_owner: Option<String>,
}

/// The dedupe records in memory (shared by its clones), with a failure for the next mark.
#[derive(Debug, Default, Clone)]
pub(crate) struct FakeRecords {
    records: Arc<Mutex<HashMap<String, Record>>>,
    /// Fails the next `mark_sent` (taken once).
    pub(crate) fail_mark: Arc<Mutex<Option<AwsError>>>,
}

impl FakeRecords {
    /// Another delivery holds the claim on `id`.
    pub(crate) fn hold(&self, id: &str, owner: &str) {
        self.records.lock().unwrap().insert(
            id.to_owned(),
            Record {
                sent: false,
                lease_owner: Some(owner.to_owned()),
            },
        );
    }

    /// Whether `id` is marked sent.
    pub(crate) fn sent(&self, id: &str) -> bool {
        self.records.lock().unwrap().get(id).is_some_and(|r| r.sent)
    }
}

impl NotificationRecords for FakeRecords {
    async fn claim(
        &self,
        id: &str,
        owner: &str,
        _now: u64,
        _until: u64,
    ) -> Result<NotificationClaim, AwsError> {
        let mut records = self.records.lock().unwrap();
        let record = records.entry(id.to_owned()).or_default();
        if record.sent {
            return Ok(NotificationClaim::Sent);
        }
        if let Some(other) = record.lease_owner.as_deref().filter(|o| *o != owner) {
            return Ok(NotificationClaim::Held(format!("held by {other}")));
        }
        record.lease_owner = Some(owner.to_owned());
        Ok(NotificationClaim::Taken)
    }

    async fn mark_sent(&self, id: &str, owner: &str) -> Result<bool, AwsError> {
        if let Some(err) = self.fail_mark.lock().unwrap().take() {
            return Err(err);
        }
        let mut records = self.records.lock().unwrap();
        let record = records.entry(id.to_owned()).or_default();
        if record.lease_owner.as_deref() != Some(owner) {
            return Ok(false);
        }
        record.sent = true;
        record.lease_owner = None;
        Ok(true)
    }

    async fn release(&self, id: &str, owner: &str) {
        if let Some(record) = self.records.lock().unwrap().get_mut(id) {
            if record.lease_owner.as_deref() == Some(owner) {
                record.lease_owner = None;
            }
        }
    }
}

/// One publication: subject, body, attributes.
pub(crate) type Publication = (String, Value, Vec<(String, String)>);

/// The topic in memory (shared by its clones), with a failure for the next publish.
#[derive(Debug, Default, Clone)]
pub(crate) struct FakeSns {
    /// Everything published, in order.
    pub(crate) published: Arc<Mutex<Vec<Publication>>>,
    /// Fails the next publish (taken once).
    pub(crate) fail: Arc<Mutex<Option<AwsError>>>,
}

impl FakeSns {
    /// How many notifications were published.
    pub(crate) fn count(&self) -> usize {
        self.published.lock().unwrap().len()
    }
}

impl Publisher for FakeSns {
    async fn publish(&self, n: &Notification<'_>) -> Result<(), AwsError> {
        if let Some(err) = self.fail.lock().unwrap().take() {
            return Err(err);
        }
        let attributes = n
            .attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        self.published
            .lock()
            .unwrap()
            .push((n.subject.to_owned(), n.body.clone(), attributes));
        Ok(())
    }
}

/// The notifier over fakes, with handles on them.
pub(crate) fn notifier() -> (Notifier<FakeRecords, FakeSns>, FakeRecords, FakeSns) {
    let (records, sns) = (FakeRecords::default(), FakeSns::default());
    let notifier = Notifier::new(
        records.clone(),
        sns.clone(),
        Duration::from_secs(10),
        &Metrics::new(),
    );
    (notifier, records, sns)
}
