//! The release pipeline's part 1: signed bundles (`keygen`, `bundle --sign`,
//! `verify --key`, `unbundle … --key`), split bundles (`--split-size`, every
//! reader on `NAME.000`) and `ferry diff`, against the real `docker-registry`
//! as source and target and `skopeo` as client.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry::fixtures::Corpus;

use crate::harness::*;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A failure that is one line on stderr, exit 1, naming `name` and containing `cause`.
fn refused(o: &Output, name: &str, cause: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "not refused: {e}");
    assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e}");
    assert!(e.contains(name), "{name:?} not named: {e}");
    assert!(e.contains(cause), "{cause:?} not said: {e}");
}

/// Bundles all of `corpus` (every platform) from `source` into `out` with extra flags.
fn bundle(corpus: &Corpus, dir: &Path, source: &str, out: &Path, extra: &[&str]) {
    let list = dir.join("list.txt");
    std::fs::write(&list, corpus.images_list()).unwrap();
    run_ok(
        bundle_cmd(&list, out, &dir.join("cache"), source)
            .arg("--all-platforms")
            .args(extra),
    );
}

/// The catalog of a registry, as its JSON body.
fn catalog(addr: &str) -> String {
    let (status, _, body) = http(addr, "GET", "/v2/_catalog", &[]).unwrap();
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body).into_owned()
}

/// `ferry unbundle serve … --key` must refuse and exit (bounded, in case it served instead).
fn serve_refused(bundle: &Path, key: &Path) -> Output {
    run(Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_ferry"))
        .args(["unbundle", "serve", "--listen", "127.0.0.1:0", "--key"])
        .arg(key)
        .arg(bundle))
}

