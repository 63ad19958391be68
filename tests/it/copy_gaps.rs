//! The copy engine's gaps, each checked against real components (skopeo as the oracle
//! where it has an answer): uncompressed layers from any source (one image or every platform
//! of an index), foreign layers out of a
//! root or a bundle, an `oci:` layout that holds a foreign layer's bytes, and a link
//! roll-back that leaves alone what a concurrent writer relies on.

use std::path::Path;

use ferry::store::Store;

use crate::harness::*;

/// The one line a failed `ferry` run prints, checked to be one line with exit 1, returned.
fn one_line(out: &std::process::Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
    err
}

/// A run that links a bundle fails at its second image, after the first is linked; while it
/// waits there a concurrent writer links (so relies on) one of the layers the run linked. The
/// roll-back takes back the run's tag and its other links, but not that one, nor its blob.
#[test]
fn a_failed_link_leaves_a_layer_link_a_concurrent_writer_relies_on() {
    let (_, corpus) = small();
    let (zst, _) = crate::unbundle::bundles();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("r");
    let child = ferry()
        .env("FERRY_TEST_FAIL_LINK_AT", "finish:1")
        .env("FERRY_TEST_FINISH_PAUSE_MS", "4000")
        .args(["unbundle", "link", "-q"])
        .arg(zst)
        .arg("--root")
        .arg(&root)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let img = loop {
        let store = Store::open(&root);
        if let Some(img) = corpus.images.iter().find(|i| {
            store
                .resolve_tag(&i.repository, &i.tag)
                .ok()
                .flatten()
                .is_some()
        }) {
            break img;
        }
        assert!(
            start.elapsed().as_secs() < 120,
            "the run never linked an image"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let store = Store::open(&root);
    let w = store.walk(&img.digest).unwrap();
    assert!(w.blobs.len() >= 2, "an image with a config and a layer");
    let (relied, other) = (&w.blobs.last().unwrap().digest, &w.blobs[0].digest);
    assert!(store.has_layer_link(&img.repository, relied));
    // The concurrent writer: links the layer into the same repository (it is there: it relies on it).
    store.link_layer(&img.repository, relied).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = one_line(&out, "the failed link");
    assert!(err.contains("test hook"), "{err}");
    assert!(
        store.has_layer_link(&img.repository, relied),
        "the layer link another writer relies on stays"
    );
    assert!(store.has_blob(relied), "and so does its blob");
    assert_eq!(
        store.resolve_tag(&img.repository, &img.tag).unwrap(),
        None,
        "the run's tag is taken back"
    );
    assert!(
        !store.has_revision(&img.repository, &img.digest),
        "the run's revision link is taken back"
    );
    assert!(
        !store.has_layer_link(&img.repository, other),
        "the run's other layer links are taken back"
    );
}

/// The layer media types of an image manifest.
fn layer_types(manifest: &[u8]) -> Vec<String> {
    let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_string())
        .collect()
}

/// How many distinct layers the children of `oci:LAYOUT`'s top index name.
fn distinct_layers(layout: &Path) -> usize {
    let blob = |d: &str| std::fs::read(layout.join("blobs/sha256").join(&d[7..])).unwrap();
    let index: serde_json::Value = serde_json::from_slice(&oci_manifest(layout)).unwrap();
    let mut layers = std::collections::BTreeSet::new();
    for e in index["manifests"].as_array().unwrap() {
        let child: serde_json::Value =
            serde_json::from_slice(&blob(e["digest"].as_str().unwrap())).unwrap();
        for l in child["layers"].as_array().unwrap() {
            layers.insert(l["digest"].as_str().unwrap().to_string());
        }
    }
    layers.len()
}

/// Puts annotations on `oci:LAYOUT`'s top index and on its first entry (written as a new
/// index blob that index.json names), so a rewrite must carry both.
fn annotate_index(layout: &Path) {
    let mut index: serde_json::Value = serde_json::from_slice(&oci_manifest(layout)).unwrap();
    index["annotations"] = serde_json::json!({"org.example.index": "kept"});
    index["manifests"][0]["annotations"] = serde_json::json!({"org.example.entry": "kept"});
    let bytes = serde_json::to_vec(&index).unwrap();
    let digest = sha256(&bytes);
    std::fs::write(layout.join("blobs/sha256").join(&digest[7..]), &bytes).unwrap();
    let path = layout.join("index.json");
    let mut top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    top["manifests"][0]["digest"] = digest.into();
    top["manifests"][0]["size"] = bytes.len().into();
    std::fs::write(path, serde_json::to_vec(&top).unwrap()).unwrap();
}

/// The top manifest of `oci:LAYOUT` (its one image).
fn oci_manifest(layout: &Path) -> Vec<u8> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let hex = &index["manifests"][0]["digest"].as_str().unwrap()[7..];
    std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
}

