//! `ferry bundle`: images list(s) → one verified, deduplicated, seekable bundle file.

use super::out::outln;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};

use super::{GlobalArgs, human_bytes};
use crate::bundle::{BundleError, BundleOptions, Compression, bundle};
use crate::limits::DEFAULT_JOBS;
use crate::manifest::Platform;
use crate::plan::PlanOptions;
use crate::reference::{DEFAULT_REGISTRY, parse_images_list};

/// Flags of `ferry bundle`.
#[derive(Debug, clap::Args)]
pub struct BundleArgs {
    /// Images list(s): one reference per line, `#` comments, `##section` headers.
    #[arg(short = 'f', long = "file", required = true)]
    files: Vec<PathBuf>,
    /// The bundle file to write (a file: its seek table and the rename into place need one, so not `-`).
    #[arg(short, long, value_parser = parse_output)]
    output: PathBuf,
    /// Registry for entries without a host: HOST[:PORT], no scheme, no path.
    #[arg(long, default_value = DEFAULT_REGISTRY, value_parser = parse_source)]
    source: String,
    /// Only these ##sections of the list(s).
    #[arg(long)]
    section: Vec<String>,
    /// Platforms kept from multi-arch images (OS/ARCH[/VARIANT]).
    #[arg(long, default_value = "linux/amd64", value_parser = super::parse_platform)]
    platform: Vec<Platform>,
    /// Keep every platform of multi-arch images.
    #[arg(long)]
    all_platforms: bool,
    /// Store quay.io/x/y as repository quay.io/x/y (default: x/y); a port's ':' becomes '_'.
    #[arg(long)]
    keep_host: bool,
    /// Bring signatures, attestations, SBOMs (referrers) along: the OCI 1.1 referrers API and cosign's `sha256-<hex>.sig|.att|.sbom` tags.
    #[arg(long)]
    with_referrers: bool,
    /// Persistent blob cache (default $XDG_CACHE_HOME/ferry or ~/.cache/ferry).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Also leave the hardlinked bundle root here (a new or empty directory).
    #[arg(long)]
    root_dir: Option<PathBuf>,
    /// Delta bundle: leave out every blob (manifests included) that OLD, a bundle or its
    /// extracted ferry-bundle.json, carries. The delta is a registry root only together with
    /// OLD: unbundle it with OLD already linked/pushed, or with --base OLD.
    #[arg(long, value_name = "OLD")]
    since: Option<PathBuf>,
    /// Compression of the bundle file.
    #[arg(long, value_enum, default_value = "zstd")]
    compression: Compression,
    /// zstd level. 1 by default: image layers are compressed already, so higher levels spend CPU for almost nothing.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=19))]
    level: i32,
    /// Blobs fetched (and images resolved) at once; also the per-host cap unless --max-per-host is given.
    #[arg(long, default_value_t = DEFAULT_JOBS, value_parser = super::jobs_parser())]
    jobs: usize,
    #[command(flatten)]
    net: super::NetArgs,
    /// Write the bundle without images that fail (they are listed, and the exit is still 1).
    #[arg(long)]
    keep_going: bool,
    /// Verify the source registry's TLS certificate (false also allows plain http).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", action = clap::ArgAction::Set)]
    src_tls_verify: bool,
    /// Credentials for the source registry, USER[:PASS].
    #[arg(long)]
    src_creds: Option<String>,
    /// Auth file (docker config.json or containers auth.json).
    #[arg(long)]
    authfile: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
    /// Sign ferry-bundle.json with this minisign secret key (from `ferry keygen`; unencrypted, so
    /// a pipeline signs without a prompt): inside the bundle and beside it as OUTPUT.minisig.
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
    /// Write OUTPUT.000, OUTPUT.001, … each at most SIZE (4G, 512M, 100k or bytes; `cat` of them is the bundle).
    #[arg(long, value_name = "SIZE", value_parser = super::size_parser)]
    split_size: Option<u64>,
}

/// The cache `--cache` defaults to (also `ferry cache`'s).
pub(super) fn default_cache() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("ferry"));
    }
    let home =
        std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set: pass --cache")?;
    Ok(PathBuf::from(home).join(".cache/ferry"))
}

fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a whole number of seconds")),
        _ => Ok(0),
    }
}

