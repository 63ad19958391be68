//! `unbundle link`: merging a bundle into a registry root, also one a
//! registry is serving right now. Before anything is written, the free space
//! of the root is checked against what the index says is missing. Blobs are
//! re-hashed as they stream in and published only when they verify (never
//! replacing one that is there); a bundle refused halfway takes back every
//! blob (and directory) this run added, and none that was there before. When
//! the whole archive has checked out, the blobs are synced to disk, then each
//! image is linked as a copy into a root links it (the one image walk), its
//! tag last.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::space::{self, SpaceError};
use crate::limits::IO_BUFFER_BYTES;
use crate::store::paths::PathSpec;

use std::collections::HashSet;

use crate::bundlefile::delta::{self, Base};
use crate::bundlefile::read::{BlobVisitor, ReadError, scan, scan_checked};
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
    /// The target root has no room for what the bundle brings (checked before writing).
    #[error(transparent)]
    Space(#[from] SpaceError),
    /// Writing into the target root failed while the bundle was being read (the bundle is not to blame).
    #[error("{}{}: {source}", if is_no_space(source) { "no space left on " } else { "writing into " }, root.display())]
    Target {
        /// The root.
        root: PathBuf,
        /// What failed there.
        source: StoreError,
    },
    /// A delta whose left-out blobs are in neither the root nor `--base` (checked before writing).
    #[error(transparent)]
    Missing(#[from] Box<crate::bundlefile::delta::Missing>),
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

/// Whether a store error is the file system running out of room (or of quota, or a file-size limit).
fn is_no_space(e: &StoreError) -> bool {
    let StoreError::Io { source, .. } = e else {
        return false;
    };
    matches!(
        source.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG)
    )
}

struct Into<'a> {
    store: &'a Store,
    /// Only these blobs are taken (a delta's `--base` gives just what the root lacks).
    only: Option<&'a HashSet<Digest>>,
    summary: &'a mut LinkSummary,
    on_blob: &'a dyn Fn(u64),
    /// Blobs this run published, each with the directories it created (deepest first), to take back on refusal.
    added: Vec<(Digest, Vec<PathBuf>)>,
    /// The first write into the root that failed (so the error names the root, not the bundle).
    failed: Option<StoreError>,
}

