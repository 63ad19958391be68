#!/usr/bin/env bash
# Benchmarks against the incumbent tools, measured in the same run on the same data.
#   scripts/bench.sh serve [WORK]     large-blob GETs: ferry serve vs docker-registry over one root;
#                                     ferry verify vs sha256sum of the same blob files
#   scripts/bench.sh bundle [WORK]    the seed workflow (skopeo sync + shell + tar + zstd) vs ferry bundle
#                                     with an empty cache and with a warm one, vs plain tar | zstd of the root,
#                                     vs a bare parallel download of the same blobs (curl -Z, 6 at once; its runs and
#                                     the empty-cache ones interleaved, A B then B A)
#   scripts/bench.sh unbundle [WORK]  skopeo sync --scoped dir->docker vs ferry unbundle push (empty registry);
#                                     zstd -d | tar -x vs ferry unbundle link (empty root);
#                                     skopeo pulling every tag from docker-registry vs from ferry unbundle serve
#   scripts/bench.sh refs [WORK]      ferry bundle of a list of N (default 5000, REFS=N) references to one
#                                     registry (N tags of the small corpus' images): time, memory and CPU (ferry's and
#                                     the registry's) per reference,
#                                     whole and past the first N/10 (REFS_BASE=M: past the first M; the
#                                     cost of each further reference)
#   scripts/bench.sh copy [WORK]      skopeo copy vs ferry copy: the image with the most layers docker:// -> oci:,
#                                     and every multi-arch image with --all docker:// -> docker:// (empty target; the
#                                     two tools' runs interleaved, targets deleted only at the end);
#                                     CPU seconds of the tool and of each registry, and the floors: the
#                                     registries' own CPU over 2 cores (no client can take less); for --all
#                                     also a bare client, its critical path, and the tightest floor for one process
#                                     per image: per image max(critical path, (registries' CPU + sha256) / 2) (scripts/floor_copy.py)
#   scripts/bench.sh inspect [WORK]   skopeo inspect vs ferry inspect, one call per tag of the corpus (CALLS=N
#                                     first tags, default 100), each a whole process with the tag list (RepoTags)
#   scripts/bench.sh sync [WORK]      skopeo sync --src docker --dest docker of every repository (one call each) vs
#                                     ferry sync the same way, and vs one ferry sync --src yaml of all repositories
#                                     (one pool of transfers, cross-repository mounts), and vs the floor: the same
#                                     unique blobs and manifests as bare GET + monolithic PUT or mount, 6 connections
#                                     (scripts/floor_sync.py); each run into a fresh empty target; wall seconds and
#                                     CPU seconds of the client, the source registry and the target registry
#   scripts/bench.sh serve-load [WORK] ferry unbundle serve BUNDLE (in place) vs ferry serve ROOT vs docker-registry
#                                     (ROOT), the same content, one server at a time: CLIENTS (default 64) keep-alive
#                                     clients for SECONDS_LOAD (default 60) s pulling random manifests and blobs (some
#                                     ranges), every body verified (scripts/loadclient.py); requests/s, errors, p50/p99
#                                     latency (p99 of manifests alone too), peak RSS (VmHWM; anonymous part polled),
#                                     CPU seconds of server and client, per server, and the ratios; then both
#                                     ferry servers again over TLS (--tls-cert/--tls-key, a test CA made with
#                                     openssl in WORK/tls), the same load over HTTPS, and the TLS/plain ratios
#                                     CPU seconds of server and client, per server, and the ratios
#   scripts/bench.sh push-serve [WORK] skopeo copy --all of every tag of the corpus (served by ferry serve, read-only)
#                                     into ferry serve --allow-push vs into docker-registry, each over a fresh empty root,
#                                     the targets' runs interleaved (rounds in rotated order);
#                                     and the floor: into a target that drops every body (scripts/null_registry.py),
#                                     plus the disk's time to write the corpus once with fdatasync; CPU-s of each process
#   scripts/bench.sh delta [WORK]     the next release (CHANGED images changed, default 5; 2 added, 1 removed):
#                                     size and time of bundle --since OLD vs the full bundle vs plain tar | zstd of
#                                     just the new blobs; link time of the delta (and of the full) into a root holding OLD
#   scripts/bench.sh s3 [WORK]        a site on object storage (Garage, fresh per run): skopeo sync and ferry unbundle push
#                                     into docker-registry on its S3 driver vs ferry unbundle link --root s3://… (same Garage)
# The incumbent scripts are read from $INCUMBENT (default ../shared/incumbent beside the repository).
# WORK (default /tmp/ferry-bench) keeps the generated corpus between runs; PRESET=small|medium
# (default medium) picks it (`small`: 20 tags, 150 MB, where fixed costs show; `tiny` for tests of this script).
# Prints median seconds of RUNS runs (default 5) and the ratio incumbent/ferry.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE/.."
WHAT="${1:-serve}"; WORK="${2:-/tmp/ferry-bench}"; RUNS="${RUNS:-5}"
mkdir -p "$WORK"

# FERRY_BIN names a ferry binary to use instead of building one (the tests of this script do).
if [ -n "${FERRY_BIN:-}" ]; then
  FERRY="$FERRY_BIN"
else
  cargo build --release --locked -q
  FERRY="$PWD/target/release/ferry"
fi
for t in docker-registry curl sha256sum python3; do command -v "$t" >/dev/null || { echo "bench needs $t" >&2; exit 1; }; done

PRESET="${PRESET:-medium}"
ROOT="$WORK/$PRESET-root"
if [ ! -f "$WORK/$PRESET.json" ]; then
  rm -rf "$ROOT"
  "$FERRY" fixtures --preset "$PRESET" --no-sync "$ROOT" --list "$WORK/$PRESET-list.txt" > "$WORK/$PRESET.json.tmp"
  mv "$WORK/$PRESET.json.tmp" "$WORK/$PRESET.json"
fi

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
PIDS=()
# Every server this script starts is stopped by its PID: on a normal exit, on a failure (set -e),
# and on Ctrl-C or SIGTERM (which would otherwise end bash without running the EXIT trap).
# The registry's config goes with the run; its log stays only when the run failed.
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -f "$WORK/registry.$$.yml"; [ "$rc" -ne 0 ] || rm -f "$WORK/registry.$$.log"
  # Targets set aside by push-serve and copy (deleted at their end, or here when a run failed).
  [ -z "${OUT:-}" ] || rm -rf "$OUT"/old-target.*
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# median_time CMD...: runs CMD RUNS times (after one warm-up), prints the median wall seconds.
# If $PREP names a command, it runs before each run, untimed (clean-up between runs).
median_time() {
  ${PREP:-true}; "$@" >/dev/null 2>&1
  local ts=()
  for _ in $(seq 1 "$RUNS"); do
    ${PREP:-true}
    local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N)
    ts+=("$(python3 -c "print($e-$s)")")
  done
  # Printed by a builtin: in a subshell with an EXIT trap (in_target), bash could exec a last
  # external command in place of the subshell, and the trap would not run.
  local t; t=$(median_of "${ts[*]}"); echo "$t"
}
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
# set_aside DIR: a target done with is moved to $OUT/old-target.N (deleted after the timed rounds,
# or by cleanup) when ASIDE=1, else deleted now; a case sets ASIDE=1 only when the disk has room
# for every target of its rounds (see room_for).
ASIDE=0
set_aside() { if [ "$ASIDE" = 1 ]; then [ ! -e "$1" ] || mv "$1" "$OUT/old-target.$(date +%s%N)"; else rm -rf "$1"; fi; }
# room_for BYTES: whether the file system of $OUT has BYTES free, and a margin of as much again.
room_for() { [ "$(df -B1 --output=avail "$OUT" | tail -1)" -gt $((2 * $1)) ]; }
aside_said() { [ "$ASIDE" = 1 ] && echo "set aside until the rounds ended" || echo "deleted before the next run (too little disk to set them aside)"; }
# median_of "S1 S2 ...": the median of seconds gathered in a string.
median_of() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" $1; }
# A target started by fresh_target inside $(...) lives in that subshell, out of reach of the
# main shell's EXIT trap (a subshell does not inherit traps): stop it there, also when a run in
# the subshell fails (`exit 1`) or is interrupted, with traps set inside the subshell.
stop_target() { [ -z "${TARGET_PID:-}" ] || { kill "$TARGET_PID" 2>/dev/null; wait "$TARGET_PID" 2>/dev/null || true; }; }
# in_target CMD...: run a timing in this (sub)shell with the target stopped however it ends.
in_target() { trap stop_target EXIT; trap 'exit 130' INT; trap 'exit 143' TERM; "$@"; }

# start_registry ROOT / start_ferry ROOT: start a server over ROOT in the background, set ADDR.
start_registry() {
  local port; port=$(free_port)
  # One config and log per bench process: cases run side by side in one WORK must not share them.
  cat > "$WORK/registry.$$.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $1
http:
  addr: 127.0.0.1:$port
  secret: bench-not-a-secret
YAML
  docker-registry serve "$WORK/registry.$$.yml" >"$WORK/registry.$$.log" 2>&1 &
  PIDS+=($!)
  ADDR="127.0.0.1:$port"
  for _ in $(seq 1 100); do curl -fsS "http://$ADDR/v2/" >/dev/null 2>&1 && break; sleep 0.05; done
}

# SERVE_EXTRA: more flags for a ferry server (TLS); SCHEME and CURL_CA: how to probe it.
SERVE_EXTRA=(); SCHEME=http; CURL_CA=()
start_ferry() {
  local port; port=$(free_port)
  "$FERRY" serve -q "$1" --listen "127.0.0.1:$port" "${SERVE_EXTRA[@]}" >"$WORK/ferry-serve.log" 2>&1 &
  PIDS+=($!)
  ADDR="127.0.0.1:$port"
  for _ in $(seq 1 100); do curl -fsS "${CURL_CA[@]}" "$SCHEME://$ADDR/v2/" >/dev/null 2>&1 && break; sleep 0.05; done
}

