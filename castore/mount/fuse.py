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
- Lazy mounts (a tree in a registry): ``BlobReader(fetch=...)`` calls
  ``fetch(digest)`` for a blob missing from the store, which leaves it there
  verified or raises (wrong bytes: EIO; registry unreachable: EIO, retried on
  the next read). The callable comes from the CLI (castore.remote.lazy): this
  module never imports the registry client.
- Every operation that would write is EROFS; the mount itself is
  ``ro,nosuid,nodev,default_permissions`` (``allow_other`` on request).
- ``mount()`` holds a store lease naming the manifest for the mount's
  lifetime (renewed while it lives), so gc keeps its blobs; it never holds
  the store flock.

Locking: none (a lease).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from castore.errors import MountUnavailable, UnsafeInput
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
from castore.mount.blobreader import BlobReader
from castore.store import LEASE_TTL_NS, Lease, Store
from castore.store.blobfile import require_blobs

ROOT_INO = 1
INLINE_READ = 64 << 10  # files up to this size are read on the event loop, not in a worker thread
TIMEOUT = 3600.0  # entry/attr cache timeout: nothing here ever changes
RENEW_EVERY = 3600.0  # seconds between lease renewals (leases expire after 24 h)
BLKSIZE = 128 << 10
# pyfuse3 request tasks: with one, a task is started and ended around nearly every request (it
# finds no other task waiting); two stay waiting in turn, more are started while reads block.
MIN_TASKS, MAX_TASKS = 1, 1
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
    order: int = -1  # small files: position in the tree-walk order (castore/mount/readahead.py)


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
        node = Node(
            ino,
            kind | (0o777 if kind == stat.S_IFLNK else r.perm & 0o7777),
            self.uid if r.uid < 0 else r.uid,
            self.gid if r.gid < 0 else r.gid,
            self.now_ns if r.mtime_ns is None else r.mtime_ns,
            r.path,
            nlink=2 if kind == stat.S_IFDIR else len(r.paths),
            xattrs={os.fsencode(k): v for k, v in r.xattrs},
        )
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

    def position(self, node: Node) -> tuple[Node, int] | None:
        """(its directory, the index of its name there) for ``node``'s primary path, or None."""
        path = node.path
        cut = path.rfind("/")
        parent_ino = self._dirs.get(path[:cut] or "/")
        if parent_ino is None:
            return None
        parent = self.nodes[parent_ino]
        name = os.fsencode(path[cut + 1 :])
        i = bisect_left(parent.names, name)
        if i == len(parent.names) or parent.names[i] != name:
            return None
        return parent, i

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
        raise MountUnavailable(
            "FUSE is not available: /dev/fuse is missing "
            "(load the fuse module; in a container, pass --device /dev/fuse)"
        )
    try:
        import pyfuse3
        import trio  # noqa: F401
    except ImportError as exc:
        raise MountUnavailable(
            f"FUSE support is not installed ({exc.name or exc}): pip install 'continuity[fuse]' (needs libfuse3)"
        ) from None
    return pyfuse3


def renew_lease(lease: Lease) -> None:
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


