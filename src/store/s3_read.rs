//! Reading a registry root in a bucket as a whole: what it holds (one listing,
//! parsed back through paths.rs), an image walk over the manifests a
//! repository links, and verify (every blob re-hashed, every link resolved,
//! every tagged image complete), in the same report as a root on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

use futures_util::StreamExt;

use super::paths::{LayoutFile, PathSpec};
use super::s3::{Result, S3Error, S3Root};
use super::verify::{Fault, VerifyReport};
use crate::digest::{Digest, Hasher};
use crate::image::{self, ImageWalk, Manifests, Selection, WalkOptions};
use crate::manifest::RawManifest;

/// One repository's links, as the listing found them.
#[derive(Debug, Default, Clone)]
pub struct RepoLinks {
    /// Config and layer links.
    pub layers: BTreeSet<Digest>,
    /// Manifest revision links.
    pub revisions: BTreeSet<Digest>,
    /// Tags with a `current/link`.
    pub tags: BTreeSet<String>,
    /// Tag history links.
    pub tag_index: BTreeSet<(String, Digest)>,
}

/// Everything a bucket root holds, from one listing.
#[derive(Debug, Default, Clone)]
pub struct Listing {
    /// Every blob, with its size.
    pub blobs: BTreeMap<Digest, u64>,
    /// Every repository's links.
    pub repos: BTreeMap<String, RepoLinks>,
}

impl S3Root {
    /// Lists the root once and sorts what it holds by kind (distribution's `_uploads` are left out).
    pub async fn listing(&self) -> Result<Listing> {
        let mut l = Listing::default();
        for (f, size) in self.list().await? {
            match f {
                LayoutFile::BlobData(d) => {
                    l.blobs.insert(d, size);
                }
                LayoutFile::LayerLink(r, d) => {
                    l.repos.entry(r).or_default().layers.insert(d);
                }
                LayoutFile::RevisionLink(r, d) => {
                    l.repos.entry(r).or_default().revisions.insert(d);
                }
                LayoutFile::TagCurrentLink(r, t) => {
                    l.repos.entry(r).or_default().tags.insert(t);
                }
                LayoutFile::TagIndexLink(r, t, d) => {
                    l.repos.entry(r).or_default().tag_index.insert((t, d));
                }
            }
        }
        Ok(l)
    }

    /// A manifest the bucket holds (checked against its digest), `None` when absent.
    pub async fn manifest(&self, digest: &Digest) -> Result<Option<RawManifest>> {
        let Some(bytes) = self
            .read_blob(digest, crate::limits::MAX_MANIFEST_BYTES)
            .await?
        else {
            return Ok(None);
        };
        RawManifest::new(bytes, None)
            .map(Some)
            .map_err(|source| S3Error::Manifest {
                bucket: self.bucket().to_string(),
                key: self.key(PathSpec::BlobData(digest)),
                source: Box::new(source),
            })
    }

