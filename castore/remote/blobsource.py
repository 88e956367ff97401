"""Verified reads of single blobs of a remote tree, for the lazy mount (docs/mount.md "Lazy mounts").

``open_remote_tree`` reads only what listing a tree needs: the OCI manifest,
the continuity manifest blob and, for packed artifacts, the pack index
layers (castore.remote.packio parses and checks them). It locates every
blob the manifest references, exactly as pull does (``castore.remote.pull.locate``).

``RemoteBlobs.read(digest)`` then returns the verified bytes of one blob:

- a blob that is its own layer (old artifacts, and blobs of SOLO_MIN or more
  in packed ones): one GET of that layer, size and digest checked while it
  streams (a large file is served chunk by chunk: each chunk is a blob);
- a blob inside a pack: an HTTP range request for its entry (or the whole
  pack when the entry is most of it; castore.remote.packio decides), then
  decompressed within its size and hashed.

Wrong bytes are an IntegrityError and nothing is returned. Counters record
the requests and bytes that crossed the wire (tests, benchmarks).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from castore.digest import hash_bytes
from castore.errors import IntegrityError
from castore.manifest import codec, validate
from castore.manifest.bounds import check_parse_cost
from castore.manifest.model import Manifest, RegularFile
from castore.remote.client import Registry
from castore.remote.oci import MAX_OCI_MANIFEST, Descriptor, blob_sizes, parse_tree, split_layers
from castore.remote.packfmt import Entry, PackIndex
from castore.remote.packio import WHOLE_MIN, Counter, fetch_entries, read_index, read_small_blob
from castore.remote.pull import Where, locate, manifest_bytes
from castore.remote.ref import Reference
from castore.remote.signatures import fetch_signatures
from castore.remote.transfer import run_all
from castore.sign.policy import Policy
from castore.store import Store, manifest_refs
from castore.store.signatures import enforce

MAX_IN_MEMORY = 64 << 20  # a lone layer larger than this is streamed to a file, never held whole


class BlobSource(Protocol):
    """What the lazy mount needs from a remote: the verified bytes of one blob, or a verified file."""

    def size(self, digest: str) -> int: ...

    def read(self, digest: str) -> bytes: ...

    def read_along(self, digest: str, more: list[str]) -> dict[str, bytes]: ...

    def is_lone_large(self, digest: str) -> bool: ...

    def fetch_to(self, digest: str, path: str) -> None: ...


@dataclass(slots=True)
class Stats:
    """Blobs read from the remote (bytes that crossed the wire: ``RemoteBlobs.counter``)."""

    blobs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self) -> None:
        with self.lock:
            self.blobs += 1


class RemoteBlobs:
    """One remote tree's blobs, each read on demand and verified before it is returned. Thread-safe."""

    def __init__(
        self, reg: Registry, where: Mapping[str, Where], sizes: Mapping[str, int], counter: Counter, tmp_dir: str
    ) -> None:
        self.reg, self.where, self.sizes, self.counter, self.tmp_dir = reg, where, sizes, counter, tmp_dir
        self.stats = Stats()

    def size(self, digest: str) -> int:
        return self.sizes[digest]

    def is_lone_large(self, digest: str) -> bool:
        """True for a blob that is its own layer and too large to hold in memory (use ``fetch_to``)."""
        w = self.where[digest]
        return isinstance(w, Descriptor) and w.size > MAX_IN_MEMORY

    def read(self, digest: str) -> bytes:
        """The verified bytes of ``digest``. KeyError when the tree does not reference it;
        IntegrityError for wrong bytes; RemoteError when the registry cannot be reached."""
        w = self.where[digest]
        self.stats.add()
        if isinstance(w, Descriptor):
            return self._read_layer(w)
        pack, entry = w
        if entry.stored == 0:
            return b""
        return self._read_entry(pack, entry)

    def read_along(self, digest: str, more: list[str]) -> dict[str, bytes]:
        """``digest`` and those of ``more`` (read-ahead) that lie in the same pack, in as few requests
        as castore.remote.packio plans (adjacent entries: one range); each blob verified. The result
        always holds ``digest``; a blob of ``more`` elsewhere is left out."""
        w = self.where[digest]
        if isinstance(w, Descriptor) or w[1].stored == 0:
            return {digest: self.read(digest)}
        pack, entry = w
        entries = {entry.digest: entry}
        room = WHOLE_MIN * pack.size - entry.stored  # read-ahead never turns the range into the whole pack
        for d in more:
            x = self.where.get(d)
            if isinstance(x, tuple) and x[0].digest == pack.digest and 0 < x[1].stored < room:
                entries[d] = x[1]
                room -= x[1].stored
        got: dict[str, bytes] = {}

        def sink(e: Entry, data: bytes) -> None:  # decode_entry checked length, compression and digest
            got[e.digest] = data

        self.stats.add()
        fetch_entries(self.reg, pack, sorted(entries.values(), key=lambda e: e.offset), sink, self.counter)
        if digest not in got:
            raise IntegrityError(f"{self.reg.where}: pack {pack.digest} did not yield blob {digest}")
        return got

    def fetch_to(self, digest: str, path: str) -> None:
        """Write the verified bytes of ``digest`` into the new file ``path`` (removed on failure)."""
        w = self.where[digest]
        if isinstance(w, Descriptor):
            self.stats.add()
            self.reg.fetch_blob(w.digest, w.size, path)  # size and digest verified while streaming
            self.counter.add(w.size)
            return
        data = self.read(digest)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def _read_layer(self, desc: Descriptor) -> bytes:
        return read_small_blob(self.reg, desc, self.tmp_dir, MAX_IN_MEMORY, self.counter)  # verified

    def _read_entry(self, pack: Descriptor, entry: Entry) -> bytes:
        got: list[bytes] = []

        def sink(e: Entry, data: bytes) -> None:  # decode_entry checked length, compression and digest
            if e.digest == entry.digest:
                got.append(data)

        fetch_entries(self.reg, pack, [entry], sink, self.counter)
        if len(got) != 1:
            raise IntegrityError(f"{self.reg.where}: pack {pack.digest} did not yield blob {entry.digest}")
        return got[0]


