//! Reading bundles without trusting them: a streaming scan that refuses any
//! entry outside the registry layout (absolute paths, `..`, links, devices),
//! re-hashes every blob against its name and against `ferry-bundle.json`, and
//! checks every link; plus random access to blobs in place (the seek table of
//! a seekable zstd bundle, or offsets in a plain tar).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    BundleIndex, INDEX_NAME, MAX_OFFSETS_BYTES, OFFSETS_FORMAT, OFFSETS_MAGIC, OFFSETS_PIECE_MAGIC,
    OffsetTable, SEEK_TABLE_MAGIC, SEEKABLE_MAGIC, ZSTD_MAGIC,
};
use super::parts::{Parts, PartsError, PartsReader};
use crate::digest::{Digest, VerifyingReader};
use crate::limits::{
    FRAME_CACHE_BYTES, IO_BUFFER_BYTES, LAZY_SMALL_BYTES, MAX_FRAME_DECOMPRESSIONS,
    MAX_INDEX_BYTES, MAX_LINK_BYTES, MAX_PREFIX_BYTES, MAX_TAR_NAME_BYTES, PREFIX_CACHE_BYTES,
    SMALL_BLOB_BYTES, SMALL_BLOBS_BUDGET, echo,
};
use crate::store::paths::{LayoutFile, is_layout_dir, parse_file};

