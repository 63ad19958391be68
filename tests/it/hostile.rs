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

// ---------------------------------------------------------------------------
// Crafted bundles: each is refused fast, in little memory, with one short
// line, and the target root holds exactly what it held before.
// ---------------------------------------------------------------------------

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every path under `root` with (is a directory, size, inode): equal snapshots mean a run changed nothing.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (bool, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            if m.is_dir() {
                todo.push(e.path());
                out.insert(rel, (true, 0, m.ino()));
            } else {
                out.insert(rel, (false, m.len(), m.ino()));
            }
        }
    }
    out
}

/// How a child run ended, with its peak memory (`wait4` rusage) and wall time.
struct Ended {
    code: Option<i32>,
    stderr: String,
    peak_kib: i64,
    took: Duration,
}

/// Runs a command to its end, sampling the child's `VmHWM` every millisecond
/// (`wait4`'s maxrss would carry the test process's own peak across the exec).
fn measured(cmd: &mut Command) -> Ended {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0i64;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file)
            && let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        {
            peak_kib = peak_kib.max(kb);
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    Ended {
        code: status.code(),
        stderr,
        peak_kib,
        took,
    }
}

/// Asserts a refusal: exit 1 within a second, under 100 MB, one line of at most 300 characters naming `why`.
fn assert_refused(what: &str, e: &Ended, why: &str) {
    let first = e.stderr.lines().next().unwrap_or("");
    let shown: String = e.stderr.chars().take(400).collect();
    assert_eq!(e.code, Some(1), "{what}: {shown}");
    assert_eq!(e.stderr.lines().count(), 1, "{what}: one line: {shown}");
    assert!(
        first.chars().count() <= 300,
        "{what}: {} characters: {shown}",
        first.chars().count()
    );
    assert!(first.contains(why), "{what}: wanted {why:?}: {shown}");
    assert!(
        e.peak_kib < 100 * 1024,
        "{what}: peak RSS {} KiB",
        e.peak_kib
    );
    assert!(e.took < Duration::from_secs(1), "{what}: took {:?}", e.took);
}

/// A root that already holds a blob and a repository linking it (what a live registry has).
fn live_root(dir: &Path) -> (PathBuf, Digest) {
    let root = dir.join("live");
    let store = Store::create(&root).unwrap().with_durable(false);
    let old = store.put_blob_bytes(b"already here").unwrap();
    store.link_layer("pre/existing", &old).unwrap();
    (root, old)
}

