//! Link files, tags, and linking a whole image into a repository.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use super::blobs::{fsync_dir, place_dir, write_atomic};
use super::{Result, Store, StoreError};
use crate::digest::Digest;
use crate::image::{self, ImageWalk, Selection, WalkError, WalkOptions};
use crate::limits::MAX_LINK_BYTES;
use crate::reference::{validate_repository, validate_tag};
use crate::store::paths::PathSpec;

/// Reads a link file: `Ok(None)` when it does not exist, an error when it holds anything but a digest.
pub fn read_link(path: &Path) -> Result<Option<Digest>> {
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Io {
                op: "reading link",
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    let mut buf = Vec::new();
    f.take(MAX_LINK_BYTES)
        .read_to_end(&mut buf)
        .map_err(StoreError::io("reading link", path))?;
    let text = String::from_utf8_lossy(&buf);
    Digest::parse(&text)
        .map(Some)
        .map_err(|_| StoreError::BadLink {
            path: path.to_path_buf(),
            content: text.chars().take(80).collect(),
        })
}

/// What linking an image into a repository did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkReport {
    /// Every manifest linked (the top one and present children).
    pub manifests: Vec<Digest>,
    /// Every config and layer linked.
    pub blobs: BTreeSet<Digest>,
    /// Index children not in the store, left out (a sparse index).
    pub missing_children: Vec<Digest>,
    /// The tag's previous digest when it moved.
    pub tag_moved_from: Option<Digest>,
}

impl Store {
    /// Writes `sha256:<hex>` (no newline) at `path` unless it already says exactly that.
    fn write_link(&self, path: &Path, digest: &Digest) -> Result<bool> {
        if let Ok(Some(existing)) = read_link(path)
            && &existing == digest
        {
            return Ok(false);
        }
        // A new link's directory appears with its link in it (never empty, even if killed).
        let dir = path.parent().expect("link paths have parents");
        let name = path.file_name().expect("link paths name a file");
        let durable = self.durable;
        if place_dir(self, dir, "dir", |d| {
            let mut f = fs::File::create(d.join(name))?;
            io::Write::write_all(&mut f, digest.to_string().as_bytes())?;
            if durable {
                f.sync_all()?;
            }
            Ok(())
        })? {
            return Ok(true);
        }
        write_atomic(self, path, digest.to_string().as_bytes(), "writing link")?;
        Ok(true)
    }

    /// Lets `repo` serve the config or layer blob `digest`.
    pub fn link_layer(&self, repo: &str, digest: &Digest) -> Result<()> {
        validate_repository(repo)?;
        self.write_link(&self.path(PathSpec::LayerLink(repo, digest)), digest)?;
        Ok(())
    }

    /// Lets `repo` serve the manifest `digest`.
    pub fn link_revision(&self, repo: &str, digest: &Digest) -> Result<()> {
        validate_repository(repo)?;
        self.write_link(&self.path(PathSpec::RevisionLink(repo, digest)), digest)?;
        Ok(())
    }

    /// Points `repo:tag` at `digest`. A new tag appears in one step: its whole
    /// directory (index link and `current/link`) is built in the root's temp
    /// area and renamed into `_manifests/tags/<tag>`, so no reader ever lists a
    /// tag that does not resolve. A tag that exists gets its index link first,
    /// then `current/link` replaced by rename (as distribution's tagstore).
    /// Returns the previous digest when the tag moved.
    pub fn tag(&self, repo: &str, tag: &str, digest: &Digest) -> Result<Option<Digest>> {
        validate_repository(repo)?;
        validate_tag(tag)?;
        let dir = self.path(PathSpec::Tag(repo, tag));
        if !dir.exists() && self.create_tag(repo, tag, digest, &dir)? {
            return Ok(None);
        }
        self.write_link(
            &self.path(PathSpec::TagIndexLink(repo, tag, digest)),
            digest,
        )?;
        let current = self.path(PathSpec::TagCurrentLink(repo, tag));
        let old = read_link(&current).ok().flatten();
        self.write_link(&current, digest)?;
        Ok(old.filter(|o| o != digest))
    }

