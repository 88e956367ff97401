"""gc's working sets on disk, so its memory does not grow with the store.

A store of N blobs needs a mark set of N digests: 10M blobs would take
gigabytes as a Python set. gc instead spills:

* the **mark set** to 64 bucket files by the first 6 bits of the digest (4
  blob shards each). The sweep then walks the store shard by shard and loads
  only that shard's bucket as a set: about N/64 keys at a time. A key is
  written once per reference; a small bounded "recently written" set drops
  the repeats of manifests that share most blobs (versions of one tree), and
  a bucket that grows past twice its last de-duplicated size is compacted,
  so a bucket file stays within ~2x its distinct keys;
* the **garbage** and **unlink** lists to files of fixed-size records read
  back in chunks (the index deletes and unlinks already run in chunks);
* the **manifest keys** of the snapshot, in index order, to one file that a
  later commit merges with the live index to find manifests added since.

Everything lives in one scratch directory under STORE/tmp (same filesystem
as the store, never a tmpfs), removed when gc ends; one left by a killed gc
has no lease and is removed by the next gc's temp sweep.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from castore.errors import UnsafeInput

KEY = 32
RECORD = struct.Struct("<32sqbQ")  # digest, size, kind (-1: an orphan file), inode number (0: unknown)
BUCKETS = 64  # files of the mark set, by the first 6 bits of the digest (4 blob shards each)
BUFFER = 1 << 16  # bytes buffered per bucket before a write
RECENT_MAX = 65_536  # keys remembered to drop repeated references (~6 MiB)
BUCKET_FLOOR = 1 << 20  # bytes a bucket may reach before it is first compacted


class MarkSet:
    """A set of 32-byte keys, bucketed on disk by their first 6 bits; read back one shard at a time."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.files: list[BinaryIO | None] = [None] * BUCKETS
        self.bufs = [bytearray() for _ in range(BUCKETS)]
        self.limit = [BUCKET_FLOOR] * BUCKETS
        self.written = [0] * BUCKETS
        self.recent: set[bytes] = set()

    def add(self, key: bytes) -> None:
        recent = self.recent
        if key in recent:
            return
        if len(recent) >= RECENT_MAX:
            recent.clear()
        recent.add(key)
        b = key[0] >> 2
        buf = self.bufs[b]
        buf += key
        if len(buf) >= BUFFER:
            self._flush(b)

    def update(self, keys: Iterable[bytes]) -> None:
        for k in keys:
            self.add(k)

    def _flush(self, b: int) -> None:
        f = self.files[b]
        if f is None:
            f = self.files[b] = open(os.path.join(self.dir, f"m{b:02x}"), "w+b", buffering=0)  # noqa: SIM115
        buf = self.bufs[b]
        f.seek(self.written[b])
        f.write(buf)
        self.written[b] += len(buf)
        buf.clear()
        if self.written[b] > self.limit[b]:
            self._compact(b)

    def _compact(self, b: int) -> None:
        """Rewrite bucket ``b`` with each key once; the next compaction waits for it to double."""
        keys = self._load(b)
        data = b"".join(keys)
        f = self.files[b]
        assert f is not None
        f.seek(0)
        f.truncate()
        f.write(data)
        self.written[b] = len(data)
        self.limit[b] = max(BUCKET_FLOOR, 2 * len(data))

    def _load(self, b: int) -> set[bytes]:
        f = self.files[b]
        data = os.pread(f.fileno(), self.written[b], 0) if f is not None else b""
        data += self.bufs[b]
        return {data[i : i + KEY] for i in range(0, len(data), KEY)}

    def shard(self, b: int) -> set[bytes]:
        """A set holding every key whose first byte is ``b`` (and those of the 3 other shards of its
        bucket, which is loaded once for its 4 shards)."""
        if self._cached[0] != b >> 2:
            self._cached = (-1, set())  # the previous bucket goes before the next is read
            self._cached = (b >> 2, self._load(b >> 2))
        return self._cached[1]

    _cached: tuple[int, set[bytes]] = (-1, set())

    def close(self) -> None:
        self._cached = (-1, set())
        for i, f in enumerate(self.files):
            if f is not None:
                f.close()
                self.files[i] = None