/// A minimal `ferry-bundle.json` listing `blobs` (digest, size).
fn index_json(blobs: &[(Digest, u64)]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "format": "ferry-bundle/v1", "created_by": "test", "source_date_epoch": 0, "images": [],
        "blob_count": blobs.len(), "blob_bytes": 0,
        "blobs": blobs.iter().map(|(d, s)| serde_json::json!({ "digest": d, "size": s })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// The layout path of a blob's data.
fn data_path(d: &Digest) -> String {
    format!(
        "docker/registry/v2/blobs/sha256/{}/{}/data",
        &d.hex()[..2],
        d.hex()
    )
}

/// A tar header of `kind` with a short raw name and `size`.
fn raw_header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    h
}

/// A regular file member at `path` (a GNU long name first when the path needs one).
fn file_member(path: &str, content: Vec<u8>) -> Vec<(tar::Header, Box<dyn std::io::Read>)> {
    let mut out: Vec<(tar::Header, Box<dyn std::io::Read>)> = Vec::new();
    if path.len() > 100 {
        out.push((
            raw_header(
                "././@LongLink",
                tar::EntryType::GNULongName,
                path.len() as u64 + 1,
            ),
            bytes(format!("{path}\0").into_bytes()),
        ));
        out.push((
            raw_header("long", tar::EntryType::Regular, content.len() as u64),
            bytes(content),
        ));
    } else {
        out.push((
            raw_header(path, tar::EntryType::Regular, content.len() as u64),
            bytes(content),
        ));
    }
    out
}

/// Writes a tar: the index first, then each (header, content) as given, into `w`.
fn craft<W: std::io::Write>(
    w: W,
    index: &[u8],
    members: Vec<(tar::Header, Box<dyn std::io::Read>)>,
) -> W {
    let mut b = tar::Builder::new(w);
    let h = raw_header(
        "ferry-bundle.json",
        tar::EntryType::Regular,
        index.len() as u64,
    );
    b.append(&h, index).unwrap();
    for (h, content) in members {
        b.append(&h, content).unwrap();
    }
    b.into_inner().unwrap()
}

/// Writes a crafted tar as a (non-seekable) zstd stream.
fn craft_zstd(path: &Path, index: &[u8], members: Vec<(tar::Header, Box<dyn std::io::Read>)>) {
    let f = std::fs::File::create(path).unwrap();
    let enc = zstd::stream::write::Encoder::new(f, 1).unwrap();
    craft(enc, index, members).finish().unwrap();
}

/// Writes a crafted plain tar.
fn craft_plain(path: &Path, index: &[u8], members: Vec<(tar::Header, Box<dyn std::io::Read>)>) {
    craft(std::fs::File::create(path).unwrap(), index, members);
}

fn bytes(b: Vec<u8>) -> Box<dyn std::io::Read> {
    Box::new(std::io::Cursor::new(b))
}

/// Runs `link`, `verify` and `serve` on a crafted bundle: each refused as [`assert_refused`] says, the live root unchanged.
fn refused_everywhere(what: &str, bundle: &Path, root: &Path, link_why: &str, read_why: &str) {
    refused_everywhere_serve(what, bundle, root, link_why, read_why, read_why)
}

/// [`refused_everywhere`] where `serve` has its own reason (it reads only seekable bundles in place).
fn refused_everywhere_serve(
    what: &str,
    bundle: &Path,
    root: &Path,
    link_why: &str,
    read_why: &str,
    serve_why: &str,
) {
    let before = snapshot(root);
    let e = measured(
        ferry()
            .args(["unbundle", "link"])
            .arg(bundle)
            .arg("--root")
            .arg(root),
    );
    assert_refused(&format!("link {what}"), &e, link_why);
    assert_eq!(snapshot(root), before, "link {what}: the root changed");
    let e = measured(ferry().arg("verify").arg(bundle));
    assert_refused(&format!("verify {what}"), &e, read_why);
    let e = measured(
        ferry()
            .args(["unbundle", "serve", "--listen", "127.0.0.1:0"])
            .arg(bundle),
    );
    assert_refused(&format!("serve {what}"), &e, serve_why);
}

#[test]
fn oversized_tar_headers_are_refused_before_they_are_read() {
    let work = tempfile::tempdir().unwrap();
    let (root, _) = live_root(work.path());
    let index = index_json(&[]);
    let dir = |name: &str| {
        (
            raw_header(name, tar::EntryType::Directory, 0),
            bytes(Vec::new()),
        )
    };
    // A 64 MiB GNU long name (compresses to little), then a harmless directory.
    let big = 64 * 1024 * 1024;
    let long = work.path().join("longname.tar.zst");
    craft_zstd(
        &long,
        &index,
        vec![
            (
                raw_header("././@LongLink", tar::EntryType::GNULongName, big),
                Box::new(std::io::repeat(b'a').take(big)),
            ),
            dir("docker/"),
        ],
    );
    refused_everywhere_serve(
        "64 MiB long name",
        &long,
        &root,
        "a GNU long name of 67108864 bytes",
        "a GNU long name of 67108864 bytes",
        "no seek table at the end",
    );
    // A 64 MiB PAX header before a directory (accepted today after reading it all).
    let mut record = format!("{big} comment=").into_bytes();
    record.resize(big as usize - 1, b'a');
    record.push(b'\n');
    let pax = work.path().join("pax.tar.zst");
    craft_zstd(
        &pax,
        &index,
        vec![
            (
                raw_header("PaxHeader", tar::EntryType::XHeader, big),
                bytes(record),
            ),
            dir("docker/"),
        ],
    );
    refused_everywhere_serve(
        "64 MiB PAX header",
        &pax,
        &root,
        "a PAX header of 67108864 bytes",
        "a PAX header of 67108864 bytes",
        "no seek table at the end",
    );
    // A GNU long link name of 64 KiB on a symlink.
    let ll = work.path().join("longlink.tar");
    craft_plain(
        &ll,
        &index,
        vec![
            (
                raw_header("././@LongLink", tar::EntryType::GNULongLink, 65536),
                bytes(vec![b'l'; 65536]),
            ),
            (
                raw_header("docker/x", tar::EntryType::Symlink, 0),
                bytes(Vec::new()),
            ),
        ],
    );
    refused_everywhere(
        "64 KiB long link name",
        &ll,
        &root,
        "a GNU long link name of 65536 bytes",
        "a GNU long link name of 65536 bytes",
    );
    // A 3 KiB path (under the cap, outside the layout): refused, and echoed short.
    let name = format!("docker/{}", "p/".repeat(1500));
    let lp = work.path().join("longpath.tar");
    craft_plain(
        &lp,
        &index,
        vec![
            (
                raw_header(
                    "././@LongLink",
                    tar::EntryType::GNULongName,
                    name.len() as u64 + 1,
                ),
                bytes(format!("{name}\0").into_bytes()),
            ),
            (
                raw_header("x", tar::EntryType::Regular, 1),
                bytes(b"x".to_vec()),
            ),
        ],
    );
    refused_everywhere(
        "3 KiB path",
        &lp,
        &root,
        "not a file of the registry layout",
        "not a file of the registry layout",
    );
}

#[test]
fn claimed_sizes_are_checked_before_anything_is_written() {
    let work = tempfile::tempdir().unwrap();
    let (root, _) = live_root(work.path());
    let d = Digest::sha256_of(b"never sent");
    // The index and the header claim 1 TiB; the file holds a few bytes.
    let tib = 1u64 << 40;
    let claim = |path: &Path, size: u64| {
        let path_name = data_path(&d);
        let index = index_json(&[(d.clone(), size)]);
        let mut f = std::fs::File::create(path).unwrap();
        let mut b = tar::Builder::new(&mut f);
        let ih = raw_header(
            "ferry-bundle.json",
            tar::EntryType::Regular,
            index.len() as u64,
        );
        b.append(&ih, index.as_slice()).unwrap();
        let ln = raw_header(
            "././@LongLink",
            tar::EntryType::GNULongName,
            path_name.len() as u64 + 1,
        );
        b.append(&ln, format!("{path_name}\0").as_bytes()).unwrap();
        let h = raw_header("long", tar::EntryType::Regular, size);
        b.get_mut().write_all(h.as_bytes()).unwrap();
        b.get_mut().write_all(&[7u8; 4096]).unwrap();
        std::mem::forget(b); // no end-of-archive blocks: the member is cut short
    };
    let huge = work.path().join("huge.tar");
    claim(&huge, tib);
    refused_everywhere(
        "1 TiB claim",
        &huge,
        &root,
        "not enough disk space on",
        "but the archive holds only",
    );
    // 50 MB claimed (room enough), the file holds 4 KiB of it.
    let short = work.path().join("short.tar");
    claim(&short, 50_000_000);
    refused_everywhere(
        "50 MB claim, 4 KiB held",
        &short,
        &root,
        "but the archive holds only",
        "but the archive holds only",
    );
}

/// A bundle of three new blobs (and one the root has) whose last part is wrong in a way the scan sees only at the end.
fn late_fault_bundle(path: &Path, old: &Digest, fault: &str) {
    let blobs: Vec<Vec<u8>> = (0..3)
        .map(|i| format!("new blob {i} ").repeat(5000).into_bytes())
        .collect();
    let mut listed: Vec<(Digest, u64)> = blobs
        .iter()
        .map(|b| (Digest::sha256_of(b), b.len() as u64))
        .collect();
    listed.push((old.clone(), 12));
    let mut members: Vec<(tar::Header, Box<dyn std::io::Read>)> = Vec::new();
    let file = file_member;
    members.extend(file(&data_path(old), b"already here".to_vec()));
    for (b, (d, _)) in blobs.iter().zip(&listed) {
        members.extend(file(&data_path(d), b.clone()));
    }
    match fault {
        "wrong bytes" => {
            let bad = Digest::sha256_of(b"the real content");
            listed.push((bad.clone(), 16));
            members.extend(file(&data_path(&bad), b"THE REAL CONTENT".to_vec()));
        }
        "missing blob" => listed.push((Digest::sha256_of(b"not in the archive"), 18)),
        "manifest that does not parse" => {
            // Consistent links and index, but the tagged "manifest" is not one: found only when linking.
            let m = b"{\"not\": \"a manifest\"}".to_vec();
            let md = Digest::sha256_of(&m);
            listed.push((md.clone(), m.len() as u64));
            members.extend(file(&data_path(&md), m));
            let repo = "docker/registry/v2/repositories/x/_manifests";
            for link in [
                format!("{repo}/revisions/sha256/{}/link", md.hex()),
                format!("{repo}/tags/t/current/link"),
                format!("{repo}/tags/t/index/sha256/{}/link", md.hex()),
            ] {
                members.extend(file(&link, md.to_string().into_bytes()));
            }
            listed.sort();
            let mut index: serde_json::Value =
                serde_json::from_slice(&index_json(&listed)).unwrap();
            index["images"] = serde_json::json!([{
                "source": "x:t", "repository": "x", "tag": "t", "digest": md,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
            }]);
            craft_plain(path, &serde_json::to_vec(&index).unwrap(), members);
            return;
        }
        "dangling link" => {
            let ghost = Digest::sha256_of(b"ghost");
            members.extend(file(
                &format!(
                    "docker/registry/v2/repositories/x/_layers/sha256/{}/link",
                    ghost.hex()
                ),
                ghost.to_string().into_bytes(),
            ));
        }
        other => panic!("{other}"),
    }
    listed.sort();
    craft_plain(path, &index_json(&listed), members);
}

#[test]
fn a_refused_link_takes_back_every_blob_it_added() {
    let work = tempfile::tempdir().unwrap();
    let (root, old) = live_root(work.path());
    for (fault, why) in [
        ("wrong bytes", "content hashes to"),
        ("missing blob", "which the archive does not hold"),
        ("dangling link", "which the archive does not hold"),
        ("manifest that does not parse", "manifest sha256:"),
    ] {
        let bundle = work.path().join(format!("{}.tar", fault.replace(' ', "-")));
        late_fault_bundle(&bundle, &old, fault);
        let before = snapshot(&root);
        let e = measured(
            ferry()
                .args(["unbundle", "link"])
                .arg(&bundle)
                .arg("--root")
                .arg(&root),
        );
        assert_refused(fault, &e, why);
        assert_eq!(
            snapshot(&root),
            before,
            "{fault}: blobs or directories left behind"
        );
        assert!(
            Store::open(&root).has_blob(&old),
            "{fault}: the old blob stays"
        );
    }
}

/// A refusal that wrote nothing into the root does not wait for the disk: no `syncfs`, which
/// waits for every dirty page of the file system (other writers' too: seconds on a busy machine,
/// what made this refusal miss its second under load). A refusal that took blobs back does sync.
#[test]
fn a_refusal_that_wrote_nothing_does_not_sync_the_file_system() {
    require("strace");
    let work = tempfile::tempdir().unwrap();
    let (root, old) = live_root(work.path());
    let long = work.path().join("longname.tar.zst");
    craft_zstd(
        &long,
        &index_json(&[]),
        vec![(
            raw_header("././@LongLink", tar::EntryType::GNULongName, 1 << 20),
            Box::new(std::io::repeat(b'a').take(1 << 20)),
        )],
    );
    let late = work.path().join("wrong-bytes.tar");
    late_fault_bundle(&late, &old, "wrong bytes");
    for (bundle, why, synced) in [
        (&long, "a GNU long name of 1048576 bytes", false),
        (&late, "content hashes to", true),
    ] {
        let trace = work.path().join("trace");
        let out = run(Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=syncfs", "-o"])
            .arg(&trace)
            .arg(env!("CARGO_BIN_EXE_ferry"))
            .args(["unbundle", "link"])
            .arg(bundle)
            .arg("--root")
            .arg(&root));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(why), "wanted {why:?}: {stderr}");
        let calls = std::fs::read_to_string(&trace).unwrap();
        assert_eq!(
            calls.contains("syncfs("),
            synced,
            "{why}: syncfs calls: {calls}"
        );
    }
}

