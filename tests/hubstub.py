"""A local stand-in for the Hugging Face Hub, for tests that drive the real huggingface_hub client.

It is an HTTP server on 127.0.0.1 (free port, one thread per connection) that answers the
endpoints huggingface_hub calls for models, the way huggingface.co answers them (status codes,
``X-Error-Code``/``X-Error-Message``, ``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``/``X-Linked-Size``,
``Content-Length``, redirects):

- ``GET /api/models?search=&author=&limit=&sort=``: model search (paginated with a ``Link`` header)
- ``GET /api/models/{repo_id}`` and ``/api/models/{repo_id}/revision/{rev}``: model info
  (``blobs=true`` adds sizes and LFS info, ``expand=`` selects fields)
- ``GET /api/models/{repo_id}/tree/{rev}[/{path}]``: file listing
- ``GET /api/whoami-v2``: the user a registered token belongs to
- ``HEAD``/``GET /{repo_id}/resolve/{rev}/{filename}``: regular files answer through a same-host
  ``307`` to ``/api/resolve-cache/...`` (as huggingface.co does); LFS files (weights) answer ``302``
  to a second "CDN" server on another port, so the client drops the Authorization header there.

Repos are registered from a folder (e.g. a tiny model), from a dict of files, or as "config-only"
repos whose weight files are listed (names, sizes) but whose content is not served. Gated repos
answer 401 (no token) / 403 (token without access) with ``X-Error-Code: GatedRepo``; unknown
repos 401/404 ``RepoNotFound``; unknown tokens 401 "Invalid credentials in Authorization header".
Every request is recorded (``stub.requests``). ``stub.fail_mode`` simulates an unreachable Hub
("drop": close connections unanswered; "hang": answer nothing for ``hang_seconds``; "503"), and
``dead_endpoint()`` gives a URL where nothing listens.

Usage::

    with HubStub() as hub:
        hub.add_model_dir("org/tiny", build_tiny_model("qwen2"))
        hub.add_config_only("Qwen/Qwen2.5-7B-Instruct", config, gated=False)
        hub.add_token("hf_stubtoken123456", grants=["meta-llama/Llama-3.1-8B"])
        os.environ["HF_ENDPOINT"] = hub.endpoint
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack",
                ".onnx", ".model", ".npz", ".pkl")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub stores any file over 10 MiB in LFS
_TIMESTAMP = "2024-09-19T12:00:00.000Z"
_API_SUBPATHS = {"resolve", "tree", "blob", "raw", "refs", "commit", "discussions", "settings",
                 "revision", "paths-info"}
Gated = Literal[False, "auto", "manual"]


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class StubFile:
    """One file of a repo: content (or only a declared size for listed-only files)."""

    path: str
    data: bytes | None
    size: int
    lfs: bool
    sha256: str
    git_sha1: str

    @classmethod
    def from_bytes(cls, path: str, data: bytes) -> StubFile:
        lfs = path.endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_SIZE
        sha256 = hashlib.sha256(data).hexdigest()
        pointer = _lfs_pointer(sha256, len(data)) if lfs else data
        return cls(path, data, len(data), lfs, sha256, _git_blob_sha1(pointer))

    @classmethod
    def listed_only(cls, path: str, size: int) -> StubFile:
        # Deterministic fake digest: the content is never served, only described.
        sha256 = hashlib.sha256(f"{path}:{size}".encode()).hexdigest()
        return cls(path, None, size, True, sha256, _git_blob_sha1(_lfs_pointer(sha256, size)))

    @property
    def etag(self) -> str:
        """What huggingface.co sends as the file's etag: sha256 for LFS files, git sha1 otherwise."""
        return self.sha256 if self.lfs else self.git_sha1


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n").encode()


