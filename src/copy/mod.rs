//! Copying images between any two transports: platform choice, one walk per
//! image, every unique blob moved once (concurrently, `jobs` at a time, each
//! digest by one task), manifests after their children, the name last.
//! Digests are preserved unless a conversion was asked for or the
//! destination cannot hold the source's manifest type (then the new digest is
//! reported). The engine names no transport: it sees only [`Source`] and
//! [`Destination`].

pub mod compress;
pub mod convert;
pub mod foreign;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures_util::{StreamExt, stream};

use crate::blob::BlobBody;
use crate::digest::Digest;
use crate::image::{self, ImageWalk, Selection, WalkOptions, Walks};
use crate::manifest::{Descriptor, Platform, RawManifest};
use crate::media_type;
use crate::transport::{
    self, Destination, OpeningPutError, PlainLayers, Put, Source, SourceManifests, TransportError,
};
pub use convert::Format;

/// Progress events, so the CLI can draw bars without the library printing.
pub trait Progress: Send + Sync {
    /// The work is known: totals.
    fn planned(&self, _images: usize, _blobs: usize, _bytes_to_fetch: u64) {}
    /// A blob arrived (or was found present).
    fn fetched(&self, _bytes: u64) {}
    /// Packing starts, with the bytes to pack (bundles).
    fn packing(&self, _bytes: u64) {}
    /// A blob is done for every destination that needed it; in digest order when the destination asked for order.
    fn blob_done(&self, _desc: &Descriptor, _outcome: BlobOutcome) {}
}

/// How a blob ended for the destinations that needed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    /// Written or uploaded by this copy (for at least one destination).
    Written,
    /// Mounted from another repository.
    Mounted,
    /// Every destination had it.
    Present,
    /// It could not be moved (the images that need it fail).
    Failed,
}

/// No progress output.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Which part of a multi-platform image to copy (skopeo's `--multi-arch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultiArch {
    /// The one image for this platform; the index itself is not copied (skopeo's default, `system`).
    System(Platform),
    /// The index and every child (`--all`, `--multi-arch all`).
    All,
    /// The index alone (`--multi-arch index-only`).
    IndexOnly,
    /// The index with these platforms' children; the others are left out (a sparse index, as bundles keep).
    Platforms(Vec<Platform>),
}

impl MultiArch {
    /// The platform of this machine (linux and the CPU ferry was built for), as skopeo chooses by default.
    pub fn system() -> MultiArch {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            a => a,
        };
        MultiArch::System(Platform {
            os: "linux".into(),
            architecture: arch.into(),
            ..Platform::default()
        })
    }
}

/// How a copy behaves.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Which platforms.
    pub multi_arch: MultiArch,
    /// Fail rather than change a digest (no conversion, no rewritten index).
    pub preserve_digests: bool,
    /// Convert manifests to this format (`--format`).
    pub format: Option<Format>,
    /// Push an index of the present children when the source's index is sparse and the destination refuses it.
    pub rewrite_sparse_index: bool,
    /// Blobs moved at once.
    pub jobs: usize,
    /// What to tell a user whose sparse index the destination refused.
    pub sparse_hint: &'static str,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            multi_arch: MultiArch::system(),
            preserve_digests: false,
            format: None,
            rewrite_sparse_index: false,
            jobs: crate::limits::DEFAULT_JOBS,
            sparse_hint: "copy with --all to bring every platform",
        }
    }
}

/// What copying one image did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Copied {
    /// The source image.
    pub source: String,
    /// The destination image.
    pub destination: String,
    /// The source's top digest.
    pub source_digest: Digest,
    /// The digest written (differs when converted or rewritten).
    pub digest: Digest,
    /// Manifests written (children and top).
    pub manifests: usize,
}

/// An index written with a new digest because its children were left out, converted, or
/// rewritten to name layers gzipped on the way.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rewritten {
    /// The destination image.
    pub image: String,
    /// The source's digest.
    pub original: Digest,
    /// The digest written.
    pub pushed: Digest,
}

