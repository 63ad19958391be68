#!/usr/bin/env python3
"""The floor of `scripts/bench.sh push-serve`: a push target that does no work.
   python3 scripts/null_registry.py PORT
Answers the distribution push API on 127.0.0.1:PORT (plain HTTP) the way a registry does, but
reads and drops every body: no hashing, no file, no sync. It remembers the digests and sizes it
was sent, so HEAD and cross-repository mounts answer as a real target would and skopeo uploads
each blob once, as it does into docker-registry. What skopeo copy costs against it (its own CPU,
the source's, and its own waits) is the floor any target adds to. Not a registry: pulls fail."""
import hashlib, http.server, socketserver, sys, threading, uuid
from urllib.parse import urlsplit, parse_qs

SIZES = {}  # digest -> size of every blob and manifest sent
UPLOADS = {}  # upload id -> bytes received so far
LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self, status, headers=(), body=b"", length=None):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def drain(self, keep=False):
        """Reads the body (Content-Length or chunked); returns it if keep, else its length."""
        out, n = [], 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                n += self.read_exactly(size, out if keep else None)
                self.rfile.readline()
        else:
            n += self.read_exactly(int(self.headers.get("Content-Length") or 0), out if keep else None)
        return b"".join(out) if keep else n

    def read_exactly(self, left, out):
        """Reads `left` body bytes in 1 MiB pieces, appending them to out unless it is None."""
        n = left
        while left:
            b = self.rfile.read(min(left, 1 << 20))
            if not b:
                raise ConnectionError("body cut short")
            left -= len(b)
            if out is not None:
                out.append(b)
        return n

    def route(self):
        u = urlsplit(self.path)
        parts = u.path.strip("/").split("/")
        return u.path, parts, parse_qs(u.query)

    def do_GET(self):
        self.drain()
        path, parts, _ = self.route()
        if path.rstrip("/") == "/v2":
            return self.answer(200, [("Content-Type", "application/json")], b"{}")
        self.answer(404)

    def do_HEAD(self):
        path, parts, _ = self.route()
        if len(parts) >= 4 and parts[-2] in ("blobs", "manifests") and parts[-1] in SIZES:
            return self.answer(200, [("Docker-Content-Digest", parts[-1])], length=SIZES[parts[-1]])
        self.answer(404)

    def do_POST(self):
        self.drain()
        path, parts, q = self.route()
        name = "/".join(parts[1:-2])
        if "mount" in q and q["mount"][0] in SIZES:
            d = q["mount"][0]
            return self.answer(201, [("Location", f"/v2/{name}/blobs/{d}"), ("Docker-Content-Digest", d)])
        if "digest" in q:
            with LOCK:
                SIZES[q["digest"][0]] = int(self.headers.get("Content-Length") or 0)
            return self.answer(201, [("Location", f"/v2/{name}/blobs/{q['digest'][0]}")])
        self.answer(202, [("Location", f"/v2/{name}/blobs/uploads/{uuid.uuid4()}"), ("Range", "0-0")])

    def do_PATCH(self):
        n = self.drain()
        with LOCK:
            n = UPLOADS[parts_id(self.path)] = UPLOADS.get(parts_id(self.path), 0) + n
        self.answer(202, [("Location", self.path.split("?")[0]), ("Range", f"0-{max(n - 1, 0)}")])

    def do_PUT(self):
        path, parts, q = self.route()
        if len(parts) >= 4 and parts[-2] == "manifests":
            body = self.drain(keep=True)
            d = "sha256:" + hashlib.sha256(body).hexdigest()
            with LOCK:
                SIZES[d] = len(body)
            name = "/".join(parts[1:-2])
            return self.answer(201, [("Location", f"/v2/{name}/manifests/{d}"), ("Docker-Content-Digest", d)])
        n = self.drain()
        d = q.get("digest", [""])[0]
        with LOCK:
            SIZES[d] = UPLOADS.pop(parts[-1], 0) + n
        name = "/".join(parts[1:-3])
        self.answer(201, [("Location", f"/v2/{name}/blobs/{d}"), ("Docker-Content-Digest", d)])


def parts_id(path):
    """The upload id that ends an upload's path."""
    return path.split("?")[0].rstrip("/").split("/")[-1]


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
