"""The index rows of apply's per-ROOT records (``roots`` table): what the store and gc need of them.

``castore.apply.state`` builds and reads the records; the store keeps them,
keyed by ROOT's absolute path, as a marshalled tuple whose first three
fields are (format version, ROOT's st_dev, ROOT's st_ino). gc drops the
records of ROOTs that are gone or replaced (``prune``) without importing
the apply verb.
"""

from __future__ import annotations

import marshal
import os
import stat
from typing import TYPE_CHECKING, Any

from castore.store.meta import Txn

if TYPE_CHECKING:
    from castore.store import Store

#: The format of a record's row; a row of another version is ignored (apply walks the whole tree).
VERSION = 4
TABLE = "roots"


def record_key(root: str) -> bytes:
    """The key of ``root``'s record (its absolute path)."""
    return os.fsencode(root)


def load_row(store: Store, root: str, root_st: os.stat_result) -> tuple[Any, ...] | None:
    """The fields after (version, dev, ino) of ``root``'s record, if there is one of this version
    for this very directory (same dev and inode); None otherwise or when it is unreadable."""
    with store.meta.read() as txn:
        raw = txn.get(record_key(root), db=store.meta.db(TABLE))
        data = bytes(raw) if raw is not None else None
    if data is None:
        return None
    try:
        fields = marshal.loads(data)
        version, dev, ino = fields[:3]
    except (ValueError, EOFError, TypeError):
        return None
    if version != VERSION or (dev, ino) != (root_st.st_dev, root_st.st_ino):
        return None
    return tuple(fields[3:])


def save_row(store: Store, root: str, root_st: os.stat_result, fields: tuple[Any, ...]) -> None:
    """Replace ``root``'s record with ``fields`` (one synced LMDB transaction)."""
    data = marshal.dumps((VERSION, root_st.st_dev, root_st.st_ino, *fields))
    db = store.meta.db(TABLE)
    store.meta.write(lambda txn: txn.put(record_key(root), data, db=db))


def prune(store: Store) -> int:
    """Drop the records of ROOTs that are gone or replaced; return how many (gc calls this)."""
    db = store.meta.db(TABLE)
    stale: list[bytes] = []
    with store.meta.read() as txn:
        for k, v in txn.cursor(db=db):
            try:
                _, dev, ino = marshal.loads(bytes(v))[:3]
                st = os.lstat(bytes(k))
                if (st.st_dev, st.st_ino) == (dev, ino) and stat.S_ISDIR(st.st_mode):
                    continue
            except (OSError, ValueError, EOFError, TypeError):
                pass
            stale.append(bytes(k))
    if stale:

        def fn(txn: Txn) -> None:
            for k in stale:
                txn.delete(k, db=db)

        store.meta.write(fn)
    return len(stale)