/// What a copy of one or more images did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CopySummary {
    /// Images copied.
    pub images: usize,
    /// Blobs written or uploaded.
    pub blobs_uploaded: usize,
    /// Their bytes.
    pub bytes_uploaded: u64,
    /// Blobs mounted from another repository of the destination.
    pub blobs_mounted: usize,
    /// Blobs the destination had already.
    pub blobs_present: usize,
    /// Manifests written.
    pub manifests: usize,
    /// Indexes written with a new digest.
    pub rewritten: Vec<Rewritten>,
    /// Each image.
    pub copied: Vec<Copied>,
}

/// Why a copy failed; names the image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// The source could not be read or the image walked.
    #[error("{image}: {cause}")]
    Source {
        /// The source image.
        image: String,
        /// Why.
        cause: String,
    },
    /// The destination refused or failed.
    #[error("{image}: {source}")]
    Destination {
        /// The destination image.
        image: String,
        /// Why.
        source: Box<TransportError>,
    },
    /// A sparse index the destination will not take as it is.
    #[error(
        "{image}: the target refused the index {digest} because {absent} of its platforms are left out or not in the source ({source}); {hint}"
    )]
    SparseIndex {
        /// How to get past it, in the words of the command that copied.
        hint: &'static str,
        /// The destination image.
        image: String,
        /// The index.
        digest: Digest,
        /// How many children are left out or absent.
        absent: usize,
        /// What the destination said.
        source: Box<TransportError>,
    },
    /// A digest would change but `--preserve-digests` was given.
    #[error("{image}: {why}, which changes its digest; --preserve-digests forbids that")]
    WouldChangeDigest {
        /// The source image.
        image: String,
        /// What would change it.
        why: String,
    },
    /// Several images failed (each on its own line); the others were copied.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<CopyError>),
}

/// One image to copy: where from, where to.
pub struct Job<S, D> {
    /// The source.
    pub source: S,
    /// The destination.
    pub destination: D,
}

/// An image read and planned: its walk, and what to write.
struct Planned {
    /// Shared by every job that copies the same image.
    walk: Arc<ImageWalk>,
    /// Blobs to move when a conversion changed them: the walk's, less those it replaced, plus the ones it made.
    blobs: Option<Vec<Descriptor>>,
    /// Blobs a conversion made, by digest: written from memory.
    new_blobs: HashMap<Digest, Vec<u8>>,
    /// Manifests to write, children first; the last is the top.
    writes: Vec<RawManifest>,
    source_digest: Digest,
    rewritten: bool,
    /// Layers to gzip on the way (the source serves them uncompressed, the destination
    /// stores layers compressed).
    compress: HashSet<Digest>,
    /// Their compressed descriptors, by source digest, as the transfers make them.
    compressed: std::sync::Mutex<HashMap<Digest, Descriptor>>,
}

impl Planned {
    /// The blobs to move.
    fn blobs(&self) -> &[Descriptor] {
        self.blobs.as_deref().unwrap_or(&self.walk.blobs)
    }
}

/// Copies one image; see the module docs.
pub async fn copy<S: Source, D: Destination>(
    source: S,
    destination: D,
    opts: &CopyOptions,
    progress: &dyn Progress,
) -> Result<CopySummary, CopyError> {
    match copy_all(
        vec![Job {
            source,
            destination,
        }],
        opts,
        progress,
    )
    .await
    {
        Err(CopyError::Several(mut v)) if v.len() == 1 => Err(v.pop().expect("one")),
        other => other,
    }
}

