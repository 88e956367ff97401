"""Read-only stores: a store on a read-only filesystem, or one this user may not write.

Every verb that only reads works on such a store: the index is opened with
LMDB's ``readonly=True, lock=False`` (no lock file is created, nothing is
written), leases and the shared lock are no-ops (no gc can run on a store no
one can write; a gc through another, writable mount of the same store is not
seen: read a store only where it is mounted read-only everywhere, or when no
gc runs). A verb that must write is refused with ``ReadOnlyStore`` (exit 1)
and a hint.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable, Iterator

from castore.errors import ReadOnlyStore


def readonly_reason(path: str) -> str:
    """Why the store at ``path`` cannot be written ('' when it can)."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "a read-only filesystem"
    except OSError:
        return ""
    for p in (path, os.path.join(path, "meta"), os.path.join(path, "meta", "data.mdb")):
        if os.path.exists(p) and not os.access(p, os.W_OK):
            return f"{p} is not writable by uid {os.geteuid()}"
    return ""


def refuse_write(path: str, what: str = "this verb writes to it") -> None:
    why = readonly_reason(path) or "opened read-only"
    raise ReadOnlyStore(
        f"store at {path} is read-only ({why}): {what}; run it where the store is writable "
        "(a read-write mount, or as the store's owner)"
    )


def is_readonly_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)


class NoLease:
    """The lease of a read-only store: nothing to record, nothing a gc could see (none can run)."""

    def __init__(self, store_path: str) -> None:
        self.id = ""
        self.fd = -1
        self.store_path = store_path

    @property
    def tmp_dir(self) -> str:
        return os.path.join(self.store_path, "tmp", "read-only")

    def add_manifest(self, digest: str) -> None:
        pass

    def add(self, digests: Iterable[str]) -> None:
        pass

    def release(self) -> None:
        pass


@contextlib.contextmanager
def no_lease(store_path: str, manifests: Iterable[str] = ()) -> Iterator[NoLease]:
    yield NoLease(store_path)


@contextlib.contextmanager
def no_lock() -> Iterator[int]:
    yield -1
