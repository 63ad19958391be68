//! Turning an images list into a resolved plan before any blob moves: every
//! reference pinned to a manifest digest, platforms chosen, bundle names
//! assigned, and the set of unique blobs with their sizes. Every image that
//! cannot be resolved is reported, one line each, at this stage.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::{StreamExt, stream};

use crate::blob::BlobBody;
pub use crate::bundlefile::format::{Failure, PlatformEntry};
use crate::digest::Digest;
use crate::image::{self, ImageWalk, Selection, WalkOptions, Walks};
use crate::manifest::{Descriptor, Platform, RawManifest};
use crate::reference::{ListEntry, validate_repository};
use crate::registry::{Client, ClientOptions};
use crate::store::Store;
pub use crate::transport::registry::Clients;
use crate::transport::registry::RegistrySource;
use crate::transport::{Source, TransportError};

/// How references become a plan.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Registry for references without a host (`--source`).
    pub default_registry: String,
    /// Platforms kept from multi-arch images.
    pub platforms: Vec<Platform>,
    /// Keep every platform (`--all-platforms`).
    pub all_platforms: bool,
    /// Name repositories with their host (`--keep-host`).
    pub keep_host: bool,
    /// How to reach source registries.
    pub client: ClientOptions,
    /// Manifests resolved at once.
    pub jobs: usize,
    /// Bring each image's referrers (signatures, attestations, SBOMs) along (`--with-referrers`).
    pub with_referrers: bool,
}

/// An image of the list, resolved.
#[derive(Debug, Clone)]
pub struct PlannedImage {
    /// Its `##section`.
    pub section: Option<String>,
    /// The reference as written.
    pub source: String,
    /// `file:line` of the list entry, so a failure later on can name it.
    pub location: String,
    /// Registry host asked (shared by every image of the run naming it, as the two below).
    pub registry: Arc<str>,
    /// Repository asked at that registry.
    pub remote_repository: Arc<str>,
    /// Repository in the bundle.
    pub repository: Arc<str>,
    /// Tag in the bundle (none for a digest-only reference).
    pub tag: Option<String>,
    /// The top manifest's digest (the source's, never rewritten).
    pub digest: Digest,
    /// The walk of the image as chosen: kept children and their blobs (shared by every reference to it).
    pub walk: Arc<ImageWalk>,
}

impl PlannedImage {
    /// The top manifest's media type.
    pub fn media_type(&self) -> &str {
        self.walk.top.media_type()
    }

    /// For an index: every child, with whether it is kept (read off the walk, which every
    /// reference to the image shares, when the bundle's index is written).
    pub fn platforms(&self) -> Vec<PlatformEntry> {
        let top = self.walk.top.digest();
        self.walk
            .children
            .iter()
            .filter(|c| &c.parent == top)
            .map(|c| PlatformEntry {
                platform: c.platform_label(),
                digest: c.descriptor.digest.clone(),
                present: c.selected,
            })
            .collect()
    }

    /// The chosen children (deepest first), then the top manifest.
    pub fn manifests(&self) -> impl Iterator<Item = &RawManifest> {
        self.walk.manifests()
    }

    /// Configs and layers of the kept manifests.
    pub fn blobs(&self) -> &[Descriptor] {
        &self.walk.blobs
    }
}

/// Where a blob comes from.
#[derive(Debug, Clone)]
pub struct BlobSource {
    /// Its size.
    pub size: u64,
    /// Registry host.
    pub registry: String,
    /// A repository there that has it.
    pub repository: String,
    /// Its descriptor (for verification).
    pub descriptor: Descriptor,
}

/// The resolved plan.
#[derive(Debug, Default)]
pub struct Plan {
    /// Images resolved, in list order.
    pub images: Vec<PlannedImage>,
    /// Every manifest read, for copying the images without reading them again.
    pub seen: SeenManifests,
    /// Images that could not be.
    pub failures: Vec<Failure>,
    /// Every unique config and layer blob.
    pub blobs: BTreeMap<Digest, BlobSource>,
}

