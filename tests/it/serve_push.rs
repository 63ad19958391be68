//! `ferry serve --allow-push / --allow-delete` and referrers: real clients push
//! into it, the stock `docker-registry` then serves what it wrote, and every
//! refused request leaves the root as it was.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry::store::Store;

use crate::harness::*;
use crate::serve_secure::read_response;

/// One HTTP/1.0 request with a body; returns status, response head and body.
fn req(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no response head"));
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, buf[split + 4..].to_vec())
}

/// The first error code of a spec error body.
fn error_code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not an error body: {}", String::from_utf8_lossy(body)));
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A new empty registry root.
fn empty_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    Store::create(dir.path()).unwrap();
    dir
}

/// Uploads `bytes` into `repo` monolithically (POST `?digest=`); returns the digest.
fn push_blob(addr: &str, repo: &str, bytes: &[u8]) -> String {
    let d = sha256(bytes);
    let (status, head, body) = req(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        &[("Content-Type", "application/octet-stream")],
        bytes,
    );
    assert_eq!(status, 201, "{head}\n{}", String::from_utf8_lossy(&body));
    assert_eq!(header(&head, "docker-content-digest"), Some(d.as_str()));
    d
}

/// An OCI image manifest over a config and one layer, optionally a referrer of `subject`.
fn oci_manifest(
    config: &[u8],
    layer: &[u8],
    subject: Option<(&str, usize)>,
    artifact_type: Option<&str>,
) -> Vec<u8> {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer), "size": layer.len()}],
    });
    if let Some((d, size)) = subject {
        m["subject"] = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": size});
    }
    if let Some(t) = artifact_type {
        m["artifactType"] = serde_json::json!(t);
        m["annotations"] = serde_json::json!({"org.example.kind": t});
    }
    serde_json::to_vec(&m).unwrap()
}

/// PUTs a manifest; returns the response.
fn put_manifest(addr: &str, repo: &str, reference: &str, bytes: &[u8]) -> (u16, String, Vec<u8>) {
    req(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        bytes,
    )
}

const CONFIG: &[u8] =
    br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;

#[test]
fn skopeo_pushes_every_kind_and_the_stock_registry_serves_it() {
    let (src_dir, corpus) = tiny();
    let src = FerryServe::start(src_dir.path());
    let dst = empty_root();
    let server = FerryServe::start_with(&["serve", dst.path().to_str().unwrap(), "--allow-push"]);
    assert!(corpus.images.iter().any(|i| !i.platforms.is_empty()));
    assert!(corpus.images.iter().any(|i| i.media_type.contains("oci")));
    assert!(
        corpus
            .images
            .iter()
            .any(|i| i.media_type.contains("docker"))
    );
    for img in &corpus.images {
        let r = format!("{}:{}", img.repository, img.tag);
        skopeo_ok(&[
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{}/{r}", src.addr),
            &format!("docker://{}/{r}", server.addr),
        ]);
        assert_eq!(
            inspect_digest(&format!("docker://{}/{r}", server.addr)),
            img.digest.to_string(),
            "{r} through ferry serve"
        );
    }
    server.stop();
    let reg = Registry::start(dst.path());
    for img in &corpus.images {
        let r = format!("docker://{}/{}:{}", reg.addr, img.repository, img.tag);
        assert_eq!(inspect_digest(&r), img.digest.to_string(), "{r}");
        for (_, child) in &img.platforms {
            let c = format!("docker://{}/{}@{child}", reg.addr, img.repository);
            assert_eq!(inspect_digest(&c), child.to_string(), "{c}");
        }
    }
    let (blobs, manifests, text) = reg.gc_dry_run();
    assert_eq!((blobs, manifests), (0, 0), "{text}");
}

#[test]
fn podman_pushes_into_serve() {
    require("podman");
    let (src_dir, corpus) = tiny();
    let src = FerryServe::start(src_dir.path());
    let dst = empty_root();
    let server = FerryServe::start_with(&["serve", dst.path().to_str().unwrap(), "--allow-push"]);
    let img = corpus
        .images
        .iter()
        .find(|i| i.platforms.is_empty())
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("fpp")
        .tempdir_in("/tmp")
        .unwrap();
    let d = dir.path();
    let podman = |args: &[&str]| {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--events-backend",
                "file",
                "--cgroup-manager",
                "cgroupfs",
            ])
            .args(args);
        c
    };
    let from = format!("{}/{}:{}", src.addr, img.repository, img.tag);
    let to = format!("{}/pushed/by-podman:1", server.addr);
    run_ok(&mut podman(&["pull", "-q", "--tls-verify=false", &from]));
    let digestfile = d.join("digest");
    run_ok(&mut podman(&[
        "push",
        "-q",
        "--tls-verify=false",
        "--digestfile",
        digestfile.to_str().unwrap(),
        &from,
        &format!("docker://{to}"),
    ]));
    let pushed = std::fs::read_to_string(&digestfile).unwrap();
    assert_eq!(inspect_digest(&format!("docker://{to}")), pushed.trim());
    server.stop();
    let reg = Registry::start(dst.path());
    assert_eq!(
        inspect_digest(&format!("docker://{}/pushed/by-podman:1", reg.addr)),
        pushed.trim()
    );
    let (blobs, manifests, text) = reg.gc_dry_run();
    assert_eq!((blobs, manifests), (0, 0), "{text}");
}

