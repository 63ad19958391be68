//! `--with-referrers`: finds each planned manifest's referrers at its source
//! (cosign's `sha256-<hex>.sig|.att|.sbom` tags, and the OCI 1.1 referrers API
//! where the registry has it) and adds them to the plan as images of their own,
//! so their blobs are pulled and verified like any image's. A tag-scheme
//! referrer keeps its tag in the bundle; an API referrer is kept by digest (a
//! revision link, no tag). Referrers come after every image in the plan, so a
//! push writes them after their subjects.

use std::collections::BTreeSet;

use futures_util::{StreamExt, stream};

use super::{
    Clients, Failure, Plan, PlanOptions, PlannedImage, SeenManifests, Shared, Store, Walks,
    resolve_one,
};
use crate::digest::Digest;
use crate::limits::REFERRER_DEPTH;
use crate::reference::{ListEntry, Reference};
use crate::registry::{Client, RegistryError};

/// The tag suffixes cosign gives a subject's signatures, attestations and SBOMs.
const COSIGN_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];

/// Referrers of one manifest: `(":tag" or "@digest", digest)`.
type Found = Vec<(String, Digest)>;

/// The list entry a referrer is resolved as: the subject's host and repository,
/// with `target` (`:tag` or `@digest`), at the subject's place in the list.
fn derived(img: &PlannedImage, target: &str) -> Option<ListEntry> {
    derived_from(&img.source, &img.location, img.section.clone(), target)
}

/// [`derived`] from the subject's reference as written, its `file:line` and section.
fn derived_from(
    source: &str,
    location: &str,
    section: Option<String>,
    target: &str,
) -> Option<ListEntry> {
    let r = Reference::parse(source).ok()?;
    let base = match r.host() {
        Some(h) => format!("{h}/{}", r.repository()),
        None => r.repository().to_string(),
    };
    let reference = Reference::parse(&format!("{base}{target}")).ok()?;
    let (file, line) = match location.rsplit_once(':') {
        Some((f, l)) => (f.to_string(), l.parse().unwrap_or(0)),
        None => (location.to_string(), 0),
    };
    Some(ListEntry {
        file,
        line,
        section,
        reference,
    })
}

/// The referrers of `digest` in `repo`: `(":tag" or "@digest", digest)`, tag-scheme ones first.
async fn find(client: &Client, repo: &str, digest: &Digest) -> Result<Found, RegistryError> {
    let mut out: Found = Vec::new();
    for suffix in COSIGN_SUFFIXES {
        let tag = format!("{}-{}.{suffix}", digest.algorithm().name(), digest.hex());
        match client.head_manifest(repo, &tag).await {
            Ok(Some(h)) => out.push((format!(":{tag}"), h.digest)),
            // No digest header: the body tells.
            Ok(None) => {
                let m = client.get_manifest(repo, &tag).await?;
                out.push((format!(":{tag}"), m.digest().clone()));
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    for d in client.referrers(repo, digest).await?.unwrap_or_default() {
        if !out.iter().any(|(_, x)| x == &d.digest) {
            out.push((format!("@{}", d.digest), d.digest));
        }
    }
    Ok(out)
}

/// Adds the referrers of every planned manifest (and theirs, to [`REFERRER_DEPTH`]) to `plan`;
/// one that cannot be found or resolved is a failure naming it and its subject.
pub(super) async fn carry(
    plan: &mut Plan,
    opts: &PlanOptions,
    seen: &SeenManifests,
    walks: &Walks,
    shared: &Shared,
    clients: &Clients,
    cache: &Store,
) {
    let mut planned: BTreeSet<(std::sync::Arc<str>, Digest)> = plan
        .images
        .iter()
        .flat_map(|i| {
            i.manifests()
                .map(|m| (i.repository.clone(), m.digest().clone()))
        })
        .collect();
    let mut frontier: Vec<usize> = (0..plan.images.len()).collect();
    for _ in 0..REFERRER_DEPTH {
        let subjects: Vec<(usize, Digest)> = frontier
            .iter()
            .flat_map(|&i| {
                plan.images[i]
                    .manifests()
                    .map(move |m| (i, m.digest().clone()))
            })
            .collect();
        let images = &plan.images;
        let mut found: Vec<(usize, Digest, Result<Found, String>)> = stream::iter(subjects)
            .map(|(i, d)| async move {
                let img = &images[i];
                let r = match clients.get(&img.registry, &opts.client) {
                    Ok(c) => find(&c, &img.remote_repository, &d)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                (i, d, r)
            })
            .buffer_unordered(opts.jobs.max(1))
            .collect()
            .await;
        found.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut entries: Vec<(usize, ListEntry)> = Vec::new();
        for (i, d, r) in found {
            let img = &plan.images[i];
            match r {
                Ok(list) => {
                    for (target, rd) in list {
                        if planned.insert((img.repository.clone(), rd))
                            && let Some(e) = derived(img, &target)
                        {
                            entries.push((i, e));
                        }
                    }
                }
                Err(cause) => plan.failures.push(Failure {
                    image: format!("referrers of {}@{d} ({})", img.source, img.location),
                    location: Some(img.location.clone()),
                    cause,
                }),
            }
        }
        let resolved: Vec<(usize, ListEntry, Result<PlannedImage, String>)> = stream::iter(entries)
            .map(|(i, e)| async move {
                let r = resolve_one(&e, opts, seen, walks, shared, clients, cache, false).await;
                (i, e, r)
            })
            .buffered(opts.jobs.max(1))
            .collect()
            .await;
        frontier.clear();
        for (i, e, r) in resolved {
            match r {
                Ok(img) => {
                    tracing::info!("referrer {} of {}", img.source, plan.images[i].source);
                    frontier.push(plan.images.len());
                    plan.add(img);
                }
                Err(cause) => plan.failures.push(Failure {
                    image: format!(
                        "{} (referrer of {}, {})",
                        e.reference, plan.images[i].source, plan.images[i].location
                    ),
                    location: Some(plan.images[i].location.clone()),
                    cause,
                }),
            }
        }
        if frontier.is_empty() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_referrer_keeps_the_subjects_host_repository_and_place() {
        let hex = "a".repeat(64);
        let cases = [
            // (subject as written, target, referrer as resolved)
            (
                "quay.io:5000/x/y:v1",
                format!(":sha256-{hex}.sig"),
                format!("quay.io:5000/x/y:sha256-{hex}.sig"),
            ),
            (
                "busybox",
                format!("@sha256:{hex}"),
                format!("busybox@sha256:{hex}"),
            ),
            (
                &*format!("h.io/app@sha256:{hex}"),
                ":sha256-b.att".to_string(),
                "h.io/app:sha256-b.att".to_string(),
            ),
        ];
        for (source, target, want) in cases {
            let e = derived_from(source, "list.txt:7", Some("s".into()), &target).unwrap();
            assert_eq!(e.reference.to_string(), want);
            assert_eq!(
                (e.file.as_str(), e.line, e.section.as_deref()),
                ("list.txt", 7, Some("s"))
            );
        }
        assert!(derived_from("x", "l:1", None, ":bad tag").is_none());
    }
}
