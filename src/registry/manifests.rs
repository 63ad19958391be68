//! Manifest GET and HEAD: the bytes are kept as received and checked against the digest asked for.

use reqwest::{Method, header};

use super::client::{Client, RegistryError};
use super::routes::Route;
use crate::digest::Digest;
use crate::limits::MAX_MANIFEST_BYTES;
use crate::manifest::RawManifest;
use crate::media_type::ACCEPTED_MANIFESTS;

/// What a manifest HEAD tells without the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    /// `Docker-Content-Digest`.
    pub digest: Digest,
    /// `Content-Type`.
    pub media_type: Option<String>,
    /// `Content-Length`.
    pub size: Option<u64>,
}

fn accept() -> [(header::HeaderName, String); 1] {
    [(header::ACCEPT, ACCEPTED_MANIFESTS.join(", "))]
}

impl Client {
    /// Fetches a manifest by tag or digest; by digest (or when the registry sends
    /// `Docker-Content-Digest`) the bytes must hash to it.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<RawManifest, RegistryError> {
        let route = Route::Manifest {
            name: repo.to_string(),
            reference: reference.to_string(),
        };
        let held = self.send(Method::GET, &route, "", &accept()).await?;
        let url = held.resp.url().to_string();
        let content_type = held
            .resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let header_digest = held
            .resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok());
        let bytes = self
            .read_body(
                held.resp,
                MAX_MANIFEST_BYTES + 1,
                &format!("reading manifest {repo}:{reference}"),
            )
            .await?;
        let raw = RawManifest::new(bytes, content_type.as_deref()).map_err(|source| {
            RegistryError::Manifest {
                url: url.clone(),
                source,
            }
        })?;
        let expected = Digest::parse(reference).ok().or(header_digest);
        if let Some(expected) = expected
            && &expected != raw.digest()
        {
            return Err(RegistryError::DigestMismatch {
                url,
                expected,
                found: raw.digest().clone(),
            });
        }
        Ok(raw)
    }

    /// Asks for a manifest's digest without its body; `None` when the registry sends no digest header.
    pub async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<ManifestHead>, RegistryError> {
        let route = Route::Manifest {
            name: repo.to_string(),
            reference: reference.to_string(),
        };
        let held = self.send(Method::HEAD, &route, "", &accept()).await?;
        let h = held.resp.headers();
        let Some(digest) = h
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok())
        else {
            return Ok(None);
        };
        Ok(Some(ManifestHead {
            digest,
            media_type: h
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            size: h
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        }))
    }

    /// Lists the manifests that name `digest` as their subject (OCI 1.1
    /// referrers API), so a bundle can carry signatures and SBOMs; `None` when
    /// the registry has no such API (404, 405, 400, 501), so the caller falls back
    /// to cosign's tag scheme.
    pub async fn referrers(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<Vec<crate::manifest::Descriptor>>, RegistryError> {
        let route = Route::Referrers {
            name: repo.to_string(),
            digest: digest.to_string(),
        };
        let held = match self.send(Method::GET, &route, "", &[]).await {
            Ok(h) => h,
            Err(RegistryError::Status { status, .. })
                if matches!(status.as_u16(), 400 | 404 | 405 | 501) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let url = held.resp.url().to_string();
        let bytes = self
            .read_body(
                held.resp,
                MAX_MANIFEST_BYTES + 1,
                &format!("reading referrers of {repo}@{digest}"),
            )
            .await?;
        // A body that is not an index (an HTML page of a registry without the API) means no API.
        match serde_json::from_slice::<crate::manifest::ImageIndex>(&bytes) {
            Ok(index) => Ok(Some(index.manifests)),
            Err(e) => {
                tracing::debug!(
                    "{url}: not a referrers index ({e}); taking it as no referrers API"
                );
                Ok(None)
            }
        }
    }

    /// Deletes a manifest by digest (distribution refuses deletes by tag); every tag naming it goes too.
    pub async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<(), RegistryError> {
        let route = Route::Manifest {
            name: repo.to_string(),
            reference: digest.to_string(),
        };
        let permit = self.permit().await;
        let url = self.url(&route, "").await?;
        // containers/image asks for every action on the repository to delete.
        let scope = format!("repository:{repo}:*");
        self.send_url(Method::DELETE, url, &scope, &[], None, permit)
            .await?;
        Ok(())
    }

    /// Checks that the registry accepts this client's credentials: `GET /v2/`
    /// through the challenge (basic, or a bearer token fetched with them).
    pub async fn check_login(&self) -> Result<(), RegistryError> {
        self.send(Method::GET, &Route::Base, "", &[]).await?;
        Ok(())
    }
}
