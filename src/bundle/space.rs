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
    let mut p = path.to_path_buf();
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

/// Checks that `cache` can take `cache_bytes` and `output` `output_bytes` (summed when they share a file system).
pub fn check(
    cache: &Path,
    cache_bytes: u64,
    output: &Path,
    output_bytes: u64,
) -> Result<(), SpaceError> {
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
    let Some((_, free)) = fs_info(path) else {
        return Ok(());
    };
    let need = bytes + bytes / 50 + 16 * 1024 * 1024;
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
