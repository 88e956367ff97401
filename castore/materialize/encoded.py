"""A store manifest checked out from its encoded bytes: its regular files stay encoded (LinkRef), and
the two writer processes of a checkout each read their own run of the bytes (castore.checkout).

Before the fork, the parent reads only what the forked writer cannot read itself, LMDB being
unusable across a fork: the records of that run's hardlink objects (their keys are the hashes of the
run's entries, read with the framing alone) and the chunk lists its big files may need. Everything
else (paths, which entries are files, directories, decoding the rest) each process does for its own
run, at the same time as the other.
"""

from __future__ import annotations

from castore.manifest.codec import decode_entry
from castore.manifest.entries import entry_hashes, entry_spans, size_of, split_entries
from castore.manifest.model import Chunk, Directory, RegularFile, Resource
from castore.materialize.writer import Writer
from castore.store.links import OBJECT_RECORD, RECORD_V2, LinkRef, read_records

Item = Resource | LinkRef  # what a checkout creates: a resource, or a store file still encoded

_RECORD_LEN = OBJECT_RECORD.size
_SIZE = slice(9, 17)  # the object's size in a record (after the version byte and the inode number)
_DIGEST = slice(33, 65)  # the raw sha256 of its content


class Encoded:
    """The bytes of a store manifest (indexed: validated when it was committed) and its digest."""

    __slots__ = ("data", "source")

    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.source = data, source


def items_of(enc: Encoded, begin: int = 0, end: int | None = None, keys: list[bytes] | None = None) -> list[Item]:
    """The entries of ``enc.data[begin:end]`` (entry boundaries): regular files as LinkRefs (with their
    object ``keys`` when given: one for each entry, in order), everything else decoded."""
    plain: list[bool] = []
    entries, paths = split_entries(enc.data, source=enc.source, plain=plain, begin=begin, end=end)
    if keys is None:
        return [LinkRef(e, ps) if f else decode_entry(e) for e, ps, f in zip(entries, paths, plain, strict=True)]
    return [
        LinkRef(e, ps, k) if f else decode_entry(e) for e, ps, f, k in zip(entries, paths, plain, keys, strict=True)
    ]


def read_run(writer: Writer, enc: Encoded, begin: int, end: int | None = None) -> Fed:
    """What the forked writer checking out ``enc.data[begin:end]`` needs from LMDB (it cannot read
    it: an environment must not be used across a fork), as plain data for ``use_run``: the records of
    its hardlink objects (keys: the hashes of its entries, read with the framing alone) and the
    chunk lists its big files may need."""
    assert writer.store is not None
    data = enc.data
    spans: list[tuple[int, int]] = []
    if writer.opts.link == "hardlink":
        keys = entry_hashes(data, begin, end, spans)
        records = read_records(writer.store.meta, sorted(b"o" + k for k in keys))
        # The entries whose object has no record: a first checkout's, a directory, a symlink...
        todo = [spans[i] for i, k in enumerate(keys) if len(records.get(b"o" + k, b"")) != _RECORD_LEN]
    else:
        records = {}
        todo = [(begin + i, begin + j) for i, j in entry_spans(data[begin:end], source=enc.source)]
    big = _maybe_chunked(data, records, todo, writer.threshold, enc.source)
    lists = writer.store.chunk_lists(big) if big else {}
    return records, [(d, [(c.digest, c.begin, c.end) for c in chunks]) for d, chunks in lists.items()]


Fed = tuple[dict[bytes, bytes], list[tuple[str, list[tuple[str, int, int]]]]]  # what read_run sends


def use_run(writer: Writer, fed: Fed) -> None:
    """In the forked writer: take what ``read_run`` read for it."""
    records, lists = fed
    writer.records = records
    writer.chunk_lists.update((d, tuple(Chunk(*c) for c in chunks)) for d, chunks in lists)


def _maybe_chunked(
    data: bytes, records: dict[bytes, bytes], todo: list[tuple[int, int]], threshold: int, source: str
) -> set[str]:
    """Whole-file digests of files that may be stored as chunks only (no chunk list in the manifest,
    at least the chunking threshold): those of the objects ``records`` name (their record gives size
    and digest: a later hardlink checkout reads nothing else), and those of the entries of ``data`` at
    the spans ``todo``, read with ``size_of`` (decoded only when it cannot tell, or the file is big)."""
    out: set[str] = set()
    for raw in records.values():
        if len(raw) == _RECORD_LEN and raw[0] == RECORD_V2 and int.from_bytes(raw[_SIZE], "little") >= threshold:
            out.add("sha256:" + raw[_DIGEST].hex())
    for i, j in todo:
        entry = data[i:j]
        size = size_of(entry)
        if size is not None and size < threshold:
            continue
        r = decode_entry(entry, source=source)
        if isinstance(r, RegularFile) and not r.chunks and r.size >= threshold:
            out.add(r.digest)
    return out


def directory_fields(r: Directory) -> tuple[object, ...]:
    """What the parent needs of a forked writer's directory to set its metadata (marshal-able)."""
    return (r.paths, r.perm, r.uid, r.gid, r.xattrs, r.mtime_ns, r.opaque)


def directory_from(fields: tuple[object, ...]) -> Directory:
    paths, perm, uid, gid, xattrs, mtime_ns, opaque = fields
    return Directory(
        paths=paths,  # type: ignore[arg-type]
        perm=perm,  # type: ignore[arg-type]
        uid=uid,  # type: ignore[arg-type]
        gid=gid,  # type: ignore[arg-type]
        xattrs=xattrs,  # type: ignore[arg-type]
        mtime_ns=mtime_ns,  # type: ignore[arg-type]
        opaque=opaque,  # type: ignore[arg-type]
    )
