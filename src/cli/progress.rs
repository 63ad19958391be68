//! Progress bars on stderr, only when it is a terminal and neither -q nor --debug is set:
//! bytes and blobs done, rate and time left. Nothing is drawn into a pipe or a file.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Renders progress events (bundle, push, link) as one byte bar with a blob count.
pub struct Bar {
    pb: ProgressBar,
    /// What the bar is doing ("bundle", "push", "link").
    verb: &'static str,
    blobs_total: AtomicUsize,
    blobs_done: AtomicUsize,
}

/// A bar that draws only on a terminal.
pub fn bar(silent: bool, verb: &'static str) -> Arc<Bar> {
    let target = if silent || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let pb = ProgressBar::with_draw_target(None, target);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_prefix(verb);
    Arc::new(Bar {
        pb,
        verb,
        blobs_total: AtomicUsize::new(0),
        blobs_done: AtomicUsize::new(0),
    })
}

impl Bar {
    /// Clears the bar.
    pub fn finish(&self) {
        self.pb.finish_and_clear();
    }

    fn show_blobs(&self) {
        self.pb.set_message(format!(
            "{}/{} blobs",
            self.blobs_done.load(Ordering::Relaxed),
            self.blobs_total.load(Ordering::Relaxed)
        ));
    }
}

impl crate::bundle::Progress for Bar {
    fn planned(&self, images: usize, blobs: usize, bytes_to_fetch: u64) {
        self.blobs_total.store(blobs, Ordering::Relaxed);
        self.blobs_done.store(0, Ordering::Relaxed);
        self.pb.set_length(bytes_to_fetch);
        self.pb.set_position(0);
        self.show_blobs();
        self.pb.tick();
        tracing::info!(
            "{}: {images} images, {blobs} blobs, {bytes_to_fetch} bytes to move",
            self.verb
        );
    }
    fn fetched(&self, bytes: u64) {
        // Every caller reports one blob per call (downloaded, pushed or linked).
        self.blobs_done.fetch_add(1, Ordering::Relaxed);
        self.show_blobs();
        self.pb.inc(bytes);
    }
    fn packing(&self, bytes: u64) {
        self.pb.set_message("packing");
        self.pb.set_length(bytes);
        self.pb.set_position(bytes);
    }
}
