"""A Hugging Face Hub on 127.0.0.1 for the tests: the requests huggingface_hub's snapshot_download makes (the
revision API, the tree listing, HEAD and GET on resolve URLs with ETag, X-Repo-Commit, Content-Length and Range),
answered from a local model folder. `fail` makes every request answer an error (or hang), `drop` cuts a file's
download after some bytes, `listed_sizes` lists a file larger than it is, and `requests` records what was asked."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from quantbench.core.random_model import write_random_model

COMMIT = "c0ffee0000000000000000000000000000000001"


class FakeHub:
    def __init__(self, folder: Path, repo_id: str = "acme/tiny"):
        self.repo_id = repo_id
        self.files = {p.relative_to(folder).as_posix(): p.read_bytes()
                      for p in sorted(folder.rglob("*")) if p.is_file()}
        self.fail: tuple[int, str | None] | str | None = None  # (status, X-Error-Code), or "hang"
        self.drop: dict[str, int] = {}  # path -> bytes sent before the connection is cut (every time)
        self.slow: dict[str, int] = {}  # path -> bytes sent at once, the rest 1 KB every 50 ms (a long download)
        self.slowed = threading.Event()  # set once a slow download has sent its first bytes
        self.listed_sizes: dict[str, int] = {}  # path -> the size the revision API gives (default: the file's)
        self.requests: list[tuple[str, str]] = []
        self.released = threading.Event()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def downloads(self) -> list[str]:
        """The files asked for with GET."""
        return [path.split(f"/resolve/{COMMIT}/", 1)[1] for method, path in self.requests
                if method == "GET" and "/resolve/" in path]

    @staticmethod
    def etag(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(handler.path).path)
        self.requests.append((handler.command, path))
        if self.fail == "hang":
            self.released.wait(60)
            return
        if isinstance(self.fail, tuple):
            status, code = self.fail
            return self._send(handler, status, b'{"error": "no"}', {"X-Error-Code": code} if code else {}, body)
        api = f"/api/models/{self.repo_id}/"
        if path.startswith(api + "revision/"):
            info = {"id": self.repo_id, "sha": COMMIT,  # sizes: what the Hub adds when asked for blobs=true
                    "siblings": [{"rfilename": f, "size": self.listed_sizes.get(f, len(d))}
                                 for f, d in self.files.items()]}
            return self._send(handler, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        if path.startswith(api + "tree/"):
            tree = [{"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                    for f, d in self.files.items()]
            return self._send(handler, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
        resolve = f"/{self.repo_id}/resolve/"
        if path.startswith(resolve):
            name = path[len(resolve):].split("/", 1)[1]
            if name not in self.files:
                return self._send(handler, 404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, body)
            return self._file(handler, name, body)
        self._send(handler, 404, b"", {"X-Error-Code": "RepoNotFound"}, body)

    def _file(self, handler, name: str, body: bool) -> None:
        data = self.files[name]
        headers = {"ETag": f'"{self.etag(data)}"', "X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes"}
        start = 0
        asked = handler.headers.get("Range")
        if asked and body:
            start = int(asked.removeprefix("bytes=").split("-")[0])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        part = data[start:]
        cut = (self.drop.get(name) or self.slow.get(name)) if body else None
        if cut is None or cut <= start:
            return self._send(handler, 206 if start else 200, part, headers, body)
        handler.send_response(206 if start else 200)
        for key, value in {**headers, "Content-Length": str(len(part))}.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(part[:cut - start])
        handler.wfile.flush()
        if name in self.slow:
            self.slowed.set()
            sent = cut
            while sent < len(data) and not self.released.wait(0.05):
                handler.wfile.write(data[sent:sent + 1024])
                handler.wfile.flush()
                sent += 1024
            return
        handler.close_connection = True
        handler.connection.shutdown(2)

    @staticmethod
    def _send(handler, status: int, data: bytes, headers: dict, body: bool) -> None:
        handler.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if body:
            handler.wfile.write(data)


REPO = "acme/tiny"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random model with a sharded transformer: the files the fake Hub serves."""
    return write_random_model(tmp_path_factory.mktemp("rnd") / "tiny", "tiny", max_shard_bytes=256 << 10)


@pytest.fixture
def hub(tiny_model):
    """The fake Hub serving `tiny_model` as REPO (a test module imports this fixture with `from fake_hub import`)."""
    server = FakeHub(tiny_model, REPO)
    yield server
    server.close()


def cached_klein(cache: Path) -> Path:
    """A narrowed random Klein-4B in huggingface_hub's cache layout under `cache`, as a finished download of
    black-forest-labs/FLUX.2-klein-4B leaves it (refs/main naming its snapshot)."""
    repo = cache / "models--black-forest-labs--FLUX.2-klein-4B"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots").mkdir(parents=True)
    write_random_model(repo / "snapshots" / revision, "klein-4b", width_scale=1 / 32)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return repo / "snapshots" / revision
