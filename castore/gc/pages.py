"""Keep gc's resident set flat while it reads an index bigger than its memory budget.

The index is one memory-mapped file (LMDB, read-only map). Each row gc reads
maps its page into the process, and on a read fault Linux maps up to 16
neighbouring pages that are in the page cache ("fault-around"): measured,
1,000 scattered reads of a 1M-blob index add 36 MiB to the resident set. A
walk of every row, or 5,000 scattered deletes, would map the whole file.

``Pages.touched(n)`` counts rows read; every ``EVERY`` rows the mapped pages
are dropped (MADV_DONTNEED: they stay in the page cache and are mapped again
when next read), so at most ~``EVERY`` x 64 KiB of the index is resident. The
map is read-only (no ``writemap``): a write transaction's dirty pages are
private copies, never the mapped ones, so a drop is safe inside any
transaction. The map's address is read from /proc/self/maps at every drop
(LMDB may map it elsewhere when the map grows): a stale address is never used.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from castore.store.meta import MetaDB

EVERY = 256  # rows read between two drops: ~16 MiB mapped at most (fault-around maps 64 KiB per read)
MADV_DONTNEED = 4

T = TypeVar("T")


class Pages:
    """Drops the mapped pages of ``meta``'s index file every ``every`` rows read."""

    def __init__(self, meta: MetaDB, every: int = 0) -> None:
        self.meta = meta
        self.every = every or EVERY
        self.data = os.path.realpath(os.path.join(meta.path, "data.mdb")).encode()
        self.count = 0
        self.drops = 0
        self._madvise: Callable[..., int] | None = None
        try:
            self._madvise = ctypes.CDLL(None, use_errno=True).madvise
        except (OSError, AttributeError):
            pass

    def touched(self, n: int = 1) -> None:
        """``n`` more rows were read; drop when ``every`` have been since the last drop."""
        self.count += n
        if self.count >= self.every:
            self.drop()

    def each(self, items: Iterable[T]) -> Iterator[T]:
        """``items`` (rows of a cursor), each counted as one row read."""
        for x in items:
            yield x
            self.touched()

    def drop(self) -> None:
        """Unmap the index pages this process has mapped (best effort)."""
        self.count = 0
        if self._madvise is None:
            return
        self.drops += 1
        try:
            with open("/proc/self/maps", "rb") as f:
                maps = f.read()
        except OSError:
            return
        end = b" " + self.data + b"\n"
        pos = maps.find(end)
        while pos >= 0:
            start = maps.rfind(b"\n", 0, pos) + 1
            lo, hi = (int(x, 16) for x in maps[start : maps.index(b" ", start)].split(b"-"))
            self._madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), MADV_DONTNEED)
            pos = maps.find(end, pos + len(end))


__all__ = ["EVERY", "Pages"]
