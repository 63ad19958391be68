//! `ferry bundle` against the real `docker-registry`: the bundle is a registry
//! root, deterministic, incremental, and bad input or a bad source leaves nothing behind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferry::digest::Digest;
use ferry::fixtures::Corpus;
use ferry::store::Store;

use crate::harness::*;

/// A source registry holding the `small` fixtures.
fn source() -> (tempfile::TempDir, Registry) {
    small_registry()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Config and layer digests of an image (the platforms kept by default: linux/amd64).
fn blobs_of(root: &Path, digest: &Digest, all: bool) -> BTreeSet<Digest> {
    let store = Store::open(root);
    let m = store.read_manifest(digest).unwrap().parse().unwrap();
    let mut out: BTreeSet<Digest> = m.blobs().into_iter().map(|b| b.digest.clone()).collect();
    for c in m.children() {
        if all
            || c.platform
                .as_ref()
                .is_some_and(|p| p.architecture == "amd64")
        {
            out.extend(blobs_of(root, &c.digest, all));
        }
    }
    out
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn list_with_extras(corpus: &Corpus) -> String {
    // The generated list (sections, a bare name) plus comments, CRLF, a duplicate and pinned digests.
    let pinned = corpus
        .images
        .iter()
        .find(|i| i.platforms.is_empty() && i.repository.contains('/'))
        .unwrap();
    let tagged_pin = corpus
        .images
        .iter()
        .rev()
        .find(|i| i.platforms.is_empty())
        .unwrap();
    format!(
        "# release 1.0 images\r\n{}\n##pinned\n{}@{}   # by digest only\n{}:{}@{}\n{}:{}\n",
        corpus.images_list(),
        pinned.repository,
        pinned.digest,
        tagged_pin.repository,
        tagged_pin.tag,
        tagged_pin.digest,
        corpus.images[0].repository,
        corpus.images[0].tag,
    )
}

#[test]
fn bundle_extracted_with_tar_is_served_by_docker_registry() {
    let (root, corpus) = small();
    let (_src_dir, src) = source();
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("images-list.txt");
    std::fs::write(&list, list_with_extras(corpus)).unwrap();
    let out = work.path().join("bundle.tar.zst");
    let kept_root = work.path().join("root");
    let res = run_ok(
        bundle_cmd(&list, &out, &work.path().join("cache"), &src.addr)
            .arg("--json")
            .arg("--root-dir")
            .arg(&kept_root),
    );
    let summary = json(&res);
    assert_eq!(
        summary["images"],
        corpus.images.len() + 1,
        "every tag plus the digest-only entry"
    );
    assert_eq!(
        entries(work.path()),
        ["bundle.tar.zst", "cache", "images-list.txt", "root"],
        "no temp files left"
    );

    let site = work.path().join("site");
    extract_bundle(&out, &site);
    // --root-dir leaves the same tree the bundle holds.
    assert_eq!(tree_hash(&kept_root, "docker"), tree_hash(&site, "docker"));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(site.join("ferry-bundle.json")).unwrap()).unwrap();
    let reg = Registry::start(&site);
    for img in &corpus.images {
        let name = format!("{}:{}", img.repository, img.tag);
        let digest_at = inspect_digest(&format!("docker://{}/{name}", reg.addr));
        assert_eq!(
            digest_at,
            img.digest.to_string(),
            "{name}: the source's digest, index included"
        );
        let dest = work.path().join("pulled");
        let _ = std::fs::remove_dir_all(&dest);
        skopeo_ok(&[
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{}/{name}", reg.addr),
            &format!("dir:{}", dest.display()),
        ]);
        let manifest = std::fs::read(dest.join("manifest.json")).unwrap();
        let want = img
            .platforms
            .iter()
            .find(|(p, _)| p == "linux/amd64")
            .map_or(&img.digest, |(_, d)| d);
        assert_eq!(sha256(&manifest), want.to_string(), "{name}: amd64 image");
        if !img.platforms.is_empty() {
            // The index is sparse: arm64 was not chosen, and ferry-bundle.json says so.
            let entry = index["images"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["digest"] == img.digest.to_string())
                .unwrap();
            let present: Vec<(String, bool)> = entry["platforms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["platform"].as_str().unwrap().to_string(),
                        p["present"].as_bool().unwrap(),
                    )
                })
                .collect();
            assert_eq!(
                present,
                [
                    ("linux/amd64".to_string(), true),
                    ("linux/arm64/v8".to_string(), false)
                ]
            );
        }
    }
    let (blobs, manifests, text) = reg.gc_dry_run();
    assert_eq!((blobs, manifests), (0, 0), "{text}");
    // The pinned, digest-only entry is there by digest.
    let pinned = corpus
        .images
        .iter()
        .find(|i| i.platforms.is_empty() && i.repository.contains('/'))
        .unwrap();
    skopeo_ok(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!(
            "docker://{}/{}@{}",
            reg.addr, pinned.repository, pinned.digest
        ),
    ]);
    let _ = root;
}