impl Plan {
    /// Adds a resolved image and its blobs (the first image naming a blob is where it is fetched from).
    fn add(&mut self, img: PlannedImage) {
        for b in img.blobs() {
            self.blobs
                .entry(b.digest.clone())
                .or_insert_with(|| BlobSource {
                    size: b.size,
                    registry: img.registry.to_string(),
                    repository: img.remote_repository.to_string(),
                    descriptor: b.clone(),
                });
        }
        self.images.push(img);
    }

    /// Bytes of all unique blobs.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.values().map(|b| b.size).sum()
    }
}

mod referrers;

/// What the images of one run share instead of each holding a copy: names (registries and
/// repositories: a list of 50,000 tags names a few hundred).
#[derive(Default)]
pub(crate) struct Shared {
    names: std::sync::Mutex<std::collections::HashSet<Arc<str>>>,
}

impl Shared {
    /// `name`, as the one copy this run holds.
    fn name(&self, name: &str) -> Arc<str> {
        let mut names = self.names.lock().unwrap();
        match names.get(name) {
            Some(n) => n.clone(),
            None => {
                let n: Arc<str> = Arc::from(name);
                names.insert(n.clone());
                n
            }
        }
    }
}

fn entry_label(e: &ListEntry) -> String {
    format!("{} ({}:{})", e.reference, e.file, e.line)
}

/// An image of a registry read through the bundle cache: manifests from the
/// cache when it has them, else from the registry (then cached, verified);
/// blobs from the registry. Bundling copies from it into the cache.
pub struct CachedRegistry {
    source: RegistrySource,
    cache: Store,
    /// The reference when it is a digest.
    pinned: Option<Digest>,
    /// Manifests already read, shared by every image of one run (a list names the same manifests many times).
    seen: SeenManifests,
    /// Resolve a tag with one GET rather than HEAD then GET (see [`CachedRegistry::tag_by_get`]).
    tag_by_get: bool,
}

/// Manifests read by a run, by digest (their bytes are shared, so holding them costs little).
pub type SeenManifests = Arc<std::sync::Mutex<HashMap<Digest, RawManifest>>>;

impl CachedRegistry {
    /// The image `repo@digest` (or `repo:tag`) at `client`'s registry, through `cache`.
    pub fn new(
        client: Client,
        repo: String,
        reference: String,
        cache: Store,
        seen: SeenManifests,
    ) -> CachedRegistry {
        let name = format!("{}/{repo}", client.host());
        CachedRegistry {
            pinned: Digest::parse(&reference).ok(),
            source: RegistrySource::new(client, repo, reference, name),
            cache,
            seen,
            tag_by_get: false,
        }
    }

    /// Resolves a tag with one GET of its manifest instead of a HEAD (then a GET by digest when
    /// the cache lacks it): for a cache that holds no blob, where the HEAD can never spare the GET.
    /// One request per tag instead of two, and the digest is that of the very bytes received.
    pub fn tag_by_get(mut self, yes: bool) -> CachedRegistry {
        self.tag_by_get = yes;
        self
    }

    async fn get(&self, digest: &Digest) -> Result<Option<RawManifest>, TransportError> {
        if let Some(m) = self.seen.lock().unwrap().get(digest) {
            return Ok(Some(m.clone()));
        }
        let m = match self
            .cache
            .has_blob(digest)
            .then(|| self.cache.read_manifest(digest))
        {
            Some(Ok(m)) => Some(m),
            _ => {
                let m = self.source.manifest(digest).await?;
                if let Some(m) = &m {
                    self.cache.put_blob_bytes(m.bytes())?;
                }
                m
            }
        };
        if let Some(m) = &m {
            self.seen.lock().unwrap().insert(digest.clone(), m.clone());
        }
        Ok(m)
    }
}

