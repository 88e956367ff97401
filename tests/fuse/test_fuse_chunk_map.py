"""mount of a manifest without chunk lists (`continuity build`) whose big files the store holds as
chunks only: served through the chunk map, and the lease names the chunks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from castore.store import Store
from tests.fuse.fuse_util import mounted, needs_fuse
from tests.helpers import run_cli

pytestmark = [pytest.mark.fuse, needs_fuse]


def test_mount_of_a_built_manifest_reads_chunks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(3 << 20)
    (src / "big.bin").write_bytes(big)
    store = tmp_path / "store"
    d = run_cli("ingest", src, "--name", "t", store=store, check=True).stdout.decode().strip()
    mfile = tmp_path / "built.pb"
    mfile.write_bytes(run_cli("build", src, check=True).stdout)
    with mounted(store, str(mfile), tmp_path / "mnt") as m:
        assert (m.mnt / "big.bin").read_bytes() == big
        s = Store.open(str(store))
        chunks = {c.digest for c in s.load_manifest(d).files()[0].chunks}
        with s.meta.read() as txn:
            rows = [json.loads(v) for _, v in txn.cursor(db=s.meta.db("leases"))]
        assert any(chunks <= set(r["manifests"]) for r in rows), rows
