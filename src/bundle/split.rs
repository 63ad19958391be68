//! Where a bundle's bytes go while it is packed: one temp file, or with
//! `--split-size` a run of temp parts each at most that size, renamed into
//! place as `NAME.000`, `NAME.001`, … only when the whole bundle is written
//! (the first part last, so a reader given `NAME.000` never sees a partial
//! set). `cat NAME.0*` is byte for byte the bundle unsplit.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::bundlefile::parts::{MAX_PARTS, part_path};
use crate::direct::DirectWriter;

/// The bundle file(s) being written, under temp names until [`SplitFile::commit`]. Written
/// with direct I/O where the file system takes it: a bundle is synced before it is renamed into
/// place and not read back by this run, so its bytes need not pass through the page cache.
pub struct SplitFile {
    dir: PathBuf,
    /// `-o`'s file name.
    name: String,
    limit: Option<u64>,
    /// Temp paths and files, in order.
    parts: Vec<(PathBuf, DirectWriter)>,
    in_part: u64,
    total: u64,
    committed: bool,
}

impl SplitFile {
    /// Temp name of the whole file (unsplit) or of part `i` (split), in `dir`.
    fn temp_name(&self, i: Option<usize>) -> PathBuf {
        let pid = std::process::id();
        match i {
            None => self.dir.join(format!(".{}.tmp-{pid}", self.name)),
            Some(i) => self.dir.join(format!(".{}.{i:03}.tmp-{pid}", self.name)),
        }
    }

    /// Starts writing `dir/name`; with `limit`, in parts of at most `limit` bytes (at least 1).
    pub fn create(dir: &Path, name: &str, limit: Option<u64>) -> io::Result<SplitFile> {
        let mut f = SplitFile {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            limit: limit.map(|l| l.max(1)),
            parts: Vec::new(),
            in_part: 0,
            total: 0,
            committed: false,
        };
        f.next_part()?;
        Ok(f)
    }

    fn next_part(&mut self) -> io::Result<()> {
        let i = self.parts.len();
        if self.limit.is_some() && i >= MAX_PARTS {
            return Err(io::Error::other(format!(
                "more than {MAX_PARTS} parts: give a larger --split-size"
            )));
        }
        if let Some((_, last)) = self.parts.last_mut() {
            last.end()?;
            start_writeback(last.file());
        }
        let path = self.temp_name(self.limit.map(|_| i));
        let file = DirectWriter::new(File::create(&path)?);
        self.parts.push((path, file));
        self.in_part = 0;
        Ok(())
    }

    /// Asks the kernel to start writing back the current part (so the final fsync waits less),
    /// when it goes through the page cache.
    pub fn writeback_hint(&self) {
        if let Some((_, f)) = self.parts.last().filter(|(_, f)| !f.is_direct()) {
            start_writeback(f.file());
        }
    }

    /// Bytes written so far (over every part).
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Writes the last bytes held in memory and syncs every part: the end of writing.
    pub fn sync_all(&mut self) -> io::Result<()> {
        if let Some((_, last)) = self.parts.last_mut() {
            last.end()?;
        }
        self.parts.iter().try_for_each(|(_, f)| f.file().sync_all())
    }

