//! Starting and stopping real servers, running ferry and skopeo, and the shared fixture corpus.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ferry::fixtures::{Corpus, Preset, generate};
use ferry::store::Store;

/// The ferry binary under test.
pub fn ferry() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    // What ferry keeps between runs by default (the bundle cache, the blob-location record)
    // goes under the build's scratch directory, never into the user's ~/.cache; a test that
    // needs a cache of its own sets XDG_CACHE_HOME again.
    cmd.env(
        "XDG_CACHE_HOME",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache"),
    );
    cmd
}

/// Runs a command and returns its output, with the command line in any panic message.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Makes sure a tool the suite needs is installed (scripts/test.sh installs them).
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: run scripts/test.sh, which installs it with apt-get"
    );
}

/// A free loopback port (bound then released; retried by callers on a clash).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the server still sends on `s` until it closes the connection (a reset counts as closed),
/// waiting at most `timeout` for each read; an `Err` names a connection still open after it.
pub fn read_until_closed(s: &mut TcpStream, timeout: Duration) -> Result<Vec<u8>, std::io::Error> {
    s.set_read_timeout(Some(timeout))?;
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => Ok(rest),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(rest),
        Err(e) => Err(e),
    }
}

/// A plain HTTP/1.0 request with std only, for readiness checks and raw status probes.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, head, buf[split + 4..].to_vec()))
}

/// A header's value from a raw response head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn wait_ready(addr: &str, child: &mut Child, what: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Some((200, _, _)) = http(addr, "GET", "/v2/", &[]) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before it was ready: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} on {addr} not ready after 20 s");
}

/// A started child that is stopped by its PID if the test panics before it is handed over
/// (a server that never got ready would otherwise outlive the test, its parent gone).
struct Starting(Option<Child>);

impl Starting {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("not handed over yet")
    }
    fn hand_over(mut self) -> Child {
        self.0.take().expect("handed over once")
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            stop(c);
        }
    }
}

/// Sends SIGTERM and waits (we are the parent, so the child is reaped at once), then SIGKILL.
fn stop(child: &mut Child) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok();
    None
}

/// How a test registry differs from the default (deletes on, no auth).
#[derive(Debug, Default, Clone)]
pub struct RegistryOptions {
    /// `storage.delete.enabled: false`.
    pub deletes_disabled: bool,
    /// `auth.htpasswd.path`: basic auth with these bcrypt entries.
    pub htpasswd: Option<PathBuf>,
    /// `storage.s3` on this Garage bucket under this rootdirectory, instead of the filesystem driver.
    pub s3: Option<(GarageBucket, String)>,
    /// `log.accesslog` on, so a test can count the requests a client sent ([`Registry::requests`]).
    pub access_log: bool,
}

