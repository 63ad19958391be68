#!/usr/bin/env python3
"""The floor of `scripts/bench.sh sync`: a bare parallel registry-to-registry copy.
   python3 scripts/floor_sync.py ROOT SRC_HOST:PORT DST_HOST:PORT [JOBS]
ROOT is the source registry's root directory (read here, before anything is timed, only to know
what to move: the tags of every repository and, for an index, its linux/amd64 child, as
`skopeo sync` without --all picks it; each destination repository is the source's last path
element, as skopeo names it without --scoped). Then, over JOBS keep-alive connections per
registry (default 6), largest blobs first:
  every unique blob (configs and layers): GET from the source, streamed straight into a
  monolithic upload (POST + PUT ?digest=) to the first destination repository needing it,
  then a cross-repository mount (POST ?mount=&from=) into every other repository needing it;
  every manifest: GET by digest from the source, PUT by tag at the destination.
Nothing else: no tag listing, no existence checks, no retries. One light process, so what it
measures is the two registries' own cost of the unique bytes and requests."""
import http.client, json, os, sys, threading, time

root, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
jobs = int(sys.argv[4]) if len(sys.argv) > 4 else 6
v2 = os.path.join(root, "docker/registry/v2")
ACCEPT = ",".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])

def blob_bytes(digest):
    h = digest.split(":", 1)[1]
    with open(f"{v2}/blobs/sha256/{h[:2]}/{h}/data", "rb") as f:
        return f.read()

def read_link(path):
    with open(path) as f:
        return f.read().strip()

# --- the plan, from the root (untimed) -------------------------------------------------------
repos_dir = os.path.join(v2, "repositories")
source_repos = []
for d, dirs, _ in os.walk(repos_dir):
    if "_manifests" in dirs:
        source_repos.append(os.path.relpath(d, repos_dir))
        dirs[:] = []
manifests = []            # (source repo, destination repo, tag, digest)
blobs = {}                # digest -> [size, source repo, [destination repos]]
for repo in sorted(source_repos):
    dest = repo.rsplit("/", 1)[-1]
    tags_dir = os.path.join(repos_dir, repo, "_manifests/tags")
    for tag in sorted(os.listdir(tags_dir) if os.path.isdir(tags_dir) else []):
        digest = read_link(os.path.join(tags_dir, tag, "current/link"))
        m = json.loads(blob_bytes(digest))
        if "manifests" in m:  # an index: the linux/amd64 image, as skopeo on this machine chooses
            digest = next(c["digest"] for c in m["manifests"]
                          if c.get("platform", {}).get("os") == "linux"
                          and c.get("platform", {}).get("architecture") == "amd64")
            m = json.loads(blob_bytes(digest))
        manifests.append((repo, dest, tag, digest))
        for b in [m["config"]] + m["layers"]:
            e = blobs.setdefault(b["digest"], [b["size"], repo, []])
            if dest not in e[2]:
                e[2].append(dest)
work = sorted(blobs.items(), key=lambda kv: -kv[1][0])

# --- the copy (timed) -------------------------------------------------------------------------
lock = threading.Lock()
errors = []
counts = {"uploaded": 0, "mounted": 0, "bytes": 0, "manifests": 0}

def conn(addr):
    host, port = addr.rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), blocksize=1 << 20)

def check(r, want, what):
    body = r.read()
    if r.status != want:
        raise RuntimeError(f"{what}: HTTP {r.status} {body[:200]!r}")
    return body

def take(queue):
    with lock:
        return queue.pop(0) if queue else None

def copy_blobs(s, d):
    while (item := take(work)) is not None:
        digest, (size, srepo, dests) = item
        s.request("GET", f"/v2/{srepo}/blobs/{digest}")
        body = s.getresponse()
        if body.status != 200:
            raise RuntimeError(f"GET blob {digest}: HTTP {body.status}")
        d.request("POST", f"/v2/{dests[0]}/blobs/uploads/", headers={"Content-Length": "0"})
        r = d.getresponse(); check(r, 202, "POST upload")
        loc = r.getheader("Location")
        if loc.startswith("http"):
            loc = "/" + loc.split("/", 3)[3]
        sep = "&" if "?" in loc else "?"
        d.request("PUT", f"{loc}{sep}digest={digest}", body=body,
                  headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
        check(d.getresponse(), 201, f"PUT blob {digest}")
        body.read()
        for other in dests[1:]:
            d.request("POST", f"/v2/{other}/blobs/uploads/?mount={digest}&from={dests[0]}",
                      headers={"Content-Length": "0"})
            check(d.getresponse(), 201, f"mount {digest} into {other}")
        with lock:
            counts["uploaded"] += 1; counts["mounted"] += len(dests) - 1; counts["bytes"] += size

def copy_manifests(s, d):
    while (item := take(manifests)) is not None:
        srepo, dest, tag, digest = item
        s.request("GET", f"/v2/{srepo}/manifests/{digest}", headers={"Accept": ACCEPT})
        r = s.getresponse(); body = check(r, 200, f"GET manifest {digest}")
        d.request("PUT", f"/v2/{dest}/manifests/{tag}", body=body,
                  headers={"Content-Type": r.getheader("Content-Type")})
        check(d.getresponse(), 201, f"PUT manifest {dest}:{tag}")
        with lock:
            counts["manifests"] += 1

def worker(step, barrier):
    try:
        s, d = conn(src), conn(dst)
        copy_blobs(s, d)
        barrier.wait()  # every blob and mount in place before any manifest names them
        copy_manifests(s, d)
    except Exception as e:  # the floor failed: say so, and let the others stop
        errors.append(repr(e))
        barrier.abort()

start = time.monotonic()
barrier = threading.Barrier(jobs)
ts = [threading.Thread(target=worker, args=(i, barrier)) for i in range(jobs)]
for t in ts: t.start()
for t in ts: t.join()
if errors:
    sys.exit("floor sync failed: " + errors[0])
print(json.dumps(dict(counts, seconds=round(time.monotonic() - start, 3))))
