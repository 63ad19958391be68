//! The command line: one file per subcommand. Each turns its flags into
//! library calls and prints results; none touches files or the network itself.

mod bundle;
mod cache;
mod copy;
mod delete;
mod demo;
mod diff;
mod fixtures;
mod inspect;
mod keygen;
mod list_tags;
mod login;
mod ls;
mod manifest_digest;
pub(crate) mod out;
mod progress;
mod registry_flags;
mod s3;
mod serve;
mod sync;
mod unbundle;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `ferry --version`: the package version and the commit it was built from, so a report names the exact build.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("FERRY_COMMIT"), ")");

/// ferry carries container images across air gaps.
#[derive(Debug, Parser)]
#[command(name = "ferry", version = VERSION, about, propagate_version = true)]
pub struct Args {
    /// Flags every subcommand takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

impl Args {
    /// The process's command line: one-shot verbs run in scripts, one process per image, so
    /// their start counts; clap's derive builds every subcommand's flags (~0.15 ms) to parse
    /// any one. [`Args::parse_narrow`] builds only the one named; whatever it does not accept
    /// (help, `--version`, any error) is parsed again against the whole tree, so every message
    /// and exit code stays clap's own.
    pub fn parse_args() -> Args {
        let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
        Args::parse_narrow(&argv).unwrap_or_else(|| Args::parse_from(argv))
    }

    /// `argv` parsed against the root's flags and the one subcommand it names, when that is a
    /// one-shot verb; `None` sends the caller to the full parse. The narrow tree holds the same
    /// definitions as the full one minus the other subcommands, so a line it accepts parses the same.
    fn parse_narrow(argv: &[std::ffi::OsString]) -> Option<Args> {
        use clap::Args as _;
        let name = argv
            .iter()
            .skip(1)
            .map(|a| a.to_str())
            .find(|a| !a.is_some_and(|a| a.starts_with('-')))??;
        type Augment = fn(clap::Command) -> clap::Command;
        let (name, augment): (&'static str, Augment) = match name {
            "inspect" => ("inspect", inspect::InspectArgs::augment_args),
            "list-tags" => ("list-tags", list_tags::ListTagsArgs::augment_args),
            "delete" => ("delete", delete::DeleteArgs::augment_args),
            "manifest-digest" => (
                "manifest-digest",
                manifest_digest::ManifestDigestArgs::augment_args,
            ),
            _ => return None,
        };
        let root = clap::Command::new("ferry")
            .version(VERSION)
            .propagate_version(true)
            .subcommand_required(true);
        let cmd = GlobalArgs::augment_args(root).subcommand(augment(clap::Command::new(name)));
        let m = cmd.try_get_matches_from(argv).ok()?;
        <Args as clap::FromArgMatches>::from_arg_matches(&m).ok()
    }
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
    /// Endpoint of the S3-compatible store for s3:// roots (overrides AWS_ENDPOINT_URL and the profile's endpoint_url).
    #[arg(long, global = true, value_name = "URL")]
    pub s3_endpoint: Option<String>,
}

/// Timeouts and the per-host cap, shared by every verb that talks to registries so they read the same everywhere.
#[derive(Debug, Clone, clap::Args)]
pub struct NetArgs {
    /// Longest silence from a registry while a body is read (then the read resumes while
    /// retries last): 30s, 2m, 1m30s or plain seconds; suits slow links by default.
    #[arg(long = "timeout", visible_alias = "timeout-idle", value_name = "DURATION", default_value = "30s", value_parser = duration_parser)]
    pub timeout_idle: std::time::Duration,
    /// Longest wait for a registry's answer (its headers) once a request has been sent.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration_parser)]
    pub timeout_headers: std::time::Duration,
    /// Most requests in flight to one registry host at once [default: --jobs].
    #[arg(long, value_name = "N", value_parser = jobs_parser())]
    pub max_per_host: Option<usize>,
}

impl NetArgs {
    /// The client options of one side of a verb from its skopeo flags: `side` is `src`, `dest`,
    /// or empty for a one-registry verb, and names `--{side}-creds` and `--{side}-tls-verify=false`.
    pub fn side(
        &self,
        side: &str,
        tls_verify: bool,
        creds: &Option<String>,
        authfile: Option<PathBuf>,
        jobs: usize,
    ) -> anyhow::Result<crate::registry::ClientOptions> {
        let flag = |name: &str| match side {
            "" => format!("--{name}"),
            s => format!("--{s}-{name}"),
        };
        Ok(self.apply(
            crate::registry::ClientOptions {
                tls_verify,
                credentials: registry_flags::creds(&flag("creds"), creds)?,
                authfile,
                ..Default::default()
            },
            jobs,
            &flag("tls-verify=false"),
        ))
    }

