//! The registry v2 storage root: verified atomic blob ingest, link files,
//! tags, whole-image linking, hardlink import from another root, and verify.
//!
//! Writes follow one rule: nothing becomes visible under its final name until
//! it is complete and checked. Blobs are written to a temp file in the same
//! file system, hashed while written, fsync'd, then hardlinked into place (an
//! existing blob is never replaced); small files are written to a temp file
//! and renamed over their final name.

mod blobs;
mod gc;
mod links;
pub mod paths;
pub mod s3;
mod s3_read;
mod s3_uploads;
mod verify;

use std::io;
use std::path::{Path, PathBuf};

pub use blobs::{BlobWriter, write_all_vectored};
pub use gc::GcReport;
pub use links::{CreatedLink, LinkKind, LinkReport, LinkStamp};
pub use s3_read::{Listing, RepoLinks};
pub use verify::{Fault, VerifyReport};

use crate::digest::{Digest, VerifyError};
use crate::manifest::ManifestError;
use crate::reference::ReferenceError;
use paths::{PathSpec, path_for};

/// What went wrong in the store; every variant names the object and, for I/O, the path and operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file-system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("writing blob", "reading link", …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Content did not match its digest or size.
    #[error("blob {digest}: {source}")]
    Verify {
        /// The digest the content was written as.
        digest: Digest,
        /// What did not match.
        source: VerifyError,
    },
    /// A blob that is not in the store.
    #[error("blob {0} is not in the store")]
    BlobUnknown(Digest),
    /// A manifest blob that does not parse.
    #[error("manifest {digest}: {source}")]
    Manifest {
        /// The manifest's digest.
        digest: Digest,
        /// Why it does not parse.
        source: ManifestError,
    },
    /// A link file whose content is not a digest.
    #[error("link {} holds {content:?}, not a digest", path.display())]
    BadLink {
        /// The link file.
        path: PathBuf,
        /// What it holds (truncated).
        content: String,
    },
    /// An invalid repository name or tag.
    #[error(transparent)]
    Name(#[from] ReferenceError),
    /// An index nested deeper than ferry follows (a loop, or a hostile manifest).
    #[error("manifest {0}: indexes nest deeper than {max} levels", max = crate::image::MAX_INDEX_DEPTH)]
    TooDeep(Digest),
    /// An image that cannot be walked for another reason.
    #[error("{0}")]
    Walk(String),
}

impl StoreError {
    fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A registry root directory (what distribution calls `rootdirectory`).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    durable: bool,
}

impl Store {
    /// Opens an existing root (or one to be filled); creates nothing yet.
    pub fn open(root: impl Into<PathBuf>) -> Store {
        Store {
            root: root.into(),
            durable: true,
        }
    }

    /// Opens a root and creates its layout directories, clearing temp files left by dead ferry processes.
    pub fn create(root: impl Into<PathBuf>) -> Result<Store> {
        let store = Store::open(root);
        for spec in [PathSpec::V2Root, PathSpec::Repositories, PathSpec::Temp] {
            let p = store.path(spec);
            std::fs::create_dir_all(&p).map_err(StoreError::io("creating directory", &p))?;
        }
        blobs::clear_stale_temps(&store.path(PathSpec::Temp));
        Ok(store)
    }

    /// Skips fsync for throwaway roots (tests, fixtures in temp dirs); data is still verified and renamed atomically.
    pub fn with_durable(mut self, durable: bool) -> Store {
        self.durable = durable;
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of a layout element under this root.
    pub fn path(&self, spec: PathSpec<'_>) -> PathBuf {
        path_for(&self.root, spec)
    }

    /// Whether the root has the `docker/registry/v2` directory at all.
    pub fn exists(&self) -> bool {
        self.path(PathSpec::V2Root).is_dir()
    }

    /// Every repository name in the root.
    pub fn repositories(&self) -> Result<Vec<String>> {
        let p = self.path(PathSpec::Repositories);
        paths::list_repositories(&self.root).map_err(StoreError::io("listing repositories in", p))
    }

    /// The tags of a repository, sorted.
    pub fn tags(&self, repo: &str) -> Result<Vec<String>> {
        crate::reference::validate_repository(repo)?;
        let p = self.path(PathSpec::Tags(repo));
        paths::list_tags(&self.root, repo).map_err(StoreError::io("listing tags in", p))
    }
}
