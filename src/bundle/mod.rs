//! The main job: images list → plan → pull into the cache → hardlink into a
//! fresh root → pack `ferry-bundle.json` and the root into one deterministic,
//! seekable `tar.zst`, written under a temp name and renamed into place.

pub mod cache;
mod early;
pub mod link_s3;
mod pack;
mod space;
pub mod split;
pub mod unpack;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Instant;

use crate::bundlefile::delta::Base;
use crate::bundlefile::format::{BlobEntry, BundleImage, BundleIndex, FORMAT};
pub use crate::bundlefile::{format, read, read_index};
use crate::copy::{BlobOutcome, CopyOptions, Job, MultiArch};
use crate::digest::Digest;
use crate::manifest::Descriptor;
use crate::plan::CachedRegistry;
use crate::plan::{self, Clients, Failure, Plan, PlanOptions};
use crate::reference::ListEntry;
use crate::store::Store;
use crate::transport::root::RootDest;
pub use space::{NotWritable, SpaceError};

/// How the bundle file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// Seekable zstd.
    Zstd,
    /// Plain tar.
    None,
}

/// Everything `ferry bundle` needs besides the list.
#[derive(Debug, Clone)]
pub struct BundleOptions {
    /// Resolution and source options.
    pub plan: PlanOptions,
    /// The persistent blob cache (a registry root).
    pub cache: PathBuf,
    /// The bundle file to write.
    pub output: PathBuf,
    /// Also leave the hardlinked root here.
    pub root_dir: Option<PathBuf>,
    /// Compression of the file.
    pub compression: Compression,
    /// zstd level.
    pub level: i32,
    /// Blobs fetched at once.
    pub jobs: usize,
    /// Write the bundle without images that failed (still an error afterwards).
    pub keep_going: bool,
    /// Entry mtime (`SOURCE_DATE_EPOCH`).
    pub mtime: u64,
    /// `--sign KEY`: sign `ferry-bundle.json` (inside the bundle and as `OUTPUT.minisig`).
    pub sign: Option<Arc<crate::bundlefile::sign::SigningKey>>,
    /// `--split-size`: write `OUTPUT.000`, `OUTPUT.001`, … each at most this many bytes.
    pub split_size: Option<u64>,
    /// `--since OLD`: a delta bundle that leaves out every blob OLD carries.
    pub since: Option<PathBuf>,
}

impl BundleOptions {
    /// The file a reader is given: `-o`'s path, or its first part `OUTPUT.000` when split.
    pub fn written_path(&self) -> PathBuf {
        match self.split_size {
            Some(_) => crate::bundlefile::parts::part_path(&self.output, 0),
            None => self.output.clone(),
        }
    }
}

pub use crate::copy::{NoProgress, Progress};

/// What a bundle run did, for `--json` and the closing message.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BundleSummary {
    /// The file written.
    pub output: PathBuf,
    /// Images in the bundle.
    pub images: usize,
    /// Images left out.
    pub failed: Vec<Failure>,
    /// Unique config and layer blobs.
    pub blobs: usize,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Blobs downloaded by this run.
    pub blobs_downloaded: usize,
    /// Bytes downloaded by this run.
    pub bytes_downloaded: u64,
    /// Blobs that were in the cache already.
    pub blobs_reused: usize,
    /// Bytes that were in the cache already.
    pub bytes_reused: u64,
    /// Size of the bundle file.
    pub bundle_bytes: u64,
    /// Wall time.
    pub seconds: f64,
    /// Multi-platform images kept with only some platforms (a stock registry answers 404 for the rest).
    pub sparse: Vec<SparseImage>,
}

/// An index bundled with some of its platforms left out: said at bundle time, since a stock
/// registry serving the bundle answers 404 for those children and `skopeo copy --all` from it fails.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SparseImage {
    /// The reference as written.
    pub image: String,
    /// Platforms in the bundle.
    pub kept: Vec<String>,
    /// Platforms left out.
    pub left_out: Vec<String>,
}

