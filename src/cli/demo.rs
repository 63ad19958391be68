//! `ferry demo`: the main job end to end with no network. Generates the
//! built-in images into a root, serves it on loopback as the "source
//! registry", bundles an images list from it, unpacks the bundle with a plain
//! tar reader into a fresh root, serves that as the "site registry", and checks
//! every tag's digest there against the source's.

use super::out::outln;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};

use super::{GlobalArgs, human_bytes};
use crate::bundle::{BundleOptions, Compression, NoProgress, bundle};
use crate::fixtures::{Preset, generate};
use crate::plan::PlanOptions;
use crate::reference::parse_images_list;
use crate::registry::{Client, ClientOptions};
use crate::store::Store;

/// Flags of `ferry demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the demo's files here instead of a temp directory that is removed afterwards.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Which built-in corpus.
    #[arg(long, value_enum, default_value = "small")]
    preset: Preset,
}

/// Serves `store` on a random loopback port until the returned sender is dropped.
async fn serve_in_background(
    store: Store,
) -> anyhow::Result<(
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let (listener, addr) = crate::serve::bind("127.0.0.1:0").await?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(crate::serve::run(
        store,
        listener,
        Default::default(),
        async {
            let _ = rx.await;
        },
    ));
    Ok((addr.to_string(), tx, task))
}

fn unpack(bundle: &Path, dest: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(bundle).with_context(|| format!("opening {}", bundle.display()))?;
    let mut archive = tar::Archive::new(zstd::stream::read::Decoder::new(f)?);
    archive
        .unpack(dest)
        .with_context(|| format!("unpacking {} into {}", bundle.display(), dest.display()))
}

/// Runs `ferry demo`.
pub fn run(g: &GlobalArgs, a: DemoArgs) -> anyhow::Result<ExitCode> {
    let temp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            temp = TempDir::new()?;
            temp.0.clone()
        }
    };
    let say = |s: String| {
        if !g.quiet {
            eprintln!("{s}");
        }
    };
    let t0 = Instant::now();
    let source = Store::create(dir.join("source-root"))?.with_durable(false);
    let corpus = generate(a.preset, &source).context("generating the demo images")?;
    let list_path = dir.join("images-list.txt");
    std::fs::write(&list_path, corpus.images_list())
        .with_context(|| format!("writing {}", list_path.display()))?;
    say(format!(
        "1. generated {} tags ({} unique, {} referenced) into {} and listed them in {}",
        corpus.images.len(),
        human_bytes(corpus.unique_bytes),
        human_bytes(corpus.referenced_bytes),
        source.root().display(),
        list_path.display()
    ));
    let rt = super::runtime()?;
    let bundle_path = dir.join("bundle.tar.zst");
    let site = dir.join("site-root");
    let mismatches = rt.block_on(async {
        let (src_addr, stop_src, src_task) = serve_in_background(source.clone()).await?;
        say(format!(
            "2. serving the source at http://{src_addr} (ferry serve)"
        ));
        let entries = parse_images_list(&list_path.display().to_string(), &corpus.images_list())?;
        let opts = BundleOptions {
            plan: PlanOptions {
                default_registry: src_addr.clone(),
                platforms: vec![
                    crate::manifest::Platform::parse("linux/amd64").map_err(anyhow::Error::msg)?,
                ],
                all_platforms: true,
                keep_host: false,
                client: ClientOptions {
                    tls_verify: false,
                    ..ClientOptions::default()
                },
                jobs: crate::limits::DEFAULT_JOBS,
                with_referrers: false,
            },
            cache: dir.join("cache"),
            output: bundle_path.clone(),
            root_dir: None,
            compression: Compression::Zstd,
            level: 1,
            jobs: crate::limits::DEFAULT_JOBS,
            keep_going: false,
            mtime: 0,
            sign: None,
            split_size: None,
            since: None,
        };
        let s = bundle(&entries, &opts, Arc::new(NoProgress)).await?;
        say(format!(
            "3. bundled {} images ({} unique blobs, {}) into {} ({}) in {:.1}s",
            s.images,
            s.blobs,
            human_bytes(s.blob_bytes),
            bundle_path.display(),
            human_bytes(s.bundle_bytes),
            s.seconds
        ));
        drop(stop_src);
        src_task.await??;

        unpack(&bundle_path, &site)?;
        let (site_addr, stop_site, site_task) = serve_in_background(Store::open(&site)).await?;
        say(format!(
            "4. unpacked the bundle into {} and serve it at http://{site_addr}",
            site.display()
        ));
        let client = Client::new(
            &site_addr,
            &ClientOptions {
                tls_verify: false,
                ..ClientOptions::default()
            },
        )?;
        let mut mismatches = 0;
        for img in &corpus.images {
            let got = client.get_manifest(&img.repository, &img.tag).await?;
            let ok = got.digest() == &img.digest;
            mismatches += usize::from(!ok);
            outln!(
                "{}:{}\t{}\t{}",
                img.repository,
                img.tag,
                got.digest(),
                if ok {
                    "same digest as the source"
                } else {
                    "DIGEST DIFFERS"
                }
            );
        }
        drop(stop_site);
        site_task.await??;
        anyhow::Ok(mismatches)
    })?;
    let report = Store::open(&site).verify()?;
    for f in &report.faults {
        eprintln!("fault: {} ({})", f.what, f.path.display());
    }
    say(format!(
        "5. checked every tag at the site ({} digests differ) and re-hashed the site root: {} blobs ({}), {} links, {} faults",
        mismatches,
        report.blobs,
        human_bytes(report.bytes),
        report.links,
        report.faults.len()
    ));
    if mismatches > 0 || !report.faults.is_empty() {
        bail!(
            "demo failed: {mismatches} digest mismatches, {} faults",
            report.faults.len()
        );
    }
    match &a.dir {
        Some(d) => say(format!(
            "done in {:.1}s; files kept in {}",
            t0.elapsed().as_secs_f64(),
            d.display()
        )),
        None => say(format!(
            "done in {:.1}s (pass --dir DIR to keep the files)",
            t0.elapsed().as_secs_f64()
        )),
    }
    Ok(ExitCode::SUCCESS)
}

/// A temp directory removed on drop (the demo keeps no state unless asked).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let base = std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        Ok(TempDir(base))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
