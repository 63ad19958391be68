//! `docker-daemon:NAME[:TAG]`: images in a Docker Engine, through its API
//! on a unix socket (`DOCKER_HOST=unix:///path`, default
//! `/var/run/docker.sock`; plain `tcp://HOST:PORT` also works).
//!
//! Reading asks the engine to save the image (`GET /images/{name}/get`, a
//! `docker save` tar), keeps that stream in an anonymous temp file, and reads
//! it as a `docker-archive:`. Writing buffers the blobs as a `docker-archive:`
//! does, then at commit streams the tar, as it is built, into the body of
//! `POST /images/load` (no archive file); the engine's reply is checked for an
//! error message. Nothing is left on disk either way.

use std::io;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::docker_archive::{
    ArchiveWriter, DockerArchiveSource, NormalizedRef, anonymous_temp_file, unique_suffix,
};
use super::{DestProperties, Destination, Put, Result, Source, TransportError};
use crate::blob::BlobBody;
use crate::digest::{Algorithm, Digest};
use crate::limits::MAX_ERROR_BODY_BYTES;
use crate::manifest::{Descriptor, RawManifest};

/// The engine's socket when `DOCKER_HOST` is not set.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Largest `/images/load` reply read (a few JSON progress messages).
const MAX_LOAD_REPLY_BYTES: u64 = 1024 * 1024;

/// Where the Docker Engine API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerHost {
    /// A unix socket.
    Unix(PathBuf),
    /// `HOST:PORT` over plain TCP (no TLS).
    Tcp(String),
}

impl DockerHost {
    /// `DOCKER_HOST`, or the default socket when it is unset or empty.
    pub fn from_env() -> Result<DockerHost> {
        match std::env::var("DOCKER_HOST") {
            Ok(h) if !h.is_empty() => DockerHost::parse(&h),
            _ => Ok(DockerHost::Unix(PathBuf::from(DEFAULT_SOCKET))),
        }
    }

    /// Parses `unix:///path` or `tcp://host:port` (the `DOCKER_HOST` forms ferry speaks).
    pub fn parse(s: &str) -> Result<DockerHost> {
        if let Some(p) = s.strip_prefix("unix://") {
            if p.is_empty() {
                return Err(TransportError::Invalid(format!(
                    "docker host {s:?} names no socket"
                )));
            }
            return Ok(DockerHost::Unix(PathBuf::from(p)));
        }
        if let Some(a) = s
            .strip_prefix("tcp://")
            .or_else(|| s.strip_prefix("http://"))
        {
            let a = a.trim_end_matches('/');
            if a.is_empty() || a.contains('/') {
                return Err(TransportError::Invalid(format!(
                    "docker host {s:?} is not tcp://HOST:PORT"
                )));
            }
            return Ok(DockerHost::Tcp(a.to_string()));
        }
        Err(TransportError::Unsupported(format!(
            "docker host {s:?}: ferry speaks to the engine over unix:///PATH or tcp://HOST:PORT (no TLS, no ssh)"
        )))
    }

    /// The socket or address, for messages.
    fn display_path(&self) -> PathBuf {
        match self {
            DockerHost::Unix(p) => p.clone(),
            DockerHost::Tcp(a) => PathBuf::from(format!("tcp://{a}")),
        }
    }
}

type Body = BoxBody<Bytes, io::Error>;

/// Sends one request on a fresh connection (HTTP/1.1; the engine needs no keep-alive here).
async fn send(host: &DockerHost, req: Request<Body>) -> io::Result<Response<Incoming>> {
    async fn on<S>(stream: S, req: Request<Body>) -> io::Result<Response<Incoming>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender.send_request(req).await.map_err(io::Error::other)
    }
    match host {
        DockerHost::Unix(p) => on(tokio::net::UnixStream::connect(p).await?, req).await,
        DockerHost::Tcp(a) => on(tokio::net::TcpStream::connect(a.as_str()).await?, req).await,
    }
}

