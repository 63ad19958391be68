//! skopeo as the oracle of ferry's one-image verbs: `inspect` (summary, `--raw`,
//! `--config`), `list-tags` (through every page), `manifest-digest`, `delete`,
//! and `login`/`logout` against a real `docker-registry` with htpasswd auth.
//! Same input through both tools; JSON compared as values, raw bytes byte for byte.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry::media_type as mt;

use crate::harness::*;

/// ferry with these arguments (retry pauses off).
fn ferry_out(args: &[&str]) -> Output {
    run(ferry().env("FERRY_TEST_NO_RETRY_DELAY", "1").args(args))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts ferry and skopeo agree on `args`: both succeed with the same output
/// (`raw`: byte for byte; else the same JSON value, and the same bytes too).
fn same_output(args: &[&str], raw: bool) {
    let s = skopeo(args);
    let f = ferry_out(args);
    assert!(s.status.success(), "skopeo {args:?}: {}", text(&s.stderr));
    assert!(f.status.success(), "ferry {args:?}: {}", text(&f.stderr));
    if raw {
        assert!(
            s.stdout == f.stdout,
            "ferry {args:?}: bytes differ from skopeo's"
        );
        return;
    }
    let v = |o: &[u8]| -> serde_json::Value {
        serde_json::from_slice(o)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", text(o)))
    };
    assert_eq!(v(&s.stdout), v(&f.stdout), "ferry {args:?}: JSON differs");
    assert_eq!(
        text(&s.stdout),
        text(&f.stdout),
        "ferry {args:?}: same value, other formatting"
    );
}

/// Every inspect form for one image reference.
fn inspect_all_forms(reference: &str) {
    same_output(&["inspect", "--tls-verify=false", reference], false);
    same_output(
        &["inspect", "--tls-verify=false", "--config", reference],
        false,
    );
    same_output(&["inspect", "--tls-verify=false", "--raw", reference], true);
    same_output(
        &[
            "inspect",
            "--tls-verify=false",
            "--raw",
            "--config",
            reference,
        ],
        true,
    );
}

#[test]
fn inspect_matches_skopeo_over_docker_dir_and_oci() {
    let (_, corpus) = small();
    let (_dir, reg) = small_registry();
    let find = |t: &str| {
        corpus
            .images
            .iter()
            .find(|i| i.media_type == t)
            .unwrap_or_else(|| panic!("the small corpus has a {t}"))
    };
    let docker = find(mt::DOCKER_MANIFEST);
    let oci = find(mt::OCI_MANIFEST);
    let list = find(mt::DOCKER_MANIFEST_LIST);
    let index = find(mt::OCI_INDEX);
    let work = tempfile::tempdir().unwrap();
    let mut refs = Vec::new();
    for img in [docker, oci, list, index] {
        refs.push(format!(
            "docker://{}/{}:{}",
            reg.addr, img.repository, img.tag
        ));
    }
    // A child of the list, by digest (the non-system platform, so the choice shows).
    let (_, child) = list
        .platforms
        .iter()
        .find(|(p, _)| p.contains("arm64"))
        .expect("an arm64 child");
    refs.push(format!("docker://{}/{}@{child}", reg.addr, list.repository));
    for r in &refs {
        inspect_all_forms(r);
    }
    // --no-tags, and a platform override on a list.
    same_output(&["inspect", "--tls-verify=false", "-n", &refs[0]], false);
    same_output(
        &[
            "inspect",
            "--tls-verify=false",
            "--override-arch",
            "arm64",
            &refs[2],
        ],
        false,
    );
    same_output(
        &[
            "inspect",
            "--tls-verify=false",
            "--override-arch",
            "arm64",
            "--config",
            &refs[3],
        ],
        false,
    );
    // The same images in dir: and oci: (written by skopeo, whole lists kept).
    for (n, img) in [docker, oci, list, index].iter().enumerate() {
        let from = format!("docker://{}/{}:{}", reg.addr, img.repository, img.tag);
        let d = work.path().join(format!("dir{n}"));
        let dir_ref = format!("dir:{}", d.display());
        skopeo_ok(&[
            "copy",
            "-q",
            "--all",
            "--src-tls-verify=false",
            &from,
            &dir_ref,
        ]);
        inspect_all_forms(&dir_ref);
        let oci_ref = format!("oci:{}:img{n}", work.path().join("layout").display());
        skopeo_ok(&[
            "copy",
            "-q",
            "--all",
            "--src-tls-verify=false",
            &from,
            &oci_ref,
        ]);
        inspect_all_forms(&oci_ref);
    }
}

/// A plain tar holding one file, as a layer.
fn layer_tar(name: &str, body: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, name, body).unwrap();
    b.into_inner().unwrap()
}

