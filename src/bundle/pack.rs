//! Writing a root into a deterministic tar, optionally as seekable zstd
//! compressed on every core (see `format`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use super::split::SplitFile;
use crate::digest::Digest;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use crate::bundlefile::format::{
    BlobAt, MAX_FRAME_BYTES, MIN_FRAME_BYTES, OFFSETS_FORMAT, OFFSETS_PIECE_FRAME_BYTES,
    OFFSETS_PIECE_MAGIC, OffsetTable, SEEK_TABLE_MAGIC, SEEKABLE_MAGIC, SMALL_FRAME_BLOB_BYTES,
    ZSTD_MAGIC,
};
use crate::limits::WRITE_BEHIND_BYTES;
use crate::store::paths::{LayoutFile, PathSpec, path_for};

/// A file that asks the kernel to start writing back every [`WRITE_BEHIND_BYTES`] (as an
/// upload does), so the final fsync waits for the last few MiB instead of the whole file (the
/// disk works while we are still producing). 32 MiB between requests left a small bundle's
/// fsync waiting ~20 ms for its tail. A no-op while the bundle is written direct (see
/// [`SplitFile`]): its bytes are on the disk as they are written.
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

impl Writeback {
    /// Counts `n` bytes written, starting the writeback every [`WRITE_BEHIND_BYTES`].
    fn wrote(&mut self, n: usize) {
        self.written += n as u64;
        if self.written - self.flushed >= WRITE_BEHIND_BYTES {
            self.file.writeback_hint();
            self.flushed = self.written;
        }
    }
}

impl Write for Writeback {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.wrote(n);
        Ok(n)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = self.file.write_vectored(bufs)?;
        self.wrote(n);
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

    /// Copies exactly `n` bytes of `r` into the stream, read in large pieces straight into the
    /// frame buffer (no 8 KiB bounce buffer); fails if `r` ends first.
    fn copy_from(&mut self, r: &mut dyn Read, n: u64) -> io::Result<()> {
        let copied = match self {
            Output::Plain(w) => io::copy(&mut r.take(n), w)?,
            Output::Zstd(f) => f.copy_from(r, n)?,
        };
        if copied != n {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{copied} bytes where the entry holds {n}"),
            ));
        }
        // Read on to the end: a verifying reader checks the digest there, and more bytes than
        // the entry holds are an error too.
        if r.read(&mut [0u8; 1])? != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than the {n} bytes the entry holds"),
            ));
        }
        Ok(())
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

/// A frame to write: its sequence number, its bytes, and whether to store them as raw blocks.
type Job = (usize, Vec<u8>, bool);
type Done = (usize, io::Result<(Frame, usize)>);

/// A frame ready to be written.
enum Frame {
    /// Compressed by zstd.
    Compressed(Vec<u8>),
    /// Stored as raw blocks ([`write_stored`]): the tar-side bytes themselves and their
    /// checksum, written straight from the buffer (no copy of already-compressed layers).
    Stored { raw: Vec<u8>, checksum: u32 },
}

/// Frame buffers handed back once used, for the next frame: a fresh megabyte from the allocator
/// is fresh pages, and faulting them in cost about a tenth of a cold bundle's CPU. Keeps at most
/// `cap` idle buffers: as many as can be in flight at once (see [`FrameWriter::new`]), so a
/// buffer beyond them, which no later frame could use, goes back to the allocator.
#[derive(Clone)]
struct Pool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    cap: usize,
    /// Buffers ever allocated (the most in flight at once, with the idle ones), for tests.
    #[cfg(test)]
    allocated: Arc<std::sync::atomic::AtomicUsize>,
}

impl Pool {
    /// A pool keeping at most `cap` idle buffers.
    fn new(cap: usize) -> Pool {
        Pool {
            free: Arc::default(),
            cap,
            #[cfg(test)]
            allocated: Arc::default(),
        }
    }

    /// An empty buffer of at least `capacity` bytes, reused when one is free.
    fn take(&self, capacity: usize) -> Vec<u8> {
        match self.free.lock().unwrap().pop() {
            Some(mut b) => {
                b.clear();
                b.reserve(capacity);
                b
            }
            None => {
                #[cfg(test)]
                self.allocated
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Vec::with_capacity(capacity)
            }
        }
    }

