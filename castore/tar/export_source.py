"""Blob content for ``export``, verified: read ahead by two threads, proven
unchanged or re-hashed, and copied in the kernel where it can be.

A blob is *trusted* when the store's ``links`` table holds a verified
record for it (``b"v" + digest -> (ino, size, mtime_ns, ctime_ns)``, the
rows ``castore.materialize`` writes after hashing a blob, that ``ingest
--tar`` writes for the blobs it has just written, and that export writes
after hashing one) and the blob's fstat still matches it: any write to the
file since it was hashed would have moved its ctime. A trusted blob is not
hashed again; it is copied with ``sendfile`` into a plain output file (else
read and written), and its fstat is checked again *after* the copy, so the
bytes copied are the ones verified (a blob changed meanwhile is an
IntegrityError). Any other blob is hashed before a byte of it is written
(pieces up to 4 MiB, read ahead by two threads across files; larger ones
are hashed as they stream and checked at their end).

Memory: at most ``AHEAD`` pieces or ``AHEAD_BYTES`` bytes are read ahead.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from castore.errors import IntegrityError
from castore.fs import COPY_FALLBACK, write_all
from castore.store import Store, links

VERIFY_WHOLE = 4 << 20
AHEAD = 64
AHEAD_BYTES = 32 << 20
READ = 4 << 20


vkey = links.verified_key  # the `links` key of a blob's verified record
vval = links.verified_record  # a verified record: what must not change for the blob to stay trusted


def load_records(store: Store, digests: set[str]) -> dict[bytes, bytes]:
    """The verified records of ``digests`` (one read transaction)."""
    return links.read_records(store.meta, sorted({vkey(d) for d in digests}))


def save_records(store: Store, rows: dict[bytes, bytes]) -> None:
    """Write verified records (one write transaction); a read-only store keeps none (a cache)."""
    if rows and not store.readonly:
        links.write_records(store.meta, sorted(rows.items()))


@dataclass(slots=True)
class Piece:
    """One blob, ready to be written: verified ``data``, or an open ``fd`` (trusted, or to stream)."""

    digest: str
    size: int
    path: str
    data: bytes | None = None
    fd: int = -1
    st: os.stat_result | None = None
    trusted: bool = False


class Source:
    """Pieces (digest, size, path) in order, each loaded and checked a little ahead of the writer."""

    def __init__(self, store: Store, pieces: list[tuple[str, int, str]], records: dict[bytes, bytes]) -> None:
        self.store, self.records = store, records
        self.todo = iter(pieces)
        self.ahead: deque[tuple[int, Future[Piece] | tuple[str, int, str]]] = deque()
        self.ahead_bytes = 0
        self.pool = ThreadPoolExecutor(2)
        self.updates: dict[bytes, bytes] = {}

    def next(self) -> Piece:
        """The next piece; raises BlobNotFound or IntegrityError (in order) when it is bad."""
        while len(self.ahead) < AHEAD and (self.ahead_bytes < AHEAD_BYTES or not self.ahead):
            nxt = next(self.todo, None)
            if nxt is None:
                break
            if vkey(nxt[0]) in self.records:  # likely trusted: an open and an fstat, done here at its turn
                self.ahead.append((0, nxt))
            else:
                self.ahead.append((nxt[1], self.pool.submit(self._load, *nxt)))
                self.ahead_bytes += nxt[1]
        size, job = self.ahead.popleft()
        if isinstance(job, tuple):
            return self._load(*job)
        self.ahead_bytes -= size
        return job.result()

    def _load(self, digest: str, size: int, path: str) -> Piece:
        fd = self.store.open_blob(digest)
        try:
            st = os.fstat(fd)
            if st.st_size != size:
                raise IntegrityError(f"blob {digest} has the wrong size for {path}")
            if self.records.get(vkey(digest)) == vval(st):
                return Piece(digest, size, path, fd=fd, st=st, trusted=True)
            if size > VERIFY_WHOLE:
                return Piece(digest, size, path, fd=fd, st=st)  # hashed as it streams
            data = _pread_all(fd, size, 0)
            if len(data) != size or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                raise IntegrityError(f"blob {digest} is corrupt (digest mismatch) for {path}; run `continuity fsck`")
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        self.updates[vkey(digest)] = vval(st)  # st was taken before reading: a later write moves ctime
        return Piece(digest, size, path, data=data)

    def close(self) -> None:
        """Stop reading ahead; close what was read ahead and not used."""
        futs = [f for _, f in self.ahead if isinstance(f, Future)]
        for fut in futs:
            fut.cancel()
        self.pool.shutdown(wait=True)
        for fut in futs:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                p = fut.result()
                if p.fd >= 0:
                    os.close(p.fd)
        self.ahead.clear()


def _pread_all(fd: int, size: int, off: int) -> bytes:
    data = os.pread(fd, size, off)
    while len(data) < size:
        more = os.pread(fd, size - len(data), off + len(data))
        if not more:
            break
        data += more
    return data


class Out:
    """The tar output: big writes to a file object, or to a raw fd (with kernel copies)."""

    def __init__(self, f: Any = None, fd: int = -1) -> None:
        self.f, self.fd = f, fd
        self.n = 0
        self.buf = bytearray()
        self.can_copy = fd >= 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.n += len(data)
        if self.fd < 0:
            self.f.write(data)
            return
        if len(data) < 65536:
            self.buf += data
            if len(self.buf) >= 1 << 20:
                self.flush()
            return
        self.flush()
        write_all(self.fd, data)

    def flush(self) -> None:
        if self.buf:
            write_all(self.fd, self.buf)
            self.buf = bytearray()

    def copy(self, src_fd: int, off: int, count: int) -> None:
        """``count`` bytes of ``src_fd`` at ``off``: sendfile when the output allows it."""
        if self.can_copy:
            self.flush()
            done = 0
            try:
                while done < count:
                    n = os.sendfile(self.fd, src_fd, off + done, count - done)
                    if n == 0:
                        raise IntegrityError("blob shorter than its size while exporting")
                    done += n
                self.n += count
                return
            except OSError as exc:
                if exc.errno not in COPY_FALLBACK or done:
                    raise
                self.can_copy = False
        pos = 0
        while pos < count:
            data = os.pread(src_fd, min(READ, count - pos), off + pos)
            if not data:
                raise IntegrityError("blob shorter than its size while exporting")
            self.write(data)
            pos += len(data)


class Emitter:
    """Writes (parts of) pieces to ``out`` and finishes each with its check."""

    def __init__(self, out: Out, updates: dict[bytes, bytes]) -> None:
        self.out, self.updates = out, updates
        self.h: Any = None
        self.pos = 0

    def emit(self, p: Piece, lo: int, hi: int) -> None:
        """Bytes [lo, hi) of piece ``p`` (ranges of one piece come in increasing order)."""
        if p.data is not None:
            self.out.write(memoryview(p.data)[lo:hi])
        elif p.trusted:
            self.out.copy(p.fd, lo, hi - lo)
        else:
            self._stream(p, lo, hi)

    def _stream(self, p: Piece, lo: int, hi: int) -> None:
        # A large untrusted piece: hash every byte in order, write those asked for.
        if self.h is None:
            self.h, self.pos = hashlib.sha256(), 0
        while self.pos < hi:
            data = os.pread(p.fd, min(READ, p.size - self.pos), self.pos)
            if not data:
                raise IntegrityError(f"blob {p.digest} is truncated")
            self.h.update(data)
            a, b = max(lo, self.pos), min(hi, self.pos + len(data))
            if a < b:
                self.out.write(memoryview(data)[a - self.pos : b - self.pos])
            self.pos += len(data)

    def finish(self, p: Piece) -> None:
        """Check piece ``p`` once all of it was emitted, and release it."""
        try:
            if p.trusted:
                assert p.st is not None
                if vval(os.fstat(p.fd)) != vval(p.st):
                    raise IntegrityError(
                        f"blob {p.digest} changed while it was exported for {p.path}; "
                        "export again, or run `continuity fsck`"
                    )
            elif p.fd >= 0:
                if self.h is None or self.pos < p.size:
                    self._stream(p, p.size, p.size)
                assert self.h is not None
                if "sha256:" + self.h.hexdigest() != p.digest:
                    raise IntegrityError(
                        f"blob {p.digest} is corrupt (digest mismatch) for {p.path}; run `continuity fsck`"
                    )
                assert p.st is not None
                self.updates[vkey(p.digest)] = vval(p.st)
        finally:
            self.h = None
            if p.fd >= 0:
                os.close(p.fd)
                p.fd = -1
