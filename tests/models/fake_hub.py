"""A local server that speaks the Hugging Face hub's protocol as Hearth uses it (no hub is
reachable from here): the tree API with ``lfs.oid`` and ``Link`` pages, ``resolve`` URLs that
redirect to a CDN path with ``X-Linked-Etag``/``X-Linked-Size``, the CDN's ``Range`` (206,
416) and ``ETag``, gated repos (401 without the token), and knobs for the tests: cut a
transfer after N bytes, corrupt a byte, count the bytes sent.

It is Ollama's registry too: ``/v2/<namespace>/<name>/manifests/<tag>`` (a Docker v2 manifest
with Ollama's layer media types) and ``/v2/<namespace>/<name>/blobs/sha256:<hex>``, which
redirects to the same CDN, as the real registry does."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    files: dict[str, bytes]
    token: str | None = None  # a gated repo: this token is needed


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    page_size: int = 1000
    cut_after: int | None = None  # the next transfer stops after this many bytes
    corrupt: bool = False  # the next transfer has one byte changed
    ignore_range: bool = False
    sent: int = 0  # bytes of file content sent, all transfers together
    requests: list[str] = field(default_factory=list)
    any_file: bytes = b""  # what /files/<any path> serves
    # The registry: "namespace/name:tag" -> [(media type, bytes)], and blobs by sha256.
    manifests: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)
    ranges: list[str | None] = field(default_factory=list)  # each transfer's Range header
    url: str = ""

    def blob(self, sha: str) -> bytes | None:
        for layers in self.manifests.values():
            for _, data in layers:
                if hashlib.sha256(data).hexdigest() == sha:
                    return data
        for repo in self.repos.values():
            for data in repo.files.values():
                if hashlib.sha256(data).hexdigest() == sha:
                    return data
        return None


@contextmanager
def serve_hub(hub: FakeHub) -> Iterator[FakeHub]:
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        hub = self.hub
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        hub.requests.append(path)
        tree = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path)
        if tree:
            repo = self._repo(tree.group(1))
            if repo is None:
                return
            entries = [
                {
                    "type": "file",
                    "path": name,
                    "size": len(data),
                    "oid": hashlib.sha1(data).hexdigest(),
                    "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}
                    if name.endswith(".gguf")
                    else None,
                }
                for name, data in sorted(repo.files.items())
            ]
            entries.insert(0, {"type": "directory", "path": "sub", "size": 0, "oid": "0"})
            start = int(
                dict(p.split("=") for p in parts.query.split("&") if "=" in p).get("cursor", "0")
            )
            page = entries[start : start + hub.page_size]
            headers = {}
            if start + hub.page_size < len(entries):
                nxt = f"{hub.url}{parts.path}?recursive=true&cursor={start + hub.page_size}"
                headers["Link"] = f'<{nxt}>; rel="next"'
            self._send(200, json.dumps(page).encode(), "application/json", headers)
            return
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if resolve:
            repo = self._repo(resolve.group(1))
            if repo is None:
                return
            data = repo.files.get(resolve.group(3))
            if data is None:
                self._send(404, b"Entry not found", "text/plain")
                return
            sha = hashlib.sha256(data).hexdigest()
            self._send(
                302,
                b"",
                "text/plain",
                {
                    "Location": f"{hub.url}/cdn/{sha}",
                    "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(len(data)),
                },
            )
            return
        manifest = re.fullmatch(r"/v2/([^/]+)/([^/]+)/manifests/([^/]+)", path)
        if manifest:
            layers = hub.manifests.get(
                f"{manifest.group(1)}/{manifest.group(2)}:{manifest.group(3)}"
            )
            if layers is None:
                self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', "application/json")
                return
            body = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "digest": "sha256:" + "0" * 64,
                    "size": 2,
                },
                "layers": [
                    {
                        "mediaType": kind,
                        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
                        "size": len(data),
                    }
                    for kind, data in layers
                ],
            }
            kind = "application/vnd.docker.distribution.manifest.v2+json"
            self._send(200, json.dumps(body).encode(), kind)
            return
        blob = re.fullmatch(r"/v2/([^/]+)/([^/]+)/blobs/sha256:([0-9a-f]{64})", path)
        if blob:
            self._send(307, b"", "text/plain", {"Location": f"{hub.url}/cdn/{blob.group(3)}"})
            return
        if parts.path.startswith("/files/"):  # any path (still encoded): one file
            self._file(hub.any_file, hashlib.sha256(hub.any_file).hexdigest())
            return
        failing = re.fullmatch(r"/fail/(\d{3})", path)
        if failing:  # an error that claims a gigabyte of body and sends a few bytes
            self.send_response(int(failing.group(1)))
            self.send_header("Content-Length", str(1 << 30))
            self.end_headers()
            self.wfile.write(b"x" * 100)
            self.close_connection = True
            return
        cdn = re.fullmatch(r"/cdn/([0-9a-f]{64})", path)
        if cdn:
            data = hub.blob(cdn.group(1))
            if data is None:
                self._send(404, b"no such blob", "text/plain")
                return
            self._file(data, cdn.group(1))
            return
        self._send(404, b"not found", "text/plain")

    def _repo(self, name: str) -> Repo | None:
        repo = self.hub.repos.get(name)
        if repo is None:
            self._send(404, b'{"error":"Repository not found"}', "application/json")
            return None
        if repo.token is not None and self.headers.get("Authorization") != f"Bearer {repo.token}":
            self._send(401, b'{"error":"Access to model is restricted"}', "application/json")
            return None
        return repo

    def _file(self, data: bytes, sha: str) -> None:
        hub = self.hub
        start = 0
        wanted = self.headers.get("Range")
        hub.ranges.append(wanted)
        if wanted and not hub.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))  # type: ignore[union-attr]
            if start >= len(data):
                self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
                return
        body = data[start:]
        if hub.corrupt:
            hub.corrupt = False
            body = body[:10] + bytes([body[10] ^ 0xFF]) + body[11:]
        status = 206 if start else 200
        headers = {"ETag": f'"{sha}"', "Accept-Ranges": "bytes"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        cut, hub.cut_after = hub.cut_after, None
        if cut is not None:
            self.wfile.write(body[:cut])
            hub.sent += min(cut, len(body))
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)
        hub.sent += len(body)

    def _send(
        self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
