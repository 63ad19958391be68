//! Several bundles served as one registry: the same file given twice counts
//! once, and the bundles must agree on every `repo:tag` (otherwise which
//! image a pull gets would depend on the order they were given in).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::format::BundleIndex;
use crate::digest::Digest;

/// Two bundles tag the same `repo:tag` with different manifests.
#[derive(Debug, thiserror::Error)]
#[error(
    "{repository}:{tag} is {first_digest} in {} but {second_digest} in {}: serve them separately or leave one out",
    first.display(),
    second.display()
)]
pub struct TagConflict {
    /// The repository.
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The bundle given first.
    pub first: PathBuf,
    /// What the first bundle tags.
    pub first_digest: Digest,
    /// The bundle that disagrees.
    pub second: PathBuf,
    /// What it tags.
    pub second_digest: Digest,
}

/// `paths` with repeats left out: the same file (by device and inode, so also through another
/// path, a symlink or a hardlink) is kept once, at its first place. Unreadable paths are kept,
/// for the opener to name.
pub fn distinct_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = BTreeSet::new();
    paths
        .iter()
        .filter(|p| match std::fs::metadata(p) {
            Ok(m) => seen.insert((m.dev(), m.ino())),
            Err(_) => true,
        })
        .cloned()
        .collect()
}

/// Checks that bundles served together agree on every tag; the first disagreement found.
pub fn check_tags_agree<'a>(
    bundles: impl IntoIterator<Item = (&'a Path, &'a BundleIndex)>,
) -> Result<(), Box<TagConflict>> {
    let mut tagged: BTreeMap<(&str, &str), (&Path, &Digest)> = BTreeMap::new();
    for (path, index) in bundles {
        for image in &index.images {
            let Some(tag) = image.tag.as_deref() else {
                continue;
            };
            let key = (image.repository.as_str(), tag);
            match tagged.get(&key) {
                None => {
                    tagged.insert(key, (path, &image.digest));
                }
                Some((first, digest)) if *digest != &image.digest => {
                    return Err(Box::new(TagConflict {
                        repository: image.repository.clone(),
                        tag: tag.to_string(),
                        first: first.to_path_buf(),
                        first_digest: (*digest).clone(),
                        second: path.to_path_buf(),
                        second_digest: image.digest.clone(),
                    }));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Images across bundles, each `repo:tag` (or untagged `repo@digest`) counted once.
pub fn distinct_images<'a>(indexes: impl IntoIterator<Item = &'a BundleIndex>) -> usize {
    let mut seen = BTreeSet::new();
    for index in indexes {
        for i in &index.images {
            seen.insert((
                i.repository.as_str(),
                i.tag.clone().unwrap_or_else(|| i.digest.to_string()),
            ));
        }
    }
    seen.len()
}
