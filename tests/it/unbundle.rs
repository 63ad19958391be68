//! The site side: `unbundle serve` in place, `unbundle link` into a running
//! registry, `ls`/`verify` of bundle files, and hostile bundles refused.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ferry::digest::Digest;
use ferry::store::Store;
use ferry::store::paths::PathSpec;

use crate::harness::*;

/// Bundles of the `small` corpus, made once per run: (all platforms zstd, all platforms plain tar, list).
pub fn bundles() -> &'static (PathBuf, PathBuf) {
    static B: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    B.get_or_init(|| {
        let (root, corpus) = small();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("small-bundles");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let list = dir.join("list.txt");
        std::fs::write(&list, corpus.images_list()).unwrap();
        let server = FerryServe::start(root);
        let make = |name: &str, extra: &[&str]| {
            let out = dir.join(name);
            run_ok(
                ferry()
                    .args([
                        "bundle",
                        "-q",
                        "--all-platforms",
                        "--src-tls-verify=false",
                        "--source",
                        &server.addr,
                        "-f",
                    ])
                    .arg(&list)
                    .arg("-o")
                    .arg(&out)
                    .arg("--cache")
                    .arg(dir.join("cache"))
                    .args(extra),
            );
            out
        };
        (
            make("small.tar.zst", &[]),
            make("small.tar", &["--compression", "none"]),
        )
    })
}

/// `ferry unbundle serve` on a random port.
fn unbundle_serve(sources: &[&Path]) -> FerryServe {
    FerryServe::start_with(
        &[
            &["unbundle", "serve"][..],
            &sources
                .iter()
                .map(|p| p.to_str().unwrap())
                .collect::<Vec<_>>(),
        ]
        .concat(),
    )
}

#[test]
fn serve_in_place_zstd_and_plain() {
    let (root, corpus) = small();
    let (zst, plain) = bundles();
    let store = Store::open(root);
    for bundle in [zst, plain] {
        let server = unbundle_serve(&[bundle]);
        let work = tempfile::tempdir().unwrap();
        for img in &corpus.images {
            let name = format!("{}:{}", img.repository, img.tag);
            let digest_at = inspect_digest(&format!("docker://{}/{name}", server.addr));
            assert_eq!(
                digest_at,
                img.digest.to_string(),
                "{name} from {}",
                bundle.display()
            );
            skopeo_ok(&[
                "copy",
                "-q",
                "--all",
                "--src-tls-verify=false",
                &format!("docker://{}/{name}", server.addr),
                &format!("oci:{}:{}", work.path().join("oci").display(), img.tag),
            ]);
        }
        // A range of the largest blob, straight from the compressed file.
        let img = corpus
            .images
            .iter()
            .find(|i| i.platforms.is_empty())
            .unwrap();
        let m = store.read_manifest(&img.digest).unwrap().parse().unwrap();
        let layer = m
            .blobs()
            .into_iter()
            .max_by_key(|b| b.size)
            .unwrap()
            .clone();
        let full = std::fs::read(store.path(PathSpec::BlobData(&layer.digest))).unwrap();
        let path = format!("/v2/{}/blobs/{}", img.repository, layer.digest);
        let (status, _, body) = http(
            &server.addr,
            "GET",
            &path,
            &[("Range", "bytes=4000000-4100000")],
        )
        .unwrap();
        assert_eq!(status, 206);
        assert_eq!(body, &full[4_000_000..=4_100_000.min(full.len() - 1)]);
        let (status, _, body) = http(&server.addr, "GET", &path, &[]).unwrap();
        assert_eq!((status, sha256(&body)), (200, layer.digest.to_string()));
        let status = server.stop().expect("stops on SIGTERM");
        assert!(status.success());
    }
}

