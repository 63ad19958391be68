//! The one place that knows distribution's registry v2 storage layout.
//!
//! ```text
//! <root>/docker/registry/v2/
//!   blobs/<alg>/<hex[0:2]>/<hex>/data                      content, manifests included
//!   repositories/<name>/
//!     _layers/<alg>/<hex>/link                             "<alg>:<hex>" (config + layer blobs)
//!     _manifests/revisions/<alg>/<hex>/link                "<alg>:<hex>" (every manifest)
//!     _manifests/tags/<tag>/current/link                   "<alg>:<hex>"
//!     _manifests/tags/<tag>/index/<alg>/<hex>/link         "<alg>:<hex>"
//!     _uploads/<uuid>/...                                  in-flight uploads (distribution's)
//! <root>/.ferry-tmp/                                       ferry's temp files (same file system)
//! <root>/.ferry-cache/lock                                 a bundle cache's advisory lock (flock)
//! <root>/.ferry-cache/runs/<name>.json                     a bundle cache's records of bundle runs
//! ```
//!
//! Every path is built by [`path_for`] and every directory walk that needs to
//! recognise a layout name goes through the listing functions below, so no
//! other file spells `_layers` or `_manifests` (stricter than distribution,
//! whose catalog and vacuum code join some of these by hand).

use std::io;
use std::path::{Path, PathBuf};

use crate::digest::{Algorithm, Digest};

const V2: &str = "docker/registry/v2";
const LAYERS: &str = "_layers";
const MANIFESTS: &str = "_manifests";
const UPLOADS: &str = "_uploads";
const LINK: &str = "link";
const DATA: &str = "data";
const TMP: &str = ".ferry-tmp";
const CACHE: &str = ".ferry-cache";

