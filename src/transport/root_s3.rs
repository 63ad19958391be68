//! `registry-root:s3://BUCKET[/PREFIX]/REPO[:TAG]` written: a registry root in
//! an S3-compatible bucket, no server. Blobs go up verified (each a whole
//! object or nothing); at commit the image's repository links are written,
//! children before parents, and the tag last, so a registry reading the bucket
//! never sees a tag whose content is not all there. Read, the same root is a
//! [`Catalog`] (`ferry serve s3://…` and the `registry-root:s3://…` source).

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;

use super::{Catalog, DestProperties, Destination, Put, Result, Source, TransportError};
use crate::blob::{BlobBody, BlobLocation, RangeRead};
use crate::digest::Digest;
use crate::image::{Manifests, Selection, WalkOptions};
use crate::manifest::{Descriptor, RawManifest};
use crate::reference::Reference;
use crate::store::StoreError;
use crate::store::paths::PathSpec;
use crate::store::s3::S3Root;

/// One image written into a bucket root.
pub struct S3Dest {
    root: S3Root,
    repo: String,
    tag: Option<String>,
    /// Manifests this copy wrote: only these are linked (other children the bucket holds stay out).
    written: Mutex<HashMap<Digest, RawManifest>>,
    /// What commit found the tag pointing at before (for link summaries).
    moved_from: Mutex<Option<Digest>>,
}

impl S3Dest {
    /// Writes into `repo` of the bucket root, tagging with `tag`.
    pub fn new(root: S3Root, repo: String, tag: Option<String>) -> S3Dest {
        S3Dest {
            root,
            repo,
            tag,
            written: Default::default(),
            moved_from: Default::default(),
        }
    }

    /// The digest the tag pointed at before this copy moved it (after commit).
    pub fn moved_from(&self) -> Option<Digest> {
        self.moved_from.lock().unwrap().clone()
    }
}

/// The manifests a copy wrote, as the image walk reads them.
struct Written<'a>(&'a HashMap<Digest, RawManifest>);

impl Manifests for Written<'_> {
    type Error = TransportError;
    fn manifest(
        &self,
        digest: &Digest,
    ) -> impl std::future::Future<Output = Result<Option<RawManifest>>> + Send {
        std::future::ready(Ok(self.0.get(digest).cloned()))
    }
}

impl Destination for S3Dest {
    fn name(&self) -> String {
        super::dest_name(
            &format!("registry-root:{}", self.root.url()),
            &self.repo,
            self.tag.as_deref(),
        )
    }

    fn properties(&self) -> DestProperties {
        DestProperties {
            manifest_types: Vec::new(),
            accepts_index: true,
            accepts_sparse_index: true,
            ordered_blobs: false,
            compresses_layers: false,
        }
    }

    async fn has_blob(&self, desc: &Descriptor) -> Result<bool> {
        Ok(self.root.blob_size(&desc.digest).await?.is_some())
    }

    async fn put_blob(&self, desc: &Descriptor, body: BlobBody) -> Result<Put> {
        // Hashed as it streams whatever the body: a bucket has no later chance to check.
        Ok(
            match self
                .root
                .put_blob(&desc.digest, desc.size, body.into_stream())
                .await?
            {
                true => Put::Written,
                false => Put::Present,
            },
        )
    }

    async fn put_manifest(&self, manifest: &RawManifest) -> Result<()> {
        self.root.put_blob_bytes(manifest.bytes()).await?;
        self.written
            .lock()
            .unwrap()
            .insert(manifest.digest().clone(), manifest.clone());
        Ok(())
    }

    async fn commit(&self, top: &RawManifest) -> Result<()> {
        self.root.put_blob_bytes(top.bytes()).await?;
        let written = std::mem::take(&mut *self.written.lock().unwrap());
        let walk = crate::image::walk(
            &Written(&written),
            top.clone(),
            &WalkOptions {
                selection: Selection::All,
                allow_absent: true,
            },
        )
        .await
        .map_err(|e| TransportError::Invalid(format!("{}: {e}", self.name())))?;
        let old = self
            .root
            .link_image(&self.repo, &walk, self.tag.as_deref())
            .await?;
        *self.moved_from.lock().unwrap() = old;
        Ok(())
    }
}

/// One image of a bucket root, as a [`Source`] (`registry-root:s3://…`): every read is an async
/// request on the runtime and every blob an async stream of the object, hashed as it passes, so
/// no thread ever waits on the bucket for a copy. Scoped by the repository's links as
/// distribution scopes it.
pub struct S3Source {
    root: S3Root,
    repo: String,
    reference: Reference,
    name: String,
}

impl S3Source {
    /// The image `reference` of the bucket root `root`; `name` is how the user wrote it.
    pub fn new(root: S3Root, reference: Reference, name: String) -> S3Source {
        S3Source {
            root,
            repo: reference.repository().to_string(),
            reference,
            name,
        }
    }