/// A docker-archive written by hand as `docker save` writes one: gzip'd layers (one listed
/// twice), an image with two RepoTags and an untagged second image.
fn hand_made_archive(path: &Path) {
    use std::io::Write;
    let gz = |b: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    };
    let (l1, l2) = (layer_tar("a", b"first layer"), layer_tar("b", &[7u8; 3000]));
    let (d1, d2) = (sha256(&l1), sha256(&l2));
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","created":"2024-01-02T03:04:05Z","config":{{"Env":["PATH=/bin"],"Labels":{{"k":"v"}}}},"rootfs":{{"type":"layers","diff_ids":["{d1}","{d2}","{d1}"]}}}}"#
    );
    let config2 = config.replace("amd64", "arm64");
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("l1/layer.tar".into(), gz(&l1)),
        ("l2/layer.tar".into(), gz(&l2)),
        (
            format!("{}.json", &sha256(config.as_bytes())[7..]),
            config.clone().into_bytes(),
        ),
        (
            format!("{}.json", &sha256(config2.as_bytes())[7..]),
            config2.clone().into_bytes(),
        ),
    ];
    let manifest = format!(
        r#"[{{"Config":"{}","RepoTags":["busybox:1","example.com/a/b:two"],"Layers":["l1/layer.tar","l2/layer.tar","l1/layer.tar"]}},{{"Config":"{}","RepoTags":null,"Layers":["l1/layer.tar","l2/layer.tar","l1/layer.tar"]}}]"#,
        files[2].0, files[3].0
    );
    files.push(("manifest.json".into(), manifest.into_bytes()));
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, body) in &files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, body.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn docker_archive_inspect_and_list_tags_match_skopeo() {
    let (_, corpus) = small();
    let (_dir, reg) = small_registry();
    let work = tempfile::tempdir().unwrap();
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
    // Written by skopeo: uncompressed layers; one tagged, one untagged.
    let tagged = work.path().join("tagged.tar");
    let untagged = work.path().join("untagged.tar");
    for (img, dest) in [
        (docker, format!("docker-archive:{}:x/y:1", tagged.display())),
        (oci, format!("docker-archive:{}", untagged.display())),
    ] {
        let from = format!("docker://{}/{}:{}", reg.addr, img.repository, img.tag);
        skopeo_ok(&["copy", "-q", "--src-tls-verify=false", &from, &dest]);
    }
    // Written by hand: gzip'd layers, a repeated layer, two images.
    let hand = work.path().join("hand.tar");
    hand_made_archive(&hand);
    let refs = [
        format!("docker-archive:{}", tagged.display()),
        format!("docker-archive:{}:x/y:1", tagged.display()),
        format!("docker-archive:{}", untagged.display()),
        format!("docker-archive:{}:busybox:1", hand.display()),
        format!("docker-archive:{}:example.com/a/b:two", hand.display()),
        format!("docker-archive:{}:@1", hand.display()),
    ];
    for r in &refs {
        inspect_all_forms(r);
    }
    // The synthesised manifest names layers by diff_id, as gzip, repeats kept.
    let raw = skopeo_ok(&["inspect", "--raw", &refs[3]]).stdout;
    let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["layers"].as_array().unwrap().len(), 3, "{m}");
    // list-tags: every image of the archive ("@N" for an untagged one), a NAME:TAG after the path ignored.
    for r in [&refs[0], &refs[1], &refs[2], &refs[3]] {
        same_output(&["list-tags", r], false);
    }
    let tags = ferry_out(&["list-tags", &refs[3]]);
    let v: serde_json::Value = serde_json::from_slice(&tags.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"Tags": ["busybox:1", "example.com/a/b:two", "@1"]})
    );
    // A file that is not an archive: one line naming it, exit 1.
    let bad = work.path().join("not-an-archive.tar");
    std::fs::write(&bad, b"hello").unwrap();
    let out = ferry_out(&["list-tags", &format!("docker-archive:{}", bad.display())]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not-an-archive.tar"), "{err}");
}

