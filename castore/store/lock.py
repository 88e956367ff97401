"""Every flock of the store: the store-wide lock (shared for ingest commits, exclusive for gc), gc.lock,
and lease lock files."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from castore.errors import Busy
from castore.fs.linux import flock as try_flock


@contextmanager
def flocked(path: str, *, exclusive: bool, wait: bool = True, what: str = "store") -> Iterator[int]:
    """Hold flock on ``path`` (created if missing). Busy when not ``wait`` and taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, op | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise Busy(f"{what} is locked by another process ({path})") from None
            raise
        yield fd
    finally:
        os.close(fd)


def hold_new(path: str) -> int:
    """Create the lock file ``path`` (it must not exist) and hold a shared flock on it; returns its fd
    (closing it releases the lock). A lease's owner holds its lock file so while it lives."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_held(path: str) -> bool:
    """True when some live process holds a flock on ``path``."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        return not try_flock(fd, wait=False)  # taken (and let go at the close): nobody holds it
    finally:
        os.close(fd)
