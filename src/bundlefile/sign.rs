//! Signed bundles: a minisign (ed25519, prehashed) signature of the exact bytes
//! of `ferry-bundle.json`, which names every blob with its digest and size, so
//! the signature covers the whole bundle. The signature travels as the
//! bundle's second entry ([`SIGNATURE_NAME`]) and beside the bundle as
//! `BUNDLE.minisig`; the key files are minisign's own, so
//! `minisign -Vm ferry-bundle.json -x BUNDLE.minisig -p NAME.pub` agrees.

use std::io::Write;
use std::path::{Path, PathBuf};

use minisign::{PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};

/// Name of the signature entry, right after `ferry-bundle.json` when present.
pub const SIGNATURE_NAME: &str = "ferry-bundle.json.minisig";

/// Largest signature file read (minisign's are about 300 bytes).
pub const MAX_SIGNATURE_BYTES: u64 = 4096;

/// The trusted comment of every ferry signature (signed too; no timestamp, which says nothing here).
const TRUSTED_COMMENT: &str = "file:ferry-bundle.json";

/// Why a key could not be made or read, or a signature did not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// A key or signature file could not be read or written.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// A file that is not a minisign key or signature, or a key that cannot sign.
    #[error("{}: {why}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The bundle carries no signature but one was required.
    #[error("{}: unsigned (no {SIGNATURE_NAME} after ferry-bundle.json), but --key asks for a signed bundle", bundle.display())]
    Unsigned {
        /// The bundle.
        bundle: PathBuf,
    },
    /// Signed by a key other than the one given.
    #[error("{}: signed by key {found}, not by the key in {} ({wanted})", bundle.display(), key.display())]
    OtherKey {
        /// The bundle.
        bundle: PathBuf,
        /// The public key file.
        key: PathBuf,
        /// Key id in the signature.
        found: String,
        /// Key id of the public key.
        wanted: String,
    },
    /// The signature does not match ferry-bundle.json (changed after signing).
    #[error("{}: ferry-bundle.json does not match its signature ({why}): changed after signing", bundle.display())]
    Mismatch {
        /// The bundle.
        bundle: PathBuf,
        /// What minisign said.
        why: String,
    },
}

/// A secret key read from a file, ready to sign.
pub struct SigningKey {
    sk: SecretKey,
    pk: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        write!(f, "SigningKey({})", key_id(self.pk.keynum()))
    }
}

/// A public key read from a file, with the file's name for messages.
#[derive(Debug)]
pub struct VerifyingKey {
    pk: PublicKey,
    path: PathBuf,
}

/// A key id as minisign prints it (16 hex digits of the little-endian key number).
fn key_id(keynum: &[u8]) -> String {
    let mut b = [0u8; 8];
    b.copy_from_slice(&keynum[..8]);
    format!("{:016X}", u64::from_le_bytes(b))
}

/// `NAME.key` and `NAME.pub` of `ferry keygen -o NAME`.
pub fn key_paths(name: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut s = name.as_os_str().to_os_string();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".key"), with(".pub"))
}

/// Writes a new unencrypted key pair to `NAME.key` (mode 0600) and `NAME.pub`, refusing to
/// overwrite either; returns the key id. Unencrypted so a pipeline can sign without a prompt.
pub fn generate(name: &Path) -> Result<(PathBuf, PathBuf, String), SignError> {
    let (key, public) = key_paths(name);
    for p in [&key, &public] {
        if std::fs::symlink_metadata(p).is_ok() {
            return Err(SignError::Io {
                path: p.clone(),
                op: "refusing to overwrite",
                source: std::io::ErrorKind::AlreadyExists.into(),
            });
        }
    }
    let fmt = |why: String| SignError::Format {
        path: key.clone(),
        why,
    };
    let kp = minisign::KeyPair::generate_unencrypted_keypair().map_err(|e| fmt(e.to_string()))?;
    let id = key_id(kp.pk.keynum());
    let sk_text = kp
        .sk
        .to_box(Some(&format!(
            "ferry secret key {id} (unencrypted: keep it private)"
        )))
        .map_err(|e| fmt(e.to_string()))?
        .into_string();
    let pk_text = kp
        .pk
        .to_box()
        .map_err(|e| fmt(e.to_string()))?
        .into_string();
    write_new(&key, sk_text.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&public, pk_text.as_bytes(), 0o644) {
        let _ = std::fs::remove_file(&key);
        return Err(e);
    }
    Ok((key, public, id))
}

/// Creates `path` (never over an existing file) with `mode`, writes and syncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SignError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |op| {
        let path = path.to_path_buf();
        move |source| SignError::Io { path, op, source }
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io("creating"))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io("writing"))
}

