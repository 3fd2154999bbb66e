//! What every worker binary's `main` does around its handler: logs, the runtime, the AWS
//! configuration, the engine, and a clean stop on SIGTERM or Ctrl-C.
//!
//! ```no_run
//! use clap::Parser;
//! use fleet::{Handler, Message, Outcome};
//!
//! /// The worker's own settings, beside the ones every worker has.
//! #[derive(clap::Parser)]
//! struct Config {
//!     #[arg(long, env = "ECHO_PREFIX")]
//!     prefix: String,
//!     #[command(flatten)]
//!     worker: fleet::worker::WorkerArgs,
//! }
//!
//! struct Echo(String);
//! impl Handler for Echo {
//!     async fn handle(&self, message: &Message) -> Outcome {
//!         println!("{}{}", self.0, message.body);
//!         Outcome::Done
//!     }
//! }
//!
//! let config = Config::parse();
//! let prefix = config.prefix;
//! fleet::worker::run("echo-worker", config.worker, |_sdk, _metrics| async { Echo(prefix) })
//!     .unwrap();
//! ```

use std::future::Future;
use std::sync::Arc;

use aws_config::SdkConfig;

use crate::{aws, shutdown, telemetry, Engine, EngineConfig, EngineError, Handler, Metrics};
use crate::{RuntimeConfig, TelemetryConfig};

/// The settings every worker binary has: flatten into its clap `Config`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// How the worker consumes its queue.
    #[command(flatten)]
    pub engine: EngineConfig,

    /// Logs and the Prometheus endpoint.
    #[command(flatten)]
    pub telemetry: TelemetryConfig,

    /// Threads.
    #[command(flatten)]
    pub runtime: RuntimeConfig,
    /// Do not run: exit 0 when the worker running beside (same FLEET_HEALTH_FILE) made progress
    /// within FLEET_HEALTH_MAX_AGE_SECS, 1 otherwise. The container's health check command.
    #[arg(long)]
    pub health_check: bool,
}

/// Why a worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The tokio runtime could not be built.
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// The engine could not start on its queue.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// FLEET_PROMETHEUS_PORT could not be served.
    #[error(transparent)]
    Prometheus(#[from] crate::metrics::PrometheusError),
    /// FLEET_GROUP_TABLE was set for a worker built without DynamoDB.
    #[error("FLEET_GROUP_TABLE={0} needs the engine's `dynamodb` feature, which this worker is built without")]
    NoGroupStore(String),
}

/// Runs a worker until SIGTERM or Ctrl-C: sets up logs, builds the runtime, loads the AWS
/// configuration, makes the process's metrics the `metrics` facade's recorder (and serves them
/// for Prometheus with `FLEET_PROMETHEUS_PORT`), asks `make_handler` for the handler (with the
/// SDK configuration for its own clients and the metrics for its own counters), then runs the
/// engine and drains.
/// `name` is the worker's name in logs and metrics unless `FLEET_WORKER_NAME` says otherwise.
///
/// # Errors
/// When the runtime cannot start, or the engine cannot read its queue.
pub fn run<H, F, Fut>(name: &str, args: WorkerArgs, make_handler: F) -> Result<(), WorkerError>
where
    H: Handler,
    F: FnOnce(SdkConfig, Arc<Metrics>) -> Fut,
    Fut: Future<Output = H>,
{
    let WorkerArgs {
        mut engine,
        telemetry,
        runtime,
        health_check,
    } = args;
    if health_check {
        let Some(path) = &engine.health_file else {
            eprintln!("--health-check needs FLEET_HEALTH_FILE");
            std::process::exit(1);
        };
        let max_age = std::time::Duration::from_secs(engine.health_max_age_secs);
        match crate::health::check(path, max_age) {
            Ok(()) => std::process::exit(0),
            Err(why) => {
                eprintln!("unhealthy: {why}");
                std::process::exit(1);
            }
        }
    }
    telemetry::init(&telemetry);
    engine.worker_name.get_or_insert_with(|| name.to_owned());
    runtime.build()?.block_on(async move {
        let sdk = aws::load_config().await;
        let metrics = Metrics::new();
        crate::metrics::install(metrics.clone());
        if let Some(port) = telemetry.prometheus_port {
            let worker = engine.worker_name.as_deref().unwrap_or(name);
            let queue = crate::engine::queue_name(&engine.queue_url);
            let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
            crate::metrics::serve_prometheus(&metrics, addr, worker, &queue)?;
            tracing::info!(%addr, "serving Prometheus metrics");
        }
        let handler = make_handler(sdk.clone(), metrics.clone()).await;
        let group_table = engine.group_table.clone();
        let engine = Engine::new(aws::sqs_client(&sdk), engine, handler, metrics);
        with_group_table(engine, &sdk, group_table)?
            .run(shutdown::signal_token())
            .await?;
        Ok(())
    })
}

/// The engine with its FIFO group store when `FLEET_GROUP_TABLE` names one.
fn with_group_table<H: Handler>(
    engine: Engine<H>,
    sdk: &SdkConfig,
    table: Option<String>,
) -> Result<Engine<H>, WorkerError> {
    let Some(table) = table else {
        return Ok(engine);
    };
    #[cfg(feature = "dynamodb")]
    {
        let store = crate::group_store::DynamoGroupStore::new(crate::dynamodb::client(sdk), table);
        Ok(engine.with_group_store(Arc::new(store)))
    }
    #[cfg(not(feature = "dynamodb"))]
    {
        let _ = (engine, sdk);
        Err(WorkerError::NoGroupStore(table))
    }
}
