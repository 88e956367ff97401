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

import dataclasses
import errno
import os
import secrets
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from castore import fs, progress
from castore.apply.scan import Scan, TreeChanged
from castore.apply.sources import DirSource, Source, copy_verified, hash_fd
from castore.digest import EMPTY_DIGEST
from castore.errors import IntegrityError, NotFound, UnsafeInput
from castore.faults import crashpoint
from castore.fs import DirFds
from castore.fs.linux import RENAME_EXCHANGE
from castore.fs.tree import remove_contents
from castore.manifest.diff import compare
from castore.manifest.model import (
    Device,
    Directory,
    Manifest,
    NamedPipe,
    RegularFile,
    Resource,
    Socket,
    Symlink,
    Whiteout,
)
from castore.materialize import Writer
from castore.textsafe import note

TMP_PREFIX = ".continuity-apply-"
META_ATTRS = frozenset({"mode", "uid", "gid", "xattr", "mtime"})


def _stderr_note(msg: str) -> None:
    note(msg)


@dataclass
class ApplyOptions:
    """How apply changes ROOT."""

    delete: bool = False  # remove entries the manifest does not list
    verify: bool = True  # hash content as it is written (--disable-digest turns it off)
    devices: str = "create"  # create | check | skip
    sockets: bool = False
    rewrite_absolute_symlinks: bool = False
    link: str = "auto"  # content from the store: auto | reflink | copy | hardlink
    move: bool = False  # --source DIR: rename files out of the source when on the same fs
    rehash: bool = False  # ignore ROOT's record and the stat cache: walk ROOT, hash every candidate file
    sync: bool = False  # syncfs at the end (a rerun converges anyway, so off by default, as rsync)
    note: Callable[[str], None] = _stderr_note
    log: Callable[[str], None] | None = None  # one line per change (verbose)
    ignore: frozenset[str] = frozenset()  # --ignore-attr: not applied (materialize.WRITE_IGNORABLE)


@dataclass
class ApplyReport:
    """What apply did."""

    created: int = 0
    replaced: int = 0
    metadata: int = 0
    linked: int = 0
    deleted: int = 0
    unchanged: int = 0
    hashed: int = 0
    trusted: int = 0  # paths trusted unchanged from ROOT's record of the last apply (not scanned)
    extra: int = 0  # entries of ROOT the manifest does not list, left in place (no --delete)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------ applying


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path[1:].rpartition("/")
    return parent, name


def _parents(path: str) -> Iterator[str]:
    parent = path.rsplit("/", 1)[0]
    while parent:
        yield parent
        parent = parent.rsplit("/", 1)[0]


def same_content(w: Resource, h: Resource) -> bool:
    """``h`` already has ``w``'s content (bytes, link target, device numbers): only metadata may differ."""
    if type(w) is not type(h):
        return False
    if isinstance(w, RegularFile):
        return h.size == w.size and h.digest == w.digest  # type: ignore[union-attr]
    if isinstance(w, Symlink):
        return h.target == w.target  # type: ignore[union-attr]
    if isinstance(w, Device):
        return (h.char, h.major, h.minor) == (w.char, w.major, w.minor)  # type: ignore[union-attr]
    return True


def _is_ignored(r: Resource, opts: ApplyOptions) -> bool:
    """Kinds this apply leaves alone: sockets unless asked, devices unless created."""
    if isinstance(r, Socket):
        return not opts.sockets
    if isinstance(r, Device):
        return opts.devices != "create"
    return False


class Applier:
    """One apply's changes to ROOT: the four phases, run in order by ``castore.apply.run``."""

    def __init__(self, root: str, root_fd: int, manifest: Manifest, source: Source, writer: Writer,
                 opts: ApplyOptions) -> None:
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
            below = next((p for p, r in self.want.items() if p.startswith(m + "/") and not isinstance(r, Whiteout)),
                         None)
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
            raise UnsafeInput(f"{self.root}/{rel}/{kept[0]}: another filesystem is mounted there; "
                              "apply does not remove it")
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
                elif not _is_ignored(h, self.opts) and not (p in implicit and isinstance(h, Directory)):
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
            if isinstance(w, Whiteout) or _is_ignored(w, self.opts):
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
                    self.opts.note(f"{p}: replacing a symlink (-> {h.target}) with a directory; "
                                   "the symlink is not followed")
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

    # -- phase 3: everything else

    def group_ok(self, p: str, w: Resource) -> bool:
        """The inode at ``p`` may be changed in place: no path outside ``w.paths`` shares it."""
        g = self.scan.groups.get(p)
        return g is not None and g <= set(w.paths)

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
                self.report.problems.append(f"{p}: expected device {'c' if w.char else 'b'} {w.major}:{w.minor}, "
                                            f"found {found}")

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
                ok = stat.S_ISREG(st.st_mode) and (not self.opts.verify or hash_fd(fd, w.size) == w.digest)
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
            if stat.S_IFMT(st.st_mode) != _ifmt(w) or (st.st_dev, st.st_ino) != self.scan.inode.get(path):
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


_IFMT = {RegularFile: stat.S_IFREG, Directory: stat.S_IFDIR, Symlink: stat.S_IFLNK, NamedPipe: stat.S_IFIFO,
         Socket: stat.S_IFSOCK}


def _ifmt(w: Resource) -> int:
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
