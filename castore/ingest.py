"""ingest: walk a tree, store its content as blobs, record its manifest.

Order (docs/design.md): lease -> walk -> read files into staged temps (no
lock) -> under the shared store lock: syncfs, rename temps into place,
syncfs, manifest blob (fsync), then one LMDB transaction with the blob rows,
the manifest's references, the stat cache and, last, the catalog entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import castore.store.statcache as statcache
from castore import fs, progress
from castore.build import (
    Reader,
    WalkOptions,
    WalkResult,
    assemble,
    make_pool,
    open_root,
    read_with_retries,
    walk,
)
from castore.bulkmode import bulk
from castore.errors import CastoreError
from castore.faults import crashpoint
from castore.ingest_skips import SkipCount, drop_unread
from castore.manifest.model import Manifest
from castore.readers import FileJob, FileResult, Processor
from castore.store import Store, check_name, treecache
from castore.store.commit import commit_manifest
from castore.store.meta import Txn
from castore.store.revisions import FLAG_INCOMPLETE

if TYPE_CHECKING:
    from concurrent.futures import Executor


def _tree_key(src: str, opts: WalkOptions, st: os.stat_result) -> bytes:
    ident = repr((os.path.realpath(src), st.st_dev, st.st_ino, opts.ignore, opts.keep_appledouble, opts.whiteouts))
    return b"tree:" + hashlib.sha256(ident.encode("utf-8", "surrogateescape")).digest()


def _fingerprint(walked: WalkResult) -> bytes | None:
    """A digest of everything the walk saw, or None when some entry changed too recently to trust.

    ctime moves on every content, mode, owner, xattr or link change, so an
    unchanged fingerprint means an unchanged tree (given the racy-clean rule).
    """
    h = hashlib.sha256()
    limit = time.time_ns() - statcache.RACY_NS
    for e in sorted(walked.entries, key=lambda e: e.path):
        st = e.st
        if st.st_ctime_ns > limit:
            return None
        h.update(
            f"{e.path}\0{st.st_mode}\0{st.st_uid}\0{st.st_gid}\0{st.st_size}\0{st.st_mtime_ns}\0"
            f"{st.st_ctime_ns}\0{st.st_ino}\0{st.st_dev}\0{st.st_nlink}\0{st.st_rdev}\0{e.target}\0"
            f"{e.xattrs!r}\n".encode("utf-8", "surrogateescape")
        )
    return h.digest()


def _sizes(jobs: list[FileJob], results: list[FileResult]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for j, r in zip(jobs, results, strict=False):
        if r.chunks:
            for d, b, e in r.chunks:
                sizes[d] = e - b
        elif r.digest:
            sizes[r.digest] = j.size
    return sizes


class Progress:
    """Bytes read of the files to read (known once the walk is over), as a ``castore.progress`` task."""

    def __init__(self) -> None:
        self.task = progress.task("ingest")
        self.task.__enter__()

    def __call__(self, files: int, nbytes: int) -> None:
        self.task.advance(nbytes)

    def total(self, nbytes: int) -> None:
        self.task.set_total(nbytes)

    def done(self) -> None:
        self.task.__exit__(None, None, None)


class _CacheLookup:
    """The stat cache's side of a walk: each file found is a cache hit or a job for the reader.

    With a fingerprint of the tree on record the tree was walked, and compared with it,
    before (``_walk_if_known``): ``replay`` looks its files up, in walk order, when it
    was no match.
    """

    def __init__(self, store: Store, reader: Reader) -> None:
        self.store, self.reader = store, reader
        self.db = store.meta.db("statcache")
        self.txn: Txn | None = None  # the read transaction of the lookups under way
        self.hits: dict[int, FileResult] = {}
        self.slots: list[int] = []  # walk index -> reader index, or -1 for a cache hit

    def walk(self, root_fd: int, opts: WalkOptions) -> WalkResult:
        with self.store.meta.read() as self.txn:
            return walk(root_fd, opts, self.on_file)

    def on_file(self, job: FileJob) -> None:
        assert self.txn is not None
        raw = self.txn.get(statcache.key(job), db=self.db)
        hit = None if raw is None else statcache.decode(job, raw)
        if hit is not None:
            self.hits[len(self.slots)] = hit
            self.slots.append(-1)
        else:
            self.slots.append(len(self.reader.jobs))
            self.reader.add(job)

    def replay(self, walked: WalkResult) -> WalkResult:
        """A walk made already (no match for the recorded one): look its files up after all."""
        with self.store.meta.read() as self.txn:
            for job in list(walked.files):
                self.on_file(job)
        return walked

    def merge(self, jobs: list[FileJob], fresh: list[FileResult]) -> tuple[list[FileResult], set[int]]:
        """Every walked file's result (a hit, or what the reader found; ``jobs``, the walk's files,
        gets a retried file's fresh stat), and the indexes of the hits."""
        results: list[FileResult] = [_NO_RESULT] * len(jobs)
        for i, slot in enumerate(self.slots):
            if slot < 0:
                results[i] = self.hits[i]
            else:
                results[i] = fresh[slot]
                jobs[i] = self.reader.jobs[slot]
        return results, set(self.hits)


