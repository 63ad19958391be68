//! The connection to one registry: scheme choice (https, or http when TLS
//! verification is off, as skopeo does), `certs.d` CAs, bearer and basic auth
//! from challenges, retries with backoff that honour `Retry-After`, and a cap
//! on concurrent requests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::errcode::ErrorEnvelope;
use super::routes::Route;
use crate::auth::{self, AuthError, Challenge, Credentials};
use crate::digest::Digest;
use crate::limits::{self, MAX_ERROR_BODY_BYTES};
use crate::manifest::ManifestError;

/// What went wrong talking to a registry; URLs and messages carry no credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The request could not be sent or the response not read.
    #[error("{method} {url}: {}", transport_cause(.source))]
    Transport {
        /// HTTP method.
        method: Method,
        /// Request URL.
        url: String,
        /// What failed (connection refused, reset, TLS, …).
        source: reqwest::Error,
    },
    /// The registry answered with an error status.
    #[error("{method} {url}: HTTP {status}{}", fmt_errors(.errors))]
    Status {
        /// HTTP method.
        method: Method,
        /// Request URL.
        url: String,
        /// The status code.
        status: StatusCode,
        /// The spec's error entries, when the body had them.
        errors: ErrorEnvelope,
    },
    /// A manifest that is too large, malformed or of an unsupported kind.
    #[error("{url}: {source}")]
    Manifest {
        /// Request URL.
        url: String,
        /// Why it was refused.
        source: ManifestError,
    },
    /// Content that does not match the digest asked for.
    #[error("{url}: content hashes to {found}, expected {expected}")]
    DigestMismatch {
        /// Request URL.
        url: String,
        /// What was asked for.
        expected: Digest,
        /// What arrived.
        found: Digest,
    },
    /// Credentials could not be read.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The token endpoint did not give a token.
    #[error("getting a token from {realm}: {why}")]
    Token {
        /// The token endpoint.
        realm: String,
        /// Why.
        why: String,
    },
    /// A request or a body stalled longer than the timeout allows (named, so a slow link can be told from a dead one).
    #[error("no data from {host} for {secs} s while {what}")]
    Stalled {
        /// The host.
        host: String,
        /// The timeout that ran out, in seconds.
        secs: u64,
        /// What was being waited for ("waiting for the answer to GET …", "reading blob sha256:…").
        what: String,
    },
    /// TLS was spoken to a registry that answered in plain HTTP; retrying cannot help, the flag can.
    #[error(
        "registry {host} answered a TLS handshake in plain HTTP: pass {flag} if it speaks plain HTTP"
    )]
    PlainHttp {
        /// The host.
        host: String,
        /// The flag that allows plain HTTP on this side (`--src-tls-verify=false`, …).
        flag: String,
    },
    /// The registry could not be reached at all (checked once per registry, before any image).
    #[error("registry {host} cannot be reached: {cause}")]
    Unreachable {
        /// The host.
        host: String,
        /// The last connection failure.
        cause: String,
    },
    /// The bytes being sent could not be read (a bad frame of a bundle, a broken source stream).
    #[error("{method} {url}: reading the data being sent failed: {cause}")]
    Body {
        /// HTTP method.
        method: Method,
        /// Request URL.
        url: String,
        /// Why the read failed.
        cause: String,
    },
    /// A registry host or option that cannot be used.
    #[error("registry {host}: {why}")]
    Config {
        /// The host.
        host: String,
        /// Why.
        why: String,
    },
}

/// The innermost cause of a transport error (reqwest's own text is just "error sending request").
fn transport_cause(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    msg
}

fn fmt_errors(e: &ErrorEnvelope) -> String {
    e.errors
        .iter()
        .map(|i| format!(": {} ({})", i.code, i.message))
        .collect()
}

impl RegistryError {
    /// Whether the registry said the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::Status { status, .. } if *status == StatusCode::NOT_FOUND)
    }

    /// Whether doing the whole operation again may succeed (a 5xx, a stall, a dropped connection), so an upload restarts.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Status { status, .. } => retryable_status(*status),
            RegistryError::Transport { source, .. } => {
                source.is_connect() || source.is_timeout() || source.is_request()
            }
            RegistryError::Stalled { .. } => true,
            _ => false,
        }
    }
}

