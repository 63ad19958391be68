//! From an [`ImageRef`] to an open source or destination: the one `match`
//! over transports. [`AnySource`] and [`AnyDest`] are closed enums that
//! delegate to the transport, so the copy engine stays generic and no
//! dynamic dispatch of async methods is needed.

use std::path::Path;
use std::sync::Arc;

use super::bundle::Bundles;
use super::catalog::CatalogSource;
use super::daemon::{DaemonDest, DaemonSource};
use super::dir::{DirDest, DirSource};
use super::docker_archive::{DockerArchiveDest, DockerArchiveSource};
use super::oci::{OciDest, OciSource};
use super::oci_archive::{OciArchiveDest, OciArchiveSource};
use super::registry::{Clients, Pushed, RegistryDest, RegistrySource};
use super::root::RootDest;
use super::root_s3::{S3Dest, S3Source};
use super::{DestProperties, Destination, ImageRef, Put, Result, Source, TransportError};
use crate::blob::BlobBody;
use crate::bundlefile::read::BundleFile;
use crate::digest::Digest;
use crate::manifest::{Descriptor, RawManifest};
use crate::reference::{DEFAULT_REGISTRY, Reference};
use crate::registry::ClientOptions;
use crate::store::Store;

/// How to reach registries on each side.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// The source registry's connection options.
    pub source: ClientOptions,
    /// The destination registry's connection options.
    pub destination: ClientOptions,
    /// `--s3-endpoint`: the endpoint of `registry-root:s3://` buckets (over the AWS environment's).
    pub s3_endpoint: Option<String>,
}

/// Any transport's source.
#[non_exhaustive]
pub enum AnySource {
    /// `docker://`.
    Registry(RegistrySource),
    /// `registry-root:`.
    Root(CatalogSource<Store>),
    /// `registry-root:s3://`.
    RootS3(S3Source),
    /// `ferry-bundle:`.
    Bundle(CatalogSource<Bundles>),
    /// `dir:`.
    Dir(DirSource),
    /// `oci:`.
    Oci(OciSource),
    /// `oci-archive:`.
    OciArchive(OciArchiveSource),
    /// `docker-archive:`.
    DockerArchive(DockerArchiveSource),
    /// `docker-daemon:`.
    Daemon(DaemonSource),
}

/// Any transport's destination.
#[non_exhaustive]
pub enum AnyDest {
    /// `docker://`.
    Registry(RegistryDest),
    /// `registry-root:`.
    Root(RootDest),
    /// `registry-root:s3://`.
    RootS3(S3Dest),
    /// `dir:`.
    Dir(DirDest),
    /// `oci:`.
    Oci(OciDest),
    /// `oci-archive:`.
    OciArchive(OciArchiveDest),
    /// `docker-archive:`.
    DockerArchive(DockerArchiveDest),
    /// `docker-daemon:`.
    Daemon(DaemonDest),
}

macro_rules! each_source {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnySource::Registry($s) => $e,
            AnySource::Root($s) => $e,
            AnySource::RootS3($s) => $e,
            AnySource::Bundle($s) => $e,
            AnySource::Dir($s) => $e,
            AnySource::Oci($s) => $e,
            AnySource::OciArchive($s) => $e,
            AnySource::DockerArchive($s) => $e,
            AnySource::Daemon($s) => $e,
        }
    };
}

macro_rules! each_dest {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            AnyDest::Registry($d) => $e,
            AnyDest::Root($d) => $e,
            AnyDest::RootS3($d) => $e,
            AnyDest::Dir($d) => $e,
            AnyDest::Oci($d) => $e,
            AnyDest::OciArchive($d) => $e,
            AnyDest::DockerArchive($d) => $e,
            AnyDest::Daemon($d) => $e,
        }
    };
}

impl Source for AnySource {
    fn name(&self) -> String {
        each_source!(self, s => s.name())
    }
    async fn top(&self) -> Result<RawManifest> {
        each_source!(self, s => s.top().await)
    }
    async fn manifest(&self, digest: &Digest) -> Result<Option<RawManifest>> {
        each_source!(self, s => s.manifest(digest).await)
    }
    async fn blob(&self, desc: &Descriptor) -> Result<BlobBody> {
        each_source!(self, s => s.blob(desc).await)
    }
    async fn list_tags(&self) -> Result<Vec<String>> {
        each_source!(self, s => s.list_tags().await)
    }
    fn holds_sparse_indexes(&self) -> bool {
        each_source!(self, s => s.holds_sparse_indexes())
    }
    fn plain_layers(&self) -> super::PlainLayers {
        each_source!(self, s => s.plain_layers())
    }
    fn foreign_urls_first(&self) -> bool {
        each_source!(self, s => s.foreign_urls_first())
    }
}

