//! What the server reads from: a small trait, so a registry root and bundle
//! files read in place serve through the same handlers.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use crate::digest::Digest;
use crate::manifest::RawManifest;
use crate::store::{Store, StoreError};

pub use crate::registry::uploads::RangeRead;

/// A blob the server may send: its size and how to read it.
#[derive(Clone)]
pub struct BlobLocation {
    /// Its size.
    pub size: u64,
    /// Where its bytes are.
    pub source: Arc<dyn RangeRead>,
}

/// A blob that is a whole file.
struct FileRange(PathBuf);

impl RangeRead for FileRange {
    fn open_range(&self, start: u64, len: u64) -> io::Result<Box<dyn Read + Send>> {
        let mut f = std::fs::File::open(&self.0)?;
        f.seek(SeekFrom::Start(start))?;
        Ok(Box::new(f.take(len)))
    }
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
            size,
            source: Arc::new(FileRange(
                self.path(crate::store::paths::PathSpec::BlobData(digest)),
            )),
        }))
    }
}