/// Plain-tar layers (skopeo `--dest-decompress` wrote them into `dir:`, then kept them into
/// `oci:` with `--dest-oci-accept-uncompressed-layers`) copied from `dir:` and `oci:` to a
/// registry and to `oci:` are gzipped by ferry as by skopeo: the same manifest type, config
/// and layer types, each layer gzip of its diff_id; into `dir:` both keep them as they are;
/// `--preserve-digests` keeps them (the digest skopeo keeps).
#[test]
fn uncompressed_layers_from_dir_and_oci_are_gzipped_as_skopeo_gzips_them() {
    use ferry::media_type as mt;
    let (root, corpus) = tiny();
    let reg = Registry::start(root.path());
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let find = |t: &str| corpus.images.iter().find(|i| i.media_type == t).unwrap();
    let (docker, oci) = (find(mt::DOCKER_MANIFEST), find(mt::OCI_MANIFEST));
    let src = |i: &ferry::fixtures::FixtureImage| {
        format!("docker://{}/{}:{}", reg.addr, i.repository, i.tag)
    };
    let (d1, d2, o2) = (w.join("d1"), w.join("d2"), w.join("o2"));
    let arg = |p: &Path, pre: &str, suf: &str| format!("{pre}:{}{suf}", p.display());
    let tls = "--src-tls-verify=false";
    skopeo_ok(&[
        "copy",
        "-q",
        tls,
        "--dest-decompress",
        &src(docker),
        &arg(&d1, "dir", ""),
    ]);
    skopeo_ok(&[
        "copy",
        "-q",
        tls,
        "--dest-decompress",
        &src(oci),
        &arg(&d2, "dir", ""),
    ]);
    skopeo_ok(&[
        "copy",
        "-q",
        "--dest-oci-accept-uncompressed-layers",
        &arg(&d2, "dir", ""),
        &arg(&o2, "oci", ":img"),
    ]);
    let plain = |m: &[u8], t: &str| layer_types(m).iter().all(|l| l == t);
    assert!(plain(
        &std::fs::read(d1.join("manifest.json")).unwrap(),
        "application/vnd.docker.image.rootfs.diff.tar"
    ));
    assert!(
        plain(&oci_manifest(&o2), mt::OCI_LAYER),
        "the fixture has plain tar layers"
    );

    let raw = |r: &str| skopeo_ok(&["inspect", "--raw", "--tls-verify=false", r]).stdout;
    let scratch = |n: &str| w.join(format!("scratch-{n}"));
    for (from, name) in [
        (arg(&d1, "dir", ""), "dir"),
        (arg(&o2, "oci", ":img"), "oci"),
    ] {
        // To a registry: the same structure (types, config, what each layer gunzips to).
        let (sk, fe) = (
            format!("docker://{}/out/{name}:skopeo", reg.addr),
            format!("docker://{}/out/{name}:ferry", reg.addr),
        );
        skopeo_ok(&["copy", "-q", "--dest-tls-verify=false", &from, &sk]);
        run_ok(ferry().args(["copy", "-q", "--dest-tls-verify=false", &from, &fe]));
        assert_eq!(
            crate::daemon::registry_structure(&sk, &scratch(&format!("{name}-sk"))),
            crate::daemon::registry_structure(&fe, &scratch(&format!("{name}-fe"))),
            "{from} -> docker://: as skopeo gzips"
        );
        // To an OCI layout.
        let (oa, ob) = (
            w.join(format!("{name}-skopeo")),
            w.join(format!("{name}-ferry")),
        );
        skopeo_ok(&["copy", "-q", &from, &arg(&oa, "oci", ":img")]);
        run_ok(ferry().args(["copy", "-q", &from, &arg(&ob, "oci", ":img")]));
        assert_eq!(
            crate::daemon::oci_structure(&oa),
            crate::daemon::oci_structure(&ob),
            "{from} -> oci:: as skopeo gzips"
        );
        // To dir: both keep the layers as they are (the same tree, byte for byte).
        let (da, db) = (
            w.join(format!("{name}-dir-skopeo")),
            w.join(format!("{name}-dir-ferry")),
        );
        skopeo_ok(&["copy", "-q", &from, &arg(&da, "dir", "")]);
        run_ok(ferry().args(["copy", "-q", &from, &arg(&db, "dir", "")]));
        assert_eq!(files(&da), files(&db), "{from} -> dir:");
    }
    // --preserve-digests (after the others: skopeo keeps a plain layer the destination has,
    // and ferry does too): the layers go as they are, the digest is the source's.
    for (from, name) in [
        (arg(&d1, "dir", ""), "dir"),
        (arg(&o2, "oci", ":img"), "oci"),
    ] {
        let (sk, fe) = (
            format!("docker://{}/out/{name}:keep-skopeo", reg.addr),
            format!("docker://{}/out/{name}:keep-ferry", reg.addr),
        );
        skopeo_ok(&[
            "copy",
            "-q",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &from,
            &sk,
        ]);
        run_ok(ferry().args([
            "copy",
            "-q",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &from,
            &fe,
        ]));
        assert_eq!(
            sha256(&raw(&fe)),
            sha256(&raw(&sk)),
            "{from}: --preserve-digests"
        );
    }

    // Now that the repository has the plain layers, a copy that may gzip keeps them as they
    // are, as skopeo does (it reuses what the destination has).
    let from = arg(&o2, "oci", ":img");
    let (sk, fe) = (
        format!("docker://{}/out/oci:again-skopeo", reg.addr),
        format!("docker://{}/out/oci:again-ferry", reg.addr),
    );
    skopeo_ok(&["copy", "-q", "--dest-tls-verify=false", &from, &sk]);
    run_ok(ferry().args(["copy", "-q", "--dest-tls-verify=false", &from, &fe]));
    let kept = sha256(&oci_manifest(&o2));
    assert_eq!(
        sha256(&raw(&sk)),
        kept,
        "skopeo keeps the plain layers it finds"
    );
    assert_eq!(sha256(&raw(&fe)), kept, "so does ferry");

    // An image already in a registry keeps its digest whatever its layers are, so no mover
    // (copy, sync, unbundle push) orphans the pins, signatures and referrers that name it.
    let moved = format!("docker://{}/out/kept:ferry", reg.addr);
    run_ok(ferry().args([
        "copy",
        "-q",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &sk,
        &moved,
    ]));
    assert_eq!(
        sha256(&raw(&moved)),
        kept,
        "a registry source's plain layers go as they are"
    );
    // A multi-platform image with such layers is gzipped platform by platform: see
    // `a_multi_platform_image_with_plain_layers_is_gzipped_platform_by_platform_as_skopeo_does`.
}

