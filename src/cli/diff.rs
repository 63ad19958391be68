//! `ferry diff A B`: what B changes against A (each a bundle or a root, any
//! mix): images added, removed, retagged, platforms changed, and the blobs and
//! bytes B holds that A does not. Both sides are listed by `ls`'s code, over
//! the one image walk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use super::ls::{Row, rows};
use super::out::outln;
use super::{GlobalArgs, human_bytes};
use crate::digest::Digest;

/// Flags of `ferry diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The old bundle (or first part NAME.000) or registry root.
    a: PathBuf,
    /// The new bundle (or first part NAME.000) or registry root.
    b: PathBuf,
    /// One JSON document on stdout (keys: added, removed, retagged, platformsChanged, blobsAdded, bytesAdded).
    #[arg(long)]
    json: bool,
}

/// An image on one side only.
#[derive(Debug, serde::Serialize)]
struct Side {
    image: String,
    repository: String,
    tag: Option<String>,
    digest: Digest,
}

/// A tag on both sides, at another digest in B.
#[derive(Debug, serde::Serialize)]
struct Retag {
    image: String,
    old: Digest,
    new: Digest,
}

/// A tag on both sides whose platform list differs.
#[derive(Debug, serde::Serialize)]
struct Platforms {
    image: String,
    old: Vec<String>,
    new: Vec<String>,
}

/// The whole comparison, in the order `--json` prints it.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Diff {
    added: Vec<Side>,
    removed: Vec<Side>,
    retagged: Vec<Retag>,
    platforms_changed: Vec<Platforms>,
    blobs_added: usize,
    bytes_added: u64,
}

/// Compares two listings, keyed by `repo:tag` (`repo@digest` for untagged images).
fn diff(a: &[Row], b: &[Row]) -> Diff {
    let by_image = |rows: &[Row]| -> BTreeMap<String, usize> {
        rows.iter()
            .enumerate()
            .map(|(i, r)| (r.image(), i))
            .collect()
    };
    let (ia, ib) = (by_image(a), by_image(b));
    let side = |r: &Row| Side {
        image: r.image(),
        repository: r.repository.clone(),
        tag: r.tag.clone(),
        digest: r.digest.clone(),
    };
    let mut d = Diff {
        added: ib
            .iter()
            .filter(|(k, _)| !ia.contains_key(*k))
            .map(|(_, &i)| side(&b[i]))
            .collect(),
        removed: ia
            .iter()
            .filter(|(k, _)| !ib.contains_key(*k))
            .map(|(_, &i)| side(&a[i]))
            .collect(),
        retagged: Vec::new(),
        platforms_changed: Vec::new(),
        blobs_added: 0,
        bytes_added: 0,
    };
    for (k, &i) in &ia {
        let Some(&j) = ib.get(k) else { continue };
        let (old, new) = (&a[i], &b[j]);
        if old.digest != new.digest {
            d.retagged.push(Retag {
                image: k.clone(),
                old: old.digest.clone(),
                new: new.digest.clone(),
            });
        }
        let set = |p: &[String]| p.iter().cloned().collect::<BTreeSet<_>>();
        if set(&old.platforms) != set(&new.platforms) {
            d.platforms_changed.push(Platforms {
                image: k.clone(),
                old: old.platforms.clone(),
                new: new.platforms.clone(),
            });
        }
    }
    let in_a: BTreeSet<&Digest> = a
        .iter()
        .flat_map(|r| r.blobs.iter().map(|(d, _)| d))
        .collect();
    let new_blobs: BTreeMap<&Digest, u64> = b
        .iter()
        .flat_map(|r| r.blobs.iter())
        .filter(|(d, _)| !in_a.contains(d))
        .map(|(d, s)| (d, *s))
        .collect();
    d.blobs_added = new_blobs.len();
    d.bytes_added = new_blobs.values().sum();
    d
}

/// Runs `ferry diff`; exit 0 whether or not the two differ (the output says how).
pub fn run(_g: &GlobalArgs, a: DiffArgs) -> anyhow::Result<ExitCode> {
    let d = diff(&rows(&a.a)?, &rows(&a.b)?);
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(ExitCode::SUCCESS);
    }
    for s in &d.added {
        outln!("added\t{}\t{}", s.image, s.digest);
    }
    for s in &d.removed {
        outln!("removed\t{}\t{}", s.image, s.digest);
    }
    for r in &d.retagged {
        outln!("retagged\t{}\t{} -> {}", r.image, r.old, r.new);
    }
    let list = |p: &[String]| {
        if p.is_empty() {
            "-".to_string()
        } else {
            p.join(",")
        }
    };
    for p in &d.platforms_changed {
        outln!(
            "platforms\t{}\t{} -> {}",
            p.image,
            list(&p.old),
            list(&p.new)
        );
    }
    outln!(
        "{} adds {} blobs ({}) over {}",
        a.b.display(),
        d.blobs_added,
        human_bytes(d.bytes_added),
        a.a.display()
    );
    Ok(ExitCode::SUCCESS)
}
