//! `ferry unbundle serve | link`: the site side of the main job.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::{GlobalArgs, human_bytes};
use crate::bundle::read::BundleFile;
use crate::bundle::unpack::link;
use crate::serve::Bundles;
use crate::store::Store;

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
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Bundle files (merged into one registry), or one registry root directory.
    #[arg(required = true)]
    sources: Vec<PathBuf>,
    /// Address to listen on; port 0 picks a free one (the address is printed).
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: String,
    /// Unpack into this root first (verified) and serve that, instead of reading the bundles in place.
    #[arg(long)]
    dir: Option<PathBuf>,
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

pub fn run(g: &GlobalArgs, a: UnbundleArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        UnbundleCommand::Serve(s) => serve(g, s),
        UnbundleCommand::Link(l) => link_cmd(g, l),
    }
}

fn serve(g: &GlobalArgs, a: ServeArgs) -> anyhow::Result<ExitCode> {
    let rt = super::runtime()?;
    if a.sources.len() == 1 && a.sources[0].is_dir() {
        if a.dir.is_some() {
            bail!(
                "--dir unpacks bundles; {} is already a directory",
                a.sources[0].display()
            );
        }
        return super::serve::serve_root(g, &a.sources[0], &a.listen);
    }
    if let Some(dir) = &a.dir {
        for b in &a.sources {
            link(b, dir, false)
                .with_context(|| format!("unpacking {} into {}", b.display(), dir.display()))?;
        }
        return super::serve::serve_root(g, dir, &a.listen);
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
        crate::serve::run(Bundles(bundles), listener, super::shutdown_signal())
            .await
            .context("serving")?;
        Ok(ExitCode::SUCCESS)
    })
}

fn link_cmd(g: &GlobalArgs, a: LinkArgs) -> anyhow::Result<ExitCode> {
    if !a.bundle.is_file() {
        bail!("{}: not a bundle file", a.bundle.display());
    }
    let s = link(&a.bundle, &a.root, a.no_clobber)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
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
    let _ = Store::open(&a.root);
    Ok(ExitCode::SUCCESS)
}
