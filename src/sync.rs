//! skopeo's `sync`: from a source (a registry repository or image, a tree of
//! `dir:` images, or skopeo's YAML sync file) to the list of (source image,
//! destination name) pairs, named exactly as skopeo 1.9's `cmd/skopeo/sync.go`
//! names them, resolved (tags listed, filters applied) before anything is
//! written. The CLI hands the pairs to the copy engine all at once, so every
//! image of a sync shares one pool of blob transfers.
//!
//! Naming, as skopeo does it: the *suffix* of an image is
//! - for a registry image, its fully qualified name (`HOST/REPO:TAG` or
//!   `HOST/REPO@DIGEST`, `docker.io/library/` added for Docker Hub);
//! - for a `dir:` image found under the source directory, its path with the
//!   source directory (as written) cut off the front, or the source's last
//!   element when the source is the image itself;
//!
//! without `--scoped` only the suffix's last path element is kept; the
//! destination is `path.Join(DESTINATION, suffix) + APPEND_SUFFIX` (Go's
//! `path.Join`, which cleans the path), read as a registry reference or a
//! directory.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{StreamExt, stream};
use serde::Deserialize;

use crate::auth::Credentials;
use crate::blob::BlobBody;
use crate::digest::Digest;
use crate::manifest::{Descriptor, RawManifest};
use crate::reference::{DEFAULT_REGISTRY, Reference, validate_tag};
use crate::registry::{Client, ClientOptions, RegistryError};
use crate::transport::dir::{DirDest, DirSource};
use crate::transport::open::{AnyDest, AnySource, OpenOptions, open_dest};
use crate::transport::registry::{Clients, Pushed, RegistrySource};
use crate::transport::{DestProperties, Destination, ImageRef, Put, TransportError};

/// Why a sync could not be resolved; each names the file, registry or image and the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The sync file could not be read.
    #[error("sync file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The sync file is not valid YAML or has a key skopeo's format does not have.
    #[error("sync file {}: {why}", path.display())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line and column.
        why: String,
    },
    /// A value of the sync file that cannot be used (a regex, a semver constraint, a tag, a name).
    #[error("sync file {}: registry {registry}: {what}", path.display())]
    Entry {
        /// The file.
        path: PathBuf,
        /// The registry key.
        registry: String,
        /// What is wrong, naming the image.
        what: String,
    },
    /// The tags of a repository could not be listed.
    #[error("listing the tags of {repository}: {error}")]
    Tags {
        /// The repository, fully qualified.
        repository: String,
        /// Why (its own message already names the innermost cause, so it is not chained again).
        error: RegistryError,
    },
    /// A source or destination that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// Nothing to sync where the source says there is.
    #[error("no images to sync found in {0}")]
    Empty(String),
    /// Two different images would get the same destination name.
    #[error(
        "{first} and {second} would both be written to {destination}; use --scoped to keep their repository paths apart"
    )]
    Clash {
        /// One source.
        first: String,
        /// The other source.
        second: String,
        /// Their destination.
        destination: String,
    },
    /// A source could not be opened.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Result alias for sync resolution.
pub type Result<T, E = SyncError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------
// The YAML sync file.

/// skopeo's sync file: registry (a host, optionally with a path) → what to copy from it.
#[derive(Debug, Default)]
pub struct SyncFile {
    /// Registries in file order.
    pub registries: Vec<(String, RegistrySync)>,
}

/// One registry of the sync file; every key skopeo reads, and no other (ferry refuses unknown keys).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySync {
    /// Repository → tags and digests to copy; empty (`[]` or nothing) means every tag.
    #[serde(default)]
    pub images: BTreeMap<String, Option<Vec<TagOrDigest>>>,
    /// Repository → regular expression its tags must match.
    #[serde(default, rename = "images-by-tag-regex")]
    pub images_by_tag_regex: BTreeMap<String, String>,
    /// Repository → semver constraint its tags must satisfy (Masterminds/semver syntax, as skopeo).
    #[serde(default, rename = "images-by-semver")]
    pub images_by_semver: BTreeMap<String, String>,
    /// User name and password for this registry.
    #[serde(default)]
    pub credentials: Option<YamlCredentials>,
    /// Whether to verify TLS (false also allows plain HTTP); unset keeps the command line's choice.
    #[serde(default, rename = "tls-verify")]
    pub tls_verify: Option<bool>,
    /// Directory of `*.crt` CA files (and a `*.cert`/`*.key` client pair) for this registry.
    #[serde(default, rename = "cert-dir")]
    pub cert_dir: Option<PathBuf>,
}

