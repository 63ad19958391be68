//! skopeo as the oracle of `ferry copy`: the same inputs through both, for
//! every source × destination pair both support. What lands in `dir:` and
//! `oci:` must be the same file set, byte for byte (JSON compared as values
//! where skopeo's own bytes are not reproducible); archives must be readable
//! by skopeo with the same digests; registries must end up with the same
//! digest.

use std::path::{Path, PathBuf};

use crate::harness::*;

/// Asserts two trees hold the same files with the same bytes (JSON files: the same values).
fn assert_same_tree(skopeo_dir: &Path, ferry_dir: &Path, what: &str) {
    let (a, b) = (files(skopeo_dir), files(ferry_dir));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: the same file set"
    );
    for (name, bytes) in &a {
        let other = &b[name];
        if bytes == other {
            continue;
        }
        let as_json = |x: &[u8]| serde_json::from_slice::<serde_json::Value>(x).ok();
        match (as_json(bytes), as_json(other)) {
            (Some(x), Some(y)) => assert_eq!(x, y, "{what}: {name} as JSON"),
            _ => panic!("{what}: {name} differs"),
        }
    }
}

/// The digest skopeo reports for an image reference.
fn digest_of(reference: &str) -> String {
    let out = skopeo_ok(&["inspect", "--tls-verify=false", "--raw", reference]);
    sha256(&out.stdout)
}

/// The config digest (the image ID) of an image reference.
fn config_of(reference: &str) -> String {
    let out = skopeo_ok(&["inspect", "--tls-verify=false", "--raw", reference]);
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    m["config"]["digest"].as_str().unwrap().to_string()
}

struct Matrix {
    work: tempfile::TempDir,
    src: Registry,
    n: usize,
}

impl Matrix {
    fn path(&mut self, name: &str) -> PathBuf {
        self.n += 1;
        self.work.path().join(format!("{}-{name}", self.n))
    }
}

/// The images the matrix runs on: a Docker schema 2 image, an OCI image, and a multi-platform list.
fn picks(corpus: &ferry::fixtures::Corpus) -> Vec<&ferry::fixtures::FixtureImage> {
    use ferry::media_type as mt;
    let docker = corpus
        .images
        .iter()
        .find(|i| i.media_type == mt::DOCKER_MANIFEST)
        .unwrap();
    let oci = corpus
        .images
        .iter()
        .find(|i| i.media_type == mt::OCI_MANIFEST)
        .unwrap();
    let list = multi_arch(corpus);
    vec![docker, oci, list]
}

#[test]
fn dir_and_oci_written_as_skopeo_writes_them() {
    let (_, corpus) = small();
    let (_src_dir, src) = small_registry();
    let mut m = Matrix {
        work: tempfile::tempdir().unwrap(),
        src,
        n: 0,
    };
    for img in picks(corpus) {
        let from = format!("docker://{}/{}:{}", m.src.addr, img.repository, img.tag);
        // Without --all (one platform), with --all, and converted.
        let variants: Vec<Vec<&str>> = vec![
            vec![],
            vec!["--all"],
            vec!["--format", "oci"],
            vec!["--format", "v2s2"],
        ];
        for flags in variants {
            for transport in ["dir", "oci"] {
                if transport == "oci" && flags.contains(&"v2s2") {
                    continue; // an OCI layout holds OCI manifests only: both tools refuse or convert back
                }
                let (a, b) = (m.path("skopeo"), m.path("ferry"));
                let what = format!("{from} {flags:?} -> {transport}:");
                let args = [&["--src-tls-verify=false"][..], &flags].concat();
                same_copy(&args, &from, &a, &b, transport, &what);
            }
        }
    }
}

