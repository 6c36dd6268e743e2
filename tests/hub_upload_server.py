"""A loopback Hub that accepts uploads and serves them back, for the publish → load round trip.

It speaks the parts of the Hugging Face Hub HTTP API that ``huggingface_hub``'s ``create_repo``,
``upload_folder`` and ``hf_hub_download`` use:

- ``POST /api/repos/create`` (409 when the repository exists, which ``exist_ok`` accepts);
- ``POST /api/validate-yaml`` (the README front matter, checked by :func:`card_metadata_errors`,
  a stand-in for the Hub's rules that the cards must meet);
- ``POST /api/models/{repo}/preupload/{rev}``: the upload mode of each file (``lfs`` for the
  large ``.safetensors`` file when ``lfs=True``, else ``regular``);
- ``POST /{repo}.git/info/lfs/objects/batch``: a basic-transfer upload action per object,
  then ``PUT /lfs-objects/{oid}`` (the body must hash to the oid) and ``POST /lfs-verify/{oid}``;
- ``POST /api/models/{repo}/commit/{rev}``: the NDJSON commit (header, base64 ``file`` and
  ``lfsFile`` entries; an LFS entry whose object was never uploaded is refused);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{filename}`` at a branch or a commit id, with
  ``X-Repo-Commit``, ``ETag`` and ``Content-Length`` as the Hub sends them.

Every request's method, path and User-Agent is recorded, and every commit's file list.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class _Repo:
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit id
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit id -> files


@dataclass
class _State:
    repos: dict[str, _Repo] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)  # oid (sha256) -> content
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, user agent)
    committed: list[list[str]] = field(default_factory=list)  # paths of each commit, in order
    lfs_uploads: list[str] = field(default_factory=list)  # oids received by PUT
    validated: list[bool] = field(default_factory=list)  # each README validation: passed?
    created: list[dict] = field(default_factory=list)  # the body of each repository creation request
    use_lfs: bool = True  # preupload answers "lfs" for .safetensors files
    fail_commit: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def card_metadata_errors(readme: str) -> list[str]:
    """What the Hub would reject in a README's metadata (the rules medzoo's cards must meet)."""
    import yaml

    if not readme.startswith("---\n") or "\n---\n" not in readme[3:]:
        return ["README.md has no YAML front matter"]
    meta = yaml.safe_load(readme[4:].split("\n---\n", 1)[0])
    if not isinstance(meta, dict):
        return ["front matter is not a mapping"]
    errors = [f"'{k}' is empty" for k, v in meta.items() if v in ([], {}, None, "")]
    if meta.get("license") == "other" and not (meta.get("license_name") and meta.get("license_link")):
        errors.append('"license_name" and "license_link" are required when license is "other"')
    for base in (
        meta.get("base_model") if isinstance(meta.get("base_model"), list) else [meta.get("base_model")]
    ):
        if base is not None and (not isinstance(base, str) or base.count("/") != 1):
            errors.append(f'"base_model" must be a Hub model id ORG/NAME, got {base!r}')
    return errors


def _commit_id(*parts: bytes) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p)
    return h.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    state: _State
    base: str

    def log_message(self, *args):  # keep test output clean
        pass

    # -------------------------------------------------------------- plumbing

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head=False):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict[str, str] | None = None):
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, message: str, head=False):
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

    def _record(self, method: str) -> str:
        path = urllib.parse.urlsplit(self.path).path
        with self.state.lock:
            self.state.requests.append((method, path, self.headers.get("User-Agent", "")))
        return path

    # -------------------------------------------------------------- routes

    def do_POST(self):  # noqa: N802
        path = self._record("POST")
        body = self._body()
        if path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            with self.state.lock:
                self.state.created.append(req)
                if repo_id in self.state.repos:
                    return self._error(409, "RepoExists", "You already created this model repo")
                first = _commit_id(repo_id.encode())
                self.state.repos[repo_id] = _Repo({"main": first}, {first: {}})
            return self._json(200, {"url": f"{self.base}/{repo_id}"})
        if path == "/api/validate-yaml":
            errors = card_metadata_errors(json.loads(body)["content"])
            with self.state.lock:
                self.state.validated.append(not errors)
            if errors:
                return self._json(400, {"errors": [{"message": e} for e in errors]})
            return self._json(200, {"warnings": []})
        if path.startswith("/api/models/") and "/preupload/" in path:
            repo_id = path[len("/api/models/") :].split("/preupload/")[0]
            if repo_id not in self.state.repos:
                return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            files = json.loads(body)["files"]
            modes = [
                {
                    "path": f["path"],
                    "uploadMode": "lfs"
                    if self.state.use_lfs and f["path"].endswith(".safetensors")
                    else "regular",
                    "shouldIgnore": False,
                    "oid": None,
                }
                for f in files
            ]
            return self._json(200, {"files": modes, "commitOid": self.state.repos[repo_id].branches["main"]})
        if path.endswith(".git/info/lfs/objects/batch"):
            req = json.loads(body)
            objects = []
            for obj in req["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in self.state.lfs:
                    entry["actions"] = {
                        "upload": {"href": f"{self.base}/lfs-objects/{obj['oid']}"},
                        "verify": {"href": f"{self.base}/lfs-verify/{obj['oid']}"},
                    }
                objects.append(entry)
            return self._json(200, {"transfer": "basic", "objects": objects})
        if path.startswith("/lfs-verify/"):
            oid = path.rsplit("/", 1)[1]
            if oid not in self.state.lfs:
                return self._error(404, "EntryNotFound", f"LFS object {oid} was not uploaded")
            return self._json(200, {"ok": True})
        if path.startswith("/api/models/") and "/commit/" in path:
            repo_id, _, rev = path[len("/api/models/") :].partition("/commit/")
            rev = urllib.parse.unquote(rev)
            repo = self.state.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            if self.state.fail_commit:
                return self._error(403, "Forbidden", "You don't have the rights to commit to this repository")
            if rev not in repo.branches:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            files = dict(repo.commits[repo.branches[rev]])
            paths = []
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "lfsFile":
                    oid = item["value"]["oid"]
                    if oid not in self.state.lfs:
                        return self._error(400, "BadRequest", f"LFS object {oid} was never uploaded")
                    files[item["value"]["path"]] = self.state.lfs[oid]
                elif item["key"] == "header":
                    continue
                else:
                    return self._error(400, "BadRequest", f"unsupported commit operation {item['key']}")
                paths.append(item["value"]["path"])
            commit = _commit_id(repo.branches[rev].encode(), body)
            with self.state.lock:
                repo.commits[commit] = files
                repo.branches[rev] = commit
                self.state.committed.append(sorted(paths))
            return self._json(
                200,
                {
                    "commitUrl": f"{self.base}/{repo_id}/commit/{commit}",
                    "commitOid": commit,
                    "pullRequestUrl": None,
                },
            )
        return self._error(404, "NotFound", f"no route for POST {path}")

    def do_PUT(self):  # noqa: N802
        path = self._record("PUT")
        body = self._body()
        if path.startswith("/lfs-objects/"):
            oid = path.rsplit("/", 1)[1]
            if hashlib.sha256(body).hexdigest() != oid:
                return self._error(400, "BadRequest", "content does not match its oid")
            with self.state.lock:
                self.state.lfs[oid] = body
                self.state.lfs_uploads.append(oid)
            return self._send(200)
        return self._error(404, "NotFound", f"no route for PUT {path}")

    def _resolve(self, head: bool):
        path = self._record("HEAD" if head else "GET")
        if "/resolve/" not in path:
            return self._error(404, "NotFound", f"no route for {path}", head=head)
        repo_id, _, rest = path.lstrip("/").partition("/resolve/")
        rev, _, filename = rest.partition("/")
        rev = urllib.parse.unquote(rev)
        repo = self.state.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found", head=head)
        commit = repo.branches.get(rev, rev if rev in repo.commits else None)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head=head)
        files = repo.commits[commit]
        if filename not in files:  # the Hub names the commit it looked in
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}
            message = json.dumps({"error": f"{filename} does not exist at {rev}"}).encode()
            return self._send(404, message, headers, head=head)
        data = files[filename]
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "Content-Type": "application/octet-stream",
        }
        return self._send(200, data, headers, head=head)

    def do_HEAD(self):  # noqa: N802
        self._resolve(head=True)

    def do_GET(self):  # noqa: N802
        self._resolve(head=False)


class HubUploadServer:
    """A threaded loopback Hub (127.0.0.1, ephemeral port) that accepts uploads and serves them."""

    def __init__(self, lfs: bool = True) -> None:
        self.state = _State(use_lfs=lfs)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.RequestHandlerClass = type(
            "Handler", (_Handler,), {"state": self.state, "base": self.url}
        )
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubUploadServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of ``repo_id`` at a branch or commit."""
        repo = self.state.repos[repo_id]
        return dict(repo.commits[repo.branches.get(revision, revision)])

    def head(self, repo_id: str, branch: str = "main") -> str:
        """The commit id a branch points at."""
        return self.state.repos[repo_id].branches[branch]

    def add_files(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Commit ``files`` directly (a repository made by something other than ``zoo publish``)."""
        repo = self.state.repos.setdefault(repo_id, _Repo())
        parent = repo.branches.get(branch, "")
        merged = {**(repo.commits.get(parent) or {}), **files}
        commit = _commit_id(parent.encode(), *(k.encode() for k in sorted(files)), *files.values())
        repo.commits[commit] = merged
        repo.branches[branch] = commit
        return commit