    /// The walk of image `digest` as `repo` serves it: only the manifests it links are seen.
    pub async fn walk(
        &self,
        revisions: &BTreeSet<Digest>,
        digest: &Digest,
    ) -> std::result::Result<ImageWalk, String> {
        let top = match self.manifest(digest).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(format!("manifest {digest} is not in the bucket")),
            Err(e) => return Err(e.to_string()),
        };
        image::walk(
            &Linked {
                root: self,
                revisions,
            },
            top,
            &WalkOptions {
                selection: Selection::All,
                allow_absent: true,
            },
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// Re-hashes every blob (`jobs` at a time) and checks every link, tag and tagged image; the
    /// report names each fault by its `s3://` key.
    pub async fn verify(&self, jobs: usize) -> Result<VerifyReport> {
        let listing = self.listing().await?;
        let faults = Mutex::new(Vec::new());
        let at = |spec: PathSpec<'_>| {
            PathBuf::from(format!("s3://{}/{}", self.bucket(), self.key(spec)))
        };
        let fault = |path: PathBuf, what: String| faults.lock().unwrap().push(Fault { path, what });
        let mut report = VerifyReport {
            repositories: listing.repos.len(),
            ..Default::default()
        };
        // Blobs, jobs at a time.
        let hashed: Vec<(u64, bool)> = futures_util::stream::iter(&listing.blobs)
            .map(|(d, size)| {
                let fault = &fault;
                let at = &at;
                async move {
                    match self.hash_blob(d).await {
                        Ok(Some((found, n))) => {
                            if let Err(e) = crate::digest::check(d, Some(*size), &found, n) {
                                fault(at(PathSpec::BlobData(d)), format!("blob {d}: {e}"));
                            }
                            (n, true)
                        }
                        Ok(None) => {
                            fault(
                                at(PathSpec::BlobData(d)),
                                format!("blob {d} vanished while verified"),
                            );
                            (0, false)
                        }
                        Err(e) => {
                            fault(at(PathSpec::BlobData(d)), e.to_string());
                            (0, false)
                        }
                    }
                }
            })
            .buffer_unordered(jobs.max(1))
            .collect()
            .await;
        report.blobs = hashed.iter().filter(|(_, ok)| *ok).count();
        report.bytes = hashed.iter().map(|(n, _)| n).sum();
        // Links: each says the digest its key names, and that blob is there.
        for (repo, links) in &listing.repos {
            let mut specs: Vec<(PathSpec<'_>, &Digest)> = Vec::new();
            specs.extend(
                links
                    .layers
                    .iter()
                    .map(|d| (PathSpec::LayerLink(repo, d), d)),
            );
            specs.extend(
                links
                    .revisions
                    .iter()
                    .map(|d| (PathSpec::RevisionLink(repo, d), d)),
            );
            specs.extend(
                links
                    .tag_index
                    .iter()
                    .map(|(t, d)| (PathSpec::TagIndexLink(repo, t, d), d)),
            );
            report.links += specs.len();
            let read: Vec<_> = futures_util::stream::iter(specs)
                .map(|(spec, d)| async move { (spec, d, self.read_link(spec).await) })
                .buffer_unordered(jobs.max(1))
                .collect()
                .await;
            for (spec, d, r) in read {
                match r {
                    Ok(Some(found)) if &found == d => {
                        if !listing.blobs.contains_key(d) {
                            fault(
                                at(spec),
                                format!("{repo}: links blob {d}, which is not in the bucket"),
                            );
                        }
                    }
                    Ok(Some(found)) => fault(
                        at(spec),
                        format!("{repo}: link names {d} but holds {found}"),
                    ),
                    Ok(None) => fault(at(spec), format!("{repo}: link vanished while verified")),
                    Err(e) => fault(at(spec), e.to_string()),
                }
            }
            // Tags: each resolves to a manifest the repository links, whose image is all there.
            for tag in &links.tags {
                report.links += 1;
                let spec = PathSpec::TagCurrentLink(repo, tag);
                let digest = match self.read_link(spec).await {
                    Ok(Some(d)) => d,
                    Ok(None) => continue,
                    Err(e) => {
                        fault(at(spec), e.to_string());
                        continue;
                    }
                };
                if !links.revisions.contains(&digest) {
                    fault(
                        at(spec),
                        format!("{repo}:{tag} points at {digest}, which {repo} does not link"),
                    );
                    continue;
                }
                match self.walk(&links.revisions, &digest).await {
                    Ok(w) => {
                        for b in &w.blobs {
                            if !listing.blobs.contains_key(&b.digest) {
                                fault(
                                    at(spec),
                                    format!(
                                        "{repo}:{tag} needs blob {}, which is not in the bucket",
                                        b.digest
                                    ),
                                );
                            } else if !links.layers.contains(&b.digest) {
                                fault(
                                    at(spec),
                                    format!(
                                        "{repo}:{tag} needs blob {}, which {repo} does not link",
                                        b.digest
                                    ),
                                );
                            }
                        }
                    }
                    Err(e) => fault(at(spec), format!("{repo}:{tag}: {e}")),
                }
            }
        }
        report.faults = faults.into_inner().unwrap();
        report.faults.sort();
        Ok(report)
    }

    /// A blob's digest and length as read back; `None` when it is not there.
    async fn hash_blob(&self, digest: &Digest) -> Result<Option<(Digest, u64)>> {
        let Some((_, mut stream)) = self.blob_stream(digest).await? else {
            return Ok(None);
        };
        let mut h = Hasher::new(digest.algorithm());
        let mut n = 0u64;
        while let Some(c) = stream.next().await {
            let c = c.map_err(|source| S3Error::Source {
                bucket: self.bucket().to_string(),
                key: self.key(PathSpec::BlobData(digest)),
                digest: digest.clone(),
                source,
            })?;
            h.update(&c);
            n += c.len() as u64;
        }
        Ok(Some((h.finish(), n)))
    }
}

/// A bucket's manifests as the image walk sees them, limited to those a repository links.
struct Linked<'a> {
    root: &'a S3Root,
    revisions: &'a BTreeSet<Digest>,
}

impl Manifests for Linked<'_> {
    type Error = S3Error;
    async fn manifest(&self, digest: &Digest) -> Result<Option<RawManifest>> {
        if !self.revisions.contains(digest) {
            return Ok(None);
        }
        self.root.manifest(digest).await
    }
}
