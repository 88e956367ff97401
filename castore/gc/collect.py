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
2. Locking: exclusive, in LMDB write transactions of 5,000 index rows each (so
   each serialises with every lease and commit): re-read the roots, mark
   whatever appeared since the snapshot, drop survivors from the candidates,
   delete catalog rows (pruned history, dead leases; first one) and index
   rows; commit.
3. unlink, in short batches each under the exclusive lock, re-checking the
   index first: an ingest that committed between batches and revived a
   digest keeps its file. A crash anywhere leaves only orphans.
4. no store lock: tmp dirs of dead leases, ``.put-*`` temps, hardlink-checkout
   objects no checkout uses (st_nlink == 1), stat-cache rows of gone blobs.

Two gc never run at once: STORE/gc.lock, LOCK_NB unless ``wait``.

Modules: roots (roots and marking), spill (working sets on disk), pages (the
mapped index kept out of the resident set), sweep (phase 3), temps and caches
(phase 4), report, retention.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from castore import progress
from castore.bulkmode import bulk
from castore.errors import Busy, IntegrityError
from castore.faults import crashpoint
from castore.gc.caches import CacheSweeps
from castore.gc.files import age_ns, shard_inodes
from castore.gc.nice import Nice
from castore.gc.pages import Pages
from castore.gc.report import GcOptions, GcReport, Item, parse_duration
from castore.gc.rootpin import RootPin
from castore.gc.roots import Roots, history_name, mark, mark_to, read_roots, refs_of, split_refs
from castore.gc.spill import Scratch
from castore.gc.sweep import Unlinks
from castore.gc.temps import TempSweeps
from castore.gc.timing import PhaseTimes
from castore.store import Store, apply_records, signatures
from castore.store.lock import flocked
from castore.store.meta import BLOB_ROW, KIND_MANIFEST, Txn, dstr

BATCH_SECONDS = 0.05  # longest hold of the store lock while unlinking
COMMIT_CHUNK = 5_000  # index rows deleted per hold of the store lock (and per write txn: its dirty pages)


@dataclass
class _Outcome:
    """What one commit decided (filled inside its transaction, used after it)."""

    roots: set[bytes] = field(default_factory=set)
    id: int = 0  # the write transaction's id (RootPin)
    refs_left: int = 0
    doomed: list[tuple[bytes, int, int]] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    prune: list[bytes] = field(default_factory=list)
    leases: list[str] = field(default_factory=list)
    signatures: int = 0


