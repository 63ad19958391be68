//! Where images come from and go to: one [`Source`] / [`Destination`] pair
//! of traits and one implementation per transport, named in skopeo's syntax
//! (`docker://`, `dir:`, `oci:`, `oci-archive:`, `docker-archive:`,
//! `docker-daemon:`) plus ferry's own `registry-root:` (a registry v2 root on
//! disk, no server) and `ferry-bundle:` (a bundle read in place).
//!
//! Everything that moves images goes through these traits; the copy engine
//! names no transport. The call order on a destination is part of the
//! contract (as in containers/image):
//!
//! 1. [`Destination::reuse_blob`] (or [`Destination::has_blob`]) / [`Destination::put_blob`]
//!    (or [`Destination::put_blob_opening`]) for every config and layer, in any order and
//!    concurrently (unless [`DestProperties::ordered_blobs`] says otherwise);
//! 2. [`Destination::put_manifest`] for every child manifest, children
//!    before the index that lists them;
//! 3. [`Destination::commit`] with the top manifest: it writes the top
//!    manifest and its name (tag). Nothing is named before commit, so a copy
//!    that fails leaves no tag; a destination that writes one file (an
//!    archive) deletes its temp output when dropped uncommitted.

pub mod bundle;
pub mod catalog;
pub mod daemon;
pub mod dir;
pub mod docker_archive;
pub mod locations;
pub mod oci;
pub mod oci_archive;
pub mod open;
pub mod registry;
pub mod root;
pub mod root_s3;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;

use crate::blob::BlobBody;
use crate::digest::Digest;
use crate::manifest::{Descriptor, RawManifest};
use crate::reference::{Reference, ReferenceError};

pub use catalog::Catalog;

/// Why a transport failed; names the image or path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A registry request failed.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// A registry root failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A registry root in a bucket failed (boxed: it names bucket and key).
    #[error(transparent)]
    S3(Box<crate::store::s3::S3Error>),
    /// A bundle was refused.
    #[error(transparent)]
    Bundle(#[from] crate::bundlefile::read::ReadError),
    /// A manifest does not parse or is of a kind the transport cannot hold.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// A file-system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The image or tag is not there.
    #[error("{0}")]
    NotFound(String),
    /// Content that does not match its digest or size.
    #[error("blob {digest}: {cause}")]
    Corrupt {
        /// The blob.
        digest: Digest,
        /// What did not match.
        cause: String,
    },
    /// A reference or path this transport cannot use.
    #[error("{0}")]
    Invalid(String),
    /// The transport cannot do this (a read-only source, an archive that holds one image).
    #[error("{0}")]
    Unsupported(String),
}

impl From<crate::store::s3::S3Error> for TransportError {
    fn from(e: crate::store::s3::S3Error) -> Self {
        TransportError::S3(Box::new(e))
    }
}

/// Result alias for transports.
pub type Result<T, E = TransportError> = std::result::Result<T, E>;

impl TransportError {
    /// An I/O error with its path and operation.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| TransportError::Io { op, path, source }
    }
}

/// Read access to one image (the reference given on the command line).
pub trait Source: Send + Sync {
    /// The image as the user named it, for messages.
    fn name(&self) -> String;

    /// The manifest the reference names (a tag resolved, or a pinned digest checked).
    fn top(&self) -> impl Future<Output = Result<RawManifest>> + Send;

    /// A manifest by digest; `None` when the source does not hold it (an absent child of a sparse index).
    fn manifest(&self, digest: &Digest)
    -> impl Future<Output = Result<Option<RawManifest>>> + Send;

    /// A config or layer blob. A [`BlobBody::Stream`] is verified by the source:
    /// it ends with an `InvalidData` error instead of ending cleanly when the bytes
    /// do not match `desc`. A [`BlobBody::Local`] is checked by the destination.
    fn blob(&self, desc: &Descriptor) -> impl Future<Output = Result<BlobBody>> + Send;

    /// Whether an index here may lack some of its children on purpose (a bundle or a
    /// root keeps only the platforms chosen); anywhere else a missing child is an error.
    fn holds_sparse_indexes(&self) -> bool {
        false
    }

    /// What the engine does with its uncompressed layers for a destination that stores layers
    /// compressed: kept by default, so an image already distributed (a registry, a root, a
    /// bundle) keeps its digest whatever mover carries it.
    fn plain_layers(&self) -> PlainLayers {
        PlainLayers::Keep
    }