#[test]
fn chunked_uploads_ranges_status_and_mount() {
    let dst = empty_root();
    let server = FerryServe::start_with(&["serve", dst.path().to_str().unwrap(), "--allow-push"]);
    let a = server.addr.as_str();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let digest = sha256(&data);

    let (status, head, _) = req(a, "POST", "/v2/up/one/blobs/uploads/", &[], b"");
    assert_eq!(status, 202, "{head}");
    assert_eq!(header(&head, "range"), Some("0-0"));
    let uuid = header(&head, "docker-upload-uuid").unwrap().to_string();
    let loc = header(&head, "location").unwrap().to_string();
    assert!(loc.ends_with(&uuid), "{loc}");

    let (status, head, _) = req(
        a,
        "PATCH",
        &loc,
        &[("Content-Range", "0-39999")],
        &data[..40_000],
    );
    assert_eq!(status, 202, "{head}");
    assert_eq!(header(&head, "range"), Some("0-39999"));

    // Out of order and overlapping chunks: 416 with where the upload stands; nothing taken.
    for range in ["50000-59999", "30000-39999"] {
        let (s, e) = range.split_once('-').unwrap();
        let (s, e): (usize, usize) = (s.parse().unwrap(), e.parse().unwrap());
        let (status, head, body) = req(a, "PATCH", &loc, &[("Content-Range", range)], &data[s..=e]);
        assert_eq!(status, 416, "{range}: {head}");
        assert_eq!(header(&head, "range"), Some("0-39999"), "{range}");
        assert!(!body.is_empty());
    }
    let (status, head, _) = req(a, "GET", &loc, &[], b"");
    assert_eq!(status, 204, "{head}");
    assert_eq!(header(&head, "range"), Some("0-39999"));
    assert_eq!(header(&head, "docker-upload-uuid"), Some(uuid.as_str()));

    // The blob is not visible before the final PUT.
    let (status, _, _) = http(a, "HEAD", &format!("/v2/up/one/blobs/{digest}"), &[]).unwrap();
    assert_eq!(status, 404);
    // A malformed Content-Range is refused and the upload goes on (its slot is not left busy).
    let (status, head, _) = req(a, "PATCH", &loc, &[("Content-Range", "x")], b"zz");
    assert!(
        (400..500).contains(&status) && status != 416,
        "{status} {head}"
    );
    // A wrong digest on the final PUT: DIGEST_INVALID, the upload gone, nothing published.
    let wrong = sha256(b"something else");
    let (status, _, _) = req(
        a,
        "PATCH",
        &loc,
        &[("Content-Range", "40000-89999")],
        &data[40_000..90_000],
    );
    assert_eq!(status, 202);
    let (status, _, body) = req(
        a,
        "PUT",
        &format!("{loc}?digest={wrong}"),
        &[("Content-Range", "90000-99999")],
        &data[90_000..],
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "DIGEST_INVALID")
    );
    let (status, _, body) = req(a, "GET", &loc, &[], b"");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "BLOB_UPLOAD_UNKNOWN")
    );
    assert!(
        !dst.path()
            .join("docker/registry/v2/blobs/sha256")
            .join(&wrong[7..9])
            .exists()
    );

    // The same in order with the right digest: 201, then served whole.
    let (_, head, _) = req(a, "POST", "/v2/up/one/blobs/uploads/", &[], b"");
    let loc = header(&head, "location").unwrap().to_string();
    let (status, _, _) = req(
        a,
        "PATCH",
        &loc,
        &[("Content-Range", "0-59999")],
        &data[..60_000],
    );
    assert_eq!(status, 202);
    let (status, head, _) = req(
        a,
        "PUT",
        &format!("{loc}?digest={digest}"),
        &[("Content-Range", "60000-99999")],
        &data[60_000..],
    );
    assert_eq!(status, 201, "{head}");
    assert_eq!(
        header(&head, "location"),
        Some(format!("/v2/up/one/blobs/{digest}").as_str())
    );
    let (status, _, body) = http(a, "GET", &format!("/v2/up/one/blobs/{digest}"), &[]).unwrap();
    assert_eq!((status, body == data), (200, true));

    // Cancel: 204, then unknown.
    let (_, head, _) = req(a, "POST", "/v2/up/one/blobs/uploads/", &[], b"");
    let loc = header(&head, "location").unwrap().to_string();
    assert_eq!(req(a, "DELETE", &loc, &[], b"").0, 204);
    let (status, _, body) = req(a, "PATCH", &loc, &[], b"x");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "BLOB_UPLOAD_UNKNOWN")
    );

    // Cross-repository mount: 201 when the source repository links the blob, else a new upload.
    let (status, head, _) = req(
        a,
        "POST",
        &format!("/v2/up/two/blobs/uploads/?mount={digest}&from=up/one"),
        &[],
        b"",
    );
    assert_eq!(status, 201, "{head}");
    assert_eq!(
        header(&head, "location"),
        Some(format!("/v2/up/two/blobs/{digest}").as_str())
    );
    assert_eq!(
        http(a, "HEAD", &format!("/v2/up/two/blobs/{digest}"), &[])
            .unwrap()
            .0,
        200
    );
    let (status, head, _) = req(
        a,
        "POST",
        &format!("/v2/up/three/blobs/uploads/?mount={digest}&from=up/nowhere"),
        &[],
        b"",
    );
    assert_eq!(status, 202, "{head}");
    assert!(header(&head, "docker-upload-uuid").is_some());
    // Invalid names and digests are refused before any path is built.
    let (status, _, body) = req(a, "POST", "/v2/UP/../x/blobs/uploads/", &[], b"");
    assert_eq!((status, error_code(&body).as_str()), (400, "NAME_INVALID"));
    let (status, _, body) = req(
        a,
        "POST",
        "/v2/up/one/blobs/uploads/?digest=sha256:../../x",
        &[],
        b"x",
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "DIGEST_INVALID")
    );
}

