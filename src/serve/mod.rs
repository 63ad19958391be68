//! An OCI distribution API server over a [`Catalog`] (a root, or bundles read in place): manifests by tag and
//! digest, blobs with `Range`, tags and catalog with pagination, the spec's
//! JSON errors, and OCI 1.1 referrers. Read-only unless [`Options`] allow
//! pushes and deletes (into a root: see `write`). Blobs are streamed from
//! files; memory stays flat.
//! A connection that does not send its request head within
//! [`HEADER_READ_TIMEOUT`], or on which nothing moves for [`IDLE_TIMEOUT`], is
//! closed, so idle or half-sent requests cannot hold the server's sockets.
//! Names and references from a request are echoed cut short ([`echo`]).
//! [`Options`] add TLS ([`tls`], HTTP/2 by ALPN) and basic authentication
//! ([`auth`]); a request answered without reading its body is settled by [`drain`].

pub mod auth;
mod drain;
mod pace;
pub mod tls;

mod referrers;
mod uploads;
mod write;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::transport::Catalog;

use crate::digest::Digest;
use crate::limits::{
    DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, SERVE_CHUNK_BYTES, SERVE_CONN_BUFFER_BYTES, echo,
};
use crate::reference::{validate_repository, validate_tag};
use crate::registry::errcode::{ErrorCode, ErrorEnvelope};
use crate::registry::routes::Route;
use crate::store::StoreError;

const API_VERSION_HEADER: axum::http::HeaderName =
    axum::http::HeaderName::from_static("docker-distribution-api-version");
const API_VERSION: (axum::http::HeaderName, &str) = (API_VERSION_HEADER, "registry/2.0");

/// A failed request: a spec error code, or a server-side fault.
enum ApiError {
    Code(ErrorCode, serde_json::Value),
    Internal(String),
    NotFound,
    MethodNotAllowed,
    /// No valid credentials: 401 with the Basic challenge.
    Unauthorized,
    /// A response built in full by the handler (an error that carries extra headers).
    Ready(Box<Response>),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!("{e}");
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Code(code, detail) => {
                let body =
                    serde_json::to_vec(&ErrorEnvelope::one(code, detail)).unwrap_or_default();
                let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST);
                (
                    status,
                    [(header::CONTENT_TYPE, "application/json"), API_VERSION],
                    body,
                )
                    .into_response()
            }
            ApiError::Internal(msg) => {
                (StatusCode::INTERNAL_SERVER_ERROR, [API_VERSION], msg).into_response()
            }
            ApiError::NotFound => {
                (StatusCode::NOT_FOUND, [API_VERSION], "404 page not found\n").into_response()
            }
            ApiError::MethodNotAllowed => {
                ApiError::Code(ErrorCode::Unsupported, serde_json::Value::Null).into_response()
            }
            ApiError::Unauthorized => {
                let mut resp = ApiError::Code(ErrorCode::Unauthorized, serde_json::Value::Null)
                    .into_response();
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, auth::Auth::challenge());
                resp
            }
            ApiError::Ready(resp) => *resp,
        }
    }
}

type ApiResult = Result<Response, ApiError>;

/// How [`run`] serves, from the server flags (checked at start): TLS, authentication, and what it allows beyond reading.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// TLS with this configuration; plain HTTP when none.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Basic authentication; every request is anonymous when none.
    pub auth: Option<Arc<auth::Auth>>,
    /// Blob uploads and manifest PUTs (`--allow-push`; needs a root backend).
    pub allow_push: bool,
    /// Deletes of manifests, tags and blobs (`--allow-delete`; needs a root backend).
    pub allow_delete: bool,
}

/// A server's shared state: the backend, who may use it and what it allows, uploads in progress, the referrers found.
struct App<B> {
    backend: Arc<B>,
    auth: Option<Arc<auth::Auth>>,
    allow_push: bool,
    allow_delete: bool,
    uploads: uploads::Uploads,
    referrers: referrers::Referrers,
}