/// Whether a transport failure is a TLS client that got a plain-HTTP answer (rustls: `InvalidContentType`).
fn is_plain_http_answer(e: &reqwest::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) =
                inner.downcast_ref::<rustls::Error>()
        {
            return true;
        }
        if let Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) =
            s.downcast_ref::<rustls::Error>()
        {
            return true;
        }
        src = s.source();
    }
    transport_cause(e).contains("InvalidContentType")
}

/// A URL for messages: an upload session's `_state` token (long, opaque, and only the registry's business) left out.
fn shown_url(url: &str) -> String {
    let Some(start) = url.find("_state=") else {
        return url.to_string();
    };
    let end = url[start..].find('&').map_or(url.len(), |e| start + e);
    let mut out = format!("{}_state=…{}", &url[..start], &url[end..]);
    if out.ends_with("?_state=…") {
        out.truncate(out.len() - "?_state=…".len());
    }
    out
}

/// The path of a URL without its query, for messages about what was waited for.
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    path.split('?').next().unwrap_or(path)
}

/// How to reach one registry.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Verify TLS certificates; when false, an https failure falls back to plain http, as skopeo's `--tls-verify=false`.
    pub tls_verify: bool,
    /// Credentials given on the command line (`--src-creds`).
    pub credentials: Option<Credentials>,
    /// `--authfile`.
    pub authfile: Option<PathBuf>,
    /// `--cert-dir`: `*.crt` CAs and a `*.cert`/`*.key` client pair, used instead of `certs.d`.
    pub cert_dir: Option<PathBuf>,
    /// Most requests in flight to this host at once.
    pub max_concurrent: usize,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for a response's headers after the last byte of the request went out (`--timeout-headers`).
    pub headers_timeout: Duration,
    /// Longest silence while a response body is read (`--timeout-idle`): a stalled source ends instead of holding the run.
    pub idle_timeout: Duration,
    /// The flag that allows plain HTTP on this side, named when TLS meets a plain-HTTP registry.
    pub plain_http_flag: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            tls_verify: true,
            credentials: None,
            authfile: None,
            cert_dir: None,
            max_concurrent: limits::DEFAULT_PER_HOST_CONCURRENCY,
            connect_timeout: Duration::from_secs(limits::DEFAULT_CONNECT_TIMEOUT_SECS),
            headers_timeout: Duration::from_secs(limits::DEFAULT_HEADERS_TIMEOUT_SECS),
            idle_timeout: Duration::from_secs(limits::DEFAULT_IDLE_TIMEOUT_SECS),
            plain_http_flag: "--tls-verify=false".to_string(),
        }
    }
}

/// A connection pool to one registry host, shared by every task that talks to it.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    host: String,
    opts: ClientOptions,
    base: tokio::sync::OnceCell<String>,
    /// `Authorization` values by scope, learnt from challenges.
    auth: Mutex<HashMap<String, String>>,
    credentials: Mutex<Option<Option<Credentials>>>,
    permits: Arc<Semaphore>,
    /// Whether the scheme probe got an answer from the registry (any HTTP status, or plain
    /// HTTP to the TLS probe): it is up, and [`Client::ping`] need not ask again.
    answered: std::sync::atomic::AtomicBool,
}

/// A response plus the permit that counts it against the host's cap until dropped.
pub(super) struct Held {
    pub resp: reqwest::Response,
    pub _permit: OwnedSemaphorePermit,
}

/// Installs ring as rustls's crypto provider once per process (reqwest is built without a default).
fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// CA files for a host from `/etc/containers/certs.d/HOST/*.crt` and `/etc/docker/certs.d/HOST/*.crt`.
fn certs_d(host: &str) -> Vec<reqwest::Certificate> {
    let mut out = Vec::new();
    for base in ["/etc/containers/certs.d", "/etc/docker/certs.d"] {
        let Ok(rd) = std::fs::read_dir(std::path::Path::new(base).join(host)) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "crt")
                && let Ok(pem) = std::fs::read(&p)
            {
                match reqwest::Certificate::from_pem_bundle(&pem) {
                    Ok(certs) => out.extend(certs),
                    Err(err) => tracing::warn!("ignoring CA file {}: {err}", p.display()),
                }
            }
        }
    }
    out
}

