"""A plain tar on disk is read by member offset in worker processes (castore.tar.import_content): it must
give exactly the manifest of the streamed path and of `ingest DIR`, and report short data."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import castore.tar.import_content as tarcontent
from castore.ingest import ingest
from castore.readers import ChunkParams
from castore.store import Store
from castore.tar.format import TarCorrupt
from castore.tar.import_content import PARALLEL_MIN, Dispatcher, OffsetReader
from castore.tar.importer import ingest_tar


def _layer(root: Path) -> Path:
    rnd = random.Random(5)
    root.mkdir()
    shared = rnd.randbytes(300_000)
    for i in range(300):
        d = root / f"d{i % 7}"
        d.mkdir(exist_ok=True)
        (d / f"s{i}").write_bytes(rnd.randbytes(rnd.randint(0, 40_000)))
    for i in range(3):
        (root / f"big{i}").write_bytes(rnd.randbytes(6 << 20) + shared)  # chunked, with shared chunks
    (root / "dup1").write_bytes(shared)
    (root / "dup2").write_bytes(shared)
    (root / "mid").write_bytes(rnd.randbytes((1 << 20) - 1))  # just below the chunking threshold
    with open(root / "sparse", "wb") as f:
        f.truncate(4 << 20)
        f.seek(1 << 20)
        f.write(b"island")
    os.link(root / "big0", root / "big0.link")
    return root


@pytest.fixture
def layer(tmp_path: Path) -> Path:
    src = _layer(tmp_path / "src")
    t = tmp_path / "layer.tar"
    subprocess.run(["tar", "--sparse", "--format=posix", "-C", src, "-cf", t, "."], check=True)
    assert t.stat().st_size >= PARALLEL_MIN  # the worker processes are used
    return t


def test_by_offset_equals_stream_and_extracted_tree(store: Store, cli, layer: Path, tmp_path: Path):
    by_offset = ingest_tar(store, str(layer))
    p = cli("ingest", "--tar", "-", input=layer.read_bytes())  # a pipe: streamed, not seekable
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().strip() == by_offset
    with open(layer, "rb") as f:  # stdin redirected from the file: read by offset again
        q = subprocess.run(
            [sys.executable, "-m", "castore", "--store", store.path, "ingest", "--tar", "-"],
            stdin=f,
            capture_output=True,
        )
    assert q.returncode == 0, q.stderr
    assert q.stdout.decode().strip() == by_offset
    x = tmp_path / "x"
    x.mkdir()
    subprocess.run(["tar", "-xpf", layer, "-C", x], check=True)
    assert ingest(store, str(x), progress=False) == by_offset
    out = tmp_path / "out"
    assert cli("checkout", by_offset, out).returncode == 0
    assert (out / "big1").read_bytes() == (tmp_path / "src/big1").read_bytes()


def test_split_members_give_the_same_manifest(store: Store, layer: Path, monkeypatch):
    # Members of SPLIT bytes or more are hashed whole and chunked by two jobs side by side.
    whole_and_chunks_together = ingest_tar(store, str(layer))
    monkeypatch.setattr(tarcontent, "SPLIT", 2 << 20)
    assert ingest_tar(store, str(layer)) == whole_and_chunks_together


def test_truncated_large_member_is_corrupt(cli, layer: Path, tmp_path: Path):
    data = layer.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) * 2 // 3])
    p = cli("ingest", "--tar", cut, "--name", "cut")
    assert p.returncode == 4, p.stderr
    assert p.stderr.decode().startswith("continuity: error: tar stream truncated")
    assert not [n for n in os.listdir(tmp_path / "store" / "tmp") if not n.startswith(".")]


@pytest.mark.parametrize("split", [False, True])
def test_worker_reports_short_data(tmp_path: Path, monkeypatch, split: bool):
    if split:
        monkeypatch.setattr(tarcontent, "SPLIT", 4096)
    f = tmp_path / "short"
    f.write_bytes(b"x" * 5000)
    fd = os.open(f, os.O_RDONLY)
    try:
        (tmp_path / "stage").mkdir()
        cp = ChunkParams(min_size=1 << 10, avg_size=2 << 10, max_size=8 << 10, threshold=4096)
        r = OffsetReader(fd, str(tmp_path / "stage"), str(tmp_path / "blobs"), cp)
        assert r.small([(0, 100), (4000, 2000)])[2].startswith("tar stream truncated")
        assert r.whole(1000, 5000)[1].startswith("tar stream truncated")
        assert r.chunks(1000, 5000)[2].startswith("tar stream truncated")
        assert r.chunks(1000, 5000, True)[2].startswith("tar stream truncated")
        disp = Dispatcher(r, None, TarCorrupt)
        got: list[str] = []
        disp.add(0, 10, lambda d, c: got.append(d))
        disp.add(0, 5000, lambda d, c: got.append(d))
        disp.finish()
        assert len(got) == 2 and disp.sizes[got[0]] == 10
        with pytest.raises(TarCorrupt, match="truncated"):
            disp.add(10, 5000, lambda d, c: got.append(d))
            disp.finish()
    finally:
        os.close(fd)
