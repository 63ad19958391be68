//! `ferry sync --src docker|dir|yaml --dest docker|dir SOURCE DESTINATION`: skopeo's `sync`,
//! with its flags and its destination names; every image resolved (tags listed, manifests
//! read) before anything is written, then copied together through one pool of blob transfers.

use super::out::outln;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use futures_util::{StreamExt, stream};

use super::GlobalArgs;
use crate::copy::{CopyError, CopyOptions, CopySummary, Format, MultiArch};
use crate::registry::ClientOptions;
use crate::sync::{DestKind, SourceKind, SyncImage, SyncOptions};
use crate::transport::Source;
use crate::transport::open::OpenOptions;
use crate::transport::registry::{Clients, Pushed};

/// Flags of `ferry sync` (skopeo's names).
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// Source: a registry repository (every tag) or image, a directory of dir: images, or a YAML sync file.
    source: String,
    /// Destination: a registry (with an optional repository prefix), or a directory.
    destination: String,
    /// Source transport.
    #[arg(short, long = "src", value_enum)]
    src: SourceKind,
    /// Destination transport.
    #[arg(short, long = "dest", value_enum)]
    dest: DestKind,
    /// Name destinations with the whole source path (HOST/REPO:TAG), not its last element.
    #[arg(long)]
    scoped: bool,
    /// Copy multi-platform images whole: the index and every image.
    #[arg(short, long)]
    all: bool,
    /// Print what would be copied (each source resolved and read) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Copy the images that can be copied, report the others, and exit 1 at the end.
    #[arg(long)]
    keep_going: bool,
    /// Fail rather than change any digest (no conversion).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    preserve_digests: bool,
    /// Convert manifests to this format.
    #[arg(short, long, value_enum)]
    format: Option<Format>,
    /// Appended to every destination name (after the tag, as skopeo).
    #[arg(long, default_value = "")]
    append_suffix: String,
    /// Accepted for skopeo's scripts; ferry copies no signatures (neither lookaside nor sigstore attachments), so there is nothing to remove.
    #[arg(long)]
    remove_signatures: bool,
    /// Retry a sync that failed this many more times (pausing 1 s, 2 s, 4 s, …); present blobs are not sent again.
    #[arg(long, default_value_t = 0)]
    retry_times: u32,
    #[command(flatten)]
    sides: super::registry_flags::SideFlags,
    /// Auth file for the source registry (default: --authfile).
    #[arg(long)]
    src_authfile: Option<PathBuf>,
    /// Auth file for the destination registry (default: --authfile).
    #[arg(long)]
    dest_authfile: Option<PathBuf>,
    /// Certificates for the source registry: *.crt CAs, a *.cert/*.key client pair; a sync file's cert-dir wins.
    #[arg(long)]
    src_cert_dir: Option<PathBuf>,
    /// Certificates for the destination registry: *.crt CAs, a *.cert/*.key client pair.
    #[arg(long)]
    dest_cert_dir: Option<PathBuf>,
    /// Blobs copied at once (shared by every image of the sync).
    #[arg(long, default_value_t = crate::limits::DEFAULT_JOBS, value_parser = super::jobs_parser())]
    jobs: usize,
    /// Timeouts and the per-host cap.
    #[command(flatten)]
    net: super::NetArgs,
    /// Print a JSON summary (or, with --dry-run, the plan) on stdout.
    #[arg(long)]
    json: bool,
}

/// One line of a dry run.
#[derive(serde::Serialize)]
struct Planned {
    source: String,
    destination: String,
    digest: String,
}

/// Adds one attempt's summary to the total.
fn merge(total: &mut CopySummary, s: CopySummary) {
    total.images += s.images;
    total.blobs_uploaded += s.blobs_uploaded;
    total.bytes_uploaded += s.bytes_uploaded;
    total.blobs_mounted += s.blobs_mounted;
    total.blobs_present += s.blobs_present;
    total.manifests += s.manifests;
    total.rewritten.extend(s.rewritten);
    total.copied.extend(s.copied);
}

