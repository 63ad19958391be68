#!/usr/bin/env python3
"""The floors of `scripts/bench.sh copy`'s --all case: a bare client copying each image, one
after the other, registry to registry, as `skopeo copy --all` and `ferry copy --all` do.
   python3 scripts/floor_copy.py bare|crit ROOT SRC_HOST:PORT DST_HOST:PORT REPO:TAG[,REPO:TAG...] [JOBS]
ROOT is the source registry's root directory, read before anything is timed, only to know each
image's blobs. DST must be empty (a fresh registry for each floor). Images in the order given:
  bare: per image, over JOBS keep-alive connections per registry (default 6), largest blobs
    first: the top manifest and each child GET from the source; every blob not yet in DST is
    GET from the source and streamed straight into a monolithic upload (POST + PUT ?digest=),
    one an earlier image put there is mounted (POST ?mount=&from=); then the children PUT by
    digest, then the index by tag. No existence checks, no verification, no process start:
    what any client must ask of the two registries, in the least time they allow.
  crit: per image, only the largest blob it must upload, alone (GET streamed into POST + PUT):
    the critical path through the two registries (the target hashes and fsyncs the blob before
    it answers the PUT, and no manifest can name the blob before that), below which no client
    that copies one image per process can go, whatever its parallelism.
Prints one JSON line: the floor's seconds (summed over the images), what it moved, and per image
("images": ref, seconds). With FLOOR_PIDS=SRC_PID,DST_PID in the environment, bare also gives each
image's share of the two registries' CPU seconds (user+sys from /proc, read before and after the
image) and, measured after the timed part, the CPU seconds sha256 takes over the blobs the image
uploaded (hashlib, page cache warm): what any client that checks what it carries must add.
Together they give the tightest floor this bench defends for one process per image:
  sum over images of max(crit seconds, (registries' CPU + sha256 CPU) / 2 cores)."""
import hashlib, http.client, json, os, sys, threading, time

mode, root, src, dst = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
refs = sys.argv[5].split(",")
jobs = int(sys.argv[6]) if len(sys.argv) > 6 else 6
v2 = os.path.join(root, "docker/registry/v2")


def blob_bytes(digest):
    h = digest.split(":", 1)[1]
    with open(f"{v2}/blobs/sha256/{h[:2]}/{h}/data", "rb") as f:
        return f.read()


# --- each image's manifests and blobs, from the root (untimed) --------------------------------
images = []  # (repo, tag, top digest, [child digests], {blob digest: size})
for ref in refs:
    repo, tag = ref.rsplit(":", 1)
    with open(f"{v2}/repositories/{repo}/_manifests/tags/{tag}/current/link") as f:
        top = f.read().strip()
    children, blobs = [], {}
    def walk(d):
        m = json.loads(blob_bytes(d))
        for c in m.get("manifests", []):
            walk(c["digest"])
            children.append(c["digest"])
        for b in ([m["config"]] if "config" in m else []) + m.get("layers", []):
            blobs[b["digest"]] = b["size"]
    walk(top)
    images.append((repo, tag, top, list(dict.fromkeys(children)), blobs))


def conn(addr):
    host, port = addr.rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), blocksize=1 << 20)


def check(r, want, what):
    body = r.read()
    if r.status != want:
        raise RuntimeError(f"{what}: HTTP {r.status} {body[:200]!r}")
    return body


