//! The copy engine's gaps, each checked against real components (skopeo as the oracle
//! where it has an answer): uncompressed layers from any source, foreign layers out of a
//! root or a bundle, an `oci:` layout that holds a foreign layer's bytes, and a link
//! roll-back that leaves alone what a concurrent writer relies on.

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
        assert!(start.elapsed().as_secs() < 120, "the run never linked an image");
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
