//! `bundle --with-referrers`: signatures (cosign's `sha256-<hex>.sig` tags) and
//! OCI 1.1 SBOM artifacts (`subject`) found at the source, carried in the
//! bundle, and kept by `unbundle link` / `push` / `serve` and by `ferry serve`.

use std::path::Path;

use ferry::digest::Digest;
use ferry::fixtures::{FixtureReferrers, SBOM_ARTIFACT_TYPE, referrers};
use ferry::store::Store;
use ferry::store::paths::PathSpec;

use crate::harness::*;

/// A `tiny` corpus whose first single-platform image and first index child carry referrers.
struct Source {
    dir: tempfile::TempDir,
    corpus: ferry::fixtures::Corpus,
    /// (repository, subject, referrers), for the image and for the child.
    signed: Vec<(String, Digest, FixtureReferrers)>,
}

fn source() -> Source {
    let (dir, corpus) = tiny();
    let store = Store::open(dir.path()).with_durable(false);
    let single = corpus
        .images
        .iter()
        .find(|i| i.platforms.is_empty())
        .unwrap();
    let multi = multi_arch(&corpus);
    let mut signed = Vec::new();
    for (repo, subject) in [
        (&single.repository, &single.digest),
        (&multi.repository, &multi.platforms[0].1),
    ] {
        let r = referrers(&store, repo, subject).unwrap();
        signed.push((repo.clone(), subject.clone(), r));
    }
    Source {
        dir,
        corpus,
        signed,
    }
}

/// `ferry bundle --all-platforms` of the corpus from `addr`, with `extra` flags.
fn bundle(src: &Source, addr: &str, work: &Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let list = work.join("list.txt");
    std::fs::write(&list, src.corpus.images_list()).unwrap();
    let out = work.join(name);
    run_ok(
        bundle_cmd(&list, &out, &work.join("cache"), addr)
            .arg("--all-platforms")
            .args(extra),
    );
    out
}

/// Whether the extracted root `root` holds the manifest `d` linked in `repo`, and the tag `tag` pointing at it.
fn holds(root: &Path, repo: &str, d: &Digest, tag: Option<&str>) -> bool {
    let store = Store::open(root);
    let linked = store.path(PathSpec::RevisionLink(repo, d)).is_file()
        && store.path(PathSpec::BlobData(d)).is_file();
    match tag {
        Some(t) => linked && store.resolve_tag(repo, t).unwrap().as_ref() == Some(d),
        None => linked,
    }
}

