//! `ferry verify ROOT`: an fsck of a registry root.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{GlobalArgs, human_bytes};
use crate::store::Store;

/// Flags of `ferry verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The registry root to check.
    root: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(_g: &GlobalArgs, a: VerifyArgs) -> anyhow::Result<ExitCode> {
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
        println!(
            "{}",
            serde_json::json!({
                "root": a.root, "blobs": report.blobs, "bytes": report.bytes,
                "repositories": report.repositories, "links": report.links, "faults": faults,
            })
        );
    } else {
        println!(
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
