//! Turning an images list into a resolved plan before any blob moves: every
//! reference pinned to a manifest digest, platforms chosen, bundle names
//! assigned, and the set of unique blobs with their sizes. Every image that
//! cannot be resolved is reported, one line each, at this stage.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::{StreamExt, stream};

use crate::digest::Digest;
use crate::manifest::{Descriptor, Manifest, Platform, RawManifest};
use crate::media_type;
use crate::reference::{ListEntry, validate_repository};
use crate::registry::{Client, ClientOptions, RegistryError};
use crate::store::Store;

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
}

/// One child of an index and whether the plan keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlatformEntry {
    /// `os/arch[/variant]`, or `unknown` when the index does not say.
    pub platform: String,
    /// The child manifest.
    pub digest: Digest,
    /// Whether the child is in the bundle.
    pub present: bool,
}

/// An image of the list, resolved.
#[derive(Debug, Clone)]
pub struct PlannedImage {
    /// Its `##section`.
    pub section: Option<String>,
    /// The reference as written.
    pub source: String,
    /// Registry host asked.
    pub registry: String,
    /// Repository asked at that registry.
    pub remote_repository: String,
    /// Repository in the bundle.
    pub repository: String,
    /// Tag in the bundle (none for a digest-only reference).
    pub tag: Option<String>,
    /// The top manifest's digest (the source's, never rewritten).
    pub digest: Digest,
    /// The top manifest's media type.
    pub media_type: String,
    /// The top manifest, then the chosen children.
    pub manifests: Vec<RawManifest>,
    /// For an index: every child, with whether it is kept.
    pub platforms: Vec<PlatformEntry>,
    /// Configs and layers of the kept manifests.
    pub blobs: Vec<Descriptor>,
}

/// An image that could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    /// The reference as written (with `file:line`).
    pub image: String,
    /// Why, in one line.
    pub cause: String,
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
    /// Images that could not be.
    pub failures: Vec<Failure>,
    /// Every unique config and layer blob.
    pub blobs: BTreeMap<Digest, BlobSource>,
}

impl Plan {
    /// Bytes of all unique blobs.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.values().map(|b| b.size).sum()
    }
}

/// Clients per registry host, created on first use.
#[derive(Debug, Default)]
pub struct Clients {
    map: std::sync::Mutex<HashMap<String, Client>>,
}

impl Clients {
    /// The client for `host`.
    pub fn get(&self, host: &str, opts: &ClientOptions) -> Result<Client, RegistryError> {
        let mut map = self.map.lock().unwrap();
        if let Some(c) = map.get(host) {
            return Ok(c.clone());
        }
        let c = Client::new(host, opts)?;
        map.insert(host.to_string(), c.clone());
        Ok(c)
    }
}

fn entry_label(e: &ListEntry) -> String {
    format!("{} ({}:{})", e.reference, e.file, e.line)
}

/// Gets a manifest from the cache when it is there, else from the registry (and caches it, verified).
async fn manifest(
    client: &Client,
    cache: &Store,
    repo: &str,
    digest: &Digest,
) -> Result<RawManifest, String> {
    if cache.has_blob(digest)
        && let Ok(m) = cache.read_manifest(digest)
    {
        return Ok(m);
    }
    let m = client
        .get_manifest(repo, &digest.to_string())
        .await
        .map_err(|e| e.to_string())?;
    cache.put_blob_bytes(m.bytes()).map_err(|e| e.to_string())?;
    Ok(m)
}