#[test]
fn two_bundles_merge_into_one_registry() {
    let (_, corpus) = small();
    let (zst, _) = bundles();
    let (tiny_dir, tiny) = tiny();
    let src = FerryServe::start(tiny_dir.path());
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    let only_tiny = tiny
        .images
        .iter()
        .find(|t| {
            !corpus
                .images
                .iter()
                .any(|c| c.repository == t.repository && c.tag == t.tag)
        })
        .unwrap();
    std::fs::write(
        &list,
        format!("{}:{}\n", only_tiny.repository, only_tiny.tag),
    )
    .unwrap();
    let second = work.path().join("tiny.tar.zst");
    run_ok(&mut bundle_cmd(
        &list,
        &second,
        &work.path().join("cache"),
        &src.addr,
    ));
    let server = unbundle_serve(&[zst, &second]);
    for (repo, tag, digest) in [
        (
            &corpus.images[0].repository,
            &corpus.images[0].tag,
            &corpus.images[0].digest,
        ),
        (&only_tiny.repository, &only_tiny.tag, &only_tiny.digest),
    ] {
        let digest_at = inspect_digest(&format!("docker://{}/{repo}:{tag}", server.addr));
        assert_eq!(digest_at, digest.to_string());
    }
}

#[test]
fn link_into_a_running_registry_then_again_changes_nothing() {
    let (root, corpus) = small();
    let (zst, _) = bundles();
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("registry");
    std::fs::create_dir(&target).unwrap();
    let reg = Registry::start(&target);
    // The registry already holds some images (pushed by skopeo), sharing blobs with the bundle.
    let source = FerryServe::start(root);
    let (tiny_dir, tiny) = tiny();
    let tiny_src = FerryServe::start(tiny_dir.path());
    for (addr, img) in [
        (&source.addr, &corpus.images[1]),
        (&tiny_src.addr, &tiny.images[1]),
    ] {
        skopeo_ok(&[
            "copy",
            "-q",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{addr}/{}:{}", img.repository, img.tag),
            &format!("docker://{}/old/{}:{}", reg.addr, img.repository, img.tag),
        ]);
    }
    let old_digest = |img: &ferry::fixtures::FixtureImage| {
        inspect_digest(&format!(
            "docker://{}/old/{}:{}",
            reg.addr, img.repository, img.tag
        ))
    };
    let old_before: Vec<String> = [&corpus.images[1], &tiny.images[1]]
        .into_iter()
        .map(old_digest)
        .collect();
    let out = run_ok(
        ferry()
            .args(["unbundle", "link", "--json"])
            .arg(zst)
            .arg("--root")
            .arg(&target),
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        s["blobs_present"].as_u64().unwrap() > 0,
        "blobs shared with what the registry had: {s}"
    );
    assert_eq!(s["tags"].as_array().unwrap().len(), corpus.images.len());
    for img in &corpus.images {
        let digest_at = inspect_digest(&format!(
            "docker://{}/{}:{}",
            reg.addr, img.repository, img.tag
        ));
        assert_eq!(digest_at, img.digest.to_string());
        let dest = work.path().join("pulled");
        let _ = std::fs::remove_dir_all(&dest);
        skopeo_ok(&[
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{}/{}:{}", reg.addr, img.repository, img.tag),
            &format!("dir:{}", dest.display()),
        ]);
    }
    let old_after: Vec<String> = [&corpus.images[1], &tiny.images[1]]
        .into_iter()
        .map(old_digest)
        .collect();
    assert_eq!(
        old_after, old_before,
        "the images the registry had are still served"
    );
    let (blobs, manifests, text) = reg.gc_dry_run();
    assert_eq!((blobs, manifests), (0, 0), "{text}");

    let tree = |dir: &Path| tree_hash(dir, ".");
    let before = tree(&target);
    let out = run_ok(
        ferry()
            .args(["unbundle", "link", "--json"])
            .arg(zst)
            .arg("--root")
            .arg(&target),
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["blobs_added"], 0);
    assert!(
        s["tags"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["old"] == t["new"]),
        "{s}"
    );
    assert_eq!(tree(&target), before, "a re-run is a no-op");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .filter(|l| l.contains(": unchanged, sha256:"))
            .count()
            == corpus.images.len(),
        "{stderr}"
    );
}

