//! Writing a root into a deterministic tar, optionally as seekable zstd
//! compressed on every core (see `format`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::split::SplitFile;
use crate::digest::Digest;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use crate::bundlefile::format::{
    BlobAt, MAX_FRAME_BYTES, MIN_FRAME_BYTES, OFFSETS_FORMAT, OFFSETS_PIECE_FRAME_BYTES,
    OFFSETS_PIECE_MAGIC, OffsetTable, SEEK_TABLE_MAGIC, SEEKABLE_MAGIC, SMALL_FRAME_BLOB_BYTES,
};
use crate::store::paths::{LayoutFile, PathSpec, path_for};

/// Bytes written between two writeback requests.
const WRITEBACK_BYTES: u64 = 32 * 1024 * 1024;

/// A file that asks the kernel to start writing back every [`WRITEBACK_BYTES`],
/// so the final fsync waits for the last few MiB instead of the whole file
/// (the disk works while we are still producing).
pub struct Writeback {
    file: SplitFile,
    written: u64,
    flushed: u64,
}

impl Writeback {
    /// Wraps a new, empty file.
    pub fn new(file: SplitFile) -> Writeback {
        Writeback {
            file,
            written: 0,
            flushed: 0,
        }
    }

    fn into_inner(self) -> SplitFile {
        self.file
    }
}

impl Write for Writeback {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.flushed >= WRITEBACK_BYTES {
            self.file.writeback_hint();
            self.flushed = self.written;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where tar bytes go: straight to the file, or cut into frames compressed in parallel.
pub enum Output {
    /// Plain tar.
    Plain(BufWriter<Writeback>),
    /// Seekable zstd.
    Zstd(FrameWriter),
}

impl Output {
    /// Marks a tar member boundary: a good place to start a new frame.
    pub fn boundary(&mut self) -> io::Result<()> {
        match self {
            Output::Plain(_) => Ok(()),
            Output::Zstd(f) => f.boundary(),
        }
    }

    /// Ends the current frame here (a small blob gets a frame of its own).
    fn cut(&mut self) -> io::Result<()> {
        match self {
            Output::Plain(_) => Ok(()),
            Output::Zstd(f) => f.emit(),
        }
    }

    /// Bytes of tar written so far (the offset the next byte will have in the tar stream).
    fn position(&self) -> u64 {
        match self {
            Output::Plain(w) => w.get_ref().written + w.buffer().len() as u64,
            Output::Zstd(f) => f.position,
        }
    }

