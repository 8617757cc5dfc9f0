"""The smallest faithful stand-in for the Hugging Face Hub's HTTP API, for the calls adaptkit makes.

It lets the tests run the real `huggingface_hub` client end to end with no network (reached through
`HF_ENDPOINT`). What it speaks, as the client (2.x) reads it:

- `GET /api/whoami-v2`; `POST /api/validate-yaml`; `POST /api/repos/create` (401 without a token, 403
  outside the token's namespace, 409 when the repo exists); `POST /api/models/R/branch/B`.
- `GET /api/models/R[/revision/REV]` (`sha`, `siblings`) and `GET /api/models/R/tree/REV[/PATH]`.
- `POST /api/models/R/preupload/REV` (every file `regular`, with the remote blob oid so unchanged files
  are skipped) and `POST /api/models/R/commit/REV` (NDJSON: header, base64 files, deletions).
- `HEAD`/`GET /R/resolve/REV/PATH` with `X-Repo-Commit`, `ETag` (the git blob id) and `Content-Length`;
  files the repo's `.gitattributes` marks as LFS (`*.safetensors`, ...) answer, as on the Hub, with a
  302 to a separate CDN origin carrying `X-Linked-Etag` (sha256) and `X-Linked-Size`; errors carry
  `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`).

Private repos are visible only to their owner's token, as on the Hub (401 otherwise).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

#: The patterns the Hub's default `.gitattributes` stores with LFS (a subset: what adapters hold).
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.png", "*.npy")


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    owner: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> full tree

    def resolve(self, revision: str) -> str | None:
        revision = unquote(revision)
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None

    def commit(self, files: dict[str, bytes], branch: str, message: str) -> str:
        parent = self.branches.get(branch, "")
        sha = hashlib.sha1(f"{parent}|{message}|{sorted(files)}|{len(self.commits)}".encode()).hexdigest()
        self.commits[sha] = files
        self.branches[branch] = sha
        return sha


class HubServer:
    """A Hub on 127.0.0.1 (random port) plus its CDN origin; `tokens` maps token -> user name."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []
        self.blobs: dict[str, bytes] = {}  # sha256 -> content, what the CDN serves
        self.hub = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(cdn=False))
        self.cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(cdn=True))
        self.url = f"http://127.0.0.1:{self.hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self.cdn.server_address[1]}"

    def __enter__(self) -> HubServer:
        for server in (self.hub, self.cdn):
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        for server in (self.hub, self.cdn):
            server.shutdown()
            server.server_close()

    def create(self, repo_id: str, owner: str, private: bool = False, files: dict[str, bytes] | None = None) -> Repo:
        """A repo as the Hub creates it (an initial commit with .gitattributes), optionally with files."""
        repo = self.repos[repo_id] = Repo(owner, private)
        attributes = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS)
        repo.commit({".gitattributes": attributes.encode()}, "main", "initial commit")
        if files:
            repo.commit({**repo.commits[repo.branches["main"]], **files}, "main", "add files")
        return repo

    def _handler(self, cdn: bool) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:  # quiet: the tests read `hub.requests`
                pass

            # ---------------------------------------------------------------- plumbing
            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                      content_type: str = "application/json") -> None:
                self.send_response(status)
                headers = {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, status: int, data: object, headers: dict[str, str] | None = None) -> None:
                self._send(status, json.dumps(data).encode(), headers)

            def _error(self, status: int, message: str, code: str | None = None,
                       headers: dict[str, str] | None = None) -> None:
                self._json(status, {"error": message}, {**({"X-Error-Code": code} if code else {}), **(headers or {})})

            def _user(self) -> str | None:
                auth = self.headers.get("Authorization", "")
                return hub.tokens.get(auth.removeprefix("Bearer ").strip()) if auth.startswith("Bearer ") else None

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _repo(self, repo_id: str, write: bool = False) -> Repo | None:
                """The repo if this caller may see it (and write it); otherwise the error is sent, None returned."""
                repo, user = hub.repos.get(repo_id), self._user()
                if repo is None or (repo.private and user != repo.owner):
                    self._error(401 if user is None else 404, "Repository not found", "RepoNotFound")
                    return None
                if write and user != repo.owner:
                    self._error(403 if user else 401, "You don't have the rights to write to this repo")
                    return None
                return repo

            # ---------------------------------------------------------------- routes
            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                url = urlparse(self.path)
                hub.requests.append(f"{self.command} {url.path}")
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                if cdn:
                    blob = hub.blobs.get(parts[-1])
                    if blob is None:
                        return self._error(404, "no such blob")
                    return self._send(200, blob, {"ETag": f'"{parts[-1]}"'}, "application/octet-stream")
                if parts[:2] == ["api", "whoami-v2"]:
                    user = self._user()
                    if user is None:
                        return self._error(401, "Invalid credentials in Authorization header")
                    return self._json(200, {"type": "user", "name": user, "orgs": [],
                                            "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
                if parts[:2] == ["api", "models"] and len(parts) >= 4:
                    repo_id = "/".join(parts[2:4])
                    repo = self._repo(repo_id)
                    if repo is None:
                        return None
                    rest = parts[4:]
                    revision = rest[1] if len(rest) >= 2 else "main"
                    commit = repo.resolve(revision)
                    if commit is None:
                        return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
                    tree = repo.commits[commit]
                    if not rest or rest[0] == "revision":
                        return self._json(200, {"id": repo_id, "modelId": repo_id, "sha": commit,
                                                "private": repo.private,
                                                "siblings": [{"rfilename": path} for path in sorted(tree)]})
                    if rest[0] == "tree":
                        prefix = "/".join(rest[2:])
                        recursive = parse_qs(url.query).get("recursive", ["false"])[0].lower() == "true"
                        return self._json(200, self._tree(tree, prefix, recursive))
                if len(parts) >= 5 and parts[2] == "resolve":
                    return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
                return self._error(404, f"no route for {url.path}")

            def _tree(self, tree: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
                base = prefix.strip("/")
                entries, folders = [], set()
                for path in sorted(p for p in tree if not base or p.startswith(base + "/")):
                    *parents, _ = (path[len(base) + 1:] if base else path).split("/")
                    file = {"type": "file", "path": path, "size": len(tree[path]), "oid": git_blob_id(tree[path])}
                    if recursive:
                        folders.update("/".join([*([base] if base else []), *parents[:depth]])
                                       for depth in range(1, len(parents) + 1))
                        entries.append(file)
                    elif parents:
                        folders.add("/".join([*([base] if base else []), parents[0]]))
                    else:
                        entries.append(file)
                return entries + [{"type": "directory", "path": folder,
                                   "oid": hashlib.sha1(folder.encode()).hexdigest()} for folder in sorted(folders)]

            def _resolve(self, repo_id: str, revision: str, path: str) -> None:
                repo = self._repo(repo_id)
                if repo is None:
                    return None
                commit = repo.resolve(revision)
                if commit is None:
                    return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
                tree = repo.commits[commit]
                if path not in tree:
                    return self._error(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit})
                content = tree[path]
                if any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern) for pattern in LFS_PATTERNS):
                    sha256 = hashlib.sha256(content).hexdigest()
                    hub.blobs[sha256] = content
                    self.send_response(302)
                    for key, value in {"Location": f"{hub.cdn_url}/blobs/{sha256}", "X-Repo-Commit": commit,
                                       "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(content)),
                                       "ETag": f'"{git_blob_id(content)}"', "Content-Length": "0"}.items():
                        self.send_header(key, value)
                    self.end_headers()
                    return None
                return self._send(200, content, {"X-Repo-Commit": commit, "ETag": f'"{git_blob_id(content)}"'},
                                  "application/octet-stream")

            def do_POST(self) -> None:
                url = urlparse(self.path)
                hub.requests.append(f"POST {url.path}")
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                body = self._body()
                if parts == ["api", "validate-yaml"]:
                    return self._json(200, {"errors": [], "warnings": []})
                if parts == ["api", "repos", "create"]:
                    user = self._user()
                    if user is None:
                        return self._error(401, "Invalid credentials in Authorization header")
                    payload = json.loads(body)
                    if payload.get("type", "model") != "model":
                        return self._error(400, "this stand-in serves model repos only")
                    owner = payload.get("organization") or user
                    repo_id = f"{owner}/{payload['name']}"
                    if owner != user:
                        return self._error(403, f"You don't have the rights to create a model under {owner}")
                    if repo_id in hub.repos:
                        return self._json(409, {"error": "You already created this model repo",
                                                "url": f"{hub.url}/{repo_id}"})
                    hub.create(repo_id, user, payload.get("visibility") == "private")
                    return self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                if parts[:2] != ["api", "models"] or len(parts) < 6:
                    return self._error(404, f"no route for {url.path}")
                repo = self._repo("/".join(parts[2:4]), write=True)
                if repo is None:
                    return None
                action, revision = parts[4], parts[5]
                if action == "branch":
                    if revision in repo.branches:
                        return self._error(409, f"Branch {revision} already exists")
                    start = (json.loads(body) if body else {}).get("startingPoint") or "main"
                    repo.branches[revision] = repo.resolve(start)
                    return self._json(200, {})
                commit = repo.resolve(revision)
                if commit is None:
                    return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
                tree = repo.commits[commit]
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._json(200, {"files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                         "oid": git_blob_id(tree[f["path"]]) if f["path"] in tree else None} for f in files]})
                if action == "commit":
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    header = next(line["value"] for line in lines if line["key"] == "header")
                    if header.get("parentCommit") and header["parentCommit"] != commit:
                        return self._error(412, "parent commit is not the head of the branch")
                    files = dict(tree)
                    for line in lines:
                        value = line["value"]
                        if line["key"] == "file":
                            files[value["path"]] = base64.b64decode(value["content"])
                        elif line["key"] == "deletedFile":
                            files.pop(value["path"], None)
                        elif line["key"] != "header":
                            return self._error(400, f"this stand-in does not take {line['key']} operations")
                    sha = repo.commit(files, unquote(revision), header["summary"])
                    return self._json(200, {"commitUrl": f"{hub.url}/{'/'.join(parts[2:4])}/commit/{sha}",
                                            "commitOid": sha, "pullRequestUrl": None})
                return self._error(404, f"no route for {url.path}")

        return Handler