/// Why a bundle was refused; every variant names the bundle and the entry or blob.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The file could not be read (including a truncated archive).
    #[error("{}: {op}: {source}", bundle.display())]
    Io {
        /// The bundle.
        bundle: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// An entry that has no place in a bundle.
    #[error("{}: entry {entry:?} refused: {why}", bundle.display())]
    Refused {
        /// The bundle.
        bundle: PathBuf,
        /// The entry's path as written in the archive.
        entry: String,
        /// Why.
        why: String,
    },
    /// A blob whose bytes do not match its name.
    #[error("{}: blob {digest}: {cause}", bundle.display())]
    Corrupt {
        /// The bundle.
        bundle: PathBuf,
        /// The blob.
        digest: Digest,
        /// What did not match.
        cause: String,
    },
    /// The seek table does not describe the compressed stream (frames that lie about their offsets or sizes).
    #[error("{}: the seek table does not match the stream: {why}", bundle.display())]
    SeekTable {
        /// The bundle.
        bundle: PathBuf,
        /// Which frame, and what differs.
        why: String,
    },
    /// The parts of a split bundle do not make a whole one (a part missing, truncated, or foreign).
    #[error(transparent)]
    Parts(#[from] PartsError),
    /// The signature does not hold (unsigned, another key, or an index changed after signing).
    #[error(transparent)]
    Signature(#[from] super::sign::SignError),
    /// `ferry-bundle.json` missing, unreadable, or not what the archive holds.
    #[error("{}: {INDEX_NAME}: {why}", bundle.display())]
    Index {
        /// The bundle.
        bundle: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The links a bundle holds, by repository.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repo {
    /// Config and layer blobs the repository may serve.
    pub layers: BTreeSet<Digest>,
    /// Manifests the repository may serve.
    pub revisions: BTreeSet<Digest>,
    /// Tags and what they point at.
    pub tags: BTreeMap<String, Digest>,
    /// Tag history links (tag, digest).
    pub tag_index: BTreeSet<(String, Digest)>,
}

/// What a scan found: the index, the repositories, and every blob with its offset in the tar stream.
#[derive(Debug, Clone)]
pub struct Scan {
    /// `ferry-bundle.json`.
    pub index: BundleIndex,
    /// Links by repository.
    pub repos: BTreeMap<String, Repo>,
    /// Blob → (offset of its data in the uncompressed tar, size).
    pub blobs: HashMap<Digest, (u64, u64)>,
    /// The minisign signature of `ferry-bundle.json` the bundle carries, if signed.
    pub signature: Option<String>,
    /// sha256 of the exact bytes of `ferry-bundle.json`: the bundle's identity (a delta names its base by it).
    pub index_digest: Digest,
}

/// Receives each blob's content during a scan (it is verified as it is read; the scan drains what is left).
pub trait BlobVisitor {
    /// Called once per blob entry, with a reader that fails at its end if the bytes are wrong.
    fn blob(&mut self, digest: &Digest, size: u64, content: &mut dyn Read) -> io::Result<()>;

    /// Whether blob bytes are hashed; only a reader whose consumer verifies them itself says no.
    fn verify(&self) -> bool {
        true
    }
}

/// A visitor for a scan of the structure alone (entries, sizes, links), for
/// `unbundle push`: the target registry checks every blob's digest on upload.
pub struct StructureOnly;
impl BlobVisitor for StructureOnly {
    fn blob(&mut self, _: &Digest, _: u64, _: &mut dyn Read) -> io::Result<()> {
        Ok(())
    }
    fn verify(&self) -> bool {
        false
    }
}

/// A visitor that only lets the scan hash (verify, serve in place).
pub struct HashOnly;
impl BlobVisitor for HashOnly {
    fn blob(&mut self, _: &Digest, _: u64, _: &mut dyn Read) -> io::Result<()> {
        Ok(())
    }
}

/// A frame that does not match the seek table, carried inside an `io::Error` so the scan can name it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FrameMismatch(String);

/// The tar bytes of a bundle, and how many there are when the file says so (plain tar, or a seek table).
struct TarStream {
    reader: Box<dyn Read>,
    len: Option<u64>,
    /// The last part of a split bundle (named when the stream ends early).
    last_part: Option<PathBuf>,
}

/// Opens a bundle as a stream of tar bytes (decompressing zstd when the file is zstd).
/// A seekable bundle is decompressed frame by frame, each checked against its seek table entry.
fn tar_stream(path: &Path) -> Result<TarStream, ReadError> {
    let io = |op, source| ReadError::Io {
        bundle: path.to_path_buf(),
        op,
        source,
    };
    let f = Arc::new(Parts::open(path)?);
    let last_part = f.is_split().then(|| f.last_part().to_path_buf());
    let mut magic = [0u8; 4];
    let n = f.read_at(&mut magic, 0).map_err(|e| io("reading", e))?;
    if n == 4 && magic == ZSTD_MAGIC {
        if let Some(SeekTable { frames, .. }) = read_seek_table(path, &f)? {
            let len = frames.last().map(|l| l.offset + l.size).unwrap_or(0);
            return Ok(TarStream {
                reader: Box::new(CheckedFrames {
                    file: f,
                    frames,
                    next: 0,
                    buf: Vec::new(),
                    pos: 0,
                    decompressor: None,
                }),
                len: Some(len),
                last_part,
            });
        }
        let f = io::BufReader::with_capacity(IO_BUFFER_BYTES, PartsReader::new(f));
        Ok(TarStream {
            reader: Box::new(
                zstd::stream::read::Decoder::with_buffer(f).map_err(|e| io("starting zstd", e))?,
            ),
            len: None,
            last_part,
        })
    } else {
        let len = f.len();
        Ok(TarStream {
            reader: Box::new(io::BufReader::with_capacity(
                IO_BUFFER_BYTES,
                PartsReader::new(f),
            )),
            len: Some(len),
            last_part,
        })
    }
}

/// Reads a seekable bundle frame by frame: each frame must decompress to
/// exactly the size its seek table entry gives, from exactly its compressed
/// bytes, so a table that lies is caught by every full read (verify, link, serve).
struct CheckedFrames {
    file: Arc<Parts>,
    frames: Vec<Frame>,
    next: usize,
    buf: Vec<u8>,
    pos: usize,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
}

impl Read for CheckedFrames {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(f) = self.frames.get(self.next).copied() else {
                return Ok(0);
            };
            let i = self.next;
            self.next += 1;
            self.buf = decompress_frame(
                &self.file,
                &f,
                i,
                &mut self.decompressor,
                std::mem::take(&mut self.buf),
            )?;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Decompresses frame `i` into `buf` (reused), refusing one whose bytes differ from its seek table entry.
fn decompress_frame(
    file: &Parts,
    f: &Frame,
    i: usize,
    decompressor: &mut Option<zstd::bulk::Decompressor<'static>>,
    mut buf: Vec<u8>,
) -> io::Result<Vec<u8>> {
    let mismatch = |why: String| io::Error::new(io::ErrorKind::InvalidData, FrameMismatch(why));
    let mut compressed = vec![0u8; f.compressed_size as usize];
    file.read_exact_at(&mut compressed, f.compressed_offset)?;
    if compressed.len() < 4 || compressed[..4] != ZSTD_MAGIC {
        return Err(mismatch(format!(
            "frame {i} at byte {} is not a zstd frame{}",
            f.compressed_offset,
            in_part(file, f.compressed_offset)
        )));
    }
    if decompressor.is_none() {
        *decompressor = Some(zstd::bulk::Decompressor::new()?);
    }
    let d = decompressor.as_mut().expect("set above");
    buf.clear();
    buf.reserve_exact(f.size as usize);
    if d.decompress_to_buffer(&compressed, &mut buf).is_err() {
        return Err(mismatch(format!(
            "frame {i} ({} compressed bytes at {}{}) does not decompress to the {} bytes the table gives",
            f.compressed_size,
            f.compressed_offset,
            in_part(file, f.compressed_offset),
            f.size
        )));
    }
    if buf.len() as u64 != f.size {
        return Err(mismatch(format!(
            "frame {i} holds {} bytes, the table says {}",
            buf.len(),
            f.size
        )));
    }
    Ok(buf)
}

/// `, in part NAME.00N` for a split bundle (so a damaged part is named), else nothing.
fn in_part(file: &Parts, offset: u64) -> String {
    if file.is_split() {
        format!(", in part {}", file.part_at(offset).display())
    } else {
        String::new()
    }
}

/// Maps an error met while reading the archive: a frame that is not what the
/// seek table says, or (anything else) a short or unreadable file.
fn stream_error(bundle: &Path, op: &'static str, e: io::Error) -> ReadError {
    if let Some(m) = e.get_ref().and_then(|x| x.downcast_ref::<FrameMismatch>()) {
        return ReadError::SeekTable {
            bundle: bundle.to_path_buf(),
            why: m.0.clone(),
        };
    }
    ReadError::Io {
        bundle: bundle.to_path_buf(),
        op,
        source: e,
    }
}

/// One member of the archive as a reader sees it: its name (GNU long names and
/// PAX paths applied, each capped at [`MAX_TAR_NAME_BYTES`] before it is read)
/// and the raw entry.
type Member<'a> = (String, tar::Entry<'a, Box<dyn Read>>);

/// The next member of a raw entry iterator; extension headers are read here, with caps, never by the tar crate.
fn next_member<'a>(
    bundle: &Path,
    entries: &mut tar::Entries<'a, Box<dyn Read>>,
) -> Option<Result<Member<'a>, ReadError>> {
    let refused = |entry: &str, why: String| ReadError::Refused {
        bundle: bundle.to_path_buf(),
        entry: echo(entry).into_owned(),
        why,
    };
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link = false;
    loop {
        let mut entry = match entries.next() {
            None if long_name.is_some() || long_link => {
                return Some(Err(refused(
                    "././@LongLink",
                    "an extension header describes no member (truncated?)".into(),
                )));
            }
            None => return None,
            Some(Err(e)) => {
                return Some(Err(stream_error(
                    bundle,
                    "reading the archive (truncated?)",
                    e,
                )));
            }
            Some(Ok(e)) => e,
        };
        let kind = entry.header().entry_type();
        let ext = if kind.is_gnu_longname() {
            "a GNU long name"
        } else if kind.is_gnu_longlink() {
            "a GNU long link name"
        } else if kind.is_pax_local_extensions() {
            "a PAX header"
        } else if kind.is_pax_global_extensions() {
            return Some(Err(refused(
                &String::from_utf8_lossy(&entry.path_bytes()),
                "a PAX global header; ferry bundles hold none".into(),
            )));
        } else {
            let name = match long_name {
                Some(n) => String::from_utf8_lossy(&n).into_owned(),
                None => String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
            };
            return Some(Ok((name, entry)));
        };
        let size = match entry.header().entry_size() {
            Ok(s) => s,
            Err(e) => return Some(Err(stream_error(bundle, "reading a header", e))),
        };
        if size > MAX_TAR_NAME_BYTES {
            return Some(Err(refused(
                &String::from_utf8_lossy(&entry.path_bytes()),
                format!("{ext} of {size} bytes; ferry writes at most {MAX_TAR_NAME_BYTES}"),
            )));
        }
        let mut data = Vec::with_capacity(size as usize);
        if let Err(e) = (&mut entry).take(size).read_to_end(&mut data) {
            return Some(Err(stream_error(
                bundle,
                "reading the archive (truncated?)",
                e,
            )));
        }
        if kind.is_gnu_longlink() {
            long_link = true; // links are refused by type; the name only had to be bounded
            continue;
        }
        if long_name.is_some() {
            return Some(Err(refused(
                "././@LongLink",
                "two long names for one member".into(),
            )));
        }
        if kind.is_gnu_longname() {
            while data.last() == Some(&0) {
                data.pop();
            }
            long_name = Some(data);
            continue;
        }
        // A PAX header without a path leaves the member its own name.
        match pax_path(&data) {
            Ok(path) => long_name = path,
            Err(why) => return Some(Err(refused("PaxHeader", why))),
        }
    }
}

/// The `path` record of a PAX header; records that would change how the
/// archive is cut (`size`) are refused, as ferry never writes them.
fn pax_path(data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut path = None;
    let mut rest = data;
    while !rest.is_empty() {
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a malformed PAX record")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|n| n.parse().ok())
            .filter(|&n| n > sp + 1 && n <= rest.len())
            .ok_or("a malformed PAX record")?;
        let record = &rest[sp + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a malformed PAX record")?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => path = Some(value.to_vec()),
            b"size" => return Err("a PAX size record; ferry bundles hold none".into()),
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(path)
}

/// Parses the first entry of a bundle, which must be `ferry-bundle.json`.
fn index_entry(
    bundle: &Path,
    first: Option<Result<Member<'_>, ReadError>>,
) -> Result<Vec<u8>, ReadError> {
    let index_err = |why: String| ReadError::Index {
        bundle: bundle.to_path_buf(),
        why,
    };
    let (name, mut first) = first.ok_or_else(|| index_err("the archive is empty".into()))??;
    if name != INDEX_NAME || !first.header().entry_type().is_file() {
        return Err(index_err(format!(
            "missing: the first entry is {:?}, so this is not a ferry bundle",
            echo(&name)
        )));
    }
    let size = first
        .header()
        .size()
        .map_err(|e| stream_error(bundle, "reading a header", e))?;
    if size > MAX_INDEX_BYTES {
        return Err(index_err(format!(
            "{size} bytes; ferry reads at most {MAX_INDEX_BYTES}"
        )));
    }
    let mut json = Vec::new();
    (&mut first)
        .take(size)
        .read_to_end(&mut json)
        .map_err(|e| stream_error(bundle, "reading the index", e))?;
    Ok(json)
}

/// Parses the bytes of `ferry-bundle.json`.
fn parse_index(bundle: &Path, json: &[u8]) -> Result<BundleIndex, ReadError> {
    serde_json::from_slice(json).map_err(|e| ReadError::Index {
        bundle: bundle.to_path_buf(),
        why: e.to_string(),
    })
}

/// What [`next_member`] gives: the next member, an error, or the end.
type NextMember<'a> = Option<Result<Member<'a>, ReadError>>;

/// The signature entry when `member` is one (it may only follow the index), read with a cap;
/// `Ok(None)` hands the member back for the scan to treat as any other.
fn signature_entry<'a>(
    bundle: &Path,
    member: NextMember<'a>,
) -> Result<(Option<String>, NextMember<'a>), ReadError> {
    use super::sign::{MAX_SIGNATURE_BYTES, SIGNATURE_NAME};
    let Some(Ok((name, mut entry))) = member else {
        return Ok((None, member));
    };
    if name != SIGNATURE_NAME {
        return Ok((None, Some(Ok((name, entry)))));
    }
    let size = entry
        .header()
        .size()
        .map_err(|e| stream_error(bundle, "reading a header", e))?;
    if !entry.header().entry_type().is_file() || size > MAX_SIGNATURE_BYTES {
        return Err(ReadError::Refused {
            bundle: bundle.to_path_buf(),
            entry: name,
            why: format!("not a signature file of at most {MAX_SIGNATURE_BYTES} bytes"),
        });
    }
    let mut text = String::new();
    (&mut entry)
        .take(size)
        .read_to_string(&mut text)
        .map_err(|e| stream_error(bundle, "reading the signature", e))?;
    Ok((Some(text), None))
}

/// Reads only `ferry-bundle.json` and its signature (the first two entries) and checks the
/// signature with `key`, before anything else of the bundle is read or trusted.
pub fn check_signature(path: &Path, key: &super::sign::VerifyingKey) -> Result<(), ReadError> {
    let (json, signature) = head(path)?;
    key.check(path, &json, signature.as_deref())?;
    Ok(())
}

/// The bytes of `ferry-bundle.json` and its signature, when the bundle has one: the first two
/// entries, read with caps; no other entry is looked at.
fn head(path: &Path) -> Result<(Vec<u8>, Option<String>), ReadError> {
    let mut archive = tar::Archive::new(tar_stream(path)?.reader);
    let mut entries = archive
        .entries()
        .map_err(|source| ReadError::Io {
            bundle: path.to_path_buf(),
            op: "reading the archive",
            source,
        })?
        .raw(true);
    let json = index_entry(path, next_member(path, &mut entries))?;
    let (signature, _) = signature_entry(path, next_member(path, &mut entries))?;
    Ok((json, signature))
}

/// Reads `ferry-bundle.json` alone (and past it only the signature entry, if any).
pub fn read_index(path: &Path) -> Result<BundleIndex, ReadError> {
    read_index_bytes(path).map(|(index, _)| index)
}

/// Reads `ferry-bundle.json` alone with its exact bytes (a delta names its base by their digest).
pub fn read_index_bytes(path: &Path) -> Result<(BundleIndex, Vec<u8>), ReadError> {
    let (json, _) = head(path)?;
    Ok((parse_index(path, &json)?, json))
}

/// Reads and checks a whole bundle, handing each blob to `visitor`. Nothing is
/// trusted: entry types, paths, sizes, digests and links are all checked, and
/// the archive must hold exactly what its index says.
pub fn scan(path: &Path, visitor: &mut dyn BlobVisitor) -> Result<Scan, ReadError> {
    scan_checked(path, visitor, None)
}

/// [`scan`] that, given a key, checks the signature of `ferry-bundle.json` as soon as it and its
/// signature are read, before the index is parsed or any other entry is looked at.
pub fn scan_checked(
    path: &Path,
    visitor: &mut dyn BlobVisitor,
    key: Option<&super::sign::VerifyingKey>,
) -> Result<Scan, ReadError> {
    let stream = tar_stream(path)?;
    let last_part = stream.last_part.clone();
    let scan = scan_stream(path, visitor, key, stream).map_err(|e| match (last_part, &e) {
        // A split bundle that ends early lost (part of) its end: name the last part found.
        (Some(last), ReadError::Io { .. } | ReadError::Index { .. })
            if e.to_string().contains("truncated") =>
        {
            PartsError::Broken {
                why: format!(
                    "{e}; {} is truncated, or parts after it are missing",
                    last.display()
                ),
            }
            .into()
        }
        _ => e,
    })?;
    check_offsets(path, &scan)?;
    Ok(scan)
}

/// A bundle's offset table, when it has one, must say exactly what the scan found: the same
/// blobs at the same places and the same links (so `verify` catches a table that lies).
fn check_offsets(path: &Path, s: &Scan) -> Result<(), ReadError> {
    let file = Parts::open(path)?;
    let table = seekable_frames(path, &file)?;
    let Some(at) = table.offsets else {
        return Ok(());
    };
    let Some(offsets) = read_offsets(path, &file, at)? else {
        return Ok(());
    };
    let from = scan_from_offsets(
        path,
        &table.frames,
        s.index.clone(),
        s.index_digest.clone(),
        None,
        offsets,
    )?;
    let bad = |why: String| ReadError::Index {
        bundle: path.to_path_buf(),
        why: format!("the offset table does not match the archive: {why}"),
    };
    let mut digests: Vec<&Digest> = s.blobs.keys().chain(from.blobs.keys()).collect();
    digests.sort();
    if let Some(d) = digests
        .into_iter()
        .find(|d| s.blobs.get(*d) != from.blobs.get(*d))
    {
        let place = |p: Option<&(u64, u64)>| match p {
            Some((o, n)) => format!("{n} bytes at {o}"),
            None => "nothing".into(),
        };
        return Err(bad(format!(
            "blob {d}: the table says {}, the archive holds {}",
            place(from.blobs.get(d)),
            place(s.blobs.get(d))
        )));
    }
    let mut names: Vec<&String> = s.repos.keys().chain(from.repos.keys()).collect();
    names.sort();
    if let Some(r) = names
        .into_iter()
        .find(|r| s.repos.get(*r) != from.repos.get(*r))
    {
        return Err(bad(format!("the links of repository {r} differ")));
    }
    Ok(())
}

/// The scan of [`scan_checked`] over an opened stream.
fn scan_stream(
    path: &Path,
    visitor: &mut dyn BlobVisitor,
    key: Option<&super::sign::VerifyingKey>,
    stream: TarStream,
) -> Result<Scan, ReadError> {
    let bundle = path.to_path_buf();
    let refused = |entry: &str, why: &str| ReadError::Refused {
        bundle: bundle.clone(),
        entry: echo(entry).into_owned(),
        why: why.to_string(),
    };
    let io = |op, source| ReadError::Io {
        bundle: bundle.clone(),
        op,
        source,
    };
    let stream_len = stream.len;
    let mut archive = tar::Archive::new(stream.reader);
    let mut entries = archive
        .entries()
        .map_err(|e| io("reading the archive", e))?
        .raw(true);

    let json = index_entry(&bundle, next_member(&bundle, &mut entries))?;
    let (signature, mut pending) = signature_entry(&bundle, next_member(&bundle, &mut entries))?;
    if let Some(key) = key {
        key.check(&bundle, &json, signature.as_deref())?;
    }
    let index = parse_index(&bundle, &json)?;
    let index_digest = Digest::sha256_of(&json);
    let expected: HashMap<&Digest, u64> = index.blobs.iter().map(|b| (&b.digest, b.size)).collect();

    let mut repos: BTreeMap<String, Repo> = BTreeMap::new();
    let mut blobs: HashMap<Digest, (u64, u64)> = HashMap::new();
    while let Some(member) = pending
        .take()
        .or_else(|| next_member(&bundle, &mut entries))
    {
        let (name, mut entry) = member?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            if !is_layout_dir(&name) {
                return Err(refused(&name, "directory outside the registry layout"));
            }
            continue;
        }
        if !kind.is_file() {
            let what = match kind {
                tar::EntryType::Symlink => "a symbolic link",
                tar::EntryType::Link => "a hard link",
                tar::EntryType::Char | tar::EntryType::Block => "a device file",
                tar::EntryType::Fifo => "a FIFO",
                _ => "not a regular file",
            };
            return Err(refused(
                &name,
                &format!("{what}; bundles hold only files and directories"),
            ));
        }
        let Some(file) = parse_file(&name) else {
            return Err(refused(&name, "not a file of the registry layout"));
        };
        let size = entry
            .header()
            .size()
            .map_err(|e| io("reading a header", e))?;
        match file {
            LayoutFile::BlobData(d) => {
                match expected.get(&d) {
                    None => {
                        return Err(refused(
                            &name,
                            &format!("blob {d} is not listed in {INDEX_NAME}"),
                        ));
                    }
                    Some(&want) if want != size => {
                        return Err(ReadError::Index {
                            bundle: bundle.clone(),
                            why: format!("says blob {d} has {want} bytes, the archive has {size}"),
                        });
                    }
                    Some(_) => {}
                }
                if blobs.contains_key(&d) {
                    return Err(refused(&name, "duplicate entry"));
                }
                let offset = entry.raw_file_position();
                // The claim is checked against what the file holds before a byte is handed on.
                if let Some(len) = stream_len
                    && offset.saturating_add(size) > len
                {
                    return Err(ReadError::Index {
                        bundle: bundle.clone(),
                        why: format!(
                            "says blob {d} has {size} bytes at offset {offset}, but the archive holds only {len} bytes (truncated or forged)"
                        ),
                    });
                }
                let checked = if visitor.verify() {
                    let mut content = VerifyingReader::new(&mut entry, d.clone(), Some(size));
                    visitor
                        .blob(&d, size, &mut content)
                        .and_then(|()| io::copy(&mut content, &mut io::sink()).map(drop))
                } else {
                    visitor
                        .blob(&d, size, &mut entry)
                        .and_then(|()| io::copy(&mut entry, &mut io::sink()).map(drop))
                };
                if let Err(e) = checked {
                    let frame = e
                        .get_ref()
                        .is_some_and(|x| x.downcast_ref::<FrameMismatch>().is_some());
                    return Err(match e.kind() {
                        io::ErrorKind::InvalidData if !frame => ReadError::Corrupt {
                            bundle: bundle.clone(),
                            digest: d,
                            cause: e.to_string(),
                        },
                        _ => stream_error(&bundle, "reading a blob (truncated?)", e),
                    });
                }
                blobs.insert(d, (offset, size));
            }
            link => {
                if size > MAX_LINK_BYTES {
                    return Err(refused(&name, "link file too large"));
                }
                let mut text = String::new();
                entry
                    .read_to_string(&mut text)
                    .map_err(|e| stream_error(&bundle, "reading a link", e))?;
                let target = Digest::parse(&text)
                    .map_err(|_| refused(&name, &format!("link holds {text:?}, not a digest")))?;
                let named = match &link {
                    LayoutFile::LayerLink(_, d)
                    | LayoutFile::RevisionLink(_, d)
                    | LayoutFile::TagIndexLink(_, _, d) => Some(d),
                    _ => None,
                };
                if named.is_some_and(|n| n != &target) {
                    return Err(refused(
                        &name,
                        &format!("link holds {target}, not the digest its path names"),
                    ));
                }
                match link {
                    LayoutFile::LayerLink(r, d) => repos.entry(r).or_default().layers.insert(d),
                    LayoutFile::RevisionLink(r, d) => {
                        repos.entry(r).or_default().revisions.insert(d)
                    }
                    LayoutFile::TagIndexLink(r, t, d) => {
                        repos.entry(r).or_default().tag_index.insert((t, d))
                    }
                    LayoutFile::TagCurrentLink(r, t) => {
                        repos.entry(r).or_default().tags.insert(t, target).is_none()
                    }
                    LayoutFile::BlobData(_) => unreachable!("handled above"),
                };
            }
        }
    }
    let scan = Scan {
        index,
        repos,
        blobs,
        signature,
        index_digest,
    };
    check_consistency(&bundle, &scan)?;
    Ok(scan)
}

/// The archive must hold exactly the blobs the index lists, links must reach blobs it holds, and tags must match the index.
fn check_consistency(bundle: &Path, s: &Scan) -> Result<(), ReadError> {
    let err = |why: String| ReadError::Index {
        bundle: bundle.to_path_buf(),
        why,
    };
    for b in &s.index.blobs {
        if !s.blobs.contains_key(&b.digest) {
            return Err(err(format!(
                "lists blob {}, which the archive does not hold (truncated?)",
                b.digest
            )));
        }
    }
    // A delta's links may also reach the blobs it leaves out (its base carries them).
    let left_out = super::delta::left_out_set(&s.index);
    for (name, r) in &s.repos {
        for d in r
            .layers
            .iter()
            .chain(&r.revisions)
            .chain(r.tags.values())
            .chain(r.tag_index.iter().map(|(_, d)| d))
        {
            if !s.blobs.contains_key(d) && !left_out.contains(d) {
                return Err(err(format!(
                    "repository {name} links {d}, which the archive does not hold"
                )));
            }
        }
        for (tag, d) in &r.tags {
            if !r.revisions.contains(d) || !r.tag_index.contains(&(tag.clone(), d.clone())) {
                return Err(err(format!(
                    "tag {name}:{tag} points at {d}, which the repository does not link"
                )));
            }
        }
    }
    for img in &s.index.images {
        let repo = s.repos.get(&img.repository);
        let ok = match &img.tag {
            Some(t) => repo.and_then(|r| r.tags.get(t)) == Some(&img.digest),
            None => repo.is_some_and(|r| r.revisions.contains(&img.digest)),
        };
        if !ok {
            return Err(err(format!(
                "says {}{} is {}, but the archive does not hold that",
                img.repository,
                img.tag
                    .as_deref()
                    .map(|t| format!(":{t}"))
                    .unwrap_or_default(),
                img.digest
            )));
        }
    }
    // Links the index does not account for: a repository no image of the index names, or a tag
    // history entry other than the tag's current digest (ferry writes exactly that one).
    let named: BTreeSet<&str> = s
        .index
        .images
        .iter()
        .map(|i| i.repository.as_str())
        .collect();
    for (name, r) in &s.repos {
        if !named.contains(name.as_str()) {
            return Err(err(format!(
                "the archive holds repository {name}, which no image of the index names"
            )));
        }
        for (tag, d) in &r.tag_index {
            if r.tags.get(tag) != Some(d) {
                return Err(err(format!(
                    "the archive holds a history link of tag {name}:{tag} to {d}, which the index does not name"
                )));
            }
        }
    }
    let tagged: usize = s.repos.values().map(|r| r.tags.len()).sum();
    let indexed = s.index.images.iter().filter(|i| i.tag.is_some()).count();
    if tagged != indexed {
        return Err(err(format!(
            "lists {indexed} tags, the archive holds {tagged}"
        )));
    }
    Ok(())
}

/// One compressed frame of a seekable zstd bundle.
#[derive(Debug, Clone, Copy)]
struct Frame {
    compressed_offset: u64,
    compressed_size: u64,
    offset: u64,
    size: u64,
}

/// Decompressed frames shared by every reader, least recently used first, bounded in bytes.
#[derive(Debug, Default)]
struct FrameCache {
    frames: std::collections::VecDeque<(usize, Arc<Vec<u8>>)>,
    bytes: u64,
}

impl FrameCache {
    /// Frame `i` when cached (it becomes the most recently used).
    fn get(cache: &std::sync::Mutex<FrameCache>, i: usize) -> Option<Arc<Vec<u8>>> {
        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
        let pos = c.frames.iter().position(|(n, _)| *n == i)?;
        let hit = c.frames.remove(pos).expect("found above");
        let data = hit.1.clone();
        c.frames.push_back(hit);
        Some(data)
    }

    /// Keeps frame `i`, dropping the least recently used beyond `limit` bytes.
    fn put(cache: &std::sync::Mutex<FrameCache>, i: usize, data: Arc<Vec<u8>>, limit: u64) {
        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
        if !c.frames.iter().any(|(n, _)| *n == i) {
            c.bytes += data.len() as u64;
            c.frames.push_back((i, data));
            while c.bytes > limit && c.frames.len() > 1 {
                let (_, old) = c.frames.pop_front().expect("not empty");
                c.bytes -= old.len() as u64;
            }
        }
    }
}

/// Small blobs kept once verified, and their bytes.
type SmallKept = (HashMap<Digest, Arc<[u8]>>, u64);

/// What a bundle opened from its offset table checks as it is read: which blobs were hashed
/// whole already, and the small ones kept once verified.
#[derive(Debug, Default)]
struct OnRead {
    verified: std::sync::Mutex<std::collections::HashSet<Digest>>,
    small: std::sync::Mutex<SmallKept>,
}

/// A bundle file opened for random access: blobs are read in place.
#[derive(Debug)]
pub struct BundleFile {
    path: PathBuf,
    file: Parts,
    /// Empty for a plain tar.
    frames: Vec<Frame>,
    /// Small blobs, decompressed once by the opening scan.
    small: HashMap<Digest, Arc<[u8]>>,
    /// Set when the bundle was opened from its offset table: nothing was hashed at open, so every
    /// blob is checked against its digest as it is read.
    on_read: Option<OnRead>,
    /// Recently decompressed frames.
    cache: std::sync::Mutex<FrameCache>,
    /// Recently decompressed first blocks of frames read straight from the file past them.
    prefixes: std::sync::Mutex<FrameCache>,
    /// Frames being decompressed right now, at most [`MAX_FRAME_DECOMPRESSIONS`]: each holds up to a
    /// frame of memory, so many concurrent range requests cannot add up to gigabytes.
    busy: (std::sync::Mutex<usize>, std::sync::Condvar),
    /// What the scan found.
    pub scan: Scan,
}

/// Keeps small blobs' bytes while a scan reads them, then lets the wrapped visitor see them.
struct KeepSmall<'a> {
    inner: &'a mut dyn BlobVisitor,
    kept: HashMap<Digest, Arc<[u8]>>,
    budget: u64,
}

impl BlobVisitor for KeepSmall<'_> {
    fn blob(&mut self, digest: &Digest, size: u64, content: &mut dyn Read) -> io::Result<()> {
        if size > SMALL_BLOB_BYTES || size > self.budget {
            return self.inner.blob(digest, size, content);
        }
        let mut bytes = Vec::with_capacity(size as usize);
        content.take(size).read_to_end(&mut bytes)?;
        self.budget -= bytes.len() as u64;
        self.inner
            .blob(digest, size, &mut io::Cursor::new(&bytes[..]))?;
        self.kept.insert(digest.clone(), bytes.into());
        Ok(())
    }
    fn verify(&self) -> bool {
        self.inner.verify()
    }
}