#[test]
fn list_tags_follows_every_page() {
    let (root, corpus) = small();
    let dir = tempfile::tempdir().unwrap();
    hardlink_copy(root, dir.path());
    // 120 more tags on one repository: more than one page of ferry's 100.
    let img = &corpus.images[0];
    let store = ferry::store::Store::create(dir.path())
        .unwrap()
        .with_durable(false);
    for i in 0..120 {
        store
            .tag(&img.repository, &format!("extra-{i:03}"), &img.digest)
            .unwrap();
    }
    let reg = Registry::start(dir.path());
    let repo = format!("docker://{}/{}", reg.addr, img.repository);
    let args = ["list-tags", "--tls-verify=false", repo.as_str()];
    same_output(&args, false);
    let out = ferry_out(&args);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Tags"].as_array().unwrap().len(), 121);
    assert_eq!(v["Repository"], format!("{}/{}", reg.addr, img.repository));
    // Small pages: 18 of them, the same list.
    let small_pages = run(ferry().env("FERRY_TAGS_PAGE_SIZE", "7").args(args));
    assert!(
        small_pages.status.success(),
        "{}",
        text(&small_pages.stderr)
    );
    assert_eq!(small_pages.stdout, out.stdout);
    // A repository with a tag is refused by both, one line, exit 1.
    let tagged = format!("{repo}:{}", img.tag);
    let f = ferry_out(&["list-tags", "--tls-verify=false", &tagged]);
    assert_eq!(f.status.code(), Some(1));
    assert_eq!(
        text(&f.stderr).trim().lines().count(),
        1,
        "{}",
        text(&f.stderr)
    );
    assert!(
        !skopeo(&["list-tags", "--tls-verify=false", &tagged])
            .status
            .success()
    );
}

#[test]
fn manifest_digest_matches_skopeo_on_every_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for f in &files {
        let p = f.to_str().unwrap();
        let s = skopeo(&["manifest-digest", p]);
        let ours = ferry_out(&["manifest-digest", p]);
        assert_eq!(
            s.status.success(),
            ours.status.success(),
            "{p}: skopeo {} / ferry {}",
            text(&s.stderr),
            text(&ours.stderr)
        );
        assert_eq!(text(&s.stdout), text(&ours.stdout), "{p}");
    }
    // The signed schema 1 digest is of the payload, not of the file.
    let signed = dir.join("schema1-signed.json");
    let bytes = std::fs::read(&signed).unwrap();
    let out = ferry_out(&["manifest-digest", signed.to_str().unwrap()]);
    assert_ne!(text(&out.stdout).trim(), sha256(&bytes));
}

