//! Reading a blob, or a byte range of it, as a stream: a file of a root, a
//! frame range of a bundle read in place, or an HTTP body. The server and the
//! uploads share the one range reader here, so neither depends on the other.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use crate::limits::IO_BUFFER_BYTES;

/// Reads a byte range of one blob (blocking; callers run it off the async threads).
/// Implemented by a store's files, files of `dir:`/`oci:` layouts and bundles read in place.
pub trait RangeRead: Send + Sync {
    /// A reader of `len` bytes starting `start` bytes into the blob.
    fn open_range(&self, start: u64, len: u64) -> io::Result<Box<dyn Read + Send>>;

    /// Bytes per chunk when streamed ([`range_stream`]): smaller keeps a server's memory per
    /// client down where reads are cheap (a bundle read in place).
    fn chunk_bytes(&self) -> usize {
        IO_BUFFER_BYTES
    }

    /// The range as an async stream, for a source that is remote (a bucket): [`range_stream`]
    /// then reads it on the runtime, with no blocking thread waiting on the network.
    fn stream_range(&self, _start: u64, _len: u64) -> Option<ByteStream> {
        None
    }
}

/// A blob that is a whole file.
#[derive(Debug, Clone)]
pub struct FileRange(pub PathBuf);

impl RangeRead for FileRange {
    fn open_range(&self, start: u64, len: u64) -> io::Result<Box<dyn Read + Send>> {
        let mut f = std::fs::File::open(&self.0)?;
        f.seek(SeekFrom::Start(start))?;
        Ok(Box::new(f.take(len)))
    }
}

/// A small blob made in memory (a converted config).
#[derive(Debug, Clone)]
pub struct Memory(pub Vec<u8>);

impl RangeRead for Memory {
    fn open_range(&self, start: u64, len: u64) -> io::Result<Box<dyn Read + Send>> {
        let start = (start as usize).min(self.0.len());
        let end = start.saturating_add(len as usize).min(self.0.len());
        Ok(Box::new(io::Cursor::new(self.0[start..end].to_vec())))
    }
}

/// A blob held locally: its size and how to read any range of it (re-openable, so uploads can retry).
#[derive(Clone)]
pub struct BlobLocation {
    /// Its size.
    pub size: u64,
    /// Where its bytes are.
    pub source: Arc<dyn RangeRead>,
}

impl std::fmt::Debug for BlobLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobLocation")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// A forward-only stream of blob bytes (an HTTP body, or a local range turned into a stream).
pub type ByteStream = Pin<Box<dyn futures_util::Stream<Item = io::Result<bytes::Bytes>> + Send>>;

/// A blob's bytes as a source hands them over: random access when local, a stream when remote.
pub enum BlobBody {
    /// Local and re-openable at any offset.
    Local(BlobLocation),
    /// A stream of exactly the blob's size (a network body); read once.
    Stream(ByteStream),
}

impl BlobBody {
    /// The whole blob as a stream, whichever kind it is.
    pub fn into_stream(self) -> ByteStream {
        match self {
            BlobBody::Local(loc) => Box::pin(range_stream(loc.source, 0, loc.size)),
            BlobBody::Stream(s) => s,
        }
    }
}

