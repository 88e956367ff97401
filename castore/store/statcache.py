"""The stat cache: (dev, ino) -> what reading a file gave, while its stat is unchanged.

One row format for every user (ingest, apply). A row is trusted only when
size, mtime and ctime all match (ctime moves on every content, mode, owner,
xattr or link change); rows are written only for files whose ctime is
RACY_NS older than the walk that read them (git's racy-clean rule: a file
changed again within the same clock tick would otherwise look unchanged).
"""

from __future__ import annotations

import marshal
import struct
from collections.abc import Iterable

from castore.readers import FileJob, FileResult
from castore.store import Store
from castore.store.meta import Txn

KEY = struct.Struct("<QQ")
RACY_NS = 2 * 10**9


def key(job: FileJob) -> bytes:
    """The row key of a file: its (dev, ino)."""
    return KEY.pack(job.dev, job.ino)


def encode(job: FileJob, res: FileResult) -> bytes:
    """The row value for a file read with this stat."""
    return marshal.dumps((job.size, job.mtime_ns, job.ctime_ns, res.digest, res.chunks, res.xattrs, res.holes))


def decode(job: FileJob, raw: bytes) -> FileResult | None:
    """The cached result for ``job``, or None when the row is stale or unreadable."""
    try:
        size, mtime, ctime, digest, chunks, xattrs, holes = marshal.loads(raw)
    except (ValueError, EOFError, TypeError):
        return None
    if (size, mtime, ctime) != (job.size, job.mtime_ns, job.ctime_ns):
        return None
    return FileResult(
        digest=digest,
        chunks=tuple(tuple(c) for c in chunks) if chunks else (),
        xattrs=tuple(tuple(x) for x in xattrs) if xattrs else (),
        holes=tuple(tuple(h) for h in holes) if holes else (),
    )


def cacheable(job: FileJob, walk_start_ns: int) -> bool:
    """True when a row for this file may be written (outside the racy window)."""
    return job.ctime_ns <= walk_start_ns - RACY_NS


def lookup_many(store: Store, jobs: list[FileJob]) -> dict[int, FileResult]:
    """Cached results by job index, in one sorted batch read (15x faster than a get per file)."""
    hits: dict[int, FileResult] = {}
    index = {key(j): i for i, j in enumerate(jobs)}
    db = store.meta.db("statcache")
    with store.meta.read() as txn:
        rows = txn.cursor(db=db).getmulti(sorted(index))
    for k, raw in rows:
        i = index[bytes(k)]
        hit = decode(jobs[i], raw)
        if hit is not None:
            hits[i] = hit
    return hits


def record(store: Store, rows: Iterable[tuple[bytes, bytes]]) -> None:
    """Write rows in one transaction."""
    db = store.meta.db("statcache")
    rows = list(rows)
    if not rows:
        return

    def fn(txn: Txn) -> None:
        for k, v in rows:
            txn.put(k, v, db=db)

    store.meta.write(fn)
