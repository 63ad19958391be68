//! Records the commit the binary is built from, so `ferry --version` can name it.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown commit".to_string());
    println!("cargo:rustc-env=FERRY_COMMIT={commit}");
    // Rebuild when HEAD moves (a worktree's HEAD lives in its own git dir).
    if let Ok(o) = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        && o.status.success()
    {
        let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Ok(head) = std::fs::read_to_string(format!("{dir}/HEAD"))
            && let Some(r) = head.trim().strip_prefix("ref: ")
        {
            let common = Command::new("git")
                .args(["rev-parse", "--git-common-dir"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or(dir.clone());
            println!("cargo:rerun-if-changed={common}/{r}");
            println!("cargo:rerun-if-changed={common}/packed-refs");
        }
    }
    // The binary is linked as a fixed-address (non-PIE) executable, as scripts/release.sh's
    // static one already is: a PIE makes the loader apply ~29,000 relocations and copy ~270
    // pages of `.data.rel.ro` at every start, about 0.5 ms of CPU per process (a sixth of a
    // one-shot `ferry inspect`). The code is still compiled position-independent; only the link
    // changes, so the libraries and the test binaries are untouched.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