    /// Whether a layer that lists URLs (a foreign layer) is read from its URLs before the
    /// source itself: true for a registry (containers/image's order, so a registry that
    /// lacks the layer is not asked first); anywhere else the source's own bytes come first
    /// and the URLs only when it lacks them ([`crate::copy::foreign`]).
    fn foreign_urls_first(&self) -> bool {
        false
    }

    /// The other tags of the same repository (a registry, a root, a bundle); a transport
    /// that holds one image says it cannot list.
    fn list_tags(&self) -> impl Future<Output = Result<Vec<String>>> + Send {
        let name = self.name();
        async move {
            Err(TransportError::Unsupported(format!(
                "{name}: this transport holds no list of tags"
            )))
        }
    }
}

/// Why [`read_small`] could not read a blob whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SmallBlobError {
    /// The descriptor claims more than the cap.
    #[error("{size} bytes, over the {cap}-byte cap")]
    TooLarge {
        /// What the descriptor claims.
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// The source could not give the blob.
    #[error("{0}")]
    Source(TransportError),
    /// The blob's stream failed.
    #[error("{0}")]
    Read(std::io::Error),
    /// The stream ran past the descriptor's size.
    #[error("longer than its descriptor says")]
    TooLong,
    /// The bytes do not match the descriptor's size or digest.
    #[error("{0}")]
    Verify(crate::digest::VerifyError),
}

/// Reads a small blob (a config) of `source` whole, at most
/// [`crate::limits::MAX_CONFIG_BYTES`], checked against its descriptor's size and digest.
pub async fn read_small<S: Source>(
    source: &S,
    desc: &Descriptor,
) -> std::result::Result<Vec<u8>, SmallBlobError> {
    use futures_util::StreamExt;
    let cap = crate::limits::MAX_CONFIG_BYTES;
    if desc.size > cap {
        return Err(SmallBlobError::TooLarge {
            size: desc.size,
            cap,
        });
    }
    let mut stream = source
        .blob(desc)
        .await
        .map_err(SmallBlobError::Source)?
        .into_stream();
    let mut out = Vec::with_capacity(desc.size as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(SmallBlobError::Read)?;
        if (out.len() + chunk.len()) as u64 > desc.size {
            return Err(SmallBlobError::TooLong);
        }
        out.extend_from_slice(&chunk);
    }
    crate::digest::check(
        &desc.digest,
        Some(desc.size),
        &Digest::sha256_of(&out),
        out.len() as u64,
    )
    .map_err(SmallBlobError::Verify)?;
    Ok(out)
}

/// Lets the image walk (and [`crate::image::platform_child`]) read manifests through any [`Source`].
pub struct SourceManifests<'a, S>(pub &'a S);

impl<S: Source> crate::image::Manifests for SourceManifests<'_, S> {
    type Error = TransportError;
    fn manifest(
        &self,
        digest: &Digest,
    ) -> impl Future<Output = Result<Option<RawManifest>>> + Send {
        self.0.manifest(digest)
    }
}

/// What happens to a source's uncompressed layers on the way to a destination that stores
/// layers compressed (`DestProperties::compresses_layers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainLayers {
    /// Copied as they are, digests kept: images already distributed (a registry, a root, a
    /// bundle), where a changed digest would orphan pins, signatures and referrers.
    Keep,
    /// Gzipped when their media type says plain tar, as skopeo does for its `dir:`, `oci:`
    /// and `oci-archive:` sources.
    GzipTyped,
    /// Every layer gzipped whatever its media type says: a `docker save` archive, whose
    /// layers are plain tar under a gzip label (containers/image's docker-archive source).
    GzipAll,
}

/// What a destination can hold, so the copy engine adapts without naming it.
#[derive(Debug, Clone, Default)]
pub struct DestProperties {
    /// Manifest media types it stores; empty means any. The engine converts
    /// (Docker ⇄ OCI) when the source's type is not among them.
    pub manifest_types: Vec<&'static str>,
    /// Whether it can hold an index and its children (`docker-archive:` cannot).
    pub accepts_index: bool,
    /// Whether it takes an index some of whose children are absent.
    pub accepts_sparse_index: bool,
    /// Whether blobs are to be taken in digest order (the layout's order): they still move
    /// `jobs` at a time, and the engine reports each as done in that order
    /// ([`crate::copy::Progress::blob_done`]), so a writer that packs front to back can follow.
    pub ordered_blobs: bool,
    /// Whether it wants layers compressed (containers/image's `DesiredLayerCompression` is
    /// `Compress`: a registry, an OCI layout): a source's uncompressed layers are gzipped.
    pub compresses_layers: bool,
}

