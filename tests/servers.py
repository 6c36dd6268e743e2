"""Loopback HTTP servers that the tests start: a Hub stand-in and an upstream file host.

The Hub server speaks the part of the Hugging Face Hub protocol that
``huggingface_hub.hf_hub_download`` uses: ``HEAD``/``GET`` on
``/{repo_id}/resolve/{revision}/{filename}`` answered with ``X-Repo-Commit``, ``ETag``
(the file's sha256, as the Hub sends for LFS files) and ``Content-Length``, and 404s
carrying ``X-Error-Code: RepoNotFound`` / ``EntryNotFound``; a repository can be made to
answer 401. The file server serves plain paths, and can be told to cut a response short (a
truncated download), to announce a huge size and stream zeros, to drip bytes slowly, or to
answer with an HTML page.

The Google Drive imitation answers the requests ``gdown`` makes (its hosts reach it through
``MEDZOO_UPSTREAM_ENDPOINT``, which keeps paths and queries): ``/uc?id=ID`` gives either the
file with ``Content-Disposition`` or, for a "large" file, the "cannot scan for viruses" page
whose one-line ``<form id="download-form">`` points at ``drive.usercontent.google.com/download``
with hidden ``id``/``export``/``confirm``/``uuid`` fields; ``/download?…&confirm=t&uuid=…``
gives the file; ``/embeddedfolderview?id=FOLDER`` lists a folder as ``<title>`` plus
``<a href="https://drive.google.com/file/d/ID/view…">name</a>`` entries.

:class:`SilentServer` accepts connections and never answers (a hanging endpoint).
"""

from __future__ import annotations

