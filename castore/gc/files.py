"""Sizes and ages of store files, for gc's report and grace period."""

from __future__ import annotations

import errno
import os


def age_ns(path: str, now: int) -> int | None:
    """Nanoseconds since ``path`` was last written (None when absent).

    mtime, not ctime: our writers rename staged files into blobs/ and commit
    their rows within one hold of the store lock, so a file the index lacks
    while gc holds the lock exclusively is an orphan however it got there;
    the grace period only covers writers outside that protocol.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return now - st.st_mtime_ns


def size_of(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def tree_size(path: str) -> int:
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    else:
                        total += e.stat(follow_symlinks=False).st_size
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                raise
    return total


def shard_inodes(sdir: str) -> dict[bytes, int]:
    """32-byte key -> inode number of every blob file named by its hex digest in ``sdir`` ({} when
    missing). The inode numbers come with the listing (``getdents``): no stat per file."""
    out: dict[bytes, int] = {}
    try:
        with os.scandir(sdir) as it:
            for e in it:
                if len(e.name) == 64:
                    try:
                        k = bytes.fromhex(e.name)
                    except ValueError:
                        continue
                    if k.hex() == e.name:  # a blob's own name (lower-case hex), nothing else
                        out[k] = e.inode()
    except (FileNotFoundError, NotADirectoryError):
        pass
    return out
