//! Delta bundles (`bundle --since OLD`), in one place: what a delta leaves
//! out, who its base is, and whether the blobs it leaves out are present
//! where it is going (a root, a registry, or the other bundles given).
//!
//! A delta carries every link of its images but only the blobs its base does
//! not carry; `ferry-bundle.json` names the base (the sha256 of the base's own
//! `ferry-bundle.json` bytes, and its file name) and lists each left-out blob
//! with the images that use it. So an extracted delta is a valid registry
//! root only together with its base.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::format::{BundleIndex, DeltaBase, LeftOut};
use super::read::{ReadError, read_index_bytes};
use crate::digest::Digest;

/// How many images, and digests per image, a refusal names before it says "and N more".
const NAMED: usize = 3;

/// A bundle opened as the base of a delta: its index and identity.
#[derive(Debug, Clone)]
pub struct Base {
    /// Its `ferry-bundle.json`.
    pub index: BundleIndex,
    /// sha256 of those bytes: what a delta records and checks.
    pub digest: Digest,
    /// Its file name, for messages.
    pub name: String,
}

impl Base {
    /// Opens OLD, a bundle file or its extracted `ferry-bundle.json` (the two have the same bytes, so the same identity).
    pub fn open(path: &Path) -> Result<Base, ReadError> {
        let io = |op, source| ReadError::Io {
            bundle: path.to_path_buf(),
            op,
            source,
        };
        let mut head = [0u8; 1];
        let n = std::io::Read::read(
            &mut std::fs::File::open(path).map_err(|e| io("opening", e))?,
            &mut head,
        )
        .map_err(|e| io("reading", e))?;
        let (index, bytes) = if n == 1 && head[0] == b'{' {
            let meta = std::fs::metadata(path).map_err(|e| io("reading metadata", e))?;
            if meta.len() > crate::limits::MAX_INDEX_BYTES {
                return Err(ReadError::Index {
                    bundle: path.to_path_buf(),
                    why: format!(
                        "{} bytes; ferry reads at most {}",
                        meta.len(),
                        crate::limits::MAX_INDEX_BYTES
                    ),
                });
            }
            let bytes = std::fs::read(path).map_err(|e| io("reading", e))?;
            let index = serde_json::from_slice(&bytes).map_err(|e| ReadError::Index {
                bundle: path.to_path_buf(),
                why: e.to_string(),
            })?;
            (index, bytes)
        } else {
            read_index_bytes(path)?
        };
        Ok(Base {
            index,
            digest: Digest::sha256_of(&bytes),
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
        })
    }

    /// Every blob the base carries or stands for (manifests included): what a delta of it leaves out.
    pub fn carried(&self) -> HashSet<&Digest> {
        // A base that is a delta itself stands for its own base too: what it left out is there.
        self.index
            .blobs
            .iter()
            .map(|b| &b.digest)
            .chain(left_out(&self.index).iter().map(|l| &l.digest))
            .collect()
    }

    /// The record a delta of this base writes, given the left-out blobs and the images using each.
    pub fn record(&self, left_out: BTreeMap<Digest, (u64, Vec<String>)>) -> DeltaBase {
        DeltaBase {
            index_digest: self.digest.clone(),
            name: self.name.clone(),
            left_out: left_out
                .into_iter()
                .map(|(digest, (size, images))| LeftOut {
                    digest,
                    size,
                    images,
                })
                .collect(),
        }
    }
}

/// The blobs a bundle leaves out (none unless it is a delta).
pub fn left_out(index: &BundleIndex) -> &[LeftOut] {
    index.since.as_ref().map(|s| &s.left_out[..]).unwrap_or(&[])
}

/// The digests of [`left_out`], for lookups.
pub fn left_out_set(index: &BundleIndex) -> HashSet<&Digest> {
    left_out(index).iter().map(|l| &l.digest).collect()
}

/// A delta whose left-out blobs are not where it is going: nothing was written.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}: a delta of {} ({}): {} blob(s) it leaves out are missing from {place}: {}; {hint}",
    delta.display(), base.name, base.index_digest, blobs, per_image
)]
pub struct Missing {
    /// The delta bundle.
    pub delta: PathBuf,
    /// Its recorded base (left-out list dropped).
    pub base: Box<DeltaBase>,
    /// Where the blobs were looked for, e.g. "/srv/root and old.tar.zst".
    pub place: String,
    /// How many left-out blobs are missing.
    pub blobs: usize,
    /// The images that need them, each with a count and the first few digests.
    pub per_image: String,
    /// What to do.
    pub hint: String,
    /// Every missing blob, for callers that list them.
    pub missing: Vec<Digest>,
}

