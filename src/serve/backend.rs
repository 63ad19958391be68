//! What the server reads from: a small trait, so a registry root today and a
//! bundle file read in place later serve through the same handlers.

use std::path::PathBuf;

use crate::digest::Digest;
use crate::manifest::RawManifest;
use crate::store::{Store, StoreError};

/// Where a blob's bytes are: a byte range of a file.
#[derive(Debug, Clone)]
pub struct BlobLocation {
    /// The file.
    pub path: PathBuf,
    /// Offset of the first byte.
    pub offset: u64,
    /// Length.
    pub size: u64,
}

/// Read access to images, scoped by repository as distribution scopes it (only what a repository links is served from it).
pub trait Backend: Send + Sync + 'static {
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
}

impl Backend for Store {
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
            path: self.path(crate::store::paths::PathSpec::BlobData(digest)),
            offset: 0,
            size,
        }))
    }
}
