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

import json
import os
import stat
import struct
import time
from collections.abc import Callable, Iterable

from castore import fs, progress
from castore.bulkmode import bulk
from castore.errors import Busy, IntegrityError, warn_mounts_kept
from castore.faults import crashpoint
from castore.fs import publish
from castore.fs.tree import remove_tree
from castore.gc.caches import CacheSweeps, hexkey
from castore.gc.files import age_ns, size_of, tree_size
from castore.gc.nice import Nice
from castore.gc.report import GcOptions, GcReport, Item, parse_duration
from castore.gc.retention import select
from castore.gc.spill import MarkSet, Records, Scratch
from castore.store import Store, apply_records, signatures
from castore.store.lock import flocked, is_held
from castore.store.meta import BLOB_ROW, CHUNK_ROW, KIND_MANIFEST, Txn, dkey, dstr

ROWLESS_LEASE_FLOOR_NS = 60 * 10**9  # a lock file with no row may be a lease being born
BATCH_SECONDS = 0.05  # longest hold of the store lock while unlinking
COMMIT_CHUNK = 5_000  # index rows deleted per hold of the store lock (and per write txn: its dirty pages)


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
    reference and de-duplicated by ``out``. ``tick`` is called every 65,536 keys.
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


class _Collector(CacheSweeps):
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
            return [bytes(row[i : i + 32]) for i in range(0, len(row), CHUNK_ROW.size)] if row else []

        return refs

    def _young(self, key: bytes) -> bool:
        """An unnamed manifest written (or re-ingested) within the grace period."""
        age = age_ns(self.store.blob_path(dstr(key)), self.now)
        return age is not None and age < self.opts.grace_ns

    # -------------------------------------------------------------- phases

    def snapshot(self, sc: Scratch) -> set[bytes]:
        """Phase 1a: mark from one read transaction into ``sc`` (on disk); the root keys.

        The manifest keys of the snapshot go to ``sc.manifests`` in index order.
        """
        with self.meta.read() as txn:
            roots, _, _ = self._roots(txn)
            for k in txn.cursor(db=self.meta.db("refs")).iternext(values=False):
                k = bytes(k)
                sc.manifests.add(k)
                if k not in roots and self._young(k):
                    roots.add(k)
            # Every root is followed: a lease may name whole-file digests served by chunks.
            mark_to(roots, self._refs_of(txn), sc.marked, self.meta.drop_mapped_pages)
        return roots

    def scan(self, sc: Scratch) -> None:
        """Phase 1b, shard by shard (short read txns): garbage (indexed, unmarked: key, size, kind) to
        ``sc.garbage``, orphans (files the index does not hold, older than the grace period) to ``sc.orphans``.

        Only one shard's marks are in memory at a time.
        """
        blobs_db = self.meta.db("blobs")
        kept = 0
        for b in range(256):
            prefix = bytes([b])
            marked = sc.marked.shard(b)
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
                            sc.garbage.add(k, size, kind)
            if b % 16 == 15:
                self.meta.drop_mapped_pages()
            sdir = os.path.join(self.store.blob_root, prefix.hex())
            for n in fs.listdir(sdir):
                key = hexkey(n)
                if key is None or key in indexed or key in marked:
                    continue
                try:
                    st = os.lstat(os.path.join(sdir, n))
                except FileNotFoundError:
                    continue
                if self.now - st.st_mtime_ns >= self.opts.grace_ns:
                    sc.orphans.add(key, st.st_size, -1)
        self.report.kept_blobs = kept

    def commit(
        self,
        sc: Scratch,
        snap_roots: set[bytes],
        late: set[bytes],
        garbage: list[tuple[bytes, int, int]],
        *,
        first: bool = True,
    ) -> list[str]:
        """Phase 2 (exclusive lock held): final roots and deletes in one write txn; what to unlink
        goes to ``sc.unlink``. Returns the dead leases (first call).

        Called once per chunk of ``garbage``, each under its own hold of the
        lock; every call re-reads the roots, so what an ingest committed (or a
        lease named) between two chunks is marked (into ``late``, in memory:
        only what appeared since the snapshot) before anything is deleted.
        The ``first`` call also deletes catalog rows and takes the orphans.
        """
        refs_db, blobs_db = self.meta.db("refs"), self.meta.db("blobs")
        out: dict[str, object] = {}

        def fn(txn: Txn) -> None:
            t: object = txn
            roots, prune, leases = self._roots(txn)
            new = sc.manifests.missing(bytes(k) for k in t.cursor(db=refs_db).iternext(values=False))  # type: ignore
            extra = (roots - snap_roots) | set(new)
            young = {m for m, _, kind in garbage if kind == KIND_MANIFEST and m not in extra and self._young(m)}
            mark(extra | young, self._refs_of(t), late)
            if first:
                crashpoint("gc-after-mark")
            doomed = [(k, s, kind) for k, s, kind in garbage if k not in late]
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
                t.delete(k, db=refs_db)  # type: ignore[attr-defined]  # a manifest's (absent otherwise)
            out["signatures"] = signatures.delete_for(
                self.store, txn, [k for k, _, kind in doomed if kind == KIND_MANIFEST]
            )
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
        for rec in doomed:
            sc.unlink.add(*rec)
        if first:
            for chunk in sc.orphans.chunks(COMMIT_CHUNK):
                for k, s, _ in chunk:
                    if k not in late:
                        sc.unlink.add(k, s, -1)
        return out["dead"]  # type: ignore[return-value]

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
        for path in publish.sweep_registered(self.store.path, self.opts.dry_run):
            self.report.add(Item("tmp", path), self.keep_items)
        for n in fs.listdir(lease_dir):
            lid, dot, ext = n.rpartition(".")
            path = os.path.join(lease_dir, n)
            if not dot or ext != "lock":
                continue
            if lid in dead_set or (
                (age_ns(path, self.now) or 0) >= floor and not self._has_row(lid) and not is_held(path)
            ):
                self._remove(Item("lease", path), path, tree=False)
        for n in fs.listdir(tmp_dir):
            path = os.path.join(tmp_dir, n)
            age = age_ns(path, self.now) or 0
            if n.startswith(".put-"):
                if age >= self.opts.grace_ns:
                    self._remove(Item("tmp", path, size_of(path)), path, tree=False)
                continue
            lock = os.path.join(lease_dir, n + ".lock")
            if is_held(lock):
                continue
            if (
                n in dead_set
                or (age >= floor and not self._has_row(n))
                or (age >= self.opts.grace_ns and not os.path.exists(lock))
            ):
                self._remove(Item("tmp", path, tree_size(path)), path, tree=True)

    def _has_row(self, lid: str) -> bool:
        with self.meta.read() as txn:
            return txn.get(lid.encode(), db=self.meta.db("leases")) is not None

    def _remove(self, item: Item, path: str, *, tree: bool) -> None:
        if not self.opts.dry_run:
            try:
                if tree and stat.S_ISDIR(os.lstat(path).st_mode):
                    warn_mounts_kept(remove_tree(path))
                else:
                    os.unlink(path)
            except FileNotFoundError:
                return
        self.report.add(item, self.keep_items)


