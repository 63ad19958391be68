//! Re-hashes every blob and resolves every link of a root (an fsck), so a
//! corrupt or incomplete root is found before a site depends on it.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::links::read_link;
use super::paths::{self, LinkEntry, PathSpec};
use super::{Result, Store, StoreError};
use crate::digest::{Digest, Hasher};

/// One problem found in a root, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fault {
    /// The file or directory at fault.
    pub path: PathBuf,
    /// What is wrong, naming the blob, repository or tag.
    pub what: String,
}

/// What verify looked at and what it found.
#[derive(Debug, Default, Clone)]
pub struct VerifyReport {
    /// Blobs re-hashed.
    pub blobs: usize,
    /// Bytes re-hashed.
    pub bytes: u64,
    /// Repositories walked.
    pub repositories: usize,
    /// Link files resolved.
    pub links: usize,
    /// Every fault, sorted by path.
    pub faults: Vec<Fault>,
}

fn hash_file(path: &std::path::Path, buf: &mut [u8]) -> io::Result<(Digest, u64)> {
    let mut f = File::open(path)?;
    let mut h = Hasher::new(crate::digest::Algorithm::Sha256);
    let mut n = 0u64;
    loop {
        match f.read(buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((h.finish(), n))
}

impl Store {
    /// Re-hashes every blob on all cores and checks every link, manifest reference and tag.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        if !self.exists() {
            let p = self.path(PathSpec::V2Root);
            return Err(StoreError::Io {
                op: "opening registry root",
                path: p,
                source: io::Error::new(io::ErrorKind::NotFound, "no docker/registry/v2 directory"),
            });
        }
        let (blobs, strays) = paths::list_blobs(self.root()).map_err(StoreError::io(
            "listing blobs in",
            self.path(PathSpec::V2Root),
        ))?;
        let faults = Mutex::new(Vec::new());
        let fault = |path: PathBuf, what: String| faults.lock().unwrap().push(Fault { path, what });
        for s in strays {
            fault(s.path, s.why.to_string());
        }

        // Blobs: biggest first so the cores finish together.
        let mut work: Vec<(Digest, PathBuf, u64)> = blobs
            .into_iter()
            .map(|(d, p)| {
                let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                (d, p, size)
            })
            .collect();
        work.sort_by_key(|w| std::cmp::Reverse(w.2));
        let present = Mutex::new(HashSet::new());
        let next = AtomicUsize::new(0);
        let hashed = std::sync::atomic::AtomicU64::new(0);
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((digest, path, _)) = work.get(i) else {
                            break;
                        };
                        match hash_file(path, &mut buf) {
                            Ok((found, n)) => {
                                hashed.fetch_add(n, Ordering::Relaxed);
                                if &found == digest {
                                    present.lock().unwrap().insert(digest.clone());
                                } else {
                                    fault(
                                        path.clone(),
                                        format!("blob {digest}: content hashes to {found}"),
                                    );
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                                fault(path.clone(), format!("blob {digest}: data file is missing"))
                            }
                            Err(e) => fault(path.clone(), format!("blob {digest}: reading: {e}")),
                        }
                    }
                });
            }
        });
        report.blobs = work.len();
        report.bytes = hashed.into_inner();
        let present = present.into_inner().unwrap();
        let mut seen_corrupt: BTreeSet<Digest> = BTreeSet::new();
        for (d, _, _) in &work {
            if !present.contains(d) {
                seen_corrupt.insert(d.clone());
            }
        }

        // Repositories: every link resolves, every manifest's references are linked.
        let repos = self.repositories()?;
        report.repositories = repos.len();
        for repo in &repos {
            let (links, strays) = paths::list_links(self.root(), repo).map_err(StoreError::io(
                "listing links in",
                self.path(PathSpec::Repository(repo)),
            ))?;
            for s in strays {
                fault(s.path, format!("repository {repo}: {}", s.why));
            }
            let mut revisions = Vec::new();
            for (entry, path) in links {
                report.links += 1;
                let target = match read_link(&path) {
                    Ok(Some(d)) => d,
                    Ok(None) => {
                        fault(path, format!("repository {repo}: link file is missing"));
                        continue;
                    }
                    Err(StoreError::BadLink { content, .. }) => {
                        fault(
                            path,
                            format!("repository {repo}: link holds {content:?}, not a digest"),
                        );
                        continue;
                    }
                    Err(e) => {
                        fault(path, format!("repository {repo}: {e}"));
                        continue;
                    }
                };
                let named = match &entry {
                    LinkEntry::Layer(d) | LinkEntry::Revision(d) | LinkEntry::TagIndex(_, d) => {
                        Some(d)
                    }
                    LinkEntry::TagCurrent(_) => None,
                };
                if let Some(named) = named
                    && named != &target
                {
                    fault(
                        path.clone(),
                        format!("repository {repo}: link for {named} holds {target}"),
                    );
                }
                if !present.contains(&target) {
                    if !seen_corrupt.contains(&target) {
                        fault(
                            path.clone(),
                            format!(
                                "repository {repo}: link to {target}, which is not in the blob store (dangling)"
                            ),
                        );
                    }
                    continue;
                }
                match entry {
                    LinkEntry::Revision(d) => revisions.push(d),
                    LinkEntry::TagCurrent(tag) if !self.has_revision(repo, &target) => {
                        fault(
                            path,
                            format!(
                                "repository {repo}: tag {tag} points at {target}, which has no revision link"
                            ),
                        );
                    }
                    _ => {}
                }
            }
            for d in revisions {
                let path = self.path(PathSpec::BlobData(&d));
                let w = match self.walk(&d) {
                    Ok(w) => w,
                    Err(e) => {
                        fault(path, format!("repository {repo}: {e}"));
                        continue;
                    }
                };
                // An index's blobs are checked through its children, which are revisions themselves.
                for b in w.blobs.iter().filter(|_| !w.is_index()) {
                    if !self.has_layer_link(repo, &b.digest) {
                        fault(
                            self.path(PathSpec::LayerLink(repo, &b.digest)),
                            format!(
                                "repository {repo}: manifest {d} needs blob {}, which the repository does not link",
                                b.digest
                            ),
                        );
                    }
                }
                for c in w.children.iter().filter(|c| c.parent == d) {
                    if present.contains(&c.descriptor.digest)
                        && !self.has_revision(repo, &c.descriptor.digest)
                    {
                        fault(
                            self.path(PathSpec::RevisionLink(repo, &c.descriptor.digest)),
                            format!(
                                "repository {repo}: index {d} lists manifest {}, which the repository does not link",
                                c.descriptor.digest
                            ),
                        );
                    }
                }
            }
        }
        let mut faults = faults.into_inner().unwrap();
        faults.sort();
        faults.dedup();
        report.faults = faults;
        Ok(report)
    }
}
