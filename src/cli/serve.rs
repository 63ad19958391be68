//! `ferry serve ROOT`: the registry API over a root directory; and
//! [`ServeFlags`], the server flags `ferry unbundle serve` shares.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};

use super::out::outln;
use super::{GlobalArgs, UsageError};
use crate::serve::auth::{Auth, Htpasswd};
use crate::store::Store;

/// Flags of `ferry serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The registry root (the directory holding docker/registry/v2).
    root: PathBuf,
    #[command(flatten)]
    server: ServeFlags,
}

/// The server flags, the same on `ferry serve` and `ferry unbundle serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeFlags {
    /// Address to listen on; port 0 picks a free one (the address is printed).
    #[arg(long, default_value = "127.0.0.1:5000", value_parser = super::parse_listen)]
    pub listen: String,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1) with this PEM certificate; the file may hold the chain after it. Needs --tls-key.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key (RSA, EC or PKCS#8) of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Require basic auth from the users of this htpasswd file (bcrypt entries, as `htpasswd -B` writes them).
    #[arg(long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,
    /// With --htpasswd: pulling needs no credentials (wrong ones are still refused); anything else does.
    #[arg(long)]
    pub anonymous_read: bool,
    /// Accept pushes (blob uploads, manifest PUTs) into the root (read-only unless given).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    pub allow_push: bool,
    /// Accept deletes of manifests, tags and blobs (read-only unless given).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    pub allow_delete: bool,
}

impl ServeFlags {
    /// The server options: flags checked together, the TLS files and the htpasswd file read and checked now.
    pub fn options(&self) -> anyhow::Result<crate::serve::Options> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::serve::tls::server_config(cert, key)?),
            (None, None) => None,
            (Some(_), None) => {
                return Err(UsageError(
                    "--tls-cert needs --tls-key (the certificate's private key)".into(),
                )
                .into());
            }
            (None, Some(_)) => {
                return Err(UsageError(
                    "--tls-key needs --tls-cert (the certificate of the key)".into(),
                )
                .into());
            }
        };
        let auth = match &self.htpasswd {
            Some(path) => Some(Arc::new(Auth::new(
                Htpasswd::load(path)?,
                self.anonymous_read,
            ))),
            None if self.anonymous_read => {
                return Err(UsageError(
                    "--anonymous-read needs --htpasswd (without it every request is anonymous)"
                        .into(),
                )
                .into());
            }
            None => None,
        };
        Ok(crate::serve::Options {
            tls,
            auth,
            allow_push: self.allow_push,
            allow_delete: self.allow_delete,
        })
    }

    /// The URL scheme clients use.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Runs `ferry serve`.
pub fn run(g: &GlobalArgs, a: ServeArgs) -> anyhow::Result<ExitCode> {
    let opts = a.server.options()?;
    serve_root(g, &a.root, &a.server, opts)
}

/// Serves a registry root with `opts` (from `flags`, checked) until SIGINT or SIGTERM.
pub fn serve_root(
    g: &GlobalArgs,
    root: &Path,
    flags: &ServeFlags,
    opts: crate::serve::Options,
) -> anyhow::Result<ExitCode> {
    if crate::store::s3::is_s3(root) {
        return super::s3::serve(g, root, flags, opts);
    }
    super::must_exist(root)?;
    let store = Store::open(root);
    if !store.exists() {
        bail!(
            "{}: not a registry root (no docker/registry/v2 directory)",
            root.display()
        );
    }
    let what = root.display().to_string();
    listen_and_serve(g, flags, opts, &what, store)
}

/// Binds `--listen`, prints the address, and serves `catalog` (described by `what`) until SIGINT or SIGTERM.
pub fn listen_and_serve<B: crate::transport::Catalog>(
    g: &GlobalArgs,
    flags: &ServeFlags,
    opts: crate::serve::Options,
    what: &str,
    catalog: B,
) -> anyhow::Result<ExitCode> {
    super::runtime()?.block_on(async {
        let (listener, addr) = crate::serve::bind(&flags.listen)
            .await
            .with_context(|| format!("listening on {}", flags.listen))?;
        if !g.quiet {
            let scheme = flags.scheme();
            let auth = match (&opts.auth, flags.anonymous_read) {
                (None, _) => "",
                (Some(_), false) => ", basic auth",
                (Some(_), true) => ", basic auth for writes (reads anonymous)",
            };
            let mode = match (flags.allow_push, flags.allow_delete) {
                (false, false) => "read-only",
                (true, false) => "push allowed",
                (false, true) => "delete allowed",
                (true, true) => "push and delete allowed",
            };
            eprintln!("ferry: serving {what} ({mode}) at {scheme}://{addr}{auth}");
        }
        // The address is a result (port 0 picks one): on stdout, also with -q.
        outln!("{addr}");
        crate::serve::run(catalog, listener, opts, super::shutdown_signal())
            .await
            .context("serving")?;
        Ok(ExitCode::SUCCESS)
    })
}