fn request(method: &str, uri: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "docker")
        .header(
            header::USER_AGENT,
            concat!("ferry/", env!("CARGO_PKG_VERSION")),
        )
        .body(body)
        .expect("a valid request")
}

/// Up to `cap` bytes of a body.
async fn read_capped(mut body: Incoming, cap: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(io::Error::other)?.into_data() {
            let room = (cap as usize).saturating_sub(out.len());
            out.extend_from_slice(&data[..data.len().min(room)]);
            if out.len() as u64 >= cap {
                break;
            }
        }
    }
    Ok(out)
}

/// The engine's `{"message": …}` from an error reply, else the reply text.
async fn error_message(resp: Response<Incoming>) -> String {
    let status = resp.status();
    let body = read_capped(resp.into_body(), MAX_ERROR_BODY_BYTES)
        .await
        .unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Msg {
        message: String,
    }
    match serde_json::from_slice::<Msg>(&body) {
        Ok(m) => format!("{status}: {}", m.message),
        Err(_) => format!("{status}: {}", String::from_utf8_lossy(&body).trim()),
    }
}

/// The name the engine is asked for: an image id (`sha256:…`) as given, else `domain/path[:tag][@digest]`.
fn daemon_name(name: &str) -> Result<(String, Option<NormalizedRef>)> {
    if let Ok(d) = Digest::parse(name) {
        if d.algorithm() != Algorithm::Sha256 {
            return Err(TransportError::Invalid(format!(
                "docker-daemon: image id {name} must be sha256"
            )));
        }
        return Ok((d.to_string(), None));
    }
    let r = NormalizedRef::parse(name)?;
    if r.name == "docker.io/library/sha256" {
        return Err(TransportError::Invalid(format!(
            "docker-daemon:{name}: the sha256 repository name is reserved for (non-shortened) image ids"
        )));
    }
    if r.tag.is_some() && r.digest.is_some() {
        return Err(TransportError::Invalid(format!(
            "docker-daemon: references with both a tag and digest are not supported: {name}"
        )));
    }
    Ok((r.to_string(), Some(r)))
}

/// The first error in an `/images/load` reply (a stream of JSON messages;
/// an error after the reply started comes as `{"errorDetail":{…},"error":…}`).
fn load_reply_error(reply: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Detail {
        message: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Msg {
        error: Option<String>,
        #[serde(rename = "errorDetail")]
        error_detail: Option<Detail>,
    }
    for m in serde_json::Deserializer::from_slice(reply).into_iter::<Msg>() {
        let Ok(m) = m else { break };
        if let Some(e) = m.error_detail.and_then(|d| d.message).or(m.error) {
            return Some(e);
        }
    }
    None
}

/// An image in a Docker Engine, read through `docker save`.
pub struct DaemonSource {
    name: String,
    archive: DockerArchiveSource,
}

impl DaemonSource {
    /// Saves image `name` (`NAME[:TAG]`, `NAME@DIGEST` or an image id `sha256:…`) from the engine `DOCKER_HOST` names.
    pub async fn open(name: &str) -> Result<Self> {
        Self::open_at(&DockerHost::from_env()?, name).await
    }

    /// Saves image `name` from the engine at `host`.
    pub async fn open_at(host: &DockerHost, name: &str) -> Result<Self> {
        let (asked, _) = daemon_name(name)?;
        let sock = host.display_path();
        let io_err = |op: &'static str| TransportError::io(op, sock.clone());
        let uri = format!("/images/{asked}/get");
        let resp = send(
            host,
            request("GET", &uri, Empty::new().map_err(|e| match e {}).boxed()),
        )
        .await
        .map_err(io_err("asking the docker engine to save the image at"))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(TransportError::NotFound(format!(
                "docker-daemon:{name}: {}",
                error_message(resp).await
            )));
        }
        if !resp.status().is_success() {
            return Err(TransportError::Io {
                op: "saving the image from the docker engine at",
                path: sock,
                source: io::Error::other(error_message(resp).await),
            });
        }
        let file = anonymous_temp_file()?;
        let mut out = tokio::fs::File::from_std(file);
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(io::Error::other)
                .map_err(io_err("reading the saved image from"))?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data)
                    .await
                    .map_err(io_err("buffering the saved image from"))?;
            }
        }
        out.flush()
            .await
            .map_err(io_err("buffering the saved image from"))?;
        let file = out.into_std().await;
        let display = format!("docker-daemon:{name}");
        let archive = crate::task::unblock({
            let display = display.clone();
            let path = PathBuf::from(format!("docker save {asked} (from {})", sock.display()));
            move || DockerArchiveSource::from_file(file, &path, display, None)
        })
        .await
        .map_err(io_err("reading the saved image from"))??;
        Ok(DaemonSource {
            name: display,
            archive,
        })
    }
}