/// The sparse indexes of a plan, one per image (for the bundle-time notice and `--json`).
pub fn sparse_images(plan: &Plan) -> Vec<SparseImage> {
    plan.images
        .iter()
        .map(|i| (i, i.platforms()))
        .filter(|(_, platforms)| platforms.iter().any(|p| !p.present))
        .map(|(i, platforms)| SparseImage {
            image: i.source.clone(),
            kept: platforms
                .iter()
                .filter(|p| p.present)
                .map(|p| p.platform.clone())
                .collect(),
            left_out: platforms
                .iter()
                .filter(|p| !p.present)
                .map(|p| p.platform.clone())
                .collect(),
        })
        .collect()
}

/// Why a bundle was not written (or was written without some images).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Images could not be resolved or fetched; one line each.
    #[error("{}", fmt_failures(.failures, .written))]
    Images {
        /// Each image and its cause.
        failures: Vec<Failure>,
        /// The bundle written without them (`--keep-going`).
        written: Option<PathBuf>,
        /// What was written (`--keep-going`), for `--json`.
        summary: Option<Box<BundleSummary>>,
    },
    /// Not enough disk space for what the plan will write.
    #[error(transparent)]
    Space(#[from] SpaceError),
    /// The output directory or the cache cannot be written.
    #[error(transparent)]
    NotWritable(#[from] space::NotWritable),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Writing the bundle file failed.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A cached blob changed since it was verified; it has been removed so a re-run downloads it again.
    #[error("cached blob {digest} in {} is corrupt ({cause}); it was removed: run the bundle again to download it", cache.display())]
    CorruptCache {
        /// The blob.
        digest: Digest,
        /// What did not match.
        cause: String,
        /// The cache directory.
        cache: PathBuf,
    },
    /// The disk filled up while the bundle was written (the temp file is removed).
    #[error("no space left on the device of {} while writing {}; the partial file was removed", path.display(), file.display())]
    NoSpace {
        /// The directory written to.
        path: PathBuf,
        /// The bundle file.
        file: PathBuf,
    },
    /// The list selected nothing.
    #[error("the images list selects no image")]
    Empty,
    /// The cache is locked by a prune or gc, or its records failed.
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    /// `--since OLD` could not be read as a bundle or its `ferry-bundle.json`.
    #[error("--since: {0}")]
    Since(crate::bundlefile::read::ReadError),
}

fn fmt_failures(failures: &[Failure], written: &Option<PathBuf>) -> String {
    let mut lines: Vec<String> = failures
        .iter()
        .map(|f| format!("{}: {}", f.image, f.cause))
        .collect();
    match written {
        Some(p) => lines.push(format!(
            "{} image(s) failed; {} was written without them",
            failures.len(),
            p.display()
        )),
        None => lines.push(format!(
            "{} image(s) failed; no bundle written (what was downloaded stays in the cache)",
            failures.len()
        )),
    }
    lines.join("\n")
}

/// The main job; see the module docs.
pub async fn bundle(
    entries: &[ListEntry],
    opts: &BundleOptions,
    progress: Arc<dyn Progress>,
) -> Result<BundleSummary, BundleError> {
    let start = Instant::now();
    if entries.is_empty() {
        return Err(BundleError::Empty);
    }
    // The cache is not fsync'd blob by blob: every byte is re-hashed when it is
    // packed, so a cache damaged by a crash is caught there (and repaired by a
    // re-run), while only the bundle itself has to reach the disk.
    // The destination and the cache are checked before anything is resolved or downloaded.
    space::check_writable(&output_dir(&opts.output), "output directory")?;
    let base = match &opts.since {
        Some(old) => Some(Base::open(old).map_err(BundleError::Since)?),
        None => None,
    };
    let cache = Store::create(&opts.cache)?.with_durable(false);
    space::check_writable(&opts.cache, "cache")?;
    // Held (shared) until the run ends: `ferry cache prune`/`gc` refuse meanwhile.
    let _lock = cache::lock_shared(&opts.cache)?;
    if let Some(dir) = &opts.root_dir
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        return Err(BundleError::Write {
            path: dir.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "--root-dir must be a new or empty directory",
            ),
        });
    }
    let clients = Clients::default();
    // Each image's blobs start moving as soon as its manifests are read (see `early`), on
    // the connections a host allows (`--max-per-host` may be below `--jobs`).
    let early = Arc::new(early::EarlyFetch::new(
        cache.clone(),
        opts.jobs.min(opts.plan.client.max_concurrent),
    ));
    let result = fetch_and_pack(
        entries, opts, progress, start, base, &cache, &clients, &early,
    )
    .await;
    if result.is_err() {
        // Nothing keeps writing into the cache once the command has failed.
        early.stop().await;
    }
    result
}

