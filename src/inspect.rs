//! What `skopeo inspect` prints, built for any source: the manifest bytes,
//! the config bytes, the config as OCI JSON, and skopeo's summary document
//! (Name, Digest, RepoTags, Created, …), field for field as skopeo 1.9 writes
//! them, so scripts that parse skopeo's output read ferry's unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, VerifyError};
use crate::image::PlatformChildError;
use crate::manifest::{Manifest, Platform, RawManifest};
use crate::media_type;
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

/// Deserialises an RFC 3339 time into Go's marshalled spelling (as a string), so it prints as Go would.
fn de_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v: Option<String> = Option::deserialize(d)?;
    match v {
        None => Ok(None),
        Some(s) => crate::gojson::go_time(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("time {s:?} is not RFC 3339"))),
    }
}

/// An object whose values Go would decode into `struct{}` (`ExposedPorts`, `Volumes`): re-emitted as `{}`.
type Set = Option<BTreeMap<String, serde::de::IgnoredAny>>;

fn ser_set<S: serde::Serializer>(v: &Set, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let m = v.as_ref().expect("skipped when None");
    let mut map = s.serialize_map(Some(m.len()))?;
    for k in m.keys() {
        map.serialize_entry(k, &serde_json::Map::new())?;
    }
    map.end()
}

fn set_empty(v: &Set) -> bool {
    v.as_ref().is_none_or(BTreeMap::is_empty)
}

/// The `config` part of an OCI image config, as image-spec's Go struct keeps it.
#[derive(Debug, Default, Deserialize, Serialize)]
struct OciImageConfig {
    #[serde(rename = "User", default, skip_serializing_if = "String::is_empty")]
    user: String,
    #[serde(
        rename = "ExposedPorts",
        default,
        skip_serializing_if = "set_empty",
        serialize_with = "ser_set"
    )]
    exposed_ports: Set,
    #[serde(rename = "Env", default, skip_serializing_if = "vec_empty")]
    env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default, skip_serializing_if = "vec_empty")]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "vec_empty")]
    cmd: Option<Vec<String>>,
    #[serde(
        rename = "Volumes",
        default,
        skip_serializing_if = "set_empty",
        serialize_with = "ser_set"
    )]
    volumes: Set,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    working_dir: String,
    #[serde(rename = "Labels", default, skip_serializing_if = "map_empty")]
    labels: Option<BTreeMap<String, String>>,
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    stop_signal: String,
}

fn vec_empty(v: &Option<Vec<String>>) -> bool {
    v.as_ref().is_none_or(Vec::is_empty)
}

fn map_empty(v: &Option<BTreeMap<String, String>>) -> bool {
    v.as_ref().is_none_or(BTreeMap::is_empty)
}

fn is_false(b: &bool) -> bool {
    !b
}

/// `rootfs`, always written (`diff_ids` is `null` when absent, as Go writes a nil slice).
#[derive(Debug, Default, Deserialize, Serialize)]
struct OciRootFs {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    diff_ids: Option<Vec<String>>,
}

/// One `history` entry.
#[derive(Debug, Default, Deserialize, Serialize)]
struct OciHistory {
    #[serde(
        default,
        deserialize_with = "de_time",
        skip_serializing_if = "Option::is_none"
    )]
    created: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    created_by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    author: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    comment: String,
    #[serde(default, skip_serializing_if = "is_false")]
    empty_layer: bool,
}

/// An image config read as image-spec's Go `v1.Image` reads it (Docker configs included:
/// their fields are a superset), in that struct's field order.
#[derive(Debug, Default, Deserialize, Serialize)]
struct OciImage {
    #[serde(
        default,
        deserialize_with = "de_time",
        skip_serializing_if = "Option::is_none"
    )]
    created: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    author: String,
    #[serde(default)]
    architecture: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    variant: String,
    #[serde(default)]
    os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    os_version: String,
    #[serde(rename = "os.features", default, skip_serializing_if = "vec_empty")]
    os_features: Option<Vec<String>>,
    #[serde(default)]
    config: OciImageConfig,
    #[serde(default)]
    rootfs: OciRootFs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    history: Option<Vec<OciHistory>>,
}

