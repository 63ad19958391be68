//! The bundle file format, in one place.
//!
//! A bundle is a POSIX tar (GNU long names), zstd-compressed unless asked
//! otherwise, whose entries are, in this order and nothing else:
//!
//! 1. `ferry-bundle.json`: this module's [`BundleIndex`];
//! 2. in signed bundles only, `ferry-bundle.json.minisig`: a minisign
//!    signature of the exact bytes of entry 1 (see `sign`);
//! 3. the registry root: `docker/`, `docker/registry/`, … every directory and
//!    file of distribution's v2 layout, depth first, names sorted bytewise.
//!
//! Every entry has uid/gid 0, no user or group names, mode 0755 (directories)
//! or 0644 (files), and mtime `SOURCE_DATE_EPOCH` (else 0), so the same inputs
//! give the same bytes. The zstd stream is *seekable*: independent frames that
//! start at tar member boundaries (a large member is cut every
//! [`MAX_FRAME_BYTES`]), then the seek table of the zstd seekable format in a
//! skippable frame. `zstd -d` and `tar --zstd -x` read it as one stream.
//!
//! Since the offset table, the last frames before the seek table are skippable
//! frames ([`OFFSETS_PIECE_MAGIC`], decompressed size 0 in the seek table, at
//! most [`OFFSETS_PIECE_FRAME_BYTES`] each) whose payloads, joined, are the
//! zstd-compressed JSON of an [`OffsetTable`]: where each blob's bytes start in
//! the tar stream and every link the tar holds, so a server starts without
//! reading the archive. Tar readers never see it (zstd skips skippable
//! frames); bundles without it are read by a full scan as before. The pieces
//! are small because ferry builds before the table refuse any frame larger
//! than its data + 1/8 + 1 KiB, and read these bundles by a full scan; builds
//! that wrote the table as one frame ([`OFFSETS_MAGIC`], still read) see the
//! pieces as no table and scan too. A blob manifest-sized or smaller
//! ([`SMALL_FRAME_BLOB_BYTES`]) sits in a frame of its own, so reading it
//! decompresses a few KiB, not a whole frame of layer data.
//!
//! A frame whose bytes are mostly compressed already (gzip or zstd layers) is
//! written as a zstd frame of raw blocks with its content size and checksum
//! (the frame zstd writes for bytes it cannot shrink), without running the
//! compressor; every zstd reader reads it as any other frame.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Name of the index entry, always first.
pub const INDEX_NAME: &str = "ferry-bundle.json";

/// The four bytes every zstd frame starts with (RFC 8878), written and checked in one place.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// Format identifier written into the index.
pub const FORMAT: &str = "ferry-bundle/v1";

/// A frame is closed at the first member boundary past this many bytes…
pub const MIN_FRAME_BYTES: usize = 256 * 1024;

/// …or inside a member when it reaches this many: small frames keep what a
/// server decompresses (and holds) per reader small. Bundles written with
/// larger frames (up to [`MAX_READ_FRAME_BYTES`]) are still read.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Largest frame a reader accepts: earlier ferry versions wrote frames of up to 4 MiB;
/// a larger one would make a reader allocate what a hostile table says.
pub const MAX_READ_FRAME_BYTES: u64 = 16 * 1024 * 1024;

/// Blobs up to this size (manifests, configs) get a frame of their own (header and data only).
pub const SMALL_FRAME_BLOB_BYTES: u64 = 64 * 1024;

/// Skippable frame magic of the offset table as one frame, as the first builds with a table wrote
/// it (read, never written: older readers refuse a frame that large).
pub const OFFSETS_MAGIC: u32 = 0x184D_2A5F;

/// Skippable frame magic of each piece of the offset table (the seek table's is [`SEEK_TABLE_MAGIC`]).
pub const OFFSETS_PIECE_MAGIC: u32 = 0x184D_2A5D;

/// Largest frame of a piece of the offset table, header included: the largest frame of no
/// data that every older ferry accepts (their rule: compressed ≤ data + data/8 + 1024).
pub const OFFSETS_PIECE_FRAME_BYTES: usize = 1024;

/// The frame-size rule of every ferry reader before the offset table: a frame of `data`
/// decompressed bytes is at most this many compressed ones. Every frame a bundle has obeys it.
pub fn older_readers_accept(compressed: u64, data: u64) -> bool {
    data <= MAX_READ_FRAME_BYTES && compressed <= data + data / 8 + 1024
}

