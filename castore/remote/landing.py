"""Where pulled blobs land: verified bytes are written under their own name in the store at once
(unindexed, exclusively, like ingest's readers publish), so that a pull killed
half-way keeps what it fetched: the next pull of the same tree finds those files, and commit re-hashes
them before indexing (castore.store.commit.commit_manifest: content not staged by this run is verified).

Files published but not indexed are orphans for gc, which keeps them for its grace period, long
enough for a re-run. A pull refused for a lie (IntegrityError) takes back what it published.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from castore import fs
from castore.errors import ResourceLimit
from castore.store import Store

MAX_PENDING = 64 << 20  # bytes handed to the writers and not yet written


def present_files(store: Store, digests: set[str], sizes: dict[str, int]) -> set[str]:
    """Those of ``digests`` whose blob file exists with its size (a killed pull's, unindexed).

    A fan-out directory holding many of them is listed once rather than stat'ed per blob (a pull into
    a fresh store costs 256 directory reads, not one stat per blob)."""
    by_dir: dict[str, list[str]] = {}
    for d in digests:
        by_dir.setdefault(d[7:9], []).append(d)
    found: set[str] = set()
    for prefix, ds in by_dir.items():
        if len(ds) >= 16:
            try:
                names = set(os.listdir(os.path.join(store.blob_root, prefix)))
            except FileNotFoundError:
                continue
            ds = [d for d in ds if d[7:] in names]
        found.update(d for d in ds if store.blob_file_ok(d, sizes[d]))
    return found


class Landing:
    """Publishes verified blobs into ``store`` for one pull; thread-safe."""

    def __init__(self, store: Store, tmp_dir: str) -> None:
        self.store, self.tmp_dir = store, tmp_dir
        self.published: list[str] = []  # digests renamed into place by this pull (list.append is atomic)
        self._seq = iter(range(1 << 62))
        self._prefix = secrets.token_hex(6)  # several Landings may share one tmp dir (lazy mount)
        self._lock = threading.Lock()
        self._dirs: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[None]] = []
        self._pending = 0
        self._room = threading.Condition()

    def put_async(self, digest: str, data: bytes, *, jobs: int, replace: bool = False) -> Future[None]:
        """``put`` on a pool of ``jobs`` writer threads (file creation, not the network, bounds a pull of
        small files); at most MAX_PENDING bytes wait. Errors surface in ``drain``."""
        with self._room:
            while self._pending > MAX_PENDING:
                self._room.wait()
            self._pending += len(data)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max(1, jobs), thread_name_prefix="land")
        fut = self._pool.submit(self._put_then_free, digest, data, replace)
        self._futures.append(fut)
        return fut

    def put_many_async(self, items: list[tuple[str, bytes]], *, jobs: int, replace: bool = False) -> Future[None]:
        """``put_async`` of a batch: one task for many small blobs (a task per blob costs more than
        writing a tiny file)."""
        n = sum(len(b) for _, b in items)
        with self._room:
            while self._pending > MAX_PENDING:
                self._room.wait()
            self._pending += n
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max(1, jobs), thread_name_prefix="land")
        fut = self._pool.submit(self._put_many_then_free, items, n, replace)
        self._futures.append(fut)
        return fut

    def _put_then_free(self, digest: str, data: bytes, replace: bool) -> None:
        self._put_many_then_free([(digest, data)], len(data), replace)

    def _put_many_then_free(self, items: list[tuple[str, bytes]], n: int, replace: bool) -> None:
        try:
            for digest, data in items:
                self.put(digest, data, replace=replace)
        finally:
            with self._room:
                self._pending -= n
                self._room.notify_all()

    def drain(self) -> None:
        """Wait for every ``put_async``; raise the first writer error."""
        futures, self._futures = self._futures, []
        errors = [f.exception() for f in futures]
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def _tmp(self) -> str:
        with self._lock:
            n = next(self._seq)
        return os.path.join(self.tmp_dir, f"land-{self._prefix}-{n}")

    def tmp_path(self) -> str:
        """A fresh path in the tmp dir (for downloads that write their own file)."""
        return self._tmp()

    def _dir(self, dest: str) -> None:
        d = os.path.dirname(dest)
        if d not in self._dirs:
            os.makedirs(d, exist_ok=True)
            self._dirs.add(d)

    def put(self, digest: str, data: bytes, *, replace: bool = False) -> None:
        """Write verified ``data`` under its blob name at once (exclusively: an existing name is kept, as
        in publish); with ``replace``, through a temp file and a rename."""
        if replace:
            path = self._tmp()
        else:
            path = self.store.blob_path(digest)
            self._dir(path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
        except FileExistsError:
            return
        if not replace:
            self.published.append(digest)  # before writing: a failed write is taken back too
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            os.close(fd)
            os.unlink(path)
            if exc.errno == errno.ENOSPC:
                raise ResourceLimit(f"no space left on device writing {digest}") from exc
            raise
        os.close(fd)
        if replace:
            self.publish(path, digest, replace=True)

    def publish(self, path: str, digest: str, *, replace: bool = False) -> None:
        """Rename the verified file ``path`` to the blob's name. An existing name is kept unless
        ``replace`` (its bytes failed verification): commit verifies what it did not stage."""
        dest = self.store.blob_path(digest)
        self._dir(dest)
        if replace:
            os.replace(path, dest)
            self.published.append(digest)
            return
        try:
            fs.renameat2(-100, path, -100, dest)
        except FileExistsError:
            os.unlink(path)
            return
        self.published.append(digest)

    def staged(self) -> list[tuple[str, str]]:
        """For commit_manifest: ("", digest) = published already, only needs the syncfs."""
        return [("", d) for d in dict.fromkeys(self.published)]

    def take_back(self) -> None:
        """Remove what this pull published (unindexed, so only ours): a refused pull stores nothing."""
        for d in self.published:
            with contextlib.suppress(OSError):
                os.unlink(self.store.blob_path(d))
        self.published.clear()
