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
struct GoImage<'a, D: Serialize> {
    schema_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'a str>,
    config: D,
    layers: Vec<D>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<OciDesc<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GoIndex<'a, D: Serialize> {
    schema_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'a str>,
    manifests: Vec<D>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<OciDesc<'a>>,
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
    const DOCKER_TAR: &str = mt::DOCKER_LAYER;
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
    crate::gojson::to_vec(v)
}

/// A Docker image config as containers/image turns it into an OCI one: decoded
/// into image-spec's `Image` struct and encoded again ([`crate::image_config`]).
pub fn oci_config(docker: &[u8]) -> Result<Vec<u8>, String> {
    crate::image_config::ImageConfig::decode(docker).map(|c| c.to_go_json())
}

/// An image manifest in the other family, as containers/image writes it; a
/// Docker config becomes an OCI config (a new blob, returned with its descriptor).
fn convert_image(
    raw: &RawManifest,
    to: Format,
    configs: &HashMap<Digest, Vec<u8>>,
) -> Result<(RawManifest, Option<NewBlob>), Refusal> {
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
    let mut config = m.config.clone();
    let mut new_config = None;
    if to == Format::Oci && m.config.media_type == mt::DOCKER_CONFIG {
        let docker = configs
            .get(&m.config.digest)
            .ok_or_else(|| cannot("its config was not read"))?;
        let bytes = oci_config(docker).map_err(|e| cannot(&e))?;
        config.digest = Digest::sha256_of(&bytes);
        config.size = bytes.len() as u64;
        config.media_type = mt::OCI_CONFIG.to_string();
        new_config = Some((config.clone(), bytes));
    }
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
            media_type: Some(mt::OCI_MANIFEST),
            artifact_type: None,
            config: oci_desc(&config, config_type),
            layers: m
                .layers
                .iter()
                .zip(&layer_types)
                .map(|(l, t)| oci_desc(l, t))
                .collect(),
            subject: None,
            annotations: (!m.annotations.is_empty()).then(|| m.annotations.clone()),
        }),
        Format::V2s2 => json(&GoImage {
            schema_version: 2,
            media_type: Some(mt::DOCKER_MANIFEST),
            artifact_type: None,
            config: docker_desc(&m.config, config_type),
            layers: m
                .layers
                .iter()
                .zip(&layer_types)
                .map(|(l, t)| docker_desc(l, t))
                .collect(),
            subject: None,
            annotations: None,
        }),
    };
    let manifest = RawManifest::new(bytes, None).map_err(|e| Refusal::Cannot(e.to_string()))?;
    Ok((manifest, new_config))
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
            // An OCI index rewritten in place keeps its type out if it was (Go's omitempty);
            // one converted from a Docker list names it, as containers/image's does.
            media_type: (i.media_type.is_some()
                || matches!(family_of(raw.media_type()), Format::V2s2))
            .then_some(mt::OCI_INDEX),
            artifact_type: i.artifact_type.as_deref(),
            manifests: children
                .iter()
                .map(|c| oci_desc(c, &c.media_type))
                .collect(),
            subject: i.subject.as_ref().map(|s| oci_desc(s, &s.media_type)),
            annotations: (!i.annotations.is_empty()).then(|| i.annotations.clone()),
        }),
        Format::V2s2 => json(&GoIndex {
            schema_version: 2,
            media_type: Some(mt::DOCKER_MANIFEST_LIST),
            artifact_type: None,
            manifests: children
                .iter()
                .map(|c| docker_desc(c, &c.media_type))
                .collect(),
            subject: None,
            annotations: None,
        }),
    };
    RawManifest::new(bytes, None).map_err(|e| Refusal::Cannot(e.to_string()))
}

/// An image manifest of `media_type`'s family whose descriptors changed (layers gzipped on
/// the way), serialised as containers/image serialises it: same fields, Go struct order.
pub(super) fn write_image(
    m: &crate::manifest::ImageManifest,
    media_type: &str,
) -> Result<RawManifest, String> {
    let bytes = match family_of(media_type) {
        Format::Oci => json(&GoImage {
            schema_version: 2,
            // An OCI manifest may leave its type out; Go keeps it out (omitempty).
            media_type: m.media_type.is_some().then_some(mt::OCI_MANIFEST),
            artifact_type: m.artifact_type.as_deref(),
            config: oci_desc(&m.config, &m.config.media_type),
            layers: m
                .layers
                .iter()
                .map(|l| oci_desc(l, &l.media_type))
                .collect(),
            subject: m.subject.as_ref().map(|s| oci_desc(s, &s.media_type)),
            annotations: (!m.annotations.is_empty()).then(|| m.annotations.clone()),
        }),
        Format::V2s2 => json(&GoImage {
            schema_version: 2,
            media_type: Some(mt::DOCKER_MANIFEST),
            artifact_type: None,
            config: docker_desc(&m.config, &m.config.media_type),
            layers: m
                .layers
                .iter()
                .map(|l| docker_desc(l, &l.media_type))
                .collect(),
            subject: None,
            annotations: None,
        }),
    };
    RawManifest::new(bytes, Some(media_type)).map_err(|e| e.to_string())
}

