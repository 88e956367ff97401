"""fuse: a read-only FUSE view of one manifest, served from the store, verified on read.

This module owns the ``mount`` verb's file system and is the only importer of
the FUSE library (pyfuse3, the optional ``continuity[fuse]`` extra), which it
imports lazily: ``InodeTable`` and ``BlobReader`` are pure Python and work
without it.

- ``InodeTable`` is built once from the validated manifest: one inode per
  resource (a hardlink group is one inode, ``st_nlink`` = its number of
  paths), implicit parent directories 0755, whiteouts hidden (a single
  manifest has no lower layer), alternate data streams not shown.
- ``BlobReader`` maps ``read(offset, size)`` onto a file's blob or chunks.
  Each blob is hashed whole the first time it is read and served from a
  bounded LRU of verified bytes; a blob too large for the cache is hashed
  once and then served from its file while ``fstat`` proves it unchanged
  (dev, ino, size, mtime, ctime). A digest or size mismatch, or a missing
  blob, is EIO for that read only.
- Every operation that would write is EROFS; the mount itself is
  ``ro,nosuid,nodev,default_permissions`` (``allow_other`` on request).
- ``mount()`` holds a store lease naming the manifest for the mount's
  lifetime (renewed while it lives), so gc keeps its blobs; it never holds
  the store flock.

Locking: none (a lease).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import stat
import threading
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from castore import textsafe
from castore.digest import EMPTY_DIGEST
from castore.errors import BlobNotFound, IntegrityError, MountUnavailable, UnsafeInput
from castore.manifest.model import (
    Device,
    Directory,
    Manifest,
    NamedPipe,
    RegularFile,
    Socket,
    Symlink,
    Whiteout,
)
from castore.store import LEASE_TTL_NS, Lease, Store

ROOT_INO = 1
CACHE_BYTES = 64 << 20  # verified blob bytes kept in memory
CACHE_ITEM_MAX = 8 << 20  # larger blobs: hashed once, then served from the file while fstat proves it unchanged
READ = 1 << 20
INLINE_READ = 64 << 10  # files up to this size are read on the event loop, not in a worker thread
TIMEOUT = 3600.0  # entry/attr cache timeout: nothing here ever changes
RENEW_EVERY = 3600.0  # seconds between lease renewals (leases expire after 24 h)
BLKSIZE = 128 << 10
MOUNT_OPTIONS = ("ro", "nosuid", "nodev", "default_permissions", "subtype=continuity")


# --------------------------------------------------------------------------- the inode table


@dataclass(slots=True)
class Node:
    """One inode: what getattr, readlink, getxattr and read need."""

    ino: int
    mode: int  # POSIX st_mode: type and permission bits (setuid, setgid, sticky included)
    uid: int
    gid: int
    mtime_ns: int
    path: str  # primary path, for messages
    nlink: int = 1
    size: int = 0
    blocks: int = 0
    rdev: int = 0
    target: bytes = b""
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    pieces: tuple[tuple[int, int, str], ...] = ()  # (begin, end, blob digest), covering [0, size)
    starts: tuple[int, ...] = ()  # begin offsets of ``pieces``, for bisect
    digest: str = ""
    parent: int = ROOT_INO
    names: list[bytes] = field(default_factory=list)  # directories: sorted child names
    children: dict[bytes, int] = field(default_factory=dict)  # directories: name -> ino


class InodeTable:
    """The inodes of one manifest. Pure: built from the model, no file system access."""

    def __init__(self, manifest: Manifest, *, uid: int, gid: int, now_ns: int) -> None:
        self.nodes: dict[int, Node] = {}
        self.uid, self.gid, self.now_ns = uid, gid, now_ns
        self.total_bytes = 0
        root = Node(ROOT_INO, stat.S_IFDIR | 0o755, uid, gid, now_ns, "/", nlink=2)
        self.nodes[ROOT_INO] = root
        self._dirs: dict[str, int] = {"/": ROOT_INO}
        for r in manifest.resources:  # sorted by path: a directory comes before its children
            if isinstance(r, Whiteout):
                continue
            ino = len(self.nodes) + 1
            node = self._node(ino, r)
            if node is None:
                continue
            if isinstance(r, Directory):
                parent = self._dir(r.path.rsplit("/", 1)[0] or "/")
                existing = self.nodes[parent].children.get(_name(r.path))
                if existing is not None:  # an implicit parent made earlier for an out-of-order child
                    node.ino = existing
                    node.nlink = self.nodes[existing].nlink
                    node.names, node.children = self.nodes[existing].names, self.nodes[existing].children
                    node.parent = parent
                    self.nodes[existing] = node
                    continue
                self.nodes[ino] = node
                self._link(parent, r.path, ino)
                self._dirs[r.path] = ino
                continue
            self.nodes[ino] = node
            for p in r.paths:
                self._link(self._dir(p.rsplit("/", 1)[0] or "/"), p, ino)
            if isinstance(r, RegularFile):
                self.total_bytes += r.size
        for n in self.nodes.values():
            if n.children:
                n.names.sort()

    def _node(self, ino: int, r: Any) -> Node | None:
        if isinstance(r, Directory):
            kind = stat.S_IFDIR
        elif isinstance(r, RegularFile):
            kind = stat.S_IFREG
        elif isinstance(r, Symlink):
            kind = stat.S_IFLNK
        elif isinstance(r, Device):
            kind = stat.S_IFCHR if r.char else stat.S_IFBLK
        elif isinstance(r, NamedPipe):
            kind = stat.S_IFIFO
        elif isinstance(r, Socket):
            kind = stat.S_IFSOCK
        else:
            return None
        node = Node(ino, kind | (0o777 if kind == stat.S_IFLNK else r.perm & 0o7777),
                    self.uid if r.uid < 0 else r.uid, self.gid if r.gid < 0 else r.gid,
                    self.now_ns if r.mtime_ns is None else r.mtime_ns, r.path,
                    nlink=2 if kind == stat.S_IFDIR else len(r.paths),
                    xattrs={os.fsencode(k): v for k, v in r.xattrs})
        if isinstance(r, RegularFile):
            if r.chunks:
                node.pieces = tuple((c.begin, c.end, c.digest) for c in r.chunks)
            elif r.size:
                node.pieces = ((0, r.size, r.digest),)
            node.starts = tuple(p[0] for p in node.pieces)
            node.size, node.digest = r.size, r.digest
            node.blocks = (r.size - sum(e - b for b, e in r.holes) + 511) // 512
        elif isinstance(r, Symlink):
            node.target = os.fsencode(r.target)
            node.size = len(node.target)
        elif isinstance(r, Device):
            node.rdev = os.makedev(r.major, r.minor)
        return node

    def _dir(self, path: str) -> int:
        """The inode of directory ``path``, made (0755, mount owner and time) when the manifest lacks it."""
        ino = self._dirs.get(path)
        if ino is not None:
            return ino
        parent = self._dir(path.rsplit("/", 1)[0] or "/")
        ino = len(self.nodes) + 1
        self.nodes[ino] = Node(ino, stat.S_IFDIR | 0o755, self.uid, self.gid, self.now_ns, path, nlink=2)
        self._link(parent, path, ino)
        self._dirs[path] = ino
        return ino

    def _link(self, parent: int, path: str, ino: int) -> None:
        pnode = self.nodes[parent]
        name = _name(path)
        if name in pnode.children:  # validate() refuses duplicate paths; be safe anyway
            raise UnsafeInput(f"duplicate path {path!r} in manifest")
        pnode.children[name] = ino
        pnode.names.append(name)
        node = self.nodes[ino]
        if stat.S_ISDIR(node.mode):
            node.parent = parent
            pnode.nlink += 1

    def lookup(self, parent: int, name: bytes) -> int | None:
        node = self.nodes[parent]
        if name == b".":
            return parent
        if name == b"..":
            return node.parent
        return node.children.get(name)


def _name(path: str) -> bytes:
    return os.fsencode(path.rsplit("/", 1)[1])


# --------------------------------------------------------------------------- verified reads


class BlobReader:
    """Verified reads of blobs by digest: a bounded LRU of verified bytes (thread-safe).

    ``note`` receives one message per blob that fails (corrupt, wrong size, missing).
    """

    def __init__(self, store: Store, *, cache_bytes: int = CACHE_BYTES, item_max: int = CACHE_ITEM_MAX,
                 note: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.cache_bytes, self.item_max = cache_bytes, item_max
        self.note = note or (lambda m: textsafe.note(m, prefix="error"))
        self._lru: OrderedDict[str, bytes] = OrderedDict()
        self._held = 0
        self._proven: dict[str, tuple[int, int, int, int, int]] = {}  # large blobs: stat when verified
        self._mu = threading.Lock()
        self._gates: dict[str, threading.Lock] = {}
        self._noted: set[str] = set()
        self.hashed = 0  # blobs hashed (for tests and stats)

    def read_file(self, node: Node, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset+size)`` of a file node, clipped to its size. Raises IntegrityError."""
        if node.size == 0 and node.digest and node.digest != EMPTY_DIGEST:
            raise IntegrityError(f"{node.path}: empty file with a non-empty digest {node.digest}")
        end = min(node.size, offset + size)
        if offset >= end:
            return b""
        out: list[bytes] = []
        i = max(bisect_right(node.starts, offset) - 1, 0)
        pos = offset
        while pos < end:
            begin, pend, digest = node.pieces[i]
            lo, hi = pos - begin, min(pend, end) - begin
            out.append(self._piece(digest, pend - begin, lo, hi, node.path))
            pos = begin + hi
            i += 1
        return out[0] if len(out) == 1 else b"".join(out)

    def _piece(self, digest: str, size: int, lo: int, hi: int, path: str) -> bytes:
        try:
            if size > self.item_max:
                return self._large(digest, size, lo, hi)
            return self._verified(digest, size)[lo:hi]
        except IntegrityError as exc:
            with self._mu:
                first = digest not in self._noted
                self._noted.add(digest)
            if first:
                self.note(f"{exc} (read of {path}); reads of it return EIO; run `continuity fsck`")
            raise

    def _verified(self, digest: str, size: int) -> bytes:
        with self._mu:
            data = self._lru.get(digest)
            if data is not None:
                self._lru.move_to_end(digest)
                return data
            gate = self._gates.setdefault(digest, threading.Lock())
        with gate:  # one reader hashes a blob; concurrent readers of it wait and then hit the cache
            with self._mu:
                data = self._lru.get(digest)
                if data is not None:
                    return data
            data = self._load(digest, size)
            with self._mu:
                self._gates.pop(digest, None)
                if digest not in self._lru:
                    self._lru[digest] = data
                    self._held += len(data)
                while self._held > self.cache_bytes and len(self._lru) > 1:
                    _, old = self._lru.popitem(last=False)
                    self._held -= len(old)
        return data

    def _open(self, digest: str) -> int:
        try:
            return self.store.open_blob(digest)
        except OSError as exc:
            raise IntegrityError(f"blob {digest} cannot be opened: {exc.strerror}") from exc

    def _load(self, digest: str, size: int) -> bytes:
        fd = self._open(digest)
        try:
            if os.fstat(fd).st_size != size:
                raise IntegrityError(f"blob {digest} has the wrong size (expected {size} bytes)")
            parts = []
            got = 0
            while got <= size:
                b = os.read(fd, max(size - got, 0) + 1)  # one byte more: detect growth
                if not b:
                    break
                parts.append(b)
                got += len(b)
        finally:
            os.close(fd)
        data = b"".join(parts)
        self.hashed += 1
        if len(data) != size or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"blob {digest} is corrupt (digest mismatch)")
        return data

    def _large(self, digest: str, size: int, lo: int, hi: int) -> bytes:
        fd = self._open(digest)
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if st.st_size != size:
                raise IntegrityError(f"blob {digest} has the wrong size (expected {size} bytes)")
            with self._mu:
                proven = self._proven.get(digest) == key
            if not proven:
                h = hashlib.sha256()
                pos = 0
                while pos < size:
                    b = os.pread(fd, min(READ, size - pos), pos)
                    if not b:
                        break
                    h.update(b)
                    pos += len(b)
                self.hashed += 1
                if pos != size or "sha256:" + h.hexdigest() != digest:
                    raise IntegrityError(f"blob {digest} is corrupt (digest mismatch)")
                with self._mu:
                    self._proven[digest] = key
            parts = []
            pos = lo
            while pos < hi:
                b = os.pread(fd, hi - pos, pos)
                if not b:
                    raise IntegrityError(f"blob {digest} is truncated")
                parts.append(b)
                pos += len(b)
            return b"".join(parts)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- mounting


