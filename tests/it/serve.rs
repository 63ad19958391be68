//! `ferry serve` speaks the distribution API as clients expect: headers, ranges, pagination, error codes, scoping.

use ferry::digest::Digest;
use ferry::store::Store;

use crate::harness::*;

#[test]
fn manifests_blobs_ranges_and_errors() {
    let (dir, corpus) = tiny();
    let store = Store::open(dir.path());
    let img = corpus
        .images
        .iter()
        .find(|i| i.platforms.is_empty())
        .unwrap();
    let other = corpus
        .images
        .iter()
        .find(|i| i.repository != img.repository && i.platforms.is_empty())
        .unwrap();
    let server = FerryServe::start(dir.path());
    let a = server.addr.as_str();
    let repo = &img.repository;

    let (status, head, body) = http(a, "GET", "/v2/", &[]).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "docker-distribution-api-version"),
        Some("registry/2.0")
    );
    assert_eq!(body, b"{}");

    // Manifests: by tag and by digest, GET and HEAD, with the headers containerd and docker rely on.
    for reference in [img.tag.clone(), img.digest.to_string()] {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let (status, head, body) = http(a, "GET", &path, &[]).unwrap();
        assert_eq!(status, 200, "{path}");
        assert_eq!(sha256(&body), img.digest.to_string());
        assert_eq!(
            header(&head, "docker-content-digest"),
            Some(img.digest.to_string().as_str())
        );
        assert_eq!(header(&head, "content-type"), Some(img.media_type.as_str()));
        let (status, hhead, hbody) = http(a, "HEAD", &path, &[]).unwrap();
        assert_eq!(status, 200);
        assert!(hbody.is_empty());
        assert_eq!(
            header(&hhead, "content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(
            header(&hhead, "docker-content-digest"),
            header(&head, "docker-content-digest")
        );
    }

    // Blobs: whole, HEAD, and ranges.
    let manifest = store.read_manifest(&img.digest).unwrap().parse().unwrap();
    let layer = manifest
        .blobs()
        .into_iter()
        .max_by_key(|b| b.size)
        .unwrap()
        .clone();
    let full =
        std::fs::read(store.path(ferry::store::paths::PathSpec::BlobData(&layer.digest))).unwrap();
    let path = format!("/v2/{repo}/blobs/{}", layer.digest);
    let (status, head, body) = http(a, "GET", &path, &[]).unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, full);
    assert_eq!(
        header(&head, "docker-content-digest"),
        Some(layer.digest.to_string().as_str())
    );
    assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
    let (status, head, body) = http(a, "HEAD", &path, &[]).unwrap();
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(
        header(&head, "content-length"),
        Some(full.len().to_string().as_str())
    );
    let (status, head, body) = http(a, "GET", &path, &[("Range", "bytes=100-1099")]).unwrap();
    assert_eq!(status, 206);
    assert_eq!(body, &full[100..1100]);
    assert_eq!(
        header(&head, "content-range"),
        Some(format!("bytes 100-1099/{}", full.len()).as_str())
    );
    let (status, _, body) = http(a, "GET", &path, &[("Range", "bytes=-10")]).unwrap();
    assert_eq!((status, body.as_slice()), (206, &full[full.len() - 10..]));
    let (status, head, _) = http(
        a,
        "GET",
        &path,
        &[("Range", &format!("bytes={}-", full.len()))],
    )
    .unwrap();
    assert_eq!(status, 416);
    assert_eq!(
        header(&head, "content-range"),
        Some(format!("bytes */{}", full.len()).as_str())
    );

    // A blob in the store but not linked by this repository is not served from it (as distribution does).
    let other_manifest = store.read_manifest(&other.digest).unwrap().parse().unwrap();
    let foreign = other_manifest
        .blobs()
        .into_iter()
        .find(|b| !store.has_layer_link(repo, &b.digest))
        .expect("the other image has a blob of its own");
    let (status, _, body) = http(
        a,
        "GET",
        &format!("/v2/{repo}/blobs/{}", foreign.digest),
        &[],
    )
    .unwrap();
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("BLOB_UNKNOWN"));
    let (status, _, body) = http(
        a,
        "GET",
        &format!("/v2/{repo}/manifests/{}", other.digest),
        &[],
    )
    .unwrap();
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("MANIFEST_UNKNOWN"));

    // Error codes for bad input.
    let ghost = Digest::sha256_of(b"ghost");
    let cases = [
        (
            format!("/v2/{repo}/manifests/nope"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (format!("/v2/{repo}/blobs/{ghost}"), 404, "BLOB_UNKNOWN"),
        (
            format!("/v2/{repo}/blobs/sha256:abc"),
            400,
            "DIGEST_INVALID",
        ),
        (
            format!("/v2/{repo}/blobs/sha256:..%2F..%2Fetc"),
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/UPPER/manifests/x".to_string(), 400, "NAME_INVALID"),
        ("/v2/a/../b/manifests/x".to_string(), 400, "NAME_INVALID"),
        ("/v2/no/such/tags/list".to_string(), 404, "NAME_UNKNOWN"),
    ];
    for (path, want_status, code) in cases {
        let (status, _, body) = http(a, "GET", &path, &[]).unwrap();
        assert_eq!(status, want_status, "{path}");
        let v: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or_else(|_| panic!("{path}: {body:?}"));
        assert_eq!(v["errors"][0]["code"], code, "{path}");
    }
    let (status, _, _) = http(
        a,
        "DELETE",
        &format!("/v2/{repo}/manifests/{}", img.digest),
        &[],
    )
    .unwrap();
    assert_eq!(status, 405, "read-only");
    assert!(store.has_revision(repo, &img.digest));
}

#[test]
fn tags_and_catalog_paginate() {
    let (dir, corpus) = tiny();
    let store = Store::open(dir.path());
    let img = &corpus.images[0];
    for t in ["a", "b", "c", "d", "e"] {
        store.tag(&img.repository, t, &img.digest).unwrap();
    }
    let mut all = store.tags(&img.repository).unwrap();
    all.sort();
    let server = FerryServe::start(dir.path());
    let mut got = Vec::new();
    let mut path = format!("/v2/{}/tags/list?n=2", img.repository);
    let mut pages = 0;
    loop {
        let (status, head, body) = http(&server.addr, "GET", &path, &[]).unwrap();
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["name"], img.repository.as_str());
        let page: Vec<String> = serde_json::from_value(v["tags"].clone()).unwrap();
        assert!(page.len() <= 2);
        got.extend(page);
        pages += 1;
        match header(&head, "link") {
            Some(l) => {
                path = l
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_string()
            }
            None => break,
        }
    }
    assert_eq!(got, all);
    assert_eq!(pages, all.len().div_ceil(2));

    let (status, _, body) = http(&server.addr, "GET", "/v2/_catalog", &[]).unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let repos: Vec<String> = serde_json::from_value(v["repositories"].clone()).unwrap();
    assert_eq!(repos, store.repositories().unwrap());
    let (_, head, body) = http(&server.addr, "GET", "/v2/_catalog?n=1", &[]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["repositories"].as_array().unwrap().len(), 1);
    assert!(header(&head, "link").unwrap().contains("rel=\"next\""));
}

/// Resident memory of a process, in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Clients that stop reading mid-blob cost the server a few chunks each, not a copy buffer per
/// connection plus a queue of large reads: 64 stalled downloads of a 32 MiB blob held about
/// 90 MB before, and must hold under 32 MiB (the bench's ≤ 64 MB peak under load needs it).
/// Each stalled response is then still read whole and verified.
#[test]
fn stalled_clients_hold_little_server_memory() {
    use std::io::{Read, Write};
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let store = Store::create(&root).unwrap().with_durable(false);
    // 32 MiB of deterministic, incompressible bytes.
    let blob = ferry::fixtures::noise(32 * 1024 * 1024, 1);
    let digest = store.put_blob_bytes(&blob).unwrap();
    store.link_layer("big/blob", &digest).unwrap();
    let server = FerryServe::start(&root);
    let pid = server.pid();
    let before = rss_kib(pid);
    let request = format!(
        "GET /v2/big/blob/blobs/{digest} HTTP/1.1\r\nHost: {}\r\n\r\n",
        server.addr
    );
    let mut stalled: Vec<std::net::TcpStream> = (0..64)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            s
        })
        .collect();
    // Every response fills the socket buffers and what the server queues behind them: wait until
    // the server's memory stops growing (unchanged over a second), at most 20 s.
    let mut last = (rss_kib(pid), 0);
    for _ in 0..200 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = rss_kib(pid);
        last = if now == last.0 {
            (now, last.1 + 1)
        } else {
            (now, 0)
        };
        if last.1 >= 10 {
            break;
        }
    }
    let held_kib = last.0.saturating_sub(before);
    assert!(
        held_kib < 32 * 1024,
        "64 stalled downloads hold {held_kib} KiB of server memory"
    );
    // Still served: one stalled response read to its end is the blob.
    let mut s = stalled.pop().unwrap();
    drop(stalled);
    let mut response = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let body_at = loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the head ended");
        response.extend_from_slice(&buf[..n]);
        if let Some(p) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&response[..body_at]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = response.split_off(body_at);
    while body.len() < blob.len() {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "body cut at {} bytes", body.len());
        body.extend_from_slice(&buf[..n]);
    }
    assert_eq!(Digest::sha256_of(&body), digest, "the body is the blob");
}
