//! An image config as image-spec's Go `v1.Image` struct holds it: decoded as
//! Go's `json.Unmarshal` decodes into it (field names matched exactly first,
//! then case-insensitively; `null` is the zero value; unknown fields dropped)
//! and encoded again in that struct's field order with its `omitempty` rules.
//! The one encoder of configs: containers/image writes these bytes when it
//! turns a Docker config into an OCI one (`copy --format oci`, compact), and
//! skopeo prints them for `inspect --config` (indented).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

/// image-spec `v1.Image`, plus the Docker-only `docker_version` skopeo's summary reports (never encoded).
#[derive(Debug, Default, Serialize)]
pub struct ImageConfig {
    /// When the image was made, in Go's RFC 3339 spelling (trailing zeros of the fraction cut).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Who made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture (always written).
    pub architecture: String,
    /// CPU variant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Operating system (always written).
    pub os: String,
    /// OS version.
    #[serde(rename = "os.version", skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// OS features.
    #[serde(rename = "os.features", skip_serializing_if = "none_or_empty")]
    pub os_features: Option<Vec<String>>,
    /// The container defaults (always written, `{}` when empty).
    pub config: ContainerConfig,
    /// The layers' uncompressed digests (always written; `diff_ids` is `null` when absent).
    pub rootfs: RootFs,
    /// Build history, left out when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Docker's `docker_version` (not part of `v1.Image`, so never encoded).
    #[serde(skip)]
    pub docker_version: String,
}

/// Go's `map[string]struct{}`: keys, each encoded with an empty object.
pub type GoSet = BTreeMap<String, Map<String, Value>>;

/// image-spec `v1.ImageConfig`: every field `omitempty`.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// User.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Exposed ports, as a set (`{"80/tcp": {}}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<GoSet>,
    /// Environment.
    #[serde(skip_serializing_if = "none_or_empty")]
    pub env: Option<Vec<String>>,
    /// Entrypoint.
    #[serde(skip_serializing_if = "none_or_empty")]
    pub entrypoint: Option<Vec<String>>,
    /// Command.
    #[serde(skip_serializing_if = "none_or_empty")]
    pub cmd: Option<Vec<String>>,
    /// Volumes, as a set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumes: Option<GoSet>,
    /// Working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Labels (sorted, as Go writes a map).
    #[serde(skip_serializing_if = "no_labels")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Stop signal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Windows' escaped arguments flag, written only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub args_escaped: bool,
}

/// image-spec `v1.RootFS`.
#[derive(Debug, Default, Serialize)]
pub struct RootFs {
    /// Always `layers` in practice.
    #[serde(rename = "type")]
    pub kind: String,
    /// Uncompressed layer digests; `None` is Go's nil slice (`null`).
    pub diff_ids: Option<Vec<String>>,
}

/// image-spec `v1.History`: every field `omitempty`.
#[derive(Debug, Default, Serialize)]
pub struct History {
    /// When.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The build step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Who.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// A comment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Whether the step made no layer.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// `omitempty` of a slice: nil and empty alike.
fn none_or_empty(v: &Option<Vec<String>>) -> bool {
    v.as_ref().is_none_or(Vec::is_empty)
}

/// `omitempty` of a map: nil and empty alike.
fn no_labels(v: &Option<BTreeMap<String, String>>) -> bool {
    v.as_ref().is_none_or(BTreeMap::is_empty)
}

/// A member as Go's decoder finds a struct field: its exact name first, then case-insensitively; `null` is absent.
fn get<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    o.get(name)
        .or_else(|| {
            o.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

/// A string field; empty is absent (`omitempty`).
fn string(o: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match get(o, name) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("config field {name} is not a string")),
    }
}

/// A list of strings (`[]` kept apart from absent: the summary prints them apart; the encoder omits both).
fn strings(o: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, String> {
    match get(o, name) {
        None => Ok(None),
        Some(Value::Array(a)) => {
            let v = a
                .iter()
                .map(|x| x.as_str().map(str::to_string).ok_or(()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|()| format!("config field {name} is not a list of strings"))?;
            Ok(Some(v))
        }
        Some(_) => Err(format!("config field {name} is not a list")),
    }
}

/// A set (`map[string]struct{}`): its keys, each re-emitted as `{}`; empty is absent.
fn set(o: &Map<String, Value>, name: &str) -> Result<Option<GoSet>, String> {
    match get(o, name) {
        None => Ok(None),
        Some(Value::Object(m)) if m.is_empty() => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.keys().map(|k| (k.clone(), Map::new())).collect())),
        Some(_) => Err(format!("config field {name} is not an object")),
    }
}

/// A `*time.Time` field, in Go's marshalled spelling.
fn time(o: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match get(o, name) {
        None => Ok(None),
        Some(Value::String(t)) => crate::gojson::go_time(t)
            .map(Some)
            .ok_or_else(|| format!("config field {name}: {t:?} is not an RFC 3339 time")),
        Some(_) => Err(format!("config field {name} is not a time")),
    }
}

/// A boolean field; anything but `true` is false, a non-boolean is refused.
fn boolean(o: &Map<String, Value>, name: &str) -> Result<bool, String> {
    match get(o, name) {
        Some(Value::Bool(b)) => Ok(*b),
        None => Ok(false),
        Some(_) => Err(format!("config field {name} is not a boolean")),
    }
}

/// An object field; absent is empty.
fn object<'a>(
    o: &'a Map<String, Value>,
    name: &str,
    empty: &'a Map<String, Value>,
) -> Result<&'a Map<String, Value>, String> {
    match get(o, name) {
        None => Ok(empty),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(format!("config field {name} is not an object")),
    }
}

