"""Image layers read in worker processes, so that layers parse in parallel on every core.

The tar importer's per-member work (header parsing, the tree model, staging a
blob per file) is Python holding the GIL: threads only overlap its inflate and
hashing. ``LayerWorkers`` forks a pool of processes (``castore.build.make_pool``:
fork, dying with their parent) *before* the pull starts any thread, and each
downloaded layer is read there by ``read_tar`` into the lease's tmp dir, as the
importer stages any tar: the worker sends back the layer's manifest and what it
staged, and the parent flattens the layers in order and commits.

A worker never touches LMDB (it only writes temp files and pins blobs found by
name), never validates the layer (the flattened tree is validated at commit),
and reads a plain layer by offset itself (no pool of its own). On failure the
workers are killed, by their pids, and the lease's cleanup removes what they
staged.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ProcessPoolExecutor

from castore import progress
from castore.manifest.model import Manifest
from castore.readers import ChunkParams
from castore.tar.importer import TarOptions, read_tar
from castore.tar.reader import open_stream

# read_tar's answer: the layer's manifest, the staged (temp, digest) pairs, sizes, inodes, pins
Parsed = tuple[Manifest, list[tuple[str, str]], dict[str, int], dict[str, int], set[str]]


def parse_layer(path: str, tmp_dir: str, blob_root: str, chunking: ChunkParams) -> Parsed:
    """Read the layer tar at ``path`` (plain, gzip or zstd) with OCI whiteouts; remove it after."""
    if os.getpid() != _PARENT[0]:
        progress.install(None)  # the parent reports the pull; a worker draws nothing
    opts = TarOptions(whiteouts="oci", appledouble="keep", validate=False, parallel=False)
    with open_stream(path) as stream:
        got = read_tar(stream, tmp_dir, blob_root, chunking, opts)
    os.unlink(path)
    return got


_PARENT = [os.getpid()]


class LayerWorkers:
    """``submit(path)`` parses a layer in a worker process (or here, with ``workers=0``)."""

    def __init__(self, tmp_dir: str, blob_root: str, chunking: ChunkParams, workers: int) -> None:
        self.args = (tmp_dir, blob_root, chunking)
        self.pool: ProcessPoolExecutor | None = None
        if workers > 0:
            from castore.build import make_pool

            _PARENT[0] = os.getpid()
            self.pool = make_pool(workers)
            self.pool.submit(os.getpid).result()  # forks every worker now, before any thread of ours exists

    def submit(self, path: str) -> Future[Parsed]:
        if self.pool is not None:
            return self.pool.submit(parse_layer, path, *self.args)
        fut: Future[Parsed] = Future()
        try:
            fut.set_result(parse_layer(path, *self.args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(exc)
        return fut

    def close(self, *, failed: bool) -> None:
        if self.pool is None:
            return
        if failed:  # a layer still being read is of no use: stop its worker now
            procs = getattr(self.pool, "_processes", None) or {}
            for p in list(procs.values()):
                if p.is_alive():
                    p.kill()
            self.pool.shutdown(wait=False, cancel_futures=True)
            for p in list(procs.values()):
                p.join(10)
            return
        self.pool.shutdown(wait=True)