impl Destination for AnyDest {
    fn name(&self) -> String {
        each_dest!(self, d => d.name())
    }
    fn properties(&self) -> DestProperties {
        each_dest!(self, d => d.properties())
    }
    fn prepare(&self) {
        each_dest!(self, d => d.prepare())
    }
    async fn has_blob(&self, desc: &Descriptor) -> Result<bool> {
        each_dest!(self, d => d.has_blob(desc).await)
    }
    async fn reuse_blob(&self, desc: &Descriptor) -> Result<Option<Put>> {
        each_dest!(self, d => d.reuse_blob(desc).await)
    }
    async fn put_blob(&self, desc: &Descriptor, body: BlobBody) -> Result<Put> {
        each_dest!(self, d => d.put_blob(desc, body).await)
    }
    async fn put_blob_opening(
        &self,
        desc: &Descriptor,
        open: impl std::future::Future<Output = std::result::Result<BlobBody, String>> + Send,
    ) -> std::result::Result<Put, super::OpeningPutError> {
        each_dest!(self, d => d.put_blob_opening(desc, open).await)
    }
    async fn put_manifest(&self, manifest: &RawManifest) -> Result<()> {
        each_dest!(self, d => d.put_manifest(manifest).await)
    }
    async fn commit(&self, top: &RawManifest) -> Result<()> {
        each_dest!(self, d => d.commit(top).await)
    }
    fn concurrent_manifests(&self) -> bool {
        each_dest!(self, d => d.concurrent_manifests())
    }
    fn accepts_foreign_layer_urls(&self) -> bool {
        each_dest!(self, d => d.accepts_foreign_layer_urls())
    }
}

/// The repository of a reference with no registry part (roots and bundles have none).
fn local_reference(r: &Reference, what: &str) -> Result<()> {
    if r.host().is_some() {
        return Err(TransportError::Invalid(format!(
            "{what}: {r} names a registry host; a {what} reference is REPO[:TAG|@DIGEST]"
        )));
    }
    Ok(())
}

/// Opens a bundle file in place (its structure checked; blobs are checked by whoever reads them).
fn open_bundle(path: &Path) -> Result<Arc<Bundles>> {
    let b = BundleFile::open_with(path, &mut crate::bundlefile::read::StructureOnly)?;
    Ok(Arc::new(Bundles(vec![b])))
}

/// Runs file-heavy work on a blocking thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    crate::task::unblock(f)
        .await
        .map_err(TransportError::io("opening", "the transport"))?
}

/// Opens the image `r` for reading.
pub async fn open_source(r: &ImageRef, clients: &Clients, opts: &OpenOptions) -> Result<AnySource> {
    Ok(match r {
        ImageRef::Docker(reference) => AnySource::Registry(RegistrySource::open(
            clients,
            reference,
            DEFAULT_REGISTRY,
            &opts.source,
        )?),
        ImageRef::RegistryRoot(root, reference) if crate::store::s3::is_s3(root) => {
            local_reference(reference, "registry-root")?;
            let (root, image) =
                super::root_s3::resolve(root, reference, opts.s3_endpoint.as_deref()).await?;
            AnySource::RootS3(S3Source::new(root, image, r.to_string()))
        }
        ImageRef::RegistryRoot(root, reference) => {
            local_reference(reference, "registry-root")?;
            let store = Store::open(root);
            if !store.exists() {
                return Err(TransportError::Invalid(format!(
                    "{}: not a registry root (no docker/registry/v2 directory)",
                    root.display()
                )));
            }
            AnySource::Root(CatalogSource::new(
                Arc::new(store),
                reference.clone(),
                r.to_string(),
            ))
        }
        ImageRef::Bundle(path, reference) => {
            let catalog = open_bundle(path)?;
            let reference = match reference {
                Some(x) => {
                    local_reference(x, "ferry-bundle")?;
                    x.clone()
                }
                None => {
                    let images = &catalog.0[0].scan.index.images;
                    let [one] = images.as_slice() else {
                        return Err(TransportError::Invalid(format!(
                            "{}: the bundle holds {} images; name one as ferry-bundle:FILE:REPO[:TAG]",
                            path.display(),
                            images.len()
                        )));
                    };
                    Reference::parse(&format!("{}@{}", one.repository, one.digest))
                        .map_err(|e| TransportError::Invalid(e.to_string()))?
                }
            };
            AnySource::Bundle(CatalogSource::new(catalog, reference, r.to_string()))
        }
        ImageRef::Dir(path) => AnySource::Dir(DirSource::open(path)?),
        ImageRef::Oci(path, reference) => {
            AnySource::Oci(OciSource::open(path, reference.as_deref())?)
        }
        // Archives are unpacked or indexed (every layer read) before use: off the async threads.
        ImageRef::OciArchive(path, reference) => {
            let (p, r) = (path.clone(), reference.clone());
            AnySource::OciArchive(blocking(move || OciArchiveSource::open(&p, r.as_deref())).await?)
        }
        ImageRef::DockerArchive(path, reference) => {
            let (p, r) = (path.clone(), reference.clone());
            AnySource::DockerArchive(
                blocking(move || DockerArchiveSource::open(&p, r.as_deref())).await?,
            )
        }
        ImageRef::DockerDaemon(reference) => {
            AnySource::Daemon(DaemonSource::open(&reference.to_string()).await?)
        }
    })
}