#[test]
fn signed_bundles_verify_and_bad_ones_are_refused_before_anything_is_written() {
    let (src_dir, corpus) = tiny();
    let src = Registry::start(src_dir.path());
    let w = tempfile::tempdir().unwrap();
    let key = w.path().join("release");
    let out = run_ok(ferry().arg("keygen").arg("-o").arg(&key));
    let (sk, pk) = (w.path().join("release.key"), w.path().join("release.pub"));
    assert!(stdout(&out).contains("release.key") && stdout(&out).contains("release.pub"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sk).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Never over an existing key.
    let before = std::fs::read(&sk).unwrap();
    refused(
        &run(ferry().arg("keygen").arg("-o").arg(&key)),
        "release.key",
        "refusing to overwrite",
    );
    assert_eq!(std::fs::read(&sk).unwrap(), before);
    run_ok(
        ferry()
            .arg("keygen")
            .arg("-q")
            .arg("-o")
            .arg(w.path().join("other")),
    );
    let other_pk = w.path().join("other.pub");

    // Plain tar, so a test can change one byte of ferry-bundle.json in place.
    let signed = w.path().join("signed.tar");
    let sign_args = ["--compression", "none", "--sign", sk.to_str().unwrap()];
    bundle(&corpus, w.path(), &src.addr, &signed, &sign_args);
    let unsigned = w.path().join("unsigned.tar");
    bundle(
        &corpus,
        w.path(),
        &src.addr,
        &unsigned,
        &["--compression", "none"],
    );

    let ok = run_ok(ferry().args(["verify", "--key"]).arg(&pk).arg(&signed));
    assert!(
        stdout(&ok).contains("signature verified"),
        "{}",
        stdout(&ok)
    );

    // The detached copy equals the entry inside, and minisign itself accepts it.
    let x = w.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&signed)
            .arg("-C")
            .arg(&x),
    );
    let detached = w.path().join("signed.tar.minisig");
    assert_eq!(
        std::fs::read(&detached).unwrap(),
        std::fs::read(x.join("ferry-bundle.json.minisig")).unwrap()
    );
    assert!(x.join("docker/registry/v2/repositories").is_dir());
    require("minisign");
    let minisign = |pubkey: &Path| {
        run(Command::new("minisign")
            .arg("-V")
            .arg("-m")
            .arg(x.join("ferry-bundle.json"))
            .arg("-x")
            .arg(&detached)
            .arg("-p")
            .arg(pubkey))
    };
    let m = minisign(&pk);
    assert!(m.status.success(), "minisign -V: {}", stderr(&m));
    assert!(!minisign(&other_pk).status.success());

    // One byte of ferry-bundle.json changed, still valid JSON and still a sound bundle otherwise.
    let tampered = w.path().join("tampered.tar");
    let mut bytes = std::fs::read(&signed).unwrap();
    let at = bytes
        .windows(18)
        .position(|s| s == b"\"created_by\": \"fer")
        .expect("created_by in the index");
    bytes[at + 17] = b'F';
    std::fs::write(&tampered, &bytes).unwrap();
    run_ok(ferry().arg("verify").arg(&tampered));

    let cases: [(&Path, &Path, &str); 3] = [
        (&tampered, &pk, "does not match its signature"),
        (&signed, &other_pk, "signed by key"),
        (&unsigned, &pk, "unsigned"),
    ];

    // A target root that already holds the good bundle (linked with the key), and an empty registry.
    let target = tempfile::tempdir().unwrap();
    run_ok(
        ferry()
            .args(["unbundle", "link", "-q", "--key"])
            .arg(&pk)
            .arg(&signed)
            .arg("--root")
            .arg(target.path()),
    );
    let tree = tree_hash(target.path(), "docker");
    let (_empty_dir, empty) = empty_registry();

    for (b, key, cause) in cases {
        let name = b.file_name().unwrap().to_str().unwrap();
        refused(
            &run(ferry().args(["verify", "--key"]).arg(key).arg(b)),
            name,
            cause,
        );
        refused(
            &run(ferry()
                .args(["unbundle", "link", "--key"])
                .arg(key)
                .arg(b)
                .arg("--root")
                .arg(target.path())),
            name,
            cause,
        );
        assert_eq!(tree_hash(target.path(), "docker"), tree, "{name}: written");
        refused(
            &run(ferry()
                .env("FERRY_TEST_NO_RETRY_DELAY", "1")
                .args(["unbundle", "push", "--dest-tls-verify=false", "--key"])
                .arg(key)
                .arg(b)
                .args(["--dest", &empty.addr])),
            name,
            cause,
        );
        assert!(
            catalog(&empty.addr).contains("\"repositories\":[]"),
            "{name}: pushed {}",
            catalog(&empty.addr)
        );
        let s = serve_refused(b, key);
        refused(&s, name, cause);
        assert!(stdout(&s).is_empty(), "{name}: served at {}", stdout(&s));
    }

    // The good bundle with its key: served, pushed, and pulled with the source's digests.
    let server = FerryServe::start_with(&[
        "unbundle",
        "serve",
        "--key",
        pk.to_str().unwrap(),
        signed.to_str().unwrap(),
    ]);
    run_ok(
        ferry()
            .env("FERRY_TEST_NO_RETRY_DELAY", "1")
            .args(["unbundle", "push", "-q", "--dest-tls-verify=false", "--key"])
            .arg(&pk)
            .arg(&signed)
            .args(["--dest", &empty.addr]),
    );
    for img in &corpus.images {
        let r = format!("{}:{}", img.repository, img.tag);
        for addr in [&server.addr, &empty.addr] {
            assert_eq!(
                inspect_digest(&format!("docker://{addr}/{r}")),
                img.digest.to_string(),
                "{r} at {addr}"
            );
        }
    }
    // Bundled again unsigned: the old detached signature does not stay beside it.
    bundle(
        &corpus,
        w.path(),
        &src.addr,
        &signed,
        &["--compression", "none"],
    );
    assert!(!detached.exists());
}

/// Every part of a split bundle, in order.
#[test]
fn signed_bundles_are_byte_identical_run_after_run() {
    let (src_dir, corpus) = tiny();
    let src = Registry::start(src_dir.path());
    let w = tempfile::tempdir().unwrap();
    run_ok(
        ferry()
            .arg("keygen")
            .arg("-q")
            .arg("-o")
            .arg(w.path().join("k")),
    );
    let sk = w.path().join("k.key");
    let (a, b) = (w.path().join("a.tar.zst"), w.path().join("b.tar.zst"));
    for out in [&a, &b] {
        bundle(
            &corpus,
            w.path(),
            &src.addr,
            out,
            &["--sign", sk.to_str().unwrap()],
        );
    }
    // Plain cmp, on the bundles and on their detached signatures.
    for (x, y) in [
        (a.clone(), b.clone()),
        (
            w.path().join("a.tar.zst.minisig"),
            w.path().join("b.tar.zst.minisig"),
        ),
    ] {
        let out = run(Command::new("cmp").arg(&x).arg(&y));
        assert!(
            out.status.success(),
            "{} and {} differ: {}",
            x.display(),
            y.display(),
            stdout(&out)
        );
    }
    run_ok(
        ferry()
            .args(["verify", "--key"])
            .arg(w.path().join("k.pub"))
            .arg(&a),
    );
}

