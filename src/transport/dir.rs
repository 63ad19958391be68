//! `dir:PATH`: skopeo's directory format, byte for byte what skopeo 1.9.3
//! (containers/image v5.23, `directory/`) writes:
//!
//! ```text
//! PATH/version                "Directory Transport Version: 1.1\n"
//! PATH/manifest.json          the top manifest, its bytes as copied
//! PATH/<hex>.manifest.json    each child manifest of an index copied whole (`--all`)
//! PATH/<hex>                  each config and layer blob
//! ```
//!
//! As skopeo does, opening a destination creates the directory when missing,
//! empties an existing one only when its `version` file says it holds a
//! `dir:` image (and refuses any other non-empty directory), then writes the
//! `version` file: a copy that fails half-way leaves a directory the next
//! copy may overwrite. `manifest.json` is written last (at commit), so such a
//! directory never reads as an image. Every file is written to a temporary
//! name in the directory and renamed into place; blobs are hashed and sized
//! as they are written and renamed only when they match. As skopeo does, each blob's data reaches
//! the disk (`fdatasync`) before its name appears, so a power loss never
//! leaves a blob file with the wrong bytes; writeback of a large blob starts
//! while it is still arriving, so that sync finds little left to write.
//!
//! The file helpers at the end (verified atomic writes, capped manifest
//! reads, local blob bodies) are shared with `oci:` (`super::oci`).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{DestProperties, Destination, Put, Result, Source, TransportError};
use crate::blob::{BlobBody, BlobLocation, FileRange, StreamWriteError};
use crate::digest::{Algorithm, Digest, Hasher, VerifyError, check};
use crate::limits::{IO_BUFFER_BYTES, MAX_MANIFEST_BYTES};
use crate::manifest::{Descriptor, ManifestError, RawManifest};

/// The `version` file's exact content (containers/image `directory.version`).
pub const VERSION: &str = "Directory Transport Version: 1.1\n";

const VERSION_FILE: &str = "version";
const MANIFEST_FILE: &str = "manifest.json";

/// Mode of the files written (skopeo's 0644).
const FILE_MODE: u32 = 0o644;
/// Mode of the directories created (skopeo's 0755).
const DIR_MODE: u32 = 0o755;

/// A `dir:` image, read.
pub struct DirSource {
    path: PathBuf,
}

