//! Bad input at the command line: one clear error line, exit 1, nothing written.

use crate::harness::*;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

#[test]
fn manifest_digest_matches_registry_digest_for_any_file_and_caps_its_size() {
    let (dir, corpus) = tiny();
    let store = ferry::store::Store::open(dir.path());
    let img = &corpus.images[0];
    let p = store.path(ferry::store::paths::PathSpec::BlobData(&img.digest));
    let out = run_ok(ferry().arg("manifest-digest").arg(&p));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        img.digest.to_string()
    );

    // Files skopeo gives a digest too (verbs.rs compares each with skopeo's): the digest of the bytes.
    for name in ["schema1.json", "not-json.json", "unknown-media-type.json"] {
        let path = fixture(&format!("manifests/{name}"));
        let out = run_ok(ferry().arg("manifest-digest").arg(&path));
        let want = ferry::digest::Digest::sha256_of(&std::fs::read(&path).unwrap());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want.to_string(),
            "{name}"
        );
    }

    let big = tempfile::NamedTempFile::new().unwrap();
    let mut text = String::from("{\"schemaVersion\":2,\"manifests\":[],\"pad\":\"");
    text.push_str(&"x".repeat(5 * 1024 * 1024));
    text.push_str("\"}");
    std::fs::write(big.path(), text).unwrap();
    let out = run(ferry().arg("manifest-digest").arg(big.path()));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("4194304-byte manifest cap"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn serve_refuses_a_directory_that_is_not_a_root() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(ferry()
        .arg("serve")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not a registry root"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = run(ferry().arg("serve"));
    assert_eq!(out.status.code(), Some(2));
    let out = run(ferry().arg("no-such-command"));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn ls_lists_every_tag_with_digest_and_platforms() {
    let (dir, corpus) = tiny();
    let out = run_ok(ferry().arg("ls").arg("--json").arg(dir.path()));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), corpus.images.len());
    for img in &corpus.images {
        let row = rows
            .iter()
            .find(|r| r["image"] == format!("{}:{}", img.repository, img.tag))
            .unwrap_or_else(|| panic!("{} missing", img.repository));
        assert_eq!(row["digest"], img.digest.to_string());
        assert_eq!(
            row["platforms"].as_array().unwrap().len(),
            img.platforms.len()
        );
        assert!(row["size"].as_u64().unwrap() > 0);
    }
}

#[test]
fn demo_runs_the_main_job_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(
        ferry()
            .args(["demo", "--preset", "tiny", "--dir"])
            .arg(dir.path()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("(0 digests differ)") && stderr.contains(" 0 faults"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.ends_with("same digest as the source"))
            .count(),
        4,
        "{stdout}"
    );
    assert!(dir.path().join("bundle.tar.zst").is_file());
}
