//! What a user sees at the command line (issue 12): checks before downloading, exit codes,
//! one clear line, `--json` whatever happens, quiet broken pipes, progress, and nothing left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::harness::*;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first line of stderr (clap adds a "For more information" line after a usage error).
fn first_line(out: &Output) -> String {
    stderr(out).lines().next().unwrap_or_default().to_string()
}

fn assert_words(text: &str, words: &[&str]) {
    for w in words {
        assert!(
            text.to_lowercase().contains(&w.to_lowercase()),
            "{w:?} not in {text:?}"
        );
    }
}

/// Blob files (`data`) under a directory: what a run downloaded into a cache.
fn data_files(dir: &Path) -> usize {
    if !dir.exists() {
        return 0;
    }
    let out = run_ok(Command::new("find").arg(dir).args(["-name", "data"]));
    stdout(&out).lines().count()
}

/// Files whose name holds `.tmp-` under a directory: a failed run's leftovers.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

/// A tmpfs mounted for one test (we run as root in this sandbox), unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, opts: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
                .arg(dir),
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The `tiny` corpus served by `ferry serve`, and a list naming all of its tags.
struct Source {
    _dir: tempfile::TempDir,
    corpus: ferry::fixtures::Corpus,
    server: FerryServe,
    work: tempfile::TempDir,
    list: PathBuf,
}

fn source() -> Source {
    let (dir, corpus) = tiny();
    let server = FerryServe::start(dir.path());
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    let text: String = corpus
        .images
        .iter()
        .map(|i| format!("{}:{}\n", i.repository, i.tag))
        .collect();
    std::fs::write(&list, text).unwrap();
    Source {
        _dir: dir,
        corpus,
        server,
        work,
        list,
    }
}

/// `ferry bundle` of `list` from `src` (plain http), without -q.
fn bundle(src: &Source, list: &Path, out: &Path, cache: &Path) -> Command {
    bundle_cmd_plain(list, out, cache, &src.server.addr)
}

