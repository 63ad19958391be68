//! `ferry manifest-digest FILE`: the digest a registry gives a manifest file.

use super::out::outln;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::limits::MAX_MANIFEST_BYTES;

/// Flags of `ferry manifest-digest`.
#[derive(Debug, clap::Args)]
pub struct ManifestDigestArgs {
    /// The manifest file.
    file: PathBuf,
}

/// Runs `ferry manifest-digest`.
pub fn run(a: ManifestDigestArgs) -> anyhow::Result<ExitCode> {
    let f =
        std::fs::File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
    let mut bytes = Vec::new();
    f.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", a.file.display()))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        anyhow::bail!(
            "{}: larger than the {MAX_MANIFEST_BYTES}-byte manifest cap",
            a.file.display()
        );
    }
    // As skopeo: any file gets a digest; a signed schema 1 manifest's is of its unsigned payload.
    let digest = crate::inspect::manifest_digest(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    outln!("{digest}");
    Ok(ExitCode::SUCCESS)
}
