"""Reading a mounted file's bytes from its blob or chunks, verified once per mount: each blob is
hashed whole the first time it is read, and its file's identity (dev, ino, size, mtime, ctime) is
kept; later loads of it (after it left the bounded LRU of verified bytes, or for a blob too large for
it) re-read the file without hashing while ``fstat`` proves it unchanged. A digest or size mismatch,
or a missing blob, is EIO for that read only. ``warm`` reads small blob files into the page cache in a
few threads (the mount reads ahead the next files of a tree walk), so a cold walk waits on its disk
less; ``prefetch`` loads and verifies blobs ahead into the LRU.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from castore import textsafe
from castore.digest import EMPTY_DIGEST
from castore.errors import BlobNotFound, CastoreError, IntegrityError
from castore.store import Store
from castore.store.blobs import open_blob_file

if TYPE_CHECKING:
    from castore.mount.fuse import Node

CACHE_BYTES = 64 << 20  # verified blob bytes kept in memory
CACHE_ITEM_MAX = 8 << 20  # larger blobs: hashed once, then served from the file while fstat proves it unchanged
READ = 1 << 20
PREFETCH_THREADS = 8
WARM_QUEUE_MAX = 64  # ``warm`` tasks queued at most (each a few blob files)


class BlobReader:
    """Verified reads of blobs by digest: a bounded LRU of verified bytes (thread-safe).

    ``note`` receives one message per blob that fails (corrupt, wrong size, missing).
    """

    def __init__(
        self,
        store: Store,
        *,
        cache_bytes: int = CACHE_BYTES,
        item_max: int = CACHE_ITEM_MAX,
        note: Callable[[str], None] | None = None,
        fetch: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.fetch = fetch  # lazy mounts: puts a missing blob into the store (verified) or raises
        self.cache_bytes, self.item_max = cache_bytes, item_max
        self.note = note or (lambda m: textsafe.note(m, prefix="error"))
        self._lru: OrderedDict[str, bytes] = OrderedDict()
        self._held = 0
        self._proven: dict[str, tuple[int, int, int, int, int]] = {}  # digest -> its file's stat when verified
        self._mu = threading.Lock()
        self._gates: dict[str, threading.Lock] = {}
        self._noted: set[str] = set()
        self._ahead: set[str] = set()  # digests being prefetched
        self._pool: ThreadPoolExecutor | None = None
        self._warming = 0  # ``warm`` tasks queued or running
        self.hashed = 0  # blobs hashed (for tests and stats)
        self.loads = 0  # blob files read into the cache
        self.reads = 0  # reads served
        self.misses = 0  # reads that waited for a blob's load (their own, or read-ahead's)

    def read_file(self, node: Node, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset+size)`` of a file node, clipped to its size. Raises IntegrityError."""
        if node.size == 0 and node.digest and node.digest != EMPTY_DIGEST:
            raise IntegrityError(f"{node.path}: empty file with a non-empty digest {node.digest}")
        with self._mu:
            self.reads += 1
        end = min(node.size, offset + size)
        if offset >= end:
            return b""
        out: list[bytes] = []
        i = max(bisect_right(node.starts, offset) - 1, 0)
        pos = offset
        while pos < end:
            begin, pend, digest = node.pieces[i]
            lo, hi = pos - begin, min(pend, end) - begin
            out.append(self._piece(digest, pend - begin, lo, hi, node.path))
            pos = begin + hi
            i += 1
        return out[0] if len(out) == 1 else b"".join(out)

    def _piece(self, digest: str, size: int, lo: int, hi: int, path: str) -> bytes:
        try:
            if size > self.item_max:
                return self._large(digest, size, lo, hi)
            return self._verified(digest, size)[lo:hi]
        except IntegrityError as exc:
            with self._mu:
                first = digest not in self._noted
                self._noted.add(digest)
            if first:
                self.note(f"{exc} (read of {path}); reads of it return EIO; run `continuity fsck`")
            raise

    def _verified(self, digest: str, size: int, wait: int = 1) -> bytes:
        with self._mu:
            data = self._lru.get(digest)
            if data is not None:
                self._lru.move_to_end(digest)
                return data
            gate = self._gates.setdefault(digest, threading.Lock())
            self.misses += wait
        with gate:  # one reader hashes a blob; concurrent readers of it wait and then hit the cache
            with self._mu:
                data = self._lru.get(digest)
                if data is not None:
                    return data
            data = self._load(digest, size)
            with self._mu:
                self._gates.pop(digest, None)
                if digest not in self._lru:
                    self._lru[digest] = data
                    self._held += len(data)
                while self._held > self.cache_bytes and len(self._lru) > 1:
                    _, old = self._lru.popitem(last=False)
                    self._held -= len(old)
        return data

    def _open(self, digest: str) -> int:
        try:
            return self.store.open_blob(digest)
        except BlobNotFound:
            if self.fetch is None:
                raise
        except OSError as exc:
            raise IntegrityError(f"blob {digest} cannot be opened: {exc.strerror}") from exc
        try:
            self.fetch(digest)  # verified before it is stored; IntegrityError for wrong bytes
        except IntegrityError:
            raise
        except CastoreError as exc:  # the registry is unreachable or refused: EIO for this read, retried later
            self.note(f"{exc}; this read returns EIO")
            raise OSError(errno.EIO, str(exc)) from None
        return self.store.open_blob(digest)

    def _open_stat(self, digest: str) -> tuple[int, os.stat_result]:
        """``_open`` and the blob file's stat (a local blob: the one fstat the store's open makes)."""
        if self.fetch is not None:
            fd = self._open(digest)
            return fd, os.fstat(fd)
        try:
            return open_blob_file(self.store.blob_path(digest), digest)
        except OSError as exc:
            raise IntegrityError(f"blob {digest} cannot be opened: {exc.strerror}") from exc

    def _load(self, digest: str, size: int) -> bytes:
        fd, st = self._open_stat(digest)
        try:
            if st.st_size != size:
                raise IntegrityError(f"blob {digest} has the wrong size (expected {size} bytes)")
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            data = os.read(fd, size + 1)  # one byte more: detect growth (fstat said ``size``)
            if len(data) != size:
                parts = [data]
                got = len(data)
                while got <= size:
                    b = os.read(fd, max(size - got, 0) + 1)
                    if not b:
                        break
                    parts.append(b)
                    got += len(b)
                data = b"".join(parts)
        finally:
            os.close(fd)
        with self._mu:
            self.loads += 1
            proven = self._proven.get(digest) == key
        if proven and len(data) == size:
            return data  # verified earlier in this mount, and its file has not changed since
        with self._mu:
            self.hashed += 1
        if len(data) != size or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"blob {digest} is corrupt (digest mismatch)")
        with self._mu:
            self._proven[digest] = key
        return data

    def cached(self, digest: str) -> bool:
        """True when ``digest``'s verified bytes are in memory (or being loaded ahead)."""
        return digest in self._lru or digest in self._ahead

    def prefetch(self, items: Iterable[tuple[str, int]]) -> None:
        """Load and verify small blobs ``(digest, size)`` into the cache in background threads.

        Best effort: a blob that fails is left for the read that needs it (which reports it).
        """
        todo = []
        with self._mu:
            for digest, size in items:
                if size > self.item_max or digest in self._lru or digest in self._ahead:
                    continue
                self._ahead.add(digest)
                todo.append((digest, size))
            if not todo:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="prefetch")
            pool = self._pool
        n = min(PREFETCH_THREADS, len(todo))
        for k in range(n):  # one task per thread, strided: the nearest blobs are loaded first, in parallel
            pool.submit(self._ahead_some, todo[k::n])

    def warm(self, digests: list[str]) -> None:
        """Start reading small local blobs into the page cache in background threads (``open``, which
        waits for the inode, then ``posix_fadvise(WILLNEED)``, which queues the data read and does not
        wait for it): the read that needs one then loads and verifies it from memory. Less work per
        blob in the threads than ``prefetch`` (no read, no hash, no lock), so they hold the GIL less,
        and twice the reads in flight per thread. Best effort: errors are left for that read."""
        if not digests:
            return
        with self._mu:
            if self._warming > WARM_QUEUE_MAX:  # the threads are behind (random reads, a slow disk): skip
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="prefetch")
            pool = self._pool
            n = min(PREFETCH_THREADS, len(digests))
            self._warming += n
        for k in range(n):
            pool.submit(self._warm_some, [self.store.blob_path(d) for d in digests[k::n]])

    def _warm_some(self, paths: list[str]) -> None:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            for path in paths:
                try:
                    fd = os.open(path, flags)
                except OSError:
                    continue
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                except OSError:
                    pass
                finally:
                    os.close(fd)
        finally:
            with self._mu:
                self._warming -= 1

    def _ahead_some(self, items: list[tuple[str, int]]) -> None:
        for digest, size in items:
            try:
                self._verified(digest, size, 0)
            except (CastoreError, OSError):
                pass  # the read that needs it tries again and reports it
            finally:
                with self._mu:
                    self._ahead.discard(digest)

    def close(self, *, cancel: bool = True) -> None:
        """Stop the prefetch threads (the mount is gone); ``cancel``: drop the loads not started."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None

    def stats(self) -> dict[str, int]:
        """Counters for ``--debug`` and tests: blobs hashed, blob files loaded, blobs held in memory."""
        with self._mu:
            return {
                "reads": self.reads,
                "hashed": self.hashed,
                "loads": self.loads,
                "misses": self.misses,
                "cached": len(self._lru),
                "held_bytes": self._held,
            }

    def _large(self, digest: str, size: int, lo: int, hi: int) -> bytes:
        fd = self._open(digest)
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if st.st_size != size:
                raise IntegrityError(f"blob {digest} has the wrong size (expected {size} bytes)")
            with self._mu:
                proven = self._proven.get(digest) == key
            if not proven:
                h = hashlib.sha256()
                pos = 0
                while pos < size:
                    b = os.pread(fd, min(READ, size - pos), pos)
                    if not b:
                        break
                    h.update(b)
                    pos += len(b)
                with self._mu:
                    self.hashed += 1
                if pos != size or "sha256:" + h.hexdigest() != digest:
                    raise IntegrityError(f"blob {digest} is corrupt (digest mismatch)")
                with self._mu:
                    self._proven[digest] = key
            parts = []
            pos = lo
            while pos < hi:
                b = os.pread(fd, hi - pos, pos)
                if not b:
                    raise IntegrityError(f"blob {digest} is truncated")
                parts.append(b)
                pos += len(b)
            return b"".join(parts)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- mounting