    /// Hands `buf` back for reuse (or frees it, when `cap` buffers are idle already).
    fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap();
        if free.len() < self.cap {
            free.push(buf);
        }
    }

    /// Idle buffers held and buffers ever allocated (for tests).
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        (
            self.free.lock().unwrap().len(),
            self.allocated.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

/// The finished file and its seek table: (compressed, decompressed) size per frame.
type Written = io::Result<(SplitFile, Vec<(u32, u32)>)>;

/// Cuts the stream into frames and compresses them on worker threads; the
/// writer thread puts them back in order and records the seek table.
pub struct FrameWriter {
    buf: Vec<u8>,
    /// Bytes of `buf` from blobs that are compressed already (see [`compressed_already`]).
    packed: usize,
    /// Tar bytes taken so far.
    position: u64,
    seq: usize,
    jobs: Option<SyncSender<Job>>,
    /// Tar-side frame buffers, given back by the workers once compressed.
    raw: Pool,
    /// Compressed frame buffers (held here only for tests to count).
    #[cfg(test)]
    compressed: Pool,
    workers: Vec<std::thread::JoinHandle<()>>,
    writer: Option<std::thread::JoinHandle<Written>>,
}

impl FrameWriter {
    /// Starts compressing into `file` at `level` with `threads` workers.
    pub fn new(file: SplitFile, level: i32, threads: usize) -> FrameWriter {
        let threads = threads.max(1);
        // Queues of one frame keep memory flat and every worker fed: raw (tar-side) frames in
        // flight are the one being filled, one waiting and one per worker; compressed ones are
        // one per worker, one waiting, one being written and those the writer holds until the
        // frames before them are done (as a rule fewer than the workers, more while the OS holds
        // one worker back). A stored frame has no compressed buffer: its tar-side one goes the
        // compressed frames' way. 1 MiB each; the pools keep no more idle than that.
        let (job_tx, job_rx) = sync_channel::<Job>(1);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = sync_channel::<Done>(1);
        let (raw, compressed) = (Pool::new(3 * threads + 3), Pool::new(2 * threads + 1));
        let workers = (0..threads)
            .map(|_| {
                let rx = job_rx.clone();
                let tx = done_tx.clone();
                let pools = (raw.clone(), compressed.clone());
                std::thread::spawn(move || compress_worker(rx, tx, level, pools))
            })
            .collect();
        drop(done_tx);
        #[cfg(test)]
        let counted = compressed.clone();
        let pools = (raw.clone(), compressed);
        let writer = std::thread::spawn(move || write_frames(file, done_rx, pools));
        FrameWriter {
            buf: raw.take(MAX_FRAME_BYTES),
            packed: 0,
            raw,
            #[cfg(test)]
            compressed: counted,
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
        // A frame of compressed layer bytes (tar headers and padding aside) is stored, not
        // compressed: zstd would spend most of a cold bundle's compression CPU to find nothing.
        let stored = self.packed * 8 >= self.buf.len() * 7;
        self.packed = 0;
        // Sent before the next buffer is taken: one fewer in flight while the queue is full.
        let chunk = std::mem::take(&mut self.buf);
        let Some(tx) = self.jobs.as_ref() else {
            return Err(io::Error::other("compression threads stopped"));
        };
        if tx.send((self.seq, chunk, stored)).is_err() {
            return Err(self.stopped());
        }
        self.seq += 1;
        self.buf = self.raw.take(MAX_FRAME_BYTES);
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

impl FrameWriter {
    /// Up to `n` bytes of `r` read into the frame buffer's spare room, frames cut exactly where
    /// [`Write::write`] would cut them; returns how many (fewer when `r` ends).
    /// Counts the bytes as compressed already when the first ones read say so.
    fn copy_from(&mut self, r: &mut dyn Read, n: u64) -> io::Result<u64> {
        let mut left = n;
        let mut packed = None;
        while left > 0 {
            let room = (MAX_FRAME_BYTES - self.buf.len()) as u64;
            let start = self.buf.len();
            let got = r.take(room.min(left)).read_to_end(&mut self.buf)? as u64;
            if got == 0 {
                break;
            }
            if *packed.get_or_insert_with(|| compressed_already(&self.buf[start..])) {
                self.packed += got as usize;
            }
            self.position += got;
            left -= got;
            if self.buf.len() == MAX_FRAME_BYTES {
                self.emit()?;
            }
        }
        Ok(n - left)
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

/// Compresses frames as they come, each into a pooled buffer; gives each tar-side buffer back to `pools.0`.
fn compress_worker(
    rx: Arc<Mutex<Receiver<Job>>>,
    tx: SyncSender<Done>,
    level: i32,
    pools: (Pool, Pool),
) {
    let (raw, compressed) = pools;
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
        let Ok((seq, chunk, stored)) = job else {
            return;
        };
        let len = chunk.len();
        let out = if stored {
            let checksum = xxhash_rust::xxh64::xxh64(&chunk, 0) as u32;
            Ok((
                Frame::Stored {
                    raw: chunk,
                    checksum,
                },
                len,
            ))
        } else {
            let mut frame = compressed.take(zstd::zstd_safe::compress_bound(len));
            let out = compressor
                .compress_to_buffer(&chunk, &mut frame)
                .map(|_| (Frame::Compressed(frame), len));
            raw.give(chunk);
            out
        };
        if tx.send((seq, out)).is_err() {
            return;
        }
    }
}

/// Whether content starting with `head` is compressed already (gzip, zstd: what image layers
/// are), so zstd cannot shrink it.
fn compressed_already(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b, 0x08]) || head.starts_with(&ZSTD_MAGIC)
}

/// The most bytes one zstd block holds (RFC 8878, `Block_Maximum_Size`).
const ZSTD_BLOCK_BYTES: usize = 128 * 1024;

/// Writes `data` to `w` as one zstd frame of raw (stored) blocks, with its content size and
/// `checksum` (the low 32 bits of its XXH64): the frame zstd itself writes for bytes it cannot
/// shrink, made without searching them (every zstd reader, and ferry's in-place reader, reads
/// it as any other frame). One vectored write of the headers and the bytes where they lie;
/// returns the frame's size.
fn write_stored(w: &mut impl Write, data: &[u8], checksum: u32) -> io::Result<usize> {
    let size = u32::try_from(data.len()).expect("a frame holds at most MAX_FRAME_BYTES");
    let mut head = [0u8; 9];
    head[..4].copy_from_slice(&ZSTD_MAGIC);
    // Frame header descriptor: a 4-byte content size, single segment, a checksum, no dictionary.
    head[4] = 0b1010_0100;
    head[5..].copy_from_slice(&size.to_le_bytes());
    let checksum = checksum.to_le_bytes();
    // Block headers: last-block bit, type 0 (raw), size. No data: one empty last block.
    let blocks: Vec<&[u8]> = if data.is_empty() {
        vec![data]
    } else {
        data.chunks(ZSTD_BLOCK_BYTES).collect()
    };
    let headers: Vec<[u8; 3]> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let h = (b.len() as u32) << 3 | u32::from(i + 1 == blocks.len());
            let h = h.to_le_bytes();
            [h[0], h[1], h[2]]
        })
        .collect();
    let mut slices = Vec::with_capacity(2 * blocks.len() + 2);
    slices.push(io::IoSlice::new(&head));
    for (h, b) in headers.iter().zip(&blocks) {
        slices.push(io::IoSlice::new(h));
        slices.push(io::IoSlice::new(b));
    }
    slices.push(io::IoSlice::new(&checksum));
    let total = slices.iter().map(|s| s.len()).sum();
    crate::store::write_all_vectored(w, &mut slices)?;
    Ok(total)
}

/// `data` as one stored frame, appended to `out` (see [`write_stored`]).
#[cfg(test)]
fn stored_frame(data: &[u8], out: &mut Vec<u8>) {
    let checksum = xxhash_rust::xxh64::xxh64(data, 0) as u32;
    write_stored(out, data, checksum).expect("a Vec takes every byte");
}

/// Writes the frames in order, giving each buffer back to its pool (`pools`: tar-side,
/// compressed) once written.
fn write_frames(file: SplitFile, rx: Receiver<Done>, pools: (Pool, Pool)) -> Written {
    let (raw, compressed) = pools;
    let mut w = Writeback::new(file);
    let mut pending = BTreeMap::new();
    let mut next = 0usize;
    let mut table = Vec::new();
    for (seq, result) in rx {
        let (frame, raw_len) = result?;
        pending.insert(seq, (frame, raw_len));
        while let Some((frame, raw_len)) = pending.remove(&next) {
            let written = match frame {
                Frame::Compressed(frame) => {
                    w.write_all(&frame)?;
                    let n = frame.len();
                    compressed.give(frame);
                    n
                }
                Frame::Stored {
                    raw: data,
                    checksum,
                } => {
                    let n = write_stored(&mut w, &data, checksum)?;
                    raw.give(data);
                    n
                }
            };
            table.push((written as u32, raw_len as u32));
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

/// Writes `index_json` (then its minisign `signature`, when signed) then `layout` as tar entries into `out`
/// (`index_json` is freed once written: a list of many tags makes it megabytes). Before each
/// blob, `ready(digest)` is called and must return once the blob is in `cache`,
/// saying whether it must be re-hashed (a blob verified by this very run need not be)
/// (so packing can run while later blobs are still downloading).
pub fn write_tar(
    out: Output,
    index_json: Vec<u8>,
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
    tar.append_data(
        &mut h,
        crate::bundlefile::format::INDEX_NAME,
        index_json.as_slice(),
    )?;
    let index_digest = Digest::sha256_of(&index_json);
    drop(index_json);
    if let Some(sig) = signature {
        let mut h = header(tar::EntryType::Regular, sig.len() as u64, 0o644);
        tar.append_data(&mut h, crate::bundlefile::sign::SIGNATURE_NAME, sig)?;
    }
    tar.get_mut().boundary()?;
    let mut offsets = OffsetTable {
        format: OFFSETS_FORMAT.to_string(),
        index_digest,
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
                    append_blob(&mut tar, &mut h, &rel, f)?;
                } else {
                    // A blob from an earlier run is re-hashed on its way into the bundle: a corrupt cache can never reach a site.
                    let reader = crate::digest::VerifyingReader::new(f, d.clone(), Some(*size));
                    append_blob(&mut tar, &mut h, &rel, reader).map_err(|e| match e.kind() {
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

/// Appends a file entry of `h.size()` bytes read from `data`: the header through `tar` (names
/// past 100 bytes get its GNU long-name entry), then the bytes read straight into the output in
/// large pieces (tar's own copy reads 8 KiB at a time: some 20,000 reads for 150 MB), then the
/// padding to 512 bytes. The same bytes as `append_data(h, rel, data)`; a short `data` fails.
fn append_blob(
    tar: &mut tar::Builder<Output>,
    h: &mut tar::Header,
    rel: &str,
    mut data: impl Read,
) -> io::Result<()> {
    let size = h.size()?;
    // No data: tar writes the (long-name entry and the) header only, and no padding.
    tar.append_data(h, rel, io::empty())?;
    let out = tar.get_mut();
    out.copy_from(&mut data, size)?;
    let pad = (512 - size % 512) % 512;
    out.write_all(&[0u8; 512][..pad as usize])
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

    /// A tar of one long-named entry of `data`, through `append_blob` or tar's own `append_data`.
    fn one_entry(zstd: bool, fast: bool, data: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let file = SplitFile::create(dir.path(), "t", None).unwrap();
        let out = if zstd {
            Output::Zstd(FrameWriter::new(file, 1, 2))
        } else {
            Output::Plain(BufWriter::new(Writeback::new(file)))
        };
        let mut tar = tar::Builder::new(out);
        tar.mode(tar::HeaderMode::Deterministic);
        let rel = format!(
            "docker/registry/v2/blobs/sha256/ab/{}/data",
            "ab".repeat(32)
        );
        for _ in 0..2 {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if fast {
                append_blob(&mut tar, &mut h, &rel, data).unwrap();
            } else {
                tar.append_data(&mut h, &rel, data).unwrap();
            }
        }
        let mut out = tar.into_inner().unwrap();
        out.boundary().unwrap();
        out.finish(None)
            .unwrap()
            .commit(&dir.path().join("t.out"))
            .unwrap();
        std::fs::read(dir.path().join("t.out")).unwrap()
    }

    #[test]
    fn blobs_read_in_large_pieces_make_the_same_bytes_as_tars_own_copy() {
        // Past a frame (1 MiB) and not a multiple of 512, so frames and padding are both crossed.
        let data: Vec<u8> = (0..MAX_FRAME_BYTES + 777)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        for zstd in [false, true] {
            assert!(
                one_entry(zstd, true, &data) == one_entry(zstd, false, &data),
                "zstd {zstd}"
            );
        }
        // A source that ends early is an error, not a short entry.
        let dir = tempfile::tempdir().unwrap();
        let file = SplitFile::create(dir.path(), "t", None).unwrap();
        let mut tar = tar::Builder::new(Output::Zstd(FrameWriter::new(file, 1, 1)));
        let mut h = tar::Header::new_gnu();
        h.set_size(10);
        let e = append_blob(&mut tar, &mut h, "x", &b"short"[..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // One that goes on, too; and a verifying reader still checks the digest at the end.
        let e = append_blob(&mut tar, &mut h, "x", &b"0123456789+"[..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let wrong = crate::digest::VerifyingReader::new(
            &b"0123456789"[..],
            Digest::sha256_of(b"9876543210"),
            Some(10),
        );
        let e = append_blob(&mut tar, &mut h, "x", wrong).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn stored_frames_are_the_frames_zstd_writes_for_bytes_it_cannot_shrink() {
        // Pseudo-random bytes: nothing for zstd to find.
        let data = crate::fixtures::noise(MAX_FRAME_BYTES, 1);
        let mut zstd = zstd::bulk::Compressor::new(1).unwrap();
        zstd.include_checksum(true).unwrap();
        zstd.include_contentsize(true).unwrap();
        for n in [
            0,
            1,
            1000,
            ZSTD_BLOCK_BYTES,
            ZSTD_BLOCK_BYTES + 1,
            MAX_FRAME_BYTES,
        ] {
            let mut ours = Vec::new();
            stored_frame(&data[..n], &mut ours);
            // Read by zstd's own decoder, which checks the content size and the checksum.
            assert_eq!(
                zstd::stream::decode_all(&ours[..]).unwrap(),
                &data[..n],
                "{n}"
            );
            // Its blocks and checksum byte for byte what zstd writes (the header may differ: zstd
            // gives a window size where a frame larger than its window needs one).
            if n > 65536 + 256 {
                assert!(
                    zstd.compress(&data[..n]).unwrap().ends_with(&ours[9..]),
                    "{n}"
                );
            }
            // A damaged byte is caught by the checksum.
            if n > 0 {
                let last = ours.len() - 5;
                ours[last] ^= 1;
                assert!(zstd::stream::decode_all(&ours[..]).is_err(), "{n}");
            }
        }
    }

    #[test]
    fn blobs_compressed_already_are_stored_and_others_compressed() {
        // Very compressible bytes, once plain and once behind gzip's magic: only the first shrink.
        let plain: Vec<u8> = (0..3 * MAX_FRAME_BYTES).map(|i| (i % 7) as u8).collect();
        let mut gzip_like = plain.clone();
        gzip_like[..3].copy_from_slice(&[0x1f, 0x8b, 0x08]);
        for (data, stored) in [(&plain, false), (&gzip_like, true)] {
            let packed = one_entry(true, true, data);
            let tar = one_entry(false, true, data);
            let decoded = zstd::stream::decode_all(&packed[..]).unwrap();
            assert!(decoded == tar, "stored {stored}");
            assert_eq!(packed.len() > 2 * data.len(), stored, "{}", packed.len());
        }
    }

    #[test]
    fn frame_buffers_are_no_more_than_the_frames_in_flight() {
        // Hardly compressible bytes, so compressed frames fill their buffers too.
        let data = crate::fixtures::noise(4 * MAX_FRAME_BYTES, 1);
        let threads = 2;
        let (raw_idle, raw_made, out_idle, out_made) = pooled(&data, threads);
        // Tar-side: filling, waiting, one per worker; compressed: one per worker, waiting,
        // being written, held back. How many were in flight at once depends on the scheduler;
        // how many are kept idle does not.
        assert!(raw_made >= 1 && out_made >= 1);
        assert!(raw_idle <= threads + 2, "{raw_idle} tar-side buffers kept");
        assert!(
            out_idle <= 2 * threads + 1,
            "{out_idle} compressed buffers kept"
        );
        // Bytes compressed already are stored from their tar-side buffers: no compressed
        // buffer at all, and the tar-side ones go the compressed ones' way.
        let mut gzip_like = data.clone();
        gzip_like[..3].copy_from_slice(&[0x1f, 0x8b, 0x08]);
        let (raw_idle, raw_made, _, out_made) = pooled(&gzip_like, threads);
        assert_eq!(out_made, 0);
        assert!(raw_made >= 1);
        assert!(
            raw_idle <= 3 * threads + 3,
            "{raw_idle} tar-side buffers kept"
        );
        // Capped: buffers handed back beyond the cap are freed.
        let pool = Pool::new(2);
        for _ in 0..3 {
            pool.give(Vec::with_capacity(8));
        }
        assert_eq!(pool.counts(), (2, 0));
    }

    /// Idle and allocated buffers of both pools (tar-side, compressed) after `data`, as one
    /// blob entry, went ten times through a frame writer with `threads` workers.
    fn pooled(data: &[u8], threads: usize) -> (usize, usize, usize, usize) {
        let dir = tempfile::tempdir().unwrap();
        let file = SplitFile::create(dir.path(), "t", None).unwrap();
        let mut w = FrameWriter::new(file, 1, threads);
        for _ in 0..10 {
            let mut r = data;
            w.copy_from(&mut r, data.len() as u64).unwrap();
        }
        let (raw, compressed) = (w.raw.clone(), w.compressed.clone());
        w.finish(None).unwrap();
        let ((raw_idle, raw_made), (out_idle, out_made)) = (raw.counts(), compressed.counts());
        (raw_idle, raw_made, out_idle, out_made)
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
