//! `ferry fixtures` (hidden): writes the deterministic fixture corpus into a root.

use super::out::outln;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::GlobalArgs;
use crate::fixtures::{Preset, generate};
use crate::store::Store;

/// Flags of `ferry fixtures`.
#[derive(Debug, clap::Args)]
pub struct FixturesArgs {
    /// Root to write into (created if missing).
    root: PathBuf,
    /// Which corpus.
    #[arg(long, value_enum, default_value = "small")]
    preset: Preset,
    /// Also write an images list of the corpus here.
    #[arg(long)]
    list: Option<PathBuf>,
    /// Skip fsync (throwaway roots).
    #[arg(long)]
    no_sync: bool,
    /// Then write the next release: N images changed, 2 added, the last removed (tags move; --list lists it).
    #[arg(long, value_name = "N")]
    patch: Option<usize>,
}

/// Runs `ferry fixtures`.
pub fn run(g: &GlobalArgs, a: FixturesArgs) -> anyhow::Result<ExitCode> {
    let store = Store::create(&a.root)?.with_durable(!a.no_sync);
    let mut corpus = generate(a.preset, &store).context("generating fixtures")?;
    if let Some(n) = a.patch {
        corpus = crate::fixtures::patch(&store, &corpus, n, 2).context("patching fixtures")?;
    }
    if let Some(list) = &a.list {
        std::fs::write(list, corpus.images_list())
            .with_context(|| format!("writing {}", list.display()))?;
    }
    if !g.quiet {
        eprintln!(
            "ferry: {} tags, {} unique, {} referenced, in {}",
            corpus.images.len(),
            super::human_bytes(corpus.unique_bytes),
            super::human_bytes(corpus.referenced_bytes),
            a.root.display()
        );
    }
    outln!("{}", serde_json::to_string_pretty(&corpus)?);
    Ok(ExitCode::SUCCESS)
}