import hashlib
import html
import io
import socket
import threading
import time
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
    hub_status: dict[str, int] = field(default_factory=dict)  # repo -> forced HTTP status (401)
    streams: dict[str, dict] = field(default_factory=dict)  # path -> {announce, byte, delay, count}
    pages: dict[str, bytes] = field(default_factory=dict)  # path -> HTML body
    drive_files: dict[str, tuple[str, bytes, bool]] = field(
        default_factory=dict
    )  # id -> (name, data, confirm)
    drive_folders: dict[str, tuple[str, dict[str, str]]] = field(
        default_factory=dict
    )  # id -> (title, name->id)
    hits: Counter = field(default_factory=Counter)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, user agent)


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

    def _not_found(self, code: str, send_body: bool, commit: str | None = None):
        headers = {"X-Error-Code": code, "X-Error-Message": code}
        if commit is not None:  # as the Hub does for a file missing from an existing revision
            headers["X-Repo-Commit"] = commit
        self._send(404, b"not found", headers, send_body)

    def _stream(self, spec: dict, send_body: bool) -> None:
        self.send_response(spec.get("status", 200))
        if "Content-Type" not in spec["headers"]:
            self.send_header("Content-Type", "application/octet-stream")
        for k, v in spec["headers"].items():
            self.send_header(k, v)
        if spec["announce"] is not None:
            self.send_header("Content-Length", str(spec["announce"]))
        self.end_headers()
        self.close_connection = True
        if not send_body:
            return
        try:
            for _ in range(spec["count"]):
                self.wfile.write(spec["byte"])
                self.wfile.flush()
                if spec["delay"]:
                    time.sleep(spec["delay"])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def _drive(self, path: str, query: dict[str, list[str]], send_body: bool) -> bool:
        file_id = (query.get("id") or [""])[0]
        if path == "/embeddedfolderview" and file_id in self.routes.drive_folders:
            title, entries = self.routes.drive_folders[file_id]
            links = "".join(
                f'<div class="flip-entry"><a href="https://drive.google.com/file/d/{fid}/view?usp=drive_web">'
                f'<div class="flip-entry-title">{html.escape(name)}</div></a></div>'
                for name, fid in entries.items()
            )
            page = f"<html><head><title>{html.escape(title)}</title></head><body>{links}</body></html>"
            self._send(200, page.encode(), {"Content-Type": "text/html; charset=utf-8"}, send_body)
            return True
        if path not in ("/uc", "/download") or file_id not in self.routes.drive_files:
            return False
        name, data, confirm = self.routes.drive_files[file_id]
        if path == "/uc" and confirm:
            form = (
                '<form id="download-form" action="https://drive.usercontent.google.com/download" '
                'method="get"><input type="submit" value="Download anyway"/>'
                f'<input type="hidden" name="id" value="{file_id}">'
                '<input type="hidden" name="export" value="download"><input type="hidden" name="confirm" '
                'value="t"><input type="hidden" name="uuid" value="0b9c-loopback"></form>'
            )
            page = (
                "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>\n"
                f'<p class="uc-warning-caption">Google Drive can\'t scan {html.escape(name)} '
                "for viruses.</p>\n"
                f"{form}\n</body></html>"
            )
            self._send(200, page.encode(), {"Content-Type": "text/html; charset=utf-8"}, send_body)
            return True
        if path == "/download" and (query.get("confirm") != ["t"] or not query.get("uuid")):
            self._send(400, b"bad confirmation", {"Content-Type": "text/plain"}, send_body)
            return True
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{name}"',
        }
        self._send(200, data, headers, send_body)
        return True

    def _serve(self, send_body: bool) -> None:
        path, _, query = self.path.partition("?")
        self.routes.hits[path] += 1
        method = "GET" if send_body else "HEAD"
        self.routes.requests.append((method, path, self.headers.get("User-Agent", "")))
        if self._drive(path, urllib.parse.parse_qs(query), send_body):
            return None
        if path in self.routes.streams:
            return self._stream(self.routes.streams[path], send_body)
        if path in self.routes.pages:
            headers = {"Content-Type": "text/html; charset=utf-8"}
            return self._send(200, self.routes.pages[path], headers, send_body)
        if "/resolve/" in path:
            repo, _, rest = path.lstrip("/").partition("/resolve/")
            if repo in self.routes.hub_status:
                code = self.routes.hub_status[repo]
                return self._send(
                    code, b"unauthorised", {"X-Error-Message": "Invalid credentials"}, send_body
                )
            rev, _, filename = rest.partition("/")
            rev = urllib.parse.unquote(rev)
            by_commit = {c: key for key, c in self.routes.commits.items() if key[0] == repo}
            key = by_commit.get(rev, (repo, rev))  # a revision is a branch or tag, or a commit id
            files = self.routes.hub.get(key)
            if files is None:
                if any(r == repo for r, _ in self.routes.hub):
                    return self._not_found("RevisionNotFound", send_body)
                return self._not_found("RepoNotFound", send_body)
            if filename not in files:
                return self._not_found("EntryNotFound", send_body, self.routes.commits[key])
            data = files[filename]
            headers = {
                "X-Repo-Commit": self.routes.commits[key],
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

    def add_stream(
        self,
        path: str,
        announce: int | None,
        count: int,
        byte: bytes = b"\0",
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
        status: int = 200,
    ) -> str:
        """Serve ``count`` writes of ``byte`` at ``path``, ``delay`` s apart; announce ``announce`` bytes.
        With ``status`` 302 and a ``Location`` header, a redirect whose body drips."""
        spec = dict(announce=announce, byte=byte, count=count, delay=delay, headers=dict(headers or {}))
        spec["status"] = status
        self.routes.streams[path] = spec
        return self.url + path

    def add_page(self, path: str, body: str) -> str:
        """Answer ``path`` with an HTML page (a login wall, an error page)."""
        self.routes.pages[path] = body.encode()
        return self.url + path

    def deny_hub_repo(self, repo_id: str, status: int = 401) -> None:
        """Make every file of ``repo_id`` answer ``status``."""
        self.routes.hub_status[repo_id] = status

    def add_drive_file(self, file_id: str, name: str, data: bytes, confirm: bool = True) -> None:
        """A Drive file; ``confirm`` puts it behind the "cannot scan for viruses" page (files > ~100 MB)."""
        self.routes.drive_files[file_id] = (name, data, confirm)

    def add_drive_folder(self, folder_id: str, title: str, entries: dict[str, str]) -> None:
        """A shared Drive folder listing ``entries`` (file name -> file id)."""
        self.routes.drive_folders[folder_id] = (title, dict(entries))


class SilentServer:
    """A loopback port that accepts connections (the kernel's backlog) and never answers."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        host, port = self._sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc) -> None:
        self._sock.close()


def url_path(url: str) -> str:
    """The path (and query) of ``url``: where a loopback server must serve it."""
    parts = urllib.parse.urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def torch_bytes(obj) -> bytes:
    """``obj`` as ``torch.save`` writes it to a file."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