/// A `--cert-dir` as containers/image reads it: every `*.crt` is a CA; `NAME.cert` with `NAME.key` is the client pair.
fn cert_dir(
    dir: &std::path::Path,
) -> Result<(Vec<reqwest::Certificate>, Option<reqwest::Identity>), String> {
    let what = |p: &std::path::Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
    let mut rd: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| what(dir, &e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    rd.sort();
    let (mut cas, mut identity) = (Vec::new(), None);
    for p in &rd {
        match p.extension().and_then(|x| x.to_str()) {
            Some("crt") => {
                let pem = std::fs::read(p).map_err(|e| what(p, &e))?;
                cas.extend(reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| what(p, &e))?);
            }
            Some("cert") => {
                let key = p.with_extension("key");
                let mut pem = std::fs::read(p).map_err(|e| what(p, &e))?;
                pem.extend(std::fs::read(&key).map_err(|e| what(&key, &e))?);
                identity = Some(reqwest::Identity::from_pem(&pem).map_err(|e| what(p, &e))?);
            }
            _ => {}
        }
    }
    Ok((cas, identity))
}

/// Whether a failed attempt is worth repeating (gcr's `Temporary()` list).
fn retryable_status(s: StatusCode) -> bool {
    matches!(s.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// The pause before attempt `n + 1`: `Retry-After` when the server gave one, else exponential backoff.
pub(super) fn backoff(attempt: u32, retry_after: Option<&header::HeaderValue>) -> Duration {
    if std::env::var_os(limits::ENV_NO_RETRY_DELAY).is_some() {
        return Duration::ZERO;
    }
    if let Some(secs) = retry_after
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Duration::from_secs(secs.min(limits::MAX_RETRY_AFTER_SECS));
    }
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(6)))
}