impl<B> App<B> {
    fn new(backend: B, options: &Options) -> App<B> {
        App {
            backend: Arc::new(backend),
            auth: options.auth.clone(),
            allow_push: options.allow_push,
            allow_delete: options.allow_delete,
            uploads: uploads::Uploads::new(),
            referrers: referrers::Referrers::default(),
        }
    }
}

/// The router for a backend as `options` say (authentication, pushes, deletes; TLS is the listener's), to mount on any listener (tests use it in-process).
pub fn router<B: Catalog>(backend: B, options: &Options) -> Router {
    router_of(Arc::new(App::new(backend, options)))
}

fn router_of<B: Catalog>(app: Arc<App<B>>) -> Router {
    Router::new().fallback(handle::<B>).with_state(app)
}

/// How long a client has to send a request head once a connection is open or a request starts.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection may sit with nothing read or written (an idle keep-alive, a stalled client) before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves `backend` on `listener` as `opts` say until `shutdown` completes, then lets requests in flight finish.
/// Pushes and deletes need a root backend; with pushes on, temp files of dead
/// servers are cleared at start and abandoned uploads are swept while serving.
pub async fn run<B: Catalog>(
    backend: B,
    listener: tokio::net::TcpListener,
    opts: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (header_timeout, idle) =
        match crate::limits::test_millis(crate::limits::ENV_SERVE_TIMEOUT_MS) {
            Some(t) => (t, t),
            None => (HEADER_READ_TIMEOUT, IDLE_TIMEOUT),
        };
    crate::limits::limit_malloc_arenas();
    let writes = opts.allow_push || opts.allow_delete;
    if writes && backend.writable().is_none() {
        return Err(std::io::Error::other(
            "pushes and deletes need a registry root (bundles are served read-only)",
        ));
    }
    let state = Arc::new(App::new(backend, &opts));
    let _sweeper = opts.allow_push.then(|| {
        if let Some(store) = state.backend.writable() {
            store.clear_stale_temps();
        }
        let s = state.clone();
        AbortOnDrop(tokio::spawn(async move {
            let every = (s.uploads.idle_limit() / 4)
                .clamp(Duration::from_millis(50), Duration::from_secs(30));
            loop {
                tokio::time::sleep(every).await;
                let n = s.uploads.sweep();
                if n > 0 {
                    tracing::info!("dropped {n} abandoned upload(s)");
                }
            }
        }))
    });
    let app = router_of(state);
    let acceptor = opts.tls.map(tokio_rustls::TlsAcceptor::from);
    // The accept loop is a task on the runtime's workers, not on the thread that awaits `run`
    // (the main thread, in `block_on`): a worker already awake on the listener's readiness takes
    // each connection, instead of waking one more thread for it (about 4,000 wake-ups of the
    // main thread per push of the medium corpus).
    let mut accepting = AbortOnDrop(tokio::spawn(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut conns = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((s, _)) => s,
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!("accepting a connection: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let low = pace::LowWater::default();
                    let service = with_low_water(app.clone(), low.clone());
                    let stop = stop_rx.clone();
                    let acceptor = acceptor.clone();
                    conns.spawn(async move {
                        let io = IdleIo::new(stream, idle, low);
                        match acceptor {
                            None => serve_connection(io, service, header_timeout, stop).await,
                            Some(acceptor) => {
                                // The handshake counts as reading the request head: bounded alike,
                                // and dropped at shutdown (no request has started on it).
                                let mut stopping = stop.clone();
                                let handshake = tokio::time::timeout(header_timeout, acceptor.accept(io));
                                tokio::select! {
                                    r = handshake => match r {
                                        Ok(Ok(tls)) => serve_connection(tls, service, header_timeout, stop).await,
                                        Ok(Err(e)) => tracing::debug!("TLS handshake: {e}"),
                                        Err(_) => tracing::debug!("TLS handshake timed out"),
                                    },
                                    _ = stopping.changed() => {}
                                }
                            }
                        }
                    });
                }
            }
        }
        let _ = stop_tx.send(true);
        while conns.join_next().await.is_some() {}
    }));
    if let Err(e) = (&mut accepting.0).await
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
    Ok(())
}

