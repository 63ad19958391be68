//! `ferry ls ROOT|BUNDLE`: what images a root or a bundle holds, in the same
//! columns for both: repository, tag, digest, platforms, size.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

use super::out::outln;
use super::{GlobalArgs, human_bytes};
use crate::digest::Digest;
use crate::image::{Selection, WalkOptions};
use crate::manifest::RawManifest;
use crate::store::Store;
use crate::transport::catalog::Catalog;

/// Flags of `ferry ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// The registry root or bundle file.
    root: PathBuf,
    /// One JSON object per image on stdout.
    #[arg(long)]
    json: bool,
}

/// One image, as both kinds of input list it.
struct Row {
    repository: String,
    tag: Option<String>,
    digest: Digest,
    media_type: String,
    platforms: Vec<String>,
    size: u64,
    /// Bundles only: the `##section` and the reference as written.
    section: Option<String>,
    source: Option<String>,
}

/// Lists a root's or a bundle's images; a missing path is "no such file".
pub fn run(_g: &GlobalArgs, a: LsArgs) -> anyhow::Result<ExitCode> {
    super::must_exist(&a.root)?;
    let rows = if a.root.is_file() {
        bundle_rows(&a)?
    } else {
        root_rows(&a)?
    };
    for r in &rows {
        let image = match &r.tag {
            Some(t) => format!("{}:{t}", r.repository),
            None => format!("{}@{}", r.repository, r.digest),
        };
        if a.json {
            outln!(
                "{}",
                serde_json::json!({
                    "image": image, "repository": r.repository, "tag": r.tag, "digest": r.digest,
                    "mediaType": r.media_type, "platforms": r.platforms, "size": r.size,
                    "section": r.section, "source": r.source,
                })
            );
        } else {
            outln!(
                "{}\t{}\t{}\t{}\t{}",
                r.repository,
                r.tag.as_deref().unwrap_or("-"),
                r.digest,
                platform_column(&r.platforms),
                human_bytes(r.size)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn root_rows(a: &LsArgs) -> anyhow::Result<Vec<Row>> {
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
            rows.push(row(repo.clone(), Some(tag), digest, &w, &|_| false));
        }
    }
    Ok(rows)
}

/// A row from an image's walk: platforms of the top index's children (absent ones marked), and
/// the bytes of its manifests, configs and layers.
/// `in_base` names the children a delta bundle leaves out (marked so, not absent).
fn row(
    repository: String,
    tag: Option<String>,
    digest: Digest,
    w: &crate::image::ImageWalk,
    in_base: &dyn Fn(&Digest) -> bool,
) -> Row {
    let platforms: Vec<String> = w
        .children
        .iter()
        .filter(|c| &c.parent == w.top.digest() && c.descriptor.platform.is_some())
        .map(|c| {
            if c.manifest.is_some() {
                c.platform_label()
            } else if in_base(&c.descriptor.digest) {
                format!("{} (in base)", c.platform_label())
            } else {
                format!("{} (absent)", c.platform_label())
            }
        })
        .collect();
    let size = w.manifests().map(|m| m.bytes().len() as u64).sum::<u64>()
        + w.blobs.iter().map(|b| b.size).sum::<u64>();
    Row {
        repository,
        tag,
        digest,
        media_type: w.top.media_type().to_string(),
        platforms,
        size,
        section: None,
        source: None,
    }
}

/// A bundle read in place: its structure once (no hashing), then each image's manifests from their frames.
fn bundle_rows(a: &LsArgs) -> anyhow::Result<Vec<Row>> {
    let bundle = crate::bundlefile::read::BundleFile::open_with(
        &a.root,
        &mut crate::bundlefile::read::StructureOnly,
    )?;
    let index = bundle.scan.index.clone();
    let catalog = crate::transport::bundle::Bundles(vec![bundle]);
    let mut rows = Vec::new();
    let left_out = crate::bundlefile::delta::left_out(&index);
    if let Some(s) = &index.since {
        eprintln!(
            "{}: a delta of {} ({}): {} blob(s) ({}) left out, to be found in its base",
            a.root.display(),
            s.name,
            s.index_digest,
            left_out.len(),
            human_bytes(left_out.iter().map(|l| l.size).sum())
        );
    }
    for img in &index.images {
        let reader = InRepo {
            catalog: &catalog,
            repo: &img.repository,
        };
        // An image the delta leaves out whole (unchanged since the base): its row from the index.
        if left_out.iter().any(|l| l.digest == img.digest) {
            let name = match &img.tag {
                Some(t) => format!("{}:{t}", img.repository),
                None => format!("{}@{}", img.repository, img.digest),
            };
            rows.push(Row {
                repository: img.repository.clone(),
                tag: img.tag.clone(),
                digest: img.digest.clone(),
                media_type: img.media_type.clone(),
                platforms: img
                    .platforms
                    .iter()
                    .filter(|p| p.present)
                    .map(|p| p.platform.clone())
                    .collect(),
                size: left_out
                    .iter()
                    .filter(|l| l.images.contains(&name))
                    .map(|l| l.size)
                    .sum(),
                section: img.section.clone(),
                source: Some(img.source.clone()),
            });
            continue;
        }
        let top = catalog
            .manifest(&img.repository, &img.digest)?
            .ok_or_else(|| {
                anyhow::anyhow!("{}: manifest {} missing", img.repository, img.digest)
            })?;
        let w = crate::image::walk_now(
            &reader,
            top,
            &WalkOptions {
                selection: Selection::All,
                allow_absent: true,
            },
        )
        .map_err(|e| anyhow::anyhow!("{}@{}: {e}", img.repository, img.digest))?;
        let mut r = row(
            img.repository.clone(),
            img.tag.clone(),
            img.digest.clone(),
            &w,
            &|d| left_out.iter().any(|l| &l.digest == d),
        );
        r.section = img.section.clone();
        r.source = Some(img.source.clone());
        rows.push(r);
    }
    for f in &index.failed {
        eprintln!("not in this bundle: {}: {}", f.image, f.cause);
    }
    Ok(rows)
}

/// One repository of a bundle, as the image walk reads manifests.
struct InRepo<'a> {
    catalog: &'a crate::transport::bundle::Bundles,
    repo: &'a str,
}

impl crate::image::Manifests for InRepo<'_> {
    type Error = crate::store::StoreError;
    fn manifest(
        &self,
        digest: &Digest,
    ) -> impl std::future::Future<Output = Result<Option<RawManifest>, Self::Error>> + Send {
        std::future::ready(self.catalog.manifest(self.repo, digest))
    }
}

/// The platforms column: a comma-separated list, or `-` for a single-platform image.
fn platform_column(platforms: &[String]) -> String {
    if platforms.is_empty() {
        "-".to_string()
    } else {
        platforms.join(",")
    }
}
