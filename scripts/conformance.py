#!/usr/bin/env python3
"""The OCI distribution-spec conformance suite (v1.1.x), ported to Python 3 stdlib.

    OCI_ROOT_URL=http://127.0.0.1:5000 OCI_NAMESPACE=conformance/test OCI_TEST_PULL=1 \\
        scripts/conformance.py                     run the enabled workflows
    ... scripts/conformance.py --seed [--images-list FILE]
                                                   push what the Pull and Content Discovery
                                                   setups push, print the pre-seeded settings

Ported from github.com/opencontainers/distribution-spec, directory conformance/, the
ginkgo-v2 suite of the v1.1 line (files read at these commits):
  setup.go                    b5f09ebe541c65857e8721d51a7a3d0e2f1d8749  (content, env variables)
  image.go                    3ec8a56d897bb89d482b41d4aac6ba01519f55f2  (JSON shapes)
  00_conformance_suite_test.go 81bb239e0c8eebab51ad43171bf99fc1a39fea6e (order of the workflows)
  01_pull_test.go             47008ca930b575b3f1cd422414c00d3b0752a7cb
  02_push_test.go             11b8e3fba7d2d7329513d0cff53058243c334858
  03_discovery_test.go        b5f09ebe541c65857e8721d51a7a3d0e2f1d8749
  04_management_test.go       3c7a4ac8186fe1307bac6857bfdb48fc190ed57f
  reporter.go                 4d091a9c78142bd04b54ae3509ade9f7fc621cf5  (OCI_HIDE_SKIPPED_WORKFLOWS)
(the newest version of each file the offline source index holds; that they are byte for byte
the v1.1.1 tag could not be checked here) and the HTTP behaviour of its client,
bloodorangeio/reggie (request.go, response.go, client_test.go), over
go-resty v2 and Go's net/http. The Go suite cannot be built here: Debian bookworm has Go 1.19,
ginkgo 1.16 (not v2), gomega 1.10 and no reggie, and there is no network.

What is kept exactly: the four workflows in the Go order (Pull, Push, Content Discovery, Content
Management), every spec with its It/Specify text and its context, the specs that exist only
under OCI_DELETE_MANIFEST_BEFORE_BLOBS, the generated content (configs with a random author,
one gzip tar layer, manifests with a `data` field and an unknown field, the referrers artifacts
A/B (config- and layer-typed), C (subject never pushed) and the index artifact), every request
(method, path, query, headers) and every assertion with the status codes it accepts, the
headers and bodies it checks, and the order inside a spec (a spec stops at its first failed
expectation; later specs still run, sharing state as the Go closures do). A Go panic (nil
response, index out of range) is a failure here too.

Transport details that change what servers see, kept from Go: a request body goes out with
`Content-Length` of its real size, whatever Content-Length the spec set (reggie hands the bytes
to resty, which gives net/http a sized reader; net/http never sends a caller's Content-Length
header: reggie's client_test.go checks a PUT with SetBody arrives with Content-Length); a
POST/PUT/PATCH without a body sends `Content-Length: 0` (so "PUT request to session URL with
digest" sends 0, not the blob's length it sets); GET and HEAD never send a body (resty drops
it, so the "400 response body" GET carries only its Content-Type); resty copies a JSON-typed
Content-Type into Accept when no Accept is set; `Accept-Encoding: gzip` with transparent
unpacking; redirects are followed as net/http does (301/302/303 become GET, 307/308 repeat
the request); a 401 with a Bearer or Basic challenge is retried once
with OCI_USERNAME/OCI_PASSWORD (OCI_AUTH_SCOPE overrides the token scope); TLS is not verified.

Environment (as upstream): OCI_ROOT_URL, OCI_NAMESPACE, OCI_CROSSMOUNT_NAMESPACE (default
conformance-<uuid>), OCI_USERNAME, OCI_PASSWORD, OCI_AUTH_SCOPE, OCI_TEST_PULL, OCI_TEST_PUSH,
OCI_TEST_CONTENT_DISCOVERY, OCI_TEST_CONTENT_MANAGEMENT (Go ParseBool), OCI_DEBUG (HTTP log, on
stderr here), OCI_HIDE_SKIPPED_WORKFLOWS=1 (no lines for disabled workflows; they still count as
skipped, as in ginkgo's summary), OCI_DELETE_MANIFEST_BEFORE_BLOBS (default true),
OCI_AUTOMATIC_CROSSMOUNT, OCI_REPORT_DIR (junit.xml and report.html there; "none" for no files;
unset = the current directory), OCI_SKIP_EMPTY_LAYER_PUSH_TEST (listed in reports only, as
upstream), and the pre-seeded content: OCI_TAG_NAME + OCI_MANIFEST_DIGEST + OCI_BLOB_DIGEST
(all three: no Pull setup; the two digests replace every generated config/manifest digest, as
upstream does), OCI_TAG_LIST (no Content Discovery setup).

Not upstream (marked as such): OCI_CONTENT_SEED=N makes the generated content reproducible
(the random config authors and the ginkgo seed of the random blobs come from N), so that a run
against pre-seeded content can find the referrers a --seed run pushed; --seed and --images-list.
Upstream, with OCI_MANIFEST_DIGEST set every manifests[i] digest is the same value, so the two
referrers specs that expect 5 and 1 referrers of manifests[4] and manifests[3] cannot both pass;
run Pull (with the three digests) and Content Discovery (with OCI_TAG_LIST only) separately.

Calibration: against Debian's docker-registry 2.8.2 (deletes on) all four workflows give 61
passed, 13 failed, 5 skipped; tests/it/conformance.rs pins the 13 names. Each is a Go assertion
distribution 2.8 does not meet: GET manifests/sha256:totallywrong answers 500 (the tag path
fails the storage driver's path check), not 400/404; PATCH ignores Content-Range (no 416 for an
out-of-order chunk), and a PATCH or GET with a stale upload state answers 404
BLOB_UPLOAD_INVALID, not 416/204; no OCI-Subject header and no referrers API (the References
setup and the 4 referrers specs); tags/list ignores `n` (so `n` and `last` fail); a DELETE by
tag is 400 DIGEST_INVALID, which fails the discovery teardown (it deletes "tagtest0" as a
digest and accepts only 2xx/404/405) and the tag-delete spec (400 must carry UNSUPPORTED).

Output: one line per spec, `PASS|FAIL|SKIP<TAB>Workflow / Context / spec[<TAB>reason]`, then
`N passed, M failed, K skipped`; exit 1 if any spec failed, 2 on bad usage.
"""

import argparse
import base64
import gzip
import hashlib
import html
import http.client
import io
import json
import os
import random
import re
import secrets
import ssl
import sys
import tarfile
import time
import traceback
import urllib.parse
import uuid
import xml.etree.ElementTree as ET

TITLE_PULL = "Pull"
TITLE_PUSH = "Push"
TITLE_DISCOVERY = "Content Discovery"
TITLE_MANAGEMENT = "Content Management"

PULL, PUSH, DISCOVERY, MANAGEMENT = 1, 2, 4, 8
# setup.go's const block continues `pull = 1 << iota` with numWorkflows, so it is 1 << 4 = 16:
# the suite makes 16 configs and 16 manifests (it uses indexes 0 to 4).
NUM_WORKFLOWS = 1 << 4
TEST_MAP = {
    "OCI_TEST_PULL": PULL,
    "OCI_TEST_PUSH": PUSH,
    "OCI_TEST_CONTENT_DISCOVERY": DISCOVERY,
    "OCI_TEST_CONTENT_MANAGEMENT": MANAGEMENT,
}
ERROR_CODES = [
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "MANIFEST_UNVERIFIED",
    "NAME_INVALID", "NAME_UNKNOWN", "SIZE_INVALID", "TAG_INVALID", "UNAUTHORIZED", "DENIED",
    "UNSUPPORTED",
]
# setup.go fills errorCodes by index with the iota values that follow numWorkflows (BLOB_UNKNOWN
# is 5), so the slice starts with five empty strings, and "" is among the accepted codes.
ACCEPTED_ERROR_CODES = [""] * 5 + ERROR_CODES
UNSUPPORTED = "UNSUPPORTED"
EMPTY_LAYER_TEST_TAG = "emptylayer"
TEST_TAG_NAME = "tagtest0"
ARTIFACT_TYPE_FILTER = "artifactType"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
OCTET = "application/octet-stream"
# The OCI empty descriptor's digest (image-spec), which the suite checks its own "{}" against.
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
USER_AGENT = "distribution-spec-conformance-tests"
REPORT_VARS = [
    "OCI_ROOT_URL", "OCI_NAMESPACE", "OCI_USERNAME", "OCI_PASSWORD", "OCI_DEBUG", "OCI_TEST_PULL",
    "OCI_TEST_PUSH", "OCI_TEST_CONTENT_DISCOVERY", "OCI_TEST_CONTENT_MANAGEMENT",
    "OCI_SKIP_EMPTY_LAYER_PUSH_TEST", "OCI_BLOB_DIGEST", "OCI_MANIFEST_DIGEST", "OCI_TAG_NAME",
    "OCI_TAG_LIST", "OCI_HIDE_SKIPPED_WORKFLOWS", "OCI_AUTH_SCOPE", "OCI_CROSSMOUNT_NAMESPACE",
]


# ---------------------------------------------------------------- ginkgo/gomega, minimally


class Failed(Exception):
    """An expectation failed: the spec fails and stops (gomega's Expect)."""