/// Rewrites the seek table of a seekable bundle: `f(frames)` changes (compressed, decompressed) sizes.
fn lie_in_seek_table(src: &Path, dst: &Path, f: impl Fn(&mut [(u32, u32)])) {
    let mut b = std::fs::read(src).unwrap();
    let len = b.len();
    let n = u32::from_le_bytes(b[len - 9..len - 5].try_into().unwrap()) as usize;
    assert_eq!(b[len - 5], 0, "no checksums in ferry's tables");
    let start = len - 9 - n * 8;
    let mut frames: Vec<(u32, u32)> = (0..n)
        .map(|i| {
            let e = &b[start + i * 8..];
            (
                u32::from_le_bytes(e[0..4].try_into().unwrap()),
                u32::from_le_bytes(e[4..8].try_into().unwrap()),
            )
        })
        .collect();
    assert!(n >= 3, "the bundle has several frames");
    f(&mut frames);
    for (i, (c, d)) in frames.iter().enumerate() {
        b[start + i * 8..start + i * 8 + 4].copy_from_slice(&c.to_le_bytes());
        b[start + i * 8 + 4..start + i * 8 + 8].copy_from_slice(&d.to_le_bytes());
    }
    std::fs::write(dst, b).unwrap();
}

#[test]
fn a_seek_table_that_lies_is_refused_by_verify_serve_and_link() {
    let (zst, _) = crate::unbundle::bundles();
    let work = tempfile::tempdir().unwrap();
    let (root, _) = live_root(work.path());
    // Decompressed sizes moved between the first two frames (the totals still add up).
    let sizes = work.path().join("sizes.tar.zst");
    lie_in_seek_table(zst, &sizes, |f| {
        f[0].1 += 512;
        f[1].1 -= 512;
    });
    refused_everywhere(
        "decompressed sizes",
        &sizes,
        &root,
        "the seek table does not match the stream",
        "the seek table does not match the stream",
    );
    // Compressed sizes moved: frame 0 now ends inside frame 1.
    let offsets = work.path().join("offsets.tar.zst");
    lie_in_seek_table(zst, &offsets, |f| {
        f[0].0 += 100;
        f[1].0 -= 100;
    });
    refused_everywhere(
        "compressed sizes",
        &offsets,
        &root,
        "the seek table does not match the stream",
        "the seek table does not match the stream",
    );
}