/// Checks that every blob `index` leaves out is `present`; otherwise names the images that need the missing ones.
pub fn check(
    delta: &Path,
    index: &BundleIndex,
    place: &str,
    hint: &str,
    present: &mut dyn FnMut(&LeftOut) -> bool,
) -> Result<(), Box<Missing>> {
    let Some(since) = &index.since else {
        return Ok(());
    };
    let missing: Vec<&LeftOut> = since.left_out.iter().filter(|l| !present(l)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut by_image: BTreeMap<&str, Vec<&Digest>> = BTreeMap::new();
    for l in &missing {
        for i in &l.images {
            by_image.entry(i).or_default().push(&l.digest);
        }
    }
    let mut parts: Vec<String> = by_image
        .iter()
        .take(NAMED)
        .map(|(image, ds)| {
            let mut named: Vec<String> = ds.iter().take(NAMED).map(|d| d.to_string()).collect();
            if ds.len() > NAMED {
                named.push(format!("and {} more", ds.len() - NAMED));
            }
            format!("{image} needs {} ({})", ds.len(), named.join(", "))
        })
        .collect();
    if by_image.len() > NAMED {
        parts.push(format!("and {} more image(s)", by_image.len() - NAMED));
    }
    Err(Box::new(Missing {
        delta: delta.to_path_buf(),
        base: Box::new(DeltaBase {
            left_out: Vec::new(),
            ..since.clone()
        }),
        place: place.to_string(),
        blobs: missing.len(),
        per_image: parts.join("; "),
        hint: hint.to_string(),
        missing: missing.iter().map(|l| l.digest.clone()).collect(),
    }))
}

/// A delta given with a bundle that is not its base (by the digest of the base's
/// `ferry-bundle.json`): refused before anything is written, since blobs that happen to be
/// present do not make another bundle the release the delta was made against.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BaseError {
    /// `--base` names another bundle.
    #[error(
        "{}: a delta of {name} ({recorded}), but --base {} is another bundle ({found}); pass the bundle it was made --since; nothing was written",
        delta.display(), base.display()
    )]
    Other {
        /// The delta bundle.
        delta: PathBuf,
        /// The base's name as recorded.
        name: String,
        /// The base's identity as recorded.
        recorded: Digest,
        /// The bundle given as base.
        base: PathBuf,
        /// Its identity.
        found: Digest,
    },
    /// Several bundles served together, and a delta's base is not one of them.
    #[error(
        "{}: a delta of {name} ({recorded}), which is none of the other bundles given ({given}); serve it with its base: ferry unbundle serve {name} {}",
        delta.display(), delta.display()
    )]
    NotGiven {
        /// The delta bundle.
        delta: PathBuf,
        /// The base's name as recorded.
        name: String,
        /// The base's identity as recorded.
        recorded: Digest,
        /// The other bundles given, each with its identity.
        given: String,
    },
}

/// Checks that `base` (whose `ferry-bundle.json` hashes to `found`) is the exact bundle the
/// delta `index` was made against; a bundle that is not a delta takes any base (it uses none).
pub fn check_base(
    delta: &Path,
    index: &BundleIndex,
    base: &Path,
    found: &Digest,
) -> Result<(), Box<BaseError>> {
    match &index.since {
        Some(s) if &s.index_digest != found => Err(Box::new(BaseError::Other {
            delta: delta.to_path_buf(),
            name: s.name.clone(),
            recorded: s.index_digest.clone(),
            base: base.to_path_buf(),
            found: found.clone(),
        })),
        _ => Ok(()),
    }
}

/// Checks that each delta among bundles given together (each as its path, the digest of its
/// `ferry-bundle.json`, and its index) has its base among them, by that digest.
pub fn check_bases_given(bundles: &[(&Path, &Digest, &BundleIndex)]) -> Result<(), Box<BaseError>> {
    for (i, (delta, _, index)) in bundles.iter().enumerate() {
        let Some(s) = &index.since else { continue };
        if bundles.iter().any(|(_, id, _)| *id == &s.index_digest) {
            continue;
        }
        let given: Vec<String> = bundles
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (p, id, _))| format!("{} is {id}", p.display()))
            .collect();
        return Err(Box::new(BaseError::NotGiven {
            delta: delta.to_path_buf(),
            name: s.name.clone(),
            recorded: s.index_digest.clone(),
            given: if given.is_empty() {
                "none".to_string()
            } else {
                given.join(", ")
            },
        }));
    }
    Ok(())
}