case "$WHAT" in
serve)
  # The largest blob and a repository that links it.
  read -r REPO DIGEST SIZE < <(python3 - "$WORK/$PRESET.json" "$ROOT" <<'PY'
import json, os, sys
corpus, root = json.load(open(sys.argv[1])), sys.argv[2]
best = None
for img in corpus["images"]:
    m = json.load(open(f"{root}/docker/registry/v2/blobs/sha256/{img['digest'][7:9]}/{img['digest'][7:]}/data"))
    for ch in ([img["digest"]] if not img["platforms"] else [d for _, d in img["platforms"]]):
        mm = json.load(open(f"{root}/docker/registry/v2/blobs/sha256/{ch[7:9]}/{ch[7:]}/data"))
        for l in mm["layers"]:
            if best is None or l["size"] > best[2]:
                best = (img["repository"], l["digest"], l["size"])
print(*best)
PY
)
  start_registry "$ROOT"; REG=$ADDR; start_ferry "$ROOT"; FER=$ADDR
  N=10
  urls() { for _ in $(seq 1 $N); do printf -- '-o /dev/null http://%s/v2/%s/blobs/%s ' "$1" "$REPO" "$DIGEST"; done; }
  # shellcheck disable=SC2046
  t_reg=$(median_time curl -fsS $(urls "$REG"))
  # shellcheck disable=SC2046
  t_fer=$(median_time curl -fsS $(urls "$FER"))
  mb=$(python3 -c "print(f'{$SIZE*$N/1e6:.0f}')")
  echo "blob GET, $N x $SIZE bytes ($mb MB) per run, median of $RUNS:"
  echo "  docker-registry  ${t_reg}s  ($(python3 -c "print(f'{$SIZE*$N/$t_reg/1e6:.0f}')") MB/s)"
  echo "  ferry serve      ${t_fer}s  ($(python3 -c "print(f'{$SIZE*$N/$t_fer/1e6:.0f}')") MB/s)"
  echo "  throughput ferry/docker-registry: $(ratio "$t_reg" "$t_fer")x"

  BYTES=$(du -sb "$ROOT/docker/registry/v2/blobs" | cut -f1)
  t_sum=$(median_time sh -c "find '$ROOT/docker/registry/v2/blobs' -name data -print0 | xargs -0 sha256sum")
  t_ver=$(median_time "$FERRY" verify "$ROOT")
  echo "verify of the $PRESET root ($(python3 -c "print(f'{$BYTES/1e9:.2f}')") GB of blobs, page cache warm), median of $RUNS:"
  echo "  sha256sum        ${t_sum}s"
  echo "  ferry verify     ${t_ver}s  (also resolves every link)"
  echo "  speed-up ferry verify vs sha256sum: $(ratio "$t_sum" "$t_ver")x"
  ;;
bundle)
  INCUMBENT="${INCUMBENT:-$PWD/../shared/incumbent}"
  for t in skopeo zstd tar /usr/bin/time; do command -v "$t" >/dev/null || { echo "bench needs $t" >&2; exit 1; }; done
  start_registry "$ROOT"; REG=$ADDR; REGPID=${PIDS[-1]}
  LIST="$WORK/$PRESET-list.txt"; OUT="$WORK/bundle-$PRESET"; mkdir -p "$OUT"
  SEEDLOG="$WORK/seed.log"; : > "$SEEDLOG"
  # Clean-up between runs is untimed for both sides (the seed script times its own clean-up apart: clean=).
  seed_prep() { rm -rf "$OUT/seed"; sync; }
  seed() { bash "$INCUMBENT/seed_bundle.sh" "$REG" "$LIST" "$OUT/seed" "$SEEDLOG" sync; }
  cold_prep() { rm -rf "$OUT/cache" "$OUT/ferry.tar.zst"; sync; }
  ferry_bundle() { "$FERRY" bundle -q -f "$LIST" -o "$OUT/ferry.tar.zst" --cache "$OUT/cache" --source "$REG" --src-tls-verify=false; }
  warm_prep() { rm -f "$OUT/ferry.tar.zst"; sync; }
  floor_prep() { rm -f "$OUT/floor.tar.zst"; sync; }
  floor() { tar -C "$OUT/root" -c docker | zstd -q -T0 -3 > "$OUT/floor.tar.zst" && sync; }
  t_seed=$(PREP=seed_prep median_time seed)
  # The root (--root-dir) names the blobs of the bare download below; its cache serves the warm runs.
  rm -rf "$OUT/root" "$OUT/cache"; "$FERRY" bundle -q -f "$LIST" -o "$OUT/ferry.tar.zst" --cache "$OUT/cache" --source "$REG" --src-tls-verify=false --root-dir "$OUT/root"
  # The bare download: the same blobs (configs and layers, each once, from a repository that links
  # it) from the same registry into files, 6 at a time (ferry's default --jobs), one curl process.
  python3 - "$OUT/root/docker/registry/v2/repositories" "$REG" "$OUT/dl" > "$OUT/dl.cfg" <<'PY'
import os, sys
repos, reg, dl = sys.argv[1:]
seen = {}
for dirpath, dirs, files in os.walk(repos):
    parts = dirpath[len(repos) + 1:].split("/")
    if "link" in files and len(parts) >= 4 and parts[-3] == "_layers":
        seen.setdefault(parts[-1], "/".join(parts[:-3]))
for h, repo in sorted(seen.items()):
    print(f'url = "http://{reg}/v2/{repo}/blobs/sha256:{h}"\noutput = "{dl}/{h}"')
PY
  bare_prep() { rm -rf "$OUT/dl"; mkdir -p "$OUT/dl"; sync; }
  bare() { curl -fsS -Z --parallel-max 6 -K "$OUT/dl.cfg"; }
  # Empty cache against the bare download in rounds, A B then B A (the first round warms up): run
  # one series after the other, the later would pay for the earlier's deletes (ext4 without a
  # journal, as here, scans recently deleted inodes when it allocates) and its page cache.
  cold_kept="$OUT/cache.kept"; rm -rf "$cold_kept"; mv "$OUT/cache" "$cold_kept"
  one() { local s e; "$1_prep"; s=$(date +%s.%N); "$2" >/dev/null 2>&1; e=$(date +%s.%N); python3 -c "print($e-$s)"; }
  T_COLD=""; T_BARE=""
  for round in $(seq 0 "$RUNS"); do
    if [ $((round % 2)) -eq 0 ]; then c=$(one cold ferry_bundle); b=$(one bare bare); else b=$(one bare bare); c=$(one cold ferry_bundle); fi
    [ "$round" -eq 0 ] || { T_COLD+="$c "; T_BARE+="$b "; }
  done
  t_cold=$(median_of "$T_COLD"); t_bare=$(median_of "$T_BARE")
  rm -rf "$OUT/cache"; mv "$cold_kept" "$OUT/cache"
  t_warm=$(PREP=warm_prep median_time ferry_bundle)
  t_floor=$(PREP=floor_prep median_time floor)
  # Peak memory, bytes written (file system outputs, 512-byte blocks) and CPU seconds (user+sys, which
  # load disturbs far less than wall time) of one cold and one warm run, with the registry's CPU
  # seconds meanwhile (/proc/PID/stat); and the CPU seconds of one bare download run.
  reg_cpu() { awk '{print ($14+$15)/100}' "/proc/$REGPID/stat"; }
  cold_prep; r0=$(reg_cpu)
  /usr/bin/time -f "%M %O %U %S" -o "$WORK/cold.time" "$FERRY" bundle -q -f "$LIST" -o "$OUT/ferry.tar.zst" --cache "$OUT/cache" --source "$REG" --src-tls-verify=false
  cold_reg=$(python3 -c "print(f'{$(reg_cpu)-$r0:.2f}')")
  warm_prep
  /usr/bin/time -f "%M %O %U %S" -o "$WORK/warm.time" "$FERRY" bundle -q -f "$LIST" -o "$OUT/ferry.tar.zst" --cache "$OUT/cache" --source "$REG" --src-tls-verify=false
  bare_prep; r0=$(reg_cpu)
  /usr/bin/time -f "%U %S" -o "$WORK/bare.time" curl -fsS -Z --parallel-max 6 -K "$OUT/dl.cfg" >/dev/null 2>&1
  bare_reg=$(python3 -c "print(f'{$(reg_cpu)-$r0:.2f}')")
  read -r cold_rss cold_out cold_u cold_s < "$WORK/cold.time"; read -r warm_rss warm_out warm_u warm_s < "$WORK/warm.time"
  read -r bare_u bare_s < "$WORK/bare.time"
  cpu() { python3 -c "print(f'{$1+$2:.2f}')"; }
  UNIQUE=$(python3 -c "import json; print(json.load(open('$WORK/$PRESET.json'))['unique_bytes'])")
  echo "bundle of the $PRESET corpus ($(wc -l < "$LIST") list lines, $(python3 -c "print(f'{$UNIQUE/1e9:.2f}')") GB unique), median of $RUNS, whole process:"
  echo "  seed workflow (skopeo sync + convert + tar + zstd -T0 + sync)  ${t_seed}s"
  echo "  ferry bundle, empty cache                                    ${t_cold}s   speed-up $(ratio "$t_seed" "$t_cold")x"
  echo "  ferry bundle, warm cache                                     ${t_warm}s"
  echo "  tar -c ROOT | zstd -T0 > F && sync (packing floor)           ${t_floor}s   warm/floor $(ratio "$t_warm" "$t_floor")x"
  echo "  bare parallel download of the same blobs (curl -Z, 6 at once) ${t_bare}s   empty cache/bare $(ratio "$t_cold" "$t_bare")x"
  echo "    (interleaved runs, seconds: empty cache $T_COLD; bare $T_BARE)"
  echo "  peak RSS: cold $((cold_rss / 1024)) MB, warm $((warm_rss / 1024)) MB"
  echo "  CPU-s (one run): ferry cold $(cpu "$cold_u" "$cold_s") + registry $cold_reg; ferry warm $(cpu "$warm_u" "$warm_s"); bare curl $(cpu "$bare_u" "$bare_s") + registry $bare_reg"
  echo "  bytes written, cold: $(python3 -c "print(f'{$cold_out*512/1e9:.2f} GB = {$cold_out*512/$UNIQUE:.2f}x the unique bytes')")"
  echo "  seed phases (last run): $(tail -1 "$SEEDLOG" | cut -d' ' -f1-9)"
  ;;
