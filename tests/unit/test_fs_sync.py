"""Background and periodic syncfs: they flush, and never drop a writeback error."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from castore import fs
from castore.fs import linux


def _failing(calls: list[int]) -> object:
    def syncfs(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    return syncfs


def test_syncfs_every_flushes_until_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = linux.syncfs
    monkeypatch.setattr(linux, "syncfs", lambda fd: (calls.append(fd), real(fd)))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        stop = fs.syncfs_every(fd, 0.01)
        import time

        time.sleep(0.2)
        stop()
        n = len(calls)
        assert n >= 3 and set(calls) == {fd}
        time.sleep(0.05)
        assert len(calls) == n  # stopped
    finally:
        os.close(fd)


def test_syncfs_every_hands_its_error_to_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(linux, "syncfs", _failing(calls))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        stop = fs.syncfs_every(fd, 0.01)
        import time

        time.sleep(0.1)
        with pytest.raises(OSError) as e:
            stop()
        assert e.value.errno == errno.EIO and len(calls) == 1  # no retry after a failed sync
    finally:
        os.close(fd)


def test_syncfs_in_background_reraises_and_closes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linux, "syncfs", _failing([]))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    wait = fs.syncfs_in_background(fd, close=True)
    with pytest.raises(OSError):
        wait()
    with pytest.raises(OSError):
        os.fstat(fd)  # handed over and closed


def test_ingest_fails_when_the_flush_while_reading_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An EIO from a store syncfs (the periodic flush of a large-file ingest, or the last one)
    fails the ingest: nothing is indexed."""
    from castore import ingest as ingest_mod
    from castore.store import Store

    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(9 << 20))
    store = Store.open(str(tmp_path / "store"), create=True)
    monkeypatch.setattr(ingest_mod, "FLUSH_WHILE_READING", 0)
    monkeypatch.setattr(linux, "syncfs", _failing([]))
    with pytest.raises(OSError):
        ingest_mod.ingest(store, str(src), progress=False)
    assert store.tags() == []
    with store.meta.read() as txn:
        assert txn.stat(store.meta.db("refs"))["entries"] == 0