class _Collector(CacheSweeps, TempSweeps, Unlinks):
    """One gc run over an open store."""

    def __init__(self, store: Store, opts: GcOptions) -> None:
        self.store, self.opts = store, opts
        self.meta = store.meta
        self.now = time.time_ns()
        self.report = GcReport(dry_run=opts.dry_run)
        self.keep_items = opts.dry_run or opts.list_items
        self.pages = Pages(self.meta)  # keeps the mapped index out of the resident set
        self.refs_left = -1  # refs rows the last commit left (the snapshot's count before the first)
        self.dry_gone: set[bytes] = set()  # a dry run's doomed index rows (it lists them all anyway)
        self.times = PhaseTimes()
        self.pin = RootPin(self.meta)  # the roots of the last hold, while the catalog does not change
        self.inodes: dict[bytes, int] = {}  # key -> inode number of the garbage chunk being committed

    # ------------------------------------------------------------- roots

    def _roots(self, txn: object) -> Roots:
        """(root manifest keys, history rows to delete, (lease id, alive) for every lease row)."""
        return read_roots(self.meta, self.store.path, txn, self.opts, self.now)

    def _refs_of(self, txn: object) -> Callable[[bytes], list[bytes]]:
        return refs_of(self.meta, txn, self.pages)

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
            for k in self.pages.each(txn.cursor(db=self.meta.db("refs")).iternext(values=False)):
                k = bytes(k)
                sc.manifests.add(k)
                if k not in roots and self._young(k):
                    roots.add(k)
            self.refs_left = sc.manifests.n
            # Every root is followed: a lease may name whole-file digests served by chunks.
            mark_to(roots, self._refs_of(txn), sc.marked, self.pages.drop)
        return roots

    def scan(self, sc: Scratch) -> None:
        """Phase 1b, shard by shard (short read txns): garbage (indexed, unmarked: key, size, kind) to
        ``sc.garbage``, orphans (files the index does not hold, older than the grace period) to ``sc.orphans``.

        Only one shard's marks are in memory at a time. The shard is listed first: the listing gives
        each file's inode number (``getdents``, no stat), kept with its record so that phase 3 can
        unlink in inode order (``_mark_and_delete``). A name listed and then found in the index is
        no orphan, as before (the index is read after the listing: what it holds then counts).
        """
        blobs_db = self.meta.db("blobs")
        kept = 0
        for b in range(256):
            prefix = bytes([b])
            marked = sc.marked.shard(b)
            sdir = os.path.join(self.store.blob_root, prefix.hex())
            on_disk = shard_inodes(sdir)  # key -> inode of every blob file of the shard
            rows = 0
            with self.meta.read() as txn:
                cur = txn.cursor(db=blobs_db)
                if cur.set_range(prefix):
                    for k, v in cur:
                        if k[:1] != prefix:
                            break
                        rows += 1
                        k = bytes(k)
                        ino = on_disk.pop(k, 0)  # what stays in on_disk is not indexed
                        if k in marked:
                            kept += 1
                        else:
                            size, kind = BLOB_ROW.unpack(v)
                            sc.garbage.add(k, size, kind, ino)
            # A shard's rows are ~1/256 of the index (contiguous pages): dropped once EVERY rows were read,
            # not after every shard (a drop reads /proc/self/maps: 256 of them were 0.14 s of a small gc).
            self.pages.touched(rows)
            for key, ino in on_disk.items():
                if key in marked:
                    continue
                n = key.hex()
                try:
                    st = os.lstat(os.path.join(sdir, n))
                except FileNotFoundError:
                    continue
                if self.now - st.st_mtime_ns >= self.opts.grace_ns:
                    sc.orphans.add(key, st.st_size, -1, ino)
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
        out = _Outcome()

        def fn(txn: Txn) -> None:
            with self.times.phase("commit-roots"):
                kept = None if first or self.opts.dry_run else self.pin.take(txn)
                roots, prune, leases = (kept, [], []) if kept is not None else self._roots(txn)
            out.roots, out.id = roots, txn.id()
            new: list[bytes] = []
            # Only gc (under STORE/gc.lock) removes refs rows, so an unchanged count since our last
            # commit means no manifest was added: skip the walk of every manifest key.
            out.refs_left = txn.stat(refs_db)["entries"]
            if out.refs_left != self.refs_left:
                keys = self.pages.each(txn.cursor(db=refs_db).iternext(values=False))
                new = list(sc.manifests.missing(bytes(k) for k in keys))
            extra = (roots - snap_roots if kept is None else set()) | set(new)  # kept: marked at the last hold
            young = {m for m, _, kind in garbage if kind == KIND_MANIFEST and m not in extra and self._young(m)}
            mark(extra | young, self._refs_of(txn), late)
            if first:
                crashpoint("gc-after-mark")
            doomed = [(k, s, kind) for k, s, kind in garbage if k not in late]
            dead = [lid for lid, alive in leases if not alive] if first else []
            expired = self._expired(txn, leases) if first else []
            if not first:
                prune = []
            out.doomed, out.dead, out.prune, out.leases = doomed, dead, prune, dead + expired
            if self.opts.dry_run:
                return
            for k in prune:
                txn.delete(k, db=self.meta.db("history"))
            for lid in dead + expired:
                txn.delete(lid.encode(), db=self.meta.db("leases"))
            summary_db = self.meta.db("summary")
            for k, _, kind in doomed:
                txn.delete(k, db=blobs_db)
                txn.delete(k, db=refs_db)  # a manifest's (absent otherwise)
                if kind == KIND_MANIFEST:
                    txn.delete(k, db=summary_db)
                self.pages.touched(2)
            out.signatures = signatures.delete_for(
                self.store, txn, [k for k, _, kind in doomed if kind == KIND_MANIFEST]
            )
            out.refs_left = txn.stat(refs_db)["entries"]
            # "v" rows (verified-blob stat records) are a cache: dropped after the lock (phase 4).

        if self.opts.dry_run:
            with self.meta.read() as txn:
                fn(txn)
        else:
            self.meta.write(fn)
            if first:
                crashpoint("gc-after-index-commit")
            self.pin.pin(out.roots, out.id)
        self.refs_left = out.refs_left
        for k in out.prune:
            self.report.add(Item("history", history_name(k)), self.keep_items, is_file=False)
        for lid in out.leases:
            self.report.add(Item("lease", lid), self.keep_items, is_file=False)
        self.report.rows += out.signatures
        doomed = out.doomed
        self.report.kept_blobs += len(garbage) - len(doomed)
        for rec in sorted(doomed, key=lambda r: self.inodes.get(r[0], 0)):  # inode order: see _mark_and_delete
            sc.unlink.add(*rec)
        if self.opts.dry_run:  # the rows a real run would have deleted: the cache sweeps see them gone
            self.dry_gone.update(k for k, _, _ in doomed)
        if first:
            for chunk4 in sc.orphans.chunks_ino(COMMIT_CHUNK):
                for k, s, _, _ in sorted(chunk4, key=lambda r: r[3]):
                    if k not in late:
                        sc.unlink.add(k, s, -1)
        return out.dead

    def _expired(self, txn: Txn, leases: list[tuple[str, bool]]) -> list[str]:
        out = []
        for lid, alive in leases:
            if not alive:
                continue
            raw = txn.get(lid.encode(), db=self.meta.db("leases"))
            try:
                if raw is None or int(json.loads(raw).get("expiry_ns", 0)) <= self.now:
                    out.append(lid)  # the row no longer protects; the owner keeps its files
            except (ValueError, TypeError, AttributeError):
                out.append(lid)
        return out