impl BundleFile {
    /// Opens and checks a bundle (one full read, every blob re-hashed), then maps each blob to its place.
    pub fn open(path: &Path) -> Result<Arc<BundleFile>, ReadError> {
        BundleFile::open_with(path, &mut HashOnly)
    }

    /// [`BundleFile::open`] with a chosen visitor ([`StructureOnly`] skips hashing when the consumer verifies).
    pub fn open_with(
        path: &Path,
        visitor: &mut dyn BlobVisitor,
    ) -> Result<Arc<BundleFile>, ReadError> {
        BundleFile::open_checked(path, visitor, None)
    }

    /// [`BundleFile::open_with`] that, given a key, refuses a bundle whose signature does not
    /// hold before anything past `ferry-bundle.json` is read.
    pub fn open_checked(
        path: &Path,
        visitor: &mut dyn BlobVisitor,
        key: Option<&super::sign::VerifyingKey>,
    ) -> Result<Arc<BundleFile>, ReadError> {
        let file = Parts::open(path)?;
        let frames = seekable_frames(path, &file)?.frames;
        let mut keep = KeepSmall {
            inner: visitor,
            kept: HashMap::new(),
            budget: SMALL_BLOBS_BUDGET,
        };
        // The scan checks every frame against the table: a table that lies stops the open here.
        let scan = scan_checked(path, &mut keep, key)?;
        Ok(Arc::new(BundleFile {
            path: path.to_path_buf(),
            file,
            frames,
            small: keep.kept,
            on_read: None,
            cache: Default::default(),
            prefixes: Default::default(),
            busy: Default::default(),
            scan,
        }))
    }

