//! `ferry serve` / `ferry unbundle serve` as the site's registry: TLS (HTTP/1.1
//! and HTTP/2), basic auth from an htpasswd file, anonymous reads, refused
//! requests that carry a body, bad TLS and htpasswd files, and bundles that
//! disagree on a tag or are given twice. Real clients: curl, skopeo, podman,
//! containerd's ctr and dockerd, each trusting the test CA its own way.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::*;

const USER: &str = "alice";
/// Distinctive, so a search of the server's log cannot miss it.
const PASSWORD: &str = "Corr3ct-Horse-Battery-9317";
const WRONG: &str = "Wr0ng-Pony-Staple-4620";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// curl over the test CA: returns (status, HTTP version, headers, body).
fn curl(certs: &TestCerts, url: &str, extra: &[&str]) -> (u16, String, String, String) {
    require("curl");
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head");
    let out = run_ok(
        Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&certs.ca)
            .arg("-D")
            .arg(&head)
            .args(["-w", "\n%{http_code} %{http_version}"])
            .args(extra)
            .arg(url),
    );
    let stdout = text(&out.stdout);
    let (body, tail) = stdout.rsplit_once('\n').unwrap();
    let (code, version) = tail.split_once(' ').unwrap();
    (
        code.parse().unwrap(),
        version.to_string(),
        std::fs::read_to_string(&head).unwrap(),
        body.to_string(),
    )
}

/// A served `small` bundle over TLS with basic auth and `--debug` logs into `log`.
fn secure_bundle_server(certs: &TestCerts, htpasswd: &Path, log: &Path) -> FerryServe {
    let (zst, _) = crate::unbundle::bundles();
    FerryServe::start_logged(
        &[
            "--debug",
            "unbundle",
            "serve",
            zst.to_str().unwrap(),
            "--tls-cert",
            certs.chain.to_str().unwrap(),
            "--tls-key",
            certs.key.to_str().unwrap(),
            "--htpasswd",
            htpasswd.to_str().unwrap(),
        ],
        Some(log),
        &[],
    )
}

fn plain_image(corpus: &ferry::fixtures::Corpus) -> &ferry::fixtures::FixtureImage {
    corpus
        .images
        .iter()
        .find(|i| i.platforms.is_empty())
        .unwrap()
}

