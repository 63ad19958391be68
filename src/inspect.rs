//! What `skopeo inspect` prints, built for any source: the manifest bytes,
//! the config bytes, the config as OCI JSON, and skopeo's summary document
//! (Name, Digest, RepoTags, Created, …), field for field as skopeo 1.9 writes
//! them, so scripts that parse skopeo's output read ferry's unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, VerifyError};
use crate::image::PlatformChildError;
use crate::image_config::ImageConfig;
use crate::manifest::{Manifest, Platform, RawManifest};
use crate::media_type;
use crate::template::Value;
use crate::transport::{SmallBlobError, Source, SourceManifests, TransportError, read_small};

/// Why an image cannot be inspected; names the image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// The source failed (not found, unreachable, refused).
    #[error("{image}: {source}")]
    Source {
        /// The image as the user named it.
        image: String,
        /// Why.
        source: TransportError,
    },
    /// No child of the index is for the wanted platform.
    #[error("{image}: {source}")]
    Platform {
        /// The image.
        image: String,
        /// Why.
        source: crate::image::WalkError,
    },
    /// A manifest or config that cannot be read as skopeo reads it.
    #[error("{image}: {why}")]
    Content {
        /// The image.
        image: String,
        /// What is wrong.
        why: String,
    },
}

/// The image manifest an inspection describes: the top one, or for an index
/// the child for `platform` (as containers/image chooses for skopeo).
pub async fn image_manifest<S: Source>(
    source: &S,
    top: &RawManifest,
    platform: &Platform,
) -> Result<RawManifest, InspectError> {
    if !media_type::is_index(top.media_type()) {
        return Ok(top.clone());
    }
    let image = source.name();
    let m = crate::image::platform_child(&SourceManifests(source), top, platform)
        .await
        .map_err(|e| match e {
            PlatformChildError::Choose(e) => InspectError::Platform {
                image: image.clone(),
                source: e,
            },
            PlatformChildError::Source(e) => InspectError::Source {
                image: image.clone(),
                source: e,
            },
            PlatformChildError::Absent { child } => InspectError::Content {
                image: image.clone(),
                why: format!(
                    "index {} lists {child} for {platform}, which the source does not have",
                    top.digest()
                ),
            },
            PlatformChildError::Mismatch { child, got } => InspectError::Content {
                image: image.clone(),
                why: format!(
                    "index {} lists {child}, the source gave {got}",
                    top.digest()
                ),
            },
        })?;
    if media_type::is_index(m.media_type()) {
        return Err(InspectError::Content {
            image,
            why: format!("index {} nests another index for {platform}", top.digest()),
        });
    }
    Ok(m)
}

/// The config blob of an image manifest, exactly as stored (checked against its digest).
pub async fn config_bytes<S: Source>(
    source: &S,
    manifest: &RawManifest,
) -> Result<Vec<u8>, InspectError> {
    let image = source.name();
    let content = |why: String| InspectError::Content {
        image: image.clone(),
        why,
    };
    let Manifest::Image(m) = manifest
        .parse()
        .map_err(|e| content(format!("manifest {}: {e}", manifest.digest())))?
    else {
        return Err(content(format!(
            "manifest {} is an index",
            manifest.digest()
        )));
    };
    let d = &m.config.digest;
    read_small(source, &m.config).await.map_err(|e| match e {
        SmallBlobError::TooLarge { size, cap } => content(format!(
            "config {d} is {size} bytes, over the {cap}-byte cap"
        )),
        SmallBlobError::Source(e) => InspectError::Source {
            image: image.clone(),
            source: e,
        },
        SmallBlobError::Read(e) => content(format!("reading config {d}: {e}")),
        SmallBlobError::TooLong => content(format!(
            "config {d} is longer than its {} bytes",
            m.config.size
        )),
        SmallBlobError::Verify(VerifyError::DigestMismatch { expected, found }) => content(
            format!("config hashes to {found}, the manifest says {expected}"),
        ),
        SmallBlobError::Verify(e) => content(format!("config {d}: {e}")),
    })
}

/// The config as skopeo `inspect --config` prints it: decoded as an OCI image config and re-encoded.
pub fn oci_config_json(config: &[u8]) -> Result<String, String> {
    Ok(ImageConfig::decode(config)?.to_go_json_indented())
}