impl Source for DaemonSource {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn top(&self) -> Result<RawManifest> {
        self.archive.top().await
    }

    async fn manifest(&self, digest: &Digest) -> Result<Option<RawManifest>> {
        self.archive.manifest(digest).await
    }

    async fn blob(&self, desc: &Descriptor) -> Result<BlobBody> {
        self.archive.blob(desc).await
    }

    fn plain_layers(&self) -> super::PlainLayers {
        self.archive.plain_layers()
    }
}

/// An image written into a Docker Engine through `docker load`.
pub struct DaemonDest {
    name: String,
    host: DockerHost,
    writer: ArchiveWriter,
}

impl DaemonDest {
    /// Prepares to load an image named `name` (`NAME[:TAG]`, tag `latest` by default) into the engine `DOCKER_HOST` names.
    pub fn create(name: &str) -> Result<Self> {
        Self::create_at(DockerHost::from_env()?, name)
    }

    /// Prepares to load an image named `name` into the engine at `host`.
    pub fn create_at(host: DockerHost, name: &str) -> Result<Self> {
        if Digest::parse(name).is_ok() {
            return Err(TransportError::Invalid(format!(
                "docker-daemon:{name}: a destination must be NAME[:TAG], not an image id"
            )));
        }
        let r = NormalizedRef::parse(name)?;
        if r.digest.is_some() {
            return Err(TransportError::Invalid(format!(
                "docker-daemon:{name}: a destination must be NAME[:TAG], not a digest"
            )));
        }
        let work = std::env::temp_dir().join(format!("ferry-docker-load-{}", unique_suffix()));
        Ok(DaemonDest {
            name: format!("docker-daemon:{name}"),
            host,
            writer: ArchiveWriter::new(work, Some(r))?,
        })
    }

    /// Sends the archive, streamed as it is written, to `POST /images/load` (chunked:
    /// no temp file, a few chunks in memory) and checks the reply. A stream that fails
    /// part-way aborts the request, and the engine, which reads the whole tar before it
    /// loads anything, keeps no image.
    async fn load(
        &self,
        archive: impl futures_util::Stream<Item = io::Result<Bytes>> + Send + Sync + 'static,
    ) -> Result<()> {
        let sock = self.host.display_path();
        let io_err = |op: &'static str| TransportError::io(op, sock.clone());
        let failed = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let seen = failed.clone();
        let body = StreamBody::new(futures_util::StreamExt::map(archive, move |r| {
            r.map(Frame::data).inspect_err(|e| {
                *seen.lock().unwrap() = Some(e.to_string());
            })
        }));
        let mut req = request("POST", "/images/load?quiet=1", BodyExt::boxed(body));
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            "application/x-tar".parse().expect("valid"),
        );
        let sent = send(&self.host, req).await;
        // The archive's own failure (a layer that does not verify) is the cause to name.
        if let Some(e) = failed.lock().unwrap().take() {
            return Err(TransportError::Io {
                op: "streaming the image into the docker engine at",
                path: sock,
                source: io::Error::other(e),
            });
        }
        let resp = sent.map_err(io_err("loading the image into the docker engine at"))?;
        if !resp.status().is_success() {
            return Err(TransportError::Io {
                op: "loading the image into the docker engine at",
                path: sock,
                source: io::Error::other(error_message(resp).await),
            });
        }
        // A stream of JSON messages; an error after the reply started comes as {"error": …}.
        let reply = read_capped(resp.into_body(), MAX_LOAD_REPLY_BYTES)
            .await
            .map_err(io_err("reading the docker engine's reply from"))?;
        match load_reply_error(&reply) {
            Some(e) => Err(TransportError::Io {
                op: "loading the image into the docker engine at",
                path: sock,
                source: io::Error::other(e),
            }),
            None => Ok(()),
        }
    }
}

