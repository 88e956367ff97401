"""`mount REGISTRY/REPO:TAG MOUNTPOINT`: a lazily fetched FUSE view of a remote tree (real registry, real
FUSE): listing and stat fetch no content, one read fetches about that file, reads equal the source,
the second read is local; a registry that lies about a range gives EIO for that file only."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from castore.store import Store
from castore.testing.compare import assert_trees_equal
from tests.fuse.fuse_util import mounted, needs_fuse
from tests.helpers import run_cli
from tests.remote.packs_helpers import make_tree, packed_artifact, range_server
from tests.remote.registry import FakeRegistry

pytestmark = pytest.mark.fuse


def _blob_files(store: Path) -> list[Path]:
    return [p for p in (store / "blobs").rglob("*") if p.is_file()] if (store / "blobs").exists() else []


@needs_fuse
def test_lazy_mount_reads_on_demand(tmp_path: Path, repo: str) -> None:
    src, a, b = tmp_path / "src", tmp_path / "a", tmp_path / "b"
    make_tree(src)
    run_cli("ingest", src, "--name", "t", store=a, check=True)
    run_cli("push", "t", f"{repo}:v1", "--pack-size", str(1 << 20), store=a, check=True)
    with mounted(b, f"{repo}:v1", tmp_path / "mnt") as m:
        before = _blob_files(b)
        names = sorted(p.name for p in (m.mnt / "d01").iterdir())
        assert names == sorted(p.name for p in (src / "d01").iterdir())
        assert (m.mnt / "big.bin").stat().st_size == 3 << 20
        assert _blob_files(b) == before  # listing and stat fetched nothing
        one = m.mnt / "d01" / "f0061.bin"
        assert one.read_bytes() == (src / "d01" / "f0061.bin").read_bytes()
        fetched = _blob_files(b)
        assert len(fetched) == len(before) + 1 and sum(p.stat().st_size for p in fetched) < 8192
        assert one.read_bytes() == (src / "d01" / "f0061.bin").read_bytes()
        assert len(_blob_files(b)) == len(fetched)  # the second read is local
        assert_trees_equal(src, m.mnt)  # every file read: equal to the source
    # what the mount fetched stays: a pull of the same tree fetches only the rest
    run_cli("pull", f"{repo}:v1", store=b, check=True)
    run_cli("fsck", store=b, check=True)
    assert Store.open(str(b)).get_tag(f"{repo}:v1")


@needs_fuse
def test_lying_range_gives_eio(tmp_path: Path, fake: FakeRegistry) -> None:
    src, a, b = tmp_path / "src", tmp_path / "a", tmp_path / "b"
    make_tree(src, files=60)
    d = run_cli("ingest", src, store=a, check=True).stdout.decode().strip()
    oci, blobs, built = packed_artifact(Store.open(str(a)), d, 1 << 20)
    fake.serve_artifact("lazy/tree", "v1", oci, blobs)
    for bp in built:
        data = bytes(bp.data)
        fake.routes[("GET", f"/v2/lazy/tree/blobs/{bp.pack.digest}")] = range_server(
            data, lambda s, e, body, n=len(data): (206, {"Content-Range": f"bytes {s}-{e - 1}/{n}"},
                                                   bytes(x ^ 0xFF for x in body)))
    with mounted(b, f"{fake.host}/lazy/tree:v1", tmp_path / "mnt") as m:
        with pytest.raises(OSError) as exc:
            (m.mnt / "d00" / "f0001.bin").read_bytes()
        assert exc.value.errno == errno.EIO
        assert os.listdir(m.mnt / "d00")  # the rest of the view still works
    assert "wrong bytes" in m.stderr() or "could not be fetched" in m.stderr(), m.stderr()
    assert _blob_files(b) == []
