//! `ferry bundle`: images list(s) → one verified, deduplicated, seekable bundle file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};

use super::{GlobalArgs, human_bytes};
use crate::auth::Credentials;
use crate::bundle::{BundleError, BundleOptions, Compression, bundle};
use crate::limits::DEFAULT_JOBS;
use crate::manifest::Platform;
use crate::plan::PlanOptions;
use crate::reference::{DEFAULT_REGISTRY, parse_images_list};
use crate::registry::ClientOptions;

/// Flags of `ferry bundle`.
#[derive(Debug, clap::Args)]
pub struct BundleArgs {
    /// Images list(s): one reference per line, `#` comments, `##section` headers.
    #[arg(short = 'f', long = "file", required = true)]
    files: Vec<PathBuf>,
    /// The bundle file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Registry for entries without a host.
    #[arg(long, default_value = DEFAULT_REGISTRY)]
    source: String,
    /// Only these ##sections of the list(s).
    #[arg(long)]
    section: Vec<String>,
    /// Platforms kept from multi-arch images (OS/ARCH[/VARIANT]).
    #[arg(long, default_value = "linux/amd64")]
    platform: Vec<String>,
    /// Keep every platform of multi-arch images.
    #[arg(long)]
    all_platforms: bool,
    /// Store quay.io/x/y as repository quay.io/x/y (default: x/y); a port's ':' becomes '_'.
    #[arg(long)]
    keep_host: bool,
    /// Persistent blob cache (default $XDG_CACHE_HOME/ferry or ~/.cache/ferry).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Also leave the hardlinked bundle root here (a new or empty directory).
    #[arg(long)]
    root_dir: Option<PathBuf>,
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
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "true", action = clap::ArgAction::Set)]
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
}

fn default_cache() -> anyhow::Result<PathBuf> {
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

pub fn run(g: &GlobalArgs, a: BundleArgs) -> anyhow::Result<ExitCode> {
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
        }
        bail!(
            "{} bad line(s) in the images list; nothing was downloaded",
            bad.len()
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    entries.retain(|e| seen.insert(e.reference.clone()));
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
    let platforms = a
        .platform
        .iter()
        .map(|p| Platform::parse(p).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
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
            client: a.net.apply(
                ClientOptions {
                    tls_verify: a.src_tls_verify,
                    credentials: a.src_creds.as_deref().map(Credentials::from_flag),
                    authfile: a.authfile,
                    ..ClientOptions::default()
                },
                a.jobs,
                "--src-tls-verify=false",
            ),
            jobs: a.jobs.max(1),
        },
        cache,
        output: a.output,
        root_dir: a.root_dir,
        compression: a.compression,
        level: a.level,
        jobs: a.jobs.max(1),
        keep_going: a.keep_going,
        mtime: source_date_epoch()?,
    };
    let progress = super::progress::bar(g.quiet || g.debug);
    let result = super::runtime()?.block_on(bundle(
        &entries,
        &opts,
        progress.clone() as Arc<dyn crate::bundle::Progress>,
    ));
    progress.finish();
    match result {
        Ok(s) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
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
        Err(BundleError::Images { failures, written }) => {
            // Images that failed for one same cause (a dead registry) are one line, not one each.
            let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
            for f in &failures {
                match groups.iter_mut().find(|(c, _)| *c == f.cause) {
                    Some((_, images)) => images.push(&f.image),
                    None => groups.push((&f.cause, vec![&f.image])),
                }
            }
            for (cause, images) in &groups {
                match images.len() {
                    1 => eprintln!("error: {}: {cause}", images[0]),
                    n => eprintln!("error: {} and {} other images: {cause}", images[0], n - 1),
                }
            }
            match written {
                Some(p) => bail!(
                    "{} image(s) failed; {} was written without them",
                    failures.len(),
                    p.display()
                ),
                None => bail!(
                    "{} image(s) failed; no bundle written (what was downloaded stays in the cache)",
                    failures.len()
                ),
            }
        }
        Err(e) => Err(e.into()),
    }
}
