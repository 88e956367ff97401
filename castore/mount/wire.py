"""The FUSE kernel protocol, as far as a read-only file system needs it (``linux/fuse.h``, 7.x).

Structures are little-endian on every architecture Linux FUSE runs on here (x86-64, arm64). The
INIT handshake stays libfuse's (through pyfuse3), which negotiates the protocol minor version; every
structure below has had this size since 7.9 and is laid out exactly as the kernel reads it.
"""

from __future__ import annotations

import stat
import struct

from castore.mount.fuse import BLKSIZE, Node

# opcodes
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE, STATFS, RELEASE = 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18
FSYNC, SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR, FLUSH, INIT = 20, 21, 22, 23, 24, 25, 26
OPENDIR, READDIR, RELEASEDIR, FSYNCDIR, ACCESS, CREATE, INTERRUPT = 27, 28, 29, 30, 34, 35, 36
DESTROY, BATCH_FORGET, FALLOCATE, READDIRPLUS, RENAME2, COPY_FILE_RANGE, TMPFILE = 38, 42, 43, 44, 45, 47, 51
NOTIFY_REPLY = 41

#: requests the kernel expects no reply to
NO_REPLY = frozenset({FORGET, BATCH_FORGET, INTERRUPT, NOTIFY_REPLY})
#: requests that would change the tree: EROFS
WRITES = frozenset(
    {SETATTR, SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, WRITE, SETXATTR, REMOVEXATTR, CREATE}
    | {FALLOCATE, RENAME2, COPY_FILE_RANGE, TMPFILE}
)

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
OUT_HEADER = struct.Struct("<IiQ")  # len, error (negative errno), unique
READ_IN = struct.Struct("<QQII")  # fh, offset, size, read_flags (lock_owner, flags, padding follow)
GETXATTR_IN = struct.Struct("<II")  # size, padding; the name follows, NUL-terminated
SIZE_OUT = struct.Struct("<II")  # fuse_getxattr_out: size, padding
ATTR = struct.Struct("<QQQqqqIIIIIIIII4x")  # fuse_attr: 88 bytes (the last u32 is flags, 0)
ENTRY_HEAD = struct.Struct("<QQQQII")  # fuse_entry_out before its attr: nodeid, generation, valid s, attr s, ns, ns
ATTR_OUT_HEAD = struct.Struct("<QII")  # fuse_attr_out before its attr: attr_valid, attr_valid_nsec, dummy
DIRENT = struct.Struct("<QQII")  # ino, off (of the next entry), namelen, type
STATFS_OUT = struct.Struct("<QQQQQIIII24x")  # blocks bfree bavail files ffree bsize namelen frsize padding spare[6]


def attr(node: Node) -> bytes:
    """``fuse_attr`` for ``node`` (atime and ctime show the mtime)."""
    sec, ns = divmod(node.mtime_ns, 1_000_000_000)
    return ATTR.pack(
        node.ino, node.size, node.blocks, sec, sec, sec, ns, ns, ns,
        node.mode, node.nlink, node.uid, node.gid, node.rdev & 0xFFFFFFFF, BLKSIZE,
    )  # fmt: skip


def entry(node: Node | None, timeout: int) -> bytes:
    """``fuse_entry_out`` for ``node``; None: a negative entry the kernel may cache for ``timeout`` s."""
    if node is None:
        return ENTRY_HEAD.pack(0, 0, timeout, 0, 0, 0) + bytes(ATTR.size)
    return ENTRY_HEAD.pack(node.ino, 0, timeout, timeout, 0, 0) + attr(node)


def attr_out(node: Node, timeout: int) -> bytes:
    return ATTR_OUT_HEAD.pack(timeout, 0, 0) + attr(node)


def dirent(ino: int, next_off: int, name: bytes, mode: int) -> bytes:
    """One ``fuse_dirent`` padded to 8 bytes."""
    body = DIRENT.pack(ino, next_off, len(name), stat.S_IFMT(mode) >> 12) + name
    return body + b"\0" * (-len(body) % 8)


def statfs(blocks: int, files: int) -> bytes:
    return STATFS_OUT.pack(blocks, 0, 0, files, 0, BLKSIZE, 255, 4096, 0)