// Item 1: the output directory and the cache are checked before anything moves.
#[test]
fn bundle_checks_the_destination_before_downloading() {
    let src = source();
    let w = src.work.path();
    let cache = w.join("cache");

    let out = run(bundle(&src, &src.list, &w.join("nodir/x.tar.zst"), &cache).arg("-q"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert_words(
        &stderr(&out),
        &["output directory", "nodir", "no such directory"],
    );
    assert_eq!(data_files(&cache), 0, "nothing downloaded");

    let _ro = Tmpfs::mount(&w.join("ro"), "size=4m,ro");
    let out = run(bundle(&src, &src.list, &w.join("ro/x.tar.zst"), &cache).arg("-q"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert_words(
        &stderr(&out),
        &["output directory", "not writable", "read-only"],
    );
    assert_eq!(data_files(&cache), 0, "nothing downloaded");

    // A cache that is a file, not a directory.
    let file = w.join("afile");
    std::fs::write(&file, "x").unwrap();
    let out = run(bundle(&src, &src.list, &w.join("x.tar.zst"), &file).arg("-q"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(!w.join("x.tar.zst").exists());
}

// Item 2: `-o NAME` (no directory part) is checked for space too; a disk that fills up
// mid-run is named, the temp file removed, exit 1. Uses a small tmpfs mount.
#[test]
fn bare_output_name_is_checked_for_space_and_a_full_disk_is_named() {
    let src = source();
    let w = src.work.path();
    let small = w.join("small");
    let _fs = Tmpfs::mount(&small, "size=2m");
    let out = run(
        bundle(&src, &src.list, Path::new("x.tar.zst"), &w.join("cache"))
            .arg("-q")
            .current_dir(&small),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert_words(&stderr(&out), &["not enough disk space on ."]);
    assert_eq!(
        std::fs::read_dir(&small).unwrap().count(),
        0,
        "nothing left"
    );
    // Downloads begun while the plan was resolved were stopped, not left half-written.
    let tmp = w.join("cache").join(".ferry-tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0),
        0,
        "no partial blob in {}",
        tmp.display()
    );

    // The check passed (turned off here), then the disk fills up while the bundle is written.
    let out = run(
        bundle(&src, &src.list, Path::new("x.tar.zst"), &w.join("cache"))
            .arg("-q")
            .env(ferry::limits::ENV_NO_SPACE_CHECK, "1")
            .current_dir(&small),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert_words(&stderr(&out), &["no space left", "x.tar.zst"]);
    assert_eq!(
        std::fs::read_dir(&small).unwrap().count(),
        0,
        "no .x.tar.zst.tmp-PID left"
    );
}

// Item 5: --source is HOST[:PORT]; a scheme, a path or a space is a usage error.
#[test]
fn source_must_be_a_host() {
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, "busybox:1\n").unwrap();
    for (source, words) in [
        ("http://registry.local", &["--source", "http://"][..]),
        ("registry.local/mirror", &["--source", "prefix"][..]),
        ("not a host", &["--source", "not a registry host"][..]),
        (
            "registry.local:http",
            &["--source", "not a registry host"][..],
        ),
    ] {
        let out = run(ferry()
            .args(["bundle", "-f"])
            .arg(&list)
            .arg("-o")
            .arg(work.path().join("x.tar.zst"))
            .arg("--cache")
            .arg(work.path().join("cache"))
            .args(["--source", source]));
        assert_eq!(out.status.code(), Some(2), "{source}: {}", stderr(&out));
        assert_words(&first_line(&out), words);
        assert!(
            !work.path().join("cache").exists(),
            "{source}: nothing written"
        );
    }
}

// Item 6: --json prints one JSON document whatever happens, and a failed run leaves no temp file.
#[test]
fn json_is_printed_when_images_fail() {
    let src = source();
    let w = src.work.path();
    let list = w.join("bad.txt");
    let good = &src.corpus.images[0];
    std::fs::write(
        &list,
        format!("{}:{}\nno/such-image:1\n", good.repository, good.tag),
    )
    .unwrap();
    let out_file = w.join("out.tar.zst");
    for keep_going in [false, true] {
        let mut cmd = bundle(&src, &list, &out_file, &w.join("cache"));
        cmd.args(["--json", "-q"]);
        if keep_going {
            cmd.arg("--keep-going");
        }
        let out = run(&mut cmd);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", stdout(&out)));
        assert_eq!(doc["ok"], false, "{doc}");
        let failed = doc["failed"].as_array().unwrap();
        assert_eq!(failed.len(), 1, "{doc}");
        assert_eq!(failed[0]["image"], "no/such-image:1", "{doc}");
        assert_eq!(
            failed[0]["location"],
            format!("{}:2", list.display()),
            "{doc}"
        );
        assert!(!failed[0]["cause"].as_str().unwrap().is_empty(), "{doc}");
        if keep_going {
            assert_eq!(doc["images"], 1, "{doc}");
            assert!(out_file.is_file());
        } else {
            assert!(!out_file.exists());
        }
        assert_eq!(temp_files(w), Vec::<String>::new(), "no .NAME.tmp-PID left");
    }
    // Lines that do not parse are failures too, with file:line.
    std::fs::write(&list, "UPPER/Case:1\n").unwrap();
    let out = run(bundle(&src, &list, &out_file, &w.join("cache")).args(["--json", "-q"]));
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["failed"][0]["location"],
        format!("{}:1", list.display())
    );
}

/// Runs a command whose stdout is a pipe nobody reads (closed before it starts).
fn run_into_closed_pipe(cmd: &mut Command) -> Output {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array of two ints.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds were just created and are owned here.
    let (r, w) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    drop(r);
    cmd.stdout(Stdio::from(w)).stderr(Stdio::piped());
    cmd.output().unwrap()
}

// Item 7: a reader that goes away (`| head -1`) ends the command quietly with exit 0.
#[test]
fn broken_pipes_end_quietly() {
    let src = source();
    let w = src.work.path();
    let b = w.join("b.tar.zst");
    run_ok(bundle(&src, &src.list, &b, &w.join("cache")).arg("-q"));
    let root = src._dir.path();
    let cases: Vec<Vec<std::ffi::OsString>> = vec![
        vec!["ls".into(), root.into()],
        vec!["ls".into(), b.clone().into()],
        vec!["ls".into(), "--json".into(), b.clone().into()],
        vec!["verify".into(), root.into()],
        vec!["verify".into(), b.clone().into()],
        vec!["completions".into(), "bash".into()],
        vec!["man".into()],
    ];
    for args in cases {
        let out = run_into_closed_pipe(ferry().args(&args));
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }
}

// Item 8: every malformed flag value is a usage error, exit 2.
#[test]
fn malformed_flag_values_exit_2() {
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, "busybox:1\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--platform", "amd64"], "OS/ARCH"),
        (vec!["--platform", "linux/amd64/v8/x"], "OS/ARCH"),
        (vec!["--level", "99"], "--level"),
    ];
    for (args, word) in cases {
        let out = run(ferry()
            .args(["bundle", "-f"])
            .arg(&list)
            .arg("-o")
            .arg(work.path().join("x.tar.zst"))
            .arg("--cache")
            .arg(work.path().join("cache"))
            .args(&args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert_words(&first_line(&out), &[word]);
    }
    for cmd in [
        vec!["serve", "/nonexistent"],
        vec!["unbundle", "serve", "/nonexistent"],
    ] {
        for listen in ["nonsense", "127.0.0.1:99999", "a b:80"] {
            let out = run(ferry().args(&cmd).args(["--listen", listen]));
            assert_eq!(
                out.status.code(),
                Some(2),
                "{cmd:?} {listen}: {}",
                stderr(&out)
            );
            assert_words(&first_line(&out), &["--listen", "HOST:PORT"]);
        }
    }
}

// Item 9: a bundle that keeps some platforms of a multi-arch image says so, on stderr and in --json.
#[test]
fn sparse_indexes_are_announced() {
    let src = source();
    let w = src.work.path();
    let img = multi_arch(&src.corpus);
    let list = w.join("multi.txt");
    std::fs::write(&list, format!("{}:{}\n", img.repository, img.tag)).unwrap();
    let out = run_ok(bundle(&src, &list, &w.join("m.tar.zst"), &w.join("cache")).arg("--json"));
    let line = stderr(&out)
        .lines()
        .find(|l| l.contains("sparse index"))
        .unwrap_or_else(|| panic!("no sparse notice: {}", stderr(&out)))
        .to_string();
    assert_words(
        &line,
        &[&img.repository, "linux/amd64", "404", "--all-platforms"],
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], true);
    let sparse = doc["sparse"].as_array().unwrap();
    assert_eq!(sparse.len(), 1, "{doc}");
    assert_eq!(sparse[0]["kept"], serde_json::json!(["linux/amd64"]));
    assert_eq!(
        sparse[0]["left_out"].as_array().unwrap().len(),
        img.platforms.len() - 1
    );
    // Every platform kept: nothing to announce.
    let out = run_ok(
        bundle(&src, &list, &w.join("all.tar.zst"), &w.join("cache"))
            .args(["--json", "--all-platforms"]),
    );
    assert!(!stderr(&out).contains("sparse"), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["sparse"], serde_json::json!([]));
}

// Item 11: ls shows the same columns for a bundle and a root, sizes included.
#[test]
fn ls_shows_the_same_columns_for_bundles_and_roots() {
    let src = source();
    let w = src.work.path();
    let b = w.join("all.tar.zst");
    run_ok(bundle(&src, &src.list, &b, &w.join("cache")).args(["-q", "--all-platforms"]));
    let sorted = |out: Output| {
        let mut l: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
        l.sort();
        l
    };
    let from_root = sorted(run_ok(ferry().arg("ls").arg(src._dir.path())));
    let from_bundle = sorted(run_ok(ferry().arg("ls").arg(&b)));
    assert_eq!(from_root.len(), src.corpus.images.len());
    assert_eq!(from_root, from_bundle);
    for l in &from_bundle {
        let cols: Vec<&str> = l.split('\t').collect();
        assert_eq!(
            cols.len(),
            5,
            "repository, tag, digest, platforms, size: {l}"
        );
        assert!(cols[2].starts_with("sha256:"), "{l}");
        assert!(cols[4].ends_with('B'), "{l}");
    }
    let out = run_ok(ferry().args(["ls", "--json"]).arg(&b));
    for l in stdout(&out).lines() {
        let row: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(row["size"].as_u64().unwrap() > 0, "{row}");
        assert!(
            row["repository"].is_string() && row["tag"].is_string(),
            "{row}"
        );
    }
}

// Item 13: --version names the commit; completions and a man page come from the same definitions.
#[test]
fn version_completions_and_man_page() {
    let out = run_ok(ferry().arg("--version"));
    let v = stdout(&out);
    let v = v.trim();
    let commit = v
        .strip_prefix(concat!("ferry ", env!("CARGO_PKG_VERSION"), " ("))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{v:?}"));
    assert!(
        commit == "unknown commit"
            || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{v:?}"
    );
    for (shell, mark) in [
        ("bash", "_ferry()"),
        ("zsh", "#compdef ferry"),
        ("fish", "complete -c ferry"),
    ] {
        let out = run_ok(ferry().args(["completions", shell]));
        let text = stdout(&out);
        assert!(text.contains(mark), "{shell}");
        assert!(
            text.contains("unbundle") && text.contains("all-platforms"),
            "{shell}"
        );
    }
    let out = run(ferry().args(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2));
    let out = run_ok(ferry().arg("man"));
    let text = stdout(&out);
    assert!(
        text.contains(".TH ferry") && text.contains("unbundle"),
        "{text}"
    );
}

// Item 14: push and link draw a bar (bytes, blobs, rate, time left) on a terminal, and print
// nothing but results on stdout when not on one.
#[test]
fn push_and_link_show_progress_on_a_terminal_only() {
    let src = source();
    let w = src.work.path();
    let b = w.join("b.tar.zst");
    run_ok(bundle(&src, &src.list, &b, &w.join("cache")).args(["-q", "--all-platforms"]));
    let (_t, target) = empty_registry();
    let push = format!(
        "{} unbundle push {} --dest {} --dest-tls-verify=false",
        env!("CARGO_BIN_EXE_ferry"),
        b.display(),
        target.addr
    );
    let link = format!(
        "{} unbundle link {} --root {}",
        env!("CARGO_BIN_EXE_ferry"),
        b.display(),
        w.join("site").display()
    );
    for (what, cmd) in [("push", &push), ("link", &link)] {
        // `script` gives the command a terminal; its transcript is what a person would see.
        let out = run_ok(Command::new("script").args(["-qfec", cmd, "/dev/null"]));
        let seen = stdout(&out);
        assert!(
            seen.contains(&format!("{what} ")) && seen.contains(" blobs") && seen.contains("eta"),
            "{what}: {seen:?}"
        );
    }
    // Not a terminal: stdout holds the JSON result only, stderr no bar.
    let (_t2, target2) = empty_registry();
    let out = run_ok(
        ferry()
            .args([
                "unbundle",
                "push",
                "--json",
                "--dest-tls-verify=false",
                "--dest",
            ])
            .arg(&target2.addr)
            .arg(&b),
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc.is_object());
    assert!(!stderr(&out).contains("eta") && !stderr(&out).contains('\r'));
}

// Item 15: small honest answers.
#[test]
fn serve_prints_the_address_it_bound_on_stdout() {
    use std::io::BufRead;
    let src = source();
    let w = src.work.path();
    let b = w.join("b.tar.zst");
    run_ok(bundle(&src, &src.list, &b, &w.join("cache")).arg("-q"));
    let root = src._dir.path().to_str().unwrap().to_string();
    let bundle_path = b.to_str().unwrap().to_string();
    for args in [
        vec!["serve".to_string(), root],
        vec!["unbundle".into(), "serve".into(), bundle_path],
    ] {
        let mut child = ferry()
            .args(&args)
            .args(["--listen", "127.0.0.1:0", "-q"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr: std::net::SocketAddr = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{args:?}: {line:?}"));
        assert_ne!(addr.port(), 0);
        let status = http(&addr.to_string(), "GET", "/v2/", &[]).map(|r| r.0);
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let out = child.wait_with_output().unwrap();
        assert_eq!(status, Some(200), "{args:?}");
        assert_eq!(stderr(&out), "", "{args:?}: -q prints nothing else");
    }
}

#[test]
fn output_to_stdout_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("list.txt");
    std::fs::write(&list, "busybox:1\n").unwrap();
    let out = run(ferry()
        .args(["bundle", "-f"])
        .arg(&list)
        .args(["-o", "-", "--cache"])
        .arg(work.path().join("cache")));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_words(&first_line(&out), &["stdout", "file name"]);
    assert!(out.stdout.is_empty());
    assert!(!work.path().join("cache").exists());
}

#[test]
fn a_missing_path_is_no_such_file() {
    let missing = "/nonexistent/ferry-test/x.tar.zst";
    let cases: Vec<Vec<&str>> = vec![
        vec!["ls", missing],
        vec!["verify", missing],
        vec!["serve", missing, "--listen", "127.0.0.1:0"],
        vec!["unbundle", "serve", missing, "--listen", "127.0.0.1:0"],
        vec![
            "unbundle",
            "link",
            missing,
            "--root",
            "/nonexistent/ferry-test/root",
        ],
        vec!["unbundle", "push", missing, "--dest", "127.0.0.1:1"],
    ];
    for args in cases {
        let out = run(ferry().args(&args));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert_eq!(
            stderr(&out).lines().count(),
            1,
            "{args:?}: {}",
            stderr(&out)
        );
        assert_words(&stderr(&out), &["no such file", missing]);
    }
    assert!(!Path::new("/nonexistent/ferry-test").exists());
}

#[test]
fn creds_without_a_password_and_no_terminal_are_refused() {
    let src = source();
    let w = src.work.path();
    let cache = w.join("cache");
    let out = run(bundle(&src, &src.list, &w.join("x.tar.zst"), &cache)
        .args(["--src-creds", "alice", "-q"])
        .stdin(Stdio::null()));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert_words(&stderr(&out), &["--src-creds", "no password", "terminal"]);
    assert!(!cache.exists(), "nothing downloaded");
    let out = run(ferry()
        .args([
            "unbundle",
            "push",
            "--dest",
            "127.0.0.1:1",
            "--dest-creds",
            "bob",
        ])
        .arg(&src.list)
        .stdin(Stdio::null()));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_words(&stderr(&out), &["--dest-creds", "no password"]);
}

/// Processes whose command line mentions `needle` (to find servers a script left running).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let out = run_ok(Command::new("ps").args(["-eo", "pid,args"]));
    stdout(&out)
        .lines()
        .filter(|l| l.contains(needle) && !l.contains("ps -eo"))
        .map(str::to_string)
        .collect()
}

// Item 16: a benchmark whose step fails stops every server it started, also the target
// registry it started inside a `$(...)` subshell (which used to outlive it, its parent gone).
#[test]
fn bench_stops_its_servers_when_a_step_fails() {
    require("docker-registry");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let fake = w.join("fake");
    std::fs::create_dir_all(fake.join("bin")).unwrap();
    // The incumbent's pull succeeds (an empty tree); its push (skopeo sync) fails.
    std::fs::write(fake.join("seed_bundle.sh"), "mkdir -p \"$3/dirs\"\n").unwrap();
    std::fs::write(fake.join("bin/skopeo"), "#!/bin/sh\nexit 1\n").unwrap();
    run_ok(Command::new("chmod").arg("+x").arg(fake.join("bin/skopeo")));
    let path = format!(
        "{}:{}",
        fake.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let bench = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench.sh");
    let out = run(Command::new("bash")
        .arg(&bench)
        .arg("unbundle")
        .arg(w.join("work"))
        .env("FERRY_BIN", env!("CARGO_BIN_EXE_ferry"))
        .env("PRESET", "tiny")
        .env("RUNS", "1")
        .env("INCUMBENT", &fake)
        .env("PATH", path));
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let left = processes_mentioning(&w.join("work").display().to_string());
    for l in &left {
        // Stop what leaked (by PID) before failing, so a failure does not leak in turn.
        if let Some(pid) = l.split_whitespace().next() {
            let _ = Command::new("kill").arg(pid).status();
        }
    }
    assert!(left.is_empty(), "servers left running: {left:?}");
}

// Item 6, at the site: `unbundle push --json` prints a JSON document when images fail too.
#[test]
fn push_json_is_printed_when_images_fail() {
    let src = source();
    let w = src.work.path();
    let img = multi_arch(&src.corpus);
    let list = w.join("multi.txt");
    std::fs::write(&list, format!("{}:{}\n", img.repository, img.tag)).unwrap();
    let b = w.join("sparse.tar.zst");
    run_ok(bundle(&src, &list, &b, &w.join("cache")).arg("-q"));
    let (_t, target) = empty_registry();
    let out = run(ferry()
        .args([
            "unbundle",
            "push",
            "--json",
            "-q",
            "--dest-tls-verify=false",
            "--dest",
        ])
        .arg(&target.addr)
        .arg(&b));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", stdout(&out)));
    assert_eq!(doc["ok"], false, "{doc}");
    let failed = doc["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{doc}");
    assert_words(
        failed[0]["cause"].as_str().unwrap(),
        &[&img.repository, "--rewrite-sparse-index"],
    );
}

// Item 15: `--src-creds USER` asks for the password on a terminal, without echoing it.
#[test]
fn creds_without_a_password_are_asked_for_on_a_terminal() {
    let src = source();
    let w = src.work.path();
    let cmd = format!(
        "{} bundle -q -f {} -o {} --cache {} --source {} --src-tls-verify=false --src-creds alice",
        env!("CARGO_BIN_EXE_ferry"),
        src.list.display(),
        w.join("x.tar.zst").display(),
        w.join("cache").display(),
        src.server.addr
    );
    let mut child = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        // Typed once the prompt is up, as a person would.
        std::thread::sleep(std::time::Duration::from_millis(500));
        stdin.write_all(b"s3cret-word\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let seen = stdout(&out);
    assert!(out.status.success(), "{seen:?} {}", stderr(&out));
    assert!(seen.contains("Password for alice:"), "{seen:?}");
    assert!(
        !seen.contains("s3cret-word"),
        "the password was echoed: {seen:?}"
    );
    assert!(w.join("x.tar.zst").is_file());
}
