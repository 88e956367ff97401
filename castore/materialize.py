"""Writing resources under a directory fd: content from the store (copy,
reflink or a hardlink object), then owner, mode, xattrs and times, in the safe
order (chown before chmod, security.capability last, times last).

Everything here works through directory file descriptors: names are single
components created with O_EXCL/O_NOFOLLOW, so nothing is written through a
symlink or outside the tree.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import marshal
import os
import secrets
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from castore import fs
from castore.digest import EMPTY_DIGEST, hash_fd
from castore.errors import CastoreError, IntegrityError, ResourceLimit, UnsafeInput
from castore.faults import crashpoint
from castore.manifest import codec
from castore.manifest.model import (
    Chunk,
    Device,
    Directory,
    Entry,
    NamedPipe,
    RegularFile,
    Resource,
    Socket,
    Symlink,
    Whiteout,
)
from castore.store import Store
from castore.textsafe import note

READ = 1 << 20
LINK_MODES = ("auto", "hardlink", "reflink", "copy")


@dataclass
class Options:
    """How resources are written."""

    link: str = "auto"
    verify: bool = True
    devices: str = "create"  # create | check | skip
    sockets: bool = False
    whiteouts: str = "none"  # none | overlay | oci
    rewrite_absolute_symlinks: bool = False
    note: object = field(default=note)
    ignore: frozenset[str] = frozenset()  # --ignore-attr: attributes not applied (WRITE_IGNORABLE)


def _write_all(fd: int, data: bytes | memoryview, offset: int | None = None) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        if offset is not None:
            offset += n
        view = view[n:]


def data_ranges(size: int, holes: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    out, pos = [], 0
    for b, e in holes:
        if b > pos:
            out.append((pos, b))
        pos = e
    if pos < size:
        out.append((pos, size))
    return out


#: Attributes checkout and apply can leave unapplied (--ignore-attr); the others are the tree itself.
WRITE_IGNORABLE = frozenset({"mode", "uid", "gid", "xattr", "mtime"})


def without_attrs(resources: Iterable[Resource], ignore: frozenset[str], umask: int | None = None) -> list[Resource]:
    """``resources`` with the ``ignore``d attributes at what a plain write gives (as ``tar`` without
    ``--same-owner``/``-p``): owner the caller, mode from the umask (x bits kept), no xattrs, no mtime."""
    if umask is None:
        umask = os.umask(0o022)
        os.umask(umask)
    uid, gid = os.geteuid(), os.getegid()
    out: list[Resource] = []
    for r in resources:
        ch: dict[str, object] = {}
        if "uid" in ignore:
            ch["uid"] = uid
        if "gid" in ignore:
            ch["gid"] = gid
        if "xattr" in ignore and r.xattrs:
            ch["xattrs"] = ()
        if "mtime" in ignore and r.mtime_ns is not None:
            ch["mtime_ns"] = None
        if "mode" in ignore and not isinstance(r, Symlink):
            ch["perm"] = (0o777 if isinstance(r, Directory) or r.perm & 0o111 else 0o666) & ~umask
        out.append(dataclasses.replace(r, **ch) if ch else r)  # type: ignore[arg-type]
    return out


def count_ads(items: Iterable[Resource | LinkRef]) -> int:
    """How many alternate data streams ``items`` carry (Linux has no place for them)."""
    n = 0
    for r in items:
        if isinstance(r, LinkRef):
            if b"\x6a" in r.entry:  # field 13 (ads), length-delimited: decode only the entries that may hold one
                n += len(codec.decode_entry(r.entry).ads)
        else:
            n += len(r.ads)
    return n


def note_ads(n: int, note: Callable[[str], None]) -> None:
    """Say that ``n`` alternate data streams were not written (nothing silent)."""
    if n:
        note(f"{n} alternate data stream{'s' if n != 1 else ''} not materialized "
             "(Windows ADS; Linux has no place for them; `verify` reports them)")


class LinkRef:
    """A regular file of a store manifest, still encoded (``codec.split_entries``).

    A hardlink checkout needs only its paths and its object key (a hash of
    the encoded entry), so the entry is decoded only when its object must be
    made or re-checked: a 100k-entry checkout decodes almost nothing.
    """

    __slots__ = ("entry", "paths", "_res", "key")

    def __init__(self, entry: bytes, paths: tuple[str, ...]) -> None:
        self.entry, self.paths = entry, paths
        self._res: RegularFile | None = None
        self.key: bytes | None = None  # the object key, once computed (Writer._object_key)

    @property
    def path(self) -> str:
        return self.paths[0]

    def resource(self) -> RegularFile:
        if self._res is None:
            r = codec.decode_entry(self.entry)
            if not isinstance(r, RegularFile) or r.paths != self.paths:
                raise IntegrityError(f"{self.path}: manifest entry is not the regular file it looked like")
            self._res = r
        return self._res


def resource_of(r: RegularFile | LinkRef) -> RegularFile:
    return r.resource() if isinstance(r, LinkRef) else r


#: A hardlink object's record (the `links` db, key b"o" + object key): a version byte, the
#: object's stat when last proven (ino, size, mtime_ns, ctime_ns), then what it holds (raw
#: sha256, perm, uid, gid; flags: RECORD_XATTRS when the entry has xattrs). Packed so that a
#: checkout compares and rewrites the stat part as bytes on every link: the marshalled
#: tuples it replaces cost ~1.5 us a file to load and dump. When the stat part no longer
#: matches (an earlier checkout was removed: unlinks move ctime), the rest is what the object
#: is proven against again, without decoding its manifest entry. Rows of the older marshalled
#: form are still read (object_record).
OBJECT_RECORD = struct.Struct("<BQQqq32sIIIB")
OBJECT_STAT = struct.Struct("<BQQqq")  # the record's first part
RECORD_V2 = 2
RECORD_XATTRS = 1
_pack_stat, _STAT_LEN, _RECORD_LEN = OBJECT_STAT.pack, OBJECT_STAT.size, OBJECT_RECORD.size


def object_stat(st: os.stat_result) -> bytes:
    """The stat part of an object record, for ``st``."""
    return OBJECT_STAT.pack(RECORD_V2, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def pack_object_record(st: os.stat_result, r: RegularFile) -> bytes:
    flags = RECORD_XATTRS if r.xattrs else 0
    return object_stat(st) + OBJECT_RECORD.pack(0, 0, 0, 0, 0, bytes.fromhex(r.digest[7:]), r.perm, r.uid, r.gid,
                                                 flags)[OBJECT_STAT.size:]


def object_record(raw: bytes) -> tuple[object, ...]:
    """(ino, size, mtime_ns, ctime_ns, digest, perm, uid, gid) of a record; older rows may lack
    the last four. Raises ValueError when it is neither form."""
    if len(raw) == OBJECT_RECORD.size and raw[0] == RECORD_V2:
        _, ino, size, mtime, ctime, d, perm, uid, gid, _ = OBJECT_RECORD.unpack(raw)
        return ino, size, mtime, ctime, "sha256:" + d.hex(), perm, uid, gid
    try:
        rec = marshal.loads(raw)
    except (EOFError, TypeError) as exc:
        raise ValueError(f"unreadable hardlink object record: {exc}") from None
    if not isinstance(rec, tuple) or len(rec) not in (4, 8):
        raise ValueError("unreadable hardlink object record")
    return rec


class Writer:
    """Materializes resources of one manifest below a root directory fd."""

    def __init__(self, store: Store | None, opts: Options) -> None:
        self.store = store
        self.opts = opts
        self.can_reflink = opts.link in ("auto", "reflink")
        self.euid, self.egid = os.geteuid(), os.getegid()
        self.verified: dict[str, tuple[int, int, int, int]] = {}
        self.link_updates: dict[bytes, bytes] = {}
        self.verified_updates: dict[bytes, bytes] = {}
        self.noted_link_fallback = False
        self.noted_xattr_skip = False
        self._keys: dict[int, bytes] = {}
        self._shards: dict[str, int] = {}
        self.made_objects = False  # a new hardlink object was written (not yet durable)
        self.chunk_lists: dict[str, tuple[Chunk, ...]] = {}  # whole-file digest -> chunks (Store.chunk_lists)
        self.forked = False  # set in a forked worker: it reads only what was preloaded
        self.tmp_dir: str | None = None  # where new hardlink objects are written (a lease's tmp dir)
        self.threshold = store.chunking.threshold if store is not None else 1 << 62
        if store is not None:
            self._load_verified()

    # ---------------------------------------------------------------- content

    def _load_verified(self) -> None:
        assert self.store is not None
        self.vdb = self.store.meta.db("links")
        self.records: dict[bytes, bytes | None] | None = None

    def record_keys(self, files: list[RegularFile | LinkRef]) -> list[bytes]:
        """The `links` rows writing ``files`` may consult."""
        if self.opts.link == "hardlink":
            return [b"o" + self._object_key(r) for r in files]
        if self.can_reflink:
            return list({b"v" + bytes.fromhex(r.digest[7:]) for r in map(resource_of, files) if not r.chunks})
        return []

    def preload(self, files: list[RegularFile | LinkRef]) -> None:
        """Read every record these files may need in one transaction, so that
        forked workers never touch LMDB (unsafe across fork)."""
        assert self.store is not None
        keys = sorted(self.record_keys(files))  # (reflink's "v" keys come deduplicated)
        with self.store.meta.read() as txn:
            # One sorted batch through a cursor: 2x faster than a get per key (0.045 s for 100k).
            self.records = dict(txn.cursor(db=self.vdb).getmulti(keys))
        self.chunk_lists.update(self.store.chunk_lists(self._maybe_chunked(files)))

    def _maybe_chunked(self, files: list[RegularFile | LinkRef]) -> set[str]:
        """Whole-file digests of these files that may be stored as chunks only (no chunk list in the
        manifest, at least the chunking threshold): a hardlink object's record gives digest and size
        without decoding its entry."""
        out = set()
        for f in files:
            if isinstance(f, LinkRef) and f._res is None and self.records is not None and f.key is not None:
                raw = self.records.get(b"o" + f.key)
                if raw is not None and len(raw) == _RECORD_LEN and raw[0] == RECORD_V2:
                    if OBJECT_RECORD.unpack(raw)[2] >= self.threshold:
                        out.add("sha256:" + raw[_STAT_LEN:_STAT_LEN + 32].hex())
                    continue
            r = resource_of(f)
            if not r.chunks and r.size >= self.threshold:
                out.add(r.digest)
        return out

    def _served_by_chunks(self, r: RegularFile) -> RegularFile:
        """``r`` with the chunk list recorded for its whole-file digest when the store holds it as
        chunks only (a manifest without chunk lists: ``build``, upstream's Go build); else ``r``."""
        assert self.store is not None
        if os.path.exists(self.store.blob_path(r.digest)):
            return r
        chunks = self.chunk_lists.get(r.digest)
        if chunks is None and not self.forked:  # a forked worker never touches LMDB: preloaded only
            chunks = self.store.chunk_lists([r.digest]).get(r.digest)
        if not chunks or chunks[-1].end != r.size:
            return r
        import dataclasses
        return dataclasses.replace(r, chunks=chunks)

    def _record(self, key: bytes) -> bytes | None:
        if self.records is not None:
            return self.records.get(key)
        assert self.store is not None
        with self.store.meta.read() as txn:
            return txn.get(key, db=self.vdb)  # type: ignore[no-any-return]

    def _blob_fd(self, digest: str) -> int:
        assert self.store is not None
        return self.store.open_blob(digest)

    def _blob_trusted(self, digest: str, fd: int) -> bool:
        """True when the blob is provably unchanged since it was last verified."""
        assert self.store is not None
        st = os.fstat(fd)
        key = b"v" + bytes.fromhex(digest[7:])
        raw = self._record(key)
        return raw is not None and marshal.loads(raw) == (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _mark_verified(self, digest: str, fd: int) -> None:
        st = os.fstat(fd)
        self.verified_updates[b"v" + bytes.fromhex(digest[7:])] = marshal.dumps(
            (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))

    def _hash_blob_fd(self, fd: int, digest: str, size: int) -> None:
        got, total = hash_fd(fd, expect=size)
        if total != size or got != digest:
            raise IntegrityError(f"blob {digest} is corrupt (digest mismatch); run `continuity fsck`")

    def write_content(self, r: RegularFile, out_fd: int) -> None:
        """Fill ``out_fd`` (empty, new) with the content of ``r``, verified."""
        if r.size == 0:
            if r.digest != EMPTY_DIGEST:
                raise IntegrityError(f"{r.path}: empty file with a non-empty digest")
            return
        if not r.chunks and r.size >= self.threshold and self.store is not None:
            r = self._served_by_chunks(r)
        if not r.chunks and self.can_reflink and not r.holes:
            fd = self._blob_fd(r.digest)
            try:
                if os.fstat(fd).st_size != r.size:
                    raise IntegrityError(f"blob {r.digest} has the wrong size for {r.path}")
                try:
                    fs.reflink(fd, out_fd)
                    if self.opts.verify and not self._blob_trusted(r.digest, fd):
                        self._hash_blob_fd(fd, r.digest, r.size)
                        self._mark_verified(r.digest, fd)
                    return
                except OSError as exc:
                    if exc.errno not in fs.COPY_FALLBACK:
                        raise
                    if self.opts.link == "reflink":
                        raise CastoreError(f"reflink not supported here ({exc.strerror}); use --link copy") from exc
                    self.can_reflink = False
            finally:
                os.close(fd)
        self._copy(r, out_fd)

    def _copy(self, r: RegularFile, out_fd: int) -> None:
        pieces = [(c.digest, c.begin, c.end) for c in r.chunks] or [(r.digest, 0, r.size)]
        whole = hashlib.sha256() if self.opts.verify and len(pieces) > 1 else None
        ranges = data_ranges(r.size, r.holes) if r.holes else None
        for digest, begin, end in pieces:
            fd = self._blob_fd(digest)
            try:
                if os.fstat(fd).st_size != end - begin:
                    raise IntegrityError(f"blob {digest} has the wrong size for {r.path}")
                if not self.opts.verify and ranges is None:
                    fs.copy_fd_at(fd, out_fd, end - begin, begin)
                    continue
                h = hashlib.sha256() if self.opts.verify else None
                pos = begin
                while pos < end:
                    data = os.read(fd, min(READ * 4, end - pos))
                    if not data:
                        raise IntegrityError(f"blob {digest} is truncated")
                    if h is not None:
                        h.update(data)
                    if whole is not None:
                        whole.update(data)
                    if ranges is None:
                        _write_all(out_fd, data, pos)
                    else:
                        self._write_sparse(out_fd, data, pos, ranges)
                    pos += len(data)
                if h is not None and "sha256:" + h.hexdigest() != digest:
                    raise IntegrityError(f"blob {digest} is corrupt (digest mismatch) for {r.path}; "
                                         "run `continuity fsck`")
            finally:
                os.close(fd)
        if ranges is not None:
            os.ftruncate(out_fd, r.size)
        if whole is not None and "sha256:" + whole.hexdigest() != r.digest:
            raise IntegrityError(f"{r.path}: chunks do not add up to {r.digest}")

    @staticmethod
    def _write_sparse(out_fd: int, data: bytes, pos: int, ranges: list[tuple[int, int]]) -> None:
        end = pos + len(data)
        for b, e in ranges:
            lo, hi = max(b, pos), min(e, end)
            if lo < hi:
                _write_all(out_fd, memoryview(data)[lo - pos:hi - pos], lo)

    # --------------------------------------------------------------- metadata

    def _skipped(self, names: list[str], r: Entry) -> None:
        if names and not self.noted_xattr_skip:
            self.noted_xattr_skip = True
            self.opts.note(f"{r.path}: xattrs {', '.join(names)} have no Linux namespace; "  # type: ignore
                           "not set (further ones not reported)")

    def file_metadata(self, fd: int, r: Entry) -> None:
        """Owner, mode, xattrs, mtime on an open file (the safe order)."""
        if (r.uid, r.gid) != (self.euid, self.egid):
            os.fchown(fd, r.uid, r.gid)
        os.fchmod(fd, r.perm)
        if r.xattrs:
            self._skipped(fs.set_xattrs(fd, r.xattrs), r)
        if r.mtime_ns is not None:
            os.utime(fd, ns=(r.mtime_ns, r.mtime_ns))

    def path_metadata(self, dir_fd: int, name: str, r: Entry, *, is_link: bool = False) -> None:
        """Owner, mode, xattrs, mtime on a name (never followed)."""
        if (r.uid, r.gid) != (self.euid, self.egid):
            os.chown(name, r.uid, r.gid, dir_fd=dir_fd, follow_symlinks=False)
        if not is_link:
            # chmod(2) follows symlinks: go through an O_PATH fd opened with O_NOFOLLOW, so a
            # name swapped for a symlink since we created it (apply works in place) is never followed.
            pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                if stat.S_ISLNK(os.fstat(pfd).st_mode):
                    raise UnsafeInput(f"{r.path}: replaced by a symlink while it was written")
                with fs.named(r.path):
                    os.chmod(f"/proc/self/fd/{pfd}", r.perm)
            finally:
                os.close(pfd)
        if r.xattrs:
            with fs.named(r.path):
                self._skipped(fs.set_xattrs(fs.proc_path(dir_fd, name), r.xattrs), r)
        if r.mtime_ns is not None:
            os.utime(name, ns=(r.mtime_ns, r.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)

    # -------------------------------------------------------------- resources

    def create_file(self, dir_fd: int, name: str, f: RegularFile | LinkRef) -> None:
        if self.opts.link == "hardlink" and self.store is not None:
            try:
                self.link_object(dir_fd, name, f)
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                    raise
                if not self.noted_link_fallback:
                    self.opts.note(f"hardlinks impossible here ({exc.strerror}); copying instead")  # type: ignore
                    self.noted_link_fallback = True
        r = resource_of(f)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            self.write_content(r, fd)
            self.file_metadata(fd, r)
        finally:
            os.close(fd)

    def create_other(self, dir_fd: int, name: str, r: Resource, path: str) -> bool:
        """Create a non-regular, non-directory resource; False when skipped by policy."""
        if isinstance(r, Symlink):
            target = r.target
            if self.opts.rewrite_absolute_symlinks and target.startswith("/"):
                target = relative_target(path, target)
            os.symlink(target, name, dir_fd=dir_fd)
            self.path_metadata(dir_fd, name, r, is_link=True)
        elif isinstance(r, Device):
            if self.opts.devices == "skip":
                return False
            if self.opts.devices == "check":
                return False
            kind = stat.S_IFCHR if r.char else stat.S_IFBLK
            try:
                os.mknod(name, kind | 0o600, os.makedev(r.major, r.minor), dir_fd=dir_fd)
            except PermissionError as exc:
                raise UnsafeInput(f"{path}: cannot create a device node without privilege; "
                                  "use --devices skip") from exc
            self.path_metadata(dir_fd, name, r)
        elif isinstance(r, NamedPipe):
            os.mkfifo(name, 0o600, dir_fd=dir_fd)
            self.path_metadata(dir_fd, name, r)
        elif isinstance(r, Socket):
            if not self.opts.sockets:
                return False
            _make_socket(dir_fd, name)
            self.path_metadata(dir_fd, name, r)
        elif isinstance(r, Whiteout):
            if self.opts.whiteouts == "overlay":
                os.mknod(name, stat.S_IFCHR | 0o000, 0, dir_fd=dir_fd)
                self.path_metadata(dir_fd, name, r)  # owner, then its permission bits
            elif self.opts.whiteouts == "oci":
                fd = os.open(".wh." + name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o000,
                             dir_fd=dir_fd)
                os.close(fd)
                self.path_metadata(dir_fd, ".wh." + name, r)
            else:
                return False
        else:
            raise UnsafeInput(f"{path}: cannot create a {r.kind}")
        return True

    def dir_metadata(self, dir_fd: int, name: str, r: Directory) -> None:
        xattrs = r.xattrs
        if r.opaque and self.opts.whiteouts == "overlay":
            xattrs = tuple(sorted(xattrs + (("trusted.overlay.opaque", b"y"),)))
        elif r.opaque and self.opts.whiteouts == "oci":
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                os.close(os.open(".wh..wh..opq", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0,
                                 dir_fd=fd))
            finally:
                os.close(fd)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if (r.uid, r.gid) != (self.euid, self.egid):
                os.fchown(fd, r.uid, r.gid)
            os.fchmod(fd, r.perm)
            if xattrs:
                self._skipped(fs.set_xattrs(fd, xattrs), r)
            if r.mtime_ns is not None:
                os.utime(fd, ns=(r.mtime_ns, r.mtime_ns))
        finally:
            os.close(fd)

    # ------------------------------------------------------- hardlink objects

    def _object_key(self, f: RegularFile | LinkRef) -> bytes:
        """sha256 of the file's encoded manifest entry: its content, metadata and paths.

        The paths make two files of one tree share an inode only when they were
        one hardlinked file in the source (ostree#925), while the same file in
        two checkouts shares one. A LinkRef's entry is hashed as it is stored;
        a decoded file is encoded first (the store encodes the same way).
        """
        if isinstance(f, LinkRef):  # kept on the object, not in a dict by id() (0.2 s for 150k calls under cProfile)
            if f.key is None:
                f.key = hashlib.sha256(f.entry).digest()
            return f.key
        k = self._keys.get(id(f))
        if k is None:
            k = hashlib.sha256(codec.to_proto(f).SerializeToString(deterministic=True)).digest()
            self._keys[id(f)] = k
        return k

    def _object_ok(self, sfd: int, name: str, f: RegularFile | LinkRef, raw: bytes | None) -> bool | None:
        """True when the object ``name`` of shard ``sfd`` provably still holds f's content and metadata
        (``raw``: its record); False when it does not, None when there is none."""
        try:
            st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if raw is not None and stat.S_ISREG(st.st_mode):
            if raw[:_STAT_LEN] == _pack_stat(RECORD_V2, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
                return True
            if raw[0] != RECORD_V2:  # an older row: compare its tuple
                try:
                    if object_record(raw)[:4] == (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
                        return True
                except ValueError:
                    pass
            elif len(raw) == _RECORD_LEN and not raw[-1] & RECORD_XATTRS:
                return self._reprove(sfd, name, raw, st)
        # Changed since recorded (a link, or an edit through a checkout): prove it again.
        r = resource_of(f)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=sfd)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return False
            if (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size) != (r.perm, r.uid, r.gid, r.size):
                return False
            if r.mtime_ns is not None and st.st_mtime_ns != r.mtime_ns:
                return False
            if fs.read_xattrs(fd) != r.xattrs:
                return False
            try:
                self._hash_blob_fd(fd, r.digest, r.size)
            except IntegrityError:
                return False
            return True
        finally:
            os.close(fd)

    def _reprove(self, sfd: int, name: str, raw: bytes, st: os.stat_result) -> bool:
        """Prove an object against its record's contents (digest, perm, owner, size, mtime, no
        xattrs) after its stat ``st`` changed, without decoding the manifest entry (with
        hash_fd's single pread: a checkout of `many` after rm -rf, 2.1 s -> 1.7 s).

        The metadata is checked on ``st`` (no fstat after the open): the name is what gets
        linked afterwards anyway, and only a checkout replaces an object, with a good one."""
        _, _, size, mtime, _, d, perm, uid, gid, _ = OBJECT_RECORD.unpack(raw)
        if (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns) != (perm, uid, gid, size,
                                                                                            mtime):
            return False
        if not stat.S_ISREG(st.st_mode):
            return False
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=sfd)
        except OSError:
            return False
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode) or fs.read_xattrs(fd):
                return False
            return hash_fd(fd, expect=size) == ("sha256:" + d.hex(), size)
        finally:
            os.close(fd)

    def _shard_fd(self, shard: str) -> int:
        """An fd on the objects' shard directory ``shard`` (made when missing), kept open."""
        assert self.store is not None
        fd = self._shards.get(shard)
        if fd is None:
            fd = self.store.open_shard("links", shard)  # from the store root fd, following no symlink
            self._shards[shard] = fd
        return fd

    def link_object(self, dir_fd: int, name: str, f: RegularFile | LinkRef) -> None:
        """Hardlink a store object holding f's content and metadata at ``name``.

        Per file: stat the object (is it still what its record says?), link
        it, stat it again (the link moved its ctime: the record must follow,
        or the next checkout would have to re-hash it).
        """
        assert self.store is not None
        key = self._object_key(f)
        k = key.hex()
        sfd = self._shards.get(k[:2]) or self._shard_fd(k[:2])
        rkey = b"o" + key
        raw = self._record(rkey)
        for _ in range(4):
            proven = self._object_ok(sfd, k, f, raw)
            if not proven and not self._make_object(sfd, k, resource_of(f), replace=proven is False):
                raw = None  # another checkout made it meanwhile: prove that one (from the entry)
                continue
            try:
                os.link(k, name, src_dir_fd=sfd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                raw = None
                continue  # removed under us (gc): make it again
            st = os.stat(k, dir_fd=sfd, follow_symlinks=False)
            if proven and raw is not None and len(raw) == _RECORD_LEN and raw[0] == RECORD_V2:
                # The record's fixed part (digest, perm, uid, gid: what fsck checks) carries over.
                self.link_updates[rkey] = _pack_stat(RECORD_V2, st.st_ino, st.st_size, st.st_mtime_ns,
                                                     st.st_ctime_ns) + raw[_STAT_LEN:]
            else:
                self.link_updates[rkey] = pack_object_record(st, resource_of(f))
            return
        raise CastoreError(f"{f.path}: could not create a hardlink object")

    def _make_object(self, sfd: int, name: str, r: RegularFile, *, replace: bool) -> bool:
        """Write the object ``name`` for ``r``. ``replace``: a stale or altered object stands there
        (its old links keep the old inode). Otherwise the name must still be free: False when a
        concurrent checkout made it first (two replacing each other left each one's record
        naming the other's inode)."""
        self.made_objects = True
        tmp = f".tmp-{secrets.token_hex(8)}"
        # Written in the lease's tmp dir when there is one: gc leaves a live lease's tmp dir alone,
        # while a `.tmp-*` in a shard is protected only by the grace period.
        tfd = self._tmp_fd() if self.tmp_dir is not None else sfd
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=tfd)
        try:
            self.write_content(r, fd)
            self.file_metadata(fd, r)
        except BaseException:
            os.close(fd)
            os.unlink(tmp, dir_fd=tfd)
            raise
        os.close(fd)
        crashpoint("checkout-object-written")
        if replace:
            os.replace(tmp, name, src_dir_fd=tfd, dst_dir_fd=sfd)
            return True
        try:
            fs.renameat2(tfd, tmp, sfd, name)
        except FileExistsError:
            os.unlink(tmp, dir_fd=tfd)
            return False
        return True

    def _tmp_fd(self) -> int:
        """An fd on ``tmp_dir`` (made when missing), kept open with the shard fds."""
        assert self.tmp_dir is not None
        fd = self._shards.get("tmp")
        if fd is None:
            os.makedirs(self.tmp_dir, mode=0o700, exist_ok=True)
            fd = os.open(self.tmp_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            self._shards["tmp"] = fd
        return fd

    def close(self) -> None:
        """Close the shard fds (a Writer is usable again afterwards)."""
        for fd in self._shards.values():
            os.close(fd)
        self._shards.clear()

    def take_updates(self) -> list[tuple[bytes, bytes]]:
        """Records to write, sorted by key (and forget them here): for a parent to commit a worker's.

        Sorted here, in the worker, so that the parent only merges two sorted
        runs (6 ms for 100k rows) instead of sorting them all (70 ms).
        """
        updates = {**self.verified_updates, **self.link_updates}
        self.link_updates.clear()
        self.verified_updates.clear()
        return [(k, updates[k]) for k in sorted(updates)]

    def flush(self, extra: list[tuple[bytes, bytes]] | None = None,
              before_commit: Callable[[], None] | None = None) -> None:
        """Record verified blobs and hardlink objects (one LMDB transaction),
        with the sorted ``extra`` records gathered from a worker (take_updates).
        ``before_commit`` runs inside the transaction, just before it commits: a
        wait for the syncfs that makes new objects durable, which a record must
        never precede (it would vouch for bytes a power loss took)."""
        if self.store is None:
            return
        rows = self.take_updates()
        if extra:
            # Two sorted runs: timsort merges them in one pass. A key in both (a blob
            # both processes verified) holds the same stat; putmulti keeps the last.
            rows = sorted(rows + extra)
        if not rows or self.store.readonly:  # a cache: a read-only store keeps none
            return

        def fn(txn: object) -> None:
            txn.cursor(db=self.vdb).putmulti(rows)  # type: ignore[attr-defined]
            if before_commit is not None:
                before_commit()
        self.store.meta.write(fn)


def relative_target(link_path: str, target: str) -> str:
    """An absolute in-tree target made relative to the link's directory."""
    base = os.path.dirname(link_path)
    rel = os.path.relpath(os.path.normpath(target), base)
    return rel


def _make_socket(dir_fd: int, name: str) -> None:
    import socket
    path = fs.proc_path(dir_fd, name)
    if len(os.fsencode(path)) > 100:
        raise ResourceLimit(f"socket name too long: {name}")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with fs.named(name):
            s.bind(path)
    finally:
        s.close()
