//! `ferry unbundle serve | link | push`: the site side of the main job.

use super::out::outln;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::{GlobalArgs, human_bytes};
use crate::bundle::unpack::link;
use crate::bundlefile::read::BundleFile;
use crate::store::Store;
use crate::transport::bundle::Bundles;
use crate::transport::catalog::CatalogSource;

/// Flags of `ferry unbundle`.
#[derive(Debug, clap::Args)]
pub struct UnbundleArgs {
    #[command(subcommand)]
    command: UnbundleCommand,
}

#[derive(Debug, clap::Subcommand)]
enum UnbundleCommand {
    /// Serve bundles in place (no unpacking), or a registry root, as a registry.
    Serve(ServeArgs),
    /// Merge a bundle into a registry root (also one a registry is serving).
    Link(LinkArgs),
    /// Push every image of a bundle (read in place) or a registry root to a registry.
    Push(PushArgs),
}

#[derive(Debug, clap::Args)]
struct PushArgs {
    /// The bundle file, or a registry root directory.
    source: PathBuf,
    /// Target registry, HOST[:PORT][/PREFIX] (the prefix goes before every repository).
    #[arg(long)]
    dest: String,
    /// Blobs pushed at once; also the per-host cap unless --max-per-host is given.
    #[arg(long, default_value_t = crate::limits::DEFAULT_JOBS, value_parser = super::jobs_parser())]
    jobs: usize,
    #[command(flatten)]
    net: super::NetArgs,
    /// Verify the target's TLS certificate (false also allows plain http).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "true", action = clap::ArgAction::Set)]
    dest_tls_verify: bool,
    /// Credentials for the target, USER[:PASS].
    #[arg(long)]
    dest_creds: Option<String>,
    /// Auth file (docker config.json or containers auth.json).
    #[arg(long)]
    authfile: Option<PathBuf>,
    /// When an index is sparse, push an index of the present platforms instead (its digest changes and is reported).
    #[arg(long)]
    rewrite_sparse_index: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Bundle files (merged into one registry), or one registry root directory.
    #[arg(required = true)]
    sources: Vec<PathBuf>,
    /// Address to listen on; port 0 picks a free one (the address is printed).
    #[arg(long, default_value = "127.0.0.1:5000", value_parser = super::parse_listen)]
    listen: String,
    /// Unpack into this root first (verified) and serve that, instead of reading the bundles in place.
    #[arg(long)]
    dir: Option<PathBuf>,
    #[command(flatten)]
    flags: super::serve::ServeFlags,
}

