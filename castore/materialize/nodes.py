"""Creating the resources of a manifest below a directory fd, and setting their metadata in the safe
order (castore.fs.attrs): names are single components created with O_EXCL/O_NOFOLLOW, so nothing
is written through a symlink or outside the tree."""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

from castore import fs
from castore.errors import ResourceLimit, UnsafeInput
from castore.fs.attrs import creation_mode, set_fd_attrs, set_name_attrs
from castore.manifest.model import Device, Directory, Entry, NamedPipe, RegularFile, Resource, Socket, Symlink, Whiteout
from castore.materialize.options import Options
from castore.store import Store
from castore.store.links import LinkRef, resource_of

#: Symlink targets of fewer bytes live in the inode on ext4 (a "fast" symlink), XFS and btrfs: metadata.
#: Longer ones may be written as a data block (ext4 through the page cache before Linux 6.3): data.
_INLINE_SYMLINK = 60
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class NodeWriter:
    """The resource-kind half of a Writer (castore.materialize.writer): files, directories, the rest."""

    store: Store | None
    opts: Options
    euid: int
    egid: int
    noted_link_fallback: bool
    noted_xattr_skip: bool
    umask_zero: bool
    needs_sync: bool

    if TYPE_CHECKING:

        def link_object(
            self, dir_fd: int, name: str, f: RegularFile | LinkRef, st: os.stat_result | None = None
        ) -> None: ...

        def write_content(self, r: RegularFile, out_fd: int) -> None: ...

    def _skipped(self, names: list[str], r: Entry) -> None:
        if names and not self.noted_xattr_skip:
            self.noted_xattr_skip = True
            self.opts.note(
                f"{r.path}: xattrs {', '.join(names)} have no Linux namespace; "  # type: ignore
                "not set (further ones not reported)"
            )

    def note_link_fallback(self, exc: OSError) -> None:
        if not self.noted_link_fallback:
            self.opts.note(f"hardlinks impossible here ({exc.strerror}); copying instead")  # type: ignore
            self.noted_link_fallback = True

    def file_metadata(self, fd: int, r: Entry, *, mode_set: bool = False) -> None:
        """Owner, mode (unless ``mode_set`` at creation), xattrs, mtime on an open file (the safe order)."""
        self._skipped(set_fd_attrs(fd, r, (self.euid, self.egid), r.xattrs, mode_set=mode_set), r)

    def open_new_file(self, dir_fd: int, name: str, r: RegularFile) -> tuple[int, bool]:
        """A new file ``name`` open for writing, and whether it already has r's mode: created with
        it when the umask is known to be 0 (``umask_zero``) and r's mode has no setuid, setgid or
        sticky bit (one fchmod a file less; the directory it is made in is private while it fills)."""
        mode = creation_mode(r.perm) if self.umask_zero else None
        fd = os.open(name, _NEW_FILE, 0o600 if mode is None else mode, dir_fd=dir_fd)
        return fd, mode is not None

    def path_metadata(self, dir_fd: int, name: str, r: Entry, *, is_link: bool = False) -> None:
        """Owner, mode, xattrs, mtime on a name (never followed)."""
        self._skipped(set_name_attrs(dir_fd, name, r, (self.euid, self.egid), is_link=is_link), r)

    def create_file(self, dir_fd: int, name: str, f: RegularFile | LinkRef, st: os.stat_result | None = None) -> None:
        """A regular file at ``name``: linked to its store object (``st``: the object's stat, when the
        caller just took it), else written."""
        if self.opts.link == "hardlink" and self.store is not None:
            try:
                self.link_object(dir_fd, name, f, st)
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                    raise
                self.note_link_fallback(exc)
        r = resource_of(f)
        fd, mode_set = self.open_new_file(dir_fd, name, r)
        try:
            self.write_content(r, fd)
            self.file_metadata(fd, r, mode_set=mode_set)
        finally:
            os.close(fd)

    def create_other(self, dir_fd: int, name: str, r: Resource, path: str) -> bool:
        """Create a non-regular, non-directory resource; False when skipped by policy."""
        if isinstance(r, Symlink):
            target = r.target
            if self.opts.rewrite_absolute_symlinks and target.startswith("/"):
                target = relative_target(path, target)
            os.symlink(target, name, dir_fd=dir_fd)
            if len(os.fsencode(target)) >= _INLINE_SYMLINK:  # its target may be written as data
                self.needs_sync = True
            self.path_metadata(dir_fd, name, r, is_link=True)
        elif isinstance(r, Device):
            if self.opts.devices == "skip":
                return False
            if self.opts.devices == "check":
                return False
            kind = stat.S_IFCHR if r.char else stat.S_IFBLK
            try:
                os.mknod(name, kind | 0o600, os.makedev(r.major, r.minor), dir_fd=dir_fd)
            except PermissionError as exc:
                raise UnsafeInput(f"{path}: cannot create a device node without privilege; use --devices skip") from exc
            self.path_metadata(dir_fd, name, r)
        elif isinstance(r, NamedPipe):
            os.mkfifo(name, 0o600, dir_fd=dir_fd)
            self.path_metadata(dir_fd, name, r)
        elif isinstance(r, Socket):
            if not self.opts.sockets:
                return False
            _make_socket(dir_fd, name)
            self.path_metadata(dir_fd, name, r)
        elif isinstance(r, Whiteout):
            if self.opts.whiteouts == "overlay":
                os.mknod(name, stat.S_IFCHR | 0o000, 0, dir_fd=dir_fd)
                self.path_metadata(dir_fd, name, r)  # owner, then its permission bits
            elif self.opts.whiteouts == "oci":
                fd = os.open(".wh." + name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o000, dir_fd=dir_fd)
                os.close(fd)
                self.path_metadata(dir_fd, ".wh." + name, r)
            else:
                return False
        else:
            raise UnsafeInput(f"{path}: cannot create a {r.kind}")
        return True

    def dir_metadata(self, dir_fd: int, name: str, r: Directory) -> None:
        xattrs = r.xattrs
        if r.opaque and self.opts.whiteouts == "overlay":
            xattrs = tuple(sorted(xattrs + (("trusted.overlay.opaque", b"y"),)))
        elif r.opaque and self.opts.whiteouts == "oci":
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                os.close(os.open(".wh..wh..opq", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0, dir_fd=fd))
            finally:
                os.close(fd)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            self._skipped(set_fd_attrs(fd, r, (self.euid, self.egid), xattrs), r)
        finally:
            os.close(fd)


def relative_target(link_path: str, target: str) -> str:
    """An absolute in-tree target made relative to the link's directory."""
    base = os.path.dirname(link_path)
    rel = os.path.relpath(os.path.normpath(target), base)
    return rel


def _make_socket(dir_fd: int, name: str) -> None:
    import socket

    path = fs.proc_path(dir_fd, name)
    if len(os.fsencode(path)) > 100:
        raise ResourceLimit(f"socket name too long: {name}")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with fs.named(name):
            s.bind(path)
    finally:
        s.close()