#[test]
fn no_clobber_refuses_to_move_a_tag_and_nothing_is_written() {
    let (_, corpus) = small();
    let (zst, _) = bundles();
    let (tiny_dir, tiny) = tiny();
    // A bundle where a tag the target has points elsewhere (tiny's busybox differs from small's).
    let clash = clashing_image(corpus, &tiny);
    let src = FerryServe::start(tiny_dir.path());
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, format!("{}:{}\n", clash.repository, clash.tag)).unwrap();
    let other = work.path().join("other.tar.zst");
    run_ok(&mut bundle_cmd(
        &list,
        &other,
        &work.path().join("cache"),
        &src.addr,
    ));
    let target = work.path().join("root");
    run_ok(
        ferry()
            .args(["unbundle", "link", "-q"])
            .arg(zst)
            .arg("--root")
            .arg(&target),
    );
    let before = Store::open(&target)
        .resolve_tag(&clash.repository, &clash.tag)
        .unwrap()
        .unwrap();
    let out = run(ferry()
        .args(["unbundle", "link", "--no-clobber"])
        .arg(&other)
        .arg("--root")
        .arg(&target));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("refusing to move it (--no-clobber)")
            && stderr.contains(&clash.digest.to_string()),
        "{stderr}"
    );
    assert_eq!(
        Store::open(&target)
            .resolve_tag(&clash.repository, &clash.tag)
            .unwrap()
            .unwrap(),
        before
    );
    assert!(
        !Store::open(&target).has_blob(&clash.digest),
        "nothing written"
    );
    // Without --no-clobber the tag moves, and the move is reported.
    let out = run_ok(
        ferry()
            .args(["unbundle", "link"])
            .arg(&other)
            .arg("--root")
            .arg(&target),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:{}: moved {before} -> {}",
            clash.repository, clash.tag, clash.digest
        )),
        "{stderr}"
    );
}

#[test]
fn ls_and_verify_read_bundle_files() {
    let (_, corpus) = small();
    let (zst, plain) = bundles();
    for b in [zst, plain] {
        let out = run_ok(ferry().arg("ls").arg("--json").arg(b));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().count(),
            corpus.images.len()
        );
        let out = run_ok(ferry().arg("verify").arg(b));
        assert!(String::from_utf8_lossy(&out.stdout).contains(" 0 faults"));
    }
}

/// A tar with a minimal index first, then the given entries (built with the tar crate, as an attacker could).
fn hostile_tar(
    dir: &Path,
    name: &str,
    blobs: &[(Digest, u64)],
    entries: &[(&str, tar::EntryType, &[u8], Option<&str>)],
) -> PathBuf {
    let index = serde_json::json!({
        "format": "ferry-bundle/v1", "created_by": "test", "source_date_epoch": 0, "images": [],
        "blob_count": blobs.len(), "blob_bytes": 0,
        "blobs": blobs.iter().map(|(d, s)| serde_json::json!({ "digest": d, "size": s })).collect::<Vec<_>>(),
    });
    let path = dir.join(name);
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let bytes = serde_json::to_vec(&index).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "ferry-bundle.json", bytes.as_slice())
        .unwrap();
    for (p, kind, content, target) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        if let Some(t) = target {
            h.set_link_name(t).unwrap();
        }
        if p.len() <= 100 {
            // The raw name, so `..` and absolute paths reach the archive as an attacker would write them.
            let name = p.as_bytes();
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, *content).unwrap();
        } else {
            b.append_data(&mut h, p, *content).unwrap();
        }
    }
    b.into_inner().unwrap();
    path
}

