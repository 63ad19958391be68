//! `ferry sync` against skopeo's `sync` as the oracle: the same source through both tools, each
//! into its own empty target (a real `docker-registry`, or a directory), and the targets compared:
//! repositories, tags and manifest digests for registries, the same files byte for byte for `dir`.
//! Bad input must fail with one line, exit 1 (2 for flags), and leave the target untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use crate::harness::*;

const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// A JSON body from a plain-HTTP registry.
fn get_json(addr: &str, path: &str) -> serde_json::Value {
    let (status, _, body) =
        http(addr, "GET", path, &[]).unwrap_or_else(|| panic!("GET {addr}{path} failed"));
    assert_eq!(status, 200, "GET {addr}{path}");
    serde_json::from_slice(&body).unwrap()
}

/// Everything a registry holds, as names: repository → tag → manifest digest.
fn state(addr: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let cat = get_json(addr, "/v2/_catalog?n=1000");
    for repo in cat["repositories"].as_array().cloned().unwrap_or_default() {
        let repo = repo.as_str().unwrap().to_string();
        // A repository holding only manifests pushed by digest has no tags (distribution: 404).
        let tags = match http(addr, "GET", &format!("/v2/{repo}/tags/list"), &[]) {
            Some((404, _, _)) => serde_json::Value::Null,
            _ => get_json(addr, &format!("/v2/{repo}/tags/list")),
        };
        let mut t = BTreeMap::new();
        for tag in tags["tags"].as_array().cloned().unwrap_or_default() {
            let tag = tag.as_str().unwrap().to_string();
            let (status, head, _) = http(
                addr,
                "HEAD",
                &format!("/v2/{repo}/manifests/{tag}"),
                &[("Accept", ACCEPT)],
            )
            .unwrap();
            assert_eq!(status, 200, "HEAD {repo}:{tag}");
            t.insert(
                tag,
                header(&head, "Docker-Content-Digest").unwrap().to_string(),
            );
        }
        out.insert(repo, t);
    }
    out
}

/// Whether a registry has a manifest by digest in a repository.
fn has_manifest(addr: &str, repo: &str, digest: &str) -> bool {
    matches!(
        http(
            addr,
            "HEAD",
            &format!("/v2/{repo}/manifests/{digest}"),
            &[("Accept", ACCEPT)]
        ),
        Some((200, _, _))
    )
}