#[test]
fn all_platforms_and_determinism() {
    let (_, corpus) = small();
    let (_src_dir, src) = source();
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, corpus.images_list()).unwrap();
    let a = work.path().join("a.tar.zst");
    let b = work.path().join("b.tar.zst");
    for (out, cache) in [(&a, "cache-a"), (&b, "cache-b")] {
        run_ok(
            bundle_cmd(&list, out, &work.path().join(cache), &src.addr)
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .arg("--all-platforms"),
        );
    }
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same inputs, same bytes"
    );
    let listing = run_ok(Command::new("tar").arg("--zstd").arg("-tvf").arg(&a));
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.lines().next().unwrap().ends_with("ferry-bundle.json"),
        "index first"
    );
    assert!(
        text.lines()
            .all(|l| l.contains("0/0") && l.contains("2023-11-14")),
        "fixed owners and mtime"
    );

    // Every platform of every multi-arch image is pullable.
    let site = work.path().join("site");
    extract_bundle(&a, &site);
    let reg = Registry::start(&site);
    for img in corpus.images.iter().filter(|i| !i.platforms.is_empty()) {
        let oci = work.path().join("oci");
        skopeo_ok(&[
            "copy",
            "-q",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{}/{}:{}", reg.addr, img.repository, img.tag),
            &format!("oci:{}:x", oci.display()),
        ]);
    }
    let (blobs, manifests, text) = reg.gc_dry_run();
    assert_eq!((blobs, manifests), (0, 0), "{text}");
}

#[test]
fn second_bundle_downloads_only_new_blobs() {
    let (root, corpus) = small();
    let (_src_dir, src) = source();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let (first, second) = (&corpus.images[..12], &corpus.images[6..]);
    let write = |name: &str, imgs: &[ferry::fixtures::FixtureImage]| -> PathBuf {
        let p = work.path().join(name);
        std::fs::write(
            &p,
            imgs.iter()
                .map(|i| format!("{}:{}\n", i.repository, i.tag))
                .collect::<String>(),
        )
        .unwrap();
        p
    };
    let blobs = |imgs: &[ferry::fixtures::FixtureImage]| {
        imgs.iter()
            .flat_map(|i| blobs_of(root, &i.digest, false))
            .collect::<BTreeSet<_>>()
    };
    let r1 = json(&run_ok(
        bundle_cmd(
            &write("1.txt", first),
            &work.path().join("1.tar.zst"),
            &cache,
            &src.addr,
        )
        .arg("--json"),
    ));
    assert_eq!(r1["blobs_downloaded"], blobs(first).len());
    let r2 = json(&run_ok(
        bundle_cmd(
            &write("2.txt", second),
            &work.path().join("2.tar.zst"),
            &cache,
            &src.addr,
        )
        .arg("--json"),
    ));
    let new: BTreeSet<_> = blobs(second).difference(&blobs(first)).cloned().collect();
    assert!(!new.is_empty() && new.len() < blobs(second).len());
    assert_eq!(
        r2["blobs_downloaded"],
        new.len(),
        "only what the cache lacked"
    );
    assert_eq!(r2["blobs_reused"], blobs(second).len() - new.len());
}

