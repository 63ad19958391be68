//! `--htpasswd` basic authentication, as distribution's htpasswd auth reads
//! the file (`user:$2y$…` bcrypt entries; blank lines and `#` comments
//! skipped), refusing any other hash kind at start. A successful check is
//! remembered (by a sha256 of user and password, never the password itself)
//! so a node pulling many blobs pays bcrypt once; failures are never cached.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::http::{HeaderValue, Method};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::limits::{
    MAX_AUTH_CACHE_ENTRIES, MAX_CONCURRENT_PASSWORD_CHECKS, MAX_HTPASSWD_BYTES, echo,
};

/// Why an htpasswd file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HtpasswdError {
    /// The file could not be read.
    #[error("{}: reading htpasswd file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not a `user:bcrypt-hash` entry.
    #[error("{}:{line}: {why}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the hash itself).
        why: String,
    },
    /// The file has no entry at all, so nobody could ever log in.
    #[error("{}: no user entries in htpasswd file", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Users and their bcrypt hashes, from an htpasswd file.
#[derive(Debug)]
pub struct Htpasswd {
    users: HashMap<String, String>,
}

impl Htpasswd {
    /// Reads and checks `path`: every entry must be bcrypt (`$2a$`, `$2b$`, `$2y$`).
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let read = |source| HtpasswdError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.len() > MAX_HTPASSWD_BYTES {
            return Err(read(std::io::Error::other(format!(
                "larger than {MAX_HTPASSWD_BYTES} bytes"
            ))));
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Htpasswd::parse(path, &text)
    }

    /// Parses htpasswd text; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Htpasswd, HtpasswdError> {
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: String| HtpasswdError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                why,
            };
            let Some((user, hash)) = line.split_once(':') else {
                return Err(bad("not a user:hash entry (no ':')".into()));
            };
            if user.is_empty() {
                return Err(bad("empty user name".into()));
            }
            if !is_bcrypt(hash) {
                return Err(bad(format!(
                    "user {:?}: not a bcrypt hash ({}); only bcrypt entries are read, as distribution does: make them with `htpasswd -B`",
                    echo(user),
                    hash_kind(hash)
                )));
            }
            users.insert(user.to_string(), hash.to_string());
        }
        if users.is_empty() {
            return Err(HtpasswdError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Htpasswd { users })
    }
}

/// A bcrypt hash as htpasswd and distribution write it: `$2a$`, `$2b$` or `$2y$`, cost, 53 characters.
fn is_bcrypt(hash: &str) -> bool {
    let ok_prefix = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p));
    ok_prefix && hash.len() == 60 && hash.as_bytes()[6] == b'$'
}

/// A name for a refused hash kind, so the error says what was found without echoing the hash.
fn hash_kind(hash: &str) -> &'static str {
    if hash.starts_with("{SHA}") {
        "SHA-1"
    } else if hash.starts_with("$apr1$") {
        "Apache MD5"
    } else if hash.starts_with("$1$") {
        "MD5-crypt"
    } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
        "SHA-crypt"
    } else if hash.starts_with("$2") {
        "malformed bcrypt"
    } else if hash.len() == 13 {
        "DES crypt"
    } else {
        "plain text or unknown"
    }
}

/// Who may do what: the users, whether reads are open to anyone, and the cache of passed checks.
#[derive(Debug)]
pub struct Auth {
    users: Htpasswd,
    anonymous_read: bool,
    passed: Mutex<HashSet<[u8; 32]>>,
    /// bcrypt runs at most this many at once, so a flood of wrong passwords cannot take every core.
    checks: tokio::sync::Semaphore,
}

/// The realm named in `WWW-Authenticate`.
pub const REALM: &str = "ferry";

impl Auth {
    /// Guards requests with `users`; `anonymous_read` lets GET and HEAD through without credentials.
    pub fn new(users: Htpasswd, anonymous_read: bool) -> Auth {
        Auth {
            users,
            anonymous_read,
            passed: Mutex::new(HashSet::new()),
            checks: tokio::sync::Semaphore::new(MAX_CONCURRENT_PASSWORD_CHECKS),
        }
    }

    /// The `WWW-Authenticate` value of a 401.
    pub fn challenge() -> HeaderValue {
        HeaderValue::from_static("Basic realm=\"ferry\"")
    }

    /// Whether a request may proceed. Credentials sent are always checked (wrong ones are refused,
    /// also on reads). Without any, reads pass under `--anonymous-read`, except the `/v2/` ping
    /// (`ping`): it still answers the challenge, as Docker Hub and Harbor do, so that clients
    /// learn the scheme there and send credentials when they push.
    pub async fn allows(
        &self,
        method: &Method,
        ping: bool,
        authorization: Option<&HeaderValue>,
    ) -> bool {
        let Some(value) = authorization else {
            return self.anonymous_ok(method, ping);
        };
        match basic_credentials(value) {
            // Another scheme, or a malformed header: refused, never taken as anonymous.
            None => false,
            // containers/image sends an empty `Basic` pair when it has no credentials.
            Some((u, p)) if u.is_empty() && p.is_empty() => self.anonymous_ok(method, ping),
            Some((u, p)) => self.verify(&u, &p).await,
        }
    }