/// `ferry sync` with retry pauses off.
fn ferry_sync(args: &[&str]) -> Output {
    run(ferry()
        .env("FERRY_TEST_NO_RETRY_DELAY", "1")
        .arg("sync")
        .args(args))
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A `docker-registry` with htpasswd basic auth (bcrypt entries from `htpasswd -nbB`).
struct AuthRegistry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl AuthRegistry {
    fn start(root: &Path, user: &str, password: &str) -> AuthRegistry {
        require("docker-registry");
        require("htpasswd");
        let entry = run_ok(Command::new("htpasswd").args(["-nbB", user, password])).stdout;
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("htpasswd"), &entry).unwrap();
            let addr = format!("127.0.0.1:{}", free_port());
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nauth:\n  htpasswd:\n    realm: ferry-test\n    path: {}\nhttp:\n  addr: {addr}\n  secret: ferry-test-not-a-secret\n",
                    root.display(),
                    dir.path().join("htpasswd").display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("log")).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting docker-registry");
            let start = Instant::now();
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken: try another
                }
                if let Some((401, _, _)) = http(&addr, "GET", "/v2/", &[]) {
                    return AuthRegistry {
                        child,
                        addr,
                        _dir: dir,
                    };
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "auth registry not ready"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("could not start docker-registry with auth");
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The corpus' repositories with their images, in corpus order.
fn by_repo(corpus: &ferry::fixtures::Corpus) -> Vec<(String, Vec<&ferry::fixtures::FixtureImage>)> {
    let mut out: Vec<(String, Vec<&ferry::fixtures::FixtureImage>)> = Vec::new();
    for img in &corpus.images {
        match out.iter_mut().find(|(r, _)| *r == img.repository) {
            Some((_, v)) => v.push(img),
            None => out.push((img.repository.clone(), vec![img])),
        }
    }
    out
}

/// The middle number of a corpus tag `v1.N.K`.
fn minor(tag: &str) -> u32 {
    tag.split('.').nth(1).unwrap().parse().unwrap()
}

#[test]
fn yaml_file_with_every_key_lands_as_skopeo_lands_it() {
    let (small_root, corpus) = small();
    let (_d1, src) = small_registry();
    let auth_dir = tempfile::tempdir().unwrap();
    hardlink_copy(small_root, auth_dir.path());
    let auth = AuthRegistry::start(auth_dir.path(), "syncer", "s3cret pass");
    let (_d2, skopeo_target) = empty_registry();
    let (_d3, ferry_target) = empty_registry();
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    std::fs::create_dir(&certs).unwrap();

    let repos = by_repo(corpus);
    let multi: Vec<&(String, Vec<_>)> = repos.iter().filter(|(_, v)| v.len() >= 2).collect();
    assert!(
        multi.len() >= 2,
        "the small corpus has two repositories with several tags"
    );
    // images: all tags of one repository; one tag plus a digest of another.
    let (all_repo, pinned) = (&multi[0].0, &multi[1]);
    let (tag_img, digest_img) = (pinned.1[0], pinned.1[1]);
    let others: Vec<&(String, Vec<_>)> = repos
        .iter()
        .filter(|(r, _)| r != all_repo && *r != pinned.0)
        .collect();
    // images-by-tag-regex and images-by-semver on two more; one image through the password-protected registry.
    let regex_repo = &others[0].0;
    let semver_repo = &others[1];
    let auth_img = others[2].1[0];
    let semver_tags: Vec<&str> = semver_repo
        .1
        .iter()
        .filter(|i| minor(&i.tag) >= 1)
        .map(|i| i.tag.as_str())
        .collect();
    assert!(!semver_tags.is_empty());
    let common = format!(
        "{src}:\n  tls-verify: false\n  cert-dir: {certs}\n  images:\n    {all_repo}: []\n    {pinned}:\n      - \"{tag}\"\n      - \"{digest}\"\n  images-by-tag-regex:\n    {regex_repo}: ^v1\\.[0-9]+\\.[0-9]+$\n",
        src = src.addr,
        certs = certs.display(),
        pinned = pinned.0,
        tag = tag_img.tag,
        digest = digest_img.digest,
    );
    let auth_part = format!(
        "{}:\n  tls-verify: false\n  credentials:\n    username: syncer\n    password: s3cret pass\n  images:\n    {}:\n      - {}\n",
        auth.addr, auth_img.repository, auth_img.tag
    );
    // skopeo 1.9.3 predates images-by-semver: it gets the tags the constraint selects, listed.
    let ferry_yaml = format!(
        "{common}  images-by-semver:\n    {}: \">= 1.1.0, < 2\"\n{auth_part}",
        semver_repo.0
    );
    let skopeo_yaml = format!(
        "{}    {}: [{}]\n{common_rest}{auth_part}",
        common.split("  images-by-tag-regex").next().unwrap(),
        semver_repo.0,
        semver_tags.join(", "),
        common_rest = &common[common.find("  images-by-tag-regex").unwrap()..],
    );
    let (fy, sy) = (
        work.path().join("ferry.yaml"),
        work.path().join("skopeo.yaml"),
    );
    std::fs::write(&fy, &ferry_yaml).unwrap();
    std::fs::write(&sy, &skopeo_yaml).unwrap();

    let dst_s = format!("{}/mirror", skopeo_target.addr);
    let dst_f = format!("{}/mirror", ferry_target.addr);
    skopeo_ok(&[
        "sync",
        "--src",
        "yaml",
        "--dest",
        "docker",
        "--dest-tls-verify=false",
        sy.to_str().unwrap(),
        &dst_s,
    ]);
    ok(
        ferry_sync(&[
            "-q",
            "--src",
            "yaml",
            "--dest",
            "docker",
            "--dest-tls-verify=false",
            fy.to_str().unwrap(),
            &dst_f,
        ]),
        "ferry sync --src yaml",
    );
    let (want, got) = (state(&skopeo_target.addr), state(&ferry_target.addr));
    assert_eq!(got, want, "ferry's target holds what skopeo's holds");
    // Every key did something: each repository arrived under mirror/ by its last path element.
    let last = |r: &str| format!("mirror/{}", r.rsplit('/').next().unwrap());
    for r in [
        all_repo,
        &pinned.0,
        regex_repo,
        &semver_repo.0,
        &auth_img.repository,
    ] {
        assert!(got.contains_key(&last(r)), "{r} synced: {got:?}");
    }
    assert_eq!(
        got[&last(&semver_repo.0)]
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        semver_tags.iter().copied().collect::<BTreeSet<_>>()
    );
    // The digest-pinned image is there by digest, as skopeo put it.
    let d = digest_img.digest.to_string();
    assert!(has_manifest(&skopeo_target.addr, &last(&pinned.0), &d));
    assert!(has_manifest(&ferry_target.addr, &last(&pinned.0), &d));
}

#[test]
fn docker_to_dir_scoped_all_writes_skopeos_files() {
    let (_, corpus) = small();
    let (_d, src) = small_registry();
    let work = tempfile::tempdir().unwrap();
    let repo = &multi_arch(corpus).repository;
    let (a, b) = (work.path().join("skopeo"), work.path().join("ferry"));
    let from = format!("{}/{repo}", src.addr);
    for (tool, out) in [("skopeo", &a), ("ferry", &b)] {
        let args = [
            "--src",
            "docker",
            "--dest",
            "dir",
            "--scoped",
            "--all",
            "--src-tls-verify=false",
            &from,
            out.to_str().unwrap(),
        ];
        if tool == "skopeo" {
            let mut v = vec!["sync"];
            v.extend(args);
            skopeo_ok(&v);
        } else {
            let mut v = vec!["-q"];
            v.extend(args);
            ok(ferry_sync(&v), "ferry sync docker->dir");
        }
    }
    let (fa, fb) = (files(&a), files(&b));
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        fb.keys().collect::<Vec<_>>(),
        "the same tree"
    );
    assert!(
        fa.keys()
            .any(|k| k.starts_with(&format!("{}/{repo}:", src.addr)))
    );
    for (name, bytes) in &fa {
        assert!(fb[name] == *bytes, "{name}: the same bytes");
    }
}

