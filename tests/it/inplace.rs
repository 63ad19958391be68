//! Serving a bundle in place from its offset table: the table is checked against the index at
//! start, blobs against their digests as they are served, `verify` checks the table against the
//! archive, and a bundle without a table (older ferry) is still served after a full scan.

use std::path::Path;

use ferry::store::Store;

use crate::harness::*;

/// The magic of each piece of the offset table (`bundlefile::format::OFFSETS_PIECE_MAGIC`).
const OFFSETS_PIECE_MAGIC: u32 = 0x184D_2A5D;

/// Largest frame of a piece, header included (`bundlefile::format::OFFSETS_PIECE_FRAME_BYTES`).
const PIECE_FRAME_BYTES: usize = 1024;

/// A bundle split at its offset table: the bytes before the table frames, the seek table
/// entries of the frames before them, and the table's JSON (`None` when the bundle has none).
struct Split {
    before: Vec<u8>,
    frames: Vec<(u32, u32)>,
    table: Option<serde_json::Value>,
}

/// The seek table entries of a seekable bundle (compressed, decompressed size) and where its frames end.
fn seek_entries(b: &[u8]) -> (Vec<(u32, u32)>, usize) {
    let len = b.len();
    let n = u32::from_le_bytes(b[len - 9..len - 5].try_into().unwrap()) as usize;
    let start = len - 9 - n * 8;
    let frames = (0..n)
        .map(|i| {
            let e = &b[start + i * 8..];
            (
                u32::from_le_bytes(e[0..4].try_into().unwrap()),
                u32::from_le_bytes(e[4..8].try_into().unwrap()),
            )
        })
        .collect();
    (frames, start - 8)
}

fn split(bundle: &Path) -> Split {
    let b = std::fs::read(bundle).unwrap();
    let (mut frames, data_end) = seek_entries(&b);
    // The table: the trailing frames of no data, each a piece of its compressed JSON.
    let pieces = frames.iter().rev().take_while(|f| f.1 == 0).count();
    let at = data_end
        - frames[frames.len() - pieces..]
            .iter()
            .map(|f| f.0 as usize)
            .sum::<usize>();
    if pieces == 0 || u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) != OFFSETS_PIECE_MAGIC {
        return Split {
            before: b[..data_end].to_vec(),
            frames,
            table: None,
        };
    }
    let mut payload = Vec::new();
    let mut pos = at;
    for (c, _) in frames.drain(frames.len() - pieces..) {
        assert_eq!(
            u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap()),
            OFFSETS_PIECE_MAGIC
        );
        assert!(c as usize <= PIECE_FRAME_BYTES, "a piece of {c} bytes");
        payload.extend_from_slice(&b[pos + 8..pos + c as usize]);
        pos += c as usize;
    }
    let json = zstd::stream::decode_all(&payload[..]).unwrap();
    Split {
        before: b[..at].to_vec(),
        frames,
        table: Some(serde_json::from_slice(&json).unwrap()),
    }
}