/// Runs `ferry sync`.
pub fn run(g: &GlobalArgs, a: SyncArgs) -> anyhow::Result<ExitCode> {
    if a.src == SourceKind::Dir && a.dest == DestKind::Dir {
        clap::Error::raw(
            clap::error::ErrorKind::ArgumentConflict,
            "sync from dir to dir is not implemented (as in skopeo); copy the tree with cp or rsync\n",
        )
        .exit();
    }
    if a.preserve_digests && a.format.is_some() {
        return Err(super::UsageError(
            "--format converts manifests, which changes their digests; it cannot be used with --preserve-digests".into(),
        )
        .into());
    }
    if a.remove_signatures {
        tracing::debug!("--remove-signatures: ferry copies no signatures");
    }
    let source_client = ClientOptions {
        cert_dir: a.src_cert_dir.clone(),
        ..a.net.side(
            "src",
            a.sides.src_tls_verify,
            &a.sides.src_creds,
            a.src_authfile.clone().or_else(|| a.sides.authfile.clone()),
            a.jobs,
        )?
    };
    let open = OpenOptions {
        source: source_client.clone(),
        destination: ClientOptions {
            cert_dir: a.dest_cert_dir.clone(),
            ..a.net.side(
                "dest",
                a.sides.dest_tls_verify,
                &a.sides.dest_creds,
                a.dest_authfile.clone().or_else(|| a.sides.authfile.clone()),
                a.jobs,
            )?
        },
        s3_endpoint: g.s3_endpoint.clone(),
    };
    let opts = SyncOptions {
        source_kind: a.src,
        dest_kind: a.dest,
        scoped: a.scoped,
        append_suffix: a.append_suffix.clone(),
        source: source_client,
        jobs: a.jobs,
    };
    let copy_opts = CopyOptions {
        multi_arch: if a.all {
            MultiArch::All
        } else {
            MultiArch::system()
        },
        preserve_digests: a.preserve_digests,
        format: a.format,
        jobs: a.jobs,
        sparse_hint: "sync with --all to bring every platform",
        ..CopyOptions::default()
    };
    let rt = super::runtime()?;
    rt.block_on(async {
        // Resolve: list tags, apply the sync file's filters, name every destination, check them.
        let sources = crate::sync::source_images(&a.source, &opts).await?;
        let images = crate::sync::name_images(sources, &a.source, &a.destination, &opts)?;
        crate::sync::check_destinations(&images, a.dest)?;
        let pushed = Arc::new(blob_locations());
        // Separate clients: the two sides may be one host with different credentials.
        let dest_clients = Clients::default();
        if a.dry_run {
            return dry_run(&a, &images, &dest_clients, &open, &pushed).await;
        }
        let bar = super::progress::bar(g.quiet || g.debug, "sync");
        let mut pending: Vec<SyncImage> = images.clone();
        let mut total = CopySummary::default();
        let mut errors: Vec<CopyError> = Vec::new();
        for attempt in 0..=a.retry_times {
            if attempt > 0 {
                let wait = Duration::from_secs(1 << (attempt - 1).min(6));
                tracing::warn!(
                    "{} images failed; retrying ({attempt} of {}) in {}s",
                    pending.len(),
                    a.retry_times,
                    wait.as_secs()
                );
                if std::env::var_os(crate::limits::ENV_NO_RETRY_DELAY).is_none() {
                    tokio::time::sleep(wait).await;
                }
            }
            let jobs = crate::sync::open_jobs(&pending, a.dest, &dest_clients, &open, &pushed)?;
            if a.keep_going {
                let (s, failed) = crate::copy::copy_each(&jobs, &copy_opts, bar.as_ref()).await;
                merge(&mut total, s);
                pending = failed.iter().map(|(i, _)| pending[*i].clone()).collect();
                errors = failed.into_iter().map(|(_, e)| e).collect();
            } else {
                match crate::copy::copy_all(jobs, &copy_opts, bar.as_ref()).await {
                    Ok(s) => {
                        merge(&mut total, s);
                        errors.clear();
                    }
                    Err(e) => errors = vec![e],
                }
            }
            if errors.is_empty() {
                break;
            }
        }
        bar.finish();
        if let Err(e) = pushed.save() {
            tracing::warn!("keeping the target's blob locations for the next run: {e}");
        }
        if a.json {
            outln!("{}", serde_json::to_string_pretty(&total)?);
        }
        if !errors.is_empty() {
            if a.keep_going {
                for e in &errors {
                    eprintln!("error: {e}");
                }
                bail!(
                    "sync failed for {} of {} images; the others were copied",
                    pending.len(),
                    images.len()
                );
            }
            return Err(errors.remove(0).into());
        }
        if !g.quiet {
            eprintln!(
                "ferry: synced {} images from {} to {}: {} blobs written ({}), {} already there, {} mounted, {} manifests",
                total.images,
                a.source,
                a.destination,
                total.blobs_uploaded,
                super::human_bytes(total.bytes_uploaded),
                total.blobs_present,
                total.blobs_mounted,
                total.manifests
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Where the target's blob locations are kept between runs (in the bundle cache), so a
/// sync or copy into one repository mounts what an earlier run uploaded to another; only
/// this run's when there is no cache directory.
pub(super) fn blob_locations() -> Pushed {
    match super::bundle::default_cache() {
        Ok(dir) => Pushed::persistent(
            crate::store::Store::open(&dir).path(crate::store::paths::PathSpec::CacheBlobLocations),
        ),
        Err(_) => Pushed::default(),
    }
}

/// Reads every source's top manifest and prints what would be copied where; writes nothing.
async fn dry_run(
    a: &SyncArgs,
    images: &[SyncImage],
    dest_clients: &Clients,
    open: &OpenOptions,
    pushed: &Arc<Pushed>,
) -> anyhow::Result<ExitCode> {
    let jobs = crate::sync::open_jobs(images, a.dest, dest_clients, open, pushed)?;
    let tops: Vec<_> = stream::iter(&jobs)
        .map(|j| j.source.top())
        .buffered(a.jobs.max(1))
        .collect()
        .await;
    let mut plan = Vec::new();
    for (img, top) in images.iter().zip(tops) {
        let top = top.map_err(|e| anyhow::anyhow!("{}: {e}", img.source.name()))?;
        plan.push(Planned {
            source: img.source.name(),
            destination: img.destination_name(a.dest),
            digest: top.digest().to_string(),
        });
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        for p in &plan {
            outln!(
                "would copy {} to {} ({})",
                p.source,
                p.destination,
                p.digest
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