/// Reads the top manifest and walks the image the options select.
async fn plan<S: Source, D: Destination>(
    job: &Job<S, D>,
    opts: &CopyOptions,
    walks: &Walks,
) -> Result<Planned, CopyError> {
    let name = job.source.name();
    let src_err = |cause: String| CopyError::Source {
        image: name.clone(),
        cause,
    };
    let mut top = job.source.top().await.map_err(|e| src_err(e.to_string()))?;
    let props = job.destination.properties();
    let mut multi = opts.multi_arch.clone();
    if media_type::is_index(top.media_type()) && !props.accepts_index {
        // One image only (docker-archive): choose it as skopeo does.
        if !matches!(multi, MultiArch::System(_)) {
            return Err(src_err(format!(
                "{} holds one image, and {} is a multi-platform index; copy one platform (leave out --all)",
                job.destination.name(),
                top.digest()
            )));
        }
    }
    if let MultiArch::System(want) = &multi
        && media_type::is_index(top.media_type())
    {
        let index = top.digest().clone();
        let chosen = image::platform_child(&SourceManifests(&job.source), &top, want)
            .await
            .map_err(|e| match e {
                image::PlatformChildError::Choose(e) => src_err(format!(
                    "{e}; choose one with --override-os/--override-arch, or copy all with --all"
                )),
                image::PlatformChildError::Absent { child } => src_err(format!(
                    "index {index} lists {child}, which the source does not have"
                )),
                image::PlatformChildError::Mismatch { child, got } => src_err(format!(
                    "index {index} lists {child}, the source gave {got}"
                )),
                image::PlatformChildError::Source(e) => src_err(e.to_string()),
            })?;
        top = chosen;
        multi = MultiArch::All;
    }
    let walk_opts = WalkOptions {
        selection: match &multi {
            MultiArch::All | MultiArch::System(_) => Selection::All,
            MultiArch::IndexOnly => Selection::IndexOnly,
            MultiArch::Platforms(p) => Selection::Platforms(p.clone()),
        },
        // Only sources that keep chosen platforms (bundles, roots) may lack a child.
        allow_absent: job.source.holds_sparse_indexes(),
    };
    let source_digest = top.digest().clone();
    let walk = walks
        .walk(&SourceManifests(&job.source), top, &walk_opts)
        .await
        .map_err(|e| src_err(e.to_string()))?;
    let sparse = walk
        .children
        .iter()
        .any(|c| !c.selected || c.manifest.is_none());
    // Docker configs that become OCI configs are read now (small, capped, verified).
    let mut configs = HashMap::new();
    for c in convert::configs_to_convert(&walk, convert::target_format(&walk, &props, opts)) {
        let bytes = transport::read_small(&job.source, &c)
            .await
            .map_err(|e| src_err(format!("config {}: {e}", c.digest)))?;
        configs.insert(c.digest.clone(), bytes);
    }
    let w =
        convert::plan_writes(&walk, &props, opts, sparse, &configs).map_err(|why| match why {
            convert::Refusal::DigestChange(why) => CopyError::WouldChangeDigest {
                image: name.clone(),
                why,
            },
            convert::Refusal::Cannot(why) => src_err(why),
        })?;
    // Uncompressed layers from skopeo's file sources are gzipped for a destination that
    // stores layers compressed, as containers/image does; that changes the image's digest, so
    // with --preserve-digests they go as they are (as skopeo sends them), and images already
    // distributed keep theirs always (`PlainLayers::Keep`).
    let compress = match job.source.plain_layers() {
        _ if !props.compresses_layers || opts.preserve_digests => HashSet::new(),
        PlainLayers::Keep => HashSet::new(),
        PlainLayers::GzipTyped => compress::layers_to_gzip(&w.manifests, false),
        PlainLayers::GzipAll => compress::layers_to_gzip(&w.manifests, true),
    };
    // Foreign layers are named, not moved, where the destination keeps their URLs (a
    // registry, a root, an OCI layout); anywhere else they are fetched like any layer.
    let foreign: &[Descriptor] = if job.destination.accepts_foreign_layer_urls() {
        &[]
    } else {
        &walk.foreign
    };
    // The walk's blobs, unless a conversion replaced some or foreign layers join them (kept
    // apart only then: plans of thousands of images hold these).
    let blobs =
        (!w.replaced.is_empty() || !w.new_blobs.is_empty() || !foreign.is_empty()).then(|| {
            let mut b: Vec<Descriptor> = walk
                .blobs
                .iter()
                .chain(foreign)
                .filter(|b| !w.replaced.contains(&b.digest))
                .cloned()
                .collect();
            b.extend(w.new_blobs.iter().map(|(d, _)| d.clone()));
            b
        });
    Ok(Planned {
        walk,
        blobs,
        new_blobs: w
            .new_blobs
            .into_iter()
            .map(|(d, b)| (d.digest, b))
            .collect(),
        writes: w.manifests,
        source_digest,
        rewritten: w.changed,
        compress,
        compressed: Default::default(),
    })
}

