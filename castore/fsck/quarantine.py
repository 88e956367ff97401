"""Blob files fsck checks by hashing, and where it moves the damaged ones (never deleted)."""

from __future__ import annotations

import os
import secrets
import stat
import time

from castore import fs
from castore.errors import IntegrityError


def hash_file(path: str) -> tuple[str, int]:
    """(digest, size) of a file's content, streamed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IntegrityError(f"{path}: not a regular file")
        return fs.hash_fd(fd)
    finally:
        os.close(fd)


def quarantine(store_path: str, path: str) -> str:
    """Move a damaged file to STORE/quarantine/ (never deleted by gc); its new path."""
    qdir = os.path.join(store_path, "quarantine")
    os.makedirs(qdir, mode=0o700, exist_ok=True)
    dest = os.path.join(qdir, f"{os.path.basename(path)}.{time.strftime('%Y%m%dT%H%M%S')}.{secrets.token_hex(3)}")
    os.rename(path, dest)
    return dest