#[derive(Debug, clap::Args)]
struct LinkArgs {
    /// The bundle file.
    bundle: PathBuf,
    /// The registry root to merge into (distribution's rootdirectory).
    #[arg(long)]
    root: PathBuf,
    /// Refuse to move a tag that already points elsewhere.
    #[arg(long)]
    no_clobber: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs `ferry unbundle`; with `--json`, `link` and `push` print a JSON document whatever the outcome.
pub fn run(g: &GlobalArgs, a: UnbundleArgs) -> anyhow::Result<ExitCode> {
    let (json, r) = match a.command {
        UnbundleCommand::Serve(s) => return serve(g, s),
        UnbundleCommand::Link(l) => (l.json, link_cmd(g, l)),
        UnbundleCommand::Push(p) => (p.json, push_cmd(g, p)),
    };
    if json && let Err(e) = &r {
        let failed: Vec<serde_json::Value> = match e.downcast_ref::<NotPushed>() {
            Some(NotPushed(causes)) => causes
                .iter()
                .map(|c| serde_json::json!({ "cause": c }))
                .collect(),
            None => Vec::new(),
        };
        let doc = serde_json::json!({ "ok": false, "error": format!("{e:#}"), "failed": failed });
        outln!("{}", serde_json::to_string_pretty(&doc)?);
    }
    r
}

/// Images a push could not bring (each already printed), kept for `--json`.
#[derive(Debug, thiserror::Error)]
#[error("{} image(s) were not pushed; the others were", .0.len())]
struct NotPushed(Vec<String>);

fn serve(g: &GlobalArgs, a: ServeArgs) -> anyhow::Result<ExitCode> {
    for s in &a.sources {
        super::must_exist(s)?;
    }
    let rt = super::runtime()?;
    if a.sources.len() == 1 && a.sources[0].is_dir() {
        if a.dir.is_some() {
            bail!(
                "--dir unpacks bundles; {} is already a directory",
                a.sources[0].display()
            );
        }
        return super::serve::serve_root(g, &a.sources[0], &a.listen, &a.flags);
    }
    if let Some(dir) = &a.dir {
        for b in &a.sources {
            link(b, dir, false, &|_| {})
                .with_context(|| format!("unpacking {} into {}", b.display(), dir.display()))?;
        }
        return super::serve::serve_root(g, dir, &a.listen, &a.flags);
    }
    if a.flags.allow_push || a.flags.allow_delete {
        return Err(super::UsageError(
            "--allow-push and --allow-delete need --dir DIR: bundles are served read-only in place"
                .to_string(),
        )
        .into());
    }
    let mut bundles = Vec::new();
    for b in &a.sources {
        bundles.push(BundleFile::open(b)?);
    }
    let images: usize = bundles.iter().map(|b| b.scan.index.images.len()).sum();
    rt.block_on(async {
        let (listener, addr) = crate::serve::bind(&a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        if !g.quiet {
            eprintln!(
                "ferry: serving {} bundle(s), {images} images, in place at http://{addr}",
                bundles.len()
            );
        }
        // The address is a result (port 0 picks one): on stdout, also with -q.
        outln!("{addr}");
        crate::serve::run(
            Bundles(bundles),
            crate::serve::Options::default(),
            listener,
            super::shutdown_signal(),
        )
        .await
        .context("serving")?;
        Ok(ExitCode::SUCCESS)
    })
}

fn link_cmd(g: &GlobalArgs, a: LinkArgs) -> anyhow::Result<ExitCode> {
    super::must_exist(&a.bundle)?;
    if !a.bundle.is_file() {
        bail!("{}: not a bundle file", a.bundle.display());
    }
    let index = crate::bundlefile::read_index(&a.bundle)?;
    let bar = super::progress::bar(g.quiet || g.debug, "link");
    {
        use crate::bundle::Progress;
        bar.planned(
            index.images.len(),
            index.blobs.len(),
            index.blobs.iter().map(|b| b.size).sum(),
        );
    }
    let result = link(&a.bundle, &a.root, a.no_clobber, &|n| {
        crate::bundle::Progress::fetched(bar.as_ref(), n)
    });
    bar.finish();
    let s = result?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&with_ok(&s)?)?);
    }
    if !g.quiet {
        for t in &s.tags {
            match &t.old {
                None => eprintln!("{}:{}: new, {}", t.repository, t.tag, t.new),
                Some(o) if o == &t.new => {
                    eprintln!("{}:{}: unchanged, {}", t.repository, t.tag, t.new)
                }
                Some(o) => eprintln!("{}:{}: moved {} -> {}", t.repository, t.tag, o, t.new),
            }
        }
        eprintln!(
            "ferry: linked {} into {}: {} blobs added ({}), {} already there, {} tags",
            a.bundle.display(),
            a.root.display(),
            s.blobs_added,
            human_bytes(s.bytes_added),
            s.blobs_present,
            s.tags.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn push_cmd(g: &GlobalArgs, a: PushArgs) -> anyhow::Result<ExitCode> {
    use crate::copy::{CopyOptions, MultiArch};
    super::must_exist(&a.source)?;
    let (host, prefix) = match a.dest.split_once('/') {
        Some((h, p)) => (h.to_string(), Some(p.trim_end_matches('/').to_string())),
        None => (a.dest.clone(), None),
    };
    if let Some(p) = &prefix {
        crate::reference::validate_repository(p)
            .with_context(|| format!("--dest {}: prefix {p:?}", a.dest))?;
    }
    let client = a.net.side(
        "dest",
        a.dest_tls_verify,
        &a.dest_creds,
        a.authfile.clone(),
        a.jobs,
    )?;
    let opts = CopyOptions {
        multi_arch: MultiArch::All,
        preserve_digests: false,
        format: None,
        rewrite_sparse_index: a.rewrite_sparse_index,
        jobs: a.jobs.max(1),
        sparse_hint: "bundle again with --all-platforms, or push with --rewrite-sparse-index to push an index of the present platforms (its digest changes)",
    };
    let target = crate::registry::Client::new(&host, &client)?;
    let pushed = std::sync::Arc::new(crate::transport::registry::Pushed::default());
    let dest = |repo: &str, tag: Option<String>| {
        let repo = match &prefix {
            Some(p) => format!("{p}/{repo}"),
            None => repo.to_string(),
        };
        crate::transport::registry::RegistryDest::new(target.clone(), repo, tag, pushed.clone())
    };
    let rt = super::runtime()?;
    // One check of the target before any image: a dead or mistyped one is one line, not one per image.
    rt.block_on(target.ping())?;
    let bar = super::progress::bar(g.quiet || g.debug, "push");
    let summary = if a.source.is_dir() {
        let store = Store::open(&a.source);
        if !store.exists() {
            bail!(
                "{}: not a registry root (no docker/registry/v2 directory)",
                a.source.display()
            );
        }
        let catalog = std::sync::Arc::new(store);
        let mut jobs = Vec::new();
        for repo in catalog.repositories()? {
            for tag in catalog.tags(&repo)? {
                let r = crate::reference::Reference::parse(&format!("{repo}:{tag}"))?;
                jobs.push(crate::copy::Job {
                    source: CatalogSource::new(catalog.clone(), r, format!("{repo}:{tag}")),
                    destination: dest(&repo, Some(tag)),
                });
            }
        }
        rt.block_on(crate::copy::copy_all(jobs, &opts, bar.as_ref()))
    } else {
        // The target checks every blob's digest as it receives it, so the bundle is not hashed twice here.
        let bundle = BundleFile::open_with(&a.source, &mut crate::bundlefile::read::StructureOnly)?;
        let images = bundle.scan.index.images.clone();
        let catalog = std::sync::Arc::new(Bundles(vec![bundle]));
        let mut jobs = Vec::new();
        for i in images {
            let name = format!(
                "{}{}",
                i.repository,
                i.tag
                    .as_deref()
                    .map(|t| format!(":{t}"))
                    .unwrap_or_default()
            );
            let r = crate::reference::Reference::parse(&format!("{}@{}", i.repository, i.digest))?;
            jobs.push(crate::copy::Job {
                source: CatalogSource::new(catalog.clone(), r, name),
                destination: dest(&i.repository, i.tag.clone()),
            });
        }
        rt.block_on(crate::copy::copy_all(jobs, &opts, bar.as_ref()))
    };
    bar.finish();
    let summary = match summary {
        Ok(s) => s,
        Err(crate::copy::CopyError::Several(v)) => {
            for e in &v {
                eprintln!("error: {e}");
            }
            return Err(NotPushed(v.iter().map(ToString::to_string).collect()).into());
        }
        Err(e) => return Err(e.into()),
    };
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&with_ok(&summary)?)?);
    }
    for r in &summary.rewritten {
        eprintln!(
            "{}: sparse index {} pushed as {} (present platforms only)",
            r.image, r.original, r.pushed
        );
    }
    if !g.quiet {
        eprintln!(
            "ferry: pushed {} images to {}: {} blobs uploaded ({}), {} mounted, {} already there, {} manifests",
            summary.images,
            a.dest,
            summary.blobs_uploaded,
            human_bytes(summary.bytes_uploaded),
            summary.blobs_mounted,
            summary.blobs_present,
            summary.manifests
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A summary as JSON with `"ok": true`, the key a failed run's document has as `false`.
fn with_ok(s: &impl serde::Serialize) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(s)?;
    if let Some(m) = v.as_object_mut() {
        m.insert("ok".into(), serde_json::Value::Bool(true));
    }
    Ok(v)
}