/// Copies several images with one pool of blob transfers: every manifest is
/// read before any blob moves (a bad source fails first, and nothing is
/// sent), each blob digest is handled by one task for every destination that
/// needs it, and an image whose blobs failed is not named at its destination.
pub async fn copy_all<S: Source, D: Destination>(
    jobs: Vec<Job<S, D>>,
    opts: &CopyOptions,
    progress: &dyn Progress,
) -> Result<CopySummary, CopyError> {
    prepare(&jobs);
    let walks = Walks::default();
    let mut planned = Vec::with_capacity(jobs.len());
    let read: Vec<Result<Planned, CopyError>> = stream::iter(&jobs)
        .map(|job| plan(job, opts, &walks))
        .buffered(opts.jobs.max(1))
        .collect()
        .await;
    for p in read {
        planned.push(Ok(p?));
    }
    let (summary, failed) = run(&jobs, planned, opts, progress).await;
    if !failed.is_empty() {
        return Err(CopyError::Several(
            failed.into_iter().map(|(_, e)| e).collect(),
        ));
    }
    Ok(summary)
}

/// [`copy_all`] where each image stands alone: one that cannot be read or
/// moved is returned with its index in `jobs`, and the others are copied.
pub async fn copy_each<S: Source, D: Destination>(
    jobs: &[Job<S, D>],
    opts: &CopyOptions,
    progress: &dyn Progress,
) -> (CopySummary, Vec<(usize, CopyError)>) {
    prepare(jobs);
    let walks = Walks::default();
    let planned: Vec<Result<Planned, CopyError>> = stream::iter(jobs)
        .map(|job| plan(job, opts, &walks))
        .buffered(opts.jobs.max(1))
        .collect()
        .await;
    run(jobs, planned, opts, progress).await
}

/// Lets every destination start what it will need before its first blob, while the sources are read.
fn prepare<S: Source, D: Destination>(jobs: &[Job<S, D>]) {
    for j in jobs {
        j.destination.prepare();
    }
}