    /// Opens a bundle to serve it in place, fast: from its offset table when it has one (only the
    /// seek table, `ferry-bundle.json`, its signature with `key`, and the offset table are read;
    /// the table's links are checked against the index, and every blob against its digest as it
    /// is read); otherwise by the full checking scan of [`BundleFile::open_checked`].
    pub fn open_in_place(
        path: &Path,
        key: Option<&super::sign::VerifyingKey>,
    ) -> Result<Arc<BundleFile>, ReadError> {
        let file = Parts::open(path)?;
        let table = seekable_frames(path, &file)?;
        let offsets = match table.offsets {
            Some(at) => read_offsets(path, &file, at)?,
            None => None,
        };
        let Some(offsets) = offsets else {
            return BundleFile::open_checked(path, &mut HashOnly, key);
        };
        let (json, signature) = head(path)?;
        if let Some(key) = key {
            key.check(path, &json, signature.as_deref())?;
        }
        let index = parse_index(path, &json)?;
        let index_digest = Digest::sha256_of(&json);
        let scan = scan_from_offsets(path, &table.frames, index, index_digest, signature, offsets)?;
        Ok(Arc::new(BundleFile {
            path: path.to_path_buf(),
            file,
            frames: table.frames,
            small: HashMap::new(),
            on_read: Some(OnRead::default()),
            cache: Default::default(),
            prefixes: Default::default(),
            busy: Default::default(),
            scan,
        }))
    }