#[test]
fn tls_and_basic_auth_with_curl_and_skopeo_and_no_password_logged() {
    let (_, corpus) = small();
    let img = plain_image(corpus);
    let certs = test_certs();
    let work = tempfile::tempdir().unwrap();
    let ht = work.path().join("htpasswd");
    htpasswd_file(&ht, USER, PASSWORD);
    let log = work.path().join("serve.log");
    let server = secure_bundle_server(&certs, &ht, &log);
    let base = format!("https://{}", server.addr);
    let good = format!("{USER}:{PASSWORD}");
    let bad = format!("{USER}:{WRONG}");

    // Every route, /v2/ included, wants credentials: 401, the Basic challenge, the spec's error body.
    for path in [
        "/v2/".to_string(),
        format!("/v2/{}/manifests/{}", img.repository, img.tag),
        format!("/v2/{}/tags/list", img.repository),
        "/v2/_catalog".to_string(),
    ] {
        for creds in [None, Some(bad.as_str())] {
            let mut extra = vec![];
            if let Some(c) = creds {
                extra.extend(["-u", c]);
            }
            let (code, _, head, body) = curl(&certs, &format!("{base}{path}"), &extra);
            assert_eq!(code, 401, "{path} {creds:?}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("www-authenticate: basic realm=\"ferry\""),
                "{head}"
            );
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED", "{body}");
        }
    }
    // HTTP/2 by ALPN, and HTTP/1.1 when asked for.
    let url = format!("{base}/v2/{}/manifests/{}", img.repository, img.tag);
    let (code, version, _, body) = curl(&certs, &url, &["--http2", "-u", &good]);
    assert_eq!((code, version.as_str()), (200, "2"));
    assert_eq!(sha256(body.as_bytes()), img.digest.to_string());
    let (code, version, _, _) = curl(&certs, &url, &["--http1.1", "-u", &good]);
    assert_eq!((code, version.as_str()), (200, "1.1"));

    // skopeo trusts the CA through --cert-dir / --src-cert-dir and sends --creds / --src-creds.
    let cert_dir = certs.ca_dir.to_str().unwrap();
    let reference = format!("docker://{}/{}:{}", server.addr, img.repository, img.tag);
    let raw = skopeo_ok(&[
        "inspect",
        "--raw",
        "--cert-dir",
        cert_dir,
        "--creds",
        &good,
        &reference,
    ]);
    assert_eq!(sha256(&raw.stdout), img.digest.to_string());
    let out = work.path().join("out");
    skopeo_ok(&[
        "copy",
        "-q",
        "--src-cert-dir",
        cert_dir,
        "--src-creds",
        &good,
        &reference,
        &format!("dir:{}", out.display()),
    ]);
    assert_eq!(
        sha256(&std::fs::read(out.join("manifest.json")).unwrap()),
        img.digest.to_string()
    );
    for creds in [None, Some(bad.as_str())] {
        let mut args = vec!["inspect", "--raw", "--cert-dir", cert_dir];
        if let Some(c) = creds {
            args.extend(["--creds", c]);
        }
        args.push(&reference);
        let failed = skopeo(&args);
        assert!(!failed.status.success(), "{creds:?}");
        let err = text(&failed.stderr);
        assert!(
            err.contains("401") || err.to_lowercase().contains("unauthorized"),
            "{err}"
        );
    }
    // Without the CA the certificate is not trusted.
    let untrusted = skopeo(&["inspect", "--raw", "--creds", &good, &reference]);
    assert!(!untrusted.status.success());

    // A connection that never starts its handshake does not hold up the shutdown (the header
    // timeout is 30 s here; the harness kills after 10 s and then reports no exit status).
    let _silent = TcpStream::connect(&server.addr).unwrap();
    let started = std::time::Instant::now();
    let status = server.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "a clean exit on SIGTERM: {status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("request"),
        "--debug logged the requests: {logged}"
    );
    for secret in [PASSWORD, WRONG] {
        assert!(!logged.contains(secret), "{secret} in the log:\n{logged}");
    }
    // Nor the base64 of either credential pair.
    use base64::Engine as _;
    for pair in [&good, &bad] {
        let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
        assert!(!logged.contains(&b64), "credentials in the log");
    }
}

#[test]
fn anonymous_read_lets_pulls_through_and_nothing_else() {
    let (dir, corpus) = tiny();
    let img = plain_image(&corpus);
    let work = tempfile::tempdir().unwrap();
    let ht = work.path().join("htpasswd");
    htpasswd_file(&ht, USER, PASSWORD);
    let server = FerryServe::start_with(&[
        "serve",
        dir.path().to_str().unwrap(),
        "--htpasswd",
        ht.to_str().unwrap(),
        "--anonymous-read",
    ]);
    let a = server.addr.as_str();
    use base64::Engine as _;
    let basic = |p: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{p}"))
        )
    };
    let manifest = format!("/v2/{}/manifests/{}", img.repository, img.tag);
    let (status, _, body) = http(a, "GET", &manifest, &[]).unwrap();
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), img.digest.to_string());
    assert_eq!(http(a, "HEAD", &manifest, &[]).unwrap().0, 200);
    // Wrong credentials are refused, also on a read.
    let (status, head, _) = http(a, "GET", &manifest, &[("Authorization", &basic(WRONG))]).unwrap();
    assert_eq!(status, 401);
    assert_eq!(
        header(&head, "www-authenticate"),
        Some("Basic realm=\"ferry\"")
    );
    assert_eq!(
        http(a, "GET", &manifest, &[("Authorization", &basic(PASSWORD))])
            .unwrap()
            .0,
        200
    );
    // Writes always need credentials; with them this read-only server says UNSUPPORTED.
    for (method, path) in [
        ("PUT", manifest.clone()),
        ("POST", format!("/v2/{}/blobs/uploads/", img.repository)),
        ("DELETE", manifest.clone()),
    ] {
        let (status, _, body) = http(a, method, &path, &[("Content-Length", "0")]).unwrap();
        assert_eq!(status, 401, "{method} {path}");
        assert!(text(&body).contains("UNAUTHORIZED"));
        let (status, _, body) = http(
            a,
            method,
            &path,
            &[("Content-Length", "0"), ("Authorization", &basic(PASSWORD))],
        )
        .unwrap();
        assert_eq!(status, 405, "{method} {path}");
        assert!(text(&body).contains("UNSUPPORTED"));
    }
    // The ping still challenges (clients learn the scheme there), and skopeo pulls anonymously after it.
    assert_eq!(http(a, "GET", "/v2/", &[]).unwrap().0, 401);
    let raw = skopeo_ok(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{a}/{}:{}", img.repository, img.tag),
    ]);
    assert_eq!(sha256(&raw.stdout), img.digest.to_string());
}

