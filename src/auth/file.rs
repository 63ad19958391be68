//! Writing auth files for `login` and `logout`: the entry for one registry is
//! set or removed (through the credential helper the file names for it, when it
//! names one) and everything else in the file (other registries,
//! `credHelpers`, unknown keys) is kept; the file is replaced atomically (temp
//! file in the same directory, then rename) with mode 0600, in the format
//! skopeo, podman and docker all read (`auths.HOST.auth` = base64 of `user:pass`).

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use super::{AuthError, Credentials};

/// Where `login` writes when no `--authfile` is given, as skopeo and podman:
/// `$REGISTRY_AUTH_FILE`, else `${XDG_RUNTIME_DIR}/containers/auth.json`, else `/run/containers/UID/auth.json`.
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("containers/auth.json");
    }
    run_containers_path()
}

/// `/run/containers/UID/auth.json`, containers/image's path when `XDG_RUNTIME_DIR` is unset.
pub fn run_containers_path() -> PathBuf {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/run/containers/{uid}/auth.json"))
}

/// The key a registry argument is stored under: the host (and port), without a scheme or
/// trailing `/`; Docker Hub's aliases are stored as `docker.io`, as containers/image does.
pub fn registry_key(arg: &str) -> Result<String, String> {
    let s = arg
        .strip_prefix("https://")
        .or_else(|| arg.strip_prefix("http://"))
        .unwrap_or(arg);
    let s = s.trim_end_matches('/');
    if s.is_empty() {
        return Err(format!("{arg:?} names no registry"));
    }
    if s.contains('@') || s.split('/').any(str::is_empty) {
        return Err(format!(
            "{arg:?} is not a registry (HOST[:PORT][/NAMESPACE])"
        ));
    }
    let host = s.split('/').next().unwrap_or(s);
    if crate::reference::is_docker_hub(host) && !s.contains('/') {
        return Ok("docker.io".to_string());
    }
    Ok(s.to_string())
}

/// Reads an auth file as a JSON object; a missing file is an empty one.
fn read(path: &Path) -> Result<Map<String, Value>, AuthError> {
    let bad = |why: String| AuthError::File {
        path: path.to_path_buf(),
        why,
    };
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(e) => return Err(bad(format!("reading: {e}"))),
    };
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("is not a JSON object".into())),
        Err(e) => Err(bad(format!(
            "not valid JSON at line {} column {}",
            e.line(),
            e.column()
        ))),
    }
}

/// Replaces the file with `doc`: a 0600 temp file beside it, synced, then renamed over it.
fn write(path: &Path, doc: &Map<String, Value>) -> Result<(), AuthError> {
    let bad = |why: String| AuthError::File {
        path: path.to_path_buf(),
        why,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| bad(format!("creating {}: {e}", dir.display())))?;
    }
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(doc, &mut ser).expect("JSON values always serialise");
    out.push(b'\n');
    // tempfile creates the file with mode 0600.
    let mut tmp = tempfile::Builder::new()
        .prefix(".auth.json.")
        .tempfile_in(&dir)
        .map_err(|e| bad(format!("creating a temp file in {}: {e}", dir.display())))?;
    tmp.write_all(&out)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| bad(format!("writing: {e}")))?;
    tmp.persist(path)
        .map_err(|e| bad(format!("renaming into place: {}", e.error)))?;
    Ok(())
}

/// The registry host of a key, refused when the key has a namespace and a credential
/// helper would keep it (helpers keep one login per registry host).
fn helper_host<'a>(path: &Path, key: &'a str, helper: &str) -> Result<&'a str, AuthError> {
    match key.split_once('/') {
        None => Ok(key),
        Some((host, _)) => Err(AuthError::File {
            path: path.to_path_buf(),
            why: format!(
                "credential helper docker-credential-{helper} keeps one login per registry host; log in to {host}, not {key}"
            ),
        }),
    }
}

/// Stores `creds` for `key` in the auth file at `path`, keeping every other entry and key;
/// when the file names a credential helper for the registry (`credHelpers`, else
/// `credsStore`), the helper keeps them and the file holds no secret (with `credsStore`,
/// an empty `auths` entry marks the login, as docker writes it).
pub fn store(path: &Path, key: &str, creds: &Credentials) -> Result<(), AuthError> {
    let mut doc = read(path)?;
    let host = key.split('/').next().unwrap_or(key);
    if let Some((helper, is_store)) = super::helper_in(&doc, host) {
        super::helper_store(&helper, helper_host(path, key, &helper)?, creds)?;
        if !is_store {
            return Ok(());
        }
        let auths = doc
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(auths) = auths.as_object_mut() else {
            return Err(AuthError::File {
                path: path.to_path_buf(),
                why: "\"auths\" is not a JSON object".into(),
            });
        };
        auths.insert(key.to_string(), Value::Object(Map::new()));
        return write(path, &doc);
    }
    let auths = doc
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        return Err(AuthError::File {
            path: path.to_path_buf(),
            why: "\"auths\" is not a JSON object".into(),
        });
    }
    let encoded = STANDARD.encode(format!("{}:{}", creds.username, creds.secret));
    let mut entry = Map::new();
    entry.insert("auth".into(), Value::String(encoded));
    auths
        .as_object_mut()
        .expect("checked above")
        .insert(key.to_string(), Value::Object(entry));
    write(path, &doc)
}