/// The `credentials` mapping (containers/image `DockerAuthConfig` as YAML spells it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YamlCredentials {
    /// User name.
    #[serde(default)]
    pub username: String,
    /// Password.
    #[serde(default)]
    pub password: String,
}

impl std::fmt::Debug for YamlCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "YamlCredentials({:?}, <redacted>)", self.username)
    }
}

/// A tag or digest as written in an `images` list; an unquoted number (`- 1`) is read as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagOrDigest(pub String);

impl<'de> Deserialize<'de> for TagOrDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_yaml_ng::Value::deserialize(d)? {
            serde_yaml_ng::Value::String(s) => Ok(TagOrDigest(s)),
            serde_yaml_ng::Value::Number(n) if !n.is_f64() => Ok(TagOrDigest(n.to_string())),
            serde_yaml_ng::Value::Number(n) => Err(D::Error::custom(format!(
                "the tag {n} reads as a number, whose spelling YAML does not keep; quote it (\"{n}\")"
            ))),
            other => Err(D::Error::custom(format!(
                "a tag or digest must be a string, not {other:?}"
            ))),
        }
    }
}

impl SyncFile {
    /// Parses a sync file's text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<SyncFile> {
        let yaml = |e: serde_yaml_ng::Error| SyncError::Yaml {
            path: path.to_path_buf(),
            why: e.to_string(),
        };
        // An empty file, or one of comments only, syncs nothing (as skopeo).
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(yaml)?;
        if value.is_null() {
            return Ok(SyncFile::default());
        }
        // Typed in one pass, so errors carry the line of the offending key; the order of
        // registries is taken from the untyped pass.
        let typed: BTreeMap<String, RegistrySync> = serde_yaml_ng::from_str(text).map_err(yaml)?;
        let order: Vec<String> = match value {
            serde_yaml_ng::Value::Mapping(m) => m
                .keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let mut typed = typed;
        let registries = order
            .into_iter()
            .filter_map(|k| typed.remove(&k).map(|v| (k, v)))
            .collect();
        Ok(SyncFile { registries })
    }

    /// Reads and parses a sync file.
    pub fn read(path: &Path) -> Result<SyncFile> {
        let text = std::fs::read_to_string(path).map_err(|source| SyncError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        SyncFile::parse(path, &text)
    }
}

// ---------------------------------------------------------------------------
// Tag filters.

/// A semver constraint in the syntax skopeo's Masterminds/semver takes: `||` between
/// alternatives, comparators joined by commas or spaces, `a - b` ranges, `!=`, wildcards.
#[derive(Debug, Clone)]
pub struct SemverConstraint {
    any_of: Vec<(semver::VersionReq, Vec<semver::Comparator>)>,
}

impl SemverConstraint {
    /// Parses a constraint; the error says which part is wrong.
    pub fn parse(s: &str) -> Result<SemverConstraint, String> {
        let mut any_of = Vec::new();
        for alt in s.split("||") {
            let alt = alt.trim();
            if alt.is_empty() {
                return Err(format!("{s:?}: an empty alternative"));
            }
            let parts: Vec<String> = match alt.split_once(" - ") {
                Some((lo, hi)) => vec![format!(">={}", lo.trim()), format!("<={}", hi.trim())],
                None => comparators(alt),
            };
            let (mut all, mut not) = (Vec::new(), Vec::new());
            for p in parts {
                let (op, version) = split_op(&p);
                let version = version.strip_prefix('v').unwrap_or(version);
                let (text, negated) = match op {
                    "!=" => (format!("={version}"), true),
                    "" if !version.contains(['x', 'X', '*']) => (format!("={version}"), false),
                    "~>" => (format!("~{version}"), false),
                    _ => (format!("{op}{version}"), false),
                };
                let c = semver::Comparator::parse(&text)
                    .map_err(|e| format!("{s:?}: {p:?} is not a version comparison ({e})"))?;
                if negated { not.push(c) } else { all.push(c) }
            }
            any_of.push((semver::VersionReq { comparators: all }, not));
        }
        Ok(SemverConstraint { any_of })
    }

