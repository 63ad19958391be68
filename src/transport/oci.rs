//! `oci:PATH[:REF]`: an OCI image layout, written byte for byte as skopeo
//! 1.9.3 (containers/image v5.23, `oci/layout/`) writes it:
//!
//! ```text
//! PATH/oci-layout                   {"imageLayoutVersion": "1.0.0"}   (no newline)
//! PATH/index.json                   Go json.Marshal of the index: compact, Go's field order and escaping
//! PATH/blobs/<alg>/<hex>            every config, layer and manifest
//! ```
//!
//! Writing: blobs and manifests are verified and renamed into place as they
//! come; at commit the top manifest gets its `index.json` entry, named
//! `org.opencontainers.image.ref.name` = REF when a REF is given. As
//! containers/image does, the name is first taken off any other entry that
//! had it (that entry stays, unnamed), then an unnamed entry with the same
//! digest is replaced, else the entry is appended. Other entries are kept,
//! re-encoded as Go would (unknown fields dropped). `index.json` is written
//! through a temporary file and a rename.
//!
//! Reading: REF picks the OCI manifest or index entry with that name; with
//! no REF the index must list exactly one entry.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::dir::{
    create_dir_all, has_file, local_blob, put_blob_file, read_manifest_file, verify_bytes,
    write_atomic, write_blob_atomic,
};
use super::{DestProperties, Destination, Put, Result, Source, TransportError};
use crate::blob::BlobBody;
use crate::digest::Digest;
use crate::manifest::{Descriptor, RawManifest};
use crate::media_type as mt;

/// The annotation that names an `index.json` entry (the REF of `oci:PATH:REF`).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// The `oci-layout` file's exact content, as containers/image writes it.
pub const OCI_LAYOUT_CONTENT: &str = r#"{"imageLayoutVersion": "1.0.0"}"#;

const OCI_LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";
const BLOBS_DIR: &str = "blobs";

/// Whether `r` is a valid OCI ref name (the grammar of image-spec's
/// `org.opencontainers.image.ref.name`, as containers/image checks it):
/// components of letters and digits joined by one of `-._:@+` or `--`,
/// separated by `/`.
pub fn is_valid_ref_name(r: &str) -> bool {
    fn component(c: &[u8]) -> bool {
        let alnum_run = |i: &mut usize| {
            let start = *i;
            while *i < c.len() && c[*i].is_ascii_alphanumeric() {
                *i += 1;
            }
            *i > start
        };
        let mut i = 0;
        if !alnum_run(&mut i) {
            return false;
        }
        while i < c.len() {
            if c[i..].starts_with(b"--") {
                i += 2;
            } else if b"-._:@+".contains(&c[i]) {
                i += 1;
            } else {
                return false;
            }
            if !alnum_run(&mut i) {
                return false;
            }
        }
        true
    }
    r.split('/').all(|c| component(c.as_bytes()))
}

fn check_ref_name(path: &Path, r: Option<&str>) -> Result<()> {
    match r {
        Some(r) if !is_valid_ref_name(r) => Err(TransportError::Invalid(format!(
            "oci:{}:{r}: {r:?} is not a valid OCI reference name (letters and digits, joined by \
             one of - . _ : @ + or by --, in components separated by /)",
            path.display()
        ))),
        _ => Ok(()),
    }
}

fn blob_path(root: &Path, digest: &Digest) -> PathBuf {
    root.join(BLOBS_DIR)
        .join(digest.algorithm().name())
        .join(digest.hex())
}

fn display_name(root: &Path, reference: Option<&str>) -> String {
    match reference {
        Some(r) => format!("oci:{}:{r}", root.display()),
        None => format!("oci:{}", root.display()),
    }
}

// ---- index.json, as Go's encoding/json reads and writes image-spec's structs ----

/// Go decodes `null` as the zero value.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> std::result::Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `[]byte` fields are base64 (standard alphabet, padded) in Go's JSON.
mod go_bytes {
    use super::*;

    fn engine() -> base64::engine::GeneralPurpose {
        base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_allow_trailing_bits(true)
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireCanonical),
        )
    }

    pub(super) fn serialize<S: Serializer>(
        bytes: &[u8],
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&engine().encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Vec<u8>, D::Error> {
        let Some(s) = Option::<String>::deserialize(d)? else {
            return Ok(Vec::new());
        };
        // Go's decoder skips line breaks.
        let s: String = s.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        engine().decode(s).map_err(serde::de::Error::custom)
    }
}

