//! Multipart uploads a killed ferry run left open in a bucket: never visible as objects, but
//! stored (and billed) until aborted. object_store cannot list them, so the listing
//! (`ListMultipartUploads`) is one request signed with the crate's own SigV4 signer and sent with
//! a client made from the same options (endpoint, CA bundle); the abort is object_store's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::aws::AwsAuthorizer;
use object_store::client::{HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::multipart::MultipartStore;
use object_store::path::Path as Key;

use super::paths::{self, LayoutFile, PathSpec};
use super::s3::{Result, S3Error, S3Root, one_line};
use crate::digest::Algorithm;

/// A multipart upload the bucket holds open.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OpenUpload {
    key: String,
    id: String,
    /// When it was started, in seconds since the epoch (`None` when the store did not say).
    initiated: Option<u64>,
}

impl S3Root {
    /// Aborts the multipart uploads a killed ferry run left open under this root: those to a
    /// blob's key (ferry uploads a large blob straight to its key; distribution's own go to
    /// `_uploads/`), started more than [`crate::limits::S3_STALE_UPLOAD_SECS`] ago, so a
    /// concurrent run's live uploads survive. Returns how many were aborted.
    pub async fn abort_stale_uploads(&self) -> Result<usize> {
        let grace = std::env::var(crate::limits::ENV_S3_STALE_UPLOAD_SECS)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(crate::limits::S3_STALE_UPLOAD_SECS);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let blobs = self.key(PathSpec::BlobsAlgorithm(Algorithm::Sha256));
        let mut aborted = 0;
        for u in self.open_uploads(&format!("{blobs}/")).await? {
            let ours = self
                .relative(&u.key)
                .and_then(paths::parse_file)
                .is_some_and(|f| matches!(f, LayoutFile::BlobData(_)));
            let stale = u.initiated.is_some_and(|t| now.saturating_sub(t) >= grace);
            if !(ours && stale) {
                continue;
            }
            self.client()
                .abort_multipart(&Key::from(u.key.as_str()), &u.id)
                .await
                .map_err(|e| self.request_error("aborting a stale upload of", &u.key, e))?;
            tracing::info!(
                "s3://{}/{}: aborted an upload left open",
                self.bucket(),
                u.key
            );
            aborted += 1;
        }
        Ok(aborted)
    }

    /// Every multipart upload open under `prefix` (`ListMultipartUploads`, page by page).
    async fn open_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>> {
        let fail = |cause: String| S3Error::Request {
            op: "listing open uploads",
            bucket: self.bucket().to_string(),
            key: prefix.to_string(),
            cause,
        };
        let credential = self
            .client()
            .credentials()
            .get_credential()
            .await
            .map_err(|e| fail(one_line(&e)))?;
        let http = ReqwestConnector::default()
            .connect(self.client_options())
            .map_err(|e| fail(one_line(&e)))?;
        let mut out = Vec::new();
        let mut next: Option<(String, String)> = None;
        loop {
            let mut url = reqwest::Url::parse(&format!(
                "{}/{}",
                self.endpoint().trim_end_matches('/'),
                self.bucket()
            ))
            .map_err(|e| fail(e.to_string()))?;
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("uploads", "").append_pair("prefix", prefix);
                if let Some((k, u)) = &next {
                    q.append_pair("key-marker", k)
                        .append_pair("upload-id-marker", u);
                }
            }
            let mut req = axum::http::Request::builder()
                .method("GET")
                .uri(url.as_str())
                .body(HttpRequestBody::empty())
                .map_err(|e| fail(e.to_string()))?;
            AwsAuthorizer::new(&credential, "s3", self.region())
                .try_authorize(&mut req, None)
                .map_err(|e| fail(one_line(&e)))?;
            let resp = http.execute(req).await.map_err(|e| fail(one_line(&e)))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .bytes()
                .await
                .map_err(|e| fail(one_line(&e)))?;
            let text = String::from_utf8_lossy(&body);
            tracing::debug!(
                "ListMultipartUploads {url}: {status}: {}",
                text.chars().take(600).collect::<String>()
            );
            if !status.is_success() {
                let code = element(&text, "Code").unwrap_or_default();
                return Err(fail(format!("{status}: {code}")));
            }
            out.extend(parse_uploads(&text));
            next = (element(&text, "IsTruncated").as_deref() == Some("true"))
                .then(|| {
                    Some((
                        element(&text, "NextKeyMarker")?,
                        element(&text, "NextUploadIdMarker")?,
                    ))
                })
                .flatten();
            if next.is_none() {
                return Ok(out);
            }
        }
    }
}

/// The text of the first `<name>` element of `xml`, unescaped; `None` when absent.
fn element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let i = xml.find(&open)? + open.len();
    let j = xml[i..].find(&format!("</{name}>"))? + i;
    Some(
        xml[i..j]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// The `<Upload>` entries of a `ListMultipartUploadsResult`.
fn parse_uploads(xml: &str) -> Vec<OpenUpload> {
    xml.split("<Upload>")
        .skip(1)
        .filter_map(|u| {
            let u = u.split("</Upload>").next()?;
            Some(OpenUpload {
                key: element(u, "Key")?,
                id: element(u, "UploadId")?,
                initiated: element(u, "Initiated").and_then(|t| rfc3339_secs(&t)),
            })
        })
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` as seconds since the epoch (S3 dates are UTC).
fn rfc3339_secs(t: &str) -> Option<u64> {
    let num = |s: &str| s.parse::<i64>().ok();
    let (date, time) = t.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let (y, m, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let time = time.trim_end_matches('Z');
    let time = time.split('.').next()?;
    let mut h = time.splitn(3, ':');
    let (hh, mm, ss) = (num(h.next()?)?, num(h.next()?)?, num(h.next()?)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_listings_parse() {
        assert_eq!(rfc3339_secs("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_secs("2026-11-30T11:53:56.032Z"),
            Some(1_796_039_636)
        );
        assert_eq!(rfc3339_secs("2000-03-01T00:00:01Z"), Some(951_868_801));
        assert_eq!(rfc3339_secs("garbage"), None);
        let xml = "<?xml version=\"1.0\"?><ListMultipartUploadsResult><Bucket>b</Bucket>\
            <IsTruncated>false</IsTruncated><Upload><Key>p/a&amp;b</Key><UploadId>u1</UploadId>\
            <Initiated>1970-01-01T00:01:00.000Z</Initiated></Upload><Upload><Key>k2</Key>\
            <UploadId>u2</UploadId></Upload></ListMultipartUploadsResult>";
        assert_eq!(
            parse_uploads(xml),
            vec![
                OpenUpload {
                    key: "p/a&b".into(),
                    id: "u1".into(),
                    initiated: Some(60)
                },
                OpenUpload {
                    key: "k2".into(),
                    id: "u2".into(),
                    initiated: None
                },
            ]
        );
        assert_eq!(element(xml, "IsTruncated").as_deref(), Some("false"));
    }
}
