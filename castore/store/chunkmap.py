"""The chunk map: whole-file digest -> the chunks it is stored as (``chunkmap`` table).

A file of the chunking threshold or more is stored as chunks only; a
manifest that names it by its whole-file digest alone (``build``, upstream's
Go ``continuity build``) is served through this mapping (docs/design.md).
"""

from __future__ import annotations

from collections.abc import Iterable

from castore.store.base import StoreState
from castore.store.meta import CHUNK_ROW, dkey, dstr

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up: castore/__init__.py)

if TYPE_CHECKING:  # the manifest's types are imported where used: `list` never needs them
    from castore.manifest.model import Chunk, Manifest, RegularFile, Resource


class ChunkMap(StoreState):
    """Chunk lists of whole-file digests, and manifests served through them."""

    if TYPE_CHECKING:  # of BlobFiles (blobs.py)

        def missing_blobs(self, digests: Iterable[str]) -> set[str]: ...

    def chunk_lists(self, digests: Iterable[str]) -> dict[str, tuple[Chunk, ...]]:
        """The chunk lists recorded (``chunkmap``) for these whole-file digests, where there is one.

        A file of the chunking threshold or more is stored as chunks only; a
        manifest that names it by its whole-file digest alone (``build``,
        upstream's Go ``continuity build``) is served through this mapping.
        """
        keys = sorted({dkey(d) for d in digests})
        if not keys:
            return {}
        with self.meta.read() as txn:
            rows = txn.cursor(db=self.meta.db("chunkmap")).getmulti(keys)
        out = {}
        for k, raw in rows:
            chunks = unpack_chunks(bytes(raw))
            if chunks:
                out[dstr(bytes(k))] = chunks
        return out

    def content_refs(self, m: Manifest) -> set[str]:
        """The blobs serving ``m`` needs: manifest_refs, with every whole-file digest the index
        lacks but the chunk map knows replaced by its chunks."""
        refs = manifest_refs(m)
        whole = {r.digest for r in m.files() if not r.chunks and r.size > self.chunking.min_size}
        for d, chunks in self.chunk_lists(self.missing_blobs(refs & whole)).items():
            refs.discard(d)
            refs.update(c.digest for c in chunks)
        return refs

    def with_chunks(self, m: Manifest) -> Manifest:
        """``m`` with a chunk list on every regular file whose whole-file blob the index lacks and
        whose chunks the chunk map records (chunk lists that do not cover the file are ignored)."""
        # A file no larger than one chunk at least is never split (a cheap filter: most files are small).
        need = {r.digest for r in m.files() if not r.chunks and r.size > self.chunking.min_size}
        if not need:
            return m
        found = self.chunk_lists(self.missing_blobs(need))
        if not found:
            return m
        from castore.manifest.model import Manifest, RegularFile

        out: list[Resource] = []
        for r in m.resources:
            if isinstance(r, RegularFile) and not r.chunks:
                chunks = found.get(r.digest)
                if chunks and chunks[-1].end == r.size:
                    r = _replace_chunks(r, chunks)
            out.append(r)
        return Manifest(tuple(out))


def manifest_refs(m: Manifest) -> set[str]:
    """Every blob digest a manifest needs: whole files or their chunks, ADS blobs."""
    out: set[str] = set()
    for r in m.resources:
        if hasattr(r, "digest") and isinstance(r.digest, str):
            chunks = getattr(r, "chunks", ())
            if chunks:
                out.update(c.digest for c in chunks)
            else:
                out.add(r.digest)
        for a in r.ads:
            if a.digest:
                out.add(a.digest)
    return out


def pack_chunks(chunks: Iterable[Chunk]) -> bytes:
    """A ``chunkmap`` row: (raw digest, end) per chunk; each begins where the one before ends."""
    return b"".join(CHUNK_ROW.pack(bytes.fromhex(c.digest[7:]), c.end) for c in chunks)


def unpack_chunks(raw: bytes) -> tuple[Chunk, ...]:
    """The chunks of a ``chunkmap`` row; () when it is malformed (fsck reports it)."""
    if not raw or len(raw) % CHUNK_ROW.size:
        return ()
    from castore.manifest.model import Chunk

    out, begin = [], 0
    for d, end in CHUNK_ROW.iter_unpack(raw):
        if end <= begin:
            return ()
        out.append(Chunk("sha256:" + d.hex(), begin, end))
        begin = end
    return tuple(out)


def chunk_map_rows(m: Manifest) -> list[tuple[bytes, bytes]]:
    """The ``chunkmap`` rows of a manifest's chunked files, sorted by key (for putmulti)."""
    return sorted({(dkey(r.digest), pack_chunks(r.chunks)) for r in m.files() if r.chunks})


def _replace_chunks(r: RegularFile, chunks: tuple[Chunk, ...]) -> RegularFile:
    import dataclasses  # noqa: PLC0415 - not on the read-only verbs' path

    return dataclasses.replace(r, chunks=chunks)