@dataclass
class StubRepo:
    """A model repo the stand-in serves."""

    repo_id: str
    files: dict[str, StubFile]
    gated: Gated = False
    private: bool = False
    branches: tuple[str, ...] = ("main",)
    downloads: int = 0
    likes: int = 0
    tags: list[str] = field(default_factory=list)
    pipeline_tag: str | None = "text-generation"
    library_name: str | None = "transformers"

    @property
    def sha(self) -> str:
        """Commit id: stable for a given repo id and content."""
        h = hashlib.sha1(self.repo_id.encode())
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + self.files[name].git_sha1.encode())
        return h.hexdigest()

    def resolve_revision(self, revision: str) -> str | None:
        """The commit a branch name or commit id points to, None if unknown."""
        return self.sha if revision in self.branches or revision == self.sha else None

    def config(self) -> dict[str, Any] | None:
        f = self.files.get("config.json")
        if f is None or f.data is None:
            return None
        try:
            data = json.loads(f.data)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None


@dataclass
class RecordedRequest:
    """One request the stand-in received (server: "hub" or "cdn")."""

    server: str
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int = 0

    @property
    def authorization(self) -> str | None:
        """The Authorization header as sent, or None."""
        for k, v in self.headers.items():
            if k.lower() == "authorization":
                return v
        return None


@dataclass
class _Token:
    user: str
    grants: set[str]


