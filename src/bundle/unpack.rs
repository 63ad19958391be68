//! `unbundle link`: merging a bundle into a registry root, also one a
//! registry is serving right now. Before anything is written, the free space
//! of the root is checked against what the index says is missing. Blobs are
//! re-hashed as they are written and published only when they verify (never
//! replacing one that is there); a bundle refused halfway takes back every
//! blob (and directory) this run added, and none that was there before. Each
//! image is a copy engine copy from the bundle (read in place) into the root,
//! staged: when every copy and the whole archive have checked out, the blobs
//! are synced to disk, then each image is linked, its tag last.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::space::{self, SpaceError};
use crate::limits::IO_BUFFER_BYTES;
use crate::store::paths::PathSpec;

use std::collections::HashSet;
use std::sync::Arc;

use crate::blob::{BlobBody, BlobLocation, FileRange};
use crate::bundlefile::delta::{self, Base};
use crate::bundlefile::read::{
    self, BlobVisitor, BundleFile, ReadError, Repo, Scan, StructureOnly, scan, scan_checked,
};
use crate::copy::{CopyError, CopyOptions, Job, MultiArch};
use crate::digest::Digest;
use crate::manifest::Descriptor;
use crate::reference::Reference;
use crate::store::{Store, StoreError};
use crate::transport::Destination;
use crate::transport::TransportError;
use crate::transport::bundle::Bundles;
use crate::transport::catalog::{Catalog, CatalogSource};
use crate::transport::root::{RootDest, Staging, remove_added_blob};

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
    /// `--base` is not the bundle the delta was made against (checked before writing).
    #[error(transparent)]
    Base(#[from] Box<crate::bundlefile::delta::BaseError>),
    /// An image of the bundle could not be copied into the root (its manifests do not walk).
    #[error(transparent)]
    Copy(Box<CopyError>),
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
}