#[test]
fn bad_list_lines_are_reported_before_anything_is_downloaded() {
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, "##ok\nredis:5\nBad/Name:1\nx:-tag\n").unwrap();
    let out = run(&mut bundle_cmd(
        &list,
        &work.path().join("b.tar.zst"),
        &work.path().join("cache"),
        "127.0.0.1:1",
    ));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("list.txt:3: \"Bad/Name:1\": invalid repository name"),
        "{stderr}"
    );
    assert!(
        stderr.contains("list.txt:4: \"x:-tag\": invalid tag"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        3,
        "one line per bad line, and a summary: {stderr}"
    );
    assert_eq!(entries(work.path()), ["list.txt"], "nothing written");
}

#[test]
fn missing_image_and_dead_registry_fail_cleanly_and_keep_going_writes_the_rest() {
    let (_, corpus) = small();
    let (_src_dir, src) = source();
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    let good = &corpus.images[0];
    std::fs::write(
        &list,
        format!(
            "{}:{}\nno/such-image:1\n{}:no-such-tag\n",
            good.repository, good.tag, good.repository
        ),
    )
    .unwrap();
    let out = work.path().join("b.tar.zst");
    let cache = work.path().join("cache");
    let res = run(&mut bundle_cmd(&list, &out, &cache, &src.addr));
    assert_eq!(res.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&res.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].starts_with("error: no/such-image:1 (") && lines[0].contains("MANIFEST_UNKNOWN"),
        "{stderr}"
    );
    assert!(
        lines[1].contains(&format!("{}:no-such-tag", good.repository))
            && lines[1].contains("MANIFEST_UNKNOWN"),
        "{stderr}"
    );
    assert!(!out.exists());
    assert_eq!(entries(work.path()), ["cache", "list.txt"]);

    let res = run(bundle_cmd(&list, &out, &cache, &src.addr).arg("--keep-going"));
    assert_eq!(res.status.code(), Some(1), "still an error");
    assert!(String::from_utf8_lossy(&res.stderr).contains("was written without them"));
    let index = ferry::bundle::read_index(&out).unwrap();
    assert_eq!(index.images.len(), 1);
    assert_eq!(index.failed.len(), 2);

    // A registry that is not there: checked once, its images in one line, no bundle.
    let port = free_port();
    let out2 = work.path().join("c.tar.zst");
    let res = run(&mut bundle_cmd(
        &list,
        &out2,
        &cache,
        &format!("127.0.0.1:{port}"),
    ));
    assert_eq!(res.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("onnection refused") && l.contains("and 2 other images"))
            .count(),
        1,
        "{stderr}"
    );
    assert!(!out2.exists());
}

#[test]
fn corrupt_or_truncated_blob_from_the_source_is_refused_and_a_rerun_completes() {
    let (root, corpus) = small();
    let img = corpus
        .images
        .iter()
        .find(|i| i.platforms.is_empty())
        .unwrap();
    let layer = blobs_of(root, &img.digest, false)
        .into_iter()
        .max_by_key(|d| Store::open(root).blob_size(d).unwrap().unwrap())
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, format!("{}:{}\n", img.repository, img.tag)).unwrap();
    let cache = work.path().join("cache");
    let out = work.path().join("b.tar.zst");
    for (damage, why) in [("corrupt", "hashes to"), ("truncate", "bytes, expected")] {
        let hostile = tempfile::tempdir().unwrap();
        hardlink_copy(root, hostile.path());
        let data =
            Store::open(hostile.path()).path(ferry::store::paths::PathSpec::BlobData(&layer));
        let mut bytes = std::fs::read(&data).unwrap();
        std::fs::remove_file(&data).unwrap(); // break the hardlink before changing content
        match damage {
            "corrupt" => bytes[1000] ^= 0xff,
            _ => bytes.truncate(bytes.len() / 2),
        }
        std::fs::write(&data, bytes).unwrap();
        let server = FerryServe::start(hostile.path());
        let res = run(&mut bundle_cmd(&list, &out, &cache, &server.addr));
        assert_eq!(res.status.code(), Some(1), "{damage}");
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(
            stderr.lines().next().unwrap().contains(&img.repository) && stderr.contains(why),
            "{damage}: {stderr}"
        );
        assert!(!out.exists());
        assert!(
            !Store::open(&cache).has_blob(&layer),
            "{damage}: no partial blob in the cache"
        );
        assert_eq!(
            std::fs::read_dir(cache.join(".ferry-tmp")).unwrap().count(),
            0,
            "{damage}: no temp file left"
        );
    }
    let (_src_dir, src) = source();
    let res = json(&run_ok(
        bundle_cmd(&list, &out, &cache, &src.addr).arg("--json"),
    ));
    assert!(res["blobs_downloaded"].as_u64().unwrap() >= 1);
    assert!(out.exists());
}

