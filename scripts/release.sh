#!/usr/bin/env bash
# The release build: one static, stripped x86_64 Linux binary (glibc linked in with crt-static,
# DNS by the pure-Rust hickory resolver, so no NSS module or shared library is needed at run
# time): it runs on any x86_64 Linux, old glibc-2.17-era hosts included.
#   scripts/release.sh           build it; prints its path and size
#   scripts/release.sh --check   build it, then prove it: `ldd` says "not a dynamic executable",
#                                and `ferry demo` runs inside an empty chroot holding only the
#                                binary, /etc/hosts, /etc/resolv.conf, CA certificates and /tmp
#                                (needs root for chroot)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE/.."
CHECK=false
case "${1:-}" in
  "") ;;
  --check) CHECK=true ;;
  *) echo "usage: scripts/release.sh [--check]" >&2; exit 2 ;;
esac

TARGET=x86_64-unknown-linux-gnu
# Its own target dir: crt-static changes every crate's flags, so it must not share the dev build's.
export CARGO_TARGET_DIR="$PWD/target/static"
# Non-PIE (relocation-model=static): a static-pie binary works too, but ldd calls this one
# "not a dynamic executable", the plainest proof there is.
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_PROFILE_RELEASE_DEBUG=false \
  cargo build --release --locked --target "$TARGET" --features static-dns
BIN="$CARGO_TARGET_DIR/$TARGET/release/ferry"
echo "release binary: $BIN ($(stat -c %s "$BIN") bytes)"
$CHECK || exit 0

echo "--- ldd $BIN"
out=$(ldd "$BIN" 2>&1 || true)
echo "$out"
case "$out" in *"not a dynamic executable"*) ;; *) echo "FAIL: ldd does not call it \"not a dynamic executable\"" >&2; exit 1 ;; esac

CHROOT=$(command -v chroot)
JAIL=$(mktemp -d /tmp/ferry-chroot.XXXXXX)
FIX=$(mktemp -d /tmp/ferry-release-fixtures.XXXXXX)
SERVER=""
trap '[ -z "$SERVER" ] || { kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; }; rm -rf "$JAIL" "$FIX"' EXIT
mkdir -p "$JAIL/etc/ssl/certs" "$JAIL/tmp"
chmod 1777 "$JAIL/tmp"
cp "$BIN" "$JAIL/ferry"
cp -L /etc/hosts /etc/resolv.conf "$JAIL/etc/"
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp -L /etc/ssl/certs/ca-certificates.crt "$JAIL/etc/ssl/certs/"
echo "--- the chroot holds:"
(cd "$JAIL" && find . -mindepth 1 | sort)
echo "--- chroot $JAIL /ferry --version"
env -i HOME=/tmp TMPDIR=/tmp PATH=/ "$CHROOT" "$JAIL" /ferry --version
echo "--- chroot $JAIL /ferry demo"
env -i HOME=/tmp TMPDIR=/tmp PATH=/ "$CHROOT" "$JAIL" /ferry demo

# A name resolves with no NSS module: hickory reads /etc/hosts and /etc/resolv.conf itself.
# (Its random query ids come from getrandom, which a static glibc binary reaches through
# /dev/urandom, as every real host has; the bare chroot above has no /dev, so this step adds
# the two device nodes.)
mkdir -p "$JAIL/dev"
mknod -m 444 "$JAIL/dev/random" c 1 8
mknod -m 444 "$JAIL/dev/urandom" c 1 9
"$BIN" fixtures --preset tiny "$FIX/root" --list "$FIX/list.txt" >/dev/null 2>&1
"$BIN" serve -q "$FIX/root" --listen 127.0.0.1:0 > "$FIX/addr" 2>/dev/null &
SERVER=$!
for _ in $(seq 1 100); do [ -s "$FIX/addr" ] && break; sleep 0.05; done
PORT=$(head -1 "$FIX/addr" | sed 's/.*://')
REF=$(grep -v '^#' "$FIX/list.txt" | grep -v '^[[:space:]]*$' | head -1)
echo "--- chroot $JAIL /ferry copy docker://localhost:$PORT/$REF dir:/tmp/copied (localhost from /etc/hosts)"
env -i HOME=/tmp TMPDIR=/tmp PATH=/ "$CHROOT" "$JAIL" /ferry copy -q --src-tls-verify=false "docker://localhost:$PORT/$REF" dir:/tmp/copied
[ -f "$JAIL/tmp/copied/manifest.json" ] || { echo "FAIL: nothing copied" >&2; exit 1; }
echo "OK: static, ferry demo runs in an empty chroot, and names resolve there without NSS"