class Skipped(Exception):
    """The spec skips itself (ginkgo's Skip)."""


def expect(ok, message):
    if not ok:
        raise Failed(message)


def go_index(items, i):
    """items[i] with Go's bounds check (Python's negative indexes would hide a Go panic)."""
    if i < 0 or i >= len(items):
        raise Failed(f"panic: runtime error: index out of range [{i}] with length {len(items)}")
    return items[i]


def parse_bool(value):
    """Go's strconv.ParseBool: (value, ok)."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True, True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False, True
    return False, False


# ---------------------------------------------------------------- the HTTP client (reggie)


class Response:
    """What reggie's Response offers the specs."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # list of (name, value)
        self.body = body

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return ""

    def relative_location(self):
        """reggie GetRelativeLocation: the Location's path (decoded) plus its raw query."""
        loc = self.header("Location")
        try:
            u = urllib.parse.urlsplit(loc)
        except ValueError:
            return ""
        path = urllib.parse.unquote(u.path)
        if u.query:
            path += "?" + u.query
        return path

    def absolute_location(self):
        return self.header("Location")

    def errors(self):
        """reggie Errors: the body's `errors` array; raises on a body that is not one."""
        try:
            doc = json.loads(self.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise Failed(f"error body is not JSON: {e}: {self.body[:200]!r}")
        if doc is None:
            return []
        if not isinstance(doc, dict):
            raise Failed(f"error body is not a JSON object: {self.body[:200]!r}")
        errs = doc.get("errors")
        if errs is None:
            return []
        if not isinstance(errs, list) or not all(isinstance(e, dict) for e in errs):
            raise Failed(f"`errors` is not an array of objects: {self.body[:200]!r}")
        for e in errs:
            if not isinstance(e.get("code", ""), str):
                raise Failed(f"an error code is not a string: {self.body[:200]!r}")
        return errs


class Request:
    """A request being built, as reggie/resty build one."""

    def __init__(self, method, url):
        self.method = method
        self.url = url
        self.headers = {}
        self.query = []
        self.body = None

    def set_header(self, name, value):
        self.headers[name] = value
        return self

    def set_query(self, name, value):
        self.query = [(k, v) for k, v in self.query if k != name] + [(name, value)]
        return self

    def set_body(self, body):
        self.body = body
        return self


class Client:
    """reggie.Client over net/http, as the suite configures it."""

    def __init__(self, root_url, namespace, username, password, auth_scope, debug):
        self.address = root_url.rstrip("/")
        self.default_name = namespace
        self.username = username
        self.password = password
        self.auth_scope = auth_scope
        self.debug = debug
        self.pushed_manifests = []  # (name, reference) of each 2xx manifest PUT, for --seed

    def new_request(self, method, path, name="", reference="", digest=""):
        namespace = name or self.default_name
        for key, value in (("<name>", namespace), ("<reference>", reference),
                           ("<digest>", digest)):
            if value:
                path = path.replace(key, value)
        path = path[1:] if path.startswith("/") else path
        return Request(method, f"{self.address}/{path}")

    def do(self, req):
        """Sends a request: (response, None) or (None, error text), as client.Do."""
        if re.search(r"<name>|<reference>|<digest>|<session_id>|//{2,}", req.url):
            return None, "request is invalid"
        try:
            url = self._url(req)
            resp = self._send(req.method, url, req.headers, req.body)
            if resp.status == 401:
                auth = self._authorization(resp)
                if auth:
                    headers = dict(req.headers, Authorization=auth)
                    resp = self._send(req.method, url, headers, req.body)
        except (OSError, http.client.HTTPException, ValueError) as e:
            return None, f"{req.method} {req.url}: {e}"
        if req.method == "PUT" and "/manifests/" in req.url and 200 <= resp.status < 300:
            path = urllib.parse.urlsplit(req.url).path
            name, _, ref = path[len("/v2/"):].rpartition("/manifests/")
            self.pushed_manifests.append((name, ref))
        return resp, None

    def _url(self, req):
        if not req.query:
            return req.url
        u = urllib.parse.urlsplit(req.url)
        # resty: the URL's own query first, then its parameters, encoded and sorted by key.
        extra = urllib.parse.urlencode(sorted(req.query))
        query = f"{u.query}&{extra}" if u.query else extra
        return urllib.parse.urlunsplit((u.scheme, u.netloc, u.path, query, u.fragment))

    def _send(self, method, url, headers, body):
        """One request with net/http's redirect policy: 301/302/303 turn into a GET (HEAD
        stays HEAD) without the body; 307/308 repeat method and body (resty's sized body can
        be replayed); Authorization is dropped when the host changes; at most 10 redirects."""
        for _ in range(11):
            resp = self._send_once(method, url, headers, body)
            if resp.status in (301, 302, 303, 307, 308) and resp.header("Location"):
                if resp.status in (301, 302, 303):
                    body = None
                    if method not in ("GET", "HEAD"):
                        method = "GET"
                target = urllib.parse.urljoin(url, resp.header("Location"))
                if urllib.parse.urlsplit(target).netloc != urllib.parse.urlsplit(url).netloc:
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                url = target
                continue
            return resp
        raise ValueError("stopped after 10 redirects")

    def _send_once(self, method, url, headers, body):
        u = urllib.parse.urlsplit(url)
        if u.scheme == "https":
            conn = http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=60,
                                               context=ssl._create_unverified_context())
        elif u.scheme == "http":
            conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=60)
        else:
            raise ValueError(f"unsupported protocol scheme {u.scheme!r}")
        target = u.path or "/"
        if u.query:
            target += "?" + u.query
        send = {"User-Agent": USER_AGENT}
        for k, v in headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "host", "user-agent"):
                send[k] = v
        ct = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        if not any(k.lower() == "accept" for k in headers) and ct and re.search(
                r"(?i)(application|text)/(json|.*\+json|json-.*)(;|$)", ct):
            send["Accept"] = ct
        if method in ("GET", "HEAD", "OPTIONS"):
            body = None
        # net/http asks for gzip itself (unless the caller did) and unpacks it transparently.
        gzip_asked = not any(k.lower() == "accept-encoding" for k in send)
        if gzip_asked:
            send["Accept-Encoding"] = "gzip"
        try:
            # http.client sends Content-Length: len(body), and 0 for a POST/PUT/PATCH without one.
            conn.request(method, target, body=body or None, headers=send)
            r = conn.getresponse()
            data = r.read()
            got = r.getheaders()
            if gzip_asked and r.getheader("Content-Encoding", "").lower() == "gzip" and data:
                data = gzip.decompress(data)
                got = [(k, v) for k, v in got
                       if k.lower() not in ("content-encoding", "content-length")]
            resp = Response(r.status, got, data)
        finally:
            conn.close()
        if self.debug:
            log = [f"--> {method} {url}"] + [f"    {k}: {v}" for k, v in send.items()]
            if body or method in ("POST", "PUT", "PATCH"):
                log.append(f"    Content-Length: {len(body or b'')}")
            log += [f"<-- {resp.status}"] + [f"    {k}: {v}" for k, v in resp.headers]
            if data:
                log.append("    " + data[:1024].decode("utf-8", "replace"))
            print(redact("\n".join(log)), file=sys.stderr)
        return resp

    def _authorization(self, resp):
        challenge = resp.header("WWW-Authenticate")
        scheme = challenge.split(" ", 1)[0].lower()
        basic = "Basic " + base64.b64encode(
            f"{self.username}:{self.password}".encode()).decode()
        if scheme == "basic":
            return basic
        if scheme != "bearer":
            return None
        params = dict(re.findall(r'([a-zA-Z]+)="(.*?)"', challenge))
        query = {"service": params.get("service", ""),
                 "scope": self.auth_scope or params.get("scope", "")}
        realm = params.get("realm", "")
        if not realm:
            return None
        sep = "&" if "?" in realm else "?"
        url = realm + sep + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        if self.username or self.password:
            headers["Authorization"] = basic
        tok = self._send("GET", url, headers, None)
        try:
            doc = json.loads(tok.body)
        except ValueError:
            return None
        token = doc.get("token") or doc.get("access_token")
        return f"Bearer {token}" if token else None


def redact(text):
    return re.sub(r'(?i)("?\w*(authorization|token|state)\w*"?(:|=)\s*)(")?\s*((bearer|basic)? )?'
                  r'[^\s&"]*(")?', lambda m: f"{m.group(1)}{m.group(4) or ''}"
                  f"{m.group(5) or ''}*****{m.group(7) or ''}", text)


# ---------------------------------------------------------------- the suite's content


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def go_json(value):
    """Go's json.MarshalIndent(v, "", "\\t") for the suite's values."""
    return json.dumps(value, indent="\t", separators=(",", ": ")).encode()


def b64(data):
    return base64.b64encode(data).decode()


def descriptor(media_type, digest, size, annotations=None, data=None, unspecified=None):
    """image.go's descriptor: omitempty fields left out, newUnspecifiedField always present."""
    d = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        d["annotations"] = dict(sorted(annotations.items()))
    if data:
        d["data"] = b64(data)
    d["newUnspecifiedField"] = None if unspecified is None else b64(unspecified)
    return d


def manifest(config, layers, media_type="", artifact_type="", subject=None, annotations=None):
    m = {"schemaVersion": 2}
    if media_type:
        m["mediaType"] = media_type
    if artifact_type:
        m["artifactType"] = artifact_type
    m["config"] = config
    m["layers"] = layers
    if subject is not None:
        m["subject"] = subject
    if annotations:
        m["annotations"] = dict(sorted(annotations.items()))
    return m


