//! Pushing: blob existence checks, cross-repository mounts, monolithic and
//! chunked uploads, and manifest PUT. Local blob bytes stream from any
//! [`RangeRead`] (so a bundle is pushed without unpacking it, and a failed
//! request is retried from the right offset); a remote stream goes in one PUT.

use std::sync::Arc;

use reqwest::{Method, StatusCode, header};

use super::client::{Client, Policy, RegistryError};
use super::routes::Route;
use crate::blob::{BlobBody, RangeRead, range_stream};
use crate::digest::Digest;
use crate::limits::{self, MONOLITHIC_UPLOAD_MAX, UPLOAD_CHUNK_BYTES};
use crate::manifest::RawManifest;

/// How a blob reached the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPush {
    /// The repository had it.
    Present,
    /// Mounted from another repository of the target.
    Mounted,
    /// Uploaded.
    Uploaded,
}

/// Why [`Client::upload_blob_opening`] failed: its body would not open, or the registry failed.
#[derive(Debug)]
pub enum UploadError<E> {
    /// The body's own error (the source could not give the bytes); nothing was uploaded.
    Body(E),
    /// The registry failed.
    Registry(RegistryError),
}

impl<E> From<RegistryError> for UploadError<E> {
    fn from(e: RegistryError) -> Self {
        UploadError::Registry(e)
    }
}

pub(super) fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

/// An upload's `Location` with `digest=` added, to close the upload.
fn digest_url(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

/// Whether a mount attempt's error is the registry declining the mount (a client error other
/// than "slow down"), after which a plain upload may still succeed.
fn refused_mount(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Status { status, .. }
        if status.is_client_error() && *status != StatusCode::TOO_MANY_REQUESTS)
}

fn stream_body(source: Arc<dyn RangeRead>, start: u64, len: u64) -> reqwest::Body {
    reqwest::Body::wrap_stream(range_stream(source, start, len))
}