    /// Whether the repository links `digest` at `spec`.
    async fn linked(&self, spec: PathSpec<'_>, digest: &Digest) -> Result<bool> {
        Ok(matches!(self.root.read_link(spec).await?, Some(d) if &d == digest))
    }
}

impl Source for S3Source {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn top(&self) -> Result<RawManifest> {
        let tag_digest = async |tag: &str| -> Result<Option<Digest>> {
            crate::reference::validate_tag(tag).map_err(StoreError::from)?;
            let spec = PathSpec::TagCurrentLink(&self.repo, tag);
            Ok(self.root.read_link(spec).await?)
        };
        let manifest = async |d: &Digest| self.manifest(d).await;
        super::top_by_reference(&self.name, &self.reference, tag_digest, manifest).await
    }

    async fn manifest(&self, digest: &Digest) -> Result<Option<RawManifest>> {
        if !self
            .linked(PathSpec::RevisionLink(&self.repo, digest), digest)
            .await?
        {
            return Ok(None);
        }
        // S3Root::manifest reads the bytes checked against the digest.
        Ok(self.root.manifest(digest).await?)
    }

    fn holds_sparse_indexes(&self) -> bool {
        true
    }

    async fn blob(&self, desc: &Descriptor) -> Result<BlobBody> {
        let missing =
            || TransportError::NotFound(format!("{}: blob {} not found", self.name, desc.digest));
        if !self
            .linked(PathSpec::LayerLink(&self.repo, &desc.digest), &desc.digest)
            .await?
        {
            return Err(missing());
        }
        let (size, stream) = self
            .root
            .blob_stream(&desc.digest)
            .await?
            .ok_or_else(missing)?;
        if size != desc.size {
            return Err(TransportError::Corrupt {
                digest: desc.digest.clone(),
                cause: format!("{size} bytes held, the manifest says {}", desc.size),
            });
        }
        Ok(BlobBody::Stream(crate::blob::verified(
            stream,
            desc.digest.clone(),
            desc.size,
        )))
    }

    async fn list_tags(&self) -> Result<Vec<String>> {
        let tags = self.root.list_dir(PathSpec::Tags(&self.repo)).await?;
        if tags.is_empty()
            && self
                .root
                .list_dir(PathSpec::Repository(&self.repo))
                .await?
                .is_empty()
        {
            return Err(TransportError::NotFound(format!(
                "{}: no such repository",
                self.name
            )));
        }
        Ok(tags)
    }
}

/// A bucket root read as a [`Catalog`] (`ferry serve s3://…`): every call asks the bucket (no
/// cache, so what a registry pushes into it shows at once), scoped by the repository's links as
/// distribution scopes it. Read-only. Blobs are streamed through ferry rather than redirected to
/// presigned URLs: the clients at a site need not reach the bucket's endpoint, and its
/// credentials stay with the server. The catalog's interface is blocking: `serve` calls it on
/// blocking threads, and each call runs its requests there; blob bytes are async streams.
#[derive(Debug, Clone)]
pub struct S3Catalog(pub S3Root);

/// Runs a bucket request to completion on a blocking thread (`serve` calls the catalog there).
/// It panics on the runtime's own threads rather than stall them.
fn on_blocking_thread<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}

/// Runs a bucket request to completion from synchronous code on the runtime (opening a
/// destination, before any of its transfers exist, so there is nothing for it to stall).
pub(super) fn wait<F: std::future::Future>(f: F) -> F::Output {
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| handle.block_on(f))
}

fn store_err(e: crate::store::s3::S3Error) -> crate::store::StoreError {
    crate::store::StoreError::Walk(e.to_string())
}

impl S3Catalog {
    async fn linked(&self, spec: PathSpec<'_>, digest: &Digest) -> Result<bool, StoreError> {
        Ok(matches!(self.0.read_link(spec).await.map_err(store_err)?, Some(d) if &d == digest))
    }
}

impl Catalog for S3Catalog {
    fn repositories(&self) -> Result<Vec<String>, StoreError> {
        on_blocking_thread(self.0.repositories()).map_err(store_err)
    }

    fn tags(&self, repo: &str) -> Result<Option<Vec<String>>, StoreError> {
        crate::reference::validate_repository(repo)?;
        on_blocking_thread(async {
            let tags = self
                .0
                .list_dir(PathSpec::Tags(repo))
                .await
                .map_err(store_err)?;
            if !tags.is_empty() {
                return Ok(Some(tags));
            }
            let any = self
                .0
                .list_dir(PathSpec::Repository(repo))
                .await
                .map_err(store_err)?;
            Ok((!any.is_empty()).then(Vec::new))
        })
    }

    fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>, StoreError> {
        crate::reference::validate_repository(repo)?;
        crate::reference::validate_tag(tag)?;
        on_blocking_thread(self.0.read_link(PathSpec::TagCurrentLink(repo, tag))).map_err(store_err)
    }

