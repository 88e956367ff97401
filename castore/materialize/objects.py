"""Hardlink objects: one read-only inode per distinct file (content, metadata and paths) in the
store's `links/` shards, linked into checkouts; their records (castore.store.links) let the next
checkout trust an object by its stat alone."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING

from castore import fs, progress
from castore.errors import CastoreError, IntegrityError
from castore.faults import crashpoint
from castore.fs import DirFds
from castore.manifest import codec
from castore.manifest.model import Entry, RegularFile, Resource
from castore.store import Store, links
from castore.store.links import (
    OBJECT_RECORD,
    RECORD_V2,
    RECORD_XATTRS,
    LinkRef,
    object_record,
    pack_object_record,
    resource_of,
)

_pack_stat, _STAT_LEN, _RECORD_LEN = links.OBJECT_STAT.pack, links.OBJECT_STAT.size, OBJECT_RECORD.size
_unpack_record = OBJECT_RECORD.unpack
_NOATIME = getattr(os, "O_NOATIME", 0)
_PROVE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | _NOATIME


class ObjectLinker:
    """The hardlink-object half of a Writer (castore.materialize.writer)."""

    store: Store | None
    tmp_dir: str | None
    made_objects: bool
    needs_sync: bool
    link_updates: dict[bytes, bytes]
    verified_updates: dict[bytes, bytes]
    _keys: dict[int, bytes]
    _shards: dict[str, int]
    records: dict[bytes, bytes] | None
    noted_link_fallback: bool
    _prove_flags: int = _PROVE_FLAGS  # O_NOATIME dropped once refused (not the objects' owner)

    if TYPE_CHECKING:

        def create_file(
            self, dir_fd: int, name: str, f: RegularFile | LinkRef, st: os.stat_result | None = None
        ) -> None: ...

        def _record(self, key: bytes) -> bytes | None: ...

        def _hash_blob_fd(self, fd: int, digest: str, size: int) -> None: ...

        def write_content(self, r: RegularFile, out_fd: int) -> None: ...

        def file_metadata(self, fd: int, r: Entry, *, mode_set: bool = False) -> None: ...

        def open_new_file(self, dir_fd: int, name: str, r: RegularFile) -> tuple[int, bool]: ...

        def note_link_fallback(self, exc: OSError) -> None: ...

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

    def _object_ok(
        self, sfd: int, name: str, f: RegularFile | LinkRef, raw: bytes | None, st: os.stat_result | None = None
    ) -> bool | None:
        """True when the object ``name`` of shard ``sfd`` provably still holds f's content and metadata
        (``raw``: its record; ``st``: its stat when the caller just took it); False when it does not,
        None when there is none."""
        if st is None:
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
            self.needs_sync = True  # its record vouches for bytes read from the page cache
            return True
        finally:
            os.close(fd)

    def _reprove(self, sfd: int, name: str, raw: bytes, st: os.stat_result) -> bool:
        """Prove an object against its record's contents (digest, perm, owner, size, mtime, no
        xattrs) after its stat ``st`` changed, without decoding the manifest entry: open, flistxattr,
        one pread of size+1 bytes below 4 MiB (a short read proves the size: fs.digest_fd), close.

        The metadata is checked on ``st`` (no fstat after the open): the name is what gets
        linked afterwards anyway, and only a checkout replaces an object, with a good one.
        Opened with O_NOATIME where allowed (owner or CAP_FOWNER): the read would otherwise
        write each object's atime (relatime updates it when ctime, which the removed checkout's
        unlinks moved, is newer), an inode to journal per object for nothing the proof uses."""
        _, _, size, mtime, _, d, perm, uid, gid, _ = _unpack_record(raw)
        if (
            st.st_size != size
            or st.st_mtime_ns != mtime
            or st.st_mode != stat.S_IFREG | perm  # a regular file, with the recorded permission bits
            or st.st_uid != uid
            or st.st_gid != gid
        ):
            return False
        try:
            fd = os.open(name, self._prove_flags, dir_fd=sfd)
        except PermissionError:
            if not self._prove_flags & _NOATIME:
                return False
            self._prove_flags &= ~_NOATIME  # not the objects' owner: atime it is
            return self._reprove(sfd, name, raw, st)
        except OSError:
            return False
        try:
            # No fstat: ``st`` said regular file; a name swapped since for a FIFO or a directory
            # (only whoever owns the store can) fails the read (ESPIPE, EISDIR), which fails the
            # proof. That fstat was over a quarter of this proof (3 of 10.6 us of CPU an object).
            try:
                if os.listxattr(fd):
                    return False
            except OSError as exc:  # no xattrs here at all: none on the object either (read_xattrs)
                if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                    return False
            if fs.digest_fd(fd, size) != d:
                return False
            self.needs_sync = True  # its record vouches for bytes read from the page cache
            return True
        except OSError:
            return False
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

    def link_known(self, dirs: DirFds, entries: list[LinkRef | Resource]) -> list[LinkRef | Resource]:
        """Link the store files of ``entries`` (a hardlink checkout's LinkRefs of one path) whose
        object's record is there and proves it: stat, link, stat, nothing else per file (or, when
        its stat moved, the re-proof from the record's contents: ``_reprove``). Return the other
        entries, for the general way (create_file, create_other), in order.

        One loop with everything it calls bound to locals: this is the whole per-file work of a
        later checkout (~4 us of Python a file, against ~10 as a method called per file)."""
        records = self.records
        if records is None or self.noted_link_fallback:
            return entries
        rest: list[LinkRef | Resource] = []
        keep = rest.append
        shards, shard_fd, updates, reprove = self._shards, self._shard_fd, self.link_updates, self._reprove
        get_record, get_dir = records.get, dirs.get
        stat_, link, pack, sha256 = os.stat, os.link, _pack_stat, hashlib.sha256
        stat_len, record_len, v2, xattrs_flag = _STAT_LEN, _RECORD_LEN, RECORD_V2, RECORD_XATTRS
        last_parent: str | None = None
        dfd = -1
        done = 0
        for f in entries:
            if type(f) is not LinkRef or len(f.paths) != 1:
                keep(f)
                continue
            key = f.key
            if key is None:
                key = f.key = sha256(f.entry).digest()
            rkey = b"o" + key
            raw = get_record(rkey)
            if raw is None or len(raw) != record_len or raw[0] != v2:
                keep(f)
                continue
            k = key.hex()
            sfd = shards.get(k[:2]) or shard_fd(k[:2])
            try:
                st = stat_(k, dir_fd=sfd, follow_symlinks=False)
            except FileNotFoundError:
                keep(f)
                continue
            if raw[:stat_len] != pack(v2, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) and (
                # Its stat moved (a removed checkout's unlinks): proven again from its record.
                raw[-1] & xattrs_flag or not reprove(sfd, k, raw, st)
            ):
                keep(f)  # the general way proves it from its entry, or replaces it
                continue
            parent, _, name = f.paths[0][1:].rpartition("/")
            if parent != last_parent:
                dfd, last_parent = get_dir(parent), parent
            try:
                link(k, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            except OSError:
                keep(f)  # (EXDEV, EMLINK, removed by gc meanwhile...): the general way decides
                continue
            st = stat_(k, dir_fd=sfd, follow_symlinks=False)
            updates[rkey] = pack(v2, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) + raw[stat_len:]
            done += 1
            if done & 1023 == 0:
                progress.advance(1024)
            if done == 100:
                crashpoint("checkout-mid-files")
        progress.advance(done & 1023)
        return rest

    def link_object(self, dir_fd: int, name: str, f: RegularFile | LinkRef, st: os.stat_result | None = None) -> None:
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
        if raw is None and st is None and self._made_in_place(dir_fd, name, sfd, k, rkey, resource_of(f)):
            return
        for _ in range(4):
            proven = self._object_ok(sfd, k, f, raw, st)
            st = None
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
                self.link_updates[rkey] = (
                    _pack_stat(RECORD_V2, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) + raw[_STAT_LEN:]
                )
            else:
                self.link_updates[rkey] = pack_object_record(st, resource_of(f))
            return
        raise CastoreError(f"{f.path}: could not create a hardlink object")

    def _made_in_place(self, dir_fd: int, name: str, sfd: int, k: str, rkey: bytes, r: RegularFile) -> bool:
        """No record: most likely no object either (a first checkout). Write the file at ``name``
        in the checkout, then link it into the shard as the object ``k``: the name must be free
        there (EEXIST: a concurrent checkout made it, or its record was lost; False, and the
        caller proves and links that one), so nothing incomplete ever has an object's name, and
        there is no temp to leave behind. The record's stat comes from the still open fd
        (after the link: its ctime). When the store is elsewhere (EXDEV) or links are refused,
        the written file stays as the copy the caller would have made. Per file, against a
        temp renamed into the shard: no stat of a missing name, no rename, fstat not stat."""
        self.made_objects = self.needs_sync = True
        fd, mode_set = self.open_new_file(dir_fd, name, r)
        try:
            self.write_content(r, fd)
            self.file_metadata(fd, r, mode_set=mode_set)
            crashpoint("checkout-object-written")
            try:
                os.link(name, k, src_dir_fd=dir_fd, dst_dir_fd=sfd, follow_symlinks=False)
            except FileExistsError:
                os.unlink(name, dir_fd=dir_fd)
                return False
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                    raise
                self.note_link_fallback(exc)
                return True
            self.link_updates[rkey] = pack_object_record(os.fstat(fd), r)
            return True
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
            raise
        finally:
            os.close(fd)

    def _make_object(self, sfd: int, name: str, r: RegularFile, *, replace: bool) -> bool:
        """Write the object ``name`` for ``r``. ``replace``: a stale or altered object stands there
        (its old links keep the old inode). Otherwise the name must still be free: False when a
        concurrent checkout made it first (two replacing each other left each one's record
        naming the other's inode)."""
        self.made_objects = self.needs_sync = True
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
        updates = {**self.verified_updates, **self.link_updates} if self.verified_updates else self.link_updates
        rows = sorted(updates.items())  # (keys are unique: the values are never compared)
        self.link_updates = {}
        self.verified_updates.clear()
        return rows

    def flush(
        self, extra: list[tuple[bytes, bytes]] | None = None, before_commit: Callable[[], None] | None = None
    ) -> None:
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
        links.write_records(self.store.meta, rows, before_commit)
