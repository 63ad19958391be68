//! `docker-archive:PATH[:REF]`: the `docker save` tar format, as
//! containers/image v5.23 (skopeo 1.9.3) reads and writes it, and as
//! `docker load` reads it.
//!
//! Written (as skopeo writes it): every layer *uncompressed* as
//! `<diff_id hex>.tar`, the config as `<config hex>.json`, the legacy
//! per-layer directories (`<id>/layer.tar` → `../<diff_id hex>.tar`,
//! `<id>/VERSION`, `<id>/json`), then `manifest.json`
//! (`[{"Config":…,"RepoTags":[…],"Layers":[…]}]`) and `repositories`. Blobs are
//! buffered (verified) in a temp directory next to the output; the tar is
//! written to a temp name at commit and renamed into place.
//!
//! Read: the tar is indexed once (member name → offset and size, `..` and
//! absolute names refused) and every blob is served as a byte range of the
//! file. The image is a Docker schema 2 manifest built from `manifest.json`
//! and the config, as containers/image builds it, except that each layer is
//! described by the member as stored: its own digest and size, and a media
//! type saying whether it is gzip'd or a plain tar (containers/image always
//! says gzip and decompresses). Every layer is checked against the config's
//! `rootfs.diff_ids` when the archive is opened.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{DestProperties, Destination, Put, Result, Source, TransportError};
use crate::blob::{BlobBody, BlobLocation, RangeRead};
use crate::digest::{self, Algorithm, Digest, Hasher, HashingWriter, VerifyingReader};
use crate::limits::{IO_BUFFER_BYTES, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};
use crate::manifest::{Descriptor, Manifest, RawManifest};
use crate::media_type as mt;
use crate::reference::{DEFAULT_REGISTRY, Reference};

/// The archive's table of images.
const MANIFEST_FILE: &str = "manifest.json";
/// The legacy name → tag → top layer id table.
const REPOSITORIES_FILE: &str = "repositories";
/// Config attributes copied into the top legacy layer's `json` (containers/image's list).
const LEGACY_ATTRS: [&str; 7] = [
    "architecture",
    "config",
    "container",
    "container_config",
    "created",
    "docker_version",
    "os",
];

// ---------------------------------------------------------------------------
// References

/// A docker reference normalised as docker does: `busybox` is
/// `docker.io/library/busybox`, and a name without tag or digest means `:latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NormalizedRef {
    /// `domain/path`, e.g. `docker.io/library/busybox`.
    pub name: String,
    /// The tag (`latest` when neither tag nor digest was given).
    pub tag: Option<String>,
    /// The pinned digest.
    pub digest: Option<Digest>,
}

impl NormalizedRef {
    /// Parses and normalises `s` (`reference.ParseNormalizedNamed` + `TagNameOnly`).
    pub fn parse(s: &str) -> Result<NormalizedRef> {
        let r = Reference::parse(s)
            .map_err(|e| TransportError::Invalid(format!("reference {s:?}: {e}")))?;
        let domain = match r.host() {
            None => DEFAULT_REGISTRY,
            Some("index.docker.io") => DEFAULT_REGISTRY,
            Some(h) => h,
        };
        let path = if domain == DEFAULT_REGISTRY && !r.repository().contains('/') {
            format!("library/{}", r.repository())
        } else {
            r.repository().to_string()
        };
        Ok(NormalizedRef {
            name: format!("{domain}/{path}"),
            tag: r.effective_tag().map(str::to_string),
            digest: r.digest().cloned(),
        })
    }

    /// `name:tag` (a reference with a tag and no digest), as written into `RepoTags`.
    pub fn name_tag(&self) -> Option<String> {
        match (&self.tag, &self.digest) {
            (Some(t), None) => Some(format!("{}:{t}", self.name)),
            _ => None,
        }
    }
}

impl std::fmt::Display for NormalizedRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// A `name:tag` for an archive's `RepoTags` (digests refused, as containers/image does).
fn tagged_ref(s: &str) -> Result<NormalizedRef> {
    let r = NormalizedRef::parse(s)?;
    if r.digest.is_some() {
        return Err(TransportError::Invalid(format!(
            "docker-archive doesn't support digest references: {s}"
        )));
    }
    Ok(r)
}

/// A name unique to this process, for temp files and directories.
pub(crate) fn unique_suffix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------
// Compression

/// What a blob's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
    Bzip2,
    Xz,
}

impl Compression {
    fn detect(prefix: &[u8]) -> Compression {
        if prefix.starts_with(&[0x1f, 0x8b, 0x08]) {
            Compression::Gzip
        } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if prefix.starts_with(b"BZh") {
            Compression::Bzip2
        } else if prefix.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else {
            Compression::None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Xz => "xz",
        }
    }

    /// A reader of the decompressed bytes of `r`; `None` for bzip2/xz, which ferry cannot read.
    fn decoder<'a, R: Read + Send + 'a>(
        self,
        r: R,
    ) -> io::Result<Option<Box<dyn Read + Send + 'a>>> {
        Ok(match self {
            Compression::None => Some(Box::new(r)),
            Compression::Gzip => Some(Box::new(flate2::read::MultiGzDecoder::new(r))),
            Compression::Zstd => Some(Box::new(zstd::stream::read::Decoder::new(r)?)),
            Compression::Bzip2 | Compression::Xz => None,
        })
    }
}

/// Reads up to `buf.len()` bytes, fewer only at end of input.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A reader that hashes, counts and copies out everything read through it.
struct Tee<R, W> {
    inner: R,
    hasher: Hasher,
    count: u64,
    out: W,
}

impl<R: Read, W: Write> Tee<R, W> {
    fn new(inner: R, algorithm: Algorithm, out: W) -> Self {
        Tee {
            inner,
            hasher: Hasher::new(algorithm),
            count: 0,
            out,
        }
    }
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Reads a blob to its end through `tee` and finds its compression and, when
/// compressed, the digest and size of its decompressed content (the diff_id).
fn analyse<R: Read + Send, W: Write + Send>(
    tee: &mut Tee<R, W>,
) -> io::Result<(Compression, Option<(Digest, u64)>)> {
    let mut prefix = [0u8; 6];
    let n = read_up_to(tee, &mut prefix)?;
    let compression = Compression::detect(&prefix[..n]);
    let diff = match compression {
        Compression::Gzip | Compression::Zstd => {
            let chained = (&prefix[..n]).chain(&mut *tee);
            let mut dec = compression.decoder(chained)?.expect("gzip and zstd decode");
            let mut out = HashingWriter::new(io::sink());
            io::copy(&mut dec, &mut out)?;
            let (_, d, size) = out.finish();
            Some((d, size))
        }
        _ => None,
    };
    // The rest (trailing bytes after a compressed stream, or all of a plain blob) is hashed too.
    io::copy(tee, &mut io::sink())?;
    Ok((compression, diff))
}

// ---------------------------------------------------------------------------
// Reading

/// Reads `len` bytes of a file from `pos` with positional reads (no shared cursor).
struct PosReader {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for PosReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.end || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min((self.end - self.pos).min(usize::MAX as u64) as usize);
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive ends inside a member",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// One regular member of the archive (or a whole temp file), read in place.
pub(crate) struct Member {
    pub(crate) file: Arc<File>,
    pub(crate) offset: u64,
    pub(crate) size: u64,
}

impl RangeRead for Member {
    fn open_range(&self, start: u64, len: u64) -> io::Result<Box<dyn Read + Send>> {
        if start.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("range {start}+{len} is outside a {}-byte blob", self.size),
            ));
        }
        Ok(Box::new(PosReader {
            file: self.file.clone(),
            pos: self.offset + start,
            end: self.offset + start + len,
        }))
    }
}