#[test]
fn killed_bundle_resumes_and_downloads_only_what_was_missing() {
    let (root, corpus) = small();
    // The plan's config and layer blobs (manifests are cached too but not counted).
    let planned: BTreeSet<Digest> = corpus
        .images
        .iter()
        .flat_map(|i| blobs_of(root, &i.digest, false))
        .collect();
    let size = |d: &Digest| Store::open(root).blob_size(d).unwrap().unwrap();
    let (_src_dir, src) = source();
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, corpus.images_list()).unwrap();
    let cache = work.path().join("cache");
    let out = work.path().join("b.tar.zst");
    let mut child = bundle_cmd(&list, &out, &cache, &src.addr)
        .args(["--jobs", "1"])
        .spawn()
        .unwrap();
    let blobs_dir = cache.join("docker/registry/v2/blobs/sha256");
    let count = || walk_count(&blobs_dir);
    let start = std::time::Instant::now();
    while count() < 30 && start.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed before it finished");
    assert!(!out.exists());
    // What the killed run left complete in the cache (blobs are renamed into
    // place whole; its temp files are not blobs).
    let cached: BTreeSet<Digest> = planned
        .iter()
        .filter(|d| Store::open(&cache).has_blob(d))
        .cloned()
        .collect();
    let missing: BTreeSet<Digest> = planned.difference(&cached).cloned().collect();
    let res = json(&run_ok(
        bundle_cmd(&list, &out, &cache, &src.addr).arg("--json"),
    ));
    let total = res["blobs"].as_u64().unwrap();
    let downloaded = res["blobs_downloaded"].as_u64().unwrap();
    assert!(
        downloaded > 0 && downloaded < total,
        "downloaded {downloaded} of {total}"
    );
    assert_eq!(total, planned.len() as u64);
    assert_eq!(downloaded, missing.len() as u64, "only what was missing");
    assert_eq!(
        res["bytes_downloaded"].as_u64().unwrap(),
        missing.iter().map(size).sum::<u64>()
    );
    assert_eq!(res["blobs_reused"].as_u64().unwrap(), cached.len() as u64);
    assert_eq!(
        res["bytes_reused"].as_u64().unwrap(),
        cached.iter().map(size).sum::<u64>()
    );
    assert_eq!(
        entries(work.path()),
        ["b.tar.zst", "cache", "list.txt"],
        "the killed run's temp file is gone"
    );
    let report = run_ok(ferry().arg("verify").arg(&cache));
    assert!(String::from_utf8_lossy(&report.stdout).contains(" 0 faults"));
}

fn walk_count(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| std::fs::read_dir(e.path()).map(|r| r.count()).unwrap_or(0))
        .sum()
}

