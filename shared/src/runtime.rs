//! The tokio runtime a worker binary runs on.
//!
//! Workers are I/O-bound: a handler mostly waits on AWS. One thread then does the same work
//! with far fewer wake-ups and cross-thread hand-offs than a work-stealing pool (measured: see
//! docs/benchmarks.md), so one thread is the default. CPU-heavy handlers can ask
//! for more; a fleet scales out by processes (tasks) anyway.
//!
//! ## Coalescing wake-ups
//! A worker with tens of calls in flight gets their answers one at a time, milliseconds apart.
//! Woken for each one alone, it runs the SDK's code path with cold caches every time: measured
//! here, that costs about three times the CPU of the same call handled among others. With
//! `FLEET_WAKE_COALESCE_MS` set, a runtime thread that has nothing left to do waits that long
//! before it sleeps on I/O, so that the answers arriving meanwhile are handled together. It
//! adds at most that much latency to each step of a message (receive, handler calls, delete),
//! and so costs throughput where the pool in flight is what keeps the other side busy
//! (measured: 30 ms took 540 → 400 CPU-ms per 1000 payments and 135 → 122 messages/s).

use std::time::Duration;

/// Runtime settings shared by every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeConfig {
    /// Threads that run handlers: 1 runs everything on one thread (least CPU per message for
    /// I/O-bound work); more use tokio's multi-threaded scheduler.
    #[arg(long, env = "FLEET_WORKER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=512))]
    pub worker_threads: u16,

    /// Milliseconds an idle runtime thread waits before it sleeps on I/O, so that answers
    /// arriving meanwhile are handled in one wake-up (less CPU per message, up to this much
    /// more latency per step). 0 turns it off.
    #[arg(long, env = "FLEET_WAKE_COALESCE_MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub wake_coalesce_ms: u64,
}

impl RuntimeConfig {
    /// Builds the runtime.
    ///
    /// # Errors
    /// When the OS refuses the threads or the I/O driver.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = if self.worker_threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(self.worker_threads.into());
            builder
        };
        if self.wake_coalesce_ms > 0 {
            let wait = Duration::from_millis(self.wake_coalesce_ms);
            builder.on_thread_park(move || std::thread::sleep(wait));
        }
        builder.enable_all().build()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::RuntimeConfig;

    /// How long after `started` a runtime sees a message another thread sends 20 ms in.
    fn seen_after(config: &RuntimeConfig) -> Duration {
        let runtime = config.build().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let started = Instant::now();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let _ = tx.send(());
        });
        runtime.block_on(async { rx.await.unwrap() });
        started.elapsed()
    }

    #[test]
    fn an_idle_thread_waits_before_it_sleeps_only_when_asked() {
        let mut config = RuntimeConfig {
            worker_threads: 1,
            wake_coalesce_ms: 500,
        };
        // The runtime found nothing to do at once, waited 500 ms, then saw the message.
        assert!(seen_after(&config) >= Duration::from_millis(500));
        config.wake_coalesce_ms = 0;
        assert!(seen_after(&config) < Duration::from_millis(500));
        config.worker_threads = 2;
        assert!(seen_after(&config) < Duration::from_millis(500));
    }
}
