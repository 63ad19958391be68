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
/// Two releases of one line (`same_line`: one is a delta of the other) may differ: the newer retags.
pub fn check_tags_agree<'a>(
    bundles: impl IntoIterator<Item = (&'a Path, &'a BundleIndex)>,
    same_line: &dyn Fn(&Path, &Path) -> bool,
) -> Result<(), Box<TagConflict>> {
    // Every earlier (bundle, digest) of a tag: a later one must agree with each of them, or be of
    // one line with it (checking only the first would let a delta retag an unrelated bundle's tag).
    let mut tagged: BTreeMap<(&str, &str), Vec<(&Path, &Digest)>> = BTreeMap::new();
    for (path, index) in bundles {
        for image in &index.images {
            let Some(tag) = image.tag.as_deref() else {
                continue;
            };
            let seen = tagged.entry((image.repository.as_str(), tag)).or_default();
            if let Some((first, digest)) = seen
                .iter()
                .find(|(p, d)| *d != &image.digest && !same_line(p, path))
            {
                return Err(Box::new(TagConflict {
                    repository: image.repository.clone(),
                    tag: tag.to_string(),
                    first: first.to_path_buf(),
                    first_digest: (*digest).clone(),
                    second: path.to_path_buf(),
                    second_digest: image.digest.clone(),
                }));
            }
            seen.push((path, &image.digest));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn index(images: &[(&str, Option<&str>, char)]) -> BundleIndex {
        let images: Vec<serde_json::Value> = images
            .iter()
            .map(|(repo, tag, d)| {
                serde_json::json!({
                    "source": repo, "repository": repo, "tag": tag,
                    "digest": format!("sha256:{}", d.to_string().repeat(64)),
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "format": "x", "created_by": "t", "source_date_epoch": 0, "images": images,
            "blob_count": 0, "blob_bytes": 0, "blobs": [],
        }))
        .unwrap()
    }

    #[test]
    fn bundles_agree_when_a_shared_tag_has_one_digest() {
        let a = index(&[("x", Some("1"), 'a'), ("y", Some("1"), 'b')]);
        let b = index(&[
            ("x", Some("1"), 'a'),
            ("x", Some("2"), 'c'),
            ("y", None, 'b'),
        ]);
        let (pa, pb) = (Path::new("a.tar.zst"), Path::new("b.tar.zst"));
        assert!(check_tags_agree([(pa, &a), (pb, &b)], &|_, _| false).is_ok());
        // x:1, y:1, x:2, and y@b untagged.
        assert_eq!(distinct_images([&a, &b]), 4);
        let c = index(&[("y", Some("1"), 'd')]);
        let e = check_tags_agree(
            [(pa, &a), (pb, &b), (Path::new("c.tar.zst"), &c)],
            &|_, _| false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("y:1 is sha256:bbbb"), "{e}");
        assert!(
            e.contains("in a.tar.zst but sha256:dddd") && e.contains("in c.tar.zst"),
            "{e}"
        );
    }

    #[test]
    fn a_delta_retags_its_base_but_not_an_unrelated_bundle() {
        let old = index(&[("x", Some("1"), 'a')]);
        let other = index(&[("x", Some("1"), 'a')]);
        let delta = index(&[("x", Some("1"), 'b')]);
        let (po, pu, pd) = (
            Path::new("old.tar.zst"),
            Path::new("other.tar.zst"),
            Path::new("delta.tar.zst"),
        );
        let line = |a: &Path, b: &Path| (a == po && b == pd) || (a == pd && b == po);
        assert!(check_tags_agree([(po, &old), (pd, &delta)], &line).is_ok());
        let e = check_tags_agree([(po, &old), (pu, &other), (pd, &delta)], &line)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("other.tar.zst") && e.contains("delta.tar.zst"),
            "{e}"
        );
    }
}