unbundle)
  INCUMBENT="${INCUMBENT:-$PWD/../shared/incumbent}"
  for t in skopeo zstd tar; do command -v "$t" >/dev/null || { echo "bench needs $t" >&2; exit 1; }; done
  start_registry "$ROOT"; SRC=$ADDR
  LIST="$WORK/$PRESET-list.txt"; OUT="$WORK/unbundle-$PRESET"; mkdir -p "$OUT"
  # Inputs, untimed: the incumbent's dir: tree (its pull phase) and a ferry bundle of every platform.
  [ -d "$OUT/seed/dirs" ] || bash "$INCUMBENT/seed_bundle.sh" "$SRC" "$LIST" "$OUT/seed" "$OUT/seed.log" pull-only:sync
  [ -f "$OUT/all.tar.zst" ] || "$FERRY" bundle -q --all-platforms -f "$LIST" -o "$OUT/all.tar.zst" --cache "$OUT/cache" --source "$SRC" --src-tls-verify=false
  # An empty target registry before every run.
  TARGET_PID=""
  fresh_target() {
    [ -n "$TARGET_PID" ] && { kill "$TARGET_PID"; wait "$TARGET_PID" 2>/dev/null || true; }
    rm -rf "$OUT/target"; mkdir -p "$OUT/target"; sync
    start_registry "$OUT/target"; TARGET=$ADDR; TARGET_PID=${PIDS[-1]}
  }
  # Exactly the incumbent's push (../shared/incumbent/README.md); a failed run aborts the bench.
  seed_push() { (cd "$OUT/seed/dirs" && skopeo --insecure-policy sync --scoped --src dir --dest docker --dest-tls-verify=false ./ "$TARGET" >/dev/null) || { echo "skopeo sync failed" >&2; exit 1; }; }
  ferry_push() { "$FERRY" unbundle push -q "$OUT/all.tar.zst" --dest "$TARGET" --dest-tls-verify=false || { echo "ferry push failed" >&2; exit 1; }; }
  # The floor: the target taking the same blobs as bare parallel monolithic PUTs (6 keep-alive
  # connections, scripts/floor_push.py), from an extracted copy of the bundle, with no manifest work at all.
  [ -d "$OUT/extracted/docker" ] || { mkdir -p "$OUT/extracted"; zstd -q -d -c "$OUT/all.tar.zst" | tar -x -C "$OUT/extracted"; }
  floor_push() { python3 "$HERE/floor_push.py" "$OUT/extracted" "$TARGET" 6 || { echo "floor push failed" >&2; exit 1; }; }
  t_seed_push=$(PREP=fresh_target in_target median_time seed_push)
  t_ferry_push=$(PREP=fresh_target in_target median_time ferry_push)
  t_floor_push=$(PREP=fresh_target in_target median_time floor_push)
  BYTES=$(stat -c %s "$OUT/all.tar.zst")
  link_prep() { rm -rf "$OUT/site"; mkdir -p "$OUT/site"; sync; }
  plain_extract() { zstd -q -d -c "$OUT/all.tar.zst" | tar -x -C "$OUT/site"; }
  plain_extract_sync() { plain_extract && sync; }
  ferry_link() { "$FERRY" unbundle link -q "$OUT/all.tar.zst" --root "$OUT/site"; }
  t_extract=$(PREP=link_prep median_time plain_extract)
  t_extract_sync=$(PREP=link_prep median_time plain_extract_sync)
  t_link=$(PREP=link_prep median_time ferry_link)
  # Pull every tag with skopeo: from docker-registry, then from ferry serving the same root.
  start_ferry "$ROOT"; FER=$ADDR
  pull_all() { rm -rf "$OUT/pulled"; mkdir -p "$OUT/pulled"; grep -v '^#' "$LIST" | while read -r ref; do
      skopeo copy -q --src-tls-verify=false "docker://$1/$ref" "dir:$OUT/pulled/x" >/dev/null; rm -rf "$OUT/pulled/x"; done; }
  t_pull_reg=$(median_time pull_all "$SRC")
  t_pull_fer=$(median_time pull_all "$FER")
  echo "unbundle of the $PRESET corpus, median of $RUNS, whole process:"
  echo "  push into an empty docker-registry: skopeo sync --scoped (amd64 only, from dir:) ${t_seed_push}s,"
  echo "    ferry unbundle push (every platform, from the bundle in place) ${t_ferry_push}s: speed-up $(ratio "$t_seed_push" "$t_ferry_push")x"
  echo "    floor: the same blobs as bare parallel monolithic PUTs (6 connections) ${t_floor_push}s: ferry/floor $(ratio "$t_ferry_push" "$t_floor_push")x"
  echo "  into an empty root ($(python3 -c "print(f'{$BYTES/1e9:.2f}')") GB bundle): zstd -d | tar -x ${t_extract}s,"
  echo "    with sync ${t_extract_sync}s; ferry unbundle link (re-hashes every blob, syncs) ${t_link}s:"
  echo "    $(ratio "$t_link" "$t_extract")x the plain extract, $(ratio "$t_link" "$t_extract_sync")x the plain extract + sync"
  echo "  skopeo copy of every tag to dir:: from docker-registry ${t_pull_reg}s, from ferry serve ${t_pull_fer}s: $(ratio "$t_pull_fer" "$t_pull_reg")x"
  ;;
