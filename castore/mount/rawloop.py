"""Serving a local mount's FUSE requests straight from ``/dev/fuse`` (issue 16 item 6).

libfuse (through pyfuse3) mounts, and answers the INIT handshake, as before; every request after it
is read and answered here, in Python, with the same inode table and verified blob reader. The point
is what pyfuse3 cannot do: its ``read`` handler gets only the file handle, not the inode, so the
daemon had to answer every ``open`` with a handle, and a tree walk paid two round trips per file
(``open``, ``release``) even when every page was cached. Here:

- ``open`` and ``opendir`` answer ENOSYS, which the kernel remembers for the mount (``no_open``,
  ``no_opendir``): it opens files and directories itself, with ``keep_cache`` (and the directory
  cache) on, and sends no ``release``. A warm walk sends the daemon nothing at all; a cold one a
  ``read`` per small file. ``read`` finds its inode in the request header.
- ``lookup``/``getattr``/``readdirplus`` answers carry hour-long entry and attribute timeouts
  (nothing under a manifest changes); ``flush`` answers ENOSYS once (``no_flush``).
- Reads of small files are answered inline (from the verified LRU, or one small blob file read and
  hashed); larger reads go to a few threads, which write their replies themselves (the kernel takes
  replies in any order), so the first read of a big file, hashed whole, does not hold up ``ls``.
- The loop polls ``/dev/fuse`` for up to ``SPIN_MS`` before waiting in trio, and lets trio run
  (signals, lease renewal) every ``FAST_MAX`` requests; on unmount the device read fails with ENODEV
  and libfuse, reading it next, ends the session as usual.

Every write is EROFS (the mount is read-only anyway); an opcode not handled here is ENOSYS.
Lazy mounts (whose reads wait on a registry) stay on pyfuse3's request tasks.
"""

from __future__ import annotations

import errno
import os
import select
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from castore import textsafe
from castore.errors import IntegrityError
from castore.mount import wire
from castore.mount.blobreader import BlobReader
from castore.mount.fuse import INLINE_READ, TIMEOUT, InodeTable, Node
from castore.mount.readahead import ReadAhead

SPIN_MS = 1
FAST_MAX = 64
READ_THREADS = 4
BUFSIZE = (1 << 20) + 4096  # a request is at most max_write (128 KiB, and nothing is written here) + its header
T = int(TIMEOUT)