/// image-spec v1.1.0-rc2 `Platform`, fields in Go's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LayoutPlatform {
    #[serde(default, deserialize_with = "nullable")]
    architecture: String,
    #[serde(default, deserialize_with = "nullable")]
    os: String,
    #[serde(
        rename = "os.version",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    os_version: String,
    #[serde(
        rename = "os.features",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    os_features: Vec<String>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    variant: String,
}

/// image-spec v1.1.0-rc2 `Descriptor`, fields in Go's order. The digest is
/// kept as a string (Go does not check it); it is parsed before any use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutDescriptor {
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    media_type: String,
    #[serde(default, deserialize_with = "nullable")]
    digest: String,
    #[serde(default, deserialize_with = "nullable")]
    size: i64,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    urls: Vec<String>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    annotations: BTreeMap<String, String>,
    #[serde(default, with = "go_bytes", skip_serializing_if = "Vec::is_empty")]
    data: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<LayoutPlatform>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    artifact_type: String,
}

impl LayoutDescriptor {
    fn ref_name(&self) -> &str {
        self.annotations
            .get(REF_NAME_ANNOTATION)
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// image-spec v1.1.0-rc2 `Index`, fields in Go's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutIndex {
    #[serde(default, deserialize_with = "nullable")]
    schema_version: i64,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    media_type: String,
    #[serde(default, deserialize_with = "nullable")]
    manifests: Vec<LayoutDescriptor>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    annotations: BTreeMap<String, String>,
}

impl LayoutIndex {
    fn new() -> LayoutIndex {
        LayoutIndex {
            schema_version: 2,
            ..LayoutIndex::default()
        }
    }

    /// Adds the top manifest's entry as containers/image's `addManifest` does.
    fn add(&mut self, entry: LayoutDescriptor) {
        let name = entry.ref_name().to_string();
        if !name.is_empty()
            && let Some(old) = self.manifests.iter_mut().find(|m| m.ref_name() == name)
        {
            old.annotations.remove(REF_NAME_ANNOTATION);
        }
        if let Some(same) = self
            .manifests
            .iter_mut()
            .find(|m| m.digest == entry.digest && m.ref_name().is_empty())
        {
            *same = entry;
            return;
        }
        self.manifests.push(entry);
    }

    /// The bytes Go's `json.Marshal` produces for this index.
    fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_string(self).expect("an index always serialises");
        crate::gojson::escape(&json).into_bytes()
    }
}

/// The layout's `index.json`, parsed; `None` when the file does not exist.
fn read_index(root: &Path) -> Result<Option<LayoutIndex>> {
    let path = root.join(INDEX_FILE);
    // Capped: a layout may come from outside (an oci-archive), and index.json is read whole.
    let bytes = match File::open(&path) {
        Ok(f) => {
            let mut b = Vec::new();
            f.take(crate::limits::MAX_LAYOUT_INDEX_BYTES + 1)
                .read_to_end(&mut b)
                .map_err(TransportError::io("reading", &path))?;
            if b.len() as u64 > crate::limits::MAX_LAYOUT_INDEX_BYTES {
                return Err(TransportError::Invalid(format!(
                    "{}: larger than {} bytes",
                    path.display(),
                    crate::limits::MAX_LAYOUT_INDEX_BYTES
                )));
            }
            b
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TransportError::io("reading", path)(e)),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        TransportError::Invalid(format!("{}: not an OCI image index: {e}", path.display()))
    })
}

// ---- source ----

/// An image of an OCI layout, read.
pub struct OciSource {
    root: PathBuf,
    reference: Option<String>,
    top: Digest,
    top_size: u64,
    top_media_type: Option<String>,
}

