//! Delta bundles (`bundle --since OLD`) at the site, and the bundle cache's
//! prune and gc: a real docker-registry is the source, a patch of the fixtures
//! (images changed, added, one removed) is the next release.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ferry::bundlefile::read_index;
use ferry::fixtures::{Corpus, patch};
use ferry::store::Store;

use crate::harness::{
    FerryServe, Registry, bundle_cmd, empty_registry, extract_bundle, ferry, hardlink_copy,
    inspect_digest, run, run_ok, tiny, tree_hash,
};

/// Two releases served by two registries, bundled with one cache: old, new in full, and new as a delta of old.
struct Release {
    dir: tempfile::TempDir,
    _old_root: tempfile::TempDir,
    old: Corpus,
    new: Corpus,
    reg_old: Registry,
    reg_new: Option<Registry>,
}

impl Release {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn cache(&self) -> PathBuf {
        self.path("cache")
    }
    /// `ferry bundle --all-platforms` of a list file into `out` from `reg`, with extra flags.
    fn bundle(&self, list: &str, out: &str, reg: &str, extra: &[&str]) -> std::process::Output {
        run(
            bundle_cmd(&self.path(list), &self.path(out), &self.cache(), reg)
                .arg("--all-platforms")
                .args(extra),
        )
    }
}