def test_layer():
    """The suite's layer: `tar czvf test.tar.gz test.txt` of one line (setup.go says how it was
    made; upstream embeds the bytes, here they are made the same way, deterministically)."""
    text = b"you bothered to find out what was in here. Congratulations!\n"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("test.txt")
        info.size, info.mode, info.mtime = len(text), 0o644, 0
        tar.addfile(info, io.BytesIO(text))
    return gzip.compress(raw.getvalue(), mtime=0)


class Blob:
    def __init__(self, content, digest=None):
        self.content = content
        self.length = str(len(content))
        self.digest = digest or sha256(content)


class Content:
    """Everything setup.go's init() makes."""

    def __init__(self, env):
        seed_text = env.get("OCI_CONTENT_SEED", "")
        if seed_text:
            self.seed = int(seed_text)
            rng = random.Random(self.seed)
            self.random_string = lambda n: "".join(rng.choice(LETTERS) for _ in range(n))
        else:
            self.seed = int(time.time())  # ginkgo's default random seed
            self.random_string = lambda n: "".join(secrets.choice(LETTERS) for _ in range(n))
        blob_digest = env.get("OCI_BLOB_DIGEST", "")
        manifest_digest = env.get("OCI_MANIFEST_DIGEST", "")

        self.configs = []
        for _ in range(NUM_WORKFLOWS):
            config = {"author": self.random_string(16), "architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": []}}
            content = go_json(config)
            self.configs.append(Blob(content, blob_digest or None))

        self.layer = Blob(test_layer())
        layers = [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", self.layer.digest,
                             len(self.layer.content))]
        self.manifests = []
        for c in self.configs:
            m = manifest(descriptor(MT_CONFIG, c.digest, len(c.content), data=c.content,
                                    unspecified=b"hello world"), layers, media_type=MT_MANIFEST)
            self.manifests.append(Blob(go_json(m), manifest_digest or None))

        c1 = self.configs[1]
        self.empty_layer_manifest = Blob(go_json(manifest(
            descriptor(MT_CONFIG, c1.digest, len(c1.content), data=c1.content,
                       unspecified=b"hello world"), [])))
        self.nonexistent_manifest = ".INVALID_MANIFEST_NAME"
        self.invalid_manifest = b"blablabla"

        self.blob_a = Blob(random.Random(self.seed + 1).randbytes(42))
        self.setup_chunked_blob(42)

        self.empty_json = b"{}"
        empty = descriptor("application/vnd.oci.empty.v1+json", sha256(self.empty_json), 2)
        self.empty_json_digest = empty["digest"]
        self.ref_blob_a = Blob(b"NHL Peanut Butter on my NHL bagel")
        self.ref_type_a = "application/vnd.nhl.peanut.butter.bagel"
        self.ref_blob_b = Blob(b"NBA Strawberry Jam on my NBA croissant")
        self.ref_type_b = "application/vnd.nba.strawberry.jam.croissant"
        self.annotation_key = "org.opencontainers.conformance.test"
        self.annotation_values = {}

        m4, m3 = self.manifests[4].content, self.manifests[3].content
        subject4 = descriptor(MT_MANIFEST, sha256(m4), len(m4))
        subject3 = descriptor(MT_MANIFEST, sha256(m3), len(m3))
        ra, rb = self.ref_blob_a, self.ref_blob_b

        def artifact(m, note=None):
            blob = Blob(go_json(m))
            if note is not None:
                self.annotation_values[blob.digest] = note
            return blob

        self.refs_a_config = artifact(manifest(
            descriptor(self.ref_type_a, ra.digest, len(ra.content)), [empty],
            media_type=MT_MANIFEST, subject=subject4,
            annotations={self.annotation_key: "test config a"}), "test config a")
        self.refs_b_config = artifact(manifest(
            descriptor(self.ref_type_b, rb.digest, len(rb.content)), [empty],
            media_type=MT_MANIFEST, subject=subject4,
            annotations={self.annotation_key: "test config b"}), "test config b")
        self.refs_a_layer = artifact(manifest(
            empty, [descriptor(self.ref_type_a, ra.digest, len(ra.content))],
            media_type=MT_MANIFEST, artifact_type=self.ref_type_a, subject=subject4,
            annotations={self.annotation_key: "test layer a"}), "test layer a")
        self.refs_b_layer = artifact(manifest(
            empty, [descriptor(self.ref_type_b, rb.digest, len(rb.content))],
            media_type=MT_MANIFEST, artifact_type=self.ref_type_b, subject=subject4,
            annotations={self.annotation_key: "test layer b"}), "test layer b")
        self.refs_c_layer = artifact(manifest(
            empty, [descriptor(self.ref_type_b, rb.digest, len(rb.content))],
            media_type=MT_MANIFEST, artifact_type=self.ref_type_b, subject=subject3))
        self.ref_type_index = "application/vnd.food.stand"
        index = {"schemaVersion": 2, "mediaType": MT_INDEX, "artifactType": self.ref_type_index,
                 "manifests": [
                     descriptor(MT_MANIFEST, self.refs_a_config.digest,
                                len(self.refs_a_config.content)),
                     descriptor(MT_MANIFEST, self.refs_a_layer.digest,
                                len(self.refs_a_layer.content))],
                 "subject": subject4,
                 "annotations": {self.annotation_key: "test index"}}
        self.refs_index = artifact(index, "test index")
        self.dummy_digest = sha256(b"hello world")

    def setup_chunked_blob(self, size):
        blob = random.Random(self.seed + 2).randbytes(size)
        self.blob_b = Blob(blob)
        half = size // 2 + 1
        self.chunk1, self.chunk2 = blob[:half], blob[half:]
        self.chunk1_length, self.chunk2_length = str(len(self.chunk1)), str(len(self.chunk2))
        self.chunk1_range = f"0-{len(self.chunk1) - 1}"
        self.chunk2_range = f"{len(self.chunk1)}-{len(blob) - 1}"


LETTERS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-"


# ---------------------------------------------------------------- the specs


class Suite:
    """The specs in definition order, and the settings setup.go reads."""

    def __init__(self, env):
        self.env = env
        self.tests_to_run = 0
        for var, bit in TEST_MAP.items():
            if parse_bool(env.get(var, ""))[0]:
                self.tests_to_run |= bit
        self.client = Client(env.get("OCI_ROOT_URL", ""), env.get("OCI_NAMESPACE", ""),
                             env.get("OCI_USERNAME", ""), env.get("OCI_PASSWORD", ""),
                             env.get("OCI_AUTH_SCOPE", ""), parse_bool(env.get("OCI_DEBUG", ""))[0])
        self.crossmount_namespace = (env.get("OCI_CROSSMOUNT_NAMESPACE", "")
                                     or f"conformance-{uuid.uuid4()}")
        self.c = Content(env)
        self.run_pull_setup = not (env.get("OCI_TAG_NAME") and env.get("OCI_MANIFEST_DIGEST")
                                   and env.get("OCI_BLOB_DIGEST"))
        self.run_push_setup = True
        self.run_discovery_setup = not env.get("OCI_TAG_LIST")
        self.run_management_setup = True
        self.delete_manifest_before_blobs = True
        if "OCI_DELETE_MANIFEST_BEFORE_BLOBS" in env:
            self.delete_manifest_before_blobs = parse_bool(
                env["OCI_DELETE_MANIFEST_BEFORE_BLOBS"])[0]
        self.run_automatic_crossmount = "OCI_AUTOMATIC_CROSSMOUNT" in env
        self.automatic_crossmount = parse_bool(env.get("OCI_AUTOMATIC_CROSSMOUNT", ""))[0]
        self.specs = []
        pull_specs(self)
        push_specs(self)
        discovery_specs(self)
        management_specs(self)

    def spec(self, workflow, context, name):
        def add(fn):
            self.specs.append((workflow, context, name, fn))
            return fn
        return add

    def skip_if_disabled(self, bit):
        if not self.tests_to_run & bit:
            raise Skipped("workflow disabled: " + " ".join(
                f"{k}={self.env.get(k, '')}" for k in TEST_MAP))

    def disabled(self, bit):
        return not self.tests_to_run & bit


def run_only_if(v):
    if not v:
        raise Skipped("you have skipped this test.")


def run_only_if_not(v):
    if v:
        raise Skipped("you have skipped this test.")


def ok(resp, err):
    """Expect(err).To(BeNil()) after client.Do; the response for what follows."""
    expect(err is None, f"Expected <error>: {err} to be nil")
    return resp


def status_in(resp, *codes, ranges=()):
    s = resp.status
    good = s in codes or any(lo <= s < hi for lo, hi in ranges)
    want = " or ".join([str(c) for c in codes] + [f"[{lo},{hi})" for lo, hi in ranges])
    expect(good, f"status {s}, expected {want}; body: {resp.body[:300]!r}")


TWO_XX = ((200, 300),)


def upload_blob(s, blob_digest, length, content):
    """POST an upload, then PUT the whole blob to its Location (the suite's setup idiom)."""
    cl = s.client
    resp = ok(*cl.do(cl.new_request("POST", "/v2/<name>/blobs/uploads/")))
    req = (cl.new_request("PUT", resp.relative_location()).set_query("digest", blob_digest)
           .set_header("Content-Type", OCTET).set_header("Content-Length", length)
           .set_body(content))
    resp = ok(*cl.do(req))
    status_in(resp, ranges=TWO_XX)


