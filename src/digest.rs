//! Content digests: validated before use (no digest ever becomes a path
//! unchecked), computed while streaming, and checked at end of stream.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// Why a string is not a digest ferry accepts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DigestError {
    /// No `algorithm:` prefix.
    #[error("digest {0:?} has no algorithm prefix (want sha256:<hex>)")]
    MissingAlgorithm(String),
    /// An algorithm ferry cannot verify.
    #[error("digest {0:?} uses an unsupported algorithm (want sha256 or sha512)")]
    UnsupportedAlgorithm(String),
    /// Wrong hex length or a non-hex (or upper-case) character.
    #[error("digest {input:?} is not {want} lower-case hex characters")]
    BadHex {
        /// The string as given.
        input: String,
        /// How many hex characters the algorithm needs.
        want: usize,
    },
}

/// The hash algorithms the distribution spec registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// sha256, what every registry uses.
    Sha256,
    /// sha512, allowed by the OCI spec.
    Sha512,
}

impl Algorithm {
    /// The name as written before the colon, which is also the store's directory name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated content digest: the only way a hash reaches a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Parses `algorithm:hex`, rejecting anything that could not have come from a hash.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::MissingAlgorithm(s.to_string()))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(DigestError::UnsupportedAlgorithm(s.to_string())),
        };
        Digest::from_hex(algorithm, hex).map_err(|_| DigestError::BadHex {
            input: s.to_string(),
            want: algorithm.hex_len(),
        })
    }

    /// Builds a digest from an algorithm and its hex, as found in a store path.
    pub fn from_hex(algorithm: Algorithm, hex: &str) -> Result<Digest, DigestError> {
        let ok = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(DigestError::BadHex {
                input: hex.to_string(),
                want: algorithm.hex_len(),
            });
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// The sha256 digest of `bytes`, for manifests and other small documents.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(bytes);
        h.finish()
    }

    /// Which hash this is.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The validated hex part (safe as a path component).
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An incremental hash that yields a [`Digest`]; uses the CPU's SHA extensions when present.
#[derive(Clone)]
pub enum Hasher {
    /// sha256 state.
    Sha256(Sha256),
    /// sha512 state.
    Sha512(Sha512),
}

impl Hasher {
    /// Starts a hash of the given algorithm.
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// Ends the hash.
    pub fn finish(self) -> Digest {
        let (algorithm, out) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, h.finalize().to_vec()),
            Hasher::Sha512(h) => (Algorithm::Sha512, h.finalize().to_vec()),
        };
        Digest {
            algorithm,
            hex: to_hex(&out),
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// What a stream turned out to be when it did not match what was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// The bytes hash to another digest.
    #[error("content hashes to {found}, expected {expected}")]
    DigestMismatch {
        /// The digest that was asked for.
        expected: Digest,
        /// The digest of the bytes received.
        found: Digest,
    },
    /// More or fewer bytes than the descriptor says.
    #[error("content is {found} bytes, expected {expected}")]
    SizeMismatch {
        /// The size that was asked for.
        expected: u64,
        /// The number of bytes received.
        found: u64,
    },
}

/// Checks a finished hash and byte count against what was expected.
pub fn check(
    expected: &Digest,
    expected_size: Option<u64>,
    found: &Digest,
    found_size: u64,
) -> Result<(), VerifyError> {
    if let Some(want) = expected_size
        && want != found_size
    {
        return Err(VerifyError::SizeMismatch {
            expected: want,
            found: found_size,
        });
    }
    if expected != found {
        return Err(VerifyError::DigestMismatch {
            expected: expected.clone(),
            found: found.clone(),
        });
    }
    Ok(())
}

/// A reader that hashes what passes through and fails at end of stream
/// (or as soon as it runs past the expected size) when the content is wrong,
/// so a consumer never mistakes a corrupt stream for a complete one.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Option<Hasher>,
    expected: Digest,
    expected_size: Option<u64>,
    read: u64,
}

impl<R: Read> VerifyingReader<R> {
    /// Wraps `inner`, which must yield exactly the content of `expected`.
    pub fn new(inner: R, expected: Digest, expected_size: Option<u64>) -> Self {
        VerifyingReader {
            inner,
            hasher: Some(Hasher::new(expected.algorithm())),
            expected,
            expected_size,
            read: 0,
        }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if let Some(want) = self.expected_size
            && self.read > want
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                VerifyError::SizeMismatch {
                    expected: want,
                    found: self.read,
                },
            ));
        }
        match (n, self.hasher.take()) {
            (0, Some(h)) if !buf.is_empty() => {
                let found = h.finish();
                check(&self.expected, self.expected_size, &found, self.read)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
            (_, Some(mut h)) => {
                h.update(&buf[..n]);
                self.hasher = Some(h);
            }
            (_, None) => {}
        }
        Ok(n)
    }
}

/// A writer that hashes and counts what it forwards, for producing content whose digest is not known yet.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`, hashing with sha256.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(Algorithm::Sha256),
            written: 0,
        }
    }

    /// Returns the inner writer, the digest and the byte count.
    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, self.hasher.finish(), self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_rejects() {
        assert_eq!(Digest::parse(EMPTY).unwrap().to_string(), EMPTY);
        let bad = [
            ("e3b0c442", "algorithm"),
            ("md5:abcd", "unsupported"),
            ("sha256:abc", "lower-case hex"),
            (
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                "lower-case hex",
            ),
            (
                "sha256:../../../../etc/passwd00000000000000000000000000000000000000",
                "lower-case hex",
            ),
            ("sha256:", "lower-case hex"),
        ];
        for (input, why) in bad {
            let err = Digest::parse(input).unwrap_err().to_string();
            assert!(err.contains(why), "{input}: {err}");
        }
    }

    #[test]
    fn hashes_known_values() {
        assert_eq!(Digest::sha256_of(b"").to_string(), EMPTY);
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(
            h.finish().hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn verifying_reader_fails_at_eof_on_wrong_content() {
        let good = Digest::sha256_of(b"hello");
        let mut out = Vec::new();
        VerifyingReader::new(&b"hello"[..], good.clone(), Some(5))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"hello");

        let err = VerifyingReader::new(&b"hellO"[..], good.clone(), Some(5))
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("hashes to"), "{err}");

        let err = VerifyingReader::new(&b"hell"[..], good.clone(), Some(5))
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("4 bytes, expected 5"), "{err}");

        let err = VerifyingReader::new(&b"hello!"[..], good, Some(5))
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("expected 5"), "{err}");
    }
}
