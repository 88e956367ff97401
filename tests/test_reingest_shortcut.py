"""Ingest's unchanged-tree shortcut (castore/store/treecache.py): cheap when nothing left the index, sound when
something did (a gc, an fsck repair), and rows of the older format still honoured (issue 16)."""

from __future__ import annotations

import marshal
import os
from pathlib import Path

import pytest

from castore.ingest import _tree_key, ingest
from castore.store import Store, treecache
from castore.testing.trees import basic, write
from castore.walk import WalkOptions
from tests.helpers import run_cli


@pytest.fixture(autouse=True)
def _no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    import castore.store.statcache

    monkeypatch.setattr(castore.store.statcache, "RACY_NS", 0)  # files written just now count as settled


def _tree_row(store: Store, src: Path) -> bytes | None:
    key = _tree_key(str(src), WalkOptions(), os.stat(src))
    with store.meta.read() as txn:
        raw = txn.get(key, db=store.meta.db("statcache"))
    return None if raw is None else bytes(raw)


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files ingest reads from now on (in-process readers, so every read is seen)."""
    import castore.readers

    calls: list[str] = []
    real = castore.readers.Processor.run_one

    def counting(self: castore.readers.Processor, root_fd: int, job: castore.readers.FileJob) -> object:
        calls.append(job.rel)
        return real(self, root_fd, job)

    monkeypatch.setattr(castore.readers.Processor, "run_one", counting)
    return calls


def _ingest(store: Store, src: Path) -> str:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return ingest(store, str(src), progress=False, pool=pool)


def test_row_records_the_index_generation_and_the_shortcut_reads_nothing(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    basic(src)
    first = _ingest(store, src)
    row = _tree_row(store, src)
    assert row is not None
    rec = treecache.parse(row)
    assert rec is not None and rec[1] == first and rec[2] is not None
    assert treecache.nothing_deleted_since(store.meta, rec[2])
    reads = _reads(monkeypatch)
    assert _ingest(store, src) == first
    assert reads == []


def test_row_of_the_older_format_still_gives_the_shortcut(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    basic(src)
    first = _ingest(store, src)
    row = _tree_row(store, src)
    assert row is not None
    fp, digest, _ = treecache.parse(row)  # type: ignore[misc]
    key = _tree_key(str(src), WalkOptions(), os.stat(src))
    store.meta.write(lambda t: t.put(key, marshal.dumps((fp, digest)), db=store.meta.db("statcache")))
    reads = _reads(monkeypatch)
    assert _ingest(store, src) == first
    assert reads == []


def test_after_a_gc_took_the_unnamed_manifests_blobs_reingest_stores_them_again(tmp_path: Path, store: Store) -> None:
    src = tmp_path / "src"
    basic(src)
    write(src / "only-here", b"content no other manifest has\n")
    first = _ingest(store, src)  # unnamed: the next gc with no grace takes it and its blobs
    assert run_cli("gc", "--grace", "0", store=Path(store.path)).returncode == 0
    assert store.missing_blobs(store.manifest_refs(first)) or not store.manifest_indexed(first)
    again = _ingest(store, src)
    assert again == first
    assert store.manifest_indexed(again)
    assert not store.missing_blobs(store.manifest_refs(again))
    p = run_cli("fsck", store=Path(store.path))
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()


def test_after_fsck_repair_dropped_a_blob_reingest_stores_it_again(tmp_path: Path, store: Store) -> None:
    src = tmp_path / "src"
    basic(src)
    write(src / "victim", b"the blob fsck will quarantine\n")
    first = _ingest(store, src)
    victim = next(r.digest for r in store.load_manifest(first).files() if r.path == "/victim")
    path = store.blob_path(victim)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"X")  # damaged: fsck --repair quarantines it and drops its index row
    assert run_cli("fsck", "--repair", store=Path(store.path)).returncode != 0
    assert store.missing_blobs({victim}) == {victim}
    assert _ingest(store, src) == first
    assert store.missing_blobs({victim}) == set()
    with open(store.blob_path(victim), "rb") as f:
        assert f.read() == b"the blob fsck will quarantine\n"
