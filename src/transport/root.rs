//! `registry-root:ROOT/REPO[:TAG]` written: a registry v2 root on disk, no
//! server. Blobs go through the store's verified atomic ingest; at commit the
//! root is synced once (when durable), then the image's repository links are
//! written, children before parents, and the tag last, so a registry serving
//! the root never sees a tag whose content is not all there.
//!
//! Several copies into one root can be *staged* ([`Staging`]): their blobs go in
//! as usual, but no image is linked until the caller has seen every copy succeed
//! ([`Staging::finish`]: one sync, then each image's links, its tag last); on a
//! failure [`Staging::roll_back`] takes back every blob they added (`unbundle link`
//! is all or nothing).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{DestProperties, Destination, Put, Result, TransportError};
use crate::blob::{BlobBody, StreamWriteError};
use crate::digest::Digest;
use crate::manifest::{Descriptor, RawManifest};
use crate::store::paths::PathSpec;
use crate::store::{BlobWriter, CreatedLink, Store, StoreError};

/// One image a staged copy will link at [`Staging::finish`].
#[derive(Debug, Clone)]
pub struct StagedImage {
    /// Repository.
    pub repo: String,
    /// Tag, if the image is named by one.
    pub tag: Option<String>,
    /// The top manifest.
    pub top: Digest,
    /// The manifests the copy brought (only these are linked).
    written: HashSet<Digest>,
}

/// What staged copies into one root did, held until every copy is known to have succeeded.
#[derive(Debug, Default)]
pub struct Staging {
    /// Blobs (and manifests) published by these copies, each with the directories it created, deepest first.
    added: Mutex<Vec<(Digest, u64, Vec<PathBuf>)>>,
    /// Digests whose bytes these copies hashed on the way in (written blobs, manifests).
    verified: Mutex<HashSet<Digest>>,
    /// Images to link, in the order the copies committed them.
    images: Mutex<Vec<StagedImage>>,
}

impl Staging {
    /// Blobs added (count, bytes), for summaries.
    pub fn added(&self) -> (usize, u64) {
        let a = self.added.lock().unwrap();
        (a.len(), a.iter().map(|(_, n, _)| n).sum())
    }

    /// Whether these copies hashed `digest` as it came in (so a caller need not read it again).
    pub fn verified(&self, digest: &Digest) -> bool {
        self.verified.lock().unwrap().contains(digest)
    }

    /// The images committed so far, in order.
    pub fn images(&self) -> Vec<StagedImage> {
        self.images.lock().unwrap().clone()
    }

    /// Removes the blobs these copies added and the directories created for them; nothing
    /// that was there before, and none that a repository links now (see [`remove_added_blob`]).
    /// Says whether there was anything to remove.
    pub fn roll_back(&self, store: &Store) -> bool {
        let added: Vec<_> = self.added.lock().unwrap().drain(..).rev().collect();
        let mut removed = false;
        if !added.is_empty() {
            // Without the list of repositories no blob can be known unlinked: orphans are
            // left (distribution's GC takes them), never a blob another writer linked.
            match store.repositories() {
                Ok(repos) => {
                    removed = true;
                    for (digest, _, dirs) in added {
                        remove_added_blob(store, &repos, &digest, &dirs);
                    }
                }
                Err(e) => tracing::warn!(
                    "rolling back: listing repositories: {e}; added blobs left in place"
                ),
            }
        }
        self.images.lock().unwrap().clear();
        removed
    }

    /// Makes the blobs durable (one `syncfs`), then links each image, children
    /// before parents and its tag last; `before_tag(image)` runs just before
    /// each image is linked (to read what its tag pointed at). All or nothing: when
    /// one image fails, the links and tags of the images linked before it are taken
    /// back (each tag to what it was), so no image of the set stays linked.
    pub fn finish(
        &self,
        store: &Store,
        mut before_tag: impl FnMut(&StagedImage) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        store.sync_fs()?;
        let fail_at = std::env::var(crate::limits::ENV_FAIL_LINK_AT)
            .ok()
            .and_then(|v| v.strip_prefix("finish:")?.parse::<usize>().ok());
        let images: Vec<StagedImage> = self.images.lock().unwrap().drain(..).collect();
        let mut undo: Vec<Unlink> = Vec::new();
        // The links this run creates, by repository: shared by the images of one repository,
        // so a later image does not renew (and so keep at roll-back) an earlier one's.
        let mut created: HashMap<String, Vec<CreatedLink>> = HashMap::new();
        for (i, img) in images.iter().enumerate() {
            let linked = (|| {
                before_tag(img)?;
                undo.push(Unlink::before(store, img)?);
                if fail_at == Some(i) {
                    crate::limits::test_pause(crate::limits::ENV_FINISH_PAUSE_MS);
                    return Err(StoreError::Walk(format!(
                        "test hook: linking image {i} ({}) fails",
                        img.repo
                    )));
                }
                link(store, img, created.entry(img.repo.clone()).or_default())
            })();
            if let Err(e) = linked {
                for u in undo.iter().rev() {
                    u.apply(store);
                }
                // Then the links this run created, parents first, where no other writer has
                // rewritten or renewed them since (best effort).
                for (repo, links) in &created {
                    for link in links.iter().rev() {
                        let _ = store.take_back_link(repo, link);
                    }
                }
                let _ = store.sync_fs();
                return Err(e);
            }
        }
        store.sync_fs()
    }

