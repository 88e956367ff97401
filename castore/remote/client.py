"""A small OCI Distribution client: blobs (HEAD, GET, POST+PUT upload) and manifests.

The requests themselves (redirects, credentials, retries, bounded answers,
one-line errors) are ``castore.remote.transport``; here every blob is hashed
before or while it is sent, and every download is verified while it streams.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from urllib.parse import urlencode, urljoin

from castore.errors import Aborted, IntegrityError, RemoteError
from castore.remote.oci import OCI_INDEX, OCI_MANIFEST
from castore.remote.transport import Access, Transport
from castore.remote.wire import (
    MIN_RATE,
    PIECE,
    Answer,
    _bounded_body,
    _download,
    _hashing_reader,
    _pieces,
    _read_exact,
    _refuse_encoding,
)

SMALL_BLOB = 8 << 20  # read, verify, then send; larger blobs are streamed and checked as they go
__all__ = ["Aborted", "Access", "Registry"]


def _with_digest(url: str, digest: str) -> str:
    return url + ("&" if "?" in url else "?") + urlencode({"digest": digest})


class Registry(Transport):
    """One repository of one registry: blob and manifest calls. Thread-safe (see Transport)."""

    # --------------------------------------------------------------- blobs

    def has_blob(self, digest: str) -> bool:
        """HEAD the blob: True when the repository already has it."""

        def go() -> bool:
            ans = self._send("HEAD", f"{self.ref.base}/blobs/{digest}")
            if ans.status == 404:
                return False
            self._check(ans, f"HEAD blob {digest}", (200,))
            return True

        return self._call(f"HEAD blob {digest}", go)

    def upload_blob(self, digest: str, size: int, source: bytes | Callable[[], int]) -> None:
        """Upload one blob: POST a session, then one PUT ?digest= with the bytes (monolithic).

        ``source`` is the bytes, or an opener returning a fresh fd on the blob
        (closed here). The bytes are hashed before (small blobs) or while
        (large) they are sent; raises IntegrityError when they do not match
        ``digest`` and ``size``.
        """
        if not callable(source):
            self._upload_memory(digest, source)
            return
        opener = source

        def go() -> None:
            url = self._upload_url(digest)
            hdrs = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            fd = opener()
            try:
                if size <= SMALL_BLOB:
                    body = _read_exact(fd, size, digest)
                    if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
                        raise IntegrityError(f"store blob {digest} is corrupt (digest mismatch; run fsck)")
                    put = self._send("PUT", url, headers=hdrs, content=body)
                else:
                    h = hashlib.sha256()
                    put = self._send("PUT", url, headers=hdrs, content=_hashing_reader(fd, size, h, self.abort, digest))
                    if "sha256:" + h.hexdigest() != digest:
                        raise IntegrityError(f"store blob {digest} is corrupt (digest mismatch; run fsck)")
            finally:
                os.close(fd)
            self._check(put, f"upload of {digest}", (201, 204))

        self._call(f"upload of {digest}", go)

    def _upload_url(self, digest: str) -> str:
        """Open an upload session (POST); the URL its monolithic PUT of ``digest`` goes to."""
        return _with_digest(self.open_upload(f"upload of {digest}"), digest)

    def open_upload(self, what: str) -> str:
        """Open an upload session (POST); its URL (the first PATCH or the PUT goes there)."""
        ans = self._send("POST", f"{self.ref.base}/blobs/uploads/")
        self._check(ans, what, (202,))
        return self._location(ans, what)

    def patch_upload(self, url: str, offset: int, data: bytes, what: str) -> str:
        """Append ``data`` at ``offset`` to the upload session ``url`` (one chunk of a chunked upload,
        OCI distribution spec); the URL of the next request. One attempt: the caller falls back to a
        monolithic upload on any failure (a chunk retried after a reset could be appended twice)."""
        hdrs = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data)),
            "Content-Range": f"{offset}-{offset + len(data) - 1}",
        }
        ans = self._send("PATCH", url, headers=hdrs, content=data)
        self._check(ans, what, (202,))
        return self._location(ans, what)

    def close_upload(self, url: str, digest: str, what: str) -> None:
        """Commit the upload session ``url`` as blob ``digest`` (PUT ?digest=, no body): the registry
        checks the digest of what it received."""
        ans = self._send("PUT", _with_digest(url, digest), headers={"Content-Length": "0"}, content=b"")
        self._check(ans, what, (201, 204))

    def cancel_upload(self, url: str) -> None:
        """Drop an upload session (DELETE), best effort: a registry also expires abandoned sessions."""
        try:
            self._send("DELETE", url)
        except Exception:  # noqa: S110  # best effort, on the way out of a failure
            pass

    def _location(self, ans: Answer, what: str) -> str:
        loc = ans.headers.get("location")
        if not loc:
            raise RemoteError(f"{self.where}: {what}: no Location in the answer")
        return urljoin(ans.url, loc)

    def _upload_memory(self, digest: str, data: bytes | bytearray) -> None:
        """Upload bytes held in memory (packs): hashed once, then sent in pieces (no copy)."""
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"upload of {digest}: the bytes have another digest")
        view = memoryview(data)

        def go() -> None:
            url = self._upload_url(digest)
            hdrs = {"Content-Type": "application/octet-stream", "Content-Length": str(len(view))}
            body = bytes(view) if len(view) <= PIECE else _pieces(view, self.abort)
            put = self._send("PUT", url, headers=hdrs, content=body)
            self._check(put, f"upload of {digest}", (201, 204))

        self._call(f"upload of {digest}", go)

    def fetch_blob(self, digest: str, size: int, path: str) -> None:
        """Download a blob into a new file ``path`` (mode 0444), verifying size and digest as it streams.

        Never writes more than ``size`` bytes. Raises IntegrityError on any
        mismatch, or when the registry lists the blob but cannot serve it;
        ``path`` is removed on failure.
        """

        def go() -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
            ok = False
            try:
                _download(self, digest, size, fd)
                ok = True
            finally:
                os.close(fd)
                if not ok:
                    os.unlink(path)

        self._call(f"GET blob {digest}", go)

    # ----------------------------------------------------------- manifests

    def get_manifest(self, reference: str, limit: int, accept: str | None = None) -> tuple[bytes, str]:
        """The raw OCI manifest bytes (at most ``limit``, else IntegrityError) and their Content-Type."""
        sep = "@" if reference.startswith("sha256:") else ":"
        what = f"manifest {self.ref.repo}{sep}{reference}"

        def go() -> tuple[bytes, str]:
            with self._stream(
                "GET",
                f"{self.ref.base}/manifests/{reference}",
                headers={"Accept": accept or f"{OCI_MANIFEST}, {OCI_INDEX};q=0.5"},
            ) as resp:
                if resp.status_code != 200:
                    body = _bounded_body(resp, self.small_deadline())
                    self._check(
                        Answer(resp.status_code, resp.headers, str(resp.url), body, resp.reason_phrase), what, (200,)
                    )
                length = resp.headers.get("content-length")
                if length is not None and length.isdigit() and int(length) > limit:
                    raise IntegrityError(f"{self.where}: {what} is {length} bytes (limit {limit})")
                _refuse_encoding(resp, f"{self.where}: {what}")
                data = bytearray()
                deadline = self.deadline(limit)
                for piece in resp.iter_raw():
                    data += piece
                    if time.monotonic() > deadline:
                        raise RemoteError(f"{self.where}: {what}: too slow (under {MIN_RATE >> 10} KiB/s)")
                    if len(data) > limit:
                        raise IntegrityError(f"{self.where}: {what} exceeds {limit} bytes")
                return bytes(data), resp.headers.get("content-type", "")

        return self._call(f"GET {what}", go)

    def put_manifest(self, tag: str, data: bytes) -> str | None:
        """PUT the OCI manifest under ``tag``; return the digest the registry reports, if any."""

        def go() -> str | None:
            ans = self._send(
                "PUT", f"{self.ref.base}/manifests/{tag}", content=data, headers={"Content-Type": OCI_MANIFEST}
            )
            self._check(ans, f"PUT manifest {self.ref.repo}:{tag}", (201, 200, 204))
            reported: str | None = ans.headers.get("docker-content-digest")
            return reported

        return self._call(f"PUT manifest {self.ref.repo}:{tag}", go)

    def get_referrers(self, digest: str, artifact_type: str) -> bytes | None:
        """The OCI 1.1 referrers index of ``digest`` (bounded), or None when the registry lacks the API (404)."""
        what = f"referrers of {self.ref.repo}@{digest}"

        def go() -> bytes | None:
            ans = self._send(
                "GET",
                f"{self.ref.base}/referrers/{digest}?{urlencode({'artifactType': artifact_type})}",
                headers={"Accept": OCI_INDEX},
            )
            if ans.status == 404:
                return None
            self._check(ans, what, (200,))
            return ans.body

        return self._call(f"GET {what}", go)