/// Reads one HTTP/1.1 response (head and a `Content-Length` body) from a keep-alive socket.
pub(crate) fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).unwrap();
        assert_eq!(n, 1, "connection closed mid-head: {}", text(&buf));
        buf.push(byte[0]);
    }
    let head = text(&buf);
    let len: usize = header(&head, "content-length")
        .map(|v| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        head,
    )
}

#[test]
fn a_refused_request_with_a_body_leaves_the_connection_usable() {
    let (dir, _) = tiny();
    let server = FerryServe::start(dir.path());
    let connect = || {
        let s = TcpStream::connect(&server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    // A small body: read and dropped, and the next request on the same connection is answered.
    for method in ["PUT", "POST", "PATCH"] {
        let mut s = connect();
        let body = "x".repeat(5000);
        write!(
            s,
            "{method} /v2/x/manifests/y HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}GET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n",
            body.len()
        )
        .unwrap();
        let (status, head) = read_response(&mut s);
        assert_eq!(status, 405, "{head}");
        assert_ne!(header(&head, "connection"), Some("close"), "{head}");
        let (status, _) = read_response(&mut s);
        assert_eq!(status, 200, "the second request on the connection");
    }
    // A chunked body within the bound: the same.
    let mut s = connect();
    s.write_all(b"PUT /v2/x/manifests/y HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).0, 405);
    assert_eq!(read_response(&mut s).0, 200);
    // A body larger than the bound is not read: the answer says the connection ends.
    let mut s = connect();
    write!(
        s,
        "PUT /v2/x/manifests/y HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        8 * 1024 * 1024
    )
    .unwrap();
    let (status, head) = read_response(&mut s);
    assert_eq!(status, 405);
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
}

/// ferry serve that must fail at start: returns (exit code, stderr).
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let out: Output = run(ferry().args(args).args(["--listen", "127.0.0.1:0"]));
    (out.status.code(), text(&out.stderr))
}

#[test]
fn bad_tls_and_htpasswd_files_are_one_line_naming_the_file() {
    let (dir, _) = tiny();
    let root = dir.path().to_str().unwrap();
    let certs = test_certs();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (cert, key) = (certs.chain.to_str().unwrap(), certs.key.to_str().unwrap());
    let missing = w.join("missing.pem");
    let empty = w.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let other_key = w.join("other.key");
    run_ok(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-out",
            ])
            .arg(&other_key),
    );
    let (missing_s, empty_s, other_s) = (
        missing.to_str().unwrap(),
        empty.to_str().unwrap(),
        other_key.to_str().unwrap(),
    );
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["--tls-cert", cert], 2, "--tls-cert needs --tls-key"),
        (vec!["--tls-key", key], 2, "--tls-key needs --tls-cert"),
        (
            vec!["--tls-cert", missing_s, "--tls-key", key],
            1,
            missing_s,
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", missing_s],
            1,
            missing_s,
        ),
        (vec!["--tls-cert", empty_s, "--tls-key", key], 1, empty_s),
        (
            vec!["--tls-cert", key, "--tls-key", key],
            1,
            "no PEM certificate",
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", empty_s],
            1,
            "no PEM private key",
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", cert],
            1,
            "no PEM private key",
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", other_s],
            1,
            "not the certificate's key",
        ),
        (
            vec!["--anonymous-read"],
            2,
            "--anonymous-read needs --htpasswd",
        ),
    ];
    let ht = w.join("htpasswd");
    let sha = w.join("sha.htpasswd");
    htpasswd_file(&ht, USER, PASSWORD);
    let good_entry = std::fs::read_to_string(&ht).unwrap();
    std::fs::write(
        &sha,
        format!(
            "# users\n{}\nbob:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
            good_entry.trim_end()
        ),
    )
    .unwrap();
    let apr = w.join("apr.htpasswd");
    run_ok(
        Command::new("htpasswd")
            .args(["-cbm"])
            .arg(&apr)
            .args(["carol", "pw"]),
    );
    let sha_s = format!(
        "{}:3: user \"bob\": not a bcrypt hash (SHA-1)",
        sha.display()
    );
    let apr_s = format!(
        "{}:1: user \"carol\": not a bcrypt hash (Apache MD5)",
        apr.display()
    );
    let mut cases = cases;
    cases.push((vec!["--htpasswd", sha.to_str().unwrap()], 1, &sha_s));
    cases.push((vec!["--htpasswd", apr.to_str().unwrap()], 1, &apr_s));
    cases.push((vec!["--htpasswd", missing_s], 1, missing_s));
    for (flags, code, want) in &cases {
        for cmd in [&["serve", root][..], &["unbundle", "serve", root][..]] {
            let args = [cmd, &flags[..]].concat();
            let (got, stderr) = refused(&args);
            assert_eq!(got, Some(*code), "{args:?}: {stderr}");
            assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
            assert!(stderr.contains(want), "{args:?}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }

    // The key forms a site may have: PKCS#8 (above), PKCS#1 RSA, SEC1 EC; each serves.
    let rsa1 = w.join("rsa1.key");
    run_ok(
        Command::new("openssl")
            .args(["rsa", "-traditional", "-in"])
            .arg(&certs.key)
            .arg("-out")
            .arg(&rsa1),
    );
    assert!(
        std::fs::read_to_string(&rsa1)
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );
    let ec_dir = w.join("ec");
    std::fs::create_dir(&ec_dir).unwrap();
    let ssl = |args: &[&str]| run_ok(Command::new("openssl").current_dir(&ec_dir).args(args));
    ssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "ec.key",
    ]);
    assert!(
        std::fs::read_to_string(ec_dir.join("ec.key"))
            .unwrap()
            .contains("BEGIN EC PRIVATE KEY")
    );
    ssl(&[
        "req",
        "-x509",
        "-key",
        "ec.key",
        "-days",
        "2",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-out",
        "ec.crt",
    ]);
    for (c, k, ca) in [
        (certs.chain.clone(), rsa1.clone(), certs.ca.clone()),
        (certs.chain.clone(), certs.key.clone(), certs.ca.clone()),
        (
            ec_dir.join("ec.crt"),
            ec_dir.join("ec.key"),
            ec_dir.join("ec.crt"),
        ),
    ] {
        let server = FerryServe::start_with(&[
            "serve",
            root,
            "--tls-cert",
            c.to_str().unwrap(),
            "--tls-key",
            k.to_str().unwrap(),
        ]);
        let out = run_ok(
            Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "20",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--cacert",
                ])
                .arg(&ca)
                .arg(format!("https://{}/v2/", server.addr)),
        );
        assert_eq!(text(&out.stdout), "200", "{}", k.display());
    }
}

