//! # queue-fleet engine
//!
//! The library every worker binary of the fleet is built on. A worker is a [`Handler`] (plain
//! business logic returning an [`Outcome`]) plus a thin `main` that parses its configuration
//! (flattening [`EngineConfig`], [`TelemetryConfig`], [`RuntimeConfig`]) and calls
//! [`worker::run`], which sets up logs, the runtime and AWS, and runs the [`Engine`] until
//! SIGTERM.
//!
//! The engine owns everything queue-shaped: long polling, the bounded pool of messages in
//! flight, batch deletes, backoff through the visibility timeout, the dead-letter queue with
//! reasons, the visibility heartbeat, graceful shutdown and the metric lines.

pub mod aws;
pub mod aws_error;
pub mod backoff;
pub mod config;
pub mod dlq;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
pub mod engine;
pub mod gateway;
#[cfg(feature = "dynamodb")]
pub mod group_store;
pub mod health;
pub mod json;
pub mod kind;
pub mod message;
pub mod metrics;
pub mod outcome;
pub mod queue;
pub mod runtime;
pub mod scaler;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
pub mod util;
pub mod worker;

pub use aws_error::{classify, AwsError, ErrorClass};
pub use config::{EngineConfig, TelemetryConfig};
pub use engine::{Engine, EngineError};
pub use message::{Handler, Message};
pub use metrics::Metrics;
pub use outcome::{Outcome, Reason};
pub use runtime::RuntimeConfig;
pub use tokio_util::sync::CancellationToken;
