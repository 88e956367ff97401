"""gc keeps the mapped index out of its resident set (castore/gc/pages.py)."""

from __future__ import annotations

import hashlib
import os
import random

from castore.gc.pages import Pages
from castore.store import Store
from castore.store.meta import BLOB_ROW, KIND_RAW

ROWS = 150_000


def _map_rss_kib(store: Store) -> int:
    """Resident KiB of this process's mappings of the index file."""
    data = os.path.realpath(os.path.join(store.meta.path, "data.mdb"))
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                inside = line.rstrip("\n").endswith(" " + data)
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


def _fill(store: Store) -> list[bytes]:
    keys = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(ROWS)]
    db = store.meta.db("blobs")
    row = BLOB_ROW.pack(10, KIND_RAW)
    store.meta.write(lambda t: [t.put(k, row, db=db) for k in keys])
    return keys


def _scattered_reads(store: Store, keys: list[bytes], pages: Pages | None) -> int:
    """Peak resident KiB of the index map over 3,000 scattered reads."""
    db = store.meta.db("blobs")
    peak = 0
    with store.meta.read() as txn:
        for i, k in enumerate(random.Random(1).sample(keys, 3000)):
            assert txn.get(k, db=db) is not None
            if pages is not None:
                pages.touched()
            if i % 100 == 99:
                peak = max(peak, _map_rss_kib(store))
    return peak


def test_counted_reads_keep_the_mapped_index_small(store: Store) -> None:
    keys = _fill(store)  # ~9 MiB of leaf pages, all in the page cache
    Pages(store.meta).drop()
    free = _scattered_reads(store, keys, None)
    Pages(store.meta).drop()
    assert _map_rss_kib(store) < 1024
    counted = _scattered_reads(store, keys, Pages(store.meta, every=16))
    assert free > 8192  # without drops the scattered reads map most of the index
    assert counted < 4096 and 3 * counted < free, (free, counted)  # 16 reads (x fault-around) between drops


def test_a_drop_inside_a_write_transaction_keeps_its_reads_and_writes(store: Store) -> None:
    keys = _fill(store)
    db = store.meta.db("blobs")
    pages = Pages(store.meta, every=1)
    new = BLOB_ROW.pack(99, KIND_RAW)

    def fn(t: object) -> list[object]:
        for k in keys[:500]:
            t.put(k, new, db=db)  # type: ignore[attr-defined]  # dirty copies of their pages
            pages.touched()
        for k in keys[500:1000]:
            t.delete(k, db=db)  # type: ignore[attr-defined]
            pages.touched()
        return [t.get(k, db=db) for k in keys[:1500:250]]  # type: ignore[attr-defined]

    got = store.meta.write(fn)
    old = BLOB_ROW.pack(10, KIND_RAW)
    assert [bytes(g) if g is not None else None for g in got] == [new, new, None, None, old, old]
    assert pages.drops >= 1000
    with store.meta.read() as txn:
        assert bytes(txn.get(keys[0], db=db)) == new and txn.get(keys[700], db=db) is None
        assert bytes(txn.get(keys[1200], db=db)) == BLOB_ROW.pack(10, KIND_RAW)