fn parts(first: &Path) -> Vec<PathBuf> {
    let base = first.to_str().unwrap().strip_suffix(".000").unwrap();
    (0..)
        .map(|i| PathBuf::from(format!("{base}.{i:03}")))
        .take_while(|p| p.exists())
        .collect()
}

/// Copies the parts into `dir` (same names), so a test can damage them.
fn copy_parts(first: &Path, dir: &Path) -> PathBuf {
    for p in parts(first) {
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    dir.join(first.file_name().unwrap())
}

#[test]
fn split_bundles_are_the_whole_bundle_and_every_reader_takes_the_first_part() {
    let (src_dir, corpus) = tiny();
    let src = Registry::start(src_dir.path());
    let w = tempfile::tempdir().unwrap();
    const SPLIT: u64 = 100 * 1024;
    for (name, extra) in [
        ("b.tar.zst", &[][..]),
        ("b.tar", &["--compression", "none"][..]),
    ] {
        let whole = w.path().join(name);
        bundle(&corpus, w.path(), &src.addr, &whole, extra);
        let split_out = w.path().join(format!("split-{name}"));
        let args = [extra, &["--split-size", "100k"]].concat();
        bundle(&corpus, w.path(), &src.addr, &split_out, &args);
        let first = PathBuf::from(format!("{}.000", split_out.display()));
        let ps = parts(&first);
        assert!(ps.len() > 3, "{name}: {} parts", ps.len());
        let mut cat = Vec::new();
        for p in &ps {
            let b = std::fs::read(p).unwrap();
            assert!(b.len() as u64 <= SPLIT);
            cat.extend(b);
        }
        assert!(
            cat == std::fs::read(&whole).unwrap(),
            "{name}: cat of the parts differs from the unsplit bundle"
        );
        assert!(!split_out.exists(), "an unsplit file was left too");
        refused(
            &run(ferry().arg("verify").arg(&split_out)),
            &format!("{}.000", split_out.display()),
            "a split bundle is named by its first part",
        );

        // verify, ls, diff, link, push, inspect through ferry-bundle:, serve: all on NAME.000.
        run_ok(ferry().arg("verify").arg(&first));
        let ls = |p: &Path| stdout(&run_ok(ferry().arg("ls").arg(p)));
        assert_eq!(ls(&first), ls(&whole));
        let d = run_ok(ferry().args(["diff", "--json"]).arg(&whole).arg(&first));
        let d: serde_json::Value = serde_json::from_slice(&d.stdout).unwrap();
        assert_eq!(d["blobsAdded"], 0);
        assert_eq!(d["added"].as_array().unwrap().len(), 0);
        let (r1, r2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for (b, r) in [(&whole, &r1), (&first, &r2)] {
            run_ok(
                ferry()
                    .args(["unbundle", "link", "-q"])
                    .arg(b)
                    .arg("--root")
                    .arg(r.path()),
            );
        }
        assert_eq!(
            tree_hash(r1.path(), "docker"),
            tree_hash(r2.path(), "docker")
        );
        let (_t, target) = empty_registry();
        run_ok(
            ferry()
                .env("FERRY_TEST_NO_RETRY_DELAY", "1")
                .args(["unbundle", "push", "-q", "--dest-tls-verify=false"])
                .arg(&first)
                .args(["--dest", &target.addr]),
        );
        let server = FerryServe::start_with(&["unbundle", "serve", first.to_str().unwrap()]);
        let biggest = corpus
            .images
            .iter()
            .max_by_key(|i| i.referenced_bytes)
            .unwrap();
        // Layers larger than a part must cross a part boundary wherever they sit.
        assert!(biggest.referenced_bytes > 2 * SPLIT);
        for img in &corpus.images {
            let r = format!("{}:{}", img.repository, img.tag);
            let raw = run_ok(
                ferry()
                    .args(["inspect", "--raw"])
                    .arg(format!("ferry-bundle:{}:{r}", first.display())),
            );
            assert_eq!(sha256(&raw.stdout), img.digest.to_string(), "{r}");
            assert_eq!(
                inspect_digest(&format!("docker://{}/{r}", target.addr)),
                img.digest.to_string()
            );
        }
        // skopeo pulls every blob (and checks each digest) from the parts served in place.
        let pulled = tempfile::tempdir().unwrap();
        let r = format!("{}:{}", biggest.repository, biggest.tag);
        skopeo_ok(&[
            "copy",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{}/{r}", server.addr),
            &format!("oci:{}:x", pulled.path().display()),
        ]);
        assert_eq!(
            inspect_digest(&format!("docker://{}/{r}", server.addr)),
            biggest.digest.to_string()
        );
        drop(server);

        // A missing middle part, a missing last part, a truncated part: each named.
        let n = ps.len();
        let damaged = |f: &dyn Fn(&Path), cause: &str, named: &str| {
            let d = tempfile::tempdir().unwrap();
            let first = copy_parts(&first, d.path());
            f(d.path());
            let push = [
                "unbundle",
                "push",
                "--dest-tls-verify=false",
                "--dest",
                target.addr.as_str(),
            ];
            for verb in [&["verify"][..], &["ls"][..], &push[..]] {
                refused(&run(ferry().args(verb).arg(&first)), named, cause);
            }
            let root = tempfile::tempdir().unwrap();
            refused(
                &run(ferry()
                    .args(["unbundle", "link"])
                    .arg(&first)
                    .arg("--root")
                    .arg(root.path())),
                named,
                cause,
            );
            // Verified blobs may be in (invisible, as distribution's uploads are); no link is.
            assert!(
                !files(root.path())
                    .keys()
                    .any(|f| f.contains("/repositories/")),
                "{named}: images linked"
            );
        };
        let part = |i: usize| format!("split-{name}.{i:03}");
        let p1 = part(1);
        damaged(
            &|d| std::fs::remove_file(d.join(&p1)).unwrap(),
            "part missing",
            &p1,
        );
        damaged(
            &|d| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join(&p1))
                    .unwrap();
                f.set_len(SPLIT - 10).unwrap();
            },
            "truncated",
            &p1,
        );
        if extra.is_empty() {
            // zstd: the end of the parts must be the seek table; the last part found is named.
            let (last, before) = (part(n - 1), part(n - 2));
            damaged(
                &|d| std::fs::remove_file(d.join(&last)).unwrap(),
                "parts after it are missing",
                &before,
            );
            damaged(
                &|d| {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(d.join(&last))
                        .unwrap();
                    let len = f.metadata().unwrap().len();
                    f.set_len(len - 5).unwrap();
                },
                "truncated",
                &last,
            );
            // A damaged byte inside a middle part: the frame and the part are named.
            let p2 = part(2);
            damaged(
                &|d| {
                    let mut b = std::fs::read(d.join(&p2)).unwrap();
                    b[SPLIT as usize / 2] ^= 0xff;
                    std::fs::write(d.join(&p2), b).unwrap();
                },
                "in part",
                &p2,
            );
        }
    }
}

