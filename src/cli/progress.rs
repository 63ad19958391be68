//! Progress bars on stderr, only when it is a terminal and neither -q nor --debug is set.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Renders bundle progress events as one byte bar.
pub struct Bar(ProgressBar);

/// A bar that draws only on a terminal.
pub fn bar(silent: bool) -> Arc<Bar> {
    let target = if silent || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let pb = ProgressBar::with_draw_target(None, target);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    Arc::new(Bar(pb))
}

impl Bar {
    /// Clears the bar.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl crate::bundle::Progress for Bar {
    fn planned(&self, images: usize, blobs: usize, bytes_to_fetch: u64) {
        self.0.set_message(format!("{images} images"));
        self.0.set_length(bytes_to_fetch);
        self.0.set_position(0);
        tracing::info!("{images} images, {blobs} unique blobs, {bytes_to_fetch} bytes to download");
    }
    fn fetched(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn packing(&self, bytes: u64) {
        self.0.set_message("packing");
        self.0.set_length(bytes);
        self.0.set_position(bytes);
    }
}
