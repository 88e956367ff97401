"""Owner, mode, xattrs and times, in the one safe order: chown before chmod (chown clears the
setuid/setgid bits), xattrs after the mode (security.capability last: ``set_xattrs`` sorts it
there; a chown would clear it), times last (every other change moves them).
"""

from __future__ import annotations

import os
import stat
from typing import Protocol

from castore.errors import UnsafeInput
from castore.fs.linux import named, proc_path
from castore.fs.xattrs import set_xattrs


class Attrs(Protocol):
    """What is set: a manifest entry has these fields."""

    @property
    def path(self) -> str: ...
    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def perm(self) -> int: ...
    @property
    def xattrs(self) -> tuple[tuple[str, bytes], ...]: ...
    @property
    def mtime_ns(self) -> int | None: ...


def set_fd_attrs(
    fd: int, r: Attrs, owner: tuple[int, int], xattrs: tuple[tuple[str, bytes], ...], *, mode_set: bool = False
) -> list[str]:
    """Set r's owner (when not ``owner``, the caller's), mode, ``xattrs`` and mtime on an open fd.
    ``mode_set``: the file was created with its mode already (``creation_mode``), so no chmod.
    Returns the xattr names that have no Linux namespace (not set)."""
    if (r.uid, r.gid) != owner:
        os.fchown(fd, r.uid, r.gid)
    if not mode_set:
        os.fchmod(fd, r.perm)
    skipped = set_xattrs(fd, xattrs) if xattrs else []
    if r.mtime_ns is not None:
        os.utime(fd, ns=(r.mtime_ns, r.mtime_ns))
    return skipped


def creation_mode(perm: int) -> int | None:
    """The mode a new file may be created with so that no chmod has to follow (under umask 0):
    ``perm`` unless it holds setuid, setgid or sticky bits (those are set after the chown,
    which clears them); None then."""
    return None if perm & 0o7000 else perm


def set_name_attrs(dir_fd: int, name: str, r: Attrs, owner: tuple[int, int], *, is_link: bool = False) -> list[str]:
    """As set_fd_attrs on ``name`` in ``dir_fd``, never following it (a symlink keeps its mode).
    Returns the xattr names not set."""
    if (r.uid, r.gid) != owner:
        os.chown(name, r.uid, r.gid, dir_fd=dir_fd, follow_symlinks=False)
    if not is_link:
        # chmod(2) follows symlinks: go through an O_PATH fd opened with O_NOFOLLOW, so a
        # name swapped for a symlink since we created it (apply works in place) is never followed.
        pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if stat.S_ISLNK(os.fstat(pfd).st_mode):
                raise UnsafeInput(f"{r.path}: replaced by a symlink while it was written")
            with named(r.path):
                os.chmod(f"/proc/self/fd/{pfd}", r.perm)
        finally:
            os.close(pfd)
    skipped: list[str] = []
    if r.xattrs:
        with named(r.path):
            skipped = set_xattrs(proc_path(dir_fd, name), r.xattrs)
    if r.mtime_ns is not None:
        os.utime(name, ns=(r.mtime_ns, r.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
    return skipped
