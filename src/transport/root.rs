//! `registry-root:ROOT/REPO[:TAG]` written: a registry v2 root on disk, no
//! server. Blobs go through the store's verified atomic ingest; at commit the
//! root is synced once (when durable), then the image's repository links are
//! written, children before parents, and the tag last, so a registry serving
//! the root never sees a tag whose content is not all there.

use std::io::Write;

use super::{DestProperties, Destination, Put, Result, TransportError};
use crate::blob::{BlobBody, StreamWriteError};
use crate::manifest::{Descriptor, RawManifest};
use crate::store::{BlobWriter, Store, StoreError};

/// One image written into a root.
pub struct RootDest {
    store: Store,
    repo: String,
    tag: Option<String>,
    /// `syncfs` before the links (a live root); off for caches whose blobs are re-hashed when used.
    sync: bool,
    /// Blobs only, in digest order, no links: the cache a bundle is packed from while it downloads.
    pack_cache: bool,
    /// Manifests this copy wrote: only these are linked (other children the root holds stay out).
    written: std::sync::Mutex<std::collections::HashSet<crate::digest::Digest>>,
}

impl RootDest {
    /// Writes into `repo` of `store`, tagging with `tag`; `sync` makes the blobs durable before any link names them.
    pub fn new(store: Store, repo: String, tag: Option<String>, sync: bool) -> RootDest {
        RootDest {
            store,
            repo,
            tag,
            sync,
            pack_cache: false,
            written: Default::default(),
        }
    }

    /// The bundle cache: blobs and manifests only (no repository, no links), taken in
    /// digest order (the bundle's layout order) so the packer can write each as it lands.
    pub fn pack_cache(store: Store) -> RootDest {
        RootDest {
            store,
            repo: String::new(),
            tag: None,
            sync: false,
            pack_cache: true,
            written: Default::default(),
        }
    }
}

/// Writes a stream into a store blob writer, off the runtime; the writer is dropped (temp file deleted) on error.
async fn write_stream(writer: BlobWriter, stream: crate::blob::ByteStream) -> Result<BlobWriter> {
    let temp = writer.temp_path().to_path_buf();
    crate::blob::write_stream(stream, writer, move |w: &mut BlobWriter, chunk: &[u8]| {
        w.write_all(chunk).map_err(|source| StoreError::Io {
            op: "writing blob",
            path: w.temp_path().to_path_buf(),
            source,
        })
    })
    .await
    .map_err(|e| match e {
        StreamWriteError::Write(e) => e.into(),
        StreamWriteError::Read(source) => TransportError::Io {
            op: "reading blob for",
            path: temp,
            source,
        },
    })
}

impl Destination for RootDest {
    fn name(&self) -> String {
        let tag = self
            .tag
            .as_deref()
            .map(|t| format!(":{t}"))
            .unwrap_or_default();
        format!(
            "registry-root:{}/{}{tag}",
            self.store.root().display(),
            self.repo
        )
    }

    fn properties(&self) -> DestProperties {
        DestProperties {
            manifest_types: Vec::new(),
            accepts_index: true,
            accepts_sparse_index: true,
            ordered_blobs: self.pack_cache,
        }
    }

    async fn has_blob(&self, desc: &Descriptor) -> Result<bool> {
        Ok(self.store.has_blob(&desc.digest))
    }

    async fn put_blob(&self, desc: &Descriptor, body: BlobBody) -> Result<Put> {
        if self.store.has_blob(&desc.digest) {
            return Ok(Put::Present);
        }
        match body {
            // A stream is verified by its source (it ends in an error when wrong): no second hash.
            BlobBody::Stream(stream) => {
                let w = write_stream(self.store.blob_writer_prehashed()?, stream).await?;
                let (d, size) = (desc.digest.clone(), desc.size);
                tokio::task::spawn_blocking(move || w.commit_prehashed(&d, size))
                    .await
                    .expect("commit does not panic")?;
            }
            BlobBody::Local(loc) => {
                let stream = Box::pin(crate::blob::range_stream(loc.source, 0, loc.size));
                let w = write_stream(self.store.blob_writer()?, stream).await?;
                let (d, size) = (desc.digest.clone(), desc.size);
                tokio::task::spawn_blocking(move || w.commit(Some((&d, Some(size)))))
                    .await
                    .expect("commit does not panic")?;
            }
        }
        Ok(Put::Written)
    }

    async fn put_manifest(&self, manifest: &RawManifest) -> Result<()> {
        self.store.put_blob_bytes(manifest.bytes())?;
        self.written
            .lock()
            .unwrap()
            .insert(manifest.digest().clone());
        Ok(())
    }

    async fn commit(&self, top: &RawManifest) -> Result<()> {
        self.store.put_blob_bytes(top.bytes())?;
        if self.pack_cache {
            return Ok(());
        }
        let mut written = std::mem::take(&mut *self.written.lock().unwrap());
        written.insert(top.digest().clone());
        let (store, repo, tag, sync, top) = (
            self.store.clone(),
            self.repo.clone(),
            self.tag.clone(),
            self.sync,
            top.digest().clone(),
        );
        // File-system work off the async threads: one syncfs, then the links, the tag last.
        tokio::task::spawn_blocking(move || {
            if sync {
                store.sync_fs()?;
            }
            store.link_image_with(&repo, &top, tag.as_deref(), &|d| written.contains(d))
        })
        .await
        .expect("linking does not panic")?;
        Ok(())
    }
}