/// Moves the blobs of every planned job, then writes each job's manifests.
async fn run<S: Source, D: Destination>(
    jobs: &[Job<S, D>],
    planned: Vec<Result<Planned, CopyError>>,
    opts: &CopyOptions,
    progress: &dyn Progress,
) -> (CopySummary, Vec<(usize, CopyError)>) {
    let mut failed: BTreeMap<usize, CopyError> = BTreeMap::new();
    let planned: Vec<Option<Planned>> = planned
        .into_iter()
        .enumerate()
        .map(|(i, p)| p.map_err(|e| failed.insert(i, e)).ok())
        .collect();
    // digest → (descriptor, the jobs that need it)
    let mut blobs: BTreeMap<Digest, (Descriptor, Vec<usize>)> = BTreeMap::new();
    let mut order: Vec<Digest> = Vec::new();
    for (i, p) in planned.iter().enumerate() {
        for b in p.iter().flat_map(|p| p.blobs()) {
            let e = blobs.entry(b.digest.clone()).or_insert_with(|| {
                order.push(b.digest.clone());
                (b.clone(), Vec::new())
            });
            e.1.push(i);
        }
    }
    let total: u64 = blobs.values().map(|(d, _)| d.size).sum();
    progress.planned(jobs.len() - failed.len(), blobs.len(), total);

    let counts = Counts::default();
    // A destination written front to back (a bundle packed while it downloads)
    // takes its blobs in digest order, which is the layout's order; they still move
    // `jobs` at a time, and are handed over in that order.
    let ordered = jobs
        .iter()
        .any(|j| j.destination.properties().ordered_blobs);
    if ordered {
        order.sort();
    } else {
        // Largest first (stable: plan order among equals), so no big blob starts last and
        // leaves one transfer running alone at the end while the others are done.
        order.sort_by_key(|d| std::cmp::Reverse(blobs[d].0.size));
    }
    // `jobs` transfers at a time; an ordered destination may see later blobs finish while it
    // waits for an earlier large one, so one slow blob does not hold the other transfers idle.
    let permits = &tokio::sync::Semaphore::new(opts.jobs.max(1));
    let transfers = stream::iter(order.iter()).map(|d| {
        let (desc, users) = &blobs[d];
        let (counts, planned) = (&counts, &planned);
        async move {
            let _permit = permits.acquire().await.expect("never closed");
            let mut failed = Vec::new();
            let mut outcome = BlobOutcome::Present;
            for &i in users {
                let p = planned[i].as_ref().expect("only planned jobs use blobs");
                match transfer(&jobs[i], p, desc, counts).await {
                    Ok(Put::Written) => outcome = BlobOutcome::Written,
                    Ok(Put::Mounted) if outcome == BlobOutcome::Present => {
                        outcome = BlobOutcome::Mounted
                    }
                    Ok(_) => {}
                    Err(e) => failed.push((i, e)),
                }
            }
            if !failed.is_empty() {
                outcome = BlobOutcome::Failed;
            }
            (desc, outcome, failed)
        }
    });
    // Progress is reported as results are taken, so an ordered destination hears of them in order.
    let mut results: std::pin::Pin<Box<dyn futures_util::Stream<Item = _> + Send + '_>> = if ordered
    {
        Box::pin(transfers.buffered(opts.jobs.max(1) * crate::limits::ORDERED_LOOKAHEAD))
    } else {
        Box::pin(transfers.buffer_unordered(opts.jobs.max(1)))
    };
    while let Some((desc, outcome, errors)) = results.next().await {
        progress.fetched(desc.size);
        progress.blob_done(desc, outcome);
        for (i, e) in errors {
            failed.entry(i).or_insert(e);
        }
    }
    drop(results);

    let mut summary = CopySummary {
        blobs_uploaded: counts.written.into_inner(),
        bytes_uploaded: counts.bytes.into_inner(),
        blobs_mounted: counts.mounted.into_inner(),
        blobs_present: counts.present.into_inner(),
        ..CopySummary::default()
    };
    // Manifests: `jobs` images at a time where the destinations allow it; the images of
    // one destination name keep their order (the later one names it last, as one by one).
    let width = if jobs.iter().all(|j| j.destination.concurrent_manifests()) {
        opts.jobs.max(1)
    } else {
        1
    };
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for (i, p) in planned.iter().enumerate() {
        if p.is_none() || failed.contains_key(&i) {
            continue;
        }
        let g = *group_of
            .entry(jobs[i].destination.name())
            .or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
        groups[g].push(i);
    }
    let planned_ref = &planned;
    let mut written: Vec<(usize, Result<Wrote, CopyError>)> = stream::iter(groups)
        .map(|group| async move {
            let mut out = Vec::with_capacity(group.len());
            for i in group {
                let p = planned_ref[i].as_ref().expect("grouped jobs are planned");
                out.push((i, write_manifests(&jobs[i], p, opts, width).await));
            }
            out
        })
        .buffer_unordered(width)
        .flat_map(stream::iter)
        .collect()
        .await;
    written.sort_by_key(|(i, _)| *i);
    for (i, r) in written {
        let (job, p) = (
            &jobs[i],
            planned[i].as_ref().expect("written jobs are planned"),
        );
        match r {
            Ok((n, top)) => {
                summary.manifests += n;
                summary.images += 1;
                // An index is rewritten by a conversion, or by naming children whose layers were gzipped.
                let gzipped =
                    p.walk.is_index() && p.writes.last().map(|t| t.digest()) != Some(&top);
                if p.rewritten || gzipped {
                    summary.rewritten.push(Rewritten {
                        image: job.destination.name(),
                        original: p.source_digest.clone(),
                        pushed: top.clone(),
                    });
                }
                summary.copied.push(Copied {
                    source: job.source.name(),
                    destination: job.destination.name(),
                    source_digest: p.source_digest.clone(),
                    digest: top,
                    manifests: n,
                });
            }
            Err(e) => {
                failed.insert(i, e);
            }
        }
    }
    (summary, failed.into_iter().collect())
}