/// Why [`Destination::put_blob_opening`] failed: the source could not give the bytes, or the
/// destination failed; the copy names the side.
#[derive(Debug)]
pub enum OpeningPutError {
    /// The source's cause; nothing was written.
    Source(String),
    /// The destination failed.
    Destination(TransportError),
}

/// How a blob reached a destination, for summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// It was there.
    Present,
    /// Mounted from another repository of the same registry.
    Mounted,
    /// Written or uploaded.
    Written,
}

/// The top manifest of a source that keeps tags and manifests itself (a registry root on disk or
/// in a bucket): the reference's digest, or its tag (the default one when none) through
/// `tag_digest`, then the manifest through `manifest`; each absence named after `name`.
pub(crate) async fn top_by_reference(
    name: &str,
    reference: &Reference,
    tag_digest: impl AsyncFnOnce(&str) -> Result<Option<Digest>>,
    manifest: impl AsyncFnOnce(&Digest) -> Result<Option<RawManifest>>,
) -> Result<RawManifest> {
    let digest = match reference.digest() {
        Some(d) => d.clone(),
        None => {
            let tag = reference
                .effective_tag()
                .unwrap_or(crate::reference::DEFAULT_TAG);
            tag_digest(tag)
                .await?
                .ok_or_else(|| TransportError::NotFound(format!("{name}: tag {tag} not found")))?
        }
    };
    manifest(&digest)
        .await?
        .ok_or_else(|| TransportError::NotFound(format!("{name}: manifest {digest} not found")))
}

/// A destination's name in errors and progress: `PREFIX/REPO[:TAG]`, as the user wrote it.
pub fn dest_name(prefix: &str, repo: &str, tag: Option<&str>) -> String {
    match tag {
        Some(t) => format!("{prefix}/{repo}:{t}"),
        None => format!("{prefix}/{repo}"),
    }
}

/// Write access for one image; see the module docs for the call order.
pub trait Destination: Send + Sync {
    /// The image as the user named it, for messages.
    fn name(&self) -> String;

    /// What it can hold.
    fn properties(&self) -> DestProperties;

    /// Starts, without waiting, what the destination will want to know before its first blob
    /// (a registry: whether the repository is new), so it overlaps the reading of the source;
    /// called once, before any blob. The default needs nothing.
    fn prepare(&self) {}

    /// Whether the blob is there already (so it need not be read from the source).
    fn has_blob(&self, desc: &Descriptor) -> impl Future<Output = Result<bool>> + Send;

    /// Makes the blob present without its bytes when it can (it is there, or is mounted from
    /// another repository of the same registry), so the source is read only for blobs that
    /// must move; `None` when the bytes are needed.
    fn reuse_blob(&self, desc: &Descriptor) -> impl Future<Output = Result<Option<Put>>> + Send {
        async move { Ok(self.has_blob(desc).await?.then_some(Put::Present)) }
    }

    /// Writes a blob, verified against `desc` before it becomes visible; a no-op when present.
    fn put_blob(
        &self,
        desc: &Descriptor,
        body: BlobBody,
    ) -> impl Future<Output = Result<Put>> + Send;

    /// [`Destination::put_blob`] for bytes the source is still opening: a destination that
    /// must ask something before it takes bytes (a registry opens an upload session) asks
    /// while the source answers, so a copy waits for one round trip, not two in a row. `open`
    /// fails with the source's cause ([`OpeningPutError::Source`]). The default opens, then puts.
    fn put_blob_opening(
        &self,
        desc: &Descriptor,
        open: impl Future<Output = std::result::Result<BlobBody, String>> + Send,
    ) -> impl Future<Output = std::result::Result<Put, OpeningPutError>> + Send {
        async move {
            let body = open.await.map_err(OpeningPutError::Source)?;
            self.put_blob(desc, body)
                .await
                .map_err(OpeningPutError::Destination)
        }
    }

    /// Writes a child manifest (after its blobs and children, before its parents).
    fn put_manifest(&self, manifest: &RawManifest) -> impl Future<Output = Result<()>> + Send;

