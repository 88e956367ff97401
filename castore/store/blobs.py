"""Blob files: reading, writing, installing staged files, and the blob rows of the index.

A blob is the file STORE/blobs/sha256/ab/<hex>, mode 0444, named by the
digest of its bytes; its index row (``blobs`` table) holds its size and kind.
Write order: blob bytes durable -> index rows (``castore.store.commit``).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable

from castore import fs
from castore.errors import BlobNotFound, CastoreError, IntegrityError, UnsafeInput, raise_if_full
from castore.faults import crashpoint
from castore.fs.io import hash_fd, read_full
from castore.fs.tree import fsync_dir
from castore.store.base import StoreState
from castore.store.meta import BLOB_ROW, Txn, dkey

_KIND_NAMES = {
    stat.S_IFIFO: "FIFO",
    stat.S_IFDIR: "directory",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
}


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def open_blob_file(path: str, digest: str) -> tuple[int, os.stat_result]:
    """A read-only fd on the blob file ``path`` of ``digest``, and its stat; BlobNotFound when it is
    absent, IntegrityError for anything but a regular file (a symlink is never followed; O_NONBLOCK:
    a FIFO put there would block open() and read() forever, and changes nothing for a file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BlobNotFound(digest) from None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise IntegrityError(f"blob {digest} is a symlink in the store ({path}), not a regular file") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = _KIND_NAMES.get(stat.S_IFMT(st.st_mode), f"file of type {stat.S_IFMT(st.st_mode):#o}")
        raise IntegrityError(
            f"blob {digest} is a {kind} in the store, not a regular file ({path}); run `continuity fsck`"
        )
    return fd, st


class BlobFiles(StoreState):
    """The blob files of the store and their index rows."""

    def blob_path(self, digest: str) -> str:
        h = digest[7:]
        return os.path.join(self.blob_root, h[:2], h)

    def open_blob(self, digest: str) -> int:
        """A read-only fd on the blob file of ``digest``, refused unless it is a regular file.

        O_NONBLOCK: a FIFO put where a blob should be would block open() and
        read() forever (checkout, export, mount); on a regular file it changes nothing.
        Raises BlobNotFound, or IntegrityError for anything but a regular file.
        """
        return open_blob_file(self.blob_path(digest), digest)[0]

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
            data = read_full(fd, size)
        finally:
            os.close(fd)
        import hashlib  # noqa: PLC0415 - not at import: the read-only verbs hash nothing

        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"blob {digest} is corrupt (digest mismatch)")
        return data

    def put_blob(self, data: bytes, kind: int, txn: Txn | None = None) -> str:
        """Store ``data`` durably (per-blob fsync) and index it. Returns its digest."""
        digest = self.write_blob_file(data)
        row = BLOB_ROW.pack(len(data), kind)
        if txn is not None:
            txn.put(dkey(digest), row, db=self.meta.db("blobs"))
        else:
            self.meta.write(lambda t: t.put(dkey(digest), row, db=self.meta.db("blobs")))
        return digest

    def write_blob_file(self, data: bytes) -> str:
        """Store ``data`` as a blob file, durably (per-blob fsync), not indexed. Returns its digest."""
        import hashlib  # noqa: PLC0415

        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not os.path.exists(path):
            tmp = os.path.join(self.path, "tmp", f".put-{os.urandom(8).hex()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
            try:
                write_all(fd, data)
                os.fsync(fd)
            except OSError as exc:
                os.close(fd)
                os.unlink(tmp)
                raise_if_full(exc, f"writing {digest}")
                raise
            os.close(fd)
            self._install(tmp, digest)
            fsync_dir(os.path.dirname(path))
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
                raise UnsafeInput(
                    f"store at {self.path}: {key} is not a plain directory (a symlink?); refusing to write through it"
                ) from exc
            raise
        return fd

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

    def install_staged(
        self, staged: list[tuple[str, str]], synced: Callable[[], None] | None = None, *, sync_fd: int
    ) -> None:
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
