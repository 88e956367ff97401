"""Leases (what an operation in flight protects from gc), the store lock, and the gc handshake.

A lease is a row of the ``leases`` table and a lock file STORE/leases/<id>.lock
its owner holds (flock, ``castore.store.lock``) while it lives; gc honours the
leases whose owner still holds the lock and that have not expired.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager

from castore.errors import warn_mounts_kept
from castore.fs.tree import remove_tree
from castore.store.base import StoreState
from castore.store.lock import flocked, hold_new, is_held
from castore.store.meta import Txn
from castore.store.readonly import no_lease, no_lock, refuse_write

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up: castore/__init__.py)

if TYPE_CHECKING:
    from typing import Any

LEASE_TTL_NS = 24 * 3600 * 10**9


class Lease:
    """Protects what it names from gc while its owner lives (flock on a lock file)."""

    def __init__(self, store: StoreState, lease_id: str, fd: int) -> None:
        self.store, self.id, self.fd = store, lease_id, fd

    @property
    def tmp_dir(self) -> str:
        return os.path.join(self.store.path, "tmp", self.id)

    def add_manifest(self, digest: str) -> None:
        self.add([digest])

    def add(self, digests: Iterable[str]) -> None:
        """Protect these manifests or blobs too (one transaction); a blob must be checked for
        afterwards: gc honours the lease from this commit on."""
        new = list(digests)
        if not new:
            return

        def fn(txn: Txn) -> None:
            db = self.store.meta.db("leases")
            raw = txn.get(self.id.encode(), db=db)
            rec: dict[str, Any] = (
                json.loads(raw) if raw else {"expiry_ns": time.time_ns() + LEASE_TTL_NS, "manifests": []}
            )
            have = set(rec["manifests"])
            rec["manifests"].extend(d for d in dict.fromkeys(new) if d not in have)
            txn.put(self.id.encode(), json.dumps(rec).encode(), db=db)

        self.store.meta.write(fn)

    def release(self) -> None:
        if self.fd < 0:
            return
        self.store.meta.write(lambda txn: txn.delete(self.id.encode(), db=self.store.meta.db("leases")))
        try:
            os.unlink(os.path.join(self.store.path, "leases", self.id + ".lock"))
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = -1


class Leases(StoreState):
    """The store lock, leases, and the gc/publisher handshake."""

    def shared_lock(self) -> AbstractContextManager[int]:
        """Locking: shared. Held while an ingest commits; gc waits for it."""
        if self.readonly:
            return no_lock()
        return flocked(os.path.join(self.path, "lock"), exclusive=False)

    def exclusive_lock(self, wait: bool = True) -> AbstractContextManager[int]:
        """Locking: exclusive (gc)."""
        if self.readonly:
            refuse_write(self.path)
        return flocked(os.path.join(self.path, "lock"), exclusive=True, wait=wait)

    @contextmanager
    def lease(self, manifests: Iterable[str] = ()) -> Iterator[Lease]:
        """A lease for the duration of the block; its tmp dir is removed at the end."""
        if self.readonly:
            with no_lease(self.path) as nl:
                yield nl  # type: ignore[misc]
            return
        lid = f"{time.time_ns():x}-{os.urandom(6).hex()}"
        fd = hold_new(os.path.join(self.path, "leases", lid + ".lock"))
        rec = {"expiry_ns": time.time_ns() + LEASE_TTL_NS, "manifests": list(manifests), "pid": os.getpid()}
        self.meta.write(lambda t: t.put(lid.encode(), json.dumps(rec).encode(), db=self.meta.db("leases")))
        lease = Lease(self, lid, fd)
        try:
            yield lease
        finally:
            warn_mounts_kept(remove_tree(lease.tmp_dir))
            lease.release()

    def live_leases(self) -> list[tuple[str, dict[str, object]]]:
        """Leases whose owner still holds its lock and that have not expired."""
        out = []
        now = time.time_ns()
        with self.meta.read() as txn:
            rows = list(txn.cursor(db=self.meta.db("leases")))
        for k, v in rows:
            lid = k.decode()
            rec = json.loads(v)
            if rec.get("expiry_ns", 0) > now and is_held(os.path.join(self.path, "leases", lid + ".lock")):
                out.append((lid, rec))
        return out

    def gc_epoch(self) -> tuple[bytes, bool]:
        """(generation, a gc is deleting now): lets an ingest know whether a gc may
        have unlinked names it published without the lock (see Processor._publish)."""
        with self.meta.read() as txn:
            db = self.meta.db("info")
            return txn.get(b"gc-gen", db=db) or b"0", txn.get(b"gc-active", db=db) == b"1"

    def gc_deleting(self, active: bool) -> None:
        """Mark (before its first delete) or unmark (after its last unlink) a gc run."""

        def fn(txn: Txn) -> None:
            db = self.meta.db("info")
            if active:
                gen = int(txn.get(b"gc-gen", db=db) or b"0") + 1
                txn.put(b"gc-gen", str(gen).encode(), db=db)
            txn.put(b"gc-active", b"1" if active else b"0", db=db)

        self.meta.write(fn)