#[test]
fn sections_select_and_same_names_from_two_hosts_clash_unless_keep_host() {
    let (root, corpus) = small();
    let (tiny_dir, tiny) = tiny();
    let a = FerryServe::start(root);
    let b = FerryServe::start(tiny_dir.path());
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");

    // --section: only those sections; an unknown one is an error before anything is fetched.
    let list = work.path().join("list.txt");
    std::fs::write(&list, corpus.images_list()).unwrap();
    let out = work.path().join("s.tar.zst");
    let res = run(bundle_cmd(&list, &out, &cache, &a.addr).args(["--section", "section-1"]));
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let index = ferry::bundle::read_index(&out).unwrap();
    let want = corpus
        .images
        .iter()
        .filter(|i| i.section == "section-1")
        .count();
    assert!(want > 0 && index.images.len() == want);
    assert!(
        index
            .images
            .iter()
            .all(|i| i.section.as_deref() == Some("section-1"))
    );
    let res = run(bundle_cmd(
        &list,
        &work.path().join("x.tar.zst"),
        &work.path().join("cache2"),
        &a.addr,
    )
    .args(["--section", "nope"]));
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stderr).contains("--section nope: no such section"));
    assert!(!work.path().join("cache2").exists(), "nothing fetched");

    // The same name:tag from two hosts with other content.
    let same = clashing_image(corpus, &tiny);
    let two = work.path().join("two.txt");
    std::fs::write(
        &two,
        format!(
            "{0}/{2}:{3}\n{1}/{2}:{3}\n",
            a.addr, b.addr, same.repository, same.tag
        ),
    )
    .unwrap();
    let res = run(&mut bundle_cmd(
        &two,
        &work.path().join("c.tar.zst"),
        &cache,
        &a.addr,
    ));
    assert_eq!(res.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains("--keep-host") && stderr.contains(&b.addr),
        "{stderr}"
    );
    assert!(!work.path().join("c.tar.zst").exists());
    let kept = work.path().join("k.tar.zst");
    run_ok(bundle_cmd(&two, &kept, &cache, &a.addr).arg("--keep-host"));
    let index = ferry::bundle::read_index(&kept).unwrap();
    let names: Vec<String> = index.images.iter().map(|i| i.repository.clone()).collect();
    assert_eq!(
        names,
        [
            format!("{}/{}", a.addr.replace(':', "_"), same.repository),
            format!("{}/{}", b.addr.replace(':', "_"), same.repository)
        ]
    );
}

#[test]
fn a_tls_registry_is_verified_unless_told_otherwise() {
    require("openssl");
    let (root, corpus) = small();
    let work = tempfile::tempdir().unwrap();
    let (cert, key) = (work.path().join("cert.pem"), work.path().join("key.pem"));
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    let reg_root = work.path().join("root");
    std::fs::create_dir(&reg_root).unwrap();
    hardlink_copy(root, &reg_root);
    let reg = Registry::start_with_tls(&reg_root, Some((&cert, &key)));
    let img = corpus
        .images
        .iter()
        .find(|i| i.platforms.is_empty())
        .unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, format!("{}:{}\n", img.repository, img.tag)).unwrap();
    let bundle = |verify: &str, out: &str| {
        run(ferry()
            .env("FERRY_TEST_NO_RETRY_DELAY", "1")
            .args([
                "bundle",
                "-q",
                "--source",
                &reg.addr,
                &format!("--src-tls-verify={verify}"),
                "-f",
            ])
            .arg(&list)
            .arg("-o")
            .arg(work.path().join(out))
            .arg("--cache")
            .arg(work.path().join("cache")))
    };
    // A self-signed certificate is refused by default, in one line naming the image.
    let out = bundle("true", "a.tar.zst");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().next().unwrap().contains(&img.repository)
            && stderr.to_lowercase().contains("certificate"),
        "{stderr}"
    );
    // --src-tls-verify=false still speaks TLS to a TLS registry (it has no plain-HTTP port), without verifying.
    let out = bundle("false", "b.tar.zst");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ferry::bundle::read_index(&work.path().join("b.tar.zst"))
            .unwrap()
            .images[0]
            .digest,
        img.digest
    );
}

#[test]
fn root_dir_holds_only_the_bundle_even_when_the_cache_has_more() {
    let (_root, corpus) = small();
    let (_src_dir, src) = source();
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("images-list.txt");
    std::fs::write(&list, corpus.images_list()).unwrap();
    let cache = work.path().join("cache");
    // A first run keeps every platform, so the cache holds children the second run leaves out.
    run_ok(
        bundle_cmd(&list, &work.path().join("all.tar.zst"), &cache, &src.addr)
            .arg("--all-platforms"),
    );
    let out = work.path().join("amd64.tar.zst");
    let kept_root = work.path().join("root");
    run_ok(
        bundle_cmd(&list, &out, &cache, &src.addr)
            .arg("--root-dir")
            .arg(&kept_root),
    );
    let site = work.path().join("site");
    extract_bundle(&out, &site);
    assert_eq!(
        tree_hash(&kept_root, "docker"),
        tree_hash(&site, "docker"),
        "--root-dir holds exactly what the bundle holds"
    );
}

