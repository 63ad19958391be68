//! `ferry serve ROOT`: the registry API over a root directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::GlobalArgs;
use crate::store::Store;

/// Flags of `ferry serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The registry root (the directory holding docker/registry/v2).
    root: PathBuf,
    /// Address to listen on; port 0 picks a free one (the address is printed).
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: String,
}

pub fn run(g: &GlobalArgs, a: ServeArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&a.root);
    if !store.exists() {
        bail!(
            "{}: not a registry root (no docker/registry/v2 directory)",
            a.root.display()
        );
    }
    super::runtime()?.block_on(async {
        let (listener, addr) = crate::serve::bind(&a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        if !g.quiet {
            eprintln!("ferry: serving {} at http://{addr}", a.root.display());
        }
        crate::serve::run(store, listener, super::shutdown_signal())
            .await
            .context("serving")?;
        Ok(ExitCode::SUCCESS)
    })
}
