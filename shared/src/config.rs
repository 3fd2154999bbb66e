//! Engine configuration: one typed struct, parsed once from flags and environment.
//!
//! Every worker binary flattens [`EngineConfig`] and [`TelemetryConfig`] into its own `clap`
//! parser, so `--help` lists every option with its variable, and a missing required value
//! fails at start naming the variable. The AWS side (endpoint, region, credentials, profile)
//! comes from the standard AWS environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_PROFILE`...).

use std::time::Duration;

use crate::backoff::RetrySchedule;

/// Largest `MaxNumberOfMessages` SQS accepts in one `ReceiveMessage`.
pub const SQS_MAX_BATCH: usize = 10;
/// Longest long-poll SQS accepts, in seconds.
pub const SQS_MAX_WAIT_SECS: u32 = 20;
/// Default number of messages handled at once by one process (four full batches).
pub const DEFAULT_MAX_CONCURRENCY: u32 = 40;
/// Variables renamed, kept working for one release with a warning: (old name, new name).
pub const RENAMED_ENV: [(&str, &str); 1] = [("FLEET_MAX_IN_FLIGHT", "FLEET_MAX_CONCURRENCY")];
/// Default least concurrency: one full receive.
pub const DEFAULT_MIN_CONCURRENCY: u32 = 10;
/// Default grace period on shutdown: under ECS's default 30 s stop timeout.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 25;
/// Default first retry delay: with `maxReceiveCount` 3 a message's receives then span
/// 1.5–3 minutes (30–60 s, then 60–120 s), not seconds.
pub const DEFAULT_RETRY_BASE_MS: u64 = 60_000;
/// Default dependency failures in a row that open the circuit breaker.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
/// How long the breaker first stays open before it probes.
pub const BREAKER_FIRST_OPEN: Duration = Duration::from_secs(1);
/// Default longest pause between two probes: a recovery is noticed within this.
pub const DEFAULT_BREAKER_MAX_OPEN_SECS: u64 = 10;
/// A probe that has not settled within this counts as failed (the engine then probes with
/// another message): longer than any handler should take.
pub const BREAKER_PROBE_DEADLINE: Duration = Duration::from_secs(60);
/// Default longest outage a message is kept going round for (1 day; queues keep 4).
pub const DEFAULT_OUTAGE_MAX_SECS: u64 = 86_400;

