"""A remote tree opened for lazy reads (``mount REGISTRY/REPO[:TAG|@DIGEST] MOUNTPOINT``).

Opening reads what a pull reads before any content: the OCI manifest, the
continuity manifest (digest checked, bounded, validated) and every pack index
(checked against its pack), so listing and ``stat`` need nothing more.
``fetch(digest)`` brings one blob into the store when a read first needs it:
an HTTP range request for its entry (or the whole pack when the entry is
most of it; castore.remote.packio), verified, written under its own name
(castore.remote.landing), so the next read is local. Those files are
unindexed: gc keeps them for its grace period, and a later ``pull`` of the
tree finds them and fetches only the rest.
"""

from __future__ import annotations

import os
import threading
from contextlib import ExitStack

from castore.digest import hash_bytes
from castore.errors import IntegrityError
from castore.manifest import Manifest, codec, validate
from castore.manifest.bounds import check_parse_cost
from castore.remote.client import Registry
from castore.remote.landing import Landing
from castore.remote.oci import MAX_OCI_MANIFEST, blob_sizes, parse_oci_manifest, split_layers
from castore.remote.packfmt import PackIndex
from castore.remote.packio import Counter, read_index
from castore.remote.pull import fetch_blobs, locate, manifest_bytes
from castore.remote.ref import Reference
from castore.remote.transfer import run_all
from castore.store import Store, manifest_refs


class RemoteTree:
    """An artifact whose content is fetched blob by blob on demand. Close it (or use ``with``)."""

    def __init__(self, store: Store, ref: Reference, *, username: str | None = None,
                 password: str | None = None, jobs: int = 4) -> None:
        self.store, self.ref = store, ref
        self._stack = ExitStack()
        try:
            self.reg = self._stack.enter_context(Registry(ref, username=username, password=password, jobs=jobs))
            lease = self._stack.enter_context(store.lease())
            os.makedirs(lease.tmp_dir, mode=0o700)
            self.counter = Counter([])
            self.manifest, self.digest = self._open(lease.tmp_dir, jobs)
            self.tmp_dir = lease.tmp_dir
        except BaseException:
            self._stack.close()
            raise
        self._locks: dict[str, threading.Lock] = {}
        self._mu = threading.Lock()

    def _open(self, tmp_dir: str, jobs: int) -> tuple[Manifest, str]:
        raw, _ = self.reg.get_manifest(self.ref.reference, MAX_OCI_MANIFEST)
        if self.ref.digest and hash_bytes(raw) != self.ref.digest:
            raise IntegrityError(f"registry {self.ref.registry}: manifest {self.ref.digest} has digest "
                                 f"{hash_bytes(raw)}")
        source = str(self.ref)
        first, layers = parse_oci_manifest(raw, source=source)
        packs, solo = split_layers(layers, source=source)
        data = manifest_bytes(self.store, self.reg, first.digest, first.size, tmp_dir, self.counter)
        check_parse_cost(data, source=f"{source} manifest {first.digest}")
        manifest = validate(codec.loads(data, source=f"{source} manifest {first.digest}"))
        indexes: list[PackIndex | None] = [None] * len(packs)

        def one(i: int) -> None:
            indexes[i] = read_index(self.reg, packs[i][0], packs[i][1], tmp_dir, self.counter)

        run_all(range(len(packs)), one, jobs=jobs, abort=self.reg.abort)
        self.where, self.sizes = locate(manifest_refs(manifest), blob_sizes(manifest), packs,
                                        [x for x in indexes if x], solo, source=source)
        return manifest, first.digest

    def fetch(self, digest: str) -> None:
        """Bring ``digest`` into the store (verified) unless a file of its size is there already;
        a file of the right size but wrong bytes is fetched again and replaced (``replace``)."""
        if digest not in self.where:
            raise IntegrityError(f"{self.ref}: blob {digest} is not part of this tree")
        with self._mu:
            lock = self._locks.setdefault(digest, threading.Lock())
        with lock:
            size = self.sizes[digest]
            replace = self.store.blob_file_ok(digest, size)  # there, yet the reader found it bad
            # one Landing per fetch: FUSE reads run on several threads, each drains only its own writes
            fetch_blobs(self.reg, [digest], self.where, Landing(self.store, self.tmp_dir), self.counter, jobs=1,
                        replace=replace)

    @property
    def fetched_bytes(self) -> int:
        return self.counter.total

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> RemoteTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
