"""castore.mount.fuse without a kernel mount: the inode table and verified blob reads (no pyfuse3 needed)."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest

from castore.errors import BlobNotFound, IntegrityError
from castore.ingest import ingest
from castore.manifest.model import Device, Directory, Manifest, NamedPipe, RegularFile, Socket, Symlink, Whiteout
from castore.mount.fuse import ROOT_INO, BlobReader, InodeTable, check_mountpoint
from castore.store import Store

E = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _walk(t: InodeTable, path: str) -> int:
    ino = ROOT_INO
    for part in path.strip("/").split("/"):
        found = t.lookup(ino, os.fsencode(part))
        assert found is not None, path
        ino = found
    return ino


def test_inode_table() -> None:
    m = Manifest.of(
        [
            Directory(paths=("/d",), perm=0o1777, uid=5, gid=6, mtime_ns=123),
            RegularFile(paths=("/d/a", "/d/b", "/x/y/c"), size=0, digest=E, perm=0o4755, xattrs=(("user.k", b"v"),)),
            Symlink(paths=("/d/l",), target="../t\udcff"),
            Device(paths=("/dev0",), char=True, major=1, minor=3, perm=0o666),
            Device(paths=("/blk",), char=False, major=7, minor=200),
            NamedPipe(paths=("/p",), uid=-1),
            Socket(paths=("/s",)),
            Whiteout(paths=("/gone",)),
            Directory(paths=("/d/sub",)),
        ]
    )
    t = InodeTable(m, uid=1000, gid=1001, now_ns=42)
    root = t.nodes[ROOT_INO]
    assert sorted(root.names) == root.names and b"gone" not in root.children  # whiteouts hidden
    a, b, c = (_walk(t, p) for p in ("/d/a", "/d/b", "/x/y/c"))
    assert a == b == c and t.nodes[a].nlink == 3 and t.nodes[a].mode == stat.S_IFREG | 0o4755
    assert t.nodes[a].xattrs == {b"user.k": b"v"} and t.nodes[a].mtime_ns == 42
    d = t.nodes[_walk(t, "/d")]
    assert d.mode == stat.S_IFDIR | 0o1777 and (d.uid, d.gid, d.mtime_ns) == (5, 6, 123)
    assert d.nlink == 3 and t.lookup(d.ino, b"..") == ROOT_INO and t.lookup(d.ino, b".") == d.ino
    x = t.nodes[_walk(t, "/x")]  # implicit parent: 0755, mount owner and time
    assert (x.mode, x.uid, x.gid, x.mtime_ns, x.nlink) == (stat.S_IFDIR | 0o755, 1000, 1001, 42, 3)
    assert root.nlink == 2 + 2  # /d and /x
    link = t.nodes[_walk(t, "/d/l")]
    assert link.target == b"../t\xff" and link.size == 5 and stat.S_ISLNK(link.mode)
    dev = t.nodes[_walk(t, "/dev0")]
    assert stat.S_ISCHR(dev.mode) and dev.rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(t.nodes[_walk(t, "/blk")].mode)
    assert t.nodes[_walk(t, "/p")].uid == 1000  # unknown owner (-1) shows as the mount's owner
    assert stat.S_ISSOCK(t.nodes[_walk(t, "/s")].mode)
    assert t.lookup(ROOT_INO, b"missing") is None


@pytest.fixture
def ingested(tmp_path: Path, store: Store) -> tuple[Store, bytes, RegularFile, RegularFile]:
    src = tmp_path / "src"
    src.mkdir()
    big = random.Random(1).randbytes(3 << 20)
    (src / "big").write_bytes(big)
    (src / "small").write_bytes(b"small\n")
    digest = ingest(store, str(src), name="t")
    m = store.load_manifest(str(digest))
    bp = m.by_path()
    assert isinstance(bp["/big"], RegularFile) and isinstance(bp["/small"], RegularFile)
    return store, big, bp["/big"], bp["/small"]


def _node(r: RegularFile) -> object:
    return InodeTable(Manifest.of([r]), uid=0, gid=0, now_ns=0).nodes[2]


@pytest.mark.parametrize("item_max", [8 << 20, 1])  # cached verified bytes, or hashed once then fstat-proven
def test_reads_map_onto_chunks(ingested: tuple[Store, bytes, RegularFile, RegularFile], item_max: int) -> None:
    store, big, r, _ = ingested
    assert len(r.chunks) > 3
    reader = BlobReader(store, cache_bytes=1 << 20, item_max=item_max)
    node = _node(r)
    rng = random.Random(2)
    for _ in range(200):
        off, n = rng.randrange(len(big) + 10), rng.choice([1, 4096, 131072, 1 << 20])
        assert reader.read_file(node, off, n) == big[off : off + n]  # type: ignore[arg-type]
    assert reader.read_file(node, 0, len(big) + 5) == big  # type: ignore[arg-type]
    if item_max > 1:
        assert reader._held <= (1 << 20) + max(c.end - c.begin for c in r.chunks)  # bounded LRU
        reader = BlobReader(store)  # a cache that holds the file: each chunk hashed once
        for _ in range(2):
            assert reader.read_file(node, 0, len(big)) == big  # type: ignore[arg-type]
    assert reader.hashed == len(r.chunks)  # large blobs: hashed once, then proven unchanged by fstat


def test_corrupt_or_missing_blob(ingested: tuple[Store, bytes, RegularFile, RegularFile]) -> None:
    store, big, r, small = ingested
    notes: list[str] = []
    reader = BlobReader(store, note=notes.append)
    bad = r.chunks[1]
    path = store.blob_path(bad.digest)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"\0")
    node = _node(r)
    with pytest.raises(IntegrityError):
        reader.read_file(node, bad.begin, 10)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        reader.read_file(node, bad.begin, 10)  # type: ignore[arg-type]
    assert len(notes) == 1 and bad.digest in notes[0]  # one message per blob
    c0 = r.chunks[0]
    assert reader.read_file(node, c0.begin, 100) == big[:100]  # type: ignore[arg-type]
    os.unlink(store.blob_path(small.digest))
    with pytest.raises(BlobNotFound):
        reader.read_file(_node(small), 0, 10)  # type: ignore[arg-type]


def test_blob_verified_once_per_mount_until_its_file_changes(
    ingested: tuple[Store, bytes, RegularFile, RegularFile],
) -> None:
    """A cache too small to hold the file: every pass loads each chunk again from the store, but
    hashes it only the first time, while fstat shows the same file; a chunk changed in place
    (its mtime/ctime move) is hashed again and refused."""
    store, big, r, _ = ingested
    reader = BlobReader(store, cache_bytes=1)  # keeps one blob: every other read reloads
    node = _node(r)
    for _ in range(3):
        assert reader.read_file(node, 0, len(big)) == big  # type: ignore[arg-type]
    assert reader.hashed == len(r.chunks)
    assert reader.loads == 3 * len(r.chunks)
    bad = r.chunks[0]
    path = store.blob_path(bad.digest)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(bytes([big[0] ^ 1]))
    with pytest.raises(IntegrityError):
        reader.read_file(node, bad.begin, 10)  # type: ignore[arg-type]
    assert reader.hashed == len(r.chunks) + 1


def test_prefetch_loads_ahead_and_skips_failures(ingested: tuple[Store, bytes, RegularFile, RegularFile]) -> None:
    store, big, r, small = ingested
    reader = BlobReader(store)
    os.unlink(store.blob_path(r.chunks[1].digest))
    reader.prefetch([(c.digest, c.end - c.begin) for c in r.chunks[:3]] + [(small.digest, small.size)])
    reader.close(cancel=False)  # waits for the loads
    assert reader.cached(r.chunks[0].digest) and reader.cached(small.digest)
    assert not reader.cached(r.chunks[1].digest)  # missing: left for the read, which reports it
    assert reader.hashed == 3
    with pytest.raises(BlobNotFound):
        reader.read_file(_node(r), r.chunks[1].begin, 10)  # type: ignore[arg-type]


def test_check_mountpoint(tmp_path: Path) -> None:
    from castore.errors import UnsafeInput

    (tmp_path / "ok").mkdir()
    assert check_mountpoint(str(tmp_path / "ok")) == str(tmp_path / "ok")
    os.symlink("ok", tmp_path / "l")
    for bad in ("l", "missing"):
        with pytest.raises(UnsafeInput):
            check_mountpoint(str(tmp_path / bad))


def test_lease_renewal_pushes_expiry(store: Store) -> None:
    import json

    from castore.mount.fuse import renew_lease

    with store.lease(["sha256:" + "ab" * 32]) as lease:

        def expiry() -> int:
            with store.meta.read() as txn:
                return int(json.loads(txn.get(lease.id.encode(), db=store.meta.db("leases")))["expiry_ns"])

        store.meta.write(
            lambda t: t.put(
                lease.id.encode(),
                json.dumps({"expiry_ns": 1, "manifests": ["sha256:" + "ab" * 32]}).encode(),
                db=store.meta.db("leases"),
            )
        )
        renew_lease(lease)
        import time

        assert expiry() > time.time_ns() + 23 * 3600 * 10**9
        assert [lid for lid, _ in store.live_leases()] == [lease.id]