#[test]
fn docker_to_docker_repository_and_image_as_skopeo() {
    let (_, corpus) = small();
    let (_d, src) = small_registry();
    let (_d2, skopeo_target) = empty_registry();
    let (_d3, ferry_target) = empty_registry();
    let repos = by_repo(corpus);
    let (repo, imgs) = repos.iter().find(|(_, v)| v.len() >= 2).unwrap();
    let one = multi_arch(corpus);
    let runs: Vec<(Vec<&str>, String, String)> = vec![
        // A repository: every tag, named by its last element under the destination.
        (vec![], format!("{}/{repo}", src.addr), String::new()),
        // One tagged image, under a prefix, and again scoped.
        (
            vec![],
            format!("{}/{}:{}", src.addr, one.repository, one.tag),
            "/pre/fix".into(),
        ),
        // A digest reference, pushed by digest.
        (
            vec![],
            format!("{}/{}@{}", src.addr, imgs[1].repository, imgs[1].digest),
            "/bydigest".into(),
        ),
    ];
    for (flags, from, prefix) in &runs {
        let base = [
            "--src",
            "docker",
            "--dest",
            "docker",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ];
        let mut s = vec!["sync"];
        s.extend(base);
        s.extend(flags.iter().copied());
        let to_s = format!("{}{prefix}", skopeo_target.addr);
        s.extend([from.as_str(), to_s.as_str()]);
        skopeo_ok(&s);
        let mut f = vec!["-q"];
        f.extend(base);
        f.extend(flags.iter().copied());
        let to_f = format!("{}{prefix}", ferry_target.addr);
        f.extend([from.as_str(), to_f.as_str()]);
        ok(ferry_sync(&f), &format!("ferry sync {f:?}"));
    }
    // --scoped keeps the source's HOST:PORT in the name, which no registry reference can hold:
    // skopeo refuses ("invalid reference format"), and so does ferry, before writing anything.
    let scoped = |to: &str| {
        vec![
            "--src".to_string(),
            "docker".into(),
            "--dest".into(),
            "docker".into(),
            "--src-tls-verify=false".into(),
            "--dest-tls-verify=false".into(),
            "--scoped".into(),
            format!("{}/{}:{}", src.addr, one.repository, one.tag),
            to.to_string(),
        ]
    };
    let mut s = vec!["sync".to_string()];
    s.extend(scoped(&skopeo_target.addr));
    assert!(
        !skopeo(&s.iter().map(String::as_str).collect::<Vec<_>>())
            .status
            .success()
    );
    let before = state(&ferry_target.addr);
    let f = ferry_sync(
        &scoped(&ferry_target.addr)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        f.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&f.stderr)
    );
    assert!(String::from_utf8_lossy(&f.stderr).contains("not a valid image reference"));
    assert_eq!(state(&ferry_target.addr), before);
    let (want, got) = (state(&skopeo_target.addr), state(&ferry_target.addr));
    assert_eq!(got, want);
    let last = repo.rsplit('/').next().unwrap();
    assert_eq!(got[last].len(), imgs.len(), "every tag of {repo}");
    assert!(
        got.contains_key(&format!(
            "pre/fix/{}",
            one.repository.rsplit('/').next().unwrap()
        )),
        "{got:?}"
    );
    let by_digest = format!(
        "bydigest/{}",
        imgs[1].repository.rsplit('/').next().unwrap()
    );
    assert!(has_manifest(
        &ferry_target.addr,
        &by_digest,
        &imgs[1].digest.to_string()
    ));
    assert!(has_manifest(
        &skopeo_target.addr,
        &by_digest,
        &imgs[1].digest.to_string()
    ));
}

