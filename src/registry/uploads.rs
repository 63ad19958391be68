//! Pushing: blob existence checks, cross-repository mounts, monolithic and
//! chunked uploads, and manifest PUT. Blob bytes stream from any
//! [`RangeRead`], so a bundle is pushed without unpacking it.

use std::sync::Arc;

use reqwest::{Method, StatusCode, header};

use super::client::{Client, RegistryError};
use super::routes::Route;
use crate::digest::Digest;
use crate::limits::{IO_BUFFER_BYTES, MONOLITHIC_UPLOAD_MAX, UPLOAD_CHUNK_BYTES};
use crate::manifest::RawManifest;

/// Reads a byte range of one blob (blocking; callers run it off the async threads).
/// Implemented by a store's files and by bundles read in place.
pub trait RangeRead: Send + Sync {
    /// A reader of `len` bytes starting `start` bytes into the blob.
    fn open_range(&self, start: u64, len: u64) -> std::io::Result<Box<dyn std::io::Read + Send>>;
}

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

fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

/// `len` bytes from `start` of a blob as a stream of chunks, read on one
/// blocking thread through a short queue (memory stays flat; a short read is an
/// error, never a silently shorter body). Shared by uploads and by `serve`.
pub fn range_stream(
    source: Arc<dyn RangeRead>,
    start: u64,
    len: u64,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut r = match source.open_range(start, len) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut left = len;
        while left > 0 {
            let mut buf = vec![0u8; IO_BUFFER_BYTES.min(left as usize)];
            if let Err(e) = std::io::Read::read_exact(&mut r, &mut buf) {
                let _ = tx.blocking_send(Err(e));
                return;
            }
            left -= buf.len() as u64;
            if tx.blocking_send(Ok(bytes::Bytes::from(buf))).is_err() {
                return; // the receiver went away
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
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

    /// Makes `digest` present in `repo`: nothing if it is there, a mount from `from` when given and
    /// accepted, else an upload (monolithic when small, chunked when large).
    pub async fn push_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        from: Option<&str>,
        source: Arc<dyn RangeRead>,
    ) -> Result<BlobPush, RegistryError> {
        if self.has_blob(repo, digest).await? {
            return Ok(BlobPush::Present);
        }
        let scope = push_scope(repo);
        let uploads = self
            .url(
                &Route::Uploads {
                    name: repo.to_string(),
                },
                "",
            )
            .await?;
        let start_url = match from {
            Some(f) => format!("{uploads}?mount={digest}&from={f}"),
            None => uploads,
        };
        let held = self
            .send_url(
                Method::POST,
                start_url,
                &scope,
                &[(header::CONTENT_LENGTH, "0".into())],
                None,
                self.permit().await,
            )
            .await?;
        if held.resp.status() == StatusCode::CREATED && from.is_some() {
            return Ok(BlobPush::Mounted);
        }
        let mut location = self.location(&held).await?;
        drop(held);
        if size > MONOLITHIC_UPLOAD_MAX {
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
                    .send_url(
                        Method::PATCH,
                        location.clone(),
                        &scope,
                        &headers,
                        Some(&make),
                        self.permit().await,
                    )
                    .await?;
                location = self.location(&held).await?;
                offset += len;
            }
            let sep = if location.contains('?') { '&' } else { '?' };
            let url = format!("{location}{sep}digest={digest}");
            self.send_url(
                Method::PUT,
                url,
                &scope,
                &[(header::CONTENT_LENGTH, "0".into())],
                None,
                self.permit().await,
            )
            .await?;
        } else {
            let sep = if location.contains('?') { '&' } else { '?' };
            let url = format!("{location}{sep}digest={digest}");
            let make = move || stream_body(source.clone(), 0, size);
            let headers = [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::CONTENT_LENGTH, size.to_string()),
            ];
            self.send_url(
                Method::PUT,
                url,
                &scope,
                &headers,
                Some(&make),
                self.permit().await,
            )
            .await?;
        }
        Ok(BlobPush::Uploaded)
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
