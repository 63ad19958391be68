//! A file written front to back with direct I/O (`O_DIRECT`) while the file system takes it:
//! bytes gather in an aligned buffer and go from there to the disk, never copied into the page
//! cache nor written back from there. For files that are synced before they count and are not
//! read back soon (an upload taken by `serve`, a bundle being packed). Where direct I/O is
//! refused, at the start or on the way, every byte goes through the page cache instead, each
//! once and in order.

use std::fs::File;
use std::io::{self, Seek, Write};

use crate::limits::{DIRECT_IO_ALIGN, DIRECT_IO_BYTES};

/// Bytes on their way to a file opened with `O_DIRECT`, gathered in memory aligned to
/// [`DIRECT_IO_ALIGN`] (a plain `Vec` with its start skipped to the boundary: no unsafe code).
struct DirectBuf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
    /// The file offset of the buffer's first byte.
    at: u64,
}

impl DirectBuf {
    fn with_room(room: usize, at: u64) -> DirectBuf {
        let mem = vec![0u8; room + DIRECT_IO_ALIGN];
        let start = mem.as_ptr().align_offset(DIRECT_IO_ALIGN);
        DirectBuf {
            mem,
            start,
            len: 0,
            at,
        }
    }

    /// Bytes it can hold: [`DIRECT_IO_BYTES`], or fewer while shrunk.
    fn room(&self) -> usize {
        (self.mem.len() - self.start).min(DIRECT_IO_BYTES)
    }

    /// The same bytes in a buffer with `room`.
    fn resize(&mut self, room: usize) {
        let mut other = DirectBuf::with_room(room, self.at);
        other.put(self.bytes(self.len));
        *self = other;
    }

    /// Copies as much of `buf` as fits, the buffer grown back to its size first if it was
    /// shrunk; how much that was.
    fn take(&mut self, buf: &[u8]) -> usize {
        if self.room() < DIRECT_IO_BYTES && !buf.is_empty() {
            self.resize(DIRECT_IO_BYTES);
        }
        self.put(buf)
    }

    fn put(&mut self, buf: &[u8]) -> usize {
        let n = buf.len().min(self.room() - self.len);
        let at = self.start + self.len;
        self.mem[at..at + n].copy_from_slice(&buf[..n]);
        self.len += n;
        n
    }

    /// The first `len` bytes gathered.
    fn bytes(&self, len: usize) -> &[u8] {
        &self.mem[self.start..self.start + len]
    }

    /// Drops the first `len` bytes (written out) and moves the rest to the front.
    fn consume(&mut self, len: usize) {
        let rest = self.len - len;
        let at = self.start + len;
        self.mem.copy_within(at..at + rest, self.start);
        self.len = rest;
        self.at += len as u64;
    }
}

/// A file being written front to back, with direct I/O while the file system takes it (see the
/// module's doc). Call [`DirectWriter::end`] (or [`DirectWriter::into_file`]) before syncing:
/// until then the last bytes may still be in memory. After a failed write the file's content is
/// undefined (part of the bytes may be held): the caller abandons it, as an upload or a bundle
/// does; `end` alone may be retried.
pub struct DirectWriter {
    file: File,
    /// `Some` while writing direct; `None` once refused or ended (the page cache's turn).
    buf: Option<DirectBuf>,
    /// Tests: the disk refuses the next direct write (EINVAL), as one needing a larger alignment would.
    #[cfg(test)]
    refuse: bool,
}

impl DirectWriter {
    /// Starts writing `file` at its current position, direct when the file system takes
    /// `O_DIRECT` and the position is aligned; else through the page cache.
    pub fn new(mut file: File) -> DirectWriter {
        let at = file.stream_position().ok();
        #[cfg(test)]
        let at = at.filter(|_| !tests::REFUSE_AT_OPEN.get());
        let buf = match at {
            Some(at) if at % DIRECT_IO_ALIGN as u64 == 0 && set_direct(&file, true).is_ok() => {
                // Grown at the first byte: a file opened with nothing to write yet holds nothing.
                Some(DirectBuf::with_room(0, at))
            }
            _ => None,
        };
        DirectWriter {
            file,
            buf,
            #[cfg(test)]
            refuse: false,
        }
    }