/// The router as one connection's service: each request carries the connection's [`pace::LowWater`],
/// so an upload's body can pace the socket it is read from.
fn with_low_water(
    app: Router,
    low: pace::LowWater,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let inner = hyper_util::service::TowerToHyperService::new(app);
    hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(low.clone());
        hyper::service::Service::call(&inner, req)
    })
}

/// Serves HTTP/1.1 or HTTP/2 (h2 by ALPN or prior knowledge) on one connection until it ends or `stop` changes, then shuts it down gracefully.
async fn serve_connection<I, S>(
    io: I,
    service: S,
    header_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(SERVE_CONN_BUFFER_BYTES);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_send_buf_size(SERVE_CONN_BUFFER_BYTES);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Stops a background task when the server stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A socket that fails with `TimedOut` once nothing has been read or written
/// on it for the idle timeout (hyper then closes the connection), and that
/// takes the receive low-water mark the body being read asks for ([`pace`]).
struct IdleIo {
    inner: tokio::net::TcpStream,
    idle: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    low: pace::LowWater,
    /// The `SO_RCVLOWAT` the socket has now (1: the kernel's default).
    mark: usize,
    /// While a mark is set and a read waits: when to stop waiting for the mark (counted from
    /// the start of that wait, not from the last byte: the handler may have been busy).
    patience: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl IdleIo {
    fn new(inner: tokio::net::TcpStream, idle: Duration, low: pace::LowWater) -> IdleIo {
        IdleIo {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            low,
            mark: 1,
            patience: None,
        }
    }

    /// Restarts the idle wait: something was read or written.
    fn moved(&mut self) {
        let at = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(at);
    }

    /// Gives the socket the mark the body asks for, if it changed.
    fn set_mark(&mut self, mark: usize) {
        if mark != self.mark {
            pace::set_rcvlowat(&self.inner, mark);
            self.mark = mark;
            self.patience = None;
        }
    }

    /// `Pending` until the deadline, then the timeout error.
    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Error> {
        self.deadline
            .as_mut()
            .poll(cx)
            .map(|()| std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle too long"))
    }

    /// `Ready` once a read has waited out the patience for the mark (armed at the first wait).
    fn impatient(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        if self.mark <= 1 {
            return false;
        }
        let patience = self.patience.get_or_insert_with(|| {
            Box::pin(tokio::time::sleep(crate::limits::upload_rcvlowat_patience()))
        });
        patience.as_mut().poll(cx).is_ready()
    }
}

use std::future::Future as _;
use std::task::Poll;
use std::time::Duration;

impl tokio::io::AsyncRead for IdleIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let wanted = self.low.wanted();
        self.set_mark(wanted);
        let before = buf.filled().len();
        loop {
            match std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
                Poll::Ready(r) => {
                    if buf.filled().len() > before {
                        self.moved();
                    }
                    self.patience = None;
                    return Poll::Ready(r);
                }
                Poll::Pending if self.impatient(cx) => {
                    // Waited out the patience for a mark: read the rest of this body as before
                    // (lowering the mark wakes the socket if anything is waiting; read again).
                    tracing::debug!(
                        "no {} bytes within the patience: reading this body on without a low-water mark",
                        self.mark
                    );
                    self.low.give_up();
                    self.set_mark(1);
                }
                Poll::Pending => return self.expired(cx).map(Err),
            }
        }
    }
}

