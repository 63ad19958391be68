//! Gzipping a layer a source serves uncompressed, for a destination that stores layers
//! compressed (as containers/image compresses when the destination desires it): one rule,
//! [`layers_to_gzip`], for every source, and one rewrite, [`rewrite_manifests`], of the
//! manifests that name them (every platform of an index, then the index). The
//! compressed digest is only known at the end, so the layer is gzipped while it streams
//! into an unnamed temp file, hashed as it is written; memory stays bounded.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufWriter, Read};
use std::sync::Arc;

use futures_util::StreamExt;

use crate::blob::{BlobBody, BlobLocation};
use crate::digest::{Digest, HashingWriter, VerifyingReader};
use crate::limits::IO_BUFFER_BYTES;
use crate::manifest::{Descriptor, ImageManifest, Manifest, RawManifest};
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
    let work = move |input: Box<dyn Read + Send>| -> Result<(Digest, u64, std::fs::File), String> {
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
/// archive). Gzipping changes the digests, so [`rewrite_manifests`] names the new layers.
pub fn layers_to_gzip(writes: &[RawManifest], all_uncompressed: bool) -> HashSet<Digest> {
    let mut out = HashSet::new();
    for m in writes {
        if let Ok(Manifest::Image(img)) = m.parse()
            && may_change_layers(m, &img)
        {
            out.extend(
                img.layers
                    .iter()
                    .filter(|l| mt::is_distributable(&l.media_type))
                    .filter(|l| all_uncompressed || mt::is_uncompressed_layer(&l.media_type))
                    .map(|l| l.digest.clone()),
            );
        }
    }
    out
}

/// Whether an image manifest's layers may be compressed on the way: not an OCI artifact's
/// (a config other than the OCI image config), whose layers are whatever its kind says, as
/// containers/image's `OCI1.CanChangeLayerCompression` refuses them.
fn may_change_layers(m: &RawManifest, img: &ImageManifest) -> bool {
    m.media_type() == mt::DOCKER_MANIFEST || img.config.media_type == mt::OCI_CONFIG
}

/// `writes` (children first, the top last) as they are written once the layers `compressed`
/// names (by source digest) were gzipped: each image manifest naming one names the gzipped
/// layer instead, and each index naming a rewritten child names the new child, its platform
/// and annotations kept, as containers/image rewrites every platform of an index it
/// compresses. A manifest nothing changed goes as it is.
pub fn rewrite_manifests(
    writes: &[RawManifest],
    compressed: &HashMap<Digest, Descriptor>,
) -> Result<Vec<RawManifest>, String> {
    let mut renamed: HashMap<Digest, RawManifest> = HashMap::new();
    let mut out = Vec::with_capacity(writes.len());
    for m in writes {
        let parsed = m
            .parse()
            .map_err(|e| format!("manifest {}: {e}", m.digest()))?;
        let new = match parsed {
            Manifest::Image(mut img)
                if may_change_layers(m, &img)
                    && img
                        .layers
                        .iter()
                        .any(|l| compressed.contains_key(&l.digest)) =>
            {
                for l in &mut img.layers {
                    if let Some(new) = compressed.get(&l.digest) {
                        l.media_type = gzip_type(&l.media_type).to_string();
                        l.digest = new.digest.clone();
                        l.size = new.size;
                    }
                }
                super::convert::write_image(&img, m.media_type())?
            }
            Manifest::Index(index)
                if index
                    .manifests
                    .iter()
                    .any(|c| renamed.contains_key(&c.digest)) =>
            {
                let children: Vec<Descriptor> = index
                    .manifests
                    .iter()
                    .map(|c| match renamed.get(&c.digest) {
                        Some(n) => super::convert::renamed_child(c, n),
                        None => c.clone(),
                    })
                    .collect();
                super::convert::rewrite_index(m, &children)?
            }
            _ => m.clone(),
        };
        if new.digest() != m.digest() {
            renamed.insert(m.digest().clone(), new.clone());
        }
        out.push(new);
    }
    Ok(out)
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
    /// An image manifest of `kind` (`DOCKER_MANIFEST` or `OCI_MANIFEST`) with these layers.
    fn image(kind: &str, layers: &[(&str, &Digest)]) -> RawManifest {
        type Layer = fn(&str, &Digest) -> String;
        let (config, layer): (&str, Layer) = if kind == mt::DOCKER_MANIFEST {
            (mt::DOCKER_CONFIG, |t: &str, d: &Digest| {
                format!(r#"{{"mediaType":"{t}","size":3,"digest":"{d}"}}"#)
            })
        } else {
            (mt::OCI_CONFIG, |t: &str, d: &Digest| {
                format!(r#"{{"mediaType":"{t}","digest":"{d}","size":3}}"#)
            })
        };
        let layers: Vec<String> = layers.iter().map(|(t, d)| layer(t, d)).collect();
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{kind}","config":{},"layers":[{}]}}"#,
            layer(config, &Digest::sha256_of(b"config")),
            layers.join(",")
        );
        RawManifest::new(json.into_bytes(), None).unwrap()
    }

    /// The descriptor of a layer gzipped on the way, of `media_type`.
    fn zipped(media_type: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: Digest::sha256_of(b"zipped"),
            size: 5,
            platform: None,
            urls: Vec::new(),
            annotations: Default::default(),
        }
    }

    #[test]
    fn every_platform_is_rewritten_then_the_index_names_the_new_children() {
        let (plain, gz) = (Digest::sha256_of(b"plain"), Digest::sha256_of(b"gz"));
        let zipped = zipped(mt::OCI_LAYER_GZIP);
        let a = image(
            mt::OCI_MANIFEST,
            &[(mt::OCI_LAYER, &plain), (mt::OCI_LAYER_GZIP, &gz)],
        );
        let b = image(mt::OCI_MANIFEST, &[(mt::OCI_LAYER, &plain)]);
        let c = image(mt::OCI_MANIFEST, &[(mt::OCI_LAYER_GZIP, &gz)]);
        let entry = |m: &RawManifest, arch: &str, extra: &str| {
            format!(
                r#"{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"architecture":"{arch}","os":"linux"}}{extra}}}"#,
                m.media_type(),
                m.digest(),
                m.bytes().len()
            )
        };
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{},{},{}],"annotations":{{"k":"v"}}}}"#,
            mt::OCI_INDEX,
            entry(&b, "arm64", r#","annotations":{"n":"b"}"#),
            entry(&c, "s390x", ""),
            entry(&a, "amd64", ""),
        );
        let index = RawManifest::new(index.into_bytes(), None).unwrap();
        let writes = [a.clone(), b.clone(), c.clone(), index.clone()];
        let compressed = HashMap::from([(plain.clone(), zipped.clone())]);
        let out = rewrite_manifests(&writes, &compressed).unwrap();
        assert_eq!(out.len(), 4);
        for (new, old) in [(&out[0], &a), (&out[1], &b)] {
            assert_ne!(
                new.digest(),
                old.digest(),
                "a platform with a plain layer is rewritten"
            );
            let Ok(Manifest::Image(m)) = new.parse() else {
                panic!()
            };
            assert_eq!(m.layers[0].digest, zipped.digest);
            assert_eq!(m.layers[0].size, 5);
            assert_eq!(m.layers[0].media_type, mt::OCI_LAYER_GZIP);
        }
        let Ok(Manifest::Image(m)) = out[0].parse() else {
            panic!()
        };
        assert_eq!(m.layers[1].digest, gz, "a gzip layer stays");
        assert_eq!(out[2], c, "a platform without plain layers goes as it is");
        let Ok(Manifest::Index(i)) = out[3].parse() else {
            panic!()
        };
        let Ok(Manifest::Index(old)) = index.parse() else {
            panic!()
        };
        assert_ne!(out[3].digest(), index.digest());
        assert_eq!(out[3].media_type(), mt::OCI_INDEX);
        assert_eq!(
            i.annotations, old.annotations,
            "the index's annotations kept"
        );
        let names: Vec<(&Digest, u64)> = i.manifests.iter().map(|d| (&d.digest, d.size)).collect();
        let want = [&out[1], &out[2], &out[0]].map(|m| (m.digest(), m.bytes().len() as u64));
        assert_eq!(names, want, "the new children, in the index's order");
        for (new, old) in i.manifests.iter().zip(&old.manifests) {
            assert_eq!(new.platform, old.platform);
            assert_eq!(new.annotations, old.annotations);
        }
        // Nothing gzipped (the destination had every plain layer): all as it is.
        assert_eq!(rewrite_manifests(&writes, &HashMap::new()).unwrap(), writes);
    }

    #[test]
    fn an_artifact_keeps_its_layers_even_beside_an_image_that_shares_one() {
        let plain = Digest::sha256_of(b"plain");
        let img = image(mt::OCI_MANIFEST, &[(mt::OCI_LAYER, &plain)]);
        let artifact = String::from_utf8(img.bytes().to_vec()).unwrap().replace(
            mt::OCI_CONFIG,
            "application/vnd.example.sbom.config.v1+json",
        );
        let artifact = RawManifest::new(artifact.into_bytes(), None).unwrap();
        assert!(layers_to_gzip(std::slice::from_ref(&artifact), true).is_empty());
        assert_eq!(
            layers_to_gzip(&[img.clone(), artifact.clone()], false),
            HashSet::from([plain.clone()])
        );
        let zipped = zipped(mt::OCI_LAYER_GZIP);
        let out = rewrite_manifests(
            &[img.clone(), artifact.clone()],
            &HashMap::from([(plain, zipped)]),
        )
        .unwrap();
        assert_ne!(out[0], img, "the image is rewritten");
        assert_eq!(out[1], artifact, "the artifact goes byte for byte");
    }

    #[test]
    fn a_docker_manifest_is_written_in_go_field_order() {
        let plain = Digest::sha256_of(b"plain");
        let docker = image(mt::DOCKER_MANIFEST, &[(mt::DOCKER_LAYER, &plain)]);
        let zipped = zipped(mt::DOCKER_LAYER_GZIP);
        let out = rewrite_manifests(&[docker], &HashMap::from([(plain, zipped.clone())])).unwrap();
        let want = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","size":3,"digest":"{}"}},"layers":[{{"mediaType":"{}","size":5,"digest":"{}"}}]}}"#,
            mt::DOCKER_MANIFEST,
            mt::DOCKER_CONFIG,
            Digest::sha256_of(b"config"),
            mt::DOCKER_LAYER_GZIP,
            zipped.digest
        );
        assert_eq!(String::from_utf8_lossy(out[0].bytes()), want);
    }
}
