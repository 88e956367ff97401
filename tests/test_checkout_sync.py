"""When a checkout syncs: always when it wrote data or re-proved an object; a hardlink checkout of
metadata alone (every object proven by its record's stat) skips the syncfs on a filesystem that
commits metadata in order (castore/fs/ordering.py; the argument: docs/design.md "## Checkout")."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from castore.checkout import checkout
from castore.fs import linux
from castore.fs.ordering import EXT_MAGIC, fs_magic, metadata_in_order
from castore.ingest import ingest
from castore.materialize import Options
from castore.store import Store
from castore.testing.compare import assert_trees_equal
from castore.testing.trees import write
from tests.helpers import ROOT, loop_fs

pytestmark = [pytest.mark.root, pytest.mark.skipif(not ROOT, reason="needs root (loop-mounted ext4)")]


@pytest.fixture
def journaled(tmp_path: Path) -> Iterator[Path]:
    """A fresh ext4 with its journal (mkfs.ext4's default)."""
    yield from loop_fs(tmp_path, "ext4", ["mkfs.ext4", "-q"])


@pytest.fixture
def unjournaled(tmp_path: Path) -> Iterator[Path]:
    yield from loop_fs(tmp_path, "nojournal", ["mkfs.ext4", "-q", "-O", "^has_journal"])


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every syncfs this process makes (the checkout's forked writer makes none)."""
    calls: list[int] = []
    real = linux.syncfs

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(linux, "syncfs", counting)
    yield calls


def _ordered(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return metadata_in_order(fd)
    finally:
        os.close(fd)


def test_ordering_is_known_only_for_journaled_filesystems(journaled: Path, unjournaled: Path) -> None:
    fd = os.open(journaled, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert fs_magic(fd) == EXT_MAGIC
    finally:
        os.close(fd)
    assert _ordered(journaled)
    assert not _ordered(unjournaled)  # ext4 without its journal: nothing orders its metadata
    if os.path.isdir("/dev/shm") and os.path.ismount("/dev/shm"):
        assert not _ordered(Path("/dev/shm"))  # tmpfs: not known to order: sync anyway


@pytest.mark.parametrize("fs", ["journaled", "unjournaled"])
def test_a_checkout_of_metadata_alone_skips_the_sync(fs: str, request: pytest.FixtureRequest, syncs: list[int]) -> None:
    tmp_path = request.getfixturevalue(fs)
    store = Store.open(str(tmp_path / "store"))
    src = tmp_path / "src"
    for i in range(1500):  # enough for the second writer to fork: its flags reach the parent
        write(src / f"d{i % 9}/f{i}", f"file {i}\n".encode())
    os.symlink("f1", src / "d1/short")
    d = ingest(store, str(src), progress=False)
    ordered = _ordered(tmp_path)
    assert ordered == (fs == "journaled")
    syncs.clear()  # ingest's
    checkout(store, None, str(tmp_path / "o1"), Options(link="hardlink"), d)
    assert len(syncs) == 1  # objects made: their bytes are durable before their records
    syncs.clear()
    checkout(store, None, str(tmp_path / "o2"), Options(link="hardlink"), d)
    assert len(syncs) == (0 if ordered else 1)
    assert_trees_equal(src, tmp_path / "o2")

    # After a removed checkout every object is proven again (content read): that sync stays.
    shutil.rmtree(tmp_path / "o1")
    syncs.clear()
    checkout(store, None, str(tmp_path / "o3"), Options(link="hardlink"), d)
    assert len(syncs) == 1
    assert_trees_equal(src, tmp_path / "o3")

    syncs.clear()
    checkout(store, None, str(tmp_path / "o4"), Options(link="copy"), d)
    assert len(syncs) == 1  # data written
    assert_trees_equal(src, tmp_path / "o4")


def test_a_long_symlink_target_counts_as_data(journaled: Path, syncs: list[int]) -> None:
    """A symlink target of 60 bytes or more may be written as a data block (ext4): synced."""
    tmp_path = journaled
    store = Store.open(str(tmp_path / "store"))
    src = tmp_path / "src"
    write(src / "f", b"x\n")
    os.symlink("t" * 60, src / "long")
    d = ingest(store, str(src), progress=False)
    checkout(store, None, str(tmp_path / "o1"), Options(link="hardlink"), d)
    syncs.clear()
    checkout(store, None, str(tmp_path / "o2"), Options(link="hardlink"), d)
    assert len(syncs) == 1
    assert_trees_equal(src, tmp_path / "o2")


def test_an_edit_with_its_mtime_put_back_is_refused_and_synced(journaled: Path, syncs: list[int]) -> None:
    """The sync skip never weakens the proof: an object edited through a checkout, its mtime put back,
    is replaced, and the checkout that replaced it synced."""
    tmp_path = journaled
    store = Store.open(str(tmp_path / "store"))
    src = tmp_path / "src"
    for i in range(1200):
        write(src / f"d{i % 5}/f{i}", f"file {i}\n".encode())
    d = ingest(store, str(src), progress=False)
    checkout(store, None, str(tmp_path / "o1"), Options(link="hardlink"), d)
    victim = tmp_path / "o1/d3/f1003"  # in the forked writer's half
    st = os.stat(victim)
    os.chmod(victim, 0o644)
    with open(victim, "r+b") as f:
        f.write(b"FILE")
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(victim, st.st_mode & 0o7777)
    syncs.clear()
    checkout(store, None, str(tmp_path / "o2"), Options(link="hardlink"), d)
    assert len(syncs) == 1
    assert (tmp_path / "o2/d3/f1003").read_bytes() == b"file 1003\n"
    assert_trees_equal(src, tmp_path / "o2")
