"""Fixtures for push/pull: a real CNCF distribution registry on loopback, and a fake one that lies.

The real registry (Debian's docker-registry, installed by scripts/test) runs
once per session on 127.0.0.1 with a free port and a tmp storage dir, and is
always stopped at teardown. The fake serves canned answers from a dict so a
test can make a registry send wrong bytes, wrong sizes or huge manifests.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from castore.digest import hash_bytes
from castore.remote.oci import CONFIG_DIGEST, CONFIG_JSON, blob_sizes, build_oci_manifest
from castore.store import Store, manifest_refs

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
CONFIG = """version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(url: str, proc: subprocess.Popen[bytes], seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``127.0.0.1:PORT`` of a real distribution registry (skipped when the package is missing)."""
    if not Path(REGISTRY_BIN).exists():
        pytest.skip("docker-registry (Debian package docker-registry) is not installed; scripts/test installs it")
    base = tmp_path_factory.mktemp("registry")
    for _ in range(3):  # the free port can be taken between probe and bind: bounded retries
        port = _free_port()
        cfg = base / "config.yml"
        cfg.write_text(CONFIG.format(root=base / "data", port=port))
        log = open(base / "registry.log", "wb")  # noqa: SIM115 - closed at teardown
        proc = subprocess.Popen([REGISTRY_BIN, "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        try:
            if _wait_up(f"http://127.0.0.1:{port}/v2/", proc):
                yield f"127.0.0.1:{port}"
                return
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            log.close()
    pytest.fail("docker-registry did not start: " + (base / "registry.log").read_text()[-2000:])


_counter = iter(range(1, 1 << 30))


@pytest.fixture
def repo(registry: str) -> str:
    """A fresh repository name on the real registry for each test."""
    return f"{registry}/test/r{next(_counter)}-{int(time.time() * 1000) % 100000}"


# --------------------------------------------------------------- fake registry

Route = Callable[[BaseHTTPRequestHandler], None] | tuple[int, dict[str, str], bytes]


class FakeRegistry:
    """A canned-answer HTTP server on 127.0.0.1: ``routes[(method, path)]`` = (status, headers, body) or a callable."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                path = self.path.split("?", 1)[0]
                fake.requests.append((self.command, self.path, dict(self.headers)))
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                route = fake.routes.get((self.command, path))
                if route is None:
                    route = (
                        404,
                        {"Content-Type": "application/json"},
                        b'{"errors":[{"code":"NAME_UNKNOWN","message":"no such thing"}]}',
                    )
                if callable(route):
                    route(self)
                    return
                status, headers, body = route
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def serve_artifact(self, repo: str, tag: str, oci: bytes, blobs: dict[str, bytes]) -> None:
        """Answer like a registry holding ``oci`` under ``tag`` (and by digest) and ``blobs``."""
        mt = {"Content-Type": "application/vnd.oci.image.manifest.v1+json", "Docker-Content-Digest": hash_bytes(oci)}
        for ref in (tag, hash_bytes(oci)):
            self.routes[("GET", f"/v2/{repo}/manifests/{ref}")] = (200, mt, oci)
        for d, data in blobs.items():
            self.routes[("GET", f"/v2/{repo}/blobs/{d}")] = (200, {"Content-Type": "application/octet-stream"}, data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    f = FakeRegistry()
    try:
        yield f
    finally:
        f.close()


def artifact(store: Store, mdigest: str) -> tuple[bytes, dict[str, bytes]]:
    """The OCI manifest push would write for ``mdigest``, and every blob (manifest, config, content) by digest."""
    m = store.load_manifest(mdigest)
    data = store.read_blob(mdigest)
    blobs = {d: store.read_blob(d) for d in manifest_refs(m)}
    sizes = blob_sizes(m)
    sizes.update({d: len(b) for d, b in blobs.items() if d not in sizes})
    blobs[mdigest] = data
    blobs[CONFIG_DIGEST] = CONFIG_JSON
    return build_oci_manifest(mdigest, len(data), sizes.items()), blobs
