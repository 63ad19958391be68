//! Registry faults through a fault-injecting HTTP proxy in front of a real
//! `docker-registry`: stalled headers, a body that stalls mid-way, upload
//! sessions the registry forgets or closes with a 500, plus plain HTTP under
//! TLS, dead registries, `--jobs 0` and the per-host cap. Each case must end
//! in bounded time with a message naming the host and the cause, and leave
//! nothing corrupt or half-visible.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry::digest::Digest;
use ferry::fixtures::FixtureImage;
use ferry::manifest::Manifest;
use ferry::store::Store;
use ferry::store::paths::PathSpec;
use futures_util::StreamExt;

use crate::harness::*;

/// What the proxy does wrong.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    /// Never answers a blob GET (the connection stays open).
    StallHeaders,
    /// Answers a blob GET with half its body, then holds the connection open.
    StallBody,
    /// The first PUT on each upload session gets 500 "disk full" and closes it;
    /// later PATCH/PUT on that session get 404 BLOB_UPLOAD_UNKNOWN (as distribution does).
    DiskFull,
    /// PATCH/PUT on uploads after the first get 404 BLOB_UPLOAD_UNKNOWN (the registry forgot the session).
    ForgetSessions,
    /// Every request waits 300 ms; blob GETs get 404 at once (only the manifests' concurrency is measured).
    SlowCount,
    /// Every cross-repository mount (`POST ?mount=`) gets 405 UNSUPPORTED, as some registries answer.
    RefuseMounts,
}

struct Proxy {
    upstream: String,
    addr: Mutex<String>,
    fault: Fault,
    http: reqwest::Client,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    uploads: AtomicUsize,
    closed: Mutex<HashSet<String>>,
    /// Mounts refused ([`Fault::RefuseMounts`]).
    refused: AtomicUsize,
}

/// Counts a request as in flight until its answer's headers are ready.
struct InFlight(Arc<Proxy>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn errors(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"errors\":[{{\"code\":\"{code}\",\"message\":\"{message}\"}}]}}"),
    )
        .into_response()
}

async fn handle(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    let n = p.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    p.max_in_flight.fetch_max(n, Ordering::SeqCst);
    let _counted = InFlight(p.clone());
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let blob_get = method == "GET" && path.contains("/blobs/sha256:");
    let upload_write = (method == "PUT" || method == "PATCH") && path.contains("/blobs/uploads/");
    let mount = method == "POST" && req.uri().query().is_some_and(|q| q.contains("mount="));
    match p.fault {
        Fault::RefuseMounts if mount => {
            p.refused.fetch_add(1, Ordering::SeqCst);
            return errors(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "The operation is unsupported.",
            );
        }
        Fault::StallHeaders if blob_get => {
            futures_util::future::pending::<()>().await;
        }
        Fault::SlowCount => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if blob_get {
                return errors(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "not here");
            }
        }
        Fault::DiskFull if upload_write => {
            if p.closed.lock().unwrap().contains(&path) {
                return errors(
                    StatusCode::NOT_FOUND,
                    "BLOB_UPLOAD_UNKNOWN",
                    "blob upload unknown to registry",
                );
            }
            if method == "PUT" {
                p.closed.lock().unwrap().insert(path);
                return errors(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "disk full: no space left on device",
                );
            }
        }
        Fault::ForgetSessions if upload_write && p.uploads.fetch_add(1, Ordering::SeqCst) > 0 => {
            return errors(
                StatusCode::NOT_FOUND,
                "BLOB_UPLOAD_UNKNOWN",
                "blob upload unknown to registry",
            );
        }
        _ => {}
    }
    forward(&p, req, blob_get && p.fault == Fault::StallBody).await
}