def _mark_and_delete(c: _Collector, store: Store, sc: Scratch, prio: Nice) -> list[str]:
    """Phases 1-3 with the working sets in ``sc``; the dead leases."""
    opts = c.opts
    with c.times.phase("mark"):
        snap_roots = c.snapshot(sc)
    with c.times.phase("scan"):
        c.scan(sc)
    late: set[bytes] = set()  # marked under the lock: what appeared since the snapshot
    dead: list[str] = []
    pos, first = 0, True
    if not opts.dry_run:
        store.gc_deleting(True)  # ingests that publish blobs meanwhile re-check them
    try:
        while first or pos < len(sc.garbage):  # index deletes, a chunk per hold of the store lock
            if not first:
                time.sleep(0.002)  # let waiting ingest commits in between two holds
            chunk4 = sc.garbage.read_ino(pos, COMMIT_CHUNK)
            chunk = [r[:3] for r in chunk4]
            c.inodes = {r[0]: r[3] for r in chunk4}
            with prio.normal(), store.exclusive_lock(), c.times.phase("commit"):
                t0 = time.monotonic()
                d = c.commit(sc, snap_roots, late, chunk, first=first)
                c.report.lock_seconds = max(c.report.lock_seconds, time.monotonic() - t0)
            c.pages.drop()  # what the commit's walk of the roots and the index touched
            dead = d if first else dead
            pos, first = pos + len(chunk), False
    finally:
        c.pin.release()  # a held reader would keep the index's freed pages from reuse
    pos = 0
    with progress.task("gc", total=len(sc.unlink), unit="files") as bar:
        while pos < len(sc.unlink):  # unlinks, in short holds
            time.sleep(0.002)
            with prio.normal(), store.exclusive_lock(), c.times.phase("unlink"):
                t1 = time.monotonic()
                new = c.sweep(sc.unlink, pos, t1 + BATCH_SECONDS)
                c.report.lock_seconds = max(c.report.lock_seconds, time.monotonic() - t1)
            bar.advance(new - pos)
            pos = new
    if not opts.dry_run:
        store.gc_deleting(False)
    with c.times.phase("caches"):
        for chunk in sc.unlink.chunks(5000):
            c.verified_rows([k for k, _, kind in chunk if kind >= 0])
            c.pages.drop()
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
            with c.times.phase("caches"):
                c.leases_and_temps(dead)
                if not opts.dry_run:
                    c.report.rows += apply_records.prune(store)  # records of applied ROOTs that are gone
                c.link_objects()
                c.stat_cache()
                c.chunk_map()
    except Busy:
        raise Busy(f"another gc is running on {store.path} (lock {gc_lock}); use --wait to wait for it") from None
    c.report.seconds = time.monotonic() - start
    c.report.phases = c.times.as_json()
    return c.report


__all__ = ["GcOptions", "GcReport", "Item", "collect", "mark", "mark_to", "parse_duration", "split_refs"]
