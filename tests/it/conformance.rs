//! The OCI distribution-spec conformance suite (`scripts/conformance.py`, a faithful port of the
//! Go suite of the v1.1 line) against the real `docker-registry` and against ferry's servers.
//! Each test asserts on the script's parsed results (which specs failed, and the counts), not
//! only on its exit code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

/// The specs the Debian `docker-registry` 2.8.2 fails (run of 2026-11-30, all four workflows).
/// Each is a Go assertion distribution 2.8 does not meet (the reasons are in the "Calibration"
/// paragraph of scripts/conformance.py). If the port grew lax, this set would shrink.
const DOCKER_REGISTRY_FAILURES: &[&str] = &[
    "Pull / Error codes / 400 response body should contain OCI-conforming JSON message",
    "Push / Blob Upload Chunked / Out-of-order blob upload should return 416",
    "Push / Blob Upload Chunked / Retry previous blob chunk should return 416",
    "Push / Blob Upload Chunked / Get on stale blob upload should return 204 with a range and location",
    "Content Discovery / Setup / References setup",
    "Content Discovery / Test content discovery endpoints (listing tags) / GET number of tags should be limitable by `n` query parameter",
    "Content Discovery / Test content discovery endpoints (listing tags) / GET start of tag is set by `last` query parameter",
    "Content Discovery / Test content discovery endpoints (listing references) / GET request to nonexistent blob should result in empty 200 response",
    "Content Discovery / Test content discovery endpoints (listing references) / GET request to existing blob should yield 200",
    "Content Discovery / Test content discovery endpoints (listing references) / GET request to existing blob with filter should yield 200",
    "Content Discovery / Test content discovery endpoints (listing references) / GET request to missing manifest should yield 200",
    "Content Discovery / Teardown / Delete created manifest & associated tags",
    "Content Management / Manifest delete / DELETE request to manifest tag should return 202, unless tag deletion is disallowed (400/405)",
];

/// The namespace every run uses (two components, as most real repositories have).
const NAMESPACE: &str = "conformance/test";

/// A fixed content seed, so that a run against pre-seeded content regenerates what --seed pushed.
const CONTENT_SEED: &str = "20261130";

/// The four workflow switches, all on.
const ALL_WORKFLOWS: &[(&str, &str)] = &[
    ("OCI_TEST_PULL", "1"),
    ("OCI_TEST_PUSH", "1"),
    ("OCI_TEST_CONTENT_DISCOVERY", "1"),
    ("OCI_TEST_CONTENT_MANAGEMENT", "1"),
];

/// What one run of the suite printed, parsed.
#[derive(Debug)]
struct Outcome {
    passed: usize,
    failed: Vec<String>,
    skipped: usize,
    output: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/conformance.py")
}

/// `python3 scripts/conformance.py [args]` against `addr`, with only the OCI_* variables given.
fn conformance_cmd(addr: &str, env: &[(&str, &str)], args: &[&str]) -> Command {
    require("python3");
    let mut cmd = Command::new("python3");
    cmd.arg(script()).args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OCI_")) {
        cmd.env_remove(k);
    }
    cmd.env("OCI_ROOT_URL", format!("http://{addr}"))
        .env("OCI_NAMESPACE", NAMESPACE)
        .env("OCI_REPORT_DIR", "none")
        .envs(env.iter().copied());
    cmd
}

/// Runs the suite and parses its spec lines and summary (checking they agree with each other
/// and with the exit code).
fn conformance(addr: &str, env: &[(&str, &str)]) -> Outcome {
    let out = run(&mut conformance_cmd(addr, env, &[]));
    let output = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (mut passed, mut failed, mut skipped) = (0, Vec::new(), 0);
    for line in output.lines() {
        let mut fields = line.split('\t');
        let (state, name) = (fields.next().unwrap_or(""), fields.next());
        match (state, name) {
            ("PASS", Some(_)) => passed += 1,
            ("FAIL", Some(n)) => failed.push(n.to_string()),
            ("SKIP", Some(_)) => skipped += 1,
            _ => {}
        }
    }
    let summary = format!(
        "{passed} passed, {} failed, {skipped} skipped",
        failed.len()
    );
    assert_eq!(
        output.lines().last(),
        Some(summary.as_str()),
        "the summary does not match the spec lines:\n{output}\n{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(if failed.is_empty() { 0 } else { 1 }),
        "exit status does not match the results:\n{output}\n{stderr}"
    );
    Outcome {
        passed,
        failed,
        skipped,
        output,
    }
}

