//! `ferry manifest-digest FILE`: the digest a registry gives a manifest file.

use super::out::outln;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::limits::MAX_MANIFEST_BYTES;
use crate::manifest::RawManifest;

/// Flags of `ferry manifest-digest`.
#[derive(Debug, clap::Args)]
pub struct ManifestDigestArgs {
    /// The manifest file.
    file: PathBuf,
}

pub fn run(a: ManifestDigestArgs) -> anyhow::Result<ExitCode> {
    let f =
        std::fs::File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
    let mut bytes = Vec::new();
    f.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let raw = RawManifest::new(bytes, None).with_context(|| a.file.display().to_string())?;
    outln!("{}", raw.digest());
    Ok(ExitCode::SUCCESS)
}