    /// Whether a request without credentials may proceed.
    fn anonymous_ok(&self, method: &Method, ping: bool) -> bool {
        self.anonymous_read && !ping && (method == Method::GET || method == Method::HEAD)
    }

    /// Checks a password with bcrypt (on a blocking thread), or from the cache of passed checks.
    async fn verify(&self, user: &str, password: &str) -> bool {
        let key = cache_key(user, password);
        if self.passed.lock().is_ok_and(|c| c.contains(&key)) {
            return true;
        }
        // An unknown user still costs one bcrypt (against another user's hash, result
        // discarded), so the answer's timing does not tell which user names exist.
        let (hash, known) = match self.users.users.get(user) {
            Some(hash) => (hash.clone(), true),
            None => match self.users.users.values().next() {
                Some(hash) => (hash.clone(), false),
                None => return false,
            },
        };
        let password = password.to_string();
        let Ok(_permit) = self.checks.acquire().await else {
            return false;
        };
        let checked = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .is_ok_and(|r| r.unwrap_or(false));
        let ok = known && checked;
        if ok && let Ok(mut cache) = self.passed.lock() {
            if cache.len() >= MAX_AUTH_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key);
        }
        ok
    }
}

/// The user and password of a `Basic` authorization header; none if it is another scheme or malformed.
fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let v = value.to_str().ok()?.trim();
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// The cache key of a passed check: a sha256 over the user's length, the user and the password.
fn cache_key(user: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((user.len() as u64).to_be_bytes());
    h.update(user.as_bytes());
    h.update(password.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$04$PlkcKrg5tApNakC5hel4hOCUk5YzPC.Cf3PdHboRzvuAmEPrpLLDy";

    #[test]
    fn reads_bcrypt_and_refuses_other_kinds_naming_the_line() {
        let p = Path::new("h");
        let ok = Htpasswd::parse(
            p,
            &format!(
                "# users\n\n  alice:{HASH}\r\nbob:{}\n",
                HASH.replace("$2y$", "$2b$")
            ),
        )
        .unwrap();
        assert_eq!(ok.users.len(), 2);
        for (bad, kind) in [
            ("carol:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1"),
            ("carol:$apr1$abc$def", "Apache MD5"),
            ("carol:abcdefghijklm", "DES crypt"),
            ("carol:secret", "plain text"),
            ("carol:$2y$04$short", "malformed bcrypt"),
        ] {
            let e = Htpasswd::parse(p, &format!("alice:{HASH}\n\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("h:3: user \"carol\": not a bcrypt hash"),
                "{e}"
            );
            assert!(e.contains(kind), "{e}");
            assert!(
                !e.contains(bad.split_once(':').unwrap().1),
                "the hash is not echoed: {e}"
            );
        }
        assert!(
            Htpasswd::parse(p, "nocolon\n")
                .unwrap_err()
                .to_string()
                .starts_with("h:1: ")
        );
        assert!(matches!(
            Htpasswd::parse(p, "# only\n"),
            Err(HtpasswdError::Empty { .. })
        ));
    }

    #[test]
    fn basic_header_parsing() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(
            basic_credentials(&v("Basic YWxpY2U6cDpx")),
            Some(("alice".into(), "p:q".into()))
        );
        assert_eq!(
            basic_credentials(&v("basic Og==")),
            Some((String::new(), String::new()))
        );
        assert_eq!(basic_credentials(&v("Bearer abc")), None);
        assert_eq!(basic_credentials(&v("Basic !!!")), None);
        assert_ne!(cache_key("ab", "c"), cache_key("a", "bc"));
    }

    #[tokio::test]
    async fn checks_and_caches_only_successes() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let auth = Auth::new(
            Htpasswd::parse(Path::new("h"), &format!("alice:{hash}")).unwrap(),
            true,
        );
        let hdr = |u: &str, p: &str| {
            let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            HeaderValue::from_str(&format!("Basic {b}")).unwrap()
        };
        assert!(
            auth.allows(&Method::PUT, false, Some(&hdr("alice", "pw")))
                .await
        );
        assert!(
            auth.passed
                .lock()
                .unwrap()
                .contains(&cache_key("alice", "pw"))
        );
        assert!(
            !auth
                .allows(&Method::GET, false, Some(&hdr("alice", "nope")))
                .await
        );
        assert!(
            !auth
                .allows(&Method::GET, false, Some(&hdr("bob", "pw")))
                .await
        );
        assert_eq!(
            auth.passed.lock().unwrap().len(),
            1,
            "failures are not cached"
        );
        assert!(
            auth.allows(&Method::GET, false, None).await,
            "anonymous read"
        );
        assert!(
            auth.allows(&Method::HEAD, false, Some(&hdr("", ""))).await,
            "empty pair is anonymous"
        );
        assert!(
            !auth.allows(&Method::GET, true, None).await,
            "the ping still challenges"
        );
        assert!(
            !auth.allows(&Method::POST, false, None).await,
            "writes need credentials"
        );
        assert!(
            !auth
                .allows(
                    &Method::GET,
                    false,
                    Some(&HeaderValue::from_static("Basic !!"))
                )
                .await
        );
    }
}
