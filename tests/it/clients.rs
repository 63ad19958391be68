//! Real clients pull every image and every platform from `ferry unbundle serve`
//! (the bundle read in place): podman, containerd's ctr, and dockerd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry::fixtures::FixtureImage;

use crate::harness::*;

/// A served `small` bundle (all platforms), read in place.
fn served() -> FerryServe {
    let (zst, _) = crate::unbundle::bundles();
    FerryServe::start_with(&["unbundle", "serve", zst.to_str().unwrap()])
}

/// What each image must be pulled as: (reference, platform or none, expected digest of what the client records).
fn pulls(addr: &str, images: &[FixtureImage]) -> Vec<(String, Option<String>, String)> {
    let mut out = Vec::new();
    for img in images {
        let r = format!("{addr}/{}:{}", img.repository, img.tag);
        if img.platforms.is_empty() {
            out.push((r, None, img.digest.to_string()));
        } else {
            for (p, _) in &img.platforms {
                out.push((r.clone(), Some(p.clone()), img.digest.to_string()));
            }
        }
    }
    out
}

/// A daemon in its own temp dir, stopped by PID (SIGTERM, then SIGKILL) when dropped.
struct Daemon {
    child: Option<Child>,
    /// Removed after the daemon stops (fields drop after `drop` runs).
    _dir: tempfile::TempDir,
    unmount: Option<PathBuf>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .stderr(Stdio::null())
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(m) = &self.unmount {
            // dockerd makes its data root a mount point; one left behind would block the temp dir's removal.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(m)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The docker-daemon: transport both ways through the Engine API at `host`:
/// ferry and skopeo read `pulled` (an image the daemon holds) into the same
/// blobs, then ferry loads it from the registry under another name, returned.
fn daemon_round_trip(host: &str, pulled: &str) -> &'static str {
    let work = tempfile::tempdir().unwrap();
    let (by_ferry, by_skopeo) = (work.path().join("ferry"), work.path().join("skopeo"));
    run_ok(ferry().env("DOCKER_HOST", host).args([
        "copy",
        "-q",
        &format!("docker-daemon:{pulled}"),
        &format!("dir:{}", by_ferry.display()),
    ]));
    skopeo_ok(&[
        "copy",
        "-q",
        "--src-daemon-host",
        host,
        &format!("docker-daemon:{pulled}"),
        &format!("dir:{}", by_skopeo.display()),
    ]);
    let listing = |p: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        listing(&by_ferry),
        listing(&by_skopeo),
        "ferry and skopeo read the same blobs from {host}"
    );
    let loaded = "loaded.example/by-ferry:1";
    run_ok(ferry().env("DOCKER_HOST", host).args([
        "copy",
        "-q",
        "--src-tls-verify=false",
        &format!("docker://{pulled}"),
        &format!("docker-daemon:{loaded}"),
    ]));
    loaded
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool, child: &mut Child) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if ready() {
            return;
        }
        if let Ok(Some(s)) = child.try_wait() {
            panic!("{what} exited before it was ready: {s}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} not ready after 60 s");
}

/// podman with its storage, run and temp dirs under `d` (vfs: nothing mounted, `rm -rf` cleans up).
pub(crate) fn podman_in(d: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(d.join("root"))
        .arg("--runroot")
        .arg(d.join("run"))
        .arg("--tmpdir")
        .arg(d.join("tmp"));
    c.args([
        "--storage-driver",
        "vfs",
        "--events-backend",
        "file",
        "--cgroup-manager",
        "cgroupfs",
    ])
    .args(args);
    c
}

