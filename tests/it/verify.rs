//! `ferry verify` finds every kind of damage, one line each, and passes a clean root.

use std::fs;

use ferry::digest::Digest;
use ferry::store::Store;
use ferry::store::paths::PathSpec;

use crate::harness::*;

#[test]
fn clean_root_passes() {
    let (dir, _) = tiny();
    let out = run_ok(ferry().arg("verify").arg(dir.path()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(" 0 faults"), "{stdout}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn finds_flipped_byte_missing_blob_dangling_and_garbage_links() {
    let (dir, corpus) = tiny();
    let store = Store::open(dir.path());
    let img = &corpus.images[0];
    let raw = store.read_manifest(&img.digest).unwrap();
    let manifest = raw.parse().unwrap();
    let blobs = manifest.blobs();
    let (flipped, missing) = (&blobs[1].digest, &blobs[2].digest);

    // 1. A flipped byte in a layer.
    let p = store.path(PathSpec::BlobData(flipped));
    let mut bytes = fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&p, bytes).unwrap();
    // 2. A missing blob (the whole blob directory gone, as after a bad rsync).
    fs::remove_dir_all(store.path(PathSpec::BlobData(missing)).parent().unwrap()).unwrap();
    // 3. A dangling link: a layer link to content the store does not have.
    let ghost = Digest::sha256_of(b"never stored");
    let ghost_link = store.path(PathSpec::LayerLink(&img.repository, &ghost));
    fs::create_dir_all(ghost_link.parent().unwrap()).unwrap();
    fs::write(&ghost_link, ghost.to_string()).unwrap();
    // 4. A link whose text is not a digest.
    let tag_link = store.path(PathSpec::TagCurrentLink(
        &corpus.images[1].repository,
        &corpus.images[1].tag,
    ));
    fs::write(&tag_link, "sha256:not-a-digest\n").unwrap();

    let out = run(ferry().arg("verify").arg(dir.path()));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let has = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(
        has(&format!("blob {flipped}: content hashes to")),
        1,
        "{stderr}"
    );
    assert!(
        has(&format!(
            "link to {missing}, which is not in the blob store"
        )) >= 1,
        "{stderr}"
    );
    assert_eq!(
        has(&format!("link to {ghost}, which is not in the blob store")),
        1,
        "{stderr}"
    );
    assert_eq!(
        has("link holds \"sha256:not-a-digest\\n\", not a digest"),
        1,
        "{stderr}"
    );
    assert!(lines.iter().all(|l| l.starts_with("fault: ")), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(" {} faults", lines.len())),
        "{stdout}"
    );
}

#[test]
fn not_a_root_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(ferry().arg("verify").arg(dir.path()));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no docker/registry/v2 directory"),
        "{stderr}"
    );
}
