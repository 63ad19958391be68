//! Registry credentials: docker `config.json` and containers `auth.json`
//! (`auths`, `credHelpers`, `credsStore`), and `WWW-Authenticate` challenges.
//! A secret never reaches `Debug`, `Display`, a log line or an error.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::reference::is_docker_hub;

pub mod file;

/// A user name and a password or token; the secret is redacted in every printout.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name (not secret).
    pub username: String,
    /// The password or identity token.
    pub secret: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({:?}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// Parses `USER[:PASS]` as given to `--src-creds` / `--creds`.
    pub fn from_flag(s: &str) -> Credentials {
        let (u, p) = s.split_once(':').unwrap_or((s, ""));
        Credentials {
            username: u.to_string(),
            secret: p.to_string(),
        }
    }

    /// The `Authorization: Basic …` value.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.username, self.secret))
        )
    }
}

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The auth file exists but cannot be read or parsed.
    #[error("auth file {}: {why}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong (never its content).
        why: String,
    },
    /// A credential helper the auth file names is not installed.
    #[error("credential helper docker-credential-{helper} is not installed (not on PATH)")]
    HelperMissing {
        /// Helper name.
        helper: String,
    },
    /// A credential helper failed.
    #[error("credential helper docker-credential-{helper} for {host}: {why}")]
    Helper {
        /// Helper name.
        helper: String,
        /// Registry host.
        host: String,
        /// What failed.
        why: String,
    },
}

#[derive(serde::Deserialize, Default)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// The auth files to read, in skopeo's order: `--authfile`, `$REGISTRY_AUTH_FILE`,
/// `${XDG_RUNTIME_DIR}/containers/auth.json` (or `/run/containers/UID/auth.json` without
/// `XDG_RUNTIME_DIR`, where `login` writes then), `~/.docker/config.json`.
pub fn auth_file_candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        out.push(PathBuf::from(p));
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(p) => out.push(PathBuf::from(p).join("containers/auth.json")),
        None => out.push(file::run_containers_path()),
    }
    if let Some(p) = std::env::var_os("DOCKER_CONFIG") {
        out.push(PathBuf::from(p).join("config.json"));
    } else if let Some(home) = std::env::var_os("HOME") {
        out.push(PathBuf::from(home).join(".docker/config.json"));
    }
    out
}

/// The keys an auth file may use for a host (docker writes Docker Hub as a v1 URL).
fn keys_for(host: &str) -> Vec<String> {
    let mut keys = vec![
        host.to_string(),
        format!("https://{host}"),
        format!("http://{host}"),
    ];
    if is_docker_hub(host) {
        keys.extend(
            [
                "docker.io",
                "index.docker.io",
                "registry-1.docker.io",
                "https://index.docker.io/v1/",
            ]
            .map(str::to_string),
        );
    }
    keys
}

/// Finds credentials for `host`: explicit ones win, then the first auth file that names the host.
pub fn lookup(
    host: &str,
    explicit: Option<&Credentials>,
    authfile: Option<&Path>,
) -> Result<Option<Credentials>, AuthError> {
    if let Some(c) = explicit {
        return Ok(Some(c.clone()));
    }
    for path in auth_file_candidates(authfile) {
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && authfile.is_none() => continue,
            Err(e) => {
                return Err(AuthError::File {
                    path,
                    why: e.to_string(),
                });
            }
        };
        let file: AuthFile = serde_json::from_slice(&text).map_err(|e| AuthError::File {
            path: path.clone(),
            why: format!("not valid JSON at line {} column {}", e.line(), e.column()),
        })?;
        let keys = keys_for(host);
        if let Some(helper) = keys.iter().find_map(|k| file.cred_helpers.get(k)) {
            return helper_get(helper, host);
        }
        if let Some(entry) = keys.iter().find_map(|k| file.auths.get(k)) {
            if let Some(c) = decode_entry(entry, &path)? {
                return Ok(Some(c));
            }
        }
        if let Some(store) = file.creds_store.as_deref().filter(|s| !s.is_empty()) {
            return helper_get(store, host);
        }
    }
    Ok(None)
}

fn decode_entry(entry: &AuthEntry, path: &Path) -> Result<Option<Credentials>, AuthError> {
    if let Some(token) = &entry.identity_token
        && !token.is_empty()
    {
        return Ok(Some(Credentials {
            username: "<token>".into(),
            secret: token.clone(),
        }));
    }
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Some(Credentials {
            username: u.clone(),
            secret: p.clone(),
        }));
    }
    let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let bad = || AuthError::File {
        path: path.to_path_buf(),
        why: "an \"auth\" value is not base64 of user:password".into(),
    };
    let raw = STANDARD.decode(auth.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (u, p) = text.split_once(':').ok_or_else(bad)?;
    Ok(Some(Credentials {
        username: u.to_string(),
        secret: p.to_string(),
    }))
}

