"""Whether a filesystem commits metadata operations in the order they were made.

A checkout made only of metadata (directories, hardlinks to durable objects, short symlinks, device
nodes) needs no ``syncfs`` before its staging directory is renamed into place when its filesystem
writes metadata through a journal or as copy-on-write transactions: a crash then keeps a prefix of
the operations, so a renamed TARGET has everything made before the rename (docs/design.md,
"## Checkout"). Everything else answers False, and the caller syncs.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

EXT_MAGIC = 0xEF53  # ext2, ext3 and ext4 alike: journaled only when jbd2 runs for the device
XFS_MAGIC = 0x58465342  # always logged, in order
BTRFS_MAGIC = 0x9123683E  # copy-on-write: a transaction commits whole, in order
_F_TYPE = ctypes.sizeof(ctypes.c_long)  # struct statfs starts with f_type, a long (__fsword_t)


def fs_magic(fd: int) -> int | None:
    """The f_type of the filesystem holding ``fd`` (fstatfs), or None when it cannot be read."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if _libc.fstatfs(fd, buf) != 0:
        return None
    return int.from_bytes(buf.raw[:_F_TYPE], "little")


def _jbd2_journaled(dev: int) -> bool:
    """A jbd2 journal runs for block device ``dev`` (/proc/fs/jbd2/<name>-<journal inode>)."""
    try:
        name = os.path.basename(os.readlink(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"))
        return any(e.startswith(name + "-") for e in os.listdir("/proc/fs/jbd2"))
    except OSError:
        return False


def metadata_in_order(fd: int) -> bool:
    """True when a crash keeps a prefix of the metadata operations made on ``fd``'s filesystem: XFS,
    btrfs, and ext3/ext4 with their jbd2 journal (data=ordered, journal or writeback alike: the
    journal orders metadata in each). False for anything else, ext2 and a journal-less ext4 among
    them, and when it cannot tell."""
    magic = fs_magic(fd)
    if magic in (XFS_MAGIC, BTRFS_MAGIC):
        return True
    if magic == EXT_MAGIC:
        return _jbd2_journaled(os.fstat(fd).st_dev)
    return False