    /// The bundle's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A small blob's bytes, kept from the opening scan or (opened from the offset table) once read and verified.
    pub fn small_blob(&self, digest: &Digest) -> Option<Arc<[u8]>> {
        if let Some(b) = self.small.get(digest) {
            return Some(b.clone());
        }
        let on_read = self.on_read.as_ref()?;
        let kept = on_read.small.lock().unwrap_or_else(|e| e.into_inner());
        kept.0.get(digest).cloned()
    }

    /// Whether a blob's bytes still need checking against its digest when read.
    fn unchecked(&self, digest: &Digest) -> bool {
        self.on_read.as_ref().is_some_and(|r| {
            !r.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(digest)
        })
    }

    /// The whole of a blob of at most `max` bytes (a manifest), checked against its digest
    /// unless the opening scan already did.
    pub fn blob_bytes(self: &Arc<Self>, digest: &Digest, max: u64) -> io::Result<Arc<[u8]>> {
        if let Some(b) = self.small_blob(digest) {
            return Ok(b);
        }
        let (offset, size) = self.place(digest)?;
        if size > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {digest} has {size} bytes, more than the {max} read whole"),
            ));
        }
        let mut out = Vec::with_capacity(size as usize);
        self.read_range(offset, size).read_to_end(&mut out)?;
        if let Some(on_read) = &self.on_read {
            let found = Digest::sha256_of(&out);
            if &found != digest {
                return Err(self.mismatch(digest, &format!("its bytes hash to {found}")));
            }
            if size <= SMALL_BLOB_BYTES {
                let mut kept = on_read.small.lock().unwrap_or_else(|e| e.into_inner());
                if kept.1 + size > LAZY_SMALL_BYTES {
                    *kept = Default::default();
                }
                kept.1 += size;
                kept.0.insert(digest.clone(), out.clone().into());
            }
        }
        Ok(out.into())
    }

    /// A reader of `len` bytes from `start` of a blob. Opened from the offset table, a blob not
    /// yet checked is hashed as it is read: a whole read fails at its last bytes (never handing
    /// them on) when they do not match the digest; a part is read only after the whole checks.
    pub fn blob_range(
        self: &Arc<Self>,
        digest: &Digest,
        start: u64,
        len: u64,
    ) -> io::Result<Box<dyn Read + Send>> {
        let (offset, size) = self.place(digest)?;
        let end = start.saturating_add(len).min(size);
        let start = start.min(end);
        if self.unchecked(digest) {
            if size <= SMALL_BLOB_BYTES {
                let bytes = self.blob_bytes(digest, size)?;
                return Ok(Box::new(io::Cursor::new(
                    bytes[start as usize..end as usize].to_vec(),
                )));
            }
            let whole = Checked {
                bundle: self.clone(),
                inner: self.read_range(offset, size),
                digest: digest.clone(),
                hasher: Some(crate::digest::Hasher::new(digest.algorithm())),
                left: size,
            };
            if start == 0 && end == size {
                return Ok(Box::new(whole));
            }
            io::copy(&mut { whole }, &mut io::sink())?;
        } else if let Some(bytes) = self.small_blob(digest) {
            return Ok(Box::new(io::Cursor::new(
                bytes[start as usize..end as usize].to_vec(),
            )));
        }
        Ok(self.read_range(offset + start, end - start))
    }

    /// Where a blob is in the tar stream: (offset, size).
    fn place(&self, digest: &Digest) -> io::Result<(u64, u64)> {
        self.scan.blobs.get(digest).copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("blob {digest} is not in {}", self.path.display()),
            )
        })
    }

    /// A blob whose bytes are not what its digest says: logged (the client only sees its response cut).
    fn mismatch(&self, digest: &Digest, why: &str) -> io::Error {
        let e = ReadError::Corrupt {
            bundle: self.path.clone(),
            digest: digest.clone(),
            cause: why.to_string(),
        };
        tracing::error!("{e}");
        io::Error::new(io::ErrorKind::InvalidData, e.to_string())
    }

    /// Frame `i` decompressed, from the shared cache when a recent reader decompressed it.
    fn frame(&self, i: usize) -> io::Result<Arc<Vec<u8>>> {
        if let Some(hit) = FrameCache::get(&self.cache, i) {
            return Ok(hit);
        }
        let f = *self
            .frames
            .get(i)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past the last frame"))?;
        let data = {
            let (count, freed) = &self.busy;
            let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
            while *n >= MAX_FRAME_DECOMPRESSIONS {
                n = freed.wait(n).unwrap_or_else(|e| e.into_inner());
            }
            *n += 1;
            drop(n);
            let r = decompress_frame(&self.file, &f, i, &mut None, Vec::new());
            *count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            freed.notify_one();
            Arc::new(r?)
        };
        FrameCache::put(&self.cache, i, data.clone(), FRAME_CACHE_BYTES);
        Ok(data)
    }

    /// A reader of `len` bytes at `offset` of the uncompressed tar stream.
    pub fn read_range(self: &Arc<Self>, offset: u64, len: u64) -> Box<dyn Read + Send> {
        if self.frames.is_empty() {
            return Box::new(PlainRange {
                bundle: self.clone(),
                pos: offset,
                end: offset + len,
            });
        }
        Box::new(FrameRange {
            bundle: self.clone(),
            pos: offset,
            end: offset + len,
            current: None,
        })
    }
}