/// Runs `ferry bundle`; with `--json` a JSON document is printed on stdout whatever the outcome.
pub fn run(g: &GlobalArgs, a: BundleArgs) -> anyhow::Result<ExitCode> {
    let json = a.json;
    let mut failed: Vec<serde_json::Value> = Vec::new();
    let r = run_inner(g, a, &mut failed);
    if json && let Err(e) = &r {
        // Failures the run named go in `failed`; any other error in `error`.
        let mut summary =
            serde_json::json!({ "ok": false, "error": format!("{e:#}"), "failed": failed });
        if let Some(ImagesFailed {
            summary: Some(s), ..
        }) = e.downcast_ref::<ImagesFailed>()
            && let Ok(serde_json::Value::Object(m)) = serde_json::to_value(s.as_ref())
        {
            for (k, v) in m {
                if k != "failed" {
                    summary[k] = v;
                }
            }
        }
        outln!("{}", serde_json::to_string_pretty(&summary)?);
    }
    r
}

/// Images failed (each already printed): the closing line, and what was written for `--json`.
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
struct ImagesFailed {
    msg: String,
    summary: Option<Box<crate::bundle::BundleSummary>>,
}

/// One failure for `--json`: the image as written, `file:line`, and the cause.
fn json_failure(image: &str, location: Option<&str>, cause: &str) -> serde_json::Value {
    serde_json::json!({ "image": image, "location": location, "cause": cause })
}