    /// Builds a new tag's directory in the temp area and renames it into place;
    /// `false` when another writer created the tag first (the caller then moves it).
    fn create_tag(&self, repo: &str, tag: &str, digest: &Digest, dir: &Path) -> Result<bool> {
        let rel = |spec| {
            self.path(spec)
                .strip_prefix(dir)
                .expect("tag links live under the tag directory")
                .to_path_buf()
        };
        let links = [
            rel(PathSpec::TagIndexLink(repo, tag, digest)),
            rel(PathSpec::TagCurrentLink(repo, tag)),
        ];
        place_dir(self, dir, "tag", |tmp| {
            let mut dirs: Vec<std::path::PathBuf> = Vec::new();
            for link in &links {
                let path = tmp.join(link);
                fs::create_dir_all(path.parent().expect("link paths have parents"))?;
                let mut f = fs::File::create(&path)?;
                io::Write::write_all(&mut f, digest.to_string().as_bytes())?;
                if self.durable {
                    f.sync_all()?;
                }
                for d in path.ancestors().skip(1).take_while(|d| *d != tmp) {
                    if !dirs.iter().any(|x| x == d) {
                        dirs.push(d.to_path_buf());
                    }
                }
            }
            if self.durable {
                // Deepest first (place_dir syncs the tag directory itself): after a power loss
                // the renamed tag holds its `current/link`, or it is not there at all.
                dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
                for d in &dirs {
                    fsync_dir(d)?;
                }
            }
            if let Ok(d) = std::env::var(crate::limits::ENV_TAG_PAUSE_MS)
                && let Ok(ms) = d.parse::<u64>()
            {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            Ok(())
        })
    }

    /// The digest `repo:tag` points at, if the tag exists.
    pub fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>> {
        validate_repository(repo)?;
        validate_tag(tag)?;
        read_link(&self.path(PathSpec::TagCurrentLink(repo, tag)))
    }

    /// Whether `repo` links the manifest `digest` (what distribution checks before serving it).
    pub fn has_revision(&self, repo: &str, digest: &Digest) -> bool {
        matches!(read_link(&self.path(PathSpec::RevisionLink(repo, digest))), Ok(Some(d)) if &d == digest)
    }

    /// Whether `repo` links the blob `digest` (what distribution checks before serving it).
    pub fn has_layer_link(&self, repo: &str, digest: &Digest) -> bool {
        matches!(read_link(&self.path(PathSpec::LayerLink(repo, digest))), Ok(Some(d)) if &d == digest)
    }

    /// Links an image whose blobs are already in the store into `repo`, children
    /// before parents, then tags it. Index children absent from the store are
    /// left out and reported (a sparse index); a missing config or layer is an error.
    pub fn link_image(&self, repo: &str, digest: &Digest, tag: Option<&str>) -> Result<LinkReport> {
        self.link_image_with(repo, digest, tag, &|_| true)
    }

    /// [`Store::link_image`] of only the manifests `wanted` names (the ones a copy
    /// or a bundle brought): other children of the index that the store happens to
    /// hold stay out of the repository.
    pub fn link_image_with(
        &self,
        repo: &str,
        digest: &Digest,
        tag: Option<&str>,
        wanted: &(dyn Fn(&Digest) -> bool + Sync),
    ) -> Result<LinkReport> {
        validate_repository(repo)?;
        if let Some(t) = tag {
            validate_tag(t)?;
        }
        let w = self.walk_only(digest, wanted)?;
        let mut report = LinkReport::default();
        for b in &w.blobs {
            if !self.has_blob(&b.digest) {
                return Err(StoreError::BlobUnknown(b.digest.clone()));
            }
            self.link_layer(repo, &b.digest)?;
            report.blobs.insert(b.digest.clone());
        }
        // Foreign layers are linked only when the store happens to hold them.
        for b in w.foreign.iter().filter(|b| self.has_blob(&b.digest)) {
            self.link_layer(repo, &b.digest)?;
            report.blobs.insert(b.digest.clone());
        }
        for m in w.manifests() {
            self.link_revision(repo, m.digest())?;
            report.manifests.push(m.digest().clone());
        }
        report.missing_children = w.absent().map(|c| c.descriptor.digest.clone()).collect();
        if let Some(t) = tag {
            report.tag_moved_from = self.tag(repo, t, digest)?;
        }
        Ok(report)
    }

    /// Checks, writing nothing, that [`Store::link_image_with`] would find what it
    /// needs (manifests that parse, every config and layer present), so a caller
    /// can refuse before the first link.
    pub fn check_image_with(
        &self,
        digest: &Digest,
        wanted: &(dyn Fn(&Digest) -> bool + Sync),
    ) -> Result<()> {
        let w = self.walk_only(digest, wanted)?;
        match w.blobs.iter().find(|b| !self.has_blob(&b.digest)) {
            Some(b) => Err(StoreError::BlobUnknown(b.digest.clone())),
            None => Ok(()),
        }
    }

    /// The walk of an image held here (every child, absent ones recorded).
    pub fn walk(&self, digest: &Digest) -> Result<ImageWalk> {
        self.walk_only(digest, &|_| true)
    }

    /// The walk of an image held here, seeing only the manifests `wanted` names.
    fn walk_only(
        &self,
        digest: &Digest,
        wanted: &(dyn Fn(&Digest) -> bool + Sync),
    ) -> Result<ImageWalk> {
        let top = self.read_manifest(digest)?;
        image::walk_now(
            &Only {
                store: self,
                wanted,
            },
            top,
            &WalkOptions {
                selection: Selection::All,
                allow_absent: true,
            },
        )
        .map_err(|e| match e {
            WalkError::TooDeep(d) => StoreError::TooDeep(d),
            WalkError::Manifest { digest, source } => StoreError::Manifest { digest, source },
            other => StoreError::Walk(other.to_string()),
        })
    }
}

/// A store's manifests as the walk sees them, limited to the wanted ones.
struct Only<'a> {
    store: &'a Store,
    wanted: &'a (dyn Fn(&Digest) -> bool + Sync),
}

