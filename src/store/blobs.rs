//! Blob content: verified atomic ingest, reads, and hardlink import.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Result, Store, StoreError};
use crate::digest::{self, Algorithm, Digest, Hasher};
use crate::direct::DirectWriter;
use crate::limits::{IO_BUFFER_BYTES, MAX_MANIFEST_BYTES, WRITE_BEHIND_BYTES};
use crate::manifest::RawManifest;
use crate::store::paths::PathSpec;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Smallest batch [`BlobWriter::write_batch`] writes straight from its chunks; below it, copying
/// into the buffer costs less than a system call of its own.
const VECTORED_MIN_BYTES: usize = 64 * 1024;

/// Smallest average chunk of a batch written straight from its chunks (fewer iovecs per byte than
/// this would cost more than the copy it saves).
const VECTORED_MIN_CHUNK_BYTES: usize = 4 * 1024;

/// A temp file (or directory) in the store's temp directory, unique to this process.
pub(super) fn temp_path(store: &Store, kind: &str) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    store
        .path(PathSpec::Temp)
        .join(format!("{kind}-{}-{n}-{nanos:08x}", std::process::id()))
}

/// Removes temp files whose writer process is gone (a killed run), leaving live ones alone.
pub(super) fn clear_stale_temps(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        let alive = pid
            .is_some_and(|p| p == std::process::id() || Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            match entry.file_type() {
                Ok(t) if t.is_dir() => {
                    let _ = fs::remove_dir_all(entry.path());
                }
                _ => {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// Writes every slice with vectored writes, as `write_all` does for one buffer (std's own
/// `write_all_vectored` is not stable): short writes resumed, interruptions retried.
pub fn write_all_vectored(w: &mut impl Write, slices: &mut [io::IoSlice<'_>]) -> io::Result<()> {
    let mut rest = slices;
    io::IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        match w.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(super) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a file's full content under a temp name and renames it into place,
/// so readers see the old content or the new, never a part. Returns the new
/// file's metadata as written (so a caller can know it from a later writer's).
pub(super) fn write_atomic(
    store: &Store,
    dest: &Path,
    content: &[u8],
    op: &'static str,
) -> Result<fs::Metadata> {
    let parent = dest.parent().expect("layout paths have parents");
    fs::create_dir_all(parent).map_err(StoreError::io("creating directory", parent))?;
    let tmp = temp_path(store, "file");
    let write = || -> io::Result<fs::Metadata> {
        let mut f = File::create(&tmp)?;
        f.write_all(content)?;
        if store.durable {
            f.sync_all()?;
        }
        let written = f.metadata()?;
        fs::rename(&tmp, dest)?;
        if store.durable {
            fsync_dir(parent)?;
        }
        Ok(written)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        StoreError::Io {
            op,
            path: dest.to_path_buf(),
            source: e,
        }
    })
}

/// Streams one blob into the store: bytes go to a temp file while being
/// hashed; [`BlobWriter::commit`] checks them and only then publishes the blob.
/// Dropped without commit, it deletes the temp file.
pub struct BlobWriter {
    store: Store,
    tmp: PathBuf,
    /// Buffered, so the many small chunks a network read yields become few large writes
    /// (`None` while [`BlobWriter::direct`] writes direct).
    file: Option<io::BufWriter<File>>,
    /// `None` when the caller verifies the bytes itself (see [`Store::blob_writer_prehashed`]).
    hasher: Option<Hasher>,
    written: u64,
    /// With [`BlobWriter::write_behind`]: the file offset up to which writeback was started.
    behind: Option<u64>,
    /// With [`BlobWriter::direct`], while the disk takes direct I/O: the file (then `file` is
    /// `None` until the direct writing ends).
    direct: Option<DirectWriter>,
}

impl BlobWriter {
    /// The number of bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The temp file being written, for error messages.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Checks the content against `expected` (and `size`), or takes its own digest when none is given,
    /// then publishes it. Returns the digest and size.
    pub fn commit(mut self, expected: Option<(&Digest, Option<u64>)>) -> Result<(Digest, u64)> {
        let file = self.take_file()?;
        let found = self
            .hasher
            .take()
            .expect("commit is for hashing writers; use commit_prehashed")
            .finish();
        let digest = match expected {
            Some((want, size)) => {
                digest::check(want, size, &found, self.written).map_err(|source| {
                    StoreError::Verify {
                        digest: want.clone(),
                        source,
                    }
                })?;
                want.clone()
            }
            None => found,
        };
        self.publish(file, &digest)?;
        Ok((digest, self.written))
    }

    /// Flushes the buffer and hands back the file.
    fn take_file(&mut self) -> Result<File> {
        if let Some(d) = self.direct.take() {
            return d.into_file().map_err(StoreError::io("writing", &self.tmp));
        }
        let buffered = self.file.take().expect("file present until commit");
        buffered.into_inner().map_err(|e| StoreError::Io {
            op: "writing",
            path: self.tmp.clone(),
            source: e.into_error(),
        })
    }

    /// Syncs (when durable) and moves the verified temp file into place.
    fn publish(&self, file: File, digest: &Digest) -> Result<()> {
        if self.store.durable {
            file.sync_all()
                .map_err(StoreError::io("syncing", &self.tmp))?;
        }
        drop(file);
        publish(&self.store, &self.tmp, digest)
    }
}

impl BlobWriter {
    /// Writes with direct I/O (`O_DIRECT`), for an upload that is synced before it is published
    /// and not read back soon: its bytes go from an aligned buffer to the disk, never copied
    /// into the page cache nor written back from there (the largest CPU cost of taking an
    /// upload, after its hash). Where the file system refuses direct I/O, it is
    /// [`BlobWriter::write_behind`] instead.
    pub fn direct(mut self) -> BlobWriter {
        if self.written > 0 {
            return self.write_behind();
        }
        let (file, _) = self
            .file
            .take()
            .expect("file present until commit")
            .into_parts();
        let direct = DirectWriter::new(file);
        if direct.is_direct() {
            self.direct = Some(direct);
            self
        } else {
            // Refused at the start: nothing is held, so handing the file back cannot fail.
            self.file = Some(Self::buffer(direct.into_file().expect("nothing held")));
            self.write_behind()
        }
    }

    /// The buffered writer every page-cache write goes through.
    fn buffer(file: File) -> io::BufWriter<File> {
        io::BufWriter::with_capacity(IO_BUFFER_BYTES, file)
    }

    /// After a direct writer's call: if the disk refused direct I/O on the way, the rest goes
    /// through the page cache, with write-behind.
    fn after_direct(&mut self, wrote: io::Result<()>) -> io::Result<()> {
        wrote?;
        if self.direct.as_ref().is_some_and(|d| !d.is_direct()) {
            let d = self.direct.take().expect("checked");
            self.file = Some(Self::buffer(d.into_file()?));
            self.behind = Some(0);
        }
        Ok(())
    }

    /// Between two requests of an upload: the whole blocks gathered go to the disk and the
    /// direct buffer shrinks to the rest (under a block), so a waiting upload holds little memory.
    pub fn park(&mut self) -> io::Result<()> {
        let Some(d) = self.direct.as_mut() else {
            return Ok(());
        };
        let parked = d.park();
        self.after_direct(parked)
    }

    /// Starts the disk writing every [`WRITE_BEHIND_BYTES`] as the content arrives, for a
    /// writer whose data is synced before it is published: the sync then waits for the tail
    /// only, not for the whole blob (the disk works while the network does).
    pub fn write_behind(mut self) -> BlobWriter {
        self.behind = Some(0);
        self
    }

    /// The file offset up to which writeback was started (0 without [`BlobWriter::write_behind`]).
    pub fn written_behind(&self) -> u64 {
        self.behind.unwrap_or(0)
    }

    /// Starts (does not wait for) the writeback of what reached the file since the last
    /// start, once that is [`WRITE_BEHIND_BYTES`] or more. A hint: the later sync reports errors.
    fn start_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        let (Some(from), Some(f)) = (self.behind, self.file.as_ref()) else {
            return;
        };
        let upto = self.written - f.buffer().len() as u64;
        if upto - from < WRITE_BEHIND_BYTES {
            return;
        }
        // SAFETY: a valid open fd; the range lies within what was written.
        unsafe {
            libc::sync_file_range(
                f.get_ref().as_raw_fd(),
                from as libc::off64_t,
                (upto - from) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        self.behind = Some(upto);
    }

    /// Appends chunks as they arrived from the network: each is hashed, then all are written
    /// with one vectored write, never copied into the buffer (a batch that is small, or made of
    /// many tiny chunks, goes through the buffer as [`Write::write_all`] would; in direct mode,
    /// every batch is copied into the aligned buffer).
    pub fn write_batch(&mut self, chunks: &[bytes::Bytes]) -> io::Result<()> {
        let total: usize = chunks.iter().map(|c| c.len()).sum();
        if self.direct.is_some()
            || total < VECTORED_MIN_BYTES
            || chunks.len() > total / VECTORED_MIN_CHUNK_BYTES
        {
            return chunks.iter().try_for_each(|c| self.write_all(c));
        }
        let buffered = self.file.as_mut().expect("file present until commit");
        buffered.flush()?;
        let file = buffered.get_mut();
        let mut slices: Vec<io::IoSlice<'_>> = chunks.iter().map(|c| io::IoSlice::new(c)).collect();
        write_all_vectored(file, &mut slices)?;
        // Hashed once all is written, so a failed write leaves the hash and the count of what
        // the file holds as they were.
        if let Some(h) = self.hasher.as_mut() {
            chunks.iter().for_each(|c| h.update(c));
        }
        self.written += total as u64;
        self.start_writeback();
        Ok(())
    }

    /// Makes the bytes written so far durable, for a root that skips the rest of the syncs
    /// (`with_durable(false)`) but must never show a blob whose data a power loss could lose.
    pub fn sync_data(&mut self) -> Result<()> {
        if let Some(d) = self.direct.as_mut() {
            d.end().map_err(StoreError::io("writing", &self.tmp))?;
            // Bytes written after the sync (there are none in an upload) go through the page cache.
            let file = self.direct.take().expect("checked").into_file();
            self.file = Some(Self::buffer(
                file.map_err(StoreError::io("writing", &self.tmp))?,
            ));
        }
        if let Some(f) = self.file.as_mut() {
            f.flush().map_err(StoreError::io("writing", &self.tmp))?;
            f.get_ref()
                .sync_data()
                .map_err(StoreError::io("syncing", &self.tmp))?;
        }
        Ok(())
    }

    /// Publishes content whose digest the caller has already verified while
    /// streaming it (a `VerifyingReader` that reached its end); checks the size.
    pub fn commit_prehashed(mut self, digest: &Digest, size: u64) -> Result<()> {
        let file = self.take_file()?;
        if self.written != size {
            return Err(StoreError::Verify {
                digest: digest.clone(),
                source: digest::VerifyError::SizeMismatch {
                    expected: size,
                    found: self.written,
                },
            });
        }
        self.publish(file, digest)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(d) = self.direct.as_mut() {
            let wrote = d.put(buf);
            self.after_direct(wrote)?;
            if let Some(h) = self.hasher.as_mut() {
                h.update(buf);
            }
            self.written += buf.len() as u64;
            return Ok(buf.len());
        }
        let n = self
            .file
            .as_mut()
            .expect("file present until commit")
            .write(buf)?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        self.written += n as u64;
        self.start_writeback();
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Makes a missing directory `dir` appear whole: it is built in the temp area
/// by `fill` and renamed into place, so a run killed halfway never leaves an
/// empty blob or link directory in the layout. `false` when `dir` exists (or
/// another writer made it first): the caller then writes into it as usual.
/// `kind` starts its temp name (`tag-…` for a tag, which a kill test waits for).
pub(super) fn place_dir(
    store: &Store,
    dir: &Path,
    kind: &str,
    fill: impl FnOnce(&Path) -> io::Result<()>,
) -> Result<bool> {
    if dir.exists() {
        return Ok(false);
    }
    let tmp = temp_path(store, kind);
    let parent = dir.parent().expect("layout directories have parents");
    let build = || -> io::Result<()> {
        fs::create_dir(&tmp)?;
        fill(&tmp)?;
        if store.durable {
            fsync_dir(&tmp)?;
        }
        fs::create_dir_all(parent)
    };
    if let Err(e) = build() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(StoreError::Io {
            op: "building in the temp area",
            path: dir.to_path_buf(),
            source: e,
        });
    }
    match fs::rename(&tmp, dir) {
        Ok(()) => {
            if store.durable {
                fsync_dir(parent).map_err(StoreError::io("syncing", parent))?;
            }
            Ok(true)
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(false)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(StoreError::Io {
                op: "renaming into place",
                path: dir.to_path_buf(),
                source: e,
            })
        }
    }
}

/// Moves a verified temp file to the blob's place without ever replacing an existing blob.
fn publish(store: &Store, tmp: &Path, digest: &Digest) -> Result<()> {
    let dest = store.path(PathSpec::BlobData(digest));
    let parent = dest.parent().expect("blob paths have parents");
    let name = dest.file_name().expect("blob paths name a file");
    if place_dir(store, parent, "dir", |d| fs::hard_link(tmp, d.join(name)))? {
        let _ = fs::remove_file(tmp);
        return Ok(());
    }
    fs::create_dir_all(parent).map_err(StoreError::io("creating directory", parent))?;
    match fs::hard_link(tmp, &dest) {
        Ok(()) => {
            if store.durable {
                fsync_dir(parent).map_err(StoreError::io("syncing", parent))?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(StoreError::Io {
                op: "publishing blob",
                path: dest,
                source: e,
            });
        }
    }
    let _ = fs::remove_file(tmp);
    Ok(())
}

impl Store {
    /// Starts writing a blob whose digest is checked on commit.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let dir = self.path(PathSpec::Temp);
        fs::create_dir_all(&dir).map_err(StoreError::io("creating directory", &dir))?;
        let tmp = temp_path(self, "blob");
        let file = File::create(&tmp).map_err(StoreError::io("creating temp file", &tmp))?;
        Ok(BlobWriter {
            store: self.clone(),
            tmp,
            file: Some(io::BufWriter::with_capacity(IO_BUFFER_BYTES, file)),
            hasher: Some(Hasher::new(Algorithm::Sha256)),
            written: 0,
            behind: None,
            direct: None,
        })
    }

    /// A blob writer that does not hash, for content the caller verifies as it streams (no hash computed twice).
    pub fn blob_writer_prehashed(&self) -> Result<BlobWriter> {
        let mut w = self.blob_writer()?;
        w.hasher = None;
        Ok(w)
    }

    /// Flushes everything written to this root's file system to disk (one `syncfs`), so links written next never point at data that is not there yet.
    pub fn sync_fs(&self) -> Result<()> {
        use std::os::fd::AsRawFd;
        let root = self.path(PathSpec::V2Root);
        let f = File::open(&root).map_err(StoreError::io("opening", &root))?;
        // SAFETY: a valid open fd.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(StoreError::Io {
                op: "syncing the file system of",
                path: root,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Whether the blob's data file exists.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.path(PathSpec::BlobData(digest)).is_file()
    }

    /// The blob's size, or `None` when it is absent.
    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let p = self.path(PathSpec::BlobData(digest));
        match fs::metadata(&p) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io {
                op: "reading metadata of",
                path: p,
                source: e,
            }),
        }
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let p = self.path(PathSpec::BlobData(digest));
        File::open(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::BlobUnknown(digest.clone()),
            _ => StoreError::Io {
                op: "opening blob",
                path: p,
                source: e,
            },
        })
    }

    /// Stores bytes whose digest is computed here (manifests, configs); returns the digest.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::sha256_of(bytes);
        if !self.has_blob(&digest) {
            let mut w = self.blob_writer()?;
            w.write_all(bytes)
                .map_err(StoreError::io("writing", &w.tmp))?;
            w.commit(Some((&digest, Some(bytes.len() as u64))))?;
        }
        Ok(digest)
    }

    /// Streams a blob in from `reader`, verified against `digest` and `size`; a no-op when present.
    pub fn put_blob_reader(
        &self,
        digest: &Digest,
        size: Option<u64>,
        mut reader: impl Read,
    ) -> Result<()> {
        if self.has_blob(digest) {
            return Ok(());
        }
        let mut w = self.blob_writer()?;
        let mut buf = vec![0u8; IO_BUFFER_BYTES];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(StoreError::Io {
                        op: "reading content for blob",
                        path: PathBuf::from(digest.to_string()),
                        source: e,
                    });
                }
            };
            w.write_all(&buf[..n])
                .map_err(StoreError::io("writing", &w.tmp))?;
        }
        w.commit(Some((digest, size)))?;
        Ok(())
    }

    /// Reads a manifest blob (capped) and checks that its bytes hash to `digest`.
    pub fn read_manifest(&self, digest: &Digest) -> Result<RawManifest> {
        let f = self.open_blob(digest)?;
        let p = self.path(PathSpec::BlobData(digest));
        let mut bytes = Vec::new();
        f.take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(StoreError::io("reading manifest", &p))?;
        let found = Digest::sha256_of(&bytes);
        if &found != digest {
            return Err(StoreError::Verify {
                digest: digest.clone(),
                source: digest::VerifyError::DigestMismatch {
                    expected: digest.clone(),
                    found,
                },
            });
        }
        RawManifest::new(bytes, None).map_err(|source| StoreError::Manifest {
            digest: digest.clone(),
            source,
        })
    }

    /// Makes `digest` present here by hardlinking it from `other` (copying, verified, across file systems).
    pub fn import_blob(&self, other: &Store, digest: &Digest) -> Result<()> {
        if self.has_blob(digest) {
            return Ok(());
        }
        let src = other.path(PathSpec::BlobData(digest));
        let dest = self.path(PathSpec::BlobData(digest));
        let parent = dest.parent().expect("blob paths have parents");
        fs::create_dir_all(parent).map_err(StoreError::io("creating directory", parent))?;
        match fs::hard_link(&src, &dest) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !src.exists() => {
                Err(StoreError::BlobUnknown(digest.clone()))
            }
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices || e.raw_os_error() == Some(18) => {
                let size = other.blob_size(digest)?;
                let f = other.open_blob(digest)?;
                self.put_blob_reader(digest, size, f)
            }
            Err(e) => Err(StoreError::Io {
                op: "hardlinking blob to",
                path: dest,
                source: e,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{DIRECT_IO_ALIGN, DIRECT_IO_BYTES};

    /// The bytes of a stored blob.
    fn stored(store: &Store, digest: &Digest) -> Vec<u8> {
        let mut bytes = Vec::new();
        store
            .open_blob(digest)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    }

    /// Batches written straight from their chunks (after bytes still in the buffer, and before
    /// more through it) give the same file and digest as one plain write of all the bytes, for a
    /// large batch, a small one and one of many tiny chunks alike.
    #[test]
    fn write_batch_keeps_the_bytes_and_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap().with_durable(false);
        let piece = |n: usize, seed: u8| -> Vec<u8> {
            (0..n)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect()
        };
        let head = piece(1000, 1);
        let big: Vec<bytes::Bytes> = (0..20)
            .map(|i| piece(16 * 1024 + i, i as u8).into())
            .collect();
        let small: Vec<bytes::Bytes> = (0..3).map(|i| piece(500, 50 + i).into()).collect();
        let tiny: Vec<bytes::Bytes> = (0..200)
            .map(|i| piece(7, (i as u8).wrapping_add(90)).into())
            .collect();
        let tail = piece(3000, 9);
        let mut whole = head.clone();
        let mut w = store.blob_writer().unwrap();
        w.write_all(&head).unwrap();
        for batch in [&big, &small, &tiny, &big] {
            w.write_batch(batch).unwrap();
            batch.iter().for_each(|c| whole.extend_from_slice(c));
        }
        w.write_all(&tail).unwrap();
        whole.extend_from_slice(&tail);
        assert_eq!(w.written(), whole.len() as u64);
        let want = Digest::sha256_of(&whole);
        let (d, size) = w.commit(Some((&want, Some(whole.len() as u64)))).unwrap();
        assert_eq!((d, size), (want.clone(), whole.len() as u64));
        let stored = stored(&store, &want);
        assert!(
            stored == whole,
            "the stored blob differs from the bytes written"
        );
    }

    /// A write-behind writer starts the writeback of each full step as it goes (and a plain one
    /// never does), and the content it publishes is still whole and verified.
    #[test]
    fn write_behind_starts_writeback_as_content_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap().with_durable(false);
        let chunk = vec![7u8; 1024 * 1024];
        let n = 2 * WRITE_BEHIND_BYTES as usize / chunk.len() + 1;
        let mut plain = store.blob_writer().unwrap();
        let mut behind = store.blob_writer().unwrap().write_behind();
        let mut whole = Vec::new();
        for _ in 0..n {
            plain.write_all(&chunk).unwrap();
            behind.write_all(&chunk).unwrap();
            whole.extend_from_slice(&chunk);
        }
        assert_eq!(plain.written_behind(), 0);
        assert!(
            behind.written_behind() >= 2 * WRITE_BEHIND_BYTES - IO_BUFFER_BYTES as u64,
            "writeback started up to {} of {}",
            behind.written_behind(),
            behind.written()
        );
        let want = Digest::sha256_of(&whole);
        behind.sync_data().unwrap();
        let (d, size) = behind.commit(Some((&want, None))).unwrap();
        assert_eq!((d, size), (want.clone(), whole.len() as u64));
        assert_eq!(store.blob_size(&want).unwrap(), Some(whole.len() as u64));
    }

    /// A direct-I/O writer keeps every byte and its order whatever the sizes (empty, under a
    /// block, around a block and around its buffer, several buffers and a tail), whether the
    /// bytes come one write at a time or in batches, parked between two requests, and with
    /// bytes written after a sync.
    #[test]
    fn direct_writes_keep_the_bytes_at_every_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap().with_durable(false);
        let b = DIRECT_IO_BYTES;
        for size in [0, 1, 4095, 4096, 4097, b - 1, b, b + 1, 3 * b + 12345] {
            let whole = crate::fixtures::noise(size, size as u64);
            let mut w = store.blob_writer().unwrap().direct();
            #[cfg(target_os = "linux")]
            {
                let file = match (&w.direct, &w.file) {
                    (Some(d), _) => d.file(),
                    (None, f) => f.as_ref().unwrap().get_ref(),
                };
                assert_eq!(
                    crate::direct::is_o_direct(file),
                    w.direct.is_some(),
                    "O_DIRECT set iff direct mode"
                );
                assert!(
                    w.direct.is_some() || w.behind.is_some(),
                    "refused direct I/O falls back to write-behind"
                );
            }
            let (a, rest) = whole.split_at(size / 3);
            let (mid, tail) = rest.split_at(rest.len() / 2);
            w.write_all(a).unwrap();
            // An upload waiting between two requests holds less than a block (and the
            // alignment's slack).
            w.park().unwrap();
            if let Some((len, mem)) = w.direct.as_ref().and_then(|d| d.held()) {
                assert!(len < DIRECT_IO_ALIGN, "{len} bytes left after parking");
                assert!(mem < 2 * DIRECT_IO_ALIGN, "parked in {mem} bytes");
            }
            let batch: Vec<bytes::Bytes> = mid
                .chunks(7001)
                .map(bytes::Bytes::copy_from_slice)
                .collect();
            w.write_batch(&batch).unwrap();
            w.sync_data().unwrap();
            w.write_all(tail).unwrap();
            assert_eq!(w.written(), size as u64);
            let want = Digest::sha256_of(&whole);
            w.sync_data().unwrap();
            w.commit(Some((&want, Some(size as u64)))).unwrap();
            let stored = stored(&store, &want);
            assert!(stored == whole, "size {size}: the stored blob differs");
        }
    }

    /// A file system that takes no direct I/O at all: the writer goes through the page cache
    /// with write-behind, and keeps every byte.
    #[test]
    fn a_file_system_without_direct_io_gets_write_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap().with_durable(false);
        crate::direct::tests::REFUSE_AT_OPEN.set(true);
        let mut w = store.blob_writer().unwrap().direct();
        crate::direct::tests::REFUSE_AT_OPEN.set(false);
        assert!(w.direct.is_none() && w.behind.is_some());
        let whole = crate::fixtures::noise(2 * WRITE_BEHIND_BYTES as usize + 5, 9);
        w.write_all(&whole).unwrap();
        assert!(
            w.written_behind() > 0,
            "writeback started as the bytes came"
        );
        let want = Digest::sha256_of(&whole);
        w.commit(Some((&want, Some(whole.len() as u64)))).unwrap();
        assert!(stored(&store, &want) == whole, "the stored blob differs");
    }

    /// A disk that refuses a direct write mid-upload (EINVAL: it needs a larger alignment) gets
    /// every byte through the page cache instead, each once and in order, the refused buffer
    /// included, even when the chunk that filled it goes on past it.
    #[test]
    fn a_refused_direct_write_falls_back_to_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap().with_durable(false);
        let whole = crate::fixtures::noise(3 * DIRECT_IO_BYTES + 777, 5);
        let mut w = store.blob_writer().unwrap().direct();
        if w.direct.is_none() {
            return; // this file system takes no direct I/O at all: nothing to refuse
        }
        let (a, b) = whole.split_at(DIRECT_IO_BYTES + 100);
        w.write_all(a).unwrap(); // one buffer written direct
        w.direct.as_mut().unwrap().refuse_next();
        w.write_all(b).unwrap(); // fills the next one and goes on past it
        assert!(w.direct.is_none(), "direct I/O ended by the refusal");
        let want = Digest::sha256_of(&whole);
        w.sync_data().unwrap();
        w.commit(Some((&want, Some(whole.len() as u64)))).unwrap();
        let stored = stored(&store, &want);
        assert!(stored == whole, "the stored blob differs");
    }
}
