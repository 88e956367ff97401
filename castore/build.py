"""Walk a source tree into a Manifest (upstream's ``build``), store untouched.

The walk is iterative and directory-fd relative: no RecursionError at any
depth, symlinks never followed, FIFOs never opened. Regular files are read by
``castore.readers`` in worker processes; ``ingest`` passes a Processor that
also stages their content as blobs, and a stat cache that skips unchanged
files.
"""

from __future__ import annotations

import fnmatch
import os
import resource as _rlimit
import stat
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from castore import fs

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor
from castore.bulkmode import bulk
from castore.errors import CastoreError, NotFound, UnsafeInput
from castore.manifest.model import (
    Chunk,
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
from castore.readers import FileJob, FileResult, Processor
from castore.textsafe import note

BATCH_FILES = 512
BATCH_BYTES = 32 << 20
RETRIES = 3


class SourceChanged(CastoreError):
    """A file kept changing while it was read."""


@dataclass
class WalkOptions:
    """What to leave out of a walk, and how to read whiteouts."""

    ignore: tuple[str, ...] = ()
    keep_appledouble: bool = False
    whiteouts: str = "none"  # none | overlay
    prune: frozenset[str] = frozenset()  # relative paths neither listed nor entered (mount points, for apply)
    note: Callable[[str], None] = note
    #: (relative path, why): an entry that cannot be read or vanished is reported here and left out
    #: (ingest: castore/ingest_skips.py); None: it fails the walk
    on_skip: Callable[[str, str], None] | None = None


class Stat:
    """The lstat fields a manifest (and ingest's fingerprint) needs.

    A fifth of the memory of an ``os.stat_result``, whose float times and
    unused fields cost ~500 bytes per entry (50 MB on 100k files).
    """

    __slots__ = ("st_mode", "st_uid", "st_gid", "st_size", "st_mtime_ns", "st_ctime_ns", "st_ino", "st_dev",
                 "st_nlink", "st_rdev")

    def __init__(self, st: os.stat_result) -> None:
        self.st_mode, self.st_uid, self.st_gid, self.st_size = st.st_mode, st.st_uid, st.st_gid, st.st_size
        self.st_mtime_ns, self.st_ctime_ns = st.st_mtime_ns, st.st_ctime_ns
        self.st_ino, self.st_dev, self.st_nlink, self.st_rdev = st.st_ino, st.st_dev, st.st_nlink, st.st_rdev


@dataclass(slots=True)
class _Seen:
    path: str
    st: Stat
    xattrs: tuple[tuple[str, bytes], ...] = ()
    target: str = ""


@dataclass
class WalkResult:
    """The walker's output before file contents are read."""

    entries: list[_Seen] = field(default_factory=list)
    files: list[FileJob] = field(default_factory=list)


def _raise_nofile_limit() -> None:
    soft, hard = _rlimit.getrlimit(_rlimit.RLIMIT_NOFILE)
    if soft < hard:
        _rlimit.setrlimit(_rlimit.RLIMIT_NOFILE, (hard, hard))


def _ignored(rel: str, name: str, patterns: Iterable[str]) -> bool:
    for pat in patterns:
        if "/" in pat.strip("/"):
            if fnmatch.fnmatchcase(rel, pat.lstrip("/")) or fnmatch.fnmatchcase("/" + rel, pat):
                return True
        elif fnmatch.fnmatchcase(name, pat.strip("/")):
            return True
    return False


def open_root(root: str) -> int:
    """Open a source root directory (the root itself may be reached by symlink)."""
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"{root}: no such directory") from None
    except NotADirectoryError:
        raise UnsafeInput(f"{root}: not a directory") from None
    except PermissionError:
        raise CastoreError(f"{root}: permission denied") from None


def see_entry(dir_fd: int, rel: str, name: str, st: os.stat_result, out: WalkResult) -> bool:
    """Add the entry ``name`` of ``dir_fd`` (path ``rel``, lstat ``st``) to ``out``; False for a directory.

    A regular file becomes a FileJob (read later); other kinds get their
    xattrs and link target now. Directories are left to the caller.
    """
    mode = st.st_mode
    if stat.S_ISREG(mode):
        sparse = st.st_blocks * 512 < st.st_size
        out.files.append(FileJob(rel, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, sparse))
        out.entries.append(_Seen(rel, Stat(st)))
        return True
    if stat.S_ISDIR(mode):
        return False
    with fs.named(f"/{rel}"):
        seen = _Seen(rel, Stat(st), fs.read_xattrs(fs.proc_path(dir_fd, name)))
    if stat.S_ISLNK(mode):
        seen.target = os.readlink(name, dir_fd=dir_fd)
    out.entries.append(seen)
    return True


