"""Loopback HTTP servers that the tests start: a Hub stand-in and an upstream file host.

The Hub server speaks the part of the Hugging Face Hub protocol that
``huggingface_hub.hf_hub_download`` uses: ``HEAD``/``GET`` on
``/{repo_id}/resolve/{revision}/{filename}`` answered with ``X-Repo-Commit``, ``ETag``
(the file's sha256, as the Hub sends for LFS files) and ``Content-Length``, and 404s
carrying ``X-Error-Code: RepoNotFound`` / ``EntryNotFound``. The file server serves
plain paths, and can be told to cut a response short (a truncated download).
"""

from __future__ import annotations

import hashlib
import io
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


@dataclass
class _Routes:
    files: dict[str, bytes] = field(default_factory=dict)
    truncate: dict[str, int] = field(default_factory=dict)  # path -> bytes actually sent
    hub: dict[tuple[str, str], dict[str, bytes]] = field(default_factory=dict)  # (repo, rev) -> files
    commits: dict[tuple[str, str], str] = field(default_factory=dict)
    hits: Counter = field(default_factory=Counter)


class _Handler(BaseHTTPRequestHandler):
    routes: _Routes

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(
        self, status: int, body: bytes, headers: dict[str, str], send_body: bool, length: int | None = None
    ):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _not_found(self, code: str, send_body: bool):
        self._send(404, b"not found", {"X-Error-Code": code, "X-Error-Message": code}, send_body)

    def _serve(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        self.routes.hits[path] += 1
        if "/resolve/" in path:
            repo, _, rest = path.lstrip("/").partition("/resolve/")
            rev, _, filename = rest.partition("/")
            files = self.routes.hub.get((repo, rev))
            if files is None:
                if any(r == repo for r, _ in self.routes.hub):
                    return self._not_found("RevisionNotFound", send_body)
                return self._not_found("RepoNotFound", send_body)
            if filename not in files:
                return self._not_found("EntryNotFound", send_body)
            data = files[filename]
            headers = {
                "X-Repo-Commit": self.routes.commits[(repo, rev)],
                "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                "Content-Type": "application/octet-stream",
            }
            return self._send(200, data, headers, send_body)
        if path in self.routes.files:
            data = self.routes.files[path]
            cut = self.routes.truncate.get(path)
            if cut is not None:
                self._send(200, data[:cut], {}, send_body, length=len(data))
                self.close_connection = True
                return None
            return self._send(200, data, {"Content-Type": "application/octet-stream"}, send_body)
        return self._send(404, b"not found", {}, send_body)

    def do_HEAD(self):  # noqa: N802
        self._serve(send_body=False)

    def do_GET(self):  # noqa: N802
        self._serve(send_body=True)


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 with an ephemeral port."""

    def __init__(self) -> None:
        self.routes = _Routes()
        handler = type("Handler", (_Handler,), {"routes": self.routes})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def add_file(self, path: str, data: bytes, truncate_to: int | None = None) -> str:
        """Serve ``data`` at ``path`` (a query string is ignored); returns its URL."""
        path = path.split("?", 1)[0]
        self.routes.files[path] = data
        if truncate_to is not None:
            self.routes.truncate[path] = truncate_to
        return self.url + path

    def hits_any(self, prefix: str) -> int:
        """Requests whose path starts with ``prefix``."""
        return sum(n for p, n in self.routes.hits.items() if p.startswith(prefix))

    def add_hub_file(self, repo_id: str, filename: str, data: bytes, revision: str = "main") -> str:
        """Publish ``filename`` in Hub repo ``repo_id`` at ``revision``; returns the commit hash."""
        key = (repo_id, revision)
        self.routes.hub.setdefault(key, {})[filename] = data
        commit = self.routes.commits.setdefault(
            key, hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        )
        return commit

    def hits(self, path: str) -> int:
        return self.routes.hits[path.split("?", 1)[0]]


def url_path(url: str) -> str:
    """The path (and query) of ``url``: where a loopback server must serve it."""
    parts = urllib.parse.urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def torch_bytes(obj) -> bytes:
    """``obj`` as ``torch.save`` writes it to a file."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