def put_manifest(s, reference, content, media_type=MT_MANIFEST):
    cl = s.client
    req = (cl.new_request("PUT", "/v2/<name>/manifests/<reference>", reference=reference)
           .set_header("Content-Type", media_type).set_body(content))
    return ok(*cl.do(req))


def delete_expect(s, path, accept, digest="", reference=""):
    cl = s.client
    resp = ok(*cl.do(cl.new_request("DELETE", path, digest=digest, reference=reference)))
    status_in(resp, *accept, ranges=TWO_XX)


def pull_specs(s):
    c, cl = s.c, s.client
    state = {"tag": ""}
    W = TITLE_PULL

    def populate_blob(blob):
        def fn():
            s.skip_if_disabled(PULL)
            run_only_if(s.run_pull_setup)
            upload_blob(s, blob.digest, blob.length, blob.content)
        return fn

    s.spec(W, "Setup", "Populate registry with test blob")(populate_blob(c.configs[0]))
    s.spec(W, "Setup", "Populate registry with test blob")(populate_blob(c.configs[1]))
    s.spec(W, "Setup", "Populate registry with test layer")(populate_blob(c.layer))

    @s.spec(W, "Setup", "Populate registry with test manifest")
    def _():
        s.skip_if_disabled(PULL)
        run_only_if(s.run_pull_setup)
        state["tag"] = TEST_TAG_NAME
        status_in(put_manifest(s, state["tag"], c.manifests[0].content), ranges=TWO_XX)

    @s.spec(W, "Setup", "Populate registry with test manifest")
    def _():
        s.skip_if_disabled(PULL)
        run_only_if(s.run_pull_setup)
        status_in(put_manifest(s, c.manifests[1].digest, c.manifests[1].content), ranges=TWO_XX)

    @s.spec(W, "Setup", "Get tag name from environment")
    def _():
        s.skip_if_disabled(PULL)
        run_only_if_not(s.run_pull_setup)
        if s.env.get("OCI_TAG_NAME"):
            state["tag"] = s.env["OCI_TAG_NAME"]

    def get(method, path, accept_manifest=False, **kw):
        req = cl.new_request(method, path, **kw)
        if accept_manifest:
            req.set_header("Accept", MT_MANIFEST)
        return ok(*cl.do(req))

    @s.spec(W, "Pull blobs", "HEAD request to nonexistent blob should result in 404 response")
    def _():
        s.skip_if_disabled(PULL)
        status_in(get("HEAD", "/v2/<name>/blobs/<digest>", digest=c.dummy_digest), 404)

    @s.spec(W, "Pull blobs", "HEAD request to existing blob should yield 200")
    def _():
        s.skip_if_disabled(PULL)
        resp = get("HEAD", "/v2/<name>/blobs/<digest>", digest=c.configs[0].digest)
        status_in(resp, 200)
        h = resp.header("Docker-Content-Digest")
        if h:
            expect(h == c.configs[0].digest, f"Docker-Content-Digest {h} != {c.configs[0].digest}")

    @s.spec(W, "Pull blobs", "GET nonexistent blob should result in 404 response")
    def _():
        s.skip_if_disabled(PULL)
        status_in(get("GET", "/v2/<name>/blobs/<digest>", digest=c.dummy_digest), 404)

    @s.spec(W, "Pull blobs", "GET request to existing blob URL should yield 200")
    def _():
        s.skip_if_disabled(PULL)
        status_in(get("GET", "/v2/<name>/blobs/<digest>", digest=c.configs[0].digest), 200)

    @s.spec(W, "Pull manifests", "HEAD request to nonexistent manifest should return 404")
    def _():
        s.skip_if_disabled(PULL)
        resp = get("HEAD", "/v2/<name>/manifests/<reference>", reference=c.nonexistent_manifest)
        status_in(resp, 404)

    def head_manifest_digest(i):
        def fn():
            s.skip_if_disabled(PULL)
            resp = get("HEAD", "/v2/<name>/manifests/<digest>", True,
                       digest=c.manifests[i].digest)
            status_in(resp, 200)
            h = resp.header("Docker-Content-Digest")
            if h:
                expect(h == c.manifests[i].digest,
                       f"Docker-Content-Digest {h} != {c.manifests[i].digest}")
        return fn

    s.spec(W, "Pull manifests", "HEAD request to manifest[0] path (digest) should yield 200 "
           "response")(head_manifest_digest(0))
    s.spec(W, "Pull manifests", "HEAD request to manifest[1] path (digest) should yield 200 "
           "response")(head_manifest_digest(1))

    @s.spec(W, "Pull manifests", "HEAD request to manifest path (tag) should yield 200 response")
    def _():
        s.skip_if_disabled(PULL)
        expect(state["tag"] != "", "Expected tag not to be empty")
        resp = get("HEAD", "/v2/<name>/manifests/<reference>", True, reference=state["tag"])
        status_in(resp, 200)
        h = resp.header("Docker-Content-Digest")
        if h:
            expect(h == c.manifests[0].digest, f"Docker-Content-Digest {h} != "
                   f"{c.manifests[0].digest}")

    @s.spec(W, "Pull manifests", "GET nonexistent manifest should return 404")
    def _():
        s.skip_if_disabled(PULL)
        resp = get("GET", "/v2/<name>/manifests/<reference>", reference=c.nonexistent_manifest)
        status_in(resp, 404)

    def get_manifest_digest(i):
        def fn():
            s.skip_if_disabled(PULL)
            status_in(get("GET", "/v2/<name>/manifests/<digest>", True,
                          digest=c.manifests[i].digest), 200)
        return fn

    s.spec(W, "Pull manifests", "GET request to manifest[0] path (digest) should yield 200 "
           "response")(get_manifest_digest(0))
    s.spec(W, "Pull manifests", "GET request to manifest[1] path (digest) should yield 200 "
           "response")(get_manifest_digest(1))

    @s.spec(W, "Pull manifests", "GET request to manifest path (tag) should yield 200 response")
    def _():
        s.skip_if_disabled(PULL)
        expect(state["tag"] != "", "Expected tag not to be empty")
        status_in(get("GET", "/v2/<name>/manifests/<reference>", True, reference=state["tag"]),
                  200)

    @s.spec(W, "Error codes", "400 response body should contain OCI-conforming JSON message")
    def _():
        s.skip_if_disabled(PULL)
        req = (cl.new_request("GET", "/v2/<name>/manifests/<reference>",
                              reference="sha256:totallywrong")
               .set_header("Content-Type", MT_MANIFEST).set_body(c.invalid_manifest))
        resp = ok(*cl.do(req))
        status_in(resp, 400, 404)
        if resp.status == 400:
            errs = resp.errors()
            expect(errs, "Expected error responses not to be empty")
            code = errs[0].get("code", "")
            expect(code in ACCEPTED_ERROR_CODES,
                   f"error code {code!r} is not one of the spec's codes")

    def delete_manifest(i):
        def fn():
            s.skip_if_disabled(PULL)
            run_only_if(s.run_pull_setup)
            delete_expect(s, "/v2/<name>/manifests/<digest>", (405,),
                          digest=c.manifests[i].digest)
        return fn

    def delete_blob(blob):
        def fn():
            s.skip_if_disabled(PULL)
            run_only_if(s.run_pull_setup)
            delete_expect(s, "/v2/<name>/blobs/<digest>", (404, 405), digest=blob.digest)
        return fn

    def manifest_deletes():
        s.spec(W, "Teardown", "Delete manifest[0] created in setup")(delete_manifest(0))
        s.spec(W, "Teardown", "Delete manifest[1] created in setup")(delete_manifest(1))

    if s.delete_manifest_before_blobs:
        manifest_deletes()
    s.spec(W, "Teardown", "Delete config[0] blob created in setup")(delete_blob(c.configs[0]))
    s.spec(W, "Teardown", "Delete config[1] blob created in setup")(delete_blob(c.configs[1]))
    s.spec(W, "Teardown", "Delete layer blob created in setup")(delete_blob(c.layer))
    if not s.delete_manifest_before_blobs:
        manifest_deletes()


