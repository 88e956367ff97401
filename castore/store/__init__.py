"""The content-addressed store: blob files named by digest, metadata in LMDB.

``Store`` is a facade over one module per concern (docs/design.md)::

    layout.py     the directory: default path, creation, checks before use, names
    blobs.py      blob files and their index rows (BlobFiles)
    catalog.py    names, history, manifest records and markers (Catalog, TagInfo)
    chunkmap.py   whole-file digest -> chunks (ChunkMap, manifest_refs)
    leases.py     leases, the store lock, the gc handshake (Leases, Lease)
    commit.py     the shared commit path of ingest, tar import and pull
    meta.py       the LMDB environment; lock.py every flock; statcache.py
    apply_records.py  the rows of apply's per-ROOT records

Write order: blob bytes durable -> index rows -> manifest blob durable ->
manifest rows and catalog entry in one LMDB transaction. A crash leaves only
orphan files, which gc removes after a grace period.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os

from castore import fs
from castore.digest import check_digest
from castore.errors import CastoreError, IntegrityError, StoreUnusable, UnsafeInput, raise_if_full
from castore.fs.tree import listdir
from castore.store.blobs import BlobFiles
from castore.store.catalog import Catalog, TagInfo
from castore.store.chunkmap import ChunkMap, chunk_map_rows, manifest_refs, pack_chunks, unpack_chunks
from castore.store.layout import (
    CONFIG_VERSION,
    MARKER_DIR,
    check_name,
    check_shards,
    check_store_dir,
    create_store,
    default_store_path,
    ensure_dir,
    new_index,
    open_root,
)
from castore.store.leases import LEASE_TTL_NS, Lease, Leases
from castore.store.meta import REBUILD_HINT, MetaDB
from castore.store.readonly import readonly_reason
from castore.store.revisions import RecordPolicy

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up: castore/__init__.py)

if TYPE_CHECKING:
    from castore.readers import ChunkParams

INDEX_CLOCK_SLACK_NS = 2 * 10**9  # file times come from a coarser clock than time.time_ns()


class Store(BlobFiles, Catalog, ChunkMap, Leases):
    """An open store. Create with ``Store.open(path)``."""

    def __init__(self, path: str, config: dict[str, object], meta: MetaDB) -> None:
        self.path = path
        self.config = config
        self.meta = meta
        assert isinstance(config["chunker"], dict)
        self._chunking: ChunkParams | None = None
        self.blob_root = os.path.join(path, "blobs", "sha256")
        self.readonly = getattr(meta, "readonly", False)  # castore/store/readonly.py
        self.record = RecordPolicy()  # how set_tag records versions (castore/store/revisions.py)
        self.root_fd = -1  # the store directory, checked (Store.open); every store dir is reached from it
        self._shard_fds: dict[str, int] = {}

    @property
    def chunking(self) -> ChunkParams:
        """The store's FastCDC parameters (made on first use: the read-only verbs never import castore.readers)."""
        if self._chunking is None:
            from castore.readers import ChunkParams

            ch = self.config["chunker"]
            assert isinstance(ch, dict)
            self._chunking = ChunkParams(ch["min_size"], ch["avg_size"], ch["max_size"], ch["threshold"])
        return self._chunking

    @property
    def chunk_threshold(self) -> int:
        """The size from which files are chunked (``chunking.threshold``, without importing castore.readers:
        a checkout needs only this)."""
        ch = self.config["chunker"]
        assert isinstance(ch, dict)
        return int(ch["threshold"])

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
                root_fd = open_root(path, new=True)
                create_store(path)
            else:
                root_fd = open_root(path, new=False)
            ro = bool(readonly_reason(path))
            cfd = fs.open_beneath(root_fd, "config", os.O_RDONLY)
            with open(cfd, "rb") as f:
                config = json.loads(f.read())
            if not isinstance(config, dict) or config.get("version") != CONFIG_VERSION:
                raise StoreUnusable(f"store at {path} has an unknown format version")
            if config.get("digest_algorithm") != "sha256":
                raise StoreUnusable(f"store at {path} uses an unsupported digest algorithm")
            for d in ("blobs", "blobs/sha256", "tmp", "leases", "links") if not ro else ():
                ensure_dir(root_fd, d, path)
            for d in ("blobs/sha256", "links"):
                check_shards(root_fd, d, path)
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
                raise UnsafeInput(
                    f"store at {path}: {exc.filename or 'a path'} is a symlink; refusing to "
                    "follow it (it could redirect the store's writes)"
                ) from exc
            raise_if_full(exc, f"store at {path}")
            if isinstance(exc, OSError):
                raise StoreUnusable(f"store at {path}: {exc.strerror}") from exc
            raise
        store = cls(path, config, meta)
        store.root_fd = root_fd
        try:
            store._check_schema()
        except BaseException:
            store.close()
            raise
        if not ro and not os.path.isdir(os.path.join(path, MARKER_DIR)):
            with contextlib.suppress(OSError):  # best effort (a read-only user): the first commit does it
                store._backfill_markers()
        return store

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
        for shard in sorted(listdir(self.blob_root)):
            sdir = os.path.join(self.blob_root, shard)
            for n in listdir(sdir):
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
                return (
                    f"store at {self.path}: the index holds no manifest, but blob files it does not know "
                    f"exist {when} (sha256:{n}): the index was lost and re-created; {REBUILD_HINT}"
                )
        return ""

    def close(self) -> None:
        """Release the store's file descriptors: its directories' and, when no other open Store of this
        path in this process uses it, the LMDB environment's. Idempotent; the object is unusable after.
        ``with Store.open(path) as store:`` closes it at the end of the block."""
        self._close_dir_fds()
        meta = getattr(self, "meta", None)
        if meta is not None:
            meta.release()

    def _close_dir_fds(self) -> None:
        for fd in [*getattr(self, "_shard_fds", {}).values(), getattr(self, "root_fd", -1)]:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._shard_fds, self.root_fd = {}, -1

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        """The directory descriptors; the environment goes with the last reference to ``meta`` (MetaDB.__del__:
        ``Store.open(path).meta.read()`` keeps using it after the Store itself is gone)."""
        self._close_dir_fds()


__all__ = [
    "CONFIG_VERSION",
    "INDEX_CLOCK_SLACK_NS",
    "LEASE_TTL_NS",
    "MARKER_DIR",
    "CastoreError",
    "Lease",
    "Store",
    "TagInfo",
    "check_digest",
    "check_name",
    "check_store_dir",
    "chunk_map_rows",
    "default_store_path",
    "manifest_refs",
    "new_index",
    "pack_chunks",
    "unpack_chunks",
]
