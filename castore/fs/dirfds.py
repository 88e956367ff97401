"""Directory fds below a root, by relative path: each opened from its parent's with O_NOFOLLOW."""

from __future__ import annotations

import os
from collections import OrderedDict

DIR_FDS = 256  # kept open at once (least recently used closed first)
CACHED_LEVELS = 64  # of the directories one lookup opens, the deepest ones cached, and every STRIDE-th level
STRIDE = 64


class DirFds:
    """Open directory fds below a root, by relative path (an LRU cache).

    Each directory is opened from its parent's fd with O_NOFOLLOW, so a
    symlink can never stand in for a directory. Iterative: trees thousands of
    levels deep (paths longer than PATH_MAX) need no recursion.
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
        # The nearest cached ancestor, then down from it one name at a time.
        chain = [rel]
        parent = rel.rpartition("/")[0]
        while parent and parent not in self.cache:
            chain.append(parent)
            parent = parent.rpartition("/")[0]
        chain.reverse()
        pfd = self.root_fd
        if parent:
            pfd = self.cache[parent]
            self.cache.move_to_end(parent)
        # Cached: the deepest CACHED_LEVELS levels, and every STRIDE-th level above them (so going
        # up a deep tree level by level reopens at most STRIDE levels per miss); the rest are
        # opened, used and closed. One lookup thus evicts fewer than DIR_FDS / 2 fds (up to ~8000
        # levels deep), so an fd a caller got just before (and still uses) stays open.
        transient = len(chain) - CACHED_LEVELS
        level = chain[0].count("/")
        pfd_cached = True
        for i, path in enumerate(chain):
            try:
                fd = os.open(
                    path.rpartition("/")[2], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd
                )
            finally:
                if not pfd_cached:
                    os.close(pfd)
            pfd_cached = i >= transient or (level + i) % STRIDE == 0
            if pfd_cached:
                self.cache[path] = fd
                if len(self.cache) > DIR_FDS:
                    _, old = self.cache.popitem(last=False)
                    os.close(old)
            pfd = fd
        return pfd

    def close(self) -> None:
        for fd in self.cache.values():
            os.close(fd)
        self.cache.clear()