/// What skopeo and ferry must agree on for a multi-platform image whose layers were gzipped on
/// the way, read back by skopeo (`copy --all` out of it into `dir:`): the index's media type
/// and entries (media type, platform, annotations, count and order), and each child's
/// `gzipped_structure` (its type, its config, what each layer gunzips to); each entry names
/// its child's bytes. Also returns the index's digest.
fn index_structure(reference: &str, scratch: &Path) -> (serde_json::Value, String) {
    skopeo_ok(&[
        "copy",
        "-q",
        "--all",
        "--src-tls-verify=false",
        reference,
        &format!("dir:{}", scratch.display()),
    ]);
    let read = |name: &str| std::fs::read(scratch.join(name)).unwrap();
    let index_bytes = read("manifest.json");
    let index: serde_json::Value = serde_json::from_slice(&index_bytes).unwrap();
    let blob = |d: &str| read(&d[7..]);
    let entries: Vec<serde_json::Value> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let d = e["digest"].as_str().unwrap();
            let child = read(&format!("{}.manifest.json", &d[7..]));
            assert_eq!(sha256(&child), d, "{reference}: the entry names its child");
            assert_eq!(child.len() as u64, e["size"].as_u64().unwrap());
            serde_json::json!({
                "mediaType": e["mediaType"],
                "platform": e["platform"],
                "annotations": e["annotations"],
                "image": crate::daemon::gzipped_structure(&child, &blob),
            })
        })
        .collect();
    (
        serde_json::json!({
            "mediaType": index["mediaType"],
            "annotations": index["annotations"],
            "manifests": entries,
        }),
        sha256(&index_bytes),
    )
}