/// A plain bundle with one listed blob of `size` pseudo-random bytes and nothing else.
fn one_blob_bundle(path: &Path, size: usize) {
    let content = ferry::fixtures::noise(size, 0x9e37_79b9_7f4a_7c15);
    let d = Digest::sha256_of(&content);
    craft_plain(
        path,
        &index_json(&[(d.clone(), size as u64)]),
        file_member(&data_path(&d), content),
    );
}

#[test]
fn a_full_target_is_named_as_the_target() {
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("one.tar");
    one_blob_bundle(&bundle, 4 * 1024 * 1024);
    // A file-size limit (SIGXFSZ ignored, so writes fail with EFBIG) stands in for
    // a disk that fills up while blobs are written: the free-space check passes.
    let (root, _) = live_root(work.path());
    let before = snapshot(&root);
    let e = measured(
        Command::new("sh")
            .arg("-c")
            .arg("trap '' XFSZ; exec prlimit --fsize=1048576 -- \"$@\"")
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_ferry"))
            .args(["unbundle", "link"])
            .arg(&bundle)
            .arg("--root")
            .arg(&root),
    );
    assert_refused(
        "file-size limit",
        &e,
        &format!("no space left on {}", root.display()),
    );
    assert!(!e.stderr.contains("truncated"), "{}", e.stderr);
    assert_eq!(snapshot(&root), before, "the root changed");
    // A real small file system: refused up front by the free-space check, naming the root.
    let mnt = work.path().join("small-fs");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("cannot mount a tmpfs here: the small file system case is skipped");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let (root, _) = live_root(&mnt);
    let before = snapshot(&root);
    let e = measured(
        ferry()
            .args(["unbundle", "link"])
            .arg(&bundle)
            .arg("--root")
            .arg(&root),
    );
    assert_refused(
        "small tmpfs",
        &e,
        &format!("not enough disk space on {}", root.display()),
    );
    assert_eq!(snapshot(&root), before, "the root changed");
}