    /// Whether a tag is a version (as Masterminds' `NewVersion` reads it) that satisfies the constraint.
    pub fn matches_tag(&self, tag: &str) -> bool {
        let Some(v) = lenient_version(tag) else {
            return false;
        };
        self.any_of
            .iter()
            .any(|(req, not)| req.matches(&v) && !not.iter().any(|c| c.matches(&v)))
    }
}

/// Splits `>= 1.2 <3, !=1.4` into comparators, an operator kept with the version after it.
fn comparators(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut pending_op = String::new();
    for tok in s.split([',', ' ', '\t']).filter(|t| !t.is_empty()) {
        if tok.chars().all(|c| "=<>!~^".contains(c)) {
            pending_op.push_str(tok);
        } else {
            out.push(format!("{}{tok}", std::mem::take(&mut pending_op)));
        }
    }
    if !pending_op.is_empty() {
        out.push(pending_op);
    }
    out
}

/// `(operator, rest)` of a comparator.
fn split_op(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !"=<>!~^".contains(c)).unwrap_or(s.len());
    (&s[..end], s[end..].trim())
}

/// A tag read as Masterminds' `NewVersion` reads it: an optional `v`, one to three numbers, then
/// an optional pre-release and build part (`v1.2` is 1.2.0).
fn lenient_version(tag: &str) -> Option<semver::Version> {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    let cut = t.find(['-', '+']).unwrap_or(t.len());
    let (core, rest) = t.split_at(cut);
    let nums: Vec<&str> = core.split('.').collect();
    if nums.is_empty()
        || nums.len() > 3
        || nums
            .iter()
            .any(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let mut full: Vec<String> = nums
        .iter()
        .map(|n| n.trim_start_matches('0').to_string())
        .map(|n| if n.is_empty() { "0".into() } else { n })
        .collect();
    while full.len() < 3 {
        full.push("0".into());
    }
    semver::Version::parse(&format!("{}{rest}", full.join("."))).ok()
}

// ---------------------------------------------------------------------------
// Go's path functions, for names exactly as skopeo forms them.

/// Go's `path.Clean`.
pub fn go_clean(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            x => out.push(x),
        }
    }
    let s = out.join("/");
    if rooted {
        format!("/{s}")
    } else if s.is_empty() {
        ".".into()
    } else {
        s
    }
}

/// Go's `path.Join` of two elements (empty elements ignored, the result cleaned).
pub fn go_join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => String::new(),
        (true, false) => go_clean(b),
        (false, true) => go_clean(a),
        (false, false) => go_clean(&format!("{a}/{b}")),
    }
}

/// Go's `path.Base`.
pub fn go_base(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        return "/".into();
    }
    t.rsplit('/').next().unwrap_or(t).to_string()
}

// ---------------------------------------------------------------------------
// Resolution.

/// Where a sync reads from (`--src`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// A registry repository (every tag) or one image.
    Docker,
    /// A directory holding `dir:` images at any depth.
    Dir,
    /// skopeo's YAML sync file.
    Yaml,
}

/// Where a sync writes to (`--dest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DestKind {
    /// A registry (and optional repository prefix).
    Docker,
    /// A directory: one `dir:` image per source image.
    Dir,
}

/// How to resolve a sync.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// `--src`.
    pub source_kind: SourceKind,
    /// `--dest`.
    pub dest_kind: DestKind,
    /// Keep the whole source path in destination names (`--scoped`).
    pub scoped: bool,
    /// Appended to every destination name (`--append-suffix`).
    pub append_suffix: String,
    /// The source registry's options from the command line (the sync file may override per registry).
    pub source: ClientOptions,
    /// Tag lists fetched at once.
    pub jobs: usize,
}

/// Where one image is read from.
#[derive(Debug, Clone)]
pub enum SourceImage {
    /// An image of a registry.
    Registry {
        /// The connection (per registry of a sync file, with its options).
        client: Client,
        /// Repository at that registry.
        repository: String,
        /// Tag or digest.
        reference: String,
        /// Fully qualified name, `HOST/REPO:TAG` or `HOST/REPO@DIGEST` (skopeo's suffix).
        full_name: String,
    },
    /// A `dir:` image.
    Dir(PathBuf),
}

impl SourceImage {
    /// How skopeo prints it (`docker://…`, `dir:…`).
    pub fn name(&self) -> String {
        match self {
            SourceImage::Registry { full_name, .. } => format!("docker://{full_name}"),
            SourceImage::Dir(p) => format!("dir:{}", p.display()),
        }
    }
}

