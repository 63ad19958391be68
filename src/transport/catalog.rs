//! Read access to a whole collection of images, scoped by repository as
//! distribution scopes it: a registry root, or bundle files read in place.
//! `serve` answers from it, and the `registry-root:` and `ferry-bundle:`
//! sources read one image of it.

use std::sync::Arc;

use crate::digest::Digest;
use crate::manifest::RawManifest;
use crate::store::{Store, StoreError};

use super::{Result as TResult, Source, TransportError};
use crate::blob::{BlobBody, BlobLocation, FileRange};
use crate::manifest::Descriptor;
use crate::reference::Reference;

/// Read access to images, scoped by repository as distribution scopes it (only what a repository links is served from it).
pub trait Catalog: Send + Sync + 'static {
    /// Every repository.
    fn repositories(&self) -> Result<Vec<String>, StoreError>;
    /// The tags of a repository; `None` when the repository does not exist.
    fn tags(&self, repo: &str) -> Result<Option<Vec<String>>, StoreError>;
    /// The digest a tag points at.
    fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>, StoreError>;
    /// A manifest the repository links.
    fn manifest(&self, repo: &str, digest: &Digest) -> Result<Option<RawManifest>, StoreError>;
    /// A config or layer blob the repository links.
    fn blob(&self, repo: &str, digest: &Digest) -> Result<Option<BlobLocation>, StoreError>;
    /// Every manifest the repository links (empty when it does not exist), so `serve` can list referrers.
    fn manifest_digests(&self, repo: &str) -> Result<Vec<Digest>, StoreError>;
    /// The root that pushes and deletes write into, when this catalog is one (bundles read in place are not).
    fn writable(&self) -> Option<&Store> {
        None
    }
}

impl Catalog for Store {
    fn repositories(&self) -> Result<Vec<String>, StoreError> {
        Store::repositories(self)
    }

    fn tags(&self, repo: &str) -> Result<Option<Vec<String>>, StoreError> {
        if !self
            .path(crate::store::paths::PathSpec::Repository(repo))
            .is_dir()
        {
            return Ok(None);
        }
        Store::tags(self, repo).map(Some)
    }

    fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>, StoreError> {
        Store::resolve_tag(self, repo, tag)
    }

    fn manifest(&self, repo: &str, digest: &Digest) -> Result<Option<RawManifest>, StoreError> {
        if !self.has_revision(repo, digest) {
            return Ok(None);
        }
        match self.read_manifest(digest) {
            Ok(m) => Ok(Some(m)),
            Err(StoreError::BlobUnknown(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn blob(&self, repo: &str, digest: &Digest) -> Result<Option<BlobLocation>, StoreError> {
        if !self.has_layer_link(repo, digest) {
            return Ok(None);
        }
        Ok(self.blob_size(digest)?.map(|size| BlobLocation {
            size,
            source: Arc::new(FileRange(
                self.path(crate::store::paths::PathSpec::BlobData(digest)),
            )),
        }))
    }

    fn manifest_digests(&self, repo: &str) -> Result<Vec<Digest>, StoreError> {
        self.revisions(repo)
    }

    fn writable(&self) -> Option<&Store> {
        Some(self)
    }
}

/// A manifest read from a catalog must hash to the digest it was read by (a bundle
/// opened without hashing every blob is checked here, manifest by manifest).
fn checked(m: RawManifest, digest: &Digest) -> TResult<RawManifest> {
    if m.digest() != digest {
        return Err(TransportError::Corrupt {
            digest: digest.clone(),
            cause: format!("the manifest's bytes hash to {}", m.digest()),
        });
    }
    Ok(m)
}

/// One image of a [`Catalog`], as a [`Source`]: the `registry-root:` and `ferry-bundle:` transports.
pub struct CatalogSource<C: Catalog> {
    catalog: Arc<C>,
    repo: String,
    reference: Reference,
    name: String,
}

impl<C: Catalog> CatalogSource<C> {
    /// The image `reference` (its repository, tag or digest) of `catalog`; `name` is how the user wrote it.
    pub fn new(catalog: Arc<C>, reference: Reference, name: String) -> CatalogSource<C> {
        CatalogSource {
            catalog,
            repo: reference.repository().to_string(),
            reference,
            name,
        }
    }
}

impl<C: Catalog> Source for CatalogSource<C> {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn top(&self) -> TResult<RawManifest> {
        let tag_digest = async |tag: &str| Ok(self.catalog.resolve_tag(&self.repo, tag)?);
        let manifest = async |d: &Digest| match self.catalog.manifest(&self.repo, d)? {
            Some(m) => checked(m, d).map(Some),
            None => Ok(None),
        };
        super::top_by_reference(&self.name, &self.reference, tag_digest, manifest).await
    }

    async fn manifest(&self, digest: &Digest) -> TResult<Option<RawManifest>> {
        self.catalog
            .manifest(&self.repo, digest)?
            .map(|m| checked(m, digest))
            .transpose()
    }

    fn holds_sparse_indexes(&self) -> bool {
        true
    }

    async fn blob(&self, desc: &Descriptor) -> TResult<BlobBody> {
        let loc = self
            .catalog
            .blob(&self.repo, &desc.digest)?
            .ok_or_else(|| {
                TransportError::NotFound(format!("{}: blob {} not found", self.name, desc.digest))
            })?;
        if loc.size != desc.size {
            return Err(TransportError::Corrupt {
                digest: desc.digest.clone(),
                cause: format!("{} bytes held, the manifest says {}", loc.size, desc.size),
            });
        }
        Ok(BlobBody::Local(loc))
    }

    async fn list_tags(&self) -> TResult<Vec<String>> {
        self.catalog
            .tags(&self.repo)?
            .ok_or_else(|| TransportError::NotFound(format!("{}: no such repository", self.name)))
    }
}