#[test]
fn bundles_that_disagree_on_a_tag_are_refused_and_a_repeat_counts_once() {
    let (_, corpus) = small();
    let (zst, _) = crate::unbundle::bundles();
    let (tiny_dir, tiny) = tiny();
    let clash = clashing_image(corpus, &tiny);
    let src = FerryServe::start(tiny_dir.path());
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, format!("{}:{}\n", clash.repository, clash.tag)).unwrap();
    let other = work.path().join("other.tar.zst");
    run_ok(&mut bundle_cmd(
        &list,
        &other,
        &work.path().join("cache"),
        &src.addr,
    ));
    let small_digest = corpus
        .images
        .iter()
        .find(|i| i.repository == clash.repository && i.tag == clash.tag)
        .unwrap()
        .digest
        .to_string();
    for extra in [
        &[][..],
        &["--dir", work.path().join("unpacked").to_str().unwrap()][..],
    ] {
        let mut args = vec![
            "unbundle",
            "serve",
            zst.to_str().unwrap(),
            other.to_str().unwrap(),
        ];
        args.extend(extra);
        let (code, stderr) = refused(&args);
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        for want in [
            format!("{}:{}", clash.repository, clash.tag),
            zst.display().to_string(),
            other.display().to_string(),
            small_digest.clone(),
            clash.digest.to_string(),
        ] {
            assert!(stderr.contains(&want), "{want} in {stderr}");
        }
        assert!(!work.path().join("unpacked").exists(), "nothing unpacked");
    }

    // The same bundle by three paths (as given, through `..`, through a symlink) is one bundle.
    let link = work.path().join("link.tar.zst");
    std::os::unix::fs::symlink(zst, &link).unwrap();
    let dotted = zst
        .parent()
        .unwrap()
        .join("..")
        .join(zst.parent().unwrap().file_name().unwrap())
        .join(zst.file_name().unwrap());
    let log = work.path().join("serve.log");
    let server = FerryServe::start_logged(
        &[
            "unbundle",
            "serve",
            zst.to_str().unwrap(),
            dotted.to_str().unwrap(),
            link.to_str().unwrap(),
        ],
        Some(&log),
        &[],
    );
    let img = &corpus.images[0];
    assert_eq!(
        inspect_digest(&format!(
            "docker://{}/{}:{}",
            server.addr, img.repository, img.tag
        )),
        img.digest.to_string()
    );
    server.stop();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(&format!(
            "serving 1 bundle(s), {} images, in place",
            corpus.images.len()
        )),
        "{logged}"
    );
}

