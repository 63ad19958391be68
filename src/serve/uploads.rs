//! Blob upload sessions of `serve --allow-push`: each holds a store
//! [`BlobWriter`] whose temp file lives in the root's temp area, so a
//! half-uploaded blob is never visible. A session is taken out while one
//! request writes to it and put back after; dropping it (cancel, failure, the
//! idle sweep) deletes its temp data. The number of sessions is capped.
//!
//! Durability is batched ([`Unsynced`]): a finished upload is verified and
//! renamed into place (so a killed server never shows a part of a blob) but
//! not fsynced one by one; the root's file system is synced once before a
//! manifest is made visible, so no manifest or tag ever names a blob that a
//! power loss could take back.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::limits::{ENV_UPLOAD_IDLE_MS, MAX_UPLOADS, UPLOAD_IDLE_SECS};
use crate::store::{BlobWriter, Store, StoreError};

/// An upload between requests: its repository and the bytes written so far.
pub(super) struct Session {
    /// The repository it was started in (a request naming another is refused).
    pub repo: String,
    /// The temp file being filled and hashed.
    pub writer: BlobWriter,
}

/// A slot of the table: a session waiting for its next request, or one a request holds.
enum Slot {
    Idle {
        session: Box<Session>,
        since: Instant,
    },
    Busy {
        repo: String,
        offset: u64,
    },
}

/// Why a session could not be taken.
pub(super) enum Taken {
    /// No such upload in this repository (never started, finished, cancelled or swept).
    Unknown,
    /// Another request is writing to it; the offset it had when taken.
    Busy(u64),
}

/// Every upload in progress on one server.
pub(super) struct Uploads {
    slots: Mutex<HashMap<String, Slot>>,
    idle: Duration,
    /// What was published without fsync since the last sync.
    pub unsynced: Unsynced,
}

/// Counts blobs and links put in place without fsync, so that a manifest is
/// made visible only after one `syncfs` that covers every one of them (group
/// durability: a sync per manifest step instead of several fsyncs per blob).
pub(super) struct Unsynced {
    /// Writes under way (a [`Writing`] alive).
    in_flight: AtomicU64,
    /// Writes finished so far.
    done: AtomicU64,
    /// The count of finished writes that the last finished sync covered.
    synced: AtomicU64,
}

/// One unsynced write under way; counted as finished when dropped.
pub(super) struct Writing<'a>(&'a Unsynced);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        // Finished before no longer in flight: a sync that sees neither misses nothing.
        self.0.done.fetch_add(1, Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Unsynced {
    /// One unsynced write behind us: a server started over a root that an earlier
    /// process may have left unsynced (stopped between a blob and its manifest)
    /// syncs once before its first manifest.
    fn new() -> Unsynced {
        Unsynced {
            in_flight: AtomicU64::new(0),
            done: AtomicU64::new(1),
            synced: AtomicU64::new(0),
        }
    }

    /// Marks a write without fsync as under way until the guard is dropped (after the write).
    pub fn writing(&self) -> Writing<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Writing(self)
    }

    /// Makes everything written so far durable (one `syncfs` of the root), unless a
    /// sync has covered every finished write and none is under way (one under way may
    /// already be visible to the caller). Blocking.
    pub fn sync(&self, store: &Store) -> Result<(), StoreError> {
        let busy = self.in_flight.load(Ordering::SeqCst) > 0;
        let seen = self.done.load(Ordering::SeqCst);
        if !busy && self.synced.load(Ordering::SeqCst) >= seen {
            return Ok(());
        }
        store.sync_fs()?;
        self.synced.fetch_max(seen, Ordering::SeqCst);
        Ok(())
    }
}

impl Uploads {
    /// An empty table whose idle limit is [`UPLOAD_IDLE_SECS`] (or the test hook's milliseconds).
    pub fn new() -> Uploads {
        let idle = crate::limits::test_millis(ENV_UPLOAD_IDLE_MS)
            .unwrap_or(Duration::from_secs(UPLOAD_IDLE_SECS));
        Uploads {
            slots: Mutex::new(HashMap::new()),
            idle,
            unsynced: Unsynced::new(),
        }
    }

    /// How long an upload may sit untouched before [`Uploads::sweep`] drops it.
    pub fn idle_limit(&self) -> Duration {
        self.idle
    }

