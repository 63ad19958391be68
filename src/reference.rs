//! Image references as docker and skopeo read them, and images-list files.
//!
//! Pure parsing, no I/O. A reference keeps its repository *as written*
//! (`redis`, not `library/redis`): that is the name it gets in a bundle. The
//! docker.io `library/` rule is applied only when asking Docker Hub.

use std::fmt;

use crate::digest::Digest;
use crate::limits::{MAX_REPOSITORY_LEN, MAX_TAG_LEN};

/// The registry a reference without a host is pulled from, unless told otherwise.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// The tag a reference without tag or digest means.
pub const DEFAULT_TAG: &str = "latest";

/// Why a string is not an image reference, repository name or tag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReferenceError {
    /// Empty input.
    #[error("empty image reference")]
    Empty,
    /// A host part that is not `name[:port]`.
    #[error("invalid registry host {0:?}")]
    BadHost(String),
    /// A repository name outside the distribution grammar.
    #[error(
        "invalid repository name {0:?}: components must be lower-case letters and digits, \
         separated by '.', '_', '__' or '-', joined by '/'"
    )]
    BadRepository(String),
    /// A repository name over 255 characters.
    #[error("repository name {0:?} is longer than 255 characters")]
    RepositoryTooLong(String),
    /// A tag outside `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error(
        "invalid tag {0:?}: up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
    )]
    BadTag(String),
    /// A digest that does not validate.
    #[error(transparent)]
    BadDigest(#[from] crate::digest::DigestError),
}

/// Checks a repository name against the distribution grammar (rejects `..`, upper case, empty components).
pub fn validate_repository(name: &str) -> Result<(), ReferenceError> {
    if name.len() > MAX_REPOSITORY_LEN {
        return Err(ReferenceError::RepositoryTooLong(name.to_string()));
    }
    if name.is_empty() || !name.split('/').all(valid_path_component) {
        return Err(ReferenceError::BadRepository(name.to_string()));
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Checks a tag against `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), ReferenceError> {
    let b = tag.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let ok = !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-');
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::BadTag(tag.to_string()))
    }
}

fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(']') || n.starts_with('[') => (n, Some(p)),
        _ => (host, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        !v6.is_empty()
            && v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    } else {
        !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    port_ok && name_ok
}

/// An image reference: `[host[:port]/]repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    host: Option<String>,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference as docker does: the first component is a host when it
    /// has a `.` or `:` or is `localhost`.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d)?)),
            None => (s, None),
        };
        let (host, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !valid_host(first) {
                    return Err(ReferenceError::BadHost(first.to_string()));
                }
                (Some(first.to_string()), path)
            }
            _ => (None, rest),
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) => (r, Some(t)),
            None => (path, None),
        };
        validate_repository(repository)?;
        if let Some(t) = tag {
            validate_tag(t)?;
        }
        Ok(Reference {
            host,
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// The host as written, if any.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The repository as written (no `library/` added).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag as written, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The pinned digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The tag this reference names: the written one, or `latest` when it has neither tag nor digest.
    pub fn effective_tag(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(t), _) => Some(t),
            (None, None) => Some(DEFAULT_TAG),
            (None, Some(_)) => None,
        }
    }

    /// The registry to ask: the written host, else `default_registry`.
    pub fn registry<'a>(&'a self, default_registry: &'a str) -> &'a str {
        self.host.as_deref().unwrap_or(default_registry)
    }

    /// The repository to ask that registry for: Docker Hub's single names get `library/`.
    pub fn remote_repository(&self, default_registry: &str) -> String {
        let reg = self.registry(default_registry);
        if is_docker_hub(reg) && !self.repository.contains('/') {
            format!("library/{}", self.repository)
        } else {
            self.repository.clone()
        }
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn remote_ref(&self) -> String {
        match (&self.digest, self.effective_tag()) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }
}

/// Whether a host is Docker Hub under any of its names.
pub fn is_docker_hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(h) = &self.host {
            write!(f, "{h}/")?;
        }
        f.write_str(&self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// One image of an images list, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// The file it came from, as given.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// The `##section` it is in, if any.
    pub section: Option<String>,
    /// The parsed reference.
    pub reference: Reference,
}

