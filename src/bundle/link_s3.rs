//! `unbundle link --root s3://BUCKET[/PREFIX]`: merging a bundle into a
//! registry root that lives in a bucket. The bucket is checked with one
//! request first (a wrong endpoint, key or bucket writes nothing); a delta's
//! left-out blobs must be in the bucket or in `--base`, and `--no-clobber`
//! refuses a tag move, both before anything is written. Then every blob goes
//! up through the copy engine (`jobs` at a time, each verified against its
//! digest while it streams, never replacing one that is there), then each
//! image's manifests and repository links, its tag last: a kill at any point
//! leaves no tag whose blobs are missing, and a re-run writes nothing new.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use super::unpack::{LinkSummary, TagChange};
use crate::bundlefile::read::{BundleFile, ReadError, StructureOnly};
use crate::copy::{CopyError, CopyOptions, MultiArch, Progress};
use crate::digest::Digest;
use crate::manifest::RawManifest;
use crate::store::paths::PathSpec;
use crate::store::s3::{S3Error, S3Root};
use crate::transport::bundle::{BundleImageError, Bundles, WithManifests};
use crate::transport::catalog::CatalogSource;
use crate::transport::root_s3::S3Dest;

/// Why a bundle was not linked into a bucket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkS3Error {
    /// The bundle was refused.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The bundle's images do not hold together.
    #[error(transparent)]
    Image(#[from] BundleImageError),
    /// The bucket failed.
    #[error(transparent)]
    S3(#[from] S3Error),
    /// A delta whose left-out blobs are in neither the bucket nor `--base` (checked before writing).
    #[error(transparent)]
    Missing(#[from] Box<crate::bundlefile::delta::Missing>),
    /// `--base` is not the bundle the delta was made against (checked before writing).
    #[error(transparent)]
    Base(#[from] Box<crate::bundlefile::delta::BaseError>),
    /// A manifest the bucket holds for a delta does not parse.
    #[error("{root}: manifest {digest}: {source}")]
    Manifest {
        /// The bucket root.
        root: String,
        /// The manifest.
        digest: Digest,
        /// Why it does not parse.
        source: crate::manifest::ManifestError,
    },
    /// `--no-clobber` and a tag would move.
    #[error(
        "{}:{} is {} in {root}, the bundle has {}; refusing to move it (--no-clobber)",
        change.repository, change.tag, change.old.as_ref().map(ToString::to_string).unwrap_or_default(), change.new
    )]
    WouldMoveTag {
        /// The move that was refused.
        change: Box<TagChange>,
        /// The bucket root.
        root: String,
    },
    /// Moving the images failed (each failure names its image and cause).
    #[error(transparent)]
    Copy(#[from] CopyError),
}

/// Links `bundle` into the bucket root; see the module docs. `key` is checked on the bundle's
/// first entries before anything else is read; `base` supplies a delta's left-out blobs the
/// bucket lacks. Runs on the caller's tokio runtime.
pub async fn link_s3(
    bundle: &Path,
    root: &S3Root,
    no_clobber: bool,
    base: Option<&Path>,
    key: Option<&crate::bundlefile::sign::VerifyingKey>,
    jobs: usize,
    progress: &dyn Progress,
) -> Result<LinkSummary, LinkS3Error> {
    root.check().await?;
    // The blobs are hashed as they go up, so the opening scan only checks the structure.
    let delta = BundleFile::open_checked(bundle, &mut StructureOnly, key)?;
    let index = delta.scan.index.clone();
    let mut bundles = vec![delta.clone()];
    if let Some(b) = base {
        let opened = BundleFile::open_with(b, &mut StructureOnly)?;
        crate::bundlefile::delta::check_base(bundle, &index, b, &opened.scan.index_digest)?;
        bundles.push(opened);
    }
    let manifests = left_out_at(root, &bundles, bundle, base).await?;
    Bundles(bundles.clone()).check_links()?;

    // Every tag's digest before, for --no-clobber (refused before any write) and the summary.
    let mut tags = Vec::new();
    for img in &index.images {
        let Some(tag) = &img.tag else { continue };
        let old = root
            .read_link(PathSpec::TagCurrentLink(&img.repository, tag))
            .await?;
        let change = TagChange {
            repository: img.repository.clone(),
            tag: tag.clone(),
            old,
            new: img.digest.clone(),
        };
        if no_clobber && change.old.as_ref().is_some_and(|o| o != &img.digest) {
            return Err(LinkS3Error::WouldMoveTag {
                change: Box::new(change),
                root: root.url(),
            });
        }
        tags.push(change);
    }

    // Uploads a killed run left open are aborted before this run writes (a live run's are younger).
    crate::transport::root_s3::abort_stale_uploads(root).await;
    let catalog = Arc::new(WithManifests {
        bundles: Bundles(bundles),
        manifests,
    });
    let mut copies = Vec::new();
    for img in &index.images {
        let name = match &img.tag {
            Some(t) => format!("{}:{t}", img.repository),
            None => format!("{}@{}", img.repository, img.digest),
        };
        let r = crate::reference::Reference::parse(&format!("{}@{}", img.repository, img.digest))
            .map_err(|e| ReadError::Index {
            bundle: bundle.to_path_buf(),
            why: format!("image {name}: {e}"),
        })?;
        copies.push(crate::copy::Job {
            source: CatalogSource::new(catalog.clone(), r, name),
            destination: S3Dest::new(root.clone(), img.repository.clone(), img.tag.clone()),
        });
    }
    let opts = CopyOptions {
        multi_arch: MultiArch::All,
        preserve_digests: true,
        format: None,
        rewrite_sparse_index: false,
        jobs: jobs.max(1),
        sparse_hint: "",
    };
    let s = crate::copy::copy_all(copies, &opts, progress).await?;
    Ok(LinkSummary {
        blobs_added: s.blobs_uploaded,
        bytes_added: s.bytes_uploaded,
        blobs_present: s.blobs_present,
        tags,
    })
}

/// A delta's left-out blobs must be in the bucket or in `--base` (checked before anything is
/// written); the left-out manifests the bucket holds are read back, so unchanged images can be
/// re-tagged.
async fn left_out_at(
    root: &S3Root,
    bundles: &[Arc<BundleFile>],
    bundle: &Path,
    base: Option<&Path>,
) -> Result<HashMap<(String, Digest), RawManifest>, LinkS3Error> {
    let delta = &bundles[0];
    let index = &delta.scan.index;
    let mut manifests = HashMap::new();
    let Some(since) = &index.since else {
        return Ok(manifests);
    };
    let mut found: HashSet<Digest> = HashSet::new();
    for l in &since.left_out {
        let in_base = bundles[1..]
            .iter()
            .any(|b| b.scan.blobs.contains_key(&l.digest));
        let in_bucket = root.blob_size(&l.digest).await?.is_some();
        if !in_base && !in_bucket {
            continue;
        }
        found.insert(l.digest.clone());
        if in_base {
            continue;
        }
        for (repo, r) in &delta.scan.repos {
            if !r.revisions.contains(&l.digest) {
                continue;
            }
            if let Some(bytes) = root
                .read_blob(&l.digest, crate::limits::MAX_MANIFEST_BYTES)
                .await?
            {
                let m = RawManifest::new(bytes, None).map_err(|source| LinkS3Error::Manifest {
                    root: root.url(),
                    digest: l.digest.clone(),
                    source,
                })?;
                manifests.insert((repo.clone(), l.digest.clone()), m);
            }
        }
    }
    let place = match base {
        Some(b) => format!("{} and {}", root.url(), b.display()),
        None => root.url(),
    };
    let hint = format!(
        "link {} into {} first, or pass --base {}; nothing was written",
        since.name,
        root.url(),
        since.name
    );
    crate::bundlefile::delta::check(bundle, index, &place, &hint, &mut |l| {
        found.contains(&l.digest)
    })?;
    Ok(manifests)
}