impl Destination for DaemonDest {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn properties(&self) -> DestProperties {
        ArchiveWriter::properties()
    }

    fn accepts_foreign_layer_urls(&self) -> bool {
        false
    }

    async fn has_blob(&self, desc: &Descriptor) -> Result<bool> {
        Ok(self.writer.has_blob(&desc.digest))
    }

    async fn put_blob(&self, desc: &Descriptor, body: BlobBody) -> Result<Put> {
        self.writer.put_blob(desc, body).await
    }

    async fn put_manifest(&self, manifest: &RawManifest) -> Result<()> {
        Err(TransportError::Unsupported(format!(
            "{} holds one image; it cannot store manifest {} of an index",
            self.name,
            manifest.digest()
        )))
    }

    async fn commit(&self, top: &RawManifest) -> Result<()> {
        let loaded = self.load(self.writer.stream(top)?).await;
        // The stream has ended either way: its blobs are not needed again.
        let _ = std::fs::remove_dir_all(self.writer.work());
        loaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hosts() {
        assert_eq!(
            DockerHost::parse("unix:///tmp/d.sock").unwrap(),
            DockerHost::Unix("/tmp/d.sock".into())
        );
        assert_eq!(
            DockerHost::parse("tcp://127.0.0.1:2375").unwrap(),
            DockerHost::Tcp("127.0.0.1:2375".into())
        );
        assert!(DockerHost::parse("ssh://me@host").is_err());
        assert!(DockerHost::parse("unix://").is_err());
    }

    #[test]
    fn names_sent_to_the_engine() {
        let id = Digest::sha256_of(b"x").to_string();
        assert_eq!(daemon_name(&id).unwrap().0, id);
        assert_eq!(
            daemon_name("busybox").unwrap().0,
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            daemon_name("127.0.0.1:5000/a/b:1").unwrap().0,
            "127.0.0.1:5000/a/b:1"
        );
        assert!(daemon_name(&format!("a:1@{id}")).is_err());
        assert!(DaemonDest::create_at(DockerHost::Tcp("x:1".into()), &format!("a@{id}")).is_err());
    }

    #[test]
    fn load_errors_are_found_in_the_reply() {
        let ok = br#"{"stream":"Loaded image: busybox:v1.1.0\n"}"#;
        assert_eq!(load_reply_error(ok), None);
        let bad = br#"{"stream":"x"}
{"errorDetail":{"message":"Error processing tar file(exit status 1): archive/tar: invalid tar header"},"error":"Error processing tar file(exit status 1): archive/tar: invalid tar header"}"#;
        assert_eq!(
            load_reply_error(bad).as_deref(),
            Some("Error processing tar file(exit status 1): archive/tar: invalid tar header")
        );
        assert!(daemon_name("sha256:cd4b2cc1f648").is_err());
    }

    #[tokio::test]
    async fn an_unreachable_engine_is_an_io_error_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let err = DaemonSource::open_at(&DockerHost::Unix(sock.clone()), "busybox")
            .await
            .err()
            .expect("fails");
        assert!(
            err.to_string().contains(&sock.display().to_string()),
            "{err}"
        );
    }
}