/// A TLS and basic-auth server over the `small` bundle for one client test, with its htpasswd dir.
fn client_server() -> (TestCerts, tempfile::TempDir, FerryServe) {
    let certs = test_certs();
    let work = tempfile::tempdir().unwrap();
    let ht = work.path().join("htpasswd");
    htpasswd_file(&ht, USER, PASSWORD);
    let server = secure_bundle_server(&certs, &ht, &work.path().join("serve.log"));
    (certs, work, server)
}

#[test]
fn podman_pulls_over_tls_with_credentials() {
    require("podman");
    let (_, corpus) = small();
    let img = plain_image(corpus);
    let (certs, _work, server) = client_server();
    let dir = tempfile::Builder::new()
        .prefix("fp")
        .tempdir_in("/tmp")
        .unwrap();
    let podman = |args: &[&str]| crate::clients::podman_in(dir.path(), args);
    let r = format!("{}/{}:{}", server.addr, img.repository, img.tag);
    let cert_dir = certs.ca_dir.to_str().unwrap();
    let anonymous = run(&mut podman(&["pull", "-q", "--cert-dir", cert_dir, &r]));
    assert!(!anonymous.status.success(), "pulled without credentials");
    let wrong = format!("{USER}:{WRONG}");
    let refused = run(&mut podman(&[
        "pull",
        "-q",
        "--cert-dir",
        cert_dir,
        "--creds",
        &wrong,
        &r,
    ]));
    assert!(!refused.status.success(), "pulled with a wrong password");
    let good = format!("{USER}:{PASSWORD}");
    run_ok(&mut podman(&[
        "pull",
        "-q",
        "--cert-dir",
        cert_dir,
        "--creds",
        &good,
        &r,
    ]));
    let out = run_ok(&mut podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Digest}}",
        &r,
    ]));
    assert_eq!(text(&out.stdout).trim(), img.digest.to_string());
    let _ = std::fs::remove_dir_all(dir.path());
}

#[test]
fn containerd_ctr_pulls_over_tls_with_credentials() {
    let (_, corpus) = small();
    let img = plain_image(corpus);
    let (certs, work, server) = client_server();
    let containerd = crate::clients::Containerd::start();
    // ctr 1.6 speaks plain HTTP to 127.0.0.1 unless a hosts dir names the https server and its CA.
    let hosts = work.path().join("hosts");
    let host_dir = hosts.join(&server.addr);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"https://{0}\"\n\n[host.\"https://{0}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{1}\"\n",
            server.addr,
            certs.ca.display()
        ),
    )
    .unwrap();
    let r = format!("{}/{}:{}", server.addr, img.repository, img.tag);
    let hosts_s = hosts.to_str().unwrap();
    let anonymous = run(&mut containerd.ctr(&["images", "pull", "--hosts-dir", hosts_s, &r]));
    assert!(!anonymous.status.success(), "pulled without credentials");
    let good = format!("{USER}:{PASSWORD}");
    run_ok(&mut containerd.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        hosts_s,
        "--user",
        &good,
        &r,
    ]));
    let out = run_ok(&mut containerd.ctr(&["images", "ls"]));
    let listing = text(&out.stdout);
    let line = listing
        .lines()
        .find(|l| l.starts_with(&format!("{r} ")))
        .unwrap_or_else(|| panic!("{r} not listed:\n{listing}"));
    assert!(line.contains(&img.digest.to_string()), "{line}");
}

