//! Serving bundle files in place: several bundles merge into one registry
//! (the first bundle that has a tag answers for it; a manifest or blob that any
//! bundle links in a repository is served from any bundle that holds it, as if
//! all were extracted into one root, which is how a delta and its base serve).
//! Manifests and small blobs come from memory (kept by the opening scan);
//! larger blobs from frames decompressed once and shared by every reader.

use std::io::{self, Read};
use std::sync::Arc;

use super::catalog::Catalog;
use crate::blob::{BlobLocation, RangeRead};
use crate::bundlefile::read::BundleFile;
use crate::digest::Digest;
use crate::limits::MAX_MANIFEST_BYTES;
use crate::manifest::RawManifest;
use crate::store::StoreError;

/// One or more opened bundles.
pub struct Bundles(pub Vec<Arc<BundleFile>>);

struct InBundle {
    bundle: Arc<BundleFile>,
    digest: Digest,
}

impl RangeRead for InBundle {
    fn open_range(&self, start: u64, len: u64) -> io::Result<Box<dyn Read + Send>> {
        self.bundle.blob_range(&self.digest, start, len)
    }

    fn chunk_bytes(&self) -> usize {
        crate::limits::BUNDLE_CHUNK_BYTES
    }
}

impl Bundles {
    fn read_blob(b: &Arc<BundleFile>, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        b.blob_bytes(digest, MAX_MANIFEST_BYTES)
            .map(|bytes| bytes.to_vec())
            .map_err(|source| StoreError::Io {
                op: "reading bundle",
                path: b.path().to_path_buf(),
                source,
            })
    }
}

impl Bundles {
    /// Where `digest`'s bytes are in `b` (which holds it).
    fn location(b: &Arc<BundleFile>, digest: &Digest) -> BlobLocation {
        let (_, size) = b.scan.blobs[digest];
        BlobLocation {
            size,
            source: Arc::new(InBundle {
                bundle: b.clone(),
                digest: digest.clone(),
            }),
        }
    }

    /// A blob of any of these bundles, whichever repository links it (for a caller that
    /// scopes by the links of another bundle: a delta whose base carries the bytes).
    pub fn any_blob(&self, digest: &Digest) -> Option<BlobLocation> {
        self.0
            .iter()
            .find(|b| b.scan.blobs.contains_key(digest))
            .map(|b| Self::location(b, digest))
    }

    /// A manifest of any of these bundles (unverified: the caller checks its digest), as [`Bundles::any_blob`].
    pub fn any_manifest(&self, digest: &Digest) -> Result<Option<RawManifest>, StoreError> {
        let Some(b) = self.0.iter().find(|b| b.scan.blobs.contains_key(digest)) else {
            return Ok(None);
        };
        RawManifest::new(Self::read_blob(b, digest)?, None)
            .map(Some)
            .map_err(|source| StoreError::Manifest {
                digest: digest.clone(),
                source,
            })
    }
}

/// One repository of the bundles, as the image walk reads manifests.
struct InRepo<'a> {
    catalog: &'a Bundles,
    repo: &'a str,
}

impl crate::image::Manifests for InRepo<'_> {
    type Error = StoreError;
    fn manifest(
        &self,
        digest: &Digest,
    ) -> impl std::future::Future<Output = Result<Option<RawManifest>, Self::Error>> + Send {
        std::future::ready(self.catalog.manifest(self.repo, digest))
    }
}

/// Why an image of a bundle could not be walked, or a link it holds is not one of its images'.
#[derive(Debug, thiserror::Error)]
pub enum BundleImageError {
    /// The top manifest is not linked in its repository.
    #[error("{repo}: manifest {digest} missing")]
    Missing {
        /// The repository.
        repo: String,
        /// The manifest.
        digest: Digest,
    },
    /// The walk failed.
    #[error("{repo}@{digest}: {source}")]
    Walk {
        /// The repository.
        repo: String,
        /// The top manifest.
        digest: Digest,
        /// Why.
        source: Box<crate::image::WalkError>,
    },
    /// A link no image of `ferry-bundle.json` needs (ferry never writes one).
    #[error("{}: repository {repo} links {digest}, which none of its images in ferry-bundle.json needs", bundle.display())]
    Unclaimed {
        /// The bundle.
        bundle: std::path::PathBuf,
        /// The repository.
        repo: String,
        /// The linked blob or manifest.
        digest: Digest,
    },
}