copy)
  command -v skopeo >/dev/null || { echo "bench needs skopeo" >&2; exit 1; }
  start_registry "$ROOT"; SRC=$ADDR
  OUT="$WORK/copy-$PRESET"; mkdir -p "$OUT"
  # The image with the most layers, and every multi-platform image.
  read -r BIG MULTI < <(python3 - "$WORK/$PRESET.json" "$ROOT" <<'PY'
import json, sys
corpus, root = json.load(open(sys.argv[1])), sys.argv[2]
blob = lambda d: json.load(open(f"{root}/docker/registry/v2/blobs/sha256/{d[7:9]}/{d[7:]}/data"))
single = [i for i in corpus["images"] if not i["platforms"]]
big = max(single, key=lambda i: len(blob(i["digest"])["layers"]))
multi = [f'{i["repository"]}:{i["tag"]}' for i in corpus["images"] if i["platforms"]]
print(f'{big["repository"]}:{big["tag"]}', ",".join(multi))
PY
)
  # Every process is accounted: wall (median), and CPU seconds per run (user+sys) of the tool and
  # of each registry. The registries' own CPU for the GETs and PUTs is what a bare client would
  # cost them too: on 2 cores, (source + target CPU) / 2 is a floor no client can beat.
  CPU_LOG="$OUT/cpu.log"
  cpu_of() { python3 -c "import os,sys; f=open(f'/proc/{sys.argv[1]}/stat').read().rsplit(')',1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'))" "$1" 2>/dev/null || echo 0; }
  timed_tool() { /usr/bin/time -f "%U %S" -a -o "$CPU_LOG.tool" "$@"; }
  tool_cpu() { python3 -c "import sys; v=[sum(map(float,l.split())) for l in open(sys.argv[1]) if l.strip()]; print(f'{sum(v)/max(1,int(sys.argv[2])):.3f}')" "$CPU_LOG.tool" "$1"; }
  per_run() { python3 -c "print(f'{($2-$1)/$3:.3f}')" "$1" "$2" "$3"; }
  oci_prep() { rm -rf "$OUT/oci"; sync; }
  skopeo_oci() { timed_tool skopeo --insecure-policy copy -q --src-tls-verify=false "docker://$SRC/$BIG" "oci:$OUT/oci:x"; }
  ferry_oci() { timed_tool "$FERRY" copy -q --src-tls-verify=false "docker://$SRC/$BIG" "oci:$OUT/oci:x"; }
  SRC_PID=${PIDS[-1]}
  NRUN=$((RUNS + 1))  # median_time runs one warm-up, then RUNS
  rm -f "$CPU_LOG.tool"; c0=$(cpu_of "$SRC_PID")
  t_skopeo_oci=$(PREP=oci_prep median_time skopeo_oci)
  c1=$(cpu_of "$SRC_PID"); cpu_skopeo_oci=$(tool_cpu $NRUN); rm -f "$CPU_LOG.tool"
  t_ferry_oci=$(PREP=oci_prep median_time ferry_oci)
  c2=$(cpu_of "$SRC_PID"); cpu_ferry_oci=$(tool_cpu $NRUN); rm -f "$CPU_LOG.tool"
  src_skopeo_oci=$(per_run "$c0" "$c1" $NRUN); src_ferry_oci=$(per_run "$c1" "$c2" $NRUN)
  TARGET_PID=""
  # ferry's blob locations (which let one image's copy mount what an earlier copy put into
  # another repository, as skopeo's blob-info cache does) start empty with each fresh target, in OUT.
  export XDG_CACHE_HOME="$OUT/xdg-cache"
  # The target registry is fresh for each run; its CPU is added to $CPU_LOG.target before it stops.
  # The last target is set aside, not deleted, until every timed run is done: deleting makes
  # later runs slower on some file systems (ext4 without a journal, this machine's, scans past
  # every inode deleted in the last minutes when it allocates one), so the tool run after the
  # other's deletes would pay for them.
  fresh_target() {
    [ -n "$TARGET_PID" ] && { cpu_of "$TARGET_PID" >> "$CPU_LOG.target"; kill "$TARGET_PID"; wait "$TARGET_PID" 2>/dev/null || true; }
    set_aside "$OUT/target"
    rm -rf "$XDG_CACHE_HOME"; mkdir -p "$OUT/target"; sync
    start_registry "$OUT/target"; TARGET=$ADDR; TARGET_PID=${PIDS[-1]}
  }
  last_target() { [ -z "$TARGET_PID" ] || cpu_of "$TARGET_PID" >> "$CPU_LOG.target"; stop_target; }
  each_multi() { local tool=$1; for ref in ${MULTI//,/ }; do
      if [ "$tool" = skopeo ]; then timed_tool skopeo --insecure-policy copy -q --all --src-tls-verify=false --dest-tls-verify=false "docker://$SRC/$ref" "docker://$TARGET/$ref" || exit 1
      else timed_tool "$FERRY" copy -q --all --src-tls-verify=false --dest-tls-verify=false "docker://$SRC/$ref" "docker://$TARGET/$ref" || exit 1; fi
    done; }
  # One timed run of tool $1 into a fresh target, in this subshell (which stops the target):
  # its seconds; the source registry's CPU during it goes to $CPU_LOG.source.
  one_multi() { trap last_target EXIT; trap 'exit 130' INT; trap 'exit 143' TERM
    fresh_target
    local c s e; c=$(cpu_of "$SRC_PID"); s=$(date +%s.%N); each_multi "$1" >/dev/null 2>&1; e=$(date +%s.%N)
    python3 -c "print($(cpu_of "$SRC_PID")-$c)" >> "$CPU_LOG.source"
    # Printed by a builtin, so that bash does not exec the last command in place of the subshell
    # (its EXIT trap, which logs and stops the target, would not run).
    s=$(python3 -c "print($e-$s)"); echo "$s"; }
  target_cpu() { python3 -c "import sys; v=[float(l) for l in open(sys.argv[1]) if l.strip()]; print(f'{sum(v)/max(1,int(sys.argv[2])):.3f}')" "$CPU_LOG.target" "$1"; }
  # Rounds of one run per tool, the order alternating round by round (the first round warms up),
  # so whatever the machine's state does to later runs weighs on both alike.
  rm -rf "$OUT"/old-target.* "$OUT/target"
  # Room to set aside every target: the multi-arch images' blobs, twice per round, and the floors'.
  MULTI_BYTES=$(python3 - "$ROOT" "$MULTI" <<'PY'
import json, sys
root, refs = sys.argv[1], sys.argv[2].split(",")
v2 = f"{root}/docker/registry/v2"
path = lambda d: f"{v2}/blobs/sha256/{d[7:9]}/{d[7:]}/data"
seen = {}
def walk(d):
    import os
    seen[d] = os.path.getsize(path(d))
    m = json.load(open(path(d)))
    for c in m.get("manifests", []): walk(c["digest"])
    for b in ([m["config"]] if "config" in m else []) + m.get("layers", []): seen[b["digest"]] = b["size"]
for r in refs:
    repo, tag = r.rsplit(":", 1)
    walk(open(f"{v2}/repositories/{repo}/_manifests/tags/{tag}/current/link").read().strip())
print(sum(seen.values()))
PY
)
  ASIDE=0; room_for $(( (4 * RUNS + 2) * MULTI_BYTES )) && ASIDE=1
  declare -A ALL=()
  for t in skopeo ferry; do rm -f "$OUT/cpu-$t.log".*; done
  for round in $(seq 0 "$RUNS"); do
    order="skopeo ferry"; [ $((round % 2)) -eq 1 ] && order="ferry skopeo"
    for t in $order; do
      # Set in the subshell itself, not for the call only: its EXIT trap logs the target's CPU there.
      secs=$(CPU_LOG="$OUT/cpu-$t.log"; one_multi "$t") || exit 1
      [ "$round" -eq 0 ] || ALL[$t]+="$secs "
    done
  done
  sum_per_run() { python3 -c "import sys; v=[float(l) for l in open(sys.argv[1]) if l.strip()]; print(f'{sum(v)/max(1,int(sys.argv[2])):.3f}')" "$1" "$2"; }
  t_skopeo_all=$(median_of "${ALL[skopeo]}"); t_ferry_all=$(median_of "${ALL[ferry]}")
  cpu_skopeo_all=$(CPU_LOG="$OUT/cpu-skopeo.log" tool_cpu $NRUN); cpu_ferry_all=$(CPU_LOG="$OUT/cpu-ferry.log" tool_cpu $NRUN)
  dst_skopeo_all=$(CPU_LOG="$OUT/cpu-skopeo.log" target_cpu $NRUN); dst_ferry_all=$(CPU_LOG="$OUT/cpu-ferry.log" target_cpu $NRUN)
  src_skopeo_all=$(sum_per_run "$OUT/cpu-skopeo.log.source" $NRUN); src_ferry_all=$(sum_per_run "$OUT/cpu-ferry.log.source" $NRUN)
  # Two floors measured on the same registries, each run into a fresh empty target
  # (scripts/floor_copy.py, median of RUNS of its own seconds): `bare`, a bare client making only
  # the requests any copy of these images must make, 6 connections, no checks, no hashing, no
  # process start; `crit`, each image's largest blob that it must upload, alone, GET streamed into
  # POST + PUT (the target hashes and fsyncs it before it answers, and the image's manifests
  # must wait for it): the critical path of a client that copies one image per process.
  # Each run's JSON (per image: seconds; for bare also the registries' CPU and sha256's) goes to
  # $OUT/floor-MODE.jsonl, from which the tightest floor is taken below.
  floor_copy() { trap last_target EXIT; trap 'exit 130' INT; trap 'exit 143' TERM
    local ts=() t
    : > "$OUT/floor-$1.jsonl"
    for _ in $(seq 1 "$RUNS"); do
      fresh_target
      FLOOR_PIDS="$SRC_PID,$TARGET_PID" python3 "$HERE/floor_copy.py" "$1" "$ROOT" "$SRC" "$TARGET" "$MULTI" 6 >> "$OUT/floor-$1.jsonl" || exit 1
      t=$(tail -1 "$OUT/floor-$1.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])') || exit 1
      ts+=("$t")
    done
    # Printed by a builtin: bash would exec a last external command in place of this subshell,
    # and its EXIT trap (which stops the last target) would not run.
    t=$(median_of "${ts[*]}")
    echo "$t"; }
  t_floor_bare=$(floor_copy bare); t_floor_crit=$(floor_copy crit); rm -f "$CPU_LOG.target"
  rm -rf "$OUT"/old-target.* "$OUT/target"
  floor_oci=$(python3 -c "print(f'{$src_ferry_oci/2:.3f}')")
  floor_all=$(python3 -c "print(f'{($src_ferry_all+$dst_ferry_all)/2:.3f}')")
  # A client that checks what it carries hashes each unique blob of the multi-arch images once
  # at least (skopeo and ferry both do): the CPU of `openssl dgst -sha256` (SHA-NI where the CPU has
  # it; sha256sum without openssl) over those files, page cache warm, best of 3, is added to the
  # registries' CPU for a floor no verifying client can beat (its socket copies not even counted).
  python3 - "$ROOT" "$MULTI" > "$OUT/multi-blobs.txt" <<'PY'
import json, sys
root, refs = sys.argv[1], sys.argv[2].split(",")
v2 = f"{root}/docker/registry/v2"
path = lambda d: f"{v2}/blobs/sha256/{d[7:9]}/{d[7:]}/data"
def resolve(repo, tag):
    return open(f"{v2}/repositories/{repo}/_manifests/tags/{tag}/current/link").read().strip()
blobs = set()
def walk(d):
    m = json.load(open(path(d)))
    for c in m.get("manifests", []): walk(c["digest"])
    for b in ([m["config"]] if "config" in m else []) + m.get("layers", []): blobs.add(b["digest"])
for r in refs:
    repo, tag = r.rsplit(":", 1); walk(resolve(repo, tag))
print("\n".join(path(d) for d in sorted(blobs)))
PY
  HASHER="sha256sum"; command -v openssl >/dev/null && HASHER="openssl dgst -sha256"
  hash_cpu=$(for _ in 1 2 3; do /usr/bin/time -f "%U %S" sh -c "xargs $HASHER < '$OUT/multi-blobs.txt' >/dev/null" 2>&1 | awk '{print $1+$2}'; done | sort -n | head -1)
  floor_verify=$(python3 -c "print(f'{($src_ferry_all+$dst_ferry_all+$hash_cpu)/2:.3f}')")
  # The tightest floor for one process per image, one image after the other: an image's copy
  # can end no sooner than its critical path (crit) nor than its share of the work on 2 cores
  # (the registries' CPU under the bare client, plus sha256 of what it uploads), so the sum over
  # images of the larger of the two, per-image medians of the runs above.
  floor_tight=$(python3 - "$OUT/floor-crit.jsonl" "$OUT/floor-bare.jsonl" <<'PY'
import json, statistics, sys
def per_image(path, key):
    runs = [json.loads(l) for l in open(path) if l.strip()]
    vals = {}
    for r in runs:
        for i in r["images"]:
            if key in i:
                vals.setdefault(i["ref"], []).append(i[key])
    return {k: statistics.median(v) for k, v in vals.items()}
crit = per_image(sys.argv[1], "seconds")
cpu = per_image(sys.argv[2], "registries_cpu")
sha = per_image(sys.argv[2], "sha256_cpu")
total = sum(max(crit.get(ref, 0.0), (cpu[ref] + sha.get(ref, 0.0)) / 2) for ref in cpu)
print(f"{total:.3f}")
PY
)
  echo "copy, $PRESET corpus, median of $RUNS, whole process; CPU seconds per run (user+sys):"
  echo "  $BIG docker:// -> oci:: skopeo ${t_skopeo_oci}s, ferry ${t_ferry_oci}s: speed-up $(ratio "$t_skopeo_oci" "$t_ferry_oci")x"
  echo "    CPU: skopeo ${cpu_skopeo_oci} + source registry ${src_skopeo_oci}; ferry ${cpu_ferry_oci} + source registry ${src_ferry_oci}"
  echo "    floor (the source registry's own CPU over 2 cores, disk writes not counted): ${floor_oci}s; skopeo/floor $(ratio "$t_skopeo_oci" "$floor_oci")x (the most any client could gain)"
  echo "  $(echo "$MULTI" | tr ',' '\n' | wc -l) multi-arch images, --all docker:// -> docker:// (empty target): skopeo ${t_skopeo_all}s, ferry ${t_ferry_all}s: speed-up $(ratio "$t_skopeo_all" "$t_ferry_all")x"
  echo "    (the two tools interleaved, round by round; each target $(aside_said))"
  echo "    CPU: skopeo ${cpu_skopeo_all} + source ${src_skopeo_all} + target ${dst_skopeo_all}; ferry ${cpu_ferry_all} + source ${src_ferry_all} + target ${dst_ferry_all}"
  echo "    floor (source + target registries' own CPU over 2 cores): ${floor_all}s; skopeo/floor $(ratio "$t_skopeo_all" "$floor_all")x (the most any client could gain)"
  echo "    floor of a verifying client (the registries' CPU plus sha256 of the $(wc -l < "$OUT/multi-blobs.txt") unique blobs, ${hash_cpu} CPU-s, over 2 cores): ${floor_verify}s; skopeo/floor $(ratio "$t_skopeo_all" "$floor_verify")x"
  echo "    a bare reference client (scripts/floor_copy.py bare: only the requests a copy must make, 6 connections, no checks, no hashing, no process start; a yardstick, not a strict floor): ${t_floor_bare}s; skopeo/bare $(ratio "$t_skopeo_all" "$t_floor_bare")x, ferry/bare $(ratio "$t_ferry_all" "$t_floor_bare")x"
  echo "    critical path (scripts/floor_copy.py crit: each image's largest blob it must upload, alone, GET streamed into POST + PUT, summed; a floor for one image per process): ${t_floor_crit}s; skopeo/floor $(ratio "$t_skopeo_all" "$t_floor_crit")x, ferry/floor $(ratio "$t_ferry_all" "$t_floor_crit")x"
  echo "    tightest floor for one process per image (per image the larger of its critical path and (its registries' CPU under the bare client + sha256 of its uploads) / 2 cores, summed): ${floor_tight}s; skopeo/floor $(ratio "$t_skopeo_all" "$floor_tight")x, ferry/floor $(ratio "$t_ferry_all" "$floor_tight")x"
  ;;
refs)
  N="${REFS:-5000}"
  OUT="$WORK/refs-$PRESET"; rm -rf "$OUT"; mkdir -p "$OUT/root"
  cp -al "$ROOT/docker" "$OUT/root/"
  start_registry "$OUT/root"; REG=$ADDR
  # N tags through the API: every image of the corpus under tags t0..tN-1, round robin.
  python3 - "$WORK/$PRESET.json" "$REG" "$N" "$OUT/list.txt" <<'PY'
import http.client, json, sys
corpus, reg, n, out = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3]), sys.argv[4]
host, port = reg.split(":")
c = http.client.HTTPConnection(host, int(port))
imgs = corpus["images"]
def get(repo, ref):
    c.request("GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": ",".join([
        "application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json"])})
    r = c.getresponse(); body = r.read(); return body, r.getheader("Content-Type")