/// Writes `s` back as a seekable bundle at `dst`, with its table (if any) as the last frames.
fn join(s: &Split, dst: &Path) {
    let mut out = s.before.clone();
    let mut frames = s.frames.clone();
    if let Some(t) = &s.table {
        let payload = zstd::stream::encode_all(&serde_json::to_vec(t).unwrap()[..], 3).unwrap();
        for piece in payload.chunks(PIECE_FRAME_BYTES - 8) {
            out.extend_from_slice(&OFFSETS_PIECE_MAGIC.to_le_bytes());
            out.extend_from_slice(&(piece.len() as u32).to_le_bytes());
            out.extend_from_slice(piece);
            frames.push((piece.len() as u32 + 8, 0));
        }
    }
    out.extend_from_slice(&0x184D_2A5Eu32.to_le_bytes());
    out.extend_from_slice(&((frames.len() * 8 + 9) as u32).to_le_bytes());
    for (c, d) in &frames {
        out.extend_from_slice(&c.to_le_bytes());
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    out.push(0);
    out.extend_from_slice(&0x8F92_EAB1u32.to_le_bytes());
    std::fs::write(dst, out).unwrap();
}

/// The largest layer of the small corpus' first single-platform image: (repository, digest, bytes).
fn largest_layer() -> (String, ferry::digest::Digest, Vec<u8>) {
    let (root, corpus) = small();
    let store = Store::open(root);
    let img = corpus
        .images
        .iter()
        .find(|i| i.platforms.is_empty())
        .unwrap();
    let m = store.read_manifest(&img.digest).unwrap().parse().unwrap();
    let layer = m
        .blobs()
        .into_iter()
        .max_by_key(|b| b.size)
        .unwrap()
        .clone();
    let bytes =
        std::fs::read(store.path(ferry::store::paths::PathSpec::BlobData(&layer.digest))).unwrap();
    (img.repository.clone(), layer.digest, bytes)
}

/// `ferry unbundle serve BUNDLE` with its stderr in `log`.
fn serve_logged(bundle: &Path, log: &Path) -> FerryServe {
    FerryServe::start_logged(
        &["unbundle", "serve", bundle.to_str().unwrap()],
        Some(log),
        &[],
    )
}

/// Every tag of the small corpus answers with its digest.
fn every_tag_serves(addr: &str) {
    let (_, corpus) = small();
    for img in &corpus.images {
        let name = format!("{}:{}", img.repository, img.tag);
        assert_eq!(
            inspect_digest(&format!("docker://{addr}/{name}")),
            img.digest.to_string(),
            "{name}"
        );
    }
}

#[test]
fn every_frame_obeys_the_frame_rule_of_ferry_builds_before_the_offset_table() {
    // Their rule (bundlefile::read before the offset table): a frame of D decompressed bytes is at
    // most D + D/8 + 1024 compressed ones, D at most 16 MiB; anything else refuses the bundle.
    let (zst, _) = crate::unbundle::bundles();
    let b = std::fs::read(zst).unwrap();
    let (frames, _) = seek_entries(&b);
    for (i, &(c, d)) in frames.iter().enumerate() {
        let (c, d) = (c as u64, d as u64);
        assert!(
            d <= 16 << 20 && c <= d + d / 8 + 1024,
            "frame {i} of {}: {c} compressed bytes for {d}",
            frames.len()
        );
    }
    // The table is there, in more than one piece (so the rule held for a table of some size).
    let pieces = frames.iter().rev().take_while(|f| f.1 == 0).count();
    assert!(pieces > 1, "{pieces} piece(s)");
    assert!(split(zst).table.is_some());
}

#[test]
fn bundles_carry_an_offset_table_that_verify_checks() {
    let (zst, _) = crate::unbundle::bundles();
    let s = split(zst);
    let table = s.table.as_ref().expect("a new bundle has an offset table");
    let (_, digest, bytes) = largest_layer();
    let at = table["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["digest"] == digest.to_string())
        .expect("the table places the largest layer");
    assert_eq!(at["size"].as_u64().unwrap(), bytes.len() as u64);
    // The table is invisible to tar: the archive extracts to the root alone.
    let work = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("tar")
        .arg("--zstd")
        .arg("-tf")
        .arg(zst)
        .output()
        .unwrap();
    assert!(out.status.success());
    let names = String::from_utf8_lossy(&out.stdout);
    assert!(
        names
            .lines()
            .all(|l| l == "ferry-bundle.json" || l.starts_with("docker/")),
        "{names}"
    );
    run_ok(ferry().arg("verify").arg(zst));
    // A table that moves one blob by a block: verify names the table and the blob.
    let mut moved = split(zst);
    let t = moved.table.as_mut().unwrap();
    for b in t["blobs"].as_array_mut().unwrap() {
        if b["digest"] == digest.to_string() {
            b["offset"] = (b["offset"].as_u64().unwrap() + 512).into();
        }
    }
    let bad = work.path().join("moved.tar.zst");
    join(&moved, &bad);
    let out = ferry().arg("verify").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the offset table does not match the archive")
            && err.contains(&digest.to_string()),
        "{err}"
    );
}

#[test]
fn a_tampered_offset_table_is_caught_at_start_or_as_served() {
    let (zst, _) = crate::unbundle::bundles();
    let (repo, digest, bytes) = largest_layer();
    let work = tempfile::tempdir().unwrap();
    // A table for another index: refused at start, naming the table.
    let mut other = split(zst);
    other.table.as_mut().unwrap()["indexDigest"] = format!("sha256:{}", "0".repeat(64)).into();
    let bad = work.path().join("other.tar.zst");
    join(&other, &bad);
    let out = ferry()
        .args(["unbundle", "serve", "--listen", "127.0.0.1:0"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the offset table belongs to another"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // A table that places a blob one block off: the server starts, that blob's response is cut
    // (never its full length of wrong bytes) and the mismatch is logged; others still serve.
    let mut moved = split(zst);
    for b in moved.table.as_mut().unwrap()["blobs"]
        .as_array_mut()
        .unwrap()
    {
        if b["digest"] == digest.to_string() {
            b["offset"] = (b["offset"].as_u64().unwrap() + 512).into();
        }
    }
    let bad = work.path().join("moved.tar.zst");
    join(&moved, &bad);
    let log = work.path().join("serve.log");
    let server = serve_logged(&bad, &log);
    let path = format!("/v2/{repo}/blobs/{digest}");
    for range in [None, Some("bytes=0-99")] {
        let headers: Vec<(&str, &str)> = range.map(|r| ("Range", r)).into_iter().collect();
        if let Some((status, _, body)) = http(&server.addr, "GET", &path, &headers) {
            let whole = status == 200 && body.len() == bytes.len();
            let part = status == 206 && body.len() == 100;
            assert!(
                !whole && !part,
                "{range:?}: served {status} with a full body"
            );
        }
    }
    every_tag_serves(&server.addr);
    server.stop();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(&format!("blob {digest}")) && logged.contains("hash to"),
        "{logged}"
    );
}

#[test]
fn a_tampered_blob_is_caught_as_it_is_served() {
    let (zst, _) = crate::unbundle::bundles();
    let (repo, digest, bytes) = largest_layer();
    let work = tempfile::tempdir().unwrap();
    // The layer is incompressible, so zstd stored it verbatim: flip one byte of it in the file.
    let mut b = std::fs::read(zst).unwrap();
    let probe = &bytes[bytes.len() / 2..bytes.len() / 2 + 64];
    let at = b
        .windows(probe.len())
        .position(|w| w == probe)
        .expect("the layer's bytes are stored verbatim");
    b[at + 10] ^= 0xff;
    let bad = work.path().join("flipped.tar.zst");
    std::fs::write(&bad, b).unwrap();
    let log = work.path().join("serve.log");
    let server = serve_logged(&bad, &log);
    let path = format!("/v2/{repo}/blobs/{digest}");
    // HEAD answers from the table; a GET of the whole blob or of a part of it never completes.
    let (status, _, _) = http(&server.addr, "HEAD", &path, &[]).unwrap();
    assert_eq!(status, 200);
    for range in [None, Some("bytes=0-99")] {
        let headers: Vec<(&str, &str)> = range.map(|r| ("Range", r)).into_iter().collect();
        if let Some((status, _, body)) = http(&server.addr, "GET", &path, &headers) {
            let whole = status == 200 && body.len() == bytes.len();
            let part = status == 206 && body.len() == 100;
            assert!(
                !whole && !part,
                "{range:?}: served {status} with a full body"
            );
        }
    }
    server.stop();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(&format!("blob {digest}")) && logged.contains("hash to"),
        "{logged}"
    );
    // verify, which reads everything, refuses the bundle.
    let out = ferry().arg("verify").arg(&bad).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn a_bundle_without_an_offset_table_is_served_after_a_scan() {
    let (zst, _) = crate::unbundle::bundles();
    let (repo, digest, bytes) = largest_layer();
    let work = tempfile::tempdir().unwrap();
    let mut old = split(zst);
    old.table = None;
    let plain = work.path().join("old.tar.zst");
    join(&old, &plain);
    assert!(split(&plain).table.is_none());
    run_ok(ferry().arg("verify").arg(&plain));
    let server =
        crate::harness::FerryServe::start_with(&["unbundle", "serve", plain.to_str().unwrap()]);
    every_tag_serves(&server.addr);
    let path = format!("/v2/{repo}/blobs/{digest}");
    let (status, _, body) = http(&server.addr, "GET", &path, &[]).unwrap();
    assert_eq!((status, body.len()), (200, bytes.len()));
    assert_eq!(sha256(&body), digest.to_string());
    let (status, _, body) =
        http(&server.addr, "GET", &path, &[("Range", "bytes=1000-1999")]).unwrap();
    assert_eq!((status, &body[..]), (206, &bytes[1000..2000]));
    server.stop();
    // Without a table, a damaged blob is found by the scan at start, as before.
    let mut b = std::fs::read(&plain).unwrap();
    let probe = &bytes[bytes.len() / 2..bytes.len() / 2 + 64];
    let at = b.windows(probe.len()).position(|w| w == probe).unwrap();
    b[at + 10] ^= 0xff;
    let bad = work.path().join("old-flipped.tar.zst");
    std::fs::write(&bad, b).unwrap();
    let out = ferry()
        .args(["unbundle", "serve", "--listen", "127.0.0.1:0"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("old-flipped.tar.zst"), "{err}");
}
