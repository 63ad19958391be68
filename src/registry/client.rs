//! A client for the distribution API: manifests verified against the digest
//! asked for, blobs streamed into a store and verified before they appear.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode, header};

use super::errcode::ErrorEnvelope;
use super::routes::Route;
use crate::digest::Digest;
use crate::limits::{MAX_ERROR_BODY_BYTES, MAX_MANIFEST_BYTES};
use crate::manifest::{Descriptor, ManifestError, RawManifest};
use crate::media_type::ACCEPTED_MANIFESTS;
use crate::store::{Store, StoreError};

/// What went wrong talking to a registry; URLs carry no credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The request could not be sent or the response not read.
    #[error("{method} {url}: {source}")]
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
    /// Writing a fetched blob into the store failed (including verification).
    #[error("{url}: {source}")]
    Store {
        /// Request URL.
        url: String,
        /// The store's error.
        source: StoreError,
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
}

/// How to reach one registry.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Verify TLS certificates; when false, plain HTTP is used as skopeo's `--tls-verify=false` allows.
    pub tls_verify: bool,
    /// Connect timeout.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            tls_verify: true,
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// A connection pool to one registry host.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    host: String,
}

/// Installs ring as rustls's crypto provider once per process (reqwest is built without a default).
fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Client {
    /// A client for `host` (`name[:port]`): https, or plain http when TLS verification is off.
    pub fn new(host: &str, opts: &ClientOptions) -> Result<Client, RegistryError> {
        ensure_crypto_provider();
        let scheme = if opts.tls_verify { "https" } else { "http" };
        let http = reqwest::Client::builder()
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(opts.connect_timeout)
            .build()
            .map_err(|e| RegistryError::Config {
                host: host.to_string(),
                why: e.to_string(),
            })?;
        Ok(Client {
            http,
            base: format!("{scheme}://{host}"),
            host: host.to_string(),
        })
    }

    /// The registry host this client talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    async fn send(
        &self,
        method: Method,
        route: &Route,
        query: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = format!("{}{}{}", self.base, route.path(), query);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        tracing::debug!(%method, %url, "request");
        let resp = req
            .send()
            .await
            .map_err(|source| RegistryError::Transport {
                method: method.clone(),
                url: url.clone(),
                source,
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = read_capped(resp, MAX_ERROR_BODY_BYTES)
            .await
            .unwrap_or_default();
        let errors = serde_json::from_slice(&body).unwrap_or_default();
        Err(RegistryError::Status {
            method,
            url,
            status,
            errors,
        })
    }

    /// Checks that the registry speaks the v2 API.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.send(Method::GET, &Route::Base, "", None)
            .await
            .map(drop)
    }

    /// Fetches a manifest by tag or digest; by digest, the bytes must hash to it.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<RawManifest, RegistryError> {
        let route = Route::Manifest {
            name: repo.to_string(),
            reference: reference.to_string(),
        };
        let url = format!("{}{}", self.base, route.path());
        let resp = self
            .send(
                Method::GET,
                &route,
                "",
                Some(&ACCEPTED_MANIFESTS.join(", ")),
            )
            .await?;
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok());
        let bytes = read_capped(resp, MAX_MANIFEST_BYTES + 1)
            .await
            .map_err(|source| RegistryError::Transport {
                method: Method::GET,
                url: url.clone(),
                source,
            })?;
        let raw = RawManifest::new(bytes, content_type.as_deref()).map_err(|source| {
            RegistryError::Manifest {
                url: url.clone(),
                source,
            }
        })?;
        let expected = Digest::parse(reference).ok().or(header_digest);
        if let Some(expected) = expected
            && &expected != raw.digest()
        {
            return Err(RegistryError::DigestMismatch {
                url,
                expected,
                found: raw.digest().clone(),
            });
        }
        Ok(raw)
    }

    /// Streams a blob into `store`, verified against the descriptor; a no-op when the store has it.
    pub async fn fetch_blob(
        &self,
        store: &Store,
        repo: &str,
        desc: &Descriptor,
    ) -> Result<(), RegistryError> {
        if store.has_blob(&desc.digest) {
            return Ok(());
        }
        let route = Route::blob(repo, &desc.digest);
        let url = format!("{}{}", self.base, route.path());
        let resp = self.send(Method::GET, &route, "", None).await?;
        let mut writer = store.blob_writer().map_err(|source| RegistryError::Store {
            url: url.clone(),
            source,
        })?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
        let expected = (desc.digest.clone(), desc.size);
        let write_task = tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            use std::io::Write;
            while let Some(chunk) = rx.blocking_recv() {
                writer.write_all(&chunk).map_err(|source| StoreError::Io {
                    op: "writing blob",
                    path: expected.0.to_string().into(),
                    source,
                })?;
            }
            writer
                .commit(Some((&expected.0, Some(expected.1))))
                .map(drop)
        });
        let mut stream = resp.bytes_stream();
        let mut transport_err = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    if tx.send(c).await.is_err() {
                        break;
                    }
                }
                Err(source) => {
                    transport_err = Some(source);
                    break;
                }
            }
        }
        if let Some(source) = transport_err {
            drop(tx);
            let _ = write_task.await;
            return Err(RegistryError::Transport {
                method: Method::GET,
                url,
                source,
            });
        }
        drop(tx);
        match write_task.await {
            Ok(r) => r.map_err(|source| RegistryError::Store { url, source }),
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }

    /// Every tag of a repository, following pagination.
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let route = Route::Tags {
            name: repo.to_string(),
        };
        let mut out = Vec::new();
        let mut query = String::new();
        loop {
            let resp = self.send(Method::GET, &route, &query, None).await?;
            let next = next_link(&resp);
            let url = resp.url().to_string();
            let body = read_capped(resp, MAX_MANIFEST_BYTES)
                .await
                .map_err(|source| RegistryError::Transport {
                    method: Method::GET,
                    url: url.clone(),
                    source,
                })?;
            let list: TagList =
                serde_json::from_slice(&body).map_err(|e| RegistryError::Config {
                    host: self.host.clone(),
                    why: format!("tags list of {repo} is not JSON: {e}"),
                })?;
            out.extend(list.tags.unwrap_or_default());
            match next {
                Some(q) => query = q,
                None => return Ok(out),
            }
        }
    }
}

/// The query part of a `Link: <...?n=..&last=..>; rel="next"` header.
fn next_link(resp: &reqwest::Response) -> Option<String> {
    let link = resp.headers().get(header::LINK)?.to_str().ok()?;
    let target = link
        .split(';')
        .next()?
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    target.find('?').map(|i| target[i..].to_string())
}

async fn read_capped(resp: reqwest::Response, cap: u64) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let room = (cap as usize).saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() as u64 >= cap {
            break;
        }
    }
    Ok(out)
}
