//! `docker://HOST/REPO[:TAG|@DIGEST]`: a registry through the distribution
//! API. Reading pins the tag with its one manifest GET, then GETs children by
//! digest (so a tag that moves mid-copy cannot mix two images); blobs come as verified
//! streams. Writing skips blobs the repository has, mounts blobs this run
//! already pushed to another repository of the same registry, and names the
//! image last.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::{DestProperties, Destination, OpeningPutError, Put, Result, Source, TransportError};
use crate::blob::BlobBody;
use crate::digest::Digest;
use crate::manifest::{Descriptor, RawManifest};
use crate::reference::Reference;
use crate::registry::uploads::{BlobPush, UploadError};
use crate::registry::{Client, ClientOptions, RegistryError};

/// Clients per registry host, created on first use and shared (one connection pool and token cache per host).
#[derive(Debug, Default)]
pub struct Clients {
    map: Mutex<HashMap<String, Client>>,
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

/// A foreign layer read from its URLs alone (containers/image's `getExternalBlob`, which fails
/// when no URL answers), by an anonymous client of the URL's own host with default options:
/// a source registry's credentials and its `--tls-verify=false` never reach it.
pub async fn external_blob(desc: &Descriptor) -> Result<BlobBody> {
    let host = desc
        .urls
        .iter()
        .find_map(|u| reqwest::Url::parse(u).ok()?.host_str().map(str::to_string))
        .unwrap_or_default();
    let client = Client::new(&host, &ClientOptions::default())?;
    let stream = client.get_external_blob(desc).await.map_err(|e| {
        TransportError::NotFound(format!(
            "foreign layer {}: no URL it lists answered ({e})",
            desc.digest
        ))
    })?;
    Ok(BlobBody::Stream(stream))
}

/// Turns a 404 on a tag into a message that says which tag.
fn not_found(e: RegistryError, what: &str) -> TransportError {
    if e.is_not_found() {
        TransportError::NotFound(format!("{what} not found: {e}"))
    } else {
        e.into()
    }
}

/// One image of a registry, read.
pub struct RegistrySource {
    client: Client,
    repo: String,
    /// The tag or digest to read.
    reference: String,
    name: String,
    /// The top manifest, once read.
    top: tokio::sync::OnceCell<RawManifest>,
}

impl RegistrySource {
    /// The image `repo:reference` (a tag or a digest) at `client`'s registry; `name` is how the user wrote it.
    pub fn new(client: Client, repo: String, reference: String, name: String) -> RegistrySource {
        RegistrySource {
            client,
            repo,
            reference,
            name,
            top: tokio::sync::OnceCell::new(),
        }
    }

    /// Opens `docker://` reference `r` (`default_registry` for a name without a host).
    pub fn open(
        clients: &Clients,
        r: &Reference,
        default_registry: &str,
        opts: &ClientOptions,
    ) -> Result<RegistrySource> {
        let client = clients.get(r.registry(default_registry), opts)?;
        Ok(RegistrySource::new(
            client,
            r.remote_repository(default_registry),
            r.remote_ref(),
            format!("docker://{r}"),
        ))
    }
}

impl RegistrySource {
    /// The digest the reference names: the written one, else the tag's by HEAD
    /// (cheap, and lets a cache skip the GET); `None` when the registry sends no
    /// digest for the tag, or says it has no such tag (a HEAD 404 has no body:
    /// [`RegistrySource::get_by_tag`] then says why).
    pub async fn pin(&self) -> Result<Option<Digest>> {
        if let Ok(d) = Digest::parse(&self.reference) {
            return Ok(Some(d));
        }
        let tag = self.reference.as_str();
        match self.client.head_manifest(&self.repo, tag).await {
            Err(e) if e.is_not_found() => Ok(None),
            other => Ok(other
                .map_err(|e| not_found(e, &format!("tag {tag}")))?
                .map(|h| h.digest)),
        }
    }

