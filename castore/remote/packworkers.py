"""Reading, verifying and compressing store blobs for packs in worker processes.

Push reads every small blob of a tree once: open, fstat, read, sha256, zstd.
On many tiny files that is per-file interpreter work, and threads share one
GIL (two threads on 100k tiny files are 4.6x slower than one process here;
castore/readers.py measured it for ingest), so the blobs of a pack are read in
batches by a pool of forked processes (``castore.build.make_pool``: two, they
die with their parent) which send back the stored entry bytes of a batch as one
buffer and the length of each (the parent then does one copy per batch, not per
blob; the worker also builds each blob's path). A blob that is
not a regular file of its size and digest is reported, never packed: the
parent raises BlobNotFound/IntegrityError (exit 4) before the pack is sent.

A blob is read with one ``pread`` of its size plus one byte, opened by name
from its fan-out directory's fd (kept open by the worker): a short or long
read proves a wrong size, so there is no ``fstat`` and no path walk per blob;
anything unexpected (absent, a FIFO, a directory, the wrong size or digest)
goes the general way (``_read``), which says what is wrong.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager

import zstandard

from castore.errors import BlobNotFound, IntegrityError
from castore.fs.io import read_exact_at, read_full
from castore.remote.packfmt import BatchEncoder, compressor
from castore.store.blobs import open_blob_file

Item = tuple[str, int]  # (digest, size)
Failure = tuple[str, str, str]  # (kind "missing" | "corrupt", digest, message)
Stored = tuple[bytes, list[tuple[int, int]]]  # the batch's stored entries, joined; (length, compression) each

_cctx: zstandard.ZstdCompressor | None = None
_shards: dict[str, int] = {}  # fan-out directory -> its fd, in a worker (closed when the worker exits)
_sha256 = hashlib.sha256


def _shard_fd(blob_root: str, name: str) -> int | None:
    path = blob_root + "/" + name
    fd = _shards.get(path)
    if fd is None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        _shards[path] = fd
    return fd


def _read_fast(blob_root: str, h: str, size: int) -> bytes | None:
    """The blob of hex digest ``h`` if it is a readable file of ``size`` bytes and that digest, else None."""
    dfd = _shard_fd(blob_root, h[:2])
    if dfd is None:
        return None
    data = read_exact_at(dfd, h, size)
    if data is None or _sha256(data).hexdigest() != h:
        return None
    return data


def _read(path: str, digest: str, size: int) -> bytes:
    fd, st = open_blob_file(path, digest)
    try:
        if st.st_size != size:
            raise IntegrityError(f"store blob {digest} is not a regular file of {size} bytes (run fsck)")
        data = os.read(fd, size + 1) if size else b""
        if len(data) < size:
            data += read_full(fd, size - len(data))
    finally:
        os.close(fd)
    if len(data) != size or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise IntegrityError(f"blob {digest} is corrupt (digest mismatch)")
    return data


def pack_entries(blob_root: str, items: list[Item]) -> tuple[Stored, Failure | None]:
    """In a worker: the stored bytes of the blobs ``items`` of the store whose blob directory is
    ``blob_root``, joined, with each one's (length, compression); or the first failure."""
    global _cctx
    if _cctx is None:
        _cctx = compressor()
    out: list[bytes] = []
    lens: list[tuple[int, int]] = []
    encode = BatchEncoder(_cctx)
    for digest, size in items:
        h = digest[7:]
        try:
            data = _read_fast(blob_root, h, size)
            if data is None:
                data = _read(os.path.join(blob_root, h[:2], h), digest, size)
            stored, comp = encode(data)
        except BlobNotFound:
            return (b"", []), ("missing", digest, "")
        except (IntegrityError, OSError) as exc:
            return (b"", []), ("corrupt", digest, str(exc) or type(exc).__name__)
        out.append(stored)
        lens.append((len(stored), comp))
    return (b"".join(out), lens), None


def submit(pool: Executor, blob_root: str, items: list[Item]) -> Future[tuple[Stored, Failure | None]]:
    return pool.submit(pack_entries, blob_root, items)


def entries_of(result: tuple[Stored, Failure | None]) -> Stored:
    """The entries of a worker's answer; its failure raised as BlobNotFound/IntegrityError."""
    out, failure = result
    if failure is not None:
        kind, digest, message = failure
        if kind == "missing":
            raise BlobNotFound(digest)
        raise IntegrityError(message)
    return out


def _ready() -> None:
    pass


@contextmanager
def start_pool() -> Iterator[Executor]:
    """The worker processes, forked now (before the process has transfer threads), shut down after."""
    from castore.build import make_pool

    pool = make_pool()
    try:
        # A fork-context pool forks all its workers in the first submit, before it starts its own threads;
        # not waiting for them to answer: they start up while the caller goes on (the manifest scan).
        pool.submit(_ready)
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