/// The Debian `docker-registry` (distribution 2.8) over a root, on a random loopback port.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its config file (for garbage-collect).
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry whose `rootdirectory` is `root`.
    pub fn start(root: &Path) -> Registry {
        Registry::start_with_tls(root, None)
    }

    /// Starts a registry over `root`, serving HTTPS with `(certificate, key)` when given.
    pub fn start_with_tls(root: &Path, tls: Option<(&Path, &Path)>) -> Registry {
        Registry::start_with_options(root, tls, &RegistryOptions::default())
    }

    /// Starts a registry over `root` with deletes off or basic auth on, as `opts` asks.
    pub fn start_with_options(
        root: &Path,
        tls: Option<(&Path, &Path)>,
        opts: &RegistryOptions,
    ) -> Registry {
        require("docker-registry");
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let addr = format!("127.0.0.1:{}", free_port());
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: {}\nstorage:\n{}  delete:\n    enabled: {}\nhttp:\n  addr: {addr}\n  secret: ferry-test-not-a-secret\n{}{}",
                    !opts.access_log,
                    match &opts.s3 {
                        Some((b, rootdir)) => b.registry_storage(rootdir),
                        None => format!("  filesystem:\n    rootdirectory: {}\n", root.display()),
                    },
                    !opts.deletes_disabled,
                    tls.map(|(c, k)| format!("  tls:\n    certificate: {}\n    key: {}\n", c.display(), k.display())).unwrap_or_default(),
                    opts.htpasswd.as_ref().map(|h| format!("auth:\n  htpasswd:\n    realm: ferry-test\n    path: {}\n", h.display())).unwrap_or_default()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("log")).unwrap();
            // distribution's S3 driver panics at start on this machine's AWS_CA_BUNDLE (INTEROP.md §12).
            let mut cmd = Command::new("docker-registry");
            no_aws_env(&mut cmd);
            let mut child = Starting(Some(
                cmd.arg("serve")
                    .arg(&config)
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .expect("starting docker-registry"),
            ));
            std::thread::sleep(Duration::from_millis(30));
            if let Ok(Some(_)) = child.child().try_wait() {
                continue; // port taken between free_port and bind: try another
            }
            if tls.is_some() || opts.htpasswd.is_some() {
                // No plain-HTTP probe on a TLS port: wait until it accepts connections.
                let start = Instant::now();
                while TcpStream::connect(&addr).is_err()
                    && start.elapsed() < Duration::from_secs(20)
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
            } else {
                wait_ready(&addr, child.child(), "docker-registry");
            }
            return Registry {
                child: child.hand_over(),
                addr,
                config,
                _dir: dir,
            };
        }
        panic!("could not start docker-registry on a free port");
    }

    /// [`Registry::requests`] once the log stops growing: the registry logs a request only
    /// after answering it, so lines of a client that just exited may still be on their way.
    pub fn settled_requests(&self) -> Vec<(String, String)> {
        let mut last = self.requests();
        loop {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let now = self.requests();
            if now.len() == last.len() {
                return now;
            }
            last = now;
        }
    }

    /// The requests the registry has answered so far, as (method, path with query), oldest
    /// first; empty unless it was started with [`RegistryOptions::access_log`].
    pub fn requests(&self) -> Vec<(String, String)> {
        let log = std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                let quoted = l.split('"').nth(1)?;
                let mut parts = quoted.split(' ');
                let (method, path) = (parts.next()?, parts.next()?);
                parts
                    .next()?
                    .starts_with("HTTP/")
                    .then(|| (method.to_string(), path.to_string()))
            })
            .collect()
    }

    /// Starts a registry on distribution's S3 driver over `bucket`, its keys under `rootdirectory` (`/site`, `/`).
    pub fn start_on_s3(bucket: &GarageBucket, rootdirectory: &str) -> Registry {
        let opts = RegistryOptions {
            s3: Some((bucket.clone(), rootdirectory.to_string())),
            ..Default::default()
        };
        Registry::start_with_options(Path::new("/nonexistent"), None, &opts)
    }

    /// Runs `garbage-collect --dry-run` and returns (blobs eligible, manifests eligible) from its last line.
    pub fn gc_dry_run(&self) -> (u64, u64, String) {
        let out = run_ok(
            no_aws_env(Command::new("docker-registry").args(["garbage-collect", "--dry-run"]))
                .arg(&self.config),
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let line = text
            .lines()
            .find(|l| l.contains("eligible for deletion"))
            .unwrap_or_else(|| panic!("no summary in garbage-collect output:\n{text}"))
            .to_string();
        // "N blobs marked, M blobs and K manifests eligible for deletion"
        let nums: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.trim_end_matches(',').parse().ok())
            .collect();
        assert_eq!(nums.len(), 3, "unexpected summary: {line}");
        (nums[1], nums[2], text)
    }
}

/// Removes every inherited `AWS_*` variable from a command (the registry's S3 driver must see none).
pub fn no_aws_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// `ferry serve ROOT` on a port it picks itself (it prints the address).
pub struct FerryServe {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl FerryServe {
    /// Starts `ferry serve` over `root`.
    pub fn start(root: &Path) -> FerryServe {
        FerryServe::start_with(&["serve", root.to_str().unwrap()])
    }

    /// Starts ferry with these arguments plus `--listen 127.0.0.1:0` (a server subcommand).
    pub fn start_with(args: &[&str]) -> FerryServe {
        FerryServe::start_logged(args, None, &[])
    }

    /// [`FerryServe::start_with`] with extra environment variables (test hooks).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> FerryServe {
        FerryServe::start_logged(args, None, env)
    }

