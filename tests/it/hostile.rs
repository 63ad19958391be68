//! A registry that misbehaves on purpose: rate limits, broken connections,
//! lies about digests. The client must retry, resume with `Range`, or refuse.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry::digest::Digest;
use ferry::manifest::Manifest;
use ferry::store::Store;
use ferry::store::paths::PathSpec;

use crate::harness::*;

/// How the layer endpoint misbehaves.
#[derive(Clone, Copy)]
enum Mode {
    /// 429 with Retry-After, then a connection cut halfway, then honest ranges.
    Flaky,
    /// Always the wrong bytes under the right digest.
    Liar,
    /// Honest, but only with a bearer token from its token endpoint, which wants basic credentials.
    Auth,
    /// Honest, but only with basic credentials on every request.
    Basic,
}

const USER: &str = "alice";
const PASS: &str = "s3cret";
const TOKEN: &str = "t0k3n-for-alice";

struct Hostile {
    root: std::path::PathBuf,
    repo: String,
    manifest: Digest,
    layer: Digest,
    mode: Mode,
    layer_gets: AtomicUsize,
    token_gets: AtomicUsize,
    ranges: std::sync::Mutex<Vec<String>>,
}

async fn handle(State(h): State<Arc<Hostile>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let store = Store::open(&h.root);
    if let Mode::Basic = h.mode {
        use base64::Engine;
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"))
        );
        if req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(basic.as_str())
        {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"hostile\"")],
                "",
            )
                .into_response();
        }
    }
    if let Mode::Auth = h.mode {
        use base64::Engine;
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if path == "/token" {
            h.token_gets.fetch_add(1, Ordering::SeqCst);
            let basic = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"))
            );
            let query = req.uri().query().unwrap_or("");
            let scope_ok = query.contains(&format!(
                "scope=repository%3A{}%3Apull",
                h.repo.replace('/', "%2F")
            ));
            if auth != basic || !scope_ok {
                return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
            }
            return (StatusCode::OK, format!("{{\"token\":\"{TOKEN}\"}}")).into_response();
        }
        if auth != format!("Bearer {TOKEN}") {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let challenge = format!(
                "Bearer realm=\"http://{host}/token\",service=\"hostile\",scope=\"repository:{}:pull\"",
                h.repo
            );
            return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)], "{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"authentication required\"}]}").into_response();
        }
    }
    if path == "/v2/" {
        return (StatusCode::OK, "{}").into_response();
    }
    let prefix = format!("/v2/{}/", h.repo);
    let Some(rest) = path.strip_prefix(&prefix) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some(reference) = rest.strip_prefix("manifests/") {
        let raw = store.read_manifest(&h.manifest).unwrap();
        if reference != h.manifest.to_string() && !reference.starts_with('v') {
            return StatusCode::NOT_FOUND.into_response();
        }
        let mut hm = HeaderMap::new();
        hm.insert(header::CONTENT_TYPE, raw.media_type().parse().unwrap());
        hm.insert(
            "docker-content-digest",
            h.manifest.to_string().parse().unwrap(),
        );
        let body = if req.method() == "HEAD" {
            Body::empty()
        } else {
            Body::from(raw.bytes().to_vec())
        };
        hm.insert(header::CONTENT_LENGTH, raw.bytes().len().into());
        return (StatusCode::OK, hm, body).into_response();
    }
    let Some(digest) = rest.strip_prefix("blobs/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let d = Digest::parse(digest).unwrap();
    let mut bytes = std::fs::read(store.path(PathSpec::BlobData(&d))).unwrap();
    if d != h.layer {
        return (StatusCode::OK, bytes).into_response();
    }
    let n = h.layer_gets.fetch_add(1, Ordering::SeqCst);
    match h.mode {
        Mode::Auth | Mode::Basic => (StatusCode::OK, bytes).into_response(),
        Mode::Liar => {
            bytes[10] ^= 1;
            (StatusCode::OK, bytes).into_response()
        }
        Mode::Flaky if n == 0 => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "slow down",
        )
            .into_response(),
        Mode::Flaky if n == 1 => {
            // Promise the whole blob, send half, then break the connection.
            let half = bytes[..bytes.len() / 2].to_vec();
            let stream = futures_util::stream::iter(vec![
                Ok::<_, std::io::Error>(bytes::Bytes::from(half)),
                Err(std::io::Error::other("cut")),
            ]);
            (
                StatusCode::OK,
                [(header::CONTENT_LENGTH, bytes.len().to_string())],
                Body::from_stream(stream),
            )
                .into_response()
        }
        Mode::Flaky => {
            let range = req
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            h.ranges.lock().unwrap().push(range.clone());
            let Some(start) = range
                .strip_prefix("bytes=")
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|s| s.parse::<usize>().ok())
            else {
                return (StatusCode::OK, bytes).into_response();
            };
            let total = bytes.len();
            (
                StatusCode::PARTIAL_CONTENT,
                [(
                    header::CONTENT_RANGE,
                    format!("bytes {start}-{}/{total}", total - 1),
                )],
                bytes[start..].to_vec(),
            )
                .into_response()
        }
    }
}

