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
//! fleet::worker::run("echo-worker", config.worker, |_setup| async { Echo(prefix) }).unwrap();
//! ```
//!
//! Work a worker does beside its queue (a periodic sweep) runs through [`Setup::spawn`]: it is
//! handed the shutdown token, and the worker waits for it to finish before it exits.

use std::future::Future;
use std::sync::Arc;

use aws_config::SdkConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// What a worker's `make_handler` is given: the AWS configuration for its own clients, the
/// metrics for its own counters, and a way to run background work that stops with the worker.
#[derive(Debug)]
pub struct Setup {
    /// The AWS SDK configuration (endpoint, region, credentials) the engine uses too.
    pub sdk: SdkConfig,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Setup {
    /// Runs `task` beside the engine. It is handed the worker's shutdown token and must return
    /// soon after the token is cancelled (finishing or abandoning what it holds in a way that
    /// loses nothing); the worker exits once the engine has drained and every task has returned,
    /// or `FLEET_SHUTDOWN_GRACE_SECS` after the signal.
    pub fn spawn<F, Fut>(&self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task(self.shutdown.clone()));
    }
}

/// Runs a worker until SIGTERM or Ctrl-C: sets up logs, builds the runtime, loads the AWS
/// configuration, makes the process's metrics the `metrics` facade's recorder (and serves them
/// for Prometheus with `FLEET_PROMETHEUS_PORT`), asks `make_handler` for the handler (handing it
/// a [`Setup`]), then runs the engine, drains, and waits for the background tasks.
/// `name` is the worker's name in logs and metrics unless `FLEET_WORKER_NAME` says otherwise.
///
/// # Errors
/// When the runtime cannot start, or the engine cannot read its queue.
pub fn run<H, F, Fut>(name: &str, args: WorkerArgs, make_handler: F) -> Result<(), WorkerError>
where
    H: Handler,
    F: FnOnce(Setup) -> Fut,
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
    for warning in crate::config::renamed_env_warnings() {
        tracing::warn!("{warning}");
    }
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
        let shutdown = shutdown::signal_token();
        // The background tasks' deadline counts from the signal, not from the engine's drain:
        // together they stay within the grace period (ECS kills a task 30 s after SIGTERM).
        let signalled = {
            let (token, at) = (shutdown.clone(), Arc::new(std::sync::OnceLock::new()));
            let set = at.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                let _ = set.set(tokio::time::Instant::now());
            });
            at
        };
        let tasks = TaskTracker::new();
        let handler = make_handler(Setup {
            sdk: sdk.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
        })
        .await;
        let group_table = engine.group_table.clone();
        let grace = std::time::Duration::from_secs(engine.shutdown_grace_secs);
        let engine = Engine::new(aws::sqs_client(&sdk), engine, handler, metrics);
        let ran = match with_group_table(engine, &sdk, group_table) {
            Ok(engine) => engine
                .run(shutdown.clone())
                .await
                .map_err(WorkerError::from),
            Err(err) => Err(err),
        };
        // The engine has stopped (drained, or failed to start): so does the background work.
        shutdown.cancel();
        tasks.close();
        if !tasks.is_empty() {
            tracing::info!(tasks = tasks.len(), "waiting for background tasks");
        }
        let deadline = signalled
            .get()
            .copied()
            .unwrap_or_else(tokio::time::Instant::now)
            + grace;
        if tokio::time::timeout_at(deadline, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = tasks.len(),
                "background tasks still running after the shutdown grace period; leaving them"
            );
        }
        ran.map(drop)
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