    /// [`FerryServe::start_with`] with stderr into `log` when given and extra environment variables;
    /// with `--tls-cert` or `--htpasswd` among `args`, ready once it accepts connections (no plain-HTTP probe).
    pub fn start_logged(args: &[&str], log: Option<&Path>, env: &[(&str, &str)]) -> FerryServe {
        let stderr = match log {
            Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
            None => Stdio::null(),
        };
        let mut child = Starting(Some(
            ferry()
                .envs(env.iter().copied())
                .args(args)
                .args(["--listen", "127.0.0.1:0"])
                .stdout(Stdio::piped())
                .stderr(stderr)
                .spawn()
                .expect("starting ferry serve"),
        ));
        // The bound address is ferry's first result line on stdout.
        let mut lines = BufReader::new(child.child().stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let addr = first.trim().to_string();
        assert!(
            addr.parse::<std::net::SocketAddr>().is_ok(),
            "ferry serve did not print its address: {first:?}"
        );
        std::thread::spawn(move || for _ in lines {}); // keep draining stdout
        if args
            .iter()
            .any(|a| *a == "--tls-cert" || *a == "--htpasswd")
        {
            // The address is printed after the listener is bound: it accepts connections now.
            assert!(TcpStream::connect(&addr).is_ok(), "ferry serve on {addr}");
        } else {
            wait_ready(&addr, child.child(), "ferry serve");
        }
        FerryServe {
            child: Some(child.hand_over()),
            addr,
        }
    }

    /// The server's process id (to read its memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and returns how the server exited.
    pub fn stop(mut self) -> Option<std::process::ExitStatus> {
        stop(&mut self.child.take().expect("running until stopped"))
    }

    /// SIGKILL (a crash: nothing is flushed or cleaned up), then reaps the process.
    pub fn kill(mut self) {
        let mut c = self.child.take().expect("running until killed");
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for FerryServe {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            stop(c);
        }
    }
}

/// skopeo with the flags every test needs (no policy file, plain HTTP on loopback).
pub fn skopeo(args: &[&str]) -> Output {
    require("skopeo");
    run(Command::new("skopeo").arg("--insecure-policy").args(args))
}

/// skopeo that must succeed.
pub fn skopeo_ok(args: &[&str]) -> Output {
    let out = skopeo(args);
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `small` corpus, generated once per test run into a root that tests must not change.
pub fn small() -> &'static (PathBuf, Corpus) {
    static SMALL: OnceLock<(PathBuf, Corpus)> = OnceLock::new();
    SMALL.get_or_init(|| {
        // Under cargo's per-target temp dir, so no run leaves anything in /tmp.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("small-corpus");
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::create(&dir).unwrap().with_durable(false);
        let corpus = generate(Preset::Small, &store).unwrap();
        (dir, corpus)
    })
}

/// A real `docker-registry` serving a hardlinked copy of the `small` corpus (the directory lives as long as the pair).
pub fn small_registry() -> (tempfile::TempDir, Registry) {
    let (root, _) = small();
    let dir = tempfile::tempdir().unwrap();
    hardlink_copy(root, dir.path());
    let reg = Registry::start(dir.path());
    (dir, reg)
}

/// A real `docker-registry` over a new, empty root.
pub fn empty_registry() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start(dir.path());
    (dir, reg)
}

/// The corpus' first image with more than one platform.
pub fn multi_arch(corpus: &Corpus) -> &ferry::fixtures::FixtureImage {
    corpus
        .images
        .iter()
        .find(|i| i.platforms.len() > 1)
        .expect("the corpus has a multi-platform image")
}

/// A fresh copy of a root made of hardlinks (`cp -al`), which a test may change links in freely.
pub fn hardlink_copy(root: &Path, dest: &Path) {
    run_ok(
        Command::new("cp")
            .arg("-al")
            .arg(root.join("docker"))
            .arg(dest),
    );
}

/// A fresh `tiny` corpus in its own temp dir, for tests that damage it.
pub fn tiny() -> (tempfile::TempDir, Corpus) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path()).unwrap().with_durable(false);
    let corpus = generate(Preset::Tiny, &store).unwrap();
    (dir, corpus)
}