def dead_endpoint() -> str:
    """A http://127.0.0.1:<port> URL where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, stub: HubStub, role: str) -> None:
        self.stub = stub
        self.role = role
        super().__init__(("127.0.0.1", 0), _Handler)


class HubStub:
    """The stand-in: register repos and tokens, start it, point HF_ENDPOINT at ``.endpoint``."""

    def __init__(self, *, page_size: int = 1000, hang_seconds: float = 30.0) -> None:
        self.repos: dict[str, StubRepo] = {}
        self.tokens: dict[str, _Token] = {}
        self.requests: list[RecordedRequest] = []
        self.page_size = page_size
        self.fail_mode: Literal["drop", "hang", "503"] | None = None
        self.hang_seconds = hang_seconds
        self._lock = threading.Lock()
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> HubStub:
        """Start the Hub server and its CDN server on free ports."""
        if self._servers:
            return self
        for role in ("hub", "cdn"):
            server = _Server(self, role)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=f"hubstub-{role}", daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop both servers and close their sockets."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> HubStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The Hub URL to put in HF_ENDPOINT."""
        if not self._servers:
            raise RuntimeError("HubStub is not started")
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn_endpoint(self) -> str:
        """Where LFS downloads are redirected to (another origin than the Hub)."""
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    # ---- registration ----------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: Mapping[str, bytes | str | dict[str, Any]], *,
                 gated: Gated = False, private: bool = False, branches: Iterable[str] = ("main",),
                 listed_only: Mapping[str, int] | None = None, downloads: int = 0,
                 tags: Iterable[str] = ()) -> StubRepo:
        """Register a repo from in-memory files (dicts are written as JSON)."""
        stub_files: dict[str, StubFile] = {}
        for name, content in files.items():
            if isinstance(content, dict):
                content = json.dumps(content, indent=2)
            if isinstance(content, str):
                content = content.encode()
            stub_files[name] = StubFile.from_bytes(name, content)
        for name, size in (listed_only or {}).items():
            stub_files[name] = StubFile.listed_only(name, int(size))
        repo = StubRepo(repo_id, stub_files, gated=gated, private=private, branches=tuple(branches),
                        downloads=downloads, tags=list(tags))
        with self._lock:
            self.repos[repo_id] = repo
        return repo

    def add_model_dir(self, repo_id: str, folder: str | os.PathLike[str], **kwargs: Any) -> StubRepo:
        """Register a repo serving every file of a local folder (hidden files skipped)."""
        root = Path(folder)
        files: dict[str, bytes | str | dict[str, Any]] = {}
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if p.is_file() and not any(part.startswith(".") for part in rel.split("/")):
                files[rel] = p.read_bytes()
        return self.add_repo(repo_id, files, **kwargs)

    def add_config_only(self, repo_id: str, config: dict[str, Any], *,
                        weights: Literal["safetensors", "bin"] | Mapping[str, int] | None = "safetensors",
                        **kwargs: Any) -> StubRepo:
        """Register a repo that serves ``config`` as config.json without weight content.

        ``weights`` lists weight files by name and size (shown by model info and HEAD, not
        downloadable): "safetensors" (default) or "bin" shards sized from the config's parameter
        count in bf16, a mapping name -> size, or None for no weight files at all.
        """
        listed: dict[str, int] = {}
        if isinstance(weights, Mapping):
            listed = dict(weights)
        elif weights is not None:
            listed = _shard_listing(config, weights)
        files: dict[str, bytes | str | dict[str, Any]] = {"config.json": config,
                                                          "generation_config.json": {"_from_model_config": True}}
        extra = kwargs.pop("files", None) or {}
        files.update(extra)
        return self.add_repo(repo_id, files, listed_only=listed, **kwargs)

    def add_token(self, token: str, *, user: str = "stub-user", grants: Iterable[str] = ()) -> None:
        """Register a valid token; ``grants`` are the gated/private repos it may read."""
        with self._lock:
            self.tokens[token] = _Token(user, set(grants))

    # ---- inspection ------------------------------------------------------------------------
    def requests_to(self, fragment: str, *, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose path contains ``fragment`` (optionally of one method)."""
        with self._lock:
            return [r for r in self.requests if fragment in r.path and (method is None or r.method == method)]

    def clear_requests(self) -> None:
        """Forget recorded requests."""
        with self._lock:
            self.requests.clear()

    def _record(self, rec: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(rec)


def _shard_listing(config: dict[str, Any], kind: str) -> dict[str, int]:
    """Plausible weight shard names and sizes (bf16, ~5 GB shards) for a config."""
    from fmllm_tui.catalogue import param_count

    try:
        total = max(param_count(config) * 2, 1)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        total = 1_000_000_000  # a partial config: any plausible size will do

    shard = 5_000_000_000
    n = max(1, math.ceil(total / shard))
    ext, stem = (".safetensors", "model") if kind == "safetensors" else (".bin", "pytorch_model")
    if n == 1:
        return {f"{stem}{ext}": total}
    sizes = [shard] * (n - 1) + [total - shard * (n - 1)]
    listing = {f"{stem}-{i + 1:05d}-of-{n:05d}{ext}": s for i, s in enumerate(sizes)}
    listing[f"{stem}{ext}.index.json"] = 30_000
    return listing


class _Reply(Exception):
    """Raised inside the handler to send an error answer."""

    def __init__(self, status: int, code: str | None, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # Silent: the default logs to stderr, and tests assert nothing secret gets printed.
        return

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    # ---- plumbing --------------------------------------------------------------------------
    def _handle(self, method: str) -> None:
        stub = self.server.stub
        parts = urlsplit(self.path)
        rec = RecordedRequest(self.server.role, method, unquote(parts.path),
                              parse_qs(parts.query), {k: v for k, v in self.headers.items()})
        stub._record(rec)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        mode = stub.fail_mode
        if mode in ("drop", "hang"):
            if mode == "hang":
                time.sleep(stub.hang_seconds)
            self.close_connection = True
            rec.status = -1
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._status = 0
        try:
            if mode == "503":
                raise _Reply(503, None, "Service Unavailable")
            if self.server.role == "cdn":
                self._cdn(method, parts.path)
            else:
                self._route(method, parts.path, parse_qs(parts.query))
        except _Reply as r:
            body = json.dumps({"error": r.message}).encode()
            headers = {"Content-Type": "application/json; charset=utf-8", **r.headers}
            if r.code:
                headers["X-Error-Code"] = r.code
            headers["X-Error-Message"] = r.message
            self._send(r.status, body if method != "HEAD" else b"", headers, len(body))
        except Exception as exc:  # a stand-in bug must answer 500, not hang the client
            body = json.dumps({"error": f"hub stand-in crashed: {exc!r}"}).encode()
            self._send(500, body if method != "HEAD" else b"", {"Content-Type": "application/json"})
        rec.status = self._status

    def _send(self, status: int, body: bytes, headers: Mapping[str, str], length: int | None = None) -> None:
        self._status = status
        self.send_response(status)
        self.send_header("X-Request-Id", f"Root=1-stub-{uuid.uuid4().hex[:12]}")
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _json(self, data: Any, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self._send(200, body, {"Content-Type": "application/json; charset=utf-8", **(headers or {})})

    # ---- auth ------------------------------------------------------------------------------
    def _token(self) -> _Token | None:
        """The caller's token (None if anonymous); an unknown token is refused like the Hub does."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        value = auth.split(" ", 1)[1].strip() if auth.lower().startswith("bearer ") else auth.strip()
        tok = self.server.stub.tokens.get(value)
        if tok is None:
            raise _Reply(401, None, "Invalid credentials in Authorization header")
        return tok

    def _repo(self, repo_id: str, token: _Token | None) -> StubRepo:
        repo = self.server.stub.repos.get(repo_id)
        visible = repo is not None and (not repo.private or (token is not None and repo_id in token.grants))
        if not visible:
            # Anonymous callers get 401 (the Hub won't say whether a private repo exists).
            raise _Reply(401 if token is None else 404, "RepoNotFound", "Repository not found")
        assert repo is not None
        return repo

    def _check_gate(self, repo: StubRepo, token: _Token | None) -> None:
        if not repo.gated:
            return
        if token is None:
            raise _Reply(401, "GatedRepo",
                         f"Access to model {repo.repo_id} is restricted. You must have access to it "
                         "and be authenticated to access it. Please log in.")
        if repo.repo_id not in token.grants:
            raise _Reply(403, "GatedRepo",
                         f"Access to model {repo.repo_id} is restricted and you are not in the "
                         f"authorized list. Visit https://huggingface.co/{repo.repo_id} to ask for access.")

    @staticmethod
    def _commit(repo: StubRepo, revision: str) -> str:
        commit = repo.resolve_revision(revision)
        if commit is None:
            raise _Reply(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    # ---- routes ----------------------------------------------------------------------------
    def _route(self, method: str, raw_path: str, query: dict[str, list[str]]) -> None:
        segs = [unquote(s) for s in raw_path.strip("/").split("/")] if raw_path.strip("/") else []
        if segs[:2] == ["api", "models"] and method == "GET":
            if len(segs) == 2:
                return self._search(query)
            repo_id, rest = _split_repo(segs[2:])
            if not rest:
                return self._info(repo_id, "main", query)
            if rest[0] == "revision" and len(rest) >= 2:
                return self._info(repo_id, "/".join(rest[1:]), query)
            if rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo_id, rest[1], "/".join(rest[2:]), query)
        if segs == ["api", "whoami-v2"] and method == "GET":
            return self._whoami()
        if segs[:3] == ["api", "resolve-cache", "models"] and method in ("GET", "HEAD"):
            # /api/resolve-cache/models/{repo_id}/{commit}/{filename}
            repo_id, rest = _split_repo(segs[3:], keywords=set())
            if len(rest) >= 2:
                return self._file(method, repo_id, rest[0], "/".join(rest[1:]), cached=True)
        if "resolve" in segs and method in ("GET", "HEAD"):
            i = segs.index("resolve")
            if 1 <= i <= 2 and len(segs) > i + 2:
                return self._file(method, "/".join(segs[:i]), segs[i + 1], "/".join(segs[i + 2:]))
        raise _Reply(404, None, "Sorry, we can't find the page you are looking for.")

    def _whoami(self) -> None:
        token = self._token()
        if token is None:
            raise _Reply(401, None, "Invalid credentials in Authorization header")
        self._json({"type": "user", "id": hashlib.md5(token.user.encode()).hexdigest()[:24],
                    "name": token.user, "fullname": token.user, "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "stub", "role": "read"}}})

    def _search(self, query: dict[str, list[str]]) -> None:
        stub = self.server.stub
        token = self._token()
        needle = (query.get("search") or [""])[0].lower()
        authors = query.get("author")
        author = authors[0] if authors else None
        limit = int((query.get("limit") or ["0"])[0] or 0)
        start = int((query.get("cursor") or ["0"])[0] or 0)
        hits = [r for r in stub.repos.values()
                if needle in r.repo_id.lower()
                and (author is None or r.repo_id.split("/")[0] == author)
                and (not r.private or (token is not None and r.repo_id in token.grants))]
        if (query.get("sort") or [""])[0] in ("downloads", "likes"):
            key = (query.get("sort") or ["downloads"])[0]
            hits.sort(key=lambda r: getattr(r, key), reverse=True)
        if limit:
            hits = hits[:limit]
        page = hits[start:start + stub.page_size]
        headers: dict[str, str] = {}
        if start + stub.page_size < len(hits):
            base = {k: v for k, v in query.items() if k != "cursor"}
            qs = "&".join(f"{k}={quote(x)}" for k, vs in base.items() for x in vs)
            nxt = f"{stub.endpoint}/api/models?{qs}&cursor={start + stub.page_size}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._json([_summary(r) for r in page], headers)

    def _info(self, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
        token = self._token()
        repo = self._repo(repo_id, token)
        commit = self._commit(repo, revision)
        blobs = (query.get("blobs") or ["false"])[0].lower() == "true"
        data = _summary(repo)
        data.update({
            "author": repo_id.split("/")[0] if "/" in repo_id else None,
            "sha": commit,
            "lastModified": _TIMESTAMP,
            "disabled": False,
            "config": _config_summary(repo),
            "cardData": {"license": "other"},
            "spaces": [],
            "siblings": [_sibling(f, blobs) for f in sorted(repo.files.values(), key=lambda f: f.path)],
            "usedStorage": sum(f.size for f in repo.files.values()),
        })
        st = _safetensors_summary(repo)
        if st is not None:
            data["safetensors"] = st
        expand = query.get("expand[]") or query.get("expand")
        if expand:
            data = {k: v for k, v in data.items() if k in {"_id", "id", *expand}}
        self._json(data)

    def _tree(self, repo_id: str, revision: str, path: str, query: dict[str, list[str]]) -> None:
        token = self._token()
        repo = self._repo(repo_id, token)
        self._commit(repo, revision)
        recursive = (query.get("recursive") or ["false"])[0].lower() == "true"
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for f in sorted(repo.files.values(), key=lambda f: f.path):
            if not f.path.startswith(prefix):
                continue
            rel = f.path[len(prefix):]
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                d = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(d, {"type": "directory", "oid": _git_blob_sha1(d.encode()),
                                           "size": 0, "path": d})
            if recursive or len(parts) == 1:
                entry: dict[str, Any] = {"type": "file", "oid": f.git_sha1, "size": f.size, "path": f.path}
                if f.lfs:
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(_lfs_pointer(f.sha256, f.size))}
                entries[f.path] = entry
        if prefix and not entries:
            raise _Reply(404, "EntryNotFound", f"{path} does not exist on \"{revision}\"")
        self._json(list(entries.values()))

    def _file(self, method: str, repo_id: str, revision: str, filename: str, *, cached: bool = False) -> None:
        stub = self.server.stub
        token = self._token()
        repo = self._repo(repo_id, token)
        commit = self._commit(repo, revision)
        self._check_gate(repo, token)
        f = repo.files.get(filename)
        common = {"X-Repo-Commit": commit, "Access-Control-Expose-Headers": "X-Repo-Commit,ETag,X-Linked-Etag,X-Linked-Size"}
        if f is None:
            raise _Reply(404, "EntryNotFound", "Entry not found", headers={"X-Repo-Commit": commit})
        if f.lfs:
            location = f"{stub.cdn_endpoint}/repos/{f.sha256}?name={quote(f.path)}&expires=3600"
            headers = {**common, "Location": location, "ETag": f'"{f.git_sha1}"',
                       "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size),
                       "Content-Type": "text/plain; charset=utf-8"}
            body = f"Found. Redirecting to {location}".encode()
            self._send(302, body if method == "GET" else b"", headers, len(body))
            return
        if not cached and revision != commit:
            # huggingface.co answers branch-addressed small files through its resolve cache.
            location = f"/api/resolve-cache/models/{repo_id}/{commit}/{quote(filename)}"
            body = f"Temporary Redirect. Redirecting to {location}".encode()
            self._send(307, body if method == "GET" else b"", {**common, "Location": location,
                                                                "Content-Type": "text/plain; charset=utf-8"}, len(body))
            return
        assert f.data is not None
        headers = {**common, "ETag": f'"{f.git_sha1}"', "Content-Type": _content_type(f.path),
                   "Accept-Ranges": "bytes"}
        self._send(200, f.data if method == "GET" else b"", headers, len(f.data))

    def _cdn(self, method: str, raw_path: str) -> None:
        sha = raw_path.rsplit("/", 1)[-1]
        f = next((f for r in self.server.stub.repos.values() for f in r.files.values() if f.sha256 == sha), None)
        if f is None or not raw_path.startswith("/repos/"):
            raise _Reply(404, None, "NoSuchKey")
        if f.data is None:
            # Listed-only weights: the stand-in describes them but has no content to give.
            raise _Reply(501, None, f"the Hub stand-in does not serve the content of {f.path}")
        data, status = f.data, 200
        headers = {"ETag": f'"{f.sha256}"', "Content-Type": "application/octet-stream",
                   "Accept-Ranges": "bytes"}
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            first, _, last = rng[6:].partition("-")
            lo = int(first or 0)
            hi = int(last) if last else len(data) - 1
            headers["Content-Range"] = f"bytes {lo}-{hi}/{len(data)}"
            data, status = data[lo:hi + 1], 206
        self._send(status, data if method == "GET" else b"", headers, len(data))


def _split_repo(segs: list[str], keywords: set[str] | None = None) -> tuple[str, list[str]]:
    """Split path segments into (repo_id, rest): repo ids have one or two parts."""
    kw = _API_SUBPATHS if keywords is None else keywords
    if len(segs) >= 2 and segs[1] not in kw:
        return f"{segs[0]}/{segs[1]}", segs[2:]
    return segs[0], segs[1:]


def _summary(repo: StubRepo) -> dict[str, Any]:
    """The fields model search returns for each model."""
    return {
        "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "likes": repo.likes,
        "downloads": repo.downloads,
        "private": repo.private,
        "gated": repo.gated,
        "pipeline_tag": repo.pipeline_tag,
        "library_name": repo.library_name,
        "tags": [*(t for t in [repo.library_name] if t), *repo.tags],
        "createdAt": _TIMESTAMP,
    }


def _config_summary(repo: StubRepo) -> dict[str, Any] | None:
    cfg = repo.config()
    if cfg is None:
        return None
    out: dict[str, Any] = {k: cfg[k] for k in ("architectures", "model_type", "auto_map") if k in cfg}
    tok = repo.files.get("tokenizer_config.json")
    if tok is not None and tok.data is not None:
        try:
            tc = json.loads(tok.data)
            out["tokenizer_config"] = {k: tc[k] for k in ("bos_token", "eos_token", "pad_token", "chat_template")
                                       if k in tc}
        except ValueError:
            pass
    return out


def _safetensors_summary(repo: StubRepo) -> dict[str, Any] | None:
    """Parameter counts per dtype read from served safetensors headers (as the Hub shows them)."""
    counts: dict[str, int] = {}
    for f in repo.files.values():
        if not f.path.endswith(".safetensors") or f.data is None or len(f.data) < 8:
            continue
        n = int.from_bytes(f.data[:8], "little")
        try:
            header = json.loads(f.data[8:8 + n])
        except ValueError:
            continue
        for name, meta in header.items():
            if name != "__metadata__":
                counts[meta["dtype"]] = counts.get(meta["dtype"], 0) + math.prod(meta["shape"])
    return {"parameters": counts, "total": sum(counts.values())} if counts else None


def _sibling(f: StubFile, blobs: bool) -> dict[str, Any]:
    if not blobs:
        return {"rfilename": f.path}
    out: dict[str, Any] = {"rfilename": f.path, "size": f.size, "blobId": f.git_sha1}
    if f.lfs:
        out["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": len(_lfs_pointer(f.sha256, f.size))}
    return out


def _content_type(path: str) -> str:
    if path.endswith(".json"):
        return "application/json; charset=utf-8"
    if path.endswith((".txt", ".md", ".jinja", ".py")):
        return "text/plain; charset=utf-8"
    return "application/octet-stream"
