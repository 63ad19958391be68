#!/usr/bin/env python3
"""Load client for `scripts/bench.sh serve-load` (Python 3.11, stdlib only).

    scripts/loadclient.py --root ROOT --addr HOST:PORT [--clients 64] [--seconds 60] [--pid PID] [--out FILE]
                          [--cacert CA.pem]

With --cacert the connections are HTTPS (HTTP/1.1 by ALPN), trusting that CA; one TLS handshake
per keep-alive connection, as a pulling node makes.

CLIENTS keep-alive HTTP/1.1 connections pull random manifests (by tag or by digest) and blobs
(whole, or a random `Range: bytes=a-b`) that exist in the registry root ROOT on disk, and verify
every body: a whole manifest or blob by the sha256 of its digest, a range by its length and by
the same bytes read from the root's blob file.

Model: asyncio with raw HTTP/1.1 on keep-alive connections (no http.client, no threads), spread
over PROCS worker processes (default 2, one per core of the bench machine) so the client's own
parsing and hashing is not held by one core's GIL; each process runs its share of the
connections and the parent merges their counts and latencies. hashlib releases the GIL on large
buffers, so a blob's hashing overlaps the other connections' I/O.

Latency is from the request's first byte written to the last body byte read (verification
excluded). Requests still in flight at the deadline complete and are counted; requests/s is over
the wall time until the last one ended (successful requests only; errors are counted apart). With --pid, the parent polls /proc/PID/status every
50 ms (VmRSS, RssAnon), reads VmHWM at the end, and reports the CPU seconds the server and the
worker processes used (on a 2-core machine, hashing every body costs the client about a core:
the server/client CPU split shows whether the client was the limit). Prints one JSON result
(to --out or stdout).
"""
import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import resource
import signal
import ssl
import sys
import time

ACCEPT = ",".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])
# Request mix: manifest by tag, manifest by digest, whole blob, blob range.
MIX = (("mtag", 0.2), ("mdigest", 0.2), ("blob", 0.35), ("range", 0.25))
CHUNK = 1 << 18


def read_link(path):
    with open(path) as f:
        return f.read().strip()


def blob_path(root, digest):
    h = digest.split(":", 1)[1]
    return f"{root}/docker/registry/v2/blobs/sha256/{h[:2]}/{h}/data"


def walk_root(root):
    """(tags, manifests, blobs): [(repo, tag, digest)], [(repo, digest)], [(repo, digest, size)]."""
    base = f"{root}/docker/registry/v2/repositories"
    tags, manifests, blobs = [], [], []
    for dirpath, dirnames, _ in os.walk(base):
        if "_manifests" not in dirnames:
            continue
        repo = os.path.relpath(dirpath, base)
        tdir = f"{dirpath}/_manifests/tags"
        for tag in sorted(os.listdir(tdir)) if os.path.isdir(tdir) else []:
            link = f"{tdir}/{tag}/current/link"
            if os.path.isfile(link):
                tags.append((repo, tag, read_link(link)))
        rdir = f"{dirpath}/_manifests/revisions/sha256"
        for h in sorted(os.listdir(rdir)) if os.path.isdir(rdir) else []:
            if os.path.isfile(f"{rdir}/{h}/link"):
                manifests.append((repo, read_link(f"{rdir}/{h}/link")))
        ldir = f"{dirpath}/_layers/sha256"
        for h in sorted(os.listdir(ldir)) if os.path.isdir(ldir) else []:
            if os.path.isfile(f"{ldir}/{h}/link"):
                d = read_link(f"{ldir}/{h}/link")
                blobs.append((repo, d, os.path.getsize(blob_path(root, d))))
        dirnames.remove("_manifests")
        for skip in ("_layers", "_uploads"):
            if skip in dirnames:
                dirnames.remove(skip)
    if not manifests:
        manifests = [(r, d) for r, _, d in tags]
    return tags, manifests, blobs


class Fail(Exception):
    pass