/// A compressed layer member read decompressed (containers/image serves an archive's layers
/// by their diff_ids, uncompressed); a range is read from the start, decoding what it skips.
struct Unpacked {
    member: Member,
    compression: Compression,
    /// The decompressed size.
    size: u64,
}

impl RangeRead for Unpacked {
    fn open_range(&self, start: u64, len: u64) -> io::Result<Box<dyn Read + Send>> {
        if start.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("range {start}+{len} is outside a {}-byte blob", self.size),
            ));
        }
        let raw = self.member.open_range(0, self.member.size)?;
        let mut dec = self
            .compression
            .decoder(io::BufReader::with_capacity(IO_BUFFER_BYTES, raw))?
            .ok_or_else(|| io::Error::other("the layer's compression cannot be read"))?;
        io::copy(&mut (&mut dec).take(start), &mut io::sink())?;
        Ok(Box::new(dec.take(len)))
    }
}

/// What a member name stands for.
#[derive(Debug, Clone)]
enum Entry {
    /// A regular file: where its data is.
    File { offset: u64, size: u64 },
    /// A symbolic link (target relative to the link's directory).
    Symlink(String),
    /// A hard link (target relative to the archive root).
    Hardlink(String),
}

/// `name` with `.` and empty components dropped; `None` when absolute or holding `..`.
fn clean_name(name: &str) -> Option<String> {
    if name.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// `target` resolved against directory `dir` lexically; `None` when it leaves the archive.
fn join_link(dir: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// An indexed archive file.
struct TarIndex {
    file: Arc<File>,
    path: PathBuf,
    entries: HashMap<String, Entry>,
}

impl TarIndex {
    /// Reads every header once; refuses unsafe names, duplicates and members past the end of the file.
    fn build(file: File, path: &Path) -> Result<TarIndex> {
        let invalid = |why: String| TransportError::Invalid(format!("{}: {why}", path.display()));
        let len = file
            .metadata()
            .map_err(TransportError::io("reading", path))?
            .len();
        let mut entries = HashMap::new();
        {
            (&file)
                .seek(io::SeekFrom::Start(0))
                .map_err(TransportError::io("reading", path))?;
            let mut ar = tar::Archive::new(&file);
            let iter = ar
                .entries_with_seek()
                .map_err(TransportError::io("reading archive", path))?;
            for e in iter {
                let e = e.map_err(TransportError::io("reading archive", path))?;
                let raw = e.path_bytes();
                let raw = std::str::from_utf8(&raw)
                    .map_err(|_| invalid("an archive member's name is not UTF-8".into()))?
                    .to_string();
                let name = clean_name(&raw).ok_or_else(|| {
                    invalid(format!(
                        "archive member {raw:?} is absolute or climbs out with \"..\"; refusing the archive"
                    ))
                })?;
                let link = || -> Result<String> {
                    let t = e
                        .link_name_bytes()
                        .ok_or_else(|| invalid(format!("link {raw:?} has no target")))?;
                    std::str::from_utf8(&t)
                        .map(str::to_string)
                        .map_err(|_| invalid(format!("link {raw:?} has a non-UTF-8 target")))
                };
                let entry = match e.header().entry_type() {
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        let offset = e.raw_file_position();
                        let size = e.size();
                        if offset.checked_add(size).is_none_or(|end| end > len) {
                            return Err(invalid(format!(
                                "archive member {raw:?} runs past the end of the file (truncated archive)"
                            )));
                        }
                        Entry::File { offset, size }
                    }
                    tar::EntryType::Symlink => Entry::Symlink(link()?),
                    tar::EntryType::Link => Entry::Hardlink(link()?),
                    _ => continue, // directories and anything else are never read
                };
                if name.is_empty() {
                    continue;
                }
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(invalid(format!(
                        "archive member {name:?} appears twice; refusing the archive"
                    )));
                }
            }
        }
        Ok(TarIndex {
            file: Arc::new(file),
            path: path.to_path_buf(),
            entries,
        })
    }

    fn invalid(&self, why: String) -> TransportError {
        TransportError::Invalid(format!("{}: {why}", self.path.display()))
    }

    /// The regular file a name stands for, following one link (as containers/image does).
    fn resolve(&self, name: &str) -> Result<(u64, u64)> {
        let clean = clean_name(name).ok_or_else(|| {
            self.invalid(format!(
                "{MANIFEST_FILE} names {name:?}, which is absolute or climbs out with \"..\""
            ))
        })?;
        let missing =
            |n: &str| TransportError::NotFound(format!("{}: no member {n:?}", self.path.display()));
        let target = match self.entries.get(&clean).ok_or_else(|| missing(&clean))? {
            Entry::File { offset, size } => return Ok((*offset, *size)),
            Entry::Symlink(t) => {
                let dir = clean.rsplit_once('/').map_or("", |(d, _)| d);
                join_link(dir, t)
            }
            Entry::Hardlink(t) => clean_name(t),
        }
        .ok_or_else(|| {
            self.invalid(format!(
                "link {clean:?} points outside the archive; refusing it"
            ))
        })?;
        match self.entries.get(&target) {
            Some(Entry::File { offset, size }) => Ok((*offset, *size)),
            Some(_) => Err(self.invalid(format!(
                "{clean:?} is a link to a link ({target:?}); only one level is followed"
            ))),
            None => Err(missing(&target)),
        }
    }

    fn member(&self, offset: u64, size: u64) -> PosReader {
        PosReader {
            file: self.file.clone(),
            pos: offset,
            end: offset + size,
        }
    }

    /// A small member read whole, refused when over `cap`.
    fn read_small(&self, name: &str, cap: u64) -> Result<(Vec<u8>, u64, u64)> {
        let (offset, size) = self.resolve(name)?;
        if size > cap {
            return Err(self.invalid(format!(
                "{name:?} is {size} bytes, over the {cap}-byte limit"
            )));
        }
        let mut buf = Vec::with_capacity(size as usize);
        self.member(offset, size)
            .read_to_end(&mut buf)
            .map_err(TransportError::io("reading", &self.path))?;
        Ok((buf, offset, size))
    }
}

/// One entry of `manifest.json` as read (Docker writes `null` for empty lists sometimes).
#[derive(Debug, Deserialize)]
struct ManifestItemIn {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Option<Vec<String>>,
}

/// One entry of `manifest.json` as containers/image writes it.
#[derive(Debug, Serialize)]
struct ManifestItemOut<'a> {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<&'a str>,
}

/// The part of an image config read here.
#[derive(Debug, Deserialize)]
struct ConfigProbe {
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Option<Vec<String>>,
}

/// A Docker schema 2 manifest in Go's field order (as containers/image serialises it).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GoSchema2<'a> {
    schema_version: u32,
    media_type: &'static str,
    config: GoDesc<'a>,
    layers: Vec<GoDesc<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GoDesc<'a> {
    media_type: &'a str,
    size: u64,
    digest: &'a Digest,
}

/// Which image of an archive to read.
enum Pick {
    Only,
    Tag(NormalizedRef),
    Index(usize),
}

fn parse_pick(reference: Option<&str>) -> Result<Pick> {
    match reference {
        None | Some("") => Ok(Pick::Only),
        Some(r) => match r.strip_prefix('@') {
            Some(n) => n.parse::<usize>().map(Pick::Index).map_err(|_| {
                TransportError::Invalid(format!(
                    "docker-archive: invalid source index {r:?} (want @N, N ≥ 0)"
                ))
            }),
            None => tagged_ref(r).map(Pick::Tag),
        },
    }
}