/// A seekable bundle's seek table (empty for a plain tar); refuses a zstd file without one.
fn seekable_frames(path: &Path, file: &Parts) -> Result<SeekTable, ReadError> {
    let mut magic = [0u8; 4];
    if file.read_exact_at(&mut magic, 0).is_err() || magic != ZSTD_MAGIC {
        return Ok(SeekTable::default());
    }
    read_seek_table(path, file)?.ok_or_else(|| ReadError::Index {
        bundle: path.to_path_buf(),
        why: "no seek table at the end: not a seekable bundle (unpack it with `ferry unbundle serve --dir DIR`)".into(),
    })
}

/// What a scan would find, from the offset table: each blob checked against the index (listed,
/// same size, inside the archive, once), then the links against the index as a scan's are.
fn scan_from_offsets(
    path: &Path,
    frames: &[Frame],
    index: BundleIndex,
    index_digest: Digest,
    signature: Option<String>,
    table: OffsetTable,
) -> Result<Scan, ReadError> {
    let bad = |why: String| ReadError::Index {
        bundle: path.to_path_buf(),
        why: format!("the offset table {why}"),
    };
    if table.index_digest != index_digest {
        return Err(bad(format!(
            "belongs to another {INDEX_NAME} ({}, this one is {index_digest})",
            table.index_digest
        )));
    }
    let tar_len = frames.last().map(|f| f.offset + f.size).unwrap_or(0);
    let expected: HashMap<&Digest, u64> = index.blobs.iter().map(|b| (&b.digest, b.size)).collect();
    let mut blobs = HashMap::with_capacity(table.blobs.len());
    for b in table.blobs {
        match expected.get(&b.digest) {
            Some(&size) if size == b.size => {}
            Some(&size) => {
                return Err(bad(format!(
                    "says blob {} has {} bytes, {INDEX_NAME} says {size}",
                    b.digest, b.size
                )));
            }
            None => {
                return Err(bad(format!(
                    "places blob {}, which {INDEX_NAME} does not list",
                    b.digest
                )));
            }
        }
        if b.offset.saturating_add(b.size) > tar_len {
            return Err(bad(format!(
                "places blob {} past the end of the archive ({tar_len} bytes)",
                b.digest
            )));
        }
        if blobs.insert(b.digest.clone(), (b.offset, b.size)).is_some() {
            return Err(bad(format!("places blob {} twice", b.digest)));
        }
    }
    let mut repos = BTreeMap::new();
    for (name, links) in table.repos {
        if crate::reference::validate_repository(&name).is_err() {
            return Err(bad(format!("names repository {:?}", echo(&name))));
        }
        let tag_index = links
            .tags
            .iter()
            .map(|(t, d)| (t.clone(), d.clone()))
            .collect();
        repos.insert(
            name,
            Repo {
                layers: links.layers.into_iter().collect(),
                revisions: links.revisions.into_iter().collect(),
                tags: links.tags,
                tag_index,
            },
        );
    }
    let scan = Scan {
        index,
        repos,
        blobs,
        signature,
        index_digest,
    };
    check_consistency(path, &scan)?;
    Ok(scan)
}

/// A whole blob read with its hash: the read that reaches its end fails instead of handing on
/// the last bytes when the digest does not match; a match marks the blob checked.
struct Checked {
    bundle: Arc<BundleFile>,
    inner: Box<dyn Read + Send>,
    digest: Digest,
    hasher: Option<crate::digest::Hasher>,
    left: u64,
}

impl Read for Checked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("blob {} ends early", self.digest),
            ));
        }
        self.left -= n as u64;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        if self.left == 0
            && let Some(h) = self.hasher.take()
        {
            let found = h.finish();
            if found != self.digest {
                return Err(self
                    .bundle
                    .mismatch(&self.digest, &format!("its bytes hash to {found}")));
            }
            if let Some(r) = &self.bundle.on_read {
                r.verified
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(self.digest.clone());
            }
        }
        Ok(n)
    }
}