impl Client {
    /// A client for `host` (`name[:port]`).
    pub fn new(host: &str, opts: &ClientOptions) -> Result<Client, RegistryError> {
        ensure_crypto_provider();
        let config = |why: String| RegistryError::Config {
            host: host.to_string(),
            why,
        };
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(opts.connect_timeout)
            .tls_danger_accept_invalid_certs(!opts.tls_verify);
        builder = match &opts.cert_dir {
            None => builder.tls_certs_merge(certs_d(host)),
            Some(dir) => {
                let (cas, identity) = cert_dir(dir).map_err(config)?;
                let b = builder.tls_certs_merge(cas);
                match identity {
                    Some(i) => b.identity(i),
                    None => b,
                }
            }
        };
        let http = builder.build().map_err(|e| config(transport_cause(&e)))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                host: host.to_string(),
                opts: opts.clone(),
                base: tokio::sync::OnceCell::new(),
                auth: Mutex::new(HashMap::new()),
                credentials: Mutex::new(None),
                permits: Arc::new(Semaphore::new(opts.max_concurrent.max(1))),
                answered: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// The registry host this client talks to.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// `scheme://host`: https, or http when TLS verification is off and https does not answer.
    async fn base(&self) -> Result<&str, RegistryError> {
        self.inner
            .base
            .get_or_try_init(|| async {
                let https = format!("https://{}", self.inner.host);
                if self.inner.opts.tls_verify {
                    return Ok(https);
                }
                let url = format!("{https}/v2/");
                let probe = self.inner.http.get(&url).send();
                let answered = || {
                    self.inner
                        .answered
                        .store(true, std::sync::atomic::Ordering::Relaxed)
                };
                match tokio::time::timeout(self.inner.opts.headers_timeout, probe).await {
                    Ok(Ok(_)) => {
                        answered();
                        Ok(https)
                    }
                    Ok(Err(e)) => {
                        if is_plain_http_answer(&e) {
                            answered();
                        }
                        tracing::debug!(
                            "https to {} failed ({}), using http",
                            self.inner.host,
                            transport_cause(&e)
                        );
                        Ok(format!("http://{}", self.inner.host))
                    }
                    Err(_) => {
                        tracing::debug!("https to {} stalled, using http", self.inner.host);
                        Ok(format!("http://{}", self.inner.host))
                    }
                }
            })
            .await
            .map(String::as_str)
    }

    /// The full URL of a route.
    pub(super) async fn url(&self, route: &Route, query: &str) -> Result<String, RegistryError> {
        Ok(format!("{}{}{}", self.base().await?, route.path(), query))
    }

    fn credentials(&self) -> Result<Option<Credentials>, RegistryError> {
        let mut cached = self.inner.credentials.lock().unwrap();
        if let Some(c) = &*cached {
            return Ok(c.clone());
        }
        let c = auth::lookup(
            &self.inner.host,
            self.inner.opts.credentials.as_ref(),
            self.inner.opts.authfile.as_deref(),
        )?;
        *cached = Some(c.clone());
        Ok(c)
    }

    /// Answers a 401: fetches a bearer token or switches to basic auth for `scope`; false when nothing can be done.
    async fn authenticate(&self, challenge: &str, scope: &str) -> Result<bool, RegistryError> {
        let Some(ch) = auth::parse_challenge(challenge) else {
            return Ok(false);
        };
        let creds = self.credentials()?;
        let value = match ch {
            Challenge::Basic => match creds {
                Some(c) => c.basic_header(),
                None => return Ok(false),
            },
            Challenge::Bearer {
                realm,
                service,
                scope: suggested,
            } => {
                let mut req = self.inner.http.get(&realm);
                let mut query: Vec<(&str, String)> = Vec::new();
                if let Some(s) = service {
                    query.push(("service", s));
                }
                let scope = if scope.is_empty() {
                    suggested.unwrap_or_default()
                } else {
                    scope.to_string()
                };
                if !scope.is_empty() {
                    query.push(("scope", scope));
                }
                req = req.query(&query);
                if let Some(c) = &creds {
                    req = req.header(header::AUTHORIZATION, c.basic_header());
                }
                let limit = self.inner.opts.headers_timeout;
                let resp = tokio::time::timeout(limit, req.send())
                    .await
                    .map_err(|_| RegistryError::Token {
                        realm: realm.clone(),
                        why: format!("no answer for {} s", limit.as_secs()),
                    })?
                    .map_err(|e| RegistryError::Token {
                        realm: realm.clone(),
                        why: transport_cause(&e),
                    })?;
                if !resp.status().is_success() {
                    return Err(RegistryError::Token {
                        realm,
                        why: format!("HTTP {}", resp.status()),
                    });
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let body = self
                    .read_body(resp, MAX_ERROR_BODY_BYTES, "reading a token")
                    .await?;
                let t: Token = serde_json::from_slice(&body).map_err(|e| RegistryError::Token {
                    realm: realm.clone(),
                    why: format!("the answer does not parse: {e}"),
                })?;
                match t.token.or(t.access_token) {
                    Some(t) => format!("Bearer {t}"),
                    None => {
                        return Err(RegistryError::Token {
                            realm,
                            why: "the answer has no token".into(),
                        });
                    }
                }
            }
        };
        self.inner
            .auth
            .lock()
            .unwrap()
            .insert(scope.to_string(), value);
        Ok(true)
    }

    /// Sends a body-less request with auth and retries; a non-success status becomes an error.
    pub(super) async fn send(
        &self,
        method: Method,
        route: &Route,
        query: &str,
        headers: &[(header::HeaderName, String)],
    ) -> Result<Held, RegistryError> {
        let permit = self.permit().await;
        let url = self.url(route, query).await?;
        let scope = match route {
            Route::Base | Route::Catalog => String::new(),
            Route::Tags { name }
            | Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::Uploads { name }
            | Route::Upload { name, .. }
            | Route::Referrers { name, .. } => {
                format!("repository:{name}:pull")
            }
        };
        self.send_url(method, url, &scope, headers, None, permit)
            .await
    }

    /// Sends to a full URL under an auth scope, with auth and retries; `body`
    /// makes a fresh request body for each attempt. A non-success status becomes an error.
    pub(super) async fn send_url(
        &self,
        method: Method,
        url: String,
        scope: &str,
        headers: &[(header::HeaderName, String)],
        body: Option<&(dyn Fn() -> reqwest::Body + Send + Sync)>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Held, RegistryError> {
        self.send_url_with(Policy::NORMAL, method, url, scope, headers, body, permit)
            .await
    }

    /// [`Client::send_url`] under a [`Policy`]: an upload session's requests are sent once,
    /// because a failed one may have closed the session and repeating it only hides the cause.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_url_with(
        &self,
        policy: Policy,
        method: Method,
        url: String,
        scope: &str,
        headers: &[(header::HeaderName, String)],
        body: Option<&(dyn Fn() -> reqwest::Body + Send + Sync)>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Held, RegistryError> {
        let scope = scope.to_string();
        let mut authed_once = false;
        let mut attempt = 0u32;
        let headers_timeout = self.inner.opts.headers_timeout;
        let shown = shown_url(&url);
        loop {
            let mut req = self.inner.http.request(method.clone(), &url);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            if !policy.anonymous
                && let Some(a) = self.inner.auth.lock().unwrap().get(&scope)
            {
                req = req.header(header::AUTHORIZATION, a);
            }
            let watch = Arc::new(Watch::new());
            if let Some(make) = body {
                req = req.body(reqwest::Body::wrap(Watched {
                    inner: make(),
                    watch: watch.clone(),
                }));
            }
            tracing::debug!(%method, url = %shown, attempt, "request");
            let resp = match watch.run(req.send(), headers_timeout).await {
                None => {
                    let what = format!("waiting for the answer to {method} {}", url_path(&url));
                    if policy.retry && attempt < limits::RETRIES {
                        tracing::warn!(
                            "no data from {} for {} s while {what}; retrying",
                            self.inner.host,
                            headers_timeout.as_secs()
                        );
                        tokio::time::sleep(backoff(attempt, None)).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(RegistryError::Stalled {
                        host: self.inner.host.clone(),
                        secs: headers_timeout.as_secs(),
                        what,
                    });
                }
                Some(Ok(r)) => r,
                Some(Err(source)) => {
                    if let Some(cause) = watch.failed.lock().unwrap().take() {
                        return Err(RegistryError::Body {
                            method,
                            url: shown,
                            cause,
                        });
                    }
                    if is_plain_http_answer(&source) {
                        return Err(self.plain_http());
                    }
                    if policy.retry
                        && attempt < limits::RETRIES
                        && (source.is_connect() || source.is_timeout() || source.is_request())
                    {
                        tracing::warn!("{method} {shown}: {}; retrying", transport_cause(&source));
                        tokio::time::sleep(backoff(attempt, None)).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(RegistryError::Transport {
                        method,
                        url: shown,
                        source,
                    });
                }
            };
            let status = resp.status();
            if status.is_success() {
                return Ok(Held {
                    resp,
                    _permit: permit,
                });
            }
            if status == StatusCode::UNAUTHORIZED && !authed_once && !policy.anonymous {
                authed_once = true;
                let challenge = resp
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                if let Some(ch) = challenge
                    && self.authenticate(&ch, &scope).await?
                {
                    continue;
                }
            }
            if retryable_status(status) && policy.retry && attempt < limits::RETRIES {
                let wait = backoff(attempt, resp.headers().get(header::RETRY_AFTER));
                tracing::warn!(
                    "{method} {shown}: HTTP {status}; retrying in {:.1}s",
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
                continue;
            }
            let body = self
                .read_body(resp, MAX_ERROR_BODY_BYTES, "reading an error answer")
                .await
                .unwrap_or_default();
            let errors = serde_json::from_slice(&body).unwrap_or_default();
            return Err(RegistryError::Status {
                method,
                url: shown,
                status,
                errors,
            });
        }
    }

    /// The error for TLS spoken to a plain-HTTP registry, naming this side's flag.
    fn plain_http(&self) -> RegistryError {
        RegistryError::PlainHttp {
            host: self.inner.host.clone(),
            flag: self.inner.opts.plain_http_flag.clone(),
        }
    }

    /// Checks once that the registry answers at all (`GET /v2/`, any HTTP status counts),
    /// with the usual retries, so a dead or mistyped registry is reported once for all its images.
    /// A registry that answered the scheme probe (`--tls-verify=false`) is not asked again.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let url = self.url(&Route::Base, "").await?;
        if self
            .inner
            .answered
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(());
        }
        let limit = self.inner.opts.headers_timeout;
        let mut attempt = 0u32;
        loop {
            let permit = self.permit().await;
            let sent = tokio::time::timeout(limit, self.inner.http.get(&url).send()).await;
            drop(permit);
            let cause = match sent {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if is_plain_http_answer(&e) => return Err(self.plain_http()),
                Ok(Err(e)) => transport_cause(&e),
                Err(_) => format!("no answer to GET /v2/ for {} s", limit.as_secs()),
            };
            if attempt >= limits::RETRIES {
                return Err(RegistryError::Unreachable {
                    host: self.inner.host.clone(),
                    cause,
                });
            }
            tracing::debug!("GET {url}: {cause}; retrying");
            tokio::time::sleep(backoff(attempt, None)).await;
            attempt += 1;
        }
    }

    /// Reads at most `cap` bytes of a body, giving up when it stays silent longer than the idle timeout.
    pub(super) async fn read_body(
        &self,
        resp: reqwest::Response,
        cap: u64,
        what: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        use futures_util::StreamExt;
        let url = shown_url(resp.url().as_str());
        let idle = self.inner.opts.idle_timeout;
        let mut out = Vec::new();
        let mut stream = resp.bytes_stream();
        loop {
            let next = tokio::time::timeout(idle, stream.next())
                .await
                .map_err(|_| self.stalled(what))?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|source| RegistryError::Transport {
                method: Method::GET,
                url: url.clone(),
                source,
            })?;
            let room = (cap as usize).saturating_sub(out.len());
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if out.len() as u64 >= cap {
                break;
            }
        }
        Ok(out)
    }

    /// The error for a body that stayed silent longer than the idle timeout.
    pub(super) fn stalled(&self, what: &str) -> RegistryError {
        RegistryError::Stalled {
            host: self.inner.host.clone(),
            secs: self.inner.opts.idle_timeout.as_secs(),
            what: what.to_string(),
        }
    }

    /// The idle timeout on response bodies.
    pub(super) fn idle_timeout(&self) -> Duration {
        self.inner.opts.idle_timeout
    }

    /// Waits for a slot under the host's cap on concurrent requests.
    pub(super) async fn permit(&self) -> OwnedSemaphorePermit {
        self.inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed")
    }

    /// `scheme://host` of this registry, for resolving relative `Location` headers.
    pub(super) async fn origin(&self) -> Result<String, RegistryError> {
        Ok(self.base().await?.to_string())
    }
}

/// How one request treats failures.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    /// Repeat connection failures, stalls and 5xx on the same URL.
    pub retry: bool,
    /// Send no credentials and answer no 401: for a URL a manifest names (a foreign layer),
    /// which must never learn the registry's password or token.
    pub anonymous: bool,
}

impl Policy {
    /// Retried, for every request that can be repeated as it is.
    pub const NORMAL: Policy = Policy {
        retry: true,
        anonymous: false,
    };
    /// Sent once, for requests on an upload session (the caller restarts the whole upload).
    pub const ONCE: Policy = Policy {
        retry: false,
        anonymous: false,
    };
    /// Retried and anonymous, for a foreign layer's URLs (containers/image's `getExternalBlob`).
    pub const EXTERNAL: Policy = Policy {
        retry: true,
        anonymous: true,
    };
}

/// When a request last made progress (a chunk of its body went out), and why its body failed, if it did.
struct Watch {
    last: Mutex<tokio::time::Instant>,
    failed: Mutex<Option<String>>,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            last: Mutex::new(tokio::time::Instant::now()),
            failed: Mutex::new(None),
        }
    }