#[test]
fn delete_as_skopeo_deletes() {
    let (_, corpus) = small();
    let (_dir, reg) = small_registry();
    let img = &corpus.images[0];
    let from = format!("docker://{}/{}:{}", reg.addr, img.repository, img.tag);
    for repo in ["del/by-ferry", "del/by-skopeo"] {
        for tag in ["1", "2"] {
            skopeo_ok(&[
                "copy",
                "-q",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                &from,
                &format!("docker://{}/{repo}:{tag}", reg.addr),
            ]);
        }
    }
    let f = ferry_out(&[
        "delete",
        "--tls-verify=false",
        &format!("docker://{}/del/by-ferry:1", reg.addr),
    ]);
    assert!(f.status.success(), "{}", text(&f.stderr));
    skopeo_ok(&[
        "delete",
        "--tls-verify=false",
        &format!("docker://{}/del/by-skopeo:1", reg.addr),
    ]);
    // Both tools see the same thing afterwards: the manifest is gone under both tags.
    for repo in ["del/by-ferry", "del/by-skopeo"] {
        for tag in ["1", "2"] {
            let r = format!("docker://{}/{repo}:{tag}", reg.addr);
            let s = skopeo(&["inspect", "--tls-verify=false", "--raw", &r]);
            let o = ferry_out(&["inspect", "--tls-verify=false", "--raw", &r]);
            assert!(!s.status.success(), "{r} still there for skopeo");
            assert_eq!(o.status.code(), Some(1), "{r}");
            let err = text(&o.stderr);
            assert_eq!(err.trim().lines().count(), 1, "{err}");
            assert!(err.contains(&r) && err.contains("not found"), "{err}");
        }
        let r = format!("docker://{}/{repo}", reg.addr);
        same_output(&["list-tags", "--tls-verify=false", &r], false);
    }
    // The source image is untouched.
    same_output(&["inspect", "--tls-verify=false", "--raw", &from], true);
    // A tag that is not there: one line, exit 1.
    let missing = format!("docker://{}/del/by-ferry:nope", reg.addr);
    let o = ferry_out(&["delete", "--tls-verify=false", &missing]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(text(&o.stderr).trim().lines().count(), 1);
    assert!(text(&o.stderr).contains(&missing));

    // Deletes off: one clear line, exit 1, and the image stays.
    let dir = tempfile::tempdir().unwrap();
    hardlink_copy(&small().0, dir.path());
    let ro = Registry::start_with_options(
        dir.path(),
        None,
        &RegistryOptions {
            deletes_disabled: true,
            ..Default::default()
        },
    );
    let r = format!("docker://{}/{}:{}", ro.addr, img.repository, img.tag);
    let o = ferry_out(&["delete", "--tls-verify=false", &r]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&r) && err.contains("does not allow deletes"),
        "{err}"
    );
    assert!(
        !skopeo(&["delete", "--tls-verify=false", &r])
            .status
            .success()
    );
    same_output(&["inspect", "--tls-verify=false", "--raw", &r], true);
}

/// An htpasswd file with one bcrypt entry (Python's crypt, `$2b$`, cost 4 to keep requests fast).
fn htpasswd(path: &Path, user: &str, password: &str) {
    let out = run_ok(Command::new("python3").arg("-W").arg("ignore").arg("-c").arg(
        "import crypt,sys; print(sys.argv[1] + ':' + crypt.crypt(sys.argv[2], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))",
    ).arg(user).arg(password));
    let line = text(&out.stdout);
    assert!(line.contains(":$2"), "not a bcrypt entry: {line}");
    std::fs::write(path, line).unwrap();
}