impl tokio::io::AsyncWrite for IdleIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.expired(cx).map(Err),
        }
    }
    // Vectored, as the socket is: hyper then queues a body's chunks and writes them as they
    // are, instead of copying each into a growing buffer of its own per connection.
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.expired(cx).map(Err),
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Binds `addr` and returns the listener and the address actually bound (port 0 picks one).
pub async fn bind(addr: &str) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

async fn handle<B: Catalog>(State(app): State<Arc<App<B>>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    tracing::debug!(%method, %path, "request");
    let route = Route::parse(&path);
    let ping = matches!(route, Some(Route::Base));
    let result = match (&app.auth, route) {
        (Some(auth), _)
            if !auth
                .allows(&method, ping, parts.headers.get(header::AUTHORIZATION))
                .await =>
        {
            Err(ApiError::Unauthorized)
        }
        (_, None) => Err(ApiError::NotFound),
        (_, Some(route)) if method != Method::GET && method != Method::HEAD => {
            if write::accepts(&app, &method, &route) {
                // The handler reads the body itself; one it refused may have left the body unread,
                // so an error is the connection's last answer (HTTP/1: `Connection: close`).
                let body = pace::paced(&parts, body);
                let resp = write::dispatch(app, &method, route, &query, &parts.headers, body)
                    .await
                    .unwrap_or_else(IntoResponse::into_response);
                return drain::last_if_error(&parts, resp);
            }
            Err(ApiError::MethodNotAllowed)
        }
        (_, Some(route)) => dispatch(app, &method, route, &query, &parts.headers).await,
    };
    let resp = result.unwrap_or_else(IntoResponse::into_response);
    drain::settle(&parts, body, resp).await
}

async fn dispatch<B: Catalog>(
    app: Arc<App<B>>,
    method: &Method,
    route: Route,
    query: &str,
    headers: &HeaderMap,
) -> ApiResult {
    let head = method == Method::HEAD;
    let backend = app.backend.clone();
    match route {
        Route::Base => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json"), API_VERSION],
            "{}",
        )
            .into_response()),
        Route::Catalog => {
            let repos = blocking(move || backend.repositories()).await?;
            let page = paginate(repos, query, "/v2/_catalog")?;
            json_page(serde_json::json!({ "repositories": page.0 }), page.1)
        }
        Route::Tags { name } => {
            check_name(&name)?;
            let n = name.clone();
            let tags = blocking(move || backend.tags(&n)).await?;
            let Some(tags) = tags else {
                return Err(ApiError::Code(
                    ErrorCode::NameUnknown,
                    serde_json::json!({ "name": name }),
                ));
            };
            let page = paginate(tags, query, &Route::Tags { name: name.clone() }.path())?;
            json_page(serde_json::json!({ "name": name, "tags": page.0 }), page.1)
        }
        Route::Manifest { name, reference } => manifest(backend, name, reference, head).await,
        Route::Blob { name, digest } => blob(backend, name, digest, head, headers).await,
        Route::Upload { name, id } if !head => write::upload_status(&app, &name, &id),
        Route::Uploads { .. } | Route::Upload { .. } => Err(ApiError::MethodNotAllowed),
        Route::Referrers { name, digest } => referrers::get(app, name, digest, query).await,
    }
}

/// Every value of `key` in a query string, percent-decoded.
fn query_values(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('=').or(Some((p, ""))))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
        .collect()
}

fn check_name(name: &str) -> Result<(), ApiError> {
    validate_repository(name).map_err(|e| {
        ApiError::Code(
            ErrorCode::NameInvalid,
            serde_json::json!({ "name": echo(name), "reason": echo(&e.to_string()) }),
        )
    })
}

fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    Digest::parse(s).map_err(|e| {
        ApiError::Code(
            ErrorCode::DigestInvalid,
            serde_json::json!({ "digest": echo(s), "reason": echo(&e.to_string()) }),
        )
    })
}