def upload(s, d, srepo, drepo, digest, size):
    """GET from the source streamed into POST + PUT at the destination; the GET and the POST
    are both sent before either answer is read (a client may open the session meanwhile)."""
    s.request("GET", f"/v2/{srepo}/blobs/{digest}")
    d.request("POST", f"/v2/{drepo}/blobs/uploads/", headers={"Content-Length": "0"})
    body = s.getresponse()
    if body.status != 200:
        raise RuntimeError(f"GET blob {digest}: HTTP {body.status}")
    r = d.getresponse()
    check(r, 202, "POST upload")
    loc = r.getheader("Location")
    if loc.startswith("http"):
        loc = "/" + loc.split("/", 3)[3]
    sep = "&" if "?" in loc else "?"
    d.request("PUT", f"{loc}{sep}digest={digest}", body=body,
              headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
    check(d.getresponse(), 201, f"PUT blob {digest}")
    body.read()


def parallel(items, step, pool):
    """Runs step(s, d, item) for every item over the pool's connection pairs."""
    lock, errors, items = threading.Lock(), [], list(items)
    def worker(pair):
        try:
            while True:
                with lock:
                    if not items or errors:
                        return
                    item = items.pop(0)
                step(*pair, item)
        except Exception as e:  # the floor failed: say so
            errors.append(repr(e))
    ts = [threading.Thread(target=worker, args=(p,)) for p in pool[:max(1, min(len(pool), len(items)))]]
    for t in ts: t.start()
    for t in ts: t.join()
    if errors:
        sys.exit("floor copy failed: " + errors[0])


def cpu_of(pid):
    """User+sys CPU seconds of a process so far (in clock ticks: 10 ms per process per reading,
    so an image's share can be off by some tens of milliseconds); a process that cannot be read
    fails the floor rather than count as 0."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError) as e:
        sys.exit(f"floor copy failed: reading the CPU of process {pid}: {e}")


PIDS = [p for p in os.environ.get("FLOOR_PIDS", "").split(",") if p]


def registries_cpu():
    return [cpu_of(p) for p in PIDS]


def sha256_cpu(digests):
    """CPU seconds this process takes to sha256 the blobs' files (read included)."""
    t = time.process_time()
    for d in digests:
        h = d.split(":", 1)[1]
        hasher = hashlib.sha256()
        with open(f"{v2}/blobs/sha256/{h[:2]}/{h}/data", "rb") as f:
            while chunk := f.read(1 << 20):
                hasher.update(chunk)
    return time.process_time() - t


def bare():
    pool = [(conn(src), conn(dst)) for _ in range(jobs)]
    where = {}  # blob digest -> destination repository holding it
    moved = {"uploaded": 0, "mounted": 0, "bytes": 0, "manifests": 0}
    count = threading.Lock()
    per_image, uploads = [], []
    start = time.monotonic()
    for repo, tag, top, children, blobs in images:
        t0, c0 = time.monotonic(), registries_cpu()
        uploads.append([d for d in blobs if d not in where])
        drepo = repo
        s, d = pool[0]
        raw = {}
        for m in [top] + children:
            s.request("GET", f"/v2/{repo}/manifests/{m}", headers={"Accept": "*/*"})
            r = s.getresponse()
            raw[m] = (check(r, 200, f"GET manifest {m}"), r.getheader("Content-Type"))
        def blob(s, d, item):
            digest, size = item
            if digest in where:
                d.request("POST", f"/v2/{drepo}/blobs/uploads/?mount={digest}&from={where[digest]}",
                          headers={"Content-Length": "0"})
                check(d.getresponse(), 201, f"mount {digest}")
                with count:
                    moved["mounted"] += 1
            else:
                upload(s, d, repo, drepo, digest, size)
                with count:
                    moved["uploaded"] += 1; moved["bytes"] += size
        parallel(sorted(blobs.items(), key=lambda kv: -kv[1]), blob, pool)
        for digest in blobs:
            where.setdefault(digest, drepo)
        def put(s, d, ref_digest):
            ref, digest = ref_digest
            body, ctype = raw[digest]
            d.request("PUT", f"/v2/{drepo}/manifests/{ref}", body=body, headers={"Content-Type": ctype})
            check(d.getresponse(), 201, f"PUT manifest {drepo}:{ref}")
            with count:
                moved["manifests"] += 1
        parallel([(c, c) for c in children], put, pool)
        put(*pool[0], (tag, top))
        one = {"ref": f"{repo}:{tag}", "seconds": round(time.monotonic() - t0, 4)}
        if PIDS:
            one["registries_cpu"] = round(sum(registries_cpu()) - sum(c0), 3)
        per_image.append(one)
    seconds = time.monotonic() - start
    if PIDS:
        for one, digests in zip(per_image, uploads):
            one["sha256_cpu"] = round(sha256_cpu(digests), 4)
    moved["images"] = per_image
    return seconds, moved


def crit():
    s, d = conn(src), conn(dst)
    seen, total, moved, per_image = set(), 0.0, [], []
    for repo, tag, top, children, blobs in images:
        new = {k: v for k, v in blobs.items() if k not in seen}
        seen |= set(blobs)
        if not new:
            continue
        digest, size = max(new.items(), key=lambda kv: kv[1])
        t = time.monotonic()
        upload(s, d, repo, repo, digest, size)
        took = time.monotonic() - t
        total += took
        moved.append(size)
        per_image.append({"ref": f"{repo}:{tag}", "seconds": round(took, 4)})
    return total, {"blobs": len(moved), "bytes": sum(moved), "images": per_image}


if mode not in ("bare", "crit"):
    sys.exit(f"floor copy: mode {mode!r} is neither bare nor crit")
seconds, moved = bare() if mode == "bare" else crit()
print(json.dumps(dict(moved, seconds=round(seconds, 3))))