def check_mountpoint(path: str) -> str:
    """The absolute path of ``path``, an existing empty directory (not a symlink). Raises UnsafeInput."""
    full = os.path.abspath(path)
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        raise UnsafeInput(f"{path}: mount point does not exist (create an empty directory)") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeInput(f"{path}: mount point is a symlink; refusing to mount through it")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeInput(f"{path}: mount point is not a directory")
    if os.path.ismount(full):
        raise UnsafeInput(f"{path}: something is already mounted there")
    if os.listdir(full):
        raise UnsafeInput(f"{path}: mount point is not empty")
    return full


def _load_pyfuse3() -> Any:
    if not os.path.exists("/dev/fuse"):
        raise MountUnavailable("FUSE is not available: /dev/fuse is missing "
                               "(load the fuse module; in a container, pass --device /dev/fuse)")
    try:
        import pyfuse3
        import trio  # noqa: F401
    except ImportError as exc:
        raise MountUnavailable(f"FUSE support is not installed ({exc.name or exc}): "
                               "pip install 'continuity[fuse]' (needs libfuse3)") from None
    return pyfuse3


def _renew(lease: Lease) -> None:
    """Push the lease's expiry another LEASE_TTL_NS into the future (a mount may outlive 24 h)."""
    meta = lease.store.meta

    def fn(txn: Any) -> None:
        db = meta.db("leases")
        raw = txn.get(lease.id.encode(), db=db)
        if raw is None:
            return
        rec = json.loads(raw)
        rec["expiry_ns"] = time.time_ns() + LEASE_TTL_NS
        txn.put(lease.id.encode(), json.dumps(rec).encode(), db=db)
    meta.write(fn)


