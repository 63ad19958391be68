//! Blocking work awaited from async code, joined in one place.
//!
//! A blocking task can end three ways: its value, a panic, or cancelled because the
//! runtime shut down before it ran (a command that failed while downloads were still in
//! flight). The last is not a bug and must not become a panic printed over the one error
//! line the user should see: it is an [`io::Error`] here (of kind `Other`: `Interrupted` would
//! make every `read`/`write_all` loop retry it).

use std::io;

/// Awaits a task from `spawn_blocking` (or `spawn`): its value, its panic unwound on,
/// or a cancellation as an error ([`cancelled`]).
pub async fn join<T>(task: tokio::task::JoinHandle<T>) -> io::Result<T> {
    match task.await {
        Ok(v) => Ok(v),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(cancelled()),
    }
}

/// Runs `f` on a blocking thread and awaits it, as [`join`] does.
pub async fn unblock<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    join(tokio::task::spawn_blocking(f)).await
}

/// The error a task cancelled by the runtime's shutdown ends with.
pub fn cancelled() -> io::Error {
    io::Error::other("cancelled: ferry is shutting down")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_value_comes_back() {
        assert_eq!(unblock(|| 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn an_aborted_task_is_an_error_not_a_panic() {
        let t = tokio::spawn(std::future::pending::<()>());
        t.abort();
        let e = join(t).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Other);
        assert!(e.to_string().contains("cancelled"), "{e}");
    }

    #[tokio::test]
    #[should_panic(expected = "boom")]
    async fn a_panic_goes_on_unwinding() {
        let _ = unblock(|| panic!("boom")).await;
    }
}