manifests = [(i["repository"],) + get(i["repository"], i["digest"]) for i in imgs]
with open(out, "w") as f:
    for k in range(n):
        repo, body, ctype = manifests[k % len(manifests)]
        c.request("PUT", f"/v2/{repo}/manifests/t{k}", body=body, headers={"Content-Type": ctype})
        r = c.getresponse(); r.read()
        assert r.status == 201, (r.status, repo)
        f.write(f"{repo}:t{k}\n")
PY
  # The same bundle of the first M (REFS_BASE, default N/10) references: what N - M more references
  # cost, apart from the fixed cost of a run (packing the corpus' blobs, the process itself). Memory
  # per reference is measured best far apart: REFS=20000 REFS_BASE=5000.
  M="${REFS_BASE:-$((N / 10))}"; head -n "$M" "$OUT/list.txt" > "$OUT/list-m.txt"
  refs_run() { rm -f "$OUT/b.tar.zst"; "$FERRY" bundle -q -f "$OUT/${1:-list}.txt" -o "$OUT/b.tar.zst" --cache "$OUT/cache" --source "$REG" --src-tls-verify=false; }
  refs_run
  # The registry's own CPU per reference (one manifest HEAD each) over 2 cores is a floor no client beats.
  REG_PID=${PIDS[-1]}
  cpu_of() { python3 -c "import os,sys; f=open(f'/proc/{sys.argv[1]}/stat').read().rsplit(')',1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'))" "$1"; }
  r0=$(cpu_of "$REG_PID")
  t=$(median_time refs_run)
  r1=$(cpu_of "$REG_PID")
  t_m=$(median_time refs_run list-m)
  r2=$(cpu_of "$REG_PID")
  # median_time runs RUNS + 1 times (one warm-up); the marginal CPU is per reference past the first M.
  reg_ms=$(python3 -c "print(f'{($r1-$r0)*1000/(($RUNS+1)*$N):.3f}')")
  reg_marginal_ms=$(python3 -c "print(f'{(($r1-$r0)-($r2-$r1))*1000/(($RUNS+1)*($N-$M)):.3f}')")
  # Peak RSS (KB) and ferry's own CPU seconds (user+sys), which load disturbs far less than wall time.
  /usr/bin/time -f "%M %U %S" -o "$OUT/time" "$FERRY" bundle -q -f "$OUT/list.txt" -o "$OUT/b.tar.zst" --cache "$OUT/cache" --source "$REG" --src-tls-verify=false
  /usr/bin/time -f "%M %U %S" -o "$OUT/time-m" "$FERRY" bundle -q -f "$OUT/list-m.txt" -o "$OUT/b.tar.zst" --cache "$OUT/cache" --source "$REG" --src-tls-verify=false
  read -r rss cu cs < "$OUT/time"; read -r rss_m cu_m cs_m < "$OUT/time-m"
  cpu=$(python3 -c "print(round($cu+$cs, 2))"); cpu_m=$(python3 -c "print(round($cu_m+$cs_m, 2))")
  echo "bundle of $N references to one registry ($PRESET images, warm cache), whole process; seconds: median of $RUNS; peak RSS and ferry CPU: one more run each:"
  echo "  ${t}s, $(python3 -c "print(f'{$t*1000/$N:.2f}')") ms per reference; peak RSS $((rss / 1024)) MB, $(python3 -c "print(f'{$rss/$N:.1f}')") KB per reference"
  echo "  $M references: ${t_m}s, peak RSS $((rss_m / 1024)) MB; each reference past them: $(python3 -c "print(f'{($t-$t_m)*1000/($N-$M):.2f}')") ms, $(python3 -c "print(f'{($rss-$rss_m)/($N-$M):.1f}')") KB"
  echo "  registry CPU per reference: ${reg_ms} ms (past the first $M: ${reg_marginal_ms} ms); floor over 2 cores: $(python3 -c "print(f'{$reg_ms/2:.3f}')") ms per reference"
  echo "  ferry CPU: ${cpu} s, $(python3 -c "print(f'{$cpu*1000/$N:.3f}')") ms per reference ($M references: ${cpu_m} s; each reference past them: $(python3 -c "print(f'{($cpu-$cpu_m)*1000/($N-$M):.3f}')") ms)"
  ;;
inspect)
  command -v skopeo >/dev/null || { echo "bench needs skopeo" >&2; exit 1; }
  start_registry "$ROOT"; REG=$ADDR
  N="${CALLS:-100}"
  REFS="$WORK/inspect-$PRESET-refs.txt"
  grep -v '^#' "$WORK/$PRESET-list.txt" | head -n "$N" > "$REFS"
  N=$(wc -l < "$REFS")
  # Each tool must print skopeo's document for every tag; a failed call aborts the bench.
  each_inspect() { while read -r ref; do "$@" "docker://$REG/$ref" >/dev/null || { echo "$* $ref failed" >&2; exit 1; }; done < "$REFS"; }
  skopeo_inspect() { each_inspect skopeo inspect --tls-verify=false; }
  ferry_inspect() { each_inspect "$FERRY" inspect --tls-verify=false; }
  t_skopeo=$(median_time skopeo_inspect)
  t_ferry=$(median_time ferry_inspect)
  # CPU seconds (user + system) of one more pass of each tool's processes, and of the registry meanwhile.
  CLK=$(getconf CLK_TCK); REG_PID=${PIDS[-1]}
  reg_cpu() { awk -v t="$CLK" '{print ($14 + $15) / t}' "/proc/$REG_PID/stat"; }
  cpu_pass() { local r0 c; r0=$(reg_cpu)
    c=$( ( "$@" >/dev/null 2>&1 || exit 1; awk -v t="$CLK" '{print ($16 + $17) / t}' "/proc/$BASHPID/stat" ) ) || { echo "$* failed" >&2; exit 1; }
    echo "$c $(python3 -c "print(f'{$(reg_cpu) - $r0:.2f}')")"; }
  read -r c_skopeo r_skopeo < <(cpu_pass skopeo_inspect)
  read -r c_ferry r_ferry < <(cpu_pass ferry_inspect)
  echo "inspect, $N tags of the $PRESET corpus, one process per tag (RepoTags listed), median of $RUNS:"
  echo "  skopeo inspect  ${t_skopeo}s  ($(python3 -c "print(f'{$t_skopeo*1000/$N:.1f}')") ms per call), CPU ${c_skopeo}s (registry ${r_skopeo}s)"
  echo "  ferry inspect   ${t_ferry}s  ($(python3 -c "print(f'{$t_ferry*1000/$N:.1f}')") ms per call), CPU ${c_ferry}s (registry ${r_ferry}s)"
  echo "  speed-up ferry vs skopeo: $(ratio "$t_skopeo" "$t_ferry")x wall, $(ratio "$c_skopeo" "$c_ferry")x client CPU"
  ;;
