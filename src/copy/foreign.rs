//! Where the bytes of a layer that lists URLs (a foreign, non-distributable layer) come from
//! when a copy must move them (into `dir:`, `docker-archive:`, the daemon): one step for every
//! source. A registry is asked after the URLs, as containers/image asks it; any other source
//! (a root or a bundle, which never carry such layers; an OCI layout or a directory, which may)
//! is read first, and the URLs only when it lacks the bytes. The URLs are fetched anonymously
//! by a client of their own host ([`crate::transport::registry::external_blob`]): the source's
//! credentials never reach them. Only `http(s)` URLs are fetched; a layer with none is the
//! source's to give.

use crate::blob::BlobBody;
use crate::manifest::Descriptor;
use crate::transport::{Source, TransportError, registry::external_blob};

/// The bytes of `desc` for a copy from `source`; an error says what each place answered.
pub async fn open_blob<S: Source>(source: &S, desc: &Descriptor) -> Result<BlobBody, String> {
    let fetchable = desc
        .urls
        .iter()
        .any(|u| u.starts_with("http://") || u.starts_with("https://"));
    if !fetchable {
        return source.blob(desc).await.map_err(|e| e.to_string());
    }
    if source.foreign_urls_first() {
        let urls = match external_blob(desc).await {
            Ok(body) => return Ok(body),
            Err(e) => e,
        };
        tracing::info!(
            "{}: {urls}; reading the layer from the source",
            source.name()
        );
        return source
            .blob(desc)
            .await
            .map_err(|e| format!("{urls}; and the source: {e}"));
    }
    let held = match source.blob(desc).await {
        Ok(body) => return Ok(body),
        Err(e @ TransportError::NotFound(_)) => e,
        Err(e) => return Err(e.to_string()),
    };
    tracing::info!(
        "{}: {held}; fetching the layer from its URLs",
        source.name()
    );
    external_blob(desc)
        .await
        .map_err(|urls| format!("{held}; and {urls}"))
}
