//! # The posts service
//!
//! Signed-in users create posts (`POST /posts`, API key); each new post waits for a decision of
//! the approval service; approved posts are public (`GET /posts`, `GET /posts/{post_id}`, no
//! key, read from DynamoDB by the gateway); rejected ones are deleted with the decision kept;
//! posts expire 30 days after creation into an archive. Four binaries share this crate's post
//! model:
//!
//! ```text
//! POST /posts ─► posts ─► posts-worker ─► posts table (PENDING)
//!                              └─► approval-requests.fifo (once per post) ─► approval service
//!                                                                             (approval-simulator locally)
//! approval-responses ◄────────────────────────────────────────────────────────────┘
//!        └─► approvals-worker ─► APPROVED (listed) | deleted; decision in post-decisions
//! expired posts (sweep; in AWS also TTL → stream → Pipes) ─► posts-archive ─► archive-worker
//!        └─► posts-archive table, removed from posts, exactly once
//! ```
//!
//! Each binary's module holds its `Config` and its handler, generic over narrow traits of what
//! it touches (the tables in the module's `store`, the approval service's queues in
//! [`approval_queues`]) so that it is tested over fakes; the binaries only wire the AWS
//! implementations in.

pub mod approval_queues;
pub mod approvals;
pub mod archive;
pub mod intake;
pub mod model;
pub mod simulator;
