"""The store's directory on disk: where it is, how it is made, and the checks before it is used.

Layout (see docs/design.md)::

    STORE/config                 json, fixed at creation, checked on open
    STORE/blobs/sha256/ab/<hex>  immutable blobs, mode 0444
    STORE/tmp/<lease>/           in-flight writes of one ingest
    STORE/links/ab/<key>         hardlink-checkout objects (content + metadata)
    STORE/leases/<id>.lock       flock held by a lease's owner while it lives
    STORE/manifests/ab/<hex>     a marker per manifest committed (catalog events)
    STORE/meta/                  LMDB environment
    STORE/lock                   flock: shared for ingest commits, exclusive for gc
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import time

from castore import fs
from castore.errors import StoreUnusable, UnsafeInput
from castore.fs.tree import fsync_dir, remove_tree
from castore.store.meta import MetaDB, Txn

CONFIG_VERSION = 1
MARKER_DIR = "manifests"
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:@+/")


def default_store_path() -> str:
    """``$CONTINUITY_STORE``, else /var/lib/continuity for root, else XDG data dir."""
    env = os.environ.get("CONTINUITY_STORE")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/lib/continuity"
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(xdg, "continuity")


def check_name(name: str) -> str:
    """A catalog name: 1-255 of [A-Za-z0-9._-:@+/], not a digest, not starting with '-' or '.'."""
    if not name or len(name) > 255 or not set(name) <= _NAME_OK or name[0] in "-./" or ".." in name:
        raise UnsafeInput(f"invalid name {name[:80]!r}: use 1-255 of [A-Za-z0-9._-:@+/]")
    if name.startswith("sha256:") or is_hex_prefix(name):
        raise UnsafeInput(f"invalid name {name!r}: looks like a digest")
    return name


def is_hex_prefix(text: str) -> bool:
    return len(text) >= 12 and all(c in "0123456789abcdef" for c in text)


def new_index(store_path: str, origin: str) -> None:
    """Create an empty, initialised index at STORE/meta (made aside, renamed in; the first creator wins)."""
    tmp = os.path.join(store_path, f"meta.{origin}-{os.urandom(4).hex()}")
    meta = MetaDB(tmp, create=True)
    try:

        def fn(t: Txn) -> None:
            t.put(b"schema", b"1", db=meta.db("info"))
            t.put(b"index-created-ns", str(time.time_ns()).encode(), db=meta.db("info"))
            t.put(b"index-state", b"complete", db=meta.db("info"))

        meta.write(fn)
    finally:
        meta.close()
    try:
        fs.renameat2(-100, tmp, -100, os.path.join(store_path, "meta"))
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        remove_tree(tmp)
    fsync_dir(store_path)


def create_store(path: str) -> None:
    """Make a new store at ``path`` (the first creator wins the config; the index is made aside)."""
    for i in range(256):
        os.makedirs(os.path.join(path, "blobs", "sha256", f"{i:02x}"), mode=0o700, exist_ok=True)
    from castore.readers import ChunkParams

    cp = ChunkParams()
    config = {
        "version": CONFIG_VERSION,
        "store_id": os.urandom(16).hex(),
        "digest_algorithm": "sha256",
        "chunker": {
            "algorithm": "fastcdc2020",
            "min_size": cp.min_size,
            "avg_size": cp.avg_size,
            "max_size": cp.max_size,
            "threshold": cp.threshold,
        },
        "schema_version": 1,
    }
    os.makedirs(os.path.join(path, MARKER_DIR), exist_ok=True)
    if not os.path.exists(os.path.join(path, "meta", "data.mdb")):
        new_index(path, "init")
    tmp = os.path.join(path, f".config.{os.urandom(6).hex()}")
    with open(tmp, "wb") as f:
        f.write(json.dumps(config, indent=1).encode())
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, os.path.join(path, "config"))  # first creator wins
    except FileExistsError:
        pass
    os.unlink(tmp)
    fsync_dir(path)


def open_root(path: str, *, new: bool) -> int:
    """An fd on the store directory once it is safe to use: ours (root's, when root runs),
    writable by no one else, mode 0700 (tightened when it is ours and only readable by others:
    blobs of 0600 files and setuid hardlink objects are then no one else's to read or run).
    A new store may be made in an existing empty directory, which is then chmod 0700."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        me = os.geteuid()
        if st.st_uid != me:
            raise UnsafeInput(
                f"store at {path} is owned by uid {st.st_uid}, not by uid {me} who runs this: "
                "refusing to use it (its owner could redirect the store's writes); "
                "use a store of your own"
            )
        if new and st.st_mode & 0o077:
            if os.listdir(fd) and st.st_mode & 0o022:
                raise UnsafeInput(
                    f"store at {path}: directory is not empty and others may write in it: "
                    "refusing to make a store there"
                )
            os.fchmod(fd, 0o700)
        elif st.st_mode & 0o022:
            raise UnsafeInput(
                f"store at {path} is writable by group or others (mode {st.st_mode & 0o7777:04o}): "
                "refusing to use it; check its contents, then chmod 0700 it"
            )
        elif st.st_mode & 0o077:
            with contextlib.suppress(OSError):  # a read-only filesystem: nothing can be written there anyway
                os.fchmod(fd, 0o700)
        return fd
    except BaseException:
        os.close(fd)
        raise


def check_store_dir(path: str) -> None:
    """The checks of ``Store.open`` on an existing store's directory, for the verbs that work on its
    files without opening it (``fsck --rebuild-index``). Raises UnsafeInput."""
    fd = open_root(path, new=False)
    try:
        for d in ("blobs", "blobs/sha256", "links"):
            if os.path.lexists(os.path.join(path, d)):
                st = os.stat(d, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                    raise UnsafeInput(f"store at {path}: {d} is not a directory of ours (a symlink?): refusing it")
                if d != "blobs":
                    check_shards(fd, d, path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeInput(f"store at {path}: {exc.filename} is a symlink; refusing to follow it") from exc
        raise
    finally:
        os.close(fd)


def ensure_dir(root_fd: int, rel: str, path: str) -> None:
    """``rel`` below the store root is a directory of ours (made 0700 when missing), reached
    without following symlinks."""
    parent, _, name = rel.rpartition("/")
    pfd = fs.open_beneath(root_fd, parent or ".", os.O_PATH | os.O_DIRECTORY)
    try:
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            pass
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    finally:
        os.close(pfd)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, "is a symlink", rel)
    if not stat.S_ISDIR(st.st_mode):
        raise StoreUnusable(f"store at {path}: {rel} is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafeInput(f"store at {path}: {rel} is owned by uid {st.st_uid}: refusing to use the store")


def check_shards(root_fd: int, rel: str, path: str) -> None:
    """No shard directory below ``rel`` is a symlink (one readdir: the types come with the names)."""
    fd = fs.open_beneath(root_fd, rel, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with os.scandir(fd) as it:
            for e in it:
                if e.is_symlink():
                    raise OSError(errno.ELOOP, "is a symlink", f"{rel}/{e.name}")
    finally:
        os.close(fd)