/// `len` bytes from `start` of a blob as a stream of chunks, read on one
/// blocking thread through a short queue (memory stays flat; a short read is an
/// error, never a silently shorter body), or straight from the source's own
/// async stream when it has one ([`RangeRead::stream_range`]). Shared by uploads and by `serve`.
pub fn range_stream(source: Arc<dyn RangeRead>, start: u64, len: u64) -> ByteStream {
    if let Some(s) = source.stream_range(start, len) {
        return exact_len(s, len);
    }
    // Two chunks in flight per reader: enough to keep a socket busy, little memory under many clients.
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(2);
    let chunk = source.chunk_bytes().max(1);
    tokio::task::spawn_blocking(move || {
        let mut r = match source.open_range(start, len) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut left = len;
        while left > 0 {
            let mut buf = vec![0u8; chunk.min(left as usize)];
            if let Err(e) = Read::read_exact(&mut r, &mut buf) {
                let _ = tx.blocking_send(Err(e));
                return;
            }
            left -= buf.len() as u64;
            if tx.blocking_send(Ok(bytes::Bytes::from(buf))).is_err() {
                return; // the receiver went away
            }
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// A stream that must hold exactly `len` bytes: one that runs short or long ends with an
/// error instead of ending cleanly (a short body is never taken for the whole range).
fn exact_len(stream: ByteStream, len: u64) -> ByteStream {
    use futures_util::StreamExt;
    Box::pin(futures_util::stream::unfold(
        (stream, 0u64, false),
        move |(mut stream, seen, done)| async move {
            if done {
                return None;
            }
            let wrong = |what: &str, n: u64| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{what}: {n} bytes of the {len} asked for"),
                )
            };
            match stream.next().await {
                Some(Ok(c)) => {
                    let seen = seen + c.len() as u64;
                    if seen > len {
                        return Some((Err(wrong("a longer body", seen)), (stream, seen, true)));
                    }
                    Some((Ok(c), (stream, seen, false)))
                }
                Some(Err(e)) => Some((Err(e), (stream, seen, true))),
                None if seen < len => {
                    Some((Err(wrong("a short body", seen)), (stream, seen, true)))
                }
                None => None,
            }
        },
    ))
}

/// A stream checked against a blob's digest and size as it passes: it ends with an
/// `InvalidData` error instead of ending cleanly when the bytes do not match (what a
/// [`BlobBody::Stream`] from a source promises).
pub fn verified(stream: ByteStream, digest: crate::digest::Digest, size: u64) -> ByteStream {
    use futures_util::StreamExt;
    let hasher = crate::digest::Hasher::new(digest.algorithm());
    Box::pin(futures_util::stream::unfold(
        (exact_len(stream, size), Some(hasher), 0u64),
        move |(mut stream, hasher, seen)| {
            let digest = digest.clone();
            async move {
                let mut hasher = hasher?;
                match stream.next().await {
                    Some(Ok(c)) => {
                        hasher.update(&c);
                        let seen = seen + c.len() as u64;
                        Some((Ok(c), (stream, Some(hasher), seen)))
                    }
                    Some(Err(e)) => Some((Err(e), (stream, None, seen))),
                    None => match crate::digest::check(&digest, Some(size), &hasher.finish(), seen)
                    {
                        Ok(()) => None,
                        Err(e) => Some((
                            Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                            (stream, None, seen),
                        )),
                    },
                }
            }
        },
    ))
}

/// Why [`write_stream`] stopped: the stream broke (or did not verify), or the writer failed.
#[derive(Debug)]
pub enum StreamWriteError<E> {
    /// The stream's error (`InvalidData` when its bytes did not verify).
    Read(io::Error),
    /// The writer's error.
    Write(E),
}

/// Drains a stream into a blocking writer on its own thread, through a short
/// queue, so file writes never stall the runtime. Chunks are handed over in
/// batches of about [`IO_BUFFER_BYTES`] (a network body arrives in pieces of a
/// few KiB: one thread wake-up each would cost more than the write). Returns the writer
/// when the stream ended cleanly; on any error the writer is dropped (its temp file with it).
pub async fn write_stream<W, E>(
    stream: ByteStream,
    writer: W,
    mut write: impl FnMut(&mut W, &[u8]) -> Result<(), E> + Send + 'static,
) -> Result<W, StreamWriteError<E>>
where
    W: Send + 'static,
    E: Send + 'static,
{
    write_stream_batches(stream, writer, move |w: &mut W, batch: &[bytes::Bytes]| {
        batch.iter().try_for_each(|chunk| write(w, chunk))
    })
    .await
}

/// [`write_stream`] for a writer that takes each batch whole (one vectored write of the chunks
/// as they arrived, instead of copying each into a buffer first).
pub async fn write_stream_batches<W, E>(
    mut stream: ByteStream,
    mut writer: W,
    mut write: impl FnMut(&mut W, &[bytes::Bytes]) -> Result<(), E> + Send + 'static,
) -> Result<W, StreamWriteError<E>>
where
    W: Send + 'static,
    E: Send + 'static,
{
    use futures_util::StreamExt;
    // Two batches in flight: the writer works on one while the next is gathered.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<bytes::Bytes>>(2);
    let task = tokio::task::spawn_blocking(move || {
        while let Some(batch) = rx.blocking_recv() {
            write(&mut writer, &batch)?;
        }
        Ok(writer)
    });
    let mut failed = None;
    let mut batch: Vec<bytes::Bytes> = Vec::new();
    let mut gathered = 0usize;
    loop {
        let next = stream.next().await;
        let end = match next {
            Some(Ok(c)) => {
                gathered += c.len();
                batch.push(c);
                false
            }
            Some(Err(e)) => {
                failed = Some(e);
                break;
            }
            None => true,
        };
        // Sent when big enough, or at the end.
        if !batch.is_empty() && (end || gathered >= IO_BUFFER_BYTES) {
            gathered = 0;
            if tx.send(std::mem::take(&mut batch)).await.is_err() {
                break; // the writer failed: its error is returned below
            }
        }
        if end {
            break;
        }
    }
    drop(tx);
    let writer = crate::task::join(task)
        .await
        .map_err(StreamWriteError::Read)?
        .map_err(StreamWriteError::Write)?;
    match failed {
        Some(e) => Err(StreamWriteError::Read(e)),
        None => Ok(writer),
    }
}