impl Source for CachedRegistry {
    fn name(&self) -> String {
        self.source.name()
    }
    async fn top(&self) -> Result<RawManifest, TransportError> {
        // A pinned digest the cache (or this run) holds needs no GET; a written digest, no request at all.
        let pinned = match &self.pinned {
            Some(d) => Some(d.clone()),
            None if self.tag_by_get => None,
            None => self.source.pin().await?,
        };
        match pinned {
            // `get` caches what it fetches.
            Some(d) => self.get(&d).await?.ok_or_else(|| {
                TransportError::NotFound(format!("{}: manifest {d} not found", self.name()))
            }),
            None => {
                let m = self.source.get_by_tag().await?;
                self.cache.put_blob_bytes(m.bytes())?;
                self.seen
                    .lock()
                    .unwrap()
                    .insert(m.digest().clone(), m.clone());
                Ok(m)
            }
        }
    }
    async fn manifest(&self, digest: &Digest) -> Result<Option<RawManifest>, TransportError> {
        self.get(digest).await
    }
    async fn blob(&self, desc: &Descriptor) -> Result<BlobBody, TransportError> {
        self.source.blob(desc).await
    }
    fn foreign_urls_first(&self) -> bool {
        self.source.foreign_urls_first()
    }
}

impl image::Manifests for CachedRegistry {
    type Error = TransportError;
    fn manifest(
        &self,
        digest: &Digest,
    ) -> impl std::future::Future<Output = Result<Option<RawManifest>, TransportError>> + Send {
        self.get(digest)
    }
}

#[allow(clippy::too_many_arguments)]
async fn resolve_one(
    entry: &ListEntry,
    opts: &PlanOptions,
    seen: &SeenManifests,
    walks: &Walks,
    shared: &Shared,
    clients: &Clients,
    cache: &Store,
    tag_by_get: bool,
) -> Result<PlannedImage, String> {
    let r = &entry.reference;
    let registry = r.registry(&opts.default_registry).to_string();
    let remote_repository = r.remote_repository(&opts.default_registry);
    let client = clients
        .get(&registry, &opts.client)
        .map_err(|e| e.to_string())?;
    let cached = CachedRegistry::new(
        client.clone(),
        remote_repository.clone(),
        r.remote_ref(),
        cache.clone(),
        seen.clone(),
    )
    .tag_by_get(tag_by_get);
    let repository = match (opts.keep_host, r.host()) {
        (true, Some(h)) => {
            // A port's ':' cannot stand in a repository name: `host:5000/x` is kept as `host_5000/x`.
            let name = format!(
                "{}/{}",
                h.to_ascii_lowercase().replace(':', "_"),
                r.repository()
            );
            validate_repository(&name).map_err(|_| {
                format!("--keep-host: host {h:?} cannot be part of a repository name")
            })?;
            name
        }
        _ => r.repository().to_string(),
    };
    let top = cached.top().await.map_err(|e| e.to_string())?;
    let walk_opts = WalkOptions {
        selection: if opts.all_platforms {
            Selection::All
        } else {
            Selection::Platforms(opts.platforms.clone())
        },
        allow_absent: false,
    };
    let walk = walks
        .walk(&cached, top, &walk_opts)
        .await
        .map_err(|e| e.to_string())?;
    Ok(PlannedImage {
        section: entry.section.clone(),
        source: r.to_string(),
        location: format!("{}:{}", entry.file, entry.line),
        registry: shared.name(&registry),
        remote_repository: shared.name(&remote_repository),
        repository: shared.name(&repository),
        tag: r.effective_tag().map(str::to_string),
        digest: walk.top.digest().clone(),
        walk,
    })
}

