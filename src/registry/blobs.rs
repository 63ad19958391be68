//! Blob download: streamed into the store's temp file while hashed, resumed
//! with `Range` after a broken connection, published only when it verifies.

use std::io::Write;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode, header};

use super::client::{Client, RegistryError};
use super::routes::Route;
use crate::limits;
use crate::manifest::Descriptor;
use crate::store::{BlobWriter, Store, StoreError};

/// Moves chunks from the network to a blocking writer thread, so file writes never stall the runtime.
struct Sink {
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    task: tokio::task::JoinHandle<Result<BlobWriter, StoreError>>,
}

impl Sink {
    fn new(mut writer: BlobWriter) -> Sink {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
        let task = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = rx.blocking_recv() {
                writer.write_all(&chunk).map_err(|source| StoreError::Io {
                    op: "writing blob",
                    path: writer.temp_path().to_path_buf(),
                    source,
                })?;
            }
            Ok(writer)
        });
        Sink { tx, task }
    }

    async fn finish(self) -> Result<BlobWriter, StoreError> {
        drop(self.tx);
        match self.task.await {
            Ok(r) => r,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
}

impl Client {
    /// Streams a blob into `store`, verified against the descriptor; a no-op when the store has it.
    /// Returns the bytes downloaded (0 when it was already there).
    pub async fn fetch_blob(
        &self,
        store: &Store,
        repo: &str,
        desc: &Descriptor,
    ) -> Result<u64, RegistryError> {
        if store.has_blob(&desc.digest) {
            return Ok(0);
        }
        let route = Route::blob(repo, &desc.digest);
        let url = self.url(&route, "").await?;
        let store_err = |source| RegistryError::Store {
            url: url.clone(),
            source,
        };
        let mut sink = Sink::new(store.blob_writer().map_err(store_err)?);
        let mut have = 0u64;
        let mut resumes = 0u32;
        loop {
            let range = (have > 0).then(|| [(header::RANGE, format!("bytes={have}-"))]);
            let held = self
                .send(
                    Method::GET,
                    &route,
                    "",
                    range.as_ref().map_or(&[][..], |r| &r[..]),
                )
                .await?;
            if have > 0 && held.resp.status() != StatusCode::PARTIAL_CONTENT {
                // The server ignored the range: start over.
                drop(sink.finish().await);
                sink = Sink::new(store.blob_writer().map_err(store_err)?);
                have = 0;
            }
            let mut stream = held.resp.bytes_stream();
            let mut broken = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(c) => {
                        have += c.len() as u64;
                        if have > desc.size || sink.tx.send(c).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
            match broken {
                Some(e) if have < desc.size && resumes < limits::RETRIES => {
                    resumes += 1;
                    tracing::warn!(
                        "{url}: connection broke after {have} of {} bytes ({e}); resuming",
                        desc.size
                    );
                }
                Some(source) => {
                    drop(sink.finish().await);
                    return Err(RegistryError::Transport {
                        method: Method::GET,
                        url,
                        source,
                    });
                }
                None => break,
            }
        }
        let writer = sink.finish().await.map_err(store_err)?;
        let written = writer.written();
        writer
            .commit(Some((&desc.digest, Some(desc.size))))
            .map_err(store_err)?;
        Ok(written)
    }
}
