"""gc's roots re-used between two holds of the store lock while the catalog does not change.

Phase 2 deletes index rows in chunks, one hold of the store lock each, and every hold must see
the roots as they are then: an ingest (or ``tag``, or a lease) may commit between two holds.
Reading the roots walks every catalog name, its history and every lease (json-decoded), so a
re-read per chunk costs (names x chunks): quadratic in the store size, measured 0.10 s of CPU
at 200,000 blobs and 0.55 s at 600,000 (``scripts/bench/gc.py``; the phase ``commit-roots``).

The roots are a function of the ``tags``, ``history`` and ``leases`` tables alone (and of
lease locks, which only ever go from held to free: a lease that died meanwhile only protected
more). LMDB writes copy-on-write: a transaction that changes a table writes that table's root
page anew and records its number (with its row and page counts) in the table's record in the
main database. A page still in use by an open read transaction is never reused for a new one.
So, after each commit gc opens a read transaction *at its own commit* (the next transaction
id: nothing committed in between, else no pin) and reads the three tables' records. At the
next hold the write transaction reads them again before it changes anything: equal records,
while the pin kept every page of the old trees from being reused, mean no transaction changed
those tables since, and the roots read at the previous hold still hold. Any difference (or no
pin) and the roots are read again, as before. The pin is released as soon as the records are
compared, before the transaction writes anything (a map resize needs no open transaction).
"""

from __future__ import annotations

from contextlib import ExitStack

from castore.store.meta import MetaDB

ROOT_TABLES = (b"tags", b"history", b"leases")


def _records(txn: object) -> tuple[bytes, ...] | None:
    """The main database's records of the root tables in ``txn`` (None if one is missing)."""
    out = []
    for name in ROOT_TABLES:
        rec = txn.get(name)  # type: ignore[attr-defined]
        if rec is None:
            return None
        out.append(bytes(rec))
    return tuple(out)


class RootPin:
    """The roots of the last hold, and a read transaction at the commit that ended it."""

    def __init__(self, meta: MetaDB) -> None:
        self.meta = meta
        self.txn: object | None = None
        self.stack = ExitStack()
        self.records: tuple[bytes, ...] | None = None
        self.roots: set[bytes] | None = None
        self.reused = 0  # holds that did not re-read the roots (reported by the tests)

    def take(self, txn: object) -> set[bytes] | None:
        """In a fresh write transaction, before it writes: the previous roots if the root tables did
        not change since the pin (None: read them again). Releases the pin either way."""
        try:
            if self.txn is None or self.roots is None:
                return None
            now = _records(txn)
            if now is None or now != self.records:
                return None
            self.reused += 1
            return self.roots
        finally:
            self.release()

    def pin(self, roots: set[bytes], write_id: int) -> None:
        """After the write transaction ``write_id`` committed: pin its state if nothing came after it."""
        self.release()
        txn = self.stack.enter_context(self.meta.read())
        records = _records(txn) if txn.id() == write_id else None
        if records is None:
            self.release()
            return
        self.txn, self.records, self.roots = txn, records, roots

    def release(self) -> None:
        self.stack.close()  # aborts the pinning read transaction
        self.txn, self.records, self.roots = None, None, None


__all__ = ["ROOT_TABLES", "RootPin"]
