"""Read-ahead across files for a mount: a tree walk (``tar``, ``cp -r``, ``rsync``) reads a
directory's files in name order, each one small, and a cold read of each waits on the disk for its
blob. When a small file is read from its start, the blobs of the next files of its directory are
loaded and verified ahead in a few threads (``BlobReader.prefetch``), so the walk finds them in
memory; the disk sees several requests at once instead of one at a time.

Only blobs in the local store are read ahead (a lazy mount fetches nothing it was not asked for).
"""

from __future__ import annotations

import threading

from castore.mount.blobreader import BlobReader
from castore.mount.fuse import INLINE_READ, InodeTable, Node

WINDOW = 32  # files read ahead of the one being read
REFILL = 16  # submit the next window when fewer than this many are left ahead


class ReadAhead:
    """Per directory, how far ahead blobs were requested; ``on_read`` extends it."""

    def __init__(self, table: InodeTable, reader: BlobReader, window: int = WINDOW) -> None:
        self.table, self.reader, self.window = table, reader, window
        self.refill = max(1, min(REFILL, window // 2))
        self._upto: dict[int, int] = {}  # directory inode -> index (in its names) requested up to
        self._mu = threading.Lock()

    def on_read(self, node: Node) -> None:
        """``node`` (a small regular file) is being read from its start: read its siblings ahead."""
        found = self.table.position(node)
        if found is None:
            return
        parent, i = found
        with self._mu:
            upto = self._upto.get(parent.ino, -1)
            if upto >= i + self.refill:
                return
            start, end = max(upto, i) + 1, i + 1 + self.window
            self._upto[parent.ino] = end - 1
        items = []
        for name in parent.names[start:end]:
            n = self.table.nodes[parent.children[name]]
            if len(n.pieces) == 1 and n.size <= INLINE_READ:
                items.append((n.pieces[0][2], n.size))
        if items:
            self.reader.prefetch(items)