/// Refuses, before anything is read or written, a destination no transport can write.
pub fn writable(r: &ImageRef) -> Result<()> {
    match r {
        ImageRef::Bundle(..) => Err(TransportError::Unsupported(format!(
            "{r}: a bundle is read-only; write one with `ferry bundle`"
        ))),
        _ => Ok(()),
    }
}

/// Opens the image `r` for writing; `pushed` is shared by every destination of one run (cross-repository mounts).
pub fn open_dest(
    r: &ImageRef,
    clients: &Clients,
    opts: &OpenOptions,
    pushed: &Arc<Pushed>,
) -> Result<AnyDest> {
    Ok(match r {
        ImageRef::Docker(reference) => {
            if reference.digest().is_some() && reference.tag().is_some() {
                return Err(TransportError::Invalid(format!(
                    "{r}: a destination is named by a tag or a digest, not both"
                )));
            }
            let client = clients.get(reference.registry(DEFAULT_REGISTRY), &opts.destination)?;
            AnyDest::Registry(RegistryDest::new(
                client,
                reference.remote_repository(DEFAULT_REGISTRY),
                reference.digest().is_none().then(|| {
                    reference
                        .effective_tag()
                        .unwrap_or(crate::reference::DEFAULT_TAG)
                        .to_string()
                }),
                pushed.clone(),
            ))
        }
        ImageRef::RegistryRoot(root, reference) if crate::store::s3::is_s3(root) => {
            local_reference(reference, "registry-root")?;
            // Which part of the path is the root is asked of the bucket (one listing per cut).
            let (root, image) = super::root_s3::wait(async {
                let found =
                    super::root_s3::resolve(root, reference, opts.s3_endpoint.as_deref()).await?;
                super::root_s3::abort_stale_uploads(&found.0).await;
                Ok::<_, TransportError>(found)
            })?;
            AnyDest::RootS3(S3Dest::new(
                root,
                image.repository().to_string(),
                image.digest().is_none().then(|| {
                    image
                        .effective_tag()
                        .unwrap_or(crate::reference::DEFAULT_TAG)
                        .to_string()
                }),
            ))
        }
        ImageRef::RegistryRoot(root, reference) => {
            local_reference(reference, "registry-root")?;
            let store = Store::create(root)?.with_durable(false);
            AnyDest::Root(RootDest::new(
                store,
                reference.repository().to_string(),
                reference.digest().is_none().then(|| {
                    reference
                        .effective_tag()
                        .unwrap_or(crate::reference::DEFAULT_TAG)
                        .to_string()
                }),
                true,
            ))
        }
        ImageRef::Bundle(..) => {
            writable(r)?;
            unreachable!("a bundle is never writable")
        }
        ImageRef::Dir(path) => AnyDest::Dir(DirDest::create(path)?),
        ImageRef::Oci(path, reference) => {
            AnyDest::Oci(OciDest::create(path, reference.as_deref())?)
        }
        ImageRef::OciArchive(path, reference) => {
            AnyDest::OciArchive(OciArchiveDest::create(path, reference.as_deref())?)
        }
        ImageRef::DockerArchive(path, reference) => {
            AnyDest::DockerArchive(DockerArchiveDest::create(path, reference.as_deref())?)
        }
        ImageRef::DockerDaemon(reference) => {
            AnyDest::Daemon(DaemonDest::create(&reference.to_string())?)
        }
    })
}