sync)
  command -v skopeo >/dev/null || { echo "bench needs skopeo" >&2; exit 1; }
  # Ctrl-C or kill: leave through the EXIT trap, which stops every server by PID.
  trap 'exit 130' INT; trap 'exit 143' TERM
  start_registry "$ROOT"; SRC=$ADDR; SRC_PID=${PIDS[-1]}
  OUT="$WORK/sync-$PRESET"; mkdir -p "$OUT"
  REPOS=$(curl -fsS "http://$SRC/v2/_catalog?n=1000" | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)["repositories"]))')
  { echo "$SRC:"; echo "  tls-verify: false"; echo "  images:"; for r in $REPOS; do echo "    $r: []"; done; } > "$OUT/all.yaml"
  # ferry's blob-location cache (which lets one repository's sync mount what an earlier one
  # uploaded) starts empty in every run, in OUT, never the user's.
  export XDG_CACHE_HOME="$OUT/xdg-cache"
  # Every target is started here, in this shell (never inside $(...)), so the EXIT trap reaches it.
  TARGET_PID=""
  fresh_target() {
    [ -n "$TARGET_PID" ] && { kill "$TARGET_PID"; wait "$TARGET_PID" 2>/dev/null || true; }
    rm -rf "$OUT/target" "$XDG_CACHE_HOME"; mkdir -p "$OUT/target"; sync
    start_registry "$OUT/target"; TARGET=$ADDR; TARGET_PID=${PIDS[-1]}
  }
  skopeo_each() { for r in $REPOS; do
      skopeo --insecure-policy sync --src docker --dest docker --src-tls-verify=false --dest-tls-verify=false "$SRC/$r" "$TARGET" >/dev/null || { echo "skopeo sync failed" >&2; exit 1; }
    done; }
  ferry_each() { for r in $REPOS; do
      "$FERRY" sync -q --src docker --dest docker --src-tls-verify=false --dest-tls-verify=false "$SRC/$r" "$TARGET" || { echo "ferry sync failed" >&2; exit 1; }
    done; }
  ferry_yaml() { "$FERRY" sync -q --src yaml --dest docker --dest-tls-verify=false "$OUT/all.yaml" "$TARGET" || { echo "ferry sync failed" >&2; exit 1; }; }
  # The floor: the same unique blobs and manifests as bare parallel GET + monolithic PUT (or mount),
  # 6 keep-alive connections per registry, nothing else (scripts/floor_sync.py).
  floor() { python3 "$HERE/floor_sync.py" "$ROOT" "$SRC" "$TARGET" 6 > "$OUT/floor.json" || { echo "floor sync failed" >&2; exit 1; }; }
  # What a target holds: repository, tag, manifest digest (every run must leave the same).
  target_state() { python3 - "$TARGET" <<'PY'
import http.client, json, sys
c = http.client.HTTPConnection(*sys.argv[1].split(":"))
def get(path, method="GET"):
    c.request(method, path, headers={"Accept": ",".join([
        "application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json"])})
    r = c.getresponse(); body = r.read(); return r, body
for repo in json.loads(get("/v2/_catalog?n=1000")[1])["repositories"]:
    for tag in sorted(json.loads(get(f"/v2/{repo}/tags/list")[1])["tags"] or []):
        print(repo, tag, get(f"/v2/{repo}/manifests/{tag}", "HEAD")[0].getheader("Docker-Content-Digest"))
PY
  }
  # CPU seconds (user + system) of a running process, and of the finished children of one.
  CLK=$(getconf CLK_TCK)
  cpu_of() { awk -v t="$CLK" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
  # measured NAME CMD...: like median_time (PREP, i.e. a fresh target, before each run; one
  # warm-up), recording per run in OUT/NAME.runs: wall seconds, CPU seconds of CMD's own
  # processes (every skopeo or ferry it ran, or the floor client), of the source registry
  # during the run, and of the target registry (started empty for the run); then the target's state.
  measured() {
    local name=$1; shift
    ${PREP:-true}; ( "$@" ) >/dev/null 2>&1 || { echo "$name failed" >&2; exit 1; }
    : > "$OUT/$name.runs"
    for _ in $(seq 1 "$RUNS"); do
      ${PREP:-true}
      local s0 w0 w1 tool
      s0=$(cpu_of "$SRC_PID"); w0=$(date +%s.%N)
      # A subshell waits for every process CMD starts; its children's CPU is then in its own stat.
      tool=$( ( "$@" >/dev/null 2>&1 || exit 1; awk -v t="$CLK" '{print ($16 + $17) / t}' "/proc/$BASHPID/stat" ) ) \
        || { echo "$name failed" >&2; exit 1; }
      w1=$(date +%s.%N)
      echo "$(python3 -c "print(f'{$w1 - $w0:.3f}')") $tool $(python3 -c "print(f'{$(cpu_of "$SRC_PID") - $s0:.2f}')") $(cpu_of "$TARGET_PID")" >> "$OUT/$name.runs"
    done
    target_state > "$OUT/$name.state"
  }
  PREP=fresh_target measured skopeo skopeo_each
  PREP=fresh_target measured ferry-each ferry_each
  PREP=fresh_target measured ferry-yaml ferry_yaml
  PREP=fresh_target measured floor floor
  stop_target
  for f in ferry-each ferry-yaml floor; do
    cmp -s "$OUT/skopeo.state" "$OUT/$f.state" || { echo "$f: the target differs from skopeo's (see $OUT/*.state)" >&2; exit 1; }
  done
  echo "sync of every repository of the $PRESET corpus ($(echo "$REPOS" | wc -w) repositories, $(wc -l < "$OUT/skopeo.state") tags) docker -> docker, empty target, median of $RUNS, whole process:"
  python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
def med(name):
    runs = [list(map(float, l.split())) for l in open(f"{out}/{name}.runs")]
    return [statistics.median(col) for col in zip(*runs)]
rows = [("skopeo", "skopeo sync --src docker, one call per repository"),
        ("ferry-each", "ferry sync --src docker, one call per repository"),
        ("ferry-yaml", "ferry sync --src yaml, all repositories in one run"),
        ("floor", "floor: bare GET + monolithic PUT/mount, 6 connections")]
m = {n: med(n) for n, _ in rows}
print(f"  {'':<54} {'wall s':>7} {'speed-up':>8}   CPU s: {'client':>6} {'source reg':>10} {'target reg':>10} {'all':>6}")
for n, label in rows:
    wall, tool, src, dst = m[n]
    print(f"  {label:<54} {wall:>7.2f} {m['skopeo'][0] / wall:>7.2f}x   {'':>5}{tool:>7.2f} {src:>10.2f} {dst:>10.2f} {tool + src + dst:>6.2f}")
f = json.load(open(f"{out}/floor.json"))
print(f"  floor moved {f['uploaded']} blobs ({f['bytes'] / 1e9:.2f} GB), {f['mounted']} mounts, {f['manifests']} manifests")
wall, tool, src, dst = m["floor"]
best = (tool + src + dst) / 2
print(f"  every CPU second of the floor run (client and both registries) is {tool + src + dst:.2f} s; on 2 idle cores no client")
print(f"  can finish in less than half of it, {best:.2f} s, so no client beats skopeo here by more than {m['skopeo'][0] / best:.2f}x;")
print(f"  the registries alone need {src + dst:.2f} s ({m['skopeo'][0] / ((src + dst) / 2):.2f}x). ferry's own CPU: "
      f"{m['ferry-yaml'][1]:.2f} s (yaml), the floor client's {tool:.2f} s")
print("  (targets checked equal: repositories, tags and manifest digests)")
PY
  ;;
serve-load)
  CLIENTS="${CLIENTS:-64}"; SECONDS_LOAD="${SECONDS_LOAD:-60}"
  OUT="$WORK/serve-load-$PRESET"; mkdir -p "$OUT"
  # stop_server PID: stop one server now (the EXIT trap still covers it if this is never reached).
  stop_server() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
  # The bundle: the one `scripts/bench.sh unbundle` makes (every platform of every tag), made here if missing.
  BUNDLE="$WORK/unbundle-$PRESET/all.tar.zst"
  if [ ! -f "$BUNDLE" ]; then
    mkdir -p "$WORK/unbundle-$PRESET"
    start_registry "$ROOT"; SRC=$ADDR
    "$FERRY" bundle -q --all-platforms -f "$WORK/$PRESET-list.txt" -o "$BUNDLE.tmp" --cache "$WORK/unbundle-$PRESET/cache" --source "$SRC" --src-tls-verify=false
    mv "$BUNDLE.tmp" "$BUNDLE"
    stop_server "${PIDS[-1]}"
  fi
  start_unbundle_serve() {
    local port; port=$(free_port)
    "$FERRY" unbundle serve -q "$1" --listen "127.0.0.1:$port" "${SERVE_EXTRA[@]}" >"$WORK/unbundle-serve.log" 2>&1 &
    PIDS+=($!)
    ADDR="127.0.0.1:$port"
    for _ in $(seq 1 600); do curl -fsS "${CURL_CA[@]}" "$SCHEME://$ADDR/v2/" >/dev/null 2>&1 && break; sleep 0.05; done
  }
  # Page cache warm for every server alike: the root's blob files and the bundle, read once untimed.
  find "$ROOT/docker/registry/v2/blobs" -name data -print0 | xargs -0 cat > /dev/null
  cat "$BUNDLE" > /dev/null
  # A CA and a server certificate for 127.0.0.1 (EC P-256), made once, for the TLS runs.
  TLSDIR="$WORK/tls"
  if [ ! -f "$TLSDIR/chain.crt" ]; then
    command -v openssl >/dev/null || { echo "bench needs openssl" >&2; exit 1; }
    mkdir -p "$TLSDIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj "/CN=ferry bench CA" -keyout "$TLSDIR/ca.key" -out "$TLSDIR/ca.crt" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
      -keyout "$TLSDIR/server.key" -out "$TLSDIR/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$TLSDIR/ext.cnf"
    openssl x509 -req -in "$TLSDIR/server.csr" -CA "$TLSDIR/ca.crt" -CAkey "$TLSDIR/ca.key" -CAcreateserial \
      -days 3650 -extfile "$TLSDIR/ext.cnf" -out "$TLSDIR/server.crt" 2>/dev/null
    cat "$TLSDIR/server.crt" "$TLSDIR/ca.crt" > "$TLSDIR/chain.crt.tmp" && mv "$TLSDIR/chain.crt.tmp" "$TLSDIR/chain.crt"
  fi
  # load NAME START_FN ARG [tls]: start one server (over TLS when asked), load it alone, stop it;
  # its result in $OUT/NAME.json.
  load() {
    local lc_tls=()
    if [ "${4:-}" = tls ]; then
      SERVE_EXTRA=(--tls-cert "$TLSDIR/chain.crt" --tls-key "$TLSDIR/server.key"); SCHEME=https
      CURL_CA=(--cacert "$TLSDIR/ca.crt"); lc_tls=(--cacert "$TLSDIR/ca.crt")
    else
      SERVE_EXTRA=(); SCHEME=http; CURL_CA=()
    fi
    "$2" "$3"
    local pid=${PIDS[-1]}
    curl -fsS "${CURL_CA[@]}" "$SCHEME://$ADDR/v2/" >/dev/null || { echo "$1 did not start (see $WORK/*.log)" >&2; exit 1; }
    # The client runs in the background and is waited for, so a SIGTERM to this script is handled
    # at once (not after the load) and the EXIT trap stops the client too, by its PID.
    python3 scripts/loadclient.py --root "$ROOT" --addr "$ADDR" --clients "$CLIENTS" --seconds "$SECONDS_LOAD" \
      --pid "$pid" --out "$OUT/$1.json" "${lc_tls[@]}" &
    PIDS+=($!)
    wait "${PIDS[-1]}" || { echo "load client failed against $1" >&2; exit 1; }
    kill -0 "$pid" 2>/dev/null || { echo "$1 died under load (see $WORK/*.log)" >&2; exit 1; }
    stop_server "$pid"
  }
  load unbundle-serve start_unbundle_serve "$BUNDLE"
  load ferry-serve start_ferry "$ROOT"
  load docker-registry start_registry "$ROOT"
  load unbundle-serve-tls start_unbundle_serve "$BUNDLE" tls
  load ferry-serve-tls start_ferry "$ROOT" tls
  python3 - "$OUT" "$PRESET" "$CLIENTS" "$SECONDS_LOAD" "$BUNDLE" <<'PY'
import json, sys
out, preset, clients, secs, bundle = sys.argv[1:]
names = ["unbundle-serve", "ferry-serve", "docker-registry", "unbundle-serve-tls", "ferry-serve-tls"]
r = {n: json.load(open(f"{out}/{n}.json")) for n in names}
print(f"serve under load, {preset} corpus: {clients} keep-alive clients for {secs} s each, random manifests (by tag and by digest)")
print(f"and blobs (whole and ranges), every body verified; one server at a time, page cache warm;")
print(f"latency over all requests (p99: the largest blobs), and of manifest GETs alone (mf p99)")
print(f"  {'server':<30} {'req/s':>7} {'MB/s':>6} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} {'mf p99':>7} {'peak RSS MB':>11} {'(anon)':>7} {'CPU s srv/client':>17}")
label = {"unbundle-serve": "ferry unbundle serve (bundle)", "ferry-serve": "ferry serve (root)", "docker-registry": "docker-registry (root)",
         "unbundle-serve-tls": "ferry unbundle serve, TLS", "ferry-serve-tls": "ferry serve (root), TLS"}