/// A multi-platform image whose layers are plain tar (skopeo `--all --dest-decompress` wrote
/// it into `dir:` as a Docker list, then `--dest-oci-accept-uncompressed-layers` into `oci:`
/// as an OCI index) copied with `--all` from `oci:` and `dir:` into a registry and into `oci:`
/// is gzipped by ferry as by skopeo: every platform's layers gzipped, each child written anew,
/// the index rewritten to name them (the same index type, entries, platforms and order, each
/// child's type and config, what each layer gunzips to), readable by skopeo. With
/// `--preserve-digests` both keep every digest, and both refuse where the destination needs
/// a conversion (ferry in one line, saying what it cannot keep). A layer that fails on the
/// way fails the copy in one line, with no tag at the destination.
#[test]
fn a_multi_platform_image_with_plain_layers_is_gzipped_platform_by_platform_as_skopeo_does() {
    use ferry::media_type as mt;
    let (root, corpus) = tiny();
    let reg = Registry::start(root.path());
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let multi = multi_arch(&corpus);
    let arg = |p: &Path, pre: &str, suf: &str| format!("{pre}:{}{suf}", p.display());
    let (d3, o3) = (w.join("d3"), w.join("o3"));
    skopeo_ok(&[
        "copy",
        "-q",
        "--all",
        "--src-tls-verify=false",
        "--dest-decompress",
        &format!("docker://{}/{}:{}", reg.addr, multi.repository, multi.tag),
        &arg(&d3, "dir", ""),
    ]);
    skopeo_ok(&[
        "copy",
        "-q",
        "--all",
        "--dest-oci-accept-uncompressed-layers",
        &arg(&d3, "dir", ""),
        &arg(&o3, "oci", ":img"),
    ]);
    annotate_index(&o3);
    // The fixtures: a Docker list and an OCI index, every platform's layers plain tar.
    let children = |index: &[u8], read: &dyn Fn(&str) -> Vec<u8>, kind: &str, layer: &str| {
        let index: serde_json::Value = serde_json::from_slice(index).unwrap();
        assert_eq!(index["mediaType"], kind);
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), multi.platforms.len());
        for e in entries {
            let types = layer_types(&read(&e["digest"].as_str().unwrap()[7..]));
            assert!(
                !types.is_empty() && types.iter().all(|t| t == layer),
                "{types:?}"
            );
        }
    };
    let d3_list = std::fs::read(d3.join("manifest.json")).unwrap();
    children(
        &d3_list,
        &|hex| std::fs::read(d3.join(format!("{hex}.manifest.json"))).unwrap(),
        mt::DOCKER_MANIFEST_LIST,
        mt::DOCKER_LAYER,
    );
    let o3_index = oci_manifest(&o3);
    children(
        &o3_index,
        &|hex| std::fs::read(o3.join("blobs/sha256").join(hex)).unwrap(),
        mt::OCI_INDEX,
        mt::OCI_LAYER,
    );

    let scratch = |n: &str| w.join(format!("scratch-{n}"));
    let sources = [
        (arg(&o3, "oci", ":img"), "oci", sha256(&o3_index)),
        (arg(&d3, "dir", ""), "dir", sha256(&d3_list)),
    ];
    for (from, name, source_digest) in &sources {
        // To a registry: the same structure; the index's digest changes (both tools).
        let (sk, fe) = (
            format!("docker://{}/out/{name}:skopeo", reg.addr),
            format!("docker://{}/out/{name}:ferry", reg.addr),
        );
        skopeo_ok(&["copy", "-q", "--all", "--dest-tls-verify=false", from, &sk]);
        run_ok(ferry().args(["copy", "-q", "--all", "--dest-tls-verify=false", from, &fe]));
        let (a, a_digest) = index_structure(&sk, &scratch(&format!("{name}-sk")));
        let (b, b_digest) = index_structure(&fe, &scratch(&format!("{name}-fe")));
        assert_eq!(a, b, "{from} -> docker://: as skopeo gzips");
        assert_ne!(&a_digest, source_digest, "skopeo rewrites the index");
        assert_ne!(&b_digest, source_digest, "so does ferry");
        assert_eq!(
            inspect_digest(&fe),
            b_digest,
            "skopeo inspect --raw reads it"
        );
        // To an OCI layout (from dir:, converted to OCI as well).
        let (oa, ob) = (
            arg(&w.join(format!("{name}-skopeo")), "oci", ":img"),
            arg(&w.join(format!("{name}-ferry")), "oci", ":img"),
        );
        skopeo_ok(&["copy", "-q", "--all", from, &oa]);
        run_ok(ferry().args(["copy", "-q", "--all", from, &ob]));
        let (a, a_digest) = index_structure(&oa, &scratch(&format!("{name}-oci-sk")));
        let (b, b_digest) = index_structure(&ob, &scratch(&format!("{name}-oci-fe")));
        assert_eq!(a, b, "{from} -> oci:: as skopeo gzips");
        assert_eq!(a["mediaType"], mt::OCI_INDEX);
        // A plain layer the platforms share is gzipped once: one gzipped layer for each.
        assert_eq!(
            distinct_layers(&w.join(format!("{name}-ferry"))),
            distinct_layers(&o3),
            "{from}: one gzipped layer per plain layer"
        );
        assert_ne!(&a_digest, source_digest, "skopeo rewrites the index");
        assert_ne!(&b_digest, source_digest, "so does ferry");
    }

    // A plain layer that fails on the way (its bytes are not what the manifest names, in a
    // copy of the layout): one line naming it, no tag. Before any copy has put the plain
    // layers into the registry, where a copy would reuse them as they are.
    let o4 = w.join("o4");
    run_ok(std::process::Command::new("cp").arg("-r").arg(&o3).arg(&o4));
    let child =
        serde_json::from_slice::<serde_json::Value>(&o3_index).unwrap()["manifests"][1]["digest"]
            .as_str()
            .unwrap()
            .to_string();
    let child: serde_json::Value =
        serde_json::from_slice(&std::fs::read(o3.join("blobs/sha256").join(&child[7..])).unwrap())
            .unwrap();
    let layer = child["layers"][0]["digest"].as_str().unwrap();
    let path = o4.join("blobs/sha256").join(&layer[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let bad = format!("docker://{}/out/bad:ferry", reg.addr);
    let out = run(ferry().args([
        "copy",
        "-q",
        "--all",
        "--dest-tls-verify=false",
        &arg(&o4, "oci", ":img"),
        &bad,
    ]));
    let err = one_line(&out, "a damaged plain layer");
    assert!(err.contains(layer), "{err}");
    assert!(
        !skopeo(&["inspect", "--raw", "--tls-verify=false", &bad])
            .status
            .success(),
        "no tag at the destination"
    );

    // --preserve-digests: both keep the layers as they are, and every digest.
    for (from, name, source_digest) in &sources {
        let (sk, fe) = (
            format!("docker://{}/out/{name}:keep-skopeo", reg.addr),
            format!("docker://{}/out/{name}:keep-ferry", reg.addr),
        );
        let keep = ["copy", "-q", "--all", "--preserve-digests"];
        let tls = "--dest-tls-verify=false";
        skopeo_ok(&[&keep[..], &[tls, from.as_str(), sk.as_str()]].concat());
        run_ok(ferry().args(keep).args([tls, from.as_str(), fe.as_str()]));
        assert_eq!(&inspect_digest(&sk), source_digest, "{from}: skopeo keeps");
        assert_eq!(&inspect_digest(&fe), source_digest, "{from}: ferry keeps");
    }
    // Where the destination needs a conversion (a Docker list into oci:), both refuse.
    let (from, _, _) = &sources[1];
    let kb_dir = w.join("keep-ferry");
    let (ka, kb) = (
        arg(&w.join("keep-skopeo"), "oci", ":img"),
        arg(&kb_dir, "oci", ":img"),
    );
    let keep = ["copy", "-q", "--all", "--preserve-digests"];
    let refused = skopeo(&[&keep[..], &[from.as_str(), ka.as_str()]].concat());
    assert!(!refused.status.success(), "skopeo refuses too");
    let out = run(ferry().args(keep).args([from.as_str(), kb.as_str()]));
    let err = one_line(&out, "a conversion with --preserve-digests");
    assert!(
        err.contains("--preserve-digests") && err.contains("converted to OCI"),
        "{err}"
    );
    assert!(!kb_dir.join("index.json").exists(), "nothing named");
}

/// Two registries for foreign layers: H holds the foreign layer's bytes (`held:1`, whose own
/// URL is dead), S names them: `live:1` by a URL into H, `dead:1` by a URL nothing answers;
/// S's root lacks the bytes, as a bundle or a linked root does.
struct ForeignSites {
    h_dir: tempfile::TempDir,
    s_dir: tempfile::TempDir,
    h: Registry,
    s: Registry,
    layer: ferry::digest::Digest,
}

const DEAD_URL: &str = "http://127.0.0.1:1/foreign-layer";

fn foreign_sites() -> ForeignSites {
    use ferry::fixtures::foreign_layer;
    let (h_dir, s_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = Store::create(h_dir.path()).unwrap().with_durable(false);
    let dead = DEAD_URL.to_string();
    let held = foreign_layer(&store, "held", "1", std::slice::from_ref(&dead), true).unwrap();
    // A layer whose only URL is not http: containers/image reads it from an OCI layout.
    foreign_layer(
        &store,
        "nonhttp",
        "1",
        &["ftp://127.0.0.1:1/x".into()],
        true,
    )
    .unwrap();
    let h = Registry::start(h_dir.path());
    let store = Store::create(s_dir.path()).unwrap().with_durable(false);
    let live_url = format!("http://{}/v2/held/blobs/{}", h.addr, held.layer);
    foreign_layer(&store, "live", "1", &[live_url], false).unwrap();
    foreign_layer(&store, "dead", "1", &[dead], false).unwrap();
    assert!(!store.has_blob(&held.layer), "S lacks the foreign bytes");
    let s = Registry::start(s_dir.path());
    ForeignSites {
        h_dir,
        s_dir,
        h,
        s,
        layer: held.layer,
    }
}

/// Copying an image with a foreign layer out of a registry root or a bundle (neither holds the
/// layer's bytes) into `dir:` fetches the layer from its URL: the tree skopeo writes from a
/// registry serving the same root, byte for byte; into `docker-archive:` too (skopeo reads
/// it back to the same `dir:`). A URL that does not answer fails in one line, nothing written.
#[test]
fn foreign_layers_out_of_a_root_and_a_bundle_are_fetched_from_their_urls() {
    let f = foreign_sites();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let root = f.s_dir.path().display().to_string();
    let dir = |p: &Path| format!("dir:{}", p.display());
    let oracle = w.join("skopeo");
    skopeo_ok(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        &format!("docker://{}/live:1", f.s.addr),
        &dir(&oracle),
    ]);
    assert!(
        oracle.join(f.layer.hex()).exists(),
        "skopeo fetched the layer"
    );

    // From the root.
    let from_root = w.join("from-root");
    run_ok(ferry().args([
        "copy",
        "-q",
        &format!("registry-root:{root}/live:1"),
        &dir(&from_root),
    ]));
    assert_eq!(files(&oracle), files(&from_root), "registry-root: -> dir:");

    // From a bundle of S, which leaves the foreign layer out.
    let list = w.join("list.txt");
    std::fs::write(&list, "live:1\n").unwrap();
    let bundle = w.join("b.tar.zst");
    run_ok(
        ferry()
            .args([
                "bundle",
                "-q",
                "--src-tls-verify=false",
                "--source",
                &f.s.addr,
                "-f",
            ])
            .arg(&list)
            .arg("-o")
            .arg(&bundle)
            .arg("--cache")
            .arg(w.join("cache")),
    );
    let from_bundle = w.join("from-bundle");
    run_ok(ferry().args([
        "copy",
        "-q",
        &format!("ferry-bundle:{}:live:1", bundle.display()),
        &dir(&from_bundle),
    ]));
    assert_eq!(files(&oracle), files(&from_bundle), "ferry-bundle: -> dir:");

    // Into docker-archive:, read back by skopeo as skopeo's own archive of the registry's image.
    let (xa, xb) = (w.join("skopeo.tar"), w.join("ferry.tar"));
    skopeo_ok(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        &format!("docker://{}/live:1", f.s.addr),
        &format!("docker-archive:{}:live:1", xa.display()),
    ]);
    run_ok(ferry().args([
        "copy",
        "-q",
        &format!("registry-root:{root}/live:1"),
        &format!("docker-archive:{}:live:1", xb.display()),
    ]));
    let (ya, yb) = (w.join("back-skopeo"), w.join("back-ferry"));
    skopeo_ok(&[
        "copy",
        "-q",
        &format!("docker-archive:{}", xa.display()),
        &dir(&ya),
    ]);
    skopeo_ok(&[
        "copy",
        "-q",
        &format!("docker-archive:{}", xb.display()),
        &dir(&yb),
    ]);
    assert_eq!(files(&ya), files(&yb), "registry-root: -> docker-archive:");

    // A URL nothing answers, and no bytes in the root: one line, nothing written.
    let dead = w.join("dead");
    let out = run(ferry().env("FERRY_TEST_NO_RETRY_DELAY", "1").args([
        "copy",
        "-q",
        &format!("registry-root:{root}/dead:1"),
        &dir(&dead),
    ]));
    let err = one_line(&out, "a dead URL");
    assert!(
        err.contains(&f.layer.to_string()) && err.contains("dead:1"),
        "{err}"
    );
    assert!(!dead.join("manifest.json").exists(), "nothing named");
    drop((f.h, f.h_dir));
}