impl OciSource {
    /// Opens the image named `reference` in the layout at `path` (with no
    /// reference, the layout's only image).
    pub fn open(path: &Path, reference: Option<&str>) -> Result<OciSource> {
        check_ref_name(path, reference)?;
        let name = display_name(path, reference);
        let index = read_index(path)?.ok_or_else(|| {
            TransportError::NotFound(format!("{name}: no {INDEX_FILE} (not an OCI image layout)"))
        })?;
        let entry = match reference {
            Some(r) => index
                .manifests
                .iter()
                .filter(|m| m.media_type == mt::OCI_MANIFEST || m.media_type == mt::OCI_INDEX)
                .find(|m| m.annotations.get(REF_NAME_ANNOTATION).map(String::as_str) == Some(r))
                .ok_or_else(|| {
                    TransportError::NotFound(format!(
                        "{name}: no image named {r:?} in {INDEX_FILE}"
                    ))
                })?,
            None => match index.manifests.as_slice() {
                [one] => one,
                [] => {
                    return Err(TransportError::NotFound(format!(
                        "{name}: {INDEX_FILE} lists no image"
                    )));
                }
                many => {
                    let names: Vec<&str> = many
                        .iter()
                        .map(LayoutDescriptor::ref_name)
                        .filter(|n| !n.is_empty())
                        .collect();
                    return Err(TransportError::Invalid(format!(
                        "{name}: {INDEX_FILE} lists {} images; choose one with oci:{}:REF{}",
                        many.len(),
                        path.display(),
                        if names.is_empty() {
                            String::new()
                        } else {
                            format!(" (named: {})", names.join(", "))
                        }
                    )));
                }
            },
        };
        let top = Digest::parse(&entry.digest)
            .map_err(|e| TransportError::Invalid(format!("{name}: {INDEX_FILE} entry: {e}")))?;
        let top_size = u64::try_from(entry.size).map_err(|_| {
            TransportError::Invalid(format!(
                "{name}: {INDEX_FILE} entry {top} has a negative size"
            ))
        })?;
        Ok(OciSource {
            root: path.to_path_buf(),
            reference: reference.map(str::to_string),
            top,
            top_size,
            top_media_type: Some(entry.media_type.clone()).filter(|m| !m.is_empty()),
        })
    }
}

impl Source for OciSource {
    fn plain_layers(&self) -> super::PlainLayers {
        super::PlainLayers::GzipTyped
    }

    fn name(&self) -> String {
        display_name(&self.root, self.reference.as_deref())
    }

    async fn top(&self) -> Result<RawManifest> {
        let path = blob_path(&self.root, &self.top);
        let bytes = read_manifest_file(&path)?.ok_or_else(|| {
            TransportError::NotFound(format!(
                "{}: manifest {} not found: no file {}",
                self.name(),
                self.top,
                path.display()
            ))
        })?;
        verify_bytes(&self.top, Some(self.top_size), &bytes)?;
        Ok(RawManifest::new(bytes, self.top_media_type.as_deref())?)
    }

    async fn manifest(&self, digest: &Digest) -> Result<Option<RawManifest>> {
        let Some(bytes) = read_manifest_file(&blob_path(&self.root, digest))? else {
            return Ok(None);
        };
        verify_bytes(digest, None, &bytes)?;
        let declared = (digest == &self.top)
            .then_some(self.top_media_type.as_deref())
            .flatten();
        Ok(Some(RawManifest::new(bytes, declared)?))
    }

    async fn blob(&self, desc: &Descriptor) -> Result<BlobBody> {
        // The layout's own bytes; a foreign layer it lacks is fetched from its URLs by the
        // copy engine (crate::copy::foreign).
        local_blob(&blob_path(&self.root, &desc.digest), desc)
    }
}

// ---- destination ----

/// An image written into an OCI layout (created when missing; other images in it are kept).
pub struct OciDest {
    root: PathBuf,
    reference: Option<String>,
}

impl OciDest {
    /// Opens the layout at `path` for writing, creating it (and `blobs/`) when
    /// missing; the image is named `reference` in `index.json` at commit.
    pub fn create(path: &Path, reference: Option<&str>) -> Result<OciDest> {
        check_ref_name(path, reference)?;
        // An index.json that does not parse is refused now, before any blob is written.
        read_index(path)?;
        create_dir_all(&path.join(BLOBS_DIR))?;
        Ok(OciDest {
            root: path.to_path_buf(),
            reference: reference.map(str::to_string),
        })
    }

    /// Writes manifest bytes as a blob.
    fn write_manifest_blob(&self, manifest: &RawManifest) -> Result<()> {
        let to = blob_path(&self.root, manifest.digest());
        create_dir_all(to.parent().expect("a blob path has a parent"))?;
        write_blob_atomic(&self.root, &to, manifest.bytes())
    }
}