for n in names:
    x = r[n]
    cpu = f"{x['server_cpu']:.1f}/{x['client_cpu']:.1f}"
    print(f"  {label[n]:<30} {x['rps']:>7.0f} {x['body_bytes']/x['seconds']/1e6:>6.0f} {x['errors']:>6} {x['p50_ms']:>7.1f} {x['p99_ms']:>7.1f} {x['manifest_p99_ms']:>7.1f} {x['peak_rss']/2**20:>11.1f} {x['peak_anon_polled']/2**20:>7.1f} {cpu:>17}")
u, f, d = r["unbundle-serve"], r["ferry-serve"], r["docker-registry"]
print(f"  unbundle serve / ferry serve: throughput {u['rps']/f['rps']:.2f}x, p99 {u['p99_ms']/f['p99_ms']:.2f}x")
print(f"  ferry serve / docker-registry: throughput {f['rps']/d['rps']:.2f}x, p99 {f['p99_ms']/d['p99_ms']:.2f}x")
for n in ["unbundle-serve", "ferry-serve"]:
    p, t = r[n], r[n + "-tls"]
    print(f"  {n} TLS / plain: throughput {t['rps']/p['rps']:.2f}x, p99 {t['p99_ms']/p['p99_ms']:.2f}x, server CPU {t['server_cpu']/p['server_cpu']:.2f}x")
# The goal of issues 10 and 13: every ferry server's peak RSS (VmHWM) at most 64 MB, TLS on and off.
over = [label[n] for n in names if n != "docker-registry" and r[n]["peak_rss"] > 64 * 2**20]
print(f"  ferry peak RSS goal (<= 64 MB, every ferry server, TLS on and off): {'met' if not over else 'NOT met: ' + ', '.join(over)}")
for n in names:
    for s in r[n]["error_samples"]:
        print(f"  error, {n}: {s}")
PY
  ;;
push-serve)
  command -v skopeo >/dev/null || { echo "bench needs skopeo" >&2; exit 1; }
  start_ferry "$ROOT"; SRC=$ADDR; SRC_PID=${PIDS[-1]}
  OUT="$WORK/push-serve-$PRESET"; mkdir -p "$OUT"
  REFS=$(grep -v '^#' "$WORK/$PRESET-list.txt" | grep -v '^$' | tr '\n' ' ')
  TARGET_PID=""
  fresh() {
    [ -n "$TARGET_PID" ] && { kill "$TARGET_PID"; wait "$TARGET_PID" 2>/dev/null || true; }
    # Set aside, deleted after the last round (see the rounds below).
    set_aside "$OUT/target"
    mkdir -p "$OUT/target/docker/registry/v2"; sync
  }
  fresh_registry() { fresh; start_registry "$OUT/target"; TARGET=$ADDR; TARGET_PID=${PIDS[-1]}; }
  fresh_ferry() {
    fresh; local port; port=$(free_port)
    "$FERRY" serve -q "$OUT/target" --allow-push --listen "127.0.0.1:$port" >"$WORK/ferry-push.log" 2>&1 &
    PIDS+=($!); TARGET="127.0.0.1:$port"; TARGET_PID=$!
    for _ in $(seq 1 100); do curl -fsS "http://$TARGET/v2/" >/dev/null 2>&1 && break; sleep 0.05; done
  }
  # The floor: a target that reads and drops every body (no hash, no file, no sync).
  fresh_null() {
    fresh; local port; port=$(free_port)
    python3 "$HERE/null_registry.py" "$port" >"$WORK/null-push.log" 2>&1 &
    PIDS+=($!); TARGET="127.0.0.1:$port"; TARGET_PID=$!
    for _ in $(seq 1 100); do curl -fsS "http://$TARGET/v2/" >/dev/null 2>&1 && break; sleep 0.05; done
  }
  # CPU seconds (user+sys) of a process so far, from /proc/PID/stat.
  cpu_of() { python3 -c "import os,sys; f=open(f'/proc/{sys.argv[1]}/stat').read().rsplit(')',1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'))" "$1"; }
  # The children's CPU seconds between two `times` outputs (run in this shell, not in a subshell, which would show 0).
  times_delta() { python3 - "$@" <<'PY'
import sys
def cpu(p):
    f = lambda x: int(x.split("m")[0]) * 60 + float(x.split("m")[1].rstrip("s"))
    return sum(map(f, open(p).read().split("\n")[1].split()))
print(f"{cpu(sys.argv[2]) - cpu(sys.argv[1]):.2f}")
PY
  }
  # Voluntary context switches of a process's threads so far (each a wake-up; threads that have
  # ended are not counted: tokio's blocking threads live on 10 s after their last task).
  switches_of() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/{n+=$2} END{print n+0}'; }
  # Each timed run also notes the CPU seconds of the skopeo processes, the target and the source,
  # and the target's context switches (one line per run in $CPU_LOG): CPU and switches are what
  # the load of a shared machine disturbs least.
  push_all() {
    local s0; s0=$(cpu_of "$SRC_PID"); times > "$OUT/times0"
    for ref in $REFS; do
      skopeo --insecure-policy copy -q --all --src-tls-verify=false --dest-tls-verify=false "docker://$SRC/$ref" "docker://$TARGET/$ref" || exit 1
    done
    times > "$OUT/times1"
    echo "$(times_delta "$OUT/times0" "$OUT/times1") $(cpu_of "$TARGET_PID") $(python3 -c "print(f'{$(cpu_of "$SRC_PID")-$s0:.2f}')") $(switches_of "$TARGET_PID")" >> "$CPU_LOG"
  }
  cpu_report() { python3 - "$CPU_LOG" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()][1:]  # the first is the warm-up
print("skopeo %.2f, target %.2f, source %.2f; target's voluntary context switches %d" % tuple(statistics.median(r[i] for r in rows) for i in range(4)) if rows else "")
PY
  }
  # One push into a fresh target of kind $1 (null, registry, ferry), in this subshell: its seconds.
  timed_push() {
    "fresh_$1"; local s e; s=$(date +%s.%N); push_all >/dev/null 2>&1; e=$(date +%s.%N)
    s=$(python3 -c "print($e-$s)"); echo "$s"  # a builtin last: see one_multi in `copy`
  }
  # Rounds, each pushing once into every kind of target, in an order rotated round by round; the
  # first round warms up. Nothing is deleted until the last round has run (each target written is
  # set aside, when the disk has room: RUNS+1 rounds need about 2 x (RUNS+1) x the corpus), and the kinds are
  # interleaved, because deleting makes later runs slower on some file systems: ext4 without a
  # journal (this machine's) scans past every inode deleted in the last minutes when it
  # allocates one, so the kind run after the others' deletes would pay for them.
  rm -rf "$OUT"/old-target.* "$OUT/target"
  ASIDE=0; room_for $(( 2 * (RUNS + 1) * $(du -sb "$ROOT/docker/registry/v2/blobs" | cut -f1) )) && ASIDE=1
  KINDS=(null registry ferry); declare -A SECS=()
  for k in "${KINDS[@]}"; do : > "$OUT/cpu-$k"; done
  for round in $(seq 0 "$RUNS"); do
    for i in 0 1 2; do
      k=${KINDS[$(( (i + round) % 3 ))]}
      secs=$(CPU_LOG="$OUT/cpu-$k" in_target timed_push "$k")
      [ "$round" -eq 0 ] || SECS[$k]+="$secs "
    done
  done
  t_null=$(median_of "${SECS[null]}"); c_null=$(CPU_LOG="$OUT/cpu-null" cpu_report)
  t_reg=$(median_of "${SECS[registry]}"); c_reg=$(CPU_LOG="$OUT/cpu-registry" cpu_report)
  t_fer=$(median_of "${SECS[ferry]}"); c_fer=$(CPU_LOG="$OUT/cpu-ferry" cpu_report)
  rm -rf "$OUT"/old-target.* "$OUT/target"; sync
  # The disk: writing the corpus's bytes once, durably (what a target that syncs cannot avoid).
  BYTES=$(du -sb "$ROOT/docker/registry/v2/blobs" | cut -f1)
  disk() { dd if=/dev/zero of="$OUT/disk" bs=1M count=$((BYTES >> 20)) conv=fdatasync status=none; }
  t_disk=$(PREP="rm -f $OUT/disk" median_time disk); rm -f "$OUT/disk"
  echo "push, skopeo copy --all of $(echo $REFS | wc -w) tags of the $PRESET corpus into an empty root, median of $RUNS:"
  echo "  docker-registry        ${t_reg}s   (CPU-s median: $c_reg)"
  echo "  ferry serve --allow-push ${t_fer}s   (CPU-s median: $c_fer)"
  echo "  speed-up ferry/docker-registry: $(ratio "$t_reg" "$t_fer")x"
  echo "  (targets run interleaved, round by round; each written target $(aside_said))"
  echo "  floor, a target that drops every body (null_registry.py): ${t_null}s   (CPU-s median: $c_null)"
  echo "    best speed-up any target could show: $(ratio "$t_reg" "$t_null")x"
  echo "  disk, writing the corpus's $BYTES bytes once with fdatasync (dd): ${t_disk}s"
  ;;
