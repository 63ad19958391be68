//! `ferry copy` between registries, registry roots and bundles, against the
//! real `docker-registry` and with `skopeo` as the oracle for what a copy means.

use std::path::Path;

use crate::harness::*;

fn copy(args: &[&str]) -> std::process::Output {
    run(ferry().arg("copy").args(args))
}

fn copy_ok(args: &[&str]) -> std::process::Output {
    run_ok(ferry().arg("copy").args(args))
}

/// Tags of a repository in a root, straight from the layout.
fn root_tags(root: &Path, repo: &str) -> Vec<String> {
    let store = ferry::store::Store::open(root);
    if !store.exists() {
        return Vec::new();
    }
    store.tags(repo).unwrap_or_default()
}

#[test]
fn every_image_between_registries_and_roots_keeps_its_digest() {
    let (_, corpus) = small();
    let work = tempfile::tempdir().unwrap();
    let (_src_dir, src) = small_registry();
    let (_dst_dir, dst) = empty_registry();
    let local = work.path().join("local");
    std::fs::create_dir(&local).unwrap();

    for img in &corpus.images {
        let name = format!("{}:{}", img.repository, img.tag);
        // docker:// → docker:// (the whole index), and docker:// → registry-root:.
        copy_ok(&[
            "-q",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{}/{name}", src.addr),
            &format!("docker://{}/copied/{name}", dst.addr),
        ]);
        copy_ok(&[
            "-q",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{}/{name}", src.addr),
            &format!("registry-root:{}/{name}", local.display()),
        ]);
        assert_eq!(
            inspect_digest(&format!("docker://{}/copied/{name}", dst.addr)),
            img.digest.to_string(),
            "{name} in the target registry"
        );
    }
    // What ferry wrote into the root is served by the stock registry, and its GC finds nothing to delete.
    let served = Registry::start(&local);
    for img in &corpus.images {
        let name = format!("{}:{}", img.repository, img.tag);
        assert_eq!(
            inspect_digest(&format!("docker://{}/{name}", served.addr)),
            img.digest.to_string(),
            "{name} in the root"
        );
    }
    let (blobs, manifests, text) = served.gc_dry_run();
    assert_eq!((blobs, manifests), (0, 0), "{text}");
    let (blobs, manifests, text) = dst.gc_dry_run();
    assert_eq!((blobs, manifests), (0, 0), "{text}");
}

#[test]
fn without_all_one_platform_is_copied_as_skopeo_chooses_it() {
    let (root, corpus) = small();
    let src = FerryServe::start(root);
    let work = tempfile::tempdir().unwrap();
    let (_dst_dir, dst) = empty_registry();
    let multi = multi_arch(corpus);
    let name = format!("{}:{}", multi.repository, multi.tag);
    let from = format!("docker://{}/{name}", src.addr);
    skopeo_ok(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &from,
        &format!("docker://{}/by-skopeo:1", dst.addr),
    ]);
    copy_ok(&[
        "-q",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &from,
        &format!("docker://{}/by-ferry:1", dst.addr),
    ]);
    let skopeo_digest = inspect_digest(&format!("docker://{}/by-skopeo:1", dst.addr));
    assert_eq!(
        inspect_digest(&format!("docker://{}/by-ferry:1", dst.addr)),
        skopeo_digest
    );
    let amd64 = &multi
        .platforms
        .iter()
        .find(|(p, _)| p == "linux/amd64")
        .unwrap()
        .1;
    assert_eq!(
        skopeo_digest,
        amd64.to_string(),
        "the system platform's image"
    );

    // --override-arch picks another child; --multi-arch index-only copies the index alone.
    let arm = &multi
        .platforms
        .iter()
        .find(|(p, _)| p.starts_with("linux/arm64"))
        .unwrap()
        .1;
    let local = work.path().join("local");
    std::fs::create_dir(&local).unwrap();
    copy_ok(&[
        "-q",
        "--src-tls-verify=false",
        "--override-arch",
        "arm64",
        &from,
        &format!("registry-root:{}/arm:1", local.display()),
    ]);
    let store = ferry::store::Store::open(&local);
    assert_eq!(
        store.resolve_tag("arm", "1").unwrap().unwrap().to_string(),
        arm.to_string()
    );
}

