"""ingest: walk a tree, store its content as blobs, record its manifest.

Order (docs/design.md): lease -> walk -> read files into staged temps (no
lock) -> under the shared store lock: syncfs, rename temps into place,
syncfs, manifest blob (fsync), then one LMDB transaction with the blob rows,
the manifest's references, the stat cache and, last, the catalog entry.
"""

from __future__ import annotations

import marshal
import os
import struct
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor

from castore.build import (
    WalkOptions,
    assemble,
    make_pool,
    open_root,
    read_with_retries,
    walk,
)
from castore.crash import crashpoint
from castore.errors import CastoreError, IntegrityError, UnsafeInput
from castore.hashing import FileJob, FileResult, Processor
from castore.manifest import codec, validate
from castore.manifest.model import Manifest
from castore.store import Store, check_name, manifest_refs
from castore.store.meta import BLOB_ROW, KIND_CHUNK, KIND_MANIFEST, KIND_RAW, dkey

_KEY = struct.Struct("<QQ")
RACY_NS = 2 * 10**9  # files changed this close to the walk are not cached (git's racy-clean rule)


def _cache_lookup(store: Store, jobs: list[FileJob]) -> dict[int, FileResult]:
    hits: dict[int, FileResult] = {}
    db = store.meta.db("statcache")
    with store.meta.read() as txn:
        for i, j in enumerate(jobs):
            raw = txn.get(_KEY.pack(j.dev, j.ino), db=db)
            if raw is None:
                continue
            try:
                size, mtime, ctime, digest, chunks, xattrs, holes = marshal.loads(raw)
            except (ValueError, EOFError, TypeError):
                continue
            if (size, mtime, ctime) == (j.size, j.mtime_ns, j.ctime_ns):
                hits[i] = FileResult(digest=digest, chunks=tuple(tuple(c) for c in chunks),  # type: ignore[misc]
                                     xattrs=tuple(tuple(x) for x in xattrs),  # type: ignore[misc]
                                     holes=tuple(tuple(h) for h in holes))  # type: ignore[misc]
    return hits


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
    """Files, bytes and rate on stderr when it is a terminal; silent otherwise."""

    def __init__(self, total_files: int, total_bytes: int) -> None:
        self.on = sys.stderr.isatty()
        self.files = self.bytes = 0
        self.total_files, self.total_bytes = total_files, total_bytes
        self.start = self.last = time.monotonic()

    def __call__(self, files: int, nbytes: int) -> None:
        self.files += files
        self.bytes += nbytes
        now = time.monotonic()
        if self.on and now - self.last > 0.2:
            self.last = now
            rate = self.bytes / max(now - self.start, 1e-6) / 1e6
            print(f"\r{self.files}/{self.total_files} files, {self.bytes / 1e6:.0f}/{self.total_bytes / 1e6:.0f} MB, "
                  f"{rate:.0f} MB/s", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.on and self.files:
            print(file=sys.stderr)


def ingest(store: Store, src: str, *, name: str | None = None, opts: WalkOptions | None = None,
           pool: Executor | None = None, progress: bool = True) -> str:
    """Store the tree at ``src``; return its manifest digest (tagged ``name`` if given)."""
    opts = opts or WalkOptions()
    if name is not None:
        check_name(name)
    root_fd = open_root(src)
    own_pool = pool is None
    try:
        st = os.fstat(root_fd)
        with store.lease() as lease:
            os.makedirs(lease.tmp_dir, mode=0o700)
            start_ns = time.time_ns()
            walked = walk(root_fd, opts)
            if not walked.entries:
                raise UnsafeInput(f"{src}: empty directory, nothing to ingest")
            jobs = walked.files
            hits = _cache_lookup(store, jobs)
            todo_idx = [i for i in range(len(jobs)) if i not in hits]
            todo = [jobs[i] for i in todo_idx]
            proc = Processor(root=src, root_id=(st.st_dev, st.st_ino), stage_dir=lease.tmp_dir,
                             blob_dir=store.blob_root, chunking=store.chunking)
            prog = Progress(len(todo), sum(j.size for j in todo))
            if own_pool and (len(todo) >= 64 or sum(j.size for j in todo) >= 8 << 20):
                pool = make_pool()
            fresh = read_with_retries(root_fd, proc, todo, pool, prog if progress else None)
            prog.done()
            crashpoint("ingest-after-read")
            results: list[FileResult] = [FileResult()] * len(jobs)
            for i, r in hits.items():
                results[i] = r
            for i, j, r in zip(todo_idx, todo, fresh, strict=False):
                results[i] = r
                jobs[i] = j  # a retried file carries its fresh stat
            manifest = validate(assemble(walked, results, whiteouts=opts.whiteouts))
            digest = _commit(store, manifest, jobs, results, fresh, root_fd, proc, name, start_ns, set(hits))
            return digest
    finally:
        os.close(root_fd)
        if own_pool and pool is not None:
            pool.shutdown()


def commit_manifest(store: Store, manifest: Manifest, staged: list[tuple[str, str]], sizes: dict[str, int], *,
                    name: str | None = None, redo: Callable[[set[str]], list[tuple[str, str]]] | None = None,
                    cache_rows: Iterable[tuple[bytes, bytes]] = ()) -> str:
    """Make staged blobs durable and visible, store the manifest, record it (and ``name``).

    ``staged`` are (temp file, digest) pairs written under a lease's tmp dir;
    ``sizes`` maps every content digest the manifest references to its size.
    ``redo(gone)`` is called, under the lock, when content the manifest relies
    on but did not stage has vanished (gc ran meanwhile); it returns freshly
    staged pairs. Locking: shared. Returns the manifest digest.
    """
    validate(manifest)
    data = codec.dumps(manifest)
    refs = manifest_refs(manifest)
    with store.shared_lock():
        store.install_staged(staged)
        missing = store.missing_blobs(refs)
        gone = {d for d in missing if not store.blob_file_ok(d, sizes.get(d, -1))}
        if gone and redo is not None:
            store.install_staged(redo(gone))
            gone = {d for d in gone if not store.blob_file_ok(d, sizes.get(d, -1))}
        if gone:
            raise IntegrityError(f"content {sorted(gone)[0]} is neither staged nor in the store")
        crashpoint("ingest-before-manifest")
        mdigest = store.put_blob(data, KIND_MANIFEST)
        crashpoint("ingest-after-manifest")
        chunk_digests = {c.digest for r in manifest.files() for c in r.chunks}

        def txn_fn(txn: object) -> None:
            blobs = store.meta.db("blobs")
            for d in missing:
                kind = KIND_CHUNK if d in chunk_digests else KIND_RAW
                txn.put(dkey(d), BLOB_ROW.pack(sizes.get(d, 0), kind), db=blobs)  # type: ignore[attr-defined]
            store.record_manifest(txn, mdigest, refs)
            cache = store.meta.db("statcache")
            for k, v in cache_rows:
                txn.put(k, v, db=cache)  # type: ignore[attr-defined]
            if name is not None:
                crashpoint("ingest-before-tag")
                store.set_tag(txn, name, mdigest, len(data))

        store.meta.write(txn_fn)
        crashpoint("ingest-after-commit")
    return mdigest


def _commit(store: Store, manifest: Manifest, jobs: list[FileJob], results: list[FileResult],
            fresh: list[FileResult], root_fd: int, proc: Processor, name: str | None, start_ns: int,
            hit_idx: set[int]) -> str:
    sizes = _sizes(jobs, results)
    staged = [s for r in fresh for s in r.staged]

    def redo(gone: set[str]) -> list[tuple[str, str]]:
        # Content a cache hit or a dedup hint relied on has vanished: read it again.
        again_jobs = [j for j, r in zip(jobs, results, strict=True)
                      if r.digest in gone or any(c[0] in gone for c in r.chunks)]
        proc.blob_dir = None
        again = proc.run_batch(again_jobs)
        for r in again:
            if r.error:
                raise CastoreError(r.error)
        return [s for r in again for s in r.staged]

    rows = []
    for i, (j, r) in enumerate(zip(jobs, results, strict=False)):
        if i in hit_idx or not r.digest or j.ctime_ns > start_ns - RACY_NS:
            continue
        rows.append((_KEY.pack(j.dev, j.ino),
                     marshal.dumps((j.size, j.mtime_ns, j.ctime_ns, r.digest, r.chunks, r.xattrs, r.holes))))
    return commit_manifest(store, manifest, staged, sizes, name=name, redo=redo, cache_rows=rows)