/// The sha256 digest of bytes, as a string.
pub fn sha256(bytes: &[u8]) -> String {
    ferry::digest::Digest::sha256_of(bytes).to_string()
}

/// The digest of the manifest `skopeo inspect --raw` gets for a `docker://` reference (plain HTTP).
pub fn inspect_digest(reference: &str) -> String {
    sha256(&skopeo_ok(&["inspect", "--raw", "--tls-verify=false", reference]).stdout)
}

/// `ferry bundle` of `list` from a plain-HTTP `source` into `out` with `cache` (retry pauses off), without -q.
pub fn bundle_cmd_plain(list: &Path, out: &Path, cache: &Path, source: &str) -> Command {
    let mut c = ferry();
    c.env("FERRY_TEST_NO_RETRY_DELAY", "1")
        .arg("bundle")
        .arg("-f")
        .arg(list)
        .arg("-o")
        .arg(out)
        .arg("--cache")
        .arg(cache)
        .args(["--source", source, "--src-tls-verify=false"]);
    c
}

/// `ferry bundle -q` of `list` from a plain-HTTP `source` into `out` with `cache` (retry pauses off).
pub fn bundle_cmd(list: &Path, out: &Path, cache: &Path, source: &str) -> Command {
    let mut c = bundle_cmd_plain(list, out, cache, source);
    c.arg("-q");
    c
}

/// Every file under `dir` (relative path → bytes), skipping nothing.
pub fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Extracts a bundle with plain `tar --zstd -xf` (no ferry code) into a new directory `dest`.
pub fn extract_bundle(bundle: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    run_ok(
        Command::new("tar")
            .arg("--zstd")
            .arg("-xf")
            .arg(bundle)
            .arg("-C")
            .arg(dest),
    );
}

/// Every file under `dir/sub` with its sha256, sorted: equal outputs mean equal trees.
pub fn tree_hash(dir: &Path, sub: &str) -> Vec<u8> {
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("cd \"$0\" && find \"$1\" -type f -exec sha256sum {} + | sort")
            .arg(dir)
            .arg(sub),
    )
    .stdout
}

/// An image of `other` whose name:tag the `small` corpus has too, with other content (a tag clash).
pub fn clashing_image<'a>(small: &Corpus, other: &'a Corpus) -> &'a ferry::fixtures::FixtureImage {
    other
        .images
        .iter()
        .find(|t| {
            small
                .images
                .iter()
                .any(|c| c.repository == t.repository && c.tag == t.tag && c.digest != t.digest)
        })
        .expect("tiny and small share a name:tag with other content")
}

/// A test CA and a server certificate for `127.0.0.1` (IP SAN) that it signed, made with openssl.
pub struct TestCerts {
    /// A directory holding `ca.crt` alone (skopeo's and podman's `--cert-dir`).
    pub ca_dir: PathBuf,
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate followed by the CA's (a chain).
    pub chain: PathBuf,
    /// The server's RSA key (PKCS#8).
    pub key: PathBuf,
    /// Holds the files (removed when dropped).
    _dir: tempfile::TempDir,
}

/// Makes a CA (EC P-256) and a server certificate (RSA 2048) for 127.0.0.1, valid for two days.
pub fn test_certs() -> TestCerts {
    require("openssl");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("ca")).unwrap();
    let ssl = |args: &[&str]| run_ok(Command::new("openssl").current_dir(d).args(args));
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=ferry test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca/ca.crt",
    ]);
    ssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca/ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
    let chain = [
        std::fs::read(d.join("server.crt")).unwrap(),
        std::fs::read(d.join("ca/ca.crt")).unwrap(),
    ]
    .concat();
    std::fs::write(d.join("chain.crt"), chain).unwrap();
    TestCerts {
        ca_dir: d.join("ca"),
        ca: d.join("ca/ca.crt"),
        chain: d.join("chain.crt"),
        key: d.join("server.key"),
        _dir: dir,
    }
}

