"""Where pulled blobs land: verified bytes are written under the lease's tmp dir, then renamed under
their own name in the store at once (unindexed, like ingest's readers publish), so that a pull killed
half-way keeps what it fetched: the next pull of the same tree finds those files, and commit re-hashes
them before indexing (castore.ingest.commit_manifest: content not staged by this run is verified).

Files published but not indexed are orphans for gc, which keeps them for its grace period, long
enough for a re-run. A pull refused for a lie (IntegrityError) takes back what it published.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading

from castore import fs
from castore.errors import ResourceLimit
from castore.store import Store


class Landing:
    """Publishes verified blobs into ``store`` for one pull; thread-safe."""

    def __init__(self, store: Store, tmp_dir: str) -> None:
        self.store, self.tmp_dir = store, tmp_dir
        self.published: list[str] = []  # digests renamed into place by this pull (list.append is atomic)
        self._seq = iter(range(1 << 62))
        self._lock = threading.Lock()

    def _tmp(self) -> str:
        with self._lock:
            n = next(self._seq)
        return os.path.join(self.tmp_dir, f"land-{n}")

    def tmp_path(self) -> str:
        """A fresh path in the tmp dir (for downloads that write their own file)."""
        return self._tmp()

    def put(self, digest: str, data: bytes, *, replace: bool = False) -> None:
        """Write verified ``data`` and publish it under ``digest``."""
        path = self._tmp()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            os.close(fd)
            os.unlink(path)
            if exc.errno == errno.ENOSPC:
                raise ResourceLimit(f"no space left on device writing {digest}") from exc
            raise
        os.close(fd)
        self.publish(path, digest, replace=replace)

    def publish(self, path: str, digest: str, *, replace: bool = False) -> None:
        """Rename the verified file ``path`` to the blob's name. An existing name is kept unless
        ``replace`` (its bytes failed verification): commit verifies what it did not stage."""
        dest = self.store.blob_path(digest)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
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