def push_specs(s):
    c, cl = s.c, s.client
    st = {"last": None, "prev": None, "empty_ref": ""}
    W = TITLE_PUSH

    def last():
        if st["last"] is None:
            raise Failed("panic: runtime error: invalid memory address or nil pointer "
                         "dereference (no earlier response)")
        return st["last"]

    @s.spec(W, "Blob Upload Streamed", "PATCH request with blob in body should yield 202 response")
    def _():
        s.skip_if_disabled(PUSH)
        resp = ok(*cl.do(cl.new_request("POST", "/v2/<name>/blobs/uploads/")))
        expect(resp.header("Location") != "", "Expected Location not to be empty")
        req = (cl.new_request("PATCH", resp.relative_location())
               .set_header("Content-Type", OCTET).set_body(c.blob_a.content))
        resp = ok(*cl.do(req))
        status_in(resp, 202)
        st["last"] = resp

    @s.spec(W, "Blob Upload Streamed", "PUT request to session URL with digest should yield 201 "
            "response")
    def _():
        s.skip_if_disabled(PUSH)
        expect(st["last"] is not None, "Expected lastResponse not to be nil")
        req = (cl.new_request("PUT", last().relative_location())
               .set_query("digest", c.blob_a.digest).set_header("Content-Type", OCTET)
               .set_header("Content-Length", c.blob_a.length))
        resp = ok(*cl.do(req))
        status_in(resp, 201)
        expect(resp.header("Location") != "", "Expected Location not to be empty")

    M = "Blob Upload Monolithic"

    @s.spec(W, M, "GET nonexistent blob should result in 404 response")
    def _():
        s.skip_if_disabled(PUSH)
        resp = ok(*cl.do(cl.new_request("GET", "/v2/<name>/blobs/<digest>",
                                        digest=c.dummy_digest)))
        status_in(resp, 404)

    @s.spec(W, M, "POST request with digest and blob should yield a 201 or 202")
    def _():
        s.skip_if_disabled(PUSH)
        cfg = c.configs[1]
        req = (cl.new_request("POST", "/v2/<name>/blobs/uploads/")
               .set_header("Content-Length", cfg.length).set_header("Content-Type", OCTET)
               .set_query("digest", cfg.digest).set_body(cfg.content))
        resp = ok(*cl.do(req))
        expect(resp.header("Location") != "", "Expected Location not to be empty")
        status_in(resp, 201, 202)
        st["last"] = resp

    @s.spec(W, M, "GET request to blob URL from prior request should yield 200 or 404 based on "
            "response code")
    def _():
        s.skip_if_disabled(PUSH)
        expect(st["last"] is not None, "Expected lastResponse not to be nil")
        resp = ok(*cl.do(cl.new_request("GET", "/v2/<name>/blobs/<digest>",
                                        digest=c.configs[1].digest)))
        if last().status == 202:
            status_in(resp, 404)
        else:
            status_in(resp, 200)

    @s.spec(W, M, "POST request should yield a session ID")
    def _():
        s.skip_if_disabled(PUSH)
        resp = ok(*cl.do(cl.new_request("POST", "/v2/<name>/blobs/uploads/")))
        status_in(resp, 202)
        st["last"] = resp

    @s.spec(W, M, "PUT upload of a blob should yield a 201 Response")
    def _():
        s.skip_if_disabled(PUSH)
        cfg = c.configs[1]
        req = (cl.new_request("PUT", last().relative_location())
               .set_header("Content-Length", cfg.length).set_header("Content-Type", OCTET)
               .set_query("digest", cfg.digest).set_body(cfg.content))
        resp = ok(*cl.do(req))
        expect(resp.header("Location") != "", "Expected Location not to be empty")
        status_in(resp, 201)

    @s.spec(W, M, "GET request to existing blob should yield 200 response")
    def _():
        s.skip_if_disabled(PUSH)
        resp = ok(*cl.do(cl.new_request("GET", "/v2/<name>/blobs/<digest>",
                                        digest=c.configs[1].digest)))
        status_in(resp, 200)

    @s.spec(W, M, "PUT upload of a layer blob should yield a 201 Response")
    def _():
        s.skip_if_disabled(PUSH)
        resp = ok(*cl.do(cl.new_request("POST", "/v2/<name>/blobs/uploads/")))
        req = (cl.new_request("PUT", resp.relative_location())
               .set_header("Content-Length", c.layer.length).set_header("Content-Type", OCTET)
               .set_query("digest", c.layer.digest).set_body(c.layer.content))
        resp = ok(*cl.do(req))
        expect(resp.header("Location") != "", "Expected Location not to be empty")
        status_in(resp, 201)

    @s.spec(W, M, "GET request to existing layer should yield 200 response")
    def _():
        s.skip_if_disabled(PUSH)
        resp = ok(*cl.do(cl.new_request("GET", "/v2/<name>/blobs/<digest>",
                                        digest=c.layer.digest)))
        status_in(resp, 200)

    C = "Blob Upload Chunked"

    def patch(location, length, rng, body):
        req = (cl.new_request("PATCH", location).set_header("Content-Type", OCTET)
               .set_header("Content-Length", length).set_header("Content-Range", rng)
               .set_body(body))
        return ok(*cl.do(req))

    @s.spec(W, C, "Out-of-order blob upload should return 416")
    def _():
        s.skip_if_disabled(PUSH)
        req = cl.new_request("POST", "/v2/<name>/blobs/uploads/").set_header("Content-Length", "0")
        resp = ok(*cl.do(req))
        expect(resp.header("Location") != "", "Expected Location not to be empty")
        min_size = resp.header("OCI-Chunk-Min-Length")
        if min_size:
            try:
                n = int(min_size)
            except ValueError as e:
                raise Failed(f"OCI-Chunk-Min-Length {min_size!r}: {e}")
            if n > len(c.chunk1):
                c.setup_chunked_blob(n * 2 - 2)
        resp = patch(resp.relative_location(), c.chunk2_length, c.chunk2_range, c.chunk2)
        status_in(resp, 416)

    @s.spec(W, C, "PATCH request with first chunk should return 202")
    def _():
        s.skip_if_disabled(PUSH)
        req = cl.new_request("POST", "/v2/<name>/blobs/uploads/").set_header("Content-Length", "0")
        resp = ok(*cl.do(req))
        expect(resp.header("Location") != "", "Expected Location not to be empty")
        st["prev"] = resp
        resp = patch(resp.relative_location(), c.chunk1_length, c.chunk1_range, c.chunk1)
        status_in(resp, 202)
        expect(resp.header("Range") == c.chunk1_range,
               f"Range {resp.header('Range')!r} != {c.chunk1_range!r}")
        st["last"] = resp

    def prev():
        if st["prev"] is None:
            raise Failed("panic: runtime error: invalid memory address or nil pointer "
                         "dereference (no upload session)")
        return st["prev"]

    @s.spec(W, C, "Retry previous blob chunk should return 416")
    def _():
        s.skip_if_disabled(PUSH)
        resp = patch(prev().relative_location(), c.chunk1_length, c.chunk1_range, c.chunk1)
        status_in(resp, 416)

    @s.spec(W, C, "Get on stale blob upload should return 204 with a range and location")
    def _():
        s.skip_if_disabled(PUSH)
        resp = ok(*cl.do(cl.new_request("GET", prev().relative_location())))
        status_in(resp, 204)
        expect(resp.header("Location") != "", "Expected Location not to be empty")
        expect(resp.header("Range") == c.chunk1_range,
               f"Range {resp.header('Range')!r} != {c.chunk1_range!r}")
        st["last"] = resp

    @s.spec(W, C, "PATCH request with second chunk should return 202")
    def _():
        s.skip_if_disabled(PUSH)
        req = (cl.new_request("PATCH", last().relative_location())
               .set_header("Content-Length", c.chunk2_length)
               .set_header("Content-Range", c.chunk2_range).set_header("Content-Type", OCTET)
               .set_body(c.chunk2))
        resp = ok(*cl.do(req))
        location = resp.header("Location")
        status_in(resp, 202)
        expect(location != "", "Expected Location not to be empty")
        st["last"] = resp

    @s.spec(W, C, "PUT request with digest should return 201")
    def _():
        s.skip_if_disabled(PUSH)
        req = (cl.new_request("PUT", last().relative_location())
               .set_header("Content-Length", "0").set_header("Content-Type", OCTET)
               .set_query("digest", c.blob_b.digest))
        resp = ok(*cl.do(req))
        status_in(resp, 201)
        expect(resp.header("Location") != "", "Expected Location not to be empty")

    X = "Cross-Repository Blob Mount"
    xns = s.crossmount_namespace

    @s.spec(W, X, "Cross-mounting of a blob without the from argument should yield session id")
    def _():
        s.skip_if_disabled(PUSH)
        req = cl.new_request("POST", "/v2/<name>/blobs/uploads/", name=xns).set_query(
            "mount", c.dummy_digest)
        resp = ok(*cl.do(req))
        status_in(resp, 202)
        expect(resp.absolute_location() != "", "Expected Location not to be empty")

    @s.spec(W, X, "POST request to mount another repository's blob should return 201 or 202")
    def _():
        s.skip_if_disabled(PUSH)
        req = (cl.new_request("POST", "/v2/<name>/blobs/uploads/", name=xns)
               .set_query("mount", c.blob_a.digest).set_query("from", cl.default_name))
        resp = ok(*cl.do(req))
        status_in(resp, 201, 202)
        st["last"] = resp

    @s.spec(W, X, "GET request to test digest within cross-mount namespace should return 200")
    def _():
        s.skip_if_disabled(PUSH)
        run_only_if(last().status == 201)
        want = f"/v2/{xns}/blobs/{c.blob_a.digest}"
        got = last().relative_location()
        expect(got == want, f"Location path {got!r} != {want!r}")
        resp = ok(*cl.do(cl.new_request("GET", got)))
        status_in(resp, 200)

    @s.spec(W, X, "Cross-mounting of nonexistent blob should yield session id")
    def _():
        s.skip_if_disabled(PUSH)
        run_only_if(last().status == 202)
        got = last().relative_location()
        expect(got.startswith(f"/v2/{xns}/blobs/uploads/"),
               f"Location path {got!r} does not start with /v2/{xns}/blobs/uploads/")

    @s.spec(W, X, "Cross-mounting without from, and automatic content discovery enabled should "
            "return a 201")
    def _():
        s.skip_if_disabled(PUSH)
        run_only_if(s.run_automatic_crossmount)
        run_only_if(last().status == 201)
        run_only_if(s.automatic_crossmount)
        req = cl.new_request("POST", "/v2/<name>/blobs/uploads/", name=xns).set_query(
            "mount", c.blob_a.digest)
        status_in(ok(*cl.do(req)), 201)

    @s.spec(W, X, "Cross-mounting without from, and automatic content discovery disabled should "
            "return a 202")
    def _():
        s.skip_if_disabled(PUSH)
        run_only_if(s.run_automatic_crossmount)
        run_only_if(last().status == 201)
        run_only_if_not(s.automatic_crossmount)
        req = cl.new_request("POST", "/v2/<name>/blobs/uploads/", name=xns).set_query(
            "mount", c.blob_a.digest)
        status_in(ok(*cl.do(req)), 202)

    U = "Manifest Upload"

    @s.spec(W, U, "GET nonexistent manifest should return 404")
    def _():
        s.skip_if_disabled(PUSH)
        resp = ok(*cl.do(cl.new_request("GET", "/v2/<name>/manifests/<reference>",
                                        reference=c.nonexistent_manifest)))
        status_in(resp, 404)

    @s.spec(W, U, "PUT should accept a manifest upload")
    def _():
        s.skip_if_disabled(PUSH)
        for i in range(4):
            resp = put_manifest(s, f"test{i}", c.manifests[1].content)
            expect(resp.header("Location") != "", "Expected Location not to be empty")
            status_in(resp, 201)

    @s.spec(W, U, "Registry should accept a manifest upload with no layers")
    def _():
        s.skip_if_disabled(PUSH)
        resp = put_manifest(s, EMPTY_LAYER_TEST_TAG, c.empty_layer_manifest.content)
        if resp.status == 201:
            location = resp.header("Location")
            st["empty_ref"] = location
            expect(location != "", "Expected Location not to be empty")
        else:
            print("WARNING: image manifest with no layers is not supported", file=sys.stderr)

    @s.spec(W, U, "GET request to manifest URL (digest) should yield 200 response")
    def _():
        s.skip_if_disabled(PUSH)
        req = cl.new_request("GET", "/v2/<name>/manifests/<digest>",
                             digest=c.manifests[1].digest).set_header("Accept", MT_MANIFEST)
        status_in(ok(*cl.do(req)), 200)

    def delete_manifest():
        s.skip_if_disabled(PUSH)
        run_only_if(s.run_push_setup)
        delete_expect(s, "/v2/<name>/manifests/<digest>", (405,), digest=c.manifests[1].digest)
        if st["empty_ref"]:
            delete_expect(s, "/v2/<name>/manifests/<reference>", (405,),
                          reference=c.empty_layer_manifest.digest)

    def delete_blob(blob):
        def fn():
            s.skip_if_disabled(PUSH)
            run_only_if(s.run_push_setup)
            delete_expect(s, "/v2/<name>/blobs/<digest>", (404, 405), digest=blob.digest)
        return fn

    if s.delete_manifest_before_blobs:
        s.spec(W, "Teardown", "Delete manifest created in tests")(delete_manifest)
    s.spec(W, "Teardown", "Delete config blob created in tests")(delete_blob(c.configs[1]))
    s.spec(W, "Teardown", "Delete layer blob created in setup")(delete_blob(c.layer))
    if not s.delete_manifest_before_blobs:
        s.spec(W, "Teardown", "Delete manifest created in tests")(delete_manifest)


