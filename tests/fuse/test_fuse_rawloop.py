"""The raw request loop of a local mount (castore/mount/rawloop.py, issue 16 item 6): the kernel
opens files and directories itself (no ``open``/``release`` requests), keeps pages and listings, so a
second walk of the tree sends the daemon nothing; the pyfuse3 loop still serves the same tree; a
signal stops a busy mount; the wire structures have the kernel's sizes; read-ahead follows the
tree-walk order."""

from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path

import pytest

from castore.mount import wire
from castore.mount.blobreader import BlobReader
from castore.mount.fuse import INLINE_READ, InodeTable, Node
from castore.mount.readahead import ReadAhead, walk_order
from castore.store import Store
from castore.testing.compare import assert_trees_equal
from tests.fuse.fuse_util import mounted, needs_fuse
from tests.helpers import run_cli

pytestmark = pytest.mark.fuse


def _counters(log: str) -> dict[str, int]:
    m = re.search(r"continuity: debug: mount: (.*)", log)
    assert m, log
    return {k: int(v) for k, v in (part.split(" ") for part in m.group(1).split(", "))}


def _tree(root: Path, dirs: int = 5, per_dir: int = 40) -> dict[str, bytes]:
    files = {}
    for d in range(dirs):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(per_dir):
            rel = f"d{d}/f{i:03d}"
            files[rel] = f"{rel}\n".encode() * (i + 1)
            (root / rel).write_bytes(files[rel])
    os.setxattr(root / "d0" / "f000", "user.note", b"kept")
    os.symlink("f001", root / "d0" / "link")
    return files


def _walk(mnt: Path, files: dict[str, bytes]) -> None:
    for dirpath, _, names in os.walk(mnt):
        for n in names:
            p = Path(dirpath, n)
            if not p.is_symlink():  # os.open: Python's open() asks isatty, an ioctl FUSE forwards
                fd = os.open(p, os.O_RDONLY)
                try:
                    assert os.read(fd, 1 << 20) == files[str(p.relative_to(mnt))]
                finally:
                    os.close(fd)


