//! Pushing images from a [`Backend`] (bundles read in place, or a registry
//! root) to a registry, digests preserved: each unique blob is checked with
//! HEAD and skipped when present, mounted across repositories when it was
//! already pushed to another one, else uploaded; child manifests go before
//! their index, and tags last. A sparse index (platforms left out at bundle
//! time) is never changed silently.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures_util::{StreamExt, stream};

use crate::digest::Digest;
use crate::manifest::{Manifest, RawManifest};
use crate::media_type;
use crate::registry::uploads::BlobPush;
use crate::registry::{Client, ClientOptions, RegistryError};
use crate::serve::Backend;

/// One image to push.
#[derive(Debug, Clone)]
pub struct PushImage {
    /// Repository in the source.
    pub repository: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Top manifest digest.
    pub digest: Digest,
}

/// Where and how to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Target registry host.
    pub host: String,
    /// Repository prefix (a Harbor project, a namespace).
    pub prefix: Option<String>,
    /// How to reach the target.
    pub client: ClientOptions,
    /// Blobs pushed at once.
    pub jobs: usize,
    /// Push an index of the present platforms only when the original is sparse (its digest changes, and is reported).
    pub rewrite_sparse_index: bool,
}

/// An index pushed with a new digest because `--rewrite-sparse-index` was given.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rewritten {
    /// `repo[:tag]` at the target.
    pub image: String,
    /// The bundle's digest.
    pub original: Digest,
    /// The digest pushed.
    pub pushed: Digest,
}

/// What a push did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PushSummary {
    /// Images pushed.
    pub images: usize,
    /// Blobs uploaded.
    pub blobs_uploaded: usize,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
    /// Blobs mounted from another repository of the target.
    pub blobs_mounted: usize,
    /// Blobs the target had already.
    pub blobs_present: usize,
    /// Manifests put.
    pub manifests: usize,
    /// Indexes rewritten.
    pub rewritten: Vec<Rewritten>,
}

/// Why a push failed; names the image or blob.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The source could not be read.
    #[error("{image}: {cause}")]
    Source {
        /// The image.
        image: String,
        /// Why.
        cause: String,
    },
    /// The target refused or failed.
    #[error("{image}: {source}")]
    Target {
        /// The image or blob.
        image: String,
        /// The registry error.
        source: Box<RegistryError>,
    },
    /// Several images failed (each on its own line); the others were pushed.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<PushError>),
    /// A sparse index the target will not take as it is.
    #[error(
        "{image}: the target refused the index {digest} because {absent} of its platforms are not in the bundle ({source}); \
         bundle again with --all-platforms, or push with --rewrite-sparse-index to push an index of the present platforms (its digest changes)"
    )]
    SparseIndex {
        /// The image.
        image: String,
        /// The index.
        digest: Digest,
        /// How many children are absent.
        absent: usize,
        /// What the target said.
        source: Box<RegistryError>,
    },
}

struct Planned {
    target_repo: String,
    tag: Option<String>,
    top: RawManifest,
    /// Present child manifests, pushed before the top.
    children: Vec<RawManifest>,
    absent: Vec<Digest>,
}

