//! `ferry ls ROOT`: what images a root holds.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

use super::{GlobalArgs, human_bytes};
use crate::store::Store;

/// Flags of `ferry ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// The registry root or bundle file.
    root: PathBuf,
    /// One JSON object per image on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(_g: &GlobalArgs, a: LsArgs) -> anyhow::Result<ExitCode> {
    if a.root.is_file() {
        return ls_bundle(&a);
    }
    let store = Store::open(&a.root);
    if !store.exists() {
        bail!(
            "{}: not a registry root (no docker/registry/v2 directory)",
            a.root.display()
        );
    }
    let mut rows = Vec::new();
    for repo in store.repositories()? {
        for tag in store.tags(&repo)? {
            let Some(digest) = store.resolve_tag(&repo, &tag)? else {
                continue;
            };
            let w = store.walk(&digest)?;
            // Platforms of the top index's children; absent ones were left out at bundle time.
            let platforms: Vec<String> = w
                .children
                .iter()
                .filter(|c| &c.parent == w.top.digest() && c.descriptor.platform.is_some())
                .map(|c| {
                    if c.manifest.is_some() {
                        c.platform_label()
                    } else {
                        format!("{} (absent)", c.platform_label())
                    }
                })
                .collect();
            let size = w.manifests().map(|m| m.bytes().len() as u64).sum::<u64>()
                + w.blobs.iter().map(|b| b.size).sum::<u64>();
            let raw = &w.top;
            rows.push((
                format!("{repo}:{tag}"),
                digest,
                raw.media_type().to_string(),
                platforms,
                size,
            ));
        }
    }
    for (name, digest, media_type, platforms, size) in &rows {
        if a.json {
            println!(
                "{}",
                serde_json::json!({ "image": name, "digest": digest, "mediaType": media_type, "platforms": platforms, "size": size })
            );
        } else {
            let p = platform_column(platforms);
            println!(
                "{name}\t{digest}\t{}\t{p}\t{}",
                short_type(media_type),
                human_bytes(*size)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn short_type(media_type: &str) -> &'static str {
    use crate::media_type as mt;
    match media_type {
        mt::DOCKER_MANIFEST => "docker",
        mt::DOCKER_MANIFEST_LIST => "docker-list",
        mt::OCI_MANIFEST => "oci",
        mt::OCI_INDEX => "oci-index",
        _ => "other",
    }
}

/// A bundle's images come from its index (the first entry: nothing else is read).
fn ls_bundle(a: &LsArgs) -> anyhow::Result<ExitCode> {
    let index = crate::bundlefile::read_index(&a.root)?;
    for img in &index.images {
        let name = match &img.tag {
            Some(t) => format!("{}:{t}", img.repository),
            None => format!("{}@{}", img.repository, img.digest),
        };
        let platforms: Vec<String> = img
            .platforms
            .iter()
            .map(|p| {
                if p.present {
                    p.platform.clone()
                } else {
                    format!("{} (absent)", p.platform)
                }
            })
            .collect();
        if a.json {
            println!(
                "{}",
                serde_json::json!({ "image": name, "digest": img.digest, "mediaType": img.media_type, "platforms": platforms, "section": img.section, "source": img.source })
            );
        } else {
            let p = platform_column(&platforms);
            println!(
                "{name}\t{}\t{}\t{p}\t{}",
                img.digest,
                short_type(&img.media_type),
                img.source
            );
        }
    }
    for f in &index.failed {
        eprintln!("not in this bundle: {}: {}", f.image, f.cause);
    }
    Ok(ExitCode::SUCCESS)
}

/// The platforms column: a comma-separated list, or `-` for a single-platform image.
fn platform_column(platforms: &[String]) -> String {
    if platforms.is_empty() {
        "-".to_string()
    } else {
        platforms.join(",")
    }
}