    /// Renames the temp file(s) to `output` (or `output.000`, … with the first part last) and
    /// removes parts of an earlier, longer split of the same name, so `cat output.0*` is this
    /// bundle. Returns the path a reader is given.
    pub fn commit(mut self, output: &Path) -> io::Result<PathBuf> {
        if let Some((_, last)) = self.parts.last_mut() {
            last.end()?;
        }
        self.committed = true;
        if self.limit.is_none() {
            let (tmp, _) = &self.parts[0];
            std::fs::rename(tmp, output)?;
            return Ok(output.to_path_buf());
        }
        let n = self.parts.len();
        for i in n..MAX_PARTS {
            match std::fs::remove_file(part_path(output, i)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for (i, (tmp, _)) in self.parts.iter().enumerate().rev() {
            std::fs::rename(tmp, part_path(output, i))?;
        }
        Ok(part_path(output, 0))
    }
}

/// Schedules writeback of a whole file (SYNC_FILE_RANGE_WRITE from 0 to its end).
fn start_writeback(f: &File) {
    // SAFETY: a valid open fd; the call only schedules I/O.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

impl Write for SplitFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(limit) = self.limit
            && self.in_part >= limit
        {
            self.next_part()?;
        }
        let room = self.limit.map_or(u64::MAX, |l| l - self.in_part);
        let take = (buf.len() as u64).min(room) as usize;
        let n = self
            .parts
            .last_mut()
            .expect("one part")
            .1
            .write(&buf[..take])?;
        self.in_part += n as u64;
        self.total += n as u64;
        Ok(n)
    }
    /// Unsplit, straight to the file (a stored frame's headers and bytes in one call); split,
    /// as `write` when the slices would cross into the next part.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        if self
            .limit
            .is_some_and(|limit| self.in_part >= limit || len > limit - self.in_part)
        {
            return match bufs.iter().find(|b| !b.is_empty()) {
                Some(b) => self.write(b),
                None => Ok(0),
            };
        }
        let n = self
            .parts
            .last_mut()
            .expect("one part")
            .1
            .write_vectored(bufs)?;
        self.in_part += n as u64;
        self.total += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SplitFile {
    fn drop(&mut self) {
        if !self.committed {
            for (p, _) in &self.parts {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_concatenate_to_the_whole_and_stale_parts_go() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("b.tar");
        std::fs::write(part_path(&out, 5), b"stale").unwrap();
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let mut f = SplitFile::create(dir.path(), "b.tar", Some(300)).unwrap();
        for chunk in data.chunks(77) {
            f.write_all(chunk).unwrap();
        }
        assert_eq!(f.len(), 1000);
        let first = f.commit(&out).unwrap();
        assert_eq!(first, part_path(&out, 0));
        let mut cat = Vec::new();
        for i in 0..4 {
            let p = std::fs::read(part_path(&out, i)).unwrap();
            assert!(p.len() <= 300);
            cat.extend(p);
        }
        assert_eq!(cat, data);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left.len(),
            4,
            "only the four parts, no temp or stale part: {left:?}"
        );
    }

    /// Parts of several direct-I/O buffers, cut off a block boundary, hold every byte in order,
    /// each but the last exactly the limit long.
    #[test]
    fn large_parts_written_direct_concatenate_to_the_whole() {
        let data = crate::fixtures::noise(5 * crate::limits::DIRECT_IO_BYTES + 4321, 3);
        for limit in [
            None,
            Some(3 * crate::limits::DIRECT_IO_BYTES as u64 / 2 + 1),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("b.tar");
            let mut f = SplitFile::create(dir.path(), "b.tar", limit).unwrap();
            #[cfg(target_os = "linux")]
            assert!(
                f.parts[0].1.is_direct(),
                "this file system takes direct I/O, so the test must exercise it"
            );
            for chunk in data.chunks(300_007) {
                f.write_all(chunk).unwrap();
            }
            f.sync_all().unwrap();
            let first = f.commit(&out).unwrap();
            let mut cat = Vec::new();
            for i in 0.. {
                let p = if limit.is_none() {
                    first.clone()
                } else {
                    part_path(&out, i)
                };
                let Ok(bytes) = std::fs::read(&p) else { break };
                if let Some(l) = limit
                    && (cat.len() + bytes.len()) < data.len()
                {
                    assert_eq!(bytes.len() as u64, l, "part {i} ends where the limit says");
                }
                cat.extend(bytes);
                if limit.is_none() {
                    break;
                }
            }
            assert!(
                cat == data,
                "limit {limit:?}: the parts differ from what was written"
            );
        }
    }

    #[test]
    fn vectored_writes_split_as_plain_writes_do() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        for limit in [None, Some(300), Some(100_000)] {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("b.tar");
            let mut f = SplitFile::create(dir.path(), "b.tar", limit).unwrap();
            for group in data.chunks(231) {
                let mut slices: Vec<io::IoSlice<'_>> =
                    group.chunks(77).map(io::IoSlice::new).collect();
                let mut rest = &mut slices[..];
                while !rest.is_empty() {
                    let n = f.write_vectored(rest).unwrap();
                    assert!(n > 0);
                    io::IoSlice::advance_slices(&mut rest, n);
                }
            }
            assert_eq!(f.len(), 1000);
            f.commit(&out).unwrap();
            let mut cat = Vec::new();
            for i in 0.. {
                let p = match limit {
                    None if i == 0 => out.clone(),
                    Some(_) => part_path(&out, i),
                    None => break,
                };
                let Ok(bytes) = std::fs::read(&p) else { break };
                assert!(bytes.len() as u64 <= limit.unwrap_or(u64::MAX));
                cat.extend(bytes);
            }
            assert_eq!(cat, data, "limit {limit:?}");
        }
    }
}
