"""The applier: brings the paths of a (sub-)manifest to what it says, in place, changing only what differs.

Given what ROOT holds (a ``Scan``, from ``castore.apply.scan``), every path is
brought to what the manifest says, in this order:

1. leftovers of an interrupted apply (``.continuity-apply-*``), whiteouts,
   and, with ``delete``, entries the manifest does not list;
2. directories, top-down (a symlink standing where a directory belongs is
   replaced as an explicit, logged step, never followed);
3. files, symlinks, devices, fifos (and sockets when asked): new content is
   written to a temporary name in the same directory through the directory fd
   and renamed over the old entry; an entry whose content is right keeps its
   inode and gets its metadata fixed in place (unless the inode has links
   outside ROOT: then it gets a new one); hardlink groups are relinked;
4. directory metadata, bottom-up, last.

Nothing is written, chmod'ed, chown'ed or given xattrs through a symlink:
directories are opened component by component with O_NOFOLLOW, leaves are
created with O_EXCL/O_NOFOLLOW, and metadata is changed through an O_PATH fd
whose type and inode were checked (or with the no-follow variants on symlinks).
A crash at any point leaves ROOT between the old and the new state plus
temporary names that the next apply removes: rerunning converges.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

from castore import fs
from castore.apply.leaves import LeafPhases
from castore.apply.options import TMP_PREFIX, ApplyOptions, ApplyReport, is_ignored, same_content
from castore.apply.options import parents as _parents
from castore.apply.options import split_path as _split
from castore.apply.scan import Scan, TreeChanged
from castore.apply.sources import Source
from castore.errors import UnsafeInput
from castore.faults import crashpoint
from castore.fs import RENAME_EXCHANGE, DirFds
from castore.fs.tree import remove_contents
from castore.manifest.model import (
    Directory,
    Manifest,
    Symlink,
    Whiteout,
)
from castore.materialize import Writer

__all__ = ["TMP_PREFIX", "Applier", "ApplyOptions", "ApplyReport", "same_content"]


class Applier(LeafPhases):
    """One apply's changes to ROOT: the four phases, run in order by ``castore.apply.run``."""

    def __init__(
        self, root: str, root_fd: int, manifest: Manifest, source: Source, writer: Writer, opts: ApplyOptions
    ) -> None:
        self.root = root
        self.root_fd = root_fd
        self.m = manifest
        self.want = manifest.by_path()
        self.source = source
        self.writer = writer
        self.opts = opts
        self.dirs = DirFds(root_fd)
        self.report = ApplyReport()
        self.touched: set[str] = set()  # directories whose entries changed (mtime to restore)
        self.made_dirs: set[str] = set()
        self.children: dict[str, list[str]] | None = None  # scanned parent -> entries, built when needed
        self.euid = os.geteuid()
        self.can_reflink = [opts.link in ("auto", "reflink")]
        self.local_only: set[str] = set()  # digests the store lacks but ROOT holds
        self.intact: set[str] = set()  # scanned paths found exactly as wanted and left alone
        self.scan: Scan
        # Other filesystems mounted below ROOT (outermost only): never entered, changed or removed.
        found = ["/" + m for m in fs.mounts_below(root_fd)]
        self.mounts = {m for m in found if not any(m.startswith(o + "/") for o in found)}
        self.mount_parents = {q for m in self.mounts for q in _parents(m)}

    def in_mount(self, path: str) -> bool:
        return any(path.startswith(m + "/") for m in self.mounts)

    def check_mounts(self) -> None:
        """Before any change: refuse a manifest that would change a mount point below ROOT or
        anything on it; warn about those a deletion or whiteout leaves in place."""
        for m in sorted(self.mounts, key=os.fsencode):
            where = f"{self.root}{m}: another filesystem is mounted there"
            w = self.want.get(m)
            below = next(
                (p for p, r in self.want.items() if p.startswith(m + "/") and not isinstance(r, Whiteout)), None
            )
            if below is not None:
                raise UnsafeInput(f"{where}; apply does not change it, but the manifest lists {below}")
            if w is not None and not isinstance(w, (Directory, Whiteout)):
                raise UnsafeInput(f"{where}; apply does not replace it, but the manifest has a {w.kind} there")
            parent, name = _split(m)
            is_dir = stat.S_ISDIR(os.lstat(name, dir_fd=self.dir_fd(parent)).st_mode)
            if isinstance(w, Directory) and not is_dir:
                raise UnsafeInput(f"{where}; apply does not replace it, but the manifest has a directory there")
            for q in _parents(m):
                a = self.want.get(q)
                if a is not None and not isinstance(a, (Directory, Whiteout)):
                    raise UnsafeInput(f"{where}; apply does not remove it, but the manifest has a {a.kind} at {q}")
            gone = isinstance(w, Whiteout) or any(isinstance(self.want.get(q), Whiteout) for q in _parents(m))
            if gone or (w is None and self.opts.delete):
                print(f"continuity: warning: {where}; left in place, not deleted", file=sys.stderr)

    # -- helpers

    def log(self, msg: str) -> None:
        if self.opts.log is not None:
            self.opts.log(msg)

    def dir_fd(self, rel: str) -> int:
        try:
            return self.dirs.get(rel)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                raise TreeChanged(f"/{rel}: not a directory any more (changed during apply; rerun apply)") from exc
            raise

    def forget_dir(self, rel: str) -> None:
        """Drop cached fds at or below ``rel`` (it is being removed or replaced)."""
        for k in [k for k in self.dirs.cache if k == rel or k.startswith(rel + "/")]:
            os.close(self.dirs.cache.pop(k))

    def detach(self, path: str) -> None:
        """``path`` no longer names the inode it named (for hardlink bookkeeping)."""
        g = self.scan.groups.pop(path, None)
        if g is not None:
            g.discard(path)
        self.scan.by_path.pop(path, None)
        self.scan.clean.discard(path)

    def remove(self, path: str) -> None:
        """Remove whatever ``path`` names (a directory with its contents); never follows."""
        parent, name = _split(path)
        dfd = self.dir_fd(parent)
        try:
            os.unlink(name, dir_fd=dfd)
        except IsADirectoryError:
            self._remove_dir(dfd, name, parent)
        except FileNotFoundError:
            pass
        except PermissionError as exc:
            if exc.errno != errno.EISDIR:
                raise
            self._remove_dir(dfd, name, parent)
        self.touched.add(parent)
        was_dir = isinstance(self.scan.by_path.get(path), Directory)
        self.detach(path)
        if was_dir:
            self.detach_below(path)

    def detach_below(self, path: str) -> None:
        """Forget every scanned entry below ``path`` (its directory is gone)."""
        if self.children is None:
            self.children = {}
            for p in self.scan.by_path:
                self.children.setdefault(p.rsplit("/", 1)[0], []).append(p)
        stack = [path]
        while stack:
            for c in self.children.pop(stack.pop(), ()):
                stack.append(c)
                self.detach(c)

    def _remove_dir(self, dfd: int, name: str, parent: str) -> None:
        rel = f"{parent}/{name}" if parent else name
        self.forget_dir(rel)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            if fs.is_mount_root(fd, os.fstat(dfd).st_dev):
                raise UnsafeInput(f"{self.root}/{rel}: another filesystem is mounted there; apply does not remove it")
            kept = remove_contents(fd)
        finally:
            os.close(fd)
        if kept:  # mounted since the scan
            raise UnsafeInput(
                f"{self.root}/{rel}/{kept[0]}: another filesystem is mounted there; apply does not remove it"
            )
        os.rmdir(name, dir_fd=dfd)

    def install(self, dfd: int, tmp: str, path: str) -> None:
        """Rename ``tmp`` over ``path`` (same directory); a directory there is swapped out and removed."""
        parent, name = _split(path)
        try:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except (IsADirectoryError, OSError) as exc:
            if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise
            self.forget_dir(f"{parent}/{name}" if parent else name)
            fs.renameat2(dfd, tmp, dfd, name, RENAME_EXCHANGE)
            self._remove_dir(dfd, tmp, parent)
        self.touched.add(parent)
        had = self.scan.by_path.get(path)
        self.detach(path)
        if isinstance(had, Directory):
            self.detach_below(path)

    # -- phase 1: leftovers, whiteouts, extras

    def deletions(self) -> None:
        removed: set[str] = set()
        implicit: set[str] = set()  # parents of wanted entries that the manifest does not list
        for p in self.want:
            q = p.rsplit("/", 1)[0]
            while q and q not in implicit and q not in self.want:
                implicit.add(q)
                q = q.rsplit("/", 1)[0]
        hollow: set[str] = set()  # directories kept (they hold a mount point), emptied of the rest
        for p in sorted(self.scan.by_path, key=os.fsencode):
            if removed and any(q in removed for q in _parents(p)):
                continue
            if self.mounts and (p in self.mounts or self.in_mount(p)):
                continue  # never deleted, never entered (warned about by check_mounts)
            h = self.scan.by_path[p]
            w = self.want.get(p)
            reason = ""
            if w is None:
                if p.rsplit("/", 1)[1].startswith(TMP_PREFIX):
                    reason = "leftover of an interrupted apply"
                elif not is_ignored(h, self.opts) and not (p in implicit and isinstance(h, Directory)):
                    if self.opts.delete:
                        reason = "not in the manifest"
                    elif not (removed and any(q in removed for q in _parents(p))):
                        self.report.extra += 1  # left in place: the caller says so
                        self.log(f"E {p} (not in the manifest; kept without --delete)")
            elif isinstance(w, Whiteout):
                reason = "whiteout"
            if not reason and w is None and hollow and p.rsplit("/", 1)[0] in hollow:
                reason = "in a removed directory"
            if reason and p in self.mount_parents:
                self.log(f"K {p} ({reason}; kept: holds a mount point)")
                hollow.add(p)
                continue
            if reason:
                self.log(f"D {p} ({reason})")
                self.remove(p)
                removed.add(p)
                self.report.deleted += 1
        crashpoint("apply-after-deletes")

    # -- phase 2: directories

    def directories(self) -> None:
        needed: set[str] = set()
        for p, w in self.want.items():
            if isinstance(w, Whiteout) or is_ignored(w, self.opts):
                continue
            # Every path added comes with all its parents, so stop at the first one known.
            q = p if isinstance(w, Directory) else p.rsplit("/", 1)[0]
            while q and q not in needed:
                needed.add(q)
                q = q.rsplit("/", 1)[0]
        for p in sorted(needed, key=os.fsencode):
            if p in self.mounts:
                continue  # a directory already (check_mounts), on another filesystem: left as it is
            h = self.scan.by_path.get(p)
            if p in self.scan.clean:
                h = self.want[p]
            if isinstance(h, Directory):
                if self.euid != 0 and h.perm & 0o300 != 0o300:
                    fd = self.dir_fd(p[1:])
                    os.fchmod(fd, h.perm | 0o700)
                    self.touched.add(p[1:])
                continue
            parent, name = _split(p)
            dfd = self.dir_fd(parent)
            if h is not None:
                if isinstance(h, Symlink):
                    self.opts.note(
                        f"{p}: replacing a symlink (-> {h.target}) with a directory; the symlink is not followed"
                    )
                self.log(f"R {p} ({h.kind} -> dir)")
                self.remove(p)
                self.report.replaced += 1
            else:
                self.log(f"A {p}/")
                self.report.created += 1
            try:
                os.mkdir(name, 0o700, dir_fd=dfd)
            except FileExistsError:
                raise TreeChanged(f"{p}: appeared during apply; rerun apply") from None
            self.made_dirs.add(p)
            self.touched.add(parent)