/// Pings each distinct registry of the list once (all at once): the dead ones, with why, so
/// their images fail on one check instead of each retrying on its own.
async fn check_registries(
    entries: &[ListEntry],
    opts: &PlanOptions,
    clients: &Clients,
) -> HashMap<String, String> {
    let hosts: std::collections::BTreeSet<&str> = entries
        .iter()
        .map(|e| e.reference.registry(&opts.default_registry))
        .collect();
    stream::iter(hosts)
        .map(|host| async move {
            let alive = match clients.get(host, &opts.client) {
                Ok(c) => c.ping().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            (host.to_string(), alive)
        })
        .buffer_unordered(crate::limits::DEFAULT_JOBS)
        .filter_map(|(h, r)| async move { r.err().map(|cause| (h, cause)) })
        .collect()
        .await
}

/// Whether `cache` holds no blob at all (a new cache: no manifest a HEAD could find there).
fn holds_no_blob(cache: &Store) -> bool {
    crate::store::paths::ALGORITHMS.iter().all(|&alg| {
        std::fs::read_dir(cache.path(crate::store::paths::PathSpec::BlobsAlgorithm(alg)))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    })
}

/// Resolves every entry (several at once), then checks bundle names for clashes.
pub async fn resolve(
    entries: &[ListEntry],
    opts: &PlanOptions,
    clients: &Clients,
    cache: &Store,
) -> Plan {
    resolve_with(entries, opts, clients, cache, &|_| {}).await
}

/// [`resolve`], calling `resolved` with each image as soon as it is resolved (in no set order,
/// before the whole list is), so its blobs can start moving while other tags are still asked.
pub async fn resolve_with(
    entries: &[ListEntry],
    opts: &PlanOptions,
    clients: &Clients,
    cache: &Store,
    resolved: &(dyn Fn(&PlannedImage) + Sync),
) -> Plan {
    let opts = Arc::new(opts.clone());
    let seen = &SeenManifests::default();
    let walks = &Walks::default();
    let shared = &Shared::default();
    let dead = check_registries(entries, &opts, clients).await;
    let tag_by_get = holds_no_blob(cache);
    let mut results: Vec<(usize, Result<PlannedImage, String>)> = Vec::new();
    let live: Vec<(usize, &ListEntry)> = entries
        .iter()
        .enumerate()
        .filter(
            |(i, e)| match dead.get(e.reference.registry(&opts.default_registry)) {
                // A digest the cache holds may need no network at all (an offline re-bundle):
                // it resolves on its own and fails on its own if it does need the registry.
                Some(_) if e.reference.digest().is_some_and(|d| cache.has_blob(d)) => true,
                Some(cause) => {
                    results.push((*i, Err(cause.clone())));
                    false
                }
                None => true,
            },
        )
        .collect();
    let pause = crate::limits::test_millis(crate::limits::ENV_PLAN_PAUSE_MS);
    let resolved: Vec<(usize, Result<PlannedImage, String>)> = stream::iter(live)
        .map(|(i, e)| {
            let opts = opts.clone();
            async move {
                if let Some(pause) = pause.filter(|_| i + 1 == entries.len()) {
                    tokio::time::sleep(pause).await;
                }
                let r =
                    resolve_one(e, &opts, seen, walks, shared, clients, cache, tag_by_get).await;
                if let Ok(img) = &r {
                    resolved(img);
                }
                (i, r)
            }
        })
        .buffer_unordered(opts.jobs.max(1))
        .collect()
        .await;
    results.extend(resolved);
    let mut ordered: Vec<_> = results;
    ordered.sort_by_key(|(i, _)| *i);
    let mut plan = Plan {
        seen: seen.clone(),
        // Sized once: a list of many references would otherwise hold up to twice the room it needs.
        images: Vec::with_capacity(ordered.len()),
        ..Plan::default()
    };
    let mut names: BTreeMap<(Arc<str>, String), (String, Digest)> = BTreeMap::new();
    for (i, r) in ordered {
        let e = &entries[i];
        match r {
            Ok(img) => {
                if let Some(tag) = &img.tag {
                    let key = (img.repository.clone(), tag.clone());
                    if let Some((other, digest)) = names.get(&key) {
                        if digest != &img.digest {
                            plan.failures.push(Failure {
                                image: entry_label(e),
                                location: Some(format!("{}:{}", e.file, e.line)),
                                cause: format!(
                                    "{other} is also named {}:{tag} in the bundle, with other content; use --keep-host to keep them apart",
                                    img.repository
                                ),
                            });
                        }
                        continue;
                    }
                    names.insert(key, (img.source.clone(), img.digest.clone()));
                }
                plan.add(img);
            }
            Err(cause) => plan.failures.push(Failure {
                image: entry_label(e),
                location: Some(format!("{}:{}", e.file, e.line)),
                cause,
            }),
        }
    }
    if opts.with_referrers {
        referrers::carry(&mut plan, &opts, seen, walks, shared, clients, cache).await;
    }
    plan
}