def mount(
    store: Store,
    manifest: Manifest,
    digest: str | None,
    mountpoint: str,
    *,
    allow_other: bool = False,
    ready: Callable[[str], None] | None = None,
    lease: Lease | None = None,
    fetch: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Serve ``manifest`` (already validated) read-only at ``mountpoint`` until unmounted or signalled.

    Returns after a clean unmount (``fusermount3 -u``, SIGINT, SIGTERM or SIGHUP) the reader's
    counters (blobs hashed, blob files loaded, ...). Raises UnsafeInput (mount point), MountUnavailable (no FUSE),
    BlobNotFound (blobs missing from the store).
    Locking: none; a lease naming the manifest (or, for a manifest file that
    is not in the store, its blobs) for the mount's lifetime.

    Lazy mounts (a remote tree) pass their own ``lease`` and ``fetch``: a blob
    missing from the store is fetched on first read (``fetch(digest)`` leaves
    it verified in the store, under ``lease``, or raises), nothing up front.
    """
    full = check_mountpoint(mountpoint)
    pyfuse3 = _load_pyfuse3()
    import trio

    if fetch is not None:
        assert lease is not None, "a lazy mount brings its lease"
        return _serve_mount(
            pyfuse3,
            trio,
            InodeTable(manifest, uid=os.geteuid(), gid=os.getegid(), now_ns=time.time_ns()),
            BlobReader(store, fetch=fetch),
            lease,
            digest,
            full,
            mountpoint,
            allow_other,
            ready,
        )
    refs = store.content_refs(manifest)  # a file stored as chunks only is served by its chunks
    with store.lease([digest] if digest else sorted(refs)) as lease:
        require_blobs(store, refs)  # checked under the lease: gc cannot take them from now on
        table = InodeTable(store.with_chunks(manifest), uid=os.geteuid(), gid=os.getegid(), now_ns=time.time_ns())
        return _serve_mount(
            pyfuse3, trio, table, BlobReader(store), lease, digest, full, mountpoint, allow_other, ready
        )


def _serve_mount(
    pyfuse3: Any,
    trio: Any,
    table: InodeTable,
    reader: BlobReader,
    lease: Lease,
    digest: str | None,
    full: str,
    mountpoint: str,
    allow_other: bool,
    ready: Callable[[str], None] | None,
) -> dict[str, int]:
    """Mount ``table`` at ``full`` and serve it until unmounted (the lease is renewed meanwhile)."""
    ops = make_operations(pyfuse3, table, reader)
    options = set(MOUNT_OPTIONS) | {f"fsname=continuity:{digest[7:19]}" if digest else "fsname=continuity"}
    if allow_other:
        options.add("allow_other")
    try:
        pyfuse3.init(ops, full, options)
    except RuntimeError as exc:
        raise MountUnavailable(f"{mountpoint}: mount failed ({exc}; see libfuse's message above)") from None
    from castore.mount import fastloop

    waiter = fastloop.install(pyfuse3, trio)
    raw = None
    if reader.fetch is None and os.environ.get("CONTINUITY_MOUNT_LOOP") != "pyfuse3":
        from castore.mount.rawloop import RawServer

        raw = waiter.raw = RawServer(table, reader, ops.ahead)
        ops.on_init = raw.activate
    unmounted = False
    try:
        if ready is not None:
            ready(full)
        trio.run(_serve, pyfuse3, lease, reader.fetch is None, raw)
        unmounted = True
    finally:
        fastloop.uninstall(pyfuse3, trio)
        if raw is not None:
            raw.close()
        reader.close()
        try:
            pyfuse3.close(unmount=True)
        except Exception:  # noqa: BLE001 - best effort; the kernel drops a dead connection anyway
            if not unmounted:
                raise
    if raw is not None:
        return reader.stats() | raw.stats()
    return reader.stats() | {"quick_waits": waiter.fast, "trio_waits": waiter.slow}


async def _serve(pyfuse3: Any, lease: Lease, local: bool, raw: Any = None) -> None:
    import trio

    async def on_signals(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            task_status.started()
            async for _ in signals:
                if raw is not None:
                    raw.stop()
                pyfuse3.terminate()
                return

    async def renew() -> None:
        while True:
            await trio.sleep(RENEW_EVERY)
            renew_lease(lease)

    async with trio.open_nursery() as nursery:
        # Handlers in place before the first request: the request loop may serve many without
        # yielding to trio (castore/mount/fastloop.py), and a signal before them would kill the mount.
        await nursery.start(on_signals)
        nursery.start_soon(renew)
        if local:
            # One request task: with more, pyfuse3 starts and ends a task around nearly every request
            # (it finds none waiting), and the tasks hand a lock over. A read from the store is short.
            await pyfuse3.main(min_tasks=1, max_tasks=1)
        else:
            await pyfuse3.main()  # a lazy mount's reads may wait on the network: serve others meanwhile
        nursery.cancel_scope.cancel()


def make_operations(pyfuse3: Any, table: InodeTable, reader: BlobReader) -> Any:
    """A pyfuse3 ``Operations`` instance serving ``table`` read-only through ``reader``."""
    from castore.mount.operations import ReadOnlyOps
    from castore.mount.readahead import ReadAhead

    # A lazy mount (reader.fetch) fetches only what is read: no read-ahead there.
    return ReadOnlyOps(table, reader, ReadAhead(table, reader) if reader.fetch is None else None)


__all__ = ["BlobReader", "InodeTable", "MountUnavailable", "Node", "check_mountpoint", "make_operations", "mount"]
