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

/// Which file a link is, as one writer wrote it: its device, inode and modification time.
/// Another writer that rewrites the link makes a new file, and one that finds it and relies
/// on it renews its time, so the stamp no longer matches either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStamp {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl LinkStamp {
    /// The stamp of the file `m` describes.
    fn of(m: &fs::Metadata) -> LinkStamp {
        use std::os::unix::fs::MetadataExt;
        LinkStamp {
            dev: m.dev(),
            ino: m.ino(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        }
    }
}

/// Gives a new link file a modification time of its own: this second, with random
/// nanoseconds. File times come from a coarse clock (milliseconds apart), and a freed inode
/// number is soon reused, so without it a file another writer made anew moments later could
/// carry the same stamp as the one it replaced.
fn mark_unique(f: &fs::File) -> io::Result<()> {
    use std::hash::{BuildHasher, Hasher};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let nanos = (random % 1_000_000_000) as u32;
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::new(now.as_secs(), nanos))
}

/// What [`Store::renew_link`] did with a link that may already be there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    /// It says the digest and now carries a stamp of its own.
    Renewed,
    /// It says the digest, but its time cannot be changed: kept as it is.
    Unchangeable,
    /// Absent, saying something else, or its time did not move: to be written.
    Rewrite,
}

/// The kinds of repository link a roll-back takes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// `_layers/…/link`: a config or layer blob.
    Layer,
    /// `_manifests/revisions/…/link`: a manifest.
    Revision,
}

impl LinkKind {
    /// The link's path spec in `repo`.
    fn spec<'a>(self, repo: &'a str, digest: &'a Digest) -> PathSpec<'a> {
        match self {
            LinkKind::Layer => PathSpec::LayerLink(repo, digest),
            LinkKind::Revision => PathSpec::RevisionLink(repo, digest),
        }
    }
}

/// A link one writer created, recorded so that a roll-back removes it only while it is
/// still that writer's alone ([`Store::take_back_link`]).
#[derive(Debug, Clone)]
pub struct CreatedLink {
    /// Layer or revision.
    pub kind: LinkKind,
    /// The digest it names.
    pub digest: Digest,
    stamp: LinkStamp,
}

impl Store {
    /// Writes `sha256:<hex>` (no newline) at `path` unless it already says exactly that (then
    /// renews it, see [`Store::renew_link`]). Returns the stamp of the file when this call wrote it.
    fn write_link(&self, path: &Path, digest: &Digest) -> Result<Option<LinkStamp>> {
        if self.renew_link(path, digest) != Renewal::Rewrite {
            return Ok(None);
        }
        // A new link's directory appears with its link in it (never empty, even if killed).
        let dir = path.parent().expect("link paths have parents");
        let name = path.file_name().expect("link paths name a file");
        let durable = self.durable;
        let mut stamp = None;
        if place_dir(self, dir, "dir", |d| {
            let mut f = fs::File::create(d.join(name))?;
            io::Write::write_all(&mut f, digest.to_string().as_bytes())?;
            mark_unique(&f)?;
            if durable {
                f.sync_all()?;
            }
            stamp = Some(LinkStamp::of(&f.metadata()?));
            Ok(())
        })? {
            return Ok(stamp);
        }
        // The directory is there: another writer may have just made this very link.
        if self.renew_link(path, digest) != Renewal::Rewrite {
            return Ok(None);
        }
        let written = write_atomic(self, path, digest.to_string().as_bytes(), "writing link")?;
        Ok(Some(LinkStamp::of(&written)))
    }

