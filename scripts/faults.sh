#!/usr/bin/env bash
# Fault injection: SIGKILL `ferry bundle`, `ferry unbundle link` and `ferry unbundle push`
# (to the Debian docker-registry) at random points, seeded, then check what is visible
# and re-run.
#   scripts/faults.sh [--runs N] [--seed S] [--work DIR] [--preset tiny|small]
# Prints, per operation, how many runs left something visible that was not whole
# (goal 0) and how many re-runs failed (goal 0); exits 1 if either is not 0.
# Visible and whole means: a bundle at its final name verifies; every tag a root lists
# has a current/link to a manifest the repository links and the root holds, and the
# root verifies; every tag the registry lists answers its manifest and blobs.
# About half the link runs pause 5 ms before each new tag (FERRY_TEST_TAG_PAUSE_MS, a
# test-only variable) and are killed inside the tag phase.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUNS=20; SEED=1; WORK=""; PRESET=tiny
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --preset) PRESET="$2"; shift 2 ;;
    *) echo "usage: scripts/faults.sh [--runs N] [--seed S] [--work DIR] [--preset tiny|small]" >&2; exit 2 ;;
  esac
done
cd "$HERE/.."
cargo build -q
FERRY="$PWD/target/debug/ferry"
[ -n "$WORK" ] || WORK="$(mktemp -d /tmp/ferry-faults.XXXXXX)"
mkdir -p "$WORK"
exec python3 - "$FERRY" "$WORK" "$RUNS" "$SEED" "$PRESET" <<'PY'
import hashlib, json, os, random, shutil, signal, socket, subprocess, sys, time, urllib.request

ferry, work, runs, seed, preset = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rng = random.Random(seed)
V2 = "docker/registry/v2"

def sh(*args, **kw):
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait_http(addr):
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://{addr}/v2/", timeout=1).read(); return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"no server at {addr}")

procs = []
def start(args, **kw):
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    procs.append(p); return p

def registry(root):
    port = free_port()
    cfg = os.path.join(work, f"registry-{port}.yml")
    with open(cfg, "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n"
                f"  filesystem:\n    rootdirectory: {root}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: faults\n")
    p = start(["docker-registry", "serve", cfg])
    addr = f"127.0.0.1:{port}"; wait_http(addr); return p, addr

# The source: a fixture corpus served by ferry serve, and one good bundle of it.
src = os.path.join(work, "source")
lst = os.path.join(work, "list.txt")
if not os.path.isdir(src):
    r = sh(ferry, "fixtures", "-q", "--preset", preset, src)
    if r.returncode: raise SystemExit(r.stderr)
port = free_port()
srv = start([ferry, "serve", "-q", src, "--listen", f"127.0.0.1:{port}"])
src_addr = f"127.0.0.1:{port}"; wait_http(src_addr)
# The images list: every tag of the served corpus.
def get(addr, path, method="GET", accept=None):
    req = urllib.request.Request(f"http://{addr}{path}", method=method)
    req.add_header("Accept", accept or ",".join([
        "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json"]))
    with urllib.request.urlopen(req, timeout=20) as f:
        return f.status, f.read()
repos = json.loads(get(src_addr, "/v2/_catalog")[1])["repositories"]
refs = []
for repo in repos:
    for tag in json.loads(get(src_addr, f"/v2/{repo}/tags/list")[1])["tags"] or []:
        refs.append(f"{repo}:{tag}")
with open(lst, "w") as f: f.write("\n".join(refs) + "\n")
cache = os.path.join(work, "cache")
good = os.path.join(work, "good.tar.zst")
def bundle_args(out):
    return [ferry, "bundle", "-q", "--all-platforms", "--src-tls-verify=false", "--source", src_addr,
            "-f", lst, "-o", out, "--cache", cache]
t0 = time.time(); r = sh(*bundle_args(good))
if r.returncode: raise SystemExit(r.stderr)
t_bundle = time.time() - t0
t0 = time.time(); r = sh(ferry, "unbundle", "link", good, "--root", os.path.join(work, "probe-root"))
if r.returncode: raise SystemExit(r.stderr)
t_link = time.time() - t0

def root_whole(root):
    """Every listed tag resolves to a linked manifest the root holds, and ferry verify passes."""
    reps = os.path.join(root, V2, "repositories")
    for dirpath, dirnames, _ in os.walk(reps):
        if os.path.basename(dirpath) == "tags" and os.path.basename(os.path.dirname(dirpath)) == "_manifests":
            repo_dir = os.path.dirname(os.path.dirname(dirpath))
            for tag in dirnames:
                cur = os.path.join(dirpath, tag, "current", "link")
                if not os.path.isfile(cur): return f"tag {tag} in {repo_dir} has no current/link"
                d = open(cur).read()
                alg, hexd = d.split(":", 1)
                rev = os.path.join(repo_dir, "_manifests", "revisions", alg, hexd, "link")
                data = os.path.join(root, V2, "blobs", alg, hexd[:2], hexd, "data")
                if not os.path.isfile(rev): return f"tag {tag} → {d}: revision not linked"
                if not os.path.isfile(data): return f"tag {tag} → {d}: blob missing"
            dirnames[:] = []
    if os.path.isdir(os.path.join(root, V2)):
        r = sh(ferry, "verify", root)
        if r.returncode: return "verify: " + (r.stderr.strip().splitlines() or [""])[0]
    return None