/// Removes the login for `key`: the helper the file names for it forgets it, and the entry
/// (with its `https://` / `http://` spellings) leaves `auths`; false when there was none.
pub fn remove(path: &Path, key: &str) -> Result<bool, AuthError> {
    let mut doc = read(path)?;
    let host = key.split('/').next().unwrap_or(key);
    let removed = match super::helper_in(&doc, host) {
        Some((helper, _)) if !key.contains('/') => super::helper_erase(&helper, host)?,
        _ => false,
    };
    let Some(Value::Object(auths)) = doc.get_mut("auths") else {
        return Ok(removed);
    };
    let mut changed = false;
    for k in [
        key.to_string(),
        format!("https://{key}"),
        format!("http://{key}"),
    ] {
        changed |= auths.remove(&k).is_some();
    }
    if changed {
        write(path, &doc)?;
    }
    Ok(removed || changed)
}

/// Removes every stored login (`auths` and `credHelpers` emptied, as skopeo's `logout --all`);
/// each `credHelpers` helper forgets its registry and the `credsStore` forgets every registry
/// `auths` names (a helper that is not installed holds nothing to forget). Other keys stay.
pub fn remove_all(path: &Path) -> Result<(), AuthError> {
    if !path.exists() {
        return Ok(());
    }
    let mut doc = read(path)?;
    let mut forget: Vec<(String, String)> = Vec::new();
    if let Some(Value::Object(h)) = doc.get("credHelpers") {
        forget.extend(
            h.iter()
                .filter_map(|(host, v)| Some((v.as_str()?.to_string(), host.clone()))),
        );
    }
    if let (Some(store), Some(Value::Object(auths))) = (
        doc.get("credsStore")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty()),
        doc.get("auths"),
    ) {
        forget.extend(auths.keys().map(|k| (store.to_string(), k.clone())));
    }
    for (helper, host) in forget {
        match super::helper_erase(&helper, &host) {
            Ok(_) => {}
            Err(AuthError::HelperMissing { .. }) => {
                tracing::warn!(
                    "docker-credential-{helper} is not installed: nothing of {host} to forget there"
                );
            }
            Err(e) => return Err(e),
        }
    }
    doc.insert("auths".into(), Value::Object(Map::new()));
    if doc.contains_key("credHelpers") {
        doc.insert("credHelpers".into(), Value::Object(Map::new()));
    }
    write(path, &doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(registry_key("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        assert_eq!(registry_key("https://reg.example/").unwrap(), "reg.example");
        assert_eq!(registry_key("index.docker.io").unwrap(), "docker.io");
        assert_eq!(registry_key("quay.io/team").unwrap(), "quay.io/team");
        assert!(registry_key("").is_err());
        assert!(registry_key("a//b").is_err());
    }

    #[test]
    fn store_keeps_other_entries_and_remove_takes_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/auth.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            r#"{"auths":{"other:1":{"auth":"eDp5"}},"credHelpers":{"gcr.io":"gcloud"},"HttpHeaders":{"X":"1"}}"#,
        )
        .unwrap();
        let c = Credentials::from_flag("alice:pw");
        store(&path, "reg:5000", &c).unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["auths"]["reg:5000"]["auth"], STANDARD.encode("alice:pw"));
        assert_eq!(v["auths"]["other:1"]["auth"], "eDp5");
        assert_eq!(v["credHelpers"]["gcr.io"], "gcloud");
        assert_eq!(v["HttpHeaders"]["X"], "1");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let found = crate::auth::lookup("reg:5000", None, Some(&path))
            .unwrap()
            .unwrap();
        assert_eq!(found, c);
        assert!(remove(&path, "reg:5000").unwrap());
        assert!(!remove(&path, "reg:5000").unwrap());
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(v["auths"].get("reg:5000").is_none());
        assert_eq!(v["auths"]["other:1"]["auth"], "eDp5");
        remove_all(&path).unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["auths"], serde_json::json!({}));
        assert_eq!(v["HttpHeaders"]["X"], "1");
        std::fs::write(&path, "{oops").unwrap();
        assert!(store(&path, "x", &c).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"{oops");
    }
}