/// One image of a sync: where from, and the destination name.
#[derive(Debug, Clone)]
pub struct SyncImage {
    /// The source.
    pub source: SourceImage,
    /// The destination as skopeo forms it: a registry reference (`HOST/REPO:TAG`) or a directory path.
    pub destination: String,
}

impl SyncImage {
    /// The destination in transport syntax, for messages.
    pub fn destination_name(&self, kind: DestKind) -> String {
        match kind {
            DestKind::Docker => format!("docker://{}", self.destination),
            DestKind::Dir => format!("dir:{}", self.destination),
        }
    }
}

/// The fully qualified name docker's `ParseNormalizedNamed` gives a repository.
fn full_repository(r: &Reference) -> String {
    let host = match r.registry(DEFAULT_REGISTRY) {
        "index.docker.io" => "docker.io",
        h => h,
    };
    format!("{host}/{}", r.remote_repository(DEFAULT_REGISTRY))
}

/// A repository name (no tag, no digest), as skopeo's `parseRepositoryReference`.
fn repository_reference(s: &str) -> Result<Reference, String> {
    let r = Reference::parse(s).map_err(|e| format!("{s:?}: {e}"))?;
    if r.tag().is_some() || r.digest().is_some() {
        return Err(format!("{s:?} names an image, not a repository"));
    }
    Ok(r)
}

/// A registry repository to read: its connection and names.
#[derive(Clone)]
struct Repo {
    client: Client,
    reference: Reference,
}

impl Repo {
    fn image(&self, reference: &str) -> SourceImage {
        let sep = if Digest::parse(reference).is_ok() {
            '@'
        } else {
            ':'
        };
        SourceImage::Registry {
            client: self.client.clone(),
            repository: self.reference.remote_repository(DEFAULT_REGISTRY),
            reference: reference.to_string(),
            full_name: format!("{}{sep}{reference}", full_repository(&self.reference)),
        }
    }

    /// Every tag of the repository that can name an image (skopeo skips the others, as does ferry, with a warning).
    async fn tags(&self) -> Result<Vec<String>> {
        let repository = full_repository(&self.reference);
        let tags = self
            .client
            .list_tags(&self.reference.remote_repository(DEFAULT_REGISTRY))
            .await
            .map_err(|error| SyncError::Tags {
                repository: repository.clone(),
                error,
            })?;
        Ok(tags
            .into_iter()
            .filter(|t| match validate_tag(t) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("{repository}: skipping tag {t:?}: {e}");
                    false
                }
            })
            .collect())
    }
}

/// What to take from a listed repository.
enum Filter {
    All,
    Regex(regex::Regex),
    Semver(SemverConstraint),
}

impl Filter {
    fn keep(&self, tag: &str) -> bool {
        match self {
            Filter::All => true,
            Filter::Regex(r) => r.is_match(tag),
            Filter::Semver(c) => c.matches_tag(tag),
        }
    }
}

/// The client for `host` with `opts`, one per (options set, host).
fn client_for(
    cache: &mut HashMap<String, Client>,
    host: &str,
    opts: &ClientOptions,
) -> Result<Client> {
    if let Some(c) = cache.get(host) {
        return Ok(c.clone());
    }
    let c = Client::new(host, opts).map_err(TransportError::from)?;
    cache.insert(host.to_string(), c.clone());
    Ok(c)
}

/// The source images of a sync, resolved: tags listed and filtered, every sync file entry checked.
/// Nothing is read beyond tag lists (the copy engine reads every manifest before it writes).
pub async fn source_images(source: &str, opts: &SyncOptions) -> Result<Vec<SourceImage>> {
    match opts.source_kind {
        SourceKind::Docker => {
            let r = Reference::parse(source).map_err(|e| {
                SyncError::Invalid(format!(
                    "source {source:?} is not a registry reference: {e}"
                ))
            })?;
            let mut cache = HashMap::new();
            let client = client_for(&mut cache, r.registry(DEFAULT_REGISTRY), &opts.source)?;
            match (r.tag(), r.digest()) {
                (Some(_), Some(_)) => Err(SyncError::Invalid(format!(
                    "source {source:?}: a reference with both a tag and a digest is not supported (as skopeo)"
                ))),
                (Some(t), None) => Ok(vec![
                    Repo {
                        client,
                        reference: r.clone(),
                    }
                    .image(t),
                ]),
                (None, Some(d)) => Ok(vec![
                    Repo {
                        client,
                        reference: r.clone(),
                    }
                    .image(&d.to_string()),
                ]),
                (None, None) => {
                    let repo = Repo {
                        client,
                        reference: r,
                    };
                    let tags = repo.tags().await?;
                    if tags.is_empty() {
                        return Err(SyncError::Empty(format!("{source:?}")));
                    }
                    Ok(tags.iter().map(|t| repo.image(t)).collect())
                }
            }
        }
        SourceKind::Dir => {
            let found = dir_images(source)?;
            if found.is_empty() {
                return Err(SyncError::Empty(format!("{source:?}")));
            }
            Ok(found.into_iter().map(SourceImage::Dir).collect())
        }
        SourceKind::Yaml => {
            let path = Path::new(source);
            let file = SyncFile::read(path)?;
            yaml_images(path, &file, opts).await
        }
    }
}

