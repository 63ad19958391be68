//! The write half of `serve` (`--allow-push`, `--allow-delete`): blob uploads
//! (monolithic, chunked, cross-repository mount), manifest PUT by tag or
//! digest, and deletes of manifests, tags and blobs. Everything is written
//! through the store: blobs by its verified atomic ingest, links and tags by
//! its link functions; no path is formed here. A request is checked in full
//! (names, digests, that every blob a manifest needs is in the repository)
//! before the first byte is written. Blobs and their layer links are put in
//! place without fsync; a manifest PUT syncs the root once before the manifest
//! becomes visible (see [`super::uploads::Unsynced`]).

use std::sync::Arc;

use axum::body::{Body, HttpBody as _};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::referrers::Referrer;
use super::uploads::{Session, Taken};
use super::{
    API_VERSION, ApiError, ApiResult, App, blocking, check_name, header_value, parse_digest,
    query_values,
};
use crate::blob::{ByteStream, StreamWriteError};
use crate::digest::{Digest, VerifyError};
use crate::limits::{MAX_MANIFEST_BYTES, echo};
use crate::manifest::{Manifest, RawManifest};
use crate::media_type::is_distributable;
use crate::reference::validate_tag;
use crate::registry::errcode::ErrorCode;
use crate::registry::routes::Route;
use crate::store::{Store, StoreError};
use crate::transport::Catalog;

/// Whether this server takes `method` on `route`: a write its options allow, on a root. Anything else is
/// refused (405 UNSUPPORTED) before the body is read, and nothing is written.
pub(super) fn accepts<B: Catalog>(app: &App<B>, method: &Method, route: &Route) -> bool {
    if app.backend.writable().is_none() {
        return false;
    }
    match (method.as_str(), route) {
        ("POST", Route::Uploads { .. })
        | ("PATCH" | "PUT" | "DELETE", Route::Upload { .. })
        | ("PUT", Route::Manifest { .. }) => app.allow_push,
        ("DELETE", Route::Manifest { .. } | Route::Blob { .. }) => app.allow_delete,
        _ => false,
    }
}