def _processor(store: Store, src: str, st: os.stat_result, stage_dir: str) -> Processor:
    return Processor(
        root=src,
        root_id=(st.st_dev, st.st_ino),
        stage_dir=stage_dir,
        blob_dir=store.blob_root,
        chunking=store.chunking,
        publish_dir=store.blob_root,
    )


@bulk
def ingest(
    store: Store,
    src: str,
    *,
    name: str | None = None,
    opts: WalkOptions | None = None,
    pool: Executor | None = None,
    progress: bool = True,
) -> str:
    """Store the tree at ``src``; return its manifest digest (tagged ``name`` if given)."""
    opts = opts or WalkOptions()
    skips = SkipCount(opts.on_skip)
    opts = dataclasses.replace(opts, on_skip=skips if opts.on_skip is not None else None)
    if name is not None:
        check_name(name)
    root_fd = open_root(src)
    own_pool = pool is None
    try:
        st = os.fstat(root_fd)
        start_ns = time.time_ns()
        tree_key = _tree_key(src, opts, st)
        shortcut, walked, fp = _walk_if_known(store, root_fd, opts, skips, tree_key, name)
        if shortcut is not None:
            return shortcut
        with store.lease() as lease:
            os.makedirs(lease.tmp_dir, mode=0o700)
            epoch = store.gc_epoch()
            proc = _processor(store, src, st, lease.tmp_dir)
            prog = Progress()
            if own_pool:
                pool = make_pool()
            reader = Reader(proc, pool, prog if progress else None)
            fresh: list[FileResult] = []
            try:
                look = _CacheLookup(store, reader)
                walked = look.walk(root_fd, opts) if walked is None else look.replay(walked)
                prog.total(sum(j.size for j in reader.jobs))
                fresh = read_with_retries(
                    root_fd, proc, reader.jobs, pool, results=_results(reader, lease.fd), on_skip=opts.on_skip
                )
                synced = store.sync_in_background(lease.fd)  # every blob is written: flush while we encode
                prog.done()
                crashpoint("ingest-after-read")
                jobs = walked.files
                results, hit_idx = look.merge(jobs, fresh)
                fp = fp if fp is not None else _fingerprint(walked)
                if skips.count:
                    jobs, results, hit_idx = drop_unread(walked, jobs, results, hit_idx)
                    store.record.flags |= FLAG_INCOMPLETE
                    store.record.skipped = skips.count
                    fp = None  # an incomplete walk is never the shortcut of the next ingest
                manifest = assemble(walked, results, whiteouts=opts.whiteouts)
                return _commit(
                    store,
                    manifest,
                    jobs,
                    results,
                    fresh,
                    proc,
                    name,
                    start_ns,
                    hit_idx,
                    epoch,
                    synced,
                    None if fp is None else (tree_key, fp),
                    sync_fd=lease.fd,
                )
            except BaseException:
                _abandon(store, reader, fresh)
                raise
    finally:
        os.close(root_fd)
        if own_pool and pool is not None:
            pool.shutdown(cancel_futures=True)


_NO_RESULT = FileResult()

#: Large files waiting to be read, in bytes, from which ingest flushes while it reads them.
FLUSH_WHILE_READING = 64 << 20


def _results(reader: Reader, sync_fd: int) -> list[FileResult]:
    """The reader's results; with much large-file data left to read, the store's filesystem
    is flushed every 0.1 s meanwhile, so the disk writes the chunks while both cores hash
    (versions, 2 x 256 MiB: 0.71 s -> 0.67 s). Not for small files: on `many` the periodic
    syncfs slowed file creation more than it saved."""
    if sum(reader.jobs[i].size for i in reader.large) < FLUSH_WHILE_READING:
        return reader.results()
    stop = fs.syncfs_every(sync_fd, 0.1)
    try:
        return reader.results()
    finally:
        stop()