def fits(value, kind):
    """Whether a decoded JSON value unmarshals into a Go field of this kind (null always does)."""
    if value is None:
        return True
    if kind == "string":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "strings":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "string map":
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    raise ValueError(kind)


def tag_list_doc(resp):
    """json.Unmarshal of a body into setup.go's TagList: (tags, None) or (None, error)."""
    try:
        doc = json.loads(resp.body)
    except ValueError as e:
        return None, f"not JSON: {e}"
    if doc is None:
        return [], None
    if not isinstance(doc, dict):
        return None, "not a JSON object"
    if not fits(doc.get("name"), "string") or not fits(doc.get("tags"), "strings"):
        return None, "`name` or `tags` has the wrong type"
    return doc.get("tags") or [], None


def tag_list(resp):
    """setup.go getTagList: the tags of a tags/list body, [] when it does not unmarshal."""
    tags, err = tag_list_doc(resp)
    return [] if err else tags


def referrers_index(resp):
    """json.Unmarshal of a referrers body into image.go's index; raises when it does not fit."""
    try:
        doc = json.loads(resp.body)
    except ValueError as e:
        raise Failed(f"referrers body is not JSON: {e}: {resp.body[:200]!r}")
    if doc is None:
        return []
    expect(isinstance(doc, dict), f"referrers body is not a JSON object: {resp.body[:200]!r}")
    for key, kind in (("schemaVersion", "int"), ("mediaType", "string"),
                      ("artifactType", "string"), ("annotations", "string map")):
        expect(fits(doc.get(key), kind), f"referrers `{key}` is not a {kind}")
    manifests = doc.get("manifests")
    if manifests is None:
        return []
    expect(isinstance(manifests, list) and all(isinstance(m, dict) for m in manifests),
           "referrers `manifests` is not an array of descriptors")
    for m in manifests:
        for key, kind in (("mediaType", "string"), ("digest", "string"), ("size", "int"),
                          ("urls", "strings"), ("annotations", "string map"),
                          ("artifactType", "string")):
            expect(fits(m.get(key), kind), f"referrer `{key}` is not a {kind}: {m!r}")
    return manifests


