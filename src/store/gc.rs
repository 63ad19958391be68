//! Garbage collection of a store: removes every blob outside a kept set, and
//! every link or tag that reaches one, links first. Each directory goes by a
//! rename into the temp area and then a delete, so a crash at any point leaves
//! no half-removed blob and never a link to a missing blob (at worst an
//! orphaned temp directory, which the next gc clears).

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use super::blobs::temp_path;
use super::paths::{LinkEntry, PathSpec, list_blobs, list_links, list_repositories};
use super::{Result, Store, StoreError};
use crate::digest::Digest;

/// What a gc removed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    /// Blobs removed.
    pub blobs_removed: usize,
    /// Their bytes.
    pub bytes_removed: u64,
    /// Blobs kept.
    pub blobs_kept: usize,
    /// Link files (and tags) removed because they reached a removed blob.
    pub links_removed: usize,
}

impl Store {
    /// Removes every blob not in `keep`, after every link and tag that reaches one; see the module docs.
    pub fn collect_garbage(&self, keep: &HashSet<Digest>) -> Result<GcReport> {
        let root = self.root().to_path_buf();
        let mut report = GcReport::default();
        let tmp = self.path(PathSpec::Temp);
        fs::create_dir_all(&tmp).map_err(StoreError::io("creating directory", &tmp))?;
        // Leftovers of a gc that crashed between its rename and its delete.
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("gc-") {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let repos = list_repositories(&root).map_err(StoreError::io("listing", &root))?;
        for repo in &repos {
            let (links, _) =
                list_links(&root, repo).map_err(StoreError::io("listing links of", &root))?;
            for (entry, path) in links {
                let dir = match &entry {
                    LinkEntry::Layer(d) | LinkEntry::Revision(d) if !keep.contains(d) => {
                        path.parent().map(Path::to_path_buf)
                    }
                    // A tag whose current manifest goes, goes whole (its history links with it).
                    LinkEntry::TagCurrent(tag) => match super::links::read_link(&path)? {
                        Some(d) if !keep.contains(&d) => Some(self.path(PathSpec::Tag(repo, tag))),
                        _ => None,
                    },
                    // (Gone already when its tag went whole: the exists check below skips it.)
                    LinkEntry::TagIndex(_, d) if !keep.contains(d) => {
                        path.parent().map(Path::to_path_buf)
                    }
                    _ => None,
                };
                if let Some(dir) = dir
                    && dir.exists()
                {
                    self.remove_by_rename(&dir)?;
                    report.links_removed += 1;
                }
            }
        }
        // Links are gone (and synced) before a blob they reached goes.
        self.sync_fs()?;
        let (blobs, _) = list_blobs(&root).map_err(StoreError::io("listing blobs of", &root))?;
        for (digest, data) in blobs {
            if keep.contains(&digest) {
                report.blobs_kept += 1;
                continue;
            }
            let size = fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
            if let Some(dir) = data.parent() {
                self.remove_by_rename(dir)?;
                report.blobs_removed += 1;
                report.bytes_removed += size;
            }
        }
        self.sync_fs()?;
        Ok(report)
    }

    /// Renames `dir` into the temp area (one atomic step), then deletes it there.
    fn remove_by_rename(&self, dir: &Path) -> Result<()> {
        let to = temp_path(self, "gc");
        fs::rename(dir, &to).map_err(StoreError::io("moving aside", dir))?;
        fs::remove_dir_all(&to).map_err(StoreError::io("removing", &to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_keeps_what_is_kept_and_leaves_no_dangling_link() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap().with_durable(false);
        let corpus = crate::fixtures::generate(crate::fixtures::Preset::Tiny, &store).unwrap();
        let kept = &corpus.images[0];
        let w = store.walk(&kept.digest).unwrap();
        let keep: HashSet<Digest> = w
            .manifests()
            .map(|m| m.digest().clone())
            .chain(w.blobs.iter().map(|b| b.digest.clone()))
            .collect();
        let r = store.collect_garbage(&keep).unwrap();
        assert!(r.blobs_removed > 0 && r.links_removed > 0, "{r:?}");
        assert_eq!(r.blobs_kept, keep.len());
        let v = store.verify().unwrap();
        assert!(v.faults.is_empty(), "{:?}", v.faults);
        // The kept image still resolves by its tag; others' tags went with their manifests.
        assert_eq!(
            store.resolve_tag(&kept.repository, &kept.tag).unwrap(),
            Some(kept.digest.clone())
        );
        let gone = corpus
            .images
            .iter()
            .find(|i| !keep.contains(&i.digest))
            .unwrap();
        assert_eq!(
            store.resolve_tag(&gone.repository, &gone.tag).unwrap(),
            None
        );
        // Nothing left in the temp area.
        let tmp = store.path(PathSpec::Temp);
        assert!(fs::read_dir(&tmp).map(|d| d.count() == 0).unwrap_or(true));
    }
}