/// Writes an htpasswd file with one bcrypt entry, made by apache2-utils' `htpasswd -Bbn`.
pub fn htpasswd_file(path: &Path, user: &str, password: &str) {
    require("htpasswd");
    let entry = run_ok(Command::new("htpasswd").args(["-Bbn", user, password])).stdout;
    std::fs::write(path, entry).unwrap();
}

/// The Garage binary: on PATH, else where `cargo install` puts it (scripts/test.sh installs it).
fn garage_bin() -> PathBuf {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let cargo_bin = home.join(".cargo/bin/garage");
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("garage"))
                .find(|p| p.is_file())
        })
        .or_else(|| cargo_bin.is_file().then_some(cargo_bin))
        .expect("garage is not installed: run scripts/test.sh, which runs cargo install --locked garage")
}

/// A bucket of a test [`Garage`] and a key allowed to read and write it: what clients need to reach it.
#[derive(Debug, Clone)]
pub struct GarageBucket {
    /// `http://127.0.0.1:PORT`, the S3 API.
    pub endpoint: String,
    /// The bucket's name.
    pub bucket: String,
    /// The access key id.
    pub key_id: String,
    /// The secret key.
    pub secret: String,
    /// The Garage config, for `garage bucket info`.
    pub config: PathBuf,
}

impl GarageBucket {
    /// The `storage:` entries of a docker-registry config on this bucket (INTEROP.md §12).
    fn registry_storage(&self, rootdirectory: &str) -> String {
        format!(
            "  s3:\n    region: garage\n    regionendpoint: {}\n    bucket: {}\n    accesskey: {}\n    secretkey: {}\n    secure: false\n    v4auth: true\n    rootdirectory: {rootdirectory}\n  redirect:\n    disable: true\n",
            self.endpoint, self.bucket, self.key_id, self.secret
        )
    }

    /// How many objects the bucket holds, as Garage itself counts them (a check that ferry wrote nothing).
    pub fn objects(&self) -> u64 {
        let out = run_ok(
            Command::new(garage_bin())
                .arg("-c")
                .arg(&self.config)
                .args(["bucket", "info", &self.bucket]),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.trim().strip_prefix("Objects:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no object count in garage bucket info:\n{text}"))
    }

    /// The environment ferry reads the endpoint and credentials from (every other `AWS_*` removed).
    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        no_aws_env(cmd)
            .env("AWS_ACCESS_KEY_ID", &self.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_REGION", "garage")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
    }

    /// ferry with this bucket's endpoint and credentials in its environment.
    pub fn ferry(&self) -> Command {
        let mut cmd = ferry();
        self.env(&mut cmd);
        cmd
    }

    /// The `s3://BUCKET[/PREFIX]` root ferry takes.
    pub fn url(&self, prefix: &str) -> String {
        match prefix.trim_matches('/') {
            "" => format!("s3://{}", self.bucket),
            p => format!("s3://{}/{p}", self.bucket),
        }
    }
}

/// A single-node Garage (a real S3-compatible store) on random loopback ports, with its layout
/// applied and one key; stopped by PID when dropped (INTEROP.md §12).
pub struct Garage {
    child: Child,
    config: PathBuf,
    /// The S3 API, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    key_id: String,
    secret: String,
    _dir: tempfile::TempDir,
}

