//! Manifests as raw bytes (their digest is always of the bytes received) plus
//! typed, read-only views of the four formats ferry handles.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::limits::MAX_MANIFEST_BYTES;
use crate::media_type as mt;

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest is {size} bytes, over the {limit}-byte cap")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// Not JSON, or not the shape its media type promises.
    #[error("manifest does not parse as {media_type}: {source}")]
    Malformed {
        /// The media type it was read as.
        media_type: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// Docker schema 1: deprecated, digests not portable.
    #[error(
        "manifest is Docker schema 1, which ferry does not support; convert it to schema 2 first \
         (for example `skopeo copy --format v2s2 SRC DST`)"
    )]
    Schema1,
    /// A media type that is neither an image manifest nor an index.
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
}

/// A manifest exactly as received: bytes, the media type it declares, and the digest of those bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawManifest {
    /// Shared, so the many copies a plan of thousands of references holds cost one allocation.
    bytes: bytes::Bytes,
    media_type: String,
    digest: Digest,
}

impl RawManifest {
    /// Takes ownership of manifest bytes, checks the cap and finds the media type
    /// (the document's own `mediaType`, else `declared`, else the shape of the JSON).
    pub fn new(bytes: Vec<u8>, declared: Option<&str>) -> Result<RawManifest, ManifestError> {
        let size = bytes.len() as u64;
        if size > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                size,
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let media_type = detect_media_type(&bytes, declared)?;
        let digest = Digest::sha256_of(&bytes);
        Ok(RawManifest {
            bytes: bytes::Bytes::from(bytes),
            media_type,
            digest,
        })
    }

    /// The bytes, to store, push or serve unchanged.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The media type, to send as `Content-Type`.
    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    /// The sha256 of the bytes.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// A typed view for reading children and blobs.
    pub fn parse(&self) -> Result<Manifest, ManifestError> {
        let malformed = |source| ManifestError::Malformed {
            media_type: self.media_type.clone(),
            source,
        };
        if mt::is_index(&self.media_type) {
            serde_json::from_slice(&self.bytes)
                .map(|i| Manifest::Index(Box::new(i)))
                .map_err(malformed)
        } else {
            serde_json::from_slice(&self.bytes)
                .map(|m| Manifest::Image(Box::new(m)))
                .map_err(malformed)
        }
    }
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    config: Option<serde_json::Value>,
    #[serde(rename = "fsLayers")]
    fs_layers: Option<serde_json::Value>,
}

fn detect_media_type(bytes: &[u8], declared: Option<&str>) -> Result<String, ManifestError> {
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Malformed {
            media_type: declared.unwrap_or("a manifest").to_string(),
            source,
        })?;
    if probe.schema_version == Some(1) || probe.fs_layers.is_some() {
        return Err(ManifestError::Schema1);
    }
    let declared = declared.map(|d| d.split(';').next().unwrap_or(d).trim());
    let media_type = match (probe.media_type.as_deref(), declared) {
        (Some(m), _) if !m.is_empty() => m.to_string(),
        (_, Some(d)) if mt::is_index(d) || mt::is_image_manifest(d) || mt::is_schema1(d) => {
            d.to_string()
        }
        _ if probe.manifests.is_some() => mt::OCI_INDEX.to_string(),
        _ if probe.config.is_some() => mt::OCI_MANIFEST.to_string(),
        _ => return Err(ManifestError::UnsupportedMediaType(String::new())),
    };
    if mt::is_schema1(&media_type) {
        return Err(ManifestError::Schema1);
    }
    if !mt::is_index(&media_type) && !mt::is_image_manifest(&media_type) {
        return Err(ManifestError::UnsupportedMediaType(media_type));
    }
    Ok(media_type)
}

/// A reference from one document to a blob or manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the target is.
    pub media_type: String,
    /// The target's digest.
    pub digest: Digest,
    /// The target's size in bytes.
    pub size: u64,
    /// For index entries: which platform the child is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Alternative download locations (foreign layers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// One image: a config and its layers (Docker schema 2 or OCI manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// Docker sets it; OCI may leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// The layer blobs, base first.
    pub layers: Vec<Descriptor>,
    /// OCI 1.1 referrers subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// OCI 1.1 artifact type (a referrer's kind: a signature, an SBOM, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A list of manifests, one per platform (Docker manifest list or OCI index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// Docker sets it; OCI may leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The children.
    pub manifests: Vec<Descriptor>,
    /// OCI 1.1 referrers subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// OCI 1.1 artifact type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The typed view of a [`RawManifest`]: read from, never re-serialised to compute a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// One image.
    Image(Box<ImageManifest>),
    /// A list of images.
    Index(Box<ImageIndex>),
}

impl Manifest {
    /// The blobs an image needs (config first, then layers); empty for an index.
    pub fn blobs(&self) -> Vec<&Descriptor> {
        match self {
            Manifest::Image(m) => std::iter::once(&m.config).chain(&m.layers).collect(),
            Manifest::Index(_) => Vec::new(),
        }
    }

