//! A bundle as one byte sequence over one file or over the parts `ferry bundle
//! --split-size` wrote (`NAME.000`, `NAME.001`, …, whose `cat` is the whole
//! bundle): positional reads that cross part boundaries, so every reader
//! (scan, seek table, serving blobs in place) works the same on both.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Suffix of the first part of a split bundle; readers are given this one.
pub const FIRST_PART_SUFFIX: &str = ".000";

/// Most parts a split bundle has (three digits).
pub const MAX_PARTS: usize = 1000;

/// The name of part `i` of a bundle written as `output`: `output.000`, `output.001`, …
pub fn part_path(output: &Path, i: usize) -> PathBuf {
    let mut s = output.as_os_str().to_os_string();
    s.push(format!(".{i:03}"));
    PathBuf::from(s)
}

/// One file of the sequence and where it starts.
#[derive(Debug)]
struct Part {
    path: PathBuf,
    file: File,
    start: u64,
    len: u64,
}

/// The bytes of a bundle, from one file or from its parts in order.
#[derive(Debug)]
pub struct Parts {
    parts: Vec<Part>,
    len: u64,
}

/// Why the parts of a bundle do not make a whole one (each names the part).
#[derive(Debug, thiserror::Error)]
pub enum PartsError {
    /// A file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The part.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The parts are not one unbroken, equal-sized run.
    #[error("{why}")]
    Broken {
        /// What is wrong, naming the part.
        why: String,
    },
}

impl Parts {
    /// Opens `path`; a name ending in `.000` is the first part of a split bundle and every
    /// later part beside it is found; a later part given alone is refused, naming the first.
    pub fn open(path: &Path) -> Result<Parts, PartsError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| PartsError::Io { path: p, source }
        };
        let name = path.to_string_lossy();
        let Some(base) = name.strip_suffix(FIRST_PART_SUFFIX) else {
            if let Some((base, n)) = name.rsplit_once('.')
                && n.len() == 3
                && n.bytes().all(|b| b.is_ascii_digit())
                && Path::new(&format!("{base}{FIRST_PART_SUFFIX}")).exists()
            {
                return Err(PartsError::Broken {
                    why: format!(
                        "{}: a later part of a split bundle; give the first part, {base}{FIRST_PART_SUFFIX}",
                        path.display()
                    ),
                });
            }
            let file = File::open(path).map_err(io(path))?;
            let len = file.metadata().map_err(io(path))?.len();
            return Ok(Parts {
                parts: vec![Part {
                    path: path.to_path_buf(),
                    file,
                    start: 0,
                    len,
                }],
                len,
            });
        };
        let base = PathBuf::from(base);
        // Every NAME.NNN beside the first, so a gap is named rather than read as the end.
        let present = numbered_parts(&base);
        let last = present.iter().copied().max().unwrap_or(0);
        let mut parts: Vec<Part> = Vec::new();
        let mut start = 0;
        for i in 0..=last {
            let p = part_path(&base, i);
            if !present.contains(&i) && i != 0 {
                return Err(PartsError::Broken {
                    why: format!(
                        "{}: part missing ({} exists); copy every part of the bundle",
                        p.display(),
                        part_path(&base, last).display()
                    ),
                });
            }
            let file = File::open(&p).map_err(io(&p))?;
            let len = file.metadata().map_err(io(&p))?.len();
            parts.push(Part {
                path: p,
                file,
                start,
                len,
            });
            start += len;
        }
        let first = parts[0].len;
        let n = parts.len();
        for (i, p) in parts.iter().enumerate() {
            if i + 1 < n && p.len != first {
                return Err(PartsError::Broken {
                    why: format!(
                        "{}: truncated or damaged part: {} bytes, but every part before the last has {first} (the first does)",
                        p.path.display(),
                        p.len
                    ),
                });
            }
            if i + 1 == n && n > 1 && (p.len > first || p.len == 0) {
                return Err(PartsError::Broken {
                    why: format!(
                        "{}: the last part has {} bytes, the first {first}: not parts of one split",
                        p.path.display(),
                        p.len
                    ),
                });
            }
        }
        Ok(Parts { parts, len: start })
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the bundle holds no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bundle came in more than one file (messages then name parts).
    pub fn is_split(&self) -> bool {
        self.parts.len() > 1
    }

    /// The last part, named when the end of a split bundle is not what it should be.
    pub fn last_part(&self) -> &Path {
        &self.parts.last().expect("at least one part").path
    }

    /// The file holding byte `offset` (for messages about a damaged frame).
    pub fn part_at(&self, offset: u64) -> &Path {
        let i = self
            .parts
            .partition_point(|p| p.start + p.len <= offset)
            .min(self.parts.len() - 1);
        &self.parts[i].path
    }

    /// Reads at `offset` from the one part that holds it (a short read at a part's end).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let i = self.parts.partition_point(|p| p.start + p.len <= offset);
        let p = &self.parts[i];
        let within = offset - p.start;
        let n = (buf.len() as u64).min(p.len - within) as usize;
        p.file.read_at(&mut buf[..n], within)
    }

    /// Fills `buf` from `offset`, across part boundaries.
    pub fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "failed to fill whole buffer",
                    ));
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A sequential reader over [`Parts`] from a position.
pub struct PartsReader {
    parts: Arc<Parts>,
    pos: u64,
}

impl PartsReader {
    /// Reads from the start.
    pub fn new(parts: Arc<Parts>) -> PartsReader {
        PartsReader { parts, pos: 0 }
    }
}

impl Read for PartsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.parts.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The numbers `i` for which `base.NNN` exists (three digits, as the writer names them).
fn numbered_parts(base: &Path) -> Vec<usize> {
    let dir = base
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(stem) = base.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix(&stem)?.strip_prefix('.')?;
            (n.len() == 3 && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse::<usize>().ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cross_part_boundaries_and_gaps_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("b");
        let whole: Vec<u8> = (0..250u8).collect();
        for (i, chunk) in whole.chunks(100).enumerate() {
            std::fs::write(part_path(&base, i), chunk).unwrap();
        }
        let p = Parts::open(&part_path(&base, 0)).unwrap();
        assert_eq!(p.len(), 250);
        let mut buf = [0u8; 60];
        p.read_exact_at(&mut buf, 70).unwrap();
        assert_eq!(&buf[..], &whole[70..130]);
        let mut all = Vec::new();
        PartsReader::new(Arc::new(p)).read_to_end(&mut all).unwrap();
        assert_eq!(all, whole);

        let later = Parts::open(&part_path(&base, 1)).unwrap_err().to_string();
        assert!(later.contains("give the first part"), "{later}");

        std::fs::write(part_path(&base, 1), &whole[..99]).unwrap();
        let short = Parts::open(&part_path(&base, 0)).unwrap_err().to_string();
        assert!(short.contains("b.001: truncated"), "{short}");

        std::fs::remove_file(part_path(&base, 1)).unwrap();
        let gap = Parts::open(&part_path(&base, 0)).unwrap_err().to_string();
        assert!(gap.contains("b.001: part missing"), "{gap}");
    }
}