/// Every tag a registry would list resolves to a manifest the repository links and the root holds.
fn every_listed_tag_resolves(root: &Path, what: &str) -> usize {
    let store = Store::open(root);
    let mut n = 0;
    for repo in store.repositories().unwrap() {
        for tag in store.tags(&repo).unwrap() {
            let d = store.resolve_tag(&repo, &tag).unwrap().unwrap_or_else(|| {
                panic!("{what}: {repo}:{tag} is listed but has no current/link")
            });
            assert!(
                store.has_revision(&repo, &d),
                "{what}: {repo}:{tag} → {d} not linked"
            );
            assert!(
                store.has_blob(&d),
                "{what}: {repo}:{tag} → {d} not in the root"
            );
            n += 1;
        }
    }
    n
}

#[test]
fn a_link_killed_in_its_tag_phase_never_leaves_a_tag_that_does_not_resolve() {
    let (dir, corpus) = tiny();
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, corpus.images_list()).unwrap();
    let bundle = work.path().join("tiny.tar.zst");
    {
        let server = FerryServe::start(dir.path());
        run_ok(
            bundle_cmd(&list, &bundle, &work.path().join("cache"), &server.addr)
                .arg("--all-platforms"),
        );
    }
    let tags = corpus.images.len();
    for run in 0..10u64 {
        let root = work.path().join(format!("root-{run}"));
        // Test-only pause before each new tag is renamed into place, so the kill lands in the tag phase.
        let mut child = ferry()
            .env(ferry::limits::ENV_TAG_PAUSE_MS, "20")
            .args(["unbundle", "link"])
            .arg(&bundle)
            .arg("--root")
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let tmp = Store::open(&root).path(PathSpec::Temp);
        let start = Instant::now();
        let in_tag_phase = || {
            std::fs::read_dir(&tmp).is_ok_and(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("tag-"))
            })
        };
        while !in_tag_phase() && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(in_tag_phase(), "run {run}: the tag phase never started");
        std::thread::sleep(Duration::from_millis(run * 7 % 45));
        child.kill().unwrap();
        child.wait().unwrap();
        every_listed_tag_resolves(&root, &format!("run {run} after SIGKILL"));
        // A re-run finishes the job.
        run_ok(
            ferry()
                .args(["unbundle", "link"])
                .arg(&bundle)
                .arg("--root")
                .arg(&root),
        );
        assert_eq!(
            every_listed_tag_resolves(&root, &format!("run {run} re-run")),
            tags,
            "run {run}: every tag after the re-run"
        );
    }
}