/// `index` naming `children` (its entries, some renamed) in its own family, as
/// containers/image writes an index whose children it rewrote.
pub(super) fn rewrite_index(
    index: &RawManifest,
    children: &[Descriptor],
) -> Result<RawManifest, String> {
    write_index(index, children, family_of(index.media_type())).map_err(|r| match r {
        Refusal::DigestChange(why) | Refusal::Cannot(why) => why,
    })
}

/// An index entry `entry` naming `new`, the rewritten child, instead: new type, digest and
/// size; platform and annotations kept.
pub(super) fn renamed_child(entry: &Descriptor, new: &RawManifest) -> Descriptor {
    Descriptor {
        media_type: new.media_type().to_string(),
        digest: new.digest().clone(),
        size: new.bytes().len() as u64,
        ..entry.clone()
    }
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

/// A blob a conversion made: its descriptor and bytes.
pub type NewBlob = (Descriptor, Vec<u8>);

/// What a copy writes besides the source's blobs.
#[derive(Debug, Default)]
pub struct Writes {
    /// Manifests to write, children first, the top last.
    pub manifests: Vec<RawManifest>,
    /// Whether any manifest's digest differs from the source's.
    pub changed: bool,
    /// Blobs made by the conversion (OCI configs), to write.
    pub new_blobs: Vec<NewBlob>,
    /// Source blobs the conversion replaced (Docker configs), not to copy.
    pub replaced: Vec<Digest>,
}

/// The format every manifest must be in for `props` (or as `--format` asks), `None` when the source's will do.
pub fn target_format(
    walk: &ImageWalk,
    props: &DestProperties,
    opts: &CopyOptions,
) -> Option<Format> {
    let accepted = |t: &str| props.manifest_types.is_empty() || props.manifest_types.contains(&t);
    match opts.format {
        Some(f) => Some(f),
        None if walk.manifests().all(|m| accepted(m.media_type())) => None,
        None => Some(match family_of(walk.top.media_type()) {
            Format::Oci => Format::V2s2,
            Format::V2s2 => Format::Oci,
        }),
    }
}

/// Docker configs a conversion to `target` must read (they become OCI configs).
pub fn configs_to_convert(walk: &ImageWalk, target: Option<Format>) -> Vec<Descriptor> {
    if target != Some(Format::Oci) {
        return Vec::new();
    }
    walk.manifests()
        .filter(|m| family_of(m.media_type()) == Format::V2s2 && !mt::is_index(m.media_type()))
        .filter_map(|m| match m.parse() {
            Ok(Manifest::Image(i)) if i.config.media_type == mt::DOCKER_CONFIG => Some(i.config),
            _ => None,
        })
        .collect()
}

/// The manifests and new blobs to write for `walk`; `configs` holds the bytes of [`configs_to_convert`].
pub fn plan_writes(
    walk: &ImageWalk,
    props: &DestProperties,
    opts: &CopyOptions,
    sparse: bool,
    configs: &HashMap<Digest, Vec<u8>>,
) -> Result<Writes, Refusal> {
    let target = target_format(walk, props, opts);
    let rewrite_sparse = sparse && opts.rewrite_sparse_index && !props.accepts_sparse_index;
    let needs_conversion = walk
        .manifests()
        .any(|m| target.is_some_and(|t| family_of(m.media_type()) != t));
    if !needs_conversion && !rewrite_sparse {
        return Ok(Writes {
            manifests: walk.manifests().cloned().collect(),
            ..Writes::default()
        });
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
    let mut writes = Writes::default();
    for m in walk.manifests() {
        let is_index = mt::is_index(m.media_type());
        let to = target.unwrap_or(family_of(m.media_type()));
        let new = if !is_index {
            if family_of(m.media_type()) == to {
                m.clone()
            } else {
                let (new, config) = convert_image(m, to, configs)?;
                if let Some((desc, bytes)) = config {
                    if let Ok(Manifest::Image(old)) = m.parse() {
                        writes.replaced.push(old.config.digest);
                    }
                    writes.new_blobs.push((desc, bytes));
                }
                new
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
                        Some(n) => renamed_child(&c.descriptor, n),
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
    writes.changed = !renamed.is_empty();
    writes.manifests = out;
    Ok(writes)
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
        let configs = HashMap::from([(cfg.clone(), br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"Hostname":"x"},"rootfs":{"type":"layers","diff_ids":[]},"container":"c"}"#.to_vec())]);
        let (oci, config) = convert_image(&raw, Format::Oci, &configs).unwrap();
        let (config_desc, config_bytes) = config.unwrap();
        assert_eq!(
            String::from_utf8(config_bytes).unwrap(),
            r#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"]},"rootfs":{"type":"layers","diff_ids":[]}}"#,
            "docker-only fields dropped, Go field order"
        );
        let cfg_new = config_desc.digest.clone();
        let want = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{cfg_new}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{layer}","size":1}}]}}"#,
            mt::OCI_MANIFEST,
            mt::OCI_CONFIG,
            config_desc.size,
            mt::OCI_LAYER_GZIP
        );
        assert_eq!(String::from_utf8_lossy(oci.bytes()), want);
        let (back, none) = convert_image(&oci, Format::V2s2, &HashMap::new()).unwrap();
        assert!(none.is_none(), "OCI to Docker keeps the config");
        assert!(String::from_utf8_lossy(back.bytes()).contains(mt::DOCKER_LAYER_GZIP));
    }
}