impl Client {
    async fn location(&self, held: &super::client::Held) -> Result<String, RegistryError> {
        let loc = held
            .resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Config {
                host: self.host().to_string(),
                why: "upload answer has no Location".into(),
            })?;
        Ok(
            if loc.starts_with("http://") || loc.starts_with("https://") {
                loc.to_string()
            } else {
                format!("{}{loc}", self.origin().await?)
            },
        )
    }

    /// Whether `repo` has the blob (HEAD).
    pub async fn has_blob(&self, repo: &str, digest: &Digest) -> Result<bool, RegistryError> {
        let url = self.url(&Route::blob(repo, digest), "").await?;
        match self
            .send_url(
                Method::HEAD,
                url,
                &push_scope(repo),
                &[],
                None,
                self.permit().await,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Mounts `digest` into `repo` from the repository `from` of the same registry, without its
    /// bytes; false when the registry refused (it then opened an upload session, which is cancelled).
    pub async fn mount_blob(
        &self,
        repo: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<bool, RegistryError> {
        let uploads = self
            .url(
                &Route::Uploads {
                    name: repo.to_string(),
                },
                "",
            )
            .await?;
        let scope = push_scope(repo);
        let held = match self
            .send_url(
                Method::POST,
                format!("{uploads}?mount={digest}&from={from}"),
                &scope,
                &[(header::CONTENT_LENGTH, "0".into())],
                None,
                self.permit().await,
            )
            .await
        {
            Ok(h) => h,
            Err(e) if refused_mount(&e) => {
                tracing::debug!("mounting blob {digest} into {repo} from {from} refused: {e}");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        if held.resp.status() == StatusCode::CREATED {
            return Ok(true);
        }
        let location = self.location(&held).await?;
        drop(held);
        self.cancel_upload(&location, &scope).await;
        Ok(false)
    }

    /// Makes `digest` present in `repo`, for a caller that has just asked [`Client::has_blob`]:
    /// a mount from `from` when given and accepted, else an upload (monolithic when small, chunked when large).
    ///
    /// Requests on an upload session are sent once: a failed one may have closed the
    /// session, so the session is cancelled (DELETE) and, when the failure is transient
    /// and the bytes can be read again, the upload starts over in a new session. The
    /// error returned is the registry's first answer, not what a closed session says later.
    pub async fn upload_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        from: Option<&str>,
        body: BlobBody,
    ) -> Result<BlobPush, RegistryError> {
        let opened = async { Ok::<_, std::convert::Infallible>(body) };
        match self
            .upload_blob_opening(repo, digest, size, from, opened)
            .await
        {
            Ok(put) => Ok(put),
            Err(UploadError::Registry(e)) => Err(e),
            Err(UploadError::Body(never)) => match never {},
        }
    }

    /// [`Client::upload_blob`] for a body still being opened (a source's GET under way): the
    /// session is opened (the POST, or the mount) while `body` resolves, so a copy waits for
    /// one round trip where it waited for two in a row. A body that fails to open cancels
    /// the session and is returned as [`UploadError::Body`]; a mount the registry accepts
    /// drops the body unread.
    pub async fn upload_blob_opening<E>(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        from: Option<&str>,
        body: impl std::future::Future<Output = Result<BlobBody, E>> + Send,
    ) -> Result<BlobPush, UploadError<E>> {
        let scope = push_scope(repo);
        let uploads = self
            .url(
                &Route::Uploads {
                    name: repo.to_string(),
                },
                "",
            )
            .await?;
        let mut from = from;
        let mut opening = Some(std::pin::pin!(body));
        let mut body = None;
        let mut first: Option<RegistryError> = None;
        let mut attempt = 0u32;
        loop {
            let start_url = match from {
                Some(f) => format!("{uploads}?mount={digest}&from={f}"),
                None => uploads.clone(),
            };
            let post = async {
                self.send_url(
                    Method::POST,
                    start_url,
                    &scope,
                    &[(header::CONTENT_LENGTH, "0".into())],
                    None,
                    self.permit().await,
                )
                .await
            };
            // The first session opens while the body does; a later one has the body already.
            let held = match opening.take() {
                Some(open) => {
                    let (held, opened) = tokio::join!(post, open);
                    match opened {
                        Ok(b) => body = Some(b),
                        // The bytes cannot be had: a mount that took is still the blob; an
                        // opened session is cancelled, so nothing is left behind.
                        Err(e) => match held {
                            Ok(h) if h.resp.status() == StatusCode::CREATED && from.is_some() => {
                                return Ok(BlobPush::Mounted);
                            }
                            Ok(h) => {
                                if let Ok(location) = self.location(&h).await {
                                    drop(h);
                                    self.cancel_upload(&location, &scope).await;
                                }
                                return Err(UploadError::Body(e));
                            }
                            Err(_) => return Err(UploadError::Body(e)),
                        },
                    }
                    held
                }
                None => post.await,
            };
            let held = match held {
                Ok(h) => h,
                // A registry that refuses the mount itself (4xx, where the spec asks for a 202
                // and a plain session) gets the plain POST: a mount is only ever a shortcut.
                Err(e) if from.is_some() && refused_mount(&e) => {
                    tracing::debug!("mounting blob {digest} into {repo} refused: {e}");
                    from = None;
                    continue;
                }
                Err(e) => return Err(first.unwrap_or(e).into()),
            };
            if held.resp.status() == StatusCode::CREATED && from.is_some() {
                return Ok(BlobPush::Mounted);
            }
            // A refused mount opened a session like a plain POST; a restart does not ask again.
            from = None;
            let location = self.location(&held).await?;
            drop(held);
            let sent = match &body {
                Some(BlobBody::Local(loc)) => {
                    self.send_local(&location, digest, &scope, size, loc.source.clone())
                        .await
                }
                Some(BlobBody::Stream(_)) => {
                    let Some(BlobBody::Stream(stream)) = body.take() else {
                        unreachable!("matched a stream")
                    };
                    // A stream can be sent once: one monolithic PUT, not repeated.
                    let once = std::sync::Mutex::new(Some(stream));
                    let make = move || match once.lock().unwrap().take() {
                        Some(s) => reqwest::Body::wrap_stream(s),
                        None => reqwest::Body::wrap_stream(futures_util::stream::once(async {
                            Err::<bytes::Bytes, _>(std::io::Error::other(
                                "a streamed blob cannot be sent twice",
                            ))
                        })),
                    };
                    self.put_whole(&location, digest, &scope, size, &make).await
                }
                None => Err(RegistryError::Config {
                    host: self.host().to_string(),
                    why: format!("blob {digest}: a streamed blob cannot be sent twice"),
                }),
            };
            let e = match sent {
                Ok(()) => return Ok(BlobPush::Uploaded),
                Err(e) => e,
            };
            self.cancel_upload(&location, &scope).await;
            let again = e.is_retryable()
                && attempt < limits::RETRIES
                && matches!(body, Some(BlobBody::Local(_)));
            tracing::warn!(
                "uploading blob {digest} to {repo}: {e}{}",
                if again {
                    "; starting the upload again"
                } else {
                    ""
                }
            );
            if !again {
                return Err(first.unwrap_or(e).into());
            }
            first.get_or_insert(e);
            tokio::time::sleep(super::client::backoff(attempt, None)).await;
            attempt += 1;
        }
    }

    /// Sends local bytes into an open session: one PUT when small, PATCHes then a closing PUT when large.
    async fn send_local(
        &self,
        location: &str,
        digest: &Digest,
        scope: &str,
        size: u64,
        source: Arc<dyn RangeRead>,
    ) -> Result<(), RegistryError> {
        if size <= MONOLITHIC_UPLOAD_MAX {
            let make = move || stream_body(source.clone(), 0, size);
            return self.put_whole(location, digest, scope, size, &make).await;
        }
        let mut location = location.to_string();
        let mut offset = 0u64;
        while offset < size {
            let len = UPLOAD_CHUNK_BYTES.min(size - offset);
            let src = source.clone();
            let make = move || stream_body(src.clone(), offset, len);
            let headers = [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::CONTENT_LENGTH, len.to_string()),
                (
                    header::CONTENT_RANGE,
                    format!("{}-{}", offset, offset + len - 1),
                ),
            ];
            let held = self
                .send_url_with(
                    Policy::ONCE,
                    Method::PATCH,
                    location.clone(),
                    scope,
                    &headers,
                    Some(&make),
                    self.permit().await,
                )
                .await?;
            location = self.location(&held).await?;
            offset += len;
        }
        self.send_url_with(
            Policy::ONCE,
            Method::PUT,
            digest_url(&location, digest),
            scope,
            &[(header::CONTENT_LENGTH, "0".into())],
            None,
            self.permit().await,
        )
        .await?;
        Ok(())
    }

    /// Cancels an upload session that will not be finished (DELETE), so the registry keeps no abandoned upload.
    async fn cancel_upload(&self, location: &str, scope: &str) {
        // Retried: a DELETE may be repeated (a second one finds nothing, 404), and a pooled
        // connection the registry closed after its error answer must not leave the session behind.
        let r = self
            .send_url_with(
                Policy::NORMAL,
                Method::DELETE,
                location.to_string(),
                scope,
                &[],
                None,
                self.permit().await,
            )
            .await;
        if let Err(e) = r {
            // A session the registry has already closed answers 404: nothing is left behind.
            if !e.is_not_found() {
                tracing::warn!("cancelling an upload session: {e}");
            }
        }
    }

    /// Ends an upload with one PUT of the whole blob (a monolithic upload); `make` gives the body.
    async fn put_whole(
        &self,
        location: &str,
        digest: &Digest,
        scope: &str,
        size: u64,
        make: &(dyn Fn() -> reqwest::Body + Send + Sync),
    ) -> Result<(), RegistryError> {
        let headers = [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ];
        self.send_url_with(
            Policy::ONCE,
            Method::PUT,
            digest_url(location, digest),
            scope,
            &headers,
            Some(make),
            self.permit().await,
        )
        .await?;
        Ok(())
    }

    /// Puts a manifest under a tag or its digest; the registry's digest must be ours.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &RawManifest,
    ) -> Result<(), RegistryError> {
        let url = self
            .url(
                &Route::Manifest {
                    name: repo.to_string(),
                    reference: reference.to_string(),
                },
                "",
            )
            .await?;
        let bytes = bytes::Bytes::copy_from_slice(manifest.bytes());
        let make = move || reqwest::Body::from(bytes.clone());
        let headers = [
            (header::CONTENT_TYPE, manifest.media_type().to_string()),
            (header::CONTENT_LENGTH, manifest.bytes().len().to_string()),
        ];
        let held = self
            .send_url(
                Method::PUT,
                url.clone(),
                &push_scope(repo),
                &headers,
                Some(&make),
                self.permit().await,
            )
            .await?;
        if let Some(d) = held
            .resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok())
            && &d != manifest.digest()
        {
            return Err(RegistryError::DigestMismatch {
                url,
                expected: manifest.digest().clone(),
                found: d,
            });
        }
        Ok(())
    }
}