/// Applies `n` and `last` to a sorted list; returns the page and the `Link` header for the next one.
fn paginate(
    mut items: Vec<String>,
    query: &str,
    path: &str,
) -> Result<(Vec<String>, Option<String>), ApiError> {
    let mut n = None;
    let mut last = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "n" => {
                let parsed = v.parse::<usize>().map_err(|_| {
                    ApiError::Code(
                        ErrorCode::Unsupported,
                        serde_json::json!({ "n": echo(v), "reason": "n must be a whole number" }),
                    )
                })?;
                n = Some(parsed.min(MAX_PAGE_SIZE));
            }
            "last" => last = Some(percent_decode(v)),
            _ => {}
        }
    }
    items.sort();
    if let Some(last) = &last {
        items.retain(|t| t > last);
    }
    let limit = n.unwrap_or(DEFAULT_PAGE_SIZE);
    let more = items.len() > limit;
    items.truncate(limit);
    let link = match (more, items.last()) {
        (true, Some(l)) => Some(format!("<{path}?last={l}&n={limit}>; rel=\"next\"")),
        _ => None,
    };
    Ok((items, link))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Hex digits checked as bytes first: slicing the `str` could cut a UTF-8 character.
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_page(body: serde_json::Value, link: Option<String>) -> ApiResult {
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json"), API_VERSION],
        body.to_string(),
    )
        .into_response();
    if let Some(link) = link
        && let Ok(v) = HeaderValue::from_str(&link)
    {
        resp.headers_mut().insert(header::LINK, v);
    }
    Ok(resp)
}

async fn manifest<B: Catalog>(
    backend: Arc<B>,
    name: String,
    reference: String,
    head: bool,
) -> ApiResult {
    check_name(&name)?;
    let digest = if reference.contains(':') {
        parse_digest(&reference)?
    } else {
        validate_tag(&reference).map_err(|e| {
            ApiError::Code(
                ErrorCode::ManifestUnknown,
                serde_json::json!({ "tag": echo(&reference), "reason": echo(&e.to_string()) }),
            )
        })?;
        let (b, n, t) = (backend.clone(), name.clone(), reference.clone());
        match blocking(move || b.resolve_tag(&n, &t)).await? {
            Some(d) => d,
            None => {
                return Err(ApiError::Code(
                    ErrorCode::ManifestUnknown,
                    serde_json::json!({ "tag": reference }),
                ));
            }
        }
    };
    let d = digest.clone();
    let Some(raw) = blocking(move || backend.manifest(&name, &d)).await? else {
        return Err(ApiError::Code(
            ErrorCode::ManifestUnknown,
            serde_json::json!({ "digest": digest.to_string() }),
        ));
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, header_value(raw.media_type()));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(raw.bytes().len()));
    headers.insert(
        "docker-content-digest",
        header_value(&raw.digest().to_string()),
    );
    headers.insert(header::ETAG, header_value(&format!("\"{}\"", raw.digest())));
    headers.insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    let body = if head {
        Body::empty()
    } else {
        Body::from(raw.bytes().to_vec())
    };
    Ok((StatusCode::OK, headers, body).into_response())
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

/// A single `bytes=` range resolved against a size: `(start, length)`.
fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            if n == 0 {
                return None;
            }
            (size.saturating_sub(n), size.checked_sub(1)?)
        }
        (s, "") => (s.parse().ok()?, size.checked_sub(1)?),
        (s, e) => (
            s.parse().ok()?,
            e.parse::<u64>().ok()?.min(size.checked_sub(1)?),
        ),
    };
    if start <= end && start < size {
        Some((start, end - start + 1))
    } else {
        None
    }
}

