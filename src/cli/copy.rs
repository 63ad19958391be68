//! `ferry copy SRC DST`: one image between any two transports, with skopeo's flags.

use super::out::outln;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};

use super::{GlobalArgs, human_bytes};
use crate::copy::{CopyOptions, Format, MultiArch};
use crate::reference::DEFAULT_REGISTRY;
use crate::transport::open::{OpenOptions, open_dest, open_source, writable};
use crate::transport::registry::{Clients, Pushed};
use crate::transport::{Destination, ImageRef, Source};

/// skopeo's `--multi-arch` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MultiArchArg {
    /// The image for this system's platform (or the --override-* one).
    System,
    /// The index and every image in it.
    All,
    /// The index alone.
    IndexOnly,
}

/// Flags of `ferry copy`.
#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// Source image, TRANSPORT:REFERENCE (docker://, dir:, oci:, registry-root:, ferry-bundle:, …).
    source: String,
    /// Destination image, TRANSPORT:REFERENCE.
    destination: String,
    /// Copy a multi-platform image whole: the index and every image (same as --multi-arch all).
    #[arg(short, long)]
    all: bool,
    /// Which part of a multi-platform image to copy.
    #[arg(long, value_enum)]
    multi_arch: Option<MultiArchArg>,
    /// Fail rather than change any digest (no conversion). A value needs `=` (as Go's bool
    /// flags), so `--preserve-digests SRC DST` reads SRC as the source.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    preserve_digests: bool,
    /// Convert manifests to this format.
    #[arg(short, long, value_enum)]
    format: Option<Format>,
    #[command(flatten)]
    platform: super::registry_flags::PlatformOverride,
    #[command(flatten)]
    sides: super::registry_flags::SideFlags,
    /// When the source's index lacks some platforms (a bundle's sparse index) and the destination
    /// refuses it, write an index of the present platforms instead (its digest changes and is reported).
    #[arg(long)]
    rewrite_sparse_index: bool,
    /// Write the digest of the copied manifest to this file.
    #[arg(long)]
    digestfile: Option<PathBuf>,
    /// Blobs copied at once; also the per-host cap unless --max-per-host is given.
    #[arg(long, default_value_t = crate::limits::DEFAULT_JOBS, value_parser = super::jobs_parser())]
    jobs: usize,
    #[command(flatten)]
    net: super::NetArgs,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs `ferry copy`.
/// One check of a registry reference's host (nothing for other transports), so a dead or
/// mistyped registry is one clear line before anything is read or written.
async fn ping(
    r: &ImageRef,
    clients: &Clients,
    opts: &crate::registry::ClientOptions,
) -> anyhow::Result<()> {
    if let ImageRef::Docker(r) = r {
        clients
            .get(r.registry(DEFAULT_REGISTRY), opts)?
            .ping()
            .await?;
    }
    Ok(())
}