impl ImageConfig {
    /// Decodes config bytes (Docker or OCI; Docker's fields are a superset) as Go decodes them into `v1.Image`.
    pub fn decode(bytes: &[u8]) -> Result<ImageConfig, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("config: {e}"))?;
        let obj = v.as_object().ok_or("config is not a JSON object")?;
        let empty = Map::new();
        let c = object(obj, "config", &empty)?;
        let rootfs = object(obj, "rootfs", &empty)?;
        let mut history = Vec::new();
        if let Some(h) = get(obj, "history") {
            for item in h.as_array().ok_or("config field history is not a list")? {
                let e = item
                    .as_object()
                    .ok_or("config history entry is not an object")?;
                history.push(History {
                    created: time(e, "created")?,
                    created_by: string(e, "created_by")?,
                    author: string(e, "author")?,
                    comment: string(e, "comment")?,
                    empty_layer: matches!(get(e, "empty_layer"), Some(Value::Bool(true))),
                });
            }
        }
        Ok(ImageConfig {
            created: time(obj, "created")?,
            author: string(obj, "author")?,
            architecture: string(obj, "architecture")?.unwrap_or_default(),
            variant: string(obj, "variant")?,
            os: string(obj, "os")?.unwrap_or_default(),
            os_version: string(obj, "os.version")?,
            os_features: strings(obj, "os.features")?,
            config: ContainerConfig {
                user: string(c, "User")?,
                exposed_ports: set(c, "ExposedPorts")?,
                env: strings(c, "Env")?,
                entrypoint: strings(c, "Entrypoint")?,
                cmd: strings(c, "Cmd")?,
                volumes: set(c, "Volumes")?,
                working_dir: string(c, "WorkingDir")?,
                labels: match get(c, "Labels") {
                    None => None,
                    Some(Value::Object(m)) => Some(
                        m.iter()
                            .map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                            .collect::<Option<_>>()
                            .ok_or("config field Labels is not a map of strings")?,
                    ),
                    Some(_) => return Err("config field Labels is not a map of strings".into()),
                },
                stop_signal: string(c, "StopSignal")?,
                args_escaped: boolean(c, "ArgsEscaped")?,
            },
            rootfs: RootFs {
                kind: string(rootfs, "type")?.unwrap_or_default(),
                diff_ids: match get(rootfs, "diff_ids") {
                    None => None,
                    Some(Value::Array(a)) => Some(
                        a.iter()
                            .map(|x| x.as_str().map(str::to_string))
                            .collect::<Option<_>>()
                            .ok_or("config field rootfs.diff_ids is not a list of digests")?,
                    ),
                    Some(_) => {
                        return Err("config field rootfs.diff_ids is not a list of digests".into());
                    }
                },
            },
            history,
            docker_version: string(obj, "docker_version")?.unwrap_or_default(),
        })
    }

    /// `json.Marshal`: the bytes containers/image writes for a converted config.
    pub fn to_go_json(&self) -> Vec<u8> {
        crate::gojson::to_vec(self)
    }

    /// `json.MarshalIndent(v, "", "    ")`: what skopeo's `inspect --config` prints.
    pub fn to_go_json_indented(&self) -> String {
        crate::gojson::indent(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_decodes_and_encodes_in_struct_order() {
        let cfg = br#"{"Architecture":"amd64","os":"linux","docker_version":"20","author":"","config":{"Env":["A=<b>"],"ExposedPorts":{"80/tcp":{"x":1}},"Labels":{},"ArgsEscaped":true,"Cmd":[]},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]},"created":"2024-01-02T03:04:05.500Z","history":[],"unknown":1}"#;
        let c = ImageConfig::decode(cfg).unwrap();
        assert_eq!(c.docker_version, "20");
        assert_eq!(
            String::from_utf8(c.to_go_json()).unwrap(),
            r#"{"created":"2024-01-02T03:04:05.5Z","architecture":"amd64","os":"linux","config":{"ExposedPorts":{"80/tcp":{}},"Env":["A=\u003cb\u003e"],"ArgsEscaped":true},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#
        );
        let s = c.to_go_json_indented();
        assert!(s.starts_with("{\n    \"created\""), "{s}");
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v, serde_json::from_slice::<Value>(&c.to_go_json()).unwrap());
        let bare = ImageConfig::decode(b"{}").unwrap();
        assert_eq!(
            String::from_utf8(bare.to_go_json()).unwrap(),
            r#"{"architecture":"","os":"","config":{},"rootfs":{"type":"","diff_ids":null}}"#
        );
        for bad in [
            &b"[]"[..],
            br#"{"os":1}"#,
            br#"{"config":{"Labels":{"a":1}}}"#,
        ] {
            assert!(ImageConfig::decode(bad).is_err());
        }
    }
}