fn run_inner(
    g: &GlobalArgs,
    a: BundleArgs,
    failed: &mut Vec<serde_json::Value>,
) -> anyhow::Result<ExitCode> {
    // Everything about the input is checked before anything is downloaded.
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for f in &a.files {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading images list {}", f.display()))?;
        match parse_images_list(&f.display().to_string(), &text) {
            Ok(e) => entries.extend(e),
            Err(e) => bad.extend(e.0),
        }
    }
    if !bad.is_empty() {
        for b in &bad {
            eprintln!("error: {b}");
            failed.push(json_failure(
                &b.text,
                Some(&format!("{}:{}", b.file, b.line)),
                &b.cause.to_string(),
            ));
        }
        bail!(
            "{} bad line(s) in the images list; nothing was downloaded",
            bad.len()
        );
    }
    {
        // Dropped at once: a copy of every reference would otherwise live as long as the run.
        let mut seen = std::collections::BTreeSet::new();
        entries.retain(|e| seen.insert(e.reference.clone()));
    }
    if !a.section.is_empty() {
        let known: std::collections::BTreeSet<_> =
            entries.iter().filter_map(|e| e.section.clone()).collect();
        for s in &a.section {
            if !known.contains(s) {
                bail!(
                    "--section {s}: no such section in the list (it has: {})",
                    known.into_iter().collect::<Vec<_>>().join(", ")
                );
            }
        }
        entries.retain(|e| e.section.as_ref().is_some_and(|s| a.section.contains(s)));
    }
    let platforms = a.platform.clone();
    let cache = match a.cache {
        Some(c) => c,
        None => default_cache()?,
    };
    let opts = BundleOptions {
        plan: PlanOptions {
            default_registry: a.source,
            platforms,
            all_platforms: a.all_platforms,
            keep_host: a.keep_host,
            client: a
                .net
                .side("src", a.src_tls_verify, &a.src_creds, a.authfile, a.jobs)?,
            jobs: a.jobs.max(1),
            with_referrers: a.with_referrers,
        },
        cache,
        output: a.output,
        root_dir: a.root_dir,
        compression: a.compression,
        level: a.level,
        jobs: a.jobs.max(1),
        keep_going: a.keep_going,
        mtime: source_date_epoch()?,
        // The key is read before anything is resolved: a wrong path fails now, not after the downloads.
        sign: match &a.sign {
            Some(k) => Some(Arc::new(crate::bundlefile::sign::SigningKey::load(k)?)),
            None => None,
        },
        split_size: a.split_size,
        since: a.since,
    };
    // Before the runtime starts its threads: arenas are set when a thread first allocates.
    crate::limits::one_malloc_arena();
    let progress = super::progress::bar(g.quiet || g.debug, "bundle");
    let result = super::runtime()?.block_on(bundle(
        &entries,
        &opts,
        progress.clone() as Arc<dyn crate::bundle::Progress>,
    ));
    progress.finish();
    match result {
        Ok(s) => {
            sparse_notice(g, &s.sparse);
            if a.json {
                let mut v = serde_json::to_value(&s)?;
                v["ok"] = serde_json::Value::Bool(true);
                outln!("{}", serde_json::to_string_pretty(&v)?);
            }
            if !g.quiet {
                eprintln!(
                    "ferry: bundled {} images ({} blobs, {}; downloaded {}, {} from cache) into {} ({}) in {:.1}s",
                    s.images,
                    s.blobs,
                    human_bytes(s.blob_bytes),
                    human_bytes(s.bytes_downloaded),
                    human_bytes(s.bytes_reused),
                    s.output.display(),
                    human_bytes(s.bundle_bytes),
                    s.seconds
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(BundleError::Images {
            failures,
            written,
            summary,
        }) => {
            if let Some(s) = &summary {
                sparse_notice(g, &s.sparse);
            }
            // Images that failed for one same cause (a dead registry) are one line, not one each.
            let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
            for f in &failures {
                match groups.iter_mut().find(|(c, _)| *c == f.cause) {
                    Some((_, images)) => images.push(&f.image),
                    None => groups.push((&f.cause, vec![&f.image])),
                }
                let image = match &f.location {
                    Some(l) => f.image.strip_suffix(&format!(" ({l})")).unwrap_or(&f.image),
                    None => &f.image,
                };
                failed.push(json_failure(image, f.location.as_deref(), &f.cause));
            }
            for (cause, images) in &groups {
                match images.len() {
                    1 => eprintln!("error: {}: {cause}", images[0]),
                    n => eprintln!("error: {} and {} other images: {cause}", images[0], n - 1),
                }
            }
            let n = failures.len();
            let msg = match &written {
                Some(p) => format!(
                    "{n} image(s) failed; {} was written without them",
                    p.display()
                ),
                None => format!(
                    "{n} image(s) failed; no bundle written (what was downloaded stays in the cache)"
                ),
            };
            // Keep the summary reachable for --json; the message is the one line printed.
            Err(ImagesFailed { msg, summary }.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// One line per sparse index on stderr: a stock registry serving the bundle answers 404 for the
/// platforms left out, so `skopeo copy --all` from it fails; say so now, not at the site.
fn sparse_notice(g: &GlobalArgs, sparse: &[crate::bundle::SparseImage]) {
    if g.quiet {
        return;
    }
    for i in sparse {
        eprintln!(
            "ferry: {}: sparse index: keeps {}, leaves out {} (a registry serving the bundle answers 404 for those; copy --all from it fails; --all-platforms keeps them)",
            i.image,
            i.kept.join(","),
            i.left_out.join(",")
        );
    }
}

/// `--source HOST[:PORT]` as a clap value parser: a scheme, a path or a space is a usage error (exit 2),
/// not a registry that every image then fails to reach.
fn parse_source(s: &str) -> Result<String, String> {
    if let Some((scheme, _)) = s.split_once("://") {
        return Err(format!(
            "{s:?}: give the registry as HOST[:PORT], without {scheme}:// (plain http is --src-tls-verify=false)"
        ));
    }
    if s.contains('/') {
        return Err(format!(
            "{s:?}: a path prefix is not supported; give the registry as HOST[:PORT] and write the path in the images list"
        ));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || s.starts_with('[') => (h, Some(p)),
        _ => (s, None),
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if !host_ok || !port_ok {
        return Err(format!(
            "{s:?} is not a registry host: give HOST[:PORT], e.g. registry.local:5000"
        ));
    }
    Ok(s.to_string())
}

/// `-o FILE` as a clap value parser: `-` (stdout) is refused with one line (exit 2), since a bundle is
/// written under a temp name, synced and renamed into place, which a pipe cannot be.
fn parse_output(s: &str) -> Result<PathBuf, String> {
    if s == "-" {
        return Err(
            "a bundle cannot go to stdout (it is written to a temp file and renamed into place): give a file name"
                .to_string(),
        );
    }
    if s.is_empty() || s.ends_with('/') {
        return Err(format!("{s:?}: give a file name for the bundle"));
    }
    Ok(PathBuf::from(s))
}
