//! Progress bars on stderr, drawn only when it is a terminal (scripts and logs get none).

use std::borrow::Cow;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps (`None`: not known yet) named `prefix`, or a hidden one when stderr is
/// not a terminal.
pub(crate) fn bar(len: Option<u64>, prefix: impl Into<Cow<'static, str>>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:24}] {pos}/{len} {msg} ({per_sec}, eta {eta})",
        )
        .expect("a valid template")
        .progress_chars("#>-"),
    );
    bar.set_prefix(prefix);
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}