/// Sends the request on to the registry and streams its answer back (half of it, then silence, when `stall`).
async fn forward(p: &Proxy, req: Request, stall: bool) -> Response {
    let (parts, body) = req.into_parts();
    let url = format!(
        "http://{}{}",
        p.upstream,
        parts
            .uri
            .path_and_query()
            .map(|x| x.as_str())
            .unwrap_or("/")
    );
    let mut out = p.http.request(parts.method.clone(), &url);
    for (k, v) in &parts.headers {
        if k != header::HOST && k != header::CONNECTION {
            out = out.header(k, v);
        }
    }
    let out = out.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = resp.status();
    let mut builder = Response::builder().status(status.as_u16());
    let me = p.addr.lock().unwrap().clone();
    for (k, v) in resp.headers() {
        if k == header::TRANSFER_ENCODING || k == header::CONNECTION {
            continue;
        }
        if k == header::LOCATION {
            let loc = v.to_str().unwrap().replace(&p.upstream, &me);
            builder = builder.header(k, HeaderValue::from_str(&loc).unwrap());
        } else {
            builder = builder.header(k, v);
        }
    }
    if parts.method == "HEAD" {
        return builder.body(Body::empty()).unwrap();
    }
    if stall && status.is_success() {
        let bytes = resp.bytes().await.unwrap();
        let half = bytes.slice(..bytes.len() / 2);
        let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(half) })
            .chain(futures_util::stream::pending());
        return builder.body(Body::from_stream(stream)).unwrap();
    }
    builder
        .body(Body::from_stream(resp.bytes_stream()))
        .unwrap()
}

/// A proxy with `fault` in front of the registry at `upstream`, on a random loopback port.
fn proxy(upstream: &str, fault: Fault) -> (Arc<Proxy>, String, tokio::runtime::Runtime) {
    // reqwest is built without a default crypto provider (ferry installs ring the same way).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let p = Arc::new(Proxy {
        upstream: upstream.to_string(),
        addr: Mutex::new(addr.clone()),
        fault,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        uploads: AtomicUsize::new(0),
        closed: Mutex::new(HashSet::new()),
        refused: AtomicUsize::new(0),
    });
    let app = axum::Router::new().fallback(handle).with_state(p.clone());
    rt.spawn(async move { axum::serve(listener, app).await });
    (p, addr, rt)
}

/// The smallest single-platform image of the `small` corpus.
fn small_image() -> &'static FixtureImage {
    let (_, corpus) = small();
    corpus
        .images
        .iter()
        .filter(|i| i.platforms.is_empty())
        .min_by_key(|i| i.referenced_bytes)
        .unwrap()
}

/// Config and layer digests of a single-platform image of the `small` corpus.
fn blobs_of(img: &FixtureImage) -> Vec<Digest> {
    let (root, _) = small();
    let Manifest::Image(m) = Store::open(root)
        .read_manifest(&img.digest)
        .unwrap()
        .parse()
        .unwrap()
    else {
        panic!("a single-platform image")
    };
    m.layers
        .iter()
        .map(|l| l.digest.clone())
        .chain([m.config.digest.clone()])
        .collect()
}

/// A bundle of [`small_image`], made once per run.
fn one_image_bundle() -> &'static PathBuf {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-bundle");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (_d, reg) = small_registry();
        let img = small_image();
        let list = dir.join("list.txt");
        std::fs::write(&list, format!("{}:{}\n", img.repository, img.tag)).unwrap();
        let out = dir.join("one.tar.zst");
        run_ok(&mut bundle_cmd(&list, &out, &dir.join("cache"), &reg.addr));
        out
    })
}

/// Bundles [`small_image`] through a proxy with `fault`; returns (stderr, seconds, cache, work dir, proxy addr).
fn bundle_through(fault: Fault) -> (String, f64, PathBuf, tempfile::TempDir, String) {
    let (_d, reg) = small_registry();
    let (_p, addr, _rt) = proxy(&reg.addr, fault);
    let img = small_image();
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, format!("{}:{}\n", img.repository, img.tag)).unwrap();
    let cache = work.path().join("cache");
    let out = work.path().join("b.tar.zst");
    let t = Instant::now();
    let res = run(bundle_cmd(&list, &out, &cache, &addr).args([
        "--timeout-headers",
        "1",
        "--timeout-idle",
        "1",
    ]));
    let secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&res.stderr).to_string();
    eprintln!("{fault:?}:\n{stderr}");
    assert_eq!(res.status.code(), Some(1), "{stderr}");
    assert!(!out.exists(), "no bundle written");
    (stderr, secs, cache, work, addr)
}