    /// Whether bytes still go to the disk direct (false once refused or ended).
    pub fn is_direct(&self) -> bool {
        self.buf.is_some()
    }

    /// The file, to sync or read its metadata (writing to it behind this writer's back would
    /// put bytes out of order).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Appends all of `buf`: through the direct buffer, written out each time it is full, or
    /// straight to the file once direct I/O has ended.
    pub fn put(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let Some(d) = self.buf.as_mut() else {
                return self.file.write_all(buf);
            };
            let n = d.take(buf);
            buf = &buf[n..];
            if d.len == DIRECT_IO_BYTES {
                self.flush_direct(DIRECT_IO_BYTES)?;
            }
        }
        Ok(())
    }

    /// Writes the first `len` gathered bytes (a multiple of [`DIRECT_IO_ALIGN`]) at the file's
    /// offset (a multiple too) and keeps the rest. A disk that refuses the alignment ends direct
    /// I/O: the bytes are written through the page cache, as every later one.
    fn flush_direct(&mut self, len: usize) -> io::Result<()> {
        let d = self.buf.as_mut().expect("direct mode");
        if len > 0 {
            #[cfg(test)]
            let refused = self.refuse;
            #[cfg(not(test))]
            let refused = false;
            let wrote = if refused {
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            } else {
                write_at(&mut self.file, d.bytes(len), d.at)
            };
            match wrote {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    set_direct(&self.file, false)?;
                    // From the buffer's own offset again: a part written before the refusal
                    // is written over with the same bytes, never twice (a retry after an
                    // error here writes them over once more).
                    write_at(&mut self.file, d.bytes(d.len), d.at)?;
                    self.buf = None;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        d.consume(len);
        Ok(())
    }

    /// While the writer waits (an upload between two requests): the whole blocks gathered go
    /// to the disk and the buffer shrinks to the rest (under a block), so it holds little memory.
    pub fn park(&mut self) -> io::Result<()> {
        let Some(d) = self.buf.as_ref() else {
            return Ok(());
        };
        self.flush_direct(d.len / DIRECT_IO_ALIGN * DIRECT_IO_ALIGN)?;
        if let Some(d) = self.buf.as_mut() {
            d.resize(d.len);
        }
        Ok(())
    }

    /// Ends direct I/O: the whole blocks gathered go out direct, the tail (less than a block)
    /// through the page cache with `O_DIRECT` cleared, as every later byte. A no-op once ended.
    pub fn end(&mut self) -> io::Result<()> {
        let Some(d) = self.buf.as_ref() else {
            return Ok(());
        };
        self.flush_direct(d.len / DIRECT_IO_ALIGN * DIRECT_IO_ALIGN)?;
        let Some(d) = self.buf.as_ref() else {
            return Ok(()); // refused meanwhile: all is written
        };
        set_direct(&self.file, false)?;
        // At its own offset, and the buffer dropped only once written: a retry after an error
        // writes the same bytes at the same place.
        write_at(&mut self.file, d.bytes(d.len), d.at)?;
        self.buf = None;
        Ok(())
    }

    /// Ends direct I/O ([`DirectWriter::end`]) and hands back the file, every byte in it.
    pub fn into_file(mut self) -> io::Result<File> {
        self.end()?;
        Ok(self.file)
    }

    /// Tests: bytes waiting in memory and the memory held for them.
    #[cfg(test)]
    pub(crate) fn held(&self) -> Option<(usize, usize)> {
        self.buf.as_ref().map(|d| (d.len, d.mem.len()))
    }

    /// Tests: the disk refuses the next direct write.
    #[cfg(test)]
    pub(crate) fn refuse_next(&mut self) {
        self.refuse = true;
    }
}

impl Write for DirectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.buf.is_none() {
            return self.file.write(buf);
        }
        self.put(buf)?;
        Ok(buf.len())
    }
    /// Direct, every slice into the buffer; else one vectored write to the file.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if self.buf.is_none() {
            return self.file.write_vectored(bufs);
        }
        let mut n = 0;
        for b in bufs {
            self.put(b)?;
            n += b.len();
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes `bytes` at `offset` and leaves the file's position after them (where the next write,
/// direct or not, goes).
fn write_at(file: &mut File, bytes: &[u8], offset: u64) -> io::Result<()> {
    file.seek(io::SeekFrom::Start(offset))?;
    file.write_all(bytes)
}

/// Sets or clears `O_DIRECT` on an open file (Linux lets `F_SETFL` change it).
#[cfg(target_os = "linux")]
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a valid open fd, with flags it returned.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_direct(_file: &File, _on: bool) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Whether `file` has `O_DIRECT` set now.
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn is_o_direct(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFL on a valid open fd.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) & libc::O_DIRECT != 0 }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    thread_local! {
        /// Tests: writers opened on this thread take no direct I/O, as on a file system without it.
        pub(crate) static REFUSE_AT_OPEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Every byte in order, whatever the write sizes, parked or not, vectored or not, and with
    /// bytes written after direct I/O ended.
    #[test]
    fn direct_writes_keep_the_bytes_at_every_size() {
        let dir = tempfile::tempdir().unwrap();
        let b = DIRECT_IO_BYTES;
        for size in [0, 1, 4095, 4096, 4097, b - 1, b, b + 1, 3 * b + 12345] {
            let whole = crate::fixtures::noise(size, size as u64);
            let path = dir.path().join(format!("f{size}"));
            let mut w = DirectWriter::new(File::create(&path).unwrap());
            #[cfg(target_os = "linux")]
            assert_eq!(
                is_o_direct(w.file()),
                w.is_direct(),
                "O_DIRECT set iff direct"
            );
            let (a, rest) = whole.split_at(size / 3);
            let (mid, tail) = rest.split_at(rest.len() / 2);
            w.write_all(a).unwrap();
            w.park().unwrap();
            if let Some((len, mem)) = w.held() {
                assert!(len < DIRECT_IO_ALIGN, "{len} bytes left after parking");
                assert!(mem < 2 * DIRECT_IO_ALIGN, "parked in {mem} bytes");
            }
            let slices: Vec<io::IoSlice<'_>> = mid.chunks(7001).map(io::IoSlice::new).collect();
            let wrote = w.write_vectored(&slices).unwrap();
            if w.is_direct() {
                assert_eq!(wrote, mid.len(), "direct, every slice is taken");
            }
            w.write_all(&mid[wrote..]).unwrap();
            w.end().unwrap();
            assert!(!w.is_direct());
            w.write_all(tail).unwrap();
            let f = w.into_file().unwrap();
            #[cfg(target_os = "linux")]
            assert!(!is_o_direct(&f), "O_DIRECT cleared at the end");
            drop(f);
            assert!(
                std::fs::read(&path).unwrap() == whole,
                "size {size}: bytes differ"
            );
        }
    }

    /// A disk that refuses a direct write on the way (EINVAL: it needs a larger alignment) gets
    /// every byte through the page cache instead, each once and in order, the refused buffer
    /// included, even when the write that filled it goes on past it.
    #[test]
    fn a_refused_direct_write_falls_back_to_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let whole = crate::fixtures::noise(3 * DIRECT_IO_BYTES + 777, 5);
        let mut w = DirectWriter::new(File::create(&path).unwrap());
        if !w.is_direct() {
            return; // this file system takes no direct I/O at all: nothing to refuse
        }
        let (a, b) = whole.split_at(DIRECT_IO_BYTES + 100);
        w.write_all(a).unwrap(); // one buffer written direct
        w.refuse_next();
        w.write_all(b).unwrap(); // fills the next one and goes on past it
        assert!(!w.is_direct(), "direct I/O ended by the refusal");
        drop(w.into_file().unwrap());
        assert!(std::fs::read(&path).unwrap() == whole, "bytes differ");
    }

    /// A file whose position is not on a block boundary is written through the page cache.
    #[test]
    fn an_unaligned_start_goes_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(b"abc").unwrap();
        let mut w = DirectWriter::new(f);
        assert!(!w.is_direct());
        w.write_all(b"def").unwrap();
        drop(w.into_file().unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
    }
}