def registry_whole(addr):
    """Every tag the registry lists answers its manifest, and every blob it names."""
    try:
        cat = json.loads(get(addr, "/v2/_catalog")[1])["repositories"]
    except Exception as e:
        return f"catalog: {e}"
    for repo in cat:
        try:
            tags = json.loads(get(addr, f"/v2/{repo}/tags/list")[1]).get("tags") or []
        except Exception as e:
            continue
        for tag in tags:
            try:
                _, body = get(addr, f"/v2/{repo}/manifests/{tag}")
                m = json.loads(body)
                kids = [c["digest"] for c in m.get("manifests", [])]
                mans = [json.loads(get(addr, f"/v2/{repo}/manifests/{k}")[1]) for k in kids] or [m]
                for mm in mans:
                    for b in [mm["config"]] + mm["layers"]:
                        get(addr, f"/v2/{repo}/blobs/{b['digest']}", method="HEAD")
            except Exception as e:
                return f"{repo}:{tag} listed but not whole: {e}"
    return None

def kill_after(p, delay, until=None):
    """SIGKILLs p after `delay` seconds (counted from `until()` turning true, when given)."""
    start = time.time()
    if until:
        while not until() and p.poll() is None and time.time() - start < 60: time.sleep(0.001)
    time.sleep(delay)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait()

stats = {op: {"runs": 0, "killed": 0, "broken": 0, "rerun_failed": 0} for op in ("bundle", "link", "push")}
problems = []
for i in range(runs):
    op = ("bundle", "link", "push")[i % 3]
    d = os.path.join(work, f"run-{i}"); shutil.rmtree(d, ignore_errors=True); os.makedirs(d)
    s = stats[op]; s["runs"] += 1
    if op == "bundle":
        out = os.path.join(d, "b.tar.zst")
        # A fresh cache half of the time, so kills land in downloads as well as in packing.
        args = bundle_args(out)
        if rng.random() < 0.5: args[args.index("--cache") + 1] = os.path.join(d, "cache")
        p = start(args)
        kill_after(p, rng.uniform(0, t_bundle * 1.2))
        s["killed"] += p.returncode == -signal.SIGKILL
        if os.path.exists(out) and sh(ferry, "verify", out).returncode:
            s["broken"] += 1; problems.append(f"run {i} bundle: {out} is visible but does not verify")
        r = sh(*args)
        if r.returncode or sh(ferry, "verify", out).returncode:
            s["rerun_failed"] += 1; problems.append(f"run {i} bundle re-run: {r.stderr.strip()[:200]}")
        left = [f for f in os.listdir(d) if f.startswith(".b.tar.zst.tmp-")]
        if left:
            s["broken"] += 1; problems.append(f"run {i} bundle: temp files left after the re-run: {left}")
    elif op == "link":
        root = os.path.join(d, "root")
        if rng.random() < 0.3:  # a root that already holds the images (a re-link)
            sh(ferry, "unbundle", "link", good, "--root", root)
        env = dict(os.environ)
        tmp = os.path.join(root, ".ferry-tmp")
        in_tags = None
        if rng.random() < 0.5:
            env["FERRY_TEST_TAG_PAUSE_MS"] = "5"
            in_tags = lambda: os.path.isdir(tmp) and any(n.startswith("tag-") for n in os.listdir(tmp))
            delay = rng.uniform(0, 0.005 * len(refs) + 0.01)
        else:
            delay = rng.uniform(0, t_link * 1.2)
        p = start([ferry, "unbundle", "link", good, "--root", root], env=env)
        kill_after(p, delay, in_tags)
        s["killed"] += p.returncode == -signal.SIGKILL
        why = root_whole(root)
        if why: s["broken"] += 1; problems.append(f"run {i} link: {why}")
        r = sh(ferry, "unbundle", "link", good, "--root", root)
        why = root_whole(root) if not r.returncode else r.stderr.strip()[:200]
        if why: s["rerun_failed"] += 1; problems.append(f"run {i} link re-run: {why}")
    else:
        root = os.path.join(d, "reg")
        os.makedirs(root)
        reg, addr = registry(root)
        args = [ferry, "unbundle", "push", "-q", good, "--dest", addr, "--dest-tls-verify=false"]
        t0 = time.time()
        p = start(args)
        kill_after(p, rng.uniform(0, t_link * 2))
        s["killed"] += p.returncode == -signal.SIGKILL
        why = registry_whole(addr)
        if why: s["broken"] += 1; problems.append(f"run {i} push: {why}")
        r = sh(*args)
        why = registry_whole(addr) if not r.returncode else r.stderr.strip()[:200]
        if why: s["rerun_failed"] += 1; problems.append(f"run {i} push re-run: {why}")
        reg.terminate(); reg.wait()
    shutil.rmtree(d, ignore_errors=True)

for p in procs:
    if p.poll() is None: p.terminate(); p.wait()
for pr in problems: print(pr)
print(f"seed {seed}, {runs} runs (full bundle {t_bundle:.2f}s, full link {t_link:.2f}s)")
for op, s in stats.items():
    print(f"  {op:6} runs {s['runs']:3}  killed {s['killed']:3}  left something visible not whole: {s['broken']}  re-runs failed: {s['rerun_failed']}")
bad = sum(s["broken"] + s["rerun_failed"] for s in stats.values())
print(f"not whole: {sum(s['broken'] for s in stats.values())}, re-runs failed: {sum(s['rerun_failed'] for s in stats.values())}")
sys.exit(1 if bad else 0)
PY