#[test]
fn dir_to_docker_from_skopeos_tree_as_skopeo() {
    let (_, corpus) = small();
    let (_d, src) = small_registry();
    let (_d2, skopeo_target) = empty_registry();
    let (_d3, ferry_target) = empty_registry();
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    let repo = &by_repo(corpus)
        .into_iter()
        .find(|(_, v)| v.len() >= 2)
        .unwrap()
        .0;
    skopeo_ok(&[
        "sync",
        "--src",
        "docker",
        "--dest",
        "dir",
        "--scoped",
        "--src-tls-verify=false",
        &format!("{}/{repo}", src.addr),
        tree.to_str().unwrap(),
    ]);
    for scoped in [false, true] {
        let args = |to: &str| {
            let mut v = vec![
                "--src".to_string(),
                "dir".into(),
                "--dest".into(),
                "docker".into(),
                "--dest-tls-verify=false".into(),
                format!("{}/", tree.display()),
                format!("{to}/from-dir"),
            ];
            if scoped {
                v.insert(0, "--scoped".into());
            }
            v
        };
        let mut s = vec!["sync".to_string()];
        s.extend(args(&skopeo_target.addr));
        let sk = skopeo(&s.iter().map(String::as_str).collect::<Vec<_>>());
        let mut f = vec!["-q".to_string()];
        f.extend(args(&ferry_target.addr));
        let fe = ferry_sync(&f.iter().map(String::as_str).collect::<Vec<_>>());
        // Scoped, the tree's HOST:PORT/REPO:TAG paths make names no registry takes: both refuse.
        assert_eq!(
            sk.status.success(),
            !scoped,
            "skopeo: {}",
            String::from_utf8_lossy(&sk.stderr)
        );
        assert_eq!(
            fe.status.success(),
            !scoped,
            "ferry: {}",
            String::from_utf8_lossy(&fe.stderr)
        );
    }
    let (want, got) = (state(&skopeo_target.addr), state(&ferry_target.addr));
    assert_eq!(got, want);
    assert!(
        got.contains_key(&format!("from-dir/{}", repo.rsplit('/').next().unwrap())),
        "{got:?}"
    );
}

#[test]
fn dry_run_writes_nothing() {
    let (_, corpus) = small();
    let (_d, src) = small_registry();
    let (_d2, target) = empty_registry();
    let work = tempfile::tempdir().unwrap();
    let (repo, imgs) = by_repo(corpus)
        .into_iter()
        .find(|(_, v)| v.len() >= 2)
        .unwrap();
    let from = format!("{}/{repo}", src.addr);
    let out = ok(
        ferry_sync(&[
            "--dry-run",
            "--src",
            "docker",
            "--dest",
            "docker",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &from,
            &target.addr,
        ]),
        "dry run",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("would copy"))
            .count(),
        imgs.len(),
        "{stdout}"
    );
    for i in &imgs {
        assert!(stdout.contains(&i.digest.to_string()), "{stdout}");
    }
    assert!(state(&target.addr).is_empty(), "nothing pushed");
    let dir = work.path().join("out");
    ok(
        ferry_sync(&[
            "--dry-run",
            "--src",
            "docker",
            "--dest",
            "dir",
            "--src-tls-verify=false",
            &from,
            dir.to_str().unwrap(),
        ]),
        "dry run to dir",
    );
    assert!(!dir.exists(), "no directory made");
}

