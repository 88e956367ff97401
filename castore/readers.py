"""Reading regular files of a source tree: hash, chunk, and (for ingest) stage
their content as blob temp files. Runs in worker processes.

Small files are read whole and hashed in two worker *processes* (two threads
on 100k tiny files are 4.6x slower than one here; two processes 1.7x faster).
A job carries what the walker saw (dev, ino, size, mtime, ctime); the worker
opens the file without following symlinks, checks it is the same inode, and
checks nothing changed while it read, so a live file is reported, never
recorded with a wrong digest.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from dataclasses import dataclass, field

from castore import fs
from castore.errors import ResourceLimit, is_disk_full

READ_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class ChunkParams:
    """FastCDC parameters, fixed in a store's config at creation."""

    min_size: int = 64 << 10
    avg_size: int = 128 << 10
    max_size: int = 512 << 10
    threshold: int = 1 << 20  # files at least this large are chunked


@dataclass(slots=True)
class FileJob:
    """One regular file to read, with the walker's lstat."""

    rel: str  # path from the root, no leading "/"
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    sparse: bool = False


@dataclass(slots=True)
class FileResult:
    """What reading a file gave; ``error`` set when it could not be read safely."""

    digest: str = ""
    chunks: tuple[tuple[str, int, int], ...] = ()
    holes: tuple[tuple[int, int], ...] = ()
    xattrs: tuple[tuple[str, bytes], ...] = ()
    staged: list[tuple[str, str]] = field(default_factory=list)  # (tmp name, digest) written
    error: str = ""
    changed: bool = False
    #: with Processor.encode: the manifest entry's bytes (castore.manifest.wire) of a plain file
    encoded: bytes = b""


# FileJob and FileResult as plain tuples (their fields in order): what crosses to a worker process.
PackedJob = tuple[str, int, int, int, int, int, bool]
PackedResult = tuple[
    str,
    tuple[tuple[str, int, int], ...],
    tuple[tuple[int, int], ...],
    tuple[tuple[str, bytes], ...],
    list[tuple[str, str]],
    str,
    bool,
]


class FileChanged(Exception):
    pass