/// The run once the cache is open: resolve the plan (blobs starting `early`), check the
/// space, copy every image into the cache while the packer writes the bundle, then
/// `--root-dir` and the cache's record.
#[allow(clippy::too_many_arguments)]
async fn fetch_and_pack(
    entries: &[ListEntry],
    opts: &BundleOptions,
    progress: Arc<dyn Progress>,
    start: Instant,
    base: Option<Base>,
    cache: &Store,
    clients: &Clients,
    early: &Arc<early::EarlyFetch>,
) -> Result<BundleSummary, BundleError> {
    let start_early = |img: &plan::PlannedImage| {
        if let Ok(client) = clients.get(&img.registry, &opts.plan.client) {
            early.start(img, client);
        }
    };
    let mut plan: Plan =
        plan::resolve_with(entries, &opts.plan, clients, cache, &start_early).await;
    early.close();
    tracing::info!(
        "plan: {} images, {} blobs, resolved in {:.2}s",
        plan.images.len(),
        plan.blobs.len(),
        start.elapsed().as_secs_f64()
    );
    if !plan.failures.is_empty() && !opts.keep_going {
        return Err(BundleError::Images {
            failures: plan.failures,
            written: None,
            summary: None,
        });
    }
    if plan.images.is_empty() {
        return Err(BundleError::Images {
            failures: plan.failures,
            written: None,
            summary: None,
        });
    }

    // Blobs this run fetches: those the cache lacks, and those it holds because an early
    // download of this run brought them (or is bringing them).
    // Room is needed for what is not in the cache yet (early downloads have taken theirs already).
    let (mut missing, mut absent_bytes) = (BTreeSet::new(), 0u64);
    for (d, blob) in &plan.blobs {
        let present = cache.has_blob(d);
        if !present {
            absent_bytes += blob.size;
        }
        if !present || early.started(d) {
            missing.insert(d.clone());
        }
    }
    let fetch_bytes: u64 = missing.iter().map(|d| plan.blobs[d].size).sum();
    let pack_bytes = plan.blob_bytes();
    space::check(
        &opts.cache,
        absent_bytes,
        &output_dir(&opts.output),
        pack_bytes,
    )?;
    progress.planned(plan.images.len(), missing.len(), fetch_bytes);

    // Copy every image into the cache with the copy engine, while the packer
    // writes each blob as soon as it (and every blob before it) is there: the
    // cache destination takes blobs in the layout's order, `jobs` at a time.
    let (layout, index_json) = layout_and_index(&plan, opts.mtime, base.as_ref());
    // (blob, fetched fine, downloaded and verified by this run)
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(Digest, bool, bool)>();
    // A delta's left-out blobs are still fetched into the cache (for --root-dir and later runs), not packed.
    let left_out: Arc<BTreeSet<Digest>> = Arc::new(
        base.as_ref()
            .map(|b| b.carried().into_iter().cloned().collect())
            .unwrap_or_default(),
    );
    // One copy per distinct image that lacks a blob in the cache: the plan put every manifest
    // there already, so an image whose blobs are all cached needs no copy (a warm run copies nothing).
    let (copies, copy_of) = images_to_copy(&plan, &missing);
    let packer = {
        // The index moves to the packer (a list of thousands of tags makes it large; a copy would double it).
        let (opts, cache) = (opts.clone(), cache.clone());
        // The blobs the copies hand over, in order; every other blob is in the cache already.
        let blobs: BTreeSet<Digest> = copies
            .iter()
            .flat_map(|&i| plan.images[i].blobs().iter().map(|b| &b.digest))
            .filter(|d| !left_out.contains(d))
            .cloned()
            .collect();
        tokio::task::spawn_blocking(move || {
            // How long the packer stood waiting for downloads, for the --debug timeline.
            let (mut waited, mut waits) = (std::time::Duration::ZERO, 0usize);
            let mut ready = |d: &Digest| {
                if !blobs.contains(d) {
                    return Ok(true); // a manifest: cached by the plan, re-hashed as it is packed
                }
                let t = Instant::now();
                let got = ready_rx.recv();
                let w = t.elapsed();
                if w > std::time::Duration::from_micros(200) {
                    waited += w;
                    waits += 1;
                    tracing::debug!(
                        "packer waited {:.1} ms for {d} at {:.3}s",
                        w.as_secs_f64() * 1e3,
                        start.elapsed().as_secs_f64()
                    );
                }
                match got {
                    Ok((got, true, fresh)) if &got == d => Ok(!fresh),
                    _ => Err(std::io::Error::other(Aborted)),
                }
            };
            let r = write_bundle(&opts, index_json, &layout, &cache, &mut ready, start);
            tracing::debug!(
                "packer: waited {:.1} ms for downloads ({waits} times); done at {:.3}s",
                waited.as_secs_f64() * 1e3,
                start.elapsed().as_secs_f64()
            );
            r
        })
    };
    let mut jobs = Vec::with_capacity(copies.len());
    for img in copies.iter().map(|&i| &plan.images[i]) {
        let client =
            clients
                .get(&img.registry, &opts.plan.client)
                .map_err(|e| BundleError::Images {
                    failures: vec![Failure {
                        image: format!("{} ({})", img.source, img.location),
                        location: Some(img.location.clone()),
                        cause: e.to_string(),
                    }],
                    written: None,
                    summary: None,
                })?;
        jobs.push(Job {
            source: CachedRegistry::new(
                client,
                img.remote_repository.to_string(),
                img.digest.to_string(),
                cache.clone(),
                plan.seen.clone(),
            ),
            destination: early::EarlyCache::new(cache.clone(), early.clone()),
        });
    }
    let copy_opts = CopyOptions {
        multi_arch: if opts.plan.all_platforms {
            MultiArch::All
        } else {
            MultiArch::Platforms(opts.plan.platforms.clone())
        },
        jobs: opts.jobs.max(1),
        ..CopyOptions::default()
    };
    let feed = PackFeed {
        ready: std::sync::Mutex::new(ready_tx),
        progress: progress.clone(),
        left_out: left_out.clone(),
        early: early.clone(),
    };
    let (copied, failed) = crate::copy::copy_each(&jobs, &copy_opts, &feed).await;
    drop(feed);
    let job_failures: BTreeMap<usize, String> = failed
        .into_iter()
        .map(|(i, e)| (i, e.to_string()))
        .collect();
    let image_failures: BTreeMap<usize, String> = copy_of
        .iter()
        .enumerate()
        .filter_map(|(i, j)| {
            j.and_then(|j| job_failures.get(&j))
                .map(|cause| (i, cause.clone()))
        })
        .collect();
    let (early_blobs, early_bytes) = early.written();
    tracing::info!(
        "fetch: {} blobs downloaded ({early_blobs} of them while the plan was resolved) at {:.2}s",
        copied.blobs_uploaded + early_blobs,
        start.elapsed().as_secs_f64()
    );
    let packed = crate::task::join(packer)
        .await
        .map_err(|source| BundleError::Write {
            path: opts.output.clone(),
            source,
        })?;
    let blobs_downloaded = copied.blobs_uploaded + early_blobs;
    let bytes_downloaded = copied.bytes_uploaded + early_bytes;

    let bundle_bytes = if image_failures.is_empty() {
        packed.map_err(|e| corrupt_cache(e, cache, opts))?
    } else {
        let mut kept = Vec::new();
        for (i, img) in std::mem::take(&mut plan.images).into_iter().enumerate() {
            match image_failures.get(&i) {
                Some(cause) => plan.failures.push(Failure {
                    image: format!("{} ({})", img.source, img.location),
                    location: Some(img.location.clone()),
                    cause: cause.clone(),
                }),
                None => kept.push(img),
            }
        }
        plan.images = kept;
        if !opts.keep_going || plan.images.is_empty() {
            return Err(BundleError::Images {
                failures: plan.failures,
                written: None,
                summary: None,
            });
        }
        // --keep-going: pack again without the failed images; everything left is in the cache.
        let (layout, index_json) = layout_and_index(&plan, opts.mtime, base.as_ref());
        let (o, c) = (opts.clone(), cache.clone());
        crate::task::unblock(move || {
            write_bundle(&o, index_json, &layout, &c, &mut |_| Ok(true), start)
        })
        .await
        .map_err(|source| BundleError::Write {
            path: opts.output.clone(),
            source,
        })?
        .map_err(|e| corrupt_cache(e, cache, opts))?
    };
    tracing::info!("packed at {:.2}s", start.elapsed().as_secs_f64());

    if let Some(dir) = &opts.root_dir {
        // Each image copied from the cache into the root, as the bundle selected it (so
        // children the cache holds from runs with other platforms stay out, and the tree
        // equals the bundle's); blobs are hardlinked from the cache.
        let root = Store::create(dir)?.with_durable(false);
        let cached = Arc::new(crate::transport::root::Unscoped(cache.clone()));
        let mut copies = Vec::with_capacity(plan.images.len());
        for img in &plan.images {
            let name = crate::bundlefile::format::image_name(
                &img.repository,
                img.tag.as_deref(),
                &img.digest,
            );
            let r =
                crate::reference::Reference::parse(&format!("{}@{}", img.repository, img.digest))
                    .map_err(|e| BundleError::Write {
                    path: dir.clone(),
                    source: std::io::Error::other(format!("{name}: {e}")),
                })?;
            copies.push(Job {
                source: crate::transport::catalog::CatalogSource::new(cached.clone(), r, name),
                destination: RootDest::importing(
                    root.clone(),
                    img.repository.to_string(),
                    img.tag.clone(),
                    cache.clone(),
                ),
            });
        }
        crate::copy::copy_all(copies, &copy_opts, &crate::copy::NoProgress)
            .await
            .map_err(|e| BundleError::Write {
                path: dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let _ = std::fs::remove_dir(root.path(crate::store::paths::PathSpec::Temp));
    }

    let summary = BundleSummary {
        output: opts.written_path(),
        images: plan.images.len(),
        failed: plan.failures.clone(),
        blobs: plan.blobs.len(),
        blob_bytes: pack_bytes,
        blobs_downloaded,
        bytes_downloaded,
        blobs_reused: plan.blobs.len() - missing.len(),
        bytes_reused: pack_bytes - fetch_bytes,
        bundle_bytes,
        seconds: start.elapsed().as_secs_f64(),
        sparse: sparse_images(&plan),
    };
    // What this run used, so `ferry cache gc` keeps it while the record is kept.
    cache::record(
        &opts.cache,
        &cache::RunRecord {
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            output: opts.output.display().to_string(),
            images: plan
                .images
                .iter()
                .map(|i| cache::RecordImage {
                    repository: i.repository.to_string(),
                    digest: i.digest.clone(),
                })
                .collect(),
        },
    )?;
    tracing::debug!("recorded at {:.3}s", start.elapsed().as_secs_f64());
    if !plan.failures.is_empty() {
        return Err(BundleError::Images {
            failures: plan.failures,
            written: Some(opts.written_path()),
            summary: Some(Box::new(summary)),
        });
    }
    Ok(summary)
}

/// The plan's images that need a copy into the cache: one per registry and top digest (the
/// cache takes blobs and manifests only, so the thousand tags of one image need one copy), and
/// only those with a blob in `missing`. Also, for each image of the plan, the index of the copy
/// that brings it (none when its blobs are all cached).
fn images_to_copy(plan: &Plan, missing: &BTreeSet<Digest>) -> (Vec<usize>, Vec<Option<usize>>) {
    let mut first: std::collections::HashMap<(&str, &Digest), Option<usize>> =
        std::collections::HashMap::new();
    let mut copies = Vec::new();
    let copy_of = plan
        .images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            *first
                .entry((&*img.registry, &img.digest))
                .or_insert_with(|| {
                    img.blobs()
                        .iter()
                        .any(|b| missing.contains(&b.digest))
                        .then(|| {
                            copies.push(i);
                            copies.len() - 1
                        })
                })
        })
        .collect();
    (copies, copy_of)
}