    /// `opts` with these timeouts, the per-host cap (`jobs` unless given) and the flag that allows plain HTTP on this side.
    pub fn apply(
        &self,
        opts: crate::registry::ClientOptions,
        jobs: usize,
        plain_http_flag: &str,
    ) -> crate::registry::ClientOptions {
        crate::registry::ClientOptions {
            headers_timeout: self.timeout_headers,
            idle_timeout: self.timeout_idle,
            max_concurrent: self.max_per_host.unwrap_or(jobs),
            plain_http_flag: plain_http_flag.to_string(),
            ..opts
        }
    }
}

/// A duration as Go and skopeo write one (`30s`, `2m`, `1m30s`, `500ms`, `1h`), or plain seconds; at least 1 ms.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{s:?} is not a duration (examples: 30s, 2m, 1m30s, 500ms, or seconds)");
    if let Ok(secs) = s.parse::<u64>() {
        return (secs > 0)
            .then(|| std::time::Duration::from_secs(secs))
            .ok_or_else(|| "must be more than 0".to_string());
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let n_end = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..n_end].parse().map_err(|_| bad())?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "ms" => std::time::Duration::from_millis(1),
            "s" => std::time::Duration::from_secs(1),
            "m" => std::time::Duration::from_secs(60),
            "h" => std::time::Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        total += unit * u32::try_from(n).map_err(|_| bad())?;
        rest = &rest[u_end..];
    }
    if total.is_zero() {
        return Err("must be more than 0".to_string());
    }
    Ok(total)
}

/// [`parse_duration`] capped at a day: longer is no timeout at all, and would overflow a deadline.
fn duration_parser(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d > std::time::Duration::from_secs(24 * 3600) {
        return Err(format!("{s:?} is longer than the 24h cap"));
    }
    Ok(d)
}

/// A size as `--split-size` takes it: plain bytes, or a number with k, M, G, T (powers of 1024; an
/// optional trailing `B`/`iB`, any case), at least 1 byte.
pub fn size_parser(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size (examples: 4G, 512M, 100k, or bytes)");
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix("ib"))
        .or_else(|| t.strip_suffix(['B', 'b']))
        .unwrap_or(t);
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                _ => return Err(bad()),
            };
            (&t[..i], 1u64 << shift)
        }
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let v = n.checked_mul(mul).ok_or_else(bad)?;
    if v == 0 {
        return Err("must be at least 1 byte".to_string());
    }
    Ok(v)
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
    /// What bundle or root B changes against A: images added, removed, retagged; blobs and bytes B adds.
    Diff(diff::DiffArgs),
    /// Make a minisign key pair (NAME.key, NAME.pub) for `bundle --sign` and `--key`.
    Keygen(keygen::KeygenArgs),
    /// The bundle cache: list the bundle runs it records, prune old records, gc unused blobs.
    Cache(cache::CacheArgs),
    /// Print the sha256 digest of a manifest file, as a registry would compute it.
    ManifestDigest(manifest_digest::ManifestDigestArgs),
    /// The main job end to end on built-in images, no network needed.
    Demo(demo::DemoArgs),
    /// Generate the deterministic fixture images into a root (tests and benchmarks).
    #[command(hide = true)]
    Fixtures(fixtures::FixturesArgs),
    /// Print shell completions (bash, zsh, fish) on stdout.
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout: `ferry man > ferry.1`.
    #[command(hide = true)]
    Man,
}

