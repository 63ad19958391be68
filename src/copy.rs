//! Copying images into a store: manifests after their children, each blob
//! fetched once, several at a time, verified before it becomes visible.

use std::collections::BTreeSet;

use futures_util::{StreamExt, TryStreamExt, stream};

use crate::digest::Digest;
use crate::manifest::{Descriptor, Manifest, RawManifest};
use crate::registry::{Client, RegistryError};
use crate::store::{LinkReport, Store, StoreError};

/// Why an image could not be copied; names the image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// The registry failed or sent bad content.
    #[error("{image}: {source}")]
    Registry {
        /// `repo:ref` as asked.
        image: String,
        /// Cause.
        source: RegistryError,
    },
    /// The store failed.
    #[error("{image}: {source}")]
    Store {
        /// `repo:ref` as asked.
        image: String,
        /// Cause.
        source: StoreError,
    },
    /// A manifest that does not parse.
    #[error("{image}: manifest {digest}: {source}")]
    Manifest {
        /// `repo:ref` as asked.
        image: String,
        /// Which manifest.
        digest: Digest,
        /// Cause.
        source: crate::manifest::ManifestError,
    },
}

/// Pulls `repo:reference` from `client` into `store` as `dest_repo[:tag]`: every
/// platform of an index, `jobs` blobs at a time. Returns the top digest and what was linked.
pub async fn pull_to_store(
    client: &Client,
    store: &Store,
    repo: &str,
    reference: &str,
    dest_repo: &str,
    tag: Option<&str>,
    jobs: usize,
) -> Result<(Digest, LinkReport), CopyError> {
    let image = format!("{}/{repo}:{reference}", client.host());
    let reg = |source| CopyError::Registry {
        image: image.clone(),
        source,
    };
    let top = client.get_manifest(repo, reference).await.map_err(reg)?;
    let mut manifests: Vec<RawManifest> = vec![top.clone()];
    let mut blobs: Vec<Descriptor> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut i = 0;
    while i < manifests.len() {
        let raw = manifests[i].clone();
        let parsed = raw.parse().map_err(|source| CopyError::Manifest {
            image: image.clone(),
            digest: raw.digest().clone(),
            source,
        })?;
        for b in parsed.blobs() {
            if seen.insert(b.digest.clone()) && crate::media_type::is_distributable(&b.media_type) {
                blobs.push(b.clone());
            }
        }
        if let Manifest::Index(_) = parsed {
            for child in parsed.children() {
                if seen.insert(child.digest.clone()) {
                    manifests.push(
                        client
                            .get_manifest(repo, &child.digest.to_string())
                            .await
                            .map_err(reg)?,
                    );
                }
            }
        }
        i += 1;
    }
    stream::iter(
        blobs
            .iter()
            .map(|b| async move { client.fetch_blob(store, repo, b).await }),
    )
    .buffer_unordered(jobs.max(1))
    .try_collect::<Vec<u64>>()
    .await
    .map_err(reg)?;
    let st = |source| CopyError::Store {
        image: image.clone(),
        source,
    };
    for m in manifests.iter().rev() {
        store.put_blob_bytes(m.bytes()).map_err(st)?;
    }
    let report = store.link_image(dest_repo, top.digest(), tag).map_err(st)?;
    Ok((top.digest().clone(), report))
}