class Records:
    """Append-only (key, size, kind, inode) records in a file; random access by position. ``read`` gives
    (key, size, kind); ``read_ino`` the inode number too (gc unlinks a chunk in inode order)."""

    def __init__(self, path: str) -> None:
        self.f: BinaryIO = open(path, "w+b", buffering=1 << 16)  # noqa: SIM115
        self.n = 0

    def add(self, key: bytes, size: int, kind: int, ino: int = 0) -> None:
        self.f.write(RECORD.pack(key, size, kind, ino))
        self.n += 1

    def __len__(self) -> int:
        return self.n

    def read(self, pos: int, count: int) -> list[tuple[bytes, int, int]]:
        """Records ``pos`` .. ``pos + count - 1`` (fewer at the end): (key, size, kind)."""
        return [r[:3] for r in self.read_ino(pos, count)]

    def read_ino(self, pos: int, count: int) -> list[tuple[bytes, int, int, int]]:
        """Records ``pos`` .. ``pos + count - 1`` (fewer at the end): (key, size, kind, inode)."""
        self.f.flush()
        data = os.pread(self.f.fileno(), max(0, min(count, self.n - pos)) * RECORD.size, pos * RECORD.size)
        return list(RECORD.iter_unpack(data))

    def chunks(self, size: int) -> Iterator[list[tuple[bytes, int, int]]]:
        for pos in range(0, self.n, size):
            yield self.read(pos, size)

    def chunks_ino(self, size: int) -> Iterator[list[tuple[bytes, int, int, int]]]:
        for pos in range(0, self.n, size):
            yield self.read_ino(pos, size)

    def close(self) -> None:
        self.f.close()


class SortedKeys:
    """Keys appended in ascending order (an index cursor's), merged later with another ascending stream."""

    def __init__(self, path: str) -> None:
        self.f: BinaryIO = open(path, "w+b", buffering=1 << 16)  # noqa: SIM115
        self.n = 0

    def add(self, key: bytes) -> None:
        self.f.write(key)
        self.n += 1

    def _iter(self) -> Iterator[bytes]:
        self.f.flush()
        pos, step = 0, 4096 * KEY
        while pos < self.n * KEY:
            data = os.pread(self.f.fileno(), step, pos)
            pos += len(data)
            yield from (data[i : i + KEY] for i in range(0, len(data), KEY))

    def missing(self, keys: Iterable[bytes]) -> Iterator[bytes]:
        """The keys of the ascending stream ``keys`` that this file does not hold."""
        mine = self._iter()
        cur = next(mine, None)
        for k in keys:
            while cur is not None and cur < k:
                cur = next(mine, None)
            if cur != k:
                yield k

    def close(self) -> None:
        self.f.close()


class Scratch:
    """gc's scratch directory: a MarkSet, the snapshot's manifest keys, garbage and unlink records."""

    def __init__(self, tmp_dir: str) -> None:
        os.makedirs(tmp_dir, exist_ok=True)
        if not stat.S_ISDIR(os.lstat(tmp_dir).st_mode):  # never written through a symlink swapped in
            raise UnsafeInput(f"{tmp_dir}: not a directory (a symlink?): gc refuses to write its scratch files there")
        self.dir = os.path.join(tmp_dir, f".gc-scratch-{os.getpid()}")
        if os.path.lexists(self.dir):  # left by a killed gc that had our pid
            if os.path.islink(self.dir):
                os.unlink(self.dir)
            else:
                shutil.rmtree(self.dir)
        os.mkdir(self.dir, 0o700)
        self.marked = MarkSet(self.dir)
        self.manifests = SortedKeys(os.path.join(self.dir, "manifests"))
        self.garbage = Records(os.path.join(self.dir, "garbage"))
        self.orphans = Records(os.path.join(self.dir, "orphans"))
        self.unlink = Records(os.path.join(self.dir, "unlink"))

    def close(self) -> None:
        self.marked.close()
        for r in (self.manifests, self.garbage, self.orphans, self.unlink):
            r.close()
        shutil.rmtree(self.dir, ignore_errors=True)


__all__ = ["MarkSet", "Records", "Scratch", "SortedKeys"]