impl Into<'_> {
    fn target_failed(&mut self, e: StoreError) -> io::Error {
        let msg = e.to_string();
        self.failed.get_or_insert(e);
        io::Error::other(msg)
    }

    /// Removes every blob this run added and the directories it created for them; nothing that was there before.
    fn roll_back(&mut self) {
        for (digest, dirs) in self.added.drain(..).rev() {
            let _ = std::fs::remove_file(self.store.path(PathSpec::BlobData(&digest)));
            for d in dirs {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

impl BlobVisitor for Into<'_> {
    fn blob(&mut self, digest: &Digest, size: u64, content: &mut dyn Read) -> io::Result<()> {
        if self.only.is_some_and(|o| !o.contains(digest)) {
            return Ok(()); // the scan still reads and re-hashes it
        }
        (self.on_blob)(size);
        if self.store.has_blob(digest) {
            self.summary.blobs_present += 1;
            return Ok(()); // the scan still reads and re-hashes it
        }
        // The directories this blob will create (data's parent up to `blobs`), deepest first.
        let data = self.store.path(PathSpec::BlobData(digest));
        let blobs = self.store.path(PathSpec::V2Root);
        let created: Vec<PathBuf> = data
            .ancestors()
            .skip(1)
            .take_while(|p| *p != blobs)
            .filter(|p| !p.exists())
            .map(Path::to_path_buf)
            .collect();
        // The scan's reader verifies the bytes, so the writer need not hash them again.
        let mut w = match self.store.blob_writer_prehashed() {
            Ok(w) => w,
            Err(e) => return Err(self.target_failed(e)),
        };
        let mut buf = vec![0u8; IO_BUFFER_BYTES];
        loop {
            let n = match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if let Err(e) = w.write_all(&buf[..n]) {
                let path = w.temp_path().to_path_buf();
                return Err(self.target_failed(StoreError::Io {
                    op: "writing",
                    path,
                    source: e,
                }));
            }
        }
        if let Err(e) = w.commit_prehashed(digest, size) {
            return Err(self.target_failed(e));
        }
        self.added.push((digest.clone(), created));
        self.summary.blobs_added += 1;
        self.summary.bytes_added += size;
        Ok(())
    }
}

/// Links `bundle` into the root at `root`; see the module docs. A re-run changes
/// nothing. `on_blob(size)` is called as each blob starts (for progress). A
/// delta's left-out blobs must be in the root or in `base` (checked before
/// anything is written); those the root lacks are taken from `base`. With `key`, the
/// signature is checked again on the very bytes unpacked, before any blob is written.
pub fn link(
    bundle: &Path,
    root: &Path,
    no_clobber: bool,
    base: Option<&Path>,
    key: Option<&crate::bundlefile::sign::VerifyingKey>,
    on_blob: &dyn Fn(u64),
) -> Result<LinkSummary, LinkError> {
    let index = crate::bundlefile::read_index(bundle)?;
    // A delta's left-out blobs: in the root, or in --base; nothing is written (not even the root's directories) otherwise.
    let base_index = match base {
        Some(b) => Some(Base::open(b)?),
        None => None,
    };
    let carried = base_index.as_ref().map(Base::carried).unwrap_or_default();
    let existing = Store::open(root);
    let from_base: HashSet<Digest> = delta::left_out(&index)
        .iter()
        .filter(|l| !existing.has_blob(&l.digest) && carried.contains(&l.digest))
        .map(|l| l.digest.clone())
        .collect();
    let place = match base {
        Some(b) => format!("{} and {}", root.display(), b.display()),
        None => root.display().to_string(),
    };
    let hint = match &index.since {
        Some(s) => format!(
            "link {} into the root first, or pass --base {}",
            s.name, s.name
        ),
        None => String::new(),
    };
    delta::check(bundle, &index, &place, &hint, &mut |l| {
        existing.has_blob(&l.digest) || carried.contains(&l.digest)
    })?;
    let store = Store::create(root)?.with_durable(false);
    // Refuse a tag move before writing anything.
    if no_clobber {
        check_tags(&store, &index.images, root)?;
    }
    // Room for every blob the root lacks, before a byte is written.
    let missing: u64 = index
        .blobs
        .iter()
        .filter(|b| !store.has_blob(&b.digest))
        .map(|b| b.size)
        .chain(
            delta::left_out(&index)
                .iter()
                .filter(|l| from_base.contains(&l.digest))
                .map(|l| l.size),
        )
        .fold(0u64, |n, b| n.saturating_add(b)); // sizes are the bundle's claims: never wrap
    space::check_one(root, missing)?;
    let mut summary = LinkSummary::default();
    let mut into = Into {
        store: &store,
        only: None,
        summary: &mut summary,
        on_blob,
        added: Vec::new(),
        failed: None,
    };
    // The blobs the root lacks come from the base first (verified like the delta's own).
    let from_base_scan = match base {
        Some(b) if !from_base.is_empty() => {
            into.only = Some(&from_base);
            let r = scan(b, &mut into).map(drop);
            into.only = None;
            r
        }
        _ => Ok(()),
    };
    let scanned = from_base_scan.and_then(|()| scan_checked(bundle, &mut into, key));
    // Every image must walk (manifests parse, configs and layers present) before
    // a single link is written; a bundle that fails here is refused like one
    // whose bytes are wrong, and takes its blobs back.
    let checked = scanned.map_err(LinkError::Read).and_then(|scan| {
        for img in &scan.index.images {
            let revisions = scan.repos.get(&img.repository).map(|r| &r.revisions);
            store.check_image_with(&img.digest, &|d| revisions.is_some_and(|r| r.contains(d)))?;
        }
        Ok(scan)
    });
    let scan = match checked {
        Ok(s) => s,
        Err(e) => {
            into.roll_back();
            let _ = store.sync_fs();
            return Err(match into.failed.take() {
                Some(source) => LinkError::Target {
                    root: root.to_path_buf(),
                    source,
                },
                None => e,
            });
        }
    };
    drop(into);
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