impl DirSource {
    /// Opens the `dir:` image at `path` (a directory; its files are read when asked for).
    pub fn open(path: &Path) -> Result<DirSource> {
        match std::fs::metadata(path) {
            Ok(md) if md.is_dir() => Ok(DirSource {
                path: path.to_path_buf(),
            }),
            Ok(_) => Err(TransportError::Invalid(format!(
                "dir:{}: not a directory",
                path.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(TransportError::NotFound(
                format!("dir:{}: no such directory", path.display()),
            )),
            Err(e) => Err(TransportError::io("reading", path)(e)),
        }
    }

    fn child_manifest_path(&self, digest: &Digest) -> PathBuf {
        self.path.join(format!("{}.manifest.json", digest.hex()))
    }
}

impl Source for DirSource {
    fn plain_layers(&self) -> super::PlainLayers {
        super::PlainLayers::GzipTyped
    }

    fn name(&self) -> String {
        format!("dir:{}", self.path.display())
    }

    async fn top(&self) -> Result<RawManifest> {
        let bytes = read_manifest_file(&self.path.join(MANIFEST_FILE))?.ok_or_else(|| {
            TransportError::NotFound(format!(
                "dir:{}: no {MANIFEST_FILE} (not a dir: image, or a copy into it did not finish)",
                self.path.display()
            ))
        })?;
        Ok(RawManifest::new(bytes, None)?)
    }

    async fn manifest(&self, digest: &Digest) -> Result<Option<RawManifest>> {
        if let Some(bytes) = read_manifest_file(&self.child_manifest_path(digest))? {
            verify_bytes(digest, None, &bytes)?;
            return Ok(Some(RawManifest::new(bytes, None)?));
        }
        // A single image is stored as manifest.json only.
        match read_manifest_file(&self.path.join(MANIFEST_FILE))? {
            Some(bytes) if digest_of(digest.algorithm(), &bytes) == *digest => {
                Ok(Some(RawManifest::new(bytes, None)?))
            }
            _ => Ok(None),
        }
    }

    async fn blob(&self, desc: &Descriptor) -> Result<BlobBody> {
        local_blob(&self.path.join(desc.digest.hex()), desc)
    }
}

/// A `dir:` image, written.
pub struct DirDest {
    path: PathBuf,
}

impl DirDest {
    /// Prepares `path` as skopeo does: creates it, or empties it when it holds a
    /// previous `dir:` image, or refuses a non-empty directory that does not.
    pub fn create(path: &Path) -> Result<DirDest> {
        match std::fs::metadata(path) {
            Ok(md) if md.is_dir() => {
                let mut entries =
                    std::fs::read_dir(path).map_err(TransportError::io("listing", path))?;
                if entries.next().is_some() {
                    if !holds_dir_image(path)? {
                        return Err(TransportError::Invalid(format!(
                            "dir:{}: the directory is not empty and holds no dir: image \
                             (no `{VERSION_FILE}` file reading {VERSION:?}); refusing to overwrite it",
                            path.display()
                        )));
                    }
                    remove_contents(path)?;
                }
            }
            Ok(_) => {
                return Err(TransportError::Invalid(format!(
                    "dir:{}: exists and is not a directory",
                    path.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir_all(path)?,
            Err(e) => return Err(TransportError::io("reading", path)(e)),
        }
        write_atomic(path, &path.join(VERSION_FILE), VERSION.as_bytes())?;
        Ok(DirDest {
            path: path.to_path_buf(),
        })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.path.join(digest.hex())
    }
}

/// Whether `dir` has skopeo's `version` file with the expected content.
fn holds_dir_image(dir: &Path) -> Result<bool> {
    let path = dir.join(VERSION_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(TransportError::io("opening", path)(e)),
    };
    let mut content = Vec::new();
    if let Err(e) = file
        .take(VERSION.len() as u64 + 1)
        .read_to_end(&mut content)
    {
        // A directory named `version`, say: not an image either.
        tracing::debug!("reading {}: {e}", path.display());
        return Ok(false);
    }
    Ok(content == VERSION.as_bytes())
}

/// Deletes everything in `dir`, not `dir` itself (symbolic links are removed, not followed).
fn remove_contents(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(TransportError::io("listing", dir))? {
        let entry = entry.map_err(TransportError::io("listing", dir))?;
        let path = entry.path();
        let is_dir = entry
            .file_type()
            .map_err(TransportError::io("reading", &path))?
            .is_dir();
        let removed = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(TransportError::io("removing", &path))?;
    }
    Ok(())
}

impl Destination for DirDest {
    fn name(&self) -> String {
        format!("dir:{}", self.path.display())
    }

    fn properties(&self) -> DestProperties {
        DestProperties {
            manifest_types: Vec::new(),
            accepts_index: true,
            accepts_sparse_index: true,
            ordered_blobs: false,
            compresses_layers: false,
        }
    }

    fn accepts_foreign_layer_urls(&self) -> bool {
        false
    }

    async fn has_blob(&self, desc: &Descriptor) -> Result<bool> {
        Ok(has_file(&self.blob_path(&desc.digest), desc.size))
    }

    async fn put_blob(&self, desc: &Descriptor, body: BlobBody) -> Result<Put> {
        let to = self.blob_path(&desc.digest);
        if has_file(&to, desc.size) {
            return Ok(Put::Present);
        }
        put_blob_file(&self.path, &to, desc, body).await?;
        Ok(Put::Written)
    }

    async fn put_manifest(&self, manifest: &RawManifest) -> Result<()> {
        let to = self
            .path
            .join(format!("{}.manifest.json", manifest.digest().hex()));
        write_blob_atomic(&self.path, &to, manifest.bytes())
    }

    async fn commit(&self, top: &RawManifest) -> Result<()> {
        write_blob_atomic(&self.path, &self.path.join(MANIFEST_FILE), top.bytes())
    }
}

// ---- file helpers shared with `oci:` ----

/// Creates `path` and its parents with skopeo's mode (0755, less the umask).
pub(super) fn create_dir_all(path: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder
        .create(path)
        .map_err(TransportError::io("creating directory", path))
}

/// A file under a temporary name, deleted when dropped unless renamed into place.
struct TempFile {
    path: PathBuf,
    file: File,
    done: bool,
}

impl TempFile {
    /// Creates a new temporary file in `dir` (the same file system as its final name).
    fn new(dir: &Path) -> Result<TempFile> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".ferry-tmp-{}-{n}", std::process::id()));
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
            match options.open(&path) {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file,
                        done: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(TransportError::io("creating a temporary file in", dir)(e)),
            }
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(TransportError::io("writing", &self.path))
    }

    /// Puts the file's data on the disk (before its name appears, so the name never outlives its bytes).
    fn sync_data(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(TransportError::io("syncing", &self.path))
    }

    /// Renames the file to `to`, replacing what is there.
    fn persist(mut self, to: &Path) -> Result<()> {
        std::fs::rename(&self.path, to).map_err(TransportError::io("renaming into place", to))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `bytes` to `to` through a temporary file in `dir` and a rename.
pub(super) fn write_atomic(dir: &Path, to: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = TempFile::new(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(to)
}

/// [`write_atomic`] for a manifest, which is a blob: its data is synced before its name appears, as every blob's is.
pub(super) fn write_blob_atomic(dir: &Path, to: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = TempFile::new(dir)?;
    tmp.write_all(bytes)?;
    tmp.sync_data()?;
    tmp.persist(to)
}

fn corrupt(digest: &Digest, cause: impl ToString) -> TransportError {
    TransportError::Corrupt {
        digest: digest.clone(),
        cause: cause.to_string(),
    }
}

/// A blob being written: hashed and counted as it goes, synced and renamed into place only when it matches.
struct BlobSink {
    tmp: TempFile,
    hasher: Hasher,
    written: u64,
    /// Bytes written when writeback was last started.
    flushed: u64,
    digest: Digest,
    size: u64,
}

/// Bytes of a blob written between two writeback requests (the final `fdatasync` then waits for at most this much).
const WRITEBACK_BYTES: u64 = 8 * 1024 * 1024;

impl BlobSink {
    fn new(tmp_dir: &Path, desc: &Descriptor) -> Result<BlobSink> {
        Ok(BlobSink {
            tmp: TempFile::new(tmp_dir)?,
            hasher: Hasher::new(desc.digest.algorithm()),
            written: 0,
            flushed: 0,
            digest: desc.digest.clone(),
            size: desc.size,
        })
    }

    fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.written += chunk.len() as u64;
        if self.written > self.size {
            // Stop at once: a body longer than its descriptor says never fills the disk.
            return Err(corrupt(
                &self.digest,
                format!("content runs past the {} bytes expected", self.size),
            ));
        }
        self.hasher.update(chunk);
        self.tmp.write_all(chunk)?;
        if self.written - self.flushed >= WRITEBACK_BYTES {
            start_writeback(&self.tmp.file);
            self.flushed = self.written;
        }
        Ok(())
    }

    fn finish(self, to: &Path) -> Result<()> {
        let BlobSink {
            tmp,
            hasher,
            written,
            digest,
            size,
            ..
        } = self;
        check(&digest, Some(size), &hasher.finish(), written).map_err(|e| corrupt(&digest, e))?;
        // skopeo chmods blobs to 0644 whatever the umask.
        #[cfg(unix)]
        tmp.file
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(FILE_MODE))
            .map_err(TransportError::io("setting the mode of", &tmp.path))?;
        tmp.sync_data()?;
        tmp.persist(to)
    }
}

/// Asks the kernel to start writing `file`'s dirty pages back without waiting
/// (best effort: a failure only means the later sync waits longer).
fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open fd; SYNC_FILE_RANGE_WRITE only queues writeback of its dirty pages.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

async fn joined<T>(task: tokio::task::JoinHandle<Result<T>>, to: &Path) -> Result<T> {
    crate::task::join(task)
        .await
        .map_err(TransportError::io("writing", to))?
}

/// Writes a blob to `to` through a temporary file in `tmp_dir` (same file
/// system), verifying its digest and size as it is written and syncing its
/// data; nothing appears at `to` unless it matches `desc`. File writes run on
/// blocking threads.
pub(super) async fn put_blob_file(
    tmp_dir: &Path,
    to: &Path,
    desc: &Descriptor,
    body: BlobBody,
) -> Result<()> {
    let mut sink = BlobSink::new(tmp_dir, desc)?;
    let target = to.to_path_buf();
    match body {
        BlobBody::Local(loc) => {
            let task = tokio::task::spawn_blocking(move || {
                let source_err = |source| TransportError::Io {
                    op: "reading the source of",
                    path: target.clone(),
                    source,
                };
                let mut reader = loc.source.open_range(0, loc.size).map_err(source_err)?;
                let mut buf = vec![0u8; IO_BUFFER_BYTES];
                loop {
                    let n = match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(source_err(e)),
                    };
                    sink.write(&buf[..n])?;
                }
                sink.finish(&target)
            });
            joined(task, to).await
        }
        BlobBody::Stream(stream) => {
            // On any error the sink is dropped, and its temporary file with it.
            let sink =
                crate::blob::write_stream(stream, sink, |s: &mut BlobSink, c: &[u8]| s.write(c))
                    .await
                    .map_err(|e| match e {
                        StreamWriteError::Write(e) => e,
                        StreamWriteError::Read(e) if e.kind() == io::ErrorKind::InvalidData => {
                            corrupt(&desc.digest, e)
                        }
                        StreamWriteError::Read(e) => TransportError::Io {
                            op: "receiving the blob for",
                            path: target.clone(),
                            source: e,
                        },
                    })?;
            joined(
                tokio::task::spawn_blocking(move || sink.finish(&target)),
                to,
            )
            .await
        }
    }
}

/// Whether a regular file of `size` bytes is at `path`.
pub(super) fn has_file(path: &Path, size: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|md| md.is_file() && md.len() == size)
}

/// A manifest file's bytes (at most [`MAX_MANIFEST_BYTES`]); `None` when there is no such file.
pub(super) fn read_manifest_file(path: &Path) -> Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TransportError::io("opening", path)(e)),
    };
    let too_large = |size| {
        TransportError::Manifest(ManifestError::TooLarge {
            size,
            limit: MAX_MANIFEST_BYTES,
        })
    };
    let len = file
        .metadata()
        .map_err(TransportError::io("reading", path))?
        .len();
    if len > MAX_MANIFEST_BYTES {
        return Err(too_large(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(TransportError::io("reading", path))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(Some(bytes))
}

/// The digest of `bytes` with `algorithm`.
pub(super) fn digest_of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
    let mut h = Hasher::new(algorithm);
    h.update(bytes);
    h.finish()
}

/// Checks bytes read whole (a manifest) against their digest and, when known, size.
pub(super) fn verify_bytes(expected: &Digest, size: Option<u64>, bytes: &[u8]) -> Result<()> {
    let found = digest_of(expected.algorithm(), bytes);
    check(expected, size, &found, bytes.len() as u64).map_err(|e: VerifyError| corrupt(expected, e))
}

/// A blob stored as the whole file at `path`, after checking it has the size `desc` says.
pub(super) fn local_blob(path: &Path, desc: &Descriptor) -> Result<BlobBody> {
    let md = match std::fs::metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TransportError::NotFound(format!(
                "blob {} not found: no file {}",
                desc.digest,
                path.display()
            )));
        }
        Err(e) => return Err(TransportError::io("reading", path)(e)),
    };
    if !md.is_file() {
        return Err(corrupt(
            &desc.digest,
            format!("{} is not a regular file", path.display()),
        ));
    }
    if md.len() != desc.size {
        return Err(corrupt(
            &desc.digest,
            format!(
                "{} is {} bytes, expected {}",
                path.display(),
                md.len(),
                desc.size
            ),
        ));
    }
    Ok(BlobBody::Local(BlobLocation {
        size: md.len(),
        source: Arc::new(FileRange(path.to_path_buf())),
    }))
}