/// tiny as release 1; release 2 changes 2 images (one an index, when it comes first), adds 2, drops 1.
fn release() -> Release {
    let (old_root, old) = tiny();
    let dir = tempfile::tempdir().unwrap();
    let new_root = dir.path().join("new-root");
    std::fs::create_dir_all(&new_root).unwrap();
    hardlink_copy(old_root.path(), &new_root);
    let new = patch(&Store::open(&new_root).with_durable(false), &old, 2, 2).unwrap();
    std::fs::write(dir.path().join("old.txt"), old.images_list()).unwrap();
    std::fs::write(dir.path().join("new.txt"), new.images_list()).unwrap();
    let reg_old = Registry::start(old_root.path());
    let reg_new = Registry::start(&new_root);
    let r = Release {
        dir,
        _old_root: old_root,
        old,
        new,
        reg_old,
        reg_new: Some(reg_new),
    };
    let new_addr = r.reg_new.as_ref().unwrap().addr.clone();
    for (list, out, addr, extra) in [
        ("old.txt", "old.tar.zst", r.reg_old.addr.clone(), vec![]),
        ("new.txt", "new.tar.zst", new_addr.clone(), vec![]),
        (
            "new.txt",
            "delta.tar.zst",
            new_addr,
            vec!["--since", "old.tar.zst"],
        ),
    ] {
        let extra: Vec<String> = extra
            .iter()
            .map(|e| {
                if e.ends_with(".tar.zst") {
                    r.path(e).display().to_string()
                } else {
                    e.to_string()
                }
            })
            .collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let out = r.bundle(list, out, &addr, &extra);
        assert!(
            out.status.success(),
            "bundle {out:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    r
}

/// The blob files an archive holds, by plain `tar` (no ferry code).
fn archive_blobs(bundle: &Path) -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    extract_bundle(bundle, dir.path());
    crate::harness::files(dir.path())
        .keys()
        .filter(|p| p.ends_with("/data"))
        .map(|p| p.rsplit('/').nth(1).unwrap().to_string())
        .collect()
}

/// Every tag of `corpus` at `addr` has its source digest (skopeo, plain HTTP).
fn serves_every_tag(addr: &str, corpus: &Corpus) {
    for img in &corpus.images {
        assert_eq!(
            inspect_digest(&format!("docker://{addr}/{}:{}", img.repository, img.tag)),
            img.digest.to_string(),
            "{}:{}",
            img.repository,
            img.tag
        );
    }
}

fn link(bundle: &Path, root: &Path, extra: &[&str]) -> std::process::Output {
    run(ferry()
        .args(["-q", "unbundle", "link"])
        .arg(bundle)
        .arg("--root")
        .arg(root)
        .args(extra))
}

#[test]
fn a_delta_holds_new_minus_old_and_links_over_old_only() {
    let r = release();
    let (old, new, delta) = (
        archive_blobs(&r.path("old.tar.zst")),
        archive_blobs(&r.path("new.tar.zst")),
        archive_blobs(&r.path("delta.tar.zst")),
    );
    let want: BTreeSet<String> = new.difference(&old).cloned().collect();
    assert!(!want.is_empty() && want.len() < new.len(), "{want:?}");
    assert_eq!(
        delta, want,
        "the delta holds exactly blobs(new) - blobs(old)"
    );
    // The index names the base and every left-out blob.
    let index = read_index(&r.path("delta.tar.zst")).unwrap();
    let since = index.since.as_ref().expect("a delta records its base");
    assert_eq!(since.name, "old.tar.zst");
    let old_index_bytes = {
        let d = tempfile::tempdir().unwrap();
        extract_bundle(&r.path("old.tar.zst"), d.path());
        std::fs::read(d.path().join("ferry-bundle.json")).unwrap()
    };
    assert_eq!(
        since.index_digest.to_string(),
        crate::harness::sha256(&old_index_bytes)
    );
    let left: BTreeSet<String> = since
        .left_out
        .iter()
        .map(|l| l.digest.hex().to_string())
        .collect();
    assert_eq!(
        left,
        new.intersection(&old).cloned().collect(),
        "left out: exactly what new shares with old"
    );
    // The extracted ferry-bundle.json as --since gives the same delta.
    let json = r.path("old-index.json");
    std::fs::write(&json, &old_index_bytes).unwrap();
    let addr = r.reg_new.as_ref().unwrap().addr.clone();
    let again = r.bundle(
        "new.txt",
        "delta2.tar.zst",
        &addr,
        &["--since", json.to_str().unwrap()],
    );
    assert!(again.status.success());
    let index2 = read_index(&r.path("delta2.tar.zst")).unwrap();
    let since2 = index2.since.as_ref().unwrap();
    assert_eq!(since2.index_digest, since.index_digest, "the same identity");
    assert_eq!(since2.left_out, since.left_out);
    assert_eq!(index2.blobs, index.blobs);
    assert_eq!(archive_blobs(&r.path("delta2.tar.zst")), delta);

    // verify and ls take the delta on its own terms.
    run_ok(ferry().arg("verify").arg(r.path("delta.tar.zst")));
    let ls = run_ok(ferry().arg("ls").arg(r.path("delta.tar.zst")));
    let ls = String::from_utf8_lossy(&ls.stdout);
    for img in &r.new.images {
        assert!(
            ls.contains(&img.digest.to_string()),
            "ls names {}:{}\n{ls}",
            img.repository,
            img.tag
        );
    }

    // The delta alone into an empty root: refused, naming the base, nothing written.
    let empty = r.path("empty-root");
    std::fs::create_dir_all(&empty).unwrap();
    let before = tree_hash(&empty, ".");
    let out = link(&r.path("delta.tar.zst"), &empty, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("a delta of old.tar.zst"), "{err}");
    assert!(err.contains("needs"), "names the images: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_eq!(tree_hash(&empty, "."), before, "nothing written");
    assert!(
        !empty.join("docker").exists(),
        "not even the layout's directories"
    );

    // Old, then the delta, into a root a live registry serves: every new tag, GC deletes nothing.
    let live = r.path("live-root");
    std::fs::create_dir_all(&live).unwrap();
    let reg = Registry::start(&live);
    run_ok(&mut link_cmd(&r.path("old.tar.zst"), &live, &[]));
    run_ok(&mut link_cmd(&r.path("delta.tar.zst"), &live, &[]));
    serves_every_tag(&reg.addr, &r.new);
    assert_eq!(reg.gc_dry_run().0, 0, "GC would delete no blob");
    assert_eq!(reg.gc_dry_run().1, 0, "GC would delete no manifest");

    // The delta with --base into an empty root: what the root lacks comes from the base.
    let based = r.path("based-root");
    std::fs::create_dir_all(&based).unwrap();
    let out = link(
        &r.path("delta.tar.zst"),
        &based,
        &["--base", r.path("old.tar.zst").to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reg2 = Registry::start(&based);
    serves_every_tag(&reg2.addr, &r.new);
    run_ok(ferry().arg("verify").arg(&based));
}

fn link_cmd(bundle: &Path, root: &Path, extra: &[&str]) -> std::process::Command {
    let mut c = ferry();
    c.args(["-q", "unbundle", "link"])
        .arg(bundle)
        .arg("--root")
        .arg(root)
        .args(extra);
    c
}

#[test]
fn serve_of_old_and_delta_serves_the_new_release_and_the_delta_alone_is_refused() {
    let r = release();
    let (old, delta) = (r.path("old.tar.zst"), r.path("delta.tar.zst"));
    let alone = run(ferry()
        .args(["unbundle", "serve", "--listen", "127.0.0.1:0"])
        .arg(&delta));
    let err = String::from_utf8_lossy(&alone.stderr);
    assert_eq!(alone.status.code(), Some(1), "{err}");
    assert!(
        err.contains("a delta of old.tar.zst") && err.contains("unbundle serve old.tar.zst"),
        "{err}"
    );
    let s = FerryServe::start_with(&[
        "unbundle",
        "serve",
        old.to_str().unwrap(),
        delta.to_str().unwrap(),
    ]);
    serves_every_tag(&s.addr, &r.new);
    // A whole image from the pair, every blob: skopeo copies it out.
    let out = tempfile::tempdir().unwrap();
    let img = &r.new.images[0];
    crate::harness::skopeo_ok(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}/{}:{}", s.addr, img.repository, img.tag),
        &format!("dir:{}", out.path().display()),
    ]);
    drop(s);
    // Unpacked with --dir, given delta first: the base is unpacked first and the new tags win.
    let dir = tempfile::tempdir().unwrap();
    let s = FerryServe::start_with(&[
        "unbundle",
        "serve",
        delta.to_str().unwrap(),
        old.to_str().unwrap(),
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    serves_every_tag(&s.addr, &r.new);
}

fn push(bundle: &Path, dest: &str, extra: &[&str]) -> std::process::Output {
    run(ferry()
        .env("FERRY_TEST_NO_RETRY_DELAY", "1")
        .args([
            "-q",
            "unbundle",
            "push",
            "--dest-tls-verify=false",
            "--dest",
            dest,
        ])
        .arg(bundle)
        .args(extra))
}

#[test]
fn push_of_a_delta_is_refused_before_any_tag_and_completes_after_old() {
    let r = release();
    let (dir, target) = empty_registry();
    let before = tree_hash(dir.path(), ".");
    let out = push(&r.path("delta.tar.zst"), &target.addr, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("a delta of old.tar.zst") && err.contains("nothing was pushed"),
        "{err}"
    );
    assert_eq!(
        tree_hash(dir.path(), "."),
        before,
        "nothing reached the target"
    );
    let out = push(&r.path("old.tar.zst"), &target.addr, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serves_every_tag(&target.addr, &r.old);
    let out = push(&r.path("delta.tar.zst"), &target.addr, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serves_every_tag(&target.addr, &r.new);

    // Into another empty registry with --base: complete in one go.
    let (_d2, t2) = empty_registry();
    let out = push(
        &r.path("delta.tar.zst"),
        &t2.addr,
        &["--base", r.path("old.tar.zst").to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serves_every_tag(&t2.addr, &r.new);
}

/// The identity a delta records for its base: sha256 of the base's `ferry-bundle.json`, by plain tar and sha256sum.
fn index_identity(bundle: &Path) -> String {
    let out = run_ok(std::process::Command::new("sh").arg("-c").arg(format!(
        "tar --zstd -xOf '{}' ferry-bundle.json | sha256sum",
        bundle.display()
    )));
    format!(
        "sha256:{}",
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
    )
}

#[test]
fn a_base_other_than_the_one_the_delta_names_is_refused_by_digest_before_anything_is_written() {
    // new.tar.zst holds every blob the delta leaves out, so only its identity tells it from old.
    let r = release();
    let (old, new, delta) = (
        r.path("old.tar.zst"),
        r.path("new.tar.zst"),
        r.path("delta.tar.zst"),
    );
    let (old_id, new_id) = (index_identity(&old), index_identity(&new));
    assert_ne!(old_id, new_id);
    let named = |out: &std::process::Output| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "not refused: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        for part in [
            "delta.tar.zst",
            "old.tar.zst",
            "new.tar.zst",
            &old_id,
            &new_id,
        ] {
            assert!(err.contains(part), "{part} not named: {err}");
        }
    };
    let base_new = ["--base", new.to_str().unwrap()];

    // link: the root is not even created.
    let site = r.path("site");
    named(&link(&delta, &site, &base_new));
    assert!(!site.exists(), "link wrote into the root");

    // push: nothing reaches the target.
    let (dir, target) = empty_registry();
    let before = tree_hash(dir.path(), ".");
    named(&push(&delta, &target.addr, &base_new));
    assert_eq!(
        tree_hash(dir.path(), "."),
        before,
        "push wrote to the target"
    );

    // serve in place, and serve --dir: neither starts, nothing unpacked.
    let serve = |extra: &[&str]| {
        run(std::process::Command::new("timeout")
            .arg("60")
            .arg(env!("CARGO_BIN_EXE_ferry"))
            .args(["unbundle", "serve", "--listen", "127.0.0.1:0"])
            .arg(&new)
            .arg(&delta)
            .args(extra))
    };
    named(&serve(&[]));
    let kept = r.path("kept");
    named(&serve(&["--dir", kept.to_str().unwrap()]));
    assert!(!kept.exists(), "serve --dir unpacked");

    // The base it names is taken by its identity: here as its extracted ferry-bundle.json, over a root holding it.
    let out = link(&old, &site, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = r.path("old.json");
    let out = run_ok(
        std::process::Command::new("tar")
            .arg("--zstd")
            .arg("-xOf")
            .arg(&old)
            .arg("ferry-bundle.json"),
    );
    std::fs::write(&json, out.stdout).unwrap();
    let out = link(&delta, &site, &["--base", json.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cache_cmd(cache: &Path, args: &[&str]) -> std::process::Output {
    run(ferry().arg("cache").args(args).arg("--cache").arg(cache))
}

#[test]
fn cache_prune_is_refused_while_a_bundle_runs_and_gc_keeps_what_kept_runs_need() {
    let mut r = release();
    let cache = r.cache();
    let ls = cache_cmd(&cache, &["ls", "--json"]);
    assert!(ls.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(doc["runs"].as_array().unwrap().len(), 3, "{doc}");
    assert!(doc["blobs"].as_u64().unwrap() > 0);

    // A bundle run holds the lock (shared): prune and gc are refused at once, with its pid.
    {
        let _held = ferry::bundle::cache::lock_shared(&cache).unwrap();
        for args in [&["prune", "--keep-last", "1"][..], &["gc"][..]] {
            let out = cache_cmd(&cache, args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(
                err.contains("is in use by a running bundle")
                    && err.contains(&format!("(pid {})", std::process::id())),
                "{err}"
            );
        }
        // Shared with another bundle run is fine.
        drop(ferry::bundle::cache::lock_shared(&cache).unwrap());
    }
    let runs_after_refusal = cache_cmd(&cache, &["ls", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&runs_after_refusal.stdout).unwrap();
    assert_eq!(doc["runs"].as_array().unwrap().len(), 3, "nothing pruned");

    // Keep only the newest run (the delta of the new release), then gc.
    let out = cache_cmd(&cache, &["prune", "--keep-last", "1"]);
    assert!(out.status.success());
    let out = cache_cmd(&cache, &["gc", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_blobs = archive_blobs(&r.path("new.tar.zst"));
    let old_only: BTreeSet<String> = archive_blobs(&r.path("old.tar.zst"))
        .difference(&new_blobs)
        .cloned()
        .collect();
    assert!(!old_only.is_empty());
    assert_eq!(
        gc["blobs_removed"].as_u64().unwrap() as usize,
        old_only.len(),
        "exactly the old release's own blobs go: {gc}"
    );
    let (listed, _) = ferry::store::paths::list_blobs(&cache).unwrap();
    let left: BTreeSet<String> = listed.iter().map(|(d, _)| d.hex().to_string()).collect();
    assert_eq!(
        left, new_blobs,
        "the cache holds the new release, nothing else"
    );
    run_ok(ferry().arg("verify").arg(&cache));

    // The kept run rebuilds offline: the source registry is gone, the list pins the digests.
    drop(r.reg_new.take());
    let pinned: String = r
        .new
        .images
        .iter()
        .map(|i| format!("{}:{}@{}\n", i.repository, i.tag, i.digest))
        .collect();
    std::fs::write(r.path("pinned.txt"), pinned).unwrap();
    let out = run(bundle_cmd(
        &r.path("pinned.txt"),
        &r.path("rebuilt.tar.zst"),
        &cache,
        "127.0.0.1:9",
    )
    .arg("--all-platforms")
    .arg("--json"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["bytes_downloaded"], 0, "{summary}");
    assert_eq!(archive_blobs(&r.path("rebuilt.tar.zst")), new_blobs);
    let _ = &r.old;
}
