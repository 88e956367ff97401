"""Send a pack while it is being built: a chunked upload (OCI distribution spec) fed piece by piece.

Building a pack (castore.remote.packer.build_pack) hands each run of entries,
in pack order, to ``PackStream.add``; once MIN_PATCH bytes have gathered they
go to the registry as one ``PATCH`` of the upload session, on one background
thread (in order: each answer names the URL of the next request), so the
network and the registry's writes overlap the reading, hashing and compressing
of the blobs still to come. When the pack is complete its digest is known and
``finish`` commits the session (``PUT ?digest=``; the registry checks the
digest of what it received).

Nothing is committed before every blob of the pack was read and verified: a
missing or corrupt store blob stops the build, ``cancel`` drops the session,
and the registry never holds a blob made of it. Any failure of the stream
(a registry without chunked uploads, a reset, a refused chunk) is not an
error: ``finish`` says False and the caller uploads the pack it kept in
memory the usual way (HEAD, then one monolithic PUT, with retries).

Resume: a pack is streamed only on a push the registry has not seen
(castore.remote.push checks the manifest's first part), and a pack is only
committed after that part was uploaded; so a pack already in the registry
implies a re-run, which builds, HEADs and skips it as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from castore.errors import Aborted
from castore.remote.client import Registry

MIN_PATCH = 4 << 20  # bytes per PATCH: 23 MB of pack in 6 requests, each a fraction of the build
MAX_PENDING = 2  # PATCHes queued or running per pack; the next one waits


class PackStream:
    """One pack's chunked upload. ``add`` never raises: a failure makes ``finish`` return False."""

    def __init__(self, reg: Registry, ready: threading.Event, wanted: Callable[[], bool]) -> None:
        """``ready``: set once the push's first manifest part is in the registry (``finish`` waits for it);
        ``wanted()``: whether to stream at all (asked, and waited for, before the first request)."""
        self.reg, self.ready, self.wanted = reg, ready, wanted
        self.url: str | None = None
        self.sent = 0
        self.failed = False
        self.buf: list[bytes] = []  # pieces not sent yet
        self.buffered = 0
        self.pending: list[Future[None]] = []
        self.pool: ThreadPoolExecutor | None = None

    def add(self, piece: bytes) -> None:
        if self.failed:
            return
        self.buf.append(piece)
        self.buffered += len(piece)
        if self.buffered >= MIN_PATCH:
            self._flush()

    def finish(self, digest: str, size: int) -> bool:
        """Commit the upload as ``digest`` once all of it was sent; False (session dropped) when the stream
        failed. Raises Aborted when the push is aborted while it waits for the first manifest part."""
        if self.buf and not self.failed:
            self._flush()
        self._drain()
        if self.failed or self.url is None or self.sent != size:
            self.cancel()
            return False
        while not self.ready.wait(0.05):
            if self.reg.abort.is_set():
                self.cancel()
                raise Aborted("aborted")
        try:
            self.reg.close_upload(self.url, digest, f"upload of {digest}")
        except Exception:  # any failure (httpx's own too): one attempt only, the monolithic upload retries
            self.cancel()
            return False
        self.url = None
        return True

    def cancel(self) -> None:
        """Drop the session (nothing is committed); safe to call twice."""
        self.failed = True
        self._drain()
        url, self.url = self.url, None
        if url is not None:
            self.reg.cancel_upload(url)

    def _flush(self) -> None:
        data = b"".join(self.buf)
        self.buf, self.buffered = [], 0
        while len(self.pending) >= MAX_PENDING:  # a slow registry holds the build back, not the memory
            self.pending.pop(0).result()
        if self.pool is None:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="patch")
        self.pending.append(self.pool.submit(self._patch, data))

    def _drain(self) -> None:
        for f in self.pending:
            f.result()  # _patch never raises
        self.pending = []
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None

    def _patch(self, data: bytes) -> None:
        if self.failed or self.reg.abort.is_set():
            self.failed = True
            return
        what = "chunked upload of a pack"
        try:
            if self.url is None:
                if not self.wanted():
                    self.failed = True
                    return
                self.url = self.reg.open_upload(what)
            self.url = self.reg.patch_upload(self.url, self.sent, data, what)
            self.sent += len(data)
        except Exception:  # any failure: the caller sends the pack it kept, monolithic
            self.failed = True
