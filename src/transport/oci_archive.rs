//! `oci-archive:PATH[:REF]`: an OCI image layout in one tar file. As in
//! containers/image, the archive hands off to the `oci:` transport through a
//! temporary directory: read = unpack safely, then read the layout; write =
//! write the layout, then tar it at commit under a temp name and rename it
//! into place (an uncommitted write leaves nothing behind).

use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::oci::{OciDest, OciSource};
use super::{DestProperties, Destination, Put, Result, Source, TransportError};
use crate::blob::BlobBody;
use crate::digest::Digest;
use crate::manifest::{Descriptor, RawManifest};

/// A temp directory beside `near` (same file system, so the final rename is atomic).
fn temp_dir_near(near: &Path) -> Result<tempfile::TempDir> {
    let dir = near
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    tempfile::Builder::new()
        .prefix(".ferry-oci-archive-")
        .tempdir_in(dir)
        .map_err(TransportError::io("creating a temp directory in", dir))
}

/// Unpacks an OCI archive, refusing anything that is not a plain file or
/// directory inside the archive (absolute paths, `..`, links, devices).
fn unpack(archive: &Path, into: &Path) -> Result<()> {
    let f = File::open(archive).map_err(TransportError::io("opening", archive))?;
    let mut tar = tar::Archive::new(io::BufReader::new(f));
    let entries = tar
        .entries()
        .map_err(TransportError::io("reading", archive))?;
    for entry in entries {
        let mut entry = entry.map_err(TransportError::io("reading", archive))?;
        let name = entry
            .path()
            .map_err(TransportError::io("reading", archive))?
            .into_owned();
        let refused = |why: &str| {
            TransportError::Invalid(format!(
                "{}: entry {:?} refused: {why}",
                archive.display(),
                name.to_string_lossy().chars().take(200).collect::<String>()
            ))
        };
        if name
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(refused("outside the archive"));
        }
        let kind = entry.header().entry_type();
        let dest = into.join(&name);
        if kind.is_dir() {
            std::fs::create_dir_all(&dest).map_err(TransportError::io("creating", &dest))?;
            continue;
        }
        if !kind.is_file() {
            return Err(refused("not a regular file or directory"));
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(TransportError::io("creating", parent))?;
        }
        let mut out = File::create(&dest).map_err(TransportError::io("creating", &dest))?;
        io::copy(&mut entry, &mut out).map_err(TransportError::io("unpacking", &dest))?;
    }
    Ok(())
}

/// An OCI archive, read.
pub struct OciArchiveSource {
    inner: OciSource,
    name: String,
    _dir: tempfile::TempDir,
}

impl OciArchiveSource {
    /// Unpacks `path` into a temp directory and opens the image `reference` of it.
    pub fn open(path: &Path, reference: Option<&str>) -> Result<OciArchiveSource> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-oci-archive-")
            .tempdir()
            .map_err(TransportError::io(
                "creating a temp directory in",
                std::env::temp_dir(),
            ))?;
        unpack(path, dir.path())?;
        let inner = OciSource::open(dir.path(), reference)?;
        Ok(OciArchiveSource {
            inner,
            name: format!(
                "oci-archive:{}{}",
                path.display(),
                reference.map(|r| format!(":{r}")).unwrap_or_default()
            ),
            _dir: dir,
        })
    }
}

impl Source for OciArchiveSource {
    fn plain_layers(&self) -> super::PlainLayers {
        super::PlainLayers::GzipTyped
    }

    fn name(&self) -> String {
        self.name.clone()
    }
    async fn top(&self) -> Result<RawManifest> {
        self.inner.top().await
    }
    async fn manifest(&self, digest: &Digest) -> Result<Option<RawManifest>> {
        self.inner.manifest(digest).await
    }
    async fn blob(&self, desc: &Descriptor) -> Result<BlobBody> {
        self.inner.blob(desc).await
    }
}

/// An OCI archive, written: a layout in a temp directory, packed at commit.
pub struct OciArchiveDest {
    inner: OciDest,
    path: PathBuf,
    name: String,
    dir: tempfile::TempDir,
}

impl OciArchiveDest {
    /// Writes the image named `reference` into a new archive at `path` (replacing any file there at commit).
    pub fn create(path: &Path, reference: Option<&str>) -> Result<OciArchiveDest> {
        let dir = temp_dir_near(path)?;
        let inner = OciDest::create(dir.path(), reference)?;
        Ok(OciArchiveDest {
            inner,
            path: path.to_path_buf(),
            name: format!(
                "oci-archive:{}{}",
                path.display(),
                reference.map(|r| format!(":{r}")).unwrap_or_default()
            ),
            dir,
        })
    }

    /// Packs the layout into `<path>.tmp-PID` (files sorted, fixed owners) and renames it into place.
    fn pack(layout: &Path, path: &Path) -> Result<()> {
        let tmp = path.with_file_name(format!(
            ".{}.tmp-{}",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let write = || -> io::Result<()> {
            let f = File::create(&tmp)?;
            let mut tar = tar::Builder::new(io::BufWriter::new(f));
            tar.mode(tar::HeaderMode::Deterministic);
            let mut files = Vec::new();
            let mut stack = vec![layout.to_path_buf()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d)? {
                    let p = e?.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else {
                        files.push(p);
                    }
                }
            }
            files.sort();
            for p in files {
                let rel = p.strip_prefix(layout).expect("under the layout");
                tar.append_path_with_name(&p, rel)?;
            }
            let f = tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            TransportError::Io {
                op: "writing",
                path: path.to_path_buf(),
                source: e,
            }
        })
    }
}

impl Destination for OciArchiveDest {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn properties(&self) -> DestProperties {
        self.inner.properties()
    }
    async fn has_blob(&self, desc: &Descriptor) -> Result<bool> {
        self.inner.has_blob(desc).await
    }
    async fn put_blob(&self, desc: &Descriptor, body: BlobBody) -> Result<Put> {
        self.inner.put_blob(desc, body).await
    }
    async fn put_manifest(&self, manifest: &RawManifest) -> Result<()> {
        self.inner.put_manifest(manifest).await
    }
    async fn commit(&self, top: &RawManifest) -> Result<()> {
        self.inner.commit(top).await?;
        let (layout, path) = (self.dir.path().to_path_buf(), self.path.clone());
        let archive = path.clone();
        crate::task::unblock(move || OciArchiveDest::pack(&layout, &path))
            .await
            .map_err(TransportError::io("packing", archive))?
    }
}
