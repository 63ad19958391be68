//! `unbundle link`: merging a bundle into a registry root, also one a
//! registry is serving right now. Blobs are re-hashed as they stream in and
//! published only when they verify (never replacing one that is there); when
//! the whole archive has checked out, the blobs are synced to disk, then each
//! image is linked as a copy into a root links it (the one image walk), its
//! tag last.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::bundlefile::read::{BlobVisitor, ReadError, scan};
use crate::digest::Digest;
use crate::store::{Store, StoreError};

/// Why a bundle was not linked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The bundle was refused.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The target root failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `--no-clobber` and a tag would move.
    #[error(
        "{}:{} is {} in {}, the bundle has {}; refusing to move it (--no-clobber)",
        change.repository, change.tag, change.old.as_ref().map(ToString::to_string).unwrap_or_default(), root.display(), change.new
    )]
    WouldMoveTag {
        /// The move that was refused.
        change: Box<TagChange>,
        /// The root.
        root: PathBuf,
    },
}

/// A tag written by a link, with what it pointed at before.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TagChange {
    /// Repository.
    pub repository: String,
    /// Tag.
    pub tag: String,
    /// Its digest before (none for a new tag).
    pub old: Option<Digest>,
    /// Its digest now.
    pub new: Digest,
}

/// What a link did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct LinkSummary {
    /// Blobs written into the root.
    pub blobs_added: usize,
    /// Their bytes.
    pub bytes_added: u64,
    /// Blobs the root had already.
    pub blobs_present: usize,
    /// Every tag of the bundle; `old == Some(new)` means unchanged.
    pub tags: Vec<TagChange>,
}

struct Into<'a> {
    store: &'a Store,
    summary: &'a mut LinkSummary,
    on_blob: &'a dyn Fn(u64),
}

impl BlobVisitor for Into<'_> {
    fn blob(&mut self, digest: &Digest, size: u64, content: &mut dyn Read) -> io::Result<()> {
        (self.on_blob)(size);
        if self.store.has_blob(digest) {
            self.summary.blobs_present += 1;
            return Ok(()); // the scan still reads and re-hashes it
        }
        // The scan's reader verifies the bytes, so the writer need not hash them again.
        let mut w = self
            .store
            .blob_writer_prehashed()
            .map_err(io::Error::other)?;
        io::copy(content, &mut w)?;
        w.flush()?;
        w.commit_prehashed(digest, size).map_err(io::Error::other)?;
        self.summary.blobs_added += 1;
        self.summary.bytes_added += size;
        Ok(())
    }
}

/// Links `bundle` into the root at `root`; see the module docs. A re-run changes
/// nothing. `on_blob(size)` is called as each blob starts (for progress).
pub fn link(
    bundle: &Path,
    root: &Path,
    no_clobber: bool,
    on_blob: &dyn Fn(u64),
) -> Result<LinkSummary, LinkError> {
    let store = Store::create(root)?.with_durable(false);
    // Refuse a tag move before writing anything.
    let index = crate::bundlefile::read_index(bundle)?;
    if no_clobber {
        check_tags(&store, &index.images, root)?;
    }
    let mut summary = LinkSummary::default();
    let scan = scan(
        bundle,
        &mut Into {
            store: &store,
            summary: &mut summary,
            on_blob,
        },
    )?;
    store.sync_fs()?;
    if no_clobber {
        check_tags(&store, &scan.index.images, root)?;
    }
    // Each image through the one walk, as a copy into a root links it: its
    // blobs and manifests first, its tag last.
    for img in &scan.index.images {
        let old = match &img.tag {
            Some(t) => store.resolve_tag(&img.repository, t)?,
            None => None,
        };
        // Only the manifests the bundle brings: children of the same index that the
        // root holds from elsewhere stay out of this repository.
        let revisions = scan.repos.get(&img.repository).map(|r| &r.revisions);
        store.link_image_with(&img.repository, &img.digest, img.tag.as_deref(), &|d| {
            revisions.is_some_and(|r| r.contains(d))
        })?;
        if let Some(tag) = &img.tag {
            summary.tags.push(TagChange {
                repository: img.repository.clone(),
                tag: tag.clone(),
                old,
                new: img.digest.clone(),
            });
        }
    }
    store.sync_fs()?;
    Ok(summary)
}

fn check_tags(
    store: &Store,
    images: &[crate::bundlefile::format::BundleImage],
    root: &Path,
) -> Result<(), LinkError> {
    for img in images {
        let Some(tag) = &img.tag else { continue };
        if let Some(old) = store.resolve_tag(&img.repository, tag)?
            && old != img.digest
        {
            return Err(LinkError::WouldMoveTag {
                change: Box::new(TagChange {
                    repository: img.repository.clone(),
                    tag: tag.clone(),
                    old: Some(old),
                    new: img.digest.clone(),
                }),
                root: root.to_path_buf(),
            });
        }
    }
    Ok(())
}