@dataclass
class Processor:
    """Picklable settings for workers: the root, and where to stage blobs.

    ``stage_dir`` is None for ``build`` (hash only). ``blob_dir`` lets workers
    skip writing content that is already a blob (a hint only: the commit
    phase checks again under the store lock).
    """

    root: str
    root_id: tuple[int, int]
    stage_dir: str | None = None
    blob_dir: str | None = None
    chunking: ChunkParams | None = None
    hash_content: bool = True
    #: when set, blobs are written under their names in this blob root at once (see _publish)
    publish_dir: str | None = None
    #: replace what stands under a blob's name (its bytes failed verification)
    replace_existing: bool = False
    #: also write each plain file's manifest entry (``build``: the workers encode, the parent sorts)
    encode: bool = False

    def run_batch(self, jobs: list[FileJob]) -> list[FileResult]:
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            st = os.fstat(root_fd)
            if (st.st_dev, st.st_ino) != self.root_id:
                return [FileResult(error="the source root was replaced while reading") for _ in jobs]
            self._published: list[str] = []
            if self.encode:  # imported here: `list` and the other verbs that import the store skip the model
                from castore.manifest.wire import plain_fields

                self._plain_fields = plain_fields
            try:
                return [self.run_one(root_fd, j) for j in jobs]
            except BaseException:
                # The batch fails as a whole: take back the blobs it created (unindexed, so only ours).
                for path in self._published:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                raise
        finally:
            os.close(root_fd)

    def run_packed(self, jobs: list[PackedJob]) -> list[str | bytes | PackedResult]:
        """run_batch over plain tuples both ways: pickling dataclasses costs more than hashing small files.
        A result that is only a digest (no chunks, holes, xattrs, staged blob, error) is that string, or
        with ``encode`` its manifest entry's bytes."""
        out = self.run_batch([FileJob(*j) for j in jobs])
        return [
            (r.encoded or r.digest)
            if not (r.chunks or r.holes or r.xattrs or r.staged or r.error or r.changed)
            else (r.digest, r.chunks, r.holes, r.xattrs, r.staged, r.error, r.changed)
            for r in out
        ]

    def run_one(self, root_fd: int, job: FileJob) -> FileResult:
        try:
            fd = fs.open_beneath(root_fd, job.rel, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR, errno.EXDEV):
                return FileResult(error=f"{job.rel}: changed while reading ({exc.strerror})", changed=True)
            return FileResult(error=f"{job.rel}: {exc.strerror}")
        try:
            return self._read(fd, job)
        except FileChanged:
            return FileResult(error=f"/{job.rel}: changed while reading", changed=True)
        except OSError as exc:
            if is_disk_full(exc):  # staging a blob: exit 6, not a source error
                raise ResourceLimit(f"no space left in the store while staging /{job.rel} ({exc.strerror})") from None
            return FileResult(error=f"/{job.rel}: {exc.strerror}")
        finally:
            os.close(fd)

    def _same(self, st: os.stat_result, job: FileJob) -> bool:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (
            job.dev,
            job.ino,
            job.size,
            job.mtime_ns,
            job.ctime_ns,
        )

    def _read(self, fd: int, job: FileJob) -> FileResult:
        cp = self.chunking
        chunked = self.stage_dir is not None and cp is not None and job.size >= cp.threshold
        small = self.hash_content and job.size <= READ_SIZE * 8 and not chunked
        # Small files skip the fstat before reading (it costs as much as hashing
        # them): the one after reading compares inode, size, mtime and ctime with
        # the walker's lstat, which any replacement or write since the walk
        # changes. Others are checked first, so a swapped-in huge file is not read.
        if not small and not self._same(os.fstat(fd), job):
            raise FileChanged
        res = FileResult()
        res.xattrs = fs.read_xattrs(fd)
        if job.sparse:
            res.holes = fs.data_holes(fd, job.size)
        if not self.hash_content:
            return res
        if chunked:
            assert cp is not None
            self._chunked(fd, job, res, cp)
        elif small:
            data = os.read(fd, job.size + 1)
            # One read is enough when it returns the whole size: growth after it
            # shows in the fstat below. Short reads are retried until EOF.
            while len(data) < job.size:
                more = os.read(fd, job.size + 1 - len(data))
                if not more:
                    break
                data += more
            if len(data) != job.size:
                raise FileChanged
            res.digest = "sha256:" + hashlib.sha256(data).hexdigest()
            if self.stage_dir is not None:
                self._stage(res, res.digest, (data,))
        else:
            res.digest = self._hash_large(fd, job, res)
        st = os.fstat(fd)
        if not self._same(st, job):
            raise FileChanged
        if self.encode and st.st_nlink == 1 and not (res.chunks or res.holes or res.xattrs):
            # Unchanged since the walker's lstat (same ctime): its mode and owner are the walker's.
            res.encoded = (
                self._plain_fields(
                    "/" + job.rel, st.st_mode & 0o7777, st.st_uid, st.st_gid, job.size, res.digest, job.mtime_ns
                )
                or b""
            )
        return res

    def _hash_large(self, fd: int, job: FileJob, res: FileResult) -> str:
        h = hashlib.sha256()
        tmp_fd, tmp_name = self._open_tmp() if self.stage_dir is not None else (-1, "")
        total = 0
        buf = bytearray(READ_SIZE * 4)
        view = memoryview(buf)
        try:
            while True:
                n = os.readv(fd, [buf])
                if n == 0:
                    break
                h.update(view[:n])
                if tmp_fd >= 0:
                    fs.write_all(tmp_fd, view[:n])
                total += n
                if total > job.size:
                    raise FileChanged
            if total != job.size:
                raise FileChanged
        except BaseException:
            if tmp_fd >= 0:
                os.close(tmp_fd)
                os.unlink(tmp_name)
            raise
        digest = "sha256:" + h.hexdigest()
        if tmp_fd >= 0:
            os.close(tmp_fd)
            self._keep(res, self._publish(tmp_name, digest))
        return digest

    def _chunked(self, fd: int, job: FileJob, res: FileResult, cp: ChunkParams) -> None:
        whole = hashlib.sha256()
        reader = _HashingReader(fd, whole)
        import pyfastcdc  # noqa: PLC0415 - only files large enough to chunk need it

        cdc = pyfastcdc.FastCDC(cp.avg_size, min_size=cp.min_size, max_size=cp.max_size)
        chunks = []
        for c in cdc.cut_stream(reader):
            d = "sha256:" + hashlib.sha256(c.data).hexdigest()
            chunks.append((d, c.offset, c.offset + c.length))
            self._stage(res, d, (c.data,))
        if reader.total != job.size:
            raise FileChanged
        res.digest = "sha256:" + whole.hexdigest()
        res.chunks = tuple(chunks)

    def _open_tmp(self) -> tuple[int, str]:
        assert self.stage_dir is not None
        name = os.path.join(self.stage_dir, os.urandom(12).hex())
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
        return fd, name

    def _stage(self, res: FileResult, digest: str, pieces: tuple[bytes | memoryview, ...]) -> None:
        hexd = digest[7:]
        if self.publish_dir is not None and not self.replace_existing:
            # Content known up front: create the blob under its own name, exclusively.
            # One create instead of create + rename; an existing name is a dedup hit.
            # Safe for the same reason as _publish: only the index makes a blob real.
            final = f"{self.publish_dir}/{hexd[:2]}/{hexd}"
            try:
                fd = os.open(
                    hexd,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o444,
                    dir_fd=fs.shard_dir_fd(f"{self.publish_dir}/{hexd[:2]}"),
                )
            except FileExistsError:
                return
            except FileNotFoundError:
                pass  # no shard dir: stage a temp, the committer installs it
            else:
                _fill(fd, final, pieces)
                self._note_published(final)
                res.staged.append(("", digest))
                return
        elif self.blob_dir is not None and os.path.exists(os.path.join(self.blob_dir, hexd[:2], hexd)):
            return
        fd, name = self._open_tmp()
        _fill(fd, name, pieces)
        self._keep(res, self._publish(name, digest))

    def _publish(self, tmp: str, digest: str) -> tuple[str, str] | None:
        """Rename a written temp to its blob name now, or leave it staged.

        Publishing early lets both workers do the renames while they read
        (instead of the committer alone afterwards). It is safe because the
        index, not the file name, is what makes a blob real: a published file
        becomes durable at the commit's syncfs, before its index row is
        written; after a crash an unindexed file is an orphan, and content
        found by name but not indexed is re-hashed before it is indexed.
        Returns ("", digest) once published, (tmp, digest) when left staged,
        None when the name already existed (not ours: the commit checks it).
        """
        if self.publish_dir is None:
            return tmp, digest
        hexd = digest[7:]
        final = f"{self.publish_dir}/{hexd[:2]}/{hexd}"
        if self.replace_existing:  # the name holds bytes that failed verification: replace them
            try:
                os.rename(tmp, hexd, dst_dir_fd=fs.shard_dir_fd(f"{self.publish_dir}/{hexd[:2]}"))
            except FileNotFoundError:
                return tmp, digest
            self._note_published(final)
            return "", digest
        try:
            fs.renameat2(-100, tmp, fs.shard_dir_fd(f"{self.publish_dir}/{hexd[:2]}"), hexd)
        except FileExistsError:
            os.unlink(tmp)  # the name exists: a dedup hit, not ours (the commit checks it)
            return None
        except FileNotFoundError:
            return tmp, digest  # no shard dir: the committer creates it
        self._note_published(final)
        return "", digest

    @staticmethod
    def _keep(res: FileResult, staged: tuple[str, str] | None) -> None:
        if staged is not None:
            res.staged.append(staged)

    def _note_published(self, path: str) -> None:
        published = getattr(self, "_published", None)
        if published is not None:
            published.append(path)


class _HashingReader:
    """A readinto() source for pyfastcdc that hashes the whole file on the way."""

    def __init__(self, fd: int, h: hashlib._Hash) -> None:
        self.fd, self.h, self.total = fd, h, 0

    def readinto(self, b: memoryview) -> int:
        n = os.readv(self.fd, [b])
        if n:
            self.h.update(b[:n])
            self.total += n
        return n


def _fill(fd: int, path: str, pieces: tuple[bytes | memoryview, ...]) -> None:
    """Write ``pieces`` to the new file ``fd`` at ``path`` and close it; on failure remove it."""
    try:
        for p in pieces:
            fs.write_all(fd, p)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
