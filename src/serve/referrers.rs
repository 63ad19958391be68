//! `GET /v2/<name>/referrers/<digest>` (OCI 1.1): the manifests of a
//! repository whose `subject` names a digest, as an OCI index, optionally
//! filtered by `artifactType`. Each repository's referrers are found once (every
//! manifest it links read once), kept in memory, and updated by pushes and
//! deletes, so a request never re-reads every manifest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;

use super::{API_VERSION, ApiResult, App, blocking, check_name, parse_digest, query_values};
use crate::digest::Digest;
use crate::manifest::RawManifest;
use crate::media_type::OCI_INDEX;
use crate::transport::Catalog;

/// One referrer as the listing shows it (the spec's descriptor fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Referrer {
    /// The subject it refers to (not serialised: the request names it).
    #[serde(skip)]
    subject: Digest,
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: std::collections::BTreeMap<String, String>,
}

impl Referrer {
    /// The listing entry of `m` when it has a subject; `None` for ordinary manifests.
    pub fn of(m: &RawManifest) -> Option<Referrer> {
        let parsed = m.parse().ok()?;
        let subject = parsed.subject()?.digest.clone();
        Some(Referrer {
            subject,
            media_type: m.media_type().to_string(),
            digest: m.digest().clone(),
            size: m.bytes().len() as u64,
            artifact_type: parsed.artifact_type().map(str::to_string),
            annotations: parsed.annotations().clone(),
        })
    }

    /// The digest of the subject it names, for the `OCI-Subject` header.
    pub fn subject(&self) -> &Digest {
        &self.subject
    }
}

/// What was found in one repository: its referrers, with the manifest digests they were read
/// from. Any writer of the root (this server's pushes and deletes, `unbundle link`, a second
/// server) changes that list, and the listing is then redone.
type Found = (Arc<Vec<Digest>>, Arc<Vec<Referrer>>);

/// The in-memory referrers of every repository asked about.
#[derive(Default)]
pub(super) struct Referrers {
    repos: Mutex<HashMap<String, Found>>,
}

impl Referrers {
    /// The cached referrers of `repo` when they were read from exactly `manifests`.
    fn cached(&self, repo: &str, manifests: &[Digest]) -> Option<Arc<Vec<Referrer>>> {
        let repos = self.repos.lock().unwrap();
        match repos.get(repo) {
            Some((listed, found)) if listed.as_slice() == manifests => Some(found.clone()),
            _ => None,
        }
    }

    /// Keeps a listing of `repo` read from `manifests`.
    fn keep(&self, repo: &str, manifests: Arc<Vec<Digest>>, found: Arc<Vec<Referrer>>) {
        let mut repos = self.repos.lock().unwrap();
        repos.insert(repo.to_string(), (manifests, found));
    }
}

/// Reads every manifest `repo` links and keeps those with a subject.
fn find<B: Catalog>(
    backend: &B,
    repo: &str,
    manifests: &[Digest],
) -> Result<Vec<Referrer>, crate::store::StoreError> {
    let mut out = Vec::new();
    for d in manifests {
        let d = d.clone();
        match backend.manifest(repo, &d) {
            Ok(Some(m)) => out.extend(Referrer::of(&m)),
            Ok(None) => {}
            // One unreadable manifest does not hide the others' referrers.
            Err(e) => tracing::warn!("referrers of {repo}: skipping manifest {d}: {e}"),
        }
    }
    Ok(out)
}

/// Answers a referrers request.
pub(super) async fn get<B: Catalog>(
    app: Arc<App<B>>,
    name: String,
    digest: String,
    query: &str,
) -> ApiResult {
    check_name(&name)?;
    let subject = parse_digest(&digest)?;
    let (b, n) = (app.backend.clone(), name.clone());
    let mut manifests = blocking(move || b.manifest_digests(&n)).await?;
    manifests.sort();
    let manifests = Arc::new(manifests);
    let all = match app.referrers.cached(&name, &manifests) {
        Some(found) => found,
        None => {
            let (b, n, m) = (app.backend.clone(), name.clone(), manifests.clone());
            let found = Arc::new(blocking(move || find(&*b, &n, &m)).await?);
            app.referrers.keep(&name, manifests, found.clone());
            found
        }
    };
    let wanted = query_values(query, "artifactType");
    let manifests: Vec<&Referrer> = all
        .iter()
        .filter(|r| r.subject == subject)
        .filter(|r| {
            wanted.is_empty() || r.artifact_type.as_ref().is_some_and(|t| wanted.contains(t))
        })
        .collect();
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, OCI_INDEX), API_VERSION],
        body.to_string(),
    )
        .into_response();
    if !wanted.is_empty() {
        resp.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