def mount(store: Store, manifest: Manifest, digest: str | None, mountpoint: str, *,
          allow_other: bool = False, ready: Callable[[str], None] | None = None) -> None:
    """Serve ``manifest`` (already validated) read-only at ``mountpoint`` until unmounted or signalled.

    Returns after a clean unmount (``fusermount3 -u``, SIGINT, SIGTERM or
    SIGHUP). Raises UnsafeInput (mount point), MountUnavailable (no FUSE),
    BlobNotFound (blobs missing from the store).
    Locking: none; a lease naming the manifest (or, for a manifest file that
    is not in the store, its blobs) for the mount's lifetime.
    """
    full = check_mountpoint(mountpoint)
    pyfuse3 = _load_pyfuse3()
    import trio

    refs = store.content_refs(manifest)  # a file stored as chunks only is served by its chunks
    with store.lease([digest] if digest else sorted(refs)) as lease:
        missing = store.missing_blobs(refs)  # checked under the lease: gc cannot take them from now on
        if missing:
            raise BlobNotFound(sorted(missing)[0], f"{len(missing)} blob(s) of this manifest")
        table = InodeTable(store.with_chunks(manifest), uid=os.geteuid(), gid=os.getegid(), now_ns=time.time_ns())
        ops = make_operations(pyfuse3, table, BlobReader(store))
        options = set(MOUNT_OPTIONS) | {f"fsname=continuity:{digest[7:19]}" if digest else "fsname=continuity"}
        if allow_other:
            options.add("allow_other")
        try:
            pyfuse3.init(ops, full, options)
        except RuntimeError as exc:
            raise MountUnavailable(f"{mountpoint}: mount failed ({exc}; see libfuse's message above)") from None
        unmounted = False
        try:
            if ready is not None:
                ready(full)
            trio.run(_serve, pyfuse3, lease)
            unmounted = True
        finally:
            try:
                pyfuse3.close(unmount=True)
            except Exception:  # noqa: BLE001 - best effort; the kernel drops a dead connection anyway
                if not unmounted:
                    raise


