//! `ferry serve ROOT`: the registry API over a root directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::GlobalArgs;
use super::out::outln;
use crate::store::Store;

/// Flags of `ferry serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The registry root (the directory holding docker/registry/v2).
    root: PathBuf,
    /// Address to listen on; port 0 picks a free one (the address is printed).
    #[arg(long, default_value = "127.0.0.1:5000", value_parser = super::parse_listen)]
    listen: String,
}

/// Runs `ferry serve`.
pub fn run(g: &GlobalArgs, a: ServeArgs) -> anyhow::Result<ExitCode> {
    serve_root(g, &a.root, &a.listen)
}

/// Serves a registry root until SIGINT or SIGTERM.
pub fn serve_root(g: &GlobalArgs, root: &Path, listen: &str) -> anyhow::Result<ExitCode> {
    super::must_exist(root)?;
    let store = Store::open(root);
    if !store.exists() {
        bail!(
            "{}: not a registry root (no docker/registry/v2 directory)",
            root.display()
        );
    }
    super::runtime()?.block_on(async {
        let (listener, addr) = crate::serve::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        if !g.quiet {
            eprintln!("ferry: serving {} at http://{addr}", root.display());
        }
        // The address is a result (port 0 picks one): on stdout, also with -q.
        outln!("{addr}");
        crate::serve::run(store, listener, super::shutdown_signal())
            .await
            .context("serving")?;
        Ok(ExitCode::SUCCESS)
    })
}