impl Destination for OciDest {
    fn name(&self) -> String {
        display_name(&self.root, self.reference.as_deref())
    }

    fn properties(&self) -> DestProperties {
        DestProperties {
            manifest_types: vec![mt::OCI_MANIFEST, mt::OCI_INDEX],
            accepts_index: true,
            accepts_sparse_index: true,
            ordered_blobs: false,
            compresses_layers: true,
        }
    }

    async fn has_blob(&self, desc: &Descriptor) -> Result<bool> {
        Ok(has_file(&blob_path(&self.root, &desc.digest), desc.size))
    }

    async fn put_blob(&self, desc: &Descriptor, body: BlobBody) -> Result<Put> {
        let to = blob_path(&self.root, &desc.digest);
        if has_file(&to, desc.size) {
            return Ok(Put::Present);
        }
        create_dir_all(to.parent().expect("a blob path has a parent"))?;
        put_blob_file(&self.root, &to, desc, body).await?;
        Ok(Put::Written)
    }

    async fn put_manifest(&self, manifest: &RawManifest) -> Result<()> {
        self.write_manifest_blob(manifest)
    }

    async fn commit(&self, top: &RawManifest) -> Result<()> {
        self.write_manifest_blob(top)?;
        let mut entry = LayoutDescriptor {
            media_type: top.media_type().to_string(),
            digest: top.digest().to_string(),
            size: top.bytes().len() as i64,
            ..LayoutDescriptor::default()
        };
        if let Some(r) = &self.reference {
            entry
                .annotations
                .insert(REF_NAME_ANNOTATION.to_string(), r.clone());
        }
        // Read again now, so entries added by others since create are kept.
        let mut index = read_index(&self.root)?.unwrap_or_else(LayoutIndex::new);
        index.add(entry);
        write_atomic(
            &self.root,
            &self.root.join(OCI_LAYOUT_FILE),
            OCI_LAYOUT_CONTENT.as_bytes(),
        )?;
        write_atomic(&self.root, &self.root.join(INDEX_FILE), &index.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::super::dir::tests::{body, fixture, read_body};
    use super::*;

    #[test]
    fn ref_name_grammar() {
        for ok in [
            "latest",
            "v1.2.3",
            "a/b/c",
            "a--b",
            "a:b",
            "a@b+c",
            "A_z-9",
            "example.com/app:v1",
        ] {
            assert!(is_valid_ref_name(ok), "{ok}");
        }
        for bad in [
            "", "-a", "a-", "a..b", "a---b", "a//b", "/a", "a/", "a b", "é", "a/../b", "..",
        ] {
            assert!(!is_valid_ref_name(bad), "{bad}");
        }
        let tmp = tempfile::tempdir().unwrap();
        let err = OciDest::create(tmp.path(), Some("a..b")).err().unwrap();
        assert!(matches!(err, TransportError::Invalid(_)));
        assert!(
            err.to_string().contains("not a valid OCI reference name"),
            "{err}"
        );
        assert!(OciSource::open(tmp.path(), Some("../x")).is_err());
    }

    #[tokio::test]
    async fn round_trip_image_and_index() {
        let fx = fixture(mt::OCI_MANIFEST, mt::OCI_CONFIG, mt::OCI_INDEX);
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("layout");
        let dest = OciDest::create(&root, Some("v1")).unwrap();
        assert_eq!(
            dest.properties().manifest_types,
            vec![mt::OCI_MANIFEST, mt::OCI_INDEX]
        );
        for (i, (desc, bytes)) in fx.blobs.iter().enumerate() {
            assert!(!dest.has_blob(desc).await.unwrap());
            assert_eq!(
                dest.put_blob(desc, body(bytes, i == 0)).await.unwrap(),
                Put::Written
            );
            assert!(dest.has_blob(desc).await.unwrap());
        }
        dest.put_manifest(&fx.image).await.unwrap();
        dest.commit(&fx.index).await.unwrap();

        assert_eq!(
            std::fs::read_to_string(root.join(OCI_LAYOUT_FILE)).unwrap(),
            OCI_LAYOUT_CONTENT
        );
        let want = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"v1"}}}}]}}"#,
            mt::OCI_INDEX,
            fx.index.digest(),
            fx.index.bytes().len()
        );
        assert_eq!(
            std::fs::read_to_string(root.join(INDEX_FILE)).unwrap(),
            want
        );
        let mut names: Vec<String> = std::fs::read_dir(root.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut want: Vec<String> = fx
            .blobs
            .iter()
            .map(|(d, _)| d.digest.hex().to_string())
            .chain([
                fx.image.digest().hex().to_string(),
                fx.index.digest().hex().to_string(),
            ])
            .collect();
        want.sort();
        assert_eq!(names, want);
        // No temporary file left in the root.
        let mut top: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        top.sort();
        assert_eq!(top, vec!["blobs", "index.json", "oci-layout"]);

        for reference in [Some("v1"), None] {
            let src = OciSource::open(&root, reference).unwrap();
            assert_eq!(src.top().await.unwrap(), fx.index);
            assert_eq!(
                src.manifest(fx.image.digest()).await.unwrap(),
                Some(fx.image.clone())
            );
            assert_eq!(
                src.manifest(&Digest::sha256_of(b"nope")).await.unwrap(),
                None
            );
            for (desc, bytes) in &fx.blobs {
                assert_eq!(&read_body(src.blob(desc).await.unwrap()).await, bytes);
            }
        }
        let err = OciSource::open(&root, Some("v2")).err().unwrap();
        assert!(matches!(err, TransportError::NotFound(_)), "{err}");

        // A manifest blob whose bytes do not match its name is refused.
        std::fs::write(blob_path(&root, fx.image.digest()), b"{}").unwrap();
        let src = OciSource::open(&root, Some("v1")).unwrap();
        assert!(matches!(
            src.manifest(fx.image.digest()).await,
            Err(TransportError::Corrupt { .. })
        ));
    }

    fn entry(digest: &Digest, name: Option<&str>) -> LayoutDescriptor {
        let mut d = LayoutDescriptor {
            media_type: mt::OCI_MANIFEST.to_string(),
            digest: digest.to_string(),
            size: 10,
            ..LayoutDescriptor::default()
        };
        if let Some(n) = name {
            d.annotations
                .insert(REF_NAME_ANNOTATION.to_string(), n.to_string());
        }
        d
    }

    #[test]
    fn index_entry_replacement_as_containers_image() {
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        let mut index = LayoutIndex::new();
        index.add(entry(&a, Some("one")));
        index.add(entry(&a, Some("two")));
        assert_eq!(
            index.manifests,
            vec![entry(&a, Some("one")), entry(&a, Some("two"))]
        );
        // Same name, same digest: the name moves; the unnamed entry of that digest is replaced.
        index.add(entry(&a, Some("one")));
        assert_eq!(
            index.manifests,
            vec![entry(&a, Some("one")), entry(&a, Some("two"))]
        );
        // Same name, other digest: the old entry keeps its place, unnamed.
        index.add(entry(&b, Some("one")));
        assert_eq!(
            index.manifests,
            vec![
                entry(&a, None),
                entry(&a, Some("two")),
                entry(&b, Some("one"))
            ]
        );
        // No name: replaces an unnamed entry of the same digest, else appends.
        index.add(entry(&a, None));
        index.add(entry(&b, None));
        assert_eq!(
            index.manifests,
            vec![
                entry(&a, None),
                entry(&a, Some("two")),
                entry(&b, Some("one")),
                entry(&b, None)
            ]
        );
    }

    /// An index.json carrying every field image-spec rc2 knows plus some it
    /// does not, and the bytes skopeo 1.9.3 wrote after `skopeo copy … oci:DIR:three`.
    const CRAFTED: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","artifactType":"x/y","subject":{"mediaType":"a/b","digest":"sha256:d0ff3adb48b0087fe806c6c5dec87938aab9252d2833dfd99dc4c6f729a4fb46","size":1},"extra":1,