#[derive(Default)]
struct Counts {
    written: AtomicUsize,
    bytes: AtomicU64,
    mounted: AtomicUsize,
    present: AtomicUsize,
}

/// Moves one blob between two transports: skipped when the destination has
/// it or can mount it, else read from the source and put (verified on the way).
pub async fn copy_blob<S: Source, D: Destination>(
    source: &S,
    destination: &D,
    desc: &Descriptor,
) -> Result<Put, CopyError> {
    let dst_err = |e: TransportError| CopyError::Destination {
        image: format!("{} (blob {})", destination.name(), desc.digest),
        source: Box::new(e),
    };
    if let Some(put) = destination.reuse_blob(desc).await.map_err(dst_err)? {
        return Ok(put);
    }
    // The source opens the bytes while the destination gets ready to take them.
    destination
        .put_blob_opening(desc, foreign::open_blob(source, desc))
        .await
        .map_err(|e| match e {
            OpeningPutError::Source(cause) => CopyError::Source {
                image: format!("{} (blob {})", source.name(), desc.digest),
                cause,
            },
            OpeningPutError::Destination(e) => dst_err(e),
        })
}

/// Moves one layer the source serves uncompressed, gzipped on the way; returns how it was
/// put and the compressed layer's descriptor, or `None` when the destination had the plain
/// layer already and keeps it as it is (containers/image reuses it the same way; only a
/// layer whose type says plain tar, not one a `docker save` archive labels gzip).
async fn copy_compressed<S: Source, D: Destination>(
    source: &S,
    destination: &D,
    desc: &Descriptor,
) -> Result<(Put, Option<Descriptor>), CopyError> {
    let src_err = |cause: String| CopyError::Source {
        image: format!("{} (blob {})", source.name(), desc.digest),
        cause,
    };
    let dst_err = |digest: &Digest, e: TransportError| CopyError::Destination {
        image: format!("{} (blob {})", destination.name(), digest),
        source: Box::new(e),
    };
    if media_type::is_uncompressed_layer(&desc.media_type)
        && let Some(put) = destination
            .reuse_blob(desc)
            .await
            .map_err(|e| dst_err(&desc.digest, e))?
    {
        return Ok((put, None));
    }
    let body = foreign::open_blob(source, desc).await.map_err(src_err)?;
    let (new, body) = compress::gzip_layer(desc, body).await.map_err(src_err)?;
    let put = match destination.reuse_blob(&new).await {
        Ok(Some(put)) => Ok(put),
        Ok(None) => destination.put_blob(&new, body).await,
        Err(e) => Err(e),
    }
    .map_err(|e| dst_err(&new.digest, e))?;
    Ok((put, Some(new)))
}