/// A bad input: exit `code`, one stderr line holding every word of `words`, and the target unchanged.
fn refused(args: &[&str], code: i32, words: &[&str], target: &str) {
    let out = ferry_sync(args);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    if code == 1 {
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: one line, got:\n{stderr}"
        );
    }
    for w in words {
        assert!(stderr.contains(w), "{args:?}: {w:?} in {stderr:?}");
    }
    assert!(
        state(target).is_empty(),
        "{args:?}: the target is unchanged"
    );
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let (small_root, corpus) = small();
    let (_d, src) = small_registry();
    let auth_dir = tempfile::tempdir().unwrap();
    hardlink_copy(small_root, auth_dir.path());
    let auth = AuthRegistry::start(auth_dir.path(), "syncer", "right");
    let (_d2, target) = empty_registry();
    let work = tempfile::tempdir().unwrap();
    let img = &corpus.images[0];
    let good = format!(
        "  tls-verify: false\n  images:\n    {}: [\"{}\"]\n",
        img.repository, img.tag
    );
    let yaml = |name: &str, body: String| -> PathBuf {
        let p = work.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let dead = format!("127.0.0.1:{}", free_port());
    let cases: Vec<(PathBuf, Vec<String>)> = vec![
        (
            yaml(
                "syntax.yaml",
                format!("{}:\n{good}    other: [\"a\"\n", src.addr),
            ),
            vec!["syntax.yaml".into(), "line".into()],
        ),
        (
            yaml(
                "unknown.yaml",
                format!("{}:\n{good}  tls_verify: false\n", src.addr),
            ),
            vec!["unknown field `tls_verify`".into(), "line 5".into()],
        ),
        (
            yaml(
                "regex.yaml",
                format!(
                    "{}:\n{good}  images-by-tag-regex:\n    {}: \"v1[\"\n",
                    src.addr, img.repository
                ),
            ),
            vec![
                "regular expression".into(),
                img.repository.clone(),
                src.addr.clone(),
            ],
        ),
        (
            yaml(
                "semver.yaml",
                format!(
                    "{}:\n{good}  images-by-semver:\n    {}: \">= banana\"\n",
                    src.addr, img.repository
                ),
            ),
            vec!["semver".into(), img.repository.clone(), src.addr.clone()],
        ),
        (
            yaml(
                "password.yaml",
                format!(
                    "{}:\n  tls-verify: false\n  credentials:\n    username: syncer\n    password: wrong\n  images:\n    {}: [\"{}\"]\n",
                    auth.addr, img.repository, img.tag
                ),
            ),
            vec![auth.addr.clone(), "401".into()],
        ),
        (
            yaml(
                "missing.yaml",
                format!(
                    "{}:\n{good}    {}: [\"no-such-tag\"]\n",
                    src.addr, corpus.images[1].repository
                ),
            ),
            vec![
                corpus.images[1].repository.clone(),
                "no-such-tag".into(),
                "not found".into(),
            ],
        ),
        (
            yaml(
                "dead.yaml",
                format!(
                    "{dead}:\n  tls-verify: false\n  images:\n    a/b: []\n{}:\n{good}",
                    src.addr
                ),
            ),
            vec![dead.clone(), "a/b".into(), "refused".into()],
        ),
    ];
    for (file, words) in &cases {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        refused(
            &[
                "-q",
                "--src",
                "yaml",
                "--dest",
                "docker",
                "--dest-tls-verify=false",
                file.to_str().unwrap(),
                &target.addr,
            ],
            1,
            &words,
            &target.addr,
        );
    }
    // A missing tag on the command line, and a dead registry there.
    refused(
        &[
            "-q",
            "--src",
            "docker",
            "--dest",
            "docker",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("{}/{}:no-such-tag", src.addr, img.repository),
            &target.addr,
        ],
        1,
        &["no-such-tag", "not found"],
        &target.addr,
    );
    refused(
        &[
            "-q",
            "--src",
            "docker",
            "--dest",
            "docker",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("{dead}/a/b"),
            &target.addr,
        ],
        1,
        &[&dead, "a/b"],
        &target.addr,
    );
    // Malformed flags: exit 2.
    refused(
        &["--src", "ftp", "--dest", "docker", "x", &target.addr],
        2,
        &["ftp"],
        &target.addr,
    );
    refused(
        &["--src", "dir", "--dest", "dir", "x", "y"],
        2,
        &["dir to dir"],
        &target.addr,
    );
}