/// How many releases lie below each bundle among those given: `items` are each bundle's identity
/// (the digest of its `ferry-bundle.json`) and the base it names, if a delta.
fn depths(items: &[(Digest, Option<Digest>)]) -> Vec<usize> {
    let base_of = |i: usize| {
        let since = items[i].1.as_ref()?;
        items.iter().position(|(id, _)| id == since)
    };
    (0..items.len())
        .map(|mut i| {
            let mut n = 0;
            // A cycle cannot be longer than the list.
            while let Some(j) = base_of(i) {
                n += 1;
                i = j;
                if n > items.len() {
                    break;
                }
            }
            n
        })
        .collect()
}

/// Orders opened bundles newest release first (a delta before its base): the first that has a
/// tag answers for it, so a delta's tags win over its base's.
pub fn newest_first(bundles: &mut [std::sync::Arc<super::read::BundleFile>]) {
    let items: Vec<_> = bundles
        .iter()
        .map(|b| {
            let since = b.scan.index.since.as_ref().map(|s| s.index_digest.clone());
            (b.scan.index_digest.clone(), since)
        })
        .collect();
    let depth = depths(&items);
    let mut order: Vec<usize> = (0..bundles.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(depth[i]));
    let sorted: Vec<_> = order.iter().map(|&i| bundles[i].clone()).collect();
    bundles.clone_from_slice(&sorted);
}

/// Orders bundle files oldest release first (a base before its deltas), for unpacking them one
/// after another into one root: the newest release's tags are written last.
pub fn oldest_first(paths: &mut [PathBuf]) -> Result<(), ReadError> {
    let mut items = Vec::with_capacity(paths.len());
    for p in paths.iter() {
        let (index, bytes) = read_index_bytes(p)?;
        items.push((
            Digest::sha256_of(&bytes),
            index.since.map(|s| s.index_digest),
        ));
    }
    let depth = depths(&items);
    let mut order: Vec<usize> = (0..paths.len()).collect();
    order.sort_by_key(|&i| depth[i]);
    let sorted: Vec<PathBuf> = order.iter().map(|&i| paths[i].clone()).collect();
    paths.clone_from_slice(&sorted);
    Ok(())
}

/// Which of these bundles are releases of one line: pairs (newer, older) where the newer is a
/// delta of the older, directly or through other bundles given. Such a pair may tag differently.
pub fn same_line(bundles: &[&Path]) -> Result<impl Fn(&Path, &Path) -> bool + use<>, ReadError> {
    let mut items = Vec::with_capacity(bundles.len());
    for p in bundles {
        let (index, bytes) = read_index_bytes(p)?;
        items.push((
            p.to_path_buf(),
            index.since.map(|s| s.index_digest),
            Digest::sha256_of(&bytes),
        ));
    }
    let mut pairs = std::collections::BTreeSet::new();
    for (i, (newer, _, _)) in items.iter().enumerate() {
        let mut at = i;
        for _ in 0..items.len() {
            let Some(base) = &items[at].1 else { break };
            let Some(j) = items.iter().position(|(_, _, id)| id == base) else {
                break;
            };
            pairs.insert((newer.clone(), items[j].0.clone()));
            at = j;
        }
    }
    Ok(move |a: &Path, b: &Path| {
        pairs.contains(&(a.to_path_buf(), b.to_path_buf()))
            || pairs.contains(&(b.to_path_buf(), a.to_path_buf()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundlefile::format::BlobEntry;

    #[test]
    fn a_delta_as_base_stands_for_what_it_left_out() {
        let d = |b: &[u8]| Digest::sha256_of(b);
        let index = BundleIndex {
            format: String::new(),
            created_by: String::new(),
            source_date_epoch: 0,
            images: Vec::new(),
            failed: Vec::new(),
            blob_count: 1,
            blob_bytes: 1,
            blobs: vec![BlobEntry {
                digest: d(b"carried"),
                size: 1,
            }],
            since: Some(DeltaBase {
                index_digest: d(b"older"),
                name: "older.tar.zst".into(),
                left_out: vec![LeftOut {
                    digest: d(b"in the older base"),
                    size: 1,
                    images: vec!["app:1".into()],
                }],
            }),
        };
        let base = Base {
            index,
            digest: d(b"base"),
            name: "base.tar.zst".into(),
        };
        let carried = base.carried();
        assert!(carried.contains(&d(b"carried")));
        assert!(carried.contains(&d(b"in the older base")));
        assert_eq!(carried.len(), 2);
    }
}