"manifests":[{"platform":{"variant":"v8","features":["f"],"os.features":["g"],"os.version":"1","os":"linux","architecture":"arm64","zzz":1},"artifactType":"t/t","data":"aGVsbG8=","annotations":{"z":"<&>\u0008\u000c\u2028\u0001é\\b","a":"1","org.opencontainers.image.ref.name":"one"},"urls":["http://x/?a=1&b=<2>"],"size":1234,"digest":"sha256:d0ff3adb48b0087fe806c6c5dec87938aab9252d2833dfd99dc4c6f729a4fb46","mediaType":"application/vnd.oci.image.manifest.v1+json","unknown":"u"},
{"digest":"sha256:D0FF","size":5},
{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:d0ff3adb48b0087fe806c6c5dec87938aab9252d2833dfd99dc4c6f729a4fb46","size":1234,"annotations":{"org.opencontainers.image.ref.name":"two"}}],
"annotations":{"b":"2","a":"1"}}"#;
    const SKOPEO_WROTE: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:d0ff3adb48b0087fe806c6c5dec87938aab9252d2833dfd99dc4c6f729a4fb46","size":1234,"urls":["http://x/?a=1\u0026b=\u003c2\u003e"],"annotations":{"a":"1","org.opencontainers.image.ref.name":"one","z":"\u003c\u0026\u003e\u0008\u000c\u2028\u0001é\\b"},"data":"aGVsbG8=","platform":{"architecture":"arm64","os":"linux","os.version":"1","os.features":["g"],"variant":"v8"},"artifactType":"t/t"},{"digest":"sha256:D0FF","size":5},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:d0ff3adb48b0087fe806c6c5dec87938aab9252d2833dfd99dc4c6f729a4fb46","size":1234,"annotations":{"org.opencontainers.image.ref.name":"two"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:d0ff3adb48b0087fe806c6c5dec87938aab9252d2833dfd99dc4c6f729a4fb46","size":1234,"annotations":{"org.opencontainers.image.ref.name":"three"}}],"annotations":{"a":"1","b":"2"}}"#;

    #[tokio::test]
    async fn index_json_bytes_match_skopeo() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(INDEX_FILE), CRAFTED).unwrap();
        // The manifest skopeo wrote in that run: an OCI manifest of 1234 bytes with this digest.
        let fx = fixture(mt::OCI_MANIFEST, mt::OCI_CONFIG, mt::OCI_INDEX);
        let dest = OciDest::create(tmp.path(), Some("three")).unwrap();
        dest.commit(&fx.image).await.unwrap();
        let got = std::fs::read_to_string(tmp.path().join(INDEX_FILE)).unwrap();
        let want = SKOPEO_WROTE.replace(
            r#""digest":"sha256:d0ff3adb48b0087fe806c6c5dec87938aab9252d2833dfd99dc4c6f729a4fb46","size":1234,"annotations":{"org.opencontainers.image.ref.name":"three"}"#,
            &format!(
                r#""digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"three"}}"#,
                fx.image.digest(),
                fx.image.bytes().len()
            ),
        );
        assert_eq!(got, want);

        // Several entries and no REF: the error says so.
        let err = OciSource::open(tmp.path(), None).err().unwrap();
        assert!(err.to_string().contains("lists 4 images"), "{err}");
        // The entry with a non-canonical digest is kept but never becomes a path.
        assert!(OciSource::open(tmp.path(), Some("two")).is_ok());
    }

    #[test]
    fn refuses_an_index_that_does_not_parse() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(INDEX_FILE), b"{not json").unwrap();
        let err = OciDest::create(tmp.path(), None).err().unwrap();
        assert!(err.to_string().contains("not an OCI image index"), "{err}");
        std::fs::write(
            tmp.path().join(INDEX_FILE),
            br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../etc/passwd","size":1}]}"#,
        )
        .unwrap();
        let err = OciSource::open(tmp.path(), None).err().unwrap();
        assert!(matches!(err, TransportError::Invalid(_)), "{err}");
    }
}

