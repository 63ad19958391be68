//! The command line: one file per subcommand. Each turns its flags into
//! library calls and prints results; none touches files or the network itself.

mod bundle;
mod copy;
mod delete;
mod demo;
mod fixtures;
mod inspect;
mod list_tags;
mod login;
mod ls;
mod manifest_digest;
mod progress;
mod registry_flags;
mod serve;
mod sync;
mod unbundle;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// ferry carries container images across air gaps.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, propagate_version = true)]
pub struct Args {
    /// Flags every subcommand takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags shared by every subcommand.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Print nothing but errors (and results on stdout).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Turn on debug logs on stderr (RUST_LOG overrides).
    #[arg(long, global = true)]
    pub debug: bool,
}

/// Timeouts and the per-host cap, shared by every verb that talks to registries so they read the same everywhere.
#[derive(Debug, Clone, clap::Args)]
pub struct NetArgs {
    /// Seconds a registry may send nothing while a body is read before the read is given up
    /// (then resumed while retries last); suits slow links by default.
    #[arg(long, value_name = "SECS", alias = "timeout", default_value_t = crate::limits::DEFAULT_IDLE_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_idle: u64,
    /// Seconds to wait for a registry's answer (its headers) once a request has been sent.
    #[arg(long, value_name = "SECS", default_value_t = crate::limits::DEFAULT_HEADERS_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_headers: u64,
    /// Most requests in flight to one registry host at once [default: --jobs].
    #[arg(long, value_name = "N", value_parser = jobs_parser())]
    pub max_per_host: Option<usize>,
}

impl NetArgs {
    /// `opts` with these timeouts, the per-host cap (`jobs` unless given) and the flag that allows plain HTTP on this side.
    pub fn apply(
        &self,
        opts: crate::registry::ClientOptions,
        jobs: usize,
        plain_http_flag: &str,
    ) -> crate::registry::ClientOptions {
        crate::registry::ClientOptions {
            headers_timeout: std::time::Duration::from_secs(self.timeout_headers),
            idle_timeout: std::time::Duration::from_secs(self.timeout_idle),
            max_concurrent: self.max_per_host.unwrap_or(jobs),
            plain_http_flag: plain_http_flag.to_string(),
            ..opts
        }
    }
}

/// `--jobs` and `--max-per-host`: a whole number of at least 1 (0 would do nothing, so it is a usage error).
fn jobs_parser() -> fn(&str) -> Result<usize, String> {
    |s| match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pull an images list into one deduplicated, verified, seekable registry bundle.
    Bundle(bundle::BundleArgs),
    /// At the site: serve a bundle in place, or link it into a registry root.
    Unbundle(unbundle::UnbundleArgs),
    /// Copy an image between transports (docker://, dir:, oci:, registry-root:, ferry-bundle:, …).
    Copy(copy::CopyArgs),
    /// Print an image's manifest, config or skopeo's summary of it (any transport).
    Inspect(inspect::InspectArgs),
    /// Print every tag of a registry repository (every page), as skopeo does.
    ListTags(list_tags::ListTagsArgs),
    /// Delete an image from a registry (the manifest, by digest; every tag naming it goes too).
    Delete(delete::DeleteArgs),
    /// Check credentials against a registry and store them in the auth file.
    Login(login::LoginArgs),
    /// Remove stored credentials for a registry (or all of them).
    Logout(login::LogoutArgs),
    /// Copy every image of a repository, a directory tree or a YAML sync file (skopeo's sync).
    Sync(sync::SyncArgs),
    /// Serve a registry root over the distribution API.
    Serve(serve::ServeArgs),
    /// Re-hash every blob and resolve every link of a root; exit 1 on any fault.
    Verify(verify::VerifyArgs),
    /// List the images of a root: repositories, tags, digests, platforms, sizes.
    Ls(ls::LsArgs),
    /// Print the sha256 digest of a manifest file, as a registry would compute it.
    ManifestDigest(manifest_digest::ManifestDigestArgs),
    /// The main job end to end on built-in images, no network needed.
    Demo(demo::DemoArgs),
    /// Generate the deterministic fixture images into a root (tests and benchmarks).
    #[command(hide = true)]
    Fixtures(fixtures::FixturesArgs),
}

/// Sets up `tracing`: warnings by default, debug with `--debug`, `RUST_LOG` overriding both.
pub fn init_logging(global: &GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    let default = if global.debug {
        "ferry=debug,info"
    } else if global.quiet {
        "error"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Runs a parsed command line; the error is printed by `main` as one line with its causes.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let g = &args.global;
    match args.command {
        Command::Bundle(a) => bundle::run(g, a),
        Command::Unbundle(a) => unbundle::run(g, a),
        Command::Copy(a) => copy::run(g, a),
        Command::Inspect(a) => inspect::run(a),
        Command::ListTags(a) => list_tags::run(a),
        Command::Delete(a) => delete::run(g, a),
        Command::Login(a) => login::login(a),
        Command::Logout(a) => login::logout(a),
        Command::Sync(a) => sync::run(g, a),
        Command::Serve(a) => serve::run(g, a),
        Command::Verify(a) => verify::run(g, a),
        Command::Ls(a) => ls::run(g, a),
        Command::ManifestDigest(a) => manifest_digest::run(a),
        Command::Demo(a) => demo::run(g, a),
        Command::Fixtures(a) => fixtures::run(g, a),
    }
}

/// The multi-threaded runtime every networked command runs on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Human-readable byte counts for messages.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Resolves when the process gets SIGINT or SIGTERM, for a clean server exit.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
