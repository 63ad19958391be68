//! `docker-archive:` as `docker save` writes it (layers as plain tar, a config
//! with diff_ids), and `docker-daemon:` as a destination streamed into the
//! engine, against the real dockerd, with skopeo as the oracle.

use std::path::Path;

use crate::clients::Dockerd;
use crate::harness::*;

/// Two trees with the same files and bytes (JSON compared as values).
fn assert_same_tree(a: &Path, b: &Path, what: &str) {
    let (x, y) = (files(a), files(b));
    assert_eq!(
        x.keys().collect::<Vec<_>>(),
        y.keys().collect::<Vec<_>>(),
        "{what}: the same file set"
    );
    for (name, bytes) in &x {
        if bytes != &y[name] {
            let j = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).ok();
            match (j(bytes), j(&y[name])) {
                (Some(p), Some(q)) => assert_eq!(p, q, "{what}: {name} as JSON"),
                _ => panic!("{what}: {name} differs"),
            }
        }
    }
}

/// The config digest of a `docker://` image, as skopeo reads it.
fn config_of(reference: &str) -> String {
    let out = skopeo_ok(&["inspect", "--tls-verify=false", "--raw", reference]);
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    m["config"]["digest"].as_str().unwrap().to_string()
}

fn untar(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    run_ok(
        std::process::Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(into),
    );
}

/// What skopeo and ferry must agree on for an image whose layers were gzipped on the way
/// (gzip encoders differ, so not the bytes): the manifest's media type, each layer's media
/// type, the config digest, and what each layer decompresses to (the config's diff_ids).
pub(crate) fn gzipped_structure(
    manifest: &[u8],
    blob: &dyn Fn(&str) -> Vec<u8>,
) -> serde_json::Value {
    use std::io::Read;
    let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    let layers: Vec<serde_json::Value> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let gz = blob(l["digest"].as_str().unwrap());
            assert_eq!(gz.len() as u64, l["size"].as_u64().unwrap());
            assert_eq!(&gz[..2], &[0x1f, 0x8b], "a gzip layer");
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut tar)
                .unwrap();
            serde_json::json!([
                l["mediaType"],
                ferry::digest::Digest::sha256_of(&tar).to_string()
            ])
        })
        .collect();
    let config: serde_json::Value =
        serde_json::from_slice(&blob(m["config"]["digest"].as_str().unwrap())).unwrap();
    let diff_ids = &config["rootfs"]["diff_ids"];
    for (l, d) in layers.iter().zip(diff_ids.as_array().unwrap()) {
        assert_eq!(&l[1], d, "a layer decompresses to its diff_id");
    }
    assert_eq!(layers.len(), diff_ids.as_array().unwrap().len());
    serde_json::json!({
        "mediaType": m["mediaType"],
        "config": m["config"],
        "layers": layers,
    })
}

/// [`gzipped_structure`] of the one image of an `oci:` layout.
pub(crate) fn oci_structure(layout: &Path) -> serde_json::Value {
    let blob = |d: &str| std::fs::read(layout.join("blobs/sha256").join(&d[7..])).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let top = index["manifests"][0]["digest"].as_str().unwrap();
    gzipped_structure(&blob(top), &blob)
}

/// [`gzipped_structure`] of an image in a registry, read with skopeo.
pub(crate) fn registry_structure(reference: &str, scratch: &Path) -> serde_json::Value {
    skopeo_ok(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        reference,
        &format!("dir:{}", scratch.display()),
    ]);
    let blob = |d: &str| std::fs::read(scratch.join(&d[7..])).unwrap();
    gzipped_structure(
        &std::fs::read(scratch.join("manifest.json")).unwrap(),
        &blob,
    )
}

