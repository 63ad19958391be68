//! A registry root in an S3-compatible bucket: the same `docker/registry/v2/...`
//! keys distribution's S3 driver keeps under its `rootdirectory`, each computed
//! by [`super::paths::key_for`], behind the store's narrow interface: put a blob
//! if absent (verified while it streams, never replacing one), write a link,
//! read a link, list.
//!
//! An object appears whole or not at all (a single PUT, or a multipart upload
//! completed only after the last byte hashed to the digest; a refused one is
//! aborted), so a reader never sees half a blob. Endpoint and credentials come
//! from the usual `AWS_*` environment, then the profile files (`AWS_PROFILE`,
//! `~/.aws/credentials`, `~/.aws/config`), then `--s3-endpoint`, which wins.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, Certificate, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig, WriteMultipart,
};

use super::paths::{self, LayoutFile, PathSpec};
use crate::digest::{Digest, Hasher, VerifyError};
use crate::limits::{
    MAX_LINK_BYTES, S3_LIST_JOBS, S3_PART_BYTES, S3_PARTS_IN_FLIGHT, S3_RETRIES, S3_RETRY_SECS,
};

/// What went wrong with a bucket; every variant names the bucket (and key) and the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum S3Error {
    /// `s3://` written wrong.
    #[error("{url}: {why}")]
    Url {
        /// What was given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The client could not be set up (endpoint, region, credentials).
    #[error("s3://{bucket}: {cause}")]
    Client {
        /// The bucket.
        bucket: String,
        /// Why.
        cause: String,
    },
    /// A request failed.
    #[error("s3://{bucket}/{key}: {op}: {cause}")]
    Request {
        /// What was being done.
        op: &'static str,
        /// The bucket.
        bucket: String,
        /// The object (or prefix).
        key: String,
        /// The store's answer, on one line.
        cause: String,
    },
    /// The bytes did not match their digest; the upload was aborted, nothing was written.
    #[error("s3://{bucket}/{key}: blob {digest}: {source}")]
    Verify {
        /// The bucket.
        bucket: String,
        /// The key the blob was going to.
        key: String,
        /// The digest it was written as.
        digest: Digest,
        /// What did not match (boxed: the error stays small).
        source: Box<VerifyError>,
    },
    /// The source of a blob failed while it streamed in; the upload was aborted.
    #[error("s3://{bucket}/{key}: reading blob {digest} for it: {source}")]
    Source {
        /// The bucket.
        bucket: String,
        /// The key the blob was going to.
        key: String,
        /// The blob.
        digest: Digest,
        /// The source's error.
        source: std::io::Error,
    },
    /// A manifest in the bucket that does not parse.
    #[error("s3://{bucket}/{key}: {source}")]
    Manifest {
        /// The bucket.
        bucket: String,
        /// The manifest's key.
        key: String,
        /// Why it does not parse (boxed: the error stays small).
        source: Box<crate::manifest::ManifestError>,
    },
    /// A link object that does not hold a digest.
    #[error("s3://{bucket}/{key}: link holds {content:?}, not a digest")]
    BadLink {
        /// The bucket.
        bucket: String,
        /// The link's key.
        key: String,
        /// What it holds (truncated).
        content: String,
    },
}

/// Result alias for bucket operations.
pub type Result<T, E = S3Error> = std::result::Result<T, E>;

/// Whether a root argument names a bucket (`s3://…`) rather than a directory.
pub fn is_s3(root: &std::path::Path) -> bool {
    root.to_str().is_some_and(|s| s.starts_with("s3://"))
}

