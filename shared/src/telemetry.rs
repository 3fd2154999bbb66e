//! One tracing setup for every binary: logs on stderr (text or JSON), filtered by `RUST_LOG`.
//!
//! Stdout is kept for metric lines (see [`crate::metrics`]), so the two never interleave.
//!
//! Each message is handled inside a span `message` carrying its `message_id`, `queue`,
//! `receive_count`, FIFO `group`, the gateway's `request_id` (the `requestId` attribute) and the
//! X-Ray `trace_header` (SQS's `AWSTraceHeader`) when it has them, so every line logged while
//! it is handled names them. When it is finished the engine writes one info line with the
//! target [`MESSAGE_TARGET`]: `message finished` with `outcome`, `elapsed_ms`, `request_id` and
//! `message_id`. `RUST_LOG=fleet::message=warn` turns those lines off and nothing else.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};

/// The target of the line each finished message writes (`RUST_LOG=fleet::message=warn` turns it
/// off).
pub const MESSAGE_TARGET: &str = "fleet::message";

/// The level every target logs at unless `RUST_LOG` says otherwise.
const DEFAULT_DIRECTIVE: &str = "info";

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(config: &TelemetryConfig) {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// `RUST_LOG`'s directives over the default `info`: a directive names what differs
/// (`fleet::message=warn`, `fleet=debug`), a bare level (`warn`) replaces the default.
/// Invalid directives are ignored.
fn filter(rust_log: Option<&str>) -> EnvFilter {
    let directives = match rust_log.map(str::trim) {
        Some(given) if !given.is_empty() => format!("{DEFAULT_DIRECTIVE},{given}"),
        _ => DEFAULT_DIRECTIVE.to_owned(),
    };
    EnvFilter::builder().parse_lossy(directives)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tracing::{Event, Subscriber};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    use super::*;

    /// Counts the events that pass the filter.
    struct Count(Arc<AtomicUsize>);

    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// How many of the events `emit` logs pass the filter built from `rust_log`.
    fn passing(rust_log: Option<&str>, emit: impl FnOnce()) -> usize {
        let count = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(filter(rust_log))
            .with(Count(count.clone()));
        tracing::subscriber::with_default(subscriber, emit);
        count.load(Ordering::SeqCst)
    }

    fn message_line() {
        tracing::info!(target: MESSAGE_TARGET, "message finished");
    }

    fn engine_info() {
        tracing::info!(target: "fleet::engine", "engine started");
    }

    #[test]
    fn the_message_line_is_turned_down_alone() {
        let off = Some("fleet::message=warn");
        assert_eq!(passing(off, message_line), 0);
        assert_eq!(passing(off, engine_info), 1, "the rest stays at info");
        assert_eq!(passing(None, message_line), 1, "on by default");
        assert_eq!(passing(Some(""), message_line), 1);
    }

    #[test]
    fn a_bare_level_replaces_the_default() {
        assert_eq!(passing(Some("warn"), engine_info), 0);
        assert_eq!(passing(Some("warn"), message_line), 0);
        assert_eq!(
            passing(
                Some("warn"),
                || tracing::warn!(target: "fleet::engine", "x")
            ),
            1
        );
        let sdk_debug = || tracing::debug!(target: "aws_smithy_runtime", "x");
        assert_eq!(passing(None, sdk_debug), 0);
        assert_eq!(passing(Some("debug"), sdk_debug), 1);
    }
}