impl Bundles {
    /// The one image walk over an image of these bundles (every platform; absent children allowed).
    pub fn walk_image(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<crate::image::ImageWalk, BundleImageError> {
        let top = self.manifest(repo, digest).ok().flatten().ok_or_else(|| {
            BundleImageError::Missing {
                repo: repo.to_string(),
                digest: digest.clone(),
            }
        })?;
        crate::image::walk_now(
            &InRepo {
                catalog: self,
                repo,
            },
            top,
            &crate::image::WalkOptions {
                selection: crate::image::Selection::All,
                allow_absent: true,
            },
        )
        .map_err(|source| BundleImageError::Walk {
            repo: repo.to_string(),
            digest: digest.clone(),
            source: Box::new(source),
        })
    }

    /// Every layer and revision link of each bundle is one its index's images need (by the walk):
    /// so `ferry-bundle.json`, and a signature of it, accounts for everything a server would answer.
    pub fn check_links(&self) -> Result<(), BundleImageError> {
        for b in &self.0 {
            let one = Bundles(vec![b.clone()]);
            let mut needed: std::collections::BTreeMap<&str, std::collections::BTreeSet<Digest>> =
                Default::default();
            // A delta's left-out blobs are named in its index with the images that use them.
            let left_out = b.scan.index.since.iter().flat_map(|s| &s.left_out);
            let repo_of: std::collections::HashMap<String, &str> = b
                .scan
                .index
                .images
                .iter()
                .map(|i| {
                    let name = crate::bundlefile::format::image_name(
                        &i.repository,
                        i.tag.as_deref(),
                        &i.digest,
                    );
                    (name, i.repository.as_str())
                })
                .collect();
            for l in left_out.clone() {
                for repo in l.images.iter().filter_map(|n| repo_of.get(n)) {
                    needed.entry(repo).or_default().insert(l.digest.clone());
                }
            }
            for img in &b.scan.index.images {
                if left_out.clone().any(|l| l.digest == img.digest) {
                    continue; // left out whole: its links are the base's, named above
                }
                let w = one.walk_image(&img.repository, &img.digest)?;
                needed.entry(&img.repository).or_default().extend(
                    w.manifests()
                        .map(|m| m.digest().clone())
                        .chain(w.blobs.iter().map(|d| d.digest.clone())),
                );
            }
            for (repo, r) in &b.scan.repos {
                let need = needed.get(repo.as_str());
                if let Some(d) = r
                    .layers
                    .iter()
                    .chain(&r.revisions)
                    .find(|d| !need.is_some_and(|n| n.contains(*d)))
                {
                    return Err(BundleImageError::Unclaimed {
                        bundle: b.path().to_path_buf(),
                        repo: repo.clone(),
                        digest: d.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Bundles {
    /// The bundle holding `digest`, when some bundle links it in `repo` (`revision` or layer link).
    fn holder(&self, repo: &str, digest: &Digest, revision: bool) -> Option<&Arc<BundleFile>> {
        let linked = self.0.iter().any(|b| {
            b.scan.repos.get(repo).is_some_and(|r| {
                if revision {
                    r.revisions.contains(digest)
                } else {
                    r.layers.contains(digest)
                }
            })
        });
        if !linked {
            return None;
        }
        self.0.iter().find(|b| b.scan.blobs.contains_key(digest))
    }
}

impl Catalog for Bundles {
    fn repositories(&self) -> Result<Vec<String>, StoreError> {
        let mut all: Vec<String> = self
            .0
            .iter()
            .flat_map(|b| b.scan.repos.keys().cloned())
            .collect();
        all.sort();
        all.dedup();
        Ok(all)
    }

    fn tags(&self, repo: &str) -> Result<Option<Vec<String>>, StoreError> {
        let mut found = false;
        let mut tags = Vec::new();
        for b in &self.0 {
            if let Some(r) = b.scan.repos.get(repo) {
                found = true;
                tags.extend(r.tags.keys().cloned());
            }
        }
        tags.sort();
        tags.dedup();
        Ok(found.then_some(tags))
    }

    fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>, StoreError> {
        Ok(self
            .0
            .iter()
            .find_map(|b| b.scan.repos.get(repo)?.tags.get(tag).cloned()))
    }

    fn manifest(&self, repo: &str, digest: &Digest) -> Result<Option<RawManifest>, StoreError> {
        let Some(b) = self.holder(repo, digest, true) else {
            return Ok(None);
        };
        let bytes = Self::read_blob(b, digest)?;
        RawManifest::new(bytes, None)
            .map(Some)
            .map_err(|source| StoreError::Manifest {
                digest: digest.clone(),
                source,
            })
    }

    fn blob(&self, repo: &str, digest: &Digest) -> Result<Option<BlobLocation>, StoreError> {
        Ok(self
            .holder(repo, digest, false)
            .map(|b| Self::location(b, digest)))
    }

    fn manifest_digests(&self, repo: &str) -> Result<Vec<Digest>, StoreError> {
        let mut all: Vec<Digest> = self
            .0
            .iter()
            .filter_map(|b| b.scan.repos.get(repo))
            .flat_map(|r| r.revisions.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        Ok(all)
    }
}

/// Bundles plus manifests fetched from elsewhere (a delta's left-out manifests, read back from
/// the push target), so an image whose manifests the delta leaves out can still be re-tagged.
pub struct WithManifests {
    /// The bundles.
    pub bundles: Bundles,
    /// (repository in the bundle, digest) → the manifest.
    pub manifests: std::collections::HashMap<(String, Digest), RawManifest>,
}

impl Catalog for WithManifests {
    fn repositories(&self) -> Result<Vec<String>, StoreError> {
        self.bundles.repositories()
    }

    fn tags(&self, repo: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.bundles.tags(repo)
    }

    fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>, StoreError> {
        self.bundles.resolve_tag(repo, tag)
    }

    fn manifest(&self, repo: &str, digest: &Digest) -> Result<Option<RawManifest>, StoreError> {
        match self.bundles.manifest(repo, digest)? {
            Some(m) => Ok(Some(m)),
            None => Ok(self
                .manifests
                .get(&(repo.to_string(), digest.clone()))
                .cloned()),
        }
    }

    fn blob(&self, repo: &str, digest: &Digest) -> Result<Option<BlobLocation>, StoreError> {
        self.bundles.blob(repo, digest)
    }
    fn manifest_digests(&self, repo: &str) -> Result<Vec<Digest>, StoreError> {
        self.bundles.manifest_digests(repo)
    }
}