/// Flags of `ferry completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
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
        Command::Inspect(a) => inspect::run(g, a),
        Command::ListTags(a) => list_tags::run(a),
        Command::Delete(a) => delete::run(g, a),
        Command::Login(a) => login::login(a),
        Command::Logout(a) => login::logout(a),
        Command::Sync(a) => sync::run(g, a),
        Command::Serve(a) => serve::run(g, a),
        Command::Verify(a) => verify::run(g, a),
        Command::Ls(a) => ls::run(g, a),
        Command::Diff(a) => diff::run(g, a),
        Command::Keygen(a) => keygen::run(g, a),
        Command::Cache(a) => cache::run(g, a),
        Command::ManifestDigest(a) => manifest_digest::run(a),
        Command::Demo(a) => demo::run(g, a),
        Command::Fixtures(a) => fixtures::run(g, a),
        Command::Completions(a) => {
            let mut cmd = <Args as clap::CommandFactory>::command();
            let mut buf = Vec::new();
            clap_complete::generate(a.shell, &mut cmd, "ferry", &mut buf);
            out::bytes(&buf);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let cmd = <Args as clap::CommandFactory>::command();
            let mut buf = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut buf)?;
            out::bytes(&buf);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `--platform OS/ARCH[/VARIANT]` as a clap value parser, so a malformed one is a usage error (exit 2).
fn parse_platform(s: &str) -> Result<crate::manifest::Platform, String> {
    crate::manifest::Platform::parse(s)
}

/// `--listen HOST:PORT` as a clap value parser: a port number and a host with no spaces (exit 2 otherwise).
fn parse_listen(s: &str) -> Result<String, String> {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(s.to_string());
    }
    let bad = || format!("{s:?} is not HOST:PORT (for example 127.0.0.1:5000 or 0.0.0.0:5000)");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if !host_ok {
        return Err(bad());
    }
    Ok(s.to_string())
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

/// A missing path is named as missing, not as "not a registry root" or "not a bundle file".
fn must_exist(p: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let first = crate::bundlefile::parts::part_path(p, 0);
            if first.is_file() {
                anyhow::bail!(
                    "{}: no such file; a split bundle is named by its first part: {}",
                    p.display(),
                    first.display()
                )
            }
            anyhow::bail!("{}: no such file or directory", p.display())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("{}", p.display()))),
    }
}

/// Bad usage found after parsing (a flag that needs a terminal, say): `main` exits 2 on it, as on clap's own.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `--creds USER[:PASS]`: without a password, asks for it on a terminal (no echo), as skopeo does, and refuses otherwise.
fn credentials(flag: &str, value: &str) -> anyhow::Result<crate::auth::Credentials> {
    use std::io::IsTerminal;
    if value.contains(':') {
        return Ok(crate::auth::Credentials::from_flag(value));
    }
    if value.is_empty() {
        return Err(UsageError(format!("{flag}: give USER[:PASS]")).into());
    }
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Err(UsageError(format!(
            "{flag} {value}: no password given and no terminal to ask for it on; give USER:PASS or use --authfile"
        ))
        .into());
    }
    let pass = read_password(&format!("Password for {value}: "))?;
    Ok(crate::auth::Credentials::from_flag(&format!(
        "{value}:{pass}"
    )))
}