    /// Runs `fut` until it ends, or `None` once `limit` has passed with no progress (a slow upload is not cut off).
    async fn run<F: std::future::Future>(&self, fut: F, limit: Duration) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            let deadline = *self.last.lock().unwrap() + limit;
            tokio::select! {
                r = &mut fut => return Some(r),
                _ = tokio::time::sleep_until(deadline) => {
                    if self.last.lock().unwrap().elapsed() >= limit {
                        return None;
                    }
                }
            }
        }
    }
}

/// A request body that reports each chunk sent (and a failure to read it) to its [`Watch`].
struct Watched {
    inner: reqwest::Body,
    watch: Arc<Watch>,
}

impl hyper::body::Body for Watched {
    type Data = bytes::Bytes;
    type Error = reqwest::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, reqwest::Error>>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            std::task::Poll::Ready(Some(Ok(_))) => {
                *this.watch.last.lock().unwrap() = tokio::time::Instant::now();
            }
            std::task::Poll::Ready(Some(Err(e))) => {
                *this.watch.failed.lock().unwrap() = Some(transport_cause(e));
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::Body::size_hint(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn upload_state_is_left_out_of_messages() {
        assert_eq!(
            super::shown_url("http://h/v2/r/blobs/uploads/u?_state=abc%3D&digest=sha256:1"),
            "http://h/v2/r/blobs/uploads/u?_state=…&digest=sha256:1"
        );
        assert_eq!(
            super::shown_url("http://h/v2/r/blobs/uploads/u?_state=abc"),
            "http://h/v2/r/blobs/uploads/u"
        );
        assert_eq!(super::shown_url("http://h/v2/"), "http://h/v2/");
        assert_eq!(super::url_path("http://h:5/v2/x?n=1"), "/v2/x");
    }
}