    /// Writes the top manifest and names it; the last call of a copy.
    fn commit(&self, top: &RawManifest) -> impl Future<Output = Result<()>> + Send;

    /// Whether a layer that lists URLs (a foreign, non-distributable layer) may be left out
    /// and only named by its descriptor, as registries, roots and OCI layouts keep it; when
    /// false (`dir:`, `docker-archive:`, the daemon) its bytes are fetched and written like
    /// any layer's. containers/image's `AcceptsForeignLayerURLs`.
    fn accepts_foreign_layer_urls(&self) -> bool {
        true
    }

    /// Whether manifests of several images (and the children of one index) may be written
    /// at once: true only where each write is independent (a registry), so the engine
    /// overlaps their round trips; a file layout that keeps one index takes them one by one.
    fn concurrent_manifests(&self) -> bool {
        false
    }
}

/// An image reference in skopeo's `transport:reference` syntax, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `docker://HOST/REPO[:TAG|@DIGEST]`.
    Docker(Reference),
    /// `dir:PATH`.
    Dir(PathBuf),
    /// `oci:PATH[:REF]`.
    Oci(PathBuf, Option<String>),
    /// `oci-archive:PATH[:REF]`.
    OciArchive(PathBuf, Option<String>),
    /// `docker-archive:PATH[:REF]`.
    DockerArchive(PathBuf, Option<String>),
    /// `docker-daemon:NAME[:TAG]`.
    DockerDaemon(Reference),
    /// `registry-root:ROOT/REPO[:TAG|@DIGEST]` (ROOT is a directory holding `docker/registry/v2`).
    RegistryRoot(PathBuf, Reference),
    /// `ferry-bundle:FILE[:REPO[:TAG|@DIGEST]]`.
    Bundle(PathBuf, Option<Reference>),
}

/// The transports, for messages.
pub const TRANSPORTS: &str = "docker://, dir:, oci:, oci-archive:, docker-archive:, docker-daemon:, registry-root:, ferry-bundle:";

/// `PATH[:REF]` split at the first colon, as containers/image splits it (a REF may hold `/` and `:`).
fn split_path_ref(rest: &str) -> (PathBuf, Option<String>) {
    match rest.split_once(':') {
        Some((p, r)) if !p.is_empty() && !r.is_empty() => (PathBuf::from(p), Some(r.to_string())),
        Some((p, _)) => (PathBuf::from(p), None),
        None => (PathBuf::from(rest), None),
    }
}

fn parse_ref(what: &str, s: &str) -> Result<Reference> {
    Reference::parse(s).map_err(|e: ReferenceError| TransportError::Invalid(format!("{what}: {e}")))
}

