//! Downloads that start while the plan is still being resolved: as soon as an image's
//! manifests are read, its blobs begin to move into the bundle cache (largest first), instead
//! of waiting for every other tag of the list. The copy that follows the plan goes through
//! [`EarlyCache`], which waits for a blob already on its way rather than fetching it twice,
//! and the packer is told which blobs this run verified (so they are not hashed again).
//!
//! Early downloads use at most half of `--jobs` (the other half keeps resolving tags; with
//! `--jobs 1`, none starts early), at most half of the cache's free space (the plan's full space check comes
//! later), and nothing new starts once the plan is resolved. A failed early download is
//! forgotten: the copy fetches that blob again and reports any error as usual.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::blob::BlobBody;
use crate::digest::Digest;
use crate::manifest::{Descriptor, RawManifest};
use crate::plan::PlannedImage;
use crate::store::Store;
use crate::transport::registry::RegistrySource;
use crate::transport::root::RootDest;
use crate::transport::{DestProperties, Destination, Put, Result};

/// The early downloads of one bundle run (see the module docs); dropping it cancels those still running.
pub(super) struct EarlyFetch {
    cache: Store,
    /// Early downloads running at once.
    permits: Arc<tokio::sync::Semaphore>,
    /// Cleared when the plan is resolved: a download that has not started by then is not started.
    open: Arc<AtomicBool>,
    /// Bytes that may still be started (half of the cache's free space at the start), taken
    /// when a download begins.
    budget: Arc<Mutex<u64>>,
    /// Each blob started early, and whether it is in the cache once done.
    started: Mutex<HashMap<Digest, Shared<BoxFuture<'static, bool>>>>,
    /// Blobs an early download wrote (and verified while writing).
    fresh: Arc<Mutex<HashSet<Digest>>>,
    /// Bytes of those blobs.
    fresh_bytes: Arc<AtomicU64>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl EarlyFetch {
    /// Early downloads into `cache`, `jobs` being the run's connections to a host.
    /// With one connection (`--jobs 1`) nothing starts early: the plan keeps it.
    pub(super) fn new(cache: Store, jobs: usize) -> EarlyFetch {
        let budget = super::space::available(cache.root()).unwrap_or(0) / 2;
        EarlyFetch {
            cache,
            permits: Arc::new(tokio::sync::Semaphore::new(jobs / 2)),
            open: Arc::new(AtomicBool::new(jobs >= 2)),
            budget: Arc::new(Mutex::new(budget)),
            started: Mutex::default(),
            fresh: Arc::default(),
            fresh_bytes: Arc::default(),
            tasks: Mutex::default(),
        }
    }

    /// Starts downloading the blobs of `img` the cache lacks and no early download has
    /// started, largest first, from `client` (its registry).
    pub(super) fn start(&self, img: &PlannedImage, client: crate::registry::Client) {
        if !self.open.load(Ordering::Relaxed) {
            return;
        }
        let mut blobs: Vec<&Descriptor> = img.blobs().iter().collect();
        blobs.sort_by_key(|b| std::cmp::Reverse(b.size));
        let name = format!("{}/{}", client.host(), img.remote_repository);
        let source = Arc::new(RegistrySource::new(
            client,
            img.remote_repository.to_string(),
            img.digest.to_string(),
            name,
        ));
        let mut started = self.started.lock().unwrap();
        for desc in blobs {
            if started.contains_key(&desc.digest)
                || *self.budget.lock().unwrap() < desc.size
                || self.cache.has_blob(&desc.digest)
            {
                continue;
            }
            let (source, desc) = (source.clone(), desc.clone());
            let (cache, permits, open, budget) = (
                self.cache.clone(),
                self.permits.clone(),
                self.open.clone(),
                self.budget.clone(),
            );
            let (fresh, fresh_bytes) = (self.fresh.clone(), self.fresh_bytes.clone());
            let digest = desc.digest.clone();
            let task = tokio::spawn(async move {
                // Closed with the plan: a download still queued then is left to the copy,
                // which must not wait behind the ones running.
                let Ok(_permit) = permits.acquire_owned().await else {
                    return false;
                };
                if !open.load(Ordering::Relaxed) {
                    return false;
                }
                {
                    let mut budget = budget.lock().unwrap();
                    if *budget < desc.size {
                        return false;
                    }
                    *budget -= desc.size;
                }
                let dest = RootDest::pack_cache(cache);
                match crate::copy::copy_blob(&*source, &dest, &desc).await {
                    Ok(Put::Written) => {
                        fresh.lock().unwrap().insert(desc.digest.clone());
                        fresh_bytes.fetch_add(desc.size, Ordering::Relaxed);
                        true
                    }
                    Ok(_) => true,
                    Err(e) => {
                        tracing::debug!("early download of {} failed: {e}", desc.digest);
                        false
                    }
                }
            });
            self.tasks.lock().unwrap().push(task.abort_handle());
            started.insert(digest, task.map(|r| r.unwrap_or(false)).boxed().shared());
        }
    }

    /// The plan is resolved: downloads not yet begun are left to the copy.
    pub(super) fn close(&self) {
        self.open.store(false, Ordering::Relaxed);
        self.permits.close();
    }

    /// The run failed: cancels the downloads still running and waits until each has ended,
    /// so none is still writing into the cache when the command returns.
    pub(super) async fn stop(&self) {
        self.close();
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        let pending: Vec<_> = self.started.lock().unwrap().values().cloned().collect();
        futures_util::future::join_all(pending).await;
    }

    /// Whether the blob was started early (the copy counts it among the blobs to fetch).
    pub(super) fn started(&self, digest: &Digest) -> bool {
        self.started.lock().unwrap().contains_key(digest)
    }

    /// Waits for the blob's early download, if one was started: whether it is in the cache.
    async fn landed(&self, digest: &Digest) -> bool {
        let pending = self.started.lock().unwrap().get(digest).cloned();
        match pending {
            Some(done) => done.await,
            None => false,
        }
    }

    /// Whether an early download wrote (and verified) the blob.
    pub(super) fn fresh(&self, digest: &Digest) -> bool {
        self.fresh.lock().unwrap().contains(digest)
    }

    /// Blobs and bytes the early downloads wrote.
    pub(super) fn written(&self) -> (usize, u64) {
        (
            self.fresh.lock().unwrap().len(),
            self.fresh_bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for EarlyFetch {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// The bundle cache as the copy's destination ([`RootDest::pack_cache`]), but a blob an early
/// download is bringing is waited for, not fetched again.
pub(super) struct EarlyCache {
    inner: RootDest,
    early: Arc<EarlyFetch>,
}

impl EarlyCache {
    /// The cache `store`, aware of `early`'s downloads.
    pub(super) fn new(store: Store, early: Arc<EarlyFetch>) -> EarlyCache {
        EarlyCache {
            inner: RootDest::pack_cache(store),
            early,
        }
    }
}

impl Destination for EarlyCache {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn properties(&self) -> DestProperties {
        self.inner.properties()
    }
    fn prepare(&self) {
        self.inner.prepare()
    }
    async fn has_blob(&self, desc: &Descriptor) -> Result<bool> {
        if self.early.landed(&desc.digest).await {
            return Ok(true);
        }
        self.inner.has_blob(desc).await
    }
    async fn put_blob(&self, desc: &Descriptor, body: BlobBody) -> Result<Put> {
        self.inner.put_blob(desc, body).await
    }
    async fn put_manifest(&self, manifest: &RawManifest) -> Result<()> {
        self.inner.put_manifest(manifest).await
    }
    async fn commit(&self, top: &RawManifest) -> Result<()> {
        self.inner.commit(top).await
    }
    fn accepts_foreign_layer_urls(&self) -> bool {
        self.inner.accepts_foreign_layer_urls()
    }
    fn concurrent_manifests(&self) -> bool {
        self.inner.concurrent_manifests()
    }
}
