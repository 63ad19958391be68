//! The store's layout against the real thing: distribution serves what ferry
//! writes, and ferry serves what distribution writes.

use crate::harness::*;

#[test]
fn docker_registry_serves_a_root_written_by_ferry() {
    let (root, corpus) = small();
    let work = tempfile::tempdir().unwrap();
    let reg_root = work.path().join("root");
    std::fs::create_dir(&reg_root).unwrap();
    hardlink_copy(root, &reg_root);
    let reg = Registry::start(&reg_root);

    let mut platforms_pulled = 0;
    for img in &corpus.images {
        let name = format!("{}:{}", img.repository, img.tag);
        assert_eq!(
            inspect_digest(&format!("docker://{}/{name}", reg.addr)),
            img.digest.to_string(),
            "{name}"
        );
        let src = format!("docker://{}/{name}", reg.addr);
        if img.platforms.is_empty() {
            let dest = work.path().join(format!("dir-{}", platforms_pulled));
            skopeo_ok(&[
                "copy",
                "-q",
                "--src-tls-verify=false",
                &src,
                &format!("dir:{}", dest.display()),
            ]);
            let manifest = std::fs::read(dest.join("manifest.json")).unwrap();
            assert_eq!(
                sha256(&manifest),
                img.digest.to_string(),
                "{name}: skopeo keeps the bytes"
            );
            platforms_pulled += 1;
        }
        for (platform, child) in &img.platforms {
            let parts: Vec<&str> = platform.split('/').collect();
            let dest = work.path().join(format!("dir-{}", platforms_pulled));
            let mut args = vec![
                "copy",
                "-q",
                "--src-tls-verify=false",
                "--override-os",
                parts[0],
                "--override-arch",
                parts[1],
            ];
            if let Some(v) = parts.get(2) {
                args.extend(["--override-variant", v]);
            }
            let dest_arg = format!("dir:{}", dest.display());
            args.extend([src.as_str(), dest_arg.as_str()]);
            skopeo_ok(&args);
            let manifest = std::fs::read(dest.join("manifest.json")).unwrap();
            assert_eq!(sha256(&manifest), child.to_string(), "{name} {platform}");
            platforms_pulled += 1;
        }
    }
    let multi: usize = corpus.images.iter().map(|i| i.platforms.len()).sum();
    assert!(multi >= 6, "the corpus has multi-arch images");
    assert!(platforms_pulled >= corpus.images.len() + 3);

    let (blobs, manifests, text) = reg.gc_dry_run();
    assert_eq!(
        (blobs, manifests),
        (0, 0),
        "garbage-collect would delete something:\n{text}"
    );
}

#[test]
fn ferry_serves_a_root_filled_by_docker_registry() {
    let (root, corpus) = small();
    let work = tempfile::tempdir().unwrap();
    let src_root = work.path().join("src");
    std::fs::create_dir(&src_root).unwrap();
    hardlink_copy(root, &src_root);
    let src = Registry::start(&src_root);
    let dst_root = work.path().join("dst");
    std::fs::create_dir(&dst_root).unwrap();
    let dst = Registry::start(&dst_root);
    for img in &corpus.images {
        let name = format!("{}:{}", img.repository, img.tag);
        skopeo_ok(&[
            "copy",
            "-q",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{}/{name}", src.addr),
            &format!("docker://{}/{name}", dst.addr),
        ]);
    }
    drop(src);

    let ferry_serve = FerryServe::start(&dst_root);
    for img in &corpus.images {
        let name = format!("{}:{}", img.repository, img.tag);
        assert_eq!(
            inspect_digest(&format!("docker://{}/{name}", ferry_serve.addr)),
            img.digest.to_string(),
            "{name}"
        );
        assert_eq!(
            inspect_digest(&format!("docker://{}/{name}", dst.addr)),
            img.digest.to_string(),
            "{name} in the target registry"
        );
        let oci = work.path().join("oci");
        skopeo_ok(&[
            "copy",
            "-q",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{}/{name}", ferry_serve.addr),
            &format!("oci:{}:{}", oci.display(), img.tag),
        ]);
    }
    // Tag lists hold the same tags as distribution's (which come in directory order; ours are sorted).
    for repo in corpus.images.iter().map(|i| i.repository.as_str()) {
        let path = format!("/v2/{repo}/tags/list");
        let tags = |addr: &str| {
            let (status, _, body) = http(addr, "GET", &path, &[]).unwrap();
            assert_eq!(status, 200, "{addr}{path}");
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["name"], repo);
            serde_json::from_value::<Vec<String>>(v["tags"].clone()).unwrap()
        };
        let ours = tags(&ferry_serve.addr);
        let mut theirs = tags(&dst.addr);
        theirs.sort();
        assert_eq!(ours, theirs, "{repo}");
    }
    let status = ferry_serve.stop().expect("ferry serve stops on SIGTERM");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}