#[test]
fn hostile_bundles_are_refused_and_leave_nothing() {
    let (_, plain) = bundles();
    let work = tempfile::tempdir().unwrap();
    let d = Digest::sha256_of(b"payload");
    let blob_path = format!(
        "docker/registry/v2/blobs/sha256/{}/{}/data",
        &d.hex()[..2],
        d.hex()
    );
    let reg = tar::EntryType::Regular;
    // Each case links into its own root two levels below `work`, so the
    // traversal entry, if a guard failed, would land inside `work`.
    const TRAVERSAL: &str = "../../escaped";
    let target_of = |what: &str| {
        work.path()
            .join("roots")
            .join(format!("target-{}", what.replace(' ', "-")))
    };
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "traversal",
            hostile_tar(work.path(), "t1.tar", &[], &[(TRAVERSAL, reg, b"x", None)]),
            "not a file of the registry layout",
        ),
        (
            "absolute",
            hostile_tar(
                work.path(),
                "t2.tar",
                &[],
                &[("/tmp/ferry-escaped", reg, b"x", None)],
            ),
            "not a file of the registry layout",
        ),
        (
            "symlink",
            hostile_tar(
                work.path(),
                "t3.tar",
                &[(d.clone(), 7)],
                &[(
                    &blob_path,
                    tar::EntryType::Symlink,
                    b"",
                    Some("/etc/passwd"),
                )],
            ),
            "a symbolic link",
        ),
        (
            "hardlink",
            hostile_tar(
                work.path(),
                "t4.tar",
                &[(d.clone(), 7)],
                &[(&blob_path, tar::EntryType::Link, b"", Some("/etc/passwd"))],
            ),
            "a hard link",
        ),
        (
            "device",
            hostile_tar(
                work.path(),
                "t5.tar",
                &[],
                &[("docker/registry/v2/null", tar::EntryType::Char, b"", None)],
            ),
            "a device file",
        ),
        (
            "wrong bytes",
            hostile_tar(
                work.path(),
                "t6.tar",
                &[(d.clone(), 7)],
                &[(&blob_path, reg, b"PAYLOAD", None)],
            ),
            "content hashes to",
        ),
        (
            "index lies about a size",
            hostile_tar(
                work.path(),
                "t7.tar",
                &[(d.clone(), 8)],
                &[(&blob_path, reg, b"payload", None)],
            ),
            "has 8 bytes, the archive has 7",
        ),
        (
            "unlisted blob",
            hostile_tar(
                work.path(),
                "t8.tar",
                &[],
                &[(&blob_path, reg, b"payload", None)],
            ),
            "is not listed in ferry-bundle.json",
        ),
        (
            "index lists more",
            hostile_tar(
                work.path(),
                "t9.tar",
                &[(d.clone(), 7), (Digest::sha256_of(b"other"), 5)],
                &[(&blob_path, reg, b"payload", None)],
            ),
            "which the archive does not hold",
        ),
    ];
    // A real bundle cut in half.
    let bytes = std::fs::read(plain).unwrap();
    let truncated = work.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let mut cases = cases;
    cases.push(("truncated", truncated, "truncated"));
    for (what, bundle, why) in &cases {
        let target = target_of(what);
        let out = run(ferry()
            .args(["unbundle", "link"])
            .arg(bundle)
            .arg("--root")
            .arg(&target));
        assert_eq!(out.status.code(), Some(1), "{what}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
        assert!(stderr.contains(why), "{what}: {stderr}");
        // Nothing a registry would serve: no repository, no tag.
        let ls = run_ok(ferry().arg("ls").arg(&target));
        assert!(
            ls.stdout.is_empty(),
            "{what}: {}",
            String::from_utf8_lossy(&ls.stdout)
        );
        assert!(
            Store::open(&target).repositories().unwrap().is_empty(),
            "{what}"
        );
        // The other readers refuse it too.
        let out = run(ferry().arg("verify").arg(bundle));
        assert_eq!(out.status.code(), Some(1), "verify {what}");
        let out = run(ferry()
            .args(["unbundle", "serve", "--listen", "127.0.0.1:0"])
            .arg(bundle));
        assert_eq!(out.status.code(), Some(1), "serve {what}");
    }
    // Where the traversal entry would have been written: its root joined with
    // the entry path, `..` components followed.
    let root = target_of("traversal");
    let mut escaped = PathBuf::new();
    for c in root.join(TRAVERSAL).components() {
        match c {
            std::path::Component::ParentDir => assert!(escaped.pop()),
            c => escaped.push(c),
        }
    }
    assert_eq!(escaped, work.path().join("escaped"));
    assert!(escaped.starts_with(work.path()) && !escaped.starts_with(&root));
    assert!(!escaped.exists(), "{} was written", escaped.display());
    assert!(!root.join(TRAVERSAL).exists());
    // The absolute entry: as joined (replacing the root) and with its `/` stripped.
    assert!(!Path::new("/tmp/ferry-escaped").exists());
    assert!(!target_of("absolute").join("tmp/ferry-escaped").exists());
}

/// Config and layer digests of an image, every platform present in `root`.
fn blob_set(root: &Path, digest: &Digest) -> std::collections::BTreeSet<Digest> {
    let store = Store::open(root);
    let m = store.read_manifest(digest).unwrap().parse().unwrap();
    let mut out: std::collections::BTreeSet<Digest> =
        m.blobs().into_iter().map(|b| b.digest.clone()).collect();
    for c in m.children() {
        out.extend(blob_set(root, &c.digest));
    }
    out
}