async def _serve(pyfuse3: Any, lease: Lease) -> None:
    import trio

    async def on_signals(scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for _ in signals:
                pyfuse3.terminate()
                return

    async def renew() -> None:
        while True:
            await trio.sleep(RENEW_EVERY)
            _renew(lease)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signals, nursery.cancel_scope)
        nursery.start_soon(renew)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def make_operations(pyfuse3: Any, table: InodeTable, reader: BlobReader) -> Any:
    """A pyfuse3 ``Operations`` instance serving ``table`` read-only through ``reader``."""
    import trio

    FUSEError = pyfuse3.FUSEError

    class ReadOnlyOps(pyfuse3.Operations):  # type: ignore[misc]
        supports_dot_lookup = True
        enable_writeback_cache = False
        enable_acl = True  # the kernel enforces the served system.posix_acl_* xattrs

        def _attrs(self, node: Node) -> Any:
            a = pyfuse3.EntryAttributes()
            a.st_ino = node.ino
            a.generation = 0
            a.entry_timeout = TIMEOUT
            a.attr_timeout = TIMEOUT
            a.st_mode = node.mode
            a.st_nlink = node.nlink
            a.st_uid = node.uid
            a.st_gid = node.gid
            a.st_rdev = node.rdev
            a.st_size = node.size
            a.st_blksize = BLKSIZE
            a.st_blocks = node.blocks
            a.st_atime_ns = node.mtime_ns
            a.st_mtime_ns = node.mtime_ns
            a.st_ctime_ns = node.mtime_ns
            return a

        def _node(self, ino: int) -> Node:
            node = table.nodes.get(ino)
            if node is None:
                raise FUSEError(errno.ENOENT)
            return node

        async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> Any:
            parent = self._node(parent_inode)
            if not stat.S_ISDIR(parent.mode):
                raise FUSEError(errno.ENOTDIR)
            ino = table.lookup(parent_inode, name)
            if ino is None:
                a = pyfuse3.EntryAttributes()
                a.st_ino = 0  # a negative entry the kernel may cache
                a.entry_timeout = TIMEOUT
                return a
            return self._attrs(table.nodes[ino])

        async def forget(self, inode_list: Any) -> None:
            return None  # the table is fixed for the mount's lifetime

        async def getattr(self, inode: int, ctx: Any) -> Any:
            return self._attrs(self._node(inode))

        async def readlink(self, inode: int, ctx: Any) -> bytes:
            node = self._node(inode)
            if not stat.S_ISLNK(node.mode):
                raise FUSEError(errno.EINVAL)
            return node.target

        async def opendir(self, inode: int, ctx: Any) -> int:
            if not stat.S_ISDIR(self._node(inode).mode):
                raise FUSEError(errno.ENOTDIR)
            return inode

        async def readdir(self, fh: int, start_id: int, token: Any) -> None:
            node = self._node(fh)
            entries = [(b".", fh), (b"..", node.parent)]
            for i in range(start_id, len(node.names) + 2):
                if i < 2:
                    name, ino = entries[i]
                else:
                    name = node.names[i - 2]
                    ino = node.children[name]
                if not pyfuse3.readdir_reply(token, name, self._attrs(table.nodes[ino]), i + 1):
                    return

        async def releasedir(self, fh: int) -> None:
            return None

        async def open(self, inode: int, flags: int, ctx: Any) -> Any:
            node = self._node(inode)
            if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND | os.O_CREAT):
                raise FUSEError(errno.EROFS)
            if not stat.S_ISREG(node.mode):
                raise FUSEError(errno.EINVAL)
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

        async def read(self, fh: int, off: int, size: int) -> bytes:
            node = self._node(fh)
            try:
                if node.size <= INLINE_READ:  # a thread hop costs more than reading a small blob
                    return reader.read_file(node, off, size)
                return await trio.to_thread.run_sync(reader.read_file, node, off, size)
            except IntegrityError:
                raise FUSEError(errno.EIO) from None
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None

        async def release(self, fh: int) -> None:
            return None

        async def flush(self, fh: int) -> None:
            raise FUSEError(errno.ENOSYS)  # nothing to flush: the kernel stops sending it (one less round trip)

        async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
            value = self._node(inode).xattrs.get(name)
            if value is None:
                raise FUSEError(pyfuse3.ENOATTR)
            return value

        async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
            return list(self._node(inode).xattrs)

        async def statfs(self, ctx: Any) -> Any:
            s = pyfuse3.StatvfsData()
            s.f_bsize = BLKSIZE
            s.f_frsize = 4096
            s.f_blocks = (table.total_bytes + 4095) // 4096
            s.f_bfree = s.f_bavail = 0
            s.f_files = len(table.nodes)
            s.f_ffree = s.f_favail = 0
            s.f_namemax = 255
            return s

        async def access(self, inode: int, mode: int, ctx: Any) -> bool:
            self._node(inode)
            if mode & os.W_OK:
                raise FUSEError(errno.EROFS)
            return True  # default_permissions: the kernel checks the mode bits itself

        async def fsync(self, fh: int, datasync: bool) -> None:
            return None

    for op in ("setattr", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link", "write", "create",
               "setxattr", "removexattr"):
        setattr(ReadOnlyOps, op, _async_erofs(FUSEError))
    return ReadOnlyOps()


def _async_erofs(FUSEError: Any) -> Callable[..., Any]:
    async def op(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise FUSEError(errno.EROFS)
    return op


__all__ = ["BlobReader", "InodeTable", "MountUnavailable", "Node", "check_mountpoint", "make_operations", "mount"]