#[test]
fn manifest_put_checks_references_and_writes_nothing_when_refused() {
    let dst = empty_root();
    let server = FerryServe::start_with(&["serve", dst.path().to_str().unwrap(), "--allow-push"]);
    let a = server.addr.as_str();
    let layer = b"layer bytes".to_vec();
    push_blob(a, "m/app", CONFIG);
    let manifest = oci_manifest(CONFIG, &layer, None, None);
    let md = sha256(&manifest);

    let before = tree_hash(dst.path(), "docker");
    // The layer is missing: MANIFEST_BLOB_UNKNOWN, and not one file more.
    let (status, _, body) = put_manifest(a, "m/app", "v1", &manifest);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "MANIFEST_BLOB_UNKNOWN")
    );
    // A blob in another repository does not count.
    push_blob(a, "m/other", &layer);
    let before2 = tree_hash(dst.path(), "docker");
    let (status, _, body) = put_manifest(a, "m/app", "v1", &manifest);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "MANIFEST_BLOB_UNKNOWN")
    );
    assert_eq!(before2, tree_hash(dst.path(), "docker"));
    assert_ne!(before, before2);
    push_blob(a, "m/app", &layer);
    let before = tree_hash(dst.path(), "docker");
    // A digest reference that is not the body's, a media type that is not the body's, a body too large.
    let wrong = sha256(b"x");
    let (status, _, body) = put_manifest(a, "m/app", &wrong, &manifest);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "DIGEST_INVALID")
    );
    let (status, _, body) = req(
        a,
        "PUT",
        "/v2/m/app/manifests/v1",
        &[(
            "Content-Type",
            "application/vnd.docker.distribution.manifest.v2+json",
        )],
        &manifest,
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "MANIFEST_INVALID")
    );
    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    let (status, _, body) = put_manifest(a, "m/app", "v1", &big);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (413, "MANIFEST_INVALID")
    );
    let (status, _, body) = put_manifest(a, "m/app", "v1", b"{not json");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "MANIFEST_INVALID")
    );
    assert_eq!(before, tree_hash(dst.path(), "docker"));

    // Now by tag and by digest: 201 with Location and the digest.
    let (status, head, _) = put_manifest(a, "m/app", "v1", &manifest);
    assert_eq!(status, 201, "{head}");
    assert_eq!(header(&head, "docker-content-digest"), Some(md.as_str()));
    assert_eq!(
        header(&head, "location"),
        Some(format!("/v2/m/app/manifests/{md}").as_str())
    );
    assert!(header(&head, "oci-subject").is_none());
    let (status, _, _) = put_manifest(a, "m/app", &md, &manifest);
    assert_eq!(status, 201);
    let (status, _, body) = http(a, "GET", "/v2/m/app/manifests/v1", &[]).unwrap();
    assert_eq!((status, body), (200, manifest.clone()));

    // An index whose child is not in the repository: refused; with it: accepted.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .unwrap();
    let put_index = |repo: &str| {
        req(
            a,
            "PUT",
            &format!("/v2/{repo}/manifests/multi"),
            &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
            &index,
        )
    };
    let (status, _, body) = put_index("m/other");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "MANIFEST_BLOB_UNKNOWN")
    );
    assert_eq!(put_index("m/app").0, 201);
    server.stop();
    let reg = Registry::start(dst.path());
    assert_eq!(
        inspect_digest(&format!("docker://{}/m/app:multi", reg.addr)),
        sha256(&index)
    );
    assert_eq!(
        inspect_digest(&format!("docker://{}/m/app:v1", reg.addr)),
        md
    );
}