/// The diff_ids a config lists, validated.
fn diff_ids(config: &[u8], what: &str) -> Result<Vec<Digest>> {
    let probe: ConfigProbe = serde_json::from_slice(config)
        .map_err(|e| TransportError::Invalid(format!("{what}: config does not parse: {e}")))?;
    let ids = probe
        .rootfs
        .and_then(|r| r.diff_ids)
        .ok_or_else(|| TransportError::Invalid(format!("{what}: config has no rootfs.diff_ids")))?;
    ids.iter()
        .map(|s| {
            Digest::parse(s).map_err(|e| {
                TransportError::Invalid(format!("{what}: config's rootfs.diff_ids: {e}"))
            })
        })
        .collect()
}

/// Where a blob of the image is in the archive, and how it is compressed there.
#[derive(Clone, Copy)]
struct Layer {
    offset: u64,
    size: u64,
    compression: Compression,
    /// The size served (decompressed).
    unpacked: u64,
}

/// One image of a `docker-archive:` tar, read in place.
pub struct DockerArchiveSource {
    name: String,
    file: Arc<File>,
    /// The manifest containers/image synthesises for the image: `inspect` prints it and copies
    /// start from it, so both are skopeo's.
    manifest: RawManifest,
    /// The config's digest → (offset, size); each layer's diff_id → how it is stored.
    blobs: HashMap<Digest, Layer>,
    repo_tags: Vec<String>,
}

impl DockerArchiveSource {
    /// Opens the image `reference` names (`NAME:TAG` among the `RepoTags`, or
    /// `@N` by position; `None` when the archive holds one image). Blocking: it
    /// reads the whole archive once to index it and to check every layer
    /// against the config's diff_ids, so call it off the async threads.
    pub fn open(path: &Path, reference: Option<&str>) -> Result<Self> {
        let file = open_uncompressed(path)?;
        let display = format!(
            "docker-archive:{}{}",
            path.display(),
            reference.map(|r| format!(":{r}")).unwrap_or_default()
        );
        Self::from_file(file, path, display, reference)
    }

    /// Every image of the archive as skopeo's `list-tags docker-archive:` names it, in archive
    /// order: each `RepoTags` entry as written (checked to be NAME:TAG), `@N` for an image
    /// with none. Blocking (the archive is indexed).
    pub fn list_tags(path: &Path) -> Result<Vec<String>> {
        let index = TarIndex::build(open_uncompressed(path)?, path)?;
        let (bytes, ..) = index.read_small(MANIFEST_FILE, MAX_MANIFEST_BYTES)?;
        let items: Vec<ManifestItemIn> = serde_json::from_slice(&bytes)
            .map_err(|e| index.invalid(format!("{MANIFEST_FILE} does not parse: {e}")))?;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let tags = item.repo_tags.as_deref().unwrap_or_default();
            if tags.is_empty() {
                out.push(format!("@{i}"));
            }
            for t in tags {
                tagged_ref(t).map_err(|e| {
                    index.invalid(format!("invalid tag {t:?} in {MANIFEST_FILE}: {e}"))
                })?;
                out.push(t.clone());
            }
        }
        Ok(out)
    }
}

/// The archive at `path`, decompressed to an anonymous temp file when it is compressed
/// (`docker load` and containers/image accept a compressed archive).
fn open_uncompressed(path: &Path) -> Result<File> {
    let mut file = File::open(path).map_err(TransportError::io("opening", path))?;
    let mut prefix = [0u8; 6];
    let n = read_up_to(&mut file, &mut prefix).map_err(TransportError::io("reading", path))?;
    let compression = Compression::detect(&prefix[..n]);
    let file = match compression {
        Compression::None => file,
        c => {
            let f = File::open(path).map_err(TransportError::io("opening", path))?;
            let mut dec = c
                .decoder(io::BufReader::new(f))
                .map_err(TransportError::io("reading", path))?
                .ok_or_else(|| {
                    TransportError::Unsupported(format!(
                        "{}: the archive is {}-compressed; decompress it first",
                        path.display(),
                        c.name()
                    ))
                })?;
            let mut tmp = anonymous_temp_file()?;
            io::copy(&mut dec, &mut tmp).map_err(TransportError::io("decompressing", path))?;
            tmp
        }
    };
    Ok(file)
}

impl DockerArchiveSource {
    /// Reads an already opened (uncompressed) archive; `path` is for messages.
    pub(crate) fn from_file(
        file: File,
        path: &Path,
        name: String,
        reference: Option<&str>,
    ) -> Result<Self> {
        let pick = parse_pick(reference)?;
        let index = TarIndex::build(file, path)?;
        let (bytes, ..) = match index.read_small(MANIFEST_FILE, MAX_MANIFEST_BYTES) {
            Err(TransportError::NotFound(_)) => {
                return Err(index.invalid(format!(
                    "no {MANIFEST_FILE}: not a docker-archive (docker save from Docker 1.10 or later, or skopeo)"
                )));
            }
            other => other?,
        };
        let items: Vec<ManifestItemIn> = serde_json::from_slice(&bytes)
            .map_err(|e| index.invalid(format!("{MANIFEST_FILE} does not parse: {e}")))?;
        let item = match &pick {
            Pick::Only => match items.len() {
                1 => &items[0],
                n => {
                    return Err(index.invalid(format!(
                        "the archive holds {n} images; name one as docker-archive:PATH:NAME:TAG or docker-archive:PATH:@N"
                    )));
                }
            },
            Pick::Index(i) => items.get(*i).ok_or_else(|| {
                index.invalid(format!(
                    "invalid source index @{i}, only {} images in the archive",
                    items.len()
                ))
            })?,
            Pick::Tag(want) => {
                let want = want.name_tag().expect("tagged");
                let mut found = None;
                'items: for item in &items {
                    for t in item.repo_tags.iter().flatten() {
                        let have = NormalizedRef::parse(t).map_err(|e| {
                            index.invalid(format!("invalid tag {t:?} in {MANIFEST_FILE}: {e}"))
                        })?;
                        if have.name_tag().as_deref() == Some(want.as_str()) {
                            found = Some(item);
                            break 'items;
                        }
                    }
                }
                found.ok_or_else(|| {
                    TransportError::NotFound(format!(
                        "{}: tag {want} not found in the archive",
                        path.display()
                    ))
                })?
            }
        };

        let (config, config_off, config_size) = index.read_small(&item.config, MAX_CONFIG_BYTES)?;
        let config_digest = Digest::sha256_of(&config);
        let what = format!("{} ({})", path.display(), item.config);
        let ids = diff_ids(&config, &what)?;
        let layers = item.layers.as_deref().unwrap_or_default();
        if layers.len() != ids.len() {
            return Err(index.invalid(format!(
                "inconsistent layer count: {} in {MANIFEST_FILE}, {} in the config",
                layers.len(),
                ids.len()
            )));
        }

        let mut blobs = HashMap::new();
        blobs.insert(
            config_digest.clone(),
            Layer {
                offset: config_off,
                size: config_size,
                compression: Compression::None,
                unpacked: config_size,
            },
        );
        // diff_id → the member it was read from (a repeated diff_id is one layer).
        let mut path_diff: HashMap<String, Digest> = HashMap::new();
        for (name, diff) in layers.iter().zip(&ids) {
            if blobs.contains_key(diff) {
                continue;
            }
            let clean = clean_name(name).unwrap_or_default();
            if let Some(other) = path_diff.insert(clean.clone(), diff.clone()) {
                return Err(index.invalid(format!(
                    "layer {clean:?} is listed for two diff_ids ({other} and {diff})"
                )));
            }
            let (offset, size) = index.resolve(name)?;
            let mut tee = Tee::new(index.member(offset, size), Algorithm::Sha256, io::sink());
            let (compression, unpacked) =
                analyse(&mut tee).map_err(|e| TransportError::Corrupt {
                    digest: diff.clone(),
                    cause: format!("layer {name:?} in {}: {e}", path.display()),
                })?;
            let digest = tee.hasher.finish();
            if matches!(compression, Compression::Bzip2 | Compression::Xz) {
                return Err(TransportError::Unsupported(format!(
                    "{}: layer {name:?} is {}-compressed, which ferry cannot read",
                    path.display(),
                    compression.name()
                )));
            }
            let found = unpacked.as_ref().map_or(&digest, |(d, _)| d);
            if found != diff {
                return Err(TransportError::Corrupt {
                    digest: diff.clone(),
                    cause: format!(
                        "layer {name:?} in {} is {found} uncompressed, not the config's diff_id",
                        path.display()
                    ),
                });
            }
            let layer = Layer {
                offset,
                size,
                compression,
                unpacked: unpacked.as_ref().map_or(size, |(_, n)| *n),
            };
            blobs.insert(diff.clone(), layer);
        }

