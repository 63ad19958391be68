//! Which repository of a target registry holds which blob, so a blob is
//! mounted (`POST ?mount=&from=`) instead of uploaded again, and asked about
//! (`HEAD`) at most once per repository in a run. What this run saw is
//! certain; what earlier runs saw (the optional file, as containers/image's
//! blob-info cache) is only a candidate for a mount, which the registry
//! checks: a stale entry costs one refused mount and is forgotten.
//!
//! The file holds one `HOST DIGEST REPOSITORY` line per location, newest
//! last. A run reads only its target hosts' lines, and adds what it learnt in
//! one append, so its cost follows what it copies, not the file's size. Once
//! the file passes [`COMPACT_BYTES`] it is rewritten whole (temp file and
//! rename) with the newest [`MAX_SAVED`] distinct lines; runs appending
//! meanwhile lose at most a few entries, never the file.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::digest::Digest;

/// Most locations kept in the file (the newest) when it is compacted.
pub const MAX_SAVED: usize = 50_000;

/// Size past which the file is compacted: about twice what [`MAX_SAVED`] lines take.
pub const COMPACT_BYTES: u64 = 10 * 1024 * 1024;

/// Most repositories remembered per blob and registry (mount candidates).
const MAX_REPOS_PER_BLOB: usize = 4;

/// (registry host, blob digest).
type Key = (String, Digest);

/// The blob locations of one run, optionally backed by a file kept between runs.
#[derive(Debug, Default)]
pub struct Pushed {
    /// Locations seen in this run (a HEAD said present, or the blob was put or mounted): certain.
    seen: Mutex<HashMap<Key, Vec<String>>>,
    /// The file, when locations are kept between runs.
    file: Option<PathBuf>,
    /// Locations read from the file, per host on its first use: candidates only.
    saved: Mutex<HashMap<String, HashMap<Digest, Vec<String>>>>,
    /// Locations learnt in this run, in order, to be added to the file.
    learnt: Mutex<Vec<(String, Digest, String)>>,
    /// Whether each (host, repository) had no tag when first asked: one question per
    /// repository and run, however many of its images the run writes.
    new_repos: Mutex<HashMap<(String, String), Arc<NewRepo>>>,
}

/// The answer to "has this repository no tag?", asked once and shared.
#[derive(Debug, Default)]
pub struct NewRepo {
    /// The answer, once known.
    pub answer: tokio::sync::OnceCell<bool>,
    /// Whether a background question was started already.
    pub asked: std::sync::atomic::AtomicBool,
}

impl Pushed {
    /// Locations kept in `file` between runs (created on [`Pushed::save`]).
    pub fn persistent(file: PathBuf) -> Pushed {
        Pushed {
            file: Some(file),
            ..Pushed::default()
        }
    }

    /// The one shared "has no tag" answer of `repo` of `host` for this run.
    pub fn new_repo(&self, host: &str, repo: &str) -> Arc<NewRepo> {
        self.new_repos
            .lock()
            .unwrap()
            .entry((host.to_string(), repo.to_string()))
            .or_default()
            .clone()
    }

    /// Whether this run has seen `repo` of `host` hold the blob (so no HEAD is needed).
    pub fn seen_in(&self, host: &str, digest: &Digest, repo: &str) -> bool {
        self.seen
            .lock()
            .unwrap()
            .get(&(host.to_string(), digest.clone()))
            .is_some_and(|r| r.iter().any(|r| r == repo))
    }

    /// Records that `repo` of `host` holds the blob now.
    pub fn record(&self, host: &str, digest: &Digest, repo: &str) {
        let key = (host.to_string(), digest.clone());
        let mut seen = self.seen.lock().unwrap();
        let repos = seen.entry(key).or_default();
        if repos.iter().any(|r| r == repo) {
            return;
        }
        repos.push(repo.to_string());
        drop(seen);
        if self.file.is_some() {
            self.learnt
                .lock()
                .unwrap()
                .push((host.to_string(), digest.clone(), repo.to_string()));
        }
    }

