"""gc's phase 4 over the store's caches: hardlink-checkout objects no checkout uses, and the rows
(verified blobs, stat cache, chunk map, links) that name content the index no longer holds.
A mixin of ``castore.gc.collect._Collector`` (the attributes are the collector's)."""

from __future__ import annotations

import marshal
import os
from typing import TYPE_CHECKING

from castore import fs
from castore.gc.pages import Pages
from castore.gc.report import GcOptions, GcReport, Item
from castore.store import Store, unpack_chunks
from castore.store.meta import CHUNK_ROW, MetaDB, dkey


class CacheSweeps:
    """Sweeps of the caches: rows deleted in short write transactions, never under the store lock."""

    store: Store
    opts: GcOptions
    meta: MetaDB
    now: int
    report: GcReport
    keep_items: bool
    pages: Pages
    dry_gone: set[bytes]

    if TYPE_CHECKING:

        def _remove(self, item: Item, path: str, *, tree: bool) -> None: ...

    def link_objects(self) -> None:
        """Hardlink-checkout objects no checkout uses (st_nlink == 1), their rows, old ``.tmp-*``."""
        root = os.path.join(self.store.path, "links")
        links_db = self.meta.db("links")
        for shard in sorted(fs.listdir(root)):
            sdir = os.path.join(root, shard)
            drop: list[tuple[str, int]] = []
            for n in fs.listdir(sdir):
                path = os.path.join(sdir, n)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if n.startswith(".tmp-"):
                    if self.now - st.st_mtime_ns >= self.opts.grace_ns:
                        self._remove(Item("link", path, st.st_size), path, tree=False)
                elif st.st_nlink == 1 and hexkey(n) is not None:
                    drop.append((n, st.st_size))
            if not drop:
                continue
            if not self.opts.dry_run:
                self.meta.write(
                    lambda t, d=drop: [
                        t.delete(b"o" + bytes.fromhex(n), db=links_db)  # type: ignore
                        for n, _ in d
                    ]
                )
            for n, size in drop:
                path = os.path.join(sdir, n)
                try:
                    if os.lstat(path).st_nlink != 1:
                        continue  # a checkout linked it meanwhile: keep it (its row comes back)
                except FileNotFoundError:
                    continue
                self._remove(Item("link", path, size), path, tree=False)
        # Rows whose object is gone.
        with self.meta.read() as txn:
            stale = [
                bytes(k)
                for k in self.pages.each(txn.cursor(db=links_db).iternext(values=False))
                if k[:1] == b"o" and not os.path.exists(os.path.join(root, k[1:2].hex(), k[1:].hex()))
            ]
        self._delete_rows("links", stale, "cache-row")

    def verified_rows(self, doomed: list[bytes]) -> None:
        """Verified-blob records of deleted blobs (a cache; short txns, no store lock)."""
        if self.opts.dry_run or not doomed:
            return
        db, blobs_db = self.meta.db("links"), self.meta.db("blobs")
        for i in range(0, len(doomed), 5000):
            part = doomed[i : i + 5000]

            def fn(t: object, p: list[bytes] = part) -> None:
                for k in p:
                    self.pages.touched(2)
                    if t.get(k, db=blobs_db) is None:  # type: ignore[attr-defined]
                        t.delete(b"v" + k, db=db)  # type: ignore[attr-defined]

            self.meta.write(fn)

    def stat_cache(self) -> None:
        """Stat-cache rows that name content the index no longer holds (ingest would re-read it anyway)."""
        cache_db = self.meta.db("statcache")
        stale: list[bytes] = []
        with self.meta.read() as txn:
            for k, v in self.pages.each(txn.cursor(db=cache_db)):
                try:
                    _, _, _, digest, chunks, _, _ = marshal.loads(v)
                    need = [c[0] for c in chunks] if chunks else [digest]
                    self.pages.touched(len(need))
                    if all(self._indexed(txn, dkey(d)) for d in need):
                        continue
                except (ValueError, EOFError, TypeError, IndexError):
                    pass
                stale.append(bytes(k))
        self._delete_rows("statcache", stale, "cache-row")

    def chunk_map(self) -> None:
        """Chunk-map rows that can no longer serve their file (a chunk left the index). Checked
        again in the deleting transaction: an ingest may have stored those chunks meanwhile."""
        map_db = self.meta.db("chunkmap")

        def stale_row(t: object, k: bytes) -> bool:
            row = t.get(k, db=map_db)  # type: ignore[attr-defined]
            if row is None:
                return False
            if not unpack_chunks(bytes(row)):
                return True
            self.pages.touched(len(row) // CHUNK_ROW.size)
            return any(not self._indexed(t, bytes(row[i : i + 32])) for i in range(0, len(row), CHUNK_ROW.size))

        with self.meta.read() as txn:
            keys = self.pages.each(txn.cursor(db=map_db).iternext(values=False))
            stale = [bytes(k) for k in keys if stale_row(txn, bytes(k))]
        for k in stale:
            self.report.add(Item("cache-row", f"chunkmap:{k.hex()}"), self.keep_items, is_file=False)
        if self.opts.dry_run:
            return
        for i in range(0, len(stale), 5000):
            part = stale[i : i + 5000]
            self.meta.write(lambda t, p=part: [t.delete(k, db=map_db) for k in p if stale_row(t, k)])  # type: ignore

    def _indexed(self, txn: object, key: bytes) -> bool:
        """``key`` has an index row (a dry run counts the rows a real run would have deleted as gone)."""
        return txn.get(key, db=self.meta.db("blobs")) is not None and key not in self.dry_gone  # type: ignore

    def _delete_rows(self, dbname: str, keys: list[bytes], kind: str) -> None:
        for k in keys:
            self.report.add(Item(kind, f"{dbname}:{k.hex()}"), self.keep_items, is_file=False)
        if self.opts.dry_run:
            return
        db = self.meta.db(dbname)
        for i in range(0, len(keys), 5000):  # short write txns: ingest commits are not held up
            part = keys[i : i + 5000]
            self.meta.write(lambda t, p=part: [t.delete(k, db=db) for k in p])  # type: ignore[misc]


def hexkey(name: str) -> bytes | None:
    try:
        return bytes.fromhex(name) if len(name) == 64 else None
    except ValueError:
        return None