def walk(root_fd: int, opts: WalkOptions, on_file: Callable[[FileJob], None] | None = None, *,
         prefix: str = "", out: WalkResult | None = None) -> WalkResult:
    """Every entry below ``root_fd`` (root excluded), in no particular order.

    ``on_file`` is called with each regular file's job as soon as it is seen.
    ``prefix``: the relative path of ``root_fd`` (entries are named below it);
    ``out``: a result to add to.
    """
    _raise_nofile_limit()
    out = out if out is not None else WalkResult()
    skipped_apple = 0
    # A stack of (dir fd, relative path, iterator over its subdirectories).
    stack: list[tuple[int, str, Iterator[str]]] = []

    def scan(dir_fd: int, rel: str) -> list[str]:
        nonlocal skipped_apple
        subdirs = []
        with os.scandir(dir_fd) as it:
            items = list(it)
        for e in items:
            name = e.name
            child = f"{rel}/{name}" if rel else name
            if opts.ignore and _ignored(child, name, opts.ignore):
                continue
            if opts.prune and child in opts.prune:
                continue
            if not opts.keep_appledouble and (name.startswith("._") or name == "__MACOSX"):
                skipped_apple += 1
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as exc:
                if opts.on_skip is None:
                    raise
                opts.on_skip(child, exc.strerror or str(exc))
                continue
            if stat.S_ISREG(st.st_mode):  # see_entry's first case, inlined (the hot path of ingest)
                sparse = st.st_blocks * 512 < st.st_size
                job = FileJob(child, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, sparse)
                out.files.append(job)
                if on_file is not None:
                    on_file(job)
                out.entries.append(_Seen(child, Stat(st)))
            elif opts.on_skip is None:
                if not see_entry(dir_fd, child, name, st, out):
                    subdirs.append(name)
            else:
                try:
                    if not see_entry(dir_fd, child, name, st, out):
                        subdirs.append(name)
                except OSError as exc:
                    opts.on_skip(child, exc.strerror or str(exc))
        return subdirs

    def enter(parent_fd: int, rel: str, name: str) -> None:
        child = f"{rel}/{name}" if rel else name
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            seen = _Seen(child, Stat(os.fstat(fd)), fs.read_xattrs(fd))
            subdirs = iter(sorted(scan(fd, child)))
        except BaseException:
            os.close(fd)
            raise
        out.entries.append(seen)
        stack.append((fd, child, subdirs))

    stack.append((os.dup(root_fd), prefix, iter(sorted(scan(root_fd, prefix)))))
    try:
        while stack:
            fd, rel, subdirs = stack[-1]
            name = next(subdirs, None)
            if name is None:
                os.close(fd)
                stack.pop()
                continue
            try:
                enter(fd, rel, name)
            except OSError as exc:
                if opts.on_skip is not None:
                    opts.on_skip(f"{rel}/{name}" if rel else name, exc.strerror or str(exc))
                    continue
                raise SourceChanged(f"/{rel}/{name}: cannot open directory ({exc.strerror})") from exc
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    if skipped_apple:
        opts.note(f"left out {skipped_apple} AppleDouble entr{'y' if skipped_apple == 1 else 'ies'} "
                  "(._* and __MACOSX); --keep-appledouble keeps them")
    return out


def make_pool(workers: int | None = None) -> ProcessPoolExecutor:
    """A pool of hashing processes (fork: cheap; the children never touch LMDB)."""
    import multiprocessing  # here, not at the top: 5 ms of every CLI start that never hashes much
    from concurrent.futures import ProcessPoolExecutor

    n = workers or max(1, min(2, os.cpu_count() or 1))
    return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork"), initializer=_die_with_parent,
                               initargs=(os.getpid(),))


def _die_with_parent(parent: int) -> None:
    """Pool workers die with their parent: a SIGKILLed ingest leaves no process behind."""
    try:
        import ctypes
        import signal
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


LARGE = 8 << 20  # files this large are dispatched one by one, largest first, after the walk


