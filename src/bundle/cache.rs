//! The bundle cache's bookkeeping: an advisory lock (`flock`) held shared by
//! every bundle run and exclusive by `ferry cache prune` and `gc`, never waited
//! on; one record per bundle run of the images it used; and the gc that keeps
//! only what the kept records' images reference (walked with the one image
//! walk), removing the rest through the store's crash-safe gc.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::store::paths::PathSpec;
use crate::store::{GcReport, Store, StoreError};

/// Why a cache operation was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The lock is held the other way (a bundle run, or a prune/gc).
    #[error("the cache {} is in use by {who} (pid {pid}); try again when it has finished", cache.display())]
    InUse {
        /// The cache directory.
        cache: PathBuf,
        /// What holds it.
        who: &'static str,
        /// The process that last took the lock, as it wrote it (`?` when unknown).
        pid: String,
    },
    /// Reading or writing the cache's own files failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A record that does not parse.
    #[error("{}: not a ferry cache record: {why}", path.display())]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// The parse error.
        why: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The cache's advisory lock, held until dropped (the kernel releases it with the process, too).
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

/// Takes the lock shared (a bundle run): refused at once if a prune or gc holds it.
pub fn lock_shared(cache: &Path) -> Result<CacheLock, CacheError> {
    lock(cache, libc::LOCK_SH, "a running ferry cache prune or gc")
}

/// Takes the lock exclusive (prune, gc): refused at once if a bundle run holds it.
pub fn lock_exclusive(cache: &Path) -> Result<CacheLock, CacheError> {
    lock(cache, libc::LOCK_EX, "a running bundle")
}

fn lock(cache: &Path, how: libc::c_int, holder: &'static str) -> Result<CacheLock, CacheError> {
    let path = Store::open(cache).path(PathSpec::CacheLock);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io("opening", &path))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    let r = unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(CacheError::InUse {
                cache: cache.to_path_buf(),
                who: holder,
                pid: if pid.is_empty() {
                    "?".into()
                } else {
                    pid.into()
                },
            });
        }
        return Err(io("locking", &path)(e));
    }
    // Who holds it, for the message another process prints (a shared holder may overwrite another's).
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| write!(file, "{}", std::process::id()));
    Ok(CacheLock { _file: file })
}

/// One bundle run's use of the cache: the images (top manifests per repository) it bundled.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// When the run finished, in seconds since the epoch.
    pub created: u64,
    /// The bundle it wrote.
    pub output: String,
    /// The images, each a repository and its top manifest digest.
    pub images: Vec<RecordImage>,
}

/// An image a bundle run used.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordImage {
    /// Repository in the bundle.
    pub repository: String,
    /// Top manifest digest.
    pub digest: Digest,
}

/// Writes a run's record (temp file and rename: a reader never sees half of one).
pub fn record(cache: &Path, rec: &RunRecord) -> Result<PathBuf, CacheError> {
    let dir = Store::open(cache).path(PathSpec::CacheRuns);
    fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    // Names sort by time (nanoseconds), then by process: the order `prune --keep-last` keeps by.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("{nanos:024}-{:010}", std::process::id());
    let path = dir.join(format!("{name}.json"));
    let tmp = dir.join(format!(".{name}.tmp"));
    let bytes = serde_json::to_vec_pretty(rec).expect("a record serialises");
    fs::write(&tmp, bytes).map_err(io("writing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("renaming", &tmp))?;
    Ok(path)
}

/// Every record, oldest first, with its file.
pub fn records(cache: &Path) -> Result<Vec<(PathBuf, RunRecord)>, CacheError> {
    let dir = Store::open(cache).path(PathSpec::CacheRuns);
    let mut out = Vec::new();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("listing", &dir)(e)),
    };
    for e in rd {
        let p = e.map_err(io("listing", &dir))?.path();
        let is_record = p.extension().is_some_and(|x| x == "json")
            && !p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !is_record {
            continue;
        }
        let bytes = fs::read(&p).map_err(io("reading", &p))?;
        let rec = serde_json::from_slice(&bytes).map_err(|e| CacheError::BadRecord {
            path: p.clone(),
            why: e.to_string(),
        })?;
        out.push((p, rec));
    }
    out.sort_by(|(a, _), (b, _)| a.file_name().cmp(&b.file_name()));
    Ok(out)
}

/// Drops all but the `keep` newest records (exclusive lock held by the caller); returns how many went.
pub fn prune(cache: &Path, keep: usize, _lock: &CacheLock) -> Result<usize, CacheError> {
    let all = records(cache)?;
    let drop = all.len().saturating_sub(keep);
    for (p, _) in &all[..drop] {
        fs::remove_file(p).map_err(io("removing", p))?;
    }
    Ok(drop)
}

/// Removes every blob no kept record's image references (exclusive lock held by the caller).
/// Each kept image is walked in the cache with the one image walk; what it reaches is kept.
pub fn gc(cache: &Path, _lock: &CacheLock) -> Result<GcReport, CacheError> {
    let store = Store::open(cache);
    if !store.exists() {
        return Ok(GcReport::default());
    }
    let mut keep: HashSet<Digest> = HashSet::new();
    for (_, rec) in records(cache)? {
        for img in &rec.images {
            if keep.contains(&img.digest) || !store.has_blob(&img.digest) {
                continue;
            }
            let w = store.walk(&img.digest)?;
            keep.extend(w.manifests().map(|m| m.digest().clone()));
            keep.extend(w.blobs.iter().chain(&w.foreign).map(|b| b.digest.clone()));
        }
    }
    Ok(store.collect_garbage(&keep)?)
}

/// Blob count and bytes of the cache (for `cache ls`).
pub fn usage(cache: &Path) -> Result<(usize, u64), CacheError> {
    let (blobs, _) = crate::store::paths::list_blobs(cache).map_err(io("listing", cache))?;
    let bytes = blobs
        .iter()
        .map(|(_, p)| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    Ok((blobs.len(), bytes))
}
