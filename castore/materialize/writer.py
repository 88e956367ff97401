"""The Writer: materializes the resources of one manifest below a root directory fd, from the
store (copy, reflink or a hardlink object), then owner, mode, xattrs and times in the safe order.

Its parts, by what they write: content.py (a regular file's bytes), objects.py (hardlink objects
and their records), nodes.py (each resource kind, and metadata), plainfiles.py (the common small
file of a store manifest, inlined).
"""

from __future__ import annotations

import os

from castore.manifest.model import Chunk
from castore.materialize.content import ContentWriter
from castore.materialize.nodes import NodeWriter
from castore.materialize.objects import ObjectLinker
from castore.materialize.options import Options
from castore.materialize.plainfiles import PlainFileWriter
from castore.store import Store


class Writer(NodeWriter, ObjectLinker, ContentWriter, PlainFileWriter):
    """Materializes resources of one manifest below a root directory fd."""

    def __init__(self, store: Store | None, opts: Options) -> None:
        self.store = store
        self.opts = opts
        self.can_reflink = opts.link in ("auto", "reflink")
        self.euid, self.egid = os.geteuid(), os.getegid()
        self.verified: dict[str, tuple[int, int, int, int]] = {}
        self.link_updates: dict[bytes, bytes] = {}
        self.verified_updates: dict[bytes, bytes] = {}
        self.noted_link_fallback = False
        self.noted_xattr_skip = False
        self._keys: dict[int, bytes] = {}
        self._shards: dict[str, int] = {}
        self.made_objects = False  # a new hardlink object was written (not yet durable)
        # Data was written or an object re-proven: a syncfs must precede the records' commit and
        # the rename (a checkout of metadata alone may skip it: castore/fs/ordering.py).
        self.needs_sync = False
        self.chunk_lists: dict[str, tuple[Chunk, ...]] = {}  # whole-file digest -> chunks (Store.chunk_lists)
        self.forked = False  # set in a forked worker: it reads only what was preloaded
        self.tmp_dir: str | None = None  # where new hardlink objects are written (a lease's tmp dir)
        self.threshold = store.chunk_threshold if store is not None else 1 << 62
        self.records: dict[bytes, bytes] | None = None  # the preloaded `links` rows (preload)
        self.umask_zero = False  # the caller set umask 0: new files may be created with their mode