/// Reads one line from the terminal with echo off (restored afterwards, also on error).
fn read_password(prompt: &str) -> anyhow::Result<String> {
    use std::io::{BufRead, Write};
    use std::os::fd::AsRawFd;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    let fd = tty.as_raw_fd();
    // SAFETY: fd is an open terminal; termios is a plain C struct filled by tcgetattr.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut old) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let mut quiet = old;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: as above.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    let mut w = &tty;
    let _ = write!(w, "{prompt}").and_then(|()| w.flush());
    let mut line = String::new();
    let r = std::io::BufReader::new(&tty).read_line(&mut line);
    // SAFETY: as above; restores what tcgetattr read.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
    r?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

#[cfg(test)]
mod tests {
    use super::duration_parser;
    use clap::Parser;
    use std::time::Duration;

    /// A bool flag given before a positional takes no value from it (skopeo's `--flag=false`
    /// form is the only way to pass one), on every subcommand that has such flags.
    #[test]
    fn bool_flags_never_swallow_the_next_word() {
        for line in [
            "ferry serve --allow-push --allow-delete /root",
            "ferry sync --preserve-digests --src dir --dest dir /a /b",
            "ferry copy --preserve-digests dir:/a dir:/b",
            "ferry copy --src-tls-verify --dest-tls-verify dir:/a dir:/b",
            "ferry bundle --src-tls-verify -f list.txt -o b.tar.zst",
            "ferry login --tls-verify localhost:5000",
            "ferry unbundle push --dest-tls-verify b.tar.zst --dest localhost:5000",
        ] {
            let words: Vec<&str> = line.split(' ').collect();
            let parsed = super::Args::try_parse_from(&words);
            assert!(parsed.is_ok(), "{line}: {}", parsed.unwrap_err());
        }
        let explicit =
            super::Args::try_parse_from(["ferry", "serve", "--allow-push=false", "/root"]);
        assert!(explicit.is_ok(), "{}", explicit.unwrap_err());
    }

    /// The narrow parse of a one-shot verb gives exactly what the full parse gives, and leaves
    /// help, versions and errors to the full parse (clap's own messages and exit codes).
    #[test]
    fn one_shot_verbs_parse_narrow_as_the_full_tree_does() {
        let words = |l: &str| -> Vec<std::ffi::OsString> { l.split(' ').map(Into::into).collect() };
        for line in [
            "ferry inspect --tls-verify=false docker://127.0.0.1:5000/a/b:1",
            "ferry --debug inspect --raw --config -n docker://h/x@sha256:0000",
            "ferry inspect -q --format {{.Digest}} --creds u:p --override-arch arm64 oci:/tmp/o:t",
            "ferry --s3-endpoint=http://s3 inspect registry-root:s3://b/r:a/b:1",
            "ferry list-tags --tls-verify=false docker://h/a",
            "ferry delete --authfile /a.json docker://h/a:1",
            "ferry manifest-digest /tmp/m.json",
        ] {
            let argv = words(line);
            let narrow = super::Args::parse_narrow(&argv);
            let full = super::Args::try_parse_from(&argv);
            assert!(narrow.is_some(), "{line}: narrow parse refused it");
            assert_eq!(
                format!("{narrow:?}"),
                format!("{:?}", full.ok()),
                "{line}: narrow and full parses differ"
            );
        }
        for line in [
            "ferry --version",
            "ferry inspect --help",
            "ferry inspect",
            "ferry inspect --no-such-flag docker://h/a",
            "ferry inspect a b",
            "ferry help inspect",
            "ferry copy dir:/a dir:/b",
            // A global flag's value given as the next word comes first: the full parse reads it.
            "ferry --s3-endpoint http://s3 inspect registry-root:s3://b/r:a/b:1",
            "ferry",
        ] {
            assert!(super::Args::parse_narrow(&words(line)).is_none(), "{line}");
        }
    }

    #[test]
    fn sizes_read_with_binary_units() {
        use super::size_parser;
        assert_eq!(size_parser("100"), Ok(100));
        assert_eq!(size_parser("100k"), Ok(100 * 1024));
        assert_eq!(size_parser("512M"), Ok(512 << 20));
        assert_eq!(size_parser("4G"), Ok(4 << 30));
        assert_eq!(size_parser("4GiB"), Ok(4 << 30));
        assert_eq!(size_parser("2KB"), Ok(2048));
        for bad in ["", "0", "k", "4X", "-1", "1.5G", "99999999999T"] {
            assert!(size_parser(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_read_as_go_writes_them() {
        assert_eq!(duration_parser("30"), Ok(Duration::from_secs(30)));
        assert_eq!(duration_parser("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration_parser("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration_parser("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration_parser("2h"), Ok(Duration::from_secs(7200)));
        for bad in [
            "",
            "0",
            "0s",
            "s",
            "30x",
            "-1",
            "1.5s",
            "25h",
            "18446744073709551615",
        ] {
            assert!(duration_parser(bad).is_err(), "{bad:?}");
        }
    }
}