#[test]
fn deletes_of_manifests_tags_and_blobs() {
    let dst = empty_root();
    let root = dst.path().to_str().unwrap();
    let server = FerryServe::start_with(&["serve", root, "--allow-push", "--allow-delete"]);
    let a = server.addr.as_str();
    let layer = b"delete me".to_vec();
    push_blob(a, "d/app", CONFIG);
    let ld = push_blob(a, "d/app", &layer);
    let manifest = oci_manifest(CONFIG, &layer, None, None);
    let md = sha256(&manifest);
    for t in ["a", "b", "c"] {
        assert_eq!(put_manifest(a, "d/app", t, &manifest).0, 201);
    }
    let tags = |a: &str| {
        let (_, _, body) = http(a, "GET", "/v2/d/app/tags/list", &[]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["tags"].clone()
    };
    // By tag (OCI 1.1): only the tag goes.
    assert_eq!(req(a, "DELETE", "/v2/d/app/manifests/a", &[], b"").0, 202);
    assert_eq!(tags(a), serde_json::json!(["b", "c"]));
    assert_eq!(
        http(a, "GET", &format!("/v2/d/app/manifests/{md}"), &[])
            .unwrap()
            .0,
        200
    );
    let (status, _, body) = req(a, "DELETE", "/v2/d/app/manifests/a", &[], b"");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    // By digest: the manifest and every tag pointing at it.
    assert_eq!(
        req(a, "DELETE", &format!("/v2/d/app/manifests/{md}"), &[], b"").0,
        202
    );
    assert_eq!(tags(a), serde_json::json!([]));
    let (status, _, body) = http(a, "GET", &format!("/v2/d/app/manifests/{md}"), &[]).unwrap();
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    // A blob: the repository's link goes.
    assert_eq!(
        req(a, "DELETE", &format!("/v2/d/app/blobs/{ld}"), &[], b"").0,
        202
    );
    let (status, _, body) = http(a, "GET", &format!("/v2/d/app/blobs/{ld}"), &[]).unwrap();
    assert_eq!((status, error_code(&body).as_str()), (404, "BLOB_UNKNOWN"));
    server.stop();

    // Without --allow-delete: 405 UNSUPPORTED and nothing written.
    let server = FerryServe::start_with(&["serve", root, "--allow-push"]);
    let a = server.addr.as_str();
    let cd = sha256(CONFIG);
    let before = tree_hash(dst.path(), "docker");
    for path in [
        format!("/v2/d/app/blobs/{cd}"),
        format!("/v2/d/app/manifests/{md}"),
    ] {
        let (status, _, body) = req(a, "DELETE", &path, &[], b"");
        assert_eq!(
            (status, error_code(&body).as_str()),
            (405, "UNSUPPORTED"),
            "{path}"
        );
    }
    assert_eq!(before, tree_hash(dst.path(), "docker"));
}

#[test]
fn read_only_by_default_writes_nothing() {
    let (dir, corpus) = tiny();
    let img = &corpus.images[0];
    let server = FerryServe::start(dir.path());
    let a = server.addr.as_str();
    let before = tree_hash(dir.path(), ".");
    let repo = &img.repository;
    let d = img.digest.to_string();
    let attempts: Vec<(&str, String, Vec<u8>)> = vec![
        ("POST", format!("/v2/{repo}/blobs/uploads/"), Vec::new()),
        (
            "POST",
            format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(b"x")),
            b"x".to_vec(),
        ),
        (
            "PATCH",
            format!("/v2/{repo}/blobs/uploads/abc"),
            b"x".to_vec(),
        ),
        (
            "PUT",
            format!("/v2/{repo}/blobs/uploads/abc?digest={d}"),
            Vec::new(),
        ),
        ("PUT", format!("/v2/{repo}/manifests/new"), CONFIG.to_vec()),
        ("DELETE", format!("/v2/{repo}/manifests/{d}"), Vec::new()),
        (
            "DELETE",
            format!("/v2/{repo}/manifests/{}", img.tag),
            Vec::new(),
        ),
        ("DELETE", format!("/v2/{repo}/blobs/{d}"), Vec::new()),
    ];
    for (method, path, body) in &attempts {
        let (status, _, resp) = req(a, method, path, &[], body);
        assert_eq!(
            (status, error_code(&resp).as_str()),
            (405, "UNSUPPORTED"),
            "{method} {path}"
        );
    }
    assert_eq!(before, tree_hash(dir.path(), "."));
    assert!(
        !dir.path()
            .join(".ferry-tmp")
            .read_dir()
            .unwrap()
            .any(|_| true)
    );
    // --allow-push on bundles read in place is a usage error.
    let out = run(ferry()
        .args(["unbundle", "serve", "nothing.tar.zst", "--allow-push"])
        .current_dir(dir.path()));
    assert_eq!(
        out.status.code(),
        Some(1),
        "a missing bundle is reported first"
    );
    let fake = dir.path().join("b.tar.zst");
    std::fs::write(&fake, b"x").unwrap();
    let out = run(ferry().args(["unbundle", "serve", fake.to_str().unwrap(), "--allow-push"]));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--dir"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

fn referrers(a: &str, repo: &str, subject: &str, query: &str) -> (String, Vec<serde_json::Value>) {
    let (status, head, body) = http(
        a,
        "GET",
        &format!("/v2/{repo}/referrers/{subject}{query}"),
        &[],
    )
    .unwrap();
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["mediaType"], "application/vnd.oci.image.index.v1+json");
    (head, v["manifests"].as_array().unwrap().clone())
}