/// A kind of path in the layout, with what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathSpec<'a> {
    /// `docker/registry/v2`.
    V2Root,
    /// The blobs directory of one algorithm.
    BlobsAlgorithm(Algorithm),
    /// A blob's `data` file.
    BlobData(&'a Digest),
    /// The `repositories` directory.
    Repositories,
    /// One repository's directory.
    Repository(&'a str),
    /// A repository's link to a config or layer blob.
    LayerLink(&'a str, &'a Digest),
    /// A repository's `_layers/<alg>` directory.
    LayersAlgorithm(&'a str, Algorithm),
    /// A repository's link to a manifest.
    RevisionLink(&'a str, &'a Digest),
    /// A repository's `_manifests/revisions/<alg>` directory.
    RevisionsAlgorithm(&'a str, Algorithm),
    /// A repository's tags directory.
    Tags(&'a str),
    /// One tag's directory (renamed into place whole when a tag is created).
    Tag(&'a str, &'a str),
    /// The link a tag points through.
    TagCurrentLink(&'a str, &'a str),
    /// The history link of a tag for one digest.
    TagIndexLink(&'a str, &'a str, &'a Digest),
    /// A tag's `index/<alg>` directory.
    TagIndexAlgorithm(&'a str, &'a str, Algorithm),
    /// A repository's in-flight uploads directory.
    Uploads(&'a str),
    /// ferry's own temp directory, on the same file system as the layout.
    Temp,
    /// A bundle cache's lock file (shared by bundle runs, exclusive for prune and gc).
    CacheLock,
    /// A bundle cache's directory of run records.
    CacheRuns,
    /// Which repository of which target registry holds which blob, kept between syncs.
    CacheBlobLocations,
}

/// The path of `spec` under `root`. Callers have validated names and tags; digests are valid by type.
pub fn path_for(root: &Path, spec: PathSpec<'_>) -> PathBuf {
    let v2 = root.join(V2);
    let repo = |name: &str| v2.join("repositories").join(name);
    match spec {
        PathSpec::V2Root => v2,
        PathSpec::BlobsAlgorithm(a) => v2.join("blobs").join(a.name()),
        PathSpec::BlobData(d) => v2
            .join("blobs")
            .join(d.algorithm().name())
            .join(&d.hex()[..2])
            .join(d.hex())
            .join(DATA),
        PathSpec::Repositories => v2.join("repositories"),
        PathSpec::Repository(name) => repo(name),
        PathSpec::LayerLink(name, d) => repo(name)
            .join(LAYERS)
            .join(d.algorithm().name())
            .join(d.hex())
            .join(LINK),
        PathSpec::LayersAlgorithm(name, a) => repo(name).join(LAYERS).join(a.name()),
        PathSpec::RevisionLink(name, d) => repo(name)
            .join(MANIFESTS)
            .join("revisions")
            .join(d.algorithm().name())
            .join(d.hex())
            .join(LINK),
        PathSpec::RevisionsAlgorithm(name, a) => {
            repo(name).join(MANIFESTS).join("revisions").join(a.name())
        }
        PathSpec::Tags(name) => repo(name).join(MANIFESTS).join("tags"),
        PathSpec::Tag(name, tag) => repo(name).join(MANIFESTS).join("tags").join(tag),
        PathSpec::TagCurrentLink(name, tag) => repo(name)
            .join(MANIFESTS)
            .join("tags")
            .join(tag)
            .join("current")
            .join(LINK),
        PathSpec::TagIndexLink(name, tag, d) => repo(name)
            .join(MANIFESTS)
            .join("tags")
            .join(tag)
            .join("index")
            .join(d.algorithm().name())
            .join(d.hex())
            .join(LINK),
        PathSpec::TagIndexAlgorithm(name, tag, a) => repo(name)
            .join(MANIFESTS)
            .join("tags")
            .join(tag)
            .join("index")
            .join(a.name()),
        PathSpec::Uploads(name) => repo(name).join(UPLOADS),
        PathSpec::Temp => root.join(TMP),
        PathSpec::CacheLock => root.join(CACHE).join("lock"),
        PathSpec::CacheRuns => root.join(CACHE).join("runs"),
        PathSpec::CacheBlobLocations => root.join(CACHE).join("blob-locations"),
    }
}

/// The `/`-separated key of `spec` relative to a root (`docker/registry/v2/...`): what an object
/// store holds under a registry's `rootdirectory`, as distribution's S3 driver lays it out.
pub fn key_for(spec: PathSpec<'_>) -> String {
    path_for(Path::new(""), spec).to_string_lossy().into_owned()
}

/// Every digest algorithm the layout has a blobs directory for.
pub const ALGORITHMS: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

fn read_dir_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// An entry found while walking the layout that does not fit it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stray {
    /// Where it is.
    pub path: PathBuf,
    /// What is wrong with it.
    pub why: &'static str,
}

/// What a walk found: the entries that fit the layout, with their paths, and those that do not.
pub type Listing<T> = (Vec<(T, PathBuf)>, Vec<Stray>);

/// Every blob in the store, as `(digest, data path)`, plus entries that do not
/// fit the layout (a directory name that is not a digest, a misplaced fan-out).
pub fn list_blobs(root: &Path) -> io::Result<Listing<Digest>> {
    let mut blobs = Vec::new();
    let mut strays = Vec::new();
    for alg in ALGORITHMS {
        let base = path_for(root, PathSpec::BlobsAlgorithm(alg));
        for fan in read_dir_names(&base)? {
            for hex in read_dir_names(&base.join(&fan))? {
                let dir = base.join(&fan).join(&hex);
                match Digest::from_hex(alg, &hex) {
                    Ok(d) if d.hex().starts_with(&fan) => {
                        let data = path_for(root, PathSpec::BlobData(&d));
                        blobs.push((d, data));
                    }
                    _ => strays.push(Stray {
                        path: dir,
                        why: "blob directory name is not a digest of its fan-out directory",
                    }),
                }
            }
        }
    }
    Ok((blobs, strays))
}

/// Whether an entry of a directory under `repositories/` marks that directory as a repository
/// (`_layers`, `_manifests` or `_uploads`); any other `_` name is none of a repository's.
pub fn is_repository_marker(name: &str) -> bool {
    name == LAYERS || name == MANIFESTS || name == UPLOADS
}

/// Every repository name: a directory under `repositories/` that holds any of
/// `_layers`, `_manifests` or `_uploads` (names nest, as `library/redis`).
pub fn list_repositories(root: &Path) -> io::Result<Vec<String>> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
        let names = read_dir_names(dir)?;
        if !prefix.is_empty() && names.iter().any(|n| is_repository_marker(n)) {
            out.push(prefix.to_string());
        }
        for n in names {
            if n.starts_with('_') || !dir.join(&n).is_dir() {
                continue;
            }
            let p = if prefix.is_empty() {
                n.clone()
            } else {
                format!("{prefix}/{n}")
            };
            walk(&dir.join(&n), &p, out)?;
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(&path_for(root, PathSpec::Repositories), "", &mut out)?;
    out.sort();
    Ok(out)
}

/// A link file found in a repository, with the digest its path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEntry {
    /// `_layers/<alg>/<hex>/link`.
    Layer(Digest),
    /// `_manifests/revisions/<alg>/<hex>/link`.
    Revision(Digest),
    /// `_manifests/tags/<tag>/current/link`.
    TagCurrent(String),
    /// `_manifests/tags/<tag>/index/<alg>/<hex>/link`.
    TagIndex(String, Digest),
}

/// Every link of a repository, and the entries whose names are not digests.
pub fn list_links(root: &Path, repo: &str) -> io::Result<Listing<LinkEntry>> {
    let mut links = Vec::new();
    let mut strays = Vec::new();
    let digests_in =
        |dir: &Path, alg: Algorithm, strays: &mut Vec<Stray>| -> io::Result<Vec<Digest>> {
            let mut out = Vec::new();
            for hex in read_dir_names(dir)? {
                match Digest::from_hex(alg, &hex) {
                    Ok(d) => out.push(d),
                    Err(_) => strays.push(Stray {
                        path: dir.join(&hex),
                        why: "link directory name is not a digest",
                    }),
                }
            }
            Ok(out)
        };
    for alg in ALGORITHMS {
        for d in digests_in(
            &path_for(root, PathSpec::LayersAlgorithm(repo, alg)),
            alg,
            &mut strays,
        )? {
            let p = path_for(root, PathSpec::LayerLink(repo, &d));
            links.push((LinkEntry::Layer(d), p));
        }
        for d in digests_in(
            &path_for(root, PathSpec::RevisionsAlgorithm(repo, alg)),
            alg,
            &mut strays,
        )? {
            let p = path_for(root, PathSpec::RevisionLink(repo, &d));
            links.push((LinkEntry::Revision(d), p));
        }
    }
    for tag in list_tags(root, repo)? {
        let p = path_for(root, PathSpec::TagCurrentLink(repo, &tag));
        links.push((LinkEntry::TagCurrent(tag.clone()), p));
        for alg in ALGORITHMS {
            for d in digests_in(
                &path_for(root, PathSpec::TagIndexAlgorithm(repo, &tag, alg)),
                alg,
                &mut strays,
            )? {
                let p = path_for(root, PathSpec::TagIndexLink(repo, &tag, &d));
                links.push((LinkEntry::TagIndex(tag.clone(), d), p));
            }
        }
    }
    Ok((links, strays))
}

/// The tags of a repository, sorted (directory names under `_manifests/tags`).
pub fn list_tags(root: &Path, repo: &str) -> io::Result<Vec<String>> {
    read_dir_names(&path_for(root, PathSpec::Tags(repo)))
}

/// A file of the layout, recognised from its path relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutFile {
    /// `blobs/<alg>/<xx>/<hex>/data`.
    BlobData(Digest),
    /// A repository's `_layers` link.
    LayerLink(String, Digest),
    /// A repository's manifest revision link.
    RevisionLink(String, Digest),
    /// A tag's `current/link`.
    TagCurrentLink(String, String),
    /// A tag's `index/<alg>/<hex>/link`.
    TagIndexLink(String, String, Digest),
}

fn algorithm(name: &str) -> Option<Algorithm> {
    ALGORITHMS.into_iter().find(|a| a.name() == name)
}

/// Recognises a path relative to the root (`docker/registry/v2/...`, `/`-separated) as a layout file;
/// `None` for anything else, so a reader of untrusted archives can refuse it. Names, tags and digests are validated.
pub fn parse_file(rel: &str) -> Option<LayoutFile> {
    let rest = rel.strip_prefix(V2)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return None;
    }
    let digest = |alg: &str, hex: &str| Digest::from_hex(algorithm(alg)?, hex).ok();
    match parts.as_slice() {
        ["blobs", alg, fan, hex, DATA] => digest(alg, hex)
            .filter(|d| d.hex().starts_with(fan) && fan.len() == 2)
            .map(LayoutFile::BlobData),
        ["repositories", rest @ ..] => {
            let split = rest.iter().position(|p| p.starts_with('_'))?;
            let name = rest[..split].join("/");
            crate::reference::validate_repository(&name).ok()?;
            match &rest[split..] {
                [LAYERS, alg, hex, LINK] => Some(LayoutFile::LayerLink(name, digest(alg, hex)?)),
                [MANIFESTS, "revisions", alg, hex, LINK] => {
                    Some(LayoutFile::RevisionLink(name, digest(alg, hex)?))
                }
                [MANIFESTS, "tags", tag, "current", LINK] => {
                    crate::reference::validate_tag(tag).ok()?;
                    Some(LayoutFile::TagCurrentLink(name, tag.to_string()))
                }
                [MANIFESTS, "tags", tag, "index", alg, hex, LINK] => {
                    crate::reference::validate_tag(tag).ok()?;
                    Some(LayoutFile::TagIndexLink(
                        name,
                        tag.to_string(),
                        digest(alg, hex)?,
                    ))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether a directory path relative to the root can hold layout files (an ancestor of `docker/registry/v2`, or a safe path below it).
pub fn is_layout_dir(rel: &str) -> bool {
    let rel = rel.trim_end_matches('/');
    if V2.starts_with(rel) && (rel.len() == V2.len() || V2.as_bytes().get(rel.len()) == Some(&b'/'))
    {
        return !rel.is_empty();
    }
    rel.strip_prefix(V2)
        .and_then(|r| r.strip_prefix('/'))
        .is_some_and(|r| {
            r.split('/').all(|p| {
                !p.is_empty()
                    && p != "."
                    && p != ".."
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_to_path_table() {
        let d = Digest::parse(
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )
        .unwrap();
        let h = d.hex();
        let root = Path::new("/r");
        let table: Vec<(PathSpec, String)> = vec![
            (PathSpec::V2Root, "/r/docker/registry/v2".into()),
            (
                PathSpec::BlobData(&d),
                format!("/r/docker/registry/v2/blobs/sha256/e3/{h}/data"),
            ),
            (
                PathSpec::Repository("a/b"),
                "/r/docker/registry/v2/repositories/a/b".into(),
            ),
            (
                PathSpec::LayerLink("a/b", &d),
                format!("/r/docker/registry/v2/repositories/a/b/_layers/sha256/{h}/link"),
            ),
            (
                PathSpec::RevisionLink("a/b", &d),
                format!(
                    "/r/docker/registry/v2/repositories/a/b/_manifests/revisions/sha256/{h}/link"
                ),
            ),
            (
                PathSpec::Tags("a/b"),
                "/r/docker/registry/v2/repositories/a/b/_manifests/tags".into(),
            ),
            (
                PathSpec::TagCurrentLink("a/b", "v1"),
                "/r/docker/registry/v2/repositories/a/b/_manifests/tags/v1/current/link".into(),
            ),
            (
                PathSpec::TagIndexLink("a/b", "v1", &d),
                format!(
                    "/r/docker/registry/v2/repositories/a/b/_manifests/tags/v1/index/sha256/{h}/link"
                ),
            ),
            (
                PathSpec::Uploads("a"),
                "/r/docker/registry/v2/repositories/a/_uploads".into(),
            ),
            (PathSpec::Temp, "/r/.ferry-tmp".into()),
            (PathSpec::CacheLock, "/r/.ferry-cache/lock".into()),
            (PathSpec::CacheRuns, "/r/.ferry-cache/runs".into()),
            (
                PathSpec::CacheBlobLocations,
                "/r/.ferry-cache/blob-locations".into(),
            ),
        ];
        for (spec, want) in table {
            assert_eq!(path_for(root, spec), PathBuf::from(&want), "{spec:?}");
            assert_eq!(format!("/r/{}", key_for(spec)), want, "{spec:?}");
        }
    }

    #[test]
    fn parse_back_table() {
        let d = Digest::parse(
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )
        .unwrap();
        let h = d.hex();
        let root = Path::new("");
        let specs = [
            (PathSpec::BlobData(&d), LayoutFile::BlobData(d.clone())),
            (
                PathSpec::LayerLink("a/b", &d),
                LayoutFile::LayerLink("a/b".into(), d.clone()),
            ),
            (
                PathSpec::RevisionLink("a", &d),
                LayoutFile::RevisionLink("a".into(), d.clone()),
            ),
            (
                PathSpec::TagCurrentLink("a", "v1"),
                LayoutFile::TagCurrentLink("a".into(), "v1".into()),
            ),
            (
                PathSpec::TagIndexLink("a", "v1", &d),
                LayoutFile::TagIndexLink("a".into(), "v1".into(), d.clone()),
            ),
        ];
        for (spec, want) in specs {
            let rel = path_for(root, spec).to_string_lossy().into_owned();
            assert_eq!(parse_file(&rel), Some(want), "{rel}");
        }
        let bad = [
            format!("docker/registry/v2/blobs/sha256/ff/{h}/data"),
            format!("docker/registry/v2/blobs/sha256/e3/{h}/data/x"),
            "docker/registry/v2/blobs/sha256/e3/../../../../etc/passwd".to_string(),
            format!("/docker/registry/v2/blobs/sha256/e3/{h}/data"),
            format!("docker/registry/v2/repositories/A/_layers/sha256/{h}/link"),
            format!("docker/registry/v2/repositories/a/../b/_layers/sha256/{h}/link"),
            "docker/registry/v2/repositories/a/_uploads/x/data".to_string(),
            "docker/registry/v2/repositories/a/_manifests/tags/-x/current/link".to_string(),
            "ferry-bundle.json".to_string(),
            "etc/passwd".to_string(),
        ];
        for rel in bad {
            assert_eq!(parse_file(&rel), None, "{rel}");
        }
        for ok in [
            "docker",
            "docker/",
            "docker/registry",
            "docker/registry/v2/",
            "docker/registry/v2/repositories/a/_layers",
        ] {
            assert!(is_layout_dir(ok), "{ok}");
        }
        for bad in [
            "",
            "/docker",
            "dock",
            "docker/registry/v2/../x",
            "docker/registry/v2/a//b",
            "etc",
        ] {
            assert!(!is_layout_dir(bad), "{bad}");
        }
    }
}