        // containers/image's synthesis: every layer (repeats kept) by its diff_id, labelled
        // gzip whatever it is, of its uncompressed size; its source serves layers decompressed.
        let manifest = GoSchema2 {
            schema_version: 2,
            media_type: mt::DOCKER_MANIFEST,
            config: GoDesc {
                media_type: mt::DOCKER_CONFIG,
                size: config.len() as u64,
                digest: &config_digest,
            },
            layers: ids
                .iter()
                .map(|d| GoDesc {
                    media_type: mt::DOCKER_LAYER_GZIP,
                    size: blobs[d].unpacked,
                    digest: d,
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&manifest).expect("manifests serialise");
        let manifest = RawManifest::new(bytes, Some(mt::DOCKER_MANIFEST))?;
        Ok(DockerArchiveSource {
            name,
            file: index.file,
            manifest,
            blobs,
            repo_tags: item.repo_tags.clone().unwrap_or_default(),
        })
    }

    /// The `RepoTags` the archive gives the image (as written there).
    pub fn repo_tags(&self) -> &[String] {
        &self.repo_tags
    }
}

impl Source for DockerArchiveSource {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn top(&self) -> Result<RawManifest> {
        Ok(self.manifest.clone())
    }

    async fn manifest(&self, digest: &Digest) -> Result<Option<RawManifest>> {
        Ok((digest == self.manifest.digest()).then(|| self.manifest.clone()))
    }

    async fn blob(&self, desc: &Descriptor) -> Result<BlobBody> {
        let layer = *self.blobs.get(&desc.digest).ok_or_else(|| {
            TransportError::NotFound(format!("{}: no blob {}", self.name, desc.digest))
        })?;
        let member = Member {
            file: self.file.clone(),
            offset: layer.offset,
            size: layer.size,
        };
        let source: Arc<dyn RangeRead> = match layer.compression {
            Compression::None => Arc::new(member),
            compression => Arc::new(Unpacked {
                member,
                compression,
                size: layer.unpacked,
            }),
        };
        Ok(BlobBody::Local(BlobLocation {
            size: layer.unpacked,
            source,
        }))
    }

    fn plain_layers(&self) -> super::PlainLayers {
        super::PlainLayers::GzipAll
    }
}

/// A temp file with no name (unlinked at once), so nothing is left behind whatever happens.
pub(crate) fn anonymous_temp_file() -> Result<File> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("ferry-docker-{}.tar", unique_suffix()));
    let f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(TransportError::io("creating temp file", &path))?;
    std::fs::remove_file(&path).map_err(TransportError::io("removing temp file", &path))?;
    Ok(f)
}

// ---------------------------------------------------------------------------
// Writing

/// A blob buffered in the work directory, verified.
#[derive(Debug, Clone)]
struct Stored {
    compression: Compression,
    /// The digest and size of its uncompressed content (itself when not compressed).
    diff: (Digest, u64),
}

/// Receives a blob's chunks on a blocking thread.
pub(crate) struct ChanReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
    /// The source failed (as opposed to the content being bad).
    source_failed: bool,
}

impl ChanReader {
    /// Reads what `rx` receives, until its sender is dropped.
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>) -> ChanReader {
        ChanReader {
            rx,
            cur: Bytes::new(),
            source_failed: false,
        }
    }
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => {
                    self.source_failed = true;
                    return Err(e);
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        bytes::Buf::advance(&mut self.cur, n);
        Ok(n)
    }
}

/// The work directory and what is in it; shared with blocking tasks.
struct WriterInner {
    work: PathBuf,
    repo_tag: Option<NormalizedRef>,
    blobs: Mutex<HashMap<Digest, Stored>>,
    committed: AtomicBool,
}

impl Drop for WriterInner {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// `docker save`-format writing shared by `docker-archive:` and `docker-daemon:`.
pub(crate) struct ArchiveWriter {
    inner: Arc<WriterInner>,
}

impl ArchiveWriter {
    /// Buffers blobs in a new directory `work` (created here, deleted on drop).
    pub(crate) fn new(work: PathBuf, repo_tag: Option<NormalizedRef>) -> Result<ArchiveWriter> {
        std::fs::create_dir(&work).map_err(TransportError::io("creating temp directory", &work))?;
        Ok(ArchiveWriter {
            inner: Arc::new(WriterInner {
                work,
                repo_tag,
                blobs: Mutex::new(HashMap::new()),
                committed: AtomicBool::new(false),
            }),
        })
    }

    /// What an archive can hold.
    pub(crate) fn properties() -> DestProperties {
        DestProperties {
            manifest_types: vec![mt::DOCKER_MANIFEST],
            accepts_index: false,
            accepts_sparse_index: false,
            ordered_blobs: false,
            compresses_layers: false,
        }
    }

    /// Whether the blob is buffered already.
    pub(crate) fn has_blob(&self, digest: &Digest) -> bool {
        self.inner.blobs.lock().unwrap().contains_key(digest)
    }

    /// Buffers a blob, verified against `desc` (digest and size) before it is kept.
    pub(crate) async fn put_blob(&self, desc: &Descriptor, body: BlobBody) -> Result<Put> {
        if self.has_blob(&desc.digest) {
            return Ok(Put::Present);
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
        let inner = self.inner.clone();
        let d = desc.clone();
        let task = tokio::task::spawn_blocking(move || {
            inner.ingest(
                &d,
                ChanReader {
                    rx,
                    cur: Bytes::new(),
                    source_failed: false,
                },
            )
        });
        let mut stream = body.into_stream();
        while let Some(item) = stream.next().await {
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break; // the writer stopped (its error is returned below), or the source failed
            }
        }
        drop(tx);
        crate::task::join(task).await.map_err(TransportError::io(
            "buffering a blob in",
            self.inner.work.clone(),
        ))??;
        Ok(Put::Written)
    }

    /// Writes the archive of image `top` into `out` (blocking). Refuses
    /// anything but a Docker schema 2 manifest whose blobs were all put.
    /// Marks the archive committed; a second commit is refused.
    fn commit_once(&self) -> Result<()> {
        if self.inner.committed.swap(true, Ordering::SeqCst) {
            return Err(TransportError::Invalid(
                "the archive was committed already".into(),
            ));
        }
        Ok(())
    }

    /// Writes the archive to `out` on a blocking thread, once, and syncs it.
    pub(crate) async fn write_to(&self, top: &RawManifest, out: File) -> Result<File> {
        self.commit_once()?;
        let inner = self.inner.clone();
        let top = top.clone();
        let mut out = out;
        let work = self.inner.work.clone();
        crate::task::unblock(move || {
            inner.write_archive(&top, &mut out)?;
            out.sync_all().map_err(|e| TransportError::Io {
                op: "writing archive in",
                path: inner.work.clone(),
                source: e,
            })?;
            Ok(out)
        })
        .await
        .map_err(TransportError::io("writing archive in", work))?
    }