/// [`copy_blob`] for one job (or a blob a conversion made, from memory), counted.
async fn transfer<S: Source, D: Destination>(
    job: &Job<S, D>,
    planned: &Planned,
    desc: &Descriptor,
    counts: &Counts,
) -> Result<Put, CopyError> {
    let put = match planned.new_blobs.get(&desc.digest) {
        Some(bytes) => {
            let dst_err = |e: TransportError| CopyError::Destination {
                image: format!("{} (blob {})", job.destination.name(), desc.digest),
                source: Box::new(e),
            };
            if let Some(put) = job.destination.reuse_blob(desc).await.map_err(dst_err)? {
                put
            } else {
                let body = BlobBody::Local(crate::blob::BlobLocation {
                    size: bytes.len() as u64,
                    source: std::sync::Arc::new(crate::blob::Memory(bytes.clone())),
                });
                job.destination
                    .put_blob(desc, body)
                    .await
                    .map_err(dst_err)?
            }
        }
        None if planned.compress.contains(&desc.digest) => {
            let (put, new) = copy_compressed(&job.source, &job.destination, desc).await?;
            if let Some(new) = new {
                planned
                    .compressed
                    .lock()
                    .expect("never poisoned")
                    .insert(desc.digest.clone(), new);
            }
            put
        }
        None => copy_blob(&job.source, &job.destination, desc).await?,
    };
    match put {
        Put::Present => counts.present.fetch_add(1, Ordering::Relaxed),
        Put::Mounted => counts.mounted.fetch_add(1, Ordering::Relaxed),
        Put::Written => {
            counts.bytes.fetch_add(desc.size, Ordering::Relaxed);
            counts.written.fetch_add(1, Ordering::Relaxed)
        }
    };
    Ok(put)
}

/// What writing one image's manifests did: how many, and the top's digest as written.
type Wrote = (usize, Digest);

/// Children first, then the top with its name; a refused sparse index says how to get past it.
async fn write_manifests<S: Source, D: Destination>(
    job: &Job<S, D>,
    p: &Planned,
    opts: &CopyOptions,
    width: usize,
) -> Result<Wrote, CopyError> {
    let dst_err = |e: TransportError| CopyError::Destination {
        image: job.destination.name(),
        source: Box::new(e),
    };
    // Layers gzipped on the way are named by their compressed digests, in every manifest that
    // names them and in the indexes above (none gzipped, when the destination had every plain
    // layer: the manifests go as they are).
    let compressed = p.compressed.lock().expect("never poisoned").clone();
    let rewritten;
    let writes = if compressed.is_empty() {
        &p.writes
    } else {
        rewritten = compress::rewrite_manifests(&p.writes, &compressed).map_err(|cause| {
            CopyError::Source {
                image: job.source.name(),
                cause,
            }
        })?;
        &rewritten
    };
    let (top, children) = writes.split_last().expect("the top is always written");
    // Children `width` at a time, the first error winning; but the walk lists a nested index
    // after its own children, so an index waits for every manifest before it and goes alone.
    for run in children.split_inclusive(|c| crate::media_type::is_index(c.media_type())) {
        let (last, images) = run
            .split_last()
            .expect("split_inclusive yields no empty run");
        let (images, last) = if crate::media_type::is_index(last.media_type()) {
            (images, Some(last))
        } else {
            (run, None)
        };
        let mut puts = stream::iter(images)
            .map(|c| job.destination.put_manifest(c))
            .buffered(width.max(1));
        while let Some(r) = puts.next().await {
            r.map_err(dst_err)?;
        }
        drop(puts);
        if let Some(index) = last {
            job.destination.put_manifest(index).await.map_err(dst_err)?;
        }
    }
    // Children left out by the bundle's platform choice, or not in the source.
    let absent = p
        .walk
        .children
        .iter()
        .filter(|c| c.manifest.is_none())
        .count();
    match job.destination.commit(top).await {
        Ok(()) => Ok((p.writes.len(), top.digest().clone())),
        Err(e) if absent > 0 && !p.rewritten => Err(CopyError::SparseIndex {
            hint: opts.sparse_hint,
            image: job.destination.name(),
            digest: top.digest().clone(),
            absent,
            source: Box::new(e),
        }),
        Err(e) => Err(dst_err(e)),
    }
}
