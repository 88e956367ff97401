"""The common case of a checkout, inlined: a small plain file of a store manifest (one path, one blob
below the chunking threshold, no xattrs, holes or streams: most of any tree) written from its still
encoded entry, as a copy (``copy_encoded``) or as a new hardlink object (``first_object``).

Per file this is what ``create_file`` -> ``write_content`` -> ``_copy_small`` -> ``file_metadata``
and ``link_object`` -> ``_made_in_place`` do, with the same syscalls in the same order of effects,
minus their Python: the entry is read from its wire bytes (``manifest.plainread``: ~3 us, the codec
and its RegularFile ~8 us), no RegularFile is built, the record is packed from the fields at hand,
and ten calls become two. Anything else, or anything unexpected before a file is created (no kept
shard fd yet, a missing or odd blob, a size that does not match), goes the general way, which says
what is wrong.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from castore import fs
from castore.digest import EMPTY_DIGEST
from castore.errors import IntegrityError
from castore.faults import crashpoint
from castore.manifest.model import RegularFile
from castore.manifest.plainread import PlainFields, plain_fields
from castore.materialize.options import Options
from castore.store import Store
from castore.store.links import OBJECT_RECORD, RECORD_V2, LinkRef

_ONE_READ = 4 << 20  # as content._ONE_READ: below it a blob is copied from one pread
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_LINK_REFUSED = (errno.EXDEV, errno.EMLINK, errno.EPERM)
_pack_record = OBJECT_RECORD.pack


class PlainFileWriter:
    """The inlined small-file half of a Writer (castore.materialize.writer)."""

    store: Store | None
    opts: Options
    euid: int
    egid: int
    umask_zero: bool
    can_reflink: bool
    threshold: int
    needs_sync: bool
    made_objects: bool
    link_updates: dict[bytes, bytes]
    records: dict[bytes, bytes] | None
    noted_link_fallback: bool
    _shards: dict[str, int]

    if TYPE_CHECKING:

        def create_file(
            self, dir_fd: int, name: str, f: RegularFile | LinkRef, st: os.stat_result | None = None
        ) -> None: ...

        def link_object(
            self, dir_fd: int, name: str, f: RegularFile | LinkRef, st: os.stat_result | None = None
        ) -> None: ...

        def note_link_fallback(self, exc: OSError) -> None: ...

        def _shard_fd(self, shard: str) -> int: ...

    def encoded_writer(self) -> Callable[[int, str, LinkRef], None] | None:
        """What writes a store file still encoded (LinkRef) at (dir_fd, name) in this checkout:
        link_known for hardlink, copy_encoded for a copy; None: create_file."""
        if self.store is None:
            return None
        if self.opts.link == "hardlink":
            return self.link_encoded
        return self.copy_encoded if self.opts.link == "copy" else None

    def link_encoded(self, dir_fd: int, name: str, f: LinkRef) -> None:
        """create_file for a store file of a hardlink checkout that link_known left (no record, or
        one that did not prove its object): without a record (a first checkout) first_object,
        else the general way."""
        key = f.key
        if key is None:
            key = f.key = hashlib.sha256(f.entry).digest()
        rkey = b"o" + key
        records = self.records
        if records is None or rkey in records or self.noted_link_fallback:
            self.create_file(dir_fd, name, f)
            return
        k = key.hex()
        self.first_object(dir_fd, name, f, self._shards.get(k[:2]) or self._shard_fd(k[:2]), k, rkey)

    def _write_small(self, dir_fd: int, name: str, f: LinkRef) -> tuple[int, PlainFields] | None:
        """Create ``name`` in ``dir_fd`` with the content and metadata of ``f`` when it is a plain file
        this path writes (plainread; below one pread and the chunking threshold; one path, the one
        split_entries read): the blob read first, with one pread of size+1 bytes from its kept shard
        fd (a short read proves the size), hashed, then the new file made with its mode, written,
        chowned when another owner, its mtime set. The new file's fd, open, and f's fields; None,
        with nothing created, when f is anything else or anything about the blob is unexpected
        (the general path then writes it or says what is wrong)."""
        pf = plain_fields(f.entry)
        if pf is None or self.can_reflink:
            return None
        path, perm, uid, gid, size, digest, mtime = pf
        if size >= _ONE_READ or size >= self.threshold or (path,) != f.paths:
            return None
        data = b""
        if size:
            h = digest[7:]
            dfd = self._shards.get("b" + h[:2]) or self._blob_shard(h[:2])
            if dfd < 0:
                return None
            got = fs.read_exact_at(dfd, h, size)
            if got is None:
                return None
            data = got
            opts = self.opts
            if opts.verify and digest not in opts.trusted and hashlib.sha256(data).hexdigest() != h:
                raise IntegrityError(f"blob {digest} is corrupt (digest mismatch) for {path}; run `continuity fsck`")
        elif digest != EMPTY_DIGEST:
            return None
        # Under umask 0 (a checkout), a mode without setuid, setgid or sticky bits is made at creation.
        made = self.umask_zero and not perm & 0o7000
        fd = os.open(name, _NEW_FILE, perm if made else 0o600, dir_fd=dir_fd)
        try:
            if size:
                self.needs_sync = True
                n = os.pwrite(fd, data, 0)
                if n < size:
                    fs.pwrite_all(fd, memoryview(data)[n:], n)
            if uid != self.euid or gid != self.egid:
                os.fchown(fd, uid, gid)
            if not made:
                os.fchmod(fd, perm)  # after the chown, which clears setuid and setgid
            if mtime is not None:
                os.utime(fd, ns=(mtime, mtime))
        except BaseException:
            os.close(fd)
            raise
        return fd, pf

    def _blob_shard(self, shard: str) -> int:
        """An fd on the blob shard directory ``shard``, kept with the others (-1 when it cannot be opened:
        the general path then says why)."""
        assert self.store is not None
        try:
            fd = os.open(os.path.join(self.store.blob_root, shard), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return -1
        self._shards["b" + shard] = fd
        return fd

    def copy_encoded(self, dir_fd: int, name: str, f: LinkRef) -> None:
        """create_file for a store file of a copy checkout (the caller checked the link mode)."""
        made = self._write_small(dir_fd, name, f)
        if made is None:
            self.create_file(dir_fd, name, f)
            return
        os.close(made[0])

    def first_object(self, dir_fd: int, name: str, f: LinkRef, sfd: int, k: str, rkey: bytes) -> None:
        """link_object for a file without a record (a first checkout): _made_in_place inlined. The
        file is written at ``name`` and linked into the shard ``sfd`` as the object ``k`` (the hex
        object key; ``rkey``: its record's key), its record packed from the fields at hand and the
        fstat of the open file."""
        made = self._write_small(dir_fd, name, f)
        if made is None:
            self.create_file(dir_fd, name, f)
            return
        fd, pf = made
        self.made_objects = self.needs_sync = True
        try:
            crashpoint("checkout-object-written")
            try:
                os.link(name, k, src_dir_fd=dir_fd, dst_dir_fd=sfd, follow_symlinks=False)
            except FileExistsError:
                st = None  # a concurrent checkout made it (or its record was lost): prove and link that one
            except OSError as exc:
                if exc.errno not in _LINK_REFUSED:
                    raise
                self.note_link_fallback(exc)  # the written file stays, as the copy
                return
            else:
                st = os.fstat(fd)
                _, perm, uid, gid, _, digest, _ = pf
                self.link_updates[rkey] = _pack_record(
                    RECORD_V2,
                    st.st_ino,
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                    bytes.fromhex(digest[7:]),
                    perm,
                    uid,
                    gid,
                    0,
                )
                return
            os.unlink(name, dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except OSError:
                pass
            raise
        finally:
            os.close(fd)
        try:
            st = os.stat(k, dir_fd=sfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None  # removed again meanwhile (gc): made again
        self.link_object(dir_fd, name, f, st)