#[test]
fn a_bundle_is_a_copy_source_read_in_place() {
    let (root, corpus) = small();
    let src = FerryServe::start(root);
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, corpus.images_list()).unwrap();
    let bundle = work.path().join("b.tar.zst");
    run_ok(
        bundle_cmd(&list, &bundle, &work.path().join("cache"), &src.addr).arg("--all-platforms"),
    );
    let (_dst_dir, dst) = empty_registry();
    let img = &corpus.images[1];
    let name = format!("{}:{}", img.repository, img.tag);
    copy_ok(&[
        "-q",
        "--all",
        "--dest-tls-verify=false",
        &format!("ferry-bundle:{}:{name}", bundle.display()),
        &format!("docker://{}/{name}", dst.addr),
    ]);
    assert_eq!(
        inspect_digest(&format!("docker://{}/{name}", dst.addr)),
        img.digest.to_string()
    );
    // A bundle is read-only.
    let out = copy(&[
        &format!("docker://{}/{name}", dst.addr),
        &format!("ferry-bundle:{}:x:1", bundle.display()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("read-only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_input_gets_one_line_and_leaves_no_tag() {
    let (root, corpus) = small();
    let work = tempfile::tempdir().unwrap();
    // A source whose image has lost a layer: the copy fails and names no tag at the destination.
    let broken = work.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    hardlink_copy(root, &broken);
    let img = corpus
        .images
        .iter()
        .find(|i| i.platforms.is_empty())
        .unwrap();
    let store = ferry::store::Store::open(&broken);
    let walk = store.walk(&img.digest).unwrap();
    let layer = walk.blobs.last().unwrap();
    std::fs::remove_file(store.path(ferry::store::paths::PathSpec::BlobData(&layer.digest)))
        .unwrap();
    let src = FerryServe::start(&broken);
    let dst = work.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let name = format!("{}:{}", img.repository, img.tag);

    let missing = layer.digest.to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "nope:x".into(),
                format!("registry-root:{}/a:1", dst.display()),
            ],
            "unknown transport \"nope\"",
        ),
        (
            vec![
                "docker://127.0.0.1:1/UPPER:1".into(),
                format!("registry-root:{}/a:1", dst.display()),
            ],
            "UPPER",
        ),
        (
            vec![
                format!("docker://{}/{}:no-such-tag", src.addr, img.repository),
                format!("registry-root:{}/a:1", dst.display()),
            ],
            "no-such-tag",
        ),
        (
            vec![
                format!("docker://{}/{name}", src.addr),
                format!("registry-root:{}/a:1", dst.display()),
            ],
            &missing,
        ),
    ];
    for (args, needle) in &cases {
        let mut full = vec!["--src-tls-verify=false".to_string()];
        full.extend(args.iter().cloned());
        let out = copy(&full.iter().map(String::as_str).collect::<Vec<_>>());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line: {err}"
        );
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(root_tags(&dst, "a").is_empty(), "{args:?}: no tag written");
    }
    // An index whose child the registry does not have is an error with --all (only bundles
    // and roots keep sparse indexes), and nothing is named at the destination.
    let multi = multi_arch(corpus);
    let child = &multi.platforms[1].1;
    std::fs::remove_file(store.path(ferry::store::paths::PathSpec::RevisionLink(
        &multi.repository,
        child,
    )))
    .unwrap();
    let out = copy(&[
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}/{}:{}", src.addr, multi.repository, multi.tag),
        &format!("registry-root:{}/m:1", dst.display()),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&child.to_string()),
        "names the missing child: {err}"
    );
    assert!(root_tags(&dst, "m").is_empty(), "no tag written");

    // A mistyped source leaves an existing dir: image as it was.
    let kept = work.path().join("kept");
    copy_ok(&[
        "-q",
        "--src-tls-verify=false",
        &format!("docker://{}/{}:{}", src.addr, multi.repository, multi.tag),
        &format!("dir:{}", kept.display()),
    ]);
    let before = std::fs::read(kept.join("manifest.json")).unwrap();
    let out = copy(&[
        "--src-tls-verify=false",
        &format!("docker://{}/{}:typo", src.addr, multi.repository),
        &format!("dir:{}", kept.display()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(kept.join("manifest.json")).unwrap(), before);

    // A destination directory that holds something other than an image is refused, untouched.
    let notes = work.path().join("notes");
    std::fs::create_dir(&notes).unwrap();
    std::fs::write(notes.join("todo.txt"), "keep me").unwrap();
    let out = copy(&[
        "--src-tls-verify=false",
        &format!("docker://{}/{name}", src.addr),
        &format!("dir:{}", notes.display()),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(&notes.display().to_string()), "{err}");
    assert_eq!(
        std::fs::read_dir(&notes).unwrap().count(),
        1,
        "nothing added or removed"
    );
    assert_eq!(
        std::fs::read_to_string(notes.join("todo.txt")).unwrap(),
        "keep me"
    );
    // Nothing half-written is visible: no temp blob left, and every blob there verifies.
    let out = run_ok(ferry().arg("verify").arg(&dst));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" 0 faults"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A source that does not exist is named at once even when the destination hangs: the
/// destination's ping runs beside the source's reads and is dropped when the source fails,
/// instead of holding the error for the ping's 60 s header timeout.
#[test]
fn a_missing_source_is_named_at_once_while_the_destination_hangs() {
    let (root, corpus) = small();
    let src = FerryServe::start(root);
    // Accepts connections (the kernel's backlog) and never answers a byte.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let img = &corpus.images[0];
    let started = std::time::Instant::now();
    let out = copy(&[
        "-q",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{}/{}:no-such-tag", src.addr, img.repository),
        &format!("docker://{}/x/y:1", hung.local_addr().unwrap()),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains("no-such-tag"), "the source is named: {err}");
    // Bounded by the source's answer, not by the destination's header timeout (60 s).
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "waited {:?} for a hung destination",
        started.elapsed()
    );
    drop(hung);
}

#[test]
fn a_root_links_only_what_the_copy_brought() {
    let (root, corpus) = small();
    let src = FerryServe::start(root);
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("local");
    std::fs::create_dir(&local).unwrap();
    let multi = multi_arch(corpus);
    let from = format!("docker://{}/{}:{}", src.addr, multi.repository, multi.tag);
    // The whole index into one repository: the root now holds every child.
    copy_ok(&[
        "-q",
        "--all",
        "--src-tls-verify=false",
        &from,
        &format!("registry-root:{}/whole:1", local.display()),
    ]);
    // The index alone into another: its children are in the root, but were not copied here.
    copy_ok(&[
        "-q",
        "--multi-arch",
        "index-only",
        "--src-tls-verify=false",
        &from,
        &format!("registry-root:{}/alone:1", local.display()),
    ]);
    let store = ferry::store::Store::open(&local);
    assert!(store.has_revision("alone", &multi.digest));
    for (_, child) in &multi.platforms {
        assert!(store.has_revision("whole", child));
        assert!(
            !store.has_revision("alone", child),
            "{child} was not copied into alone"
        );
    }
}

#[test]
fn a_sparse_index_from_a_bundle_is_refused_or_rewritten_on_request() {
    let (root, corpus) = small();
    let src = FerryServe::start(root);
    let work = tempfile::tempdir().unwrap();
    let multi = multi_arch(corpus);
    let name = format!("{}:{}", multi.repository, multi.tag);
    let list = work.path().join("list.txt");
    std::fs::write(&list, format!("{name}\n")).unwrap();
    let bundle = work.path().join("amd64.tar.zst");
    // linux/amd64 only: the bundle's index is sparse.
    run_ok(&mut bundle_cmd(
        &list,
        &bundle,
        &work.path().join("cache"),
        &src.addr,
    ));
    let (_dst_dir, dst) = empty_registry();
    let from = format!("ferry-bundle:{}:{name}", bundle.display());
    let to = format!("docker://{}/{name}", dst.addr);
    let out = copy(&["--all", "--dest-tls-verify=false", &from, &to]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--rewrite-sparse-index"), "{err}");
    let out = copy_ok(&[
        "-q",
        "--all",
        "--rewrite-sparse-index",
        "--json",
        "--dest-tls-verify=false",
        &from,
        &to,
    ]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pushed = s["rewritten"][0]["pushed"].as_str().unwrap().to_string();
    assert_eq!(s["rewritten"][0]["original"], multi.digest.to_string());
    assert_ne!(pushed, multi.digest.to_string());
    assert_eq!(
        inspect_digest(&to),
        pushed,
        "the tag names the rewritten index"
    );
    // One platform of it copies as it is, with its digest.
    copy_ok(&[
        "-q",
        "--dest-tls-verify=false",
        &from,
        &format!("docker://{}/one:1", dst.addr),
    ]);
    let amd64 = &multi
        .platforms
        .iter()
        .find(|(p, _)| p == "linux/amd64")
        .unwrap()
        .1;
    assert_eq!(
        inspect_digest(&format!("docker://{}/one:1", dst.addr)),
        amd64.to_string()
    );
}

/// One `ferry copy --all --json` between two registries, blob locations kept in `cache`; the summary.
fn copy_json(cache: &Path, from: &str, to: &str) -> serde_json::Value {
    let out = run_ok(ferry().env("XDG_CACHE_HOME", cache).args([
        "copy",
        "-q",
        "--all",
        "--json",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        from,
        to,
    ]));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The requests of `log` from `since` on whose method is `method` and whose path holds `part`.
fn count(log: &[(String, String)], since: usize, method: &str, part: &str) -> usize {
    log[since..]
        .iter()
        .filter(|(m, p)| m == method && p.contains(part))
        .count()
}

#[test]
fn a_registry_copy_asks_each_thing_once_and_a_later_run_mounts_what_an_earlier_one_put() {
    let (root, corpus) = small();
    let img = multi_arch(corpus);
    let (_s, src) = logged_registry(Some(root));
    let (_d, dst) = logged_registry(None);
    let cache = tempfile::tempdir().unwrap();
    let from = format!("docker://{}/{}:{}", src.addr, img.repository, img.tag);
    let first = copy_json(
        cache.path(),
        &from,
        &format!("docker://{}/one/x:{}", dst.addr, img.tag),
    );
    let blobs = first["blobs_uploaded"].as_u64().unwrap() as usize;
    assert!(blobs > 2, "{first}");
    let (s, d) = (src.settled_requests(), dst.settled_requests());
    // The source: the index and each child once by GET (no HEAD pins the tag), each blob once.
    assert_eq!(count(&s, 0, "HEAD", "/"), 0, "{s:?}");
    assert_eq!(
        count(&s, 0, "GET", "/manifests/"),
        1 + img.platforms.len(),
        "{s:?}"
    );
    let blob_gets: std::collections::BTreeSet<&String> = s
        .iter()
        .filter(|(m, p)| m == "GET" && p.contains("/blobs/"))
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        (blob_gets.len(), count(&s, 0, "GET", "/blobs/")),
        (blobs, blobs),
        "{s:?}"
    );
    // The target: each blob by one POST and one monolithic PUT (no PATCH); a new repository
    // is asked for its tags once and about no blob.
    assert_eq!(count(&d, 0, "PATCH", "/"), 0, "{d:?}");
    assert_eq!(count(&d, 0, "POST", "/blobs/uploads/"), blobs, "{d:?}");
    assert_eq!(count(&d, 0, "PUT", "/blobs/uploads/"), blobs, "{d:?}");
    assert_eq!(count(&d, 0, "HEAD", "/blobs/"), 0, "{d:?}");
    assert_eq!(count(&d, 0, "GET", "/tags/list"), 1, "{d:?}");
    // Neither registry is pinged with a GET /v2/: each answered the scheme probe (TLS, which
    // a plain-HTTP registry answers in plain HTTP, outside its access log) already.
    // (The one GET /v2/ each logs is the harness's own check that the registry is up.)
    for log in [&s, &d] {
        let pings = log.iter().filter(|(m, p)| m == "GET" && p == "/v2/");
        assert_eq!(pings.count(), 1, "{log:?}");
    }

    // Another process, another repository of the same target: every blob is mounted from
    // where the first run put it, and the source is asked for no blob.
    let (s0, d0) = (s.len(), d.len());
    let second = copy_json(
        cache.path(),
        &from,
        &format!("docker://{}/two/x:{}", dst.addr, img.tag),
    );
    assert_eq!(
        (
            second["blobs_mounted"].as_u64(),
            second["blobs_uploaded"].as_u64()
        ),
        (Some(blobs as u64), Some(0)),
        "{second}"
    );
    let (s, d) = (src.settled_requests(), dst.settled_requests());
    assert_eq!(count(&s, s0, "GET", "/blobs/"), 0, "{s:?}");
    assert_eq!(count(&d, d0, "POST", "mount="), blobs, "{d:?}");
    assert_eq!(count(&d, d0, "PUT", "/blobs/uploads/"), 0, "{d:?}");
    assert_eq!(
        inspect_digest(&format!("docker://{}/two/x:{}", dst.addr, img.tag)),
        img.digest.to_string()
    );
    let (blobs, manifests, text) = dst.gc_dry_run();
    assert_eq!((blobs, manifests), (0, 0), "{text}");
}

#[test]
fn a_blob_the_source_lacks_fails_the_copy_and_the_upload_opened_meanwhile_is_cancelled() {
    let (root, corpus) = small();
    let img = multi_arch(corpus);
    let (s, src) = logged_registry(Some(root));
    // The source has lost the data of one layer (its link stays): its GET answers 404.
    let store = ferry::store::Store::open(s.path());
    let layer = store
        .walk(&img.digest)
        .unwrap()
        .blobs
        .last()
        .unwrap()
        .clone();
    std::fs::remove_file(store.path(ferry::store::paths::PathSpec::BlobData(&layer.digest)))
        .unwrap();
    let (d, dst) = logged_registry(None);
    let cache = tempfile::tempdir().unwrap();
    let out = run(ferry().env("XDG_CACHE_HOME", cache.path()).args([
        "copy",
        "-q",
        "--all",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{}/{}:{}", src.addr, img.repository, img.tag),
        &format!("docker://{}/new/x:{}", dst.addr, img.tag),
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    let missing = layer.digest.to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&missing) && err.contains(&img.repository),
        "{err}"
    );
    // The upload session was opened while the source answered (one mount-or-upload POST for
    // the missing layer), then cancelled: nothing is named, no upload is left behind.
    let r = dst.settled_requests();
    assert_eq!(
        count(&r, 0, "POST", &format!("mount={missing}")),
        1,
        "{r:?}"
    );
    assert_eq!(count(&r, 0, "DELETE", "/blobs/uploads/"), 1, "{r:?}");
    assert_eq!(count(&r, 0, "PUT", "/manifests/"), 0, "{r:?}");
    // No session is left open (a cancelled one keeps only the registry's own hash state).
    let (uploads, tags) = uploads_and_tags(d.path());
    assert!(
        uploads.is_empty() && tags.is_empty(),
        "{uploads:?} {tags:?}"
    );
}

#[test]
fn a_new_repository_is_not_asked_about_each_blob_and_one_that_holds_images_is() {
    let (root, corpus) = small();
    let img = multi_arch(corpus);
    let (_s, src) = logged_registry(Some(root));
    let (_d, dst) = logged_registry(None);
    let cache = tempfile::tempdir().unwrap();
    let from = format!("docker://{}/{}:{}", src.addr, img.repository, img.tag);

    // A repository with no tag: one tag list, no HEAD; each upload opens with a mount from the
    // repository itself (the registry says 202 and opens it), then one monolithic PUT.
    let first = copy_json(
        cache.path(),
        &from,
        &format!("docker://{}/new/x:{}", dst.addr, img.tag),
    );
    let blobs = first["blobs_uploaded"].as_u64().unwrap() as usize;
    assert!(blobs > 2, "{first}");
    let d = dst.settled_requests();
    assert_eq!(count(&d, 0, "GET", "/v2/new/x/tags/list"), 1, "{d:?}");
    assert_eq!(count(&d, 0, "HEAD", "/blobs/"), 0, "{d:?}");
    assert_eq!(count(&d, 0, "POST", "/blobs/uploads/"), blobs, "{d:?}");
    assert_eq!(count(&d, 0, "POST", "&from=new/x"), blobs, "{d:?}");
    assert_eq!(count(&d, 0, "PUT", "/blobs/uploads/"), blobs, "{d:?}");

    // The same repository, now tagged, under another tag, by another process that keeps no
    // record: each blob is asked about (HEAD), found, and neither read nor sent again.
    let (s0, d0) = (src.settled_requests().len(), d.len());
    let other = tempfile::tempdir().unwrap();
    let second = copy_json(
        other.path(),
        &from,
        &format!("docker://{}/new/x:again", dst.addr),
    );
    assert_eq!(
        (
            second["blobs_present"].as_u64(),
            second["blobs_uploaded"].as_u64()
        ),
        (Some(blobs as u64), Some(0)),
        "{second}"
    );
    let (s, d) = (src.settled_requests(), dst.settled_requests());
    assert_eq!(count(&d, d0, "HEAD", "/blobs/"), blobs, "{d:?}");
    assert_eq!(count(&d, d0, "POST", "/"), 0, "{d:?}");
    assert_eq!(count(&s, s0, "GET", "/blobs/"), 0, "{s:?}");

    // A new repository and blobs the record knows elsewhere: mounted, not asked about first.
    let d1 = dst.settled_requests().len();
    let by_digest = format!("docker://{}/half/x@{}", dst.addr, img.digest);
    let third = copy_json(cache.path(), &from, &by_digest);
    assert_eq!(
        third["blobs_mounted"].as_u64(),
        Some(blobs as u64),
        "{third}"
    );
    let d = dst.settled_requests();
    assert_eq!(count(&d, d1, "HEAD", "/blobs/"), 0, "{d:?}");
    assert_eq!(count(&d, d1, "POST", "&from=new/x"), blobs, "{d:?}");

    // So that repository holds the image's blobs but no tag (pushed by digest): a copy that
    // keeps no record finds every blob there by the uploads' own mounts, and sends no byte.
    let d1 = d.len();
    let fourth = copy_json(
        tempfile::tempdir().unwrap().path(),
        &from,
        &format!("docker://{}/half/x:{}", dst.addr, img.tag),
    );
    assert_eq!(
        (
            fourth["blobs_present"].as_u64(),
            fourth["blobs_uploaded"].as_u64()
        ),
        (Some(blobs as u64), Some(0)),
        "{fourth}"
    );
    let d = dst.settled_requests();
    assert_eq!(count(&d, d1, "PUT", "/blobs/uploads/"), 0, "{d:?}");
    assert_eq!(count(&d, d1, "POST", "&from=half/x"), blobs, "{d:?}");
    assert_eq!(
        inspect_digest(&format!("docker://{}/half/x:{}", dst.addr, img.tag)),
        img.digest.to_string()
    );
    let (blobs, manifests, text) = dst.gc_dry_run();
    assert_eq!((blobs, manifests), (0, 0), "{text}");
}

/// `unbundle push` writes one image at a time, several into one repository: each repository is
/// asked for its tags once per run (the answer is shared), not once per image.
#[test]
fn a_push_asks_each_repository_for_its_tags_once() {
    let (_, corpus) = small();
    let mut per_repo = std::collections::BTreeMap::<&str, usize>::new();
    for i in &corpus.images {
        *per_repo.entry(i.repository.as_str()).or_default() += 1;
    }
    assert!(per_repo.values().any(|&n| n > 1), "{per_repo:?}");
    let (_d, dst) = logged_registry(None);
    run_ok(
        ferry()
            .args([
                "unbundle",
                "push",
                "-q",
                "--dest-tls-verify=false",
                "--dest",
            ])
            .arg(&dst.addr)
            .arg(&crate::unbundle::bundles().0),
    );
    let d = dst.settled_requests();
    for repo in per_repo.keys() {
        let tags = format!("/v2/{repo}/tags/list");
        assert_eq!(count(&d, 0, "GET", &tags), 1, "{repo}: {d:?}");
    }
    assert_eq!(count(&d, 0, "GET", "/tags/list"), per_repo.len(), "{d:?}");
}
