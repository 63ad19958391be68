//! Pushing: blob existence checks, cross-repository mounts, monolithic and
//! chunked uploads, and manifest PUT. Local blob bytes stream from any
//! [`RangeRead`] (so a bundle is pushed without unpacking it, and a failed
//! request is retried from the right offset); a remote stream goes in one PUT.

use std::sync::Arc;

use reqwest::{Method, StatusCode, header};

use super::client::{Client, RegistryError};
use super::routes::Route;
use crate::blob::{BlobBody, RangeRead, range_stream};
use crate::digest::Digest;
use crate::limits::{MONOLITHIC_UPLOAD_MAX, UPLOAD_CHUNK_BYTES};
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

fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

/// An upload's `Location` with `digest=` added, to close the upload.
fn digest_url(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
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

    /// Makes `digest` present in `repo`, for a caller that has just asked [`Client::has_blob`]:
    /// a mount from `from` when given and accepted, else an upload (monolithic when small, chunked when large).
    pub async fn upload_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        from: Option<&str>,
        body: BlobBody,
    ) -> Result<BlobPush, RegistryError> {
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
        let source = match body {
            BlobBody::Local(loc) => loc.source,
            BlobBody::Stream(stream) => {
                // A stream can be sent once: one monolithic PUT, not retried by the client.
                let once = std::sync::Mutex::new(Some(stream));
                let make = move || match once.lock().unwrap().take() {
                    Some(s) => reqwest::Body::wrap_stream(s),
                    None => reqwest::Body::wrap_stream(futures_util::stream::once(async {
                        Err::<bytes::Bytes, _>(std::io::Error::other(
                            "a streamed blob cannot be sent twice",
                        ))
                    })),
                };
                self.put_whole(&location, digest, &scope, size, &make)
                    .await?;
                return Ok(BlobPush::Uploaded);
            }
        };
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
            self.send_url(
                Method::PUT,
                digest_url(&location, digest),
                &scope,
                &[(header::CONTENT_LENGTH, "0".into())],
                None,
                self.permit().await,
            )
            .await?;
        } else {
            let make = move || stream_body(source.clone(), 0, size);
            self.put_whole(&location, digest, &scope, size, &make)
                .await?;
        }
        Ok(BlobPush::Uploaded)
    }

    /// Ends an upload with one PUT of the whole blob (a monolithic upload); `make` gives each attempt its body.
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
        self.send_url(
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
