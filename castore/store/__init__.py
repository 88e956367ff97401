"""The content-addressed store: blob files named by digest, metadata in LMDB.

Layout (see docs/design.md)::

    STORE/config                 json, fixed at creation, checked on open
    STORE/blobs/sha256/ab/<hex>  immutable blobs, mode 0444
    STORE/tmp/<lease>/           in-flight writes of one ingest
    STORE/links/ab/<key>         hardlink-checkout objects (content + metadata)
    STORE/leases/<id>.lock       flock held by a lease's owner while it lives
    STORE/meta/                  LMDB environment
    STORE/lock                   flock: shared for ingest commits, exclusive for gc

Write order: blob bytes durable -> index rows -> manifest blob durable ->
manifest rows and catalog entry in one LMDB transaction. A crash leaves only
orphan files, which gc removes after a grace period.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from castore import fs
from castore.digest import check_digest, hash_fd, is_digest
from castore.errors import (
    BlobNotFound,
    CastoreError,
    IntegrityError,
    NotFound,
    ResourceLimit,
    StoreUnusable,
    UnsafeInput,
    warn_mounts_kept,
)
from castore.faults import crashpoint
from castore.manifest import Manifest, codec, validate
from castore.manifest.model import Chunk, RegularFile, Resource
from castore.readers import ChunkParams
from castore.store import revisions
from castore.store.lock import flocked, is_held
from castore.store.meta import BLOB_ROW, CHUNK_ROW, REBUILD_HINT, MetaDB, dkey, dstr
from castore.store.readonly import no_lease, no_lock, readonly_reason, refuse_write

CONFIG_VERSION = 1
_KIND_NAMES = {stat.S_IFIFO: "FIFO", stat.S_IFDIR: "directory", stat.S_IFCHR: "character device",
               stat.S_IFBLK: "block device", stat.S_IFSOCK: "socket"}
MARKER_DIR = "manifests"
INDEX_CLOCK_SLACK_NS = 2 * 10**9  # file times come from a coarser clock than time.time_ns()
LEASE_TTL_NS = 24 * 3600 * 10**9
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
    if name.startswith("sha256:") or _is_hex_prefix(name):
        raise UnsafeInput(f"invalid name {name!r}: looks like a digest")
    return name


def _is_hex_prefix(text: str) -> bool:
    return len(text) >= 12 and all(c in "0123456789abcdef" for c in text)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _sync_tree(top: str) -> None:
    """fsync every file and directory below ``top`` (small trees: marker backfill)."""
    for dirpath, _dirs, files in os.walk(top):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def new_index(store_path: str, origin: str) -> None:
    """Create an empty, initialised index at STORE/meta (made aside, renamed in; the first creator wins)."""
    tmp = os.path.join(store_path, f"meta.{origin}-{secrets.token_hex(4)}")
    meta = MetaDB(tmp, create=True)
    try:
        def fn(txn: object) -> None:
            t: object = txn
            t.put(b"schema", b"1", db=meta.db("info"))  # type: ignore[attr-defined]
            t.put(b"index-created-ns", str(time.time_ns()).encode(), db=meta.db("info"))  # type: ignore
            t.put(b"index-state", b"complete", db=meta.db("info"))  # type: ignore[attr-defined]
        meta.write(fn)
    finally:
        meta.close()
    try:
        fs.renameat2(-100, tmp, -100, os.path.join(store_path, "meta"))
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        _remove_tree(tmp)
    _fsync_dir(store_path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@dataclass(frozen=True)
class TagInfo:
    name: str
    digest: str
    time_ns: int
    size: int


class Lease:
    """Protects what it names from gc while its owner lives (flock on a lock file)."""

    def __init__(self, store: Store, lease_id: str, fd: int) -> None:
        self.store, self.id, self.fd = store, lease_id, fd

    @property
    def tmp_dir(self) -> str:
        return os.path.join(self.store.path, "tmp", self.id)

    def add_manifest(self, digest: str) -> None:
        self.add([digest])

    def add(self, digests: Iterable[str]) -> None:
        """Protect these manifests or blobs too (one transaction); a blob must be checked for
        afterwards: gc honours the lease from this commit on."""
        new = list(digests)
        if not new:
            return

        def fn(txn: object) -> None:
            db = self.store.meta.db("leases")
            raw = txn.get(self.id.encode(), db=db)  # type: ignore[attr-defined]
            rec: dict[str, Any] = (json.loads(raw) if raw
                                   else {"expiry_ns": time.time_ns() + LEASE_TTL_NS, "manifests": []})
            have = set(rec["manifests"])
            rec["manifests"].extend(d for d in dict.fromkeys(new) if d not in have)
            txn.put(self.id.encode(), json.dumps(rec).encode(), db=db)  # type: ignore[attr-defined]
        self.store.meta.write(fn)

    def release(self) -> None:
        if self.fd < 0:
            return
        self.store.meta.write(lambda txn: txn.delete(self.id.encode(), db=self.store.meta.db("leases")))
        try:
            os.unlink(os.path.join(self.store.path, "leases", self.id + ".lock"))
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = -1


class Store:
    """An open store. Create with ``Store.open(path)``."""

    def __init__(self, path: str, config: dict[str, object], meta: MetaDB) -> None:
        self.path = path
        self.config = config
        self.meta = meta
        ch = config["chunker"]
        assert isinstance(ch, dict)
        self.chunking = ChunkParams(ch["min_size"], ch["avg_size"], ch["max_size"], ch["threshold"])
        self.blob_root = os.path.join(path, "blobs", "sha256")
        self.readonly = getattr(meta, "readonly", False)  # castore/store/readonly.py
        self.record = revisions.RecordPolicy()  # how set_tag records versions
        self.root_fd = -1  # the store directory, checked (Store.open); every store dir is reached from it
        self._shard_fds: dict[str, int] = {}

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | None = None, *, create: bool = True) -> Store:
        """Open (and on first use create) the store at ``path``. Raises StoreUnusable."""
        path = os.path.abspath(path or default_store_path())
        root_fd = -1
        try:
            cfg_path = os.path.join(path, "config")
            if not os.path.lexists(cfg_path):
                if not create:
                    raise StoreUnusable(f"no store at {path}")
                os.makedirs(path, mode=0o700, exist_ok=True)
                root_fd = _open_root(path, new=True)
                cls._create(path)
            else:
                root_fd = _open_root(path, new=False)
            ro = bool(readonly_reason(path))
            cfd = fs.open_beneath(root_fd, "config", os.O_RDONLY)
            with open(cfd, "rb") as f:
                config = json.loads(f.read())
            if not isinstance(config, dict) or config.get("version") != CONFIG_VERSION:
                raise StoreUnusable(f"store at {path} has an unknown format version")
            if config.get("digest_algorithm") != "sha256":
                raise StoreUnusable(f"store at {path} uses an unsupported digest algorithm")
            for d in ("blobs", "blobs/sha256", "tmp", "leases", "links") if not ro else ():
                _ensure_dir(root_fd, d, path)
            for d in ("blobs/sha256", "links"):
                _check_shards(root_fd, d, path)
            # Only _create and fsck --rebuild-index make an index: a lost one is refused, never re-created
            # empty (gc would take every blob for an orphan).
            if not os.path.exists(os.path.join(path, "meta", "data.mdb")):
                raise IntegrityError(f"store at {path} has no index (meta/data.mdb is missing); {REBUILD_HINT}")
            meta = MetaDB(os.path.join(path, "meta"), create=False, readonly=ro)
        except BaseException as exc:
            if root_fd >= 0:
                os.close(root_fd)
            if isinstance(exc, (ValueError, KeyError)):
                raise StoreUnusable(f"store at {path}: unreadable config ({exc})") from exc
            if isinstance(exc, PermissionError):
                raise StoreUnusable(f"store at {path}: permission denied") from exc
            if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
                raise UnsafeInput(f"store at {path}: {exc.filename or 'a path'} is a symlink; refusing to "
                                  "follow it (it could redirect the store's writes)") from exc
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise ResourceLimit(f"store at {path}: no space left on device") from exc
            if isinstance(exc, OSError):
                raise StoreUnusable(f"store at {path}: {exc.strerror}") from exc
            raise
        store = cls(path, config, meta)
        store.root_fd = root_fd
        store._check_schema()
        if not ro and not os.path.isdir(os.path.join(path, MARKER_DIR)):
            with contextlib.suppress(OSError):  # best effort (a read-only user): the first commit does it
                store._backfill_markers()
        return store

    @staticmethod
    def _create(path: str) -> None:
        for i in range(256):
            os.makedirs(os.path.join(path, "blobs", "sha256", f"{i:02x}"), mode=0o700, exist_ok=True)
        cp = ChunkParams()
        config = {"version": CONFIG_VERSION, "store_id": secrets.token_hex(16), "digest_algorithm": "sha256",
                  "chunker": {"algorithm": "fastcdc2020", "min_size": cp.min_size, "avg_size": cp.avg_size,
                              "max_size": cp.max_size, "threshold": cp.threshold},
                  "schema_version": 1}
        os.makedirs(os.path.join(path, MARKER_DIR), exist_ok=True)
        if not os.path.exists(os.path.join(path, "meta", "data.mdb")):
            new_index(path, "init")
        tmp = os.path.join(path, f".config.{secrets.token_hex(6)}")
        with open(tmp, "wb") as f:
            f.write(json.dumps(config, indent=1).encode())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, os.path.join(path, "config"))  # first creator wins
        except FileExistsError:
            pass
        os.unlink(tmp)
        _fsync_dir(path)

    def _check_schema(self) -> None:
        with self.meta.read() as txn:
            v = txn.get(b"schema", db=self.meta.db("info"))
            state = txn.get(b"index-state", db=self.meta.db("info"))
        if v is None or state == b"building":
            why = "was never initialised" if v is None else "is an unfinished rebuild"
            raise IntegrityError(f"store at {self.path}: the index {why}; {REBUILD_HINT}")
        if v != b"1":
            raise StoreUnusable(f"store at {self.path}: metadata schema {v!r} is not supported")

    def index_doubt(self) -> str:
        """Why the index looks younger than the store's blobs ('' when it does not).

        An index that records no manifest while blob files it does not know
        predate its creation (``index-created-ns``; any such file for an index
        of an older version, which has no creation record) was lost and made
        again empty: gc would take every blob for an orphan. Only a store
        without manifests pays the scan, and it stops at the first such file.
        """
        with self.meta.read() as txn:
            if txn.cursor(db=self.meta.db("refs")).first():
                return ""
            raw = txn.get(b"index-created-ns", db=self.meta.db("info"))
        created = int(raw) - INDEX_CLOCK_SLACK_NS if raw else None
        blobs_db = self.meta.db("blobs")
        for shard in sorted(_listdir(self.blob_root)):
            sdir = os.path.join(self.blob_root, shard)
            for n in _listdir(sdir):
                if len(n) != 64:
                    continue
                try:
                    st = os.lstat(os.path.join(sdir, n))
                    key = bytes.fromhex(n)
                except (OSError, ValueError):
                    continue
                if created is not None and st.st_mtime_ns >= created:
                    continue
                with self.meta.read() as txn:
                    if txn.get(key, db=blobs_db) is not None:
                        continue
                when = "before this index was created" if raw else "and the index has no creation record"
                return (f"store at {self.path}: the index holds no manifest, but blob files it does not know "
                        f"exist {when} (sha256:{n}): the index was lost and re-created; {REBUILD_HINT}")
        return ""

    # ----------------------------------------------------------- manifest markers

    def marker_path(self, digest: str) -> str:
        return os.path.join(self.path, MARKER_DIR, digest[7:9], digest[7:])

    def mark_manifest(self, digest: str, event: str = "", name: str = "", *, sync: bool = True) -> None:
        """Record, outside the index, that ``digest`` is a manifest (and a catalog event for it).

        STORE/manifests/ab/<hex> exists for every manifest the store committed;
        its lines ``+ TIME_NS NAME`` / ``- TIME_NS NAME`` log the names given
        to and taken from it. fsck --rebuild-index trusts only these files (and
        the old index) to tell manifests from user files that parse as one.
        ``sync=False``: the caller makes it durable (a syncfs that follows).
        """
        path = self.marker_path(digest)
        line = f"{event} {time.time_ns()} {name}\n".encode() if event else b""
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        new_shard = False
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            if not os.path.isdir(os.path.join(self.path, MARKER_DIR)):
                self._backfill_markers()  # only the backfill makes the directory: it lists every older manifest
            with contextlib.suppress(FileExistsError):
                os.mkdir(os.path.dirname(path))
                new_shard = True
            fd = os.open(path, flags | os.O_CREAT, 0o644)
        try:
            if line:
                _write_all(fd, line)
            if sync:  # cheap when clean; a marker left by a killed commit may not be durable yet
                os.fdatasync(fd)
        finally:
            os.close(fd)
        if sync:
            _fsync_dir(os.path.dirname(path))
            if new_shard:
                _fsync_dir(os.path.dirname(os.path.dirname(path)))

    def _backfill_markers(self) -> None:
        """A store of an older version: a marker for every manifest its index records, then the directory."""
        tmp = os.path.join(self.path, f"{MARKER_DIR}.new-{secrets.token_hex(4)}")
        os.makedirs(tmp)
        for d in self.manifests():
            os.makedirs(os.path.join(tmp, d[7:9]), exist_ok=True)
            with open(os.path.join(tmp, d[7:9], d[7:]), "wb") as f:
                for t in self.tags():
                    if t.digest == d:
                        f.write(f"+ {t.time_ns} {t.name}\n".encode())
        _sync_tree(tmp)
        try:
            fs.renameat2(-100, tmp, -100, os.path.join(self.path, MARKER_DIR))
        except FileExistsError:
            _remove_tree(tmp)
            return
        _fsync_dir(self.path)

    # ------------------------------------------------------------------- locks

    def shared_lock(self) -> object:
        """Locking: shared. Held while an ingest commits; gc waits for it."""
        if self.readonly:
            return no_lock()
        return flocked(os.path.join(self.path, "lock"), exclusive=False)

    def exclusive_lock(self, wait: bool = True) -> object:
        """Locking: exclusive (gc)."""
        if self.readonly:
            refuse_write(self.path)
        return flocked(os.path.join(self.path, "lock"), exclusive=True, wait=wait)

    @contextmanager
    def lease(self, manifests: Iterable[str] = ()) -> Iterator[Lease]:
        """A lease for the duration of the block; its tmp dir is removed at the end."""
        import fcntl
        if self.readonly:
            with no_lease(self.path) as nl:
                yield nl  # type: ignore[misc]
            return
        lid = f"{time.time_ns():x}-{secrets.token_hex(6)}"
        lock_path = os.path.join(self.path, "leases", lid + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        rec = {"expiry_ns": time.time_ns() + LEASE_TTL_NS, "manifests": list(manifests), "pid": os.getpid()}
        self.meta.write(lambda t: t.put(lid.encode(), json.dumps(rec).encode(), db=self.meta.db("leases")))
        lease = Lease(self, lid, fd)
        try:
            yield lease
        finally:
            warn_mounts_kept(_remove_tree(lease.tmp_dir))
            lease.release()

    def live_leases(self) -> list[tuple[str, dict[str, object]]]:
        """Leases whose owner still holds its lock and that have not expired."""
        out = []
        now = time.time_ns()
        with self.meta.read() as txn:
            rows = list(txn.cursor(db=self.meta.db("leases")))
        for k, v in rows:
            lid = k.decode()
            rec = json.loads(v)
            if rec.get("expiry_ns", 0) > now and is_held(os.path.join(self.path, "leases", lid + ".lock")):
                out.append((lid, rec))
        return out

    # ------------------------------------------------------------------- blobs

    def blob_path(self, digest: str) -> str:
        h = digest[7:]
        return os.path.join(self.blob_root, h[:2], h)

    def open_blob(self, digest: str) -> int:
        """A read-only fd on the blob file of ``digest``, refused unless it is a regular file.

        O_NONBLOCK: a FIFO put where a blob should be would block open() and
        read() forever (checkout, export, mount); on a regular file it changes nothing.
        Raises BlobNotFound, or IntegrityError for anything but a regular file.
        """
        path = self.blob_path(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise IntegrityError(f"blob {digest} is a symlink in the store ({path}), not a regular file") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            kind = _KIND_NAMES.get(stat.S_IFMT(mode), f"file of type {stat.S_IFMT(mode):#o}")
            raise IntegrityError(f"blob {digest} is a {kind} in the store, not a regular file ({path}); "
                                 "run `continuity fsck`")
        return fd

    def has_blob(self, digest: str) -> bool:
        with self.meta.read() as txn:
            return txn.get(dkey(digest), db=self.meta.db("blobs")) is not None

    def missing_blobs(self, digests: Iterable[str]) -> set[str]:
        """The digests of ``digests`` that the index does not hold."""
        db = self.meta.db("blobs")
        with self.meta.read() as txn:
            return {d for d in digests if txn.get(dkey(d), db=db) is None}

    def blob_size(self, digest: str) -> int | None:
        with self.meta.read() as txn:
            raw = txn.get(dkey(digest), db=self.meta.db("blobs"))
        return None if raw is None else BLOB_ROW.unpack(raw)[0]

    def read_blob(self, digest: str, *, limit: int = 1 << 31) -> bytes:
        """The verified bytes of a blob. Raises BlobNotFound or IntegrityError."""
        fd = self.open_blob(digest)
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise IntegrityError(f"blob {digest} is too large ({size} bytes)")
            data = b""
            while len(data) < size:
                more = os.read(fd, size - len(data))
                if not more:
                    break
                data += more
        finally:
            os.close(fd)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"blob {digest} is corrupt (digest mismatch)")
        return data

    def put_blob(self, data: bytes, kind: int, txn: object | None = None) -> str:
        """Store ``data`` durably (per-blob fsync) and index it. Returns its digest."""
        digest = self.write_blob_file(data)
        row = BLOB_ROW.pack(len(data), kind)
        if txn is not None:
            txn.put(dkey(digest), row, db=self.meta.db("blobs"))  # type: ignore[attr-defined]
        else:
            self.meta.write(lambda t: t.put(dkey(digest), row, db=self.meta.db("blobs")))
        return digest

    def write_blob_file(self, data: bytes) -> str:
        """Store ``data`` as a blob file, durably (per-blob fsync), not indexed. Returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not os.path.exists(path):
            tmp = os.path.join(self.path, "tmp", f".put-{secrets.token_hex(8)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except OSError as exc:
                os.close(fd)
                os.unlink(tmp)
                if exc.errno == errno.ENOSPC:
                    raise ResourceLimit(f"no space left on device writing {digest}") from exc
                raise
            os.close(fd)
            self._install(tmp, digest)
            _fsync_dir(os.path.dirname(path))
        else:
            try:
                os.utime(path)  # freshen (git): gc's grace period for unnamed manifests counts from now
            except OSError:
                pass
        return digest

    def shard_fd(self, area: str, shard: str) -> int:
        """An fd (kept open) on the shard directory ``area/shard`` (``blobs/sha256`` or ``links``),
        made when missing, reached from the store root without following any symlink: a shard
        replaced by a symlink is refused (UnsafeInput), never written through."""
        key = f"{area}/{shard}"
        fd = self._shard_fds.get(key)
        if fd is not None:
            return fd
        fd = self.open_shard(area, shard)
        old = self._shard_fds.setdefault(key, fd)
        if old != fd:  # another thread opened it meanwhile
            os.close(fd)
        return old

    def open_shard(self, area: str, shard: str) -> int:
        """A new fd on ``area/shard`` (see ``shard_fd``); the caller closes it."""
        key = f"{area}/{shard}"
        if self.root_fd < 0:
            raise CastoreError(f"store at {self.path} is not open")
        try:
            afd = fs.open_beneath(self.root_fd, area, os.O_PATH | os.O_DIRECTORY)
            try:
                try:
                    os.mkdir(shard, 0o700, dir_fd=afd)
                except FileExistsError:
                    pass
                fd = fs.open_beneath(afd, shard, os.O_RDONLY | os.O_DIRECTORY)
            finally:
                os.close(afd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                raise UnsafeInput(f"store at {self.path}: {key} is not a plain directory (a symlink?); "
                                  "refusing to write through it") from exc
            raise
        return fd

    def __del__(self) -> None:
        for fd in [*getattr(self, "_shard_fds", {}).values(), getattr(self, "root_fd", -1)]:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._shard_fds, self.root_fd = {}, -1

    def _install(self, tmp: str, digest: str) -> bool:
        """Rename a verified temp file into place; False when it already existed."""
        h = digest[7:]
        try:
            try:
                fs.renameat2(-100, tmp, self.shard_fd("blobs/sha256", h[:2]), h)
            except FileNotFoundError:
                # The shard was removed since it was opened (creating in it fails): open it again.
                old = self._shard_fds.pop(f"blobs/sha256/{h[:2]}", -1)
                if old >= 0:
                    os.close(old)
                fs.renameat2(-100, tmp, self.shard_fd("blobs/sha256", h[:2]), h)
        except FileExistsError:
            os.unlink(tmp)
            return False
        return True

    def sync_in_background(self, fd: int) -> Callable[[], None]:
        """Start a syncfs of the store now; returns a function that waits for it (re-raising its error).

        An ingest starts it as soon as every blob is written, and encodes its
        manifest while the disk catches up; install_staged waits for it
        before anything is indexed. ``fd``: see install_staged.
        """
        return fs.syncfs_in_background(os.dup(fd), close=True)

    def install_staged(self, staged: list[tuple[str, str]], synced: Callable[[], None] | None = None, *,
                       sync_fd: int) -> None:
        """Batched durability: syncfs, rename every staged temp into place, syncfs.

        Staged files were hashed as they were written, so their names are
        their digests. Entries ("", digest) were published by a worker
        already (castore.readers.Processor._publish); the first syncfs makes
        them durable. Either way a blob is indexed only after this returns.
        ``sync_fd``: an fd on the store's filesystem opened before the blobs
        were written (a lease's lock file): syncfs reports the writeback
        errors that happened since its file was opened (errseq), so one
        opened afterwards could miss an EIO that lost a staged blob.
        """
        if not staged:
            if synced is not None:
                synced()
            return
        staged = [(tmp, d) for tmp, d in staged if tmp]  # ("", digest): already published, only needs the syncfs
        sfd = os.dup(sync_fd)
        try:
            if synced is not None:
                synced()  # a syncfs started after the last blob was written
            else:
                fs.syncfs(sfd)
            crashpoint("ingest-after-syncfs")
            if len(staged) < 2048:
                for tmp, digest in staged:
                    self._install(tmp, digest)
            else:
                # renameat2 goes through ctypes, which releases the GIL: two threads rename twice as fast.
                from concurrent.futures import ThreadPoolExecutor
                half = len(staged) // 2
                with ThreadPoolExecutor(2) as ex:
                    for f in [ex.submit(self._install_all, part) for part in (staged[:half], staged[half:])]:
                        f.result()
            crashpoint("ingest-after-rename")
            fs.syncfs(sfd)
        finally:
            os.close(sfd)

    def _install_all(self, staged: list[tuple[str, str]]) -> None:
        for tmp, digest in staged:
            self._install(tmp, digest)

    def blob_file_verified(self, digest: str, size: int) -> bool:
        """True when the blob file exists with this size and its bytes hash to ``digest``."""
        try:
            fd = self.open_blob(digest)
        except (OSError, IntegrityError):
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                return False
            return hash_fd(fd, expect=size) == (digest, size)
        finally:
            os.close(fd)

    def blob_file_ok(self, digest: str, size: int) -> bool:
        try:
            st = os.stat(self.blob_path(digest), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == size

    # ------------------------------------------------- gc / publisher handshake

    def gc_epoch(self) -> tuple[bytes, bool]:
        """(generation, a gc is deleting now): lets an ingest know whether a gc may
        have unlinked names it published without the lock (see Processor._publish)."""
        with self.meta.read() as txn:
            db = self.meta.db("info")
            return txn.get(b"gc-gen", db=db) or b"0", txn.get(b"gc-active", db=db) == b"1"

    def gc_deleting(self, active: bool) -> None:
        """Mark (before its first delete) or unmark (after its last unlink) a gc run."""
        def fn(txn: object) -> None:
            db = self.meta.db("info")
            if active:
                gen = int(txn.get(b"gc-gen", db=db) or b"0") + 1  # type: ignore[attr-defined]
                txn.put(b"gc-gen", str(gen).encode(), db=db)  # type: ignore[attr-defined]
            txn.put(b"gc-active", b"1" if active else b"0", db=db)  # type: ignore[attr-defined]
        self.meta.write(fn)

    # ----------------------------------------------------------------- catalog

    def load_manifest(self, digest: str) -> Manifest:
        """Read, verify (by digest) and parse a manifest blob; validated unless indexed.

        A manifest gets its `refs` row only from commit_manifest, which
        validated those exact bytes (they are checked against the digest here),
        so an indexed manifest need not be validated again (13% of a
        100k-entry checkout).
        """
        data = self.read_blob(digest)
        m = codec.loads(data, source=digest)
        return m if self.manifest_indexed(digest) else validate(m)

    def manifest_indexed(self, digest: str) -> bool:
        """The manifest has its `refs` row: commit_manifest validated it (and its blobs are in)."""
        with self.meta.read() as txn:
            return txn.get(dkey(digest), db=self.meta.db("refs")) is not None

    def set_tag(self, txn: object, name: str, digest: str, size: int) -> None:
        """Point ``name`` at ``digest`` and record a version (not when the name's newest version already
        is this manifest, unless forced: see castore/store/revisions.py RecordPolicy)."""
        if revisions.unchanged(txn, self.meta.db("tags"), self.meta.db("history"), name, digest, self.record):
            return
        now = time.time_ns()
        t: object = txn
        t.put(name.encode(), json.dumps({"digest": digest, "time_ns": now, "size": size}).encode(),  # type: ignore
              db=self.meta.db("tags"))
        t.put(revisions.history_key(name, now), revisions.history_value(digest, self.record.flags),  # type: ignore
              db=self.meta.db("history"))

    def tag(self, name: str, digest: str) -> None:
        """Name a manifest the store recorded as one (its `refs` row); any other blob is refused."""
        check_name(name)
        size = self.blob_size(digest)
        if size is None:
            raise BlobNotFound(digest)
        self.require_manifest(digest)
        self.mark_manifest(digest, "+", name)
        self.meta.write(lambda t: self.set_tag(t, name, digest, size))

    def require_manifest(self, digest: str) -> None:
        """Raise unless ``digest`` is a manifest the store recorded (a blob that merely parses as one is not)."""
        if self.manifest_indexed(digest):
            return
        if self.blob_size(digest) is None and not os.path.exists(self.blob_path(digest)):
            raise NotFound(f"no manifest {digest} in the store")
        raise IntegrityError(f"{digest} is a blob of the store, not a manifest it recorded (a stored file is "
                             "never taken for a manifest; name a manifest file to store it)")

    def untag(self, name: str) -> None:
        def fn(t: object) -> bool:
            return bool(t.delete(name.encode(), db=self.meta.db("tags")))  # type: ignore[attr-defined]
        digest = self.get_tag(name)
        if digest is not None:
            self.mark_manifest(digest, "-", name)
        if not self.meta.write(fn):
            raise NotFound(f"no manifest named {name!r}")

    def tags(self) -> list[TagInfo]:
        with self.meta.read() as txn:
            rows = list(txn.cursor(db=self.meta.db("tags")))
        out = []
        for k, v in rows:
            rec = json.loads(v)
            out.append(TagInfo(k.decode(), rec["digest"], rec["time_ns"], rec["size"]))
        return out

    def history(self, name: str) -> list[TagInfo]:
        """Every manifest recorded under ``name``, oldest first."""
        prefix = name.encode() + b"\0"
        out = []
        with self.meta.read() as txn:
            cur = txn.cursor(db=self.meta.db("history"))
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    if len(k) != len(prefix) + 8:
                        continue
                    (t,) = struct.unpack(">Q", k[len(prefix):])
                    d = dstr(v[:32])
                    out.append(TagInfo(name, d, t, 0))
        return out

    def get_tag(self, name: str) -> str | None:
        with self.meta.read() as txn:
            raw = txn.get(name.encode(), db=self.meta.db("tags"))
        return None if raw is None else str(json.loads(raw)["digest"])

    def manifests(self) -> list[str]:
        """Every manifest digest the store holds."""
        with self.meta.read() as txn:
            return [dstr(k) for k in txn.cursor(db=self.meta.db("refs")).iternext(values=False)]

    def resolve(self, ref: str) -> str:
        """The manifest digest a user reference names: catalog name, digest or prefix."""
        if ref.startswith("sha256:") and is_digest(ref):
            return ref
        d = self.get_tag(ref) if len(ref.encode()) < 500 else None
        if d is not None:
            return d
        d = revisions.resolve_revision(self, ref) if len(ref.encode()) < 600 else None
        if d is not None:
            return d
        hexpart = ref[7:] if ref.startswith("sha256:") else ref
        if _is_hex_prefix(hexpart) and len(hexpart) < 64:
            found = [m for m in self.manifests() if m[7:].startswith(hexpart)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise UnsafeInput(f"digest prefix {hexpart} is ambiguous ({len(found)} manifests)")
        raise NotFound(f"no manifest named {ref!r} in the store{revisions.short_prefix_hint(ref)}")

    def record_manifest(self, txn: object, digest: str, refs: Iterable[str]) -> None:
        """Index a manifest's references (for gc), in the caller's transaction."""
        keys = sorted({dkey(d) for d in refs})
        txn.put(dkey(digest), b"".join(keys), db=self.meta.db("refs"))  # type: ignore[attr-defined]

    def manifest_refs(self, digest: str) -> list[str]:
        with self.meta.read() as txn:
            raw = txn.get(dkey(digest), db=self.meta.db("refs"))
        if raw is None:
            return []
        return [dstr(raw[i:i + 32]) for i in range(0, len(raw), 32)]

    # ------------------------------------------------ whole file -> its chunks

    def chunk_lists(self, digests: Iterable[str]) -> dict[str, tuple[Chunk, ...]]:
        """The chunk lists recorded (``chunkmap``) for these whole-file digests, where there is one.

        A file of the chunking threshold or more is stored as chunks only; a
        manifest that names it by its whole-file digest alone (``build``,
        upstream's Go ``continuity build``) is served through this mapping.
        """
        keys = sorted({dkey(d) for d in digests})
        if not keys:
            return {}
        with self.meta.read() as txn:
            rows = txn.cursor(db=self.meta.db("chunkmap")).getmulti(keys)
        out = {}
        for k, raw in rows:
            chunks = unpack_chunks(bytes(raw))
            if chunks:
                out[dstr(bytes(k))] = chunks
        return out

    def content_refs(self, m: Manifest) -> set[str]:
        """The blobs serving ``m`` needs: manifest_refs, with every whole-file digest the index
        lacks but the chunk map knows replaced by its chunks."""
        refs = manifest_refs(m)
        whole = {r.digest for r in m.files() if not r.chunks and r.size > self.chunking.min_size}
        for d, chunks in self.chunk_lists(self.missing_blobs(refs & whole)).items():
            refs.discard(d)
            refs.update(c.digest for c in chunks)
        return refs

    def with_chunks(self, m: Manifest) -> Manifest:
        """``m`` with a chunk list on every regular file whose whole-file blob the index lacks and
        whose chunks the chunk map records (chunk lists that do not cover the file are ignored)."""
        # A file no larger than one chunk at least is never split (a cheap filter: most files are small).
        need = {r.digest for r in m.files() if not r.chunks and r.size > self.chunking.min_size}
        if not need:
            return m
        found = self.chunk_lists(self.missing_blobs(need))
        if not found:
            return m
        out: list[Resource] = []
        for r in m.resources:
            if isinstance(r, RegularFile) and not r.chunks:
                chunks = found.get(r.digest)
                if chunks and chunks[-1].end == r.size:
                    r = _replace_chunks(r, chunks)
            out.append(r)
        return Manifest(tuple(out))


def manifest_refs(m: Manifest) -> set[str]:
    """Every blob digest a manifest needs: whole files or their chunks, ADS blobs."""
    out: set[str] = set()
    for r in m.resources:
        if hasattr(r, "digest") and isinstance(r.digest, str):
            chunks = getattr(r, "chunks", ())
            if chunks:
                out.update(c.digest for c in chunks)
            else:
                out.add(r.digest)  # type: ignore[union-attr]
        for a in r.ads:
            if a.digest:
                out.add(a.digest)
    return out


def pack_chunks(chunks: Iterable[Chunk]) -> bytes:
    """A ``chunkmap`` row: (raw digest, end) per chunk; each begins where the one before ends."""
    return b"".join(CHUNK_ROW.pack(bytes.fromhex(c.digest[7:]), c.end) for c in chunks)


def unpack_chunks(raw: bytes) -> tuple[Chunk, ...]:
    """The chunks of a ``chunkmap`` row; () when it is malformed (fsck reports it)."""
    if not raw or len(raw) % CHUNK_ROW.size:
        return ()
    out, begin = [], 0
    for d, end in CHUNK_ROW.iter_unpack(raw):
        if end <= begin:
            return ()
        out.append(Chunk("sha256:" + d.hex(), begin, end))
        begin = end
    return tuple(out)


def chunk_map_rows(m: Manifest) -> list[tuple[bytes, bytes]]:
    """The ``chunkmap`` rows of a manifest's chunked files, sorted by key (for putmulti)."""
    return sorted({(dkey(r.digest), pack_chunks(r.chunks)) for r in m.files() if r.chunks})


def _replace_chunks(r: RegularFile, chunks: tuple[Chunk, ...]) -> RegularFile:
    import dataclasses
    return dataclasses.replace(r, chunks=chunks)


def _remove_tree(path: str) -> list[str]:
    """Remove a directory tree without following symlinks (fd-relative, iterative).

    Mount points below it are left untouched (see ``remove_contents``); their paths are returned.
    """
    try:
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return []
    try:
        if fs.is_mount_root(top):
            return [path]
        kept = remove_contents(top)
    finally:
        os.close(top)
    try:
        os.rmdir(path)
    except OSError:
        pass
    return [f"{path}/{k}" for k in kept]


def _open_root(path: str, *, new: bool) -> int:
    """An fd on the store directory once it is safe to use: ours (root's, when root runs),
    writable by no one else, mode 0700 (tightened when it is ours and only readable by others:
    blobs of 0600 files and setuid hardlink objects are then no one else's to read or run).
    A new store may be made in an existing empty directory, which is then chmod 0700."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        me = os.geteuid()
        if st.st_uid != me:
            raise UnsafeInput(f"store at {path} is owned by uid {st.st_uid}, not by uid {me} who runs this: "
                              "refusing to use it (its owner could redirect the store's writes); "
                              "use a store of your own")
        if new and st.st_mode & 0o077:
            if os.listdir(fd) and st.st_mode & 0o022:
                raise UnsafeInput(f"store at {path}: directory is not empty and others may write in it: "
                                  "refusing to make a store there")
            os.fchmod(fd, 0o700)
        elif st.st_mode & 0o022:
            raise UnsafeInput(f"store at {path} is writable by group or others (mode {st.st_mode & 0o7777:04o}): "
                              "refusing to use it; check its contents, then chmod 0700 it")
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
    fd = _open_root(path, new=False)
    try:
        for d in ("blobs", "blobs/sha256", "links"):
            if os.path.lexists(os.path.join(path, d)):
                st = os.stat(d, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                    raise UnsafeInput(f"store at {path}: {d} is not a directory of ours (a symlink?): refusing it")
                if d != "blobs":
                    _check_shards(fd, d, path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeInput(f"store at {path}: {exc.filename} is a symlink; refusing to follow it") from exc
        raise
    finally:
        os.close(fd)


def _ensure_dir(root_fd: int, rel: str, path: str) -> None:
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


def _check_shards(root_fd: int, rel: str, path: str) -> None:
    """No shard directory below ``rel`` is a symlink (one readdir: the types come with the names)."""
    fd = fs.open_beneath(root_fd, rel, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with os.scandir(fd) as it:
            for e in it:
                if e.is_symlink():
                    raise OSError(errno.ELOOP, "is a symlink", f"{rel}/{e.name}")
    finally:
        os.close(fd)


def discard_dir(parent_fd: int, name: str) -> list[str]:
    """Remove the directory ``name`` in ``parent_fd`` and all below it, never following symlinks.

    Mount points at or below it are left untouched; their paths (relative to ``parent_fd``) are returned.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError:
        return []
    try:
        if fs.is_mount_root(fd, os.fstat(parent_fd).st_dev):
            return [name]
        kept = remove_contents(fd)
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except OSError:
        pass
    return [f"{name}/{k}" for k in kept]


def remove_contents(dir_fd: int) -> list[str]:
    """Empty the directory ``dir_fd`` (iteratively; never follows symlinks).

    Never crosses into another filesystem (like ``rm --one-file-system``): a mount point below
    ``dir_fd`` (a directory on another device, or any mount root, bind mounts included) is neither
    entered, chmod'ed nor removed, and a mounted file is not unlinked. Their paths (relative to
    ``dir_fd``) are returned; the directories holding them stay, emptied of everything else.
    """
    kept: list[str] = []
    stack: list[tuple[int, str | None, str]] = [(os.dup(dir_fd), None, "")]
    tried: set[tuple[int, int]] = set()
    while stack:
        fd, name_in_parent, rel = stack[-1]
        pushed = False
        with os.scandir(fd) as it:
            entries = list(it)
        dev = os.fstat(fd).st_dev
        for e in entries:
            child = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir(follow_symlinks=False):
                try:
                    cfd = os.open(e.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError:
                    continue
                cst = os.fstat(cfd)
                if (cst.st_dev, cst.st_ino) in tried:
                    os.close(cfd)
                    continue
                tried.add((cst.st_dev, cst.st_ino))
                if cst.st_dev != dev or fs.is_mount_root(cfd, dev):
                    os.close(cfd)
                    kept.append(child)
                    continue
                try:
                    os.fchmod(cfd, 0o700)
                except OSError:
                    pass
                stack.append((cfd, e.name, child))
                pushed = True
                break
            try:
                os.unlink(e.name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:  # a file bind-mounted there
                    raise
                if child not in kept:
                    kept.append(child)
        if pushed:
            continue
        os.close(fd)
        stack.pop()
        if stack and name_in_parent is not None:
            try:
                os.rmdir(name_in_parent, dir_fd=stack[-1][0])
            except OSError:
                pass
    return kept


__all__ = ["Lease", "Store", "TagInfo", "check_digest", "check_name", "chunk_map_rows", "default_store_path",
           "manifest_refs", "pack_chunks", "unpack_chunks", "CastoreError"]
