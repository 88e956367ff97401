"""Read-ahead across files for a mount: a tree walk (``tar``, ``cp -r``, ``rsync``, ``find -exec``)
reads the files in depth-first order of the sorted listings the mount serves, each one small, and a
cold read of each would wait on the disk for its blob. When a small file is read from its start, the
blob files of the next files in that order (across directory ends: the next directory's files follow
without a stall) are read into the page cache ahead by a few threads (``BlobReader.warm``: open, then
``posix_fadvise(WILLNEED)``), so the read of each finds its blob in memory and verifies it there; the
disk sees many requests at once instead of one at a time.

The walk order is computed on the first read (one pass over the table; each small file's position is
kept in its node). A few walks at once (two ``tar`` of different subtrees) each keep their own
stream: a read near a stream's window extends it, any other read starts a new stream (at most
``STREAMS``, the oldest dropped) with a short window of ``FIRST`` files, so random reads of single
files cost little extra disk work.

Only blobs in the local store are read ahead (a lazy mount fetches nothing it was not asked for).
"""

from __future__ import annotations

import stat
import threading

from castore.mount.blobreader import BlobReader
from castore.mount.fuse import INLINE_READ, ROOT_INO, InodeTable, Node

WINDOW = 64  # files read ahead of the one being read
REFILL = 32  # submit the next window when fewer than this many are left ahead
STREAMS = 8
FIRST = 8  # files read ahead for a read that starts a stream


class ReadAhead:
    """Where each walk's read-ahead has got to in the walk order; ``on_read`` extends it."""

    def __init__(self, table: InodeTable, reader: BlobReader, window: int = WINDOW) -> None:
        self.table, self.reader, self.window = table, reader, window
        self.refill = max(1, min(REFILL, window // 2))
        self._walk: list[Node] | None = None  # small single-blob files, in walk order
        self._streams: list[int] = []  # per walk: the walk index read ahead up to
        self._mu = threading.Lock()

    def on_read(self, node: Node) -> None:
        """``node`` (a small regular file) is being read from its start: read the next files ahead."""
        if self._walk is None:
            self._walk = walk_order(self.table)
        i = node.order
        if i < 0:
            return
        with self._mu:
            k = next((k for k, s in enumerate(self._streams) if s - 2 * self.window <= i <= s + 1), -1)
            upto = self._streams.pop(k) if k >= 0 else i
            if upto >= i + self.refill:
                self._streams.append(upto)
                return
            # A new stream starts small (a lone read of a file is no walk yet); a second read grows it.
            start, end = max(upto, i) + 1, i + 1 + (self.window if k >= 0 else min(FIRST, self.window))
            self._streams.append(end - 1)
            del self._streams[:-STREAMS]
        reader = self.reader
        reader.warm([d for d in (n.pieces[0][2] for n in self._walk[start:end]) if not reader.cached(d)])


def walk_order(table: InodeTable) -> list[Node]:
    """Small single-blob regular files in depth-first order of sorted names (a file's first path
    counts); sets each one's ``order`` to its index."""
    nodes = table.nodes
    out: list[Node] = []
    stack = [(nodes[ROOT_INO], iter(nodes[ROOT_INO].names))]
    while stack:
        d, names = stack[-1]
        for name in names:
            n = nodes[d.children[name]]
            if stat.S_ISDIR(n.mode):
                stack.append((n, iter(n.names)))
                break
            placed = 0 <= n.order < len(out) and out[n.order] is n  # a hardlink met before, in this walk
            if not placed and stat.S_ISREG(n.mode) and len(n.pieces) == 1 and n.size <= INLINE_READ:
                n.order = len(out)
                out.append(n)
        else:
            stack.pop()
    return out