// A warm run copies into the cache only the images that lack a blob there, and many tags of one
// image are one copy: the bundle is the same bytes whether the cache was full, short of one
// blob, or empty, and only the missing blob is downloaded.
#[test]
fn a_warm_run_fetches_only_the_missing_blob_and_packs_the_same_bytes() {
    let (root, corpus) = small();
    let (_src_dir, src) = source();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let img = corpus
        .images
        .iter()
        .find(|i| i.platforms.is_empty())
        .unwrap();
    // Three more tags of one image, pushed to the source under a repository of their own (a new
    // repository's links are new files: the corpus' hardlinked ones are never rewritten).
    let many = format!("many/{}", img.repository);
    for t in ["again-1", "again-2", "again-3"] {
        run_ok(ferry().args([
            "copy",
            "-q",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{}/{}:{}", src.addr, img.repository, img.tag),
            &format!("docker://{}/{many}:{t}", src.addr),
        ]));
    }
    let list = work.path().join("list.txt");
    std::fs::write(
        &list,
        format!(
            "{}{many}:again-1\n{many}:again-2\n{many}:again-3\n",
            corpus.images_list(),
        ),
    )
    .unwrap();
    let all: BTreeSet<Digest> = corpus
        .images
        .iter()
        .flat_map(|i| blobs_of(root, &i.digest, false))
        .collect();
    let run = |out: &str| {
        let path = work.path().join(out);
        let r = json(&run_ok(
            bundle_cmd(&list, &path, &cache, &src.addr).arg("--json"),
        ));
        (r, std::fs::read(&path).unwrap())
    };
    let (cold, first) = run("cold.tar.zst");
    assert_eq!(cold["images"], corpus.images.len() + 3);
    assert_eq!(cold["blobs_downloaded"], all.len(), "each blob once");
    let (warm, bytes) = run("warm.tar.zst");
    assert_eq!(warm["blobs_downloaded"], 0);
    assert!(bytes == first, "a warm run packs the same bytes");
    // One layer of the many-tagged image leaves the cache: that blob alone comes again.
    let gone = blobs_of(root, &img.digest, false).pop_last().unwrap();
    std::fs::remove_file(Store::open(&cache).path(ferry::store::paths::PathSpec::BlobData(&gone)))
        .unwrap();
    let (short, bytes) = run("short.tar.zst");
    assert_eq!(short["blobs_downloaded"], 1, "{short}");
    assert!(short["bytes_downloaded"].as_u64().unwrap() > 0, "{short}");
    assert!(bytes == first, "the same bytes when one blob came again");
    let site = work.path().join("site");
    extract_bundle(&work.path().join("short.tar.zst"), &site);
    let reg = Registry::start(&site);
    let names = [format!("{}:{}", img.repository, img.tag)]
        .into_iter()
        .chain(["again-1", "again-2", "again-3"].map(|t| format!("{many}:{t}")));
    for t in names {
        assert_eq!(
            inspect_digest(&format!("docker://{}/{t}", reg.addr)),
            img.digest.to_string(),
            "{t}"
        );
    }
}