    /// The archive as a stream, written on a blocking thread as it is read, once: a
    /// request body with no file behind it, and at most a few chunks in memory. A failure
    /// part-way ends the stream with that error instead of a clean end, so a reader
    /// that needs the whole archive (the engine's `docker load`) refuses it.
    pub(crate) fn stream(
        &self,
        top: &RawManifest,
    ) -> Result<impl futures_util::Stream<Item = io::Result<bytes::Bytes>> + Send + Sync + 'static>
    {
        self.commit_once()?;
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(4);
        let inner = self.inner.clone();
        let top = top.clone();
        tokio::task::spawn_blocking(move || {
            let fail_at = std::env::var(crate::limits::ENV_FAIL_ARCHIVE_STREAM_AT)
                .ok()
                .and_then(|n| n.parse().ok());
            let mut out = ChanWriter {
                tx: tx.clone(),
                sent: 0,
                fail_at,
            };
            if let Err(e) = inner.write_archive(&top, &mut out) {
                let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
            }
        });
        let mut rx = rx;
        Ok(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    /// The work directory (temp files of the archive go there).
    pub(crate) fn work(&self) -> &Path {
        &self.inner.work
    }
}

impl WriterInner {
    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.work
            .join(format!("{}-{}", d.algorithm().name(), d.hex()))
    }

    /// Writes a blob's bytes to the work directory while hashing them (and,
    /// when compressed, what they decompress to); keeps it only when it matches `desc`.
    fn ingest(&self, desc: &Descriptor, reader: ChanReader) -> Result<()> {
        let partial = self.work.join(format!(".partial-{}", unique_suffix()));
        let file = File::create_new(&partial).map_err(TransportError::io("creating", &partial))?;
        let mut tee = Tee::new(
            reader,
            desc.digest.algorithm(),
            BufWriter::with_capacity(IO_BUFFER_BYTES, file),
        );
        let analysed = analyse(&mut tee);
        let analysed = match analysed {
            Ok(a) => Ok(a),
            Err(e) if tee.inner.source_failed => {
                let _ = std::fs::remove_file(&partial);
                return Err(TransportError::Io {
                    op: "buffering blob at",
                    path: partial,
                    source: e,
                });
            }
            Err(e) => {
                // Bad compressed data: hash the rest, so a wrong digest is reported as such.
                if let Err(e) = io::copy(&mut tee, &mut io::sink()) {
                    let _ = std::fs::remove_file(&partial);
                    return Err(TransportError::Io {
                        op: "buffering blob at",
                        path: partial,
                        source: e,
                    });
                }
                Err(e)
            }
        };
        let Tee {
            hasher, count, out, ..
        } = tee;
        let found = hasher.finish();
        let flushed = out.into_inner().map_err(|e| e.into_error());
        let cleanup = |e: TransportError| {
            let _ = std::fs::remove_file(&partial);
            e
        };
        flushed.map_err(|e| cleanup(TransportError::io("writing", &partial)(e)))?;
        digest::check(&desc.digest, Some(desc.size), &found, count).map_err(|e| {
            cleanup(TransportError::Corrupt {
                digest: desc.digest.clone(),
                cause: e.to_string(),
            })
        })?;
        let (compression, unpacked) = analysed.map_err(|e| {
            cleanup(TransportError::Corrupt {
                digest: desc.digest.clone(),
                cause: format!("does not decompress: {e}"),
            })
        })?;
        let diff = unpacked.unwrap_or((found, count));
        let dest = self.blob_path(&desc.digest);
        std::fs::rename(&partial, &dest)
            .map_err(|e| cleanup(TransportError::io("renaming", &dest)(e)))?;
        self.blobs
            .lock()
            .unwrap()
            .insert(desc.digest.clone(), Stored { compression, diff });
        Ok(())
    }

    fn write_archive(&self, top: &RawManifest, out: &mut dyn Write) -> Result<()> {
        if top.media_type() != mt::DOCKER_MANIFEST {
            return Err(TransportError::Unsupported(format!(
                "a docker-archive holds a Docker schema 2 image, not {} ({})",
                top.media_type(),
                top.digest()
            )));
        }
        let Manifest::Image(m) = top.parse()? else {
            unreachable!("a schema 2 manifest parses as an image")
        };
        let stored = |d: &Descriptor| -> Result<Stored> {
            self.blobs
                .lock()
                .unwrap()
                .get(&d.digest)
                .cloned()
                .ok_or_else(|| {
                    TransportError::Invalid(format!(
                        "blob {} of manifest {} was never put",
                        d.digest,
                        top.digest()
                    ))
                })
        };
        stored(&m.config)?;
        let config_path = self.blob_path(&m.config.digest);
        let mut config = Vec::new();
        File::open(&config_path)
            .map_err(TransportError::io("opening", &config_path))?
            .take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut config)
            .map_err(TransportError::io("reading", &config_path))?;
        if config.len() as u64 > MAX_CONFIG_BYTES {
            return Err(TransportError::Invalid(format!(
                "config {} is over the {MAX_CONFIG_BYTES}-byte limit",
                m.config.digest
            )));
        }
        let what = format!("config {}", m.config.digest);
        let ids = diff_ids(&config, &what)?;
        if ids.len() != m.layers.len() {
            return Err(TransportError::Invalid(format!(
                "manifest {} has {} layers but its config lists {} diff_ids",
                top.digest(),
                m.layers.len(),
                ids.len()
            )));
        }
        let mut layers = Vec::with_capacity(m.layers.len());
        for (l, want) in m.layers.iter().zip(&ids) {
            let s = stored(l)?;
            if matches!(s.compression, Compression::Bzip2 | Compression::Xz) {
                return Err(TransportError::Unsupported(format!(
                    "layer {} is {}-compressed, which ferry cannot decompress",
                    l.digest,
                    s.compression.name()
                )));
            }
            if &s.diff.0 != want {
                return Err(TransportError::Corrupt {
                    digest: l.digest.clone(),
                    cause: format!(
                        "it is {} uncompressed, but the config lists diff_id {want}",
                        s.diff.0
                    ),
                });
            }
            layers.push((l, s));
        }
        let fields = top_level_members(&config)
            .ok_or_else(|| TransportError::Invalid(format!("{what} is not a JSON object")))?;

        let wr = |e: io::Error| TransportError::Io {
            op: "writing archive in",
            path: self.work.clone(),
            source: e,
        };
        let mut tar = tar::Builder::new(BufWriter::with_capacity(IO_BUFFER_BYTES, &mut *out));
        // Layers, uncompressed, each once, in manifest order; then the config (as containers/image sends them).
        let mut sent = HashSet::new();
        let mut layer_paths = Vec::new();
        for (l, s) in &layers {
            let (diff, size) = &s.diff;
            let name = format!("{}.tar", diff.hex());
            if sent.insert(diff.clone()) {
                let path = self.blob_path(&l.digest);
                let f = File::open(&path).map_err(TransportError::io("opening", &path))?;
                let dec = s
                    .compression
                    .decoder(io::BufReader::with_capacity(IO_BUFFER_BYTES, f))
                    .map_err(TransportError::io("reading", &path))?
                    .expect("checked above");
                let data = VerifyingReader::new(dec, diff.clone(), Some(*size));
                tar.append(&file_header(&name, *size)?, data).map_err(|e| {
                    if e.kind() == io::ErrorKind::InvalidData {
                        TransportError::Corrupt {
                            digest: l.digest.clone(),
                            cause: format!("decompressing: {e}"),
                        }
                    } else {
                        wr(e)
                    }
                })?;
            }
            layer_paths.push(name);
        }
        let config_name = format!("{}.json", m.config.digest.hex());
        tar.append(
            &file_header(&config_name, config.len() as u64)?,
            &config[..],
        )
        .map_err(wr)?;

        // The legacy (pre-1.10) layout: one directory per layer, ids chained as containers/image computes them.
        let mut chain: Option<Digest> = None;
        let mut last: Option<String> = None;
        let mut written = HashSet::new();
        for (i, (_, s)) in layers.iter().enumerate() {
            let diff = &s.diff.0;
            let mut doc: BTreeMap<&str, String> = BTreeMap::new();
            if let Some(p) = &last {
                doc.insert("parent", crate::gojson::string(p));
            }
            if i == layers.len() - 1 {
                for attr in LEGACY_ATTRS {
                    let v = fields
                        .get(attr)
                        .map_or_else(|| "null".into(), |v| crate::gojson::compact(v));
                    doc.insert(attr, v);
                }
            }
            let c = match &chain {
                None => diff.clone(),
                Some(c) => Digest::sha256_of(format!("{c} {diff}").as_bytes()),
            };
            doc.insert("layer_id", crate::gojson::string(&c.to_string()));
            let id = Digest::sha256_of(crate::gojson::object(&doc).as_bytes())
                .hex()
                .to_string();
            doc.remove("layer_id");
            doc.insert("id", crate::gojson::string(&id));
            chain = Some(c);
            if written.insert(id.clone()) {
                let json = crate::gojson::object(&doc);
                tar.append(
                    &link_header(
                        &format!("{id}/layer.tar"),
                        &format!("../{}.tar", diff.hex()),
                    )?,
                    io::empty(),
                )
                .map_err(wr)?;
                tar.append(&file_header(&format!("{id}/VERSION"), 3)?, &b"1.0"[..])
                    .map_err(wr)?;
                tar.append(
                    &file_header(&format!("{id}/json"), json.len() as u64)?,
                    json.as_bytes(),
                )
                .map_err(wr)?;
            }
            last = Some(id);
        }

        let repo_tags: Vec<String> = self.repo_tag.iter().filter_map(|r| r.name_tag()).collect();
        let items = [ManifestItemOut {
            config: config_name,
            repo_tags,
            layers: layer_paths.iter().map(String::as_str).collect(),
        }];
        let manifest = serde_json::to_vec(&items).expect("manifest.json serialises");
        tar.append(
            &file_header(MANIFEST_FILE, manifest.len() as u64)?,
            &manifest[..],
        )
        .map_err(wr)?;
        let mut repos: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
        if let (Some(r), Some(top_id)) = (&self.repo_tag, &last) {
            repos
                .entry(r.name.as_str())
                .or_default()
                .insert(r.tag.as_deref().unwrap_or("latest"), top_id);
        }
        let repos = serde_json::to_vec(&repos).expect("repositories serialises");
        tar.append(
            &file_header(REPOSITORIES_FILE, repos.len() as u64)?,
            &repos[..],
        )
        .map_err(wr)?;
        let buf = tar.into_inner().map_err(wr)?;
        buf.into_inner().map_err(|e| wr(e.into_error()))?;
        Ok(())
    }
}

/// A writer whose chunks go to a bounded channel (the archive streamed as it is written);
/// a reader that went away is a broken pipe.
struct ChanWriter {
    tx: tokio::sync::mpsc::Sender<io::Result<bytes::Bytes>>,
    sent: u64,
    /// [`crate::limits::ENV_FAIL_ARCHIVE_STREAM_AT`].
    fail_at: Option<u64>,
}

impl Write for ChanWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self
            .fail_at
            .is_some_and(|n| self.sent + buf.len() as u64 > n)
        {
            return Err(io::Error::other(format!(
                "test hook: the archive stream fails after {} bytes",
                self.sent
            )));
        }
        self.tx
            .blocking_send(Ok(bytes::Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        self.sent += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A regular-file header as containers/image writes it (USTAR, mode 0444, mtime 0, root-owned).
fn file_header(path: &str, size: u64) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)
        .map_err(|e| TransportError::Invalid(format!("archive path {path:?}: {e}")))?;
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o444);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    go_checksum(&mut h);
    Ok(h)
}