#[test]
fn every_source_transport_reads_what_skopeo_wrote() {
    let (_, corpus) = small();
    let (_src_dir, src) = small_registry();
    let (_dst_dir, dst) = empty_registry();
    let mut m = Matrix {
        work: tempfile::tempdir().unwrap(),
        src,
        n: 0,
    };
    for img in picks(corpus) {
        let from = format!("docker://{}/{}:{}", m.src.addr, img.repository, img.tag);
        let all = img.platforms.len() > 1;
        // skopeo writes each format; ferry reads it and copies into a registry; skopeo reads it into the same registry.
        let mut sources = vec![
            format!("dir:{}", m.path("dir").display()),
            format!("oci:{}:img", m.path("oci").display()),
            format!("oci-archive:{}:img", m.path("oci.tar").display()),
        ];
        if !all {
            sources.push(format!(
                "docker-archive:{}:x/y:1",
                m.path("docker.tar").display()
            ));
        }
        for s in &sources {
            let mut args = vec!["copy", "-q", "--src-tls-verify=false"];
            if all && !s.starts_with("docker-archive") {
                args.push("--all");
            }
            let write = [args.clone(), vec![from.as_str(), s.as_str()]].concat();
            skopeo_ok(&write);
            let n = m.n;
            let by_skopeo = format!("docker://{}/skopeo/{n}:1", dst.addr);
            let by_ferry = format!("docker://{}/ferry/{n}:1", dst.addr);
            let mut read = vec!["copy", "-q", "--dest-tls-verify=false"];
            if all && !s.starts_with("docker-archive") {
                read.push("--all");
            }
            skopeo_ok(&[read.clone(), vec![s.as_str(), by_skopeo.as_str()]].concat());
            run_ok(ferry().args([read, vec![s.as_str(), by_ferry.as_str()]].concat()));
            if s.starts_with("docker-archive") {
                // A docker-archive holds uncompressed layers; skopeo gzips them on the way to a
                // registry with Go's compressor, whose bytes no other implementation reproduces.
                // The image is the same when its config (the image ID) is: compare that, and
                // that skopeo reads ferry's result whole.
                assert_eq!(
                    config_of(&by_ferry),
                    config_of(&by_skopeo),
                    "{s}: ferry and skopeo push the same image"
                );
                let out = m.path("check");
                skopeo_ok(&[
                    "copy",
                    "-q",
                    "--src-tls-verify=false",
                    &by_ferry,
                    &format!("dir:{}", out.display()),
                ]);
            } else {
                assert_eq!(
                    digest_of(&by_ferry),
                    digest_of(&by_skopeo),
                    "{s}: ferry and skopeo push the same image"
                );
            }
        }
    }
}

#[test]
fn archives_ferry_writes_are_read_by_skopeo() {
    let (_, corpus) = small();
    let (_src_dir, src) = small_registry();
    let mut m = Matrix {
        work: tempfile::tempdir().unwrap(),
        src,
        n: 0,
    };
    for img in picks(corpus) {
        let from = format!("docker://{}/{}:{}", m.src.addr, img.repository, img.tag);
        for transport in ["oci-archive", "docker-archive"] {
            let (a, b) = (m.path("skopeo.tar"), m.path("ferry.tar"));
            let reference = if transport == "oci-archive" {
                "img"
            } else {
                "x/y:1"
            };
            let dst_a = format!("{transport}:{}:{reference}", a.display());
            let dst_b = format!("{transport}:{}:{reference}", b.display());
            skopeo_ok(&["copy", "-q", "--src-tls-verify=false", &from, &dst_a]);
            run_ok(ferry().args(["copy", "-q", "--src-tls-verify=false", &from, &dst_b]));
            // skopeo reads both into dir: trees, which must be the same.
            let (da, db) = (m.path("from-skopeo"), m.path("from-ferry"));
            skopeo_ok(&["copy", "-q", &dst_a, &format!("dir:{}", da.display())]);
            skopeo_ok(&["copy", "-q", &dst_b, &format!("dir:{}", db.display())]);
            assert_same_tree(&da, &db, &format!("{from} -> {transport}"));
        }
    }
}

/// skopeo and ferry run the same copy; returns whether they agreed on success and, when both
/// succeeded, asserts they wrote the same tree.
fn same_copy(flags: &[&str], from: &str, a: &Path, b: &Path, transport: &str, what: &str) -> bool {
    let suffix = if transport == "oci" { ":img" } else { "" };
    let dst_a = format!("{transport}:{}{suffix}", a.display());
    let dst_b = format!("{transport}:{}{suffix}", b.display());
    let sk = skopeo(&[&["copy", "-q"], flags, &[from, &dst_a]].concat());
    let fe = run(ferry()
        .env("FERRY_TEST_NO_RETRY_DELAY", "1")
        .args([&["copy", "-q"], flags, &[from, &dst_b]].concat()));
    assert_eq!(
        fe.status.success(),
        sk.status.success(),
        "{what}: ferry and skopeo agree on success; skopeo: {} ferry: {}",
        String::from_utf8_lossy(&sk.stderr),
        String::from_utf8_lossy(&fe.stderr)
    );
    if sk.status.success() {
        assert_same_tree(a, b, what);
    } else {
        let err = String::from_utf8_lossy(&fe.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err}");
        assert!(
            !b.join("manifest.json").exists() && !b.join("index.json").exists(),
            "{what}: a failed copy names no image"
        );
    }
    sk.status.success()
}

