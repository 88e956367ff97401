"""Writing and hashing through file descriptors: one copy of each loop.

``write_all``/``pwrite_all`` finish short writes; ``data_ranges`` and ``pwrite_sparse`` keep a
file's holes; ``write_new`` creates a file that must not exist; ``hash_fd`` digests an fd with
pread (its offset untouched); ``read_capped`` reads a small file a user named (a key, a policy,
a manifest) without ever reading more than its cap.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from castore.errors import CastoreError
from castore.fs.linux import start_writeback

#: A read/write buffer size the content paths share.
READ = 1 << 20


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """write(2) until all of ``data`` is written (at the fd's offset)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """pwrite(2) until all of ``data`` is written at ``offset`` (the fd's offset untouched)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        offset += n
        view = view[n:]


def data_ranges(size: int, holes: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """The [begin, end) ranges of a ``size``-byte file that are not in ``holes`` (sorted, disjoint)."""
    out, pos = [], 0
    for b, e in holes:
        if b > pos:
            out.append((pos, b))
        pos = e
    if pos < size:
        out.append((pos, size))
    return out


def pwrite_sparse(fd: int, data: bytes | memoryview, pos: int, ranges: list[tuple[int, int]]) -> None:
    """Write the parts of ``data`` (file bytes [pos, pos+len)) that fall in the data ``ranges``:
    what lies in a hole is skipped, so the hole stays one (the caller ftruncates to the size)."""
    end = pos + len(data)
    for b, e in ranges:
        lo, hi = max(b, pos), min(e, end)
        if lo < hi:
            pwrite_all(fd, memoryview(data)[lo - pos : hi - pos], lo)


def write_new(path: str, data: bytes | memoryview, mode: int = 0o444) -> int:
    """Create ``path`` (which must not exist; never through a symlink), write ``data``, start its
    writeback, close it; return its inode. On failure the file is removed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
        ino = os.fstat(fd).st_ino
        start_writeback(fd)  # the disk writes while the caller hashes on: a later syncfs waits less
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return ino


def hash_fd(fd: int, chunk: int = 4 << 20, *, expect: int | None = None) -> tuple[str, int]:
    """(digest, size) of everything readable from ``fd``, from offset 0 (pread: the offset is untouched).

    ``expect``: the size the caller expects. A file that small is read with one
    pread of expect+1 bytes (a short read proves the end), not two preads that
    each allocate a 4 MiB buffer.
    """
    import hashlib  # noqa: PLC0415 - here, not at import: OpenSSL's load is 2 ms of every start

    if expect is not None and expect < chunk:
        b = os.pread(fd, expect + 1, 0)
        if len(b) <= expect:
            return "sha256:" + hashlib.sha256(b).hexdigest(), len(b)
        h = hashlib.sha256(b)
        pos = len(b)
    else:
        h = hashlib.sha256()
        pos = 0
    while True:
        b = os.pread(fd, chunk, pos)
        if not b:
            break
        h.update(b)
        pos += len(b)
    return "sha256:" + h.hexdigest(), pos


def digest_fd(fd: int, size: int) -> bytes | None:
    """The raw sha256 of the file of ``size`` bytes open as ``fd`` (read from offset 0), or None when
    it holds another number of bytes. Below 4 MiB, one pread of size+1 bytes: a short read proves
    the size (a hardlink object's re-proof, castore.materialize.objects)."""
    import hashlib  # noqa: PLC0415 - (as hash_fd)

    if size < 4 << 20:
        b = os.pread(fd, size + 1, 0)
        return hashlib.sha256(b).digest() if len(b) == size else None
    digest, total = hash_fd(fd, expect=size)
    return bytes.fromhex(digest[7:]) if total == size else None


READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: a FIFO never blocks


def read_exact_at(dir_fd: int, name: str, size: int) -> bytes | None:
    """The whole of the regular file ``name`` in ``dir_fd`` when it holds exactly ``size`` bytes, in one
    ``pread`` of size+1 bytes (a short read proves the size: no ``fstat``); None when it is missing,
    of another size, or not a regular file (a FIFO or a directory fails the read: ESPIPE, EISDIR), or a
    symlink. For small store blobs: the callers hash what they get, or take the general path on None."""
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        data = os.pread(fd, size + 1, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) == size else None


def read_full(fd: int, size: int) -> bytes:
    """``size`` bytes from ``fd``'s offset (fewer only at the end of the file)."""
    data = b""
    while len(data) < size:
        more = os.read(fd, size - len(data))
        if not more:
            break
        data += more
    return data


def read_capped(
    path: str,
    limit: int,
    what: str,
    error: type[CastoreError],
    *,
    missing: type[CastoreError] | None = None,
    too_large: type[CastoreError] | None = None,
) -> bytes:
    """The bytes of the file at ``path``, refused with one line when it is a directory (``error``),
    absent (``missing``; else the OSError goes up) or over ``limit`` bytes (``too_large``, else ``error``).
    ``what`` names what the file should be: "a private key"."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not {what}") from None
    except FileNotFoundError:
        if missing is None:
            raise
        raise missing(f"{path}: no such file (expected {what})") from None
    if len(data) > limit:
        raise (too_large or error)(f"{path}: too large for {what} (over {limit} bytes)")
    return data


@contextlib.contextmanager
def unlink_on_failure(path: str) -> Iterator[None]:
    """Remove ``path`` (a temporary file the block writes and renames into place) when the block
    fails; the error goes on."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