/// Hands each blob the copy engine finishes to the packer (in layout order), and downloads to the progress bar.
struct PackFeed {
    ready: std::sync::Mutex<std::sync::mpsc::Sender<(Digest, bool, bool)>>,
    progress: Arc<dyn Progress>,
    /// Blobs a delta leaves out: the packer does not wait for them.
    left_out: Arc<BTreeSet<Digest>>,
    /// The run's early downloads: a blob one of them wrote is as fresh as one the copy wrote.
    early: Arc<early::EarlyFetch>,
}

impl Progress for PackFeed {
    fn blob_done(&self, desc: &Descriptor, outcome: BlobOutcome) {
        let fresh = outcome == BlobOutcome::Written
            || (outcome == BlobOutcome::Present && self.early.fresh(&desc.digest));
        tracing::debug!(
            "blob done {} {} {:?}{}",
            desc.digest,
            desc.size,
            outcome,
            if fresh { " (fresh)" } else { "" }
        );
        if fresh {
            self.progress.fetched(desc.size);
        }
        if self.left_out.contains(&desc.digest) && outcome != BlobOutcome::Failed {
            return;
        }
        let _ = self.ready.lock().unwrap().send((
            desc.digest.clone(),
            outcome != BlobOutcome::Failed,
            fresh,
        ));
    }
}