fn start(
    mode: Mode,
) -> (
    tempfile::TempDir,
    Arc<Hostile>,
    String,
    tokio::runtime::Runtime,
) {
    let (dir, corpus) = tiny();
    let img = corpus
        .images
        .iter()
        .find(|i| i.platforms.is_empty())
        .unwrap()
        .clone();
    let store = Store::open(dir.path());
    let Manifest::Image(m) = store.read_manifest(&img.digest).unwrap().parse().unwrap() else {
        panic!()
    };
    let layer = m
        .layers
        .iter()
        .max_by_key(|l| l.size)
        .unwrap()
        .digest
        .clone();
    let h = Arc::new(Hostile {
        root: dir.path().to_path_buf(),
        repo: img.repository.clone(),
        manifest: img.digest.clone(),
        layer,
        mode,
        layer_gets: AtomicUsize::new(0),
        token_gets: AtomicUsize::new(0),
        ranges: Default::default(),
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app = axum::Router::new().fallback(handle).with_state(h.clone());
    rt.spawn(async move { axum::serve(listener, app).await });
    (dir, h, addr, rt)
}

#[test]
fn rate_limit_and_broken_connection_are_retried_and_resumed() {
    let (_dir, h, addr, _rt) = start(Mode::Flaky);
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, format!("{}@{}\n", h.repo, h.manifest)).unwrap();
    let cache = work.path().join("cache");
    let out = run_ok(
        ferry()
            .args([
                "bundle",
                "-q",
                "--json",
                "--src-tls-verify=false",
                "--source",
                &addr,
                "-f",
            ])
            .arg(&list)
            .arg("-o")
            .arg(work.path().join("b.tar.zst"))
            .arg("--cache")
            .arg(&cache),
    );
    assert_eq!(
        h.layer_gets.load(Ordering::SeqCst),
        3,
        "429, cut, then the rest"
    );
    let ranges = h.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 1);
    let size = Store::open(&h.root).blob_size(&h.layer).unwrap().unwrap();
    assert_eq!(
        ranges[0],
        format!("bytes={}-", size / 2),
        "resumed where the connection broke"
    );
    assert!(Store::open(&cache).has_blob(&h.layer));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["images"], 1);
}

#[test]
fn a_lying_registry_is_refused_without_leaving_anything() {
    let (_dir, h, addr, _rt) = start(Mode::Liar);
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, format!("{}@{}\n", h.repo, h.manifest)).unwrap();
    let cache = work.path().join("cache");
    let res = run(ferry()
        .env("FERRY_TEST_NO_RETRY_DELAY", "1")
        .args(["bundle", "--src-tls-verify=false", "--source", &addr, "-f"])
        .arg(&list)
        .arg("-o")
        .arg(work.path().join("b.tar.zst"))
        .arg("--cache")
        .arg(&cache));
    assert_eq!(res.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains(&h.repo) && stderr.contains(&format!("expected {}", h.layer)),
        "{stderr}"
    );
    assert!(!Store::open(&cache).has_blob(&h.layer));
    assert!(!work.path().join("b.tar.zst").exists());
}

