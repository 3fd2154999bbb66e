//! The Prometheus endpoint (`FLEET_PROMETHEUS_PORT`): `metrics-exporter-prometheus`'s recorder
//! and HTTP listener, kept in step with the process's [`Metrics`].

use std::net::SocketAddr;
use std::sync::Arc;

use ::metrics::{Key, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

use super::{Metrics, PROMETHEUS_BUCKETS_MS, PROMETHEUS_PREFIX, PROMETHEUS_SYNC};

/// Why the Prometheus endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve Prometheus metrics on {addr}: {source}")]
pub struct PrometheusError {
    addr: SocketAddr,
    source: metrics_exporter_prometheus::BuildError,
}

/// Serves `metrics` for Prometheus on `addr` (any path; `/health` answers `OK`), every series
/// labelled `worker` and `queue`. Runs on the current tokio runtime until it stops; the
/// registry's counters and gauges reach the endpoint within a second, histogram samples at once.
///
/// # Errors
/// When the address cannot be bound.
pub fn serve_prometheus(
    metrics: &Arc<Metrics>,
    addr: SocketAddr,
    worker: &str,
    queue: &str,
) -> Result<(), PrometheusError> {
    let error = |source| PrometheusError { addr, source };
    let (recorder, exporter) = prometheus_builder(worker, queue)
        .map_err(error)?
        .with_http_listener(addr)
        .build()
        .map_err(error)?;
    tokio::spawn(async move {
        if let Err(err) = exporter.await {
            tracing::error!(error = ?err, "the Prometheus endpoint stopped");
        }
    });
    metrics.attach_prometheus(recorder);
    let metrics = metrics.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(PROMETHEUS_SYNC);
        loop {
            ticker.tick().await;
            metrics.sync_prometheus();
        }
    });
    Ok(())
}

/// The Prometheus recorder's settings: recommended names (`_total` on counters), the labels,
/// the latency buckets (a histogram Prometheus can sum across pods, not a summary).
pub(super) fn prometheus_builder(
    worker: &str,
    queue: &str,
) -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .with_recommended_naming(true)
        .add_global_label("worker", worker)
        .add_global_label("queue", queue)
        .set_buckets(&PROMETHEUS_BUCKETS_MS)
}

impl Metrics {
    /// From now on the Prometheus recorder gets every histogram sample as it is recorded, and
    /// the counters and gauges at each [`Self::sync_prometheus`].
    pub(super) fn attach_prometheus(&self, recorder: PrometheusRecorder) {
        let prometheus = self.registry.storage().prometheus.get_or_init(|| recorder);
        // Histograms registered before now (new ones are mirrored as they are made).
        self.registry.visit_histograms(|key, histogram| {
            histogram.mirror(prometheus.register_histogram(&prometheus_key(key), &METADATA));
        });
        self.sync_prometheus();
    }
}

/// The metadata given to the Prometheus recorder (it ignores it).
pub(super) static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

/// A metric's key on the Prometheus endpoint: `fleet_<name>`, same labels.
pub(super) fn prometheus_key(key: &Key) -> Key {
    Key::from_parts(
        format!("{PROMETHEUS_PREFIX}{}", key.name()),
        key.labels().cloned().collect::<Vec<_>>(),
    )
}