impl Garage {
    /// Starts Garage, assigns its layout and creates a key (buckets come from [`Garage::bucket`]).
    pub fn start() -> Garage {
        let bin = garage_bin();
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let (s3, rpc) = (free_port(), free_port());
            let secret: String = random_bytes::<32>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let config = dir.path().join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\n[s3_api]\napi_bind_addr = \"127.0.0.1:{s3}\"\ns3_region = \"garage\"\n",
                    d = dir.path().display()
                ),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
            let log = std::fs::File::create(dir.path().join("log")).unwrap();
            let mut child = Starting(Some(
                Command::new(&bin)
                    .arg("-c")
                    .arg(&config)
                    .arg("server")
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .expect("starting garage"),
            ));
            let cli = |args: &[&str]| {
                Command::new(&bin)
                    .arg("-c")
                    .arg(&config)
                    .args(args)
                    .output()
                    .expect("running garage")
            };
            let start = Instant::now();
            let mut up = false;
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = child.child().try_wait() {
                    break; // a port was taken: try others
                }
                if cli(&["status"]).status.success() {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !up {
                continue;
            }
            let ok = |args: &[&str]| {
                let out = cli(args);
                assert!(
                    out.status.success(),
                    "garage {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            let id = ok(&["node", "id", "-q"]);
            let node = id.trim().get(..64).expect("garage node id").to_string();
            ok(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
            ok(&["layout", "apply", "--version", "1"]);
            let key = ok(&["key", "create", "ferry-test"]);
            let field = |name: &str| {
                key.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_else(|| panic!("no {name} in garage key create output:\n{key}"))
            };
            return Garage {
                key_id: field("Key ID:"),
                secret: field("Secret key:"),
                child: child.hand_over(),
                endpoint: format!("http://127.0.0.1:{s3}"),
                config,
                _dir: dir,
            };
        }
        panic!("could not start garage on free ports");
    }

    /// Creates bucket `name` (retried while the new layout settles) and allows the key on it.
    pub fn bucket(&self, name: &str) -> GarageBucket {
        let cli = |args: &[&str]| {
            Command::new(garage_bin())
                .arg("-c")
                .arg(&self.config)
                .args(args)
                .output()
                .expect("running garage")
        };
        let start = Instant::now();
        loop {
            let out = cli(&["bucket", "create", name]);
            if out.status.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "garage bucket create {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            "ferry-test",
        ]);
        assert!(
            out.status.success(),
            "garage bucket allow: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        GarageBucket {
            endpoint: self.endpoint.clone(),
            bucket: name.to_string(),
            key_id: self.key_id.clone(),
            secret: self.secret.clone(),
            config: self.config.clone(),
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Random bytes from the OS (test secrets; no extra crate).
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("reading /dev/urandom");
    b
}

/// A TLS-terminating proxy in front of a plain endpoint (Garage's S3 API), serving a certificate
/// for 127.0.0.1 signed by a test CA, so clients meet a real HTTPS endpoint; stopped when dropped.
pub struct TlsProxy {
    /// `https://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The test CA (`certs.ca`) and the proxy's certificate and key.
    pub certs: TestCerts,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsProxy {
    /// Listens on a free loopback port and forwards each TLS connection's bytes to `upstream`
    /// (`http://HOST:PORT`), HTTP/1.1 only (the upstream speaks no HTTP/2 without TLS).
    pub fn start(upstream: &str) -> TlsProxy {
        let certs = test_certs();
        let mut config =
            (*ferry::serve::tls::server_config(&certs.chain, &certs.key).unwrap()).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = upstream.trim_start_matches("http://").to_string();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => {
                            let Ok((socket, _)) = accepted else { continue };
                            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                            tokio::spawn(async move {
                                // A client that refuses the certificate ends here.
                                let Ok(mut tls) = acceptor.accept(socket).await else { return };
                                let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                                    return;
                                };
                                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                            });
                        }
                    }
                }
            });
        });
        TlsProxy {
            endpoint: format!("https://127.0.0.1:{port}"),
            certs,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A `docker-registry` with its access log on ([`Registry::requests`]), over a hard-linked copy of `root` or an empty root.
pub fn logged_registry(root: Option<&Path>) -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().unwrap();
    if let Some(root) = root {
        hardlink_copy(root, dir.path());
    }
    let opts = RegistryOptions {
        access_log: true,
        ..Default::default()
    };
    let reg = Registry::start_with_options(dir.path(), None, &opts);
    (dir, reg)
}

/// Every file under `dir` (recursively).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Upload sessions left in a registry root (their `data` or `startedat` files), and any tag links.
///
/// A cancelled session is gone except for `hashstates/…`: distribution 2.8 deletes the
/// session's directory on DELETE, then its request handler's deferred `Close` writes the
/// hash state again. Its `data` and `startedat` files are what a live session holds.
pub fn uploads_and_tags(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let files = files_under(&root.join("docker/registry/v2/repositories"));
    let uploads = files
        .iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "_uploads"))
        .filter(|p| !p.components().any(|c| c.as_os_str() == "hashstates"))
        .cloned()
        .collect();
    let tags = files
        .iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "tags"))
        .cloned()
        .collect();
    (uploads, tags)
}
