//! Link files, tags, and linking a whole image into a repository.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use super::blobs::write_atomic;
use super::{Result, Store, StoreError};
use crate::digest::Digest;
use crate::limits::MAX_LINK_BYTES;
use crate::manifest::Manifest;
use crate::media_type;
use crate::reference::{validate_repository, validate_tag};
use crate::store::paths::PathSpec;

/// How deep indexes may nest before ferry stops following them.
pub const MAX_INDEX_DEPTH: usize = 4;

/// Reads a link file: `Ok(None)` when it does not exist, an error when it holds anything but a digest.
pub fn read_link(path: &Path) -> Result<Option<Digest>> {
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Io {
                op: "reading link",
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    let mut buf = Vec::new();
    f.take(MAX_LINK_BYTES)
        .read_to_end(&mut buf)
        .map_err(StoreError::io("reading link", path))?;
    let text = String::from_utf8_lossy(&buf);
    Digest::parse(&text)
        .map(Some)
        .map_err(|_| StoreError::BadLink {
            path: path.to_path_buf(),
            content: text.chars().take(80).collect(),
        })
}

/// What linking an image into a repository did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkReport {
    /// Every manifest linked (the top one and present children).
    pub manifests: Vec<Digest>,
    /// Every config and layer linked.
    pub blobs: BTreeSet<Digest>,
    /// Index children not in the store, left out (a sparse index).
    pub missing_children: Vec<Digest>,
    /// The tag's previous digest when it moved.
    pub tag_moved_from: Option<Digest>,
}

impl Store {
    /// Writes `sha256:<hex>` (no newline) at `path` unless it already says exactly that.
    fn write_link(&self, path: &Path, digest: &Digest) -> Result<bool> {
        if let Ok(Some(existing)) = read_link(path)
            && &existing == digest
        {
            return Ok(false);
        }
        write_atomic(self, path, digest.to_string().as_bytes(), "writing link")?;
        Ok(true)
    }

    /// Lets `repo` serve the config or layer blob `digest`.
    pub fn link_layer(&self, repo: &str, digest: &Digest) -> Result<()> {
        validate_repository(repo)?;
        self.write_link(&self.path(PathSpec::LayerLink(repo, digest)), digest)?;
        Ok(())
    }

    /// Lets `repo` serve the manifest `digest`.
    pub fn link_revision(&self, repo: &str, digest: &Digest) -> Result<()> {
        validate_repository(repo)?;
        self.write_link(&self.path(PathSpec::RevisionLink(repo, digest)), digest)?;
        Ok(())
    }

    /// Points `repo:tag` at `digest`: the tag's index link first, `current/link` last (as distribution's tagstore).
    /// Returns the previous digest when the tag moved.
    pub fn tag(&self, repo: &str, tag: &str, digest: &Digest) -> Result<Option<Digest>> {
        validate_repository(repo)?;
        validate_tag(tag)?;
        self.write_link(
            &self.path(PathSpec::TagIndexLink(repo, tag, digest)),
            digest,
        )?;
        let current = self.path(PathSpec::TagCurrentLink(repo, tag));
        let old = read_link(&current).ok().flatten();
        self.write_link(&current, digest)?;
        Ok(old.filter(|o| o != digest))
    }

    /// The digest `repo:tag` points at, if the tag exists.
    pub fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>> {
        validate_repository(repo)?;
        validate_tag(tag)?;
        read_link(&self.path(PathSpec::TagCurrentLink(repo, tag)))
    }

    /// Whether `repo` links the manifest `digest` (what distribution checks before serving it).
    pub fn has_revision(&self, repo: &str, digest: &Digest) -> bool {
        matches!(read_link(&self.path(PathSpec::RevisionLink(repo, digest))), Ok(Some(d)) if &d == digest)
    }

    /// Whether `repo` links the blob `digest` (what distribution checks before serving it).
    pub fn has_layer_link(&self, repo: &str, digest: &Digest) -> bool {
        matches!(read_link(&self.path(PathSpec::LayerLink(repo, digest))), Ok(Some(d)) if &d == digest)
    }

    /// Links an image whose blobs are already in the store into `repo`, children
    /// before parents, then tags it. Index children absent from the store are
    /// left out and reported (a sparse index); a missing config or layer is an error.
    pub fn link_image(&self, repo: &str, digest: &Digest, tag: Option<&str>) -> Result<LinkReport> {
        validate_repository(repo)?;
        if let Some(t) = tag {
            validate_tag(t)?;
        }
        let mut report = LinkReport::default();
        self.link_manifest(repo, digest, 0, &mut report)?;
        if let Some(t) = tag {
            report.tag_moved_from = self.tag(repo, t, digest)?;
        }
        Ok(report)
    }

    fn link_manifest(
        &self,
        repo: &str,
        digest: &Digest,
        depth: usize,
        report: &mut LinkReport,
    ) -> Result<()> {
        if depth > MAX_INDEX_DEPTH {
            return Err(StoreError::TooDeep(digest.clone()));
        }
        let raw = self.read_manifest(digest)?;
        let manifest = raw.parse().map_err(|source| StoreError::Manifest {
            digest: digest.clone(),
            source,
        })?;
        match &manifest {
            Manifest::Image(_) => {
                for blob in manifest.blobs() {
                    if !self.has_blob(&blob.digest) {
                        if !media_type::is_distributable(&blob.media_type) {
                            continue;
                        }
                        return Err(StoreError::BlobUnknown(blob.digest.clone()));
                    }
                    self.link_layer(repo, &blob.digest)?;
                    report.blobs.insert(blob.digest.clone());
                }
            }
            Manifest::Index(_) => {
                for child in manifest.children() {
                    if self.has_blob(&child.digest) {
                        self.link_manifest(repo, &child.digest, depth + 1, report)?;
                    } else {
                        report.missing_children.push(child.digest.clone());
                    }
                }
            }
        }
        self.link_revision(repo, digest)?;
        report.manifests.push(digest.clone());
        Ok(())
    }

    /// Hardlinks an image (all present manifests and blobs) from `other` into `repo` here and tags it.
    pub fn import_image(
        &self,
        other: &Store,
        digest: &Digest,
        repo: &str,
        tag: Option<&str>,
    ) -> Result<LinkReport> {
        self.import_manifest_blobs(other, digest, 0)?;
        self.link_image(repo, digest, tag)
    }

    fn import_manifest_blobs(&self, other: &Store, digest: &Digest, depth: usize) -> Result<()> {
        if depth > MAX_INDEX_DEPTH {
            return Err(StoreError::TooDeep(digest.clone()));
        }
        let raw = other.read_manifest(digest)?;
        let manifest = raw.parse().map_err(|source| StoreError::Manifest {
            digest: digest.clone(),
            source,
        })?;
        for blob in manifest.blobs() {
            if other.has_blob(&blob.digest) || media_type::is_distributable(&blob.media_type) {
                self.import_blob(other, &blob.digest)?;
            }
        }
        for child in manifest.children() {
            if other.has_blob(&child.digest) {
                self.import_manifest_blobs(other, &child.digest, depth + 1)?;
            }
        }
        self.import_blob(other, digest)
    }
}