/// Format identifier of the offset table.
pub const OFFSETS_FORMAT: &str = "ferry-offsets/v1";

/// Largest offset table read (compressed or not): a bundle of 50,000 tags needs a few MiB.
pub const MAX_OFFSETS_BYTES: u64 = 64 * 1024 * 1024;

/// Where everything of a bundle's tar is, written by the packer after the archive, so a reader
/// serves in place without scanning it. Nothing in it is trusted: its links are checked against
/// `ferry-bundle.json` at open, and a blob's bytes against its digest as they are read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OffsetTable {
    /// [`OFFSETS_FORMAT`].
    pub format: String,
    /// sha256 of the exact bytes of `ferry-bundle.json`: ties the table to its bundle.
    pub index_digest: Digest,
    /// Every blob file, in archive order.
    pub blobs: Vec<BlobAt>,
    /// The links of every repository.
    pub repos: std::collections::BTreeMap<String, RepoLinks>,
}

/// Where one blob's bytes are in the (uncompressed) tar stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobAt {
    /// The blob.
    pub digest: Digest,
    /// Offset of its first byte.
    pub offset: u64,
    /// Its size.
    pub size: u64,
}

/// The link files of one repository, as the archive holds them (tag history links are the tags').
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoLinks {
    /// `_layers` links.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Digest>,
    /// `_manifests/revisions` links.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<Digest>,
    /// Tags and their `current/link`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, Digest>,
}

/// Skippable frame magic used for the seek table.
pub const SEEK_TABLE_MAGIC: u32 = 0x184D_2A5E;

/// Magic at the very end of a seekable zstd file.
pub const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;

/// What a bundle holds; the first entry of every bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleIndex {
    /// [`FORMAT`].
    pub format: String,
    /// The ferry version that wrote it.
    pub created_by: String,
    /// The mtime of every entry.
    pub source_date_epoch: u64,
    /// Every image, in list order.
    pub images: Vec<BundleImage>,
    /// Images left out by `--keep-going`, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<Failure>,
    /// Number of config and layer blobs.
    pub blob_count: usize,
    /// Bytes of config and layer blobs.
    pub blob_bytes: u64,
    /// Every blob file of the root (manifests included), sorted, so a reader can check as it streams.
    pub blobs: Vec<BlobEntry>,
    /// For a delta bundle (`--since`): the bundle it was made against and the blobs it leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DeltaBase>,
}

/// The base of a delta bundle: what the site must already hold for the delta's links to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeltaBase {
    /// sha256 of the base's `ferry-bundle.json` bytes: the base's identity.
    pub index_digest: Digest,
    /// The base's file name when the delta was made, for messages.
    pub name: String,
    /// Blobs (manifests included) the delta's images use but leave out because the base carries them, sorted.
    pub left_out: Vec<LeftOut>,
}

/// A blob a delta leaves out, with the images that need it (so a missing one is named by image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftOut {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// The images using it, as `repository[:tag]`.
    pub images: Vec<String>,
}

/// How a bundle names an image (`repository:tag`, or `repository@digest` when untagged): in a
/// delta's left-out list, in `ls` and wherever one is matched against the other.
pub fn image_name(repository: &str, tag: Option<&str>, digest: &Digest) -> String {
    match tag {
        Some(t) => format!("{repository}:{t}"),
        None => format!("{repository}@{digest}"),
    }
}

/// One image of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleImage {
    /// `##section` of the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
    /// Reference as written in the list.
    pub source: String,
    /// Repository in the bundle.
    pub repository: String,
    /// Tag in the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Top manifest digest (the source's).
    pub digest: Digest,
    /// Top manifest media type.
    pub media_type: String,
    /// For an index: every child and whether it is in the bundle (absent ones make a sparse index).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformEntry>,
}

/// A blob file in the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub struct BlobEntry {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

/// One child of an index and whether the bundle holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlatformEntry {
    /// `os/arch[/variant]`, or `unknown` when the index does not say.
    pub platform: String,
    /// The child manifest.
    pub digest: Digest,
    /// Whether the child is in the bundle.
    pub present: bool,
}

/// An image that could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    /// The reference as written (with `file:line`).
    pub image: String,
    /// `file:line` of the images list that named it, on its own for `--json` readers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Why, in one line.
    pub cause: String,
}