impl BlobVisitor for Into<'_> {
    fn blob(&mut self, digest: &Digest, size: u64, content: &mut dyn Read) -> io::Result<()> {
        if self.only.is_some_and(|o| !o.contains(digest)) {
            return Ok(()); // the scan still reads and re-hashes it
        }
        (self.on_blob)(size);
        if self.store.has_blob(digest) {
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
/// nothing. `on_blob(size)` is called as each blob is taken (for progress). A
/// delta's left-out blobs must be in the root or in `base` (checked before
/// anything is written); those the root lacks are taken from `base`. With `key`, the
/// signature is checked again on the very bytes unpacked, before any blob is written.
///
/// Each image is a copy (the copy engine) from the bundle into the root, all of them
/// staged ([`Staging`]): blobs move `jobs` at a time, read in place from a seekable or
/// plain bundle and hashed as they are written (on every core); a bundle that cannot
/// be read in place (zstd without a seek table) has its blobs put into the root by
/// its one streaming read, verified, and the copies then find them there. No image is
/// linked until every copy has gone through and every other blob of the bundle has
/// been re-hashed; otherwise every blob this run added is taken back. Runs on a
/// multi-threaded runtime (its file-system reads use `block_in_place`).
pub async fn link(
    bundle: &Path,
    root: &Path,
    no_clobber: bool,
    base: Option<&Path>,
    key: Option<&crate::bundlefile::sign::VerifyingKey>,
    jobs: usize,
    on_blob: &(dyn Fn(u64) + Sync),
) -> Result<LinkSummary, LinkError> {
    let index = crate::bundlefile::read_index(bundle)?;
    // A delta's left-out blobs: in the root, or in --base; nothing is written (not even the root's directories) otherwise.
    let base_index = match base {
        Some(b) => {
            let opened = Base::open(b)?;
            delta::check_base(bundle, &index, b, &opened.digest)?;
            Some(opened)
        }
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
    let blobs_present = index
        .blobs
        .iter()
        .filter(|b| store.has_blob(&b.digest))
        .count();
    let mut summary = LinkSummary {
        blobs_present,
        ..LinkSummary::default()
    };
    let mut into = Into {
        store: &store,
        only: None,
        summary: &mut summary,
        on_blob,
        added: Vec::new(),
        failed: None,
    };
    let staging = Arc::new(Staging::default());
    let mut in_place: Vec<Arc<BundleFile>> = Vec::new();
    // Read every bundle once for its structure (and its signature); one that cannot be
    // read in place is ingested by that read. The base first: it gives what the root lacks.
    let opened = tokio::task::block_in_place(|| -> Result<(Scan, bool), ReadError> {
        if let Some(b) = base
            && !from_base.is_empty()
        {
            if read::in_place(b)? {
                in_place.push(BundleFile::open_with(b, &mut StructureOnly)?);
            } else {
                into.only = Some(&from_base);
                let r = scan(b, &mut into).map(drop);
                into.only = None;
                r?;
            }
        }
        if read::in_place(bundle)? {
            let b = BundleFile::open_checked(bundle, &mut StructureOnly, key)?;
            let scan = b.scan.clone();
            in_place.insert(0, b);
            Ok((scan, true))
        } else {
            Ok((scan_checked(bundle, &mut into, key)?, false))
        }
    });
    let streamed = std::mem::take(&mut into.added);
    let target_failed = into.failed.take();
    drop(into);
    // The removals are synced only when there were some: a `syncfs` waits for every dirty page
    // of the file system (other writers' too), seconds on a busy machine, and a refusal that
    // wrote nothing must stay quick.
    let take_back = |staging: &Staging| {
        let mut removed = staging.roll_back(&store);
        if !streamed.is_empty() {
            // As in `Staging::roll_back`: no list of repositories, no removal.
            match store.repositories() {
                Ok(repos) => {
                    removed = true;
                    for (digest, dirs) in streamed.iter().rev() {
                        remove_added_blob(&store, &repos, digest, dirs);
                    }
                }
                Err(e) => tracing::warn!(
                    "rolling back: listing repositories: {e}; added blobs left in place"
                ),
            }
        }
        if removed {
            let _ = store.sync_fs();
        }
    };
    let (scan, main_in_place) = match opened {
        Ok(s) => s,
        Err(e) => {
            take_back(&staging);
            return Err(match target_failed {
                Some(source) => LinkError::Target {
                    root: root.to_path_buf(),
                    source,
                },
                None => LinkError::Read(e),
            });
        }
    };
    let bundles = Bundles(in_place);
    let catalog = Arc::new(LinkCatalog {
        repos: scan.repos.clone(),
        bundles: Bundles(bundles.0.clone()),
        root: store.clone(),
    });
    let fail_reference =
        std::env::var(crate::limits::ENV_FAIL_LINK_AT).is_ok_and(|v| v == "reference");
    let copies: Result<Vec<Job<_, _>>, ReadError> = scan
        .index
        .images
        .iter()
        .map(|img| {
            let name = crate::bundlefile::format::image_name(
                &img.repository,
                img.tag.as_deref(),
                &img.digest,
            );
            let written = if fail_reference {
                format!("{}@test-hook", img.repository)
            } else {
                format!("{}@{}", img.repository, img.digest)
            };
            let r = Reference::parse(&written).map_err(|e| ReadError::Index {
                bundle: bundle.to_path_buf(),
                why: format!("image {name}: {e}"),
            })?;
            Ok(Job {
                source: CatalogSource::new(catalog.clone(), r, name),
                destination: RootDest::staged(
                    store.clone(),
                    img.repository.clone(),
                    img.tag.clone(),
                    staging.clone(),
                ),
            })
        })
        .collect();
    let copies = match copies {
        Ok(c) => c,
        Err(e) => {
            take_back(&staging);
            return Err(e.into());
        }
    };
    let opts = CopyOptions {
        multi_arch: MultiArch::All,
        jobs: jobs.max(1),
        ..CopyOptions::default()
    };
    let copied = crate::copy::copy_all(copies, &opts, &OnBlob(on_blob))
        .await
        .map_err(|e| copy_failed(e, bundle, root));
    // Every blob of the bundle the copies did not hash (one the root had, or one no image
    // uses) is re-hashed in place: the bundle is linked whole or not at all.
    // A bundle read by streaming had every blob hashed (and put in the root) by that read.
    let checked = match (copied, bundles.0.first().filter(|_| main_in_place)) {
        (Ok(_), Some(b)) => {
            let rest: Vec<Digest> = scan
                .blobs
                .keys()
                .filter(|d| !staging.verified(d))
                .cloned()
                .collect();
            let dest = RootDest::staged(store.clone(), String::new(), None, staging.clone());
            take_rest(b, &rest, &dest, jobs).await
        }
        (r, _) => r.map(drop),
    };
    if let Err(e) = checked {
        take_back(&staging);
        return Err(e);
    }
    let (added, bytes) = staging.added();
    summary.blobs_added += added;
    summary.bytes_added += bytes;
    if no_clobber && let Err(e) = check_tags(&store, &scan.index.images, root) {
        take_back(&staging);
        return Err(e);
    }
    crate::limits::test_pause(crate::limits::ENV_LINK_PAUSE_MS);
    // One sync, then each image's links, its tag last; a failure takes back the links
    // already made (in finish) and the blobs this run added.
    let finished = tokio::task::block_in_place(|| {
        staging.finish(&store, |img| {
            if let Some(tag) = &img.tag {
                summary.tags.push(TagChange {
                    repository: img.repo.clone(),
                    tag: tag.clone(),
                    old: store.resolve_tag(&img.repo, tag)?,
                    new: img.top.clone(),
                });
            }
            Ok(())
        })
    });
    if let Err(e) = finished {
        take_back(&staging);
        return Err(e.into());
    }
    Ok(summary)
}

/// The blobs of a bundle read in place that no copy took (ones no image uses, or ones the
/// root had): each is put into the root like any other (verified, staged) when the root
/// lacks it, else re-hashed where it is; `jobs` at a time. The first that does not match
/// (or cannot be written) refuses the bundle.
async fn take_rest(
    bundle: &Arc<BundleFile>,
    digests: &[Digest],
    dest: &RootDest,
    jobs: usize,
) -> Result<(), LinkError> {
    use futures_util::StreamExt;
    let root = dest.store().root().to_path_buf();
    futures_util::stream::iter(digests)
        .map(|d| {
            let root = root.clone();
            async move {
                let (offset, size) = bundle.scan.blobs[d];
                if !dest.store().has_blob(d) {
                    let loc = Bundles(vec![bundle.clone()])
                        .any_blob(d)
                        .expect("the bundle holds it");
                    let desc = Descriptor {
                        media_type: String::new(),
                        digest: d.clone(),
                        size,
                        platform: None,
                        urls: Vec::new(),
                        annotations: Default::default(),
                    };
                    return dest
                        .put_blob(&desc, BlobBody::Local(loc))
                        .await
                        .map(drop)
                        .map_err(|source| {
                            let e = CopyError::Destination {
                                image: dest.name(),
                                source: Box::new(source),
                            };
                            copy_failed(e, bundle.path(), &root)
                        });
                }
                let (b, d) = (bundle.clone(), d.clone());
                crate::task::unblock(move || rehash(&b, &d, offset, size))
                    .await
                    .unwrap_or_else(|source| {
                        Err(LinkError::Read(ReadError::Io {
                            bundle: bundle.path().to_path_buf(),
                            op: "reading a blob",
                            source,
                        }))
                    })
            }
        })
        .buffer_unordered(jobs.max(1))
        // Every put that started has ended before this returns (none publishes after a roll-back).
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Re-hashes one blob of a bundle read in place.
fn rehash(bundle: &Arc<BundleFile>, d: &Digest, offset: u64, size: u64) -> Result<(), LinkError> {
    let mut r =
        crate::digest::VerifyingReader::new(bundle.read_range(offset, size), d.clone(), Some(size));
    io::copy(&mut r, &mut io::sink()).map(drop).map_err(|e| {
        LinkError::Read(match e.kind() {
            io::ErrorKind::InvalidData => ReadError::Corrupt {
                bundle: bundle.path().to_path_buf(),
                digest: d.clone(),
                cause: e.to_string(),
            },
            _ => ReadError::Io {
                bundle: bundle.path().to_path_buf(),
                op: "reading a blob",
                source: e,
            },
        })
    })
}

/// The copy engine's progress, as link's callers hear it: each blob's size as it is taken.
struct OnBlob<'a>(&'a (dyn Fn(u64) + Sync));
impl crate::copy::Progress for OnBlob<'_> {
    fn fetched(&self, bytes: u64) {
        (self.0)(bytes)
    }
}

/// A failed copy as link names it: bytes that do not match are the bundle's fault,
/// a write that failed is the root's, anything else is the image's.
fn copy_failed(e: CopyError, bundle: &Path, root: &Path) -> LinkError {
    let first = match e {
        CopyError::Several(mut v) if !v.is_empty() => v.swap_remove(0),
        e => e,
    };
    let CopyError::Destination { image, source } = first else {
        return LinkError::Copy(Box::new(first));
    };
    match *source {
        TransportError::Store(StoreError::Verify { digest, source }) => {
            LinkError::Read(ReadError::Corrupt {
                bundle: bundle.to_path_buf(),
                digest,
                cause: source.to_string(),
            })
        }
        // The bundle's bytes could not be read (the stream of a blob broke).
        TransportError::Io {
            op: "reading blob for",
            source,
            ..
        } => LinkError::Read(ReadError::Io {
            bundle: bundle.to_path_buf(),
            op: "reading a blob",
            source,
        }),
        TransportError::Store(source) => LinkError::Target {
            root: root.to_path_buf(),
            source,
        },
        TransportError::Io { op, path, source } => LinkError::Target {
            root: root.to_path_buf(),
            source: StoreError::Io { op, path, source },
        },
        other => LinkError::Copy(Box::new(CopyError::Destination {
            image,
            source: Box::new(other),
        })),
    }
}

/// The images of a bundle as link copies them: scoped by the bundle's own links,
/// read in place from whichever bundle given holds the bytes (a delta, its base),
/// else from the root (a delta's left-out blobs, or what a streaming read put there).
struct LinkCatalog {
    repos: std::collections::BTreeMap<String, Repo>,
    bundles: Bundles,
    root: Store,
}

impl Catalog for LinkCatalog {
    fn repositories(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.repos.keys().cloned().collect())
    }

    fn tags(&self, repo: &str) -> Result<Option<Vec<String>>, StoreError> {
        Ok(self
            .repos
            .get(repo)
            .map(|r| r.tags.keys().cloned().collect()))
    }

    fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>, StoreError> {
        Ok(self.repos.get(repo).and_then(|r| r.tags.get(tag).cloned()))
    }

    fn manifest(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<crate::manifest::RawManifest>, StoreError> {
        if !self
            .repos
            .get(repo)
            .is_some_and(|r| r.revisions.contains(digest))
        {
            return Ok(None);
        }
        match self.bundles.any_manifest(digest)? {
            Some(m) => Ok(Some(m)),
            None if self.root.has_blob(digest) => self.root.read_manifest(digest).map(Some),
            None => Ok(None),
        }
    }

    fn blob(&self, repo: &str, digest: &Digest) -> Result<Option<BlobLocation>, StoreError> {
        if !self
            .repos
            .get(repo)
            .is_some_and(|r| r.layers.contains(digest))
        {
            return Ok(None);
        }
        if let Some(loc) = self.bundles.any_blob(digest) {
            return Ok(Some(loc));
        }
        Ok(self.root.blob_size(digest)?.map(|size| BlobLocation {
            size,
            source: Arc::new(FileRange(self.root.path(PathSpec::BlobData(digest)))),
        }))
    }

    fn manifest_digests(&self, repo: &str) -> Result<Vec<Digest>, StoreError> {
        Ok(self
            .repos
            .get(repo)
            .map(|r| r.revisions.iter().cloned().collect())
            .unwrap_or_default())
    }
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
