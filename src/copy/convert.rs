//! What manifests a copy writes: the source's bytes unchanged when the
//! destination takes them, else Docker schema 2 ⇄ OCI conversions (as
//! containers/image converts them: same config and layer bytes, new media
//! types, a new digest) and indexes rewritten to name their converted or
//! present children. New documents are serialised field for field as
//! containers/image serialises them (compact JSON in Go struct order), so
//! ferry and skopeo write the same bytes.

use std::collections::HashMap;

use serde::Serialize;

use super::CopyOptions;
use crate::digest::Digest;
use crate::image::ImageWalk;
use crate::manifest::{Descriptor, Manifest, Platform, RawManifest};
use crate::media_type as mt;
use crate::transport::DestProperties;

/// A manifest format to convert to (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// OCI image manifest and index.
    Oci,
    /// Docker image manifest schema 2 and manifest list.
    V2s2,
}

/// Why the manifests cannot be written as asked.
#[derive(Debug)]
pub enum Refusal {
    /// A digest would change and `--preserve-digests` forbids it.
    DigestChange(String),
    /// The conversion is impossible.
    Cannot(String),
}

/// Go's layout of an OCI descriptor (image-spec `Descriptor`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OciDesc<'a> {
    media_type: &'a str,
    digest: &'a Digest,
    size: u64,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    urls: &'a [String],
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: &'a std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<GoPlatform<'a>>,
}

/// Go's layout of a Docker schema 2 descriptor (size before digest).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DockerDesc<'a> {
    media_type: &'a str,
    size: u64,
    digest: &'a Digest,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    urls: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<GoPlatform<'a>>,
}

/// Go's layout of a platform (architecture, os, os.version, os.features, variant).
#[derive(Serialize)]
struct GoPlatform<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(rename = "os.version", skip_serializing_if = "Option::is_none")]
    os_version: Option<&'a str>,
    #[serde(rename = "os.features", skip_serializing_if = "<[String]>::is_empty")]
    os_features: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
}

