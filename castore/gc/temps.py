"""gc's phase 4 over leases and temporaries: lock files and tmp dirs of dead leases, staging
directories of killed checkouts, stray ``.put-*`` temps. No store lock is held.
A mixin of ``castore.gc.collect._Collector`` (the attributes are the collector's)."""

from __future__ import annotations

import os
import stat

from castore import fs
from castore.errors import warn_mounts_kept
from castore.fs import publish
from castore.fs.tree import remove_tree
from castore.gc.files import age_ns, size_of, tree_size
from castore.gc.report import GcOptions, GcReport, Item
from castore.store import Store
from castore.store.lock import is_held
from castore.store.meta import MetaDB

ROWLESS_LEASE_FLOOR_NS = 60 * 10**9  # a lock file with no row may be a lease being born


class TempSweeps:
    """Removal of what dead leases, killed checkouts and interrupted writes left behind."""

    store: Store
    opts: GcOptions
    meta: MetaDB
    now: int
    report: GcReport
    keep_items: bool

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