/// A line of an images list that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {text:?}: {cause}")]
pub struct ListLineError {
    /// The file, as given.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// The offending text.
    pub text: String,
    /// Why it does not parse.
    pub cause: ReferenceError,
}

/// Every bad line of one or more images lists, so a user fixes them all in one go.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ListError(pub Vec<ListLineError>);

/// Parses images-list text: `#` comments, `##section` headers, CRLF, blank
/// lines. Duplicates (same reference) are kept once, at their first place.
pub fn parse_images_list(file: &str, text: &str) -> Result<Vec<ListEntry>, ListError> {
    let mut entries: Vec<ListEntry> = Vec::new();
    let mut errors = Vec::new();
    let mut section = None;
    // Where each reference was taken, by its hash (an index, not a copy): comparing each line
    // with every earlier one cost the square of the list's length (50,000 lines: over a second).
    let hasher = std::collections::hash_map::RandomState::new();
    let mut taken: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    use std::hash::BuildHasher;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(name) = line.strip_prefix("##") {
            let name = name.trim();
            if !name.is_empty() && !name.chars().all(|c| c == '#') {
                section = Some(name.to_string());
            }
            continue;
        }
        let content = match line.find('#') {
            Some(0) => "",
            Some(p) if line[..p].ends_with(char::is_whitespace) => line[..p].trim_end(),
            _ => line,
        };
        if content.is_empty() {
            continue;
        }
        match Reference::parse(content) {
            Ok(reference) => {
                let again = match taken.entry(hasher.hash_one(&reference)) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(entries.len());
                        false
                    }
                    // Two references of one hash are compared in full, with every entry (rare).
                    std::collections::hash_map::Entry::Occupied(o) => {
                        entries[*o.get()].reference == reference
                            || entries.iter().any(|e| e.reference == reference)
                    }
                };
                if !again {
                    entries.push(ListEntry {
                        file: file.to_string(),
                        line: i + 1,
                        section: section.clone(),
                        reference,
                    });
                }
            }
            Err(cause) => errors.push(ListLineError {
                file: file.to_string(),
                line: i + 1,
                text: content.to_string(),
                cause,
            }),
        }
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(ListError(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn reference_table() {
        // input, host, repository, tag, digest?, remote repository against docker.io
        type Row<'a> = (
            &'a str,
            Option<&'a str>,
            &'a str,
            Option<&'a str>,
            bool,
            &'a str,
        );
        let table: &[Row] = &[
            (
                "redis:5.0.12-alpine",
                None,
                "redis",
                Some("5.0.12-alpine"),
                false,
                "library/redis",
            ),
            ("perl", None, "perl", None, false, "library/perl"),
            (
                "kubesphere/kube-apiserver:v1.20.6",
                None,
                "kubesphere/kube-apiserver",
                Some("v1.20.6"),
                false,
                "kubesphere/kube-apiserver",
            ),
            (
                "minio/minio:RELEASE.2019-08-07T01-59-21Z",
                None,
                "minio/minio",
                Some("RELEASE.2019-08-07T01-59-21Z"),
                false,
                "minio/minio",
            ),
            (
                "quay.io/coreos/etcd:v3.4",
                Some("quay.io"),
                "coreos/etcd",
                Some("v3.4"),
                false,
                "coreos/etcd",
            ),
            ("localhost/x", Some("localhost"), "x", None, false, "x"),
            (
                "127.0.0.1:5000/a/b/c:1",
                Some("127.0.0.1:5000"),
                "a/b/c",
                Some("1"),
                false,
                "a/b/c",
            ),
            (
                "localhost:5000/x@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                Some("localhost:5000"),
                "x",
                None,
                true,
                "x",
            ),
            (
                "x:1@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                None,
                "x",
                Some("1"),
                true,
                "library/x",
            ),
            ("[::1]:5000/x", Some("[::1]:5000"), "x", None, false, "x"),
            (
                "a__b/c-----d/e.f_g",
                None,
                "a__b/c-----d/e.f_g",
                None,
                false,
                "a__b/c-----d/e.f_g",
            ),
        ];
        for &(input, host, repo, tag, pinned, remote) in table {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.host(), host, "{input}");
            assert_eq!(r.repository(), repo, "{input}");
            assert_eq!(r.tag(), tag, "{input}");
            assert_eq!(r.digest().is_some(), pinned, "{input}");
            assert_eq!(r.remote_repository(DEFAULT_REGISTRY), remote, "{input}");
            assert_eq!(r.to_string(), input, "Display round-trips");
        }
        let r = Reference::parse("perl").unwrap();
        assert_eq!(r.effective_tag(), Some("latest"));
        assert_eq!(r.remote_ref(), "latest");
        let r = Reference::parse(&format!("x@{D}")).unwrap();
        assert_eq!(r.effective_tag(), None);
        assert_eq!(r.remote_ref(), D);
        assert_eq!(
            Reference::parse("x")
                .unwrap()
                .remote_repository("127.0.0.1:5000"),
            "x"
        );
    }

    #[test]
    fn bad_references() {
        let table = [
            ("", "empty"),
            ("Redis:1", "invalid repository"),
            ("a/../b", "invalid repository"),
            ("../etc", "invalid registry host"),
            ("a//b", "invalid repository"),
            ("a/b/", "invalid repository"),
            ("-a", "invalid repository"),
            ("a:-1", "invalid tag"),
            ("a:.x", "invalid tag"),
            ("a:b/c", "invalid registry host"),
            ("a@sha256:abc", "lower-case hex"),
            ("a@sha256:../../x", "lower-case hex"),
            ("a@md5:x", "unsupported"),
            ("ex ample.com/x", "invalid"),
            ("host.com:99x/x", "invalid registry host"),
            ("a b", "invalid repository"),
        ];
        for (input, why) in table {
            let err = Reference::parse(input).unwrap_err().to_string();
            assert!(err.contains(why), "{input:?}: {err}");
        }
        let long_tag = format!("a:{}", "t".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
        let long_repo = "a".repeat(256);
        assert!(matches!(
            Reference::parse(&long_repo),
            Err(ReferenceError::RepositoryTooLong(_))
        ));
    }

    #[test]
    fn images_list_syntax() {
        let text = "# header comment\r\n\r\n##first\r\nredis:5 # pinned for x\r\nalpine:3.14\r\n   \r\n##second\r\nredis:5\r\nquay.io/a/b@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\r\n##########\r\nx#y\r\n";
        let e = parse_images_list("l.txt", text);
        // `x#y`: '#' not after whitespace is part of the reference, which is then invalid.
        let err = e.unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].line, 11);
        assert!(
            err.to_string()
                .starts_with("l.txt:11: \"x#y\": invalid repository"),
            "{err}"
        );

        let e = parse_images_list("l.txt", &text.replace("x#y", "x")).unwrap();
        let got: Vec<_> = e
            .iter()
            .map(|e| (e.line, e.section.as_deref(), e.reference.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                (4, Some("first"), "redis:5".to_string()),
                (5, Some("first"), "alpine:3.14".to_string()),
                (9, Some("second"), format!("quay.io/a/b@{D}")),
                (11, Some("second"), "x".to_string()),
            ]
        );
    }

    #[test]
    fn kubesphere_list() {
        let text = include_str!("../fixtures/lists/kubesphere-images-list.txt");
        let entries = parse_images_list("kubesphere-images-list.txt", text).unwrap();
        assert_eq!(entries.len(), 143);
        let mut sections: Vec<&str> = entries
            .iter()
            .filter_map(|e| e.section.as_deref())
            .collect();
        sections.dedup();
        assert_eq!(sections.len(), 10);
        assert_eq!(sections[0], "k8s-images");
        let bare: Vec<_> = entries
            .iter()
            .filter(|e| !e.reference.repository().contains('/'))
            .collect();
        assert_eq!(bare.len(), 9);
        assert!(bare.iter().all(|e| e.reference.host().is_none()));
        let minio = entries
            .iter()
            .find(|e| e.reference.repository() == "minio/minio")
            .unwrap();
        assert_eq!(minio.reference.tag(), Some("RELEASE.2019-08-07T01-59-21Z"));
        assert_eq!(minio.section.as_deref(), Some("kubesphere-images"));
    }
}