/// The packer stopped because a blob it waited for could not be downloaded.
#[derive(Debug, thiserror::Error)]
#[error("a blob could not be downloaded")]
struct Aborted;

/// Turns a packing error caused by a corrupt cached blob into advice, removing the blob so a re-run fetches it.
fn corrupt_cache(e: BundleError, cache: &Store, opts: &BundleOptions) -> BundleError {
    match e {
        BundleError::Write { source, path } => match source
            .get_ref()
            .and_then(|e| e.downcast_ref::<pack::CorruptBlob>())
        {
            Some(c) => {
                let _ = std::fs::remove_file(
                    cache.path(crate::store::paths::PathSpec::BlobData(&c.digest)),
                );
                BundleError::CorruptCache {
                    digest: c.digest.clone(),
                    cause: c.cause.clone(),
                    cache: opts.cache.clone(),
                }
            }
            None => BundleError::Write { source, path },
        },
        other => other,
    }
}

/// The bundle's tree and `ferry-bundle.json`, both from the plan alone (the
/// same links `Store::link_image` writes, so `--root-dir` holds the same tree).
/// With a `base` (a delta), every link is kept but the blobs the base carries are
/// left out of the tree and recorded, each with the images that use it.
fn layout_and_index(plan: &Plan, mtime: u64, base: Option<&Base>) -> (pack::Layout, Vec<u8>) {
    use crate::store::paths::{PathSpec, path_for};
    fn rel(spec: PathSpec<'_>) -> PathBuf {
        path_for(Path::new(""), spec)
    }
    let link = |d: &Digest| pack::Content::Bytes(d.to_string().into_bytes());
    let carried = base.map(Base::carried).unwrap_or_default();
    let mut left_out: BTreeMap<Digest, (u64, Vec<String>)> = BTreeMap::new();
    let mut layout = pack::Layout::default();
    let mut blobs: BTreeSet<BlobEntry> = BTreeSet::new();
    let mut images = Vec::new();
    // Images already laid out under their repository: another tag of one has the same links.
    let mut linked: std::collections::HashSet<(&str, &Digest)> = std::collections::HashSet::new();
    for img in &plan.images {
        let again = !linked.insert((&*img.repository, &img.digest));
        let name =
            crate::bundlefile::format::image_name(&img.repository, img.tag.as_deref(), &img.digest);
        let mut blob = |layout: &mut pack::Layout, digest: &Digest, size: u64| {
            if carried.contains(digest) {
                let users = &mut left_out.entry(digest.clone()).or_default();
                users.0 = size;
                // Each image's names arrive together; repeats across images go below.
                if users.1.last() != Some(&name) {
                    users.1.push(name.clone());
                }
                return;
            }
            if again {
                return;
            }
            layout.add(
                &rel(PathSpec::BlobData(digest)),
                pack::Content::Blob(digest.clone(), size),
            );
            blobs.insert(BlobEntry {
                digest: digest.clone(),
                size,
            });
        };
        for m in img.manifests() {
            blob(&mut layout, m.digest(), m.bytes().len() as u64);
            if !again {
                layout.add(
                    &rel(PathSpec::RevisionLink(&img.repository, m.digest())),
                    link(m.digest()),
                );
            }
        }
        for b in img.blobs() {
            blob(&mut layout, &b.digest, b.size);
            if !again {
                layout.add(
                    &rel(PathSpec::LayerLink(&img.repository, &b.digest)),
                    link(&b.digest),
                );
            }
        }
        if let Some(tag) = &img.tag {
            layout.add_tag(&img.repository, tag, &img.digest);
        }
        images.push(BundleImage {
            section: img.section.clone(),
            source: img.source.clone(),
            repository: img.repository.to_string(),
            tag: img.tag.clone(),
            digest: img.digest.clone(),
            media_type: img.media_type().to_string(),
            platforms: img.platforms(),
        });
    }
    // Each image once per left-out blob, in first-use order (a linear check per name would cost
    // the square of the images using a blob).
    for (_, users) in left_out.values_mut() {
        let mut once = std::collections::HashSet::new();
        users.retain(|n| once.insert(n.clone()));
    }
    // Config and layer blobs the file carries (a delta's left-out ones are counted in `since`).
    let layer_blobs: BTreeSet<&Digest> = plan
        .images
        .iter()
        .flat_map(|i| i.blobs().iter().map(|b| &b.digest))
        .filter(|d| !carried.contains(d))
        .collect();
    let index = BundleIndex {
        format: FORMAT.to_string(),
        created_by: concat!("ferry ", env!("CARGO_PKG_VERSION")).to_string(),
        source_date_epoch: mtime,
        images,
        failed: plan.failures.clone(),
        blob_count: layer_blobs.len(),
        blob_bytes: layer_blobs.iter().map(|d| plan.blobs[*d].size).sum(),
        blobs: blobs.into_iter().collect(),
        since: base.map(|b| b.record(left_out)),
    };
    // Held while the whole bundle is packed, so sized exactly: counted first, then written
    // (a buffer grown by doubling would hold up to twice the room, and shrinking it copies).
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer_pretty(&mut count, &index).expect("index serialises");
    let mut json = Vec::with_capacity(count.0);
    serde_json::to_writer_pretty(&mut json, &index).expect("index serialises");
    (layout, json)
}