/// The digests a referrers listing names.
fn listed(addr: &str, repo: &str, subject: &Digest, query: &str) -> Vec<String> {
    let (status, _, body) = http(
        addr,
        "GET",
        &format!("/v2/{repo}/referrers/{subject}{query}"),
        &[],
    )
    .expect("referrers request answered");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn tag_scheme_from_docker_registry_link_and_push() {
    let src = source();
    let reg = Registry::start(src.dir.path());
    let work = tempfile::tempdir().unwrap();
    let plain = bundle(&src, &reg.addr, work.path(), "plain.tar.zst", &[]);
    let with = bundle(
        &src,
        &reg.addr,
        work.path(),
        "with.tar.zst",
        &["--with-referrers"],
    );

    let (x0, x1) = (work.path().join("x0"), work.path().join("x1"));
    extract_bundle(&plain, &x0);
    extract_bundle(&with, &x1);
    for (repo, _, r) in &src.signed {
        assert!(
            !holds(&x0, repo, &r.signature, None),
            "no flag, no signature"
        );
        assert!(
            holds(&x1, repo, &r.signature, Some(&r.signature_tag)),
            "{repo}: the .sig tag came along"
        );
        // docker-registry has no referrers API: the SBOM (subject only) cannot be found there.
        assert!(!holds(&x1, repo, &r.sbom, None));
    }
    run_ok(ferry().arg("verify").arg(&with));

    // Linked into a root, the stock registry serves the .sig tags and GC keeps everything.
    let site = work.path().join("site");
    run_ok(
        ferry()
            .args(["unbundle", "link"])
            .arg(&with)
            .arg("--root")
            .arg(&site),
    );
    let site_reg = Registry::start(&site);
    for (repo, _, r) in &src.signed {
        let at_source =
            inspect_digest(&format!("docker://{}/{repo}:{}", reg.addr, r.signature_tag));
        assert_eq!(at_source, r.signature.to_string());
        let at_site = inspect_digest(&format!(
            "docker://{}/{repo}:{}",
            site_reg.addr, r.signature_tag
        ));
        assert_eq!(at_site, at_source);
    }
    let (blobs, manifests, text) = site_reg.gc_dry_run();
    assert_eq!((blobs, manifests), (0, 0), "{text}");

    // Pushed into an empty registry, the .sig tags arrive after their subjects.
    let (_d, empty) = empty_registry();
    run_ok(
        ferry()
            .env("FERRY_TEST_NO_RETRY_DELAY", "1")
            .args([
                "unbundle",
                "push",
                "-q",
                "--dest-tls-verify=false",
                "--dest",
            ])
            .arg(&empty.addr)
            .arg(&with),
    );
    for (repo, _, r) in &src.signed {
        let pushed = inspect_digest(&format!(
            "docker://{}/{repo}:{}",
            empty.addr, r.signature_tag
        ));
        assert_eq!(pushed, r.signature.to_string());
    }
}

#[test]
fn api_from_ferry_serve_kept_by_link_and_serve() {
    let src = source();
    let server =
        FerryServe::start_with(&["serve", src.dir.path().to_str().unwrap(), "--allow-push"]);
    let work = tempfile::tempdir().unwrap();
    let with = bundle(
        &src,
        &server.addr,
        work.path(),
        "with.tar.zst",
        &["--with-referrers"],
    );
    let x = work.path().join("x");
    extract_bundle(&with, &x);
    for (repo, subject, r) in &src.signed {
        // The source answers the API with the SBOM.
        assert_eq!(
            listed(&server.addr, repo, subject, ""),
            vec![r.sbom.to_string()]
        );
        assert!(holds(&x, repo, &r.signature, Some(&r.signature_tag)));
        assert!(
            holds(&x, repo, &r.sbom, None),
            "{repo}: the SBOM came along, untagged"
        );
        assert!(
            holds(&x, repo, &r.sbom_signature, Some(&r.sbom_signature_tag)),
            "{repo}: the SBOM's own signature came along (depth 2)"
        );
        assert!(
            !Store::open(&x)
                .tags(repo)
                .unwrap()
                .iter()
                .any(|t| t.contains(r.sbom.hex()) && !t.ends_with(".sig"))
        );
    }
    run_ok(ferry().arg("verify").arg(&with));
    // `ls` names the referrers: the tagged ones by tag, the SBOM by digest.
    let ls = String::from_utf8(run_ok(ferry().arg("ls").arg(&with)).stdout).unwrap();
    for (_, _, r) in &src.signed {
        assert!(ls.contains(&r.signature_tag), "{ls}");
        assert!(ls.contains(r.sbom.hex()), "{ls}");
    }

    // In place and on a linked root, the referrers API names the SBOM, and the artifactType filter works.
    let site = work.path().join("site");
    run_ok(
        ferry()
            .args(["unbundle", "link"])
            .arg(&with)
            .arg("--root")
            .arg(&site),
    );
    let in_place = FerryServe::start_with(&["unbundle", "serve", with.to_str().unwrap()]);
    let on_root = FerryServe::start(&site);
    let filter = format!("?artifactType={}", SBOM_ARTIFACT_TYPE.replace('+', "%2B"));
    for addr in [&in_place.addr, &on_root.addr] {
        for (repo, subject, r) in &src.signed {
            assert_eq!(
                listed(addr, repo, subject, ""),
                vec![r.sbom.to_string()],
                "{addr} {repo}"
            );
            assert_eq!(
                listed(addr, repo, subject, &filter),
                vec![r.sbom.to_string()]
            );
            assert!(listed(addr, repo, subject, "?artifactType=application/x-other").is_empty());
        }
    }
    // The stock registry on the linked root keeps the untagged SBOM (GC deletes nothing) and serves it by digest.
    let site_reg = Registry::start(&site);
    let (blobs, manifests, text) = site_reg.gc_dry_run();
    assert_eq!((blobs, manifests), (0, 0), "{text}");
    for (repo, _, r) in &src.signed {
        let d = inspect_digest(&format!("docker://{}/{repo}@{}", site_reg.addr, r.sbom));
        assert_eq!(d, r.sbom.to_string());
    }

    // Pushed into an empty docker-registry (it takes a manifest with a subject) and into an
    // empty `ferry serve --allow-push` (whose API then lists the SBOM): digests kept.
    let (_d, empty) = empty_registry();
    let pushed_root = tempfile::tempdir().unwrap();
    Store::create(pushed_root.path()).unwrap();
    let target = FerryServe::start_with(&[
        "serve",
        pushed_root.path().to_str().unwrap(),
        "--allow-push",
    ]);
    for dest in [&empty.addr, &target.addr] {
        run_ok(
            ferry()
                .env("FERRY_TEST_NO_RETRY_DELAY", "1")
                .args([
                    "unbundle",
                    "push",
                    "-q",
                    "--dest-tls-verify=false",
                    "--dest",
                ])
                .arg(dest)
                .arg(&with),
        );
        for (repo, _, r) in &src.signed {
            let d = inspect_digest(&format!("docker://{dest}/{repo}@{}", r.sbom));
            assert_eq!(d, r.sbom.to_string(), "{dest}");
            let d = inspect_digest(&format!("docker://{dest}/{repo}:{}", r.sbom_signature_tag));
            assert_eq!(d, r.sbom_signature.to_string(), "{dest}");
        }
    }
    for (repo, subject, r) in &src.signed {
        assert_eq!(
            listed(&target.addr, repo, subject, ""),
            vec![r.sbom.to_string()]
        );
    }
}

#[test]
fn fixture_referrers_are_deterministic() {
    let (a, b) = (source(), source());
    assert_eq!(a.signed, b.signed);
}

#[test]
fn a_referrer_missing_a_blob_at_the_source_is_named_and_nothing_is_written() {
    let src = source();
    let (repo, _, r) = &src.signed[0];
    // The signature's payload layer is gone from the source: its manifest still resolves, its blob does not.
    let store = Store::open(src.dir.path());
    let sig = store.read_manifest(&r.signature).unwrap();
    let payload = sig.parse().unwrap().blobs()[1].digest.clone();
    std::fs::remove_file(store.path(PathSpec::BlobData(&payload))).unwrap();
    let reg = Registry::start(src.dir.path());
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, src.corpus.images_list()).unwrap();
    let out = work.path().join("b.tar.zst");
    let e = run(
        bundle_cmd(&list, &out, &work.path().join("cache"), &reg.addr)
            .args(["--all-platforms", "--with-referrers"]),
    );
    let stderr = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success(), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(&format!("{repo}:{}", r.signature_tag))),
        "the failing referrer is named: {stderr}"
    );
    assert!(!out.exists(), "no bundle written");
}