/// skopeo's `inspect` document, in its field order: the field set of skopeo 1.9
/// (Debian bookworm's, the oracle here), which has neither `LayersData` nor `Variant`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectOutput {
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    digest: Digest,
    repo_tags: Vec<String>,
    created: Option<String>,
    docker_version: String,
    labels: Option<BTreeMap<String, String>>,
    architecture: String,
    os: String,
    layers: Vec<String>,
    env: Option<Vec<String>>,
}

impl InspectOutput {
    /// The document as skopeo prints it (Go's `json.MarshalIndent`).
    pub fn to_json(&self) -> String {
        crate::gojson::indent(self)
    }

    /// The document as skopeo's `--format` template sees it: Go's struct, with its
    /// always-empty `Tag`, a nil map or slice printing `map[]` / `[]`, and `Created` a
    /// `*time.Time` (printed as `time.Time.String()` spells it, `<nil>` when absent).
    pub fn template_value(&self) -> Value {
        let strs = |v: &[String]| Value::List(v.iter().cloned().map(Value::Str).collect());
        Value::Struct(vec![
            ("Name".into(), Value::Str(self.name.clone())),
            ("Tag".into(), Value::Str(String::new())),
            ("Digest".into(), Value::Str(self.digest.to_string())),
            ("RepoTags".into(), strs(&self.repo_tags)),
            (
                "Created".into(),
                self.created
                    .as_deref()
                    .map_or(Value::Nil, |c| Value::Time(go_time_string(c))),
            ),
            (
                "DockerVersion".into(),
                Value::Str(self.docker_version.clone()),
            ),
            (
                "Labels".into(),
                Value::Map(
                    self.labels
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), Value::Str(v.clone())))
                        .collect(),
                ),
            ),
            ("Architecture".into(), Value::Str(self.architecture.clone())),
            ("Os".into(), Value::Str(self.os.clone())),
            ("Layers".into(), strs(&self.layers)),
            ("Env".into(), strs(self.env.as_deref().unwrap_or_default())),
        ])
    }
}

/// Go's `time.Time.String()` of a time in Go's RFC 3339 spelling (`2024-01-02T03:04:05.5Z`
/// → `2024-01-02 03:04:05.5 +0000 UTC`); a zone other than UTC prints as its offset twice,
/// as Go names a parsed fixed zone.
fn go_time_string(t: &str) -> String {
    let (date, rest) = t.split_once('T').unwrap_or((t, ""));
    let zone_at = rest.find(['Z', '+', '-']).unwrap_or(rest.len());
    let (clock, zone) = rest.split_at(zone_at);
    let zone = match zone {
        "Z" | "+00:00" | "" => "+0000 UTC".to_string(),
        z => {
            let z = z.replace(':', "");
            format!("{z} {z}")
        }
    };
    format!("{date} {clock} {zone}")
}

/// What the summary needs besides the image itself.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The repository name (`HOST/REPO`), for transports that know one.
    pub name: Option<String>,
    /// The repository's tags (`docker://` only, as skopeo).
    pub repo_tags: Vec<String>,
}

/// skopeo's `inspect` document for the image `manifest` (the platform's child when
/// `top` is an index) with its `config`; `Digest` is the top manifest's, as skopeo reports it.
pub fn summary(
    top: &RawManifest,
    manifest: &RawManifest,
    config: &[u8],
    extra: Summary,
) -> Result<InspectOutput, String> {
    let Manifest::Image(m) = manifest
        .parse()
        .map_err(|e| format!("manifest {}: {e}", manifest.digest()))?
    else {
        return Err(format!("manifest {} is an index", manifest.digest()));
    };
    let img = ImageConfig::decode(config)?;
    let is_docker = manifest.media_type() == media_type::DOCKER_MANIFEST;
    // A Docker config's `created` is a plain time.Time in containers/image: absent prints Go's zero time.
    let created = match (img.created, is_docker) {
        (Some(c), _) => Some(c),
        (None, true) => Some("0001-01-01T00:00:00Z".to_string()),
        (None, false) => None,
    };
    Ok(InspectOutput {
        name: extra.name.unwrap_or_default(),
        digest: top.digest().clone(),
        repo_tags: extra.repo_tags,
        created,
        docker_version: img.docker_version,
        labels: img.config.labels,
        architecture: img.architecture,
        os: img.os,
        layers: m.layers.iter().map(|l| l.digest.to_string()).collect(),
        env: img.config.env,
    })
}