/// Byte-for-byte comparison with skopeo, run by hand. Serve `ferry fixtures
/// --preset tiny ROOT` with `ferry serve ROOT`, write skopeo's side into SK
/// (`skopeo copy --src-tls-verify=false docker://ADDR/busybox:v1.1.0 dir:SK/bb`;
/// `calico/controller-1:v1.1.1` to `dir:SK/list-sys`, and with `--all` to
/// `dir:SK/list-all`; `openebs/proxy-2:v1.1.2` to `dir:SK/ocim`, `oci:SK/lay:one`,
/// `oci:SK/lay:two` and `oci:SK/lay-noref`; `--all --format oci` of the calico
/// list to `dir:SK/oci-all`; then `--all dir:SK/oci-all oci:SK/idx:x`), then run
/// `FERRY_INTEROP_ADDR=ADDR FERRY_INTEROP_OUT=OUT FERRY_INTEROP_SKOPEO=SK cargo
/// test --lib skopeo_interop -- --ignored` and `diff -r SK/<name> OUT/<name>`.
#[cfg(test)]
mod interop {
    use super::super::dir::{DirDest, DirSource};
    use super::super::registry::{Clients, RegistrySource};
    use super::*;
    use crate::copy::{CopyOptions, MultiArch, NoProgress, copy};
    use crate::reference::Reference;
    use crate::registry::ClientOptions;