async fn resolve_one(
    entry: &ListEntry,
    opts: &PlanOptions,
    clients: &Clients,
    cache: &Store,
) -> Result<PlannedImage, String> {
    let r = &entry.reference;
    let registry = r.registry(&opts.default_registry).to_string();
    let remote_repository = r.remote_repository(&opts.default_registry);
    let client = clients
        .get(&registry, &opts.client)
        .map_err(|e| e.to_string())?;
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
    // Pin the digest: the written one, else HEAD (cheap, and lets a cached manifest skip the GET), else GET by tag.
    let top = match r.digest() {
        Some(d) => manifest(&client, cache, &remote_repository, d).await?,
        None => {
            let tag = r.effective_tag().unwrap_or(crate::reference::DEFAULT_TAG);
            // A HEAD 404 has no body: ask again with GET, whose error says NAME_UNKNOWN or MANIFEST_UNKNOWN.
            let head = match client.head_manifest(&remote_repository, tag).await {
                Err(e) if e.is_not_found() => None,
                other => other.map_err(|e| not_found_msg(e, tag))?,
            };
            match head {
                Some(h) => manifest(&client, cache, &remote_repository, &h.digest).await?,
                None => {
                    let m = client
                        .get_manifest(&remote_repository, tag)
                        .await
                        .map_err(|e| not_found_msg(e, tag))?;
                    cache.put_blob_bytes(m.bytes()).map_err(|e| e.to_string())?;
                    m
                }
            }
        }
    };
    let parsed = top
        .parse()
        .map_err(|e| format!("manifest {}: {e}", top.digest()))?;
    let mut manifests = vec![top.clone()];
    let mut platforms = Vec::new();
    let mut blobs: Vec<Descriptor> = Vec::new();
    match &parsed {
        Manifest::Image(_) => blobs.extend(parsed.blobs().into_iter().cloned()),
        Manifest::Index(_) => {
            let mut kept = 0;
            for child in parsed.children() {
                let label = child
                    .platform
                    .as_ref()
                    .map_or_else(|| "unknown".to_string(), ToString::to_string);
                let keep = if opts.all_platforms {
                    true
                } else {
                    child
                        .platform
                        .as_ref()
                        .is_some_and(|p| opts.platforms.iter().any(|w| w.matches(p)))
                };
                platforms.push(PlatformEntry {
                    platform: label,
                    digest: child.digest.clone(),
                    present: keep,
                });
                if !keep {
                    continue;
                }
                if media_type::is_index(&child.media_type) {
                    return Err(format!(
                        "index {} nests another index ({}), which ferry does not follow",
                        top.digest(),
                        child.digest
                    ));
                }
                let m = manifest(&client, cache, &remote_repository, &child.digest).await?;
                let p = m
                    .parse()
                    .map_err(|e| format!("manifest {}: {e}", m.digest()))?;
                blobs.extend(p.blobs().into_iter().cloned());
                manifests.push(m);
                kept += 1;
            }
            if kept == 0 {
                let want: Vec<String> = opts.platforms.iter().map(ToString::to_string).collect();
                let have: Vec<&str> = platforms.iter().map(|p| p.platform.as_str()).collect();
                return Err(format!(
                    "no manifest for {} in index {} (it has {})",
                    want.join(", "),
                    top.digest(),
                    have.join(", ")
                ));
            }
        }
    }
    blobs.retain(|b| media_type::is_distributable(&b.media_type));
    Ok(PlannedImage {
        section: entry.section.clone(),
        source: r.to_string(),
        registry,
        remote_repository,
        repository,
        tag: r.effective_tag().map(str::to_string),
        digest: top.digest().clone(),
        media_type: top.media_type().to_string(),
        manifests,
        platforms,
        blobs,
    })
}

fn not_found_msg(e: RegistryError, tag: &str) -> String {
    if e.is_not_found() {
        format!("tag {tag} not found: {e}")
    } else {
        e.to_string()
    }
}

/// Resolves every entry (several at once), then checks bundle names for clashes.
pub async fn resolve(
    entries: &[ListEntry],
    opts: &PlanOptions,
    clients: &Clients,
    cache: &Store,
) -> Plan {
    let opts = Arc::new(opts.clone());
    let results: Vec<(usize, Result<PlannedImage, String>)> =
        stream::iter(entries.iter().enumerate())
            .map(|(i, e)| {
                let opts = opts.clone();
                async move { (i, resolve_one(e, &opts, clients, cache).await) }
            })
            .buffer_unordered(opts.jobs.max(1))
            .collect()
            .await;
    let mut ordered: Vec<_> = results;
    ordered.sort_by_key(|(i, _)| *i);
    let mut plan = Plan::default();
    let mut names: BTreeMap<(String, String), (String, Digest)> = BTreeMap::new();
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
                for b in &img.blobs {
                    plan.blobs
                        .entry(b.digest.clone())
                        .or_insert_with(|| BlobSource {
                            size: b.size,
                            registry: img.registry.clone(),
                            repository: img.remote_repository.clone(),
                            descriptor: b.clone(),
                        });
                }
                plan.images.push(img);
            }
            Err(cause) => plan.failures.push(Failure {
                image: entry_label(e),
                cause,
            }),
        }
    }
    plan
}