class Reader:
    """Reads file jobs with a Processor, in a process pool when given one.

    Small files are submitted in batches while the walk is still running
    (walking and hashing overlap); large ones are kept for the end and sent
    largest first so that both workers finish together.
    """

    def __init__(self, proc: Processor, pool: Executor | None,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.proc, self.pool, self.progress = proc, pool, progress
        self.jobs: list[FileJob] = []
        self.pending: list[int] = []
        self.pending_bytes = 0
        self.large: list[int] = []
        self.futures: list[tuple[list[int], Future[list[tuple[object, ...]]]]] = []
        #: (temp or "", digest) of every blob staged or published by the batches that completed
        self.done: list[tuple[str, str]] = []

    def add(self, job: FileJob) -> None:
        i = len(self.jobs)
        self.jobs.append(job)
        if job.size >= LARGE:
            self.large.append(i)
            return
        self.pending.append(i)
        self.pending_bytes += job.size
        if len(self.pending) >= BATCH_FILES or self.pending_bytes >= BATCH_BYTES:
            self._submit(self.pending)
            self.pending, self.pending_bytes = [], 0

    def _submit(self, idx: list[int]) -> None:
        packed = [(j.rel, j.dev, j.ino, j.size, j.mtime_ns, j.ctime_ns, j.sparse) for j in (self.jobs[i] for i in idx)]
        if self.pool is None:
            fut: Future[list[tuple[object, ...]]] = Future()
            fut.set_result(self.proc.run_packed(packed))
        else:
            fut = self.pool.submit(self.proc.run_packed, packed)
        self.futures.append((idx, fut))

    def results(self) -> list[FileResult]:
        """Wait for every job; results in the order jobs were added."""
        if self.pending:
            self._submit(self.pending)
            self.pending = []
        for i in sorted(self.large, key=lambda i: -self.jobs[i].size):
            self._submit([i])
        self.large = []
        out: list[FileResult] = [_EMPTY] * len(self.jobs)
        failure: BaseException | None = None
        for idx, fut in self.futures:
            try:
                res = fut.result()
            except BaseException as exc:  # noqa: BLE001 - every batch is waited for, then the first error raised
                failure = failure or exc
                continue
            for i, r in zip(idx, res, strict=True):
                out[i] = FileResult(*r)  # type: ignore[arg-type]
                self.done.extend(out[i].staged)
            if self.progress:
                self.progress(len(idx), sum(self.jobs[i].size for i in idx))
        self.futures = []
        if failure is not None:
            raise failure
        return out


_EMPTY = FileResult()


def read_files(proc: Processor, jobs: list[FileJob], pool: Executor | None,
               progress: Callable[[int, int], None] | None = None) -> list[FileResult]:
    """Read every job with ``proc``, in parallel when a pool is given."""
    reader = Reader(proc, pool, progress)
    for j in jobs:
        reader.add(j)
    return reader.results()


def restat(root_fd: int, job: FileJob) -> FileJob | None:
    """A fresh job for a file that changed, or None if it is gone."""
    try:
        fd = fs.open_beneath(root_fd, job.rel, os.O_PATH)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        return None
    return FileJob(job.rel, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                   st.st_blocks * 512 < st.st_size)


def read_with_retries(root_fd: int, proc: Processor, jobs: list[FileJob], pool: Executor | None,
                      progress: Callable[[int, int], None] | None = None,
                      results: list[FileResult] | None = None,
                      on_skip: Callable[[str, str], None] | None = None) -> list[FileResult]:
    """read_files (unless ``results`` are given), re-reading files that changed
    under us up to RETRIES times; ``jobs`` is updated with their fresh stat.
    ``on_skip``: a file that cannot be read is reported there (its result keeps
    its ``error``: the caller leaves it out) instead of failing."""
    if results is None:
        results = read_files(proc, jobs, pool, progress)
    for _ in range(RETRIES):
        redo = [i for i, r in enumerate(results) if r.changed]
        if not redo:
            break
        for i in redo:
            fresh = restat(root_fd, jobs[i])
            if fresh is None:
                continue
            jobs[i] = fresh
            results[i] = proc.run_batch([fresh])[0]
    for j, r in zip(jobs, results, strict=True):
        if r.error and on_skip is not None:
            why = r.error.lstrip("/")
            why = why[len(j.rel) + 2:] if why.startswith(j.rel + ": ") else why
            on_skip(j.rel, "vanished or kept changing while it was read" if r.changed else why)
        elif r.error:
            if r.changed:
                raise SourceChanged(f"/{j.rel}: changed while it was read; not recorded")
            raise CastoreError(r.error if r.error.startswith("/") else "/" + r.error)
    return results


def assemble(walked: WalkResult, results: list[FileResult], *, whiteouts: str = "none") -> Manifest:
    """The manifest from walked entries and file results; hardlinks grouped by (dev, ino).

    Only the kinds upstream treats as hardlinkable are grouped (files, fifos,
    devices); a hardlinked symlink or socket is recorded once per path.
    """
    by_rel = {j.rel: (j, r) for j, r in zip(walked.files, results, strict=False)}
    groups: dict[tuple[int, int], list[str]] = {}
    first: dict[tuple[int, int], _Seen] = {}
    resources: list[Resource] = []
    is_reg = stat.S_ISREG
    for seen in walked.entries:
        st = seen.st
        if st.st_nlink == 1 and is_reg(st.st_mode):
            # The common case, inlined: keyword construction without _resource's dict is 2x faster.
            job, res = by_rel[seen.path]
            resources.append(RegularFile(
                paths=("/" + seen.path,), perm=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid,
                xattrs=res.xattrs, mtime_ns=job.mtime_ns, size=job.size, digest=res.digest,
                chunks=tuple(Chunk(d, b, e) for d, b, e in res.chunks) if res.chunks else (), holes=res.holes))
            continue
        if st.st_nlink > 1 and (is_reg(st.st_mode) or stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)
                                or stat.S_ISBLK(st.st_mode)):
            # Hardlinkable kinds, as upstream: files, fifos, devices (not symlinks or sockets).
            key = (st.st_dev, st.st_ino)
            groups.setdefault(key, []).append("/" + seen.path)
            if key in first:
                continue
            first[key] = seen
            continue
        resources.append(_resource(seen, ("/" + seen.path,), by_rel, whiteouts))
    for key, paths in groups.items():
        paths.sort(key=os.fsencode)
        resources.append(_resource(first[key], tuple(paths), by_rel, whiteouts))
    return Manifest.of(resources)