/// No blob of `img` in the cache, and no temp file left.
fn cache_holds_nothing_of(cache: &Path, img: &FixtureImage) {
    let store = Store::open(cache);
    for d in blobs_of(img) {
        assert!(!store.has_blob(&d), "blob {d} is not in the cache");
    }
    let tmp = files_under(&store.path(PathSpec::Temp));
    assert!(tmp.is_empty(), "no partial blob left: {tmp:?}");
}

#[test]
fn a_source_that_never_answers_is_timed_out_and_named() {
    let (stderr, secs, cache, _work, addr) = bundle_through(Fault::StallHeaders);
    eprintln!("stalled headers: failed in {secs:.1}s");
    assert!(secs < 20.0, "bounded: {secs:.1}s\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "no data from {addr} for 1 s while waiting for the answer to GET /v2/"
        )) && stderr.contains("/blobs/sha256:"),
        "{stderr}"
    );
    cache_holds_nothing_of(&cache, small_image());
}

#[test]
fn a_body_that_stalls_midway_is_timed_out_and_named() {
    let (stderr, secs, cache, _work, addr) = bundle_through(Fault::StallBody);
    eprintln!("stalled body: failed in {secs:.1}s");
    assert!(secs < 20.0, "bounded: {secs:.1}s\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "no data from {addr} for 1 s while reading blob sha256:"
        )),
        "{stderr}"
    );
    cache_holds_nothing_of(&cache, small_image());
}

/// Pushes the one-image bundle through a proxy with `fault` into an empty registry; returns (stderr, seconds, target root, proxy addr).
fn push_through(fault: Fault) -> (String, f64, tempfile::TempDir, String) {
    let bundle = one_image_bundle();
    let (root, reg) = empty_registry();
    let (_p, addr, _rt) = proxy(&reg.addr, fault);
    let t = Instant::now();
    let res = run(ferry()
        .env("FERRY_TEST_NO_RETRY_DELAY", "1")
        .args(["unbundle", "push"])
        .arg(bundle)
        .args([
            "--dest",
            &addr,
            "--dest-tls-verify=false",
            "--timeout-headers",
            "2",
            "--timeout-idle",
            "2",
        ]));
    let secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&res.stderr).to_string();
    eprintln!("{fault:?}:\n{stderr}");
    assert_eq!(res.status.code(), Some(1), "{stderr}");
    (stderr, secs, root, addr)
}

#[test]
fn push_reports_the_first_answer_and_cancels_its_sessions() {
    let (stderr, secs, root, addr) = push_through(Fault::DiskFull);
    eprintln!("disk full: failed in {secs:.1}s");
    assert!(secs < 30.0, "bounded: {secs:.1}s\n{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("500") && stderr.contains("disk full"),
        "the registry's first answer: {stderr}"
    );
    assert!(
        !stderr.contains("BLOB_UPLOAD_UNKNOWN") && !stderr.contains("BLOB_UPLOAD_INVALID"),
        "not what a closed session says later: {stderr}"
    );
    let (uploads, tags) = uploads_and_tags(root.path());
    assert!(
        uploads.is_empty(),
        "sessions cancelled: {uploads:?}\n{stderr}"
    );
    assert!(tags.is_empty(), "nothing tagged: {tags:?}");
}

#[test]
fn push_into_forgotten_sessions_fails_cleanly() {
    let (stderr, secs, root, addr) = push_through(Fault::ForgetSessions);
    eprintln!("forgotten sessions: failed in {secs:.1}s");
    assert!(secs < 30.0, "bounded: {secs:.1}s\n{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("BLOB_UPLOAD_UNKNOWN"),
        "{stderr}"
    );
    let (uploads, tags) = uploads_and_tags(root.path());
    assert!(uploads.is_empty(), "sessions cancelled: {uploads:?}");
    assert!(tags.is_empty(), "nothing tagged: {tags:?}");
}

