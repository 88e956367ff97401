"""apply's phases 3 and 4: files, symlinks, devices, fifos (and sockets), written under a
temporary name and renamed over the old entry, or fixed in place; then directory metadata,
bottom-up. A mixin of ``castore.apply.changes.Applier``."""

from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import TYPE_CHECKING

from castore import fs, progress
from castore.apply.metadata import ifmt, set_metadata
from castore.apply.options import META_ATTRS, TMP_PREFIX, ApplyOptions, ApplyReport, same_content
from castore.apply.options import split_path as _split
from castore.apply.scan import Scan, TreeChanged
from castore.apply.sources import DirSource, Source, copy_verified, digest_or_size
from castore.digest import EMPTY_DIGEST
from castore.errors import IntegrityError, NotFound
from castore.faults import crashpoint
from castore.fs import DirFds
from castore.manifest.diff import compare
from castore.manifest.model import Device, Directory, Manifest, RegularFile, Resource, Socket, Whiteout
from castore.materialize import Writer


class LeafPhases:
    """Phases 3 and 4 of an Applier (the attributes are the Applier's)."""

    root_fd: int
    m: Manifest
    want: dict[str, Resource]
    source: Source
    writer: Writer
    opts: ApplyOptions
    dirs: DirFds
    report: ApplyReport
    touched: set[str]
    made_dirs: set[str]
    euid: int
    can_reflink: list[bool]
    local_only: set[str]
    intact: set[str]
    scan: Scan
    mounts: set[str]

    if TYPE_CHECKING:

        def log(self, msg: str) -> None: ...

        def dir_fd(self, rel: str) -> int: ...

        def in_mount(self, path: str) -> bool: ...

        def install(self, dfd: int, tmp: str, path: str) -> None: ...

        def remove(self, path: str) -> None: ...

        def detach(self, path: str) -> None: ...

    # -- phase 3: everything else

    def group_ok(self, p: str, w: Resource) -> bool:
        """The inode at ``p`` may be changed in place: no path outside ``w.paths`` shares it."""
        g = self.scan.groups.get(p)
        return g is not None and g <= set(w.paths)

    def bytes_to_write(self) -> int:
        """The bytes of the regular files phase 3 will write (not in place already): its progress total."""
        total = 0
        for w in self.m.files():
            if w.path in self.scan.clean:
                continue
            for p in w.paths:
                h = self.scan.by_path.get(p)
                if h is not None and same_content(w, h) and self.group_ok(p, w):
                    break
            else:
                total += w.size
        return total

    def leaves(self) -> None:
        done = 0
        for w in self.m.resources:
            if isinstance(w, (Directory, Whiteout)):
                continue
            if isinstance(w, Device) and self.opts.devices != "create":
                if self.opts.devices == "check":
                    self.check_device(w)
                continue
            if isinstance(w, Socket) and not self.opts.sockets:
                continue
            self.leaf(w)
            done += 1
            if done == 100:
                crashpoint("apply-mid-leaves")

    def check_device(self, w: Device) -> None:
        for p in w.paths:
            if p in self.scan.clean:
                continue  # exactly as wanted (trusted from ROOT's record by scan_changes: not in by_path)
            h = self.scan.by_path.get(p)
            if h is None or not same_content(w, h):
                found = "nothing" if h is None else h.kind
                if isinstance(h, Device):
                    found = f"{'c' if h.char else 'b'} {h.major}:{h.minor}"
                self.report.problems.append(
                    f"{p}: expected device {'c' if w.char else 'b'} {w.major}:{w.minor}, found {found}"
                )

    def leaf(self, w: Resource) -> None:
        if w.path in self.scan.clean:
            self.report.unchanged += 1
            return
        anchor = None
        for p in w.paths:
            h = self.scan.by_path.get(p)
            if h is not None and same_content(w, h) and self.group_ok(p, w):
                anchor = p
                break
        intact = False
        if anchor is not None:
            h = self.scan.by_path[anchor]
            diffs = [d.attr for d in compare(anchor, w, h) if d.attr in META_ATTRS and d.attr not in self.opts.ignore]
            if not diffs:
                self.report.unchanged += 1
                intact = True
            elif self.fix_metadata(anchor, w, h):
                self.log(f"m {anchor} ({', '.join(diffs)})")
                self.report.metadata += 1
            else:  # its inode has links outside ROOT (a store object, a user's link): a new inode
                self.log(f"M {anchor} ({', '.join(diffs)}; its inode is shared outside ROOT: not changed in place)")
                self.create(anchor, w)
        else:
            anchor = w.paths[0]
            self.create(anchor, w)
        group = self.scan.groups.get(anchor, set())
        for q in w.paths:
            if q == anchor or q in group:
                continue
            self.link(anchor, q)
            intact = False
        if intact:
            self.intact.update(w.paths)

    def link(self, anchor: str, q: str) -> None:
        ap, an = _split(anchor)
        qp, _ = _split(q)
        afd, qfd = self.dir_fd(ap), self.dir_fd(qp)
        tmp = TMP_PREFIX + secrets.token_hex(6)
        os.link(an, tmp, src_dir_fd=afd, dst_dir_fd=qfd, follow_symlinks=False)
        self.log(f"L {q} => {anchor}")
        self.install(qfd, tmp, q)
        g = self.scan.groups.setdefault(anchor, {anchor})
        g.add(q)
        self.scan.groups[q] = g
        self.report.linked += 1

    def create(self, path: str, w: Resource) -> None:
        parent, _ = _split(path)
        dfd = self.dir_fd(parent)
        tmp = TMP_PREFIX + secrets.token_hex(6)
        had = self.scan.by_path.get(path)
        try:
            if isinstance(w, RegularFile):
                self.create_file(dfd, tmp, w)
                progress.advance(w.size)
            else:
                self.writer.create_other(dfd, tmp, w, path)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
        self.install(dfd, tmp, path)
        if had is None:
            self.log(f"A {path}")
            self.report.created += 1
        else:
            self.log(f"M {path}")
            self.report.replaced += 1
        self.scan.groups[path] = {path}

    def create_file(self, dfd: int, tmp: str, w: RegularFile) -> None:
        if self.opts.move and w.size and isinstance(self.source, DirSource) and self.move_file(dfd, tmp, w):
            return
        src = self.source.open(w) if w.size else None
        if src is None and w.size and self.writer.store is not None and w.digest not in self.local_only:
            self.writer.create_file(dfd, tmp, w)
            return
        if src is None and w.size:
            src = self.local_content(w)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            if w.size == 0:
                if w.digest != EMPTY_DIGEST:
                    raise IntegrityError(f"{w.path}: empty file with a non-empty digest")
            elif src is None:
                raise NotFound(f"{w.path}: content {w.digest} not found in the source")
            else:
                sfd, trusted = src
                try:
                    copy_verified(sfd, fd, w, self.opts.verify and not trusted, self.can_reflink)
                finally:
                    os.close(sfd)
            self.file_meta(fd, w)
        finally:
            os.close(fd)

    def local_content(self, w: RegularFile) -> tuple[int, bool] | None:
        """An fd on a file of ROOT that held ``w``'s content when scanned (verified again when read)."""
        for p in self.scan.local.get(w.digest, ()):
            try:
                fd = fs.open_beneath(self.root_fd, p[1:], os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                continue
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return fd, False
            os.close(fd)
        return None

    def move_file(self, dfd: int, tmp: str, w: RegularFile) -> bool:
        """--move: rename the source file to ``tmp``; False when impossible (other fs, missing)."""
        assert isinstance(self.source, DirSource)
        found = self.source.lookup(w)
        if found is None:
            return False
        sfd, spath = found
        os.close(sfd)
        sparent, sname = _split(spath)
        try:
            pfd = fs.open_beneath(self.source.fd, sparent or ".", os.O_PATH | os.O_DIRECTORY)
        except OSError:
            return False
        try:
            try:
                os.rename(sname, tmp, src_dir_fd=pfd, dst_dir_fd=dfd)
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.ENOENT):
                    return False
                raise
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
            try:
                st = os.fstat(fd)
                ok = stat.S_ISREG(st.st_mode) and (not self.opts.verify or digest_or_size(fd, w.size) == w.digest)
                if not ok:
                    os.rename(tmp, sname, src_dir_fd=dfd, dst_dir_fd=pfd)
                    raise IntegrityError(f"{w.path}: source file {spath} does not match {w.digest}")
                for n, _ in fs.read_xattrs(fd):
                    if n not in dict(w.xattrs):
                        os.removexattr(fd, n)
                self.file_meta(fd, w)
            finally:
                os.close(fd)
        finally:
            os.close(pfd)
        return True

    def file_meta(self, fd: int, w: Resource) -> None:
        self.writer.file_metadata(fd, w)

    def fix_metadata(self, path: str, w: Resource, h: Resource) -> bool:
        """Owner, mode, xattrs, mtime of an existing entry, in place, never through a symlink.

        False, with nothing changed, when the inode has more links than the
        paths of ROOT known to share it: changing it would change a file
        outside ROOT too (a hardlink checkout's store object, another tree).
        """
        parent, name = _split(path)
        dfd = self.dir_fd(parent)
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            raise TreeChanged(f"{path}: vanished during apply; rerun apply") from None
        try:
            st = os.fstat(fd)
            if stat.S_IFMT(st.st_mode) != ifmt(w) or (st.st_dev, st.st_ino) != self.scan.inode.get(path):
                raise TreeChanged(f"{path}: changed type during apply; rerun apply")
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > len(self.scan.groups.get(path, ())):
                return False
            set_metadata(fd, w, dfd=dfd, name=name)
            return True
        finally:
            os.close(fd)

    # -- phase 4: directory metadata

    def dir_metadata(self) -> None:
        wanted_dirs = {p for p, w in self.want.items() if isinstance(w, Directory)}
        todo = wanted_dirs | self.made_dirs | {"/" + t for t in self.touched if t}
        for p in sorted(todo, key=lambda s: (-s.count("/"), os.fsencode(s))):
            if p in self.mounts:
                continue
            w = self.want.get(p)
            h = self.scan.by_path.get(p)
            if p not in wanted_dirs:
                if p in self.made_dirs:  # implicit parent
                    os.chmod(_split(p)[1], 0o755, dir_fd=self.dir_fd(_split(p)[0]))
                continue
            assert isinstance(w, Directory)
            changed = p in self.made_dirs or p[1:] in self.touched
            if not changed and p in self.scan.clean:
                continue
            if h is not None and not changed:
                diffs = [d.attr for d in compare(p, w, h) if d.attr in META_ATTRS and d.attr not in self.opts.ignore]
                if not diffs:
                    continue
                self.log(f"m {p}/ ({', '.join(diffs)})")
                self.report.metadata += 1
            parent, name = _split(p)
            dfd = self.dir_fd(parent)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            try:
                set_metadata(fd, w)
            finally:
                os.close(fd)
