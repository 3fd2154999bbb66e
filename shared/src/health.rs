//! Container health checks without an HTTP server (and without a shell in the image).
//!
//! The engine records when it last made progress: a receive answered (messages or not) or a
//! message finished. With `FLEET_HEALTH_FILE` set, it writes that time (ms since the epoch) to
//! the file every few seconds. The container's health check runs the worker binary itself with
//! `--health-check`, which exits 0 when the file says the worker made progress within
//! `FLEET_HEALTH_MAX_AGE_SECS`, 1 otherwise. A worker whose receives keep failing (credentials,
//! network) or whose handlers all hang stops making progress and is replaced; a long-polling
//! idle worker makes progress every 20 s.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::util::now_ms;

/// When the engine last made progress.
#[derive(Debug)]
pub struct Progress(AtomicU64);

impl Default for Progress {
    fn default() -> Self {
        Self(AtomicU64::new(now_ms()))
    }
}

impl Progress {
    /// Records progress now.
    pub fn mark(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    /// The last progress, ms since the epoch.
    pub fn last_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How often the health file is written.
const WRITE_EVERY: Duration = Duration::from_secs(5);

/// Writes the last progress to `path` every few seconds until `shutdown` (atomically: a
/// temporary file renamed over it).
pub fn spawn_writer(
    path: PathBuf,
    progress: Arc<Progress>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(WRITE_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let (path, last) = (path.clone(), progress.last_ms());
            let written = tokio::task::spawn_blocking(move || write(&path, last)).await;
            if let Ok(Err(err)) = written {
                tracing::warn!(error = %err, "cannot write the health file");
            }
        }
    })
}

fn write(path: &Path, last_ms: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, last_ms.to_string())?;
    std::fs::rename(&tmp, path)
}

/// Whether the worker that writes `path` made progress within `max_age`.
///
/// # Errors
/// Why it is not healthy: no file (yet), not a time, or too old.
pub fn check(path: &Path, max_age: Duration) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let last: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{} does not hold a time", path.display()))?;
    let age = Duration::from_millis(now_ms().saturating_sub(last));
    if age > max_age {
        return Err(format!(
            "no progress for {} s (more than {} s)",
            age.as_secs(),
            max_age.as_secs()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_is_healthy_old_or_missing_or_garbage_is_not() {
        let dir = std::env::temp_dir().join(format!("fleet-health-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("health");
        assert!(check(&file, Duration::from_secs(60)).is_err(), "missing");
        write(&file, now_ms()).unwrap();
        assert_eq!(check(&file, Duration::from_secs(60)), Ok(()));
        write(&file, now_ms() - 120_000).unwrap();
        let err = check(&file, Duration::from_secs(60)).unwrap_err();
        assert!(err.contains("no progress for 120 s"), "{err}");
        std::fs::write(&file, "soon").unwrap();
        assert!(check(&file, Duration::from_secs(60)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
