"""An open store's descriptors are released: ``Store.close()``, ``with``, and every API call given a path.

A long-running process (a test run, a service) once reached 1,024 descriptors: each
``Store.open`` kept the store directory's and the LMDB environment's until the process ended.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import castore
from castore.errors import CastoreError
from castore.store import Store


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture()
def stores(tmp_path: Path) -> list[str]:
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f").write_bytes(b"content")
    paths = []
    for i in range(4):
        path = str(tmp_path / f"s{i}")
        with Store.open(path) as s:
            castore.ingest(s, str(tree), name="web")
        paths.append(path)
    return paths


def test_close_releases_every_descriptor_and_is_idempotent(stores: list[str]) -> None:
    start = _fds()
    s = Store.open(stores[0], create=False)
    assert _fds() > start  # the directory, the LMDB environment's files
    assert [t.name for t in s.tags()] == ["web"]
    s.close()
    s.close()
    assert _fds() == start
    with Store.open(stores[1], create=False) as s2:
        assert s2.get_tag("web") is not None
    assert _fds() == start
    with pytest.raises(RuntimeError), Store.open(stores[2], create=False):
        raise RuntimeError("the block fails: the store is closed all the same")
    assert _fds() == start


def test_two_open_stores_of_one_path_share_the_environment_until_the_last_closes(stores: list[str]) -> None:
    start = _fds()
    a = Store.open(stores[0], create=False)
    b = Store.open(stores[0], create=False)
    a.close()
    assert [t.name for t in b.tags()] == ["web"]  # b still works: the environment is open for it
    b.close()
    assert _fds() == start


def test_two_thousand_api_calls_leave_no_descriptor_behind(stores: list[str], tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    start = _fds()
    for i in range(2000):
        path = stores[i % len(stores)]
        kind = i % 5
        if kind == 0:
            assert castore.load(path, "web").files()
        elif kind == 1:
            assert castore.stats(path, "web")["files"] == 1
        elif kind == 2:
            assert castore.verify(path, "web", str(tree)) == []
        elif kind == 3:
            with Store.open(path, create=False) as s:
                assert s.get_tag("web") is not None
        else:
            with pytest.raises(CastoreError):  # an error inside the call closes the store too
                castore.load(path, "no-such-name")
        if i % 250 == 0:
            assert _fds() == start, f"after {i + 1} calls"
    assert castore.gc(stores[0], dry_run=True) is not None
    assert castore.fsck(stores[1]) is not None
    assert _fds() == start