/// The value of a renamed variable's old name ([`RENAMED_ENV`]) when it is set and parses,
/// else `default`: the default of the new name's option, so that the new name, when set, wins.
fn renamed_or<T: std::str::FromStr>(old: &str, default: T) -> T {
    std::env::var(old)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Warnings for the renamed variables set in this environment ([`RENAMED_ENV`]): call once
/// logging is set up (`fleet::worker::run` does).
pub fn renamed_env_warnings() -> Vec<String> {
    RENAMED_ENV
        .iter()
        .filter(|(old, _)| std::env::var_os(old).is_some())
        .map(|(old, new)| {
            if std::env::var_os(new).is_some() {
                format!("{old} is ignored: {new} is set (and {old} is its former name)")
            } else if std::env::var(old).is_ok_and(|v| v.parse::<f64>().is_err()) {
                // Every renamed variable is a number; this one is ignored (renamed_or).
                format!("{old} is ignored: it is not a number (and it is deprecated: use {new})")
            } else {
                format!("{old} is deprecated and will be removed in the next release: use {new}")
            }
        })
        .collect()
}

/// How the engine consumes one queue.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineConfig {
    /// URL of the queue this worker consumes.
    #[arg(long, env = "FLEET_QUEUE_URL", value_name = "FLEET_QUEUE_URL")]
    pub queue_url: String,

    /// URL of the dead-letter queue for permanent failures. Default: the target of the queue's
    /// RedrivePolicy (the worker refuses to start when there is neither).
    #[arg(long, env = "FLEET_DLQ_URL")]
    pub dlq_url: Option<String>,

    /// Most messages worked on at once by this process (the scaler's maximum; at least one
    /// full receive of 10, so that a slow message never holds up the next receive).
    /// `max_concurrency` in topology.json. Formerly FLEET_MAX_IN_FLIGHT / --max-in-flight,
    /// still read (with a warning) when the new name is not set.
    #[arg(long, alias = "max-in-flight", env = "FLEET_MAX_CONCURRENCY",
          default_value_t = renamed_or("FLEET_MAX_IN_FLIGHT", DEFAULT_MAX_CONCURRENCY),
          value_parser = clap::value_parser!(u32).range(SQS_MAX_BATCH as i64..=10_000))]
    pub max_concurrency: u32,

    /// Least messages worked on at once (the scaler's minimum). Equal to --max-concurrency turns
    /// the scaler off.
    #[arg(long, env = "FLEET_MIN_CONCURRENCY", default_value_t = DEFAULT_MIN_CONCURRENCY,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub min_concurrency: u32,

    /// Messages of backlog (visible + in flight, per process) that one unit of concurrency
    /// should carry: acceptable latency ÷ time per message.
    #[arg(long, env = "FLEET_TARGET_BACKLOG_PER_UNIT", default_value_t = 10.0)]
    pub target_backlog_per_unit: f64,

    /// Worker processes sharing the queue: the backlog is divided by this.
    #[arg(long, env = "FLEET_SCALER_PROCESSES", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub scaler_processes: u32,

    /// Seconds between two looks at the backlog.
    #[arg(long, env = "FLEET_SCALER_INTERVAL_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub scaler_interval_secs: u64,

    /// Seconds after a change before concurrency may go down.
    #[arg(long, env = "FLEET_SCALE_DOWN_COOLDOWN_SECS", default_value_t = 60)]
    pub scale_down_cooldown_secs: u64,

    /// Long-poll wait of each receive, in seconds (0..=20).
    #[arg(long, env = "FLEET_WAIT_TIME_SECS", default_value_t = SQS_MAX_WAIT_SECS,
          value_parser = clap::value_parser!(u32).range(0..=SQS_MAX_WAIT_SECS as i64))]
    pub wait_time_secs: u32,

    /// Visibility timeout asked for on receive, in seconds. Default: the queue's own. Handlers
    /// that run past half of it get their message's visibility extended (heartbeat).
    #[arg(long, env = "FLEET_VISIBILITY_TIMEOUT_SECS",
          value_parser = clap::value_parser!(u32).range(1..=43_200))]
    pub visibility_timeout_secs: Option<u32>,

    /// First retry delay after a transient failure, in milliseconds; doubles per receive
    /// (jittered between half and all of it).
    #[arg(long, env = "FLEET_RETRY_BASE_MS", default_value_t = DEFAULT_RETRY_BASE_MS)]
    pub retry_base_ms: u64,

    /// Longest retry delay, in seconds (SQS caps visibility at 43200).
    #[arg(long, env = "FLEET_RETRY_MAX_SECS", default_value_t = 900)]
    pub retry_max_secs: u64,

    /// Circuit breaker: dependency failures in a row (throttling, timeouts, 5xx, refused
    /// connections; no success between) after which the worker stops receiving and probes with
    /// one message at a growing interval. 0 turns the breaker off.
    #[arg(long, env = "FLEET_BREAKER_THRESHOLD", default_value_t = DEFAULT_BREAKER_THRESHOLD)]
    pub breaker_threshold: u32,

    /// Circuit breaker: the longest pause between two probes, in seconds (the first is 1 s,
    /// doubling); a recovered dependency is back at full rate within about this.
    #[arg(long, env = "FLEET_BREAKER_MAX_OPEN_SECS", default_value_t = DEFAULT_BREAKER_MAX_OPEN_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub breaker_max_open_secs: u64,

    /// During an outage, a message whose last receive fails is put back as a fresh copy
    /// instead of being dead-lettered, for at most this many seconds of outage (standard queues).
    #[arg(long, env = "FLEET_OUTAGE_MAX_SECS", default_value_t = DEFAULT_OUTAGE_MAX_SECS)]
    pub outage_max_secs: u64,

    /// The engine dead-letters a message (with its reason) when its N-th receive of its own
    /// fails. Default: the queue's maxReceiveCount. Set it below maxReceiveCount to leave SQS's
    /// own redrive (which moves a message without a reason, and counts receives a FIFO message
    /// spent held back behind its group's head) as a backstop that never fires first.
    #[arg(long, env = "FLEET_MAX_RECEIVES", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_receives: Option<u32>,

    /// FIFO queues: a DynamoDB table (partition key `group_key`, S) where the engine records a
    /// message group stopped behind a dead-lettered message, so that the rest of the group is
    /// parked in order instead of being applied around it. None: a dead-lettered message lets
    /// its group go on.
    #[arg(long, env = "FLEET_GROUP_TABLE")]
    pub group_table: Option<String>,

    /// On SIGTERM or Ctrl-C: how long in-flight messages may take to finish, in seconds, before
    /// the rest are handed back to the queue (visibility 0).
    #[arg(long, env = "FLEET_SHUTDOWN_GRACE_SECS", default_value_t = DEFAULT_SHUTDOWN_GRACE_SECS)]
    pub shutdown_grace_secs: u64,

    /// How long a finished message may wait for others to fill a DeleteMessageBatch, in ms.
    #[arg(long, env = "FLEET_DELETE_LINGER_MS", default_value_t = 50)]
    pub delete_linger_ms: u64,

    /// Name of this worker in logs, metrics and dead-letter reasons. Default: the binary's name.
    #[arg(long, env = "FLEET_WORKER_NAME")]
    pub worker_name: Option<String>,

    /// Seconds between two metric lines on stdout (CloudWatch Embedded Metric Format); 0 writes
    /// only the final one at exit.
    #[arg(long, env = "FLEET_METRICS_INTERVAL_SECS", default_value_t = 60)]
    pub metrics_interval_secs: u64,

    /// A file the engine writes the time of its last progress to every 5 s, for container
    /// health checks (`--health-check`); none when unset.
    #[arg(long, env = "FLEET_HEALTH_FILE", value_name = "PATH")]
    pub health_file: Option<std::path::PathBuf>,

    /// `--health-check` fails when the last progress (a receive answered, a message finished)
    /// is older than this, seconds.
    #[arg(long, env = "FLEET_HEALTH_MAX_AGE_SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub health_max_age_secs: u64,
}