    /// Reserves a new upload id in `repo`, held busy by the caller; `None` when [`MAX_UPLOADS`] are in progress.
    pub fn reserve(&self, repo: &str) -> Option<String> {
        let mut slots = self.slots.lock().unwrap();
        if slots.len() >= MAX_UPLOADS {
            return None;
        }
        let id = new_id();
        slots.insert(
            id.clone(),
            Slot::Busy {
                repo: repo.to_string(),
                offset: 0,
            },
        );
        Some(id)
    }

    /// Takes the session `id` of `repo` for one request; the caller puts it back or ends it.
    pub fn take(&self, id: &str, repo: &str) -> Result<Session, Taken> {
        let mut slots = self.slots.lock().unwrap();
        match slots.get(id) {
            Some(Slot::Idle { session, .. }) if session.repo == repo => {}
            Some(Slot::Busy { repo: r, offset }) if r == repo => return Err(Taken::Busy(*offset)),
            _ => return Err(Taken::Unknown),
        }
        let Some(Slot::Idle { session, .. }) = slots.remove(id) else {
            unreachable!("checked above")
        };
        let session = *session;
        slots.insert(
            id.to_string(),
            Slot::Busy {
                repo: session.repo.clone(),
                offset: session.writer.written(),
            },
        );
        Ok(session)
    }

    /// Puts a taken session back, idle from now; dropped (temp data deleted) if it was cancelled meanwhile.
    pub fn put_back(&self, id: &str, session: Session) {
        let mut slots = self.slots.lock().unwrap();
        if let Some(slot @ Slot::Busy { .. }) = slots.get_mut(id) {
            *slot = Slot::Idle {
                session: Box::new(session),
                since: Instant::now(),
            };
        }
    }

    /// A guard for a slot this request holds busy (after [`Uploads::take`] or [`Uploads::reserve`]).
    pub fn hold<'a>(&'a self, id: &str, repo: &str) -> Held<'a> {
        Held {
            uploads: self,
            id: id.to_string(),
            repo: repo.to_string(),
        }
    }

    /// Forgets `id` (finished, failed or cancelled); an idle session's temp data is deleted with it.
    /// `false` when `repo` had no such upload.
    pub fn end(&self, id: &str, repo: &str) -> bool {
        let mut slots = self.slots.lock().unwrap();
        let known = match slots.get(id) {
            Some(Slot::Idle { session, .. }) => session.repo == repo,
            Some(Slot::Busy { repo: r, .. }) => r == repo,
            None => false,
        };
        if known {
            slots.remove(id);
        }
        known
    }

    /// The bytes received so far by the upload `id` of `repo`, if it exists.
    pub fn offset(&self, id: &str, repo: &str) -> Option<u64> {
        match self.slots.lock().unwrap().get(id)? {
            Slot::Idle { session, .. } if session.repo == repo => Some(session.writer.written()),
            Slot::Busy { repo: r, offset } if r == repo => Some(*offset),
            _ => None,
        }
    }

    /// Drops every session untouched for longer than the idle limit (their temp data deleted); returns how many.
    pub fn sweep(&self) -> usize {
        let expired: Vec<Session> = {
            let mut slots = self.slots.lock().unwrap();
            let old: Vec<String> = slots
                .iter()
                .filter(
                    |(_, s)| matches!(s, Slot::Idle { since, .. } if since.elapsed() >= self.idle),
                )
                .map(|(id, _)| id.clone())
                .collect();
            old.iter()
                .filter_map(|id| match slots.remove(id) {
                    Some(Slot::Idle { session, .. }) => Some(*session),
                    _ => None,
                })
                .collect()
        };
        // Deleting the temp files happens here, outside the lock.
        let n = expired.len();
        drop(expired);
        n
    }
}

/// A new upload id: 128 random bits as hex (from the kernel), so ids cannot be guessed.
fn new_id() -> String {
    let mut buf = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if random.is_err() {
        // No /dev/urandom (a bare chroot): a hash of the time, the process and a counter.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seed = format!(
            "{:?}-{}-{}",
            std::time::SystemTime::now(),
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let d = crate::digest::Digest::sha256_of(seed.as_bytes());
        return d.hex()[..32].to_string();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Ends an upload whose slot is still busy when the request holding it ends: one that returned
/// early without putting the session back, or was cancelled (a client gone mid-body, an HTTP/2
/// stream reset), so that no slot stays busy for ever and the upload cap is never used up.
pub struct Held<'a> {
    uploads: &'a Uploads,
    id: String,
    repo: String,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut slots = self.uploads.slots.lock().unwrap();
        if matches!(slots.get(&self.id), Some(Slot::Busy { repo, .. }) if *repo == self.repo) {
            slots.remove(&self.id);
        }
    }
}
