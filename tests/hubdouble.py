"""The suite's Hugging Face Hub: a small HTTP server on loopback answering exactly the requests
huggingface_hub 2.4's ``snapshot_download``, ``hf_hub_download``, ``repo_info`` and
``list_repo_tree`` make, and refusing what the Hub refuses (docs/testing.md lists the endpoints):

- ``GET /api/{models|datasets}/{owner}/{name}[/revision/{rev}]``: the commit a revision names, and
  the repository's files (``sha``, ``siblings``);
- ``GET /api/{models|datasets}/{owner}/{name}/tree/{rev}[/{path}]?recursive=true``: every file with
  its git blob id and, for an LFS file, its SHA-256 (``lfs.oid``);
- ``HEAD`` and ``GET /[datasets/]{owner}/{name}/resolve/{rev}/{path}``: a file, with the headers the
  client requires (``X-Repo-Commit``, ``ETag``, ``Content-Length``).

Refusals, as the Hub answers them (status and ``X-Error-Code``, which huggingface_hub turns into its
errors): an unknown or private repository without a token that may read it, 401 ``RepoNotFound``; a
gated one, 401 ``GatedRepo`` anonymously, 403 with a token not granted; an unknown revision, 404
``RevisionNotFound``; an unknown file, 404 ``EntryNotFound``; a token the Hub does not know, 401
"Invalid credentials in Authorization header", even for a public repository. No Xet: files are
served over plain HTTP, the Hub's path for clients without hf_xet and for non-LFS files.

``corrupt(repo, path)`` serves other bytes than the listing describes: a damaged transfer or a
mirror that lies, which the trainer must refuse.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from werkzeug.serving import BaseWSGIServer, make_server

StartResponse = Callable[..., Any]
Environ = dict[str, Any]
LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".gguf")  # stored in LFS, as the Hub's .gitattributes has it


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class Repo:
    kind: str  # "model" or "dataset"
    repo_id: str
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> path -> content
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit
    private: bool = False
    gated: bool = False
    readers: set[str] = field(default_factory=set)  # tokens that may read it (private or gated)
    corrupted: set[tuple[str, str]] = field(default_factory=set)  # (commit, path) served damaged

    def commit_of(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


class LocalHub:
    """The Hub as a WSGI application; repositories are added by the tests."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.tokens: set[str] = set()  # every token the Hub knows
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, token)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ what tests set up
    def push(self, kind: str, repo_id: str, files: Mapping[str, bytes], *, branch: str = "main", **options: Any) -> str:
        """A new commit of ``files`` (the whole tree) on ``branch``; the repository is created with
        ``options`` (private, gated, readers) on its first push. Returns the commit."""
        repo = self.repos.setdefault((kind, repo_id), Repo(kind, repo_id, **options))
        digest = hashlib.sha1(usedforsecurity=False)
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_id(files[path]).encode())
        digest.update(repr(sorted(repo.commits)).encode())  # the same tree pushed again is a new commit
        commit = digest.hexdigest()
        repo.commits[commit] = dict(files)
        repo.refs[branch] = commit
        return commit

    def corrupt(self, kind: str, repo_id: str, revision: str, path: str) -> None:
        repo = self.repos[(kind, repo_id)]
        commit = repo.commit_of(revision)
        assert commit is not None
        repo.corrupted.add((commit, path))

    def downloads(self) -> list[str]:
        """The paths of every file GET, in order."""
        return [path for method, path, _ in self.requests if method == "GET" and "/resolve/" in path]

    # ------------------------------------------------------------------ WSGI
    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        authorization = environ.get("HTTP_AUTHORIZATION", "")
        token = authorization.removeprefix("Bearer ").strip() or None
        with self._lock:
            self.requests.append((method, path, token))
        status, headers, body = self._answer(method, path, parse_qs(environ.get("QUERY_STRING", "")), token)
        start_response(status, headers)
        return [b""] if method == "HEAD" else [body]

    def _answer(
        self, method: str, path: str, query: dict[str, list[str]], token: str | None
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        if token is not None and token not in self.tokens:
            return _error("401 Unauthorized", None, "Invalid credentials in Authorization header")
        segments = [unquote(s) for s in path.strip("/").split("/")]
        if segments[:1] == ["api"] and len(segments) >= 4 and segments[1] in ("models", "datasets"):
            kind = "model" if segments[1] == "models" else "dataset"
            return self._api(kind, f"{segments[2]}/{segments[3]}", segments[4:], query, token)
        kind = "model"
        if segments[:1] == ["datasets"]:
            kind, segments = "dataset", segments[1:]
        if len(segments) >= 5 and segments[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(kind, f"{segments[0]}/{segments[1]}", segments[3], "/".join(segments[4:]), token)
        return _error("404 Not Found", None, "Not found")

    def _repo(self, kind: str, repo_id: str, token: str | None) -> Repo | tuple[str, list[tuple[str, str]], bytes]:
        repo = self.repos.get((kind, repo_id))
        if repo is None or (repo.private and token not in repo.readers):
            return _error("401 Unauthorized", "RepoNotFound", "Repository not found")
        if repo.gated and token not in repo.readers:
            status = "401 Unauthorized" if token is None else "403 Forbidden"
            return _error(status, "GatedRepo", "Access to this repository is restricted")
        return repo

    def _api(
        self, kind: str, repo_id: str, rest: list[str], query: dict[str, list[str]], token: str | None
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        repo = self._repo(kind, repo_id, token)
        if not isinstance(repo, Repo):
            return repo
        if not rest or rest[0] == "revision":
            revision = rest[1] if len(rest) > 1 else "main"
            commit = repo.commit_of(revision)
            if commit is None:
                return _error("404 Not Found", "RevisionNotFound", f"Invalid rev id: {revision}")
            files = repo.commits[commit]
            info = {
                "id": repo_id,
                "sha": commit,
                "private": repo.private,
                "gated": "manual" if repo.gated else False,
                "siblings": [{"rfilename": name} for name in sorted(files)],
            }
            return _json(info)
        if rest[0] == "tree" and len(rest) >= 2:
            commit = repo.commit_of(rest[1])
            if commit is None:
                return _error("404 Not Found", "RevisionNotFound", f"Invalid rev id: {rest[1]}")
            under = "/".join(rest[2:]).strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            return _json(_tree(repo.commits[commit], under, recursive))
        return _error("404 Not Found", None, "Not found")

    def _resolve(
        self, kind: str, repo_id: str, revision: str, path: str, token: str | None
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        repo = self._repo(kind, repo_id, token)
        if not isinstance(repo, Repo):
            return repo
        commit = repo.commit_of(revision)
        if commit is None:
            return _error("404 Not Found", "RevisionNotFound", f"Invalid rev id: {revision}")
        content = repo.commits[commit].get(path)
        if content is None:
            status, headers, body = _error("404 Not Found", "EntryNotFound", f"{path} does not exist")
            return status, [*headers, ("X-Repo-Commit", commit)], body
        etag = hashlib.sha256(content).hexdigest() if path.endswith(LFS_SUFFIXES) else git_blob_id(content)
        if (commit, path) in repo.corrupted:
            content = bytes([content[0] ^ 0xFF]) + content[1:] if content else b"x"
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(len(content))),
            ("ETag", f'"{etag}"'),
            ("X-Repo-Commit", commit),
        ]
        return "200 OK", headers, content


def _tree(files: Mapping[str, bytes], under: str, recursive: bool) -> list[dict[str, Any]]:
    prefix = f"{under}/" if under else ""
    entries: list[dict[str, Any]] = []
    folders: set[str] = set()
    for name in sorted(files):
        if not name.startswith(prefix):
            continue
        relative = name[len(prefix) :]
        if "/" in relative and not recursive:
            folders.add(prefix + relative.split("/", 1)[0])
            continue
        for depth in range(1, relative.count("/") + 1):
            folders.add(prefix + "/".join(relative.split("/")[:depth]))
        content = files[name]
        entry: dict[str, Any] = {"type": "file", "oid": git_blob_id(content), "size": len(content), "path": name}
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
        entries.append(entry)
    entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": folder} for folder in sorted(folders)]
    return entries


def _json(value: Any) -> tuple[str, list[tuple[str, str]], bytes]:
    body = json.dumps(value).encode()
    return "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body


def _error(status: str, code: str | None, message: str) -> tuple[str, list[tuple[str, str]], bytes]:
    body = json.dumps({"error": message}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("X-Error-Message", message)]
    if code is not None:
        headers.append(("X-Error-Code", code))
    return status, headers, body


class HubServer:
    """:class:`LocalHub` served on a loopback port in a thread."""

    def __init__(self, port: int) -> None:
        self.hub = LocalHub()
        self._server: BaseWSGIServer = make_server("127.0.0.1", port, self.hub, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.endpoint = f"http://127.0.0.1:{port}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