    /// When the link at `path` already says `digest`, marks it as relied on by one more
    /// writer: its modification time moves on by a nanosecond, so the writer that made it
    /// sees at roll-back that it is not only its own ([`Store::take_back_link`]). A file
    /// system whose clock is too coarse to show the move gets the link rewritten instead (a
    /// new file, so the stamp changes all the same); one that refuses the change (read-only,
    /// another owner) keeps the link as it is, as before renewals existed.
    fn renew_link(&self, path: &Path, digest: &Digest) -> Renewal {
        use std::os::unix::fs::MetadataExt;
        if !matches!(read_link(path), Ok(Some(d)) if &d == digest) {
            return Renewal::Rewrite;
        }
        let Ok(f) = fs::File::open(path) else {
            return Renewal::Rewrite;
        };
        let Ok(before) = f.metadata() else {
            return Renewal::Rewrite;
        };
        let moved = before
            .modified()
            .and_then(|t| f.set_modified(t + std::time::Duration::from_nanos(1)));
        if moved.is_err() {
            return Renewal::Unchangeable;
        }
        // Still the file at `path`, with a stamp of its own now: a roll-back that moved it away
        // meanwhile saw the renewal and puts it back, or the caller writes it anew.
        match fs::metadata(path) {
            Ok(now)
                if now.ino() == before.ino()
                    && now.dev() == before.dev()
                    && LinkStamp::of(&now) != LinkStamp::of(&before) =>
            {
                Renewal::Renewed
            }
            _ => Renewal::Rewrite,
        }
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
            crate::limits::test_pause(crate::limits::ENV_TAG_PAUSE_MS);
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
        self.link_image_recording(repo, digest, tag, wanted, &mut Vec::new())
    }