    /// Records a blob about to be written: the directories its publication will create.
    fn dirs_for(store: &Store, digest: &Digest) -> Vec<PathBuf> {
        let data = store.path(PathSpec::BlobData(digest));
        let v2 = store.path(PathSpec::V2Root);
        data.ancestors()
            .skip(1)
            .take_while(|p| *p != v2)
            .filter(|p| !p.exists())
            .map(Path::to_path_buf)
            .collect()
    }
}

/// Every blob and manifest of a root by digest, whatever repository links it (or
/// none: the bundle cache holds no repositories), as a [`super::Catalog`], so the
/// copy engine can read an image of it by digest alone.
pub struct Unscoped(pub Store);

impl super::Catalog for Unscoped {
    fn repositories(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    fn tags(&self, _: &str) -> Result<Option<Vec<String>>, StoreError> {
        Ok(None)
    }
    fn resolve_tag(&self, _: &str, _: &str) -> Result<Option<Digest>, StoreError> {
        Ok(None)
    }
    fn manifest(&self, _: &str, digest: &Digest) -> Result<Option<RawManifest>, StoreError> {
        match self.0.read_manifest(digest) {
            Ok(m) => Ok(Some(m)),
            Err(StoreError::BlobUnknown(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn blob(
        &self,
        _: &str,
        digest: &Digest,
    ) -> Result<Option<crate::blob::BlobLocation>, StoreError> {
        Ok(self
            .0
            .blob_size(digest)?
            .map(|size| crate::blob::BlobLocation {
                size,
                source: std::sync::Arc::new(crate::blob::FileRange(
                    self.0.path(PathSpec::BlobData(digest)),
                )),
            }))
    }
    fn manifest_digests(&self, _: &str) -> Result<Vec<Digest>, StoreError> {
        Ok(Vec::new())
    }
}

/// Starts writing a just-published blob to disk without waiting for it, so the one
/// `syncfs` before the links finds little left to do (the disk works while later
/// blobs are still being written). Best effort: a failure only means the sync waits longer.
fn start_writeback(path: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(f) = std::fs::File::open(path) {
        // SAFETY: a valid open fd; SYNC_FILE_RANGE_WRITE only queues writeback of its dirty pages.
        unsafe {
            libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
}

/// Removes a blob a failed run added (and the directories made for it), unless a link of one
/// of `repos` names it now: a concurrent writer that has linked it relies on it. This is the
/// test distribution's garbage collector applies in spirit (it deletes only what no
/// repository's manifest revisions reach, marked from every repository); here a layer or
/// revision link of any repository keeps the blob. A writer that has written the blob but not
/// yet linked it cannot be seen, as it cannot by distribution's GC (which wants a read-only registry).
pub fn remove_added_blob(store: &Store, repos: &[String], digest: &Digest, dirs: &[PathBuf]) {
    if repos
        .iter()
        .any(|r| store.has_layer_link(r, digest) || store.has_revision(r, digest))
    {
        return;
    }
    let _ = std::fs::remove_file(store.path(PathSpec::BlobData(digest)));
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}

/// The tag one staged image moves, as it was before, to put it back; the links the run
/// wrote are recorded apart, as they are written (a link another writer made first, or
/// renews while this run goes on, is that writer's too and stays).
struct Unlink {
    repo: String,
    /// The tag and what it pointed at before (none: it did not exist).
    tag: Option<(String, Option<Digest>)>,
}

impl Unlink {
    /// Reads, before `img` is linked, what its tag points at.
    fn before(store: &Store, img: &StagedImage) -> Result<Unlink, StoreError> {
        let tag = match &img.tag {
            Some(t) => Some((t.clone(), store.resolve_tag(&img.repo, t)?)),
            None => None,
        };
        Ok(Unlink {
            repo: img.repo.clone(),
            tag,
        })
    }

    /// Puts the tag back (best effort).
    fn apply(&self, store: &Store) {
        if let Some((t, old)) = &self.tag {
            let _ = match old {
                Some(d) => store.tag(&self.repo, t, d).map(drop),
                None => store.untag(&self.repo, t).map(drop),
            };
        }
    }
}

/// Links one image whose blobs and manifests are in `store`: only the manifests its copy
/// wrote, its tag last; each link it creates is added to `created` as it is written.
fn link(
    store: &Store,
    img: &StagedImage,
    created: &mut Vec<CreatedLink>,
) -> Result<(), StoreError> {
    store
        .link_image_recording(
            &img.repo,
            &img.top,
            img.tag.as_deref(),
            &|d| img.written.contains(d),
            created,
        )
        .map(drop)
}

/// One image written into a root.
pub struct RootDest {
    store: Store,
    repo: String,
    tag: Option<String>,
    /// `syncfs` before the links (a live root); off for caches whose blobs are re-hashed when used.
    sync: bool,
    /// Blobs only, in digest order, no links: the cache a bundle is packed from while it downloads.
    pack_cache: bool,
    /// Manifests this copy wrote: only these are linked (other children the root holds stay out).
    written: Mutex<HashSet<Digest>>,
    /// Held links and a record of what was added, when staged.
    staging: Option<std::sync::Arc<Staging>>,
    /// A root on the same file system whose blobs are hardlinked rather than copied (the bundle cache).
    import_from: Option<Store>,
}

impl RootDest {
    /// Writes into `repo` of `store`, tagging with `tag`; `sync` makes the blobs durable before any link names them.
    pub fn new(store: Store, repo: String, tag: Option<String>, sync: bool) -> RootDest {
        RootDest {
            store,
            repo,
            tag,
            sync,
            pack_cache: false,
            written: Default::default(),
            staging: None,
            import_from: None,
        }
    }

    /// Writes into `repo` of `store`, taking each blob `from` holds as a hardlink of its
    /// file there (copied, verified, across file systems) instead of reading it: a
    /// bundle's `--root-dir` costs a few links. `from`'s blobs are trusted as they are.
    pub fn importing(store: Store, repo: String, tag: Option<String>, from: Store) -> RootDest {
        RootDest {
            import_from: Some(from),
            ..RootDest::new(store, repo, tag, false)
        }
    }

    /// Writes into `repo` of `store` as one of several staged copies: blobs go in, the
    /// image is linked (and tagged with `tag`) only by [`Staging::finish`].
    pub fn staged(
        store: Store,
        repo: String,
        tag: Option<String>,
        staging: std::sync::Arc<Staging>,
    ) -> RootDest {
        RootDest {
            staging: Some(staging),
            ..RootDest::new(store, repo, tag, false)
        }
    }

    /// The root written into.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Notes, when staged, a blob this copy published (with the directories it made) and hashed.
    fn record(&self, digest: &Digest, size: u64, dirs: Option<Vec<PathBuf>>) {
        if let Some(s) = &self.staging {
            s.verified.lock().unwrap().insert(digest.clone());
            if let Some(dirs) = dirs {
                s.added.lock().unwrap().push((digest.clone(), size, dirs));
            }
        }
    }

    /// The bundle cache: blobs and manifests only (no repository, no links), taken in
    /// digest order (the bundle's layout order) so the packer can write each as it lands.
    pub fn pack_cache(store: Store) -> RootDest {
        RootDest {
            store,
            repo: String::new(),
            tag: None,
            sync: false,
            pack_cache: true,
            written: Default::default(),
            staging: None,
            import_from: None,
        }
    }
}

/// Writes a stream into a store blob writer, off the runtime; the writer is dropped (temp file deleted) on error.
/// Each batch of chunks goes to the file as it arrived, in one vectored write (not copied into
/// the writer's buffer first: a copy of every downloaded byte).
async fn write_stream(writer: BlobWriter, stream: crate::blob::ByteStream) -> Result<BlobWriter> {
    let temp = writer.temp_path().to_path_buf();
    crate::blob::write_stream_batches(
        stream,
        writer,
        move |w: &mut BlobWriter, batch: &[bytes::Bytes]| {
            w.write_batch(batch).map_err(|source| StoreError::Io {
                op: "writing blob",
                path: w.temp_path().to_path_buf(),
                source,
            })
        },
    )
    .await
    .map_err(|e| match e {
        StreamWriteError::Write(e) => e.into(),
        StreamWriteError::Read(source) => TransportError::Io {
            op: "reading blob for",
            path: temp,
            source,
        },
    })
}

impl Destination for RootDest {
    fn name(&self) -> String {
        super::dest_name(
            &format!("registry-root:{}", self.store.root().display()),
            &self.repo,
            self.tag.as_deref(),
        )
    }

    fn properties(&self) -> DestProperties {
        DestProperties {
            manifest_types: Vec::new(),
            accepts_index: true,
            accepts_sparse_index: true,
            ordered_blobs: self.pack_cache,
            compresses_layers: false,
        }
    }

    async fn has_blob(&self, desc: &Descriptor) -> Result<bool> {
        Ok(self.store.has_blob(&desc.digest))
    }

    async fn put_blob(&self, desc: &Descriptor, body: BlobBody) -> Result<Put> {
        if self.store.has_blob(&desc.digest) {
            return Ok(Put::Present);
        }
        if let Some(from) = &self.import_from
            && from.has_blob(&desc.digest)
        {
            let (to, from, d) = (self.store.clone(), from.clone(), desc.digest.clone());
            crate::task::unblock(move || to.import_blob(&from, &d))
                .await
                .map_err(TransportError::io("importing into", self.store.root()))??;
            return Ok(Put::Written);
        }
        let dirs = self
            .staging
            .as_ref()
            .map(|_| Staging::dirs_for(&self.store, &desc.digest));
        match body {
            // A stream is verified by its source (it ends in an error when wrong): no second hash.
            BlobBody::Stream(stream) => {
                let w = write_stream(self.store.blob_writer_prehashed()?, stream).await?;
                let (d, size) = (desc.digest.clone(), desc.size);
                crate::task::unblock(move || w.commit_prehashed(&d, size))
                    .await
                    .map_err(TransportError::io("writing into", self.store.root()))??;
            }
            BlobBody::Local(loc) => {
                let stream = Box::pin(crate::blob::range_stream(loc.source, 0, loc.size));
                let w = write_stream(self.store.blob_writer()?, stream).await?;
                let (d, size) = (desc.digest.clone(), desc.size);
                crate::task::unblock(move || w.commit(Some((&d, Some(size)))))
                    .await
                    .map_err(TransportError::io("writing into", self.store.root()))??;
            }
        }
        self.record(&desc.digest, desc.size, dirs);
        if self.sync || self.staging.is_some() {
            start_writeback(&self.store.path(PathSpec::BlobData(&desc.digest)));
        }
        Ok(Put::Written)
    }

    async fn put_manifest(&self, manifest: &RawManifest) -> Result<()> {
        self.put_manifest_bytes(manifest)?;
        self.written
            .lock()
            .unwrap()
            .insert(manifest.digest().clone());
        Ok(())
    }

    async fn commit(&self, top: &RawManifest) -> Result<()> {
        self.put_manifest_bytes(top)?;
        if self.pack_cache {
            return Ok(());
        }
        let mut written = std::mem::take(&mut *self.written.lock().unwrap());
        written.insert(top.digest().clone());
        if let Some(s) = &self.staging {
            s.images.lock().unwrap().push(StagedImage {
                repo: self.repo.clone(),
                tag: self.tag.clone(),
                top: top.digest().clone(),
                written,
            });
            return Ok(());
        }
        let (store, repo, tag, sync, top) = (
            self.store.clone(),
            self.repo.clone(),
            self.tag.clone(),
            self.sync,
            top.digest().clone(),
        );
        let root = self.store.root().to_path_buf();
        // File-system work off the async threads: one syncfs, then the links, the tag last.
        crate::task::unblock(move || {
            if sync {
                store.sync_fs()?;
            }
            link(
                &store,
                &StagedImage {
                    repo,
                    tag,
                    top,
                    written,
                },
                &mut Vec::new(),
            )
        })
        .await
        .map_err(TransportError::io("linking in", root))??;
        Ok(())
    }
}

impl RootDest {
    /// Stores a manifest's bytes (their digest is theirs by construction), recorded when staged.
    fn put_manifest_bytes(&self, m: &RawManifest) -> Result<()> {
        if let Some(from) = &self.import_from
            && from.has_blob(m.digest())
        {
            return Ok(self.store.import_blob(from, m.digest())?);
        }
        let fresh = self.staging.is_some() && !self.store.has_blob(m.digest());
        let dirs = fresh.then(|| Staging::dirs_for(&self.store, m.digest()));
        self.store.put_blob_bytes(m.bytes())?;
        self.record(m.digest(), m.bytes().len() as u64, dirs);
        Ok(())
    }
}