def tls_context(cacert):
    """A client TLS context trusting only CACERT, offering HTTP/1.1 alone (the client speaks no h2)."""
    ctx = ssl.create_default_context(cafile=cacert)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class Conn:
    def __init__(self, host, port, tls=None):
        self.host, self.port, self.tls = host, port, tls
        self.r = self.w = None
        self.nread = 0

    async def open(self):
        extra = {"ssl": self.tls, "server_hostname": self.host} if self.tls else {}
        self.r, self.w = await asyncio.open_connection(self.host, self.port, limit=CHUNK * 2, **extra)

    def close(self):
        if self.w is not None:
            self.w.close()
        self.r = self.w = None

    async def get(self, path, headers, sink):
        """GET path; feeds the body to sink(bytes); returns (status, headers)."""
        if self.w is None:
            await self.open()
        req = f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        req += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.w.write(req.encode())
        await self.w.drain()
        head = await self.r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise Fail(f"bad status line {lines[0]!r}")
        status = int(parts[1])
        hdrs = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        self.nread = 0
        if hdrs.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.r.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while (await self.r.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                await self._read_n(size, sink)
                await self.r.readexactly(2)
        elif "content-length" in hdrs:
            await self._read_n(int(hdrs["content-length"]), sink)
        else:
            raise Fail(f"status {status} without Content-Length or chunked body")
        if hdrs.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0":
            self.close()
        return status, hdrs

    async def _read_n(self, n, sink):
        while n > 0:
            b = await self.r.read(min(n, CHUNK))
            if not b:
                raise Fail(f"connection closed with {n} body bytes missing")
            sink(b)
            n -= len(b)
            self.nread += len(b)


async def client(conn, root, work, deadline, rng, stats, fds):
    tags, manifests, blobs = work
    kinds, weights = zip(*MIX)
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        headers, want_status, want_len, check = {}, 200, None, None
        if kind == "mtag":
            repo, tag, digest = rng.choice(tags)
            path, headers["Accept"] = f"/v2/{repo}/manifests/{tag}", ACCEPT
        elif kind == "mdigest":
            repo, digest = rng.choice(manifests)
            path, headers["Accept"] = f"/v2/{repo}/manifests/{digest}", ACCEPT
        else:
            repo, digest, size = rng.choice(blobs)
            path = f"/v2/{repo}/blobs/{digest}"
            if kind == "range" and size > 1:
                a = rng.randrange(size)
                b = min(size - 1, a + rng.randrange(1, 1 << rng.randrange(1, 22)))
                headers["Range"] = f"bytes={a}-{b}"
                want_status, want_len = 206, b - a + 1
            else:
                kind = "blob"
        h = hashlib.sha256()
        buf = []
        sink = buf.append if want_len is not None else h.update
        t0 = time.monotonic()
        try:
            status, hdrs = await conn.get(path, headers, sink)
            lat = time.monotonic() - t0
            if status != want_status:
                raise Fail(f"{kind} {path} {headers.get('Range', '')}: status {status}, expected {want_status}")
            if want_len is None:
                got = "sha256:" + h.hexdigest()
                if got != digest:
                    raise Fail(f"{kind} {path}: body sha256 {got}")
            else:
                body = b"".join(buf)
                if len(body) != want_len:
                    raise Fail(f"range {path} {headers['Range']}: {len(body)} bytes, expected {want_len}")
                fd = fds.get(digest)
                if fd is None:
                    fd = fds[digest] = os.open(blob_path(root, digest), os.O_RDONLY)
                if body != os.pread(fd, want_len, a):
                    raise Fail(f"range {path} {headers['Range']}: bytes differ from the root's blob file")
                if hdrs.get("content-range", f"bytes {a}-{b}/{size}") != f"bytes {a}-{b}/{size}":
                    raise Fail(f"range {path} {headers['Range']}: Content-Range {hdrs['content-range']!r}")
            stats["lat"].append(lat)
            if kind.startswith("m"):
                stats["mlat"].append(lat)
            stats["ok"][kind] = stats["ok"].get(kind, 0) + 1
            stats["bytes"] += conn.nread
        except Exception as e:  # any failure of one request is counted, and the client goes on
            conn.close()
            msg = str(e) if isinstance(e, Fail) else f"{kind} {path} {headers.get('Range', '')}: {type(e).__name__}: {e}"
            stats["errors"] += 1
            if len(stats["samples"]) < 5:
                stats["samples"].append(msg)
            await asyncio.sleep(0.01)


def worker(args, n, seed, work, t_start, q):
    async def main():
        host, port = args.addr.rsplit(":", 1)
        stats = {"lat": [], "mlat": [], "ok": {}, "errors": 0, "bytes": 0, "samples": []}
        rng = random.Random(seed)
        fds = {}
        tls = tls_context(args.cacert) if args.cacert else None
        conns = [Conn(host, int(port), tls) for _ in range(n)]
        # Wait for the common start, then run until the common deadline.
        await asyncio.sleep(max(0.0, t_start - time.time()))
        deadline = time.monotonic() + args.seconds
        await asyncio.gather(*(client(c, args.root, work, deadline, random.Random(rng.random()), stats, fds) for c in conns))
        stats["end"] = time.time()
        for c in conns:
            c.close()
        for fd in fds.values():
            os.close(fd)
        return stats
    try:
        q.put(asyncio.run(main()))
    except KeyboardInterrupt:
        os._exit(130)  # Ctrl-C: bench.sh reports it, no traceback per process


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon"):
                out[k] = int(v.split()[0]) * 1024
    return out


def cpu_seconds(pid):
    """utime + stime of PID, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True)
    p.add_argument("--addr", required=True)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--pid", type=int)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out")
    p.add_argument("--cacert", help="speak HTTPS, trusting this CA (PEM)")
    args = p.parse_args()
    work = walk_root(args.root)
    if not work[0] or not work[2]:
        sys.exit(f"loadclient: no tags or no blobs under {args.root}")
    procs = max(1, min(args.procs, args.clients))
    t_start = time.time() + 0.5
    srv_cpu0 = cpu_seconds(args.pid) if args.pid else 0.0
    q = multiprocessing.Queue()
    # SIGTERM (bench.sh's clean-up, by PID) ends the parent through sys.exit, whose exit handlers
    # terminate the daemonic workers: nothing of the client outlives it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ps = [multiprocessing.Process(target=worker, daemon=True,
                                  args=(args, args.clients // procs + (i < args.clients % procs), args.seed * 1000 + i, work, t_start, q))
          for i in range(procs)]
    for w in ps:
        w.start()
    peak_rss = peak_anon = 0
    results = []
    while len(results) < procs:
        if args.pid:
            try:
                s = proc_status(args.pid)
                peak_rss, peak_anon = max(peak_rss, s.get("VmRSS", 0)), max(peak_anon, s.get("RssAnon", 0))
            except OSError:
                pass
        try:
            results.append(q.get(timeout=0.05))
        except Exception:
            if not any(w.is_alive() for w in ps) and q.empty():
                sys.exit("loadclient: a worker process died")
    for w in ps:
        w.join()
    # A server that died under load has no /proc entry left (bench.sh reports it).
    try:
        hwm = proc_status(args.pid).get("VmHWM", 0) if args.pid else 0
        srv_cpu = cpu_seconds(args.pid) - srv_cpu0 if args.pid else 0.0
    except OSError:
        hwm, srv_cpu = 0, float("nan")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    lat = sorted(x for r in results for x in r["lat"])
    ok = {}
    for r in results:
        for k, v in r["ok"].items():
            ok[k] = ok.get(k, 0) + v
    errors = sum(r["errors"] for r in results)
    elapsed = max(r["end"] for r in results) - t_start
    mlat = sorted(x for r in results for x in r["mlat"])
    pct = lambda q, xs=lat: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")
    out = {
        "addr": args.addr, "tls": bool(args.cacert), "clients": args.clients, "procs": procs, "seconds": elapsed,
        "requests": len(lat) + errors, "ok": ok, "errors": errors,
        "rps": len(lat) / elapsed, "body_bytes": sum(r["bytes"] for r in results),
        "p50_ms": pct(0.50) * 1000, "p99_ms": pct(0.99) * 1000,
        "manifest_p50_ms": pct(0.50, mlat) * 1000, "manifest_p99_ms": pct(0.99, mlat) * 1000,
        "peak_rss": max(hwm, peak_rss), "peak_rss_polled": peak_rss, "peak_anon_polled": peak_anon,
        "server_cpu": srv_cpu, "client_cpu": ru.ru_utime + ru.ru_stime,
        "error_samples": [s for r in results for s in r["samples"]][:10],
    }
    text = json.dumps(out)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