/// `ferry serve ROOT [extra]` with both connection timeouts set to `ms` (test-only variable); returns the child and its address.
pub(crate) fn serve_with_timeouts(
    root: &Path,
    ms: u64,
    extra: &[&str],
) -> (std::process::Child, String) {
    use std::io::BufRead as _;
    let mut child = ferry()
        .env(ferry::limits::ENV_SERVE_TIMEOUT_MS, ms.to_string())
        .arg("serve")
        .arg(root)
        .args(extra)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    std::thread::spawn(move || for _ in lines {});
    // "ferry: serving ROOT at http[s]://ADDR[, …]"
    let addr = first
        .rsplit("://")
        .next()
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    (child, addr)
}

#[test]
fn idle_and_half_sent_connections_are_closed_and_names_are_echoed_short() {
    let (dir, _) = tiny();
    let (child, addr) = serve_with_timeouts(dir.path(), 400, &[]);
    /// Stops the server however the test ends.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(child);
    // Half-sent request heads, and one idle keep-alive connection after a full exchange.
    let mut half: Vec<std::net::TcpStream> = (0..100)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    idle.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    std::thread::sleep(Duration::from_millis(1500));
    half.push(idle);
    for (i, s) in half.iter_mut().enumerate() {
        if let Err(e) = read_until_closed(s, Duration::from_secs(3)) {
            panic!("connection {i} still open after the timeout: {e}");
        }
    }
    // The server still answers, and a 10 KB repository name comes back cut short.
    let (status, _, body) = http(&addr, "GET", "/v2/", &[]).unwrap();
    assert_eq!(status, 200);
    let name = "a".repeat(10_000);
    let (status, _, body2) = http(&addr, "GET", &format!("/v2/{name}/tags/list"), &[]).unwrap();
    assert!(status >= 400, "{status}");
    assert!(
        body2.len() < 1024,
        "{} bytes echoed: {}",
        body2.len(),
        String::from_utf8_lossy(&body2[..200])
    );
    drop(body);
}
