//! `ferry verify ROOT`: an fsck of a registry root.

use super::out::outln;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{GlobalArgs, human_bytes};
use crate::store::Store;

/// Flags of `ferry verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The registry root or bundle file to check.
    root: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs `ferry verify`.
pub fn run(_g: &GlobalArgs, a: VerifyArgs) -> anyhow::Result<ExitCode> {
    super::must_exist(&a.root)?;
    if a.root.is_file() {
        return verify_bundle(&a);
    }
    let report = Store::open(&a.root).verify()?;
    for f in &report.faults {
        eprintln!("fault: {} ({})", f.what, f.path.display());
    }
    if a.json {
        let faults: Vec<_> = report
            .faults
            .iter()
            .map(|f| serde_json::json!({ "path": f.path, "fault": f.what }))
            .collect();
        outln!(
            "{}",
            serde_json::json!({
                "root": a.root, "blobs": report.blobs, "bytes": report.bytes,
                "repositories": report.repositories, "links": report.links, "faults": faults,
            })
        );
    } else {
        outln!(
            "{}: {} blobs ({}) re-hashed, {} links in {} repositories resolved, {} fault{}",
            a.root.display(),
            report.blobs,
            human_bytes(report.bytes),
            report.links,
            report.repositories,
            report.faults.len(),
            if report.faults.len() == 1 { "" } else { "s" },
        );
    }
    Ok(if report.faults.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A bundle is checked as a stream: every entry, blob and link, against its index.
fn verify_bundle(a: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let scan = crate::bundlefile::read::scan(&a.root, &mut crate::bundlefile::read::HashOnly)?;
    // A delta's left-out blobs are its base's: not faults here (every blob it carries was re-hashed).
    if let Some(s) = &scan.index.since {
        eprintln!(
            "{}: a delta of {} ({}): {} blob(s) left out, to be checked with its base",
            a.root.display(),
            s.name,
            s.index_digest,
            s.left_out.len()
        );
    }
    let bytes: u64 = scan.blobs.values().map(|(_, s)| s).sum();
    let links: usize = scan
        .repos
        .values()
        .map(|r| r.layers.len() + r.revisions.len() + r.tags.len() + r.tag_index.len())
        .sum();
    if a.json {
        outln!(
            "{}",
            serde_json::json!({ "bundle": a.root, "blobs": scan.blobs.len(), "bytes": bytes, "repositories": scan.repos.len(), "links": links, "faults": [] })
        );
    } else {
        outln!(
            "{}: {} blobs ({}) re-hashed, {} links in {} repositories resolved, 0 faults",
            a.root.display(),
            scan.blobs.len(),
            human_bytes(bytes),
            links,
            scan.repos.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