    /// Flushes everything (the offset table, when given and compressed, then the seek table) and returns the file.
    pub fn finish(self, offsets: Option<&[u8]>) -> io::Result<SplitFile> {
        match self {
            Output::Plain(w) => w
                .into_inner()
                .map(Writeback::into_inner)
                .map_err(|e| e.into_error()),
            Output::Zstd(f) => f.finish(offsets),
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Plain(w) => w.write(buf),
            Output::Zstd(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

type Job = (usize, Vec<u8>);
type Done = (usize, io::Result<(Vec<u8>, usize)>);
/// The finished file and its seek table: (compressed, decompressed) size per frame.
type Written = io::Result<(SplitFile, Vec<(u32, u32)>)>;

/// Cuts the stream into frames and compresses them on worker threads; the
/// writer thread puts them back in order and records the seek table.
pub struct FrameWriter {
    buf: Vec<u8>,
    /// Tar bytes taken so far.
    position: u64,
    seq: usize,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    writer: Option<std::thread::JoinHandle<Written>>,
}

impl FrameWriter {
    /// Starts compressing into `file` at `level` with `threads` workers.
    pub fn new(file: SplitFile, level: i32, threads: usize) -> FrameWriter {
        let threads = threads.max(1);
        // Short queues keep memory flat: at most a few frames in flight per thread.
        let (job_tx, job_rx) = sync_channel::<Job>(threads);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = sync_channel::<Done>(threads);
        let workers = (0..threads)
            .map(|_| {
                let rx = job_rx.clone();
                let tx = done_tx.clone();
                std::thread::spawn(move || compress_worker(rx, tx, level))
            })
            .collect();
        drop(done_tx);
        let writer = std::thread::spawn(move || write_frames(file, done_rx));
        FrameWriter {
            buf: Vec::with_capacity(MAX_FRAME_BYTES),
            position: 0,
            seq: 0,
            jobs: Some(job_tx),
            workers,
            writer: Some(writer),
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(MAX_FRAME_BYTES));
        let Some(tx) = self.jobs.as_ref() else {
            return Err(io::Error::other("compression threads stopped"));
        };
        if tx.send((self.seq, chunk)).is_err() {
            return Err(self.stopped());
        }
        self.seq += 1;
        Ok(())
    }

    /// Why the threads stopped taking frames: the writer's own error (a full disk, say),
    /// which is what the user must see, rather than the closed queue it left behind.
    fn stopped(&mut self) -> io::Error {
        drop(self.jobs.take());
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(Err(e))) => e,
            _ => io::Error::other("compression threads stopped"),
        }
    }

    fn boundary(&mut self) -> io::Result<()> {
        if self.buf.len() >= MIN_FRAME_BYTES {
            self.emit()
        } else {
            Ok(())
        }
    }

    fn finish(mut self, offsets: Option<&[u8]>) -> io::Result<SplitFile> {
        self.emit()?;
        drop(self.jobs.take());
        for w in self.workers.drain(..) {
            w.join()
                .map_err(|_| io::Error::other("compression thread panicked"))?;
        }
        let (mut file, table) = self
            .writer
            .take()
            .expect("once")
            .join()
            .map_err(|_| io::Error::other("writer thread panicked"))??;
        let mut table = table;
        if let Some(payload) = offsets {
            // Skippable frames: tar readers never see them; the seek table lists each with no
            // decompressed bytes. In pieces small enough for every older ferry's frame check.
            let mut frames = Vec::with_capacity(payload.len() + payload.len() / 64 + 8);
            for piece in payload.chunks(OFFSETS_PIECE_FRAME_BYTES - 8) {
                frames.extend_from_slice(&OFFSETS_PIECE_MAGIC.to_le_bytes());
                frames.extend_from_slice(&(piece.len() as u32).to_le_bytes());
                frames.extend_from_slice(piece);
                table.push((piece.len() as u32 + 8, 0));
            }
            file.write_all(&frames)?;
        }
        write_seek_table(&mut file, &table)?;
        Ok(file)
    }
}

impl Write for FrameWriter {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        self.position += n as u64;
        while !data.is_empty() {
            let room = MAX_FRAME_BYTES - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == MAX_FRAME_BYTES {
                self.emit()?;
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn compress_worker(rx: Arc<Mutex<Receiver<Job>>>, tx: SyncSender<Done>, level: i32) {
    let mut compressor = match zstd::bulk::Compressor::new(level) {
        Ok(mut c) => {
            let _ = c.include_checksum(true);
            let _ = c.include_contentsize(true);
            c
        }
        Err(e) => {
            let _ = tx.send((usize::MAX, Err(e)));
            return;
        }
    };
    loop {
        let job = rx.lock().unwrap().recv();
        let Ok((seq, chunk)) = job else { return };
        let out = compressor.compress(&chunk).map(|c| (c, chunk.len()));
        if tx.send((seq, out)).is_err() {
            return;
        }
    }
}

fn write_frames(file: SplitFile, rx: Receiver<Done>) -> Written {
    let mut w = Writeback::new(file);
    let mut pending = BTreeMap::new();
    let mut next = 0usize;
    let mut table = Vec::new();
    for (seq, result) in rx {
        let (frame, raw_len) = result?;
        pending.insert(seq, (frame, raw_len));
        while let Some((frame, raw_len)) = pending.remove(&next) {
            w.write_all(&frame)?;
            table.push((frame.len() as u32, raw_len as u32));
            next += 1;
        }
    }
    if !pending.is_empty() {
        return Err(io::Error::other("a compressed frame went missing"));
    }
    Ok((w.into_inner(), table))
}

/// Appends the zstd seekable format's seek table (no per-frame checksums: each frame carries its own).
fn write_seek_table(file: &mut SplitFile, table: &[(u32, u32)]) -> io::Result<()> {
    let mut t = Vec::with_capacity(8 + table.len() * 8 + 9);
    t.extend_from_slice(&SEEK_TABLE_MAGIC.to_le_bytes());
    t.extend_from_slice(&((table.len() * 8 + 9) as u32).to_le_bytes());
    for (c, d) in table {
        t.extend_from_slice(&c.to_le_bytes());
        t.extend_from_slice(&d.to_le_bytes());
    }
    t.extend_from_slice(&(table.len() as u32).to_le_bytes());
    t.push(0);
    t.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
    file.write_all(&t)
}

/// One entry of a bundle's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A directory.
    Dir,
    /// A blob's `data`, read from the cache (and re-hashed) when packed.
    Blob(Digest, u64),
    /// A small file (a link) held in memory.
    Bytes(Vec<u8>),
}

/// The tree a bundle holds, keyed by its path with components joined by NUL:
/// NUL sorts below every byte a name holds, so the keys' order is exactly a
/// depth-first walk with names sorted bytewise, parents first (as if keyed by
/// component lists), at one allocation per entry (a list of 50,000 tags
/// holds hundreds of thousands of entries).
///
/// Tags are kept apart, one small record each, and laid out only as they are
/// packed: a tag is seven entries (its directory, `current/link`, and
/// `index/<algorithm>/<hex>/link`), most of a long list's memory otherwise.
#[derive(Debug, Default)]
pub struct Layout {
    entries: BTreeMap<String, Content>,
    /// Each repository's tags, by the key of its `tags` directory (which is in `entries`).
    tags: BTreeMap<String, RepoTags>,
}

/// The tags of one repository: tag → the digest it names.
#[derive(Debug)]
struct RepoTags {
    repo: String,
    tags: BTreeMap<String, Digest>,
}

impl Layout {
    /// Adds a file (and its parent directories) at a root-relative path.
    pub fn add(&mut self, rel: &Path, content: Content) {
        self.insert(rel, content);
    }

    /// [`Layout::add`], giving back the entry's key.
    fn insert(&mut self, rel: &Path, content: Content) -> String {
        let mut key = String::new();
        for c in rel.components() {
            if !key.is_empty() {
                if !self.entries.contains_key(&key) {
                    self.entries.insert(key.clone(), Content::Dir);
                }
                key.push('\0');
            }
            key.push_str(&c.as_os_str().to_string_lossy());
        }
        self.entries.insert(key.clone(), content);
        key
    }

    /// Adds tag `tag` of `repo` naming `digest`: the same `current` and `index` links
    /// [`Layout::add`] would hold, laid out when packed.
    pub fn add_tag(&mut self, repo: &str, tag: &str, digest: &Digest) {
        let key = self.insert(&path_for(Path::new(""), PathSpec::Tags(repo)), Content::Dir);
        self.tags
            .entry(key)
            .or_insert_with(|| RepoTags {
                repo: repo.to_string(),
                tags: BTreeMap::new(),
            })
            .tags
            .insert(tag.to_string(), digest.clone());
    }

    /// Every entry in packing order (tags laid out one at a time, in their place).
    fn each(&self, emit: &mut dyn FnMut(&str, &Content) -> io::Result<()>) -> io::Result<()> {
        for (key, content) in &self.entries {
            emit(key, content)?;
            let Some(repo) = self.tags.get(key) else {
                continue;
            };
            // The tags directory's subtree follows it at once in key order: each tag's
            // entries, from a layout of that tag alone, below the directory.
            let below = format!("{key}\0");
            for (tag, digest) in &repo.tags {
                let link = || Content::Bytes(digest.to_string().into_bytes());
                let mut one = Layout::default();
                one.add(
                    &path_for(
                        Path::new(""),
                        PathSpec::TagIndexLink(&repo.repo, tag, digest),
                    ),
                    link(),
                );
                one.add(
                    &path_for(Path::new(""), PathSpec::TagCurrentLink(&repo.repo, tag)),
                    link(),
                );
                for (k, c) in one.entries.iter().filter(|(k, _)| k.starts_with(&below)) {
                    emit(k, c)?;
                }
            }
        }
        Ok(())
    }
}

/// Writes `index_json` (then its minisign `signature`, when signed) then `layout` as tar entries into `out`. Before each
/// blob, `ready(digest)` is called and must return once the blob is in `cache`,
/// saying whether it must be re-hashed (a blob verified by this very run need not be)
/// (so packing can run while later blobs are still downloading).
pub fn write_tar(
    out: Output,
    index_json: &[u8],
    signature: Option<&[u8]>,
    layout: &Layout,
    cache: &crate::store::Store,
    mtime: u64,
    ready: &mut dyn FnMut(&Digest) -> io::Result<bool>,
) -> io::Result<SplitFile> {
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Deterministic);
    let header = |kind: tar::EntryType, size: u64, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h
    };
    let mut h = header(tar::EntryType::Regular, index_json.len() as u64, 0o644);
    tar.append_data(&mut h, crate::bundlefile::format::INDEX_NAME, index_json)?;
    if let Some(sig) = signature {
        let mut h = header(tar::EntryType::Regular, sig.len() as u64, 0o644);
        tar.append_data(&mut h, crate::bundlefile::sign::SIGNATURE_NAME, sig)?;
    }
    tar.get_mut().boundary()?;
    let mut offsets = OffsetTable {
        format: OFFSETS_FORMAT.to_string(),
        index_digest: Digest::sha256_of(index_json),
        blobs: Vec::new(),
        repos: Default::default(),
    };
    layout.each(&mut |key, content| {
        let rel = key.replace('\0', "/");
        match content {
            Content::Dir => {
                let mut h = header(tar::EntryType::Directory, 0, 0o755);
                tar.append_data(&mut h, format!("{rel}/"), io::empty())?;
            }
            Content::Bytes(b) => {
                let mut h = header(tar::EntryType::Regular, b.len() as u64, 0o644);
                tar.append_data(&mut h, &rel, b.as_slice())?;
                tar.get_mut().boundary()?;
                record_link(&mut offsets, &rel, b);
            }
            Content::Blob(d, size) => {
                let verify = ready(d)?;
                let small = *size <= SMALL_FRAME_BLOB_BYTES;
                if small {
                    tar.get_mut().cut()?;
                }
                let path = cache.path(crate::store::paths::PathSpec::BlobData(d));
                let f = File::open(&path)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
                let mut h = header(tar::EntryType::Regular, *size, 0o644);
                if !verify {
                    tar.append_data(&mut h, &rel, f)?;
                } else {
                    // A blob from an earlier run is re-hashed on its way into the bundle: a corrupt cache can never reach a site.
                    let reader = crate::digest::VerifyingReader::new(f, d.clone(), Some(*size));
                    tar.append_data(&mut h, &rel, reader)
                        .map_err(|e| match e.kind() {
                            io::ErrorKind::InvalidData => io::Error::new(
                                io::ErrorKind::InvalidData,
                                CorruptBlob {
                                    digest: d.clone(),
                                    cause: e.to_string(),
                                },
                            ),
                            _ => e,
                        })?;
                }
                // The data ends where the tar's 512-byte padding after it starts.
                let end = tar.get_mut().position() - size.div_ceil(512) * 512;
                offsets.blobs.push(BlobAt {
                    digest: d.clone(),
                    offset: end,
                    size: *size,
                });
                if small {
                    tar.get_mut().cut()?;
                } else {
                    tar.get_mut().boundary()?;
                }
            }
        }
        Ok(())
    })?;
    let json = serde_json::to_vec(&offsets).map_err(io::Error::other)?;
    let payload = zstd::bulk::compress(&json, 3)?;
    tar.into_inner()?.finish(Some(&payload))
}

/// Notes a link file the archive holds in the offset table (what a reader would find scanning it).
fn record_link(table: &mut OffsetTable, rel: &str, bytes: &[u8]) {
    let Some(target) = std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| Digest::parse(t).ok())
    else {
        return;
    };
    match crate::store::paths::parse_file(rel) {
        Some(LayoutFile::LayerLink(r, d)) => table.repos.entry(r).or_default().layers.push(d),
        Some(LayoutFile::RevisionLink(r, d)) => table.repos.entry(r).or_default().revisions.push(d),
        Some(LayoutFile::TagCurrentLink(r, t)) => {
            table.repos.entry(r).or_default().tags.insert(t, target);
        }
        _ => {}
    }
}

/// A blob whose bytes no longer match its digest, found while packing.
#[derive(Debug, thiserror::Error)]
#[error("blob {digest}: {cause}")]
pub struct CorruptBlob {
    /// The blob.
    pub digest: Digest,
    /// What did not match.
    pub cause: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry of a layout in packing order, with its content.
    fn entries(l: &Layout) -> Vec<(String, Content)> {
        let mut out = Vec::new();
        l.each(&mut |k, c| {
            out.push((k.to_string(), c.clone()));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn tags_laid_out_when_packed_match_tags_added_as_links() {
        let rel = |spec| path_for(Path::new(""), spec);
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        let link = |d: &Digest| Content::Bytes(d.to_string().into_bytes());
        // Tags that sort around each other's names ("v1" < "v1.0" < "v1\0…" in component order).
        let tags = [
            ("r/x", "v1.0", &a),
            ("r/x", "v1", &b),
            ("r", "latest", &a),
            ("r/x", "a", &a),
        ];
        let (mut eager, mut lazy) = (Layout::default(), Layout::default());
        for l in [&mut eager, &mut lazy] {
            l.add(&rel(PathSpec::BlobData(&a)), Content::Blob(a.clone(), 1));
            l.add(&rel(PathSpec::RevisionLink("r/x", &a)), link(&a));
            l.add(&rel(PathSpec::LayerLink("r", &b)), link(&b));
        }
        for (repo, tag, d) in tags {
            eager.add(&rel(PathSpec::TagIndexLink(repo, tag, d)), link(d));
            eager.add(&rel(PathSpec::TagCurrentLink(repo, tag)), link(d));
            lazy.add_tag(repo, tag, d);
        }
        let want = entries(&eager);
        assert_eq!(entries(&lazy), want);
        // Keys sorted as the tar holds them, each tag's seven entries there.
        assert!(want.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(
            want.iter().filter(|(k, _)| k.contains("\0tags\0")).count(),
            4 * 7
        );
    }
}