/// Whether a bundle can be read in place ([`BundleFile`]): a plain tar, or zstd with a seek table.
pub fn in_place(path: &Path) -> Result<bool, ReadError> {
    let file = Parts::open(path)?;
    let mut magic = [0u8; 4];
    if file.read_exact_at(&mut magic, 0).is_err() || magic != ZSTD_MAGIC {
        return Ok(true);
    }
    Ok(read_seek_table(path, &file)?.is_some())
}

/// The seek table at the end of a zstd bundle: its data frames, and where the offset table
/// frame is when the bundle has one (`(offset, length)` of the whole skippable frame).
#[derive(Debug, Clone, Default)]
struct SeekTable {
    frames: Vec<Frame>,
    offsets: Option<(u64, u64)>,
}

/// The seek table at the end of a zstd bundle; `None` when the file has none
/// (a plain zstd stream), an error when it has one that cannot be right.
fn read_seek_table(path: &Path, file: &Parts) -> Result<Option<SeekTable>, ReadError> {
    let bad = |why: &str| ReadError::Index {
        bundle: path.to_path_buf(),
        why: format!(
            "{why}: not a seekable bundle (unpack it with `ferry unbundle serve --dir DIR`)"
        ),
    };
    // A split bundle whose end is not a seek table lost its end: name the last part found.
    let cut = || {
        Err(PartsError::Broken {
            why: format!(
                "{}: the parts do not end where a bundle ends: this last part is truncated, or parts after it are missing",
                file.last_part().display()
            ),
        }
        .into())
    };
    let len = file.len();
    if len < 17 {
        return if file.is_split() { cut() } else { Ok(None) };
    }
    let mut footer = [0u8; 9];
    file.read_exact_at(&mut footer, len - 9)
        .map_err(|e| ReadError::Io {
            bundle: path.to_path_buf(),
            op: "reading the seek table",
            source: e,
        })?;
    let n = u32::from_le_bytes(footer[0..4].try_into().expect("4 bytes")) as u64;
    let descriptor = footer[4];
    if u32::from_le_bytes(footer[5..9].try_into().expect("4 bytes")) != SEEKABLE_MAGIC {
        return if file.is_split() { cut() } else { Ok(None) };
    }
    let entry = if descriptor & 0x80 != 0 { 12 } else { 8 };
    let table_len = 8 + n * entry + 9;
    if table_len > len {
        return Err(bad("seek table larger than the file"));
    }
    let mut table = vec![0u8; table_len as usize];
    file.read_exact_at(&mut table, len - table_len)
        .map_err(|e| ReadError::Io {
            bundle: path.to_path_buf(),
            op: "reading the seek table",
            source: e,
        })?;
    if u32::from_le_bytes(table[0..4].try_into().expect("4 bytes")) != SEEK_TABLE_MAGIC {
        return Err(bad("seek table frame has the wrong magic"));
    }
    let sizes: Vec<(u64, u64)> = (0..n as usize)
        .map(|i| {
            let e = &table[8 + i * entry as usize..];
            (
                u32::from_le_bytes(e[0..4].try_into().expect("4 bytes")) as u64,
                u32::from_le_bytes(e[4..8].try_into().expect("4 bytes")) as u64,
            )
        })
        .collect();
    // The last frames may be the offset table (skippable frames, nothing decompressed): in pieces
    // of at most OFFSETS_PIECE_FRAME_BYTES, or one frame as the first builds with a table wrote it.
    let run = sizes
        .iter()
        .rev()
        .take_while(|&&(cs, ds)| ds == 0 && cs > 8)
        .count();
    let table_frames = &sizes[sizes.len() - run..];
    let total: u64 = table_frames.iter().map(|f| f.0).sum();
    let is_table = match run {
        0 => false,
        1 => total <= 8 + MAX_OFFSETS_BYTES,
        _ => {
            table_frames
                .iter()
                .all(|f| f.0 <= super::format::OFFSETS_PIECE_FRAME_BYTES as u64)
                && total <= MAX_OFFSETS_BYTES
        }
    };
    let data_frames = if is_table {
        sizes.len() - run
    } else {
        sizes.len()
    };
    let mut frames = Vec::with_capacity(data_frames);
    let (mut c, mut d) = (0u64, 0u64);
    for &(cs, ds) in &sizes[..data_frames] {
        if !super::format::older_readers_accept(cs, ds) {
            return Err(bad("a frame is larger than ferry writes"));
        }
        frames.push(Frame {
            compressed_offset: c,
            compressed_size: cs,
            offset: d,
            size: ds,
        });
        c += cs;
        d += ds;
    }
    let offsets = is_table.then_some((c, total));
    if is_table {
        c += total;
    }
    if c + table_len != len {
        if file.is_split() {
            return cut();
        }
        return Err(bad("frame sizes do not add up to the file size"));
    }
    Ok(Some(SeekTable { frames, offsets }))
}

