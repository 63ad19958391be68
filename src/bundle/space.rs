//! Free-space check before a run writes anything big (a full disk halfway is the worst way to fail).

use std::path::{Path, PathBuf};

/// Not enough room on a file system.
#[derive(Debug, thiserror::Error)]
#[error("not enough disk space on {}: need {need} bytes, {have} available ({missing} missing)", path.display())]
pub struct SpaceError {
    /// A path on the file system.
    pub path: PathBuf,
    /// Bytes needed.
    pub need: u64,
    /// Bytes available.
    pub have: u64,
    /// need - have.
    pub missing: u64,
}

fn fs_info(path: &Path) -> Option<(u64, u64)> {
    // A bare file name's parent is "": that is the current directory, not "no file system".
    let mut p = if path.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        path.to_path_buf()
    };
    while !p.exists() {
        p = p.parent()?.to_path_buf();
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_fsid as u64, st.f_bavail as u64 * st.f_frsize as u64))
}

/// Bytes free for an unprivileged writer on the file system holding `path` (or its nearest
/// existing parent); `None` when it cannot be asked.
pub(super) fn available(path: &Path) -> Option<u64> {
    fs_info(path).map(|(_, free)| free)
}

/// A directory a run must write to, checked before any blob moves: it must exist, be a
/// directory, and take a file (probed by creating and removing one, which also catches a
/// read-only mount where permission bits would not, e.g. for root).
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {cause}; nothing was downloaded", path.display())]
pub struct NotWritable {
    /// What the directory is for ("output directory", "cache").
    pub what: &'static str,
    /// The directory.
    pub path: PathBuf,
    /// Why.
    pub cause: String,
}

/// Checks that `dir` exists and a file can be created in it (see [`NotWritable`]).
pub fn check_writable(dir: &Path, what: &'static str) -> Result<(), NotWritable> {
    let fail = |cause: String| NotWritable {
        what,
        path: dir.to_path_buf(),
        cause,
    };
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail("no such directory".into()));
        }
        Err(e) => return Err(fail(e.to_string())),
        Ok(m) if !m.is_dir() => return Err(fail("not a directory".into())),
        Ok(_) => {}
    }
    tempfile::Builder::new()
        .prefix(".ferry-write-probe")
        .tempfile_in(dir)
        .map(drop)
        .map_err(|e| {
            // tempfile's error names the path already; keep only the OS cause.
            let cause = match e.raw_os_error() {
                Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
                None => e.to_string(),
            };
            fail(format!("not writable ({cause})"))
        })
}

/// Whether tests turned the checks off ([`crate::limits::ENV_NO_SPACE_CHECK`]): tests of
/// a disk that fills up mid-run (after the check passed).
fn skipped() -> bool {
    std::env::var_os(crate::limits::ENV_NO_SPACE_CHECK).is_some()
}

/// Checks that `cache` can take `cache_bytes` and `output` `output_bytes` (summed when they share a file system).
pub fn check(
    cache: &Path,
    cache_bytes: u64,
    output: &Path,
    output_bytes: u64,
) -> Result<(), SpaceError> {
    if skipped() {
        return Ok(());
    }
    let (Some((cfs, cfree)), Some((ofs, ofree))) = (fs_info(cache), fs_info(output)) else {
        return Ok(());
    };
    let margin = |n: u64| n + n / 50 + 16 * 1024 * 1024;
    let checks = if cfs == ofs {
        vec![(cache, margin(cache_bytes + output_bytes), cfree)]
    } else {
        vec![
            (cache, margin(cache_bytes), cfree),
            (output, margin(output_bytes), ofree),
        ]
    };
    for (path, need, have) in checks {
        if need > have {
            return Err(SpaceError {
                path: path.to_path_buf(),
                need,
                have,
                missing: need - have,
            });
        }
    }
    Ok(())
}

/// Checks that the file system holding `path` can take `bytes` more (with the same margin as [`check`]).
pub fn check_one(path: &Path, bytes: u64) -> Result<(), SpaceError> {
    if skipped() {
        return Ok(());
    }
    let Some((_, free)) = fs_info(path) else {
        return Ok(());
    };
    let need = bytes
        .saturating_add(bytes / 50)
        .saturating_add(16 * 1024 * 1024);
    if bytes > 0 && need > free {
        return Err(SpaceError {
            path: path.to_path_buf(),
            need,
            have: free,
            missing: need - free,
        });
    }
    Ok(())
}
