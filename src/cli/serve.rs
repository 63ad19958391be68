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
    #[command(flatten)]
    flags: ServeFlags,
}

/// The server flags `ferry serve` and `ferry unbundle serve` share.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeFlags {
    /// Accept pushes (blob uploads, manifest PUTs) into the root (read-only unless given).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    pub allow_push: bool,
    /// Accept deletes of manifests, tags and blobs (read-only unless given).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    pub allow_delete: bool,
}

impl ServeFlags {
    /// The server options these flags ask for.
    pub fn options(&self) -> crate::serve::Options {
        crate::serve::Options {
            allow_push: self.allow_push,
            allow_delete: self.allow_delete,
        }
    }
}

/// Runs `ferry serve`.
pub fn run(g: &GlobalArgs, a: ServeArgs) -> anyhow::Result<ExitCode> {
    serve_root(g, &a.root, &a.listen, &a.flags)
}

/// Serves a registry root until SIGINT or SIGTERM.
pub fn serve_root(
    g: &GlobalArgs,
    root: &Path,
    listen: &str,
    flags: &ServeFlags,
) -> anyhow::Result<ExitCode> {
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
            let mode = match (flags.allow_push, flags.allow_delete) {
                (false, false) => "read-only",
                (true, false) => "push allowed",
                (false, true) => "delete allowed",
                (true, true) => "push and delete allowed",
            };
            eprintln!(
                "ferry: serving {} ({mode}) at http://{addr}",
                root.display()
            );
        }
        // The address is a result (port 0 picks one): on stdout, also with -q.
        outln!("{addr}");
        crate::serve::run(store, flags.options(), listener, super::shutdown_signal())
            .await
            .context("serving")?;
        Ok(ExitCode::SUCCESS)
    })
}