impl EngineConfig {
    /// A configuration with every default, for a queue (used by tests and tools).
    pub fn for_queue(queue_url: impl Into<String>) -> Self {
        Self {
            queue_url: queue_url.into(),
            dlq_url: None,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            min_concurrency: DEFAULT_MIN_CONCURRENCY,
            target_backlog_per_unit: 10.0,
            scaler_processes: 1,
            scaler_interval_secs: 10,
            scale_down_cooldown_secs: 60,
            wait_time_secs: SQS_MAX_WAIT_SECS,
            visibility_timeout_secs: None,
            retry_base_ms: DEFAULT_RETRY_BASE_MS,
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_max_open_secs: DEFAULT_BREAKER_MAX_OPEN_SECS,
            outage_max_secs: DEFAULT_OUTAGE_MAX_SECS,
            group_table: None,
            max_receives: None,
            retry_max_secs: 900,
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
            delete_linger_ms: 50,
            worker_name: None,
            metrics_interval_secs: 60,
            health_file: None,
            health_max_age_secs: 120,
        }
    }

    /// The scaling rule these settings describe.
    pub fn scaler_policy(&self) -> crate::scaler::ScalerPolicy {
        crate::scaler::ScalerPolicy {
            min: self.min_concurrency.min(self.max_concurrency),
            max: self.max_concurrency,
            target_backlog_per_unit: self.target_backlog_per_unit,
            processes: self.scaler_processes,
            scale_down_cooldown: Duration::from_secs(self.scale_down_cooldown_secs),
        }
    }

    /// The circuit breaker these settings describe.
    pub fn breaker_policy(&self) -> crate::engine::BreakerPolicy {
        crate::engine::BreakerPolicy {
            threshold: self.breaker_threshold,
            first_open: BREAKER_FIRST_OPEN,
            max_open: Duration::from_secs(self.breaker_max_open_secs),
            max_outage: Duration::from_secs(self.outage_max_secs),
            probe_deadline: BREAKER_PROBE_DEADLINE,
        }
    }

    /// The retry schedule these settings describe.
    pub fn retry_schedule(&self) -> RetrySchedule {
        RetrySchedule {
            base: Duration::from_millis(self.retry_base_ms),
            cap: Duration::from_secs(self.retry_max_secs),
        }
    }
}

/// Log and metric output settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryConfig {
    /// Log format on stderr: `text` for people, `json` for log pipelines. Levels and targets come
    /// from `RUST_LOG`, over a default of `info` (`RUST_LOG=fleet::message=warn` silences the
    /// line each finished message writes, and nothing else).
    #[arg(long, env = "FLEET_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Serve the metrics for Prometheus on this port (all interfaces; any path, e.g.
    /// `/metrics`), beside the EMF lines on stdout. None: no endpoint.
    #[arg(long, env = "FLEET_PROMETHEUS_PORT")]
    pub prometheus_port: Option<u16>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the current span's fields.
    Json,
}
