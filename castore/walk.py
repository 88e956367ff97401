"""The walk of a source tree: iterative and directory-fd relative (no RecursionError at any
depth, symlinks never followed, FIFOs never opened), and the manifest assembled from what it
saw and what the readers found (hardlinks grouped by (dev, ino)). ``castore.build`` runs it.
"""

from __future__ import annotations

import fnmatch
import os
import resource as _rlimit
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from castore import fs
from castore.errors import CastoreError, NotFound, SourceChanged, UnsafeInput
from castore.manifest.model import (
    Chunk,
    Device,
    Directory,
    EntryFields,
    Manifest,
    NamedPipe,
    RegularFile,
    Resource,
    Socket,
    Symlink,
    Whiteout,
)
from castore.readers import FileJob, FileResult
from castore.textsafe import note


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

    __slots__ = (
        "st_mode",
        "st_uid",
        "st_gid",
        "st_size",
        "st_mtime_ns",
        "st_ctime_ns",
        "st_ino",
        "st_dev",
        "st_nlink",
        "st_rdev",
    )

    def __init__(self, st: os.stat_result) -> None:
        self.st_mode, self.st_uid, self.st_gid, self.st_size = st.st_mode, st.st_uid, st.st_gid, st.st_size
        self.st_mtime_ns, self.st_ctime_ns = st.st_mtime_ns, st.st_ctime_ns
        self.st_ino, self.st_dev, self.st_nlink, self.st_rdev = st.st_ino, st.st_dev, st.st_nlink, st.st_rdev


@dataclass(slots=True)
class Seen:
    path: str
    st: Stat
    xattrs: tuple[tuple[str, bytes], ...] = ()
    target: str = ""


@dataclass
class WalkResult:
    """The walker's output before file contents are read."""

    entries: list[Seen] = field(default_factory=list)
    files: list[FileJob] = field(default_factory=list)


def raise_nofile_limit() -> None:
    soft, hard = _rlimit.getrlimit(_rlimit.RLIMIT_NOFILE)
    if soft < hard:
        _rlimit.setrlimit(_rlimit.RLIMIT_NOFILE, (hard, hard))


def ignored(rel: str, name: str, patterns: Iterable[str]) -> bool:
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
        out.entries.append(Seen(rel, Stat(st)))
        return True
    if stat.S_ISDIR(mode):
        return False
    with fs.named(f"/{rel}"):
        seen = Seen(rel, Stat(st), fs.read_xattrs(fs.proc_path(dir_fd, name)))
    if stat.S_ISLNK(mode):
        seen.target = os.readlink(name, dir_fd=dir_fd)
    out.entries.append(seen)
    return True


def walk(
    root_fd: int,
    opts: WalkOptions,
    on_file: Callable[[FileJob], None] | None = None,
    *,
    prefix: str = "",
    out: WalkResult | None = None,
) -> WalkResult:
    """Every entry below ``root_fd`` (root excluded), in no particular order.

    ``on_file`` is called with each regular file's job as soon as it is seen.
    ``prefix``: the relative path of ``root_fd`` (entries are named below it);
    ``out``: a result to add to.
    """
    raise_nofile_limit()
    out = out if out is not None else WalkResult()
    skipped_apple = 0
    # A stack of (dir fd, relative path, iterator over its subdirectories).
    stack: list[tuple[int, str, Iterator[str]]] = []

    def scan(dir_fd: int, rel: str) -> list[str]:
        nonlocal skipped_apple
        subdirs = []
        with os.scandir(dir_fd) as it:
            items = list(it)
        pre = f"{rel}/" if rel else ""
        ignore, prune, drop_apple = opts.ignore, opts.prune, not opts.keep_appledouble
        for e in items:
            name = e.name
            child = pre + name
            if ignore and ignored(child, name, ignore):
                continue
            if prune and child in prune:
                continue
            if drop_apple and (name.startswith("._") or name == "__MACOSX"):
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
                out.entries.append(Seen(child, Stat(st)))
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
            seen = Seen(child, Stat(os.fstat(fd)), fs.read_xattrs(fd))
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
        opts.note(
            f"left out {skipped_apple} AppleDouble entr{'y' if skipped_apple == 1 else 'ies'} "
            "(._* and __MACOSX); --keep-appledouble keeps them"
        )
    return out