#[test]
fn referrers_on_a_root_and_on_a_bundle_in_place() {
    let dst = empty_root();
    let root = dst.path().to_str().unwrap();
    let server = FerryServe::start_with(&["serve", root, "--allow-push", "--allow-delete"]);
    let a = server.addr.as_str();
    let layer = b"app layer".to_vec();
    push_blob(a, "r/app", CONFIG);
    push_blob(a, "r/app", &layer);
    let image = oci_manifest(CONFIG, &layer, None, None);
    let id = sha256(&image);
    assert_eq!(put_manifest(a, "r/app", "v1", &image).0, 201);
    // Nothing refers to it yet (and a listing is now cached).
    assert!(referrers(a, "r/app", &id, "").1.is_empty());
    let mut pushed = Vec::new();
    for (kind, body) in [
        ("application/vnd.example.sbom", b"sbom".as_slice()),
        ("application/vnd.example.sig", b"sig".as_slice()),
    ] {
        push_blob(a, "r/app", body);
        let m = oci_manifest(CONFIG, body, Some((&id, image.len())), Some(kind));
        let (status, head, _) = put_manifest(a, "r/app", &sha256(&m), &m);
        assert_eq!(status, 201);
        assert_eq!(header(&head, "oci-subject"), Some(id.as_str()));
        pushed.push((kind, sha256(&m), m.len()));
    }
    let (head, all) = referrers(a, "r/app", &id, "");
    assert!(header(&head, "oci-filters-applied").is_none());
    assert_eq!(all.len(), 2, "{all:?}");
    for (kind, d, size) in &pushed {
        let e = all.iter().find(|e| e["digest"] == *d).unwrap();
        assert_eq!(e["artifactType"], *kind);
        assert_eq!(e["size"], *size);
        assert_eq!(e["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(e["annotations"]["org.example.kind"], *kind);
    }
    let (head, sigs) = referrers(a, "r/app", &id, "?artifactType=application/vnd.example.sig");
    assert_eq!(header(&head, "oci-filters-applied"), Some("artifactType"));
    assert_eq!(sigs.len(), 1);
    assert_eq!(sigs[0]["digest"], pushed[1].1);
    // An unknown subject: 200 and an empty list; a bad digest: DIGEST_INVALID.
    assert!(referrers(a, "r/app", &sha256(b"nothing"), "").1.is_empty());
    let (status, _, body) = http(a, "GET", "/v2/r/app/referrers/sha256:zz", &[]).unwrap();
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "DIGEST_INVALID")
    );

    // A fresh server finds them on disk (no cache); a delete drops one from the listing.
    server.stop();
    let server = FerryServe::start_with(&["serve", root, "--allow-push", "--allow-delete"]);
    let a = server.addr.as_str();
    assert_eq!(referrers(a, "r/app", &id, "").1.len(), 2);
    let (status, _, _) = req(
        a,
        "DELETE",
        &format!("/v2/r/app/manifests/{}", pushed[0].1),
        &[],
        b"",
    );
    assert_eq!(status, 202);
    let left = referrers(a, "r/app", &id, "").1;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["digest"], pushed[1].1);
    // Another writer of the root (a second server here; `unbundle link` alike): the first
    // server's cached listing sees the new referrer at once.
    let other = FerryServe::start_with(&["serve", root, "--allow-push"]);
    push_blob(&other.addr, "r/app", b"attestation");
    let m = oci_manifest(
        CONFIG,
        b"attestation",
        Some((&id, image.len())),
        Some("application/vnd.example.att"),
    );
    assert_eq!(put_manifest(&other.addr, "r/app", &sha256(&m), &m).0, 201);
    other.stop();
    let seen = referrers(a, "r/app", &id, "").1;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().any(|e| e["digest"] == sha256(&m)));
    let (status, _, _) = req(
        a,
        "DELETE",
        &format!("/v2/r/app/manifests/{}", sha256(&m)),
        &[],
        b"",
    );
    assert_eq!(status, 202);
    server.stop();

    // Bundled next to the image (pinned by digest), then served in place.
    let src = FerryServe::start(dst.path());
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, format!("r/app:v1\nr/app@{}\n", pushed[1].1)).unwrap();
    let bundle = work.path().join("b.tar.zst");
    run_ok(&mut bundle_cmd(
        &list,
        &bundle,
        &work.path().join("cache"),
        &src.addr,
    ));
    let served = FerryServe::start_with(&["unbundle", "serve", bundle.to_str().unwrap()]);
    let (_, found) = referrers(&served.addr, "r/app", &id, "");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["digest"], pushed[1].1);
    assert_eq!(found[0]["artifactType"], "application/vnd.example.sig");
    let (_, none) = referrers(
        &served.addr,
        "r/app",
        &id,
        "?artifactType=application/vnd.example.sbom",
    );
    assert!(none.is_empty());
}