/// The directory a file goes into: its parent, `.` for a bare name (whose `parent()` is `""`).
fn output_dir(output: &Path) -> PathBuf {
    output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // The temp bundle is a file, which remove_dir_all does not remove.
        let _ = std::fs::remove_file(&self.0).or_else(|_| std::fs::remove_dir_all(&self.0));
    }
}

/// Writes a small file under a temp name, syncs it and renames it into place.
fn write_small(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = output_dir(path).join(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let guard = RemoveOnDrop(tmp.clone());
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::mem::forget(guard);
    Ok(())
}

/// Packs into `.<output>.tmp-<pid>` (or one temp file per part), fsyncs, renames; on any failure the temp files are removed.
fn write_bundle(
    opts: &BundleOptions,
    index_json: Vec<u8>,
    layout: &pack::Layout,
    cache: &Store,
    ready: &mut dyn FnMut(&Digest) -> std::io::Result<bool>,
    start: Instant,
) -> Result<u64, BundleError> {
    let output = &opts.output;
    let dir = output_dir(output);
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    // A run killed while packing leaves its temp file; remove those whose process is gone.
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let ours = |head: &str| {
            head.strip_prefix('.')
                .and_then(|h| h.strip_prefix(name.as_str()))
                .is_some_and(|rest| {
                    rest.is_empty()
                        || rest
                            .strip_prefix('.')
                            .is_some_and(|n| n.len() == 3 && n.bytes().all(|b| b.is_ascii_digit()))
                })
        };
        for e in rd.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if let Some((head, pid)) = f.rsplit_once(".tmp-")
                && ours(head)
                && let Ok(pid) = pid.parse::<u32>()
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let werr = |source: std::io::Error| {
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.kind() == std::io::ErrorKind::StorageFull
        {
            return BundleError::NoSpace {
                path: dir.clone(),
                file: output.to_path_buf(),
            };
        }
        BundleError::Write {
            path: output.to_path_buf(),
            source,
        }
    };
    let signature = match &opts.sign {
        Some(k) => Some(k.sign(&index_json).map_err(|e| BundleError::Write {
            path: output.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?),
        None => None,
    };
    let file = split::SplitFile::create(&dir, &name, opts.split_size).map_err(werr)?;
    let out = match opts.compression {
        Compression::None => pack::Output::Plain(std::io::BufWriter::with_capacity(
            1 << 20,
            pack::Writeback::new(file),
        )),
        Compression::Zstd => {
            let threads = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2);
            pack::Output::Zstd(pack::FrameWriter::new(file, opts.level, threads))
        }
    };
    let mut file = pack::write_tar(
        out,
        index_json,
        signature.as_deref().map(str::as_bytes),
        layout,
        cache,
        opts.mtime,
        ready,
    )
    .map_err(werr)?;
    tracing::debug!("packed, syncing at {:.3}s", start.elapsed().as_secs_f64());
    file.sync_all().map_err(werr)?;
    tracing::debug!("synced at {:.3}s", start.elapsed().as_secs_f64());
    let size = file.len();
    let detached = crate::bundlefile::sign::detached_path(output);
    match &signature {
        // The detached copy, for `minisign -V` users, is in place before the bundle is.
        Some(sig) => write_small(&detached, sig.as_bytes()).map_err(werr)?,
        // An earlier run's signature must not sit beside a bundle it does not sign.
        None => match std::fs::remove_file(&detached) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(werr(e)),
            _ => {}
        },
    }
    file.commit(output).map_err(werr)?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(werr)?;
    Ok(size)
}