def _resource(seen: _Seen, paths: tuple[str, ...], by_rel: dict[str, tuple[FileJob, FileResult]],
              whiteouts: str) -> Resource:
    st = seen.st
    mode = st.st_mode
    common = dict(paths=paths, perm=stat.S_IMODE(mode), uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns)
    if stat.S_ISREG(mode):
        job, res = by_rel[seen.path]
        # The worker's stat is the one the digest belongs to.
        common["mtime_ns"] = job.mtime_ns
        chunks = tuple(Chunk(d, b, e) for d, b, e in res.chunks)
        return RegularFile(size=job.size, digest=res.digest, chunks=chunks, holes=res.holes,
                           xattrs=res.xattrs, **common)  # type: ignore[arg-type]
    xattrs = seen.xattrs
    if stat.S_ISDIR(mode):
        opaque = False
        if whiteouts == "overlay":
            names = {n for n, _ in xattrs}
            for n in ("trusted.overlay.opaque", "user.overlay.opaque"):
                if n in names and dict(xattrs)[n] == b"y":
                    opaque = True
            xattrs = tuple(kv for kv in xattrs if kv[0] not in ("trusted.overlay.opaque", "user.overlay.opaque"))
        return Directory(opaque=opaque, xattrs=xattrs, **common)  # type: ignore[arg-type]
    if stat.S_ISLNK(mode):
        return Symlink(target=seen.target, xattrs=xattrs, **common)  # type: ignore[arg-type]
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        if whiteouts == "overlay" and stat.S_ISCHR(mode) and st.st_rdev == 0 and len(paths) == 1:
            return Whiteout(paths=paths, perm=stat.S_IMODE(mode), uid=st.st_uid, gid=st.st_gid)
        return Device(char=stat.S_ISCHR(mode), major=os.major(st.st_rdev), minor=os.minor(st.st_rdev),
                      xattrs=xattrs, **common)  # type: ignore[arg-type]
    if stat.S_ISFIFO(mode):
        return NamedPipe(xattrs=xattrs, **common)  # type: ignore[arg-type]
    if stat.S_ISSOCK(mode):
        return Socket(xattrs=xattrs, **common)  # type: ignore[arg-type]
    raise UnsafeInput(f"/{seen.path}: unsupported file type {stat.S_IFMT(mode):#o}")


@bulk
def build(root: str, opts: WalkOptions | None = None, *, pool: Executor | None = None,
          hash_files: bool = True) -> Manifest:
    """The manifest of the tree at ``root``. Raises NotFound, SourceChanged, CastoreError."""
    opts = opts or WalkOptions()
    root_fd = open_root(root)
    try:
        st = os.fstat(root_fd)
        proc = Processor(root=root, root_id=(st.st_dev, st.st_ino), hash_content=hash_files)
        own_pool = pool is None and hash_files
        p = make_pool() if own_pool else pool
        try:
            reader = Reader(proc, p)
            walked = walk(root_fd, opts, reader.add)
            results = read_with_retries(root_fd, proc, walked.files, p, results=reader.results())
        finally:
            if own_pool and p is not None:
                p.shutdown(cancel_futures=True)
        return assemble(walked, results, whiteouts=opts.whiteouts)
    finally:
        os.close(root_fd)