    /// Another repository of `host` to mount the blob from into `repo`: one seen in
    /// this run first, else one an earlier run saw.
    pub fn mount_source(&self, host: &str, digest: &Digest, repo: &str) -> Option<String> {
        let key = (host.to_string(), digest.clone());
        let other = |repos: &Vec<String>| repos.iter().rev().find(|r| *r != repo).cloned();
        if let Some(r) = self.seen.lock().unwrap().get(&key).and_then(other) {
            return Some(r);
        }
        self.with_saved(host, |saved| saved.get(digest).and_then(other))
            .flatten()
    }

    /// Drops an earlier run's location that a registry refused to mount from.
    pub fn forget(&self, host: &str, digest: &Digest, repo: &str) {
        self.with_saved(host, |saved| {
            if let Some(repos) = saved.get_mut(digest) {
                repos.retain(|r| r != repo);
            }
        });
    }

    /// Runs `f` on the file's locations in `host` (read on the host's first use); `None` when
    /// there is no file.
    fn with_saved<T>(
        &self,
        host: &str,
        f: impl FnOnce(&mut HashMap<Digest, Vec<String>>) -> T,
    ) -> Option<T> {
        let file = self.file.as_ref()?;
        let mut saved = self.saved.lock().unwrap();
        let in_host = saved.entry(host.to_string()).or_insert_with(|| {
            let mut map: HashMap<Digest, Vec<String>> = HashMap::new();
            for (_, digest, repo) in read_lines(file, Some(host)) {
                let repos = map.entry(digest).or_default();
                repos.retain(|r| *r != repo);
                repos.push(repo);
                if repos.len() > MAX_REPOS_PER_BLOB {
                    repos.remove(0);
                }
            }
            map
        });
        Some(f(in_host))
    }

    /// Adds this run's locations to the file (if there is one and anything was learnt), in
    /// one append; compacts the file once it is past [`COMPACT_BYTES`].
    pub fn save(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let learnt = std::mem::take(&mut *self.learnt.lock().unwrap());
        if learnt.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for (host, digest, repo) in &learnt {
            text.push_str(&format!("{host} {digest} {repo}\n"));
        }
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = append_private(file)?;
        // One write: concurrent runs' appends do not interleave within it.
        f.write_all(text.as_bytes())?;
        if f.metadata()?.len() > COMPACT_BYTES {
            compact(file)?;
        }
        Ok(())
    }
}

/// Opens the file for appending, created readable by its owner only.
fn append_private(file: &Path) -> std::io::Result<std::fs::File> {
    let mut open = std::fs::OpenOptions::new();
    open.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    open.open(file)
}

/// Rewrites the file with its newest [`MAX_SAVED`] distinct lines, oldest first.
fn compact(file: &Path) -> std::io::Result<()> {
    let lines = read_lines(file, None);
    let mut seen = HashSet::new();
    let mut newest: Vec<&(String, Digest, String)> = lines
        .iter()
        .rev()
        .filter(|l| seen.insert(*l))
        .take(MAX_SAVED)
        .collect();
    newest.reverse();
    write_lines(file, &newest)
}

/// The file's well-formed lines (of `host` only, when given), oldest first; a missing or
/// unreadable file is empty.
fn read_lines(file: &Path, host: Option<&str>) -> Vec<(String, Digest, String)> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            let (h, digest, repo) = (parts.next()?, parts.next()?, parts.next()?);
            if host.is_some_and(|want| want != h) {
                return None;
            }
            if parts.next().is_some() || h.is_empty() || repo.is_empty() {
                return None;
            }
            Some((h.to_string(), Digest::parse(digest).ok()?, repo.to_string()))
        })
        .collect()
}