    /// [`Store::link_image_with`] that adds to `created` each layer and revision link this
    /// call wrote (not the ones it found), as it writes them, so a roll-back can take back
    /// exactly those even when linking fails part-way ([`Store::take_back_link`]). Links
    /// already in `created` (this run's, made for an earlier image of `repo`) are left as
    /// they are, so their stamps stay this run's.
    pub fn link_image_recording(
        &self,
        repo: &str,
        digest: &Digest,
        tag: Option<&str>,
        wanted: &(dyn Fn(&Digest) -> bool + Sync),
        created: &mut Vec<CreatedLink>,
    ) -> Result<LinkReport> {
        validate_repository(repo)?;
        if let Some(t) = tag {
            validate_tag(t)?;
        }
        let w = self.walk_only(digest, wanted)?;
        let mut report = LinkReport::default();
        let mut link = |kind: LinkKind, d: &Digest| -> Result<()> {
            let path = self.path(kind.spec(repo, d));
            // One this run made for an earlier image stays this run's alone: not renewed.
            if created.iter().any(|c| c.kind == kind && &c.digest == d)
                && matches!(read_link(&path), Ok(Some(now)) if &now == d)
            {
                return Ok(());
            }
            if let Some(stamp) = self.write_link(&path, d)? {
                created.push(CreatedLink {
                    kind,
                    digest: d.clone(),
                    stamp,
                });
            }
            Ok(())
        };
        for b in &w.blobs {
            if !self.has_blob(&b.digest) {
                return Err(StoreError::BlobUnknown(b.digest.clone()));
            }
            link(LinkKind::Layer, &b.digest)?;
            report.blobs.insert(b.digest.clone());
        }
        // Foreign layers are linked only when the store happens to hold them.
        for b in w.foreign.iter().filter(|b| self.has_blob(&b.digest)) {
            link(LinkKind::Layer, &b.digest)?;
            report.blobs.insert(b.digest.clone());
        }
        for m in w.manifests() {
            link(LinkKind::Revision, m.digest())?;
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

/// Moves a layout directory into the temp area in one step (so no reader ever sees it half
/// gone) and returns where it went; `None` when it was not there.
fn move_aside(store: &Store, dir: &Path) -> Result<Option<std::path::PathBuf>> {
    let tmp = super::blobs::temp_path(store, "del");
    let temp_dir = store.path(PathSpec::Temp);
    fs::create_dir_all(&temp_dir).map_err(StoreError::io("creating directory", &temp_dir))?;
    match fs::rename(dir, &tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
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
    Ok(Some(tmp))
}

/// Removes a layout directory in one step: it is moved aside ([`move_aside`]), then
/// deleted. `false` when it was not there.
fn remove_dir_whole(store: &Store, dir: &Path) -> Result<bool> {
    let Some(tmp) = move_aside(store, dir)? else {
        return Ok(false);
    };
    fs::remove_dir_all(&tmp).map_err(StoreError::io("removing", &tmp))?;
    Ok(true)
}

impl Store {
    /// Takes back a link this writer created in `repo`, unless another writer has rewritten or
    /// renewed it since (it relies on it then): the link's directory is moved aside, its stamp
    /// checked, and it is deleted only when still `link`'s; otherwise it is put back (unless
    /// the other writer has made it anew meanwhile). `false` when the link stays.
    pub fn take_back_link(&self, repo: &str, link: &CreatedLink) -> Result<bool> {
        validate_repository(repo)?;
        let path = self.path(link.kind.spec(repo, &link.digest));
        let still_ours = |p: &Path| fs::metadata(p).is_ok_and(|m| LinkStamp::of(&m) == link.stamp);
        // Checked first, so a link in use is not even moved (a reader could miss it meanwhile).
        if !still_ours(&path) {
            return Ok(false);
        }
        let dir = path.parent().expect("link paths have parents");
        let name = path.file_name().expect("link paths name a file");
        let Some(tmp) = move_aside(self, dir)? else {
            return Ok(false);
        };
        if still_ours(&tmp.join(name)) {
            fs::remove_dir_all(&tmp).map_err(StoreError::io("removing", &tmp))?;
            return Ok(true);
        }
        // Renewed between the check and the move: put it back, unless it was made anew.
        match fs::rename(&tmp, dir) {
            Ok(()) => {
                if self.durable {
                    fsync_dir(dir.parent().expect("link directories have parents"))
                        .map_err(StoreError::io("syncing", dir))?;
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                let _ = fs::remove_dir_all(&tmp);
            }
            Err(e) => {
                return Err(StoreError::Io {
                    op: "putting back a link another writer uses",
                    path: dir.to_path_buf(),
                    source: e,
                });
            }
        }
        Ok(false)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer's roll-back takes back a link it created and nobody touched; it leaves one
    /// another writer renewed (found and relied on), and one another writer made anew after
    /// the first was removed.
    #[test]
    fn take_back_removes_only_a_link_still_this_writers_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap().with_durable(false);
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        let create = |d: &Digest| {
            let path = store.path(PathSpec::LayerLink("r", d));
            let stamp = store.write_link(&path, d).unwrap().expect("created");
            CreatedLink {
                kind: LinkKind::Layer,
                digest: d.clone(),
                stamp,
            }
        };
        // Untouched: taken back.
        let la = create(&a);
        assert!(store.take_back_link("r", &la).unwrap());
        assert!(!store.has_layer_link("r", &a));
        // Renewed by another writer (it found the link and relies on it): stays.
        let lb = create(&b);
        let path = store.path(PathSpec::LayerLink("r", &b));
        assert_eq!(
            store.write_link(&path, &b).unwrap(),
            None,
            "found, not created"
        );
        assert!(!store.take_back_link("r", &lb).unwrap());
        assert!(store.has_layer_link("r", &b));
        // Made anew by another writer after a removal: a new file, which stays.
        let la = create(&a);
        store.unlink_layer("r", &a).unwrap();
        store.link_layer("r", &a).unwrap();
        assert!(!store.take_back_link("r", &la).unwrap());
        assert!(store.has_layer_link("r", &a));
    }

    /// One run that links two tags of one image in one repository: the second image leaves
    /// the links the first created as they are (no renewal of its own links), so a roll-back
    /// of the run takes every one of them back.
    #[test]
    fn a_run_that_links_one_image_twice_takes_back_every_link() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap().with_durable(false);
        let config = store.put_blob_bytes(b"{}").unwrap();
        let layer = store.put_blob_bytes(b"layer").unwrap();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":5}}]}}"#
        );
        let top = store.put_blob_bytes(manifest.as_bytes()).unwrap();
        let mut created = Vec::new();
        for tag in ["one", "two"] {
            store
                .link_image_recording("r", &top, Some(tag), &|_| true, &mut created)
                .unwrap();
        }
        assert_eq!(created.len(), 3, "each link created once: {created:?}");
        for l in created.iter().rev() {
            assert!(store.take_back_link("r", l).unwrap(), "{l:?} taken back");
        }
        assert!(!store.has_revision("r", &top));
        assert!(!store.has_layer_link("r", &layer));
        assert!(!store.has_layer_link("r", &config));
    }
}