/// Reads the offset table frame at `at` (`None` when that frame is not one: an old bundle's
/// last frame of no data). Nothing in it is trusted yet: see [`BundleFile::open_in_place`].
fn read_offsets(
    path: &Path,
    file: &Parts,
    at: (u64, u64),
) -> Result<Option<OffsetTable>, ReadError> {
    let bad = |why: String| ReadError::Index {
        bundle: path.to_path_buf(),
        why: format!("the offset table: {why}"),
    };
    let mut frames = vec![0u8; at.1 as usize];
    file.read_exact_at(&mut frames, at.0)
        .map_err(|e| ReadError::Io {
            bundle: path.to_path_buf(),
            op: "reading the offset table",
            source: e,
        })?;
    // Joins the payloads of the frames (one OFFSETS_MAGIC frame, or OFFSETS_PIECE_MAGIC pieces);
    // frames of another kind are not a table (an old bundle's last frame of no data).
    let magic = |at: usize| u32::from_le_bytes(frames[at..at + 4].try_into().expect("4 bytes"));
    let first = magic(0);
    if first != OFFSETS_MAGIC && first != OFFSETS_PIECE_MAGIC {
        return Ok(None);
    }
    let mut payload = Vec::with_capacity(frames.len());
    let mut pos = 0usize;
    while pos < frames.len() {
        if frames.len() - pos < 8 || magic(pos) != first || (first == OFFSETS_MAGIC && pos > 0) {
            return Err(bad(format!(
                "byte {pos} of its {} is not one of its frames",
                frames.len()
            )));
        }
        let n = u32::from_le_bytes(frames[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize;
        if n > frames.len() - pos - 8 {
            return Err(bad(format!(
                "a frame at byte {pos} says {n} bytes, the seek table leaves {}",
                frames.len() - pos - 8
            )));
        }
        payload.extend_from_slice(&frames[pos + 8..pos + 8 + n]);
        pos += 8 + n;
    }
    let mut json = Vec::new();
    zstd::stream::read::Decoder::new(&payload[..])
        .and_then(|d| d.take(MAX_OFFSETS_BYTES + 1).read_to_end(&mut json))
        .map_err(|e| bad(format!("does not decompress: {e}")))?;
    if json.len() as u64 > MAX_OFFSETS_BYTES {
        return Err(bad(format!("larger than {MAX_OFFSETS_BYTES} bytes")));
    }
    let table: OffsetTable =
        serde_json::from_slice(&json).map_err(|e| bad(echo(&e.to_string()).into_owned()))?;
    if table.format != OFFSETS_FORMAT {
        return Err(bad(format!(
            "format {:?}, this ferry reads {OFFSETS_FORMAT:?}",
            echo(&table.format)
        )));
    }
    Ok(Some(table))
}

struct PlainRange {
    bundle: Arc<BundleFile>,
    pos: u64,
    end: u64,
}

impl Read for PlainRange {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.end - self.pos) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.bundle.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "bundle shorter than its index",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads a range of the tar stream of a seekable bundle. A frame whose blocks after its first
/// few are raw (or RLE), as zstd writes incompressible data (compressed layers), is read
/// straight from the file past those first blocks, which alone are decompressed: no frame held
/// in memory. Other frames come decompressed whole from the shared cache.
struct FrameRange {
    bundle: Arc<BundleFile>,
    pos: u64,
    end: u64,
    /// The frame being read: its index and how its bytes are had.
    current: Option<(usize, FrameData)>,
}

/// A raw or RLE block of a frame: (offset in the frame, length, file offset of its bytes or its one byte).
type Block = (u64, u64, Result<u64, u8>);

/// How a frame's bytes are read.
enum FrameData {
    /// The first bytes decompressed (up to the end of the last compressed block), then raw and RLE blocks.
    Direct(Arc<Vec<u8>>, Vec<Block>),
    /// Decompressed whole.
    Decoded(Arc<Vec<u8>>),
}

/// Where a frame's compressed first blocks end and how many bytes they hold, then its raw and RLE blocks.
type FramePlan = ((u64, u64), Vec<Block>);

/// The plan of frame `i` when it ends in raw or RLE blocks: where its compressed first blocks end
/// and how many bytes they hold (`(offset, 0)` when there are none), and the blocks after them;
/// `None` when too much of it is compressed. Checked to end where its compressed bytes end.
fn frame_plan(file: &Parts, f: &Frame, i: usize) -> io::Result<Option<FramePlan>> {
    let mismatch = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            FrameMismatch(format!(
                "frame {i} at byte {}{}: {why}",
                f.compressed_offset,
                in_part(file, f.compressed_offset)
            )),
        )
    };
    let mut head = [0u8; 6];
    if f.compressed_size < 6 {
        return Err(mismatch("too short for a zstd frame"));
    }
    file.read_exact_at(&mut head, f.compressed_offset)?;
    if head[..4] != ZSTD_MAGIC {
        return Err(mismatch("not a zstd frame"));
    }
    let d = head[4];
    let single = d & 0x20 != 0;
    let fcs = match d >> 6 {
        0 => u64::from(single),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let dict = [0, 1, 2, 4][(d & 3) as usize];
    let checksum = if d & 0x04 != 0 { 4 } else { 0 };
    let mut at = f.compressed_offset + 5 + u64::from(!single) + dict + fcs;
    let stop = f.compressed_offset + f.compressed_size - checksum;
    // Blocks after the last compressed one, and where that one ends.
    let mut blocks: Vec<Block> = Vec::new();
    let mut prefix_end = f.compressed_offset;
    loop {
        let mut h = [0u8; 3];
        if at + 3 > stop {
            return Err(mismatch("its blocks run past its end"));
        }
        file.read_exact_at(&mut h, at)?;
        let h = u32::from(h[0]) | u32::from(h[1]) << 8 | u32::from(h[2]) << 16;
        let (last, kind, size) = (h & 1 == 1, (h >> 1) & 3, u64::from(h >> 3));
        at += 3;
        match kind {
            0 => {
                blocks.push((0, size, Ok(at)));
                at += size;
            }
            1 => {
                let mut b = [0u8; 1];
                file.read_exact_at(&mut b, at)?;
                blocks.push((0, size, Err(b[0])));
                at += 1;
            }
            2 => {
                blocks.clear();
                at += size;
                prefix_end = at;
            }
            _ => return Err(mismatch("a reserved block type")),
        }
        if last {
            break;
        }
    }
    if at != stop {
        return Err(mismatch(&format!(
            "its blocks end at byte {at}, the seek table says {stop}"
        )));
    }
    let direct: u64 = blocks.iter().map(|b| b.1).sum();
    let Some(prefix) = f.size.checked_sub(direct) else {
        return Err(mismatch(&format!(
            "its blocks hold more than the {} bytes the seek table gives",
            f.size
        )));
    };
    if prefix > MAX_PREFIX_BYTES || (prefix > 0) != (prefix_end > f.compressed_offset) {
        return Ok(None);
    }
    let mut start = prefix;
    for b in &mut blocks {
        b.0 = start;
        start += b.1;
    }
    Ok(Some(((prefix_end, prefix), blocks)))
}

impl BundleFile {
    /// The first `len` bytes of frame `f`, decompressed from its bytes up to `end` alone.
    fn frame_prefix(&self, f: &Frame, i: usize, end: u64, len: u64) -> io::Result<Arc<Vec<u8>>> {
        if len == 0 {
            return Ok(Arc::new(Vec::new()));
        }
        if let Some(hit) = FrameCache::get(&self.prefixes, i) {
            return Ok(hit);
        }
        let mut compressed = vec![0u8; (end - f.compressed_offset) as usize];
        self.file
            .read_exact_at(&mut compressed, f.compressed_offset)?;
        let (count, freed) = &self.busy;
        let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= MAX_FRAME_DECOMPRESSIONS {
            n = freed.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        drop(n);
        let mut out = vec![0u8; len as usize];
        let r = zstd::stream::read::Decoder::with_buffer(&compressed[..])
            .and_then(|mut d| d.read_exact(&mut out));
        *count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        freed.notify_one();
        r.map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                FrameMismatch(format!(
                    "frame {i} at byte {}{}: its first blocks do not decompress to {len} bytes: {e}",
                    f.compressed_offset,
                    in_part(&self.file, f.compressed_offset)
                )),
            )
        })?;
        let out = Arc::new(out);
        FrameCache::put(&self.prefixes, i, out.clone(), PREFIX_CACHE_BYTES);
        Ok(out)
    }
}

impl Read for FrameRange {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.end || out.is_empty() {
            return Ok(0);
        }
        let frames = &self.bundle.frames;
        let i = match &self.current {
            Some((i, _)) if self.pos < frames[*i].offset + frames[*i].size => *i,
            _ => {
                self.current = None;
                let i = frames.partition_point(|f| f.offset + f.size <= self.pos);
                let f = *frames.get(i).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "past the last frame")
                })?;
                let data = match frame_plan(&self.bundle.file, &f, i)? {
                    // A read that starts past the decompressed part never needs it.
                    Some(((end, len), blocks)) => {
                        let prefix = if self.pos - f.offset < len {
                            self.bundle.frame_prefix(&f, i, end, len)?
                        } else {
                            Arc::new(Vec::new())
                        };
                        FrameData::Direct(prefix, blocks)
                    }
                    None => FrameData::Decoded(self.bundle.frame(i)?),
                };
                self.current = Some((i, data));
                i
            }
        };
        let f = frames[i];
        let rel = self.pos - f.offset;
        let room = (self.end - self.pos).min(f.offset + f.size - self.pos);
        let n = match &self.current.as_ref().expect("set above").1 {
            FrameData::Decoded(buf) => {
                let n = (out.len() as u64).min(room) as usize;
                let start = rel as usize;
                out[..n].copy_from_slice(&buf[start..start + n]);
                n
            }
            FrameData::Direct(prefix, _) if rel < prefix.len() as u64 => {
                let n = (out.len() as u64).min(room).min(prefix.len() as u64 - rel) as usize;
                out[..n].copy_from_slice(&prefix[rel as usize..rel as usize + n]);
                n
            }
            FrameData::Direct(_, blocks) => {
                let b = blocks.partition_point(|(s, l, _)| s + l <= rel);
                let (s, l, src) = *blocks.get(b).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a read inside a frame's decompressed start",
                    )
                })?;
                let n = (out.len() as u64).min(room).min(s + l - rel) as usize;
                match src {
                    Ok(at) => self
                        .bundle
                        .file
                        .read_exact_at(&mut out[..n], at + rel - s)?,
                    Err(byte) => out[..n].fill(byte),
                }
                n
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}
