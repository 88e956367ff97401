"""The store's metadata in one LMDB environment: the only importer of lmdb.

Sub-databases (keys and values are bytes; see docs/design.md):

    blobs      digest hex (32 raw bytes)  -> size u64, kind u8
    refs       manifest digest (32 bytes) -> every blob digest it references
    tags       name (utf-8)               -> json {digest, time_ns, size}
    history    name \\0 time_ns (8 bytes)  -> manifest digest (32 bytes) [flags (1 byte): revisions.py]
    leases     lease id (ascii)           -> json {expiry_ns, manifests, pid}
    statcache  dev u64, ino u64           -> marshal (size, mtime, ctime, digest, chunks, xattrs, holes)
    links      hardlink-object key        -> marshal (digest, ino, size, mtime_ns, ctime_ns)
    chunkmap   whole-file digest (32)     -> its chunks: (chunk digest 32 bytes, end u64 LE) each
    info       b"schema"                  -> version
    signatures manifest digest (32) + sha256 of the SSHSIG (32) -> json (castore/store/signatures.py)
    summary    manifest digest (32 bytes) -> tree bytes u64, regular files u64 (castore/store/summary.py)
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import lmdb

from castore.errors import DISK_FULL_ERRNOS, IntegrityError, ResourceLimit, StoreUnusable

SCHEMA_VERSION = 1
DBS = (
    "blobs",
    "refs",
    "tags",
    "history",
    "leases",
    "statcache",
    "links",
    "info",
    "roots",
    "chunkmap",
    "signatures",
    "summary",
)
BLOB_ROW = struct.Struct("<QB")
CHUNK_ROW = struct.Struct("<32sQ")  # one chunk of a `chunkmap` row: raw digest, end offset
KIND_RAW, KIND_CHUNK, KIND_MANIFEST, KIND_ADS = 0, 1, 2, 3
KIND_NAMES = {KIND_RAW: "file", KIND_CHUNK: "chunk", KIND_MANIFEST: "manifest", KIND_ADS: "ads"}
INITIAL_MAP = 1 << 30
# The transaction and sub-database types the store hands out (values are bytes: no ``buffers=True``
# anywhere); callers outside castore/store name them from here, never from lmdb. At run time they are
# plain names (every annotation is a string): importing typing would cost `list` 3 ms of its start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeAlias, TypeVar

    T = TypeVar("T")
    Txn: TypeAlias = "lmdb.Transaction[bytes]"
    DB: TypeAlias = "lmdb._Database"
else:
    T = Txn = DB = object

_ENVS: dict[str, tuple[int, lmdb.Environment]] = {}  # one environment per path per process (LMDB's rule)
_USERS: dict[str, int] = {}  # path -> how many open MetaDB objects of this process use its environment
REBUILD_HINT = "run `continuity fsck --rebuild-index` to rebuild it from the blob files"
# LMDB's meta pages (pages 0 and 1): page header (16 bytes), then magic u32, version u32, address u64,
# mapsize u64, two MDB_db of 48 bytes (the first one's md_pad holds the page size), last_pgno u64, txnid u64.
_LMDB_MAGIC = 0xBEEFC0DE
_META = struct.Struct("<16xIIQQI44x48xQQ")


def _meta_page(data: bytes) -> tuple[int, int, int] | None:
    """(page size, last page number, txnid) of one LMDB meta page, None when it is not one."""
    if len(data) < _META.size:
        return None
    magic, _version, _addr, _mapsize, psize, last_pg, txnid = _META.unpack_from(data)
    if magic != _LMDB_MAGIC or psize < 512 or psize > 1 << 16 or psize & (psize - 1):
        return None
    return psize, last_pg, txnid


def check_data_file(path: str) -> None:
    """Refuse a data.mdb shorter than its meta pages say (mapping it would SIGBUS every reader).

    Reads the two meta pages with plain reads; the newer valid one names the
    last page in use: the file must hold at least (last_pgno + 1) pages.
    Raises IntegrityError naming the way out.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise IntegrityError(f"store index {path} is missing; {REBUILD_HINT}") from None
    except OSError as exc:
        raise IntegrityError(f"store index {path} cannot be read ({exc.strerror}); {REBUILD_HINT}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IntegrityError(f"store index {path} is not a regular file; {REBUILD_HINT}")
        first = _meta_page(os.pread(fd, _META.size, 0))
        metas = [first] if first else []
        if first:
            second = _meta_page(os.pread(fd, _META.size, first[0]))
            if second and second[0] == first[0]:
                metas.append(second)
    finally:
        os.close(fd)
    if not metas:
        raise IntegrityError(
            f"store index {path} is damaged ({st.st_size} bytes, no valid LMDB header); {REBUILD_HINT}"
        )
    psize, last_pg, _ = max(metas, key=lambda m: m[2])
    need = max(2, last_pg + 1) * psize
    if st.st_size < need:
        raise IntegrityError(
            f"store index {path} is truncated ({st.st_size} bytes, its header needs {need}); {REBUILD_HINT}"
        )


def dkey(digest: str) -> bytes:
    """The 32-byte key of a ``sha256:`` digest."""
    return bytes.fromhex(digest[7:])


def dstr(key: bytes) -> str:
    return "sha256:" + key.hex()


class MetaDB:
    """Typed access to the store's LMDB environment (one per path per process)."""

    def __init__(self, path: str, *, create: bool, readonly: bool = False) -> None:
        """``readonly``: a store we may not write (read-only filesystem, another's files): LMDB opened
        read-only without its lock file (nothing is created; see castore/store/readonly.py)."""
        self.path = path
        self.readonly = readonly
        self._released = True  # until this object counts as a user of the environment (below)
        pid = os.getpid()
        cached = _ENVS.get(path)
        if cached and cached[0] == pid:
            self.env = cached[1]
        else:
            _USERS.pop(path, None)  # (another process's count: a fork's parent)
            if not create or os.path.exists(os.path.join(path, "data.mdb")):
                check_data_file(os.path.join(path, "data.mdb"))
            try:
                self.env = lmdb.open(
                    path,
                    map_size=INITIAL_MAP,
                    max_dbs=len(DBS) + 2,
                    subdir=True,
                    create=create,
                    sync=True,
                    metasync=True,
                    writemap=False,
                    max_spare_txns=0,
                    lock=not readonly,
                    readahead=False,
                    readonly=readonly,
                )
            except lmdb.Error as exc:
                if "Resource temporarily unavailable" in str(exc):
                    # LMDB's per-PID reader lock is taken: a process with our PID in another PID namespace.
                    raise StoreUnusable(
                        f"store metadata at {path} is in use by another process with PID {pid} "
                        "(a different PID namespace?); LMDB cannot tell them apart: "
                        "use the store from one namespace"
                    ) from exc
                raise StoreUnusable(f"store metadata at {path} cannot be opened: {exc}") from exc
            _ENVS[path] = (pid, self.env)
        _USERS[path] = _USERS.get(path, 0) + 1
        self._released = False
        try:
            if readonly:  # a read-only env cannot create sub-databases: only the ones it has are opened
                with self.env.begin() as txn:
                    have = [n for n in DBS if txn.get(n.encode()) is not None]
                self.dbs = {n: self.env.open_db(n.encode(), create=False) for n in have}  # (handles opened in
                return  # a read transaction of py-lmdb die with it)
            self.dbs = {n: self.env.open_db(n.encode()) for n in DBS}
            self.env.reader_check()
            if not (cached and cached[0] == pid):
                try:
                    self._check_pid_namespace(pid)
                except StoreUnusable:
                    self._released = True  # left open, as it was: closing could clear the other's reader slot
                    raise
        except lmdb.Error as exc:
            self.release()
            raise StoreUnusable(f"store metadata at {path} is unusable: {exc}") from exc
        except BaseException:
            self.release()  # (an environment nobody else uses is closed: no descriptor is left behind)
            raise

    def _check_pid_namespace(self, pid: int) -> None:
        """Refuse to share the reader table with a same-PID process of another PID namespace.

        LMDB identifies readers by PID. Before this process has begun any read
        transaction, a reader slot holding our own PID belongs to someone else:
        a process in another PID namespace (two containers' PID 1, say).
        """
        for line in self.env.readers().splitlines()[1:]:
            fields = line.split()
            if fields and fields[0].isdigit() and int(fields[0]) == pid:
                raise StoreUnusable(
                    f"store metadata at {self.path} is in use by another process with PID {pid} "
                    "(a different PID namespace?); LMDB cannot tell them apart: use the store from one namespace"
                )

    def close(self) -> None:
        """Close the environment now, whoever else in this process uses it (``release`` is the polite way)."""
        self._released = True
        _ENVS.pop(self.path, None)
        _USERS.pop(self.path, None)
        self.env.close()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - (interpreter shutdown: nothing left to release into)
            pass

    def release(self) -> None:
        """This object no longer uses the environment: it is closed (its file descriptors with it) when
        no other open MetaDB of this process uses it. Idempotent; the object is unusable afterwards."""
        if self._released:
            return
        self._released = True
        cached = _ENVS.get(self.path)
        if cached is None or cached[1] is not self.env or cached[0] != os.getpid():
            return  # closed already (close), or an environment a fork's parent opened
        users = _USERS.get(self.path, 1) - 1
        if users > 0:
            _USERS[self.path] = users
            return
        _USERS.pop(self.path, None)
        del _ENVS[self.path]
        self.env.close()

    def db(self, name: str) -> DB:
        return self.dbs[name]

    def entries(self, name: str) -> int:
        """How many rows the sub-database ``name`` holds (0 when a read-only index lacks it)."""
        if name not in self.dbs:
            return 0
        with self.read() as txn:
            return txn.stat(self.dbs[name])["entries"]

    def write(self, fn: Callable[[Txn], T]) -> T:
        """Run ``fn`` in one write transaction, growing the map and retrying when full."""
        if self.readonly:
            from castore.store.readonly import refuse_write

            refuse_write(os.path.dirname(self.path))
        for _ in range(40):
            try:
                with self.env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                self._grow()
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
            except lmdb.DiskError as exc:
                raise ResourceLimit(f"store metadata: no space left ({exc})") from exc
            except lmdb.Error as exc:
                if "No space" in str(exc) or getattr(exc, "errno", 0) in DISK_FULL_ERRNOS:
                    raise ResourceLimit(f"store metadata: no space left ({exc})") from exc
                raise IntegrityError(f"store metadata at {self.path}: {exc}") from exc
        raise ResourceLimit("store metadata: map cannot grow")

    def drop_mapped_pages(self) -> None:
        """Unmap from this process the index pages it has read (MADV_DONTNEED; they stay in the page cache).

        A full walk of a big index (gc) would otherwise count the whole mapped
        file in its resident set. The map is read-only (no ``writemap``), so
        dropped pages are read back from the file when next touched. Best effort.
        """
        import ctypes  # noqa: PLC0415 - only gc needs it

        data = os.path.realpath(os.path.join(self.path, "data.mdb"))
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            with open("/proc/self/maps") as maps:  # LMDB does not report its map address (no MDB_FIXEDMAP)
                spans = [line.split(None, 1)[0] for line in maps if line.rstrip("\n").endswith(" " + data)]
        except OSError:
            return
        for span in spans:
            lo, hi = (int(x, 16) for x in span.split("-"))
            libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)  # MADV_DONTNEED

    def _grow(self) -> None:
        size = self.env.info()["map_size"]
        self.env.set_mapsize(size * 2)

    @contextmanager
    def read(self) -> Iterator[Txn]:
        """A short read transaction."""
        try:
            txn = self.env.begin(write=False)
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            txn = self.env.begin(write=False)
        except lmdb.Error as exc:
            raise IntegrityError(f"store metadata at {self.path}: {exc}") from exc
        try:
            yield txn
        except lmdb.Error as exc:
            raise IntegrityError(f"store metadata at {self.path}: {exc}") from exc
        finally:
            txn.abort()


def prefix_rows(meta: MetaDB, db_name: str, prefix: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) rows of ``db_name`` whose key starts with ``prefix``, in key order, read
    in one short transaction (a shard of a table at a time: fsck and gc walk 256 of them)."""
    rows: list[tuple[bytes, bytes]] = []
    with meta.read() as txn:
        cur = txn.cursor(db=meta.db(db_name))
        if cur.set_range(prefix):
            n = len(prefix)
            for k, v in cur:
                if k[:n] != prefix:
                    break
                rows.append((bytes(k), bytes(v)))
    return rows