#[test]
fn docker_save_archives_read_and_written_as_skopeo_does_and_loads_stream() {
    let (_, corpus) = small();
    let (_src_dir, src) = small_registry();
    let (_dst_dir, dst) = empty_registry();
    let dockerd = Dockerd::start();
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);
    let img = corpus
        .images
        .iter()
        .find(|i| i.platforms.is_empty())
        .unwrap();
    let pulled = format!("{}/{}:{}", src.addr, img.repository, img.tag);
    run_ok(&mut dockerd.docker(&["pull", "-q", &pulled]));
    let saved = w("saved.tar");
    run_ok(&mut dockerd.docker(&["save", "-o", saved.to_str().unwrap(), &pulled]));

    // docker save's archive (uncompressed layers) as a source into dir:: the same files, the
    // same blob bytes (layers stay uncompressed, named by their diff_ids), and the same
    // manifest.json, whose layers skopeo labels `…diff.tar.gzip` (containers/image's synthesis).
    let from = format!("docker-archive:{}", saved.display());
    let (a, b) = (w("sk-dir"), w("fe-dir"));
    skopeo_ok(&["copy", "-q", &from, &format!("dir:{}", a.display())]);
    run_ok(ferry().args(["copy", "-q", &from, &format!("dir:{}", b.display())]));
    assert_same_tree(&a, &b, "docker save -> dir:");
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("manifest.json")).unwrap()).unwrap();
    let layers = written["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    for l in layers {
        assert_eq!(
            l["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "{written}"
        );
    }
    let (by_skopeo, by_ferry) = (
        format!("docker://{}/skopeo/saved:1", dst.addr),
        format!("docker://{}/ferry/saved:1", dst.addr),
    );
    skopeo_ok(&["copy", "-q", "--dest-tls-verify=false", &from, &by_skopeo]);
    run_ok(ferry().args(["copy", "-q", "--dest-tls-verify=false", &from, &by_ferry]));
    // skopeo gzips the layers with Go's compressor, whose bytes no other implementation
    // reproduces: the same structure (gzip layers that decompress to the diff_ids, the same
    // config), read whole by skopeo.
    assert_eq!(config_of(&by_ferry), config_of(&by_skopeo));
    assert_eq!(
        registry_structure(&by_ferry, &w("check-ferry")),
        registry_structure(&by_skopeo, &w("check-skopeo")),
        "docker save -> docker://"
    );
    // Into oci: the same: gzipped, the manifest converted with the OCI gzip layer type.
    let (a, b) = (w("sk-oci"), w("fe-oci"));
    skopeo_ok(&["copy", "-q", &from, &format!("oci:{}:img", a.display())]);
    run_ok(ferry().args(["copy", "-q", &from, &format!("oci:{}:img", b.display())]));
    let (x, y) = (oci_structure(&a), oci_structure(&b));
    assert_eq!(x, y, "docker save -> oci:");
    assert_eq!(
        y["layers"][0][0], "application/vnd.oci.image.layer.v1.tar+gzip",
        "{y}"
    );
    // --preserve-digests: nothing is compressed; into a registry both push the synthesised
    // manifest as it is (the same digest, layers as stored).
    let (kept_sk, kept_fe) = (
        format!("docker://{}/skopeo/kept:1", dst.addr),
        format!("docker://{}/ferry/kept:1", dst.addr),
    );
    for (tool, to) in [("skopeo", &kept_sk), ("ferry", &kept_fe)] {
        let args = [
            "copy",
            "-q",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &from,
            to,
        ];
        if tool == "skopeo" {
            skopeo_ok(&args);
        } else {
            run_ok(ferry().args(args));
        }
    }
    let raw = |r: &str| skopeo_ok(&["inspect", "--tls-verify=false", "--raw", r]).stdout;
    assert_eq!(
        raw(&kept_fe),
        raw(&kept_sk),
        "docker save -> docker:// kept"
    );
    // Into oci: it would need the manifest converted: refused in one line, nothing named
    // (skopeo stores the Docker manifest in the layout instead; ferry's oci: holds OCI only).
    let c = w("kept-oci");
    let refused = run(ferry().args([
        "copy",
        "-q",
        "--preserve-digests",
        &from,
        &format!("oci:{}:img", c.display()),
    ]));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--preserve-digests"), "{err}");
    assert!(
        !c.join("index.json").exists(),
        "nothing is named at the destination"
    );

    // What ferry writes to docker-archive: is what skopeo writes, member for member.
    let reg = format!("docker://{pulled}");
    let (a, b) = (w("sk.tar"), w("fe.tar"));
    let tagged = |p: &Path| format!("docker-archive:{}:x/y:1", p.display());
    skopeo_ok(&["copy", "-q", "--src-tls-verify=false", &reg, &tagged(&a)]);
    run_ok(ferry().args(["copy", "-q", "--src-tls-verify=false", &reg, &tagged(&b)]));
    let (xa, xb) = (w("sk-x"), w("fe-x"));
    untar(&a, &xa);
    untar(&b, &xb);
    assert_same_tree(&xa, &xb, "docker-archive: written");

    // docker-daemon: is loaded by streaming: a stream broken part-way loads nothing and
    // leaves no file behind.
    let tmp = w("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let broken = run(ferry()
        .env("DOCKER_HOST", &dockerd.host)
        .env("TMPDIR", &tmp)
        .env("FERRY_TEST_FAIL_ARCHIVE_STREAM_AT", "1000000")
        .args([
            "copy",
            "-q",
            "--src-tls-verify=false",
            &reg,
            "docker-daemon:broken.example/img:1",
        ]));
    let err = String::from_utf8_lossy(&broken.stderr);
    assert_eq!(broken.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("test hook"), "{err}");
    let inspect = run(&mut dockerd.docker(&["image", "inspect", "broken.example/img:1"]));
    assert!(!inspect.status.success(), "no image was loaded");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "no temp file or directory is left"
    );
    // Unbroken, the same stream loads the image docker pulled.
    run_ok(
        ferry()
            .env("DOCKER_HOST", &dockerd.host)
            .env("TMPDIR", &tmp)
            .args([
                "copy",
                "-q",
                "--src-tls-verify=false",
                &reg,
                "docker-daemon:loaded.example/img:1",
            ]),
    );
    let id = |r: &str| {
        let out = run_ok(&mut dockerd.docker(&["image", "inspect", "--format", "{{.Id}}", r]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(id("loaded.example/img:1"), id(&pulled));
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}