/// The digest skopeo's `manifest-digest` prints for a file (containers/image
/// `manifest.Digest`): the sha256 of the bytes, except for a signed Docker
/// schema 1 manifest, whose JWS signatures are stripped first (the payload is
/// the bytes up to `formatLength` plus the decoded `formatTail`). Anything
/// else, even bytes that are not JSON, is hashed as it is.
pub fn manifest_digest(bytes: &[u8]) -> Result<Digest, String> {
    if !is_signed_schema1(bytes) {
        return Ok(Digest::sha256_of(bytes));
    }
    Ok(Digest::sha256_of(&schema1_payload(bytes)?))
}

/// containers/image `GuessMIMEType` answering "signed schema 1": `schemaVersion` 1
/// with non-null `signatures`, unless `mediaType` names one of the four known types.
fn is_signed_schema1(bytes: &[u8]) -> bool {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(bytes)
    else {
        return false;
    };
    // Go matches field names case-insensitively, preferring an exact match.
    let field = |name: &str| {
        m.get(name).or_else(|| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
    };
    let media_type = match field("mediaType") {
        None | Some(serde_json::Value::Null) => "",
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(_) => return false, // Go's Unmarshal fails: the type is unknown
    };
    let version = match field("schemaVersion") {
        None | Some(serde_json::Value::Null) => 0,
        Some(v) => match v.as_i64() {
            Some(n) => n,
            None => return false,
        },
    };
    if [
        media_type::DOCKER_MANIFEST,
        media_type::DOCKER_MANIFEST_LIST,
        media_type::OCI_MANIFEST,
        media_type::OCI_INDEX,
    ]
    .contains(&media_type)
    {
        return false;
    }
    version == 1 && field("signatures").is_some_and(|s| !s.is_null())
}

/// libtrust `ParsePrettySignature(.., "signatures").Payload()`: the manifest as it was before signing.
fn schema1_payload(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    #[derive(Deserialize)]
    struct Sig {
        #[serde(default)]
        protected: String,
    }
    let mut m: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| format!("error unmarshalling content: {e}"))?;
    let sigs = m
        .remove("signatures")
        .ok_or("JSON does not contain signature key \"signatures\"")?;
    let sigs: Vec<Sig> =
        serde_json::from_value(sigs).map_err(|e| format!("error unmarshalling signatures: {e}"))?;
    let decode = |s: &str| {
        URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|e| format!("base64 decode error: {e}"))
    };
    let mut format: Option<(usize, Vec<u8>)> = None;
    for sig in &sigs {
        let header: serde_json::Value = serde_json::from_slice(&decode(&sig.protected)?)
            .map_err(|e| format!("error unmarshalling protected header: {e}"))?;
        let len = header
            .get("formatLength")
            .and_then(serde_json::Value::as_f64)
            .ok_or("unable to parse format length")? as usize;
        let tail = header
            .get("formatTail")
            .and_then(serde_json::Value::as_str)
            .ok_or("unable to parse format tail")?;
        let tail = decode(tail)?;
        match &format {
            None => format = Some((len, tail)),
            Some((l, t)) if *l == len && *t == tail => {}
            Some(_) => return Err("signature formats do not match".into()),
        }
    }
    let (len, tail) = format.unwrap_or((0, Vec::new()));
    if len > bytes.len() {
        return Err("invalid format length".into());
    }
    let mut out = bytes[..len].to_vec();
    out.extend_from_slice(&tail);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_time_strings() {
        assert_eq!(
            go_time_string("2024-01-02T03:04:05.123Z"),
            "2024-01-02 03:04:05.123 +0000 UTC"
        );
        assert_eq!(
            go_time_string("0001-01-01T00:00:00Z"),
            "0001-01-01 00:00:00 +0000 UTC"
        );
        assert_eq!(
            go_time_string("2024-01-02T03:04:05+02:00"),
            "2024-01-02 03:04:05 +0200 +0200"
        );
    }
}