/// The server name a credential helper knows `host` by (Docker Hub by its v1 URL, as docker stores it).
fn helper_server(host: &str) -> String {
    if is_docker_hub(host) {
        "https://index.docker.io/v1/".to_string()
    } else {
        host.to_string()
    }
}

/// Runs `docker-credential-HELPER ACTION` with `input` on stdin (docker's protocol); `None`
/// when the helper says it holds nothing for the server. Its output never reaches an error.
fn call_helper(
    helper: &str,
    host: &str,
    action: &str,
    input: &[u8],
) -> Result<Option<Vec<u8>>, AuthError> {
    let err = |why: String| AuthError::Helper {
        helper: helper.to_string(),
        host: host.to_string(),
        why,
    };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => AuthError::HelperMissing {
                helper: helper.to_string(),
            },
            _ => err(e.to_string()),
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    let written = stdin.write_all(input);
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    written.map_err(|e| err(format!("writing its input: {e}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout);
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        return Err(err(format!("{action} exited with {}", out.status)));
    }
    Ok(Some(out.stdout))
}

/// The credentials a helper holds for `host` (`get`).
pub fn helper_get(helper: &str, host: &str) -> Result<Option<Credentials>, AuthError> {
    let Some(out) = call_helper(helper, host, "get", helper_server(host).as_bytes())? else {
        return Ok(None);
    };
    #[derive(serde::Deserialize)]
    struct HelperOut {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let h: HelperOut = serde_json::from_slice(&out).map_err(|_| AuthError::Helper {
        helper: helper.to_string(),
        host: host.to_string(),
        why: "printed something that is not its JSON answer".into(),
    })?;
    Ok(Some(Credentials {
        username: h.username,
        secret: h.secret,
    }))
}

/// Hands `creds` for `host` to a helper to keep (`store`).
pub fn helper_store(helper: &str, host: &str, creds: &Credentials) -> Result<(), AuthError> {
    let input = serde_json::json!({
        "ServerURL": helper_server(host),
        "Username": creds.username,
        "Secret": creds.secret,
    });
    call_helper(helper, host, "store", input.to_string().as_bytes())?.ok_or_else(|| {
        AuthError::Helper {
            helper: helper.to_string(),
            host: host.to_string(),
            why: "store answered \"credentials not found\"".into(),
        }
    })?;
    Ok(())
}

/// Has a helper forget `host` (`erase`); false when it held nothing for it.
pub fn helper_erase(helper: &str, host: &str) -> Result<bool, AuthError> {
    Ok(call_helper(helper, host, "erase", helper_server(host).as_bytes())?.is_some())
}

/// The credential helper an auth file names for `host`: its `credHelpers` entry, else its
/// `credsStore`; and whether it is the `credsStore`.
pub(crate) fn helper_in(
    doc: &serde_json::Map<String, serde_json::Value>,
    host: &str,
) -> Option<(String, bool)> {
    let keys = keys_for(host);
    if let Some(serde_json::Value::Object(h)) = doc.get("credHelpers")
        && let Some(name) = keys.iter().find_map(|k| h.get(k).and_then(|v| v.as_str()))
    {
        return Some((name.to_string(), false));
    }
    doc.get("credsStore")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(|s| (s.to_string(), true))
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=…`.
    Basic,
    /// `Bearer realm=…,service=…,scope=…`.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// Service name to ask for.
        service: Option<String>,
        /// Scope the server suggested.
        scope: Option<String>,
    },
}

/// Parses the first challenge of a `WWW-Authenticate` header.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut params = BTreeMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(k.trim().to_ascii_lowercase(), v.to_string());
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.remove("realm")?,
            service: params.remove("service"),
            scope: params.remove("scope"),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/redis:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/redis:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn auth_file_lookup_and_redaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let auth = STANDARD.encode("alice:s3cret");
        std::fs::write(&path, format!(r#"{{"auths":{{"reg.example:5000":{{"auth":"{auth}"}},"https://index.docker.io/v1/":{{"auth":"{auth}"}}}}}}"#)).unwrap();
        let c = lookup("reg.example:5000", None, Some(&path))
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.secret.as_str()),
            ("alice", "s3cret")
        );
        assert!(lookup("docker.io", None, Some(&path)).unwrap().is_some());
        assert!(
            lookup("other.example", None, Some(&path))
                .unwrap()
                .is_none()
        );
        assert!(!format!("{c:?}").contains("s3cret"));

        std::fs::write(&path, r#"{"auths":{"x":{"auth":"%%%"}}}"#).unwrap();
        let err = lookup("x", None, Some(&path)).unwrap_err().to_string();
        assert!(err.contains("not base64") && !err.contains("%%%"), "{err}");
        std::fs::write(&path, "{oops").unwrap();
        assert!(
            lookup("x", None, Some(&path))
                .unwrap_err()
                .to_string()
                .contains("not valid JSON")
        );
        let explicit = Credentials::from_flag("bob:pw");
        assert_eq!(
            lookup("x", Some(&explicit), Some(&path)).unwrap(),
            Some(explicit)
        );
    }
}