/// `s3://BUCKET[/PREFIX]` split into its bucket and prefix (no leading or trailing `/`).
pub fn parse_url(url: &str) -> Result<(String, String)> {
    let bad = |why| S3Error::Url {
        url: url.to_string(),
        why,
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or(bad("not an s3://BUCKET[/PREFIX] URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !bucket_ok {
        return Err(bad(
            "the bucket name must be 3-63 lowercase letters, digits, '-' or '.'",
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix
        .split('/')
        .any(|p| p == "." || p == ".." || (p.is_empty() && !prefix.is_empty()))
    {
        return Err(bad("the prefix has an empty, '.' or '..' component"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// One profile's settings from the AWS shared files (`credentials`, then `config`).
fn profile_settings() -> HashMap<String, String> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
    };
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_string());
    let mut out = HashMap::new();
    // credentials names a section `[NAME]`; config names it `[profile NAME]` (`[default]` in both).
    for (path, section) in [
        (
            file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            profile.clone(),
        ),
        (
            file("AWS_CONFIG_FILE", "config"),
            if profile == "default" {
                profile.clone()
            } else {
                format!("profile {profile}")
            },
        ),
    ] {
        let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else {
            continue;
        };
        let mut inside = false;
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                inside = name.trim() == section;
            } else if inside && let Some((k, v)) = line.split_once('=') {
                out.entry(k.trim().to_ascii_lowercase())
                    .or_insert_with(|| v.trim().to_string());
            }
        }
    }
    out
}

/// The certificates of a PEM CA bundle (`AWS_CA_BUNDLE`, a profile's `ca_bundle`), to trust for the
/// bucket's HTTPS endpoint; a bundle that cannot be read or holds no certificate is refused.
fn ca_bundle(bucket: &str, path: &str) -> Result<Vec<Certificate>> {
    let bad = |cause: String| S3Error::Client {
        bucket: bucket.to_string(),
        cause: format!("CA bundle {path}: {cause}"),
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = Certificate::from_pem_bundle(&pem).map_err(|e| bad(one_line(&e)))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".to_string()));
    }
    Ok(certs)
}

/// A registry root in a bucket (`s3://BUCKET[/PREFIX]`).
#[derive(Debug, Clone)]
pub struct S3Root {
    client: Arc<AmazonS3>,
    /// The client's options (CA bundle and the rest), for the one request object_store cannot make.
    options: Arc<ClientOptions>,
    /// The endpoint's URL (`--s3-endpoint`, the environment's, or AWS's for the region).
    endpoint: String,
    region: String,
    bucket: String,
    prefix: String,
}

impl S3Root {
    /// Opens `s3://BUCKET[/PREFIX]` with credentials from the environment or profile files;
    /// `endpoint` (`--s3-endpoint`) overrides theirs. Sends no request.
    pub fn open(url: &str, endpoint: Option<&str>) -> Result<S3Root> {
        let (bucket, prefix) = parse_url(url)?;
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: S3_RETRIES,
                retry_timeout: Duration::from_secs(S3_RETRY_SECS),
            });
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let profile = profile_settings();
        let from_profile = |k: &str| profile.get(k).cloned();
        if env("AWS_ACCESS_KEY_ID").is_none()
            && let (Some(id), Some(secret)) = (
                from_profile("aws_access_key_id"),
                from_profile("aws_secret_access_key"),
            )
        {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
            if let Some(t) = from_profile("aws_session_token") {
                b = b.with_token(t);
            }
        }
        if env("AWS_REGION").or(env("AWS_DEFAULT_REGION")).is_none()
            && let Some(r) = from_profile("region")
        {
            b = b.with_region(r);
        }
        let endpoint = endpoint
            .map(str::to_string)
            .or(env("AWS_ENDPOINT_URL_S3"))
            .or(env("AWS_ENDPOINT_URL"))
            .or(env("AWS_ENDPOINT"))
            .or(from_profile("endpoint_url"));
        // The client's options from the environment (as `from_env` reads them), plus a CA bundle:
        // `AWS_CA_BUNDLE`, else the profile's `ca_bundle`, trusted besides the system's roots.
        let mut client = ClientOptions::new();
        for (k, v) in std::env::vars() {
            if k.starts_with("AWS_")
                && let Ok(AmazonS3ConfigKey::Client(key)) = k.to_ascii_lowercase().parse()
            {
                client = client.with_config(key, v);
            }
        }
        if let Some(path) = env("AWS_CA_BUNDLE").or(from_profile("ca_bundle")) {
            for cert in ca_bundle(&bucket, &path)? {
                client = client.with_root_certificate(cert);
            }
        }
        if let Some(e) = &endpoint {
            b = b.with_endpoint(e);
            client = client.with_allow_http(e.starts_with("http://"));
        }
        b = b.with_client_options(client.clone());
        // The bucket's HTTPS client uses ring, as the registry client does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let region = b
            .get_config_value(&AmazonS3ConfigKey::Region)
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let built = b.build().map_err(|e| S3Error::Client {
            bucket: bucket.clone(),
            cause: one_line(&e),
        })?;
        Ok(S3Root {
            client: Arc::new(built),
            options: Arc::new(client),
            endpoint,
            region,
            bucket,
            prefix,
        })
    }

    /// `s3://BUCKET[/PREFIX]`, for messages.
    pub fn url(&self) -> String {
        match self.prefix.as_str() {
            "" => format!("s3://{}", self.bucket),
            p => format!("s3://{}/{p}", self.bucket),
        }
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object store client.
    pub(super) fn client(&self) -> &AmazonS3 {
        &self.client
    }

    /// The client's options (CA bundle and the rest).
    pub(super) fn client_options(&self) -> &ClientOptions {
        &self.options
    }

    /// The endpoint's URL, for messages and hand-made requests.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The region requests are signed for.
    pub(super) fn region(&self) -> &str {
        &self.region
    }

    /// A key with the root's prefix taken off (`None` when it is not under the root).
    pub(super) fn relative<'k>(&self, key: &'k str) -> Option<&'k str> {
        match self.prefix.as_str() {
            "" => Some(key),
            p => key.strip_prefix(p)?.strip_prefix('/'),
        }
    }

    /// The object key of a layout element (PREFIX + the path paths.rs computes).
    pub fn key(&self, spec: PathSpec<'_>) -> String {
        self.prefixed(&paths::key_for(spec))
    }

    fn prefixed(&self, rel: &str) -> String {
        match self.prefix.as_str() {
            "" => rel.to_string(),
            p => format!("{p}/{rel}"),
        }
    }

    /// A failed request as one line; one that got no answer (connection, TLS) names the endpoint.
    pub(super) fn request_error(
        &self,
        op: &'static str,
        key: &str,
        e: object_store::Error,
    ) -> S3Error {
        let mut cause = one_line(&e);
        if cause.starts_with("HTTP error") {
            cause = format!("{}: {cause}", self.endpoint);
        }
        S3Error::Request {
            op,
            bucket: self.bucket.clone(),
            key: key.to_string(),
            cause,
        }
    }

    /// One listing request: the bucket exists, the credentials are good and the endpoint answers.
    /// Called before anything is written, so a wrong setup is one line and no object.
    pub async fn check(&self) -> Result<()> {
        let key = self.key(PathSpec::V2Root);
        self.client
            .list_with_delimiter(Some(&Key::from(key.as_str())))
            .await
            .map(drop)
            .map_err(|e| self.request_error("checking the bucket", &key, e))
    }

    /// The size of a blob, `None` when it is not there.
    pub async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let key = self.key(PathSpec::BlobData(digest));
        match self.client.head(&Key::from(key.as_str())).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.request_error("looking up blob", &key, e)),
        }
    }

    /// Writes a blob from a stream unless it is there: hashed as it streams, published only when
    /// it matches `digest` and `size` (a multipart upload for a large one, aborted when it does
    /// not). `Ok(false)` when it was there; an existing blob is never replaced.
    pub async fn put_blob(
        &self,
        digest: &Digest,
        size: u64,
        mut stream: crate::blob::ByteStream,
    ) -> Result<bool> {
        let key = self.key(PathSpec::BlobData(digest));
        match self.blob_size(digest).await? {
            // Objects appear whole, so another size is not a blob in flight: it is wrong.
            Some(found) if found != size => {
                return Err(S3Error::Verify {
                    bucket: self.bucket.clone(),
                    key,
                    digest: digest.clone(),
                    source: Box::new(VerifyError::SizeMismatch {
                        expected: size,
                        found,
                    }),
                });
            }
            Some(_) => return Ok(false),
            None => {}
        }
        let path = Key::from(key.as_str());
        let source_err = |source| S3Error::Source {
            bucket: self.bucket.clone(),
            key: key.clone(),
            digest: digest.clone(),
            source,
        };
        let mut hasher = Hasher::new(digest.algorithm());
        let mut n = 0u64;
        // Up to one part in memory: a small blob goes up in one PUT once it verifies.
        let mut first: Vec<Bytes> = Vec::new();
        let mut buffered = 0usize;
        let mut upload: Option<WriteMultipart> = None;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    abort(upload).await;
                    return Err(source_err(e));
                }
            };
            hasher.update(&chunk);
            n += chunk.len() as u64;
            if n > size {
                break; // longer than it claims: refused below
            }
            match upload.as_mut() {
                Some(w) => {
                    if let Err(e) = w.wait_for_capacity(S3_PARTS_IN_FLIGHT).await {
                        abort(upload).await;
                        return Err(self.request_error("uploading part of blob", &key, e));
                    }
                    w.put(chunk);
                }
                None => {
                    buffered += chunk.len();
                    first.push(chunk);
                    if buffered >= S3_PART_BYTES {
                        let m =
                            self.client.put_multipart(&path).await.map_err(|e| {
                                self.request_error("starting upload of blob", &key, e)
                            })?;
                        let mut w = WriteMultipart::new_with_chunk_size(m, S3_PART_BYTES);
                        for c in first.drain(..) {
                            w.put(c);
                        }
                        upload = Some(w);
                    }
                }
            }
        }
        if let Err(source) = crate::digest::check(digest, Some(size), &hasher.finish(), n) {
            abort(upload).await;
            return Err(S3Error::Verify {
                bucket: self.bucket.clone(),
                key,
                digest: digest.clone(),
                source: Box::new(source),
            });
        }
        match upload {
            Some(w) => {
                if let Err(e) = w.finish().await {
                    // A racing writer of the same key (same digest, so the same bytes) may have
                    // completed first, and a store such as Garage then drops the other upload
                    // (NoSuchUpload): the blob is there, whole, which is all this put promises.
                    if self.blob_size(digest).await.ok().flatten() == Some(size) {
                        tracing::debug!("{key}: completed by another writer ({})", one_line(&e));
                        return Ok(false);
                    }
                    return Err(self.request_error("completing upload of blob", &key, e));
                }
            }
            None => self
                .client
                .put(&path, PutPayload::from_iter(first))
                .await
                .map(drop)
                .map_err(|e| self.request_error("writing blob", &key, e))?,
        }
        Ok(true)
    }

    /// Writes a small blob (a manifest) held in memory, under the digest of its bytes, unless it is there.
    pub async fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::sha256_of(bytes);
        let body = Bytes::copy_from_slice(bytes);
        let stream: crate::blob::ByteStream =
            Box::pin(futures_util::stream::once(async { Ok(body) }));
        self.put_blob(&digest, bytes.len() as u64, stream).await?;
        Ok(digest)
    }

    /// A blob's bytes as a stream (not verified here: callers that need it hash it).
    pub async fn blob_stream(
        &self,
        digest: &Digest,
    ) -> Result<Option<(u64, crate::blob::ByteStream)>> {
        let key = self.key(PathSpec::BlobData(digest));
        match self.client.get(&Key::from(key.as_str())).await {
            Ok(r) => {
                let size = r.meta.size;
                let bucket = self.bucket.clone();
                let k = key.clone();
                let stream = r.into_stream().map_err(move |e| {
                    std::io::Error::other(format!("s3://{bucket}/{k}: reading: {}", one_line(&e)))
                });
                Ok(Some((size, Box::pin(stream))))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.request_error("reading blob", &key, e)),
        }
    }

    /// A small blob (a manifest) whole, at most `cap` bytes and checked against its digest; `None` when absent.
    pub async fn read_blob(&self, digest: &Digest, cap: u64) -> Result<Option<Vec<u8>>> {
        let key = self.key(PathSpec::BlobData(digest));
        let Some((size, mut stream)) = self.blob_stream(digest).await? else {
            return Ok(None);
        };
        if size > cap {
            return Err(S3Error::Request {
                op: "reading blob",
                bucket: self.bucket.clone(),
                key,
                cause: format!("{size} bytes, over the {cap}-byte cap"),
            });
        }
        let mut out = Vec::with_capacity(size as usize);
        while let Some(c) = stream.next().await {
            let c = c.map_err(|source| S3Error::Source {
                bucket: self.bucket.clone(),
                key: key.clone(),
                digest: digest.clone(),
                source,
            })?;
            out.extend_from_slice(&c);
            if out.len() as u64 > cap {
                break;
            }
        }
        crate::digest::check(
            digest,
            Some(size),
            &Digest::sha256_of(&out),
            out.len() as u64,
        )
        .map_err(|source| S3Error::Verify {
            bucket: self.bucket.clone(),
            key,
            digest: digest.clone(),
            source: Box::new(source),
        })?;
        Ok(Some(out))
    }

    /// Reads a link object: `None` when it is not there, an error when it holds anything but a digest.
    pub async fn read_link(&self, spec: PathSpec<'_>) -> Result<Option<Digest>> {
        let key = self.key(spec);
        let bytes = match self.client.get(&Key::from(key.as_str())).await {
            Ok(r) if r.meta.size <= MAX_LINK_BYTES => r
                .bytes()
                .await
                .map_err(|e| self.request_error("reading link", &key, e))?,
            Ok(r) => {
                return Err(S3Error::BadLink {
                    bucket: self.bucket.clone(),
                    key,
                    content: format!("{} bytes", r.meta.size),
                });
            }
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.request_error("reading link", &key, e)),
        };
        let text = String::from_utf8_lossy(&bytes);
        Digest::parse(&text)
            .map(Some)
            .map_err(|_| S3Error::BadLink {
                bucket: self.bucket.clone(),
                key,
                content: text.chars().take(80).collect(),
            })
    }

    /// Writes `sha256:<hex>` (no newline) at a link's key unless it already says exactly that.
    pub async fn write_link(&self, spec: PathSpec<'_>, digest: &Digest) -> Result<bool> {
        if matches!(self.read_link(spec).await, Ok(Some(d)) if &d == digest) {
            return Ok(false);
        }
        let key = self.key(spec);
        self.client
            .put(
                &Key::from(key.as_str()),
                PutPayload::from(digest.to_string().into_bytes()),
            )
            .await
            .map_err(|e| self.request_error("writing link", &key, e))?;
        Ok(true)
    }

    /// Whether the bucket holds a registry layout under this root (anything under `docker/registry/v2/`).
    pub async fn exists(&self) -> Result<bool> {
        Ok(!self.list_dir(PathSpec::V2Root).await?.is_empty())
    }

    /// The names one level below a layout directory (tags of a repository, digests' hex under
    /// `revisions/sha256`), sorted; empty when there is none.
    pub async fn list_dir(&self, spec: PathSpec<'_>) -> Result<Vec<String>> {
        self.list_names(&self.key(spec)).await
    }

    /// The names one level below the key `dir` (one delimiter listing), sorted.
    async fn list_names(&self, dir: &str) -> Result<Vec<String>> {
        let r = self
            .client
            .list_with_delimiter(Some(&Key::from(dir)))
            .await
            .map_err(|e| self.request_error("listing", dir, e))?;
        let mut names: Vec<String> = r
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every repository under the root, sorted, found as distribution's catalog finds them (a
    /// directory under `repositories/` holding `_layers`, `_manifests` or `_uploads`; names nest)
    /// with delimiter listings, a level of the name tree at a time and [`S3_LIST_JOBS`] requests at
    /// once: a `_catalog` costs one request per directory of names, not a listing of every blob.
    pub async fn repositories(&self) -> Result<Vec<String>> {
        let mut found = Vec::new();
        let mut level = vec![String::new()];
        while !level.is_empty() {
            let listed: Vec<(String, Vec<String>)> =
                futures_util::stream::iter(std::mem::take(&mut level).into_iter().map(
                    |name| async move {
                        let dir = match name.as_str() {
                            "" => self.key(PathSpec::Repositories),
                            n => self.key(PathSpec::Repository(n)),
                        };
                        Ok::<_, S3Error>((name, self.list_names(&dir).await?))
                    },
                ))
                .buffer_unordered(S3_LIST_JOBS)
                .try_collect()
                .await?;
            for (name, entries) in listed {
                if !name.is_empty() && entries.iter().any(|e| paths::is_repository_marker(e)) {
                    found.push(name.clone());
                }
                level.extend(
                    entries
                        .into_iter()
                        .filter(|e| !e.starts_with('_'))
                        .map(|e| match name.as_str() {
                            "" => e,
                            n => format!("{n}/{e}"),
                        }),
                );
            }
        }
        found.sort();
        Ok(found)
    }

    /// `len` bytes of a blob from `start`, as a stream (a registry client's range, or all of it).
    pub async fn range_stream(
        &self,
        digest: &Digest,
        start: u64,
        len: u64,
    ) -> Result<crate::blob::ByteStream> {
        let key = self.key(PathSpec::BlobData(digest));
        let opts = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(start..start + len)),
            ..Default::default()
        };
        let r = self
            .client
            .get_opts(&Key::from(key.as_str()), opts)
            .await
            .map_err(|e| self.request_error("reading blob", &key, e))?;
        let bucket = self.bucket.clone();
        Ok(Box::pin(r.into_stream().map_err(move |e| {
            std::io::Error::other(format!("s3://{bucket}/{key}: reading: {}", one_line(&e)))
        })))
    }

    /// Every layout object under the root, recognised through paths.rs, with its size; other keys
    /// (distribution's `_uploads`, strays) are left out.
    pub async fn list(&self) -> Result<Vec<(LayoutFile, u64)>> {
        let v2 = self.key(PathSpec::V2Root);
        let strip = match self.prefix.as_str() {
            "" => 0,
            p => p.len() + 1,
        };
        let mut out = Vec::new();
        let mut listing = self.client.list(Some(&Key::from(v2.as_str())));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.request_error("listing", &v2, e))?;
            let key = meta.location.as_ref();
            if let Some(f) = key.get(strip..).and_then(paths::parse_file) {
                out.push((f, meta.size));
            }
        }
        Ok(out)
    }

    /// Links an image (its walk read from anywhere) into `repo`: a link for every config and
    /// layer, a revision for every manifest `wanted` (children first), then the tag (its index
    /// link, then `current`), so a registry reading the bucket never sees a tag whose content is
    /// not all there. Each blob must be in the bucket already.
    pub async fn link_image(
        &self,
        repo: &str,
        walk: &crate::image::ImageWalk,
        tag: Option<&str>,
    ) -> Result<Option<Digest>> {
        for b in &walk.blobs {
            self.write_link(PathSpec::LayerLink(repo, &b.digest), &b.digest)
                .await?;
        }
        for b in &walk.foreign {
            if self.blob_size(&b.digest).await?.is_some() {
                self.write_link(PathSpec::LayerLink(repo, &b.digest), &b.digest)
                    .await?;
            }
        }
        for m in walk.manifests() {
            self.write_link(PathSpec::RevisionLink(repo, m.digest()), m.digest())
                .await?;
        }
        let Some(tag) = tag else {
            return Ok(None);
        };
        let top = walk.top.digest();
        let old = self.read_link(PathSpec::TagCurrentLink(repo, tag)).await?;
        self.write_link(PathSpec::TagIndexLink(repo, tag, top), top)
            .await?;
        if let Some(pause) = crate::limits::test_millis(crate::limits::ENV_TAG_PAUSE_MS) {
            tokio::time::sleep(pause).await;
        }
        self.write_link(PathSpec::TagCurrentLink(repo, tag), top)
            .await?;
        Ok(old.filter(|o| o != top))
    }
}

