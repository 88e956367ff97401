"""Lazy mounts: a blob a read needs is fetched from the registry, verified, and kept in the store.

``LazyFetcher.fetch(digest)`` is what the FUSE layer calls (castore.mount.fuse,
which imports nothing of castore.remote: the CLI hands it this callable) when
a blob of the mounted tree is not in the store. Order, per blob:

1. the blob is added to the mount's lease (gc keeps it from this commit on; every LEASE_ROW blobs a
   further lease is opened, so a lease row stays small however much of the tree is read);
2. its bytes come from ``RemoteBlobs`` (castore.remote.blobsource), verified
   (size and sha256; a pack entry decompressed within its size first);
3. they are written durably (fsync) under their own name and indexed, so the
   next read, and a later mount of the same tree, reads them locally.

Read-ahead: a chunk of a large file is fetched together with the next chunks of
that file (up to READ_AHEAD bytes) that lie in the same pack and are not in the
store yet: one range request instead of one per chunk for a sequential read.

Wrong bytes raise IntegrityError before anything is written: the read is EIO
and the store is unchanged. One fetch per blob at a time (concurrent readers
of one blob wait for the first); a blob that failed is fetched again on the
next read (a registry may recover), never served unverified.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

from castore.errors import IntegrityError
from castore.remote.blobsource import BlobSource
from castore.store import Lease, Store
from castore.store.meta import BLOB_ROW, KIND_CHUNK, KIND_RAW, dkey

LEASE_ROW = 2048  # blob digests per lease row (each add rewrites its row)
READ_AHEAD = 4 << 20  # bytes of a file's following chunks fetched along with the one a read needs


class LazyFetcher:
    """Fetch-on-miss for one mount: ``fetch(digest)`` leaves the verified blob in the store. Thread-safe."""

    def __init__(
        self,
        store: Store,
        lease: Lease,
        source: BlobSource,
        chunks: Mapping[str, bool],
        sequence: Mapping[str, tuple[tuple[str, ...], int]] | None = None,
    ) -> None:
        self.store, self.lease, self.source, self.chunks = store, lease, source, chunks
        self.sequence = sequence or {}
        self._mu = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}  # digest -> set when the fetch carrying it ends
        self._extra = ExitStack()  # the further leases, released by ``close``
        self._in_lease = 0
        self.fetched = 0  # blobs written into the store by this mount

    def close(self) -> None:
        """Release the further leases (the mount's own lease is its owner's)."""
        self._extra.close()

    def _protect(self, digests: list[str]) -> Lease:
        with self._mu:
            if self._in_lease >= LEASE_ROW:
                self.lease = self._extra.enter_context(self.store.lease())
                self._in_lease = 0
            self._in_lease += len(digests)
            lease = self.lease
        lease.add(digests)
        return lease

    def _ahead(self, digest: str) -> list[str]:
        """The next chunks of ``digest``'s file, up to READ_AHEAD bytes, that the store lacks."""
        seq = self.sequence.get(digest)
        if seq is None:
            return []
        order, i = seq
        out: list[str] = []
        total = 0
        for d in order[i + 1 :]:
            total += self.source.size(d)
            if total > READ_AHEAD:
                break
            if d != digest and d not in out:
                out.append(d)
        return sorted(self.store.missing_blobs(out), key=out.index)

    def fetch(self, digest: str) -> None:
        """Make ``digest`` present in the store. IntegrityError (wrong bytes, or a digest the tree does
        not reference), RemoteError (registry unreachable); nothing is stored on failure."""
        if digest not in self.chunks:
            raise IntegrityError(f"blob {digest} is not part of the mounted tree")
        while True:  # one fetch per blob: a blob in flight (asked for, or read ahead) is waited for
            if self.store.has_blob(digest) and self.store.blob_file_ok(digest, self.source.size(digest)):
                return
            with self._mu:
                busy = self._inflight.get(digest)
                if busy is None:
                    mine = threading.Event()
                    self._inflight[digest] = mine
                    break
            busy.wait()  # then look again: the other fetch may have failed
        ahead: list[str] = []
        try:
            n = 1
            if self.source.is_lone_large(digest):
                lease = self._protect([digest])  # before the file exists: gc cannot take it once written
                self._keep_file(digest, KIND_CHUNK if self.chunks[digest] else KIND_RAW, lease)
            else:
                wanted = self._ahead(digest)
                with self._mu:
                    ahead = [d for d in wanted if d not in self._inflight]
                    for d in ahead:
                        self._inflight[d] = mine
                self._protect([digest, *ahead])
                n = self._keep(self.source.read_along(digest, ahead))  # verified
            with self._mu:
                self.fetched += n
        finally:
            with self._mu:
                for d in (digest, *ahead):
                    if self._inflight.get(d) is mine:
                        del self._inflight[d]
            mine.set()

    def _keep(self, blobs: dict[str, bytes]) -> int:
        """Write verified blobs durably (fsync each), then index them in one transaction; their number."""
        rows = []
        for d, data in blobs.items():
            got = self.store.write_blob_file(data)
            if got != d:  # cannot happen: the source verified the digest
                raise IntegrityError(f"blob {d} changed while being stored ({got})")
            rows.append((dkey(d), BLOB_ROW.pack(len(data), KIND_CHUNK if self.chunks.get(d) else KIND_RAW)))
        db = self.store.meta.db("blobs")

        def put(t: Any) -> None:
            for k, v in rows:
                t.put(k, v, db=db)

        self.store.meta.write(put)
        return len(rows)

    def _keep_file(self, digest: str, kind: int, lease: Lease) -> None:
        """A blob too large for memory: streamed (verified) into the lease's tmp dir, then installed."""
        os.makedirs(lease.tmp_dir, mode=0o700, exist_ok=True)
        tmp = os.path.join(lease.tmp_dir, f"lazy-{digest[7:19]}-{secrets.token_hex(4)}")
        self.source.fetch_to(digest, tmp)  # removed by fetch_blob when it fails
        try:
            self.store.install_staged([(tmp, digest)], sync_fd=lease.fd)  # syncfs, rename, syncfs
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        size = self.source.size(digest)
        self.store.meta.write(lambda t: t.put(dkey(digest), BLOB_ROW.pack(size, kind), db=self.store.meta.db("blobs")))


__all__ = ["LazyFetcher"]