def discovery_specs(s):
    c, cl = s.c, s.client
    st = {"num_tags": 4, "tags": []}
    W = TITLE_DISCOVERY

    @s.spec(W, "Setup", "Populate registry with test blob")
    def _():
        s.skip_if_disabled(DISCOVERY)
        run_only_if(s.run_discovery_setup)
        upload_blob(s, c.configs[2].digest, c.configs[2].length, c.configs[2].content)

    @s.spec(W, "Setup", "Populate registry with test layer")
    def _():
        s.skip_if_disabled(DISCOVERY)
        run_only_if(s.run_discovery_setup)
        upload_blob(s, c.layer.digest, c.layer.length, c.layer.content)

    @s.spec(W, "Setup", "Populate registry with test tags")
    def _():
        s.skip_if_disabled(DISCOVERY)
        run_only_if(s.run_discovery_setup)
        for i in range(st["num_tags"]):
            tag = f"test{i}"
            st["tags"].append(tag)
            status_in(put_manifest(s, tag, c.manifests[2].content), ranges=TWO_XX)
        resp, err = cl.do(cl.new_request("GET", "/v2/<name>/tags/list"))
        if resp is None:  # getTagList(nil) dereferences a nil response in Go
            raise Failed(f"panic: nil response from GET tags/list: {err}")
        st["tags"] = tag_list(resp)

    @s.spec(W, "Setup", "Populate registry with test tags (no push)")
    def _():
        s.skip_if_disabled(DISCOVERY)
        run_only_if_not(s.run_discovery_setup)
        st["tags"] = s.env.get("OCI_TAG_LIST", "").split(",")

    @s.spec(W, "Setup", "References setup")
    def _():
        s.skip_if_disabled(DISCOVERY)
        run_only_if(s.run_discovery_setup)
        expect(c.empty_json_digest == EMPTY_JSON_DIGEST,
               f"empty JSON digest {c.empty_json_digest} != {EMPTY_JSON_DIGEST}")
        upload_blob(s, c.empty_json_digest, str(len(c.empty_json)), c.empty_json)
        upload_blob(s, c.ref_blob_a.digest, c.ref_blob_a.length, c.ref_blob_a.content)

        def put_ref(blob, subject, media_type=MT_MANIFEST):
            resp = put_manifest(s, blob.digest, blob.content, media_type)
            status_in(resp, ranges=TWO_XX)
            got = resp.header("OCI-Subject")
            expect(got == subject, f"OCI-Subject {got!r} != {subject!r}")

        put_ref(c.refs_a_config, c.manifests[4].digest)
        put_ref(c.refs_a_layer, c.manifests[4].digest)
        put_ref(c.refs_index, c.manifests[4].digest, MT_INDEX)
        upload_blob(s, c.configs[4].digest, c.configs[4].length, c.configs[4].content)
        upload_blob(s, c.layer.digest, c.layer.length, c.layer.content)
        status_in(put_manifest(s, TEST_TAG_NAME, c.manifests[4].content), ranges=TWO_XX)
        upload_blob(s, c.ref_blob_b.digest, c.ref_blob_b.length, c.ref_blob_b.content)
        put_ref(c.refs_b_config, c.manifests[4].digest)
        put_ref(c.refs_b_layer, c.manifests[4].digest)
        put_ref(c.refs_c_layer, c.manifests[3].digest)

    T = "Test content discovery endpoints (listing tags)"

    def tags_request(n=None, last=None):
        req = cl.new_request("GET", "/v2/<name>/tags/list")
        if n is not None:
            req.set_query("n", str(n))
        if last is not None:
            req.set_query("last", last)
        return req

    @s.spec(W, T, "GET request to list tags should yield 200 response")
    def _():
        s.skip_if_disabled(DISCOVERY)
        resp = ok(*cl.do(tags_request()))
        status_in(resp, 200)
        st["tags"] = tag_list(resp)
        st["num_tags"] = len(st["tags"])

    @s.spec(W, T, "GET number of tags should be limitable by `n` query parameter")
    def _():
        s.skip_if_disabled(DISCOVERY)
        num = st["num_tags"] // 2
        resp = ok(*cl.do(tags_request(num)))
        status_in(resp, 200)
        st["tags"] = tag_list(resp)
        expect(len(st["tags"]) == num, f"{len(st['tags'])} tags, expected {num}")

    @s.spec(W, T, "GET start of tag is set by `last` query parameter")
    def _():
        s.skip_if_disabled(DISCOVERY)
        num = st["num_tags"] // 2
        resp = ok(*cl.do(tags_request(num)))
        st["tags"] = tag_list(resp)
        resp = ok(*cl.do(tags_request(num, go_index(st["tags"], num - 1))))
        status_in(resp, 200)
        expect(len(st["tags"]) <= num, f"{len(st['tags'])} tags, expected at most {num}")
        expect(go_index(st["tags"], num - 1) in st["tags"], "tag list lost its own element")

    R = "Test content discovery endpoints (listing references)"

    def referrers(digest, artifact_type=None):
        req = cl.new_request("GET", "/v2/<name>/referrers/<digest>", digest=digest)
        if artifact_type is not None:
            req.set_query("artifactType", artifact_type)
        resp = ok(*cl.do(req))
        status_in(resp, 200)
        ct = resp.header("Content-Type")
        expect(ct == MT_INDEX, f"Content-Type {ct!r} != {MT_INDEX!r}")
        return resp, referrers_index(resp)

    def check_annotations(manifests):
        for m in manifests:
            ann = m.get("annotations") or {}
            expect(len(ann) == 1, f"referrer {m.get('digest')} has {len(ann)} annotations, "
                   "expected 1")
            want = c.annotation_values.get(m.get("digest", ""), "")
            got = ann.get(c.annotation_key, "")
            expect(got == want, f"referrer {m.get('digest')} annotation {got!r} != {want!r}")

    @s.spec(W, R, "GET request to nonexistent blob should result in empty 200 response")
    def _():
        s.skip_if_disabled(DISCOVERY)
        _resp, manifests = referrers(c.dummy_digest)
        expect(len(manifests) == 0, f"{len(manifests)} referrers, expected none")

    @s.spec(W, R, "GET request to existing blob should yield 200")
    def _():
        s.skip_if_disabled(DISCOVERY)
        _resp, manifests = referrers(c.manifests[4].digest)
        expect(len(manifests) == 5, f"{len(manifests)} referrers, expected 5")
        expect(manifests[0].get("digest") != manifests[1].get("digest"),
               "the first two referrers are the same")
        check_annotations(manifests)

    @s.spec(W, R, "GET request to existing blob with filter should yield 200")
    def _():
        s.skip_if_disabled(DISCOVERY)
        resp, manifests = referrers(c.manifests[4].digest, c.ref_type_a)
        applied = resp.header("OCI-Filters-Applied")
        if applied:
            expect(len(manifests) == 2, f"{len(manifests)} filtered referrers, expected 2")
            expect(applied == ARTIFACT_TYPE_FILTER,
                   f"OCI-Filters-Applied {applied!r} != {ARTIFACT_TYPE_FILTER!r}")
            check_annotations(manifests)
        else:
            expect(len(manifests) == 5, f"{len(manifests)} referrers, expected 5")
            check_annotations(manifests)
            print("WARNING: filtering by artifact-type is not implemented", file=sys.stderr)

    @s.spec(W, R, "GET request to missing manifest should yield 200")
    def _():
        s.skip_if_disabled(DISCOVERY)
        _resp, manifests = referrers(c.manifests[3].digest)
        expect(len(manifests) == 1, f"{len(manifests)} referrers, expected 1")
        got = manifests[0].get("digest")
        expect(got == c.refs_c_layer.digest, f"referrer {got} != {c.refs_c_layer.digest}")

    def delete_all():
        s.skip_if_disabled(DISCOVERY)
        run_only_if(s.run_discovery_setup)
        for ref in (c.refs_index.digest, c.manifests[2].digest, c.manifests[4].digest,
                    c.refs_a_config.digest, c.refs_a_layer.digest, TEST_TAG_NAME,
                    c.refs_b_config.digest, c.refs_b_layer.digest, c.refs_c_layer.digest):
            delete_expect(s, "/v2/<name>/manifests/<digest>", (405, 404), digest=ref)

    def delete_blob(blob):
        def fn():
            s.skip_if_disabled(DISCOVERY)
            run_only_if(s.run_discovery_setup)
            delete_expect(s, "/v2/<name>/blobs/<digest>", (405,), digest=blob.digest)
        return fn

    name_all = "Delete created manifest & associated tags"
    if s.delete_manifest_before_blobs:
        s.spec(W, "Teardown", name_all)(delete_all)
    s.spec(W, "Teardown", "Delete config blob created in tests")(delete_blob(c.configs[2]))
    s.spec(W, "Teardown", "Delete layer blob created in setup")(delete_blob(c.layer))
    if not s.delete_manifest_before_blobs:
        s.spec(W, "Teardown", name_all)(delete_all)

    @s.spec(W, "Teardown", "References teardown")
    def _():
        s.skip_if_disabled(DISCOVERY)
        run_only_if(s.run_discovery_setup)
        accept = (405, 404)
        man = "/v2/<name>/manifests/<reference>"

        def delete_manifests():
            delete_expect(s, man, accept, reference=c.refs_index.digest)
            delete_expect(s, man, accept, reference=c.refs_a_config.digest)
            delete_expect(s, man, accept, reference=c.refs_a_layer.digest)
            delete_expect(s, "/v2/<name>/manifests/<digest>", accept,
                          digest=c.manifests[4].digest)
            delete_expect(s, man, accept, reference=c.refs_b_config.digest)
            delete_expect(s, man, accept, reference=c.refs_b_layer.digest)

        if s.delete_manifest_before_blobs:
            delete_manifests()
        for digest in (c.configs[4].digest, c.ref_blob_a.digest, c.ref_blob_b.digest,
                       c.empty_json_digest):
            delete_expect(s, "/v2/<name>/blobs/<digest>", accept, digest=digest)
        if not s.delete_manifest_before_blobs:
            delete_manifests()


def management_specs(s):
    c, cl = s.c, s.client
    st = {"tag_to_delete": "", "num_tags": 0, "blob_delete_allowed": True}
    W = TITLE_MANAGEMENT

    @s.spec(W, "Setup", "Populate registry with test config blob")
    def _():
        s.skip_if_disabled(MANAGEMENT)
        run_only_if(s.run_management_setup)
        upload_blob(s, c.configs[3].digest, c.configs[3].length, c.configs[3].content)

    @s.spec(W, "Setup", "Populate registry with test layer")
    def _():
        s.skip_if_disabled(MANAGEMENT)
        run_only_if(s.run_management_setup)
        upload_blob(s, c.layer.digest, c.layer.length, c.layer.content)

    @s.spec(W, "Setup", "Populate registry with test tag")
    def _():
        s.skip_if_disabled(MANAGEMENT)
        run_only_if(s.run_management_setup)
        st["tag_to_delete"] = TEST_TAG_NAME
        status_in(put_manifest(s, st["tag_to_delete"], c.manifests[3].content), ranges=TWO_XX)

    def strict_tags(resp):
        """json.Unmarshal into TagList, which must succeed (Expect(err).To(BeNil()))."""
        tags, err = tag_list_doc(resp)
        expect(err is None, f"tags list: {err}: {resp.body[:200]!r}")
        return tags

    @s.spec(W, "Setup", "Check how many tags there are before anything gets deleted")
    def _():
        s.skip_if_disabled(MANAGEMENT)
        run_only_if(s.run_management_setup)
        resp = ok(*cl.do(cl.new_request("GET", "/v2/<name>/tags/list")))
        status_in(resp, 200)
        st["num_tags"] = len(strict_tags(resp))

    D = "Manifest delete"

    @s.spec(W, D, "DELETE request to manifest tag should return 202, unless tag deletion is "
            "disallowed (400/405)")
    def _():
        s.skip_if_disabled(MANAGEMENT)
        resp = ok(*cl.do(cl.new_request("DELETE", "/v2/<name>/manifests/<reference>",
                                        reference=st["tag_to_delete"])))
        status_in(resp, 400, 202, 405)
        if resp.status == 400:
            errs = resp.errors()
            expect(errs, "Expected error responses not to be empty")
            code = errs[0].get("code", "")
            expect(code == UNSUPPORTED, f"error code {code!r} != {UNSUPPORTED!r}")

    @s.spec(W, D, "DELETE request to manifest (digest) should yield 202 response unless already "
            "deleted")
    def _():
        s.skip_if_disabled(MANAGEMENT)
        resp = ok(*cl.do(cl.new_request("DELETE", "/v2/<name>/manifests/<digest>",
                                        digest=c.manifests[3].digest)))
        status_in(resp, 202, 404)

    @s.spec(W, D, "GET request to deleted manifest URL should yield 404 response, unless delete "
            "is disallowed")
    def _():
        s.skip_if_disabled(MANAGEMENT)
        resp = ok(*cl.do(cl.new_request("GET", "/v2/<name>/manifests/<digest>",
                                        digest=c.manifests[3].digest)))
        status_in(resp, 404, 200)

    @s.spec(W, D, "GET request to tags list should reflect manifest deletion")
    def _():
        s.skip_if_disabled(MANAGEMENT)
        resp = ok(*cl.do(cl.new_request("GET", "/v2/<name>/tags/list")))
        status_in(resp, 200)
        n = len(strict_tags(resp))
        expect(n < st["num_tags"], f"{n} tags after the delete, expected fewer than "
               f"{st['num_tags']}")

    B = "Blob delete"

    @s.spec(W, B, "DELETE request to blob URL should yield 202 response")
    def _():
        s.skip_if_disabled(MANAGEMENT)
        run_only_if(s.run_management_setup)
        resp = ok(*cl.do(cl.new_request("DELETE", "/v2/<name>/blobs/<digest>",
                                        digest=c.configs[3].digest)))
        status_in(resp, 202, 404, 405)
        resp = ok(*cl.do(cl.new_request("DELETE", "/v2/<name>/blobs/<digest>",
                                        digest=c.layer.digest)))
        status_in(resp, 202, 404, 405)
        if resp.status == 405:
            st["blob_delete_allowed"] = False

    @s.spec(W, B, "GET request to deleted blob URL should yield 404 response")
    def _():
        s.skip_if_disabled(MANAGEMENT)
        run_only_if(s.run_management_setup)
        run_only_if(st["blob_delete_allowed"])
        resp = ok(*cl.do(cl.new_request("GET", "/v2/<name>/blobs/<digest>",
                                        digest=c.configs[3].digest)))
        status_in(resp, 404)