fn go_platform(p: &Option<Platform>) -> Option<GoPlatform<'_>> {
    p.as_ref().map(|p| GoPlatform {
        architecture: &p.architecture,
        os: &p.os,
        os_version: p.os_version.as_deref(),
        os_features: &p.os_features,
        variant: p.variant.as_deref(),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GoImage<D: Serialize> {
    schema_version: u32,
    media_type: &'static str,
    config: D,
    layers: Vec<D>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GoIndex<D: Serialize> {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<D>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

fn family_of(media_type: &str) -> Format {
    if media_type.starts_with("application/vnd.docker.") {
        Format::V2s2
    } else {
        Format::Oci
    }
}

/// The layer media type in the other family; `None` when it has no equivalent.
fn layer_type(media_type: &str, to: Format) -> Option<&'static str> {
    const NONDIST: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    const DOCKER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    Some(match (to, media_type) {
        (Format::Oci, mt::DOCKER_LAYER_GZIP) | (Format::Oci, mt::OCI_LAYER_GZIP) => {
            mt::OCI_LAYER_GZIP
        }
        (Format::Oci, DOCKER_TAR) | (Format::Oci, mt::OCI_LAYER) => mt::OCI_LAYER,
        (Format::Oci, mt::DOCKER_LAYER_FOREIGN) | (Format::Oci, NONDIST) => NONDIST,
        (Format::Oci, mt::OCI_LAYER_ZSTD) => mt::OCI_LAYER_ZSTD,
        (Format::V2s2, mt::OCI_LAYER_GZIP) | (Format::V2s2, mt::DOCKER_LAYER_GZIP) => {
            mt::DOCKER_LAYER_GZIP
        }
        (Format::V2s2, mt::OCI_LAYER) | (Format::V2s2, DOCKER_TAR) => DOCKER_TAR,
        (Format::V2s2, NONDIST) | (Format::V2s2, mt::DOCKER_LAYER_FOREIGN) => {
            mt::DOCKER_LAYER_FOREIGN
        }
        _ => return None,
    })
}

fn json(v: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("manifests serialise")
}

/// An image manifest in the other family, as containers/image writes it.
fn convert_image(raw: &RawManifest, to: Format) -> Result<RawManifest, Refusal> {
    let Manifest::Image(m) = raw.parse().map_err(|e| Refusal::Cannot(e.to_string()))? else {
        unreachable!("called for image manifests")
    };
    let cannot = |what: &str| {
        Refusal::Cannot(format!(
            "manifest {} cannot be converted to {}: {what}",
            raw.digest(),
            match to {
                Format::Oci => "OCI",
                Format::V2s2 => "Docker schema 2",
            }
        ))
    };
    let config_type = match (to, m.config.media_type.as_str()) {
        (Format::Oci, mt::DOCKER_CONFIG | mt::OCI_CONFIG) => mt::OCI_CONFIG,
        (Format::V2s2, mt::DOCKER_CONFIG | mt::OCI_CONFIG) => mt::DOCKER_CONFIG,
        (_, other) => return Err(cannot(&format!("its config is {other}"))),
    };
    let mut layer_types = Vec::new();
    for l in &m.layers {
        layer_types.push(
            layer_type(&l.media_type, to)
                .ok_or_else(|| cannot(&format!("layer {} is {}", l.digest, l.media_type)))?,
        );
    }
    let bytes = match to {
        Format::Oci => json(&GoImage {
            schema_version: 2,
            media_type: mt::OCI_MANIFEST,
            config: oci_desc(&m.config, config_type),
            layers: m
                .layers
                .iter()
                .zip(&layer_types)
                .map(|(l, t)| oci_desc(l, t))
                .collect(),
            annotations: (!m.annotations.is_empty()).then(|| m.annotations.clone()),
        }),
        Format::V2s2 => json(&GoImage {
            schema_version: 2,
            media_type: mt::DOCKER_MANIFEST,
            config: docker_desc(&m.config, config_type),
            layers: m
                .layers
                .iter()
                .zip(&layer_types)
                .map(|(l, t)| docker_desc(l, t))
                .collect(),
            annotations: None,
        }),
    };
    RawManifest::new(bytes, None).map_err(|e| Refusal::Cannot(e.to_string()))
}

fn oci_desc<'a>(d: &'a Descriptor, media_type: &'a str) -> OciDesc<'a> {
    OciDesc {
        media_type,
        digest: &d.digest,
        size: d.size,
        urls: &d.urls,
        annotations: &d.annotations,
        platform: go_platform(&d.platform),
    }
}

fn docker_desc<'a>(d: &'a Descriptor, media_type: &'a str) -> DockerDesc<'a> {
    DockerDesc {
        media_type,
        size: d.size,
        digest: &d.digest,
        urls: &d.urls,
        platform: go_platform(&d.platform),
    }
}

/// An index naming `children` (new descriptors), in `to`'s family.
fn write_index(
    raw: &RawManifest,
    children: &[Descriptor],
    to: Format,
) -> Result<RawManifest, Refusal> {
    let Manifest::Index(i) = raw.parse().map_err(|e| Refusal::Cannot(e.to_string()))? else {
        unreachable!("called for indexes")
    };
    let bytes = match to {
        Format::Oci => json(&GoIndex {
            schema_version: 2,
            media_type: mt::OCI_INDEX,
            manifests: children
                .iter()
                .map(|c| oci_desc(c, &c.media_type))
                .collect(),
            annotations: (!i.annotations.is_empty()).then(|| i.annotations.clone()),
        }),
        Format::V2s2 => json(&GoIndex {
            schema_version: 2,
            media_type: mt::DOCKER_MANIFEST_LIST,
            manifests: children
                .iter()
                .map(|c| docker_desc(c, &c.media_type))
                .collect(),
            annotations: None,
        }),
    };
    RawManifest::new(bytes, None).map_err(|e| Refusal::Cannot(e.to_string()))
}

/// An index with only the present children, in the original's media type and order (a sparse index made whole).
fn drop_absent(index: &RawManifest, absent: &[&Digest]) -> Result<RawManifest, Refusal> {
    let cannot = |e: String| Refusal::Cannot(e);
    let mut v: serde_json::Value =
        serde_json::from_slice(index.bytes()).map_err(|e| cannot(e.to_string()))?;
    let children = v["manifests"]
        .as_array_mut()
        .ok_or_else(|| cannot("index without manifests".into()))?;
    children.retain(|c| {
        !absent
            .iter()
            .any(|d| c["digest"].as_str() == Some(&d.to_string()))
    });
    let bytes = serde_json::to_vec_pretty(&v).map_err(|e| cannot(e.to_string()))?;
    RawManifest::new(bytes, Some(index.media_type())).map_err(|e| cannot(e.to_string()))
}

/// The manifests to write for `walk` (children first, the top last) and whether any digest changed.
pub fn plan_writes(
    walk: &ImageWalk,
    props: &DestProperties,
    opts: &CopyOptions,
    sparse: bool,
) -> Result<(Vec<RawManifest>, bool), Refusal> {
    let top_family = family_of(walk.top.media_type());
    let accepted = |t: &str| props.manifest_types.is_empty() || props.manifest_types.contains(&t);
    let target = match opts.format {
        Some(f) => Some(f),
        None if walk.manifests().all(|m| accepted(m.media_type())) => None,
        None => Some(match top_family {
            Format::Oci => Format::V2s2,
            Format::V2s2 => Format::Oci,
        }),
    };
    let rewrite_sparse = sparse && opts.rewrite_sparse_index && !props.accepts_sparse_index;
    let needs_conversion = walk
        .manifests()
        .any(|m| target.is_some_and(|t| family_of(m.media_type()) != t));
    if !needs_conversion && !rewrite_sparse {
        return Ok((walk.manifests().cloned().collect(), false));
    }
    if opts.preserve_digests {
        return Err(Refusal::DigestChange(match target {
            Some(t) if needs_conversion => format!(
                "{} must be converted to {} for the destination",
                walk.top.digest(),
                match t {
                    Format::Oci => "OCI",
                    Format::V2s2 => "Docker schema 2",
                }
            ),
            _ => format!("the sparse index {} would be rewritten", walk.top.digest()),
        }));
    }
    // Children first: each converted manifest's new descriptor, for the indexes that list it.
    let mut renamed: HashMap<Digest, RawManifest> = HashMap::new();
    let mut out = Vec::new();
    for m in walk.manifests() {
        let is_index = mt::is_index(m.media_type());
        let to = target.unwrap_or(family_of(m.media_type()));
        let new = if !is_index {
            if family_of(m.media_type()) == to {
                m.clone()
            } else {
                convert_image(m, to)?
            }
        } else {
            let present: Vec<&crate::image::Child> = walk
                .children
                .iter()
                .filter(|c| &c.parent == m.digest() && c.manifest.is_some())
                .collect();
            let absent: Vec<&Digest> = walk
                .children
                .iter()
                .filter(|c| &c.parent == m.digest() && c.manifest.is_none())
                .map(|c| &c.descriptor.digest)
                .collect();
            let changed = present
                .iter()
                .any(|c| renamed.contains_key(&c.descriptor.digest));
            if !changed && family_of(m.media_type()) == to {
                if absent.is_empty() || !rewrite_sparse {
                    m.clone()
                } else {
                    drop_absent(m, &absent)?
                }
            } else {
                if !absent.is_empty() && !rewrite_sparse {
                    return Err(Refusal::Cannot(format!(
                        "index {} must be rewritten for the destination, and {} of its children are not in the source",
                        m.digest(),
                        absent.len()
                    )));
                }
                let children: Vec<Descriptor> = present
                    .iter()
                    .map(|c| match renamed.get(&c.descriptor.digest) {
                        Some(n) => Descriptor {
                            media_type: n.media_type().to_string(),
                            digest: n.digest().clone(),
                            size: n.bytes().len() as u64,
                            ..c.descriptor.clone()
                        },
                        None => c.descriptor.clone(),
                    })
                    .collect();
                write_index(m, &children, to)?
            }
        };
        if new.digest() != m.digest() {
            renamed.insert(m.digest().clone(), new.clone());
        }
        out.push(new);
    }
    let changed = !renamed.is_empty();
    Ok((out, changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_to_oci_keeps_blobs_and_uses_go_field_order() {
        let cfg = Digest::sha256_of(b"c");
        let layer = Digest::sha256_of(b"l");
        let docker = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","size":1,"digest":"{cfg}"}},"layers":[{{"mediaType":"{}","size":1,"digest":"{layer}"}}]}}"#,
            mt::DOCKER_MANIFEST,
            mt::DOCKER_CONFIG,
            mt::DOCKER_LAYER_GZIP
        );
        let raw = RawManifest::new(docker.clone().into_bytes(), None).unwrap();
        let oci = convert_image(&raw, Format::Oci).unwrap();
        let want = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{cfg}","size":1}},"layers":[{{"mediaType":"{}","digest":"{layer}","size":1}}]}}"#,
            mt::OCI_MANIFEST,
            mt::OCI_CONFIG,
            mt::OCI_LAYER_GZIP
        );
        assert_eq!(String::from_utf8_lossy(oci.bytes()), want);
        let back = convert_image(&oci, Format::V2s2).unwrap();
        assert_eq!(
            back.bytes(),
            docker.as_bytes(),
            "the round trip gives the Docker bytes back"
        );
    }
}
