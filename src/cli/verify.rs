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
    /// A bundle must be signed with this minisign public key (checked before anything else is read).
    #[arg(long, value_name = "PUB")]
    key: Option<PathBuf>,
}

/// `--key PUB` of `verify` and the unbundle verbs: the key, read before the bundle is opened.
pub(super) fn load_key(
    key: &Option<PathBuf>,
) -> anyhow::Result<Option<crate::bundlefile::sign::VerifyingKey>> {
    Ok(match key {
        Some(k) => Some(crate::bundlefile::sign::VerifyingKey::load(k)?),
        None => None,
    })
}

/// Runs `ferry verify`.
pub fn run(g: &GlobalArgs, a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let s3 = crate::store::s3::is_s3(&a.root);
    if !s3 {
        super::must_exist(&a.root)?;
    }
    if a.root.is_file() {
        return verify_bundle(g, &a);
    }
    if a.key.is_some() {
        return Err(super::UsageError(format!(
            "--key checks a bundle's signature; {} is a registry root",
            a.root.display()
        ))
        .into());
    }
    let report = if s3 {
        super::s3::verify(g, &a.root)?
    } else {
        Store::open(&a.root).verify()?
    };
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
fn verify_bundle(g: &GlobalArgs, a: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let key = load_key(&a.key)?;
    // With a key, the signature is checked as soon as ferry-bundle.json is read, before any other entry.
    use crate::bundlefile::read::{BundleFile, HashOnly, in_place, scan_checked};
    // Read in place when the bundle allows it (one read, every blob re-hashed), so that every link
    // can be checked to be one an image of ferry-bundle.json needs; a plain zstd stream is scanned.
    let (catalog, streamed);
    let scan = if in_place(&a.root)? {
        catalog = crate::transport::bundle::Bundles(vec![BundleFile::open_checked(
            &a.root,
            &mut HashOnly,
            key.as_ref(),
        )?]);
        catalog.check_links()?;
        &catalog.0[0].scan
    } else {
        streamed = scan_checked(&a.root, &mut HashOnly, key.as_ref())?;
        if !g.quiet {
            eprintln!(
                "ferry: {}: not seekable, so links are checked against the archive but not against each image's walk",
                a.root.display()
            );
        }
        &streamed
    };
    let signature = match (&key, &scan.signature) {
        (Some(_), _) => "verified",
        (None, Some(_)) => "present, not checked (no --key)",
        (None, None) => "none",
    };
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
            serde_json::json!({ "bundle": a.root, "blobs": scan.blobs.len(), "bytes": bytes, "repositories": scan.repos.len(), "links": links, "signature": signature, "faults": [] })
        );
    } else {
        outln!(
            "{}: {} blobs ({}) re-hashed, {} links in {} repositories resolved, signature {signature}, 0 faults",
            a.root.display(),
            scan.blobs.len(),
            human_bytes(bytes),
            links,
            scan.repos.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