/// Removes a `/etc/docker/certs.d` entry when dropped, also when the test fails.
struct CertsD(std::path::PathBuf);

impl Drop for CertsD {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // certs.d itself only if this test made it (it is empty then).
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

#[test]
fn dockerd_pulls_over_tls_after_docker_login() {
    let (_, corpus) = small();
    let img = plain_image(corpus);
    let (certs, _work, server) = client_server();
    // dockerd reads a registry's CA from /etc/docker/certs.d/HOST:PORT/ca.crt (no flag moves it).
    let certs_d = CertsD(Path::new("/etc/docker/certs.d").join(&server.addr));
    std::fs::create_dir_all(&certs_d.0).unwrap();
    std::fs::copy(&certs.ca, certs_d.0.join("ca.crt")).unwrap();
    let dockerd = crate::clients::Dockerd::start();
    let r = format!("{}/{}:{}", server.addr, img.repository, img.tag);
    let anonymous = run(&mut dockerd.docker(&["pull", "-q", &r]));
    assert!(!anonymous.status.success(), "pulled without logging in");
    let mut wrong = dockerd.docker(&["login", &server.addr, "-u", USER, "--password-stdin"]);
    assert!(
        !login(&mut wrong, WRONG).status.success(),
        "logged in with a wrong password"
    );
    let mut good = dockerd.docker(&["login", &server.addr, "-u", USER, "--password-stdin"]);
    let out = login(&mut good, PASSWORD);
    assert!(out.status.success(), "docker login: {}", text(&out.stderr));
    run_ok(&mut dockerd.docker(&["pull", "-q", &r]));
    let out = run_ok(&mut dockerd.docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .RepoDigests 0}}",
        &r,
    ]));
    assert!(
        text(&out.stdout)
            .trim()
            .ends_with(&format!("@{}", img.digest)),
        "{}",
        text(&out.stdout)
    );
}

/// Runs `docker login … --password-stdin` with `password` on its stdin.
fn login(cmd: &mut Command, password: &str) -> Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_tls_handshake_is_bounded_by_the_header_timeout() {
    let (dir, _) = tiny();
    let certs = test_certs();
    let (child, addr) = crate::hostile::serve_with_timeouts(
        dir.path(),
        400,
        &[
            "--tls-cert",
            certs.chain.to_str().unwrap(),
            "--tls-key",
            certs.key.to_str().unwrap(),
        ],
    );
    /// Stops the server however the test ends.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(child);
    // A ClientHello record that claims 512 bytes, trickled a byte per ~150 ms: never idle for
    // 400 ms, so only the bound on the whole handshake can end it, and it must end while trickling.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]);
    // A ClientHello's start (type 1, length 508, TLS 1.2), then its random field.
    let hello = [&[0x01u8, 0x00, 0x01, 0xfc, 0x03, 0x03][..], &[0u8; 20][..]].concat();
    let start = std::time::Instant::now();
    let mut closed = false;
    for b in hello {
        std::thread::sleep(Duration::from_millis(100));
        if s.write_all(&[b]).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // End of stream, an alert, or a reset: the server gave up on this handshake.
            _ => {
                closed = true;
                break;
            }
        }
    }
    assert!(
        closed,
        "a trickled handshake still open after {:?}",
        start.elapsed()
    );
    // The server still completes handshakes and answers.
    let (code, version, _, _) = curl(&certs, &format!("https://{addr}/v2/"), &[]);
    assert_eq!((code, version.as_str()), (200, "2"));
}
