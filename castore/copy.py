"""copy: duplicate a tree safely and fast, with no manifest round trip.

Everything is done through directory fds: source entries are opened with
O_NOFOLLOW relative to their parent's fd and checked against what readdir's
lstat said, so a symlink (dangling or not) is copied as a symlink and never
followed, and nothing outside SRC is ever read. Hardlinks, owners, modes,
xattrs (every namespace the caller may read and write), atimes and mtimes,
devices, fifos, sockets and sparse holes (SEEK_DATA/SEEK_HOLE) are kept.

File data is streamed: reflink (FICLONE), then copy_file_range, then
pread/pwrite, each falling back to the next on EXDEV, EPERM, ENOSYS, EINVAL
or EOPNOTSUPP (copy_file_range returns EPERM on some s390x kernels and
filesystems). The fault hooks ``copy-reflink`` and ``copy-file-range``
(CONTINUITY_FAULT=copy-file-range:EPERM) force the fallbacks in tests.

DST must not exist. The copy is written to a staging directory beside it and
renamed into place with RENAME_NOREPLACE: DST appears complete or not at all.
Regular files are copied by two worker processes when there are many of
them; directory metadata is set last, deepest first.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import stat
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from castore import fs, progress
from castore.bulkmode import bulk
from castore.errors import CastoreError, SourceChanged, UnsafeInput
from castore.faults import crashpoint
from castore.fs import publish
from castore.fs.tree import require_dir
from castore.walk import ignored, raise_nofile_limit

CHUNK = 1 << 20
FALLBACK = frozenset({errno.EXDEV, errno.EPERM, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})
POOL_MIN_FILES = 2000
BATCH = 256


@dataclass
class CopyStats:
    """What a copy did, and which data paths it used."""

    files: int = 0
    dirs: int = 0
    links: int = 0
    others: int = 0
    bytes: int = 0
    reflinked: int = 0
    ranged: int = 0  # files copied by copy_file_range
    rw: int = 0  # files copied by read/write
    skipped_xattrs: int = 0

    def add(self, other: CopyStats) -> None:
        for k in ("files", "bytes", "reflinked", "ranged", "rw", "skipped_xattrs"):
            setattr(self, k, getattr(self, k) + getattr(other, k))


@dataclass
class _Job:
    rel: str
    dev: int
    ino: int
    size: int
    sparse: bool
    uid: int
    gid: int
    perm: int
    atime_ns: int
    mtime_ns: int


@dataclass
class _Mover:
    """Data paths still believed to work (a failure turns one off for the rest of the run)."""

    reflink: bool = True
    cfr: bool = True
    root: bool = field(default_factory=lambda: os.geteuid() == 0)


def _fault(name: str) -> None:
    crashpoint(name)  # CONTINUITY_FAULT=name:ERRNO raises OSError(ERRNO) here


def copy_range(src: int, dst: int, off: int, length: int, mv: _Mover, stats: CopyStats) -> None:
    """Copy ``[off, off+length)`` of src to the same offset of dst: copy_file_range, else read/write."""
    done = 0
    if mv.cfr:
        try:
            _fault("copy-file-range")
            while done < length:
                n = os.copy_file_range(src, dst, length - done, off + done, off + done)
                if n == 0:
                    break  # some filesystems (procfs-like, old kernels) report 0: finish by hand
                done += n
            if done == length:
                stats.ranged += 1
                return
        except OSError as exc:
            if exc.errno not in FALLBACK:
                raise
            mv.cfr = False
    stats.rw += 1
    while done < length:
        buf = os.pread(src, min(CHUNK, length - done), off + done)
        if not buf:
            raise SourceChanged("source file shrank while it was copied")
        fs.pwrite_all(dst, buf, off + done)
        done += len(buf)


def copy_data(src: int, dst: int, size: int, sparse: bool, mv: _Mover, stats: CopyStats) -> None:
    """Fill the empty ``dst`` with the ``size`` bytes of ``src``, holes kept."""
    if size == 0:
        return
    if mv.reflink:
        try:
            _fault("copy-reflink")
            fs.reflink(src, dst)
            stats.reflinked += 1
            return
        except OSError as exc:
            if exc.errno not in FALLBACK and exc.errno != errno.ETXTBSY:
                raise
            mv.reflink = False
    holes = fs.data_holes(src, size) if sparse else ()
    if not holes:
        copy_range(src, dst, 0, size, mv, stats)
        return
    for begin, end in fs.data_ranges(size, holes):
        copy_range(src, dst, begin, end - begin, mv, stats)
    os.ftruncate(dst, size)


def _copy_xattrs(src: int | str, dst: int | str, follow: bool, stats: CopyStats) -> None:
    try:
        if isinstance(src, int):
            items = fs.read_xattrs(src)
        else:
            items = (
                fs.read_xattrs(src)
                if not follow
                else tuple((n, os.getxattr(src, n)) for n in sorted(os.listxattr(src)))
            )
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES):
            return
        raise
    for n, v in sorted(items, key=lambda kv: kv[0] == "security.capability"):
        try:
            if isinstance(dst, int):
                os.setxattr(dst, n, v)
            else:
                os.setxattr(dst, n, v, follow_symlinks=follow)
        except OSError as exc:
            # Namespaces the caller may not write (trusted.* unprivileged, user.* on symlinks).
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES):
                stats.skipped_xattrs += 1
                continue
            raise


def _chown(mv: _Mover, fn: Callable[[], None], uid: int, gid: int) -> None:
    if not mv.root and (uid, gid) == (os.geteuid(), os.getegid()):
        return
    try:
        fn()
    except PermissionError:
        if mv.root:
            raise  # as cp -a: an unprivileged copy keeps the caller as owner


def copy_file(src_root: int, dst_root: int, job: _Job, mv: _Mover, stats: CopyStats) -> None:
    """Copy one regular file ``job.rel`` (content, then owner, mode, xattrs, times)."""
    try:
        sfd = fs.open_beneath(src_root, job.rel, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise SourceChanged(f"/{job.rel}: changed while it was copied ({exc.strerror})") from exc
    try:
        st = os.fstat(sfd)
        if (st.st_dev, st.st_ino) != (job.dev, job.ino) or not stat.S_ISREG(st.st_mode):
            raise SourceChanged(f"/{job.rel}: replaced while it was copied")
        dfd = fs.open_beneath(dst_root, job.rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            copy_data(sfd, dfd, job.size, job.sparse, mv, stats)
            _chown(mv, lambda: os.fchown(dfd, job.uid, job.gid), job.uid, job.gid)
            os.fchmod(dfd, job.perm)
            _copy_xattrs(sfd, dfd, True, stats)
            os.utime(dfd, ns=(job.atime_ns, job.mtime_ns))
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    stats.files += 1
    stats.bytes += job.size


def _copy_batch(src_root: int, dst_root: int, jobs: list[_Job]) -> CopyStats:
    stats = CopyStats()
    mv = _Mover()
    for j in jobs:
        copy_file(src_root, dst_root, j, mv, stats)
    return stats


class _Copier:
    def __init__(self, src_root: int, dst_root: int, ignore: tuple[str, ...], workers: int | None) -> None:
        self.src_root = src_root
        self.dst_root = dst_root
        self.ignore = ignore
        self.workers = workers
        self.mv = _Mover()
        self.stats = CopyStats()
        self.files: list[_Job] = []
        self.firsts: dict[tuple[int, int], str] = {}
        self.links: list[tuple[str, str]] = []  # (first path, other path) of hardlinks, made after files
        self.dirs: list[tuple[str, os.stat_result]] = []

    def entry(self, sfd: int, dfd: int, rel: str, e: os.DirEntry[str]) -> tuple[int, int, str] | None:
        name = e.name
        child = f"{rel}/{name}" if rel else name
        if self.ignore and ignored(child, name, self.ignore):
            return None
        st = e.stat(follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            cfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
            cst = os.fstat(cfd)
            if (cst.st_dev, cst.st_ino) != (st.st_dev, st.st_ino):
                os.close(cfd)
                raise SourceChanged(f"/{child}: replaced while it was copied")
            os.mkdir(name, 0o700, dir_fd=dfd)
            dcfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            self.dirs.append((child, cst))
            self.stats.dirs += 1
            return cfd, dcfd, child
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self.firsts.get(key)
            if first is not None:
                self.links.append((first, child))
                return None
            self.firsts[key] = child
        if stat.S_ISREG(mode):
            self.files.append(
                _Job(
                    child,
                    st.st_dev,
                    st.st_ino,
                    st.st_size,
                    st.st_blocks * 512 < st.st_size,
                    st.st_uid,
                    st.st_gid,
                    stat.S_IMODE(mode),
                    st.st_atime_ns,
                    st.st_mtime_ns,
                )
            )
            return None
        self.other(sfd, dfd, name, child, st)
        return None

    def other(self, sfd: int, dfd: int, name: str, child: str, st: os.stat_result) -> None:
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            try:
                os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=dfd)
            except PermissionError as exc:
                raise UnsafeInput(f"/{child}: cannot create a device node without privilege") from exc
        else:
            raise UnsafeInput(f"/{child}: unsupported file type {stat.S_IFMT(mode):#o}")
        self.stats.others += 1
        # Metadata by O_PATH fd (checked to be what we just made), or no-follow calls on a symlink.
        if stat.S_ISLNK(mode):
            _chown(
                self.mv,
                lambda: os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False),
                st.st_uid,
                st.st_gid,
            )
            with fs.named(f"/{child}"):
                _copy_xattrs(fs.proc_path(sfd, name), fs.proc_path(dfd, name), False, self.stats)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
            return
        spfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
        pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            if stat.S_IFMT(os.fstat(pfd).st_mode) != stat.S_IFMT(mode):
                raise CastoreError(f"/{child}: replaced in the staging directory")
            where = f"/proc/self/fd/{pfd}"
            with fs.named(f"/{child}"):
                _chown(self.mv, lambda: os.chown(where, st.st_uid, st.st_gid), st.st_uid, st.st_gid)
                os.chmod(where, stat.S_IMODE(mode))
                if stat.S_IFMT(os.fstat(spfd).st_mode) == stat.S_IFMT(mode):
                    _copy_xattrs(f"/proc/self/fd/{spfd}", where, True, self.stats)
                os.utime(where, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(pfd)
            os.close(spfd)

    def walk(self) -> None:
        stack: list[tuple[int, int, str, list[os.DirEntry[str]]]] = []

        def push(sfd: int, dfd: int, rel: str) -> None:
            with os.scandir(sfd) as it:
                entries = sorted(it, key=lambda e: e.name)
            entries.reverse()
            stack.append((sfd, dfd, rel, entries))

        push(os.dup(self.src_root), os.dup(self.dst_root), "")
        try:
            while stack:
                sfd, dfd, rel, entries = stack[-1]
                if not entries:
                    os.close(sfd)
                    os.close(dfd)
                    stack.pop()
                    continue
                sub = self.entry(sfd, dfd, rel, entries.pop())
                if sub is not None:
                    push(*sub)
        finally:
            for sfd, dfd, _, _ in stack:
                os.close(sfd)
                os.close(dfd)

    def copy_files(self) -> None:
        jobs = self.files
        with progress.task("copy", total=sum(j.size for j in jobs)) as bar:
            workers = self.workers if self.workers is not None else min(2, os.cpu_count() or 1)
            if workers <= 1 or len(jobs) < POOL_MIN_FILES:
                for j in jobs:
                    copy_file(self.src_root, self.dst_root, j, self.mv, self.stats)
                    bar.advance(j.size)
                return
            batches = [jobs[i : i + BATCH] for i in range(0, len(jobs), BATCH)]
            # fork: the workers inherit the two root fds (numbers passed as they are).
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                for batch, res in zip(
                    batches,
                    pool.map(_copy_batch, [self.src_root] * len(batches), [self.dst_root] * len(batches), batches),
                    strict=True,
                ):
                    self.stats.add(res)
                    bar.advance(sum(j.size for j in batch))

    def hardlinks(self) -> None:
        for first, other in self.links:
            parent, _, name = other.rpartition("/")
            pfd = fs.open_beneath(self.dst_root, parent or ".", os.O_PATH | os.O_DIRECTORY)
            try:
                os.link(first, name, src_dir_fd=self.dst_root, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(pfd)
            self.stats.links += 1

    def dir_metadata(self) -> None:
        for rel, st in sorted(self.dirs, key=lambda d: -d[0].count("/")):
            sfd = fs.open_beneath(self.src_root, rel, os.O_PATH | os.O_DIRECTORY)
            dfd = fs.open_beneath(self.dst_root, rel, os.O_RDONLY | os.O_DIRECTORY)
            try:
                with fs.named(f"/{rel}"):
                    self.set_dir(sfd, dfd, st)
            finally:
                os.close(sfd)
                os.close(dfd)

    def set_dir(self, sfd: int, dfd: int, st: os.stat_result) -> None:
        _chown(self.mv, lambda: os.fchown(dfd, st.st_uid, st.st_gid), st.st_uid, st.st_gid)
        os.fchmod(dfd, stat.S_IMODE(st.st_mode))
        _copy_xattrs(f"/proc/self/fd/{sfd}", dfd, True, self.stats)
        os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))


@bulk
def copy_tree(
    src: str, dst: str, *, ignore: tuple[str, ...] = (), workers: int | None = None, sync: bool = False
) -> CopyStats:
    """Duplicate the tree at ``src`` as ``dst`` (which must not exist); return what was copied.

    Raises NotFound (no SRC), UnsafeInput (SRC a symlink or not a directory,
    DST exists, a device node without privilege), SourceChanged (SRC changed
    under us), ResourceLimit (no space). On failure DST does not appear.
    """
    raise_nofile_limit()
    src = os.path.abspath(src)
    sst = require_dir(src, "SRC")
    dst = os.path.abspath(dst)
    parent, base = os.path.split(dst.rstrip("/"))
    if not base:
        raise UnsafeInput(f"{dst}: cannot copy onto /")
    if os.path.lexists(dst):
        raise UnsafeInput(f"{dst}: DST exists; copy makes a new tree")
    if dst == src or dst.startswith(src.rstrip("/") + "/"):
        raise UnsafeInput(f"{dst}: DST is inside SRC")
    os.makedirs(parent, exist_ok=True)
    sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    old_umask = os.umask(0)
    try:
        got = os.fstat(sfd)
        if (got.st_dev, got.st_ino) != (sst.st_dev, sst.st_ino):
            raise SourceChanged(f"{src}: replaced while it was opened")
        publish.sweep(pfd, parent)  # staging dirs of copies and checkouts killed here before
        with publish.staged_dir(pfd, parent, base, dst, "copy-") as staging:
            dfd = staging.open()
            try:
                c = _Copier(sfd, dfd, ignore, workers)
                c.walk()
                c.copy_files()
                crashpoint("copy-before-links")
                c.hardlinks()
                c.dir_metadata()
                c.set_dir(sfd, dfd, got)
                if sync:
                    fs.syncfs(dfd)
            finally:
                os.close(dfd)
            staging.rename_into_place(f"{dst}: appeared during the copy")
    finally:
        os.umask(old_umask)
        os.close(pfd)
        os.close(sfd)
    return c.stats