/// Every `dir:` image under `base`, as skopeo finds them: a lexical walk that takes a directory
/// holding `manifest.json` as an image and looks no further in it. Paths are spelt as Go's
/// `filepath.WalkDir` spells them (the base as given, then cleaned joins).
pub fn dir_images(base: &str) -> Result<Vec<PathBuf>> {
    match std::fs::metadata(base) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(SyncError::Invalid(format!(
                "source {base:?} is not a directory"
            )));
        }
        Err(e) => {
            return Err(SyncError::Invalid(format!(
                "invalid source directory {base:?}: {e}"
            )));
        }
    }
    fn walk(dir: &str, out: &mut Vec<PathBuf>) -> Result<()> {
        let io = |e: std::io::Error| SyncError::Invalid(format!("walking {dir:?}: {e}"));
        let mut entries: Vec<(String, bool)> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io)? {
            let e = e.map_err(io)?;
            let is_dir = e.file_type().map_err(io)?.is_dir();
            entries.push((e.file_name().to_string_lossy().into_owned(), is_dir));
        }
        entries.sort();
        for (name, is_dir) in entries {
            let child = go_join(dir, &name);
            if !is_dir && name == "manifest.json" {
                out.push(PathBuf::from(go_clean(dir)));
                return Ok(());
            }
            if is_dir {
                walk(&child, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(base, &mut out)?;
    Ok(out)
}

/// The images of a sync file, every registry and entry checked before any is used.
async fn yaml_images(path: &Path, file: &SyncFile, opts: &SyncOptions) -> Result<Vec<SourceImage>> {
    let entry = |registry: &str, what: String| SyncError::Entry {
        path: path.to_path_buf(),
        registry: registry.to_string(),
        what,
    };
    // (repository, filter) to list, and images named outright.
    let mut listed: Vec<(Repo, Filter)> = Vec::new();
    let mut named: Vec<SourceImage> = Vec::new();
    for (registry, cfg) in &file.registries {
        let mut client_opts = opts.source.clone();
        if let Some(v) = cfg.tls_verify {
            client_opts.tls_verify = v;
        }
        if let Some(d) = &cfg.cert_dir {
            client_opts.cert_dir = Some(d.clone());
        }
        if let Some(c) = &cfg.credentials
            && !(c.username.is_empty() && c.password.is_empty())
        {
            client_opts.credentials = Some(Credentials {
                username: c.username.clone(),
                secret: c.password.clone(),
            });
        }
        if cfg.images.is_empty()
            && cfg.images_by_tag_regex.is_empty()
            && cfg.images_by_semver.is_empty()
        {
            tracing::warn!("registry {registry}: no images specified");
            continue;
        }
        let mut clients = HashMap::new();
        let mut repo = |image: &str| -> Result<Repo> {
            let r = repository_reference(&format!("{registry}/{image}"))
                .map_err(|why| entry(registry, format!("image {image:?}: {why}")))?;
            let client = client_for(&mut clients, r.registry(DEFAULT_REGISTRY), &client_opts)?;
            Ok(Repo {
                client,
                reference: r,
            })
        };
        for (image, refs) in &cfg.images {
            let rp = repo(image)?;
            match refs.as_deref() {
                None | Some([]) => listed.push((rp, Filter::All)),
                Some(refs) => {
                    for r in refs {
                        if Digest::parse(&r.0).is_err() {
                            validate_tag(&r.0).map_err(|e| {
                                entry(
                                    registry,
                                    format!(
                                        "image {image:?}: {:?} is neither a tag nor a digest: {e}",
                                        r.0
                                    ),
                                )
                            })?;
                        }
                        named.push(rp.image(&r.0));
                    }
                }
            }
        }
        for (image, re) in &cfg.images_by_tag_regex {
            let rx = regex::Regex::new(re).map_err(|e| {
                // The regex crate draws the error over several lines; its last line says why.
                let e = e.to_string();
                let why = e.lines().last().unwrap_or_default().trim_start_matches("error: ");
                entry(
                    registry,
                    format!("images-by-tag-regex {image:?}: the regular expression {re:?} does not compile: {why}"),
                )
            })?;
            listed.push((repo(image)?, Filter::Regex(rx)));
        }
        for (image, c) in &cfg.images_by_semver {
            let sc = SemverConstraint::parse(c).map_err(|why| {
                entry(
                    registry,
                    format!("images-by-semver {image:?}: invalid semver constraint {why}"),
                )
            })?;
            listed.push((repo(image)?, Filter::Semver(sc)));
        }
    }
    let lists: Vec<Result<Vec<String>>> = stream::iter(&listed)
        .map(|(repo, _)| repo.tags())
        .buffered(opts.jobs.max(1))
        .collect()
        .await;
    let mut out = named;
    for ((repo, filter), tags) in listed.iter().zip(lists) {
        let tags = tags?;
        let before = out.len();
        out.extend(
            tags.iter()
                .filter(|t| filter.keep(t))
                .map(|t| repo.image(t)),
        );
        if out.len() == before {
            tracing::warn!(
                "{}: no tags to sync found",
                full_repository(&repo.reference)
            );
        }
    }
    Ok(out)
}

/// The destination name of each source image (see the module docs), with duplicates of one
/// source dropped and two sources for one destination refused.
pub fn name_images(
    sources: Vec<SourceImage>,
    source_arg: &str,
    destination: &str,
    opts: &SyncOptions,
) -> Result<Vec<SyncImage>> {
    let mut out: Vec<SyncImage> = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for source in sources {
        let mut suffix = match &source {
            SourceImage::Registry { full_name, .. } => full_name.clone(),
            SourceImage::Dir(p) => {
                let p = p.to_string_lossy();
                match p.strip_prefix(source_arg).unwrap_or(&p) {
                    "" => go_base(source_arg),
                    s => s.to_string(),
                }
            }
        };
        if !opts.scoped {
            suffix = go_base(&suffix);
        }
        let dest = go_join(destination, &suffix) + &opts.append_suffix;
        let name = source.name();
        match seen.get(&dest) {
            Some(first) if *first == name => continue,
            Some(first) => {
                return Err(SyncError::Clash {
                    first: first.clone(),
                    second: name,
                    destination: dest,
                });
            }
            None => {
                seen.insert(dest.clone(), name);
            }
        }
        out.push(SyncImage {
            source,
            destination: dest,
        });
    }
    Ok(out)
}

/// Checks every destination name before anything is written: a registry reference that parses
/// (tag or digest), or a directory that does not exist yet (skopeo refuses to overwrite one).
pub fn check_destinations(images: &[SyncImage], kind: DestKind) -> Result<()> {
    for img in images {
        match kind {
            DestKind::Docker => {
                let r = Reference::parse(&img.destination).map_err(|e| {
                    SyncError::Invalid(format!(
                        "{}: destination {:?} is not a valid image reference: {e}",
                        img.source.name(),
                        img.destination
                    ))
                })?;
                if r.tag().is_some() && r.digest().is_some() {
                    return Err(SyncError::Invalid(format!(
                        "{}: destination {:?} has both a tag and a digest",
                        img.source.name(),
                        img.destination
                    )));
                }
            }
            DestKind::Dir => match std::fs::symlink_metadata(&img.destination) {
                Ok(_) => {
                    return Err(SyncError::Invalid(format!(
                        "{}: refusing to overwrite destination directory {:?}",
                        img.source.name(),
                        img.destination
                    )));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(SyncError::Invalid(format!(
                        "destination directory {:?} cannot be used: {e}",
                        img.destination
                    )));
                }
            },
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Opening: sources and destinations for the copy engine.

/// A sync destination: a registry image, or a `dir:` image created only when the
/// first blob is written (so a sync that fails while reading leaves no directory).
pub enum SyncDest {
    /// `docker://` (and any other opened transport).
    Open(AnyDest),
    /// `dir:`, created on first write.
    Dir(LazyDir),
}

/// A `dir:` destination whose directory is made on first use.
pub struct LazyDir {
    path: PathBuf,
    dest: tokio::sync::OnceCell<DirDest>,
}

impl LazyDir {
    /// The `dir:` image at `path`, not created yet.
    pub fn new(path: PathBuf) -> LazyDir {
        LazyDir {
            path,
            dest: tokio::sync::OnceCell::new(),
        }
    }

    async fn get(&self) -> crate::transport::Result<&DirDest> {
        self.dest
            .get_or_try_init(|| async { DirDest::create(&self.path) })
            .await
    }
}

impl Destination for SyncDest {
    fn name(&self) -> String {
        match self {
            SyncDest::Open(d) => d.name(),
            SyncDest::Dir(d) => format!("dir:{}", d.path.display()),
        }
    }
    fn properties(&self) -> DestProperties {
        match self {
            SyncDest::Open(d) => d.properties(),
            // What `DirDest` says of itself: any manifest type, whole and sparse indexes.
            SyncDest::Dir(_) => DestProperties {
                manifest_types: Vec::new(),
                accepts_index: true,
                accepts_sparse_index: true,
                ordered_blobs: false,
                compresses_layers: false,
            },
        }
    }
    fn accepts_foreign_layer_urls(&self) -> bool {
        match self {
            SyncDest::Open(d) => d.accepts_foreign_layer_urls(),
            // As `DirDest`: a directory fetches foreign layers.
            SyncDest::Dir(_) => false,
        }
    }
    fn prepare(&self) {
        if let SyncDest::Open(d) = self {
            d.prepare()
        }
    }
    async fn has_blob(&self, desc: &Descriptor) -> crate::transport::Result<bool> {
        match self {
            SyncDest::Open(d) => d.has_blob(desc).await,
            SyncDest::Dir(d) => d.get().await?.has_blob(desc).await,
        }
    }
    async fn reuse_blob(&self, desc: &Descriptor) -> crate::transport::Result<Option<Put>> {
        match self {
            SyncDest::Open(d) => d.reuse_blob(desc).await,
            SyncDest::Dir(d) => d.get().await?.reuse_blob(desc).await,
        }
    }
    async fn put_blob(&self, desc: &Descriptor, body: BlobBody) -> crate::transport::Result<Put> {
        match self {
            SyncDest::Open(d) => d.put_blob(desc, body).await,
            SyncDest::Dir(d) => d.get().await?.put_blob(desc, body).await,
        }
    }
    async fn put_blob_opening(
        &self,
        desc: &Descriptor,
        open: impl std::future::Future<Output = std::result::Result<BlobBody, String>> + Send,
    ) -> std::result::Result<Put, crate::transport::OpeningPutError> {
        match self {
            SyncDest::Open(d) => d.put_blob_opening(desc, open).await,
            SyncDest::Dir(d) => {
                let dir = d
                    .get()
                    .await
                    .map_err(crate::transport::OpeningPutError::Destination)?;
                dir.put_blob_opening(desc, open).await
            }
        }
    }
    async fn put_manifest(&self, manifest: &RawManifest) -> crate::transport::Result<()> {
        match self {
            SyncDest::Open(d) => d.put_manifest(manifest).await,
            SyncDest::Dir(d) => d.get().await?.put_manifest(manifest).await,
        }
    }
    async fn commit(&self, top: &RawManifest) -> crate::transport::Result<()> {
        match self {
            SyncDest::Open(d) => d.commit(top).await,
            SyncDest::Dir(d) => d.get().await?.commit(top).await,
        }
    }
}

/// The copy jobs of a sync: every source opened, every destination named (a registry
/// destination shares `pushed`, so a blob pushed to one repository is mounted into the next).
pub fn open_jobs(
    images: &[SyncImage],
    kind: DestKind,
    dest_clients: &Clients,
    open: &OpenOptions,
    pushed: &Arc<Pushed>,
) -> Result<Vec<crate::copy::Job<AnySource, SyncDest>>> {
    images
        .iter()
        .map(|img| {
            let source = match &img.source {
                SourceImage::Registry {
                    client,
                    repository,
                    reference,
                    ..
                } => AnySource::Registry(RegistrySource::new(
                    client.clone(),
                    repository.clone(),
                    reference.clone(),
                    img.source.name(),
                )),
                SourceImage::Dir(p) => AnySource::Dir(DirSource::open(p)?),
            };
            let destination = match kind {
                DestKind::Docker => {
                    let r = Reference::parse(&img.destination).map_err(|e| {
                        SyncError::Invalid(format!("destination {:?}: {e}", img.destination))
                    })?;
                    SyncDest::Open(open_dest(&ImageRef::Docker(r), dest_clients, open, pushed)?)
                }
                DestKind::Dir => SyncDest::Dir(LazyDir::new(PathBuf::from(&img.destination))),
            };
            Ok(crate::copy::Job {
                source,
                destination,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_paths() {
        for (a, b, want) in [
            ("127.0.0.1:5000", "b:1", "127.0.0.1:5000/b:1"),
            ("127.0.0.1:5000/", "b:1", "127.0.0.1:5000/b:1"),
            ("reg/prefix/", "/x/y:1", "reg/prefix/x/y:1"),
            ("/tmp/out", "h:1/a/b:t", "/tmp/out/h:1/a/b:t"),
            ("./out", "b:1", "out/b:1"),
            ("a/../b", "c", "b/c"),
        ] {
            assert_eq!(go_join(a, b), want, "{a} + {b}");
        }
        assert_eq!(go_base("h:1/a/b:t"), "b:t");
        assert_eq!(go_base("b@sha256:00"), "b@sha256:00");
        assert_eq!(go_base("/x/"), "x");
        assert_eq!(go_clean("/../a"), "/a");
        assert_eq!(go_clean("../../a"), "../../a");
    }

    #[test]
    fn yaml_keys_and_errors() {
        let p = Path::new("s.yaml");
        let ok = "reg.example:5000:\n  images:\n    a/b: []\n    c:\n      - \"1.0\"\n      - 2\n      - sha256:0000000000000000000000000000000000000000000000000000000000000000\n  images-by-tag-regex:\n    d: ^v1\\.\n  images-by-semver:\n    e: \">= 1.2, < 2\"\n  credentials:\n    username: u\n    password: p\n  tls-verify: false\n  cert-dir: /certs\nquay.io:\n  images:\n    x/y:\n";
        let f = SyncFile::parse(p, ok).unwrap();
        assert_eq!(f.registries.len(), 2);
        assert_eq!(f.registries[0].0, "reg.example:5000");
        let r = &f.registries[0].1;
        assert_eq!(r.images["c"].as_ref().unwrap()[1].0, "2");
        assert_eq!(r.tls_verify, Some(false));
        let e = SyncFile::parse(p, "r:\n  images:\n    a: []\n  tls_verify: false\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls_verify") && e.contains("line 4"), "{e}");
        let e = SyncFile::parse(p, "r:\n  images: [\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line"), "{e}");
        let e = SyncFile::parse(p, "r:\n  images:\n    c:\n      - 1.10\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("quote"), "{e}");
        assert!(
            SyncFile::parse(p, "# nothing\n")
                .unwrap()
                .registries
                .is_empty()
        );
    }

    #[test]
    fn semver_as_masterminds() {
        let c = |s: &str| SemverConstraint::parse(s).unwrap();
        assert!(c(">=1.2").matches_tag("v1.2.0"));
        assert!(c(">= 1.2, < 2").matches_tag("1.9.9"));
        assert!(!c(">= 1.2, < 2").matches_tag("2.0.0"));
        assert!(c(">= 1.2 < 2").matches_tag("1.3"));
        assert!(c("1.2.3").matches_tag("v1.2.3"));
        assert!(!c("1.2.3").matches_tag("1.2.4"));
        assert!(c("1.1 - 1.3").matches_tag("1.3.0"));
        assert!(c("1.1 - 1.3").matches_tag("1.3.1")); // a partial upper bound covers its patches, as in Masterminds
        assert!(!c("1.1 - 1.3").matches_tag("1.4.0"));
        assert!(c("<1 || >=3").matches_tag("3.1.0"));
        assert!(!c("<1 || >=3").matches_tag("2.0.0"));
        assert!(!c(">=1, !=1.5.0").matches_tag("1.5.0"));
        assert!(c("~1.2").matches_tag("1.2.9"));
        assert!(c("1.x").matches_tag("1.7.0"));
        assert!(!c(">=1").matches_tag("latest"));
        assert!(!c(">=1").matches_tag("1.0.0.0"));
        for bad in ["", ">=", "nonsense", ">=1.2 ||", "=>>1"] {
            assert!(SemverConstraint::parse(bad).is_err(), "{bad:?}");
        }
    }
}