#[test]
fn plain_http_under_tls_fails_at_once_with_the_flag() {
    let (_d, reg) = small_registry();
    let img = small_image();
    let work = tempfile::tempdir().unwrap();
    let check = |args: Vec<String>, flag: &str| {
        let t = Instant::now();
        let res = run(ferry().args(&args));
        let secs = t.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&res.stderr).to_string();
        eprintln!("plain HTTP ({flag}): failed in {secs:.2}s");
        assert_eq!(res.status.code(), Some(1), "{stderr}");
        assert!(secs < 3.0, "at once: {secs:.1}s\n{stderr}");
        let hint: Vec<&str> = stderr.lines().filter(|l| l.contains(flag)).collect();
        assert_eq!(hint.len(), 1, "one hint line: {stderr}");
        assert!(hint[0].contains(&reg.addr), "names the host: {stderr}");
        assert!(!stderr.contains("retrying"), "not retried: {stderr}");
    };
    check(
        vec![
            "copy".into(),
            format!("docker://{}/{}:{}", reg.addr, img.repository, img.tag),
            format!("dir:{}", work.path().join("d").display()),
        ],
        "--src-tls-verify=false",
    );
    let list = work.path().join("list.txt");
    std::fs::write(&list, format!("{}:{}\n", img.repository, img.tag)).unwrap();
    check(
        vec![
            "bundle".into(),
            "-f".into(),
            list.display().to_string(),
            "-o".into(),
            work.path().join("b.tar.zst").display().to_string(),
            "--cache".into(),
            work.path().join("cache").display().to_string(),
            "--source".into(),
            reg.addr.clone(),
        ],
        "--src-tls-verify=false",
    );
    check(
        vec![
            "unbundle".into(),
            "push".into(),
            one_image_bundle().display().to_string(),
            "--dest".into(),
            reg.addr.clone(),
        ],
        "--dest-tls-verify=false",
    );
}

#[test]
fn dead_registries_are_reported_once_each_and_fast() {
    let work = tempfile::tempdir().unwrap();
    let closed = format!("127.0.0.1:{}", free_port());
    let list = work.path().join("list.txt");
    let mut text = String::new();
    for i in 0..150 {
        text.push_str(&format!("{closed}/app/svc{i}:v1\n"));
        text.push_str(&format!("no-such-host.invalid/app/svc{i}:v1\n"));
    }
    std::fs::write(&list, text).unwrap();
    let t = Instant::now();
    let res = run(&mut bundle_cmd(
        &list,
        &work.path().join("b.tar.zst"),
        &work.path().join("cache"),
        "docker.io",
    ));
    let secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&res.stderr).to_string();
    eprintln!("300 images on 2 dead registries: failed in {secs:.2}s");
    assert_eq!(res.status.code(), Some(1), "{stderr}");
    assert!(secs < 5.0, "{secs:.1}s\n{stderr}");
    let dead: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("cannot be reached"))
        .collect();
    assert_eq!(dead.len(), 2, "one line per dead registry: {stderr}");
    assert!(dead.iter().any(|l| l.contains(&closed)), "{stderr}");
    assert!(
        dead.iter().any(|l| l.contains("no-such-host.invalid")),
        "{stderr}"
    );
    assert!(stderr.lines().count() <= 3, "and a summary only: {stderr}");

    // copy from a dead source, and push to a dead target: one line each, at once.
    for args in [
        vec![
            "copy".to_string(),
            "--src-tls-verify=false".into(),
            format!("docker://{closed}/app/x:1"),
            format!("dir:{}", work.path().join("d").display()),
        ],
        vec![
            "unbundle".to_string(),
            "push".into(),
            one_image_bundle().display().to_string(),
            "--dest".into(),
            closed.clone(),
            "--dest-tls-verify=false".into(),
        ],
    ] {
        let t = Instant::now();
        let res = run(ferry().env("FERRY_TEST_NO_RETRY_DELAY", "1").args(&args));
        let secs = t.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&res.stderr).to_string();
        assert_eq!(res.status.code(), Some(1), "{stderr}");
        assert!(secs < 5.0, "{secs:.1}s\n{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&closed) && stderr.contains("cannot be reached"),
            "{stderr}"
        );
    }
}

