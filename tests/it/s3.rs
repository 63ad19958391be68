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
    ls_with(&mut b.ferry(), url)
}

/// [`ls`] run by `cmd` (a ferry command with its own S3 environment).
fn ls_with(cmd: &mut Command, url: &str) -> Vec<(String, String)> {
    let out = run_ok(cmd.args(["ls", "--json", url]));
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

    // Every verb that takes a registry-root:s3:// image honours it too: inspect and copy.
    let (_, corpus) = small();
    let img = multi_arch(corpus);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let image = format!("registry-root:s3://flag/{}:{}", img.repository, img.tag);
    let with_dead_env = || {
        let mut cmd = b.ferry();
        cmd.env("AWS_ENDPOINT_URL", &dead);
        cmd
    };
    let out = run(with_dead_env().args(["inspect", "--raw", &image]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "the environment's endpoint is dead"
    );
    let out =
        run_ok(with_dead_env().args(["--s3-endpoint", &b.endpoint, "inspect", "--raw", &image]));
    assert_eq!(sha256(&out.stdout), img.digest.to_string());
    run_ok(with_dead_env().args([
        "--s3-endpoint",
        &b.endpoint,
        "copy",
        "--all",
        &image,
        "registry-root:s3://flag/copied/app:1",
    ]));
    let rows = ls(&b, &url);
    assert!(
        rows.contains(&("copied/app:1".to_string(), img.digest.to_string())),
        "{rows:?}"
    );
}

#[test]
fn an_https_endpoint_is_trusted_through_aws_ca_bundle_or_the_profile_and_refused_without() {
    let (zst, _) = bundles();
    let garage = Garage::start();
    let b = garage.bucket("tls");
    let proxy = TlsProxy::start(&b.endpoint);
    let https = GarageBucket {
        endpoint: proxy.endpoint.clone(),
        ..b.clone()
    };
    let url = https.url("site");
    // Without the test CA (the system's roots only): one line naming the endpoint and the
    // certificate problem, nothing written.
    for ca in [None, Some("/etc/ssl/certs/ca-certificates.crt")] {
        let mut cmd = link(&https, zst, &url);
        if let Some(ca) = ca {
            cmd.env("AWS_CA_BUNDLE", ca);
        }
        let out = run(&mut cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line: {err}");
        assert!(
            lines[0].contains(&proxy.endpoint) && lines[0].to_lowercase().contains("certificate"),
            "names the endpoint and the certificate problem: {err}"
        );
    }
    assert_eq!(b.objects(), 0, "nothing was written");
    // A CA bundle that cannot be read is one line naming it.
    let out = run(link(&https, zst, &url).env("AWS_CA_BUNDLE", "/nonexistent/ca.pem"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("CA bundle /nonexistent/ca.pem"), "{err}");

    // With AWS_CA_BUNDLE: linked over HTTPS, read back by ls and verify.
    run_ok(link(&https, zst, &url).env("AWS_CA_BUNDLE", &proxy.certs.ca));
    let ls_tls = |cmd: &mut Command| ls_with(cmd, &url);
    assert_eq!(
        ls_tls(https.ferry().env("AWS_CA_BUNDLE", &proxy.certs.ca)),
        expected()
    );
    // The profile's ca_bundle, with no AWS_CA_BUNDLE.
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config");
    std::fs::write(
        &config,
        format!("[default]\nca_bundle = {}\n", proxy.certs.ca.display()),
    )
    .unwrap();
    assert_eq!(
        ls_tls(https.ferry().env("AWS_CONFIG_FILE", &config)),
        expected()
    );
    // The same bucket over plain HTTP agrees.
    assert_eq!(ls(&b, &url), expected());
    let (_, _, faults, ok) = verify(&b, &url);
    assert!(ok && faults.is_empty(), "{faults:?}");
}

#[test]
fn two_links_of_one_bundle_into_one_bucket_at_once_leave_it_whole() {
    let (zst, _) = bundles();
    let garage = Garage::start();
    let b = garage.bucket("racing");
    let url = b.url("site");
    let children: Vec<_> = (0..2)
        .map(|_| {
            link(&b, zst, &url)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(ls(&b, &url), expected());
    let (n, links, faults, ok) = verify(&b, &url);
    assert!(ok && faults.is_empty() && n > 0 && links > 0, "{faults:?}");
    let reg = Registry::start_on_s3(&b, "/site");
    let (_, corpus) = small();
    for img in &corpus.images {
        let r = format!("docker://{}/{}:{}", reg.addr, img.repository, img.tag);
        assert_eq!(inspect_digest(&r), img.digest.to_string(), "{r}");
    }
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
    // Straight into another path of the same bucket, every platform: the source's blobs are
    // async streams of the objects (no thread waits on the bucket), so this cannot stall.
    run_ok(b.ferry().args([
        "copy",
        "--all",
        &from,
        "registry-root:s3://copies/other/app:1",
    ]));
    assert_eq!(
        ls(&b, &b.url("")),
        vec![("other/app:1".to_string(), img.digest.to_string())],
        "with no layout under copies/other, the bucket's top is the root"
    );
    let (_, _, faults, ok) = verify(&b, &b.url(""));
    assert!(ok && faults.is_empty(), "{faults:?}");
    // Out to a dir: (which keeps any manifest kind), digests preserved.
    let work = tempfile::tempdir().unwrap();
    let dir = format!("dir:{}", work.path().join("d").display());
    run_ok(b.ferry().args(["copy", "--all", &from, &dir]));
    let out = skopeo_ok(&["inspect", "--raw", &dir]);
    assert_eq!(sha256(&out.stdout), img.digest.to_string());
    // And from the dir: back into a third path, every platform.
    run_ok(b.ferry().args([
        "copy",
        "--all",
        "--preserve-digests=true",
        &dir,
        "registry-root:s3://copies/third/app:1",
    ]));
    let rows = ls(&b, &b.url(""));
    assert!(
        rows.contains(&("third/app:1".to_string(), img.digest.to_string())),
        "{rows:?}"
    );
}

/// A client of the bucket that talks S3 directly (object_store), for what no CLI here can do:
/// start multipart uploads, and abort them.
fn store_client(b: &GarageBucket) -> object_store::aws::AmazonS3 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&b.endpoint)
        .with_allow_http(true)
        .with_region("garage")
        .with_bucket_name(&b.bucket)
        .with_access_key_id(&b.key_id)
        .with_secret_access_key(&b.secret)
        .build()
        .unwrap()
}

#[test]
fn a_link_aborts_the_stale_uploads_killed_runs_left_and_no_others() {
    use object_store::multipart::MultipartStore;
    use object_store::path::Path as Key;
    let (zst, _) = bundles();
    let garage = Garage::start();
    let b = garage.bucket("leftover");
    let s3 = store_client(&b);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let blob_key = |hex: &str| {
        Key::from(format!(
            "site/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    };
    let (old_ours, young_ours) = (blob_key(&"ab".repeat(32)), blob_key(&"cd".repeat(32)));
    // distribution's own upload (under a repository's _uploads) and one outside the root.
    let theirs = Key::from("site/docker/registry/v2/repositories/app/_uploads/u1/data");
    let elsewhere = Key::from(format!(
        "other/docker/registry/v2/blobs/sha256/ef/{}/data",
        "ef".repeat(32)
    ));
    let start = |k: &Key| rt.block_on(s3.create_multipart(k)).unwrap();
    let old_id = start(&old_ours);
    let theirs_id = start(&theirs);
    let elsewhere_id = start(&elsewhere);
    std::thread::sleep(Duration::from_secs(3));
    let young_id = start(&young_ours);
    // Older than 2 s is stale for this run (a day otherwise).
    run_ok(link(&b, zst, &b.url("site")).env(ferry::limits::ENV_S3_STALE_UPLOAD_SECS, "2"));
    assert_eq!(ls(&b, &b.url("site")), expected());
    // An upload still open can be aborted; one ferry aborted is gone (NoSuchUpload).
    let abort = |k: &Key, id: &String| rt.block_on(s3.abort_multipart(k, id));
    let gone = abort(&old_ours, &old_id);
    assert!(gone.is_err(), "ferry aborted its stale upload");
    let e = gone.unwrap_err().to_string();
    assert!(e.contains("NoSuchUpload") || e.contains("404"), "{e}");
    for (what, k, id) in [
        ("a live run's young upload", &young_ours, &young_id),
        ("distribution's upload", &theirs, &theirs_id),
        ("an upload outside the root", &elsewhere, &elsewhere_id),
    ] {
        assert!(abort(k, id).is_ok(), "{what} was left open");
    }
}