/// Fills the device fields and the checksum as Go's `archive/tar` does, so the
/// headers are byte-for-byte those containers/image writes.
fn go_checksum(h: &mut tar::Header) {
    if let Some(u) = h.as_ustar_mut() {
        u.dev_major = *b"0000000\0";
        u.dev_minor = *b"0000000\0";
    }
    let old = h.as_old_mut();
    old.cksum = [b' '; 8];
    let sum: u32 = h.as_bytes().iter().map(|&b| u32::from(b)).sum();
    let digits = format!("{sum:06o}");
    let old = h.as_old_mut();
    old.cksum[..6].copy_from_slice(&digits.as_bytes()[digits.len() - 6..]);
    old.cksum[6] = 0;
    old.cksum[7] = b' ';
}

/// A symbolic-link header as containers/image writes it.
fn link_header(path: &str, target: &str) -> Result<tar::Header> {
    let mut h = file_header(path, 0)?;
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0);
    h.set_link_name(target)
        .map_err(|e| TransportError::Invalid(format!("link target {target:?}: {e}")))?;
    go_checksum(&mut h);
    Ok(h)
}

/// The top-level members of a JSON object, values as raw text (the last of duplicate keys wins, as in Go).
fn top_level_members(json: &[u8]) -> Option<HashMap<String, &str>> {
    // Validate first, so the scanner below only ever sees well-formed JSON.
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    if !v.is_object() {
        return None;
    }
    let s = std::str::from_utf8(json).ok()?;
    let b = s.as_bytes();
    let ws = |mut i: usize| {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    };
    fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
        i += 1;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 2,
                b'"' => return Some(i + 1),
                _ => i += 1,
            }
        }
        None
    }
    fn value_end(b: &[u8], i: usize) -> Option<usize> {
        match *b.get(i)? {
            b'"' => string_end(b, i),
            b'{' | b'[' => {
                let (mut depth, mut j) = (0usize, i);
                while j < b.len() {
                    match b[j] {
                        b'"' => {
                            j = string_end(b, j)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(j + 1);
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                None
            }
            _ => {
                let mut j = i;
                while j < b.len()
                    && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                {
                    j += 1;
                }
                Some(j)
            }
        }
    }
    let mut out = HashMap::new();
    let mut i = ws(0) + 1; // past '{'
    loop {
        i = ws(i);
        match b.get(i)? {
            b'}' => return Some(out),
            b',' => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let kend = string_end(b, i)?;
        let key: String = serde_json::from_str(&s[i..kend]).ok()?;
        i = ws(kend);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = ws(i + 1);
        let vend = value_end(b, i)?;
        out.insert(key, &s[i..vend]);
        i = vend;
    }
}

/// Where a `docker-archive:` destination writes: a file replaced by rename, or a device/pipe written in place.
fn output_kind(path: &Path) -> Result<bool> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(TransportError::io("checking", path)(e)),
        Ok(m) if m.is_dir() => Err(TransportError::Invalid(format!(
            "{}: is a directory, not an archive file",
            path.display()
        ))),
        Ok(m) if m.is_file() && m.len() != 0 => Err(TransportError::Invalid(format!(
            "{}: docker-archive doesn't support modifying existing images (the file exists and is not empty)",
            path.display()
        ))),
        Ok(m) => Ok(m.is_file()),
    }
}

/// One image written as a `docker-archive:` tar; nothing appears at the path before commit.
pub struct DockerArchiveDest {
    path: PathBuf,
    name: String,
    /// Whether the output is a regular file (replaced by rename) rather than a device or pipe.
    regular: bool,
    writer: ArchiveWriter,
}

impl DockerArchiveDest {
    /// Prepares to write `path`, naming the image `reference` (`NAME[:TAG]`,
    /// written into `RepoTags`; `None` leaves the image untagged). Refuses a
    /// non-empty existing file, as skopeo does.
    pub fn create(path: &Path, reference: Option<&str>) -> Result<Self> {
        let repo_tag = match reference {
            None | Some("") => None,
            Some(r) if r.starts_with('@') => {
                return Err(TransportError::Invalid(format!(
                    "docker-archive:{}:{r}: a destination cannot name a source index",
                    path.display()
                )));
            }
            Some(r) => Some(tagged_ref(r)?),
        };
        let regular = output_kind(path)?;
        let file_name = path
            .file_name()
            .ok_or_else(|| TransportError::Invalid(format!("{}: not a file name", path.display())))?
            .to_string_lossy()
            .into_owned();
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let work_dir = if regular {
            parent
        } else {
            std::env::temp_dir()
        };
        let work = work_dir.join(format!(".{file_name}.ferry-{}", unique_suffix()));
        let name = format!(
            "docker-archive:{}{}",
            path.display(),
            reference.map(|r| format!(":{r}")).unwrap_or_default()
        );
        Ok(DockerArchiveDest {
            path: path.to_path_buf(),
            name,
            regular,
            writer: ArchiveWriter::new(work, repo_tag)?,
        })
    }
}

impl Destination for DockerArchiveDest {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn properties(&self) -> DestProperties {
        ArchiveWriter::properties()
    }

    fn accepts_foreign_layer_urls(&self) -> bool {
        false
    }

    async fn has_blob(&self, desc: &Descriptor) -> Result<bool> {
        Ok(self.writer.has_blob(&desc.digest))
    }

    async fn put_blob(&self, desc: &Descriptor, body: BlobBody) -> Result<Put> {
        self.writer.put_blob(desc, body).await
    }

    async fn put_manifest(&self, manifest: &RawManifest) -> Result<()> {
        Err(TransportError::Unsupported(format!(
            "{} holds one image; it cannot store manifest {} of an index",
            self.name,
            manifest.digest()
        )))
    }

    async fn commit(&self, top: &RawManifest) -> Result<()> {
        let tmp = self.writer.work().join("archive.tar");
        let out = File::create_new(&tmp).map_err(TransportError::io("creating", &tmp))?;
        let out = self.writer.write_to(top, out).await?;
        let (path, regular) = (self.path.clone(), self.regular);
        let target = self.path.clone();
        crate::task::unblock(move || -> Result<()> {
            if regular {
                // Re-checked: a file that appeared meanwhile is not replaced.
                output_kind(&path)?;
                std::fs::rename(&tmp, &path).map_err(TransportError::io("renaming to", &path))?;
                if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty())
                    && let Ok(d) = File::open(dir)
                {
                    let _ = d.sync_all();
                }
            } else {
                drop(out);
                let mut src = File::open(&tmp).map_err(TransportError::io("opening", &tmp))?;
                let mut dst = File::options()
                    .write(true)
                    .open(&path)
                    .map_err(TransportError::io("opening", &path))?;
                io::copy(&mut src, &mut dst).map_err(TransportError::io("writing", &path))?;
            }
            Ok(())
        })
        .await
        .map_err(TransportError::io("writing", target))??;
        let _ = std::fs::remove_dir_all(self.writer.work());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::FileRange;

    /// A one-file layer tar, uncompressed.
    fn layer_tar(name: &str, content: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, content).unwrap();
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    struct Image {
        manifest: RawManifest,
        blobs: Vec<(Descriptor, Vec<u8>)>,
    }

    /// Two gzip'd layers (the second repeated) and a config with their diff_ids.
    fn image() -> Image {
        let l1 = layer_tar("a.txt", b"hello");
        let l2 = layer_tar("b.txt", b"world <&>");
        let (g1, g2) = (gzip(&l1), gzip(&l2));
        let (d1, d2) = (Digest::sha256_of(&l1), Digest::sha256_of(&l2));
        let config = format!(
            r#"{{"architecture":"amd64","config":{{"Env":["A=<b>"],  "Cmd":["/bin/sh"]}},"os":"linux","rootfs":{{"type":"layers","diff_ids":["{d1}","{d2}","{d2}"]}}}}"#
        )
        .into_bytes();
        let desc = |media_type: &str, b: &[u8]| Descriptor {
            media_type: media_type.into(),
            digest: Digest::sha256_of(b),
            size: b.len() as u64,
            platform: None,
            urls: vec![],
            annotations: Default::default(),
        };
        let cfg = desc(mt::DOCKER_CONFIG, &config);
        let (dl1, dl2) = (
            desc(mt::DOCKER_LAYER_GZIP, &g1),
            desc(mt::DOCKER_LAYER_GZIP, &g2),
        );
        let manifest = GoSchema2 {
            schema_version: 2,
            media_type: mt::DOCKER_MANIFEST,
            config: GoDesc {
                media_type: mt::DOCKER_CONFIG,
                size: cfg.size,
                digest: &cfg.digest,
            },
            layers: [&dl1, &dl2, &dl2]
                .iter()
                .map(|d| GoDesc {
                    media_type: mt::DOCKER_LAYER_GZIP,
                    size: d.size,
                    digest: &d.digest,
                })
                .collect(),
        };
        let manifest = RawManifest::new(serde_json::to_vec(&manifest).unwrap(), None).unwrap();
        Image {
            manifest,
            blobs: vec![(cfg, config), (dl1, g1), (dl2, g2)],
        }
    }

    async fn read_all(body: BlobBody) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = body.into_stream();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn round_trip_through_dest_and_source() {
        let dir = tempfile::tempdir().unwrap();
        let img = image();
        let path = dir.path().join("out.tar");
        let dest = DockerArchiveDest::create(&path, Some("example.com/app:v1")).unwrap();
        assert_eq!(dest.properties().manifest_types, vec![mt::DOCKER_MANIFEST]);
        for (i, (d, bytes)) in img.blobs.iter().enumerate() {
            assert!(!dest.has_blob(d).await.unwrap());
            // One local body, the others as streams.
            let body = if i == 1 {
                let f = dir.path().join("blob");
                std::fs::write(&f, bytes).unwrap();
                BlobBody::Local(BlobLocation {
                    size: bytes.len() as u64,
                    source: Arc::new(FileRange(f)),
                })
            } else {
                let b = Bytes::from(bytes.clone());
                BlobBody::Stream(Box::pin(futures_util::stream::iter([Ok(b)])))
            };
            assert_eq!(dest.put_blob(d, body).await.unwrap(), Put::Written);
            assert!(dest.has_blob(d).await.unwrap());
        }
        assert!(!path.exists(), "nothing at the path before commit");
        dest.commit(&img.manifest).await.unwrap();
        assert!(path.exists());
        drop(dest);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "only the output and the test blob: {left:?}");

        // What is in the tar, as skopeo lays it out.
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(File::open(&path).unwrap());
        for e in ar.entries().unwrap() {
            names.push(String::from_utf8(e.unwrap().path_bytes().to_vec()).unwrap());
        }
        assert!(names[0].ends_with(".tar") && names[1].ends_with(".tar"));
        assert!(names[2].ends_with(".json"));
        assert_eq!(
            names.iter().filter(|n| n.ends_with("/layer.tar")).count(),
            3
        );
        assert_eq!(&names[names.len() - 2..], ["manifest.json", "repositories"]);

        let src = DockerArchiveSource::open(&path, None).unwrap();
        assert_eq!(src.repo_tags(), ["example.com/app:v1"]);
        let top = src.top().await.unwrap();
        assert_eq!(top.media_type(), mt::DOCKER_MANIFEST);
        let Manifest::Image(m) = top.parse().unwrap() else {
            panic!("an image")
        };
        assert_eq!(m.config.digest, img.blobs[0].0.digest);
        assert_eq!(m.layers.len(), 3);
        // Layers come back uncompressed, addressed by their diff_ids, labelled gzip as
        // containers/image labels them.
        assert_eq!(m.layers[0].media_type, mt::DOCKER_LAYER_GZIP);
        assert_eq!(
            m.layers[0].digest,
            Digest::sha256_of(&layer_tar("a.txt", b"hello"))
        );
        assert_eq!(m.layers[1], m.layers[2]);
        for d in top.parse().unwrap().blobs() {
            let bytes = read_all(src.blob(d).await.unwrap()).await;
            assert_eq!(Digest::sha256_of(&bytes), d.digest);
            assert_eq!(bytes.len() as u64, d.size);
        }
        assert!(src.manifest(top.digest()).await.unwrap().is_some());
        // By tag (normalised) and by index; a wrong tag is not found.
        assert!(DockerArchiveSource::open(&path, Some("example.com/app:v1")).is_ok());
        assert!(DockerArchiveSource::open(&path, Some("@0")).is_ok());
        assert!(DockerArchiveSource::open(&path, Some("@1")).is_err());
        assert!(matches!(
            DockerArchiveSource::open(&path, Some("example.com/app:v2")),
            Err(TransportError::NotFound(_))
        ));
        // A second write to the same path is refused, as skopeo refuses it.
        assert!(DockerArchiveDest::create(&path, None).is_err());
    }

    #[tokio::test]
    async fn reads_compressed_members_and_checks_diff_ids() {
        let dir = tempfile::tempdir().unwrap();
        let l1 = layer_tar("a.txt", b"hello");
        let g1 = gzip(&l1);
        let config = format!(
            r#"{{"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            Digest::sha256_of(&l1)
        );
        let cfg_name = format!("{}.json", Digest::sha256_of(config.as_bytes()).hex());
        let manifest =
            format!(r#"[{{"Config":"{cfg_name}","RepoTags":null,"Layers":["x/layer.tar"]}}]"#);
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("x/real.tar.gz", &g1[..]),
            (cfg_name.as_str(), config.as_bytes()),
            ("manifest.json", manifest.as_bytes()),
        ] {
            b.append(&file_header(name, data.len() as u64).unwrap(), data)
                .unwrap();
        }
        b.append(
            &link_header("x/layer.tar", "real.tar.gz").unwrap(),
            io::empty(),
        )
        .unwrap();
        let path = dir.path().join("gz.tar");
        std::fs::write(&path, b.into_inner().unwrap()).unwrap();
        let src = DockerArchiveSource::open(&path, None).unwrap();
        let Manifest::Image(m) = src.top().await.unwrap().parse().unwrap() else {
            panic!()
        };
        // Served as containers/image serves it: by its diff_id, decompressed, whole or in part.
        assert_eq!(m.layers[0].media_type, mt::DOCKER_LAYER_GZIP);
        assert_eq!(m.layers[0].digest, Digest::sha256_of(&l1));
        assert_eq!(m.layers[0].size, l1.len() as u64);
        let BlobBody::Local(loc) = src.blob(&m.layers[0]).await.unwrap() else {
            panic!("read in place")
        };
        let mut part = Vec::new();
        loc.source
            .open_range(100, 50)
            .unwrap()
            .read_to_end(&mut part)
            .unwrap();
        assert_eq!(part, l1[100..150]);
        assert_eq!(read_all(src.blob(&m.layers[0]).await.unwrap()).await, l1);

        // A config whose diff_id does not match the layer is refused.
        let bad = config.replace(&Digest::sha256_of(&l1).hex()[..4], "0000");
        let cfg_name = format!("{}.json", Digest::sha256_of(bad.as_bytes()).hex());
        let manifest = format!(r#"[{{"Config":"{cfg_name}","Layers":["l.tar"]}}]"#);
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("l.tar", &l1[..]),
            (cfg_name.as_str(), bad.as_bytes()),
            ("manifest.json", manifest.as_bytes()),
        ] {
            b.append(&file_header(name, data.len() as u64).unwrap(), data)
                .unwrap();
        }
        std::fs::write(&path, b.into_inner().unwrap()).unwrap();
        assert!(matches!(
            DockerArchiveSource::open(&path, None),
            Err(TransportError::Corrupt { .. })
        ));
    }

    #[test]
    fn hostile_archive_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for evil in ["../x", "a/../../x", "/etc/x"] {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_ustar();
            // Written by hand: the tar crate itself refuses such names.
            let name = &mut h.as_old_mut().name;
            name[..evil.len()].copy_from_slice(evil.as_bytes());
            h.set_size(1);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
            b.append(&file_header("manifest.json", 2).unwrap(), &b"[]"[..])
                .unwrap();
            let path = dir.path().join("evil.tar");
            std::fs::write(&path, b.into_inner().unwrap()).unwrap();
            let err = DockerArchiveSource::open(&path, None)
                .err()
                .expect("refused");
            assert!(
                err.to_string().contains("refusing the archive"),
                "{evil}: {err}"
            );
        }
        // A link that leaves the archive is not followed.
        let mut b = tar::Builder::new(Vec::new());
        b.append(
            &link_header("l.tar", "../../etc/passwd").unwrap(),
            io::empty(),
        )
        .unwrap();
        let m = br#"[{"Config":"l.tar","Layers":[]}]"#;
        b.append(
            &file_header("manifest.json", m.len() as u64).unwrap(),
            &m[..],
        )
        .unwrap();
        let path = dir.path().join("link.tar");
        std::fs::write(&path, b.into_inner().unwrap()).unwrap();
        let err = DockerArchiveSource::open(&path, None)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("outside the archive"), "{err}");
    }

    #[tokio::test]
    async fn bad_blobs_and_uncommitted_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let img = image();
        let path = dir.path().join("out.tar");
        let dest = DockerArchiveDest::create(&path, None).unwrap();
        let (d, bytes) = &img.blobs[1];
        let mut wrong = bytes.clone();
        wrong[20] ^= 1;
        let body = BlobBody::Stream(Box::pin(futures_util::stream::iter([Ok(Bytes::from(
            wrong,
        ))])));
        let err = dest.put_blob(d, body).await.unwrap_err();
        assert!(matches!(err, TransportError::Corrupt { .. }), "{err}");
        assert!(!dest.has_blob(d).await.unwrap());
        // Committing before every blob is there fails, and leaves nothing.
        assert!(dest.commit(&img.manifest).await.is_err());
        drop(dest);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn references_normalise_as_docker_does() {
        let n = |s: &str| NormalizedRef::parse(s).unwrap().to_string();
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("index.docker.io/a/b:1"), "docker.io/a/b:1");
        assert_eq!(n("localhost:5000/x"), "localhost:5000/x:latest");
        assert!(tagged_ref(&format!("x@{}", Digest::sha256_of(b""))).is_err());
    }

    #[test]
    fn legacy_json_matches_go() {
        let cfg = br#"{ "b" : [1, {"x": "<a&b>"}], "a":"s", "a": null, "c": 1.5e3 }"#;
        let m = top_level_members(cfg).unwrap();
        assert_eq!(
            crate::gojson::compact(m["b"]),
            r#"[1,{"x":"\u003ca\u0026b\u003e"}]"#
        );
        assert_eq!(m["a"], "null");
        assert_eq!(m["c"], "1.5e3");
        assert!(top_level_members(b"[1]").is_none());
    }
}