/// Reads a small text file for a key or signature.
fn read_text(path: &Path) -> Result<String, SignError> {
    let io = |source| SignError::Io {
        path: path.to_path_buf(),
        op: "reading",
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_SIGNATURE_BYTES {
        return Err(SignError::Format {
            path: path.to_path_buf(),
            why: format!("{} bytes: not a minisign key", meta.len()),
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

impl SigningKey {
    /// Reads an unencrypted minisign secret key (as `ferry keygen` or `minisign -G -W` write).
    pub fn load(path: &Path) -> Result<SigningKey, SignError> {
        let fmt = |why: String| SignError::Format {
            path: path.to_path_buf(),
            why,
        };
        let text = read_text(path)?;
        let sk = SecretKeyBox::from_string(&text)
            .and_then(SecretKeyBox::into_unencrypted_secret_key)
            .map_err(|e| {
                fmt(format!(
                    "not an unencrypted minisign secret key ({e}); make one with `ferry keygen`"
                ))
            })?;
        let pk = PublicKey::from_secret_key(&sk).map_err(|e| fmt(e.to_string()))?;
        Ok(SigningKey { sk, pk })
    }

    /// A detached minisign signature (the `.minisig` text) of `bytes`, the same text for the same
    /// bytes and key: minisign's own signer mixes random bytes into each nonce, so the bundle
    /// would differ from run to run. This is plain RFC 8032 ed25519 (deterministic) over the
    /// same prehashed message and trusted comment, which every minisign verifier checks alike.
    pub fn sign(&self, bytes: &[u8]) -> Result<String, SignError> {
        use base64::Engine as _;
        use blake2::Digest as _;
        let fail = |why: String| SignError::Format {
            path: PathBuf::from(SIGNATURE_NAME),
            why,
        };
        // SecretKey::to_bytes: algorithms (6), kdf salt (32), kdf limits (16), key number (8), ed25519 secret (64), checksum (32).
        let raw = self.sk.to_bytes();
        let (keynum, secret) = (&raw[54..62], &raw[62..126]);
        let pair =
            ring::signature::Ed25519KeyPair::from_seed_and_public_key(&secret[..32], &secret[32..])
                .map_err(|e| fail(format!("not an ed25519 key: {e}")))?;
        let prehash = blake2::Blake2b512::digest(bytes);
        let sig = pair.sign(&prehash);
        let mut signature = b"ED".to_vec();
        signature.extend_from_slice(keynum);
        signature.extend_from_slice(sig.as_ref());
        let mut global = sig.as_ref().to_vec();
        global.extend_from_slice(TRUSTED_COMMENT.as_bytes());
        let global_sig = pair.sign(&global);
        let b64 = base64::engine::general_purpose::STANDARD;
        let text = format!(
            "untrusted comment: signature of ferry-bundle.json by ferry key {}\n{}\ntrusted comment: {TRUSTED_COMMENT}\n{}\n",
            key_id(self.pk.keynum()),
            b64.encode(signature),
            b64.encode(global_sig.as_ref()),
        );
        // Checked as every reader will check it, so a key that does not match its own public half never signs.
        let sig = SignatureBox::from_string(&text).map_err(|e| fail(e.to_string()))?;
        minisign::verify(
            &self.pk,
            &sig,
            std::io::Cursor::new(bytes),
            true,
            false,
            false,
        )
        .map_err(|e| fail(format!("the signature does not verify: {e}")))?;
        Ok(text)
    }
}

impl VerifyingKey {
    /// Reads a minisign public key file (`NAME.pub`).
    pub fn load(path: &Path) -> Result<VerifyingKey, SignError> {
        let text = read_text(path)?;
        let pk = PublicKeyBox::from_string(&text)
            .and_then(PublicKeyBox::into_public_key)
            .map_err(|e| SignError::Format {
                path: path.to_path_buf(),
                why: format!("not a minisign public key ({e})"),
            })?;
        Ok(VerifyingKey {
            pk,
            path: path.to_path_buf(),
        })
    }

    /// Checks `signature` (the bundle's entry, if any) against the exact bytes of its `ferry-bundle.json`.
    pub fn check(
        &self,
        bundle: &Path,
        index_bytes: &[u8],
        signature: Option<&str>,
    ) -> Result<(), SignError> {
        let Some(text) = signature else {
            return Err(SignError::Unsigned {
                bundle: bundle.to_path_buf(),
            });
        };
        let sig = SignatureBox::from_string(text).map_err(|e| SignError::Mismatch {
            bundle: bundle.to_path_buf(),
            why: format!("{SIGNATURE_NAME} is not a minisign signature: {e}"),
        })?;
        if sig.keynum() != self.pk.keynum() {
            return Err(SignError::OtherKey {
                bundle: bundle.to_path_buf(),
                key: self.path.clone(),
                found: key_id(sig.keynum()),
                wanted: key_id(self.pk.keynum()),
            });
        }
        minisign::verify(
            &self.pk,
            &sig,
            std::io::Cursor::new(index_bytes),
            true,
            false,
            false,
        )
        .map_err(|e| SignError::Mismatch {
            bundle: bundle.to_path_buf(),
            why: e.to_string(),
        })
    }
}

/// `BUNDLE.minisig`: where the detached copy of the signature goes, beside the bundle as written with `-o`.
pub fn detached_path(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_os_string();
    s.push(".minisig");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_check_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public, _) = generate(&dir.path().join("k")).unwrap();
        assert!(generate(&dir.path().join("k")).is_err(), "overwrote a key");
        let (_, other_pub, _) = generate(&dir.path().join("other")).unwrap();
        let sk = SigningKey::load(&key).unwrap();
        let pk = VerifyingKey::load(&public).unwrap();
        let b = Path::new("b.tar.zst");
        let sig = sk.sign(b"{\"a\":1}").unwrap();
        assert_eq!(sig, sk.sign(b"{\"a\":1}").unwrap(), "not deterministic");
        pk.check(b, b"{\"a\":1}", Some(&sig)).unwrap();
        assert!(matches!(
            pk.check(b, b"{\"a\":2}", Some(&sig)),
            Err(SignError::Mismatch { .. })
        ));
        assert!(matches!(
            pk.check(b, b"{\"a\":1}", None),
            Err(SignError::Unsigned { .. })
        ));
        let other = VerifyingKey::load(&other_pub).unwrap();
        assert!(matches!(
            other.check(b, b"{\"a\":1}", Some(&sig)),
            Err(SignError::OtherKey { .. })
        ));
        assert!(SigningKey::load(&public).is_err());
    }
}