/// Checks a cosign key-based signature as `cosign verify --key` does, offline, with Python's
/// `cryptography` (not ferry's code): the ECDSA P-256 SHA-256 signature of the payload bytes,
/// base64 DER, against the PEM key; prints the payload's image digest, exits 1 on a bad signature.
const COSIGN_CHECK: &str = r#"
import base64, json, sys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
key = serialization.load_pem_public_key(open(sys.argv[1], "rb").read())
payload = open(sys.argv[2], "rb").read()
sig = base64.b64decode(open(sys.argv[3]).read(), validate=True)
try:
    key.verify(sig, payload, ec.ECDSA(hashes.SHA256()))
except InvalidSignature:
    sys.exit("InvalidSignature")
p = json.loads(payload)
assert p["critical"]["type"] == "cosign container image signature"
print(p["critical"]["image"]["docker-manifest-digest"])
"#;

#[test]
fn fixture_signatures_verify_as_cosign_checks_them_after_link_and_serve() {
    let src = source();
    // A source with the referrers API, so the SBOM and its own signature come along too.
    let reg = FerryServe::start_with(&["serve", src.dir.path().to_str().unwrap()]);
    let work = tempfile::tempdir().unwrap();
    let with = bundle(
        &src,
        &reg.addr,
        work.path(),
        "with.tar.zst",
        &["--with-referrers"],
    );
    let root = work.path().join("site");
    run_ok(
        ferry()
            .args(["-q", "unbundle", "link"])
            .arg(&with)
            .arg("--root")
            .arg(&root),
    );
    let served = FerryServe::start(&root);
    let key = work.path().join("cosign.pub");
    std::fs::write(&key, ferry::fixtures::cosign_public_key_pem()).unwrap();
    let check = |payload: &[u8], sig: &str| {
        let (p, s) = (
            work.path().join("payload.json"),
            work.path().join("sig.b64"),
        );
        std::fs::write(&p, payload).unwrap();
        std::fs::write(&s, sig).unwrap();
        run(std::process::Command::new("python3")
            .arg("-c")
            .arg(COSIGN_CHECK)
            .arg(&key)
            .arg(&p)
            .arg(&s))
    };
    for (repo, subject, r) in &src.signed {
        for (tag, signed) in [
            (&r.signature_tag, subject),
            (&r.sbom_signature_tag, &r.sbom),
        ] {
            // Through the served registry, as cosign fetches it: the .sig tag, its layer, the payload blob.
            let (status, _, body) = http(
                &served.addr,
                "GET",
                &format!("/v2/{repo}/manifests/{tag}"),
                &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
            )
            .unwrap();
            assert_eq!(status, 200, "{repo}:{tag}");
            let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let layer = &m["layers"][0];
            assert_eq!(layer["mediaType"], ferry::fixtures::COSIGN_SIGNATURE_LAYER);
            let sig = layer["annotations"]["dev.cosignproject.cosign/signature"]
                .as_str()
                .unwrap();
            let digest = layer["digest"].as_str().unwrap();
            let (status, _, payload) = http(
                &served.addr,
                "GET",
                &format!("/v2/{repo}/blobs/{digest}"),
                &[],
            )
            .unwrap();
            assert_eq!(status, 200, "{repo}@{digest}");
            let out = check(&payload, sig);
            assert!(
                out.status.success(),
                "{repo}:{tag}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                signed.to_string()
            );
            // One byte of the payload changed (another digest named): the signature no longer holds.
            let text = String::from_utf8(payload.clone()).unwrap();
            let at = text
                .find(signed.hex())
                .expect("the payload names the digest");
            let mut tampered = payload.clone();
            tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
            let out = check(&tampered, sig);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{repo}:{tag}: tampered payload accepted"
            );
            assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidSignature"));
        }
    }
}
