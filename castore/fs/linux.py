"""Linux system calls the standard library lacks or hides: reflink, syncfs,
renameat2, openat2, copy_file_range with fallbacks, xattrs by fd or dirfd,
sparse-file extents. The only home of platform-specific file code.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from castore.errors import UnsafeInput

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

FICLONE = 0x40049409
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
SYS_RENAMEAT2 = 316
SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08

#: errno values after which a faster copy method falls back to a slower one.
COPY_FALLBACK = frozenset(
    {errno.EXDEV, errno.EPERM, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ETXTBSY, errno.EBADF}
)


def _check(ret: int) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


def syncfs(fd: int) -> None:
    """Flush every dirty page of the filesystem holding ``fd``."""
    _check(_libc.syncfs(fd))


def syncfs_in_background(fd: int, *, close: bool = False) -> Callable[[], None]:
    """Start syncfs(fd) in a thread (ctypes releases the GIL); returns a function that waits
    for it and re-raises its error. ``fd`` must stay open until then, or ``close`` hands it
    to the thread, which closes it when done."""
    import threading

    box: list[BaseException] = []

    def run() -> None:
        try:
            syncfs(fd)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiter
            box.append(exc)
        finally:
            if close:
                os.close(fd)

    t = threading.Thread(target=run, name="syncfs", daemon=True)
    t.start()

    def wait() -> None:
        t.join()
        if box:
            raise box[0]

    return wait


def syncfs_every(fd: int, seconds: float) -> Callable[[], None]:
    """syncfs(fd) every ``seconds`` in a thread, so that the disk writes while the caller
    computes instead of after; returns stop(), which ends the thread, waits for it and
    re-raises its error (a writeback error is reported once per open file: it must reach
    the caller, never be dropped here)."""
    import threading

    box: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        while not done.wait(seconds):
            try:
                syncfs(fd)
            except BaseException as exc:  # noqa: BLE001 - handed to stop()
                box.append(exc)
                return

    t = threading.Thread(target=run, name="syncfs-every", daemon=True)
    t.start()

    def stop() -> None:
        done.set()
        t.join()
        if box:
            raise box[0]

    return stop


_libc.sync_file_range.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
SYNC_FILE_RANGE_WRITE = 2


def flock(fd: int, *, wait: bool = True) -> bool:
    """Take an exclusive flock(2) on ``fd``; without ``wait``, False when another holds it."""
    if wait:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> None:
    """prctl(PR_SET_PDEATHSIG): this process gets ``sig`` when its parent dies (best effort)."""
    _libc.prctl(PR_SET_PDEATHSIG, sig)


def start_writeback(fd: int) -> None:
    """Start writing the dirty pages of ``fd`` to disk without waiting for them (best effort):
    a later syncfs has less left to wait for, the disk works while the caller computes."""
    _libc.sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def renameat2(src_dir: int, src: str, dst_dir: int, dst: str, flags: int = RENAME_NOREPLACE) -> None:
    """renameat2(2); RENAME_NOREPLACE by default (EEXIST if dst exists)."""
    _check(_libc.syscall(SYS_RENAMEAT2, src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), flags))


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_HAVE_OPENAT2: bool | None = None


def open_beneath(dir_fd: int, relpath: str, flags: int, mode: int = 0) -> int:
    """Open ``relpath`` under ``dir_fd`` without following any symlink and
    without leaving the tree (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, or
    a per-component O_NOFOLLOW walk on kernels without openat2).
    """
    global _HAVE_OPENAT2
    if len(relpath) > _SEGMENT and "/" in relpath:
        return _open_long(dir_fd, relpath, flags, mode)
    if _HAVE_OPENAT2 is not False:
        how = _OpenHow(
            flags | os.O_CLOEXEC, mode, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
        )
        ret = _libc.syscall(SYS_OPENAT2, dir_fd, os.fsencode(relpath), ctypes.byref(how), ctypes.sizeof(how))
        if ret >= 0:
            _HAVE_OPENAT2 = True
            return int(ret)
        e = ctypes.get_errno()
        if e != errno.ENOSYS:
            raise OSError(e, os.strerror(e), relpath)
        _HAVE_OPENAT2 = False
    parts = [p for p in relpath.split("/") if p]
    cur = os.dup(dir_fd)
    try:
        for p in parts[:-1]:
            if p in (".", ".."):
                raise OSError(errno.EXDEV, "path leaves the tree", relpath)
            nxt = os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
            os.close(cur)
            cur = nxt
        last = parts[-1] if parts else "."
        if last == "..":
            raise OSError(errno.EXDEV, "path leaves the tree", relpath)
        return os.open(last, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=cur)
    finally:
        os.close(cur)


_SHARD_FDS: dict[str, int] = {}  # the shards of one store at a time (the last one used in this process)


def shard_dir_fd(path: str) -> int:
    """A cached O_PATH fd on a store shard directory ``path`` (STORE/blobs/sha256/ab), opened
    with O_NOFOLLOW: a shard replaced by a symlink is refused (UnsafeInput), never written
    through. The components above it were checked when the store was opened and lie in its
    0700 root (Store.open). FileNotFoundError when the shard does not exist yet."""
    fd = _SHARD_FDS.get(path)
    if fd is not None and os.fstat(fd).st_nlink == 0:  # removed since (and maybe made again)
        os.close(_SHARD_FDS.pop(path))
        fd = None
    if fd is None:
        if _SHARD_FDS and os.path.dirname(next(iter(_SHARD_FDS))) != os.path.dirname(path):
            for old in _SHARD_FDS.values():  # another store's (a long-lived process): at most 256 fds kept
                os.close(old)
            _SHARD_FDS.clear()
        try:
            fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                from castore.errors import UnsafeInput

                raise UnsafeInput(
                    f"{path}: store shard is not a plain directory (a symlink?); refusing to write through it"
                ) from exc
            raise
        old = _SHARD_FDS.setdefault(path, fd)
        if old != fd:
            os.close(fd)
        fd = old
    return fd


_SEGMENT = 3072  # below PATH_MAX (4096), so every openat2 argument fits


def _open_long(dir_fd: int, relpath: str, flags: int, mode: int) -> int:
    """open_beneath for paths longer than PATH_MAX: resolve it a segment at a time,
    each segment confined beneath the directory the previous one opened."""
    parts = relpath.split("/")
    cur = os.dup(dir_fd)
    try:
        seg: list[str] = []
        for p in parts:  # the last one too: the final segment must fit as well
            if seg and len("/".join(seg)) + len(p) + 1 > _SEGMENT:
                nxt = open_beneath(cur, "/".join(seg), os.O_PATH | os.O_DIRECTORY)
                os.close(cur)
                cur, seg = nxt, []
            seg.append(p)
        return open_beneath(cur, "/".join(seg), flags, mode)
    finally:
        os.close(cur)


def reflink(src_fd: int, dst_fd: int) -> None:
    """Share src's extents with dst (FICLONE). EOPNOTSUPP/EXDEV/EINVAL where impossible."""
    fcntl.ioctl(dst_fd, FICLONE, src_fd)