@dataclass(slots=True)
class RemoteTree:
    """A remote tree opened for a lazy mount: its validated manifest and a source of its blobs."""

    manifest: Manifest
    manifest_digest: str
    manifest_bytes: bytes
    oci_digest: str
    blobs: RemoteBlobs
    kinds: dict[str, bool]  # digest -> True for a chunk, False for a whole file or an ADS blob
    sequence: dict[str, tuple[tuple[str, ...], int]]  # chunk digest -> (its file's chunk digests, its index)
    opened_bytes: int  # what opening cost on the wire (manifest, pack indexes); reads add to blobs.counter


def open_remote_tree(
    store: Store, reg: Registry, ref: Reference, tmp_dir: str, *, jobs: int = 4, policy: Policy | None = None
) -> RemoteTree:
    """Read what a listing needs (OCI manifest, continuity manifest, pack indexes), nothing else.

    ``tmp_dir`` (a lease's) receives the downloads while they are checked.
    Raises IntegrityError for any answer that contradicts itself or the
    digests, PolicyRefused when ``policy`` refuses the tree (before any blob
    is read), RemoteError/NotFound otherwise.
    """
    raw, _ctype = reg.get_manifest(ref.reference, MAX_OCI_MANIFEST)
    oci_digest = hash_bytes(raw)
    if ref.digest and oci_digest != ref.digest:
        raise IntegrityError(f"registry {ref.registry}: manifest {ref.digest} has digest {oci_digest}")
    tree = parse_tree(raw, source=str(ref))
    first = tree.first
    packs, solo = split_layers(tree.layers, source=str(ref))
    counter = Counter([])
    data = manifest_bytes(store, reg, first, tree.parts, tmp_dir, counter, jobs=jobs)
    check_parse_cost(data, source=f"{ref} manifest {first.digest}")  # before any parse allocates
    manifest = validate(codec.loads(data, source=f"{ref} manifest {first.digest}"))
    if policy is not None:  # before any blob is read: a refused tree is never served
        sigs = fetch_signatures(reg, oci_digest, tmp_dir)
        enforce(store, policy, first.digest, [str(ref)], what=str(ref), message=data, extra=[s.raw for s in sigs])
    refs = manifest_refs(manifest)
    indexes: list[PackIndex | None] = [None] * len(packs)

    def one_index(i: int) -> None:
        indexes[i] = read_index(reg, packs[i][0], packs[i][1], tmp_dir, counter)

    run_all(range(len(packs)), one_index, jobs=jobs, abort=reg.abort)
    where, sizes = locate(refs, blob_sizes(manifest), packs, [x for x in indexes if x], solo, source=str(ref))
    sequence: dict[str, tuple[tuple[str, ...], int]] = {}
    for r in manifest.resources:
        if isinstance(r, RegularFile) and r.chunks:
            order = tuple(c.digest for c in r.chunks)
            for i, d in enumerate(order):
                sequence.setdefault(d, (order, i))
    kinds = {d: d in sequence for d in refs}
    return RemoteTree(
        manifest,
        first.digest,
        data,
        oci_digest,
        RemoteBlobs(reg, where, sizes, counter, tmp_dir),
        kinds,
        sequence,
        counter.total,
    )


__all__ = ["BlobSource", "RemoteBlobs", "RemoteTree", "Stats", "open_remote_tree"]
