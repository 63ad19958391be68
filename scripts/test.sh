#!/usr/bin/env bash
# The whole test suite. Installs what the tests need (Debian packages) when missing:
# the real registry (docker-registry) and real clients (skopeo, podman, containerd, docker.io),
# htpasswd (apache2-utils: bcrypt entries for a password-protected registry),
# minisign (checks that ferry's bundle signatures verify with the reference tool),
# strace (checks that a refusal which wrote nothing makes no syncfs),
# curl (HTTP/2 over TLS) and python3 (the OCI conformance port, scripts/conformance.py),
# Python's cryptography (checks the fixtures' cosign signatures independently of ferry),
# and Garage (an S3-compatible store: cargo install, as Debian has none),
# then runs every unit and integration test.
#   scripts/test.sh [cargo test args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v zstd >/dev/null || need+=(zstd)
command -v podman >/dev/null || need+=(podman)
command -v containerd >/dev/null || need+=(containerd)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import cryptography' 2>/dev/null || need+=(python3-cryptography)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v minisign >/dev/null || need+=(minisign)
command -v strace >/dev/null || need+=(strace)
[ -x /usr/bin/docker ] && command -v dockerd >/dev/null || need+=(docker.io)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} with apt-get" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
# A python3 that is not Debian's (pyenv, a venv) does not see python3-cryptography: pip then.
python3 -c 'import cryptography' 2>/dev/null || python3 -m pip install -q cryptography

# Garage (a real S3-compatible store, for tests/it/s3.rs) is not in Debian: built from crates.io (~11 min on 2 cores).
if ! command -v garage >/dev/null && [ ! -x "$HOME/.cargo/bin/garage" ]; then
  echo "installing garage with cargo install --locked garage" >&2
  cargo install --locked garage
fi

cargo test --locked "$@"