def assemble(walked: WalkResult, results: list[FileResult], *, whiteouts: str = "none") -> Manifest:
    """The manifest from walked entries and file results; hardlinks grouped by (dev, ino).

    Only the kinds upstream treats as hardlinkable are grouped (files, fifos,
    devices); a hardlinked symlink or socket is recorded once per path.
    """
    by_rel = {j.rel: (j, r) for j, r in zip(walked.files, results, strict=False)}
    groups: dict[tuple[int, int], list[str]] = {}
    first: dict[tuple[int, int], Seen] = {}
    resources: list[Resource] = []
    is_reg = stat.S_ISREG
    for seen in walked.entries:
        st = seen.st
        if st.st_nlink == 1 and is_reg(st.st_mode):
            # The common case, inlined: keyword construction without _resource's dict is 2x faster.
            job, res = by_rel[seen.path]
            resources.append(
                RegularFile(
                    paths=("/" + seen.path,),
                    perm=st.st_mode & 0o7777,
                    uid=st.st_uid,
                    gid=st.st_gid,
                    xattrs=res.xattrs,
                    mtime_ns=job.mtime_ns,
                    size=job.size,
                    digest=res.digest,
                    chunks=tuple(Chunk(d, b, e) for d, b, e in res.chunks) if res.chunks else (),
                    holes=res.holes,
                )
            )
            continue
        if st.st_nlink > 1 and (
            is_reg(st.st_mode) or stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
        ):
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


def _resource(
    seen: Seen, paths: tuple[str, ...], by_rel: dict[str, tuple[FileJob, FileResult]], whiteouts: str
) -> Resource:
    st = seen.st
    mode = st.st_mode
    common = EntryFields(paths=paths, perm=stat.S_IMODE(mode), uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns)
    if stat.S_ISREG(mode):
        job, res = by_rel[seen.path]
        # The worker's stat is the one the digest belongs to.
        common["mtime_ns"], common["xattrs"] = job.mtime_ns, res.xattrs
        chunks = tuple(Chunk(d, b, e) for d, b, e in res.chunks)
        return RegularFile(size=job.size, digest=res.digest, chunks=chunks, holes=res.holes, **common)
    common["xattrs"] = seen.xattrs
    if stat.S_ISDIR(mode):
        opaque = False
        if whiteouts == "overlay":
            names = {n for n, _ in seen.xattrs}
            for n in ("trusted.overlay.opaque", "user.overlay.opaque"):
                if n in names and dict(seen.xattrs)[n] == b"y":
                    opaque = True
            common["xattrs"] = tuple(
                kv for kv in seen.xattrs if kv[0] not in ("trusted.overlay.opaque", "user.overlay.opaque")
            )
        return Directory(opaque=opaque, **common)
    if stat.S_ISLNK(mode):
        return Symlink(target=seen.target, **common)
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        if whiteouts == "overlay" and stat.S_ISCHR(mode) and st.st_rdev == 0 and len(paths) == 1:
            return Whiteout(paths=paths, perm=stat.S_IMODE(mode), uid=st.st_uid, gid=st.st_gid)
        return Device(char=stat.S_ISCHR(mode), major=os.major(st.st_rdev), minor=os.minor(st.st_rdev), **common)
    if stat.S_ISFIFO(mode):
        return NamedPipe(**common)
    if stat.S_ISSOCK(mode):
        return Socket(**common)
    raise UnsafeInput(f"/{seen.path}: unsupported file type {stat.S_IFMT(mode):#o}")
