//! `ferry demo`: shows the job end to end with no network. Until `bundle`
//! lands it does the serving half: generate the fixture images into a root,
//! serve it on loopback, pull every tag back through the registry API into a
//! second root, and check every digest and every byte.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};

use super::{GlobalArgs, human_bytes};
use crate::copy::pull_to_store;
use crate::fixtures::{Preset, generate};
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

pub fn run(g: &GlobalArgs, a: DemoArgs) -> anyhow::Result<ExitCode> {
    let temp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempdir()?;
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
    say(format!(
        "1. generated {} tags ({} unique, {} referenced) into {} in {:.1}s",
        corpus.images.len(),
        human_bytes(corpus.unique_bytes),
        human_bytes(corpus.referenced_bytes),
        source.root().display(),
        t0.elapsed().as_secs_f64()
    ));
    let pulled = Store::create(dir.join("pulled-root"))?.with_durable(false);
    let rt = super::runtime()?;
    let mismatches = rt.block_on(async {
        let (listener, addr) = crate::serve::bind("127.0.0.1:0").await?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::serve::run(source.clone(), listener, async {
            let _ = stop_rx.await;
        }));
        say(format!(
            "2. serving {} at http://{addr}",
            source.root().display()
        ));
        let client = Client::new(
            &addr.to_string(),
            &ClientOptions {
                tls_verify: false,
                ..ClientOptions::default()
            },
        )?;
        let t1 = Instant::now();
        let mut mismatches = 0;
        for img in &corpus.images {
            let (digest, _) = pull_to_store(
                &client,
                &pulled,
                &img.repository,
                &img.tag,
                &img.repository,
                Some(&img.tag),
                8,
            )
            .await?;
            let ok = digest == img.digest;
            mismatches += usize::from(!ok);
            if !g.quiet {
                println!(
                    "{}:{}\t{digest}\t{}",
                    img.repository,
                    img.tag,
                    if ok { "ok" } else { "DIGEST DIFFERS" }
                );
            }
        }
        say(format!(
            "3. pulled every tag through the registry API into {} in {:.1}s",
            pulled.root().display(),
            t1.elapsed().as_secs_f64()
        ));
        let _ = stop_tx.send(());
        server.await??;
        anyhow::Ok(mismatches)
    })?;
    let report = pulled.verify()?;
    for f in &report.faults {
        eprintln!("fault: {} ({})", f.what, f.path.display());
    }
    say(format!(
        "4. verified the pulled root: {} blobs ({}) re-hashed, {} links, {} faults",
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
            "done in {:.1}s (pass --dir DIR to keep the roots)",
            t0.elapsed().as_secs_f64()
        )),
    }
    Ok(ExitCode::SUCCESS)
}

/// A temp directory removed on drop (the demo keeps no state unless asked).
struct TempDir(PathBuf);

fn tempdir() -> anyhow::Result<TempDir> {
    let base = std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id()));
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    Ok(TempDir(base))
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