#[test]
fn diff_names_exactly_the_changed_images() {
    let (old_dir, corpus) = tiny();
    let old_reg = Registry::start(old_dir.path());
    let w = tempfile::tempdir().unwrap();
    let old = w.path().join("old.tar.zst");
    bundle(&corpus, w.path(), &old_reg.addr, &old, &[]);

    // The new release: a copy of the old root where two tags now hold other images (from the
    // `small` corpus: new blobs), one image is added, and one is left out of the list.
    // A real copy, not hardlinks: docker-registry rewrites link files in place.
    let new_root = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(old_dir.path().join("docker"))
            .arg(new_root.path()),
    );
    let new_reg = Registry::start(new_root.path());
    let (_small_dir, small_reg) = small_registry();
    let (_, small) = crate::harness::small();
    let singles: Vec<_> = small
        .images
        .iter()
        .filter(|i| i.platforms.is_empty())
        .collect();
    let olds: Vec<_> = corpus
        .images
        .iter()
        .filter(|i| i.platforms.is_empty())
        .collect();
    assert!(olds.len() >= 3 && singles.len() >= 3);
    let (changed, removed) = (&olds[..2], olds[2]);
    let copy = |from: &ferry::fixtures::FixtureImage, to: &str| {
        skopeo_ok(&[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!(
                "docker://{}/{}:{}",
                small_reg.addr, from.repository, from.tag
            ),
            &format!("docker://{}/{to}", new_reg.addr),
        ]);
    };
    for (i, c) in changed.iter().enumerate() {
        copy(singles[i], &format!("{}:{}", c.repository, c.tag));
    }
    copy(singles[2], "added/one:1");
    let list: String = corpus
        .images
        .iter()
        .filter(|i| i.repository != removed.repository || i.tag != removed.tag)
        .map(|i| format!("{}:{}\n", i.repository, i.tag))
        .chain(["added/one:1\n".to_string()])
        .collect();
    let list_path = w.path().join("new.txt");
    std::fs::write(&list_path, list).unwrap();
    let new = w.path().join("new.tar.zst");
    run_ok(
        bundle_cmd(&list_path, &new, &w.path().join("cache"), &new_reg.addr).arg("--all-platforms"),
    );

    let out = run_ok(ferry().args(["diff", "--json"]).arg(&old).arg(&new));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let images = |k: &str| -> Vec<String> {
        let mut v: Vec<String> = d[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["image"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(images("added"), vec!["added/one:1".to_string()]);
    assert_eq!(
        images("removed"),
        vec![format!("{}:{}", removed.repository, removed.tag)]
    );
    let mut want: Vec<String> = changed
        .iter()
        .map(|c| format!("{}:{}", c.repository, c.tag))
        .collect();
    want.sort();
    assert_eq!(images("retagged"), want);
    for r in d["retagged"].as_array().unwrap() {
        let c = changed
            .iter()
            .find(|c| format!("{}:{}", c.repository, c.tag) == r["image"])
            .unwrap();
        assert_eq!(r["old"], c.digest.to_string());
    }
    // Blobs B adds: exactly those of the three small images that the old bundle lacks.
    assert!(d["blobsAdded"].as_u64().unwrap() >= 3, "{d}");
    assert!(d["bytesAdded"].as_u64().unwrap() > 0);

    // The text form names the same images, one per line.
    let text = stdout(&run_ok(ferry().arg("diff").arg(&old).arg(&new)));
    assert!(text.contains("added\tadded/one:1\t"), "{text}");
    assert!(
        text.contains(&format!(
            "removed\t{}:{}\t",
            removed.repository, removed.tag
        )),
        "{text}"
    );
    for c in changed {
        assert!(
            text.contains(&format!(
                "retagged\t{}:{}\t{} -> ",
                c.repository, c.tag, c.digest
            )),
            "{text}"
        );
    }
    assert_eq!(text.lines().count(), 5, "{text}");

    // Any mix: the old bundle against its own source root differs in nothing.
    let same = run_ok(
        ferry()
            .args(["diff", "--json"])
            .arg(&old)
            .arg(old_dir.path()),
    );
    let same: serde_json::Value = serde_json::from_slice(&same.stdout).unwrap();
    for k in ["added", "removed", "retagged", "platformsChanged"] {
        assert_eq!(same[k].as_array().unwrap().len(), 0, "{k}: {same}");
    }
    assert_eq!(same["blobsAdded"], 0);
}

#[test]
fn a_link_the_index_does_not_account_for_is_refused() {
    use ferry::store::paths::{PathSpec, path_for};
    let (src_dir, corpus) = tiny();
    let src = Registry::start(src_dir.path());
    let w = tempfile::tempdir().unwrap();
    let good = w.path().join("good.tar");
    bundle(
        &corpus,
        w.path(),
        &src.addr,
        &good,
        &["--compression", "none"],
    );
    // One more revision link, in an image's repository, to another repository's manifest: the
    // blob is in the bundle and hashes right, but no image of ferry-bundle.json needs the link.
    let a = &corpus.images[0];
    let b = corpus
        .images
        .iter()
        .find(|i| i.repository != a.repository)
        .unwrap();
    let x = w.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run_ok(Command::new("tar").arg("-xf").arg(&good).arg("-C").arg(&x));
    let link = path_for(&x, PathSpec::RevisionLink(&a.repository, &b.digest));
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::fs::write(&link, b.digest.to_string()).unwrap();
    let bad = w.path().join("bad.tar");
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&bad)
            .arg("-C")
            .arg(&x)
            .args(["ferry-bundle.json", "docker"]),
    );
    let why = "none of its images in ferry-bundle.json needs";
    refused(&run(ferry().arg("verify").arg(&bad)), "bad.tar", why);
    refused(
        &run(Command::new("timeout")
            .arg("60")
            .arg(env!("CARGO_BIN_EXE_ferry"))
            .args(["unbundle", "serve", "--listen", "127.0.0.1:0"])
            .arg(&bad)),
        "bad.tar",
        why,
    );
    run_ok(ferry().arg("verify").arg(&good));
}