/// Replaces the file atomically (a temp file beside it, then rename), readable by its owner only.
fn write_lines(file: &Path, lines: &[&(String, Digest, String)]) -> std::io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".blob-locations")
        .tempfile_in(dir)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        for (host, digest, repo) in lines {
            writeln!(w, "{host} {digest} {repo}")?;
        }
        w.flush()?;
    }
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[test]
    fn this_run_first_then_the_file_and_stale_entries_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/locations");
        let first = Pushed::persistent(file.clone());
        assert_eq!(first.mount_source("h:1", &d(1), "a"), None);
        first.record("h:1", &d(1), "a");
        first.record("h:1", &d(1), "a");
        assert!(first.seen_in("h:1", &d(1), "a"));
        assert!(!first.seen_in("h:1", &d(1), "b"));
        assert_eq!(first.mount_source("h:1", &d(1), "b").as_deref(), Some("a"));
        assert_eq!(first.mount_source("h:1", &d(1), "a"), None);
        assert_eq!(first.mount_source("h:2", &d(1), "b"), None);
        first.save().unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 1);

        // A later run: the file's location is a candidate, not a certainty.
        let second = Pushed::persistent(file.clone());
        assert!(!second.seen_in("h:1", &d(1), "a"));
        assert_eq!(second.mount_source("h:1", &d(1), "b").as_deref(), Some("a"));
        second.forget("h:1", &d(1), "a");
        assert_eq!(second.mount_source("h:1", &d(1), "b"), None);
        second.record("h:1", &d(2), "c");
        second.save().unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");

        // Without a file nothing is kept, and a garbled file reads as empty lines skipped.
        let plain = Pushed::default();
        plain.record("h:1", &d(3), "x");
        plain.save().unwrap();
        std::fs::write(&file, "garbage\nh:1 sha256:zz r\n").unwrap();
        assert_eq!(
            Pushed::persistent(file).mount_source("h:1", &d(1), "b"),
            None
        );
    }

    /// A run reads only its host's lines and appends what it learnt (the file is not
    /// rewritten); past [`COMPACT_BYTES`] the file is compacted to its newest distinct lines.
    #[test]
    fn saves_append_and_a_large_file_is_compacted() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("locations");
        std::fs::write(&file, format!("other:1 {} a\nh:1 {} a\n", d(1), d(2))).unwrap();
        let run = Pushed::persistent(file.clone());
        assert_eq!(
            run.mount_source("h:1", &d(1), "b"),
            None,
            "another host's line"
        );
        assert_eq!(run.mount_source("h:1", &d(2), "b").as_deref(), Some("a"));
        let ino = std::fs::metadata(&file).unwrap().ino();
        run.record("h:1", &d(3), "c");
        run.save().unwrap();
        assert_eq!(
            std::fs::metadata(&file).unwrap().ino(),
            ino,
            "appended in place"
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.ends_with(&format!("h:1 {} c\n", d(3))), "{text}");
        assert_eq!(text.lines().count(), 3);

        // Past the threshold: old lines, then distinct ones, then one of those again.
        let line = |n: usize| format!("h:1 {} r{n}\n", Digest::sha256_of(&n.to_le_bytes()));
        let mut big = line(0).repeat(1000);
        let mut n = 1;
        while (big.len() as u64) <= COMPACT_BYTES {
            big.push_str(&line(n));
            n += 1;
        }
        big.push_str(&line(n - 2)); // seen again: kept once, where it was seen last
        std::fs::write(&file, big).unwrap();
        let run = Pushed::persistent(file.clone());
        run.record("h:1", &d(4), "z");
        run.save().unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), MAX_SAVED);
        assert_eq!(lines[MAX_SAVED - 1], format!("h:1 {} z", d(4)));
        assert_eq!(format!("{}\n", lines[MAX_SAVED - 2]), line(n - 2));
        assert_eq!(format!("{}\n", lines[MAX_SAVED - 3]), line(n - 1));
        assert_eq!(text.matches(&line(n - 2)).count(), 1);
        assert!((text.len() as u64) < COMPACT_BYTES);
        assert!(!text.contains(&line(0)), "the oldest lines went");
    }
}
