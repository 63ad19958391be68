//! Every byte cap and default concurrency, in one place (as containers/image's iolimits).

/// Largest manifest ferry reads or stores; larger ones are refused (c/image and regclient use 4 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// Largest image config ferry parses.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Largest registry error body read, so a hostile server cannot make us buffer much.
pub const MAX_ERROR_BODY_BYTES: u64 = 64 * 1024;

/// Largest link file read: a link holds one digest string.
pub const MAX_LINK_BYTES: u64 = 256;

/// Buffer used when streaming blobs through files and sockets.
pub const IO_BUFFER_BYTES: usize = 256 * 1024;

/// How much of an upload gathers in the page cache before its writeback is started
/// (`sync_file_range`), so the disk writes while the rest arrives and the sync at commit
/// waits only for the tail.
pub const WRITE_BEHIND_BYTES: u64 = 8 * 1024 * 1024;

/// A file written with direct I/O ([`crate::direct::DirectWriter`]: an upload `serve` takes, a
/// bundle being packed) reaches the disk in pieces of this size (a multiple of
/// [`DIRECT_IO_ALIGN`]); one such buffer per file being written.
pub const DIRECT_IO_BYTES: usize = 1024 * 1024;

/// Alignment of direct I/O's buffer, file offsets and lengths: the largest logical block size
/// of common disks, so every one of them takes it.
pub const DIRECT_IO_ALIGN: usize = 4096;

/// Chunk of a blob streamed from a bundle read in place: with a few chunks queued per client,
/// 64 clients hold about 16 MiB (reads straight from the file cost little per chunk).
pub const BUNDLE_CHUNK_BYTES: usize = 64 * 1024;

/// Largest chunk `serve` streams a blob in, from a root or a bundle. A response holds at most
/// about four (one queued in the connection, two in the reader's queue, one being read), so 64
/// clients stalled mid-blob hold 16 MiB; reads from the page cache cost little per chunk
/// (256 KiB chunks measured the same requests/s and held 4x more).
pub const SERVE_CHUNK_BYTES: usize = 64 * 1024;

/// Bytes `serve` queues per connection for the socket (hyper's `max_buf_size`, per HTTP/2 stream
/// `max_send_buf_size`), and the largest request head it reads. hyper's default (about 400 KiB)
/// held 32-68 MB under 64 clients; the kernel's socket buffer already keeps the link busy. 64 KiB
/// of request head is far beyond what a registry client sends.
pub const SERVE_CONN_BUFFER_BYTES: usize = 64 * 1024;

/// SO_RCVLOWAT `serve` sets while it reads an HTTP/1 request body of known length: the kernel then
/// wakes the server once this many bytes wait on the socket, instead of once per segment (a push
/// client writes in small pieces, and each wake-up was a context switch: about one per 20 KB).
/// Never set above the body's bytes still to come (see [`UPLOAD_RCVLOWAT_MARGIN_BYTES`]).
///
/// Measured (push of the medium corpus, context switches of the target): no mark 84-89k, 128 KiB
/// 44-47k, 256 KiB 37-40k, 512 KiB 32-36k, 1 MiB 34-37k.
pub const UPLOAD_RCVLOWAT_BYTES: usize = 512 * 1024;

/// Bytes of a body the layers above the socket may already hold (hyper's read buffer, capped at
/// [`SERVE_CONN_BUFFER_BYTES`], and TLS's record buffers), with room to spare: the low-water mark is
/// raised only while more than it plus this margin of the body is still to come.
pub const UPLOAD_RCVLOWAT_MARGIN_BYTES: u64 = 4 * SERVE_CONN_BUFFER_BYTES as u64;

/// How long a read waits for [`UPLOAD_RCVLOWAT_BYTES`] before the connection goes back to waking
/// per segment for the rest of that body: a slow or pausing client is then read as before, and a
/// mistaken mark could delay a body by this much, never stall it.
pub const UPLOAD_RCVLOWAT_PATIENCE: std::time::Duration = std::time::Duration::from_millis(200);

/// [`UPLOAD_RCVLOWAT_PATIENCE`], or the milliseconds [`ENV_RCVLOWAT_PATIENCE_MS`] names (tests).
pub fn upload_rcvlowat_patience() -> std::time::Duration {
    static PATIENCE: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();
    *PATIENCE
        .get_or_init(|| test_millis(ENV_RCVLOWAT_PATIENCE_MS).unwrap_or(UPLOAD_RCVLOWAT_PATIENCE))
}