#[test]
fn podman_pulls_every_image_and_platform() {
    require("podman");
    let (_, corpus) = small();
    let server = served();
    let dir = tempfile::Builder::new()
        .prefix("fp")
        .tempdir_in("/tmp")
        .unwrap();
    let d = dir.path();
    let podman = |args: &[&str]| podman_in(d, args);
    for (r, platform, digest) in pulls(&server.addr, &corpus.images) {
        let mut args = vec!["pull", "-q", "--tls-verify=false"];
        let arch;
        if let Some(p) = &platform {
            arch = p.split('/').nth(1).unwrap().to_string();
            args.extend(["--arch", &arch]);
        }
        args.push(&r);
        run_ok(&mut podman(&args));
        let out = run_ok(&mut podman(&[
            "image",
            "inspect",
            "--format",
            "{{.Digest}}",
            &r,
        ]));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            digest,
            "{r} {platform:?}"
        );
        if platform.is_some() {
            run_ok(&mut podman(&["rmi", "-f", &r]));
        }
    }

    // podman's Docker-compatible socket stands in for containers-storage: the
    // docker-daemon: transport both ways, beside skopeo's on the same socket.
    let sock = d.join("podman.sock");
    let host = format!("unix://{}", sock.display());
    let mut child = podman(&["system", "service", "--time=0", &host])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("podman system service", || sock.exists(), &mut child);
    let service = Daemon {
        child: Some(child),
        _dir: tempfile::tempdir().unwrap(),
        unmount: None,
    };
    let img = corpus
        .images
        .iter()
        .find(|i| i.platforms.is_empty())
        .unwrap();
    let pulled = format!("{}/{}:{}", server.addr, img.repository, img.tag);
    let loaded = daemon_round_trip(&host, &pulled);
    drop(service);
    let id = |r: &str| {
        let out = run_ok(&mut podman(&["image", "inspect", "--format", "{{.Id}}", r]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        id(loaded),
        id(&pulled),
        "the image ferry loaded through podman's socket is the one podman pulled"
    );
    let _ = std::fs::remove_dir_all(d);
}

/// A containerd of its own (root, state, socket in a short temp dir; no CRI), stopped when dropped.
pub(crate) struct Containerd {
    sock: PathBuf,
    _daemon: Daemon,
}

impl Containerd {
    /// Starts containerd and waits until `ctr version` answers.
    pub(crate) fn start() -> Containerd {
        require("containerd");
        require("ctr");
        let dir = tempfile::Builder::new()
            .prefix("fc")
            .tempdir_in("/tmp")
            .unwrap();
        let c = dir.path().to_path_buf();
        std::fs::write(
            c.join("config.toml"),
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{0}/c.sock\"\n[ttrpc]\n  address = \"{0}/c.sock.ttrpc\"\n[debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{0}/opt\"\n",
                c.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(c.join("log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(c.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut me = Containerd {
            sock: c.join("c.sock"),
            _daemon: Daemon {
                child: Some(child),
                _dir: dir,
                unmount: None,
            },
        };
        let sock = me.sock.clone();
        wait_for(
            "containerd",
            || {
                ctr_at(&sock, &["version"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            },
            me._daemon.child.as_mut().unwrap(),
        );
        me
    }

    /// `ctr` against this containerd.
    pub(crate) fn ctr(&self, args: &[&str]) -> Command {
        ctr_at(&self.sock, args)
    }
}

fn ctr_at(sock: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address").arg(sock).args(args);
    cmd
}

/// A dockerd of its own (data, exec root, socket and CLI config in a short temp dir; vfs, no
/// network setup), stopped when dropped and its data root unmounted.
pub(crate) struct Dockerd {
    /// `unix://…/docker.sock`.
    pub(crate) host: String,
    cli: PathBuf,
    _daemon: Daemon,
}

impl Dockerd {
    /// Starts dockerd and waits until `docker version` answers.
    pub(crate) fn start() -> Dockerd {
        require("dockerd");
        assert!(
            Path::new(DOCKER_CLI).is_file(),
            "Debian's docker CLI is not installed: run scripts/test.sh"
        );
        let dir = tempfile::Builder::new()
            .prefix("fd")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path().to_path_buf();
        for sub in ["data", "exec", "cli"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("daemon.json"), "{}").unwrap();
        let log = std::fs::File::create(d.join("log")).unwrap();
        let host = format!("unix://{}/docker.sock", d.display());
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args([
                "-H",
                &host,
                "--storage-driver",
                "vfs",
                "--iptables=false",
                "--ip-masq=false",
                "--bridge=none",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut me = Dockerd {
            host: host.clone(),
            cli: d.join("cli"),
            _daemon: Daemon {
                child: Some(child),
                _dir: dir,
                unmount: Some(d.join("data")),
            },
        };
        let cli = me.cli.clone();
        wait_for(
            "dockerd",
            || {
                docker_at(&host, &cli, &["version"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            },
            me._daemon.child.as_mut().unwrap(),
        );
        me
    }

    /// Debian's docker CLI against this dockerd, with its own CLI config.
    pub(crate) fn docker(&self, args: &[&str]) -> Command {
        docker_at(&self.host, &self.cli, args)
    }
}

/// Debian's docker CLI; `/usr/local/bin/docker` (a newer one) comes first on PATH here.
const DOCKER_CLI: &str = "/usr/bin/docker";

fn docker_at(host: &str, cli: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(DOCKER_CLI);
    c.env("DOCKER_HOST", host)
        .env("DOCKER_CONFIG", cli)
        .args(args);
    c
}

#[test]
fn containerd_ctr_pulls_every_image_and_platform() {
    let (_, corpus) = small();
    let server = served();
    let containerd = Containerd::start();
    let ctr = |args: &[&str]| containerd.ctr(args);
    for img in &corpus.images {
        let r = format!("{}/{}:{}", server.addr, img.repository, img.tag);
        run_ok(&mut ctr(&[
            "images",
            "pull",
            "--plain-http",
            "--all-platforms",
            &r,
        ]));
        let out = run_ok(&mut ctr(&["images", "ls"]));
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{r} ")))
            .unwrap_or_else(|| panic!("{r} not listed:\n{text}"));
        assert!(line.contains(&img.digest.to_string()), "{r}: {line}");
        if !img.platforms.is_empty() {
            for (p, _) in &img.platforms {
                assert!(
                    line.contains(p.trim_end_matches("/v8")),
                    "{r} lists {p}: {line}"
                );
            }
        }
    }
}

#[test]
fn dockerd_pulls_every_image_and_platform() {
    let (_, corpus) = small();
    let server = served();
    let dockerd = Dockerd::start();
    let docker = |args: &[&str]| dockerd.docker(args);
    let host = dockerd.host.clone();
    for (r, platform, digest) in pulls(&server.addr, &corpus.images) {
        let mut args = vec!["pull", "-q"];
        if let Some(p) = &platform {
            args.extend(["--platform", p]);
        }
        args.push(&r);
        run_ok(&mut docker(&args));
        let out = run_ok(&mut docker(&[
            "image",
            "inspect",
            "--format",
            "{{index .RepoDigests 0}}",
            &r,
        ]));
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            got.ends_with(&format!("@{digest}")),
            "{r} {platform:?}: {got}"
        );
        if platform.is_some() {
            run_ok(&mut docker(&["rmi", "-f", &r]));
        }
    }

    // The docker-daemon: transport, both ways, beside skopeo's on the same daemon.
    let img = corpus
        .images
        .iter()
        .find(|i| i.platforms.is_empty())
        .unwrap();
    let pulled = format!("{}/{}:{}", server.addr, img.repository, img.tag);
    let loaded = daemon_round_trip(&host, &pulled);
    let id = |r: &str| {
        let out = run_ok(&mut docker(&["image", "inspect", "--format", "{{.Id}}", r]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        id(loaded),
        id(&pulled),
        "the image ferry loaded is the one docker pulled"
    );
    let work = tempfile::tempdir().unwrap();
    let missing = run(ferry().env("DOCKER_HOST", &host).args([
        "copy",
        "docker-daemon:loaded.example/none:1",
        &format!("dir:{}", work.path().join("none").display()),
    ]));
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr)
            .trim_end()
            .lines()
            .count(),
        1,
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}
