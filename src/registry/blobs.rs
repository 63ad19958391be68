//! Blob download as a verified stream: hashed while it flows, resumed with
//! `Range` after a broken connection, and ended with an `InvalidData` error
//! instead of a clean end when the bytes do not match the descriptor. The
//! client knows nothing of where the bytes go.

use std::io;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode, header};

use super::client::{Client, Held, Policy, RegistryError};
use super::routes::Route;
use crate::blob::ByteStream;
use crate::digest::{Hasher, check};
use crate::limits;
use crate::manifest::Descriptor;

impl Client {
    /// Opens a blob as a stream of exactly `desc.size` verified bytes. The
    /// first request is made before this returns (so a missing blob or a
    /// refused credential is an error here); later failures end the stream
    /// with an error, and a stream that does not verify ends with `InvalidData`.
    pub async fn get_blob(
        &self,
        repo: &str,
        desc: &Descriptor,
    ) -> Result<ByteStream, RegistryError> {
        let route = Route::blob(repo, &desc.digest);
        let url = self.url(&route, "").await?;
        let first = self.send(Method::GET, &route, "", &[]).await?;
        Ok(self.verified(first, url, Origin::Registry(route), desc))
    }

    /// Opens a foreign (non-distributable) layer from the first of `desc.urls` that
    /// answers, without credentials, as containers/image's `getExternalBlob` does; the
    /// stream is verified as [`Client::get_blob`]'s is. Only `http` and `https` URLs are tried.
    pub async fn get_external_blob(&self, desc: &Descriptor) -> Result<ByteStream, RegistryError> {
        let mut last = None;
        for u in &desc.urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                last = Some(RegistryError::Config {
                    host: self.host().to_string(),
                    why: format!("foreign layer {}: {u:?} is not an http(s) URL", desc.digest),
                });
                continue;
            }
            let permit = self.permit().await;
            match self
                .send_url_with(
                    Policy::EXTERNAL,
                    Method::GET,
                    u.clone(),
                    "",
                    &[],
                    None,
                    permit,
                )
                .await
            {
                Ok(first) => {
                    return Ok(self.verified(first, u.clone(), Origin::External(u.clone()), desc));
                }
                Err(e) => {
                    tracing::debug!("foreign layer {}: {e}", desc.digest);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::Config {
            host: self.host().to_string(),
            why: format!("foreign layer {} lists no URL", desc.digest),
        }))
    }

    /// The body of `first` (and of ranged re-requests to `origin` after a broken
    /// connection) as a stream of exactly `desc.size` verified bytes.
    fn verified(&self, first: Held, url: String, origin: Origin, desc: &Descriptor) -> ByteStream {
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(4);
        let (client, desc) = (self.clone(), desc.clone());
        tokio::spawn(async move {
            let mut hasher = Hasher::new(desc.digest.algorithm());
            let mut have = 0u64;
            let mut resumes = 0u32;
            let mut held = Some(first);
            loop {
                let resp = match held.take() {
                    Some(h) => h,
                    None => {
                        let range = [(header::RANGE, format!("bytes={have}-"))];
                        let again = match &origin {
                            Origin::Registry(route) => {
                                client.send(Method::GET, route, "", &range).await
                            }
                            Origin::External(u) => {
                                let permit = client.permit().await;
                                client
                                    .send_url_with(
                                        Policy::EXTERNAL,
                                        Method::GET,
                                        u.clone(),
                                        "",
                                        &range,
                                        None,
                                        permit,
                                    )
                                    .await
                            }
                        };
                        match again {
                            Ok(h) => h,
                            Err(e) => {
                                let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                                return;
                            }
                        }
                    }
                };
                if have > 0 && resp.resp.status() != StatusCode::PARTIAL_CONTENT {
                    let _ = tx
                        .send(Err(io::Error::other(format!(
                            "{url}: the server ignored a Range request when resuming at byte {have}"
                        ))))
                        .await;
                    return;
                }
                let mut stream = resp.resp.bytes_stream();
                let mut broken = None;
                let idle = client.idle_timeout();
                loop {
                    let chunk = match tokio::time::timeout(idle, stream.next()).await {
                        Ok(Some(chunk)) => chunk,
                        Ok(None) => break,
                        Err(_) => {
                            // A source that stalls mid-body is given up on (and resumed) instead of holding the run.
                            broken = Some(
                                client
                                    .stalled(&format!("reading blob {}", desc.digest))
                                    .to_string(),
                            );
                            break;
                        }
                    };
                    match chunk {
                        Ok(c) => {
                            have += c.len() as u64;
                            if have > desc.size {
                                let _ = tx
                                    .send(Err(io::Error::new(
                                        io::ErrorKind::InvalidData,
                                        format!(
                                            "blob {}: more than the {} bytes its descriptor says",
                                            desc.digest, desc.size
                                        ),
                                    )))
                                    .await;
                                return;
                            }
                            hasher.update(&c);
                            if tx.send(Ok(c)).await.is_err() {
                                return; // the consumer went away
                            }
                        }
                        Err(e) => {
                            broken = Some(format!("GET {url}: {e}"));
                            break;
                        }
                    }
                }
                match broken {
                    Some(e) if have < desc.size && resumes < limits::RETRIES => {
                        resumes += 1;
                        tracing::warn!("{e} (after {have} of {} bytes); resuming", desc.size);
                    }
                    Some(e) => {
                        let _ = tx.send(Err(io::Error::other(e))).await;
                        return;
                    }
                    None => break,
                }
            }
            let found = hasher.finish();
            if let Err(e) = check(&desc.digest, Some(desc.size), &found, have) {
                let _ = tx
                    .send(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{url}: {e}"),
                    )))
                    .await;
            }
        });
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }
}

/// Where a blob's bytes are asked for again after a broken connection.
enum Origin {
    /// The registry's blob route.
    Registry(Route),
    /// A foreign layer's URL.
    External(String),
}
