//! The one URL table of the distribution API, used to parse requests in
//! `serve` and to build request paths in the client.

use crate::digest::Digest;

/// One endpoint of the distribution API, with its path parameters (not yet validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: version check.
    Base,
    /// `/v2/_catalog`.
    Catalog,
    /// `/v2/<name>/tags/list`.
    Tags {
        /// Repository.
        name: String,
    },
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// Repository.
        name: String,
        /// Tag or digest.
        reference: String,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        /// Repository.
        name: String,
        /// Digest string.
        digest: String,
    },
    /// `/v2/<name>/blobs/uploads/`.
    Uploads {
        /// Repository.
        name: String,
    },
    /// `/v2/<name>/blobs/uploads/<id>`.
    Upload {
        /// Repository.
        name: String,
        /// Upload session id.
        id: String,
    },
    /// `/v2/<name>/referrers/<digest>` (OCI 1.1).
    Referrers {
        /// Repository.
        name: String,
        /// The subject's digest string.
        digest: String,
    },
}

impl Route {
    /// Matches a request path; `None` for paths outside the API.
    pub fn parse(path: &str) -> Option<Route> {
        let rest = path.strip_prefix("/v2")?;
        if rest.is_empty() || rest == "/" {
            return Some(Route::Base);
        }
        let rest = rest.strip_prefix('/')?;
        if rest == "_catalog" {
            return Some(Route::Catalog);
        }
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Some(Route::Tags {
                name: name.to_string(),
            });
        }
        if let Some(name) = rest
            .strip_suffix("/blobs/uploads")
            .or_else(|| rest.strip_suffix("/blobs/uploads/"))
        {
            return Some(Route::Uploads {
                name: name.to_string(),
            });
        }
        if let Some((name, id)) = rest.rsplit_once("/blobs/uploads/") {
            return Some(Route::Upload {
                name: name.to_string(),
                id: id.to_string(),
            });
        }
        if let Some((name, digest)) = rest.rsplit_once("/referrers/")
            && !digest.contains('/')
        {
            return Some(Route::Referrers {
                name: name.to_string(),
                digest: digest.to_string(),
            });
        }
        if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
            return Some(Route::Manifest {
                name: name.to_string(),
                reference: reference.to_string(),
            });
        }
        if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
            return Some(Route::Blob {
                name: name.to_string(),
                digest: digest.to_string(),
            });
        }
        None
    }

    /// The request path of this endpoint.
    pub fn path(&self) -> String {
        match self {
            Route::Base => "/v2/".to_string(),
            Route::Catalog => "/v2/_catalog".to_string(),
            Route::Tags { name } => format!("/v2/{name}/tags/list"),
            Route::Manifest { name, reference } => format!("/v2/{name}/manifests/{reference}"),
            Route::Blob { name, digest } => format!("/v2/{name}/blobs/{digest}"),
            Route::Uploads { name } => format!("/v2/{name}/blobs/uploads/"),
            Route::Upload { name, id } => format!("/v2/{name}/blobs/uploads/{id}"),
            Route::Referrers { name, digest } => format!("/v2/{name}/referrers/{digest}"),
        }
    }

    /// The manifest endpoint for a digest.
    pub fn manifest_by_digest(name: &str, digest: &Digest) -> Route {
        Route::Manifest {
            name: name.to_string(),
            reference: digest.to_string(),
        }
    }

    /// The blob endpoint for a digest.
    pub fn blob(name: &str, digest: &Digest) -> Route {
        Route::Blob {
            name: name.to_string(),
            digest: digest.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_table() {
        let table = [
            ("/v2/", Route::Base),
            ("/v2/_catalog", Route::Catalog),
            ("/v2/a/b/tags/list", Route::Tags { name: "a/b".into() }),
            (
                "/v2/a/manifests/v1",
                Route::Manifest {
                    name: "a".into(),
                    reference: "v1".into(),
                },
            ),
            (
                "/v2/a/blobs/sha256:x",
                Route::Blob {
                    name: "a".into(),
                    digest: "sha256:x".into(),
                },
            ),
            (
                "/v2/a/b/blobs/uploads/",
                Route::Uploads { name: "a/b".into() },
            ),
            (
                "/v2/a/blobs/uploads/123",
                Route::Upload {
                    name: "a".into(),
                    id: "123".into(),
                },
            ),
            (
                "/v2/a/b/referrers/sha256:x",
                Route::Referrers {
                    name: "a/b".into(),
                    digest: "sha256:x".into(),
                },
            ),
            (
                "/v2/a/referrers/manifests/t",
                Route::Manifest {
                    name: "a/referrers".into(),
                    reference: "t".into(),
                },
            ),
            // A repository may itself be called "manifests" or "blobs".
            (
                "/v2/x/manifests/manifests/t",
                Route::Manifest {
                    name: "x/manifests".into(),
                    reference: "t".into(),
                },
            ),
        ];
        for (path, route) in table {
            assert_eq!(Route::parse(path).as_ref(), Some(&route), "{path}");
            assert_eq!(route.path(), path);
        }
        assert_eq!(Route::parse("/v2"), Some(Route::Base));
        assert_eq!(Route::parse("/v3/"), None);
        assert_eq!(Route::parse("/v2/a/unknown"), None);
    }
}