/// Allocations of at least this many bytes are mmapped by glibc in a server and returned to the
/// system when freed (decompressed frames, compressed reads), instead of glibc's dynamic threshold
/// (it rises to 32 MiB after a large free, and the freed frames then stay in the heap).
pub const SERVE_MMAP_THRESHOLD_BYTES: usize = 256 * 1024;

/// Free memory at the top of each malloc arena of a server (one for the threads made after
/// `M_ARENA_MAX` is set, plus any made before) that glibc keeps instead of giving it back at once
/// (its default, 128 KiB, applies once [`SERVE_MMAP_THRESHOLD_BYTES`] is set): an upload's
/// socket buffers are freed and allocated again for every chunk, and a heap trimmed each time
/// made every new buffer fault its pages in again (50-90 thousand page faults per push of the
/// medium corpus, for 1.44 GB; about 1,500 with this).
pub const SERVE_TRIM_THRESHOLD_BYTES: usize = 4 * 1024 * 1024;

/// Blobs up to this size (manifests, configs) are kept decompressed from a bundle's opening scan,
/// so serving one never decompresses a frame.
pub const SMALL_BLOB_BYTES: u64 = 64 * 1024;

/// Most bytes of small blobs kept from a bundle's opening scan (beyond it, they are read from their frames).
pub const SMALL_BLOBS_BUDGET: u64 = 4 * 1024 * 1024;

/// Most bytes of small blobs kept once read and verified, for a bundle opened from its offset table
/// (the cache is emptied when full: manifests are cheap to read again from their small frames).
pub const LAZY_SMALL_BYTES: u64 = 4 * 1024 * 1024;

/// Most bytes of decompressed frames of a bundle kept for reuse across requests (a frame is at
/// most 4 MiB, so at least two stay).
pub const FRAME_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// Most bytes of decompressed first blocks of a bundle's frames kept for reuse (a few KiB each).
pub const PREFIX_CACHE_BYTES: u64 = 2 * 1024 * 1024;

/// Most bytes at the start of a frame decompressed apart so that the rest is read straight from the file.
pub const MAX_PREFIX_BYTES: u64 = 256 * 1024;

/// Most frames one bundle decompresses at once (the others wait): each holds up to a frame
/// (4 MiB) and its compressed bytes, so this bounds serve's memory under load.
pub const MAX_FRAME_DECOMPRESSIONS: usize = 4;

/// Default number of tags or repositories returned by one list page when the client asks for none.
pub const DEFAULT_PAGE_SIZE: usize = 1000;

/// Largest `n` honoured on list endpoints.
pub const MAX_PAGE_SIZE: usize = 10_000;

/// Longest tag the distribution spec allows.
pub const MAX_TAG_LEN: usize = 128;

/// Longest repository name the distribution spec allows.
pub const MAX_REPOSITORY_LEN: usize = 255;

/// Requests in flight to one registry host at once when no `--max-per-host` is given
/// (the CLI defaults it to `--jobs`, so the cap never hides a larger `--jobs`).
pub const DEFAULT_PER_HOST_CONCURRENCY: usize = 8;

/// Seconds to wait for a TCP (and TLS) connection to a registry.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 30;

/// Seconds to wait for a response's headers once the request is sent; generous for slow links.
pub const DEFAULT_HEADERS_TIMEOUT_SECS: u64 = 60;

/// Seconds a response body may stay silent before the read is given up (and resumed, if retries are left).
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 30;

/// Blobs fetched at once across all images, unless `--jobs` says otherwise.
pub const DEFAULT_JOBS: usize = 6;

/// Blobs an ordered destination (a bundle packed while it downloads) lets finish ahead of the
/// one it waits for, per job: the window that keeps `jobs` transfers busy behind a large blob.
pub const ORDERED_LOOKAHEAD: usize = 4;

/// Times a failed request is repeated (connection errors, 408, 429, 5xx).
pub const RETRIES: u32 = 4;

/// Longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER_SECS: u64 = 60;

/// Set (to anything) to skip retry pauses, so tests of retries run fast.
pub const ENV_NO_RETRY_DELAY: &str = "FERRY_TEST_NO_RETRY_DELAY";

/// Test-only: milliseconds to pause before each new tag is renamed into place (in a bucket: before its `current` link is written), so a test can SIGKILL inside the tag phase.
pub const ENV_TAG_PAUSE_MS: &str = "FERRY_TEST_TAG_PAUSE_MS";

/// Test-only: milliseconds the plan waits before it resolves the list's last entry, so a test
/// can see the blobs of the entries before it move while the plan is not yet resolved.
pub const ENV_PLAN_PAUSE_MS: &str = "FERRY_TEST_PLAN_PAUSE_MS";

