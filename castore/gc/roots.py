"""gc's roots and the reference graph it marks through.

Roots: every catalog name (tags), the history entries of names still in the
catalog (``keep_history`` or a retention policy prunes the older ones; the
history of a removed name goes with it), and the manifests of live leases
(lock held, not expired). A manifest references its blobs (``refs`` rows); a
whole-file digest stored as chunks only references its chunks (``chunkmap``).
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Callable, Iterable

from castore.gc.pages import Pages
from castore.gc.report import GcOptions
from castore.gc.retention import select
from castore.gc.spill import MarkSet
from castore.store.lock import is_held
from castore.store.meta import CHUNK_ROW, MetaDB, dkey

Roots = tuple[set[bytes], list[bytes], list[tuple[str, bool]]]


def mark(
    roots: Iterable[bytes], refs: Callable[[bytes], Iterable[bytes]], seen: set[bytes] | None = None
) -> set[bytes]:
    """Every key reachable from ``roots`` through ``refs`` (added to ``seen``)."""
    seen = set() if seen is None else seen
    stack = [r for r in roots if r not in seen]
    seen.update(stack)
    while stack:
        for child in refs(stack.pop()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def mark_to(
    roots: Iterable[bytes],
    refs: Callable[[bytes], Iterable[bytes]],
    out: MarkSet,
    tick: Callable[[], None] = lambda: None,
) -> None:
    """Every key reachable from ``roots`` through ``refs``, written to ``out`` (on disk).

    Only keys that reference others (manifests, files stored as chunks) are
    remembered in memory, to follow each once; leaves are written per
    reference and de-duplicated by ``out``. ``tick`` is called every 65,536 keys
    (``refs`` counts its own index reads: see castore.gc.pages).
    """
    followed: set[bytes] = set()
    stack = list(roots)
    n = 0
    while stack:
        n += 1
        if not n & 0xFFFF:
            tick()
        k = stack.pop()
        if k in followed:
            continue
        out.add(k)
        children = refs(k)
        if children:
            followed.add(k)
            stack.extend(children)


def split_refs(raw: bytes | None) -> list[bytes]:
    """The 32-byte digests of a ``refs`` row."""
    if not raw:
        return []
    return [raw[i : i + 32] for i in range(0, len(raw) - 31, 32)]


def refs_of(meta: MetaDB, txn: object, pages: Pages | None = None) -> Callable[[bytes], list[bytes]]:
    """What a key references in ``txn``: a manifest its blobs (``refs``); a whole-file digest stored
    as chunks only (a manifest without chunk lists names it) its chunks (``chunkmap``). Each lookup
    is counted in ``pages``."""
    t: object = txn
    refs_db, map_db = meta.db("refs"), meta.db("chunkmap")
    touched = pages.touched if pages is not None else lambda n=1: None

    def refs(k: bytes) -> list[bytes]:
        # A miss reads only the few B-tree pages of two small tables (``mark_to`` ticks every 65,536
        # keys for those); a hit reads its row's own pages (a manifest's refs row: an overflow page).
        raw = t.get(k, db=refs_db)  # type: ignore[attr-defined]
        if raw is not None:
            touched(1)
            return split_refs(bytes(raw))
        row = t.get(k, db=map_db)  # type: ignore[attr-defined]
        if not row:
            return []
        touched(1)
        return [bytes(row[i : i + 32]) for i in range(0, len(row), CHUNK_ROW.size)]

    return refs


def read_roots(meta: MetaDB, store_path: str, txn: object, opts: GcOptions, now: int) -> Roots:
    """(root manifest keys, history rows to delete, (lease id, alive) for every lease row) in ``txn``."""
    t: object = txn
    tags: dict[bytes, bytes] = {}
    for k, v in t.cursor(db=meta.db("tags")):  # type: ignore[attr-defined]
        try:
            tags[bytes(k)] = dkey(json.loads(v)["digest"])
        except (ValueError, KeyError, TypeError):
            continue  # a damaged row is fsck's business; it protects nothing
    roots = set(tags.values())
    prune = _history(meta, t, tags, opts, roots)
    leases: list[tuple[str, bool]] = []
    for k, v in t.cursor(db=meta.db("leases")):  # type: ignore[attr-defined]
        lid = bytes(k).decode(errors="replace")
        try:
            rec = json.loads(v)
            expiry = int(rec.get("expiry_ns", 0))
            manifests = [dkey(d) for d in rec.get("manifests", [])]
        except (ValueError, TypeError, AttributeError):
            expiry, manifests = 0, []
        alive = is_held(os.path.join(store_path, "leases", lid + ".lock"))
        if alive and expiry > now:
            roots.update(manifests)
        leases.append((lid, alive))
    return roots, prune, leases


def _history(meta: MetaDB, t: object, tags: dict[bytes, bytes], opts: GcOptions, roots: set[bytes]) -> list[bytes]:
    """Adds the kept history entries to ``roots``; returns the history rows to delete."""
    by_name: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for k, v in t.cursor(db=meta.db("history")):  # type: ignore[attr-defined]
        name = bytes(k)[:-9]  # name \0 time (8 bytes, may hold NULs)
        by_name.setdefault(name, []).append((bytes(k), bytes(v)))
    prune: list[bytes] = []
    keep_n = opts.keep_history
    for name, rows in by_name.items():
        if name not in tags:
            prune.extend(k for k, _ in rows)  # the name was removed: its versions go too
            continue
        rows.sort()  # time order (big-endian suffix)
        if opts.retention is not None and not opts.retention.empty():
            why = select([struct.unpack(">Q", k[-8:])[0] for k, _ in rows], opts.retention)
            prune.extend(k for (k, _), r in zip(rows, why, strict=True) if not r)
            roots.update(v[:32] for (_, v), r in zip(rows, why, strict=True) if r)
            continue
        cut = 0 if keep_n is None else max(len(rows) - keep_n, 0)
        prune.extend(k for k, _ in rows[:cut])
        roots.update(v[:32] for _, v in rows[cut:])
    return prune


def history_name(key: bytes) -> str:
    """``name@time`` of a history row key, for the report."""
    name, t = key[:-9], key[-8:]
    when = struct.unpack(">Q", t)[0] if len(key) > 9 else 0
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when // 10**9)) + f".{when % 10**9:09d}Z"
    return f"{name.decode(errors='replace')}@{stamp}"


__all__ = ["history_name", "mark", "mark_to", "read_roots", "refs_of", "split_refs"]