#[test]
fn jobs_zero_is_a_usage_error() {
    let bundle = one_image_bundle().display().to_string();
    for args in [
        vec!["bundle", "-f", "x.txt", "-o", "b.tar.zst", "--jobs", "0"],
        vec!["copy", "--jobs", "0", "dir:a", "dir:b"],
        vec!["unbundle", "push", &bundle, "--dest", "x", "--jobs", "0"],
        vec!["copy", "--max-per-host", "0", "dir:a", "dir:b"],
    ] {
        let res = run(ferry().args(&args));
        assert_eq!(
            res.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&res.stderr)
        );
    }
}

#[test]
fn requests_to_one_host_reach_jobs_and_no_more_than_max_per_host() {
    let (_d, reg) = small_registry();
    let (_, corpus) = small();
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    let text: String = corpus
        .images
        .iter()
        .map(|i| format!("{}:{}\n", i.repository, i.tag))
        .collect();
    std::fs::write(&list, text).unwrap();
    assert!(corpus.images.len() >= 16);
    let max = |extra: &[&str], cache: &str| {
        let (p, addr, _rt) = proxy(&reg.addr, Fault::SlowCount);
        let res = run(bundle_cmd(
            &list,
            &work.path().join("b.tar.zst"),
            &work.path().join(cache),
            &addr,
        )
        .args(extra));
        assert_eq!(res.status.code(), Some(1), "blob GETs fail by design");
        p.max_in_flight.load(Ordering::SeqCst)
    };
    let at16 = max(&["--jobs", "16"], "c1");
    eprintln!("--jobs 16: {at16} requests in flight at most");
    assert!(at16 >= 16, "--jobs 16 reached {at16} in flight");
    let capped = max(&["--jobs", "16", "--max-per-host", "4"], "c2");
    eprintln!("--jobs 16 --max-per-host 4: {capped} in flight at most");
    assert!((2..=4).contains(&capped), "{capped} in flight");
}

#[test]
fn a_registry_that_refuses_mounts_still_takes_the_copy() {
    // A new repository opens each upload with a mount from itself, and a second repository
    // mounts from the first; a registry that refuses every mount gets plain uploads instead.
    let (_, corpus) = small();
    let img = corpus
        .images
        .iter()
        .find(|i| !i.platforms.is_empty())
        .expect("a multi-platform image");
    let (_s, src) = small_registry();
    let (_d, reg) = empty_registry();
    let (p, addr, _rt) = proxy(&reg.addr, Fault::RefuseMounts);
    let cache = tempfile::tempdir().unwrap();
    let from = format!("docker://{}/{}:{}", src.addr, img.repository, img.tag);
    // Each copy asks for mounts (from the new repository itself, then from where the first
    // copy put the blobs), every one refused, and still completes.
    let mut refused = 0;
    for repo in ["one/x", "two/x"] {
        run_ok(ferry().env("XDG_CACHE_HOME", cache.path()).args([
            "copy",
            "-q",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &from,
            &format!("docker://{addr}/{repo}:{}", img.tag),
        ]));
        assert_eq!(
            inspect_digest(&format!("docker://{}/{repo}:{}", reg.addr, img.tag)),
            img.digest.to_string()
        );
        let now = p.refused.load(Ordering::SeqCst);
        assert!(now > refused, "{repo}: mounts were asked for");
        refused = now;
    }
    let (blobs, manifests, text) = reg.gc_dry_run();
    assert_eq!((blobs, manifests), (0, 0), "{text}");
}