/// The temp files of a root's temp area.
fn temps(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join(".ferry-tmp"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn abandoned_uploads_are_cleaned_and_uploads_are_capped() {
    let dst = empty_root();
    // A temp file of a dead ferry process: cleared when the server starts.
    let mut dead = 999_999u32;
    while Path::new(&format!("/proc/{dead}")).exists() {
        dead += 1;
    }
    let stale = dst
        .path()
        .join(format!(".ferry-tmp/blob-{dead}-0-00000000"));
    std::fs::write(&stale, b"half a blob").unwrap();
    let server = FerryServe::start_with_env(
        &["serve", dst.path().to_str().unwrap(), "--allow-push"],
        &[("FERRY_TEST_UPLOAD_IDLE_MS", "1500")],
    );
    let a = server.addr.as_str();
    assert!(
        !stale.exists(),
        "stale temp file left: {:?}",
        temps(dst.path())
    );
    let (_, head, _) = req(a, "POST", "/v2/ab/x/blobs/uploads/", &[], b"");
    let loc = header(&head, "location").unwrap().to_string();
    assert_eq!(req(a, "PATCH", &loc, &[], b"some bytes").0, 202);
    assert_eq!(temps(dst.path()).len(), 1, "{:?}", temps(dst.path()));
    // The cap: MAX_UPLOADS (64) sessions in all, the next one is 429 TOOMANYREQUESTS.
    for _ in 1..64 {
        assert_eq!(req(a, "POST", "/v2/ab/x/blobs/uploads/", &[], b"").0, 202);
    }
    let (status, _, body) = req(a, "POST", "/v2/ab/x/blobs/uploads/", &[], b"");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (429, "TOOMANYREQUESTS")
    );
    // Left alone past the idle time: swept, temp data gone, the id unknown, room again.
    std::thread::sleep(Duration::from_millis(3000));
    let (status, _, body) = req(a, "GET", &loc, &[], b"");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "BLOB_UPLOAD_UNKNOWN")
    );
    assert!(temps(dst.path()).is_empty(), "{:?}", temps(dst.path()));
    assert_eq!(req(a, "POST", "/v2/ab/x/blobs/uploads/", &[], b"").0, 202);
    assert!(
        !dst.path()
            .join("docker/registry/v2/repositories/ab")
            .exists()
    );
}

