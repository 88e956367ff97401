"""Writing a regular file's content from the store: reflink, copy_file_range or read/write,
chunk by chunk, keeping holes; verified against its digest unless a `links` row proves the blob
unchanged since it was last hashed."""

from __future__ import annotations

import hashlib
import os
import stat
from typing import TYPE_CHECKING

from castore import fs
from castore.digest import EMPTY_DIGEST
from castore.errors import CastoreError, IntegrityError
from castore.manifest.entries import size_of
from castore.manifest.model import Chunk, RegularFile
from castore.materialize.options import Options
from castore.store import Store, links
from castore.store.links import OBJECT_RECORD, RECORD_V2, LinkRef, resource_of

_STAT_LEN, _RECORD_LEN = links.OBJECT_STAT.size, OBJECT_RECORD.size
# O_NONBLOCK: a FIFO put where a blob should be would block open() and read() (Store.open_blob).
_ONE_READ = 4 << 20  # a blob smaller than this is copied from one pread (_copy_small)
_BLOB_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ContentWriter:
    """The content half of a Writer (castore.materialize.writer)."""

    store: Store | None
    opts: Options
    can_reflink: bool
    threshold: int
    forked: bool
    needs_sync: bool
    records: dict[bytes, bytes] | None
    verified_updates: dict[bytes, bytes]
    chunk_lists: dict[str, tuple[Chunk, ...]]
    _shards: dict[str, int]

    if TYPE_CHECKING:

        def _object_key(self, f: RegularFile | LinkRef) -> bytes: ...

    def record_keys(self, files: list[RegularFile | LinkRef]) -> list[bytes]:
        """The `links` rows writing ``files`` may consult."""
        if self.opts.link == "hardlink":
            return [b"o" + self._object_key(r) for r in files]
        if self.can_reflink:
            return list({b"v" + bytes.fromhex(r.digest[7:]) for r in map(resource_of, files) if not r.chunks})
        return []

    def preload(self, files: list[RegularFile | LinkRef], *, chunk_lists: bool = True) -> None:
        """Read every record these files may need in one transaction, so that
        forked workers never touch LMDB (unsafe across fork); ``chunk_lists``: the chunk lists
        of their big files too (a forked worker's: this process reads them when needed)."""
        assert self.store is not None
        keys = sorted(self.record_keys(files))  # (reflink's "v" keys come deduplicated)
        self.records = links.read_records(self.store.meta, keys)
        if chunk_lists:
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
                        out.add("sha256:" + raw[_STAT_LEN : _STAT_LEN + 32].hex())
                    continue
            if isinstance(f, LinkRef) and f._res is None:
                size = size_of(f.entry)  # not decoded for this: most files are small
                if size is not None and size < self.threshold:
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
        return links.read_record(self.store.meta, key)

    def _blob_fd(self, digest: str) -> int:
        return self._open_blob(digest)[0]

    def _open_blob(self, digest: str) -> tuple[int, int]:
        """A read-only fd on the blob of ``digest`` and its size: opened from a kept fd on its
        shard directory (one name to resolve, not the store's whole path) and checked regular by
        one fstat. Anything unexpected goes through Store.open_blob, which raises the error."""
        assert self.store is not None
        h = digest[7:]
        dfd = self._shards.get("b" + h[:2])
        if dfd is None:
            try:
                dfd = os.open(os.path.join(self.store.blob_root, h[:2]), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                dfd = -1
            else:
                self._shards["b" + h[:2]] = dfd
        if dfd >= 0:
            try:
                fd = os.open(h, _BLOB_FLAGS, dir_fd=dfd)
            except OSError:
                pass
            else:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode):
                    return fd, st.st_size
                os.close(fd)
        fd = self.store.open_blob(digest)  # the error (or the blob, when it appeared meanwhile)
        return fd, os.fstat(fd).st_size

    def _blob_trusted(self, digest: str, fd: int) -> bool:
        """True when the blob is provably unchanged since it was last verified."""
        assert self.store is not None
        return links.is_verified(self._record(links.verified_key(digest)), os.fstat(fd))

    def _mark_verified(self, digest: str, fd: int) -> None:
        self.verified_updates[links.verified_key(digest)] = links.verified_record(os.fstat(fd))

    def _hash_blob_fd(self, fd: int, digest: str, size: int) -> None:
        got, total = fs.hash_fd(fd, expect=size)
        if total != size or got != digest:
            raise IntegrityError(f"blob {digest} is corrupt (digest mismatch); run `continuity fsck`")

    def write_content(self, r: RegularFile, out_fd: int) -> None:
        """Fill ``out_fd`` (empty, new) with the content of ``r``, verified."""
        if r.size == 0:
            if r.digest != EMPTY_DIGEST:
                raise IntegrityError(f"{r.path}: empty file with a non-empty digest")
            return
        self.needs_sync = True
        if not r.chunks and r.size >= self.threshold and self.store is not None:
            r = self._served_by_chunks(r)
        if not r.chunks and self.can_reflink and not r.holes:
            fd, size = self._open_blob(r.digest)
            try:
                if size != r.size:
                    raise IntegrityError(f"blob {r.digest} has the wrong size for {r.path}")
                try:
                    fs.reflink(fd, out_fd)
                    if self.opts.verify and r.digest not in self.opts.trusted and not self._blob_trusted(r.digest, fd):
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

    def _copy_small(self, r: RegularFile, out_fd: int) -> bool:
        """Copy a file of one blob below 4 MiB (most files): the blob opened from its kept shard fd,
        read with one pread of size+1 bytes (a short read proves its size: no fstat), hashed and
        written. False, having written nothing, when anything is unexpected (no shard fd yet, a
        missing blob, a FIFO or directory in its place: ESPIPE, EISDIR; the wrong size): the
        general path then says what is wrong."""
        h = r.digest[7:]
        dfd = self._shards.get("b" + h[:2])
        if dfd is None:
            return False
        data = fs.read_exact_at(dfd, h, r.size)
        if data is None:
            return False
        if self.opts.verify and r.digest not in self.opts.trusted and hashlib.sha256(data).hexdigest() != h:
            raise IntegrityError(f"blob {r.digest} is corrupt (digest mismatch) for {r.path}; run `continuity fsck`")
        n = os.pwrite(out_fd, data, 0)
        if n < len(data):
            fs.pwrite_all(out_fd, memoryview(data)[n:], n)
        return True

    def _copy(self, r: RegularFile, out_fd: int) -> None:
        if not r.chunks and not r.holes and r.size < _ONE_READ and self._copy_small(r, out_fd):
            return
        pieces = [(c.digest, c.begin, c.end) for c in r.chunks] or [(r.digest, 0, r.size)]
        verify = self.opts.verify and (len(pieces) > 1 or r.digest not in self.opts.trusted)
        whole = hashlib.sha256() if verify and len(pieces) > 1 else None
        ranges = fs.data_ranges(r.size, r.holes) if r.holes else None
        for digest, begin, end in pieces:
            fd, size = self._open_blob(digest)
            try:
                if size != end - begin:
                    raise IntegrityError(f"blob {digest} has the wrong size for {r.path}")
                if not verify and ranges is None:
                    fs.copy_fd_at(fd, out_fd, end - begin, begin)
                    continue
                h = hashlib.sha256() if verify else None
                pos = begin
                while pos < end:
                    data = os.read(fd, min(fs.READ * 4, end - pos))
                    if not data:
                        raise IntegrityError(f"blob {digest} is truncated")
                    if h is not None:
                        h.update(data)
                    if whole is not None:
                        whole.update(data)
                    if ranges is None:
                        fs.pwrite_all(out_fd, data, pos)
                    else:
                        fs.pwrite_sparse(out_fd, data, pos, ranges)
                    pos += len(data)
                if h is not None and "sha256:" + h.hexdigest() != digest:
                    raise IntegrityError(
                        f"blob {digest} is corrupt (digest mismatch) for {r.path}; run `continuity fsck`"
                    )
            finally:
                os.close(fd)
        if ranges is not None:
            os.ftruncate(out_fd, r.size)
        if whole is not None and "sha256:" + whole.hexdigest() != r.digest:
            raise IntegrityError(f"{r.path}: chunks do not add up to {r.digest}")