/// Aborts a multipart upload that will not complete (its parts are freed; nothing was visible).
async fn abort(upload: Option<WriteMultipart>) {
    if let Some(w) = upload {
        let _ = w.abort().await;
    }
}

/// An object store error on one line, without its debugging detail: the request's URL and
/// timing are dropped (the caller names the bucket and key), an S3 XML error body becomes
/// `STATUS: Code: Message`, and the retries made are kept.
pub(super) fn one_line(e: &dyn std::error::Error) -> String {
    let mut full = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !full.contains(&t) {
            full.push_str(": ");
            full.push_str(&t);
        }
        src = inner.source();
    }
    let full = full.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut s = full.as_str();
    s = s.strip_prefix("Generic S3 error: ").unwrap_or(s);
    let mut retries = String::new();
    if let Some(i) = s.find("Error performing ")
        && let Some(j) = s[i..].find(" - ")
    {
        let head = &s[i..i + j];
        if let Some(k) = head.find(", after ") {
            let n = &head[k + 8..];
            retries = format!(" (after {})", n.split(',').next().unwrap_or(n));
        }
        s = &s[i + j + 3..];
    }
    s = s
        .strip_prefix("Server returned non-2xx status code: ")
        .unwrap_or(s);
    let between = |a: &str, b: &str| -> Option<String> {
        let i = s.find(a)? + a.len();
        Some(s[i..].split(b).next()?.to_string())
    };
    let out = match (
        s.find(": <?xml"),
        between("<Code>", "</Code>"),
        between("<Message>", "</Message>"),
    ) {
        (Some(i), Some(code), Some(msg)) => format!("{}: {code}: {msg}", &s[..i]),
        _ => s.to_string(),
    };
    format!("{out}{retries}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let ok = [
            ("s3://reg", ("reg", "")),
            ("s3://reg/", ("reg", "")),
            ("s3://reg/site", ("reg", "site")),
            ("s3://my.bucket-1/a/b/", ("my.bucket-1", "a/b")),
        ];
        for (url, (b, p)) in ok {
            assert_eq!(
                parse_url(url).unwrap(),
                (b.to_string(), p.to_string()),
                "{url}"
            );
        }
        for bad in [
            "reg",
            "s3://",
            "s3://Reg",
            "s3://ab",
            "s3://reg/a//b",
            "s3://reg/../x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_read_on_one_line() {
        #[derive(Debug)]
        struct E(&'static str);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {}
        let table = [
            (
                "Generic S3 error: Error performing list request: Error performing GET http://h/reg?x in 3ms - Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Forbidden: Invalid signature</Message></Error>",
                "403 Forbidden: AccessDenied: Forbidden: Invalid signature",
            ),
            (
                "Generic S3 error: Error performing GET http://h:1/reg in 398ms, after 3 retries, max_retries: 3, retry_timeout: 20s - HTTP error: error sending request: client error (Connect)",
                "HTTP error: error sending request: client error (Connect) (after 3 retries)",
            ),
            ("plain\ncause", "plain cause"),
        ];
        for (raw, want) in table {
            assert_eq!(one_line(&E(raw)), want);
        }
    }

    #[test]
    fn keys_follow_paths_rs() {
        let d = Digest::sha256_of(b"");
        // Opening sends no request.
        let root = S3Root::open("s3://reg/site", Some("http://127.0.0.1:1")).unwrap();
        assert_eq!(
            root.key(PathSpec::BlobData(&d)),
            format!("site/docker/registry/v2/blobs/sha256/e3/{}/data", d.hex())
        );
        let rel = root.key(PathSpec::TagCurrentLink("a/b", "v1"));
        assert_eq!(
            paths::parse_file(rel.strip_prefix("site/").unwrap()),
            Some(LayoutFile::TagCurrentLink("a/b".into(), "v1".into()))
        );
    }
}
