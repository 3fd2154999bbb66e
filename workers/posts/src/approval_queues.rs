//! The approval service's two queues, as narrow traits the handlers send through (so they can be
//! tested over fakes), with their SQS implementations: requests go to a FIFO queue deduplicated
//! by post id ([`ApprovalRequests`], sent by `posts-worker`), answers to the responses queue
//! ([`ApprovalResponses`], sent by `approval-simulator`).

use std::future::Future;

use fleet::{classify, AwsError};

use crate::model::{ApprovalRequest, ApprovalResponse};

/// Where approval requests go.
pub trait ApprovalRequests: Send + Sync + 'static {
    /// Asks for a decision on a post. Sending the same post's request again within the
    /// deduplication window (5 minutes) must not ask twice.
    fn send(&self, request: &ApprovalRequest) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// Where the approval service's answers go.
pub trait ApprovalResponses: Send + Sync + 'static {
    /// Sends an answer, visible `delay_secs` (0..=900) later.
    fn send(
        &self,
        response: &ApprovalResponse,
        delay_secs: i32,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// The approval service's FIFO request queue.
#[derive(Debug, Clone)]
pub struct SqsApprovalRequests {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsApprovalRequests {
    /// Requests sent to `queue_url` (a FIFO queue).
    pub fn new(sqs: aws_sdk_sqs::Client, queue_url: String) -> Self {
        Self { sqs, queue_url }
    }
}

impl ApprovalRequests for SqsApprovalRequests {
    async fn send(&self, request: &ApprovalRequest) -> Result<(), AwsError> {
        // One group and one deduplication id per post: a resend (after a crash before the
        // next step) within 5 minutes is dropped by SQS.
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_group_id(&request.post_id)
            .message_deduplication_id(&request.post_id)
            .message_body(serde_json::to_string(request).expect("a request serialises"))
            .send()
            .await
            .map_err(|err| classify(&err))?;
        Ok(())
    }
}

/// The approval responses queue.
#[derive(Debug, Clone)]
pub struct SqsApprovalResponses {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsApprovalResponses {
    /// Answers sent to `queue_url`.
    pub fn new(sqs: aws_sdk_sqs::Client, queue_url: String) -> Self {
        Self { sqs, queue_url }
    }
}

impl ApprovalResponses for SqsApprovalResponses {
    async fn send(&self, response: &ApprovalResponse, delay_secs: i32) -> Result<(), AwsError> {
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .delay_seconds(delay_secs)
            .message_body(serde_json::to_string(response).expect("a response serialises"))
            .send()
            .await
            .map_err(|err| classify(&err))?;
        Ok(())
    }
}