/// The Docker-only field skopeo reports.
#[derive(Debug, Default, Deserialize)]
struct DockerExtra {
    #[serde(default)]
    docker_version: String,
}

/// JSON as Go's `json.MarshalIndent(v, "", "    ")` writes it (Go's HTML escapes included).
pub fn go_indent<T: Serialize>(v: &T) -> String {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser).expect("plain data always serialises");
    crate::gojson::escape(&String::from_utf8(out).expect("serde_json writes UTF-8"))
}

/// Object members that are `null` removed, at every depth: Go's decoder leaves a
/// field at its zero value for `null`, exactly as if the member were absent.
fn drop_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// Decodes a config as Go's `json.Unmarshal` would into `T` (nulls are zero values).
fn decode_config<T: serde::de::DeserializeOwned>(config: &[u8]) -> Result<T, String> {
    let mut v: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| format!("config does not parse: {e}"))?;
    drop_nulls(&mut v);
    serde_json::from_value(v).map_err(|e| format!("config does not parse: {e}"))
}

/// The config as skopeo `inspect --config` prints it: decoded as an OCI image config and re-encoded.
pub fn oci_config_json(config: &[u8]) -> Result<String, String> {
    let img: OciImage = decode_config(config)?;
    Ok(go_indent(&img))
}

/// skopeo's `inspect` document, in its field order: the field set of skopeo 1.9
/// (Debian bookworm's, the oracle here), which prints neither `LayersData` nor `Variant`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Output {
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

/// What the summary needs besides the image itself.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The repository name (`HOST/REPO`), for transports that know one.
    pub name: Option<String>,
    /// The repository's tags (`docker://` only, as skopeo).
    pub repo_tags: Vec<String>,
}

/// skopeo's `inspect` JSON for the image `manifest` (the platform's child when
/// `top` is an index) with its `config`; `Digest` is the top manifest's, as skopeo reports it.
pub fn summary_json(
    top: &RawManifest,
    manifest: &RawManifest,
    config: &[u8],
    extra: Summary,
) -> Result<String, String> {
    let Manifest::Image(m) = manifest
        .parse()
        .map_err(|e| format!("manifest {}: {e}", manifest.digest()))?
    else {
        return Err(format!("manifest {} is an index", manifest.digest()));
    };
    let img: OciImage = decode_config(config)?;
    let docker: DockerExtra = decode_config(config)?;
    let is_docker = manifest.media_type() == media_type::DOCKER_MANIFEST;
    // A Docker config's `created` is a plain time.Time in containers/image: absent prints Go's zero time.
    let created = match (img.created, is_docker) {
        (Some(c), _) => Some(c),
        (None, true) => Some("0001-01-01T00:00:00Z".to_string()),
        (None, false) => None,
    };
    let out = Output {
        name: extra.name.unwrap_or_default(),
        digest: top.digest().clone(),
        repo_tags: extra.repo_tags,
        created,
        docker_version: docker.docker_version,
        labels: img.config.labels,
        architecture: img.architecture,
        os: img.os,
        layers: m.layers.iter().map(|l| l.digest.to_string()).collect(),
        env: img.config.env,
    };
    Ok(go_indent(&out))
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
    fn oci_config_keeps_go_field_set() {
        let cfg = br#"{"architecture":"amd64","os":"linux","docker_version":"20","config":{"Env":["A=<b>"],"ExposedPorts":{"80/tcp":{}},"Labels":{}},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]},"created":"2024-01-02T03:04:05.500Z"}"#;
        let s = oci_config_json(cfg).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["created"], "2024-01-02T03:04:05.5Z");
        assert_eq!(v["config"]["ExposedPorts"]["80/tcp"], serde_json::json!({}));
        assert!(v["config"].get("Labels").is_none());
        assert!(v.get("docker_version").is_none());
        assert!(s.contains("\\u003cb\\u003e"), "{s}");
        assert!(s.starts_with("{\n    \"created\""), "{s}");
    }
}