fn push(bundle: &Path, dest: &str, extra: &[&str]) -> std::process::Output {
    run(ferry()
        .env("FERRY_TEST_NO_RETRY_DELAY", "1")
        .args([
            "unbundle",
            "push",
            "--json",
            "--dest-tls-verify=false",
            "--dest",
            dest,
        ])
        .arg(bundle)
        .args(extra))
}

#[test]
fn push_preserves_digests_and_uploads_only_what_is_missing() {
    let (root, corpus) = small();
    let src = FerryServe::start(root);
    let work = tempfile::tempdir().unwrap();
    // Two bundles: the first half of the images, and all of them.
    let half = &corpus.images[..10];
    let make = |name: &str, imgs: &[ferry::fixtures::FixtureImage]| {
        let list = work.path().join(format!("{name}.txt"));
        std::fs::write(
            &list,
            imgs.iter()
                .map(|i| format!("{}:{}\n", i.repository, i.tag))
                .collect::<String>(),
        )
        .unwrap();
        let out = work.path().join(format!("{name}.tar.zst"));
        run_ok(
            ferry()
                .args([
                    "bundle",
                    "-q",
                    "--all-platforms",
                    "--src-tls-verify=false",
                    "--source",
                    &src.addr,
                    "-f",
                ])
                .arg(&list)
                .arg("-o")
                .arg(&out)
                .arg("--cache")
                .arg(work.path().join("cache")),
        );
        out
    };
    let (half_bundle, full_bundle) = (make("half", half), make("full", &corpus.images));
    let target_root = work.path().join("target");
    std::fs::create_dir(&target_root).unwrap();
    let reg = Registry::start(&target_root);
    let dest = format!("{}/proj", reg.addr);

    let first = push(&half_bundle, &dest, &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = push(&full_bundle, &dest, &[]);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    let have: std::collections::BTreeSet<Digest> = half
        .iter()
        .flat_map(|i| blob_set(root, &i.digest))
        .collect();
    let need: std::collections::BTreeSet<Digest> = corpus
        .images
        .iter()
        .flat_map(|i| blob_set(root, &i.digest))
        .collect();
    let missing = need.difference(&have).count();
    assert_eq!(
        s["blobs_uploaded"], missing,
        "only the missing blobs are uploaded: {s}"
    );
    assert!(s["blobs_present"].as_u64().unwrap() > 0);
    for img in &corpus.images {
        let digest_at = inspect_digest(&format!(
            "docker://{}/proj/{}:{}",
            reg.addr, img.repository, img.tag
        ));
        assert_eq!(digest_at, img.digest.to_string(), "{}", img.repository);
    }
    let (blobs, manifests, text) = reg.gc_dry_run();
    assert_eq!((blobs, manifests), (0, 0), "{text}");
}

#[test]
fn a_sparse_index_is_refused_with_the_ways_out_and_rewritten_on_request() {
    let (root, corpus) = small();
    let src = FerryServe::start(root);
    let work = tempfile::tempdir().unwrap();
    let multi = corpus
        .images
        .iter()
        .find(|i| !i.platforms.is_empty())
        .unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, format!("{}:{}\n", multi.repository, multi.tag)).unwrap();
    let bundle = work.path().join("sparse.tar.zst");
    run_ok(&mut bundle_cmd(
        &list,
        &bundle,
        &work.path().join("cache"),
        &src.addr,
    ));
    let target = work.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let reg = Registry::start(&target);
    let out = push(&bundle, &reg.addr, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().next().unwrap().contains(&multi.repository)
            && stderr.contains("--all-platforms")
            && stderr.contains("--rewrite-sparse-index"),
        "{stderr}"
    );
    let out = push(&bundle, &reg.addr, &["--rewrite-sparse-index"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pushed = s["rewritten"][0]["pushed"].as_str().unwrap().to_string();
    assert_eq!(s["rewritten"][0]["original"], multi.digest.to_string());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("pushed as {pushed}")));
    let digest_at = inspect_digest(&format!(
        "docker://{}/{}:{}",
        reg.addr, multi.repository, multi.tag
    ));
    assert_eq!(
        digest_at, pushed,
        "the tag points at the rewritten index, as reported"
    );
    let amd64 = &multi
        .platforms
        .iter()
        .find(|(p, _)| p == "linux/amd64")
        .unwrap()
        .1;
    let dir = work.path().join("pulled");
    skopeo_ok(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        &format!("docker://{}/{}:{}", reg.addr, multi.repository, multi.tag),
        &format!("dir:{}", dir.display()),
    ]);
    assert_eq!(
        sha256(&std::fs::read(dir.join("manifest.json")).unwrap()),
        amd64.to_string()
    );
}