#[test]
fn login_and_logout_interoperate_with_skopeo() {
    const PASSWORD: &str = "pw-Zq9-not-in-any-output";
    let (root, corpus) = small();
    let dir = tempfile::tempdir().unwrap();
    hardlink_copy(root, dir.path());
    let work = tempfile::tempdir().unwrap();
    let ht = work.path().join("htpasswd");
    htpasswd(&ht, "alice", PASSWORD);
    let reg = Registry::start_with_options(
        dir.path(),
        None,
        &RegistryOptions {
            htpasswd: Some(ht.clone()),
            ..Default::default()
        },
    );
    let img = &corpus.images[0];
    let image = format!("docker://{}/{}:{}", reg.addr, img.repository, img.tag);
    let mut outputs: Vec<Output> = Vec::new();
    let mut ferry_run = |args: &[&str], stdin: Option<&str>| -> Output {
        let mut c = ferry();
        c.args(args).env_remove("REGISTRY_AUTH_FILE");
        let out = match stdin {
            None => run(&mut c),
            Some(input) => {
                use std::io::Write;
                let mut child = c
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(input.as_bytes())
                    .unwrap();
                child.wait_with_output().unwrap()
            }
        };
        outputs.push(out.clone());
        out
    };
    let a = work.path().join("ferry/auth.json");
    let a_s = a.to_str().unwrap();
    std::fs::create_dir_all(a.parent().unwrap()).unwrap();
    // Other entries and keys of the file must survive.
    std::fs::write(
        &a,
        r#"{"auths":{"other.example:5000":{"auth":"b3RoZXI6c2VjcmV0"}},"credHelpers":{"gcr.example":"none"},"psFormat":"table"}"#,
    )
    .unwrap();
    let before = std::fs::read(&a).unwrap();

    // A wrong password: one line, exit 1, nothing written.
    let o = ferry_run(
        &[
            "login",
            "--tls-verify=false",
            "--authfile",
            a_s,
            "-u",
            "alice",
            "-p",
            "wrong-password",
            &reg.addr,
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&reg.addr) && err.contains("invalid username or password"),
        "{err}"
    );
    assert!(!err.contains("wrong-password"));
    assert_eq!(std::fs::read(&a).unwrap(), before, "nothing written");

    // Without credentials the registry refuses.
    let o = ferry_run(
        &["inspect", "--tls-verify=false", "--authfile", a_s, &image],
        None,
    );
    assert_eq!(o.status.code(), Some(1));

    // --creds on the one-image verbs, right and wrong.
    let creds = format!("alice:{PASSWORD}");
    let repo = format!("docker://{}/{}", reg.addr, img.repository);
    let o = ferry_run(
        &["inspect", "--tls-verify=false", "--creds", &creds, &image],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = ferry_run(
        &["list-tags", "--tls-verify=false", "--creds", &creds, &repo],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = ferry_run(
        &[
            "inspect",
            "--tls-verify=false",
            "--creds",
            "alice:nope",
            &image,
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr).trim().lines().count(),
        1,
        "{}",
        text(&o.stderr)
    );

    // The right password, from stdin.
    let o = ferry_run(
        &[
            "login",
            "--tls-verify=false",
            "--authfile",
            a_s,
            "-u",
            "alice",
            "--password-stdin",
            &reg.addr,
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "Login Succeeded!\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&a).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&a).unwrap()).unwrap();
    assert_eq!(v["auths"]["other.example:5000"]["auth"], "b3RoZXI6c2VjcmV0");
    assert_eq!(v["credHelpers"]["gcr.example"], "none");
    assert_eq!(v["psFormat"], "table");
    // skopeo uses the file ferry wrote; ferry too.
    skopeo_ok(&[
        "inspect",
        "--tls-verify=false",
        "--authfile",
        a_s,
        "--raw",
        &image,
    ]);
    let o = ferry_run(
        &[
            "inspect",
            "--tls-verify=false",
            "--authfile",
            a_s,
            "--raw",
            &image,
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    // --get-login prints the user, as skopeo's does.
    let s = skopeo_ok(&["login", "--authfile", a_s, "--get-login", &reg.addr]);
    let o = ferry_run(
        &["login", "--authfile", a_s, "--get-login", &reg.addr],
        None,
    );
    assert_eq!(text(&o.stdout), text(&s.stdout));
    assert_eq!(text(&o.stdout), "alice\n");

    // ferry uses the file skopeo wrote.
    let b = work.path().join("skopeo/auth.json");
    let b_s = b.to_str().unwrap();
    skopeo_ok(&[
        "login",
        "--tls-verify=false",
        "--authfile",
        b_s,
        "-u",
        "alice",
        "-p",
        PASSWORD,
        &reg.addr,
    ]);
    let o = ferry_run(
        &["inspect", "--tls-verify=false", "--authfile", b_s, &image],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = ferry_run(
        &["login", "--authfile", b_s, "--get-login", &reg.addr],
        None,
    );
    assert_eq!(text(&o.stdout), "alice\n");
    // ferry logs out of skopeo's file; skopeo then has no login.
    let o = ferry_run(&["logout", "--authfile", b_s, &reg.addr], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        !skopeo(&[
            "inspect",
            "--tls-verify=false",
            "--authfile",
            b_s,
            "--raw",
            &image
        ])
        .status
        .success()
    );

    // Logout from ferry's file: the entry goes, the others stay; twice is an error.
    let o = ferry_run(&["logout", "--authfile", a_s, &reg.addr], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout),
        format!("Removed login credentials for {}\n", reg.addr)
    );
    assert!(
        !skopeo(&[
            "inspect",
            "--tls-verify=false",
            "--authfile",
            a_s,
            "--raw",
            &image
        ])
        .status
        .success()
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&a).unwrap()).unwrap();
    assert_eq!(v["auths"]["other.example:5000"]["auth"], "b3RoZXI6c2VjcmV0");
    let o = ferry_run(&["logout", "--authfile", a_s, &reg.addr], None);
    assert_eq!(o.status.code(), Some(1));
    let o = ferry_run(&["logout", "--authfile", a_s, "--all"], None);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&a).unwrap()).unwrap();
    assert_eq!(v["auths"], serde_json::json!({}));

    // The default file: ${XDG_RUNTIME_DIR}/containers/auth.json, where skopeo looks too.
    let xdg = work.path().join("xdg");
    std::fs::create_dir_all(&xdg).unwrap();
    let mut c = ferry();
    c.env_remove("REGISTRY_AUTH_FILE")
        .env("XDG_RUNTIME_DIR", &xdg)
        .args([
            "login",
            "--tls-verify=false",
            "-u",
            "alice",
            "-p",
            PASSWORD,
            &reg.addr,
        ]);
    let o = run(&mut c);
    assert!(o.status.success(), "{}", text(&o.stderr));
    outputs.push(o);
    assert!(xdg.join("containers/auth.json").is_file());
    let s = run(Command::new("skopeo")
        .env_remove("REGISTRY_AUTH_FILE")
        .env("XDG_RUNTIME_DIR", &xdg)
        .args(["login", "--get-login", &reg.addr]));
    assert_eq!(text(&s.stdout), "alice\n", "{}", text(&s.stderr));

    for o in &outputs {
        assert!(
            !text(&o.stdout).contains(PASSWORD) && !text(&o.stderr).contains(PASSWORD),
            "the password was printed"
        );
    }
}

#[test]
fn bad_input_is_one_line_and_bad_flags_exit_2() {
    let (_, corpus) = small();
    let (_dir, reg) = small_registry();
    let img = &corpus.images[0];
    let missing = format!("docker://{}/{}:no-such-tag", reg.addr, img.repository);
    for args in [
        vec!["inspect", "--tls-verify=false", missing.as_str()],
        vec!["inspect", "ftp:/nothing"],
        vec!["inspect", "dir:/nonexistent/ferry-verbs"],
    ] {
        let o = ferry_out(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = text(&o.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains(args.last().unwrap()),
            "{args:?} names the image: {err}"
        );
    }
    let o = ferry_out(&["inspect", "--no-such-flag", &missing]);
    assert_eq!(o.status.code(), Some(2));
    let o = ferry_out(&["logout"]);
    assert_eq!(o.status.code(), Some(2));
}

/// One-shot verbs run one process per image in scripts, so the binary starts lean: it is a
/// fixed-address executable (ELF `ET_EXEC`), which the loader maps without relocating ~29,000
/// pointers, and the narrow parse of a one-shot verb still leaves help, versions and usage
/// errors to clap's full tree (the same text and exit codes as `ferry copy`'s).
#[test]
fn one_shot_verbs_start_without_relocations_and_keep_clap_messages() {
    let bin = std::fs::read(env!("CARGO_BIN_EXE_ferry")).expect("reading the ferry binary");
    assert_eq!(&bin[..4], b"\x7fELF");
    let e_type = u16::from_le_bytes([bin[16], bin[17]]);
    assert_eq!(
        e_type, 2,
        "ferry is linked as a PIE (ET_DYN), not a fixed-address ET_EXEC"
    );

    let help = ferry_out(&["inspect", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(
        text(&help.stdout).starts_with("Print an image's manifest"),
        "{}",
        text(&help.stdout)
    );
    assert!(text(&help.stdout).contains("Usage: ferry inspect [OPTIONS] <IMAGE>"));
    let version = ferry_out(&["inspect", "--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert!(
        text(&version.stdout).starts_with("ferry-inspect 0."),
        "{}",
        text(&version.stdout)
    );
    let missing = ferry_out(&["list-tags"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing.stderr).contains("Usage: ferry list-tags"),
        "{}",
        text(&missing.stderr)
    );
}

/// A real credential helper (docker's protocol over stdin/stdout) that keeps each login as a
/// file in `$FERRY_TEST_HELPER_DIR`, written into `bin` as `docker-credential-NAME`.
fn credential_helper(bin: &Path, name: &str) {
    use std::os::unix::fs::PermissionsExt;
    let script = r#"#!/usr/bin/env python3
import json, os, sys
d = os.environ["FERRY_TEST_HELPER_DIR"]
data = sys.stdin.read()
def path(url):
    return os.path.join(d, url.replace("/", "_").replace(":", "_"))
act = sys.argv[1]
if act == "store":
    j = json.loads(data)
    with open(path(j["ServerURL"]), "w") as f:
        json.dump({"ServerURL": j["ServerURL"], "Username": j["Username"], "Secret": j["Secret"]}, f)
elif act in ("get", "erase"):
    p = path(data.strip())
    if not os.path.exists(p):
        print("credentials not found in native keychain")
        sys.exit(1)
    if act == "get":
        sys.stdout.write(open(p).read())
    else:
        os.remove(p)
else:
    sys.exit(2)
"#;
    let p = bin.join(format!("docker-credential-{name}"));
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn credential_helpers_keep_logins_for_login_lookup_and_logout() {
    const PASSWORD: &str = "pw-Hx7-kept-by-the-helper";
    let (root, corpus) = small();
    let dir = tempfile::tempdir().unwrap();
    hardlink_copy(root, dir.path());
    let work = tempfile::tempdir().unwrap();
    let ht = work.path().join("htpasswd");
    htpasswd(&ht, "alice", PASSWORD);
    let reg = Registry::start_with_options(
        dir.path(),
        None,
        &RegistryOptions {
            htpasswd: Some(ht.clone()),
            ..Default::default()
        },
    );
    let img = &corpus.images[0];
    let image = format!("docker://{}/{}:{}", reg.addr, img.repository, img.tag);
    let repo = format!("docker://{}/{}", reg.addr, img.repository);
    let bin = work.path().join("bin");
    let kept = work.path().join("kept");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&kept).unwrap();
    credential_helper(&bin, "ferrytest");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut outputs: Vec<Output> = Vec::new();
    let mut tool = |program: Command, args: &[&str], stdin: Option<&str>| -> Output {
        let mut c = program;
        c.args(args)
            .env_remove("REGISTRY_AUTH_FILE")
            .env("PATH", &path)
            .env("FERRY_TEST_HELPER_DIR", &kept)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        outputs.push(out.clone());
        out
    };
    let login = |a: &str| {
        vec![
            "login".to_string(),
            "--tls-verify=false".into(),
            "--authfile".into(),
            a.into(),
            "-u".into(),
            "alice".into(),
            "--password-stdin".into(),
            reg.addr.clone(),
        ]
    };

    // credHelpers: ferry logs in through the helper; skopeo and ferry find the login there.
    let a = work.path().join("helpers.json");
    let a_s = a.to_str().unwrap().to_string();
    std::fs::write(
        &a,
        format!(r#"{{"credHelpers":{{"{}":"ferrytest"}}}}"#, reg.addr),
    )
    .unwrap();
    let before = std::fs::read(&a).unwrap();
    let l = login(&a_s);
    let l: Vec<&str> = l.iter().map(String::as_str).collect();
    let o = tool(ferry(), &l, Some("wrong\n"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_eq!(std::fs::read_dir(&kept).unwrap().count(), 0, "nothing kept");
    let o = tool(ferry(), &l, Some(&format!("{PASSWORD}\n")));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read(&a).unwrap(),
        before,
        "the file holds no secret"
    );
    assert_eq!(std::fs::read_dir(&kept).unwrap().count(), 1);
    let o = tool(
        ferry(),
        &["login", "--authfile", &a_s, "--get-login", &reg.addr],
        None,
    );
    assert_eq!(text(&o.stdout), "alice\n", "{}", text(&o.stderr));
    for program in [ferry(), Command::new("skopeo")] {
        let o = tool(
            program,
            &["inspect", "--tls-verify=false", "--authfile", &a_s, &image],
            None,
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let o = tool(
        ferry(),
        &["list-tags", "--tls-verify=false", "--authfile", &a_s, &repo],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = tool(ferry(), &["logout", "--authfile", &a_s, &reg.addr], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(std::fs::read_dir(&kept).unwrap().count(), 0, "erased");
    let o = tool(
        ferry(),
        &["login", "--authfile", &a_s, "--get-login", &reg.addr],
        None,
    );
    assert_eq!(o.status.code(), Some(1));

    // credsStore: the helper keeps the secret, the file an empty entry (as docker writes);
    // logout --all has the store forget it.
    let b = work.path().join("store.json");
    let b_s = b.to_str().unwrap().to_string();
    std::fs::write(&b, r#"{"credsStore":"ferrytest","psFormat":"table"}"#).unwrap();
    let l = login(&b_s);
    let l: Vec<&str> = l.iter().map(String::as_str).collect();
    let o = tool(ferry(), &l, Some(&format!("{PASSWORD}\n")));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&b).unwrap()).unwrap();
    assert_eq!(v["auths"][&reg.addr], serde_json::json!({}), "{v}");
    assert_eq!(v["psFormat"], "table");
    let o = tool(
        ferry(),
        &["inspect", "--tls-verify=false", "--authfile", &b_s, &image],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = tool(ferry(), &["logout", "--authfile", &b_s, "--all"], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(std::fs::read_dir(&kept).unwrap().count(), 0, "erased");
    let o = tool(
        ferry(),
        &["inspect", "--tls-verify=false", "--authfile", &b_s, &image],
        None,
    );
    assert_eq!(o.status.code(), Some(1), "no login left");

    // A helper the file names but that is not installed: one line naming it.
    std::fs::write(&b, r#"{"credsStore":"absent"}"#).unwrap();
    let o = tool(
        ferry(),
        &["inspect", "--tls-verify=false", "--authfile", &b_s, &image],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("docker-credential-absent"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(
        text(&o.stderr).trim().lines().count(),
        1,
        "{}",
        text(&o.stderr)
    );

    for o in &outputs {
        assert!(
            !text(&o.stdout).contains(PASSWORD) && !text(&o.stderr).contains(PASSWORD),
            "the password was printed"
        );
    }
}
