"""castore.remote.lazy.LazyFetcher with an in-memory blob source (no network): verified blobs land in the
store indexed and leased (gc keeps them while the mount lives, over several lease rows), wrong bytes store
nothing, a digest outside the tree is refused."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import castore.remote.lazy as lazy
from castore.errors import IntegrityError
from castore.store import Store
from tests.helpers import run_cli


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class MemorySource:
    """A BlobSource over a dict; ``lie`` serves other bytes, as a lying registry would, unchecked."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs, self.lie, self.reads = blobs, False, 0

    def size(self, digest: str) -> int:
        return len(self.blobs[digest])

    def is_lone_large(self, digest: str) -> bool:
        return False

    def read(self, digest: str) -> bytes:
        self.reads += 1
        data = self.blobs[digest]
        if self.lie:
            data = b"X" + data[1:]
            if _digest(data) != digest:  # what RemoteBlobs does with wrong bytes
                raise IntegrityError(f"blob {digest} has digest {_digest(data)} (wrong bytes)")
        return data

    def read_along(self, digest: str, more: list[str]) -> dict[str, bytes]:
        return {digest: self.read(digest)}

    def fetch_to(self, digest: str, path: str) -> None:
        raise AssertionError("not used for small blobs")


def test_fetched_blobs_are_indexed_and_leased_across_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lazy, "LEASE_ROW", 2)
    store = Store.open(str(tmp_path / "s"))
    blobs = {_digest(b): b for b in (os.urandom(100 + i) for i in range(5))}
    src = MemorySource(blobs)
    with store.lease() as lease:
        f = lazy.LazyFetcher(store, lease, src, dict.fromkeys(blobs, False))
        try:
            for d in blobs:
                f.fetch(d)
                f.fetch(d)  # present: not read again
            assert src.reads == 5 and f.fetched == 5
            assert not store.missing_blobs(blobs)
            assert len(store.live_leases()) == 3  # 2 + 2 + 1 digests
            run_cli("gc", "--grace", "0", store=tmp_path / "s", check=True)
            for d, data in blobs.items():
                assert store.read_blob(d) == data  # gc kept every one of them
        finally:
            f.close()
    assert store.live_leases() == []
    run_cli("gc", "--grace", "0", store=tmp_path / "s", check=True)
    assert store.missing_blobs(blobs) == set(blobs)  # unreferenced once the mount is gone


def test_wrong_bytes_store_nothing_and_foreign_digest_refused(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "s"))
    data = os.urandom(300)
    d = _digest(data)
    src = MemorySource({d: data})
    src.lie = True
    with store.lease() as lease:
        f = lazy.LazyFetcher(store, lease, src, {d: True})
        with pytest.raises(IntegrityError):
            f.fetch(d)
        assert not store.has_blob(d) and not os.path.exists(store.blob_path(d))
        with pytest.raises(IntegrityError, match="not part of the mounted tree"):
            f.fetch(_digest(b"other"))
        src.lie = False
        f.fetch(d)
        assert store.read_blob(d) == data
        f.close()


class FileSource(MemorySource):
    """Every blob as a lone large layer: written to a file (``fetch_to``), never read into memory."""

    def is_lone_large(self, digest: str) -> bool:
        return True

    def read(self, digest: str) -> bytes:
        raise AssertionError("large lone blobs are streamed to a file")

    def fetch_to(self, digest: str, path: str) -> None:
        with open(path, "xb") as f:
            f.write(self.blobs[digest])


def test_large_lone_blob_is_streamed_to_a_file_then_installed(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "s"))
    data = os.urandom(1 << 20)
    d = _digest(data)
    with store.lease() as lease:
        f = lazy.LazyFetcher(store, lease, FileSource({d: data}), {d: False})
        f.fetch(d)
        assert store.blob_size(d) == len(data) and store.read_blob(d) == data
        assert os.listdir(lease.tmp_dir) == []  # the temp file was renamed into place
        f.close()