/// An `oci:` layout that holds a foreign layer's bytes gives them when its URLs are not http
/// (as skopeo does: the same `dir:` tree) or do not answer (where skopeo fails); a layout
/// without the bytes and a dead URL still fails in one line.
#[test]
fn an_oci_layout_that_holds_a_foreign_layer_gives_it_when_its_urls_cannot() {
    let f = foreign_sites();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let bytes = std::fs::read(
        Store::open(f.h_dir.path()).path(ferry::store::paths::PathSpec::BlobData(&f.layer)),
    )
    .unwrap();
    let layout = |name: &str, hold: bool| {
        let o = w.join(format!("oci-{name}-{hold}"));
        skopeo_ok(&[
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{}/{name}:1", f.h.addr),
            &format!("oci:{}:img", o.display()),
        ]);
        let blob = o.join("blobs/sha256").join(f.layer.hex());
        assert!(!blob.exists(), "skopeo keeps only the URLs in oci:");
        if hold {
            std::fs::write(&blob, &bytes).unwrap();
        }
        format!("oci:{}:img", o.display())
    };
    let dir = |name: &str| w.join(name);
    let copy = |from: &str, to: &Path| {
        run(ferry().env("FERRY_TEST_NO_RETRY_DELAY", "1").args([
            "copy",
            "-q",
            from,
            &format!("dir:{}", to.display()),
        ]))
    };

    // Not http: both read the layout.
    let nonhttp = layout("nonhttp", true);
    skopeo_ok(&[
        "copy",
        "-q",
        &nonhttp,
        &format!("dir:{}", dir("sk-nonhttp").display()),
    ]);
    let out = copy(&nonhttp, &dir("fe-nonhttp"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        files(&dir("sk-nonhttp")),
        files(&dir("fe-nonhttp")),
        "non-http URL"
    );

    // A dead http URL: skopeo fails, ferry reads the layout.
    let held = layout("held", true);
    let out = copy(&held, &dir("fe-held"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(dir("fe-held").join(f.layer.hex())).unwrap(),
        bytes
    );

    // Neither: one line, nothing named.
    let lacking = layout("held", false);
    let out = copy(&lacking, &dir("fe-none"));
    let err = one_line(&out, "neither the layout nor the URL");
    assert!(err.contains(&f.layer.to_string()), "{err}");
    assert!(
        !dir("fe-none").join("manifest.json").exists(),
        "nothing named"
    );
}