#[test]
fn unbundle_serve_dir_takes_pushes_and_leaves_the_bundle_alone() {
    let (src_dir, corpus) = tiny();
    let src = FerryServe::start(src_dir.path());
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, corpus.images_list()).unwrap();
    let bundle = work.path().join("b.tar.zst");
    run_ok(&mut bundle_cmd(
        &list,
        &bundle,
        &work.path().join("cache"),
        &src.addr,
    ));
    let bundle_sum = sha256(&std::fs::read(&bundle).unwrap());
    let dir = work.path().join("site");
    let server = FerryServe::start_with(&[
        "unbundle",
        "serve",
        bundle.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
        "--allow-push",
    ]);
    let a = server.addr.as_str();
    let img = &corpus.images[0];
    assert_eq!(
        inspect_digest(&format!("docker://{a}/{}:{}", img.repository, img.tag)),
        img.digest.to_string()
    );
    let layer = b"pushed at the site".to_vec();
    push_blob(a, "site/patch", CONFIG);
    push_blob(a, "site/patch", &layer);
    let m = oci_manifest(CONFIG, &layer, None, None);
    assert_eq!(put_manifest(a, "site/patch", "1", &m).0, 201);
    server.stop();
    assert_eq!(sha256(&std::fs::read(&bundle).unwrap()), bundle_sum);
    let reg = Registry::start(&dir);
    assert_eq!(
        inspect_digest(&format!("docker://{}/site/patch:1", reg.addr)),
        sha256(&m)
    );
    let (blobs, manifests, text) = reg.gc_dry_run();
    assert_eq!((blobs, manifests), (0, 0), "{text}");
}

/// A server killed (SIGKILL) while skopeo pushes into it shows no part of anything: every
/// blob and manifest in its root is whole and every link resolves (`ferry verify`), and a
/// restarted server takes the whole push, which the stock registry then serves.
#[test]
fn a_server_killed_mid_push_leaves_only_whole_content() {
    let (src_dir, corpus) = tiny();
    let src = FerryServe::start(src_dir.path());
    let dst = empty_root();
    let root = dst.path().to_str().unwrap().to_string();
    let refs: Vec<String> = corpus
        .images
        .iter()
        .map(|i| format!("{}:{}", i.repository, i.tag))
        .collect();
    let push_all = |to: &str| {
        for r in &refs {
            skopeo(&[
                "copy",
                "--all",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                &format!("docker://{}/{r}", src.addr),
                &format!("docker://{to}/{r}"),
            ]);
        }
    };
    let server = FerryServe::start_with(&["serve", &root, "--allow-push"]);
    let addr = server.addr.clone();
    // The kill lands wherever the push is by then (some images whole, one under way).
    std::thread::scope(|s| {
        s.spawn(|| push_all(&addr));
        std::thread::sleep(Duration::from_millis(400));
        server.kill();
    });
    run_ok(ferry().arg("verify").arg(&root));
    let server = FerryServe::start_with(&["serve", &root, "--allow-push"]);
    push_all(&server.addr);
    server.stop();
    let reg = Registry::start(dst.path());
    for img in &corpus.images {
        let r = format!("docker://{}/{}:{}", reg.addr, img.repository, img.tag);
        assert_eq!(inspect_digest(&r), img.digest.to_string(), "{r}");
    }
    let (blobs, manifests, text) = reg.gc_dry_run();
    assert_eq!((blobs, manifests), (0, 0), "{text}");
}

