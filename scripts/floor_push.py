#!/usr/bin/env python3
"""The floor of `scripts/bench.sh unbundle`: bare parallel monolithic PUTs.
   python3 scripts/floor_push.py ROOT HOST:PORT [JOBS]
Every blob file under ROOT/docker/registry/v2/blobs goes to repository `floor` of the plain-HTTP
registry HOST:PORT as POST + PUT ?digest= (JOBS keep-alive connections, default 6, largest blobs
first), and nothing else: no existence checks, mounts or manifests. One light process, so what it
measures is the target's own cost of taking the bytes (curl per blob spent more CPU spawning than
the registry could spare on 2 cores)."""
import http.client, os, sys, threading
root, addr, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 6
host, port = addr.rsplit(":", 1)
files = []
for d, _, fs in os.walk(os.path.join(root, "docker/registry/v2/blobs")):
    if "data" in fs:
        files.append(os.path.join(d, "data"))
files.sort(key=lambda f: -os.path.getsize(f))  # largest first: the tail is short
lock = threading.Lock(); errors = []
def worker():
    try:
        push_all()
    except Exception as e:  # a refused connection or the like: the floor failed, say so
        errors.append(repr(e))
def push_all():
    c = http.client.HTTPConnection(host, int(port), blocksize=1 << 20)
    while True:
        with lock:
            if not files:
                return
            f = files.pop(0)
        digest = "sha256:" + os.path.basename(os.path.dirname(f))
        c.request("POST", "/v2/floor/blobs/uploads/", headers={"Content-Length": "0"})
        r = c.getresponse(); r.read()
        loc = r.getheader("Location")
        if r.status != 202 or not loc:
            errors.append(f"POST {r.status}"); return
        if loc.startswith("http"):
            loc = "/" + loc.split("/", 3)[3]
        sep = "&" if "?" in loc else "?"
        with open(f, "rb") as body:
            c.request("PUT", f"{loc}{sep}digest={digest}", body=body,
                      headers={"Content-Length": str(os.path.getsize(f)), "Content-Type": "application/octet-stream"})
            r = c.getresponse(); r.read()
        if r.status != 201:
            errors.append(f"PUT {r.status}"); return
ts = [threading.Thread(target=worker) for _ in range(jobs)]
for t in ts: t.start()
for t in ts: t.join()
if errors:
    sys.exit("floor push failed: " + errors[0])
