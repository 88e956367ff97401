"""`continuity mount` verifies each blob once per mount (issue 16 item 6), reads ahead the next
files of a directory, and still answers EIO for a corrupt blob on its first read."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from castore.manifest.model import RegularFile
from castore.store import Store
from tests.fuse.fuse_util import mounted, needs_fuse
from tests.helpers import run_cli

pytestmark = pytest.mark.fuse


def _ingest(store: Path, src: Path) -> str:
    return run_cli("ingest", src, "--name", "t", store=store, check=True).stdout.decode().strip()


def _counters(log: str) -> dict[str, int]:
    m = re.search(r"continuity: debug: mount: (.*)", log)
    assert m, log
    return {k: int(v) for k, v in (part.split(" ") for part in m.group(1).split(", "))}


def _evict(path: Path) -> None:
    """Drop ``path``'s pages from the kernel's cache, so the next read goes to the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _blob(store: Path, digest: str) -> Path:
    hexd = digest.split(":", 1)[1]
    return store / "blobs" / "sha256" / hexd[:2] / hexd


@needs_fuse
def test_second_open_does_not_reverify(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    files = {f"d/f{i:02d}": f"content of file {i}\n".encode() * (i + 1) for i in range(40)}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    store = tmp_path / "store"
    _ingest(store, src)
    with mounted(store, "t", tmp_path / "mnt", debug=True) as m:
        for _ in range(3):
            for rel, data in files.items():
                _evict(m.mnt / rel)
                assert (m.mnt / rel).read_bytes() == data
        assert m.stop() == 0
    c = _counters(m.stderr())
    assert c["reads"] >= 3 * len(files)  # every open read through the daemon (pages evicted)
    assert c["hashed"] == len(files)  # each blob hashed once
    assert c["loads"] == len(files)  # and read from the store once (read ahead or on demand)


@needs_fuse
def test_corrupt_blob_read_ahead_still_fails_with_eio(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    names = [f"f{i:02d}" for i in range(10)]
    for n in names:
        (src / n).write_bytes(f"file {n}\n".encode())
    store = tmp_path / "store"
    digest = _ingest(store, src)
    bad = Store.open(str(store)).load_manifest(digest).by_path()["/f03"]
    assert isinstance(bad, RegularFile)
    path = _blob(store, bad.digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"file f9X\n")  # same size, other bytes
    with mounted(store, "t", tmp_path / "mnt", debug=True) as m:
        assert (m.mnt / "f00").read_bytes() == b"file f00\n"  # reads f01.. ahead, f03 among them
        assert (m.mnt / "f01").read_bytes() == b"file f01\n"
        for _ in range(2):
            with pytest.raises(OSError) as exc:
                (m.mnt / "f03").read_bytes()
            assert exc.value.errno == errno.EIO
        for n in names[4:]:
            assert (m.mnt / n).read_bytes() == f"file {n}\n".encode()
        assert m.stop() == 0
    log = m.stderr()
    assert log.count(bad.digest) == 1 and "corrupt" in log and "Traceback" not in log
    c = _counters(log)
    assert c["hashed"] >= len(names)  # the bad one is hashed again on each attempt, never served