    fn manifest(&self, repo: &str, digest: &Digest) -> Result<Option<RawManifest>, StoreError> {
        crate::reference::validate_repository(repo)?;
        on_blocking_thread(async {
            if !self
                .linked(PathSpec::RevisionLink(repo, digest), digest)
                .await?
            {
                return Ok(None);
            }
            self.0.manifest(digest).await.map_err(store_err)
        })
    }

    fn blob(&self, repo: &str, digest: &Digest) -> Result<Option<BlobLocation>, StoreError> {
        crate::reference::validate_repository(repo)?;
        on_blocking_thread(async {
            if !self
                .linked(PathSpec::LayerLink(repo, digest), digest)
                .await?
            {
                return Ok(None);
            }
            let size = self.0.blob_size(digest).await.map_err(store_err)?;
            Ok(size.map(|size| BlobLocation {
                size,
                source: std::sync::Arc::new(S3Range {
                    root: self.0.clone(),
                    digest: digest.clone(),
                }),
            }))
        })
    }

    fn manifest_digests(&self, repo: &str) -> Result<Vec<Digest>, StoreError> {
        crate::reference::validate_repository(repo)?;
        let alg = crate::digest::Algorithm::Sha256;
        let hexes = on_blocking_thread(self.0.list_dir(PathSpec::RevisionsAlgorithm(repo, alg)))
            .map_err(store_err)?;
        Ok(hexes
            .iter()
            .filter_map(|h| Digest::from_hex(alg, h).ok())
            .collect())
    }
}

/// A blob in a bucket, read by range (what `serve` answers a GET or a Range request with): an
/// async stream of the object's range, read on the runtime.
struct S3Range {
    root: S3Root,
    digest: Digest,
}

impl RangeRead for S3Range {
    /// Blocking readers (none of ferry's paths: they take [`RangeRead::stream_range`]) are
    /// served on their own blocking thread, which waits on the request.
    fn open_range(&self, start: u64, len: u64) -> std::io::Result<Box<dyn Read + Send>> {
        if len == 0 {
            return Ok(Box::new(std::io::empty()));
        }
        let stream = on_blocking_thread(self.root.range_stream(&self.digest, start, len))
            .map_err(std::io::Error::other)?;
        Ok(Box::new(StreamRead {
            handle: tokio::runtime::Handle::current(),
            stream,
            chunk: bytes::Bytes::new(),
        }))
    }

    fn stream_range(&self, start: u64, len: u64) -> Option<crate::blob::ByteStream> {
        use futures_util::TryStreamExt;
        if len == 0 {
            return Some(Box::pin(futures_util::stream::empty()));
        }
        let (root, digest) = (self.root.clone(), self.digest.clone());
        // The request is made when the stream is first polled, on the runtime.
        let body = futures_util::stream::once(async move {
            root.range_stream(&digest, start, len)
                .await
                .map_err(std::io::Error::other)
        })
        .try_flatten();
        Some(Box::pin(body))
    }
}

/// A byte stream read as a blocking [`Read`] (on a blocking thread only).
struct StreamRead {
    handle: tokio::runtime::Handle,
    stream: crate::blob::ByteStream,
    chunk: bytes::Bytes,
}

impl Read for StreamRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use futures_util::StreamExt;
        while self.chunk.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                Some(c) => self.chunk = c?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// Splits a `registry-root:s3://BUCKET/PATH` reference into its root and image: the root's prefix
/// is the longest leading part of PATH's repository under which the bucket holds a layout; with
/// none, the root is the bucket's top and PATH names the repository. Credentials come from the AWS
/// environment and profile files, the endpoint from `endpoint` (`--s3-endpoint`) or those.
pub async fn resolve(
    bucket: &std::path::Path,
    reference: &Reference,
    endpoint: Option<&str>,
) -> Result<(S3Root, Reference)> {
    let url = bucket.to_string_lossy();
    let repo = reference.repository();
    let whole = reference.to_string();
    let parts: Vec<&str> = repo.split('/').collect();
    for k in (1..parts.len()).rev() {
        let prefix = parts[..k].join("/");
        let root = S3Root::open(&format!("{url}/{prefix}"), endpoint)?;
        if root.exists().await? {
            let rest = Reference::parse(&whole[prefix.len() + 1..]).map_err(|e| {
                TransportError::Invalid(format!("registry-root:{url}/{whole}: {e}"))
            })?;
            return Ok((root, rest));
        }
    }
    let root = S3Root::open(&url, endpoint)?;
    root.check().await?;
    Ok((root, reference.clone()))
}

/// Aborts the multipart uploads killed runs left open in the bucket root; a failure (a key not
/// allowed to list uploads) is a warning, not a reason to stop: it only costs storage.
pub async fn abort_stale_uploads(root: &S3Root) {
    match root.abort_stale_uploads().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            "{}: aborted {n} upload(s) left open by killed runs",
            root.url()
        ),
        Err(e) => tracing::warn!("{e} (uploads left open by killed runs stay for a later run)"),
    }
}