class Errno(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class RawServer:
    """Answers FUSE requests for ``table`` through ``reader`` on the connected device fd."""

    def __init__(self, table: InodeTable, reader: BlobReader, ahead: ReadAhead | None) -> None:
        self.table, self.reader, self.ahead = table, reader, ahead
        self.fd = -1
        self.requests = 0
        self.quick_waits = 0
        self.trio_waits = 0
        self._stop = False
        self.active = False  # set once libfuse has answered INIT (``activate``): requests are ours from then on
        self._pool: ThreadPoolExecutor | None = None
        self._ops: dict[int, Callable[[int, int, bytes], bytes | None]] = {
            wire.LOOKUP: self._lookup,
            wire.GETATTR: self._getattr,
            wire.READLINK: self._readlink,
            wire.OPEN: self._open,
            wire.READ: self._read,
            wire.STATFS: self._statfs,
            wire.RELEASE: _ok,
            wire.FSYNC: _ok,
            wire.GETXATTR: self._getxattr,
            wire.LISTXATTR: self._listxattr,
            wire.FLUSH: _enosys,
            wire.OPENDIR: self._opendir,
            wire.READDIR: self._readdir,
            wire.READDIRPLUS: self._readdirplus,
            wire.RELEASEDIR: _ok,
            wire.FSYNCDIR: _ok,
            wire.ACCESS: self._access,
            wire.DESTROY: _ok,
        }

    # ------------------------------------------------------------------ the loop

    async def serve(self, fd: int, trio: Any) -> None:
        """Answer requests until the device reports the unmount (ENODEV) or ``stop``; then return
        (unmounted: libfuse's next read ends the session) or raise trio.ClosedResourceError (stopped:
        pyfuse3's loop ends without reading)."""
        self.fd = fd
        os.set_blocking(fd, False)
        poll = select.poll()
        poll.register(fd, select.POLLIN)
        run = 0  # requests served since the last wait in trio
        while not self._stop:
            if run == 0:
                self.trio_waits += 1
                await trio.lowlevel.wait_readable(fd)  # ClosedResourceError on pyfuse3.terminate()
            elif poll.poll(SPIN_MS):  # the next request usually comes within a round trip: no trio wait
                self.quick_waits += 1
            else:
                run = 0
                continue
            try:
                req = os.read(fd, BUFSIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENODEV:
                    return
                if exc.errno in (errno.EINTR, errno.ENOENT):  # ENOENT: the request was interrupted
                    continue
                raise
            self.handle(req)
            run += 1
            if run >= FAST_MAX:  # let trio run: signals, lease renewal
                run = 1
                await trio.lowlevel.checkpoint()
        raise trio.ClosedResourceError("mount stopped")

    def activate(self) -> None:
        self.active = True

    def stop(self) -> None:
        """End ``serve`` at its next request or wake-up (a signal arrived)."""
        self._stop = True

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def stats(self) -> dict[str, int]:
        return {"requests": self.requests, "quick_waits": self.quick_waits, "trio_waits": self.trio_waits}

    def handle(self, req: bytes) -> None:
        """Answer one request (never raises: a handler's failure is EIO for that request)."""
        _, opcode, unique, nodeid, *_ = wire.IN_HEADER.unpack_from(req)
        self.requests += 1
        if opcode in wire.NO_REPLY:
            return
        if opcode in wire.WRITES:
            self.reply_error(unique, errno.EROFS)
            return
        op = self._ops.get(opcode)
        if op is None:
            self.reply_error(unique, errno.ENOSYS)
            return
        try:
            out = op(unique, nodeid, req[wire.IN_HEADER.size :])
        except Errno as e:
            self.reply_error(unique, e.code)
        except Exception as exc:  # noqa: BLE001 - one request fails, the mount lives
            textsafe.note(f"mount: request {opcode} failed: {exc!r}", prefix="error")
            self.reply_error(unique, errno.EIO)
        else:
            if out is not None:
                self.reply(unique, out)

    def reply(self, unique: int, body: bytes) -> None:
        head = wire.OUT_HEADER.pack(wire.OUT_HEADER.size + len(body), 0, unique)
        self._write([head, body] if body else [head])

    def reply_error(self, unique: int, code: int) -> None:
        self._write([wire.OUT_HEADER.pack(wire.OUT_HEADER.size, -code, unique)])

    def _write(self, parts: list[bytes]) -> None:
        try:
            os.writev(self.fd, parts)
        except OSError as exc:  # ENOENT: interrupted meanwhile; ENODEV: unmounted meanwhile
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                raise

    # ------------------------------------------------------------------ handlers

    def _node(self, nodeid: int) -> Node:
        node = self.table.nodes.get(nodeid)
        if node is None:
            raise Errno(errno.ENOENT)
        return node

    def _dir(self, nodeid: int) -> Node:
        node = self._node(nodeid)
        if not stat.S_ISDIR(node.mode):
            raise Errno(errno.ENOTDIR)
        return node

    def _lookup(self, unique: int, nodeid: int, body: bytes) -> bytes:
        self._dir(nodeid)
        ino = self.table.lookup(nodeid, body.split(b"\0", 1)[0])
        return wire.entry(None if ino is None else self.table.nodes[ino], T)

    def _getattr(self, unique: int, nodeid: int, body: bytes) -> bytes:
        return wire.attr_out(self._node(nodeid), T)

    def _readlink(self, unique: int, nodeid: int, body: bytes) -> bytes:
        node = self._node(nodeid)
        if not stat.S_ISLNK(node.mode):
            raise Errno(errno.EINVAL)
        return node.target

    def _open(self, unique: int, nodeid: int, body: bytes) -> bytes:
        flags = int.from_bytes(body[:4], "little")
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise Errno(errno.EROFS)
        raise Errno(errno.ENOSYS)  # no_open: the kernel opens files itself from now on (keep_cache, no release)

    def _opendir(self, unique: int, nodeid: int, body: bytes) -> bytes:
        self._dir(nodeid)
        raise Errno(errno.ENOSYS)  # no_opendir: likewise for directories (their listings cached)

    def _read(self, unique: int, nodeid: int, body: bytes) -> bytes | None:
        _, off, size, _ = wire.READ_IN.unpack_from(body)
        node = self._node(nodeid)
        if not stat.S_ISREG(node.mode):
            raise Errno(errno.EINVAL)
        if node.size <= INLINE_READ:
            if off == 0 and self.ahead is not None:
                self.ahead.on_read(node)  # a tree walk reads the next files of this directory next
            return self._bytes(node, off, size)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="fuse-read")
        self._pool.submit(self._read_later, unique, node, off, size)
        return None

    def _read_later(self, unique: int, node: Node, off: int, size: int) -> None:
        try:
            data = self._bytes(node, off, size)
        except Errno as e:
            self.reply_error(unique, e.code)
        except Exception as exc:  # noqa: BLE001 - as in handle()
            textsafe.note(f"mount: read of {node.path} failed: {exc!r}", prefix="error")
            self.reply_error(unique, errno.EIO)
        else:
            self.reply(unique, data)

    def _bytes(self, node: Node, off: int, size: int) -> bytes:
        try:
            return self.reader.read_file(node, off, size)
        except IntegrityError:
            raise Errno(errno.EIO) from None
        except OSError as exc:
            raise Errno(exc.errno or errno.EIO) from None

    def _readdir(self, unique: int, nodeid: int, body: bytes) -> bytes:
        return self._listing(nodeid, body, plus=False)

    def _readdirplus(self, unique: int, nodeid: int, body: bytes) -> bytes:
        return self._listing(nodeid, body, plus=True)

    def _listing(self, nodeid: int, body: bytes, *, plus: bool) -> bytes:
        _, off, size, _ = wire.READ_IN.unpack_from(body)
        node = self._dir(nodeid)
        nodes, names, children = self.table.nodes, node.names, node.children
        out: list[bytes] = []
        used = 0
        for i in range(off, len(names) + 2):
            if i < 2:
                name, ino = (b".", nodeid) if i == 0 else (b"..", node.parent)
            else:
                name = names[i - 2]
                ino = children[name]
            child = nodes[ino]
            d = wire.dirent(ino, i + 1, name, child.mode)
            if plus:
                d = wire.entry(child, T) + d
            used += len(d)
            if used > size:
                break
            out.append(d)
        return b"".join(out)

    def _getxattr(self, unique: int, nodeid: int, body: bytes) -> bytes:
        size, _ = wire.GETXATTR_IN.unpack_from(body)
        name = body[wire.GETXATTR_IN.size :].split(b"\0", 1)[0]
        value = self._node(nodeid).xattrs.get(name)
        if value is None:
            raise Errno(errno.ENODATA)
        return _sized(value, size)

    def _listxattr(self, unique: int, nodeid: int, body: bytes) -> bytes:
        size, _ = wire.GETXATTR_IN.unpack_from(body)
        return _sized(b"".join(n + b"\0" for n in self._node(nodeid).xattrs), size)

    def _statfs(self, unique: int, nodeid: int, body: bytes) -> bytes:
        return wire.statfs((self.table.total_bytes + 4095) // 4096, len(self.table.nodes))

    def _access(self, unique: int, nodeid: int, body: bytes) -> bytes:
        self._node(nodeid)
        if int.from_bytes(body[:4], "little") & os.W_OK:
            raise Errno(errno.EROFS)
        return b""  # default_permissions: the kernel checks the mode bits itself


def _sized(value: bytes, size: int) -> bytes:
    """An xattr answer: its size when asked for 0 bytes, ERANGE when it does not fit."""
    if size == 0:
        return wire.SIZE_OUT.pack(len(value), 0)
    if len(value) > size:
        raise Errno(errno.ERANGE)
    return value


def _ok(unique: int, nodeid: int, body: bytes) -> bytes:
    return b""


def _enosys(unique: int, nodeid: int, body: bytes) -> bytes:
    raise Errno(errno.ENOSYS)
