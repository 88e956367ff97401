"""Operating-system specific file code, chosen once for this platform."""

from castore.fs.dirfds import DirFds
from castore.fs.linux import (
    COPY_FALLBACK,
    copy_fd,
    copy_fd_at,
    data_holes,
    named,
    open_beneath,
    proc_path,
    read_xattrs,
    reflink,
    renameat2,
    set_xattrs,
    start_writeback,
    syncfs,
    syncfs_every,
    syncfs_in_background,
    write_new,
)

__all__ = [
    "COPY_FALLBACK",
    "DirFds",
    "copy_fd",
    "copy_fd_at",
    "data_holes",
    "named",
    "open_beneath",
    "proc_path",
    "read_xattrs",
    "reflink",
    "renameat2",
    "set_xattrs",
    "start_writeback",
    "syncfs",
    "syncfs_every",
    "syncfs_in_background",
    "write_new",
]