    #[tokio::test]
    #[ignore = "needs a registry and skopeo's output; see the module docs"]
    async fn skopeo_interop() {
        let addr = std::env::var("FERRY_INTEROP_ADDR").unwrap();
        let out = PathBuf::from(std::env::var("FERRY_INTEROP_OUT").unwrap());
        let skopeo = PathBuf::from(std::env::var("FERRY_INTEROP_SKOPEO").unwrap());
        let clients = Clients::default();
        let opts = ClientOptions {
            tls_verify: false,
            ..ClientOptions::default()
        };
        let src = |image: &str| {
            let r = Reference::parse(&format!("{addr}/{image}")).unwrap();
            RegistrySource::open(&clients, &r, "docker.io", &opts).unwrap()
        };
        let system = CopyOptions::default();
        let all = CopyOptions {
            multi_arch: MultiArch::All,
            ..CopyOptions::default()
        };
        let p = |s: &str| out.join(s);
        let run = |r: Result<crate::copy::CopySummary, crate::copy::CopyError>| {
            r.unwrap();
        };
        // From the registry.
        run(copy(
            src("busybox:v1.1.0"),
            DirDest::create(&p("bb")).unwrap(),
            &system,
            &NoProgress,
        )
        .await);
        run(copy(
            src("calico/controller-1:v1.1.1"),
            DirDest::create(&p("list-sys")).unwrap(),
            &system,
            &NoProgress,
        )
        .await);
        run(copy(
            src("calico/controller-1:v1.1.1"),
            DirDest::create(&p("list-all")).unwrap(),
            &all,
            &NoProgress,
        )
        .await);
        run(copy(
            src("openebs/proxy-2:v1.1.2"),
            DirDest::create(&p("ocim")).unwrap(),
            &system,
            &NoProgress,
        )
        .await);
        for (dir, r) in [
            ("lay", Some("one")),
            ("lay", Some("two")),
            ("lay-noref", None),
        ] {
            run(copy(
                src("openebs/proxy-2:v1.1.2"),
                OciDest::create(&p(dir), r).unwrap(),
                &system,
                &NoProgress,
            )
            .await);
        }
        // Entry replacement: as `skopeo copy` did into sk/lay3 (lay, then busybox as :one, then unnamed).
        for (image, r) in [
            ("openebs/proxy-2:v1.1.2", Some("one")),
            ("openebs/proxy-2:v1.1.2", Some("two")),
            ("busybox:v1.1.0", Some("one")),
            ("busybox:v1.1.0", None),
        ] {
            let dest = OciDest::create(&p("lay3"), r).unwrap();
            run(copy(src(image), dest, &system, &NoProgress).await);
        }
        // From what skopeo wrote.
        let dest = OciDest::create(&p("idx"), Some("x")).unwrap();
        let source = DirSource::open(&skopeo.join("oci-all")).unwrap();
        run(copy(source, dest, &all, &NoProgress).await);
        run(copy(
            DirSource::open(&skopeo.join("list-all")).unwrap(),
            DirDest::create(&p("from-dir-all")).unwrap(),
            &all,
            &NoProgress,
        )
        .await);
        run(copy(
            DirSource::open(&skopeo.join("bb")).unwrap(),
            DirDest::create(&p("from-dir-bb")).unwrap(),
            &system,
            &NoProgress,
        )
        .await);
        run(copy(
            OciSource::open(&skopeo.join("lay"), Some("one")).unwrap(),
            OciDest::create(&p("from-oci"), Some("one")).unwrap(),
            &system,
            &NoProgress,
        )
        .await);
        run(copy(
            OciSource::open(&skopeo.join("lay-noref"), None).unwrap(),
            DirDest::create(&p("oci-to-dir")).unwrap(),
            &system,
            &NoProgress,
        )
        .await);
    }
}