/// Pushes `images` from `backend`; see the module docs.
pub async fn push<B: Backend>(
    backend: Arc<B>,
    images: &[PushImage],
    opts: &PushOptions,
) -> Result<PushSummary, PushError> {
    let client = Client::new(&opts.host, &opts.client).map_err(|source| PushError::Target {
        image: opts.host.clone(),
        source: Box::new(source),
    })?;
    let target = |repo: &str| match &opts.prefix {
        Some(p) => format!("{}/{repo}", p.trim_end_matches('/')),
        None => repo.to_string(),
    };
    // Read every manifest first, so a bad source fails before anything is sent.
    let mut planned = Vec::new();
    // digest → (size, source repository, target repositories that need it)
    let mut blobs: BTreeMap<Digest, (u64, String, Vec<String>)> = BTreeMap::new();
    for img in images {
        let name = format!(
            "{}{}",
            img.repository,
            img.tag
                .as_deref()
                .map(|t| format!(":{t}"))
                .unwrap_or_default()
        );
        let src = |cause: String| PushError::Source {
            image: name.clone(),
            cause,
        };
        let read = |d: &Digest| -> Result<RawManifest, PushError> {
            backend
                .manifest(&img.repository, d)
                .map_err(|e| src(e.to_string()))?
                .ok_or_else(|| src(format!("manifest {d} is not in the source")))
        };
        let top = read(&img.digest)?;
        let parsed = top.parse().map_err(|e| src(e.to_string()))?;
        let mut children = Vec::new();
        let mut absent = Vec::new();
        let mut images_in = vec![parsed.clone()];
        for c in parsed.children() {
            match backend
                .manifest(&img.repository, &c.digest)
                .map_err(|e| src(e.to_string()))?
            {
                Some(m) => {
                    images_in.push(m.parse().map_err(|e| src(e.to_string()))?);
                    children.push(m);
                }
                None => absent.push(c.digest.clone()),
            }
        }
        let repo = target(&img.repository);
        for m in &images_in {
            for b in m.blobs() {
                if !media_type::is_distributable(&b.media_type) {
                    continue;
                }
                let e = blobs
                    .entry(b.digest.clone())
                    .or_insert_with(|| (b.size, img.repository.clone(), Vec::new()));
                if !e.2.contains(&repo) {
                    e.2.push(repo.clone());
                }
            }
        }
        planned.push(Planned {
            target_repo: repo,
            tag: img.tag.clone(),
            top,
            children,
            absent,
        });
    }

    let (uploaded, mounted, present, bytes) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicU64::new(0),
    );
    let results: Vec<Result<(), PushError>> = stream::iter(blobs.iter())
        .map(|(digest, (size, src_repo, repos))| {
            let (client, backend, uploaded, mounted, present, bytes) =
                (&client, &backend, &uploaded, &mounted, &present, &bytes);
            async move {
                let err = |source| PushError::Target {
                    image: format!("{}@{digest}", repos[0]),
                    source: Box::new(source),
                };
                let loc = backend
                    .blob(src_repo, digest)
                    .map_err(|e| PushError::Source {
                        image: format!("{src_repo}@{digest}"),
                        cause: e.to_string(),
                    })?
                    .ok_or_else(|| PushError::Source {
                        image: format!("{src_repo}@{digest}"),
                        cause: "blob is not in the source".into(),
                    })?;
                for (i, repo) in repos.iter().enumerate() {
                    let from = (i > 0).then(|| repos[0].as_str());
                    match client
                        .push_blob(repo, digest, *size, from, loc.source.clone())
                        .await
                        .map_err(err)?
                    {
                        BlobPush::Present => present.fetch_add(1, Ordering::Relaxed),
                        BlobPush::Mounted => mounted.fetch_add(1, Ordering::Relaxed),
                        BlobPush::Uploaded => {
                            bytes.fetch_add(*size, Ordering::Relaxed);
                            uploaded.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                Ok(())
            }
        })
        .buffer_unordered(opts.jobs.max(1))
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;

    let mut summary = PushSummary {
        images: planned.len(),
        blobs_uploaded: uploaded.into_inner(),
        bytes_uploaded: bytes.into_inner(),
        blobs_mounted: mounted.into_inner(),
        blobs_present: present.into_inner(),
        ..PushSummary::default()
    };
    let mut failures = Vec::new();
    for p in &planned {
        let name = format!(
            "{}{}",
            p.target_repo,
            p.tag
                .as_deref()
                .map(|t| format!(":{t}"))
                .unwrap_or_default()
        );
        let err = |source| PushError::Target {
            image: name.clone(),
            source: Box::new(source),
        };
        for c in &p.children {
            client
                .put_manifest(&p.target_repo, &c.digest().to_string(), c)
                .await
                .map_err(err)?;
            summary.manifests += 1;
        }
        let reference = p.tag.clone().unwrap_or_else(|| p.top.digest().to_string());
        let top = if !p.absent.is_empty() && opts.rewrite_sparse_index {
            let rewritten =
                rewrite_index(&p.top, &p.absent).map_err(|cause| PushError::Source {
                    image: name.clone(),
                    cause,
                })?;
            summary.rewritten.push(Rewritten {
                image: name.clone(),
                original: p.top.digest().clone(),
                pushed: rewritten.digest().clone(),
            });
            rewritten
        } else {
            p.top.clone()
        };
        let reference = if p.tag.is_none() {
            top.digest().to_string()
        } else {
            reference
        };
        match client.put_manifest(&p.target_repo, &reference, &top).await {
            Ok(()) => summary.manifests += 1,
            Err(source) if !p.absent.is_empty() && !opts.rewrite_sparse_index => {
                failures.push(PushError::SparseIndex {
                    image: name,
                    digest: p.top.digest().clone(),
                    absent: p.absent.len(),
                    source: Box::new(source),
                });
            }
            Err(e) => failures.push(err(e)),
        }
    }
    if !failures.is_empty() {
        return Err(PushError::Several(failures));
    }
    Ok(summary)
}

/// An index with only the present children, in the original's media type and order.
fn rewrite_index(index: &RawManifest, absent: &[Digest]) -> Result<RawManifest, String> {
    let Manifest::Index(_) = index.parse().map_err(|e| e.to_string())? else {
        return Err("not an index".into());
    };
    let mut v: serde_json::Value =
        serde_json::from_slice(index.bytes()).map_err(|e| e.to_string())?;
    let children = v["manifests"]
        .as_array_mut()
        .ok_or("index without manifests")?;
    children.retain(|c| {
        !absent
            .iter()
            .any(|d| c["digest"].as_str() == Some(&d.to_string()))
    });
    let bytes = serde_json::to_vec_pretty(&v).map_err(|e| e.to_string())?;
    RawManifest::new(bytes, Some(index.media_type())).map_err(|e| e.to_string())
}