/// Answers a write that [`accepts`] said this server takes.
pub(super) async fn dispatch<B: Catalog>(
    app: Arc<App<B>>,
    method: &Method,
    route: Route,
    query: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    let Some(store) = app.backend.writable().cloned() else {
        return Err(ApiError::MethodNotAllowed);
    };
    match (method.as_str(), route) {
        ("POST", Route::Uploads { name }) => {
            start_upload(app, store, name, query, headers, body).await
        }
        ("PATCH", Route::Upload { name, id }) => patch_upload(app, name, id, headers, body).await,
        ("PUT", Route::Upload { name, id }) => {
            finish_upload(app, store, name, id, query, headers, body).await
        }
        ("DELETE", Route::Upload { name, id }) => {
            check_name(&name)?;
            if !app.uploads.end(&id, &name) {
                return Err(upload_unknown(&id));
            }
            Ok((StatusCode::NO_CONTENT, [API_VERSION]).into_response())
        }
        ("PUT", Route::Manifest { name, reference }) => {
            put_manifest(app, store, name, reference, headers, body).await
        }
        ("DELETE", Route::Manifest { name, reference }) => {
            delete_manifest(store, name, reference).await
        }
        ("DELETE", Route::Blob { name, digest }) => {
            check_name(&name)?;
            let d = parse_digest(&digest)?;
            let (n, dd) = (name.clone(), d.clone());
            if !blocking(move || store.unlink_layer(&n, &dd)).await? {
                return Err(code(
                    ErrorCode::BlobUnknown,
                    json!({ "digest": d.to_string() }),
                ));
            }
            Ok(accepted())
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

use serde_json::json;

fn code(c: ErrorCode, detail: serde_json::Value) -> ApiError {
    ApiError::Code(c, detail)
}

fn upload_unknown(id: &str) -> ApiError {
    code(ErrorCode::BlobUploadUnknown, json!({ "uuid": echo(id) }))
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, [API_VERSION]).into_response()
}

/// The `Range` an upload reports: the bytes received, `0-0` when none (as distribution says).
fn range_of(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

/// 202 (or 204 for a status GET) for an upload in progress: where to send the next chunk and what arrived.
fn upload_state(status: StatusCode, name: &str, id: &str, offset: u64) -> Response {
    let mut h = HeaderMap::new();
    let loc = Route::Upload {
        name: name.to_string(),
        id: id.to_string(),
    }
    .path();
    h.insert(header::LOCATION, header_value(&loc));
    h.insert(header::RANGE, header_value(&range_of(offset)));
    h.insert("docker-upload-uuid", header_value(id));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    h.insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    (status, h).into_response()
}

/// 201 for a blob now in the repository.
fn blob_created(name: &str, digest: &Digest) -> Response {
    let mut h = HeaderMap::new();
    h.insert(
        header::LOCATION,
        header_value(&Route::blob(name, digest).path()),
    );
    h.insert("docker-content-digest", header_value(&digest.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    h.insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    (StatusCode::CREATED, h).into_response()
}

/// 416 for a chunk that does not start where the upload is, with the upload's current `Range`.
fn out_of_order(name: &str, id: &str, offset: u64) -> ApiError {
    let mut resp = code(
        ErrorCode::RangeInvalid,
        json!({ "uuid": echo(id), "received": offset }),
    )
    .into_response();
    let h = resp.headers_mut();
    h.insert(header::RANGE, header_value(&range_of(offset)));
    h.insert("docker-upload-uuid", header_value(id));
    h.insert(
        header::LOCATION,
        header_value(
            &Route::Upload {
                name: name.to_string(),
                id: id.to_string(),
            }
            .path(),
        ),
    );
    ApiError::Ready(Box::new(resp))
}

/// The one `digest` query parameter, validated.
fn digest_param(query: &str) -> Result<Option<Digest>, ApiError> {
    query_values(query, "digest")
        .first()
        .map(|d| parse_digest(d))
        .transpose()
}

/// A request body as the blob module's byte stream.
fn body_stream(body: Body) -> ByteStream {
    Box::pin(
        body.into_data_stream()
            .map(|r| r.map_err(std::io::Error::other)),
    )
}

/// Appends a request body to an upload's temp file (off the runtime); the writer is dropped on any error.
async fn append(
    writer: crate::store::BlobWriter,
    body: Body,
) -> Result<crate::store::BlobWriter, ApiError> {
    if body.is_end_stream() {
        // No body (the closing PUT of a chunked upload): no writer thread for nothing.
        return Ok(writer);
    }
    crate::blob::write_stream_batches(
        body_stream(body),
        writer,
        |w: &mut crate::store::BlobWriter, batch: &[bytes::Bytes]| w.write_batch(batch),
    )
    .await
    .map_err(|e| match e {
        StreamWriteError::Read(e) => code(
            ErrorCode::BlobUploadInvalid,
            json!({ "reason": format!("reading the request body: {e}") }),
        ),
        StreamWriteError::Write(e) => ApiError::Internal(format!("writing an upload: {e}")),
    })
}

/// `Content-Range: <start>-<end>` (with or without a `bytes ` prefix) of a chunk.
fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        code(
            ErrorCode::BlobUploadInvalid,
            json!({ "reason": "Content-Range must be <start>-<end>" }),
        )
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s.strip_prefix("bytes ").unwrap_or(s).trim();
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u64, u64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if b < a {
        return Err(bad());
    }
    Ok(Some((a, b)))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The root as uploads write it: a blob's data is synced before it is linked into place, the
/// rest (directories, layer links) is not (a manifest PUT syncs the file system first).
fn unsynced(store: &Store) -> Store {
    store.clone().with_durable(false)
}

/// Commits a finished upload through the store's verified ingest and links it into `name`
/// (both in place but not yet durable: counted, so the next manifest syncs them).
async fn commit<B: Catalog>(
    app: &Arc<App<B>>,
    store: Store,
    name: &str,
    writer: crate::store::BlobWriter,
    digest: &Digest,
    size: Option<u64>,
) -> Result<(), ApiError> {
    let (n, d, app) = (name.to_string(), digest.clone(), app.clone());
    let store = unsynced(&store);
    let r = tokio::task::spawn_blocking(move || {
        let _counted = app.uploads.unsynced.writing();
        let mut writer = writer;
        // A blob at its final name is trusted by HEAD and never rewritten: after a power loss
        // it must hold its bytes, whatever the later syncfs would have caught.
        writer.sync_data()?;
        writer.commit(Some((&d, size)))?;
        store.link_layer(&n, &d)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    match r {
        Ok(()) => Ok(()),
        Err(StoreError::Verify { source, .. }) => Err(match source {
            VerifyError::SizeMismatch { expected, found } => code(
                ErrorCode::SizeInvalid,
                json!({ "expected": expected, "received": found }),
            ),
            other => code(
                ErrorCode::DigestInvalid,
                json!({ "digest": digest.to_string(), "reason": other.to_string() }),
            ),
        }),
        Err(e) => Err(e.into()),
    }
}

/// POST `/blobs/uploads/`: a mount (`?mount=&from=`), a monolithic upload (`?digest=` with the body), or a new session.
async fn start_upload<B: Catalog>(
    app: Arc<App<B>>,
    store: Store,
    name: String,
    query: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    check_name(&name)?;
    if let Some(mount) = query_values(query, "mount").first() {
        let d = parse_digest(mount)?;
        if let Some(from) = query_values(query, "from").first() {
            check_name(from)?;
            let (s, f, n, dd) = (unsynced(&store), from.clone(), name.clone(), d.clone());
            let a = app.clone();
            let mounted = blocking(move || {
                let _counted = a.uploads.unsynced.writing();
                if s.has_layer_link(&f, &dd) && s.has_blob(&dd) {
                    s.link_layer(&n, &dd)?;
                    return Ok(true);
                }
                Ok(false)
            })
            .await?;
            if mounted {
                return Ok(blob_created(&name, &d));
            }
        }
    }
    let digest = digest_param(query)?;
    let Some(id) = app.uploads.reserve(&name) else {
        return Err(code(
            ErrorCode::TooManyRequests,
            json!({ "reason": format!("{} uploads in progress", crate::limits::MAX_UPLOADS) }),
        ));
    };
    let _held = app.uploads.hold(&id, &name);
    let s = unsynced(&store);
    // Synced before it is published (see `commit`): the disk starts writing as the body arrives.
    let writer = match blocking(move || Ok(s.blob_writer()?.direct())).await {
        Ok(w) => w,
        Err(e) => {
            app.uploads.end(&id, &name);
            return Err(e);
        }
    };
    let Some(digest) = digest else {
        app.uploads.put_back(
            &id,
            Session {
                repo: name.clone(),
                writer,
            },
        );
        return Ok(upload_state(StatusCode::ACCEPTED, &name, &id, 0));
    };
    // Monolithic: the body is the whole blob.
    let size = content_length(headers);
    let r = match append(writer, body).await {
        Ok(w) => commit(&app, store, &name, w, &digest, size).await,
        Err(e) => Err(e),
    };
    app.uploads.end(&id, &name);
    r?;
    Ok(blob_created(&name, &digest))
}

/// Takes the session for a request, or answers why not (404 unknown, 416 busy).
fn take(app: &App<impl Catalog>, name: &str, id: &str) -> Result<Session, ApiError> {
    check_name(name)?;
    app.uploads.take(id, name).map_err(|t| match t {
        Taken::Unknown => upload_unknown(id),
        Taken::Busy(offset) => out_of_order(name, id, offset),
    })
}

/// Writes one chunk (the body) into a taken session after checking its `Content-Range`; the
/// session is put back on a refused range and ended on a failed write.
async fn write_chunk<B: Catalog>(
    app: &App<B>,
    name: &str,
    id: &str,
    mut session: Session,
    headers: &HeaderMap,
    body: Body,
) -> Result<Session, ApiError> {
    let offset = session.writer.written();
    let range = match content_range(headers) {
        Ok(r) => r,
        Err(e) => {
            app.uploads.put_back(id, session);
            return Err(e);
        }
    };
    if let Some((start, end)) = range {
        let len_ok = content_length(headers).is_none_or(|l| l == end - start + 1);
        if start != offset || !len_ok {
            app.uploads.put_back(id, session);
            return Err(out_of_order(name, id, offset));
        }
    }
    session.writer = match append(session.writer, body).await {
        Ok(w) => w,
        Err(e) => {
            app.uploads.end(id, name);
            return Err(e);
        }
    };
    if let Some((_, end)) = range
        && session.writer.written() != end + 1
    {
        // More or fewer bytes than the range promised: the upload cannot be trusted any more.
        app.uploads.end(id, name);
        return Err(code(
            ErrorCode::SizeInvalid,
            json!({ "expected": end + 1, "received": session.writer.written() }),
        ));
    }
    Ok(session)
}

/// An upload that waits for its next request keeps little in memory (see
/// [`crate::store::BlobWriter::park`]); done off the runtime, as it writes.
async fn park(mut session: Session) -> Result<Session, ApiError> {
    blocking(move || {
        let path = session.writer.temp_path().to_path_buf();
        session.writer.park().map_err(|source| StoreError::Io {
            op: "writing",
            path,
            source,
        })?;
        Ok(session)
    })
    .await
}

/// PATCH: one more chunk.
async fn patch_upload<B: Catalog>(
    app: Arc<App<B>>,
    name: String,
    id: String,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    let session = take(&app, &name, &id)?;
    let _held = app.uploads.hold(&id, &name);
    let session = write_chunk(&app, &name, &id, session, headers, body).await?;
    let session = match park(session).await {
        Ok(s) => s,
        Err(e) => {
            app.uploads.end(&id, &name);
            return Err(e);
        }
    };
    let offset = session.writer.written();
    app.uploads.put_back(&id, session);
    Ok(upload_state(StatusCode::ACCEPTED, &name, &id, offset))
}

/// PUT `?digest=`: the optional last chunk, then the verified commit.
async fn finish_upload<B: Catalog>(
    app: Arc<App<B>>,
    store: Store,
    name: String,
    id: String,
    query: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    check_name(&name)?;
    let Some(digest) = digest_param(query)? else {
        return Err(code(
            ErrorCode::DigestInvalid,
            json!({ "reason": "PUT of an upload needs ?digest=" }),
        ));
    };
    let session = take(&app, &name, &id)?;
    let _held = app.uploads.hold(&id, &name);
    let session = write_chunk(&app, &name, &id, session, headers, body).await?;
    let r = commit(&app, store, &name, session.writer, &digest, None).await;
    app.uploads.end(&id, &name);
    r?;
    Ok(blob_created(&name, &digest))
}

/// GET of an upload in progress: 204 with what has arrived.
pub(super) fn upload_status<B: Catalog>(app: &App<B>, name: &str, id: &str) -> ApiResult {
    if !app.allow_push || app.backend.writable().is_none() {
        return Err(ApiError::MethodNotAllowed);
    }
    check_name(name)?;
    match app.uploads.offset(id, name) {
        Some(offset) => Ok(upload_state(StatusCode::NO_CONTENT, name, id, offset)),
        None => Err(upload_unknown(id)),
    }
}

/// A tag, or a digest, as the reference of a manifest PUT or DELETE.
enum Ref {
    Tag(String),
    Digest(Digest),
}

fn manifest_ref(reference: &str) -> Result<Ref, ApiError> {
    if reference.contains(':') {
        return parse_digest(reference).map(Ref::Digest);
    }
    validate_tag(reference).map_err(|e| {
        code(
            ErrorCode::ManifestInvalid,
            json!({ "tag": echo(reference), "reason": echo(&e.to_string()) }),
        )
    })?;
    Ok(Ref::Tag(reference.to_string()))
}

/// Reads a manifest body, refusing (413 MANIFEST_INVALID) one over [`MAX_MANIFEST_BYTES`] without buffering it.
async fn manifest_body(body: Body) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            code(
                ErrorCode::ManifestInvalid,
                json!({ "reason": format!("reading the request body: {e}") }),
            )
        })?;
        if (out.len() + chunk.len()) as u64 > MAX_MANIFEST_BYTES {
            // Read on (up to a bound) so the client gets the answer rather than a reset.
            drop(out);
            super::drain::discard(Body::from_stream(stream)).await;
            let mut resp = code(
                ErrorCode::ManifestInvalid,
                json!({ "reason": format!("manifest over the {MAX_MANIFEST_BYTES}-byte cap") }),
            )
            .into_response();
            *resp.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return Err(ApiError::Ready(Box::new(resp)));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Checks, writing nothing, that everything `m` needs is in `repo`: config and
/// distributable layers linked and of the size `m` gives them, index children linked.
/// (The size check also refuses a blob that a power loss cut short before it was synced.)
fn check_references(store: &Store, repo: &str, m: &Manifest) -> Result<(), ApiError> {
    for b in m.blobs() {
        if !is_distributable(&b.media_type) {
            continue;
        }
        let stored = if store.has_layer_link(repo, &b.digest) {
            store.blob_size(&b.digest)?
        } else {
            None
        };
        match stored {
            Some(n) if n == b.size => {}
            Some(n) => {
                return Err(code(
                    ErrorCode::ManifestBlobUnknown,
                    json!({ "digest": b.digest.to_string(),
                        "reason": format!("the manifest gives size {}, the blob has {n} bytes", b.size) }),
                ));
            }
            None => {
                return Err(code(
                    ErrorCode::ManifestBlobUnknown,
                    json!({ "digest": b.digest.to_string() }),
                ));
            }
        }
    }
    // A missing child is MANIFEST_BLOB_UNKNOWN (400), as distribution answers it.
    for c in m.children() {
        if !store.has_revision(repo, &c.digest) {
            return Err(code(
                ErrorCode::ManifestBlobUnknown,
                json!({ "digest": c.digest.to_string() }),
            ));
        }
    }
    Ok(())
}

/// PUT of a manifest by tag or digest: checked, then its bytes, its revision link and the tag
/// written in that order, each synced (one `syncfs`) before the next.
async fn put_manifest<B: Catalog>(
    app: Arc<App<B>>,
    store: Store,
    name: String,
    reference: String,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    check_name(&name)?;
    let r = manifest_ref(&reference)?;
    let bytes = manifest_body(body).await?;
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
        .filter(|v| !v.is_empty());
    let invalid = |reason: String| code(ErrorCode::ManifestInvalid, json!({ "reason": reason }));
    let raw = RawManifest::new(bytes, declared.as_deref()).map_err(|e| invalid(e.to_string()))?;
    if let Some(ct) = &declared
        && ct != raw.media_type()
    {
        return Err(invalid(format!(
            "Content-Type {} does not match the manifest's media type {}",
            echo(ct),
            raw.media_type()
        )));
    }
    let parsed = raw.parse().map_err(|e| invalid(e.to_string()))?;
    if let Ref::Digest(d) = &r
        && d != raw.digest()
    {
        return Err(code(
            ErrorCode::DigestInvalid,
            json!({ "digest": d.to_string(), "reason": format!("the manifest's bytes hash to {}", raw.digest()) }),
        ));
    }
    let referrer = Referrer::of(&raw);
    let (n, m) = (name.clone(), raw.clone());
    blocking(move || {
        if let Err(e) = check_references(&store, &n, &parsed) {
            return Ok(Err(e));
        }
        // Three steps, each made durable by one sync before the next can name it: the
        // manifest's bytes (with every blob it names: counted before the check saw them in
        // place, so this sync covers them), then its revision link, then the tag. The last
        // sync makes the 201 mean stored.
        let (pending, quick) = (&app.uploads.unsynced, unsynced(&store));
        {
            let _counted = pending.writing();
            quick.put_blob_bytes(m.bytes())?;
        }
        pending.sync(&store)?;
        {
            let _counted = pending.writing();
            quick.link_revision(&n, m.digest())?;
        }
        if let Ref::Tag(t) = &r {
            pending.sync(&store)?;
            let _counted = pending.writing();
            quick.tag(&n, t, m.digest())?;
        }
        pending.sync(&store)?;
        Ok(Ok(()))
    })
    .await??;
    let mut h = HeaderMap::new();
    h.insert(
        header::LOCATION,
        header_value(&Route::manifest_by_digest(&name, raw.digest()).path()),
    );
    h.insert(
        "docker-content-digest",
        header_value(&raw.digest().to_string()),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    h.insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    if let Some(rf) = referrer {
        h.insert("oci-subject", header_value(&rf.subject().to_string()));
    }
    Ok((StatusCode::CREATED, h).into_response())
}

/// DELETE of a manifest: by digest it goes with every tag pointing at it; by tag only the tag goes.
async fn delete_manifest(store: Store, name: String, reference: String) -> ApiResult {
    check_name(&name)?;
    let r = manifest_ref(&reference)?;
    let n = name.clone();
    match r {
        Ref::Digest(d) => {
            let dd = d.clone();
            if blocking(move || store.delete_revision(&n, &dd))
                .await?
                .is_none()
            {
                return Err(code(
                    ErrorCode::ManifestUnknown,
                    json!({ "digest": d.to_string() }),
                ));
            }
        }
        Ref::Tag(t) => {
            let tt = t.clone();
            if !blocking(move || store.untag(&n, &tt)).await? {
                return Err(code(ErrorCode::ManifestUnknown, json!({ "tag": t })));
            }
        }
    }
    Ok(accepted())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        let table = [
            ("0-9", Some((0, 9))),
            ("bytes 10-19", Some((10, 19))),
            ("bytes 10-19/100", Some((10, 19))),
            (" 5 - 5 ", Some((5, 5))),
        ];
        for (v, want) in table {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_RANGE, HeaderValue::from_static(v));
            assert_eq!(content_range(&h).ok().flatten(), want, "{v}");
        }
        for bad in ["9-0", "x-1", "10", "-5"] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_RANGE, HeaderValue::from_static(bad));
            assert!(content_range(&h).is_err(), "{bad}");
        }
        assert_eq!(content_range(&HeaderMap::new()).ok().flatten(), None);
        assert_eq!(
            (range_of(0), range_of(1), range_of(100)),
            ("0-0".into(), "0-0".into(), "0-99".into())
        );
    }
}
