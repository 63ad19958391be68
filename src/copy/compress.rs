//! Gzipping a layer a source serves uncompressed, for a destination that stores layers
//! compressed (as containers/image compresses when the destination desires it): one rule,
//! [`layers_to_gzip`], for every source. The
//! compressed digest is only known at the end, so the layer is gzipped while it streams
//! into an unnamed temp file, hashed as it is written; memory stays bounded.

use std::io::{self, BufWriter, Read};
use std::sync::Arc;

use futures_util::StreamExt;

use crate::blob::{BlobBody, BlobLocation};
use crate::digest::{HashingWriter, VerifyingReader};
use crate::limits::IO_BUFFER_BYTES;
use crate::manifest::Descriptor;
use crate::media_type as mt;
use crate::transport::docker_archive::{ChanReader, Member, anonymous_temp_file};

/// The gzip layer type of the same family as `media_type` (OCI or Docker).
fn gzip_type(media_type: &str) -> &'static str {
    if media_type.starts_with("application/vnd.oci.") {
        mt::OCI_LAYER_GZIP
    } else {
        mt::DOCKER_LAYER_GZIP
    }
}

/// Gzips `body` (the uncompressed layer `desc`, checked against it as it is read) and
/// returns the compressed layer's descriptor and bytes, ready to put.
pub async fn gzip_layer(
    desc: &Descriptor,
    body: BlobBody,
) -> Result<(Descriptor, BlobBody), String> {
    let (expected, size) = (desc.digest.clone(), desc.size);
    let work = move |input: Box<dyn Read + Send>| -> Result<(crate::digest::Digest, u64, std::fs::File), String> {
        let mut input = VerifyingReader::new(input, expected, Some(size));
        let file = anonymous_temp_file().map_err(|e| e.to_string())?;
        let out = HashingWriter::new(BufWriter::with_capacity(IO_BUFFER_BYTES, file));
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        let err = |e: io::Error| format!("compressing the layer: {e}");
        io::copy(&mut input, &mut gz).map_err(err)?;
        let (out, digest, n) = gz.finish().map_err(err)?.finish();
        let file = out.into_inner().map_err(|e| err(e.into_error()))?;
        Ok((digest, n, file))
    };
    let joined = match body {
        // Opening may read and decode (an archive member): on the blocking thread too.
        BlobBody::Local(loc) => {
            tokio::task::spawn_blocking(move || {
                let input = loc
                    .source
                    .open_range(0, loc.size)
                    .map_err(|e| format!("reading the layer: {e}"))?;
                work(input)
            })
            .await
        }
        BlobBody::Stream(mut stream) => {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let worker = tokio::task::spawn_blocking(move || work(Box::new(ChanReader::new(rx))));
            while let Some(chunk) = stream.next().await {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            drop(tx);
            worker.await
        }
    };
    let (digest, n, file) = joined.map_err(|e| format!("compressing the layer: {e}"))??;
    let new = Descriptor {
        media_type: gzip_type(&desc.media_type).to_string(),
        digest,
        size: n,
        ..desc.clone()
    };
    let body = BlobBody::Local(BlobLocation {
        size: n,
        source: Arc::new(Member {
            file: Arc::new(file),
            offset: 0,
            size: n,
        }),
    });
    Ok((new, body))
}

/// The layers to gzip on the way, for a destination that stores layers compressed: each
/// distributable layer of the image manifests to be written whose media type says it is a
/// plain tar (`application/vnd.oci.image.layer.v1.tar`,
/// `application/vnd.docker.image.rootfs.diff.tar`), or every one when the source serves all
/// its layers uncompressed whatever their type says (`all_uncompressed`: a `docker save`
/// archive). Gzipping changes the image's digest, so only a copy of one image manifest is
/// rewritten; an index whose images would need it is refused, named.
pub fn layers_to_gzip(
    writes: &[crate::manifest::RawManifest],
    all_uncompressed: bool,
) -> Result<std::collections::HashSet<crate::digest::Digest>, String> {
    let mut out = std::collections::HashSet::new();
    for m in writes {
        if let Ok(crate::manifest::Manifest::Image(img)) = m.parse() {
            out.extend(
                img.layers
                    .iter()
                    .filter(|l| mt::is_distributable(&l.media_type))
                    .filter(|l| all_uncompressed || mt::is_uncompressed_layer(&l.media_type))
                    .map(|l| l.digest.clone()),
            );
        }
    }
    if !out.is_empty() && writes.len() > 1 {
        let top = writes.last().expect("the top is always written");
        return Err(format!(
            "{}: its images have uncompressed layers, which the destination stores gzipped; \
             gzipping the layers of a multi-platform image is not supported: copy one platform, \
             or keep the layers as they are with --preserve-digests",
            top.digest()
        ));
    }
    Ok(out)
}

/// `top` with each layer `compressed` names replaced by its compressed descriptor.
pub fn rewrite_layers(
    top: &crate::manifest::RawManifest,
    compressed: &std::collections::HashMap<crate::digest::Digest, Descriptor>,
) -> Result<crate::manifest::RawManifest, String> {
    let mut m: crate::manifest::ImageManifest = serde_json::from_slice(top.bytes())
        .map_err(|e| format!("manifest {}: {e}", top.digest()))?;
    for l in &mut m.layers {
        if let Some(new) = compressed.get(&l.digest) {
            l.media_type = gzip_type(&l.media_type).to_string();
            l.digest = new.digest.clone();
            l.size = new.size;
        }
    }
    let bytes = serde_json::to_vec(&m).expect("manifests serialise");
    crate::manifest::RawManifest::new(bytes, Some(top.media_type())).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gzips_checks_the_input_and_hashes_the_output() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let desc = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".to_string(),
            digest: crate::digest::Digest::sha256_of(&data),
            size: data.len() as u64,
            platform: None,
            urls: Vec::new(),
            annotations: Default::default(),
        };
        let body = |d: &[u8]| {
            BlobBody::Local(BlobLocation {
                size: d.len() as u64,
                source: Arc::new(crate::blob::Memory(d.to_vec())),
            })
        };
        let (new, out) = gzip_layer(&desc, body(&data)).await.unwrap();
        assert_eq!(new.media_type, mt::OCI_LAYER_GZIP);
        let BlobBody::Local(loc) = out else { panic!() };
        let mut gz = Vec::new();
        loc.source
            .open_range(0, loc.size)
            .unwrap()
            .read_to_end(&mut gz)
            .unwrap();
        assert_eq!(crate::digest::Digest::sha256_of(&gz), new.digest);
        assert_eq!(gz.len() as u64, new.size);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // Bytes that are not the layer named are refused.
        let mut bad = data.clone();
        bad[7] ^= 1;
        assert!(gzip_layer(&desc, body(&bad)).await.is_err());
    }
}