#[test]
fn bearer_token_from_credentials_and_clear_errors_without_them() {
    let (_dir, h, addr, _rt) = start(Mode::Auth);
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, format!("{}@{}\n", h.repo, h.manifest)).unwrap();
    let bundle = |extra: &[&str], cache: &str| {
        run(ferry()
            .env("FERRY_TEST_NO_RETRY_DELAY", "1")
            .args(["bundle", "--src-tls-verify=false", "--source", &addr, "-f"])
            .arg(&list)
            .arg("-o")
            .arg(work.path().join("b.tar.zst"))
            .arg("--cache")
            .arg(work.path().join(cache))
            .args(extra))
    };
    // No credentials: one clear line naming the image and the 401.
    let out = bundle(&[], "c1");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().next().unwrap().contains(&h.repo) && stderr.contains("401"),
        "{stderr}"
    );
    // Wrong password: the token endpoint says no, and the secret is not printed.
    let out = bundle(&["--src-creds", &format!("{USER}:wrong-pass")], "c2");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("getting a token from") && !stderr.contains("wrong-pass"),
        "{stderr}"
    );
    // The right credentials, from the command line and from an auth file.
    let out = bundle(&["--src-creds", &format!("{USER}:{PASS}")], "c3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let authfile = work.path().join("auth.json");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    std::fs::write(
        &authfile,
        format!("{{\"auths\":{{\"{addr}\":{{\"auth\":\"{b64}\"}}}}}}"),
    )
    .unwrap();
    let out = bundle(&["--authfile", authfile.to_str().unwrap()], "c4");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(h.token_gets.load(Ordering::SeqCst) >= 3);
}

#[test]
fn basic_auth_registry() {
    let (_dir, h, addr, _rt) = start(Mode::Basic);
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, format!("{}@{}\n", h.repo, h.manifest)).unwrap();
    let out = run(&mut bundle_cmd(
        &list,
        &work.path().join("a.tar.zst"),
        &work.path().join("c1"),
        &addr,
    ));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    run_ok(
        bundle_cmd(
            &list,
            &work.path().join("b.tar.zst"),
            &work.path().join("c2"),
            &addr,
        )
        .args(["--src-creds", &format!("{USER}:{PASS}")]),
    );
}

#[test]
fn copy_with_a_wrong_password_or_lying_registry_writes_nothing() {
    let (_dir, h, addr, _rt) = start(Mode::Basic);
    let work = tempfile::tempdir().unwrap();
    let src = format!("docker://{addr}/{}@{}", h.repo, h.manifest);
    let into = work.path().join("img");
    let out = run(ferry().args([
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &format!("{USER}:wrong-password"),
        &src,
        &format!("dir:{}", into.display()),
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains("401"), "{err}");
    assert!(
        !err.contains("wrong-password"),
        "the secret is never printed: {err}"
    );
    assert!(!into.join("manifest.json").exists(), "no image written");
    run_ok(ferry().args([
        "copy",
        "-q",
        "--src-tls-verify=false",
        "--src-creds",
        &format!("{USER}:{PASS}"),
        &src,
        &format!("dir:{}", into.display()),
    ]));
    assert!(into.join("manifest.json").exists());

    // A registry that sends the wrong bytes under the right digest: refused, nothing named.
    let (_dir, h, addr, _rt) = start(Mode::Liar);
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let out = run(ferry().args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{addr}/{}@{}", h.repo, h.manifest),
        &format!("registry-root:{}/lied:1", root.display()),
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&h.layer.to_string()), "names the blob: {err}");
    let store = Store::open(&root);
    assert_eq!(store.resolve_tag("lied", "1").unwrap(), None, "no tag");
    assert!(
        !store.has_blob(&h.layer),
        "the lying blob is not in the root"
    );
    let tmp = std::fs::read_dir(store.path(PathSpec::Temp))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(tmp, 0, "no temp file left");
}