    /// The manifest by its tag, with one GET (also when a HEAD could not pin the tag).
    pub async fn get_by_tag(&self) -> Result<RawManifest> {
        let tag = self.reference.as_str();
        self.client
            .get_manifest(&self.repo, tag)
            .await
            .map_err(|e| not_found(e, &format!("tag {tag}")))
    }
}

impl Source for RegistrySource {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn top(&self) -> Result<RawManifest> {
        // Pinned once per source: every caller sees the same image even if the tag moves meanwhile.
        self.top
            .get_or_try_init(|| async {
                // One GET: by a tag, the bytes received are the image (their digest pins it,
                // checked against the registry's Docker-Content-Digest); a HEAD first would
                // cost the registry a request and tell nothing the GET does not.
                match Digest::parse(&self.reference) {
                    Ok(d) => self
                        .client
                        .get_manifest(&self.repo, &d.to_string())
                        .await
                        .map_err(|e| not_found(e, &format!("manifest {d}"))),
                    Err(_) => self.get_by_tag().await,
                }
            })
            .await
            .cloned()
    }

    async fn manifest(&self, digest: &Digest) -> Result<Option<RawManifest>> {
        match self
            .client
            .get_manifest(&self.repo, &digest.to_string())
            .await
        {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn blob(&self, desc: &Descriptor) -> Result<BlobBody> {
        // A foreign layer's URLs are the copy engine's to try (crate::copy::foreign).
        Ok(BlobBody::Stream(
            self.client.get_blob(&self.repo, desc).await?,
        ))
    }

    async fn list_tags(&self) -> Result<Vec<String>> {
        Ok(self.client.list_tags(&self.repo).await?)
    }

    fn foreign_urls_first(&self) -> bool {
        true
    }
}

pub use super::locations::Pushed;

/// One image of a registry, written.
pub struct RegistryDest {
    client: Client,
    repo: String,
    /// Tag to name the image with; `None` pushes by digest only.
    tag: Option<String>,
    pushed: Arc<Pushed>,
    /// Whether the repository had no tag when first asked (then a blob is not asked about
    /// with a HEAD: its upload opens with a mount from the repository itself, which the
    /// registry answers with 201 when it holds the blob after all); shared by every image
    /// of the run written into it, asked by [`Destination::prepare`] while the source is read.
    new_repo: Arc<super::locations::NewRepo>,
}

/// Whether `repo` has no tag; an answer that is not a clear yes is no (the blobs are asked about).
async fn repo_is_new(client: Client, repo: String) -> bool {
    match client.has_no_tags(&repo).await {
        Ok(new) => new,
        Err(e) => {
            tracing::debug!("asking whether {repo} has tags: {e}");
            false
        }
    }
}

impl RegistryDest {
    /// Writes into `repo`, tagging with `tag`; `pushed` is shared by every destination of one run.
    pub fn new(
        client: Client,
        repo: String,
        tag: Option<String>,
        pushed: Arc<Pushed>,
    ) -> RegistryDest {
        let new_repo = pushed.new_repo(client.host(), &repo);
        RegistryDest {
            client,
            repo,
            tag,
            pushed,
            new_repo,
        }
    }

    /// Whether the repository had no tag (asked once per run: a question already under way,
    /// started by [`Destination::prepare`] for this or another image, is waited for).
    async fn is_new_repo(&self) -> bool {
        *self
            .new_repo
            .answer
            .get_or_init(|| repo_is_new(self.client.clone(), self.repo.clone()))
            .await
    }
}

impl RegistryDest {
    /// The repository an upload opens with a mount from: another one known to hold the blob,
    /// or this one when it is new (the mount then says whether it holds the blob after all).
    async fn upload_from(&self, desc: &Descriptor) -> Option<String> {
        match self
            .pushed
            .mount_source(self.client.host(), &desc.digest, &self.repo)
        {
            Some(other) => Some(other),
            None if self.is_new_repo().await => Some(self.repo.clone()),
            None => None,
        }
    }

    /// Records where the blob now is and says how it got there.
    fn uploaded(&self, desc: &Descriptor, from: Option<&str>, r: BlobPush) -> Put {
        self.pushed
            .record(self.client.host(), &desc.digest, &self.repo);
        match r {
            BlobPush::Present => Put::Present,
            BlobPush::Mounted if from == Some(self.repo.as_str()) => Put::Present,
            BlobPush::Mounted => Put::Mounted,
            BlobPush::Uploaded => Put::Written,
        }
    }
}

impl Destination for RegistryDest {
    fn name(&self) -> String {
        super::dest_name(
            &format!("docker://{}", self.client.host()),
            &self.repo,
            self.tag.as_deref(),
        )
    }

    fn properties(&self) -> DestProperties {
        DestProperties {
            manifest_types: Vec::new(),
            accepts_index: true,
            accepts_sparse_index: false,
            ordered_blobs: false,
            compresses_layers: true,
        }
    }

    /// Asks, in the background, whether the repository is new (has no tag).
    fn prepare(&self) {
        if !self.new_repo.asked.swap(true, Ordering::Relaxed) {
            let (new_repo, client, repo) = (
                self.new_repo.clone(),
                self.client.clone(),
                self.repo.clone(),
            );
            tokio::spawn(async move {
                new_repo
                    .answer
                    .get_or_init(|| repo_is_new(client, repo))
                    .await;
            });
        }
    }

    async fn has_blob(&self, desc: &Descriptor) -> Result<bool> {
        let host = self.client.host();
        if self.pushed.seen_in(host, &desc.digest, &self.repo) {
            return Ok(true);
        }
        let has = self.client.has_blob(&self.repo, &desc.digest).await?;
        if has {
            // Other repositories of this registry can mount it from here.
            self.pushed.record(host, &desc.digest, &self.repo);
        }
        Ok(has)
    }

    /// Present (seen in this run, or by one HEAD), else mounted from a repository known to hold
    /// it. A new repository (no tag) is not asked about each blob: the upload asks instead.
    async fn reuse_blob(&self, desc: &Descriptor) -> Result<Option<Put>> {
        let host = self.client.host();
        if self.pushed.seen_in(host, &desc.digest, &self.repo) {
            return Ok(Some(Put::Present));
        }
        if !self.is_new_repo().await && self.has_blob(desc).await? {
            return Ok(Some(Put::Present));
        }
        while let Some(from) = self.pushed.mount_source(host, &desc.digest, &self.repo) {
            if self
                .client
                .mount_blob(&self.repo, &desc.digest, &from)
                .await?
            {
                self.pushed.record(host, &desc.digest, &self.repo);
                return Ok(Some(Put::Mounted));
            }
            // Refused: a location an earlier run saw that no longer holds the blob.
            tracing::debug!(
                "mounting {} from {from} into {} refused",
                desc.digest,
                self.repo
            );
            self.pushed.forget(host, &desc.digest, &from);
            if self.pushed.seen_in(host, &desc.digest, &from) {
                break; // seen in this run: the registry does not mount here, asking again cannot help
            }
        }
        Ok(None)
    }

    /// Mounts or uploads; the engine has asked [`Destination::reuse_blob`] just before. Into a
    /// new repository the upload opens with a mount from the repository itself: one request
    /// that says whether it holds the blob (201) or opens the upload (202), where a HEAD and a
    /// POST would be two in a row.
    async fn put_blob(&self, desc: &Descriptor, body: BlobBody) -> Result<Put> {
        let from = self.upload_from(desc).await;
        let r = self
            .client
            .upload_blob(&self.repo, &desc.digest, desc.size, from.as_deref(), body)
            .await?;
        Ok(self.uploaded(desc, from.as_deref(), r))
    }

    /// [`Destination::put_blob`] with the upload session (or the mount) opened while the
    /// source opens the bytes.
    async fn put_blob_opening(
        &self,
        desc: &Descriptor,
        open: impl std::future::Future<Output = std::result::Result<BlobBody, String>> + Send,
    ) -> std::result::Result<Put, OpeningPutError> {
        let from = self.upload_from(desc).await;
        let r = self
            .client
            .upload_blob_opening(&self.repo, &desc.digest, desc.size, from.as_deref(), open)
            .await
            .map_err(|e| match e {
                UploadError::Body(cause) => OpeningPutError::Source(cause),
                UploadError::Registry(e) => OpeningPutError::Destination(e.into()),
            })?;
        Ok(self.uploaded(desc, from.as_deref(), r))
    }

    async fn put_manifest(&self, manifest: &RawManifest) -> Result<()> {
        Ok(self
            .client
            .put_manifest(&self.repo, &manifest.digest().to_string(), manifest)
            .await?)
    }

    /// Each manifest PUT stands alone at a registry (children by digest, then the tag).
    fn concurrent_manifests(&self) -> bool {
        true
    }

    async fn commit(&self, top: &RawManifest) -> Result<()> {
        let reference = self.tag.clone().unwrap_or_else(|| top.digest().to_string());
        Ok(self
            .client
            .put_manifest(&self.repo, &reference, top)
            .await?)
    }
}
