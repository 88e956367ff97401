"""gc: free what no catalog name, lease or recent write references.

Roots: every catalog name (tags), the history entries of names still in the
catalog (``keep_history`` prunes the older ones; the history of a removed
name goes with it), the manifests of live leases (lock held, not expired),
every manifest committed while gc runs, and unnamed manifests younger than
the grace period (just ingested: their user will tag or check them out).
Mark follows manifests to file blobs, chunks and ADS blobs, and a whole-file
digest stored as chunks only to its chunks (the chunk map); the rest of the
index is garbage.

Phases (docs/gc.md):

1. snapshot, no store lock: mark from the roots of one read transaction,
   then merge each blob shard directory with the index to find garbage
   (indexed, unmarked) and orphan candidates (on disk, not indexed).
2. Locking: exclusive, in ONE LMDB write transaction (so it serialises with
   every lease and commit): re-read the roots, mark whatever appeared since
   the snapshot, drop survivors from the candidates, delete catalog rows
   (pruned history, dead leases) and index rows; commit.
3. unlink, in short batches each under the exclusive lock, re-checking the
   index first: an ingest that committed between batches and revived a
   digest keeps its file. A crash anywhere leaves only orphans.
4. no store lock: tmp dirs of dead leases, ``.put-*`` temps, hardlink-checkout
   objects no checkout uses (st_nlink == 1), stat-cache rows of gone blobs.

Two gc never run at once: STORE/gc.lock, LOCK_NB unless ``wait``.
"""

from __future__ import annotations

import errno
import json
import marshal
import os
import re
import stat
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import castore.apply.state as apply_state
from castore import staging
from castore.bulkmode import bulk
from castore.errors import Busy, IntegrityError, UnsafeInput, warn_mounts_kept
from castore.faults import crashpoint
from castore.gc.retention import Policy, select
from castore.store import Store, _remove_tree, signatures, unpack_chunks
from castore.store.lock import flocked, is_held
from castore.store.meta import BLOB_ROW, CHUNK_ROW, KIND_MANIFEST, dkey, dstr

DEFAULT_GRACE_NS = 3600 * 10**9
ROWLESS_LEASE_FLOOR_NS = 60 * 10**9  # a lock file with no row may be a lease being born
BATCH_SECONDS = 0.05  # longest hold of the store lock while unlinking
COMMIT_CHUNK = 20_000  # index rows deleted per hold of the store lock
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw]?)")


def parse_duration(text: str) -> int:
    """Nanoseconds of ``0``, ``90s``, ``15m``, ``2h``, ``7d``, ``1w`` (or ``1h30m``). Raises UnsafeInput."""
    t = text.strip().lower()
    pos, total = 0, 0
    while pos < len(t):
        m = _DURATION.match(t, pos)
        if m is None or m.end() == pos:
            break
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not t or pos != len(t) or total > 100 * 365 * 86400:
        raise UnsafeInput(f"invalid duration {text[:40]!r}: use e.g. 0, 90s, 15m, 2h, 7d")
    return total * 10**9


def mark(roots: Iterable[bytes], refs: Callable[[bytes], Iterable[bytes]],
         seen: set[bytes] | None = None) -> set[bytes]:
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


def split_refs(raw: bytes | None) -> list[bytes]:
    """The 32-byte digests of a ``refs`` row."""
    if not raw:
        return []
    return [raw[i:i + 32] for i in range(0, len(raw) - 31, 32)]


@dataclass
class Item:
    """One thing gc deletes (or would): kind, name (digest or path), bytes."""

    kind: str  # blob | manifest | orphan | index-row | history | lease | tmp | link | cache-row
    name: str
    size: int = 0


@dataclass
class GcOptions:
    grace_ns: int = DEFAULT_GRACE_NS
    dry_run: bool = False
    keep_history: int | None = None
    retention: Policy | None = None  # per-name history policy (castore/gc/retention.py); keep_history: its `last`
    wait: bool = False
    nice: int = 0  # lower the CPU priority of the unlocked phases by this much (the CLI uses 10)
    list_items: bool = False  # keep every Item in the report (dry runs always do)