impl image::Manifests for Only<'_> {
    type Error = StoreError;
    fn manifest(
        &self,
        digest: &Digest,
    ) -> impl std::future::Future<Output = Result<Option<crate::manifest::RawManifest>>> + Send
    {
        std::future::ready(if (self.wanted)(digest) && self.store.has_blob(digest) {
            self.store.read_manifest(digest).map(Some)
        } else {
            Ok(None)
        })
    }
}

/// Removes a layout directory in one step: it is renamed into the temp area
/// (so no reader ever sees it half gone), then deleted. `false` when it was not there.
fn remove_dir_whole(store: &Store, dir: &Path) -> Result<bool> {
    let tmp = super::blobs::temp_path(store, "del");
    let temp_dir = store.path(PathSpec::Temp);
    fs::create_dir_all(&temp_dir).map_err(StoreError::io("creating directory", &temp_dir))?;
    match fs::rename(dir, &tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(StoreError::Io {
                op: "removing",
                path: dir.to_path_buf(),
                source: e,
            });
        }
    }
    if store.durable
        && let Some(parent) = dir.parent()
    {
        fsync_dir(parent).map_err(StoreError::io("syncing", parent))?;
    }
    fs::remove_dir_all(&tmp).map_err(StoreError::io("removing", &tmp))?;
    Ok(true)
}

impl Store {
    /// Every manifest `repo` links (its revision links), for listings such as referrers.
    pub fn revisions(&self, repo: &str) -> Result<Vec<Digest>> {
        validate_repository(repo)?;
        let (links, _) = super::paths::list_links(&self.root, repo).map_err(StoreError::io(
            "listing links of",
            self.path(PathSpec::Repository(repo)),
        ))?;
        Ok(links
            .into_iter()
            .filter_map(|(l, _)| match l {
                super::paths::LinkEntry::Revision(d) => Some(d),
                _ => None,
            })
            .collect())
    }

    /// Unlinks the manifest `digest` from `repo` and removes every tag of `repo`
    /// whose current link points at it (as distribution's manifest delete does).
    /// Returns the tags removed; `None` when `repo` did not link the manifest.
    pub fn delete_revision(&self, repo: &str, digest: &Digest) -> Result<Option<Vec<String>>> {
        validate_repository(repo)?;
        if !self.has_revision(repo, digest) {
            return Ok(None);
        }
        let mut removed = Vec::new();
        for tag in self.tags(repo)? {
            if self.resolve_tag(repo, &tag)?.as_ref() == Some(digest) && self.untag(repo, &tag)? {
                removed.push(tag);
            }
        }
        let link = self.path(PathSpec::RevisionLink(repo, digest));
        remove_dir_whole(self, link.parent().expect("link paths have parents"))?;
        Ok(Some(removed))
    }

    /// Removes the tag `repo:tag` (its whole directory); the manifest stays. `false` when there was no such tag.
    pub fn untag(&self, repo: &str, tag: &str) -> Result<bool> {
        validate_repository(repo)?;
        validate_tag(tag)?;
        remove_dir_whole(self, &self.path(PathSpec::Tag(repo, tag)))
    }

    /// Unlinks the config or layer blob `digest` from `repo` (the blob data stays for GC). `false` when it was not linked.
    pub fn unlink_layer(&self, repo: &str, digest: &Digest) -> Result<bool> {
        validate_repository(repo)?;
        if !self.has_layer_link(repo, digest) {
            return Ok(false);
        }
        let link = self.path(PathSpec::LayerLink(repo, digest));
        remove_dir_whole(self, link.parent().expect("link paths have parents"))
    }

    /// Removes temp files of dead ferry processes from the temp area (what [`Store::create`] does at start).
    pub fn clear_stale_temps(&self) {
        super::blobs::clear_stale_temps(&self.path(PathSpec::Temp));
    }
}