/// `--seed`: pushes the suite's Pull and Content Discovery content to `addr` and writes an
/// images list of it; returns the pre-seeded settings the script printed.
fn seed(addr: &str, images_list: &Path) -> BTreeMap<String, String> {
    let out = run_ok(&mut conformance_cmd(
        addr,
        &[("OCI_CONTENT_SEED", CONTENT_SEED)],
        &["--seed", "--images-list", images_list.to_str().unwrap()],
    ));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn docker_registry_calibration() {
    let (_root, reg) = empty_registry();
    let got = conformance(&reg.addr, ALL_WORKFLOWS);
    let mut want: Vec<String> = DOCKER_REGISTRY_FAILURES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut failed = got.failed.clone();
    want.sort();
    failed.sort();
    assert_eq!(failed, want, "{}", got.output);
    // 79 specs: the failures above, the three automatic-crossmount specs and "Cross-mounting of
    // nonexistent blob" (each needs an answer or a setting the registry did not give) and the
    // two pre-seeded-content setups skip, every other spec passes.
    assert_eq!(
        (got.passed, got.failed.len(), got.skipped),
        (61, 13, 5),
        "{}",
        got.output
    );
}

#[test]
fn unbundle_serve_pull_and_discovery() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.txt");
    let bundle = dir.path().join("conformance.tar.zst");
    let (_root, reg) = empty_registry();
    let vars = seed(&reg.addr, &list);
    run_ok(bundle_cmd(&list, &bundle, &dir.path().join("cache"), &reg.addr).arg("--all-platforms"));
    drop(reg);

    let server = FerryServe::start_with(&["unbundle", "serve", bundle.to_str().unwrap()]);
    let var = |k: &str| {
        vars.get(k)
            .unwrap_or_else(|| panic!("--seed printed no {k}: {vars:?}"))
            .as_str()
    };
    // Pull reads the tag and the two digests; Content Discovery the tag list and the content
    // seed. Separate runs: with OCI_MANIFEST_DIGEST set, upstream gives manifests[3] and [4]
    // the same digest, and the referrers specs of the two cannot both pass.
    let pull = conformance(
        &server.addr,
        &[
            ("OCI_TEST_PULL", "1"),
            ("OCI_TAG_NAME", var("OCI_TAG_NAME")),
            ("OCI_MANIFEST_DIGEST", var("OCI_MANIFEST_DIGEST")),
            ("OCI_BLOB_DIGEST", var("OCI_BLOB_DIGEST")),
        ],
    );
    assert!(pull.failed.is_empty(), "{}", pull.output);
    // Pull: the 14 reading specs pass (the tag from the environment among them); its 5 setup
    // pushes, its 5 teardown deletes and the 55 specs of the other workflows skip.
    assert_eq!((pull.passed, pull.skipped), (14, 65), "{}", pull.output);

    let discovery = conformance(
        &server.addr,
        &[
            ("OCI_TEST_CONTENT_DISCOVERY", "1"),
            ("OCI_TAG_LIST", var("OCI_TAG_LIST")),
            ("OCI_CONTENT_SEED", var("OCI_CONTENT_SEED")),
        ],
    );
    assert!(discovery.failed.is_empty(), "{}", discovery.output);
    // The tag list from the environment, the three tag-listing specs and the four referrers
    // specs (the bundle carries the suite's referrers) pass; the 4 setup pushes and 4 teardown
    // deletes and the 63 specs of the other workflows skip.
    assert_eq!(
        (discovery.passed, discovery.skipped),
        (8, 71),
        "{}",
        discovery.output
    );
}

#[test]
fn serve_all_workflows() {
    let root = tempfile::tempdir().unwrap();
    ferry::store::Store::create(root.path()).unwrap();
    let server = FerryServe::start_with(&[
        "serve",
        root.path().to_str().unwrap(),
        "--allow-push",
        "--allow-delete",
    ]);
    let got = conformance(&server.addr, ALL_WORKFLOWS);
    assert!(got.failed.is_empty(), "{}", got.output);
    assert_eq!(got.passed + got.skipped, 79, "{}", got.output);
}