// A new cache cannot hold a manifest, so a HEAD per tag spares nothing: each tag is resolved with
// one manifest GET, and no manifest is fetched twice. A warm cache still asks with one HEAD per
// tag (tags move) and downloads nothing.
#[test]
fn a_new_cache_resolves_each_tag_with_one_get_and_a_warm_one_with_one_head() {
    let (root, corpus) = small();
    let (_dir, src) = logged_registry(Some(root));
    let work = tempfile::tempdir().unwrap();
    let (list, cache) = (work.path().join("list.txt"), work.path().join("cache"));
    std::fs::write(&list, corpus.images_list()).unwrap();
    let by_tag: BTreeSet<String> = corpus
        .images
        .iter()
        .map(|i| format!("/v2/{}/manifests/{}", i.repository, i.tag))
        .collect();
    let manifests = |reqs: &[(String, String)], method: &str| -> Vec<String> {
        reqs.iter()
            .filter(|(m, u)| m == method && u.contains("/manifests/"))
            .map(|(_, u)| u.clone())
            .collect()
    };
    run_ok(&mut bundle_cmd(
        &list,
        &work.path().join("cold.tar.zst"),
        &cache,
        &src.addr,
    ));
    let cold = src.settled_requests();
    assert!(!cold.is_empty(), "the registry logs its requests");
    assert_eq!(
        manifests(&cold, "HEAD"),
        Vec::<String>::new(),
        "no HEAD into a new cache"
    );
    let gets = manifests(&cold, "GET");
    let tags: BTreeSet<String> = gets
        .iter()
        .filter(|u| !u.contains("@") && !u.contains("/manifests/sha256:"))
        .cloned()
        .collect();
    assert_eq!(tags, by_tag, "each tag by one GET");
    assert_eq!(
        gets.len(),
        gets.iter().collect::<BTreeSet<_>>().len(),
        "no manifest fetched twice: {gets:?}"
    );
    // Only children come by digest: every top manifest came with its tag.
    for img in &corpus.images {
        assert!(
            !gets
                .iter()
                .any(|u| u.ends_with(&format!("/manifests/{}", img.digest))),
            "{} fetched again by digest",
            img.digest
        );
    }

    run_ok(&mut bundle_cmd(
        &list,
        &work.path().join("warm.tar.zst"),
        &cache,
        &src.addr,
    ));
    let all = src.settled_requests();
    let warm = &all[cold.len()..];
    let heads: BTreeSet<String> = manifests(warm, "HEAD").into_iter().collect();
    assert_eq!(heads, by_tag, "a warm run asks each tag with a HEAD");
    assert_eq!(manifests(warm, "HEAD").len(), by_tag.len());
    assert!(
        warm.iter().all(|(m, u)| m == "HEAD" || u == "/v2/"),
        "a warm run fetches nothing: {warm:?}"
    );
}

#[test]
fn blobs_move_while_later_tags_are_resolved_each_once_and_the_bundle_is_the_same() {
    let (root, corpus) = small();
    let (_dir, src) = logged_registry(Some(root));
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, corpus.images_list()).unwrap();
    let last = corpus.images.last().unwrap();
    let last_tag = format!("/v2/{}/manifests/{}", last.repository, last.tag);
    let early = work.path().join("early.tar.zst");
    // The last entry is resolved a second after the others: the blobs of those move meanwhile.
    let res = json(&run_ok(
        bundle_cmd(&list, &early, &work.path().join("cache"), &src.addr)
            .arg("--json")
            .env(ferry::limits::ENV_PLAN_PAUSE_MS, "1000"),
    ));
    let reqs = src.settled_requests();
    let at = |want: &str| reqs.iter().position(|(m, u)| m == "GET" && u == want);
    let last_at = at(&last_tag).expect("the last tag was asked");
    let blobs: Vec<&str> = reqs
        .iter()
        .filter(|(m, u)| m == "GET" && u.contains("/blobs/"))
        .map(|(_, u)| u.as_str())
        .collect();
    assert!(
        reqs[..last_at].iter().any(|(_, u)| u.contains("/blobs/")),
        "no blob moved before the last tag was resolved: {reqs:?}"
    );
    // Each blob once, though both the early downloads and the copy after the plan want it.
    let digests: BTreeSet<&str> = blobs
        .iter()
        .map(|u| u.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        blobs.len(),
        digests.len(),
        "a blob fetched twice: {blobs:?}"
    );
    assert_eq!(digests.len() as u64, res["blobs"].as_u64().unwrap());
    assert_eq!(res["blobs_downloaded"], res["blobs"]);
    assert_eq!(res["bytes_downloaded"], res["blob_bytes"]);
    assert_eq!(res["blobs_reused"].as_u64(), Some(0));
    // One connection starts nothing early: the same bundle, byte for byte.
    let plain = work.path().join("plain.tar.zst");
    run_ok(
        bundle_cmd(&list, &plain, &work.path().join("cache-1"), &src.addr).args(["--jobs", "1"]),
    );
    assert!(std::fs::read(&early).unwrap() == std::fs::read(&plain).unwrap());
    let report = run_ok(ferry().arg("verify").arg(work.path().join("cache")));
    assert!(String::from_utf8_lossy(&report.stdout).contains(" 0 faults"));
}
