//! Sites on object storage: a real Garage (S3) bucket, the stock
//! `docker-registry` on its S3 driver over the same keys, and ferry writing
//! and reading them directly (`unbundle link`, `verify`, `ls` on `s3://…`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::unbundle::bundles;

/// `ferry unbundle link BUNDLE --root URL` with the bucket's credentials.
fn link(b: &GarageBucket, bundle: &std::path::Path, url: &str) -> Command {
    let mut cmd = b.ferry();
    cmd.args(["unbundle", "link"])
        .arg(bundle)
        .args(["--root", url]);
    cmd
}

/// `ferry ls --json s3://…` as (repo:tag, digest) pairs, sorted.
fn ls(b: &GarageBucket, url: &str) -> Vec<(String, String)> {
    let out = run_ok(b.ferry().args(["ls", "--json", url]));
    let mut rows: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["image"].as_str().unwrap().to_string(),
                v["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// The corpus' images as (repo:tag, digest), sorted: what every side must agree on.
fn expected() -> Vec<(String, String)> {
    let (_, corpus) = small();
    let mut want: Vec<(String, String)> = corpus
        .images
        .iter()
        .map(|i| (format!("{}:{}", i.repository, i.tag), i.digest.to_string()))
        .collect();
    want.sort();
    want
}

/// `ferry verify --json s3://…`: (blobs, links, faults).
fn verify(b: &GarageBucket, url: &str) -> (u64, u64, Vec<String>, bool) {
    let out = run(b.ferry().args(["verify", "--json", url]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify {url}: {e}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let faults = v["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.to_string())
        .collect();
    (
        v["blobs"].as_u64().unwrap(),
        v["links"].as_u64().unwrap(),
        faults,
        out.status.success(),
    )
}

#[test]
fn linked_bucket_is_served_by_the_registry_on_s3_with_the_source_digests() {
    let (zst, _) = bundles();
    let garage = Garage::start();
    let b = garage.bucket("site");
    let url = b.url("site");
    let out = run_ok(&mut link(&b, zst, &url));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("into {url}")), "{err}");

    let reg = Registry::start_on_s3(&b, "/site");
    let work = tempfile::tempdir().unwrap();
    let (_, corpus) = small();
    for img in &corpus.images {
        let r = format!("docker://{}/{}:{}", reg.addr, img.repository, img.tag);
        assert_eq!(inspect_digest(&r), img.digest.to_string(), "{r}");
        // Every platform, through the registry's S3 driver.
        let dest = work
            .path()
            .join(format!("{}-{}", img.repository.replace('/', "_"), img.tag));
        skopeo_ok(&[
            "copy",
            "--all",
            "--src-tls-verify=false",
            &r,
            &format!("dir:{}", dest.display()),
        ]);
        assert_eq!(
            sha256(&std::fs::read(dest.join("manifest.json")).unwrap()),
            img.digest.to_string(),
            "{r} pulled with --all"
        );
        for (platform, child) in &img.platforms {
            let pulled = skopeo_ok(&[
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{}/{}@{child}", reg.addr, img.repository),
            ]);
            assert_eq!(sha256(&pulled.stdout), child.to_string(), "{r} {platform}");
        }
    }
    let (blobs, manifests, text) = reg.gc_dry_run();
    assert_eq!(
        (blobs, manifests),
        (0, 0),
        "garbage-collect --dry-run:\n{text}"
    );

    // ferry reads back what it wrote, and a re-run writes nothing.
    assert_eq!(ls(&b, &url), expected());
    let (n, links, faults, ok) = verify(&b, &url);
    assert!(ok && faults.is_empty() && n > 0 && links > 0, "{faults:?}");
    let before = b.objects();
    let again = run_ok(&mut link(&b, zst, &url));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains(": 0 blobs added (0 B)"), "{err}");
    assert_eq!(b.objects(), before, "a re-run adds no object");
}

#[test]
fn images_pushed_through_the_registry_on_s3_are_read_by_ls_and_verify() {
    let (root, corpus) = small();
    let garage = Garage::start();
    let b = garage.bucket("pushed");
    let reg = Registry::start_on_s3(&b, "/");
    let src = FerryServe::start(root);
    for img in &corpus.images {
        let name = format!("{}:{}", img.repository, img.tag);
        skopeo_ok(&[
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{}/{name}", src.addr),
            &format!("docker://{}/{name}", reg.addr),
        ]);
    }
    let url = b.url("");
    assert_eq!(ls(&b, &url), expected());
    let (blobs, links, faults, ok) = verify(&b, &url);
    assert!(ok, "verify: {faults:?}");
    assert!(faults.is_empty() && blobs > 0 && links > 0, "{faults:?}");

    // `ferry serve s3://…` answers from the bucket with the same digests, every platform's blobs streamed.
    let env = [
        ("AWS_ACCESS_KEY_ID", b.key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", b.secret.as_str()),
        ("AWS_REGION", "garage"),
    ];
    let served = FerryServe::start_with_env(&["serve", &url, "--s3-endpoint", &b.endpoint], &env);
    let work = tempfile::tempdir().unwrap();
    for img in &corpus.images {
        let r = format!("docker://{}/{}:{}", served.addr, img.repository, img.tag);
        assert_eq!(inspect_digest(&r), img.digest.to_string(), "{r}");
        let dest = work
            .path()
            .join(format!("{}-{}", img.repository.replace('/', "_"), img.tag));
        skopeo_ok(&[
            "copy",
            "--all",
            "--src-tls-verify=false",
            &r,
            &format!("dir:{}", dest.display()),
        ]);
    }
}

#[test]
fn a_link_killed_anywhere_leaves_no_tag_whose_blobs_are_missing() {
    let (zst, _) = bundles();
    let garage = Garage::start();
    let b = garage.bucket("killed");
    let url = b.url("k");
    // Kills spread over the blob phase and (with the test-only pause) the tag phase.
    for (run, ms) in [150u64, 400, 900, 1600].into_iter().enumerate() {
        let mut child = link(&b, zst, &url)
            .env(ferry::limits::ENV_TAG_PAUSE_MS, "100")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(ms) {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        child.wait().unwrap();
        // Every tag the bucket has resolves to an image whose blobs are all there.
        let (_, _, faults, ok) = verify(&b, &url);
        assert!(
            ok && faults.is_empty(),
            "run {run} killed at {ms} ms: {faults:?}"
        );
        for (image, digest) in ls(&b, &url) {
            assert!(
                expected().contains(&(image.clone(), digest)),
                "run {run}: {image}"
            );
        }
    }
    run_ok(&mut link(&b, zst, &url));
    assert_eq!(ls(&b, &url), expected(), "the re-run completes");
    let reg = Registry::start_on_s3(&b, "/k");
    let (_, corpus) = small();
    for img in &corpus.images {
        let r = format!("docker://{}/{}:{}", reg.addr, img.repository, img.tag);
        assert_eq!(inspect_digest(&r), img.digest.to_string(), "{r}");
    }
    let (blobs, manifests, text) = reg.gc_dry_run();
    assert_eq!(
        (blobs, manifests),
        (0, 0),
        "garbage-collect --dry-run:\n{text}"
    );
}

#[test]
fn wrong_credentials_missing_bucket_and_dead_endpoint_are_one_line_and_write_nothing() {
    let (zst, _) = bundles();
    let garage = Garage::start();
    let b = garage.bucket("empty");
    let wrong_secret = GarageBucket {
        secret: "0".repeat(64),
        ..b.clone()
    };
    let no_bucket = GarageBucket {
        bucket: "no-such-bucket".into(),
        ..b.clone()
    };
    let dead = GarageBucket {
        endpoint: format!("http://127.0.0.1:{}", free_port()),
        ..b.clone()
    };
    for (what, bucket, cause) in [
        ("wrong secret", &wrong_secret, "403"),
        ("missing bucket", &no_bucket, "404"),
        ("dead endpoint", &dead, "connect"),
    ] {
        for verb in [
            &["unbundle", "link", zst.to_str().unwrap(), "--root"][..],
            &["verify"],
            &["ls"],
        ] {
            let started = Instant::now();
            let out = run(bucket.ferry().args(verb).arg(bucket.url("site")));
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{what} {verb:?}: {err}");
            let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "{what} {verb:?}: one line: {err}");
            assert!(
                lines[0].contains(&format!("s3://{}/", bucket.bucket)) && lines[0].contains(cause),
                "{what} {verb:?}: names the bucket and the cause: {err}"
            );
            assert!(!lines[0].contains(&b.secret), "{what}: no secret in {err}");
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{what} {verb:?} gave up late"
            );
        }
    }
    assert_eq!(b.objects(), 0, "nothing was written");
}

#[test]
fn s3_endpoint_flag_overrides_the_environment() {
    let (zst, _) = bundles();
    let garage = Garage::start();
    let b = garage.bucket("flag");
    let url = b.url("");
    // The environment points nowhere; --s3-endpoint wins.
    let out = run_ok(
        link(&b, zst, &url)
            .env(
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", free_port()),
            )
            .args(["--s3-endpoint", &b.endpoint]),
    );
    assert!(out.status.success());
    assert_eq!(ls(&b, &url), expected());
}

#[test]
fn registry_root_on_s3_is_a_copy_source_and_destination() {
    let (zst, _) = bundles();
    let garage = Garage::start();
    let b = garage.bucket("copies");
    run_ok(&mut link(&b, zst, &b.url("site")));
    let (_, corpus) = small();
    let img = multi_arch(corpus);
    let from = format!(
        "registry-root:s3://copies/site/{}:{}",
        img.repository, img.tag
    );
    // Bucket to bucket is refused in one line (it could hang: not fixed yet), nothing written.
    let before = b.objects();
    let out = run(b.ferry().args([
        "copy",
        "--all",
        &from,
        "registry-root:s3://copies/other/app:1",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not supported yet"), "{err}");
    assert_eq!(b.objects(), before);
    // Out to a dir: (which keeps any manifest kind), digests preserved.
    let work = tempfile::tempdir().unwrap();
    let dir = format!("dir:{}", work.path().join("d").display());
    run_ok(b.ferry().args(["copy", "--all", &from, &dir]));
    let out = skopeo_ok(&["inspect", "--raw", &dir]);
    assert_eq!(sha256(&out.stdout), img.digest.to_string());
    // And back into another path of the bucket, every platform.
    run_ok(b.ferry().args([
        "copy",
        "--all",
        "--preserve-digests=true",
        &dir,
        "registry-root:s3://copies/other/app:1",
    ]));
    assert_eq!(
        ls(&b, &b.url("")),
        vec![("other/app:1".to_string(), img.digest.to_string())],
        "with no layout under copies/other, the bucket's top is the root"
    );
    let (_, _, faults, ok) = verify(&b, &b.url(""));
    assert!(ok && faults.is_empty(), "{faults:?}");
}