@needs_fuse
def test_second_walk_sends_no_requests(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = _tree(src)
    store = tmp_path / "store"
    run_cli("ingest", src, "--name", "t", store=store, check=True)
    with mounted(store, "t", tmp_path / "mnt", debug=True) as m:
        _walk(m.mnt, files)
        _walk(m.mnt, files)
        assert os.getxattr(m.mnt / "d0" / "f000", "user.note") == b"kept"
        assert os.readlink(m.mnt / "d0" / "link") == "f001"
        assert m.stop() == 0
    c = _counters(m.stderr())
    n = len(files)
    assert c["reads"] <= n + 10  # pages kept across opens: each file read through the daemon once
    # No open/release/opendir/releasedir per file or walk: about one request per file and a few per directory.
    assert c["requests"] <= n + 10 * 6 + 20, c


@needs_fuse
def test_pyfuse3_loop_serves_the_same_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    _tree(src)
    store = tmp_path / "store"
    run_cli("ingest", src, "--name", "t", store=store, check=True)
    monkeypatch.setenv("CONTINUITY_MOUNT_LOOP", "pyfuse3")
    with mounted(store, "t", tmp_path / "mnt", debug=True) as m:
        assert_trees_equal(src, m.mnt)
        assert m.stop() == 0
    assert "requests" not in _counters(m.stderr())  # served by pyfuse3's tasks, not the raw loop


@needs_fuse
def test_signal_stops_a_busy_mount(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = _tree(src, dirs=2, per_dir=20)
    store = tmp_path / "store"
    run_cli("ingest", src, "--name", "t", store=store, check=True)
    stop = threading.Event()
    served = [0]

    def hammer(mnt: Path) -> None:
        paths = [mnt / rel for rel in files]
        while not stop.is_set():
            for p in paths:
                try:
                    fd = os.open(p, os.O_RDONLY)
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the next read asks the daemon
                        os.pread(fd, 4096, 0)
                    finally:
                        os.close(fd)
                    served[0] += 1
                except OSError:
                    return  # unmounted under us

    with mounted(store, "t", tmp_path / "mnt") as m:
        t = threading.Thread(target=hammer, args=(m.mnt,))
        t.start()
        try:
            while served[0] < 200:
                t.join(0.01)
            assert m.stop(signal.SIGTERM, timeout=20) == 0
        finally:
            stop.set()
            t.join(30)
    assert not os.path.ismount(tmp_path / "mnt")
    assert "Traceback" not in m.stderr()


def test_wire_layouts() -> None:
    """The structures have the sizes of linux/fuse.h and encode a node as the kernel reads it."""
    node = Node(7, 0o100644, 1000, 1001, -1_500_000_000, "/f", nlink=2, size=5000, blocks=16, rdev=0)
    assert wire.IN_HEADER.size == 40 and wire.OUT_HEADER.size == 16 and wire.READ_IN.size == 24
    assert len(wire.attr(node)) == 88 and len(wire.entry(node, 3600)) == 128
    assert len(wire.attr_out(node, 3600)) == 104 and len(wire.statfs(10, 3)) == 80
    assert len(wire.entry(None, 3600)) == 128 and wire.entry(None, 3600)[:8] == bytes(8)  # a negative entry
    fields = wire.ATTR.unpack(wire.attr(node))
    assert fields[:6] == (7, 5000, 16, -2, -2, -2)  # ino, size, blocks; times: -1.5 s is -2 s + 0.5 s
    assert fields[6:11] == (500_000_000, 500_000_000, 500_000_000, 0o100644, 2)
    for name in (b"a", b"1234567", b"12345678", b"x" * 255):
        d = wire.dirent(7, 3, name, node.mode)
        assert len(d) % 8 == 0 and d[24 : 24 + len(name)] == name
        assert wire.DIRENT.unpack_from(d) == (7, 3, len(name), 0o10)  # DT_REG


class _Recorder(BlobReader):
    """A real BlobReader that also records which blobs the read-ahead asked it to warm."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.warmed: list[str] = []

    def warm(self, digests: list[str]) -> None:
        self.warmed += digests
        super().warm(digests)


def test_walk_order_read_ahead_crosses_directories(tmp_path: Path) -> None:
    """Small files in depth-first order of sorted names (files before and after a subdirectory in
    their listing order); a read warms the next files across directory ends; a second walk elsewhere
    keeps its own window."""
    src = tmp_path / "src"
    layout = ["a/1", "a/2", "a/b/1", "a/b/2", "a/c", "d/1", "d/2", "e"]
    for i, rel in enumerate(layout):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(f"{rel} {i}\n".encode())
    (src / "big").write_bytes(os.urandom(INLINE_READ + 1))  # not read ahead: read in worker threads
    digest = run_cli("ingest", src, store=tmp_path / "store", check=True).stdout.decode().strip()
    store = Store.open(str(tmp_path / "store"))
    m = store.load_manifest(digest)
    table = InodeTable(m, uid=0, gid=0, now_ns=0)
    walk = walk_order(table)
    assert [n.path for n in walk] == ["/" + rel for rel in layout]
    assert [n.order for n in walk] == list(range(len(layout)))
    reader = _Recorder(store)
    try:
        ahead = ReadAhead(table, reader, window=3)
        ahead.on_read(walk[1])  # /a/2: the next three, across the end of /a into /a/b
        assert reader.warmed == [walk[i].digest for i in (2, 3, 4)]
        ahead.on_read(walk[2])  # two are still ahead (refill 1): nothing new
        assert len(reader.warmed) == 3
        ahead.on_read(walk[7])  # far away: a stream of its own (nothing after /e)
        assert len(reader.warmed) == 3
        ahead.on_read(walk[4])  # the first stream reaches its end: the next window
        assert reader.warmed[3:] == [walk[i].digest for i in (5, 6, 7)]
    finally:
        reader.close()
