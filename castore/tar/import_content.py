"""Member content of a plain tar file on disk, read by offset, hashed and
staged by two worker processes.

For a seekable, uncompressed tar (a regular file, or stdin redirected from
one) the parser reads only the headers and seeks over the data; the data of
each regular member is read with ``pread`` by its offset in the tar, hashed,
chunked with the store's FastCDC parameters and staged as blob temp files,
as ``castore.readers`` does for the files of a directory:

- small members (below the chunking threshold) go in batches (at most 256
  members or 4 MiB), hashed once and staged whole;
- a chunked member is one job: read once, hashed whole and cut into chunks
  (each hashed and staged), as ``ingest DIR`` does;
- a member of ``SPLIT`` (64 MiB) or more is split in two jobs that the two
  workers run side by side: its whole-file digest, and its chunks, so that
  even a tar of one huge member keeps both cores busy (reading it twice
  costs less than leaving a core idle).

Each staged file's writeback is started as soon as it is written
(``fs.start_writeback``): the disk works while the workers hash, and the
commit's syncfs has little left to wait for.

A worker returns an error text, never raises, when the file ends before a
member's data (a truncated or lying tar); the parser turns it into
TarCorrupt. At most ``WINDOW`` jobs are in flight and a worker holds one
4 MiB buffer (plus FastCDC's), so memory stays constant whatever the size.
Tars smaller than ``PARALLEL_MIN`` are read in-process (forking workers
costs more than hashing them), by the same functions.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import pyfastcdc

from castore import fs
from castore.readers import ChunkParams

PARALLEL_MIN = 16 << 20
BATCH_FILES = 256
BATCH_BYTES = 4 << 20
WINDOW = 16
READ = 4 << 20
SPLIT = 64 << 20

# Digests a worker process staged, per staging dir (a lease's): skips writing a
# repeated member twice. The other worker may still stage it once more; the
# commit keeps one.
_staged_here: dict[str, set[str]] = {}
# Each process stages into its own subdirectory: two processes creating files in
# one directory serialize on its lock.
_own_dir: dict[str, str] = {}

Staged = list[tuple[str, str, int]]  # (temp file, digest, inode)
SmallResult = tuple[list[str], Staged, str]
ChunksResult = tuple[list[tuple[str, int, int]], Staged, str]


#: The inode of a staged entry that is a pin (a hardlink to a blob found by name), not bytes written here.
PINNED = -1


def pin(blob: str, name: str) -> bool:
    """Hardlink the existing blob file ``blob`` at ``name`` (a lease's tmp dir): a dedup hit that a
    concurrent gc cannot take away, since the commit puts the pin back if the name is gone.
    False when there is no such blob (or it cannot be linked): write the content then."""
    try:
        os.link(blob, name, follow_symlinks=False)
        return True
    except OSError:
        return False


def _short(off: int) -> str:
    return f"tar stream truncated in member data at offset {off}"


@dataclass(frozen=True)
class OffsetReader:
    """Picklable job runner: the tar's fd (inherited by forked workers) and where to stage."""

    fd: int
    tmp_dir: str
    blob_root: str
    chunking: ChunkParams

    def _stage(self, digest: str, data: bytes | memoryview, staged: Staged) -> None:
        seen = _staged_here.setdefault(self.tmp_dir, set())
        if digest in seen:
            return
        seen.add(digest)
        hexd = digest[7:]
        path = os.path.join(self.blob_root, hexd[:2], hexd)
        own = _own_dir.get(self.tmp_dir)
        if own is None:
            own = _own_dir[self.tmp_dir] = os.path.join(self.tmp_dir, f"w{os.getpid()}")
            os.makedirs(own, mode=0o700, exist_ok=True)
        name = os.path.join(own, secrets.token_hex(12))
        if pin(path, name):
            staged.append((name, digest, PINNED))  # found by name: commit_manifest re-hashes it unless indexed
            return
        ino = fs.write_new(name, data)
        # Published at once (Store.install_staged): the rename overlaps hashing instead of
        # waiting for the committer; the blob is durable at the commit's syncfs and indexed
        # only after it, so until then it is an unindexed file, re-hashed if anyone relies on it.
        try:
            fs.renameat2(-100, name, fs.shard_dir_fd(os.path.join(self.blob_root, hexd[:2])), hexd)
        except FileExistsError:
            os.unlink(name)  # there already: not ours, so not "staged" (the commit verifies it)
            return
        except FileNotFoundError:
            staged.append((name, digest, ino))  # no shard directory yet: the committer renames it
            return
        staged.append(("", digest, ino))

    def small(self, items: list[tuple[int, int]]) -> SmallResult:
        """Digests of whole members given as (offset, size), each staged."""
        digests: list[str] = []
        staged: Staged = []
        for off, size in items:
            data = os.pread(self.fd, size, off)
            if len(data) != size:
                return digests, staged, _short(off + len(data))
            d = "sha256:" + hashlib.sha256(data).hexdigest()
            digests.append(d)
            self._stage(d, data, staged)
        return digests, staged, ""

    def whole(self, off: int, size: int) -> tuple[str, str]:
        """The digest of ``size`` bytes at ``off`` (not staged: the chunks are)."""
        h = hashlib.sha256()
        buf = bytearray(min(READ, size))
        view = memoryview(buf)
        pos = 0
        while pos < size:
            n = os.preadv(self.fd, [view[: min(len(buf), size - pos)]], off + pos)
            if n <= 0:
                return "", _short(off + pos)
            h.update(view[:n])
            pos += n
        return "sha256:" + h.hexdigest(), ""

    def chunks(self, off: int, size: int, whole: bool = False) -> ChunksResult:
        """The FastCDC chunks (digest, begin, end) of ``size`` bytes at ``off``, each staged;
        with ``whole``, the whole digest first (read once, hashed twice)."""
        cp = self.chunking
        cdc = pyfastcdc.FastCDC(cp.avg_size, min_size=cp.min_size, max_size=cp.max_size)
        src = _Range(self.fd, off, size, hashlib.sha256() if whole else None)
        out: list[tuple[str, int, int]] = []
        staged: Staged = []
        for c in cdc.cut_stream(src):
            d = "sha256:" + hashlib.sha256(c.data).hexdigest()
            out.append((d, c.offset, c.offset + c.length))
            self._stage(d, c.data, staged)
        if src.pos != size:
            return out, staged, _short(off + src.pos)
        if src.h is not None:
            out.insert(0, ("sha256:" + src.h.hexdigest(), 0, size))
        return out, staged, ""


class _Range:
    """readinto() over ``size`` bytes at ``off`` of a file, by pread."""

    def __init__(self, fd: int, off: int, size: int, h: Any = None) -> None:
        self.fd, self.off, self.size, self.pos, self.h = fd, off, size, 0, h

    def readinto(self, mv: memoryview) -> int:
        want = min(len(mv), self.size - self.pos)
        if want <= 0:
            return 0
        n = os.preadv(self.fd, [mv[:want]], self.off + self.pos)
        if self.h is not None:
            self.h.update(mv[:n])
        self.pos += n
        return n


def _done(value: object) -> Future[Any]:
    fut: Future[Any] = Future()
    fut.set_result(value)
    return fut


class Dispatcher:
    """Sends member content to the workers (or runs it here) and hands results back in order.

    ``add(off, size, done)``: ``done(digest, chunks)`` is called with the
    results of that member, in the order members were added, from ``add``,
    ``flush`` or ``finish`` (always on the calling thread). ``staged``,
    ``inos`` and ``sizes`` collect what was staged (temp file, digest), the
    inode of each staged blob, and the size of every content digest.
    Raises ``error(text)`` when a worker reports a short read.
    """

    def __init__(self, reader: OffsetReader, pool: Executor | None, error: Callable[[str], Exception]) -> None:
        self.reader, self.pool, self.error = reader, pool, error
        self.staged: list[tuple[str, str]] = []
        self.inos: dict[str, int] = {}
        self.pinned: set[str] = set()  # digests staged as pins (tarcontent.pin), not written here
        self.sizes: dict[str, int] = {}
        self.batch: list[tuple[int, int]] = []
        self.batch_done: list[Callable[[str, tuple[tuple[str, int, int], ...]], None]] = []
        self.batch_bytes = 0
        self.window: deque[tuple[str, Future[Any], Any, Any]] = deque()

    def _submit(self, fn: Callable[..., Any], *args: object) -> Future[Any]:
        if self.pool is None:
            return _done(fn(*args))
        return self.pool.submit(fn, *args)

    def add(self, off: int, size: int, done: Callable[[str, tuple[tuple[str, int, int], ...]], None]) -> None:
        if size >= SPLIT:
            self.flush()
            whole = self._submit(self.reader.whole, off, size)
            self.window.append(("chunks", self._submit(self.reader.chunks, off, size), whole, done))
        elif size >= self.reader.chunking.threshold:
            self.flush()
            self.window.append(("both", self._submit(self.reader.chunks, off, size, True), None, done))
        else:
            self.batch.append((off, size))
            self.batch_done.append(done)
            self.batch_bytes += size
            if len(self.batch) >= BATCH_FILES or self.batch_bytes >= BATCH_BYTES:
                self.flush()
        self._collect(WINDOW)

    def flush(self) -> None:
        if not self.batch:
            return
        fut = self._submit(self.reader.small, self.batch)
        self.window.append(("small", fut, self.batch, self.batch_done))
        self.batch, self.batch_done, self.batch_bytes = [], [], 0

    def finish(self) -> None:
        """Wait for every job and deliver every result."""
        self.flush()
        self._collect(0)

    def _staged(self, staged: Staged) -> None:
        for name, digest, ino in staged:
            self.staged.append((name, digest))
            if ino == PINNED:
                self.pinned.add(digest)
            else:
                self.inos[digest] = ino

    def _collect(self, keep: int) -> None:
        while len(self.window) > keep or (
            self.window and self.window[0][1].done() and (self.window[0][0] != "chunks" or self.window[0][2].done())
        ):
            kind, fut, a, b = self.window.popleft()
            if kind == "small":
                digests, staged, err = fut.result()
                self._staged(staged)
                for d, (_, size) in zip(digests, a, strict=False):
                    self.sizes[d] = size
                if err:
                    raise self.error(err)
                for d, done in zip(digests, b, strict=True):
                    done(d, ())
            else:
                chunks, staged, err = fut.result()
                self._staged(staged)
                if kind == "both" and not err:
                    digest, err2 = chunks.pop(0)[0], ""
                else:
                    digest, err2 = a.result() if kind == "chunks" else ("", "")
                for d, begin, end in chunks:
                    self.sizes[d] = end - begin
                if err or err2:
                    raise self.error(err or err2)
                b(digest, tuple(chunks))
