//! Test harness for black-box tests against LocalStack.
//!
//! Each test provisions its own copy of the fleet's topology with a random name prefix (through
//! the same `localstack/provision.py` the local run uses, so the real OpenAPI document and
//! mapping templates are under test), and runs worker binaries as child processes with the
//! environment the provisioner hands out. Nothing here is a fake: every call goes over HTTP to
//! LocalStack through the real AWS SDK.
//!
//! One mechanism a module, everything re-exported here (`use integration_tests::{Stack, …}`):
//!
//! - [`stack`]: where LocalStack answers, the workspace and its binaries, [`Stack`] (a
//!   provisioned copy of the fleet) and the worker environments it hands out;
//! - [`queues`], [`tables`]: what the stack's queues and tables hold (TTL included);
//! - [`api`]: calls to the gateway, [`call`] answering `(status, JSON)`;
//! - [`worker`]: worker binaries as child processes, [`Worker::stop`];
//! - [`payments`]: payments as a client sends them, straight into a queue;
//! - [`dlq`]: dead-lettered messages and their reason;
//! - [`fleetctl`](mod@fleetctl): the operations CLI;
//! - [`net`]: network peers a test controls (proxies, a scripted HTTP server);
//! - [`wait`]: polling until something happens ([`eventually`]).

#![allow(missing_docs)]

pub mod api;
pub mod container;
pub mod dlq;
pub mod fleetctl;
pub mod net;
pub mod payments;
pub mod queues;
pub mod stack;
pub mod tables;
pub mod wait;
pub mod worker;

pub use api::{api_key_ids, call};
pub use dlq::{dead_letter_kind, dead_letter_payments, string_attribute};
pub use fleetctl::{fleetctl, fleetctl_command};
pub use net::{forward_closing, read_request, Answer, FaultProxy, Proxy, ScriptedHttp};
pub use payments::{payment_body, payments, send_payments, send_payments_with};
pub use queues::string_attr;
pub use stack::{binary, endpoint, python, root, sdk_config, Api, Provisioned, Queue, Stack};
pub use tables::number_attribute;
pub use wait::eventually;
pub use worker::{count_logged, terminate_all, Worker, STOP_LIMIT};
