//! A request answered without its body being read (refused, 401, or a read
//! route given a body): the body is read and discarded up to
//! [`MAX_REFUSED_BODY_BYTES`] so the keep-alive connection can carry the
//! next request, or else the answer says `Connection: close` (HTTP/1), so
//! the client never sends its next request into a connection being closed.

use axum::body::Body;
use axum::body::HttpBody as _;
use axum::http::{HeaderValue, Version, header, request::Parts};
use axum::response::Response;

use crate::limits::MAX_REFUSED_BODY_BYTES;

/// Returns `resp` once `body` (unread by the handler) is discarded, or with `Connection: close` when it cannot be.
pub async fn settle(parts: &Parts, body: Body, resp: Response) -> Response {
    if body.is_end_stream() {
        return resp;
    }
    let http1 = matches!(parts.version, Version::HTTP_10 | Version::HTTP_11);
    let expects_continue = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let too_large = body
        .size_hint()
        .exact()
        .is_some_and(|n| n > MAX_REFUSED_BODY_BYTES as u64);
    // A client waiting for `100 Continue` has not sent its body: asking for it only to drop it wastes the link.
    let drained = !expects_continue && !too_large && discard(body).await;
    if drained || !http1 {
        return resp;
    }
    close(resp)
}

/// `resp`, marked as the connection's last answer (HTTP/1) when it is an error: for a handler
/// that reads the body itself and may have refused the request before reading all of it.
pub fn last_if_error(parts: &Parts, resp: Response) -> Response {
    let http1 = matches!(parts.version, Version::HTTP_10 | Version::HTTP_11);
    if http1 && (resp.status().is_client_error() || resp.status().is_server_error()) {
        close(resp)
    } else {
        resp
    }
}

/// Reads and drops a body the server will not use, up to [`MAX_REFUSED_BODY_BYTES`] (nothing is
/// kept); `true` when the whole body was read, so the connection can carry the next request.
pub async fn discard(body: Body) -> bool {
    use futures_util::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { return false };
        seen += chunk.len();
        if seen > MAX_REFUSED_BODY_BYTES {
            return false;
        }
    }
    true
}

/// `resp` marked as the connection's last answer.
fn close(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}
