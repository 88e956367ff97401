"""Store-wide flock: shared for ingest commits, exclusive for gc; and lease lock files."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from castore.errors import Busy


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


def is_held(path: str) -> bool:
    """True when some live process holds a flock on ``path``."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False
