//! Fewer wake-ups per byte of an upload: while an HTTP/1 request body of known length is read,
//! the connection's socket gets a receive low-water mark (`SO_RCVLOWAT`), so the kernel wakes the
//! server once [`UPLOAD_RCVLOWAT_BYTES`] wait instead of once per segment. The body ([`Paced`])
//! says what it wants after each chunk; the socket ([`super::IdleIo`]) applies it before its next
//! read. The mark is never above the body's bytes still to come less what hyper and TLS may
//! already hold ([`UPLOAD_RCVLOWAT_MARGIN_BYTES`]), it is back at 1 before the body's end, and a
//! read that waits longer than [`crate::limits::UPLOAD_RCVLOWAT_PATIENCE`] drops it for the rest of the body,
//! so no request can stall on it. Only on kernels that wake a reader when the mark is lowered.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::http::Version;
use axum::http::request::Parts;

use crate::limits::{UPLOAD_RCVLOWAT_BYTES, UPLOAD_RCVLOWAT_MARGIN_BYTES};

/// One connection's low-water mark, shared by the socket that applies it and the request body
/// being read on it (both polled by the connection's one task).
#[derive(Clone, Default)]
pub(super) struct LowWater(Arc<Mark>);

/// What [`LowWater`] shares.
#[derive(Default)]
struct Mark {
    /// The mark the body asks for (0 or 1: none).
    wanted: AtomicUsize,
    /// Set by the socket when it waited too long: the body asks for no mark until it ends.
    gave_up: AtomicBool,
}

impl LowWater {
    /// The mark the socket should have before its next read.
    pub(super) fn wanted(&self) -> usize {
        self.0.wanted.load(Ordering::Relaxed).max(1)
    }

    /// The socket waited longer than the patience allows: no mark for the rest of this body.
    pub(super) fn give_up(&self) {
        self.0.gave_up.store(true, Ordering::Relaxed);
        self.0.wanted.store(1, Ordering::Relaxed);
    }

    /// The body has `left` bytes still to come: the mark, or 1 once that is too close to the end.
    fn ask(&self, left: u64) {
        let mark = if !self.0.gave_up.load(Ordering::Relaxed)
            && left > UPLOAD_RCVLOWAT_BYTES as u64 + UPLOAD_RCVLOWAT_MARGIN_BYTES
        {
            UPLOAD_RCVLOWAT_BYTES
        } else {
            1
        };
        self.0.wanted.store(mark, Ordering::Relaxed);
    }

    /// No mark: a body starts or ends.
    fn reset(&self) {
        self.0.wanted.store(1, Ordering::Relaxed);
        self.0.gave_up.store(false, Ordering::Relaxed);
    }
}

/// Sets `SO_RCVLOWAT` on a socket; a failure only costs the wake-ups the mark would have saved.
pub(super) fn set_rcvlowat(socket: &impl std::os::fd::AsRawFd, bytes: usize) {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket descriptor owned by the caller, and a c_int option value of the size given.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::debug!("setting SO_RCVLOWAT: {}", std::io::Error::last_os_error());
    }
}

/// Whether the kernel wakes a waiting reader when the mark is lowered (Linux 4.18 and later,
/// `tcp_set_rcvlowat`): on older kernels, and elsewhere, a body waited out at the patience could
/// sit on a full window with no wake-up until the idle timeout, so no body is paced there.
fn supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        cfg!(target_os = "linux")
            && std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .is_ok_and(|r| release_at_least(&r, 4, 18))
    })
}

/// A kernel release string (`uname -r`: `6.1.0-18-amd64`, `3.10.0-1160.el7`) is at least `major.minor`.
fn release_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// The request body, paced when it is worth it: an HTTP/1 body whose length is known and larger
/// than the mark plus its margin, on a connection that has a [`LowWater`]; any other as it is.
pub(super) fn paced(parts: &Parts, body: Body) -> Body {
    let Some(low) = parts.extensions.get::<LowWater>().filter(|_| supported()) else {
        return body;
    };
    let http1 = matches!(parts.version, Version::HTTP_10 | Version::HTTP_11);
    match body.size_hint().exact() {
        Some(left)
            if http1 && left > UPLOAD_RCVLOWAT_BYTES as u64 + UPLOAD_RCVLOWAT_MARGIN_BYTES =>
        {
            low.reset();
            Body::new(Paced {
                inner: body,
                low: low.clone(),
                left,
            })
        }
        _ => body,
    }
}

/// A body that tells its connection's socket, after each chunk, how much of it is still to come.
struct Paced {
    inner: Body,
    low: LowWater,
    /// Bytes of the body not yet handed to the handler.
    left: u64,
}

impl HttpBody for Paced {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                self.left = self.left.saturating_sub(n);
                self.low.ask(self.left);
            }
            Poll::Ready(_) => self.low.reset(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Paced {
    fn drop(&mut self) {
        // The next request's head is never waited for with a mark.
        self.low.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mark is asked for only while more than the mark plus the margin is still to come; it is
    /// back at 1 near the end, stays at 1 for the rest of a body once the socket gave up, and a
    /// new body may ask again.
    #[test]
    fn only_kernels_from_4_18_on_are_paced() {
        for (release, paced) in [
            ("3.10.0-1160.el7.x86_64", false),
            ("4.17.19", false),
            ("4.18.0-553.el8_10.x86_64", true),
            ("5.4.0-150-generic\n", true),
            ("6.1.0-18-amd64", true),
            ("", false),
        ] {
            assert_eq!(release_at_least(release, 4, 18), paced, "{release:?}");
        }
    }

    #[test]
    fn the_mark_is_never_above_what_is_still_to_come() {
        let low = LowWater::default();
        let edge = UPLOAD_RCVLOWAT_BYTES as u64 + UPLOAD_RCVLOWAT_MARGIN_BYTES;
        assert_eq!(low.wanted(), 1);
        for (left, want) in [
            (100 * edge, UPLOAD_RCVLOWAT_BYTES),
            (edge + 1, UPLOAD_RCVLOWAT_BYTES),
            (edge, 1),
            (UPLOAD_RCVLOWAT_BYTES as u64, 1),
            (0, 1),
        ] {
            low.ask(left);
            assert_eq!(low.wanted(), want, "{left} bytes still to come");
        }
        low.ask(10 * edge);
        low.give_up();
        assert_eq!(low.wanted(), 1);
        low.ask(10 * edge);
        assert_eq!(low.wanted(), 1, "asked again after the socket gave up");
        low.reset();
        low.ask(10 * edge);
        assert_eq!(low.wanted(), UPLOAD_RCVLOWAT_BYTES, "a new body");
    }
}