@dataclass
class GcReport:
    dry_run: bool = False
    objects: int = 0       # files removed (blobs, manifests, orphans, temps, cache objects)
    bytes: int = 0
    rows: int = 0          # metadata rows removed
    kept_blobs: int = 0
    seconds: float = 0.0
    lock_seconds: float = 0.0  # longest single hold of the exclusive store lock
    counts: dict[str, int] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)

    def add(self, item: Item, keep: bool, *, is_file: bool = True) -> None:
        self.counts[item.kind] = self.counts.get(item.kind, 0) + 1
        if is_file:
            self.objects += 1
            self.bytes += item.size
        else:
            self.rows += 1
        if keep:
            self.items.append(item)

    def summary(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        return (f"gc: {verb} {self.objects} objects, {self.bytes} bytes ({_human(self.bytes)}) in "
                f"{self.seconds:.2f}s; kept {self.kept_blobs} blobs; longest store lock "
                f"{self.lock_seconds * 1000:.0f} ms" + (f" [{parts}]" if parts else ""))

    def as_json(self) -> dict[str, object]:
        return {"dry_run": self.dry_run, "objects": self.objects, "bytes": self.bytes, "rows": self.rows,
                "kept_blobs": self.kept_blobs, "seconds": round(self.seconds, 3),
                "lock_seconds": round(self.lock_seconds, 3), "counts": self.counts,
                "items": [{"kind": i.kind, "name": i.name, "size": i.size} for i in self.items]}


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _age_ns(path: str, now: int) -> int | None:
    """Nanoseconds since ``path`` was last written (None when absent).

    mtime, not ctime: our writers rename staged files into blobs/ and commit
    their rows within one hold of the store lock, so a file the index lacks
    while gc holds the lock exclusively is an orphan however it got there;
    the grace period only covers writers outside that protocol.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return now - st.st_mtime_ns


class _Collector:
    """One gc run over an open store."""

    def __init__(self, store: Store, opts: GcOptions) -> None:
        self.store, self.opts = store, opts
        self.meta = store.meta
        self.now = time.time_ns()
        self.report = GcReport(dry_run=opts.dry_run)
        self.keep_items = opts.dry_run or opts.list_items

    # ------------------------------------------------------------- roots

    def _roots(self, txn: object) -> tuple[set[bytes], list[bytes], list[tuple[str, bool]]]:
        """(root manifest keys, history rows to delete, (lease id, alive) for every lease row)."""
        t: object = txn
        tags: dict[bytes, bytes] = {}
        for k, v in t.cursor(db=self.meta.db("tags")):  # type: ignore[attr-defined]
            try:
                tags[bytes(k)] = dkey(json.loads(v)["digest"])
            except (ValueError, KeyError, TypeError):
                continue  # a damaged row is fsck's business; it protects nothing
        roots = set(tags.values())
        by_name: dict[bytes, list[tuple[bytes, bytes]]] = {}
        for k, v in t.cursor(db=self.meta.db("history")):  # type: ignore[attr-defined]
            name = bytes(k)[:-9]  # name \0 time (8 bytes, may hold NULs)
            by_name.setdefault(name, []).append((bytes(k), bytes(v)))
        prune: list[bytes] = []
        keep_n = self.opts.keep_history
        for name, rows in by_name.items():
            if name not in tags:
                prune.extend(k for k, _ in rows)  # the name was removed: its versions go too
                continue
            rows.sort()  # time order (big-endian suffix)
            if self.opts.retention is not None and not self.opts.retention.empty():
                why = select([struct.unpack(">Q", k[-8:])[0] for k, _ in rows], self.opts.retention)
                prune.extend(k for (k, _), r in zip(rows, why, strict=True) if not r)
                roots.update(v[:32] for (_, v), r in zip(rows, why, strict=True) if r)
                continue
            cut = 0 if keep_n is None else max(len(rows) - keep_n, 0)
            prune.extend(k for k, _ in rows[:cut])
            roots.update(v[:32] for _, v in rows[cut:])
        leases: list[tuple[str, bool]] = []
        for k, v in t.cursor(db=self.meta.db("leases")):  # type: ignore[attr-defined]
            lid = bytes(k).decode(errors="replace")
            try:
                rec = json.loads(v)
                expiry = int(rec.get("expiry_ns", 0))
                manifests = [dkey(d) for d in rec.get("manifests", [])]
            except (ValueError, TypeError, AttributeError):
                expiry, manifests = 0, []
            alive = is_held(os.path.join(self.store.path, "leases", lid + ".lock"))
            if alive and expiry > self.now:
                roots.update(manifests)
            leases.append((lid, alive))
        return roots, prune, leases

    def _refs_of(self, txn: object) -> Callable[[bytes], list[bytes]]:
        """What a key references: a manifest its blobs (``refs``); a whole-file digest stored as
        chunks only (a manifest without chunk lists names it) its chunks (``chunkmap``)."""
        t: object = txn
        refs_db, map_db = self.meta.db("refs"), self.meta.db("chunkmap")

        def refs(k: bytes) -> list[bytes]:
            raw = t.get(k, db=refs_db)  # type: ignore[attr-defined]
            if raw is not None:
                return split_refs(bytes(raw))
            row = t.get(k, db=map_db)  # type: ignore[attr-defined]
            return [bytes(row[i:i + 32]) for i in range(0, len(row), CHUNK_ROW.size)] if row else []
        return refs

    def _young(self, key: bytes) -> bool:
        """An unnamed manifest written (or re-ingested) within the grace period."""
        age = _age_ns(self.store.blob_path(dstr(key)), self.now)
        return age is not None and age < self.opts.grace_ns

    # -------------------------------------------------------------- phases

    def snapshot(self) -> tuple[set[bytes], set[bytes]]:
        """Phase 1a: (marked keys, manifest keys) from one read transaction."""
        with self.meta.read() as txn:
            roots, _, _ = self._roots(txn)
            refs_db = self.meta.db("refs")
            manifests = {bytes(k) for k in txn.cursor(db=refs_db).iternext(values=False)}
            roots.update(m for m in manifests - roots if self._young(m))
            # Every root is followed: a lease may name whole-file digests served by chunks.
            marked = mark(roots, self._refs_of(txn))
            marked.update(roots)
        return marked, manifests

    def scan(self, marked: set[bytes]) -> tuple[list[tuple[bytes, int, int]], list[tuple[bytes, int]]]:
        """Phase 1b, shard by shard (short read txns): (garbage: key, size, kind), (orphans: key, size).

        Garbage is indexed and unmarked; orphans are files the index does not
        hold, older than the grace period.
        """
        garbage: list[tuple[bytes, int, int]] = []
        orphans: list[tuple[bytes, int]] = []
        blobs_db = self.meta.db("blobs")
        kept = 0
        for b in range(256):
            prefix = bytes([b])
            indexed: set[bytes] = set()
            with self.meta.read() as txn:
                cur = txn.cursor(db=blobs_db)
                if cur.set_range(prefix):
                    for k, v in cur:
                        if k[:1] != prefix:
                            break
                        k = bytes(k)
                        indexed.add(k)
                        if k in marked:
                            kept += 1
                        else:
                            size, kind = BLOB_ROW.unpack(v)
                            garbage.append((k, size, kind))
            sdir = os.path.join(self.store.blob_root, prefix.hex())
            for n in _listdir(sdir):
                key = _hexkey(n)
                if key is None or key in indexed:
                    continue
                try:
                    st = os.lstat(os.path.join(sdir, n))
                except FileNotFoundError:
                    continue
                if self.now - st.st_mtime_ns >= self.opts.grace_ns:
                    orphans.append((key, st.st_size))
        self.report.kept_blobs = kept
        return garbage, orphans

    def commit(self, marked: set[bytes], manifests: set[bytes], garbage: list[tuple[bytes, int, int]],
               orphans: list[tuple[bytes, int]], *,
               first: bool = True) -> tuple[list[tuple[bytes, int, int]], list[str]]:
        """Phase 2 (exclusive lock held): final roots and deletes in one write txn. Returns what to unlink.

        Called once per chunk of ``garbage``, each under its own hold of the
        lock; every call re-reads the roots, so what an ingest committed (or a
        lease named) between two chunks is marked before anything is deleted.
        The ``first`` call also deletes catalog rows and takes the orphans.
        """
        refs_db, blobs_db = self.meta.db("refs"), self.meta.db("blobs")
        out: dict[str, object] = {}

        def fn(txn: object) -> None:
            t: object = txn
            roots, prune, leases = self._roots(txn)
            now_manifests = {bytes(k) for k in t.cursor(db=refs_db).iternext(values=False)}  # type: ignore
            extra = (roots | (now_manifests - manifests)) - marked
            young = {m for m, _, kind in garbage if kind == KIND_MANIFEST and m not in extra and self._young(m)}
            mark(extra | young, self._refs_of(t), marked)
            if first:
                crashpoint("gc-after-mark")
            doomed = [(k, s, kind) for k, s, kind in garbage if k not in marked]
            dead = [lid for lid, alive in leases if not alive] if first else []
            expired = self._expired(t, leases) if first else []
            if not first:
                prune = []
            out["doomed"], out["dead"], out["prune"], out["leases"] = doomed, dead, prune, dead + expired
            if self.opts.dry_run:
                return
            for k in prune:
                t.delete(k, db=self.meta.db("history"))  # type: ignore[attr-defined]
            for lid in dead + expired:
                t.delete(lid.encode(), db=self.meta.db("leases"))  # type: ignore[attr-defined]
            for k, _, _ in doomed:
                t.delete(k, db=blobs_db)  # type: ignore[attr-defined]
                if k in now_manifests:
                    t.delete(k, db=refs_db)  # type: ignore[attr-defined]
            out["signatures"] = signatures.delete_for(self.store, t, [k for k, _, kind in doomed
                                                                       if kind == KIND_MANIFEST])
            # "v" rows (verified-blob stat records) are a cache: dropped after the lock (phase 4).

        if self.opts.dry_run:
            with self.meta.read() as txn:
                fn(txn)
        else:
            self.meta.write(fn)
            if first:
                crashpoint("gc-after-index-commit")
        for k in out["prune"]:  # type: ignore[attr-defined]
            self.report.add(Item("history", _history_name(k)), self.keep_items, is_file=False)
        for lid in out["leases"]:  # type: ignore[attr-defined]
            self.report.add(Item("lease", lid), self.keep_items, is_file=False)
        self.report.rows += int(out.get("signatures", 0))  # type: ignore[call-overload]
        doomed: list[tuple[bytes, int, int]] = out["doomed"]  # type: ignore[assignment]
        self.report.kept_blobs += len(garbage) - len(doomed)
        files = doomed + [(k, s, -1) for k, s in orphans if k not in marked]
        return files, out["dead"]  # type: ignore[return-value]

    def _expired(self, txn: object, leases: list[tuple[str, bool]]) -> list[str]:
        out = []
        for lid, alive in leases:
            if not alive:
                continue
            raw = txn.get(lid.encode(), db=self.meta.db("leases"))  # type: ignore[attr-defined]
            try:
                if int(json.loads(raw).get("expiry_ns", 0)) <= self.now:
                    out.append(lid)  # the row no longer protects; the owner keeps its files
            except (ValueError, TypeError, AttributeError):
                out.append(lid)
        return out

    def sweep(self, files: list[tuple[bytes, int, int]], pos: int, deadline: float) -> int:
        """Phase 3, one hold of the exclusive lock: unlink from ``pos`` until ``deadline``; the new pos.

        Each batch re-checks the index first: an ingest that committed between
        two holds and revived a digest keeps its file.
        """
        blobs_db = self.meta.db("blobs")
        half = len(files) // 2
        while pos < len(files):
            batch = files[pos:pos + 256]
            live: set[bytes] = set()
            if not self.opts.dry_run:  # a dry run deleted no rows: nothing to re-check
                with self.meta.read() as txn:
                    live = {k for k, _, _ in batch if txn.get(k, db=blobs_db) is not None}
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

    # ------------------------------------------------------- phase 4: caches

    def leases_and_temps(self, dead: list[str]) -> None:
        """Lock files and tmp dirs of dead leases; stray ``.put-*`` temps older than the grace period."""
        lease_dir, tmp_dir = os.path.join(self.store.path, "leases"), os.path.join(self.store.path, "tmp")
        dead_set = set(dead)
        floor = max(self.opts.grace_ns, ROWLESS_LEASE_FLOOR_NS)
        # Staging directories of this store's checkouts that were killed (their owners' locks are free).
        for path in staging.sweep_registered(self.store.path, self.opts.dry_run):
            self.report.add(Item("tmp", path), self.keep_items)
        for n in _listdir(lease_dir):
            lid, dot, ext = n.rpartition(".")
            path = os.path.join(lease_dir, n)
            if not dot or ext != "lock":
                continue
            if lid in dead_set or ((_age_ns(path, self.now) or 0) >= floor and not self._has_row(lid)
                                   and not is_held(path)):
                self._remove(Item("lease", path), path, tree=False)
        for n in _listdir(tmp_dir):
            path = os.path.join(tmp_dir, n)
            age = _age_ns(path, self.now) or 0
            if n.startswith(".put-"):
                if age >= self.opts.grace_ns:
                    self._remove(Item("tmp", path, _size(path)), path, tree=False)
                continue
            lock = os.path.join(lease_dir, n + ".lock")
            if is_held(lock):
                continue
            if n in dead_set or (age >= floor and not self._has_row(n)) or (
                    age >= self.opts.grace_ns and not os.path.exists(lock)):
                self._remove(Item("tmp", path, _tree_size(path)), path, tree=True)

    def _has_row(self, lid: str) -> bool:
        with self.meta.read() as txn:
            return txn.get(lid.encode(), db=self.meta.db("leases")) is not None

    def _remove(self, item: Item, path: str, *, tree: bool) -> None:
        if not self.opts.dry_run:
            try:
                if tree and stat.S_ISDIR(os.lstat(path).st_mode):
                    warn_mounts_kept(_remove_tree(path))
                else:
                    os.unlink(path)
            except FileNotFoundError:
                return
        self.report.add(item, self.keep_items)

    def link_objects(self) -> None:
        """Hardlink-checkout objects no checkout uses (st_nlink == 1), their rows, old ``.tmp-*``."""
        root = os.path.join(self.store.path, "links")
        links_db = self.meta.db("links")
        for shard in sorted(_listdir(root)):
            sdir = os.path.join(root, shard)
            drop: list[tuple[str, int]] = []
            for n in _listdir(sdir):
                path = os.path.join(sdir, n)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if n.startswith(".tmp-"):
                    if self.now - st.st_mtime_ns >= self.opts.grace_ns:
                        self._remove(Item("link", path, st.st_size), path, tree=False)
                elif st.st_nlink == 1 and _hexkey(n) is not None:
                    drop.append((n, st.st_size))
            if not drop:
                continue
            if not self.opts.dry_run:
                self.meta.write(lambda t, d=drop: [t.delete(b"o" + bytes.fromhex(n), db=links_db)  # type: ignore
                                                   for n, _ in d])
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
            stale = [bytes(k) for k in txn.cursor(db=links_db).iternext(values=False)
                     if k[:1] == b"o" and not os.path.exists(os.path.join(root, k[1:2].hex(), k[1:].hex()))]
        self._delete_rows("links", stale, "cache-row")

    def verified_rows(self, doomed: list[bytes]) -> None:
        """Verified-blob records of deleted blobs (a cache; short txns, no store lock)."""
        if self.opts.dry_run or not doomed:
            return
        db, blobs_db = self.meta.db("links"), self.meta.db("blobs")
        for i in range(0, len(doomed), 5000):
            part = doomed[i:i + 5000]

            def fn(t: object, p: list[bytes] = part) -> None:
                for k in p:
                    if t.get(k, db=blobs_db) is None:  # type: ignore[attr-defined]
                        t.delete(b"v" + k, db=db)  # type: ignore[attr-defined]
            self.meta.write(fn)

    def stat_cache(self) -> None:
        """Stat-cache rows that name content the index no longer holds (ingest would re-read it anyway)."""
        cache_db, blobs_db = self.meta.db("statcache"), self.meta.db("blobs")
        stale: list[bytes] = []
        with self.meta.read() as txn:
            for k, v in txn.cursor(db=cache_db):
                try:
                    _, _, _, digest, chunks, _, _ = marshal.loads(v)
                    need = [c[0] for c in chunks] if chunks else [digest]
                    if all(txn.get(dkey(d), db=blobs_db) is not None for d in need):
                        continue
                except (ValueError, EOFError, TypeError, IndexError):
                    pass
                stale.append(bytes(k))
        self._delete_rows("statcache", stale, "cache-row")

    def chunk_map(self) -> None:
        """Chunk-map rows that can no longer serve their file (a chunk left the index). Checked
        again in the deleting transaction: an ingest may have stored those chunks meanwhile."""
        map_db, blobs_db = self.meta.db("chunkmap"), self.meta.db("blobs")

        def stale_row(t: object, k: bytes) -> bool:
            row = t.get(k, db=map_db)  # type: ignore[attr-defined]
            if row is None:
                return False
            if not unpack_chunks(bytes(row)):
                return True
            return any(t.get(bytes(row[i:i + 32]), db=blobs_db) is None  # type: ignore[attr-defined]
                       for i in range(0, len(row), CHUNK_ROW.size))

        with self.meta.read() as txn:
            stale = [bytes(k) for k in txn.cursor(db=map_db).iternext(values=False) if stale_row(txn, bytes(k))]
        for k in stale:
            self.report.add(Item("cache-row", f"chunkmap:{k.hex()}"), self.keep_items, is_file=False)
        if self.opts.dry_run:
            return
        for i in range(0, len(stale), 5000):
            part = stale[i:i + 5000]
            self.meta.write(lambda t, p=part: [t.delete(k, db=map_db) for k in p if stale_row(t, k)])  # type: ignore

    def _delete_rows(self, dbname: str, keys: list[bytes], kind: str) -> None:
        for k in keys:
            self.report.add(Item(kind, f"{dbname}:{k.hex()}"), self.keep_items, is_file=False)
        if self.opts.dry_run:
            return
        db = self.meta.db(dbname)
        for i in range(0, len(keys), 5000):  # short write txns: ingest commits are not held up
            part = keys[i:i + 5000]
            self.meta.write(lambda t, p=part: [t.delete(k, db=db) for k in p])  # type: ignore[misc]


def _hexkey(name: str) -> bytes | None:
    try:
        return bytes.fromhex(name) if len(name) == 64 else None
    except ValueError:
        return None


def _history_name(key: bytes) -> str:
    name, t = key[:-9], key[-8:]
    when = struct.unpack(">Q", t)[0] if len(key) > 9 else 0
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when // 10**9)) + f".{when % 10**9:09d}Z"
    return f"{name.decode(errors='replace')}@{stamp}"


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        return []


def _size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _tree_size(path: str) -> int:
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    else:
                        total += e.stat(follow_symlinks=False).st_size
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                raise
    return total


class _Nice:
    """Lower CPU priority for the unlocked phases, normal priority while holding the store lock.

    gc is background work, but a starved gc holding the store lock would make
    ingests wait (priority inversion). Raising the priority back needs root;
    other users stay niced for the whole run (as ``nice continuity gc`` would).
    """

    def __init__(self, nice: int) -> None:
        self.nice = nice
        self.base = os.getpriority(os.PRIO_PROCESS, 0)
        self.can_restore = os.geteuid() == 0

    def _set(self, value: int) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, min(value, 19))
        except OSError:
            pass

    def __enter__(self) -> _Nice:
        if self.nice:
            self._set(self.base + self.nice)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.nice and self.can_restore:
            self._set(self.base)

    @contextmanager
    def normal(self) -> Iterator[None]:
        if self.nice and self.can_restore:
            self._set(self.base)
        try:
            yield
        finally:
            if self.nice and self.can_restore:
                self._set(self.base + self.nice)


@bulk
def collect(store: Store, opts: GcOptions | None = None) -> GcReport:
    """Run gc on ``store``. Raises Busy when another gc runs (and not ``opts.wait``).

    Locking: STORE/gc.lock exclusive for the whole run; the store lock
    exclusive for the final mark + index commit and each short unlink batch.
    """
    opts = opts or GcOptions()
    start = time.monotonic()
    gc_lock = os.path.join(store.path, "gc.lock")
    try:
        with flocked(gc_lock, exclusive=True, wait=opts.wait, what="gc"), _Nice(opts.nice) as prio:
            doubt = store.index_doubt()
            if doubt:
                raise IntegrityError(f"gc refused: {doubt}")
            c = _Collector(store, opts)
            store.meta.env.reader_check()
            marked, manifests = c.snapshot()
            garbage, orphans = c.scan(marked)
            files: list[tuple[bytes, int, int]] = []
            dead: list[str] = []
            pos, first = 0, True
            if not opts.dry_run:
                store.gc_deleting(True)  # ingests that publish blobs meanwhile re-check them
            while first or pos < len(garbage):  # index deletes, a chunk per hold of the store lock
                if not first:
                    time.sleep(0.002)  # let waiting ingest commits in between two holds
                with prio.normal(), store.exclusive_lock():  # type: ignore[attr-defined]
                    t0 = time.monotonic()
                    chunk = garbage[pos:pos + COMMIT_CHUNK]
                    got, d = c.commit(marked, manifests, chunk, orphans if first else [], first=first)
                    c.report.lock_seconds = max(c.report.lock_seconds, time.monotonic() - t0)
                files.extend(got)
                dead = d if first else dead
                pos, first = pos + len(chunk), False
            pos = 0
            while pos < len(files):  # unlinks, in short holds
                time.sleep(0.002)
                with prio.normal(), store.exclusive_lock():  # type: ignore[attr-defined]
                    t1 = time.monotonic()
                    pos = c.sweep(files, pos, t1 + BATCH_SECONDS)
                    c.report.lock_seconds = max(c.report.lock_seconds, time.monotonic() - t1)
            if not opts.dry_run:
                store.gc_deleting(False)
            del marked, manifests, garbage, orphans
            c.verified_rows([k for k, _, kind in files if kind >= 0])
            del files
            c.leases_and_temps(dead)
            if not opts.dry_run:
                c.report.rows += apply_state.prune(store)  # records of applied ROOTs that are gone
            c.link_objects()
            c.stat_cache()
            c.chunk_map()
    except Busy:
        raise Busy(f"another gc is running on {store.path} (lock {gc_lock}); use --wait to wait for it") from None
    c.report.seconds = time.monotonic() - start
    return c.report


__all__ = ["GcOptions", "GcReport", "Item", "collect", "mark", "parse_duration"]