# ---------------------------------------------------------------- running and reporting

WORKFLOW_BITS = {TITLE_PULL: PULL, TITLE_PUSH: PUSH, TITLE_DISCOVERY: DISCOVERY,
                 TITLE_MANAGEMENT: MANAGEMENT}


def run(suite):
    """Runs the specs in order: [(workflow, context, name, state, reason, seconds)]."""
    results = []
    hide = suite.env.get("OCI_HIDE_SKIPPED_WORKFLOWS") == "1"
    for workflow, context, name, fn in suite.specs:
        start = time.monotonic()
        try:
            fn()
            state, reason = "PASS", ""
        except Skipped as e:
            state, reason = "SKIP", str(e)
        except Failed as e:
            state, reason = "FAIL", str(e)
        except Exception as e:  # a Go panic fails the spec; the suite goes on
            tb = traceback.extract_tb(e.__traceback__)[-1]
            state, reason = "FAIL", f"panic: {type(e).__name__}: {e} (line {tb.lineno})"
        results.append((workflow, context, name, state, reason, time.monotonic() - start))
        if hide and suite.disabled(WORKFLOW_BITS[workflow]):
            continue
        line = f"{state}\t{workflow} / {context} / {name}"
        if state != "PASS":
            line += "\t" + " ".join(reason.split())
        print(line, flush=True)
    return results


def write_reports(suite, results):
    directory = suite.env.get("OCI_REPORT_DIR", "")
    if directory == "none":
        return
    failed = sum(r[3] == "FAIL" for r in results)
    skipped = sum(r[3] == "SKIP" for r in results)
    root = ET.Element("testsuites", tests=str(len(results)), failures=str(failed),
                      skipped=str(skipped))
    ts = ET.SubElement(root, "testsuite", name="conformance tests", tests=str(len(results)),
                       failures=str(failed), skipped=str(skipped))
    for workflow, context, name, state, reason, secs in results:
        tc = ET.SubElement(ts, "testcase", name=f"{workflow} {context} {name}",
                           classname="conformance tests", time=f"{secs:.3f}")
        if state == "FAIL":
            ET.SubElement(tc, "failure", message=reason, type="failed").text = reason
        elif state == "SKIP":
            ET.SubElement(tc, "skipped", message=reason)
    ET.ElementTree(root).write(os.path.join(directory, "junit.xml"), encoding="utf-8",
                               xml_declaration=True)
    rows = []
    hide = suite.env.get("OCI_HIDE_SKIPPED_WORKFLOWS") == "1"
    for workflow, context, name, state, reason, _ in results:
        if hide and suite.disabled(WORKFLOW_BITS[workflow]):
            continue
        color = {"PASS": "#c8ffc8", "FAIL": "#ffc8c8", "SKIP": "lightgrey"}[state]
        rows.append(f"<tr style=\"background:{color}\"><td>{html.escape(workflow)}</td>"
                    f"<td>{html.escape(context)}</td><td>{html.escape(name)}</td>"
                    f"<td>{state}</td><td><pre>{html.escape(reason)}</pre></td></tr>")
    config = "<br>".join(
        html.escape(f"{v}={'*****' if 'PASSWORD' in v or 'USERNAME' in v else suite.env[v]}")
        for v in REPORT_VARS if suite.env.get(v))
    with open(os.path.join(directory, "report.html"), "w") as f:
        f.write("<html><head><title>OCI Distribution Conformance Tests</title></head><body>"
                "<h1>OCI Distribution Conformance Tests</h1>"
                f"<p>{summary(results)}</p><p>{config}</p><table>"
                + "".join(rows) + "</table></body></html>\n")


def summary(results):
    counts = {k: sum(r[3] == k for r in results) for k in ("PASS", "FAIL", "SKIP")}
    return f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"


def seed(suite, images_list):
    """--seed (not upstream): pushes what the Pull and Content Discovery setups push, in their
    order, so that a registry (or a bundle made from it) holds the suite's pre-seeded content.
    Only that each push succeeds (2xx) is checked: the target must store the content, it need
    not answer the referrers API (the setup's OCI-Subject checks are left to a test run)."""
    c, cl = suite.c, suite.client
    try:
        for blob in (c.configs[0], c.configs[1], c.layer):
            upload_blob(suite, blob.digest, blob.length, blob.content)
        status_in(put_manifest(suite, TEST_TAG_NAME, c.manifests[0].content), ranges=TWO_XX)
        status_in(put_manifest(suite, c.manifests[1].digest, c.manifests[1].content),
                  ranges=TWO_XX)
        for blob in (c.configs[2], c.layer):
            upload_blob(suite, blob.digest, blob.length, blob.content)
        for i in range(4):
            status_in(put_manifest(suite, f"test{i}", c.manifests[2].content), ranges=TWO_XX)
        upload_blob(suite, c.empty_json_digest, str(len(c.empty_json)), c.empty_json)
        upload_blob(suite, c.ref_blob_a.digest, c.ref_blob_a.length, c.ref_blob_a.content)
        for blob, media_type in ((c.refs_a_config, MT_MANIFEST), (c.refs_a_layer, MT_MANIFEST),
                                 (c.refs_index, MT_INDEX)):
            status_in(put_manifest(suite, blob.digest, blob.content, media_type), ranges=TWO_XX)
        for blob in (c.configs[4], c.layer):
            upload_blob(suite, blob.digest, blob.length, blob.content)
        status_in(put_manifest(suite, TEST_TAG_NAME, c.manifests[4].content), ranges=TWO_XX)
        upload_blob(suite, c.ref_blob_b.digest, c.ref_blob_b.length, c.ref_blob_b.content)
        for blob in (c.refs_b_config, c.refs_b_layer, c.refs_c_layer):
            status_in(put_manifest(suite, blob.digest, blob.content), ranges=TWO_XX)
    except Failed as e:
        print(f"conformance.py: --seed: pushing to {cl.address}/v2/{cl.default_name}: {e}",
              file=sys.stderr)
        return 1
    resp, err = cl.do(cl.new_request("GET", "/v2/<name>/tags/list"))
    tags = tag_list(resp) if resp is not None else []
    # What a pre-seeded run needs: Pull with the three (tagtest0 now names manifests[4]), Content
    # Discovery with OCI_TAG_LIST and the same content seed (and without the two digests, which
    # would replace the digests of manifests[3] and [4]).
    print(f"OCI_TAG_NAME={TEST_TAG_NAME}")
    print(f"OCI_MANIFEST_DIGEST={c.manifests[4].digest}")
    print(f"OCI_BLOB_DIGEST={c.configs[4].digest}")
    print(f"OCI_TAG_LIST={','.join(tags)}")
    print(f"OCI_CONTENT_SEED={c.seed}")
    if images_list:
        lines = [f"{cl.default_name}:{t}" for t in tags]
        for name, ref in cl.pushed_manifests:
            if ref.startswith("sha256:") and f"{name}@{ref}" not in lines:
                lines.append(f"{name}@{ref}")
        with open(images_list, "w") as f:
            f.write("".join(line + "\n" for line in lines))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", action="store_true",
                    help="push the Pull and Content Discovery setup content, print the "
                    "pre-seeded settings (not upstream)")
    ap.add_argument("--images-list", help="with --seed: write an images list of what was pushed")
    args = ap.parse_args()
    env = dict(os.environ)
    if not env.get("OCI_ROOT_URL"):
        print("conformance.py: OCI_ROOT_URL is not set (e.g. http://127.0.0.1:5000)",
              file=sys.stderr)
        return 2
    if args.images_list and not args.seed:
        print("conformance.py: --images-list needs --seed", file=sys.stderr)
        return 2
    suite = Suite(env)
    if args.seed:
        if env.get("OCI_BLOB_DIGEST") or env.get("OCI_MANIFEST_DIGEST"):
            print("conformance.py: --seed makes the content: unset OCI_BLOB_DIGEST and "
                  "OCI_MANIFEST_DIGEST", file=sys.stderr)
            return 2
        return seed(suite, args.images_list)
    results = run(suite)
    print(summary(results), flush=True)
    failed = any(r[3] == "FAIL" for r in results)
    write_reports(suite, results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
