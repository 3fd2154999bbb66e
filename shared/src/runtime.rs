//! The tokio runtime a worker binary runs on.
//!
//! Workers are I/O-bound: a handler mostly waits on AWS. One thread then does the same work
//! with far fewer wake-ups and cross-thread hand-offs than a work-stealing pool (measured: see
//! the README's benchmark section), so one thread is the default. CPU-heavy handlers can ask
//! for more; a fleet scales out by processes (tasks) anyway.

/// Runtime settings shared by every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeConfig {
    /// Threads that run handlers: 1 runs everything on one thread (least CPU per message for
    /// I/O-bound work); more use tokio's multi-threaded scheduler.
    #[arg(long, env = "FLEET_WORKER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=512))]
    pub worker_threads: u16,
}

impl RuntimeConfig {
    /// Builds the runtime.
    ///
    /// # Errors
    /// When the OS refuses the threads or the I/O driver.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        if self.worker_threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.worker_threads.into())
                .enable_all()
                .build()
        }
    }
}
