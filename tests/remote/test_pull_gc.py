"""gc running in the middle of a pull: content the pull found in the store and then lost to gc is
fetched again before the commit (commit_manifest's redo), so the catalog never points at a missing blob."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from castore.digest import hash_bytes
from castore.store import Store
from castore.testing.compare import assert_trees_equal
from tests.helpers import run_cli
from tests.remote.registry import FakeRegistry, artifact

REPO = "gc/race"


def test_gc_during_pull_refetches_what_it_deleted(tmp_path: Path, fake: FakeRegistry) -> None:
    src, only_shared = tmp_path / "src", tmp_path / "shared"
    (src / "d").mkdir(parents=True)
    only_shared.mkdir()
    shared, new = b"shared content\n" * 100, b"new content\n" * 100
    (src / "d/shared").write_bytes(shared)
    (src / "d/new").write_bytes(new)
    (only_shared / "shared").write_bytes(shared)
    a, b = tmp_path / "a", tmp_path / "b"
    d = run_cli("ingest", src, store=a, check=True).stdout.decode().strip()
    oci, blobs = artifact(Store.open(str(a)), d)
    fake.serve_artifact(REPO, "v1", oci, blobs)
    run_cli("ingest", only_shared, store=b, check=True)  # unnamed: gc --grace 0 may take it
    x, y = hash_bytes(shared), hash_bytes(new)
    assert Store.open(str(b)).has_blob(x)

    started = threading.Event()

    def slow(h: BaseHTTPRequestHandler) -> None:
        started.set()
        time.sleep(3)  # gc runs meanwhile
        h.send_response(200)
        h.send_header("Content-Length", str(len(new)))
        h.end_headers()
        h.wfile.write(new)

    fake.routes[("GET", f"/v2/{REPO}/blobs/{y}")] = slow
    gc_result: list[int] = []

    def run_gc() -> None:
        if started.wait(20):
            gc_result.append(run_cli("gc", "--grace", "0", store=b).returncode)

    t = threading.Thread(target=run_gc)
    t.start()
    p = run_cli("pull", f"{fake.host}/{REPO}:v1", "--name", "t", store=b)
    t.join(30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().strip() == d
    assert gc_result == [0]
    fetched_x = [path for m, path, _ in fake.requests if m == "GET" and path.endswith(x)]
    assert len(fetched_x) == 1, "the shared blob was deleted by gc and fetched again before the commit"
    run_cli("fsck", store=b, check=True)
    run_cli("checkout", "t", tmp_path / "out", store=b, check=True)
    assert_trees_equal(src, tmp_path / "out")