impl ImageRef {
    /// Parses `transport:reference` exactly as skopeo does (the transport is everything before the first colon).
    pub fn parse(s: &str) -> Result<ImageRef> {
        let Some((transport, rest)) = s.split_once(':') else {
            return Err(TransportError::Invalid(format!(
                "{s:?} names no transport; use one of {TRANSPORTS}"
            )));
        };
        let empty =
            |t: &str| TransportError::Invalid(format!("{s:?}: {t} needs a path or reference"));
        if rest.is_empty() {
            return Err(empty(transport));
        }
        Ok(match transport {
            "docker" => {
                let r = rest.strip_prefix("//").ok_or_else(|| {
                    TransportError::Invalid(format!(
                        "{s:?}: docker references start with docker://"
                    ))
                })?;
                ImageRef::Docker(parse_ref(s, r)?)
            }
            "dir" => ImageRef::Dir(PathBuf::from(rest)),
            "oci" => {
                let (p, r) = split_path_ref(rest);
                ImageRef::Oci(p, r)
            }
            "oci-archive" => {
                let (p, r) = split_path_ref(rest);
                ImageRef::OciArchive(p, r)
            }
            "docker-archive" => {
                let (p, r) = split_path_ref(rest);
                ImageRef::DockerArchive(p, r)
            }
            "docker-daemon" => ImageRef::DockerDaemon(parse_ref(s, rest)?),
            "registry-root" if rest.starts_with("s3://") => {
                // s3://BUCKET/PATH: which leading part of PATH is the root's prefix is asked of
                // the bucket when the image is opened (root_s3::resolve); parsed whole here.
                let (bucket, path) =
                    rest.split_at(rest[5..].find('/').map_or(rest.len(), |i| i + 5));
                let path = path.strip_prefix('/').unwrap_or(path);
                if path.is_empty() {
                    return Err(TransportError::Invalid(format!(
                        "{s:?}: write registry-root:s3://BUCKET[/PREFIX]/REPO[:TAG]"
                    )));
                }
                ImageRef::RegistryRoot(PathBuf::from(bucket), parse_ref(s, path)?)
            }
            "registry-root" => {
                // ROOT is the longest prefix that is a directory holding the layout (or, for a
                // root to be created, an empty directory); the rest is REPO[:TAG|@DIGEST].
                let cuts: Vec<usize> = rest
                    .match_indices('/')
                    .map(|(i, _)| i)
                    .filter(|&i| i > 0)
                    .collect();
                let is_empty_dir =
                    |p: &str| std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_none());
                let root_end = cuts
                    .iter()
                    .rev()
                    .find(|&&i| crate::store::Store::open(&rest[..i]).exists())
                    .or_else(|| cuts.iter().rev().find(|&&i| is_empty_dir(&rest[..i])))
                    .copied()
                    .ok_or_else(|| {
                        TransportError::Invalid(format!(
                            "{s:?}: no registry root (a directory holding docker/registry/v2, or an empty one) \
                             before the repository; write registry-root:ROOT/REPO[:TAG]"
                        ))
                    })?;
                ImageRef::RegistryRoot(
                    PathBuf::from(&rest[..root_end]),
                    parse_ref(s, &rest[root_end + 1..])?,
                )
            }
            "ferry-bundle" => {
                let (path, r) = match rest.split_once(':') {
                    Some((p, r)) if !r.is_empty() => (p, Some(parse_ref(s, r)?)),
                    _ => (rest, None),
                };
                ImageRef::Bundle(PathBuf::from(path), r)
            }
            other => {
                return Err(TransportError::Invalid(format!(
                    "unknown transport {other:?} in {s:?}; use one of {TRANSPORTS}"
                )));
            }
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |r: &Option<String>| r.as_deref().map(|r| format!(":{r}")).unwrap_or_default();
        match self {
            ImageRef::Docker(r) => write!(f, "docker://{r}"),
            ImageRef::Dir(p) => write!(f, "dir:{}", p.display()),
            ImageRef::Oci(p, r) => write!(f, "oci:{}{}", p.display(), opt(r)),
            ImageRef::OciArchive(p, r) => write!(f, "oci-archive:{}{}", p.display(), opt(r)),
            ImageRef::DockerArchive(p, r) => write!(f, "docker-archive:{}{}", p.display(), opt(r)),
            ImageRef::DockerDaemon(r) => write!(f, "docker-daemon:{r}"),
            ImageRef::RegistryRoot(p, r) => write!(f, "registry-root:{}/{r}", p.display()),
            ImageRef::Bundle(p, r) => match r {
                Some(r) => write!(f, "ferry-bundle:{}:{r}", p.display()),
                None => write!(f, "ferry-bundle:{}", p.display()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_skopeo_syntax() {
        let ok = [
            (
                "docker://127.0.0.1:5000/a/b:1",
                "docker://127.0.0.1:5000/a/b:1",
            ),
            ("dir:/tmp/x", "dir:/tmp/x"),
            ("oci:/tmp/lay:v1", "oci:/tmp/lay:v1"),
            ("oci:/tmp/lay", "oci:/tmp/lay"),
            ("oci-archive:/tmp/a.tar:x", "oci-archive:/tmp/a.tar:x"),
            ("docker-archive:/tmp/a.tar", "docker-archive:/tmp/a.tar"),
            (
                "docker-archive:/tmp/a.tar:x/y:1",
                "docker-archive:/tmp/a.tar:x/y:1",
            ),
            (
                "ferry-bundle:/b.tar.zst:app/web:1",
                "ferry-bundle:/b.tar.zst:app/web:1",
            ),
        ];
        for (s, want) in ok {
            assert_eq!(ImageRef::parse(s).unwrap().to_string(), want, "{s}");
        }
        for bad in [
            "nothing",
            "ftp:/x",
            "docker:/x",
            "docker://",
            "dir:",
            "docker://UPPER/x",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
        let e = ImageRef::parse("ftp:/x").unwrap_err().to_string();
        assert!(e.contains("unknown transport \"ftp\""), "{e}");
    }
}