/// Test-only: the age in seconds past which a multipart upload ferry left open in a bucket is
/// aborted (instead of [`S3_STALE_UPLOAD_SECS`]), so a test need not wait a day.
pub const ENV_S3_STALE_UPLOAD_SECS: &str = "FERRY_TEST_S3_STALE_UPLOAD_SECS";

/// Test-only: `serve`'s header and idle timeouts in milliseconds, so a test of them runs in seconds.
pub const ENV_SERVE_TIMEOUT_MS: &str = "FERRY_TEST_SERVE_TIMEOUT_MS";

/// Test-only: milliseconds a read waits for `serve`'s receive low-water mark (instead of
/// [`UPLOAD_RCVLOWAT_PATIENCE`]), so a test can tell a mark lowered in time from one waited out.
pub const ENV_RCVLOWAT_PATIENCE_MS: &str = "FERRY_TEST_RCVLOWAT_PATIENCE_MS";

/// Test-only: a `docker-archive:` streamed into the docker engine fails after this many bytes, so a test can
/// check that a load broken part-way leaves no image and no file.
pub const ENV_FAIL_ARCHIVE_STREAM_AT: &str = "FERRY_TEST_FAIL_ARCHIVE_STREAM_AT";

/// Test-only: `unbundle link` fails at a chosen point, so a test can check its roll-back: `reference`
/// (reading the first image's reference), or `finish:N` (linking the N-th image, after N were linked).
pub const ENV_FAIL_LINK_AT: &str = "FERRY_TEST_FAIL_LINK_AT";

/// Test-only: milliseconds `unbundle link` pauses after its blobs are in and before it links, so a test
/// can act as a concurrent writer of the same root.
pub const ENV_LINK_PAUSE_MS: &str = "FERRY_TEST_LINK_PAUSE_MS";

/// Test-only: milliseconds `unbundle link` pauses at the failure `FERRY_TEST_FAIL_LINK_AT=finish:N` asks
/// for (the images before N linked, nothing taken back yet), so a test can act as a concurrent writer.
pub const ENV_FINISH_PAUSE_MS: &str = "FERRY_TEST_FINISH_PAUSE_MS";

/// Test-only: the milliseconds the environment variable `var` names, if it is set to a number.
pub fn test_millis(var: &str) -> Option<std::time::Duration> {
    let ms = std::env::var(var).ok()?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}

/// Test-only: sleeps for the milliseconds the environment variable `var` names (none when unset),
/// so a test can act while a run waits at a chosen point.
pub fn test_pause(var: &str) {
    if let Some(pause) = test_millis(var) {
        std::thread::sleep(pause);
    }
}

/// glibc gives each thread that allocates an arena of its own (up to 8 per core) and keeps
/// freed chunks in it: with a blocking thread per streamed blob, that alone held some 80 MB under
/// 64 clients. One arena keeps the server's memory flat (2 cores: little lock contention).
/// Large buffers (decompressed frames) are mmapped from a fixed size on, so they go back to
/// the system when freed ([`SERVE_MMAP_THRESHOLD_BYTES`]); up to [`SERVE_TRIM_THRESHOLD_BYTES`]
/// free at the heap's top is kept, so buffers freed and allocated again do not fault again.
pub fn limit_malloc_arenas() {
    one_malloc_arena();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; M_MMAP_THRESHOLD applies to allocations
    // made later.
    unsafe {
        libc::mallopt(
            libc::M_MMAP_THRESHOLD,
            i32::try_from(SERVE_MMAP_THRESHOLD_BYTES).unwrap_or(i32::MAX),
        );
        libc::mallopt(
            libc::M_TRIM_THRESHOLD,
            i32::try_from(SERVE_TRIM_THRESHOLD_BYTES).unwrap_or(i32::MAX),
        );
    }
}

/// One malloc arena for the whole process, with glibc's own (dynamic) mmap threshold:
/// `ferry bundle` frees the plan and index of a long list on one thread while the packer's
/// threads allocate their frame buffers in arenas of their own (20,000 tags: 74 MB peak, ~52 MB
/// with one arena). The server's fixed 256 KiB threshold is not for it: every ~400 KiB receive
/// buffer of a download was then a fresh mmap, faulted in page by page and unmapped again
/// (22,000 page faults and a tenth of a small cold bundle's CPU; 6,800 without it).
pub fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; M_ARENA_MAX takes effect for arenas created later.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Test-only: set (to anything) to skip the free-space checks, for tests of a disk that fills up mid-run.
pub const ENV_NO_SPACE_CHECK: &str = "FERRY_TEST_NO_SPACE_CHECK";