#[cfg(test)]
pub(super) mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::media_type as mt;

    /// A tiny image: a config, a layer, and its Docker schema 2 manifest; plus an index over it.
    pub(crate) struct Fixture {
        pub blobs: Vec<(Descriptor, Vec<u8>)>,
        pub image: RawManifest,
        pub index: RawManifest,
    }

    pub(crate) fn fixture(manifest_type: &str, config_type: &str, index_type: &str) -> Fixture {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        let layer = b"not really a tar, but bytes all the same".repeat(1000);
        let desc = |media_type: &str, bytes: &[u8]| Descriptor {
            media_type: media_type.to_string(),
            digest: Digest::sha256_of(bytes),
            size: bytes.len() as u64,
            platform: None,
            urls: Vec::new(),
            annotations: Default::default(),
        };
        let c = desc(config_type, &config);
        let l = desc(mt::OCI_LAYER_GZIP, &layer);
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"{manifest_type}","config":{},"layers":[{}]}}"#,
            serde_json::to_string(&c).unwrap(),
            serde_json::to_string(&l).unwrap()
        );
        let image = RawManifest::new(image.into_bytes(), None).unwrap();
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{index_type}","manifests":[{{"mediaType":"{manifest_type}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            image.digest(),
            image.bytes().len()
        );
        let index = RawManifest::new(index.into_bytes(), None).unwrap();
        Fixture {
            blobs: vec![(c, config), (l, layer)],
            image,
            index,
        }
    }

    /// A blob body of `bytes`, local or streamed.
    pub(crate) fn body(bytes: &[u8], stream: bool) -> BlobBody {
        let bytes = bytes.to_vec();
        if stream {
            let chunks: Vec<io::Result<bytes::Bytes>> = bytes
                .chunks(1000)
                .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                .collect();
            BlobBody::Stream(Box::pin(futures_util::stream::iter(chunks)))
        } else {
            BlobBody::Local(BlobLocation {
                size: bytes.len() as u64,
                source: Arc::new(crate::blob::Memory(bytes)),
            })
        }
    }

    pub(crate) async fn read_body(body: BlobBody) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = body.into_stream();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn round_trip_image_and_index() {
        let fx = fixture(
            mt::DOCKER_MANIFEST,
            mt::DOCKER_CONFIG,
            mt::DOCKER_MANIFEST_LIST,
        );
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("img");
        let dest = DirDest::create(&path).unwrap();
        assert!(dest.properties().accepts_index);
        for (i, (desc, bytes)) in fx.blobs.iter().enumerate() {
            assert!(!dest.has_blob(desc).await.unwrap());
            let put = dest.put_blob(desc, body(bytes, i % 2 == 0)).await.unwrap();
            assert_eq!(put, Put::Written);
            assert!(dest.has_blob(desc).await.unwrap());
            assert_eq!(
                dest.put_blob(desc, body(bytes, false)).await.unwrap(),
                Put::Present
            );
        }
        dest.put_manifest(&fx.image).await.unwrap();
        dest.commit(&fx.index).await.unwrap();

        let mut want = vec![
            MANIFEST_FILE.to_string(),
            VERSION_FILE.to_string(),
            format!("{}.manifest.json", fx.image.digest().hex()),
        ];
        want.extend(fx.blobs.iter().map(|(d, _)| d.digest.hex().to_string()));
        want.sort();
        assert_eq!(files(&path), want);
        assert_eq!(
            std::fs::read(path.join(VERSION_FILE)).unwrap(),
            VERSION.as_bytes()
        );

        let src = DirSource::open(&path).unwrap();
        assert_eq!(src.top().await.unwrap(), fx.index);
        assert_eq!(
            src.manifest(fx.image.digest()).await.unwrap(),
            Some(fx.image.clone())
        );
        assert_eq!(
            src.manifest(fx.index.digest()).await.unwrap(),
            Some(fx.index.clone())
        );
        let absent = Digest::sha256_of(b"absent");
        assert_eq!(src.manifest(&absent).await.unwrap(), None);
        for (desc, bytes) in &fx.blobs {
            assert_eq!(&read_body(src.blob(desc).await.unwrap()).await, bytes);
        }
        let mut wrong_size = fx.blobs[0].0.clone();
        wrong_size.size += 1;
        assert!(matches!(
            src.blob(&wrong_size).await,
            Err(TransportError::Corrupt { .. })
        ));

        // A child manifest file whose bytes are not its name's digest is refused.
        std::fs::write(src.child_manifest_path(fx.image.digest()), b"{}").unwrap();
        assert!(matches!(
            src.manifest(fx.image.digest()).await,
            Err(TransportError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn wrong_content_never_lands() {
        let fx = fixture(mt::OCI_MANIFEST, mt::OCI_CONFIG, mt::OCI_INDEX);
        let tmp = tempfile::tempdir().unwrap();
        let dest = DirDest::create(tmp.path()).unwrap();
        let (desc, bytes) = &fx.blobs[1];
        let mut bad = bytes.clone();
        bad[10] ^= 1;
        for stream in [false, true] {
            let err = dest.put_blob(desc, body(&bad, stream)).await.unwrap_err();
            assert!(err.to_string().contains("hashes to"), "{err}");
            let err = dest
                .put_blob(desc, body(&bytes[1..], stream))
                .await
                .unwrap_err();
            assert!(err.to_string().contains("bytes, expected"), "{err}");
            let mut long = bytes.clone();
            long.push(0);
            let err = dest.put_blob(desc, body(&long, stream)).await.unwrap_err();
            assert!(err.to_string().contains("runs past"), "{err}");
        }
        // A stream that fails mid-way.
        let chunks: Vec<io::Result<bytes::Bytes>> = vec![
            Ok(bytes::Bytes::from_static(b"abc")),
            Err(io::Error::new(io::ErrorKind::InvalidData, "source said no")),
        ];
        let err = dest
            .put_blob(
                desc,
                BlobBody::Stream(Box::pin(futures_util::stream::iter(chunks))),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Corrupt { .. }), "{err}");
        // Only the version file: no blob, no temporary file left behind.
        assert_eq!(files(tmp.path()), vec![VERSION_FILE.to_string()]);
    }

    #[test]
    fn refuses_a_directory_that_is_not_an_image() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("important"), b"data").unwrap();
        let err = DirDest::create(tmp.path()).err().unwrap();
        assert!(matches!(err, TransportError::Invalid(_)));
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        assert_eq!(files(tmp.path()), vec!["important".to_string()]);

        // A version file with other content is no image either.
        std::fs::write(
            tmp.path().join(VERSION_FILE),
            b"Directory Transport Version: 1.0\n",
        )
        .unwrap();
        assert!(DirDest::create(tmp.path()).is_err());

        // A file where the directory should be.
        let file = tmp.path().join("important");
        let err = DirDest::create(&file).err().unwrap();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn overwrites_a_previous_image() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path();
        std::fs::write(path.join(VERSION_FILE), VERSION).unwrap();
        std::fs::write(path.join(MANIFEST_FILE), b"{}").unwrap();
        std::fs::create_dir(path.join("sub")).unwrap();
        std::fs::write(path.join("sub/x"), b"x").unwrap();
        DirDest::create(path).unwrap();
        assert_eq!(files(path), vec![VERSION_FILE.to_string()]);
        // An empty directory is used as it is; a missing one is created.
        let empty = path.join("sub2");
        std::fs::create_dir(&empty).unwrap();
        DirDest::create(&empty).unwrap();
        DirDest::create(&path.join("a/b/c")).unwrap();
        assert_eq!(files(&path.join("a/b/c")), vec![VERSION_FILE.to_string()]);
    }

    #[tokio::test]
    async fn source_errors_name_the_problem() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            DirSource::open(&tmp.path().join("nope")),
            Err(TransportError::NotFound(_))
        ));
        let src = DirSource::open(tmp.path()).unwrap();
        let err = src.top().await.unwrap_err();
        assert!(err.to_string().contains("no manifest.json"), "{err}");
        std::fs::write(
            tmp.path().join(MANIFEST_FILE),
            vec![b' '; MAX_MANIFEST_BYTES as usize + 1],
        )
        .unwrap();
        assert!(matches!(
            src.top().await,
            Err(TransportError::Manifest(ManifestError::TooLarge { .. }))
        ));
        let fx = fixture(mt::OCI_MANIFEST, mt::OCI_CONFIG, mt::OCI_INDEX);
        assert!(matches!(
            src.blob(&fx.blobs[0].0).await,
            Err(TransportError::NotFound(_))
        ));
    }
}