#[test]
fn yaml_to_dir_scoped_and_not_writes_skopeos_files() {
    let (_, corpus) = small();
    let (_d, src) = small_registry();
    let work = tempfile::tempdir().unwrap();
    let repos = by_repo(corpus);
    let (repo, imgs) = repos.iter().find(|(_, v)| v.len() >= 2).unwrap();
    let other = repos.iter().find(|(r, _)| r != repo).unwrap();
    // A tag, a digest (a directory named REPO@sha256:…), and a regex.
    let yaml = work.path().join("s.yaml");
    std::fs::write(
        &yaml,
        format!(
            "{}:\n  tls-verify: false\n  images:\n    {repo}:\n      - \"{}\"\n      - \"{}\"\n  images-by-tag-regex:\n    {}: ^v\n",
            src.addr, imgs[0].tag, imgs[1].digest, other.0
        ),
    )
    .unwrap();
    for scoped in [true, false] {
        let (a, b) = (
            work.path().join(format!("skopeo-{scoped}")),
            work.path().join(format!("ferry-{scoped}")),
        );
        let mut args = vec!["--src", "yaml", "--dest", "dir", yaml.to_str().unwrap()];
        if scoped {
            args.insert(0, "--scoped");
        }
        let mut s = vec!["sync"];
        s.extend(&args);
        s.push(a.to_str().unwrap());
        skopeo_ok(&s);
        let mut f = vec!["-q"];
        f.extend(&args);
        f.push(b.to_str().unwrap());
        ok(ferry_sync(&f), "ferry sync yaml->dir");
        let (fa, fb) = (files(&a), files(&b));
        assert_eq!(
            fa.keys().collect::<Vec<_>>(),
            fb.keys().collect::<Vec<_>>(),
            "scoped={scoped}"
        );
        for (name, bytes) in &fa {
            assert!(fb[name] == *bytes, "{name}: the same bytes");
        }
        let pinned = format!(
            "{}@{}/manifest.json",
            repo.rsplit('/').next().unwrap(),
            imgs[1].digest
        );
        assert!(
            scoped || fa.contains_key(&pinned),
            "{:?}",
            fa.keys().collect::<Vec<_>>()
        );
    }
}

/// One `ferry sync --json` of `from` into `to` with its blob locations kept in `cache`; the summary.
fn sync_json(cache: &Path, from: &str, to: &str) -> serde_json::Value {
    let out = ok(
        run(ferry()
            .env("XDG_CACHE_HOME", cache)
            .env("FERRY_TEST_NO_RETRY_DELAY", "1")
            .args([
                "sync",
                "-q",
                "--json",
                "--src",
                "docker",
                "--dest",
                "docker",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                from,
                to,
            ])),
        &format!("ferry sync {from} {to}"),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_later_run_mounts_what_an_earlier_run_uploaded_and_survives_stale_locations() {
    let (_, corpus) = small();
    let (_d, src) = small_registry();
    let (_d2, target) = empty_registry();
    let cache = tempfile::tempdir().unwrap();
    let repos = by_repo(corpus);
    let (repo, imgs) = repos.iter().find(|(_, v)| v.len() >= 2).unwrap();
    let from = format!("{}/{repo}", src.addr);
    // Two processes, one repository each: the second uploads nothing, it mounts.
    let first = sync_json(cache.path(), &from, &format!("{}/a", target.addr));
    let uploaded = first["blobs_uploaded"].as_u64().unwrap();
    assert!(uploaded > 0, "{first}");
    let second = sync_json(cache.path(), &from, &format!("{}/b", target.addr));
    assert_eq!(second["blobs_uploaded"], 0, "{second}");
    assert_eq!(
        second["blobs_mounted"].as_u64().unwrap(),
        uploaded,
        "{second}"
    );
    let got = state(&target.addr);
    let last = repo.rsplit('/').next().unwrap();
    assert_eq!(got[&format!("a/{last}")].len(), imgs.len(), "{got:?}");
    assert_eq!(got[&format!("a/{last}")], got[&format!("b/{last}")]);

    // Every location made stale: the same file pointed at another (empty) registry, whose
    // repositories hold nothing. The mounts are refused, the blobs uploaded, the image whole.
    let (_d3, other) = empty_registry();
    let file = cache.path().join("ferry/.ferry-cache/blob-locations");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.lines().count() as u64 >= uploaded, "{text}");
    std::fs::write(&file, text.replace(&target.addr, &other.addr)).unwrap();
    let third = sync_json(cache.path(), &from, &format!("{}/c", other.addr));
    assert_eq!(
        third["blobs_uploaded"].as_u64().unwrap(),
        uploaded,
        "{third}"
    );
    assert_eq!(third["blobs_mounted"], 0, "{third}");
    let there = state(&other.addr);
    assert_eq!(there[&format!("c/{last}")], got[&format!("a/{last}")]);
    let (blobs, manifests, gc) = other.gc_dry_run();
    assert_eq!((blobs, manifests), (0, 0), "{gc}");
}
