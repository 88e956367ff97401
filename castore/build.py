"""Walk a source tree into a Manifest (upstream's ``build``), store untouched.

The walk is iterative and directory-fd relative: no RecursionError at any
depth, symlinks never followed, FIFOs never opened. Regular files are read by
``castore.readers`` in worker processes; ``ingest`` passes a Processor that
also stages their content as blobs, and a stat cache that skips unchanged
files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING

from castore import fs

if TYPE_CHECKING:  # concurrent.futures (and logging) only once there is something to read
    from concurrent.futures import Executor, Future, ProcessPoolExecutor
from castore.bulkmode import bulk
from castore.errors import CastoreError
from castore.manifest.model import Manifest, path_key
from castore.manifest.wire import framed
from castore.readers import FileJob, FileResult, PackedResult, Processor
from castore.walk import (
    SourceChanged,
    Stat,
    WalkOptions,
    WalkResult,
    assemble,
    ignored,
    open_root,
    raise_nofile_limit,
    see_entry,
    walk,
)

__all__ = [
    "SourceChanged",
    "Stat",
    "WalkOptions",
    "WalkResult",
    "assemble",
    "build",
    "build_encoded",
    "encode_walked",
    "ignored",
    "make_pool",
    "open_root",
    "raise_nofile_limit",
    "read_with_retries",
    "see_entry",
    "walk",
]

BATCH_FILES = 512
BATCH_BYTES = 32 << 20
RETRIES = 3


def make_pool(workers: int | None = None) -> ProcessPoolExecutor:
    """A pool of hashing processes (fork: cheap; the children never touch LMDB)."""
    import multiprocessing  # here, not at the top: 5 ms of every CLI start that never hashes much
    from concurrent.futures import ProcessPoolExecutor

    n = workers or max(1, min(2, os.cpu_count() or 1))
    return ProcessPoolExecutor(
        n, mp_context=multiprocessing.get_context("fork"), initializer=_die_with_parent, initargs=(os.getpid(),)
    )


def _die_with_parent(parent: int) -> None:
    """Pool workers die with their parent: a SIGKILLed ingest leaves no process behind."""
    import signal

    fs.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


LARGE = 8 << 20  # files this large are dispatched one by one, largest first, after the walk


class Reader:
    """Reads file jobs with a Processor, in a process pool when given one.

    Small files are submitted in batches while the walk is still running
    (walking and hashing overlap); large ones are kept for the end and sent
    largest first so that both workers finish together.
    """

    def __init__(
        self, proc: Processor, pool: Executor | None, progress: Callable[[int, int], None] | None = None
    ) -> None:
        self.proc, self.pool, self.progress = proc, pool, progress
        self.jobs: list[FileJob] = []
        self.pending: list[int] = []
        self.pending_bytes = 0
        self.large: list[int] = []
        self.futures: list[tuple[list[int], Future[list[str | bytes | PackedResult]]]] = []
        #: (temp or "", digest) of every blob staged or published by the batches that completed
        self.done: list[tuple[str, str]] = []

    def add(self, job: FileJob) -> None:
        i = len(self.jobs)
        self.jobs.append(job)
        if job.size >= LARGE:
            self.large.append(i)
            return
        self.pending.append(i)
        self.pending_bytes += job.size
        if len(self.pending) >= BATCH_FILES or self.pending_bytes >= BATCH_BYTES:
            self._submit(self.pending)
            self.pending, self.pending_bytes = [], 0

    def _submit(self, idx: list[int]) -> None:
        packed = [(j.rel, j.dev, j.ino, j.size, j.mtime_ns, j.ctime_ns, j.sparse) for j in (self.jobs[i] for i in idx)]
        if self.pool is None:
            from concurrent.futures import Future

            fut: Future[list[str | bytes | PackedResult]] = Future()
            fut.set_result(self.proc.run_packed(packed))
        else:
            fut = self.pool.submit(self.proc.run_packed, packed)
        self.futures.append((idx, fut))

    def results(self) -> list[FileResult]:
        """Wait for every job; results in the order jobs were added."""
        if self.pending:
            self._submit(self.pending)
            self.pending = []
        for i in sorted(self.large, key=lambda i: -self.jobs[i].size):
            self._submit([i])
        self.large = []
        out: list[FileResult] = [_EMPTY] * len(self.jobs)
        failure: BaseException | None = None
        for idx, fut in self.futures:
            try:
                res = fut.result()
            except BaseException as exc:  # noqa: BLE001 - every batch is waited for, then the first error raised
                failure = failure or exc
                continue
            done = self.done
            for i, r in zip(idx, res, strict=True):
                if type(r) is str:  # the common case: a digest only (see Processor.run_packed)
                    out[i] = FileResult(r)
                    continue
                if type(r) is bytes:  # build_encoded: the entry's bytes (a digest only, encoded)
                    out[i] = FileResult(encoded=r)
                    continue
                out[i] = FileResult(*r)
                done.extend(out[i].staged)
            if self.progress:
                self.progress(len(idx), sum(self.jobs[i].size for i in idx))
        self.futures = []
        if failure is not None:
            raise failure
        return out


_EMPTY = FileResult()


def read_files(
    proc: Processor, jobs: list[FileJob], pool: Executor | None, progress: Callable[[int, int], None] | None = None
) -> list[FileResult]:
    """Read every job with ``proc``, in parallel when a pool is given."""
    reader = Reader(proc, pool, progress)
    for j in jobs:
        reader.add(j)
    return reader.results()


def restat(root_fd: int, job: FileJob) -> FileJob | None:
    """A fresh job for a file that changed, or None if it is gone."""
    try:
        fd = fs.open_beneath(root_fd, job.rel, os.O_PATH)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        return None
    return FileJob(
        job.rel, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_blocks * 512 < st.st_size
    )


def read_with_retries(
    root_fd: int,
    proc: Processor,
    jobs: list[FileJob],
    pool: Executor | None,
    progress: Callable[[int, int], None] | None = None,
    results: list[FileResult] | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> list[FileResult]:
    """read_files (unless ``results`` are given), re-reading files that changed
    under us up to RETRIES times; ``jobs`` is updated with their fresh stat.
    ``on_skip``: a file that cannot be read is reported there (its result keeps
    its ``error``: the caller leaves it out) instead of failing."""
    if results is None:
        results = read_files(proc, jobs, pool, progress)
    for _ in range(RETRIES):
        redo = [i for i, r in enumerate(results) if r.changed]
        if not redo:
            break
        for i in redo:
            fresh = restat(root_fd, jobs[i])
            if fresh is None:
                continue
            jobs[i] = fresh
            results[i] = proc.run_batch([fresh])[0]
    for j, r in zip(jobs, results, strict=True):
        if r.error and on_skip is not None:
            why = r.error.lstrip("/")
            why = why[len(j.rel) + 2 :] if why.startswith(j.rel + ": ") else why
            on_skip(j.rel, "vanished or kept changing while it was read" if r.changed else why)
        elif r.error:
            if r.changed:
                raise SourceChanged(f"/{j.rel}: changed while it was read; not recorded")
            raise CastoreError(r.error if r.error.startswith("/") else "/" + r.error)
    return results


@bulk
def build(
    root: str, opts: WalkOptions | None = None, *, pool: Executor | None = None, hash_files: bool = True
) -> Manifest:
    """The manifest of the tree at ``root``. Raises NotFound, SourceChanged, CastoreError."""
    opts = opts or WalkOptions()
    walked, results = _walk_and_read(root, opts, pool, hash_files, encode=False)
    return assemble(walked, results, whiteouts=opts.whiteouts)


@bulk
def build_encoded(root: str, opts: WalkOptions | None = None) -> bytes:
    """``codec.dumps(build(root, opts))``, the same bytes, made with less work in this process: the
    hashing workers also encode each plain file's entry (castore.manifest.wire), and only the other
    entries (directories, links, files with xattrs or hardlinks...) go through the model here."""
    opts = opts or WalkOptions()
    walked, results = _walk_and_read(root, opts, None, True, encode=True)
    return encode_walked(walked, results, whiteouts=opts.whiteouts)


def _walk_and_read(
    root: str, opts: WalkOptions, pool: Executor | None, hash_files: bool, *, encode: bool
) -> tuple[WalkResult, list[FileResult]]:
    root_fd = open_root(root)
    try:
        st = os.fstat(root_fd)
        proc = Processor(root=root, root_id=(st.st_dev, st.st_ino), hash_content=hash_files, encode=encode)
        own_pool = pool is None and hash_files
        p = make_pool() if own_pool else pool
        try:
            reader = Reader(proc, p)
            walked = walk(root_fd, opts, reader.add)
            results = read_with_retries(root_fd, proc, walked.files, p, results=reader.results())
        finally:
            if own_pool and p is not None:
                p.shutdown(cancel_futures=True)
        return walked, results
    finally:
        os.close(root_fd)


def encode_walked(walked: WalkResult, results: list[FileResult], *, whiteouts: str = "none") -> bytes:
    """The manifest bytes of a walk: entries the workers encoded, and the rest assembled and encoded
    here, in canonical order (by path bytes, as ``Manifest.of``)."""
    from castore.manifest import codec  # noqa: PLC0415 - the protobuf module, only for the other entries

    by_rel = {j.rel: (j, r) for j, r in zip(walked.files, results, strict=True)}
    keyed: list[tuple[bytes, bytes]] = []
    rest = WalkResult()
    rest_results: list[FileResult] = []
    is_reg = stat.S_ISREG
    for seen in walked.entries:
        if is_reg(seen.st.st_mode):
            job, res = by_rel[seen.path]
            if res.encoded and seen.st.st_nlink == 1:
                keyed.append((path_key("/" + seen.path), framed(res.encoded)))
                continue
            rest.files.append(job)
            rest_results.append(res)
        rest.entries.append(seen)
    for r in assemble(rest, rest_results, whiteouts=whiteouts).resources:
        keyed.append((path_key(r.paths[0]), codec.dumps(Manifest((r,)))))
    keyed.sort(key=_first)
    return b"".join([b for _, b in keyed])


def _first(pair: tuple[bytes, bytes]) -> bytes:
    return pair[0]