    /// The manifest this one refers to (OCI 1.1 `subject`), which makes it a referrer.
    pub fn subject(&self) -> Option<&Descriptor> {
        match self {
            Manifest::Image(m) => m.subject.as_ref(),
            Manifest::Index(i) => i.subject.as_ref(),
        }
    }

    /// The kind a referrers listing gives it: its `artifactType`, else its config's media type.
    pub fn artifact_type(&self) -> Option<&str> {
        match self {
            Manifest::Image(m) => m
                .artifact_type
                .as_deref()
                .or(Some(m.config.media_type.as_str())),
            Manifest::Index(i) => i.artifact_type.as_deref(),
        }
    }

    /// Its annotations.
    pub fn annotations(&self) -> &BTreeMap<String, String> {
        match self {
            Manifest::Image(m) => &m.annotations,
            Manifest::Index(i) => &i.annotations,
        }
    }

    /// The child manifests of an index; empty for an image.
    pub fn children(&self) -> &[Descriptor] {
        match self {
            Manifest::Image(_) => &[],
            Manifest::Index(i) => &i.manifests,
        }
    }
}

/// An OS/architecture pair, as in index entries and `--platform`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Platform {
    /// CPU architecture, GOARCH spelling (`amd64`, `arm64`).
    pub architecture: String,
    /// Operating system, GOOS spelling (`linux`).
    pub os: String,
    /// CPU variant (`v8`, `v7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// OS version (Windows).
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// OS features (Windows).
    #[serde(default, rename = "os.features", skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]` as given to `--platform`.
    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(format!("platform {s:?} is not OS/ARCH[/VARIANT]"));
        }
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts[1].to_ascii_lowercase(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
            ..Platform::default()
        })
    }

    /// Whether an index entry's platform satisfies this wanted one, with the
    /// usual defaults (arm64 means v8, arm means v7; no variant wanted matches any).
    pub fn matches(&self, candidate: &Platform) -> bool {
        fn norm(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
            let arch = match arch {
                "x86_64" | "x86-64" => "amd64",
                "aarch64" => "arm64",
                a => a,
            };
            let variant = match (arch, variant) {
                ("arm64", None) => Some("v8"),
                ("arm", None) => Some("v7"),
                ("amd64", Some("v1")) => None,
                (_, v) => v,
            };
            (arch.to_string(), variant.map(str::to_string))
        }
        let (want_arch, want_variant) = norm(&self.architecture, self.variant.as_deref());
        let (arch, variant) = norm(&candidate.architecture, candidate.variant.as_deref());
        self.os == candidate.os
            && want_arch == arch
            && (self.variant.is_none() || want_variant == variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_media_types() {
        let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
        let raw = RawManifest::new(docker.to_vec(), None).unwrap();
        assert_eq!(raw.media_type(), mt::DOCKER_MANIFEST);
        assert_eq!(raw.digest(), &Digest::sha256_of(docker));
        assert_eq!(raw.parse().unwrap().blobs().len(), 1);

        let oci_index = br#"{"schemaVersion":2,"manifests":[]}"#;
        let raw = RawManifest::new(oci_index.to_vec(), None).unwrap();
        assert_eq!(raw.media_type(), mt::OCI_INDEX);

        let schema1 = br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        let err = RawManifest::new(schema1.to_vec(), None).unwrap_err();
        assert!(
            err.to_string().contains("skopeo copy --format v2s2"),
            "{err}"
        );

        let err = RawManifest::new(b"{not json".to_vec(), None).unwrap_err();
        assert!(matches!(err, ManifestError::Malformed { .. }));

        let big = vec![b' '; MAX_MANIFEST_BYTES as usize + 1];
        assert!(matches!(
            RawManifest::new(big, None),
            Err(ManifestError::TooLarge { .. })
        ));

        let odd = br#"{"schemaVersion":2,"mediaType":"text/plain","config":{}}"#;
        assert!(matches!(
            RawManifest::new(odd.to_vec(), None),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn platform_matching() {
        let p = |s: &str| Platform::parse(s).unwrap();
        let table = [
            ("linux/amd64", "linux/amd64", true),
            ("linux/arm64", "linux/arm64/v8", true),
            ("linux/arm64/v8", "linux/arm64", true),
            ("linux/arm", "linux/arm/v6", true),
            ("linux/arm/v7", "linux/arm", true),
            ("linux/arm/v7", "linux/arm/v6", false),
            ("linux/amd64", "linux/arm64", false),
            ("linux/amd64", "windows/amd64", false),
        ];
        for (want, have, expect) in table {
            assert_eq!(p(want).matches(&p(have)), expect, "{want} vs {have}");
        }
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/amd64/v1/x").is_err());
        assert!(Platform::parse("linux//v8").is_err());
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64/v8");
    }
}