def _abandon(store: Store, reader: Reader, fresh: list[FileResult]) -> None:
    """A failed ingest takes back the blobs it published and did not index.

    Batches still in flight are waited for first (what they create is ours
    too). Only names this ingest created are considered, and only those the
    index does not hold are removed, under the exclusive store lock so that
    no commit is checking them at the same time; a concurrent ingest that
    found one by name re-checks it at its own commit. Without this an
    ingest that hit ENOSPC would leave the store full of orphans until gc.
    """
    try:
        reader.results()
    except BaseException:  # noqa: BLE001 - already failing; the first error is the one reported
        pass
    ours = {d for tmp, d in reader.done if not tmp} | {d for r in fresh for tmp, d in r.staged if not tmp}
    if not ours:
        return
    try:
        with store.exclusive_lock():
            for d in store.missing_blobs(ours):
                with contextlib.suppress(OSError):
                    os.unlink(store.blob_path(d))
    except CastoreError:
        pass


def _walk_if_known(
    store: Store, root_fd: int, opts: WalkOptions, skips: SkipCount, tree_key: bytes, name: str | None
) -> tuple[str | None, WalkResult | None, bytes | None]:
    """(the manifest of an unchanged tree, the walk, its fingerprint) when the tree has a fingerprint on
    record, else (None, None, None).

    Such a tree is probably unchanged: it is walked, and compared, before
    anything else (no lease, no pool, no stat cache lookup: an unchanged tree
    needs none of them). A walk that left entries out is no match for a
    complete one.
    """
    if store.readonly:  # refused by the lease, as every ingest into a read-only store (README "Stores")
        return None, None, None
    with store.meta.read() as txn:
        known = txn.get(tree_key, db=store.meta.db("statcache"))
    if known is None:
        return None, None, None
    walked = walk(root_fd, opts)
    if skips.count:
        return None, walked, None
    fp = _fingerprint(walked)
    return (None if fp is None else _unchanged_tree(store, known, fp, name)), walked, fp


def _unchanged_tree(store: Store, known: bytes, fp: bytes, name: str | None) -> str | None:
    """The manifest recorded for an identical walk, if it is still whole in the store (castore/store/treecache.py)."""
    rec = treecache.parse(known)
    if rec is None or rec[0] != fp:
        return None
    digest, gen = rec[1], rec[2]
    with store.shared_lock():
        if store.blob_size(digest) is None or not os.path.exists(store.blob_path(digest)):
            return None
        if not treecache.still_whole(store.meta, digest, gen):
            return None
        if name is not None:
            size = store.blob_size(digest) or 0
            store.mark_manifest(digest, "+", name)  # the naming, for a rebuilt index
            store.meta.write(lambda t: store.set_tag(t, name, digest, size))
    return digest


def _commit(
    store: Store,
    manifest: Manifest,
    jobs: list[FileJob],
    results: list[FileResult],
    fresh: list[FileResult],
    proc: Processor,
    name: str | None,
    start_ns: int,
    hit_idx: set[int],
    epoch: tuple[bytes, bool] | None = None,
    synced: Callable[[], None] | None = None,
    fingerprint: tuple[bytes, bytes] | None = None,
    *,
    sync_fd: int,
) -> str:
    sizes = _sizes(jobs, results)
    staged = [s for r in fresh for s in r.staged]

    def redo(gone: set[str]) -> list[tuple[str, str]]:
        # Content a cache hit or a dedup hint relied on has vanished: read it again.
        again_jobs = [
            j for j, r in zip(jobs, results, strict=True) if r.digest in gone or any(c[0] in gone for c in r.chunks)
        ]
        proc.blob_dir = None
        proc.replace_existing = True
        again = proc.run_batch(again_jobs)
        for r in again:
            if r.error:
                raise CastoreError(r.error)
        return [s for r in again for s in r.staged]

    rows = []
    for i, (j, r) in enumerate(zip(jobs, results, strict=False)):
        if i in hit_idx or not r.digest or not statcache.cacheable(j, start_ns):
            continue
        rows.append((statcache.key(j), statcache.encode(j, r)))
    return commit_manifest(
        store,
        manifest,
        staged,
        sizes,
        name=name,
        redo=redo,
        cache_rows=rows,
        epoch=epoch,
        validated=True,
        synced=synced,
        fingerprint=fingerprint,
        sync_fd=sync_fd,
    )