delta)
  for t in zstd tar; do command -v "$t" >/dev/null || { echo "bench needs $t" >&2; exit 1; }; done
  # The next release: CHANGED (default 5) images with a new layer, 2 added, 1 removed (ferry fixtures --patch).
  CHANGED="${CHANGED:-5}"; NEWROOT="$WORK/$PRESET-patch$CHANGED-root"; NEWLIST="$WORK/$PRESET-patch$CHANGED-list.txt"
  if [ ! -f "$WORK/$PRESET-patch$CHANGED.json" ]; then
    rm -rf "$NEWROOT"; mkdir -p "$NEWROOT"; cp -al "$ROOT/docker" "$NEWROOT/"
    "$FERRY" -q fixtures --preset "$PRESET" --patch "$CHANGED" --no-sync "$NEWROOT" --list "$NEWLIST" > "$WORK/patch.json.tmp"
    mv "$WORK/patch.json.tmp" "$WORK/$PRESET-patch$CHANGED.json"
  fi
  start_registry "$ROOT"; OLDREG=$ADDR; start_registry "$NEWROOT"; NEWREG=$ADDR
  OUT="$WORK/delta-$PRESET"; rm -rf "$OUT"; mkdir -p "$OUT"; CACHE="$OUT/cache"
  "$FERRY" bundle -q -f "$WORK/$PRESET-list.txt" -o "$OUT/old.tar.zst" --cache "$CACHE" --source "$OLDREG" --src-tls-verify=false
  "$FERRY" bundle -q -f "$NEWLIST" -o "$OUT/full.tar.zst" --cache "$CACHE" --source "$NEWREG" --src-tls-verify=false
  full_prep() { rm -f "$OUT/full.tar.zst"; sync; }
  full() { "$FERRY" bundle -q -f "$NEWLIST" -o "$OUT/full.tar.zst" --cache "$CACHE" --source "$NEWREG" --src-tls-verify=false; }
  delta_prep() { rm -f "$OUT/delta.tar.zst"; sync; }
  delta() { "$FERRY" bundle -q -f "$NEWLIST" -o "$OUT/delta.tar.zst" --cache "$CACHE" --source "$NEWREG" --src-tls-verify=false --since "$OUT/old.tar.zst"; }
  t_full=$(PREP=full_prep median_time full)
  t_delta=$(PREP=delta_prep median_time delta)
  # The floor: plain tar | zstd of just the blob files the new release adds (new - old, from the two indexes).
  tar --zstd -xOf "$OUT/old.tar.zst" ferry-bundle.json > "$OUT/old.json"
  tar --zstd -xOf "$OUT/full.tar.zst" ferry-bundle.json > "$OUT/full.json"
  python3 - "$OUT/old.json" "$OUT/full.json" > "$OUT/new-blobs.txt" <<'PY'
import json, sys
old = {b["digest"] for b in json.load(open(sys.argv[1]))["blobs"]}
for b in json.load(open(sys.argv[2]))["blobs"]:
    if b["digest"] not in old:
        h = b["digest"][7:]
        print(f"docker/registry/v2/blobs/sha256/{h[:2]}/{h}/data")
PY
  NEWBYTES=$(cd "$NEWROOT" && xargs -a "$OUT/new-blobs.txt" du -cb | tail -1 | cut -f1)
  floor_prep() { rm -f "$OUT/floor.tar.zst"; sync; }
  floor() { tar -C "$NEWROOT" -c -T "$OUT/new-blobs.txt" | zstd -q -T0 -3 > "$OUT/floor.tar.zst" && sync; }
  t_floor=$(PREP=floor_prep median_time floor)
  # Link of the delta into a root that holds the old release (a hardlinked copy per run, untimed).
  mkdir -p "$OUT/old-root"; "$FERRY" unbundle link -q "$OUT/old.tar.zst" --root "$OUT/old-root"
  link_prep() { rm -rf "$OUT/site"; mkdir -p "$OUT/site"; cp -al "$OUT/old-root/docker" "$OUT/site/"; sync; }
  link_delta() { "$FERRY" unbundle link -q "$OUT/delta.tar.zst" --root "$OUT/site"; }
  link_full() { "$FERRY" unbundle link -q "$OUT/full.tar.zst" --root "$OUT/site"; }
  t_link_delta=$(PREP=link_prep median_time link_delta)
  t_link_full=$(PREP=link_prep median_time link_full)
  sz() { stat -c %s "$1"; }
  mb() { python3 -c "print(f'{$1/1e6:.1f}')"; }
  echo "$PRESET, $CHANGED images changed, 2 added, 1 removed; warm cache; median of $RUNS:"
  echo "  new blobs (new - old): $(wc -l < "$OUT/new-blobs.txt") files, $(mb "$NEWBYTES") MB"
  echo "  full bundle            $(mb "$(sz "$OUT/full.tar.zst")") MB  ${t_full}s"
  echo "  delta bundle           $(mb "$(sz "$OUT/delta.tar.zst")") MB  ${t_delta}s  (over the new bytes: $(python3 -c "print(f'{($(sz "$OUT/delta.tar.zst")-$NEWBYTES)/1e6:+.2f}')") MB)"
  echo "  tar | zstd -3 of new   $(mb "$(sz "$OUT/floor.tar.zst")") MB  ${t_floor}s"
  echo "  delta time / floor: $(ratio "$t_delta" "$t_floor")x; full / delta size: $(ratio "$(sz "$OUT/full.tar.zst")" "$(sz "$OUT/delta.tar.zst")")x"
  echo "  link into a root holding old: delta ${t_link_delta}s, full ${t_link_full}s"
  ;;
s3)
  # A site on object storage: one single-node Garage (INTEROP.md §12), fresh for every run (untimed).
  GARAGE="$(command -v garage || echo "$HOME/.cargo/bin/garage")"
  [ -x "$GARAGE" ] || { echo "bench needs garage (cargo install --locked garage)" >&2; exit 1; }
  INCUMBENT="${INCUMBENT:-$PWD/../shared/incumbent}"
  command -v skopeo >/dev/null || { echo "bench needs skopeo" >&2; exit 1; }
  start_registry "$ROOT"; SRC=$ADDR
  LIST="$WORK/$PRESET-list.txt"; OUT="$WORK/s3-$PRESET"; mkdir -p "$OUT"
  [ -d "$OUT/seed/dirs" ] || bash "$INCUMBENT/seed_bundle.sh" "$SRC" "$LIST" "$OUT/seed" "$OUT/seed.log" pull-only:sync
  [ -f "$OUT/all.tar.zst" ] || "$FERRY" bundle -q --all-platforms -f "$LIST" -o "$OUT/all.tar.zst" --cache "$OUT/cache" --source "$SRC" --src-tls-verify=false
  G="$OUT/garage"; GARAGE_PID=""; TARGET_PID=""
  gcli() { "$GARAGE" -c "$G/garage.toml" "$@"; }
  stop_target() {
    for p in "${TARGET_PID:-}" "${GARAGE_PID:-}"; do [ -z "$p" ] || { kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; }; done
    TARGET_PID=""; GARAGE_PID=""
  }
  # fresh_site [registry]: an empty Garage with bucket `site`, and docker-registry on its S3 driver when asked.
  fresh_site() {
    stop_target; rm -rf "$G"; mkdir -p "$G"
    local s3p rpcp; s3p=$(free_port); rpcp=$(free_port)
    cat > "$G/garage.toml" <<TOML
metadata_dir = "$G/meta"
data_dir = "$G/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpcp"
rpc_public_addr = "127.0.0.1:$rpcp"
rpc_secret = "$(python3 -c 'import secrets;print(secrets.token_hex(32))')"
[s3_api]
api_bind_addr = "127.0.0.1:$s3p"
s3_region = "garage"
TOML
    chmod 600 "$G/garage.toml"
    "$GARAGE" -c "$G/garage.toml" server >"$G/log" 2>&1 & GARAGE_PID=$!
    for _ in $(seq 1 100); do gcli status >/dev/null 2>&1 && break; sleep 0.1; done
    gcli layout assign -z dc1 -c 100G "$(gcli node id -q | cut -c1-64)" >/dev/null
    gcli layout apply --version 1 >/dev/null
    local key; key=$(gcli key create bench)
    KID=$(sed -n 's/^Key ID: *//p' <<<"$key"); SECRET=$(sed -n 's/^Secret key: *//p' <<<"$key")
    for _ in $(seq 1 50); do gcli bucket create site >/dev/null 2>&1 && break; sleep 0.2; done
    gcli bucket allow --read --write --owner site --key bench >/dev/null
    ENDPOINT="http://127.0.0.1:$s3p"
    [ "${1:-}" = registry ] || return 0
    local port; port=$(free_port)
    cat > "$G/registry.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  s3:
    region: garage
    regionendpoint: $ENDPOINT
    bucket: site
    accesskey: $KID
    secretkey: $SECRET
    secure: false
    v4auth: true
    rootdirectory: /site
  redirect:
    disable: true
http:
  addr: 127.0.0.1:$port
  secret: bench-not-a-secret
YAML
    # distribution's S3 driver panics at start on an inherited AWS_CA_BUNDLE: no AWS_* for it.
    env -i PATH="$PATH" HOME="$HOME" docker-registry serve "$G/registry.yml" >"$G/registry.log" 2>&1 & TARGET_PID=$!
    TARGET="127.0.0.1:$port"
    for _ in $(seq 1 100); do curl -fsS "http://$TARGET/v2/" >/dev/null 2>&1 && break; sleep 0.05; done
  }
  fresh_registry() { fresh_site registry; }
  seed_push() { (cd "$OUT/seed/dirs" && skopeo --insecure-policy sync --scoped --src dir --dest docker --dest-tls-verify=false ./ "$TARGET" >/dev/null) || { echo "skopeo sync failed" >&2; exit 1; }; }
  ferry_push() { "$FERRY" unbundle push -q "$OUT/all.tar.zst" --dest "$TARGET" --dest-tls-verify=false || { echo "ferry push failed" >&2; exit 1; }; }
  ferry_link() {
    env -u AWS_CA_BUNDLE AWS_ACCESS_KEY_ID="$KID" AWS_SECRET_ACCESS_KEY="$SECRET" AWS_REGION=garage \
      "$FERRY" unbundle link -q "$OUT/all.tar.zst" --root s3://site/site --s3-endpoint "$ENDPOINT" || { echo "ferry link failed" >&2; exit 1; }
  }
  t_seed=$(PREP=fresh_registry in_target median_time seed_push)
  t_push=$(PREP=fresh_registry in_target median_time ferry_push)
  t_link=$(PREP=fresh_site in_target median_time ferry_link)
  BYTES=$(stat -c %s "$OUT/all.tar.zst")
  echo "a site on object storage (Garage), the $PRESET corpus ($(python3 -c "print(f'{$BYTES/1e9:.2f}')") GB bundle), median of $RUNS, each into an empty bucket:"
  echo "  skopeo sync --scoped (amd64 only, from dir:) into docker-registry on S3: ${t_seed}s"
  echo "  ferry unbundle push (every platform) into docker-registry on S3: ${t_push}s: $(ratio "$t_seed" "$t_push")x skopeo"
  echo "  ferry unbundle link --root s3://… (every platform, straight into the bucket): ${t_link}s: $(ratio "$t_push" "$t_link")x push, $(ratio "$t_seed" "$t_link")x skopeo"
  ;;
*) echo "usage: scripts/bench.sh serve|bundle|unbundle|copy|refs|inspect|sync|serve-load|push-serve|delta|s3 [WORK]" >&2; exit 2 ;;
esac