pub fn run(g: &GlobalArgs, a: CopyArgs) -> anyhow::Result<ExitCode> {
    let src = ImageRef::parse(&a.source).context("source")?;
    let dst = ImageRef::parse(&a.destination).context("destination")?;
    let multi_arch_hint = if a.all {
        MultiArchArg::All
    } else {
        a.multi_arch.unwrap_or(MultiArchArg::System)
    };
    let multi_arch = match (a.all, a.multi_arch) {
        (true, Some(m)) if m != MultiArchArg::All => {
            bail!("--all and --multi-arch {m:?} contradict each other")
        }
        (true, _) | (false, Some(MultiArchArg::All)) => MultiArch::All,
        (false, Some(MultiArchArg::IndexOnly)) => MultiArch::IndexOnly,
        (false, Some(MultiArchArg::System) | None) => MultiArch::System(a.platform.as_given()?),
    };
    if a.preserve_digests && a.format.is_some() {
        bail!(
            "--format converts manifests, which changes their digests; it cannot be used with --preserve-digests"
        );
    }
    let opts = CopyOptions {
        multi_arch,
        preserve_digests: a.preserve_digests,
        format: a.format,
        rewrite_sparse_index: a.rewrite_sparse_index,
        jobs: a.jobs.max(1),
        sparse_hint: match multi_arch_hint {
            MultiArchArg::All => {
                "the source holds only some of its platforms: copy one platform (leave out --all), or pass --rewrite-sparse-index to write an index of the present ones (its digest changes)"
            }
            MultiArchArg::IndexOnly => "the destination needs the images too: copy with --all",
            MultiArchArg::System => "copy with --all to bring every platform",
        },
    };
    let open = OpenOptions {
        source: a.net.side(
            "src",
            a.sides.src_tls_verify,
            &a.sides.src_creds,
            a.sides.authfile.clone(),
            a.jobs,
        )?,
        destination: a.net.side(
            "dest",
            a.sides.dest_tls_verify,
            &a.sides.dest_creds,
            a.sides.authfile.clone(),
            a.jobs,
        )?,
        s3_endpoint: g.s3_endpoint.clone(),
    };
    let rt = super::runtime()?;
    let summary = rt.block_on(async {
        let clients = Clients::default();
        writable(&dst)?;
        // Separate clients: the two sides may be one host with different credentials.
        let dest_clients = Clients::default();
        // One check of each registry first: a dead or mistyped one is one clear line, at once.
        // The source is read before the destination is touched (a mistyped source leaves an
        // existing destination, a dir: image or a layout, as it was); a registry destination's
        // ping only reads, so it overlaps the source's round trips.
        let read_source = async {
            ping(&src, &clients, &open.source)
                .await
                .with_context(|| format!("reading {}", a.source))?;
            let source = open_source(&src, &clients, &open).await?;
            source
                .top()
                .await
                .with_context(|| format!("reading {}", a.source))?;
            anyhow::Ok(source)
        };
        // A registry destination mounts what earlier runs put into its other repositories
        // (as skopeo's blob-info cache lets it): the registry then takes no bytes again.
        let pushed = Arc::new(match &dst {
            ImageRef::Docker(_) => super::sync::blob_locations(),
            _ => Pushed::default(),
        });
        // A registry destination is opened at once (that touches nothing), so once it answers
        // it is asked whether its repository is new while the source is still being read.
        let early = match &dst {
            ImageRef::Docker(_) => open_dest(&dst, &dest_clients, &open, &pushed).ok(),
            _ => None,
        };
        let ping_dest = async {
            ping(&dst, &dest_clients, &open.destination)
                .await
                .with_context(|| format!("writing {}", a.destination))?;
            if let Some(d) = &early {
                d.prepare();
            }
            anyhow::Ok(())
        };
        // A source that fails is named at once, whatever the destination's ping is doing (a
        // hung destination must not hold a mistyped source's error for its timeout); when the
        // ping fails first, the source is still read to the end and named first if it fails.
        let (source, pinged) = {
            tokio::pin!(read_source, ping_dest);
            tokio::select! {
                s = &mut read_source => (s?, ping_dest.await),
                p = &mut ping_dest => (read_source.await?, p),
            }
        };
        pinged?;
        let destination = match early {
            Some(d) => d,
            None => open_dest(&dst, &dest_clients, &open, &pushed)?,
        };
        let bar = super::progress::bar(g.quiet || g.debug, "copy");
        let r = crate::copy::copy(source, destination, &opts, bar.as_ref()).await;
        bar.finish();
        if let Err(e) = pushed.save() {
            tracing::warn!("keeping the target's blob locations for the next run: {e}");
        }
        anyhow::Ok(r?)
    })?;
    let copied = summary.copied.first().context("copy reported no image")?;
    if let Some(f) = &a.digestfile {
        std::fs::write(f, copied.digest.to_string())
            .with_context(|| format!("writing {}", f.display()))?;
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&summary)?);
    }
    if !g.quiet {
        let changed = if copied.digest != copied.source_digest {
            format!(" (was {} at the source)", copied.source_digest)
        } else {
            String::new()
        };
        eprintln!(
            "ferry: copied {} to {} as {}{changed}: {} blobs written ({}), {} already there, {} mounted, {} manifests",
            a.source,
            a.destination,
            copied.digest,
            summary.blobs_uploaded,
            human_bytes(summary.bytes_uploaded),
            summary.blobs_present,
            summary.blobs_mounted,
            summary.manifests
        );
    }
    Ok(ExitCode::SUCCESS)
}
