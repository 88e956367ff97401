"""Ingest's unchanged-tree record: (tree key) -> the walk's fingerprint, its manifest, the index generation.

A row of the ``statcache`` table (key ``tree:`` + sha256 of the source's
identity, castore/ingest.py ``_tree_key``) holds ``marshal((fingerprint,
manifest digest, deletions, index id))``. A re-ingest whose walk gives the
same fingerprint returns that manifest without reading a file, once it has
proved the manifest and every blob it references still indexed.

The proof is cheap when nothing was taken out of the index since the row was
written: ``deletions`` is the index's ``gc-gen`` counter, which every gc bumps
before its first delete (Store.gc_deleting) and fsck bumps in the transaction
that drops rows (``note_deletions``); ``index id`` is the index's creation
time (a rebuilt index is another index). Both unchanged and no gc deleting
now: the blob rows written with the manifest are all still there, so only the
manifest's own rows are checked (2 lookups instead of one per blob, 27,000 on
a root filesystem). Otherwise, or for a row of an older version (a pair),
every referenced blob is looked up, as before. Whoever drops ``blobs`` rows
counts it (gc: ``gc_deleting``; anything else: ``note_deletions``).
"""

from __future__ import annotations

import marshal
from typing import Any

from castore.store.meta import MetaDB, dkey


def index_generation(meta: MetaDB, txn: Any) -> tuple[bytes, bytes] | None:
    """(deletions counter, index id) read in ``txn``; None while a gc deletes or for an index without an id."""
    db = meta.db("info")
    if txn.get(b"gc-active", db=db) == b"1":
        return None
    created = txn.get(b"index-created-ns", db=db)
    if not created:
        return None
    return bytes(txn.get(b"gc-gen", db=db) or b"0"), bytes(created)


def note_deletions(meta: MetaDB, txn: Any) -> None:
    """Count, in the caller's transaction, that index rows are being dropped (outside gc)."""
    db = meta.db("info")
    txn.put(b"gc-gen", str(int(txn.get(b"gc-gen", db=db) or b"0") + 1).encode(), db=db)


def record(meta: MetaDB, txn: Any, key: bytes, fingerprint: bytes, mdigest: str) -> None:
    """Write the tree's row in the transaction that records its manifest and blob rows."""
    gen = index_generation(meta, txn)
    value = (fingerprint, mdigest, *gen) if gen is not None else (fingerprint, mdigest)
    txn.put(key, marshal.dumps(value), db=meta.db("statcache"))


def parse(raw: bytes) -> tuple[bytes, str, tuple[bytes, bytes] | None] | None:
    """(fingerprint, manifest digest, index generation or None) of a row; None when unreadable."""
    try:
        rec = marshal.loads(raw)
    except (ValueError, EOFError, TypeError):
        return None
    if not isinstance(rec, tuple) or len(rec) not in (2, 4):
        return None
    if not all(isinstance(x, bytes) for x in rec[:1] + rec[2:]) or not isinstance(rec[1], str):
        return None
    return rec[0], rec[1], (rec[2], rec[3]) if len(rec) == 4 else None


def nothing_deleted_since(meta: MetaDB, gen: tuple[bytes, bytes] | None) -> bool:
    """No index row was dropped since ``gen`` was read (and no gc is dropping any now)."""
    if gen is None:
        return False
    with meta.read() as txn:
        return index_generation(meta, txn) == gen


def still_whole(meta: MetaDB, mdigest: str, gen: tuple[bytes, bytes] | None) -> bool:
    """The manifest has its ``refs`` row and every blob it references its ``blobs`` row.

    With nothing deleted since ``gen`` the blob rows written with the manifest
    are all there: only its own row is looked up. Else every one is, in one C
    call (``getmulti``, on the raw 32-byte keys of the ``refs`` row).
    """
    trusted = nothing_deleted_since(meta, gen)
    with meta.read() as txn:
        raw = txn.get(dkey(mdigest), db=meta.db("refs"))
        if not raw:
            return False
        if trusted:
            return True
        raw = bytes(raw)
        keys = sorted({raw[i : i + 32] for i in range(0, len(raw), 32)})
        return len(txn.cursor(db=meta.db("blobs")).getmulti(keys)) == len(keys)