/// Sends `body` in 1,000-byte pieces, pausing 300 ms (longer than the server waits for a
/// receive low-water mark, shorter than its idle timeout) after each offset of `pauses`.
fn send_in_pieces(s: &mut TcpStream, body: &[u8], pauses: &[usize]) {
    let mut sent = 0;
    for piece in body.chunks(1000) {
        s.write_all(piece).unwrap();
        let before = sent;
        sent += piece.len();
        if pauses.iter().any(|&p| before < p && p <= sent) {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// The line `serve --debug` logs when a read waited out its patience for the low-water mark.
const GAVE_UP: &str = "within the patience";

/// Upload bodies sent in small pieces with pauses arrive whole and verified, and the receive
/// low-water mark is both applied and lowered in time:
/// - paused only near its end, with a patience longer than the client's read timeout: had the
///   mark not been lowered before the body's last bytes, the server would wait on it past that
///   timeout; the log shows it never waited the patience out;
/// - paused from the start, with the default patience: the log shows the server waited on the
///   mark (so it was set) and read the body on without it.
///
/// One body by POST `?digest=`, one by POST, PATCH and PUT, each on a keep-alive connection that
/// then answers its next request; both blobs are then served back byte for byte.
#[test]
fn uploads_sent_in_small_pieces_with_pauses_arrive_whole() {
    let dst = empty_root();
    let log = dst.path().join("serve.log");
    let serve = |patience: Option<&str>| {
        let mut env = vec![
            (ferry::limits::ENV_SERVE_TIMEOUT_MS, "120000"),
            ("RUST_LOG", "ferry::serve=debug"),
        ];
        env.extend(patience.map(|p| (ferry::limits::ENV_RCVLOWAT_PATIENCE_MS, p)));
        FerryServe::start_logged(
            &["serve", dst.path().to_str().unwrap(), "--allow-push"],
            Some(&log),
            &env,
        )
    };
    let logged = || std::fs::read_to_string(&log).unwrap();

    let server = serve(Some("60000"));
    let addr = server.addr.clone();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let one = ferry::fixtures::noise(3 * 1024 * 1024 + 17, 1);
    let d1 = sha256(&one);
    let head = format!(
        "POST /v2/slow/blobs/uploads/?digest={d1} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        one.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // Without a pause until the mark must be gone (the socket waits on it most of the body).
    send_in_pieces(&mut s, &one, &[one.len() - 300_000, one.len() - 10]);
    let (status, head) = read_response(&mut s);
    assert_eq!(status, 201, "{head}");
    assert_eq!(header(&head, "docker-content-digest"), Some(d1.as_str()));
    s.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let (status, head) = read_response(&mut s);
    assert_eq!(status, 200, "{head}");
    drop(server);
    assert!(!logged().contains(GAVE_UP), "{}", logged());

    let server = serve(None);
    let addr = server.addr.clone();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let two = ferry::fixtures::noise(2 * 1024 * 1024 + 5, 2);
    let d2 = sha256(&two);
    s.write_all(
        format!(
            "POST /v2/slow/blobs/uploads/ HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let (status, head) = read_response(&mut s);
    assert_eq!(status, 202, "{head}");
    let location = header(&head, "location").unwrap().to_string();
    let patch = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Range: 0-{}\r\nContent-Length: {}\r\n\r\n",
        two.len() - 1,
        two.len()
    );
    s.write_all(patch.as_bytes()).unwrap();
    // With pauses from the start (the socket gives up the mark for the rest of the body).
    send_in_pieces(
        &mut s,
        &two,
        &[10_000, 100_000, two.len() / 2, two.len() - 10],
    );
    let (status, head) = read_response(&mut s);
    assert_eq!(status, 202, "{head}");
    assert_eq!(
        header(&head, "range"),
        Some(format!("0-{}", two.len() - 1).as_str())
    );
    s.write_all(
        format!("PUT {location}?digest={d2} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let (status, head) = read_response(&mut s);
    assert_eq!(status, 201, "{head}");
    s.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let (status, head) = read_response(&mut s);
    assert_eq!(status, 200, "{head}");
    assert!(logged().contains(GAVE_UP), "{}", logged());

    for (d, bytes) in [(&d1, &one), (&d2, &two)] {
        let (status, _, got) = http(&addr, "GET", &format!("/v2/slow/blobs/{d}"), &[]).unwrap();
        assert_eq!(status, 200, "{d}");
        assert!(
            got == *bytes,
            "{d}: the blob served back differs from the one sent"
        );
    }
}

/// A client that stops sending in the middle of a large upload body is cut by the idle timeout
/// (the receive low-water mark set for the body does not keep the connection waiting), nothing
/// of the blob is visible, and the server goes on answering.
#[test]
fn an_upload_that_stops_mid_body_is_cut_by_the_idle_timeout() {
    let dst = empty_root();
    let server = FerryServe::start_with_env(
        &["serve", dst.path().to_str().unwrap(), "--allow-push"],
        &[(ferry::limits::ENV_SERVE_TIMEOUT_MS, "1000")],
    );
    let addr = server.addr.clone();
    let blob = ferry::fixtures::noise(4 * 1024 * 1024, 3);
    let d = sha256(&blob);
    let mut s = TcpStream::connect(&addr).unwrap();
    let head = format!(
        "POST /v2/cut/blobs/uploads/?digest={d} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
        blob.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&blob[..1024 * 1024]).unwrap();
    // The server closes (or resets) the connection; it never answers 201.
    let rest = read_until_closed(&mut s, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("connection still open after the idle timeout: {e}"));
    assert!(
        !String::from_utf8_lossy(&rest).contains(" 201 "),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    let (status, _, _) = http(&addr, "HEAD", &format!("/v2/cut/blobs/{d}"), &[]).unwrap();
    assert_eq!(status, 404);
    let blobs = Store::open(dst.path());
    assert!(
        !blobs.has_blob(&d.parse().unwrap()),
        "a part of the blob is visible"
    );
    let (status, _, _) = http(&addr, "GET", "/v2/", &[]).unwrap();
    assert_eq!(status, 200);
}
