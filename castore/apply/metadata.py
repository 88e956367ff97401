"""Bringing an inode's owner, mode, xattrs and mtime to a manifest entry's, changing only what differs."""

from __future__ import annotations

import os
import stat

from castore import fs
from castore.apply.scan import TreeChanged
from castore.manifest.model import Device, Directory, NamedPipe, RegularFile, Resource, Socket, Symlink

_IFMT = {
    RegularFile: stat.S_IFREG,
    Directory: stat.S_IFDIR,
    Symlink: stat.S_IFLNK,
    NamedPipe: stat.S_IFIFO,
    Socket: stat.S_IFSOCK,
}


def ifmt(w: Resource) -> int:
    if isinstance(w, Device):
        return stat.S_IFCHR if w.char else stat.S_IFBLK
    return _IFMT[type(w)]


def set_metadata(fd: int, w: Resource, *, dfd: int = -1, name: str = "") -> bool:
    """Bring owner, mode, xattrs and mtime of the inode behind ``fd`` to ``w``'s; True if anything changed.

    ``fd`` is an O_PATH (or any) fd whose type was checked: changes go through
    /proc/self/fd/N, which names that inode itself, never a path that could
    have been swapped. A symlink is changed by name in ``dfd`` with the
    no-follow calls (its mode is not changed: Linux has none to change).
    Order: chown, chmod (chown clears setuid and capabilities), xattrs
    (security.capability last), mtime. Only what differs is changed.
    """
    with fs.named(w.path):
        return _set_metadata(fd, w, dfd, name)


def _set_metadata(fd: int, w: Resource, dfd: int, name: str) -> bool:
    is_link = isinstance(w, Symlink)
    if is_link:
        where, follow = fs.proc_path(dfd, name), False
        st = os.lstat(name, dir_fd=dfd)
        if not stat.S_ISLNK(st.st_mode):
            raise TreeChanged(f"{w.path}: changed type during apply; rerun apply")
    else:
        where, follow = f"/proc/self/fd/{fd}", True
        st = os.fstat(fd)
    changed = False
    uid = st.st_uid if w.uid < 0 else w.uid
    gid = st.st_gid if w.gid < 0 else w.gid
    chowned = (st.st_uid, st.st_gid) != (uid, gid)
    if chowned:
        os.chown(where, uid, gid, follow_symlinks=follow)
        changed = True
    if not is_link and (chowned or stat.S_IMODE(st.st_mode) != w.perm):
        os.chmod(where, w.perm)
        changed = True
    have_x = fs.read_xattrs(where, follow=follow)
    if have_x != w.xattrs:
        keep = dict(w.xattrs)
        for n, _ in have_x:
            if n not in keep:
                os.removexattr(where, n, follow_symlinks=follow)
        for n, v in sorted((kv for kv in w.xattrs if kv not in have_x), key=lambda kv: kv[0] == "security.capability"):
            fs.set_xattr(where, n, v, follow=follow)
        changed = True
    if w.mtime_ns is not None and (changed or st.st_mtime_ns != w.mtime_ns):
        os.utime(where, ns=(w.mtime_ns, w.mtime_ns), follow_symlinks=follow)
        changed = True
    return changed