async fn blob<B: Catalog>(
    backend: Arc<B>,
    name: String,
    digest: String,
    head: bool,
    req_headers: &HeaderMap,
) -> ApiResult {
    check_name(&name)?;
    let digest = parse_digest(&digest)?;
    let d = digest.clone();
    let Some(loc) = blocking(move || backend.blob(&name, &d)).await? else {
        return Err(ApiError::Code(
            ErrorCode::BlobUnknown,
            serde_json::json!({ "digest": digest.to_string() }),
        ));
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert("docker-content-digest", header_value(&digest.to_string()));
    headers.insert(header::ETAG, header_value(&format!("\"{digest}\"")));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=31536000"),
    );
    headers.insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    let (status, start, len) = match req_headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => (StatusCode::OK, 0, loc.size),
        Some(r) => match parse_range(r, loc.size) {
            Some((s, l)) => {
                headers.insert(
                    header::CONTENT_RANGE,
                    header_value(&format!("bytes {}-{}/{}", s, s + l - 1, loc.size)),
                );
                (StatusCode::PARTIAL_CONTENT, s, l)
            }
            None => {
                let mut resp = ApiError::Code(
                    ErrorCode::RangeInvalid,
                    serde_json::json!({ "range": echo(r) }),
                )
                .into_response();
                resp.headers_mut().insert(
                    header::CONTENT_RANGE,
                    header_value(&format!("bytes */{}", loc.size)),
                );
                return Ok(resp);
            }
        },
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if head {
        return Ok((status, headers, Body::empty()).into_response());
    }
    let source = Arc::new(Served(loc.source));
    let stream = crate::blob::range_stream(source, start, len);
    Ok((status, headers, Body::from_stream(stream)).into_response())
}

/// A blob's bytes as `serve` streams them: in chunks of at most [`SERVE_CHUNK_BYTES`], so what one
/// response holds stays small whatever the backend's own chunk size.
struct Served(Arc<dyn crate::blob::RangeRead>);

impl crate::blob::RangeRead for Served {
    fn open_range(&self, start: u64, len: u64) -> std::io::Result<Box<dyn std::io::Read + Send>> {
        self.0.open_range(start, len)
    }

    fn chunk_bytes(&self) -> usize {
        self.0.chunk_bytes().min(SERVE_CHUNK_BYTES)
    }

    // A remote backend's own async stream (a bucket's HTTP body chunks, already small): without
    // it every download would hold a blocking thread for as long as its client takes.
    fn stream_range(&self, start: u64, len: u64) -> Option<crate::blob::ByteStream> {
        self.0.stream_range(start, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let table = [
            ("bytes=0-9", 100, Some((0, 10))),
            ("bytes=90-", 100, Some((90, 10))),
            ("bytes=-10", 100, Some((90, 10))),
            ("bytes=-200", 100, Some((0, 100))),
            ("bytes=50-500", 100, Some((50, 50))),
            ("bytes=100-", 100, None),
            ("bytes=9-0", 100, None),
            ("bytes=0-1,5-6", 100, None),
            ("items=0-1", 100, None),
            ("bytes=0-0", 0, None),
            ("bytes=-0", 100, None),
        ];
        for (r, size, want) in table {
            assert_eq!(parse_range(r, size), want, "{r} of {size}");
        }
    }

    #[test]
    fn percent_decoding_never_cuts_a_character() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("%a\u{e9}x"), "%a\u{e9}x");
        assert_eq!(percent_decode("%\u{e9}"), "%\u{e9}");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn pages() {
        let tags: Vec<String> = ["c", "a", "b", "d"].iter().map(|s| s.to_string()).collect();
        let (p, link) = paginate(tags.clone(), "n=2", "/v2/x/tags/list")
            .ok()
            .unwrap();
        assert_eq!(p, ["a", "b"]);
        assert_eq!(link.unwrap(), "</v2/x/tags/list?last=b&n=2>; rel=\"next\"");
        let (p, link) = paginate(tags.clone(), "n=2&last=b", "/p").ok().unwrap();
        assert_eq!(p, ["c", "d"]);
        assert!(link.is_none());
        let (p, _) = paginate(tags, "", "/p").ok().unwrap();
        assert_eq!(p.len(), 4);
    }
}