def copy_fd(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy ``size`` bytes from offset 0 to offset 0."""
    copy_fd_at(src_fd, dst_fd, size, 0)


def copy_fd_at(src_fd: int, dst_fd: int, size: int, dst_offset: int) -> None:
    """Copy ``size`` bytes of src (from 0) to dst at ``dst_offset``:
    copy_file_range, falling back to read/write on the errno values where it cannot work."""
    off = 0
    try:
        while off < size:
            n = os.copy_file_range(src_fd, dst_fd, size - off, off, dst_offset + off)
            if n == 0:
                break
            off += n
        if off == size:
            return
    except OSError as exc:
        if exc.errno not in COPY_FALLBACK:
            raise
    while off < size:
        buf = os.pread(src_fd, min(1 << 20, size - off), off)
        if not buf:
            raise OSError(errno.EIO, "source shorter than expected")
        view = memoryview(buf)
        pos = dst_offset + off
        while view:
            w = os.pwrite(dst_fd, view, pos)
            view = view[w:]
            pos += w
        off += len(buf)


def data_holes(fd: int, size: int) -> tuple[tuple[int, int], ...]:
    """The holes of a file as sorted (begin, end) ranges, via SEEK_DATA/SEEK_HOLE."""
    holes: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos: hole to the end
                    holes.append((pos, size))
                    break
                raise
            if data > pos:
                holes.append((pos, min(data, size)))
            if data >= size:
                break
            pos = os.lseek(fd, data, os.SEEK_HOLE)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return ()
        raise
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    return tuple(holes)


def proc_path(dir_fd: int, name: str) -> str:
    """A path naming ``name`` in ``dir_fd`` for calls without dir_fd support.

    The /proc magic link resolves the directory itself; the last component is
    not followed when the caller passes follow_symlinks=False.
    """
    return f"/proc/self/fd/{dir_fd}/{name}"


PROC_FD = "/proc/self/fd/"


@contextmanager
def named(path: str) -> Iterator[None]:
    """Make an OSError raised inside name ``path``, not the /proc/self/fd/N alias used to reach it.

    Messages name what the user knows (a tree path); an fd number means nothing to them.
    """
    try:
        yield
    except UnsafeInput as exc:
        if getattr(exc, "unnamed", False):  # set_xattr's refusal: it knows no path
            raise UnsafeInput(f"{path}: {exc}") from exc
        raise
    except OSError as exc:
        if isinstance(exc.filename, str) and exc.filename.startswith(PROC_FD):
            exc.filename = path
        if isinstance(exc.filename2, str) and exc.filename2.startswith(PROC_FD):
            exc.filename2 = path
        raise


STATX_ATTR_MOUNT_ROOT = 0x2000
_AT_EMPTY_PATH = 0x1000
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_STATX_DONT_SYNC = 0x4000
_statx = getattr(_libc, "statx", None)


def is_mount_root(fd: int, parent_dev: int | None = None) -> bool:
    """Whether the directory ``fd`` is the root of a mount (bind mounts on the same device included).

    statx's STATX_ATTR_MOUNT_ROOT (Linux 5.8); without it, a device other than ``parent_dev``.
    """
    if _statx is not None:
        buf = ctypes.create_string_buffer(256)
        if _statx(fd, b"", _AT_EMPTY_PATH | _AT_SYMLINK_NOFOLLOW | _AT_STATX_DONT_SYNC, 0, buf) == 0:
            attrs = int.from_bytes(buf.raw[8:16], "little")
            supported = int.from_bytes(buf.raw[56:64], "little")
            if supported & STATX_ATTR_MOUNT_ROOT:
                return bool(attrs & STATX_ATTR_MOUNT_ROOT)
    return parent_dev is not None and os.fstat(fd).st_dev != parent_dev


def _unescape_mountinfo(field: str) -> str:
    out, i = bytearray(), 0
    raw = field.encode("utf-8", "surrogateescape")
    while i < len(raw):
        if raw[i] == 0x5C and i + 3 < len(raw) and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def mounts_below(root_fd: int) -> list[str]:
    """Paths (relative, no leading "/") of the mount points strictly below the directory ``root_fd``,
    from /proc/self/mountinfo; sorted, outermost first."""
    try:
        root = os.readlink(f"/proc/self/fd/{root_fd}")
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return []
    prefix = root.rstrip("/") + "/"
    out = set()
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        point = _unescape_mountinfo(fields[4])
        if point.startswith(prefix) and len(point) > len(prefix):
            out.add(point[len(prefix) :].rstrip("/"))
    return sorted(out, key=lambda p: (p.count("/"), p))