/// Blob uploads in progress at once on `ferry serve --allow-push`; one more is answered 429 TOOMANYREQUESTS.
pub const MAX_UPLOADS: usize = 64;

/// Seconds an upload may sit with no request before `serve` drops it (its temp data deleted).
pub const UPLOAD_IDLE_SECS: u64 = 15 * 60;

/// Test-only: [`UPLOAD_IDLE_SECS`] in milliseconds, so a test of abandoned uploads runs in seconds.
pub const ENV_UPLOAD_IDLE_MS: &str = "FERRY_TEST_UPLOAD_IDLE_MS";

/// Blobs up to this size are pushed in one PUT; larger ones in chunks.
pub const MONOLITHIC_UPLOAD_MAX: u64 = 32 * 1024 * 1024;

/// Size of one PATCH of a chunked upload.
pub const UPLOAD_CHUNK_BYTES: u64 = 16 * 1024 * 1024;

/// Most pages of a tag list or catalog followed before giving up (a server whose `Link` never ends).
pub const MAX_LIST_PAGES: usize = 10_000;

/// Largest `index.json` of an OCI layout read (it lists every image of the layout).
pub const MAX_LAYOUT_INDEX_BYTES: u64 = 64 * 1024 * 1024;

/// Most index children one image walk follows in all (a legitimate index has a few dozen).
pub const MAX_WALK_CHILDREN: usize = 10_000;

/// Tags asked for per page of a tag list (`?n=`), so every registry paginates the same way.
pub const TAGS_PAGE_SIZE: usize = 100;

/// Overrides [`TAGS_PAGE_SIZE`] (tests exercise pagination with small pages).
pub const ENV_TAGS_PAGE_SIZE: &str = "FERRY_TAGS_PAGE_SIZE";
/// Longest GNU long name, long link name or PAX header read from a bundle: ferry's longest layout path is a few hundred bytes.
pub const MAX_TAR_NAME_BYTES: u64 = 4096;

/// Most bytes of a name from untrusted input echoed into an error line or a response body.
pub const MAX_ECHO_CHARS: usize = 120;

/// Largest `ferry-bundle.json` read (a bundle of 50,000 tags has an index of a few MiB).
pub const MAX_INDEX_BYTES: u64 = 64 * 1024 * 1024;

/// Cuts untrusted text to [`MAX_ECHO_CHARS`] for an error line, saying how long it was, so a hostile name cannot flood a log.
pub fn echo(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().count() <= MAX_ECHO_CHARS {
        return std::borrow::Cow::Borrowed(s);
    }
    let head: String = s.chars().take(MAX_ECHO_CHARS).collect();
    std::borrow::Cow::Owned(format!("{head}…({} bytes)", s.len()))
}

/// Passed password checks `serve --htpasswd` remembers (keyed by a hash); the cache is emptied when full.
pub const MAX_AUTH_CACHE_ENTRIES: usize = 4096;

/// bcrypt password checks `serve --htpasswd` runs at once (each costs milliseconds of CPU).
pub const MAX_CONCURRENT_PASSWORD_CHECKS: usize = 4;

/// Largest htpasswd file read.
pub const MAX_HTPASSWD_BYTES: u64 = 16 * 1024 * 1024;

/// Largest body of a refused request (405, 401) the server reads and discards so that the
/// keep-alive connection can carry the next request; a larger or endless one gets `Connection: close`.
pub const MAX_REFUSED_BODY_BYTES: usize = 1024 * 1024;
/// How deep `--with-referrers` follows referrers of referrers (a signature of an SBOM of an image is depth 2).
pub const REFERRER_DEPTH: usize = 2;

/// Part size of a multipart upload into an S3 bucket; a blob smaller than this goes up in one PUT (S3's minimum part is 5 MiB).
pub const S3_PART_BYTES: usize = 8 * 1024 * 1024;

/// Parts of one blob in flight at once.
pub const S3_PARTS_IN_FLIGHT: usize = 4;

/// Retries of one S3 request (connection errors, 5xx, throttling), with backoff, before giving up.
pub const S3_RETRIES: usize = 3;

/// How long one S3 request may be retried in all, in seconds.
pub const S3_RETRY_SECS: u64 = 20;

/// Age past which a multipart upload to a blob's key is taken for one a killed ferry run left
/// open, and aborted when a run starts writing the root (a concurrent run's live uploads are
/// younger: a day is far longer than any one blob takes).
pub const S3_STALE_UPLOAD_SECS: u64 = 24 * 3600;

/// Listing requests to one bucket in flight at once (a catalog's levels of repository names).
pub const S3_LIST_JOBS: usize = 16;
