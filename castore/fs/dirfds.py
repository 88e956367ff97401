"""Directory fds below a root, by relative path: each opened from its parent's with O_NOFOLLOW."""

from __future__ import annotations

import os
from collections import OrderedDict

DIR_FDS = 256  # kept open at once (least recently used closed first)


class DirFds:
    """Open directory fds below a root, by relative path (an LRU cache).

    Each directory is opened from its parent's fd with O_NOFOLLOW, so a
    symlink can never stand in for a directory.
    """

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.cache: OrderedDict[str, int] = OrderedDict()

    def get(self, rel: str) -> int:
        if not rel:
            return self.root_fd
        fd = self.cache.get(rel)
        if fd is not None:
            self.cache.move_to_end(rel)
            return fd
        parent, _, name = rel.rpartition("/")
        pfd = self.get(parent)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        self.cache[rel] = fd
        if len(self.cache) > DIR_FDS:
            _, old = self.cache.popitem(last=False)
            os.close(old)
        return fd

    def close(self) -> None:
        for fd in self.cache.values():
            os.close(fd)
        self.cache.clear()
