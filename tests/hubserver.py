"""A small Hugging Face Hub look-alike on 127.0.0.1 for download tests.

It answers the requests ``huggingface_hub`` 2.x makes for ``snapshot_download``:

- ``GET /api/models/{repo}/revision/{rev}``: the repo info (``sha``, ``siblings``);
- ``GET /api/models/{repo}/tree/{rev}?recursive=True``: the file list with git blob ids and, for
  LFS files, ``lfs: {oid: sha256, size, pointerSize}``;
- ``HEAD|GET /{repo}/resolve/{rev}/{file}``: a regular file is served directly with
  ``ETag`` = its git blob sha1 and ``X-Repo-Commit``; an LFS file answers ``302`` to a "CDN" on
  another origin (``localhost`` instead of ``127.0.0.1``, as the Hub sends you to its CDN) with
  ``X-Linked-Etag`` = sha256 and ``X-Linked-Size`` on the redirect itself;
- ``GET /cdn/{sha256}``: the LFS blob, honouring ``Range: bytes=N-`` (used to resume).

Faults for tests: ``cut`` (send half of a blob then drop the connection, ``n`` times),
``fail_retry`` (once a blob was cut, later blob GETs get a 500), ``tamper`` (serve other bytes than announced),
``hang`` (accept connections and never answer). Every request is recorded in ``requests``.

The server runs in a daemon thread and stops by itself after ``lifetime`` seconds; a hung handler
waits at most until the server stops.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def commit_sha(files: Dict[str, bytes], salt: str = "") -> str:
    """A deterministic 40-hex "commit" id for a set of files."""
    h = hashlib.sha1(salt.encode())
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


class FakeRepo:
    """Commits (sha -> {filename: bytes}) and branches (name -> sha) of one model repo."""

    def __init__(self) -> None:
        self.commits: Dict[str, Dict[str, bytes]] = {}
        self.branches: Dict[str, str] = {}

    def commit(self, files: Dict[str, bytes], branch: Optional[str] = "main") -> str:
        sha = commit_sha(files, salt=str(len(self.commits)))
        self.commits[sha] = dict(files)
        if branch:
            self.branches[branch] = sha
        return sha

    def resolve(self, revision: str) -> Optional[str]:
        if revision in self.commits:
            return revision
        return self.branches.get(revision)


class HubServer:
    def __init__(self, repos: Dict[str, FakeRepo], lifetime: float = 120.0) -> None:
        self.repos = repos
        self.lifetime = lifetime
        self.requests: List[Tuple[str, str]] = []
        self.cut: Dict[str, int] = {}  # filename -> how many more GETs to cut in the middle
        self.fail_retry = False  # after a cut, every later blob GET gets a 500
        self.ranges: List[Optional[str]] = []  # the Range header of each blob GET
        self.tamper: Dict[str, bytes] = {}  # filename -> bytes served instead of the real ones
        self.hang = False
        self.was_cut = False
        self.slow = 0.0  # seconds to wait before sending a blob
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cdn = f"http://localhost:{self.port}"  # another origin, like the Hub's CDN

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "HubServer":
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        self._timer.cancel()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def count(self, prefix: str = "") -> int:
        with self._lock:
            return sum(1 for _, path in self.requests if path.startswith(prefix))

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def find_blob(self, sha256: str) -> Optional[Tuple[str, bytes]]:
        for repo in self.repos.values():
            for files in repo.commits.values():
                for name, data in files.items():
                    if hashlib.sha256(data).hexdigest() == sha256:
                        return name, data
        return None


def _handler(server: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers after a test

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_HEAD(self) -> None:
            self._route(head=True)

        def do_GET(self) -> None:
            self._route(head=False)

        # -- helpers -----------------------------------------------------------------------------
        def _send(self, status: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None, head=False,
                  content_length: Optional[int] = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, obj, head=False) -> None:
            self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, head)

        def _not_found(self, what: str, error_code: str = "RepoNotFound", head=False) -> None:
            # huggingface_hub maps X-Error-Code to RepositoryNotFoundError / RevisionNotFoundError
            self._send(404, json.dumps({"error": what}).encode(),
                       {"X-Error-Code": error_code, "X-Error-Message": what, "Content-Type": "application/json"}, head)

        def _route(self, head: bool) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            server.record(self.command, path)
            if server.hang:
                # Accept the connection, read the request, never answer (until the server stops).
                server.stopped.wait(server.lifetime)
                self.close_connection = True
                return
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path)
            if m:
                return self._api(m.group(1), m.group(2), m.group(3), head)
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                return self._resolve(m.group(1), m.group(2), m.group(3), head)
            m = re.fullmatch(r"/cdn/([0-9a-f]{64})", path)
            if m:
                return self._cdn(m.group(1), head)
            self._send(404, b"not found", head=head)

        def _files(self, repo_id: str, revision: str):
            repo = server.repos.get(repo_id)
            if repo is None:
                self._not_found(f"Repository Not Found for url: {self.path}")
                return None, None
            sha = repo.resolve(revision)
            if sha is None:
                self._not_found(f"Invalid rev id: {revision}", "RevisionNotFound")
                return None, None
            return sha, repo.commits[sha]

        def _api(self, repo_id: str, kind: str, revision: str, head: bool) -> None:
            sha, files = self._files(repo_id, revision)
            if files is None:
                return
            if kind == "revision":
                return self._json({"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                                   "siblings": [{"rfilename": n} for n in sorted(files)]}, head)
            tree = []
            for name in sorted(files):
                data = files[name]
                entry = {"type": "file", "path": name, "size": len(data), "oid": git_blob_sha1(data)}
                if name.endswith(LFS_SUFFIXES):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                tree.append(entry)
            self._json(tree, head)

        def _resolve(self, repo_id: str, revision: str, filename: str, head: bool) -> None:
            sha, files = self._files(repo_id, revision)
            if files is None:
                return
            if filename not in files:
                return self._not_found(f"Entry not found: {filename}", "EntryNotFound", head)
            data = files[filename]
            common = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
            if filename.endswith(LFS_SUFFIXES):
                sha256 = hashlib.sha256(data).hexdigest()
                return self._send(302, b"", {**common, "Location": f"{server.cdn}/cdn/{sha256}",
                                             "ETag": f'"{git_blob_sha1(data)}"',
                                             "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data))}, head)
            self._send(200, data, {**common, "ETag": f'"{git_blob_sha1(data)}"'}, head)

        def _cdn(self, sha256: str, head: bool) -> None:
            found = server.find_blob(sha256)
            if found is None:
                return self._send(404, b"no such blob", head=head)
            name, data = found
            data = server.tamper.get(name, data)
            if server.slow and not head:
                time.sleep(server.slow)
            rng = self.headers.get("Range")
            if not head:
                server.ranges.append(rng)
            if server.fail_retry and server.was_cut:
                return self._send(500, b"internal error", head=head)
            start = 0
            if rng:
                m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
                start = int(m.group(1)) if m else 0
            body = data[start:]
            status = 206 if rng else 200
            headers = {"Accept-Ranges": "bytes", "ETag": f'"{sha256}"'}
            if rng:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            if not head and server.cut.get(name, 0) > 0:
                server.cut[name] -= 1
                server.was_cut = True
                self._send(status, body[: len(body) // 2], headers, content_length=len(body))
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(status, body, headers, head)

    return Handler