#[test]
fn serve_dir_unpacks_verified_then_serves_the_root() {
    let (_, corpus) = small();
    let (zst, _) = bundles();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("site");
    let server = FerryServe::start_with(&[
        "unbundle",
        "serve",
        zst.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
    ]);
    for img in &corpus.images {
        let digest_at = inspect_digest(&format!(
            "docker://{}/{}:{}",
            server.addr, img.repository, img.tag
        ));
        assert_eq!(digest_at, img.digest.to_string());
    }
    drop(server);
    let out = run_ok(ferry().arg("verify").arg(&dir));
    assert!(String::from_utf8_lossy(&out.stdout).contains(" 0 faults"));
}

/// Blob data files under a root (none when it does not exist).
fn data_files(root: &Path) -> usize {
    if !root.exists() {
        return 0;
    }
    files(root).keys().filter(|k| k.ends_with("/data")).count()
}

#[test]
fn a_link_that_fails_takes_back_its_links_and_only_the_blobs_nothing_links() {
    let (_, corpus) = small();
    let (zst, _) = bundles();
    let work = tempfile::tempdir().unwrap();
    let link = |bundle: &Path, root: &Path, env: &[(&str, &str)]| {
        let mut c = ferry();
        for (k, v) in env {
            c.env(k, v);
        }
        c.args(["unbundle", "link", "-q"])
            .arg(bundle)
            .arg("--root")
            .arg(root);
        c
    };
    let one_line = |out: &std::process::Output, what: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
        assert!(
            err.contains("test hook") || err.contains("\"test-hook\""),
            "{what}: {err}"
        );
    };
    let no_tags = |root: &Path, what: &str| {
        let store = Store::open(root);
        for img in &corpus.images {
            assert_eq!(
                store.resolve_tag(&img.repository, &img.tag).unwrap_or(None),
                None,
                "{what}: {}:{} is not tagged",
                img.repository,
                img.tag
            );
            assert!(
                !store.has_revision(&img.repository, &img.digest),
                "{what}: {} is not linked",
                img.digest
            );
        }
    };

    // (a) A reference that does not parse: nothing is left (read in place, no blob is in yet,
    // so this holds even without the roll-back that path now has).
    let a = work.path().join("a");
    let out = run(&mut link(
        zst,
        &a,
        &[("FERRY_TEST_FAIL_LINK_AT", "reference")],
    ));
    one_line(&out, "reference");
    assert_eq!(data_files(&a), 0, "no blob of the failed link is left");

    // (b) Linking fails at the third image, after two were linked: none stays linked.
    let b = work.path().join("b");
    let out = run(&mut link(
        zst,
        &b,
        &[("FERRY_TEST_FAIL_LINK_AT", "finish:2")],
    ));
    one_line(&out, "finish");
    no_tags(&b, "finish");
    assert_eq!(data_files(&b), 0, "no blob of the failed link is left");
    // A root that had the images keeps them, tags as they were.
    run_ok(&mut link(zst, &b, &[]));
    let before = files(&b);
    let out = run(&mut link(
        zst,
        &b,
        &[("FERRY_TEST_FAIL_LINK_AT", "finish:2")],
    ));
    one_line(&out, "finish again");
    assert_eq!(files(&b), before, "a failed re-link changes nothing");

    // (c) A concurrent writer links one of the run's new blobs before the run fails: that
    // blob stays; the others go.
    let c = work.path().join("c");
    let relied = corpus.images[0].digest.clone();
    let child = link(
        zst,
        &c,
        &[
            ("FERRY_TEST_FAIL_LINK_AT", "finish:0"),
            ("FERRY_TEST_LINK_PAUSE_MS", "3000"),
        ],
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let start = std::time::Instant::now();
    while !Store::open(&c).has_blob(&relied) {
        assert!(
            start.elapsed().as_secs() < 120,
            "the run never put {relied}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Store::open(&c)
        .link_revision("other/writer", &relied)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    one_line(&out, "concurrent");
    assert!(
        Store::open(&c).has_blob(&relied),
        "the blob another writer linked is kept"
    );
    assert_eq!(data_files(&c), 1, "only that blob is kept");
}