#[test]
fn foreign_layers_are_fetched_into_dir_and_named_in_oci_as_skopeo_does() {
    use ferry::fixtures::foreign_layer;
    use ferry::store::Store;
    // Registry H holds the foreign layer's bytes (held:1, whose own URL is dead); registry S
    // names them: live:1 by a URL into H, dead:1 by a URL nothing answers and S lacks the bytes.
    let (h_dir, s_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dead_url = "http://127.0.0.1:1/foreign-layer".to_string();
    let store = Store::create(h_dir.path()).unwrap().with_durable(false);
    let held = foreign_layer(&store, "held", "1", std::slice::from_ref(&dead_url), true).unwrap();
    let h = Registry::start(h_dir.path());
    let layer = held.layer.to_string();
    let store = Store::create(s_dir.path()).unwrap().with_durable(false);
    let live_url = format!("http://{}/v2/held/blobs/{layer}", h.addr);
    foreign_layer(&store, "live", "1", &[live_url], false).unwrap();
    foreign_layer(&store, "dead", "1", &[dead_url], false).unwrap();
    assert!(!store.has_blob(&held.layer), "S lacks the foreign bytes");
    let s = Registry::start(s_dir.path());

    let mut m = Matrix {
        work: tempfile::tempdir().unwrap(),
        src: s,
        n: 0,
    };
    let tls = ["--src-tls-verify=false"];
    let live = format!("docker://{}/live:1", m.src.addr);
    // docker:// → dir: fetches the foreign layer from its URL; → oci: names it (converted to
    // OCI's non-distributable type, URLs kept) and fetches nothing.
    let (a, b) = (m.path("skopeo"), m.path("ferry"));
    assert!(same_copy(&tls, &live, &a, &b, "dir", "live -> dir:"));
    assert!(
        b.join(held.layer.hex()).exists(),
        "the foreign layer is in dir:"
    );
    let (oa, ob) = (m.path("skopeo"), m.path("ferry"));
    assert!(same_copy(&tls, &live, &oa, &ob, "oci", "live -> oci:"));
    assert!(
        !ob.join("blobs/sha256").join(held.layer.hex()).exists(),
        "oci: keeps the URL, not the bytes"
    );
    // The OCI layout skopeo wrote, read back into dir: fetches from the URL.
    let from_oci = format!("oci:{}:img", oa.display());
    let (a, b) = (m.path("skopeo"), m.path("ferry"));
    assert!(same_copy(&[], &from_oci, &a, &b, "dir", "oci: -> dir:"));
    // A dead URL: from a registry that holds the bytes, both fall back to it...
    let held_ref = format!("docker://{}/held:1", h.addr);
    let (a, b) = (m.path("skopeo"), m.path("ferry"));
    assert!(same_copy(&tls, &held_ref, &a, &b, "dir", "held -> dir:"));
    // ...from one that does not, both fail (one line, no image named), into dir: only.
    let dead = format!("docker://{}/dead:1", m.src.addr);
    let (a, b) = (m.path("skopeo"), m.path("ferry"));
    assert!(!same_copy(&tls, &dead, &a, &b, "dir", "dead -> dir:"));
    let (oa, ob) = (m.path("skopeo"), m.path("ferry"));
    assert!(same_copy(&tls, &dead, &oa, &ob, "oci", "dead -> oci:"));
    let from_oci = format!("oci:{}:img", oa.display());
    let (a, b) = (m.path("skopeo"), m.path("ferry"));
    assert!(!same_copy(
        &[],
        &from_oci,
        &a,
        &b,
        "dir",
        "dead oci: -> dir:"
    ));
}

/// A foreign layer's URL is another host, named by whoever wrote the manifest: it never gets
/// the source registry's password, not even when it answers 401 with a Basic challenge, and
/// the copy falls back to the registry (which holds the bytes), as skopeo's does.
#[test]
fn a_foreign_layer_url_never_receives_the_source_registrys_credentials() {
    use ferry::fixtures::foreign_layer;
    use ferry::store::Store;
    use std::io::{BufRead, BufReader, Write};
    use std::sync::{Arc, Mutex};
    // The URL's host: records each request's head and asks for Basic credentials.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/foreign-layer", listener.local_addr().unwrap());
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = heads.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = String::new();
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
                head.push_str(&line);
                line.clear();
            }
            seen.lock().unwrap().push(head);
            let _ = conn.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"grab\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let root = tempfile::tempdir().unwrap();
    let store = Store::create(root.path()).unwrap().with_durable(false);
    foreign_layer(&store, "img", "1", std::slice::from_ref(&url), true).unwrap();
    let auth = tempfile::tempdir().unwrap();
    let htpasswd = auth.path().join("htpasswd");
    htpasswd_file(&htpasswd, "alice", "s3cret-pass");
    let reg = Registry::start_with_options(
        root.path(),
        None,
        &RegistryOptions {
            htpasswd: Some(htpasswd),
            ..Default::default()
        },
    );
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("d");
    let o = ferry()
        .args([
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            "alice:s3cret-pass",
        ])
        .arg(format!("docker://{}/img:1", reg.addr))
        .arg(format!("dir:{}", dest.display()))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "falls back to the registry: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let heads = heads.lock().unwrap();
    assert!(!heads.is_empty(), "the URL was tried first");
    for h in heads.iter() {
        assert!(
            !h.to_ascii_lowercase().contains("authorization"),
            "credentials sent to the foreign host: {h}"
        );
    }
}
