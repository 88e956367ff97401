"""gc's phase 3: unlink what the index no longer holds, in short holds of the store lock.
A mixin of ``castore.gc.collect._Collector`` (the attributes are the collector's)."""

from __future__ import annotations

import os
import time

from castore.faults import crashpoint
from castore.gc.pages import Pages
from castore.gc.report import GcOptions, GcReport, Item
from castore.gc.spill import Records
from castore.store import Store
from castore.store.meta import KIND_MANIFEST, MetaDB, dstr


class Unlinks:
    """Unlinks of blob files (and manifests' markers), each batch re-checked against the index."""

    store: Store
    opts: GcOptions
    meta: MetaDB
    report: GcReport
    keep_items: bool
    pages: Pages

    def sweep(self, files: Records, pos: int, deadline: float) -> int:
        """Phase 3, one hold of the exclusive lock: unlink from ``pos`` until ``deadline``; the new pos.

        Each batch re-checks the index first: an ingest that committed between
        two holds and revived a digest keeps its file.
        """
        blobs_db = self.meta.db("blobs")
        half = len(files) // 2
        while pos < len(files):
            batch = files.read(pos, 64)  # the deadline is checked per batch: short even when unlinks are slow
            live: set[bytes] = set()
            if not self.opts.dry_run:  # a dry run deleted no rows: nothing to re-check
                with self.meta.read() as txn:
                    live = {k for k, _, _ in batch if txn.get(k, db=blobs_db) is not None}
                self.pages.touched(len(batch))
            for i, (k, size, kind) in enumerate(batch):
                if pos + i == half and half:
                    crashpoint("gc-mid-sweep")
                if k not in live:
                    self._unlink_blob(k, size, kind)
            pos += len(batch)
            if time.monotonic() > deadline:
                break
        return pos

    def _unlink_blob(self, key: bytes, size: int, kind: int) -> None:
        digest = dstr(key)
        item = Item("orphan" if kind < 0 else ("manifest" if kind == KIND_MANIFEST else "blob"), digest, size)
        if self.opts.dry_run:
            if not os.path.lexists(self.store.blob_path(digest)):
                item = Item("index-row", digest)
            self.report.add(item, self.keep_items, is_file=item.kind != "index-row")
            return
        try:
            os.unlink(self.store.blob_path(digest))
        except FileNotFoundError:
            self.report.add(Item("index-row", digest), self.keep_items, is_file=False)
            return
        if kind == KIND_MANIFEST or kind < 0:
            try:
                os.unlink(self.store.marker_path(digest))  # after its blob: a marker alone is ignored
            except FileNotFoundError:
                pass
        self.report.add(item, self.keep_items)
