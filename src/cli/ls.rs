//! `ferry ls ROOT|BUNDLE`: what images a root or a bundle holds, in the same
//! columns for both: repository, tag, digest, platforms, size.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

use super::out::outln;
use super::{GlobalArgs, human_bytes};
use crate::digest::Digest;
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

/// One image, as both kinds of input list it (`ls` prints these; `diff` compares them).
pub(super) struct Row {
    pub(super) repository: String,
    pub(super) tag: Option<String>,
    pub(super) digest: Digest,
    media_type: String,
    pub(super) platforms: Vec<String>,
    size: u64,
    /// Bundles only: the `##section` and the reference as written.
    section: Option<String>,
    source: Option<String>,
    /// Every blob file the image needs (manifests, configs, layers) with its size.
    pub(super) blobs: Vec<(Digest, u64)>,
}

impl Row {
    /// `repo:tag`, or `repo@digest` for an untagged image.
    pub(super) fn image(&self) -> String {
        crate::bundlefile::format::image_name(&self.repository, self.tag.as_deref(), &self.digest)
    }
}

/// The images of a root directory or a bundle file, walked the same way for both.
pub(super) fn rows(path: &std::path::Path) -> anyhow::Result<Vec<Row>> {
    super::must_exist(path)?;
    if path.is_file() {
        bundle_rows(path)
    } else {
        root_rows(path)
    }
}

/// Lists a root's or a bundle's images; a missing path is "no such file".
pub fn run(g: &GlobalArgs, a: LsArgs) -> anyhow::Result<ExitCode> {
    let rows = if crate::store::s3::is_s3(&a.root) {
        super::s3::rows(g, &a.root)?
    } else {
        rows(&a.root)?
    };
    for r in &rows {
        let image = r.image();
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

fn root_rows(root: &std::path::Path) -> anyhow::Result<Vec<Row>> {
    let store = Store::open(root);
    if !store.exists() {
        bail!(
            "{}: not a registry root (no docker/registry/v2 directory)",
            root.display()
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
pub(super) fn row(
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
    let blobs: Vec<(Digest, u64)> = w
        .manifests()
        .map(|m| (m.digest().clone(), m.bytes().len() as u64))
        .chain(w.blobs.iter().map(|b| (b.digest.clone(), b.size)))
        .collect();
    let size = blobs.iter().map(|(_, s)| s).sum();
    Row {
        repository,
        tag,
        digest,
        media_type: w.top.media_type().to_string(),
        platforms,
        size,
        section: None,
        source: None,
        blobs,
    }
}

/// A bundle read in place: its structure once (no hashing), then each image's manifests from their frames.
fn bundle_rows(path: &std::path::Path) -> anyhow::Result<Vec<Row>> {
    let bundle = crate::bundlefile::read::BundleFile::open_with(
        path,
        &mut crate::bundlefile::read::StructureOnly,
    )?;
    let index = bundle.scan.index.clone();
    let catalog = crate::transport::bundle::Bundles(vec![bundle]);
    let mut rows = Vec::new();
    let left_out = crate::bundlefile::delta::left_out(&index);
    if let Some(s) = &index.since {
        eprintln!(
            "{}: a delta of {} ({}): {} blob(s) ({}) left out, to be found in its base",
            path.display(),
            s.name,
            s.index_digest,
            left_out.len(),
            human_bytes(left_out.iter().map(|l| l.size).sum())
        );
    }
    for img in &index.images {
        // An image the delta leaves out whole (unchanged since the base): its row from the index.
        if left_out.iter().any(|l| l.digest == img.digest) {
            let name = crate::bundlefile::format::image_name(
                &img.repository,
                img.tag.as_deref(),
                &img.digest,
            );
            let blobs: Vec<(Digest, u64)> = left_out
                .iter()
                .filter(|l| l.images.contains(&name))
                .map(|l| (l.digest.clone(), l.size))
                .collect();
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
                size: blobs.iter().map(|(_, s)| s).sum(),
                section: img.section.clone(),
                source: Some(img.source.clone()),
                blobs,
            });
            continue;
        }
        let w = catalog.walk_image(&img.repository, &img.digest)?;
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

/// The platforms column: a comma-separated list, or `-` for a single-platform image.
fn platform_column(platforms: &[String]) -> String {
    if platforms.is_empty() {
        "-".to_string()
    } else {
        platforms.join(",")
    }
}
