//! Which repository of a target registry holds which blob, so a blob is
//! mounted (`POST ?mount=&from=`) instead of uploaded again, and asked about
//! (`HEAD`) at most once per repository in a run. What this run saw is
//! certain; what earlier runs saw (the optional file, as containers/image's
//! blob-info cache) is only a candidate for a mount, which the registry
//! checks: a stale entry costs one refused mount and is forgotten.
//!
//! The file holds one `HOST DIGEST REPOSITORY` line per location, newest
//! last, at most [`MAX_SAVED`] lines; it is rewritten whole (temp file and
//! rename) with what it held merged in, so concurrent runs lose at most a few
//! entries, never the file.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::digest::Digest;

/// Most locations kept in the file (the newest).
pub const MAX_SAVED: usize = 50_000;

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
    /// Locations read from the file on first use: candidates only.
    saved: OnceLock<Mutex<HashMap<Key, Vec<String>>>>,
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
        self.saved()?.lock().unwrap().get(&key).and_then(other)
    }

    /// Drops an earlier run's location that a registry refused to mount from.
    pub fn forget(&self, host: &str, digest: &Digest, repo: &str) {
        if let Some(saved) = self.saved()
            && let Some(repos) = saved
                .lock()
                .unwrap()
                .get_mut(&(host.to_string(), digest.clone()))
        {
            repos.retain(|r| r != repo);
        }
    }

    /// The file's locations, read once; `None` when there is no file.
    fn saved(&self) -> Option<&Mutex<HashMap<Key, Vec<String>>>> {
        let file = self.file.as_ref()?;
        Some(self.saved.get_or_init(|| {
            let mut map: HashMap<Key, Vec<String>> = HashMap::new();
            for (host, digest, repo) in read_lines(file) {
                let repos = map.entry((host, digest)).or_default();
                repos.retain(|r| *r != repo);
                repos.push(repo);
                if repos.len() > MAX_REPOS_PER_BLOB {
                    repos.remove(0);
                }
            }
            Mutex::new(map)
        }))
    }

    /// Adds this run's locations to the file (if there is one and anything was learnt).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let learnt = std::mem::take(&mut *self.learnt.lock().unwrap());
        if learnt.is_empty() {
            return Ok(());
        }
        // Merged with what the file holds now (another run may have written it meanwhile).
        let mut lines = read_lines(file);
        let new: HashSet<&(String, Digest, String)> = learnt.iter().collect();
        lines.retain(|l| !new.contains(l));
        lines.extend(learnt.iter().cloned());
        let skip = lines.len().saturating_sub(MAX_SAVED);
        write_lines(file, &lines[skip..])
    }
}

/// The file's well-formed lines, oldest first; a missing or unreadable file is empty.
fn read_lines(file: &Path) -> Vec<(String, Digest, String)> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            let (host, digest, repo) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() || host.is_empty() || repo.is_empty() {
                return None;
            }
            Some((
                host.to_string(),
                Digest::parse(digest).ok()?,
                repo.to_string(),
            ))
        })
        .collect()
}

/// Replaces the file atomically (a temp file beside it, then rename), readable by its owner only.
fn write_lines(file: &Path, lines: &[(String, Digest, String)]) -> std::io::Result<()> {
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
}