def _history_name(key: bytes) -> str:
    name, t = key[:-9], key[-8:]
    when = struct.unpack(">Q", t)[0] if len(key) > 9 else 0
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when // 10**9)) + f".{when % 10**9:09d}Z"
    return f"{name.decode(errors='replace')}@{stamp}"


def _mark_and_delete(c: _Collector, store: Store, sc: Scratch, prio: Nice) -> list[str]:
    """Phases 1-3 with the working sets in ``sc``; the dead leases."""
    opts = c.opts
    snap_roots = c.snapshot(sc)
    c.scan(sc)
    late: set[bytes] = set()  # marked under the lock: what appeared since the snapshot
    dead: list[str] = []
    pos, first = 0, True
    if not opts.dry_run:
        store.gc_deleting(True)  # ingests that publish blobs meanwhile re-check them
    while first or pos < len(sc.garbage):  # index deletes, a chunk per hold of the store lock
        if not first:
            time.sleep(0.002)  # let waiting ingest commits in between two holds
        chunk = sc.garbage.read(pos, COMMIT_CHUNK)
        with prio.normal(), store.exclusive_lock():
            t0 = time.monotonic()
            d = c.commit(sc, snap_roots, late, chunk, first=first)
            c.report.lock_seconds = max(c.report.lock_seconds, time.monotonic() - t0)
        store.meta.drop_mapped_pages()  # what the commit's walk of the roots and the index touched
        dead = d if first else dead
        pos, first = pos + len(chunk), False
    pos, holds = 0, 0
    with progress.task("gc", total=len(sc.unlink), unit="files") as bar:
        while pos < len(sc.unlink):  # unlinks, in short holds
            time.sleep(0.002)
            holds += 1
            with prio.normal(), store.exclusive_lock():
                t1 = time.monotonic()
                new = c.sweep(sc.unlink, pos, t1 + BATCH_SECONDS)
                c.report.lock_seconds = max(c.report.lock_seconds, time.monotonic() - t1)
            bar.advance(new - pos)
            pos = new
            if holds % 16 == 0:
                store.meta.drop_mapped_pages()
    if not opts.dry_run:
        store.gc_deleting(False)
    for chunk in sc.unlink.chunks(5000):
        c.verified_rows([k for k, _, kind in chunk if kind >= 0])
        store.meta.drop_mapped_pages()
    return dead


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
        with flocked(gc_lock, exclusive=True, wait=opts.wait, what="gc"), Nice(opts.nice) as prio:
            doubt = store.index_doubt()
            if doubt:
                raise IntegrityError(f"gc refused: {doubt}")
            c = _Collector(store, opts)
            store.meta.env.reader_check()
            sc = Scratch(os.path.join(store.path, "tmp"))
            try:
                dead = _mark_and_delete(c, store, sc, prio)
            finally:
                sc.close()
            c.leases_and_temps(dead)
            if not opts.dry_run:
                c.report.rows += apply_records.prune(store)  # records of applied ROOTs that are gone
            c.link_objects()
            c.stat_cache()
            c.chunk_map()
    except Busy:
        raise Busy(f"another gc is running on {store.path} (lock {gc_lock}); use --wait to wait for it") from None
    c.report.seconds = time.monotonic() - start
    return c.report


__all__ = ["GcOptions", "GcReport", "Item", "collect", "mark", "parse_duration"]
