"""The pyfuse3 operations of a mount (imported only when mounting: pyfuse3 and trio are the
optional ``continuity[fuse]`` extra)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import Any

import pyfuse3
import trio

from castore.errors import IntegrityError
from castore.mount.blobreader import BlobReader
from castore.mount.fuse import BLKSIZE, INLINE_READ, TIMEOUT, InodeTable, Node
from castore.mount.readahead import ReadAhead

FUSEError = pyfuse3.FUSEError


class ReadOnlyOps(pyfuse3.Operations):
    """The file system of a mount: ``table`` served read-only through ``reader``; every write is EROFS."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = True  # the kernel enforces the served system.posix_acl_* xattrs

    def __init__(self, table: InodeTable, reader: BlobReader, ahead: ReadAhead | None = None) -> None:
        super().__init__()
        self.table = table
        self.reader = reader
        self.ahead = ahead
        self.on_init: Callable[[], None] | None = None  # called once libfuse has answered INIT

    def init(self) -> None:
        if self.on_init is not None:
            self.on_init()

    def _attrs(self, node: Node) -> Any:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = TIMEOUT
        a.attr_timeout = TIMEOUT
        a.st_mode = node.mode
        a.st_nlink = node.nlink
        a.st_uid = node.uid
        a.st_gid = node.gid
        a.st_rdev = node.rdev
        a.st_size = node.size
        a.st_blksize = BLKSIZE
        a.st_blocks = node.blocks
        a.st_atime_ns = node.mtime_ns
        a.st_mtime_ns = node.mtime_ns
        a.st_ctime_ns = node.mtime_ns
        return a

    def _node(self, ino: int) -> Node:
        node = self.table.nodes.get(ino)
        if node is None:
            raise FUSEError(errno.ENOENT)
        return node

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> Any:
        parent = self._node(parent_inode)
        if not stat.S_ISDIR(parent.mode):
            raise FUSEError(errno.ENOTDIR)
        ino = self.table.lookup(parent_inode, name)
        if ino is None:
            a = pyfuse3.EntryAttributes()
            a.st_ino = 0  # a negative entry the kernel may cache
            a.entry_timeout = TIMEOUT
            return a
        return self._attrs(self.table.nodes[ino])

    async def forget(self, inode_list: Any) -> None:
        return None  # the table is fixed for the mount's lifetime

    async def getattr(self, inode: int, ctx: Any) -> Any:
        return self._attrs(self._node(inode))

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        node = self._node(inode)
        if not stat.S_ISLNK(node.mode):
            raise FUSEError(errno.EINVAL)
        return node.target

    async def opendir(self, inode: int, ctx: Any) -> int:
        if not stat.S_ISDIR(self._node(inode).mode):
            raise FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        node = self._node(fh)
        entries = [(b".", fh), (b"..", node.parent)]
        for i in range(start_id, len(node.names) + 2):
            if i < 2:
                name, ino = entries[i]
            else:
                name = node.names[i - 2]
                ino = node.children[name]
            if not pyfuse3.readdir_reply(token, name, self._attrs(self.table.nodes[ino]), i + 1):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        node = self._node(inode)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise FUSEError(errno.EROFS)
        if not stat.S_ISREG(node.mode):
            raise FUSEError(errno.EINVAL)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self._node(fh)
        if off == 0 and self.ahead is not None and node.size <= INLINE_READ:
            self.ahead.on_read(node)  # a tree walk reads the next files of this directory next
        try:
            if node.size <= INLINE_READ and self.reader.fetch is None:  # a thread hop costs more than a small read
                return self.reader.read_file(node, off, size)
            return await trio.to_thread.run_sync(self.reader.read_file, node, off, size)
        except IntegrityError:
            raise FUSEError(errno.EIO) from None
        except OSError as exc:
            raise FUSEError(exc.errno or errno.EIO) from None

    async def release(self, fh: int) -> None:
        return None

    async def flush(self, fh: int) -> None:
        raise FUSEError(errno.ENOSYS)  # nothing to flush: the kernel stops sending it (one less round trip)

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        value = self._node(inode).xattrs.get(name)
        if value is None:
            raise FUSEError(pyfuse3.ENOATTR)
        return value

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return list(self._node(inode).xattrs)

    async def statfs(self, ctx: Any) -> Any:
        s = pyfuse3.StatvfsData()
        s.f_bsize = BLKSIZE
        s.f_frsize = 4096
        s.f_blocks = (self.table.total_bytes + 4095) // 4096
        s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.table.nodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        self._node(inode)
        if mode & os.W_OK:
            raise FUSEError(errno.EROFS)
        return True  # default_permissions: the kernel checks the mode bits itself

    async def fsync(self, fh: int, datasync: bool) -> None:
        return None


def _async_erofs() -> Callable[..., Any]:
    async def op(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise FUSEError(errno.EROFS)

    return op


for _op in (
    "setattr",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "write",
    "create",
    "setxattr",
    "removexattr",
):
    setattr(ReadOnlyOps, _op, _async_erofs())
